#define _POSIX_C_SOURCE 200809L
#include "dataset.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dataset_impl.h"

static const char *kind_name(dataset_kind k) {
    switch (k) {
    case DATASET_IDX:
        return "IDX";
    case DATASET_IMAGEFOLDER:
        return "ImageFolder";
    case DATASET_CSV:
        return "CSV";
    case DATASET_LABELLIST:
        return "label list";
    }
    return "?";
}

int dataset_open(dataset_t **out, const dataset_opts *o) {
    MIMIC_CHECK(out != NULL && o != NULL);
    *out = NULL;
    if (!o->path) return mimic_err(MIMIC_EINVAL, "dataset: %s needs a path", kind_name(o->kind));
    if (o->kind == DATASET_LABELLIST && !o->labels)
        return mimic_err(MIMIC_EINVAL, "dataset: label list %s needs a labels file", o->path);
    dataset_t *ds = calloc(1, sizeof *ds);
    if (!ds) return mimic_err(MIMIC_ENOMEM, "dataset: out of memory");
    ds->kind = o->kind;
    ds->path = strdup(o->path);
    if (!ds->path) {
        free(ds);
        return mimic_err(MIMIC_ENOMEM, "dataset: out of memory");
    }
    int rc;
    switch (o->kind) {
    case DATASET_IDX:
        rc = dataset_idx_open(ds, o);
        break;
    case DATASET_CSV:
        rc = dataset_csv_open(ds, o);
        break;
    case DATASET_IMAGEFOLDER:
        rc = dataset_folder_open(ds, o);
        break;
    case DATASET_LABELLIST:
        rc = dataset_list_open(ds, o);
        break;
    default:
        rc = mimic_err(MIMIC_EINVAL, "dataset: unknown kind %d", (int)o->kind);
    }
    if (rc) {
        dataset_destroy(&ds);
        return rc;
    }
    *out = ds;
    return 0;
}

void dataset_destroy(dataset_t **dsp) {
    if (!dsp || !*dsp) return;
    dataset_t *ds = *dsp;
    dataset_jpeg_free(ds);
    free(ds->pixels);
    free(ds->labels);
    free(ds->path);
    free(ds);
    *dsp = NULL;
}

size_t dataset_size(const dataset_t *ds) {
    return ds->n;
}
int dataset_num_classes(const dataset_t *ds) {
    return ds->num_classes;
}
int dataset_channels(const dataset_t *ds) {
    return ds->channels;
}
size_t dataset_bad_count(const dataset_t *ds) {
    return ds->bad_count;
}

int dataset_label(const dataset_t *ds, size_t i) {
    MIMIC_CHECK(i < ds->n);
    return ds->labels ? ds->labels[i] : -1;
}

int dataset_get(dataset_t *ds, size_t i, image_u8 *img, int target_size) {
    MIMIC_CHECK(ds != NULL && img != NULL);
    if (i >= ds->n)
        return mimic_err(MIMIC_EINVAL, "%s: sample %zu out of range (size %zu)", ds->path, i,
                         ds->n);
    if (ds->files) return dataset_jpeg_get(ds, i, img, target_size);
    int rc = image_u8_reserve(img, ds->w, ds->h, ds->channels);
    if (rc) return rc;
    size_t bytes = (size_t)ds->w * (size_t)ds->h * (size_t)ds->channels;
    memcpy(img->px, ds->pixels + i * bytes, bytes);
    return 0;
}
