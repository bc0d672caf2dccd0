#define _POSIX_C_SOURCE 200809L
#include "dataset.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dataset_impl.h"

int dataset_open(dataset_t **out, const dataset_opts *o) {
    MIMIC_CHECK(out != NULL && o != NULL);
    *out = NULL;
    dataset_t *ds = calloc(1, sizeof *ds);
    if (!ds || (o->path && !(ds->path = strdup(o->path)))) {
        free(ds);
        return mimic_err(MIMIC_ENOMEM, "dataset: out of memory");
    }
    int rc = dataset_scan(ds, o, 1);
    if (!rc && ds->files) rc = dataset_jpeg_init(ds);
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
    dataset_reader_destroy(&ds->rd);
    free(ds->bad);
    dataset_release(ds);
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
    return atomic_load(&ds->bad_count);
}

int dataset_fixed_size(const dataset_t *ds, int *w, int *h) {
    if (ds->files) return 0;
    *w = ds->w;
    *h = ds->h;
    return 1;
}

const char *dataset_file(const dataset_t *ds, size_t i) {
    MIMIC_CHECK(i < ds->n);
    return ds->files ? ds->files[i] : NULL;
}

int dataset_label(const dataset_t *ds, size_t i) {
    MIMIC_CHECK(i < ds->n);
    return ds->labels ? ds->labels[i] : -1;
}

int dataset_read(dataset_t *ds, dataset_reader_t *rd, size_t i, image_u8 *img, int target_size) {
    MIMIC_CHECK(ds != NULL && img != NULL);
    if (i >= ds->n)
        return mimic_err(MIMIC_EINVAL, "%s: sample %zu out of range (size %zu)", ds->path, i,
                         ds->n);
    if (ds->files) return dataset_jpeg_get(ds, rd, i, img, target_size);
    int rc = image_u8_reserve(img, ds->w, ds->h, ds->channels);
    if (rc) return rc;
    size_t bytes = (size_t)ds->w * (size_t)ds->h * (size_t)ds->channels;
    memcpy(img->px, ds->pixels + i * bytes, bytes);
    return 0;
}

int dataset_read_crop(dataset_t *ds, dataset_reader_t *rd, size_t i, image_u8 *img, int target_size,
                      dataset_crop_fn crop, void *arg, augment_box *box) {
    MIMIC_CHECK(ds != NULL && img != NULL && crop != NULL && box != NULL);
    if (i >= ds->n)
        return mimic_err(MIMIC_EINVAL, "%s: sample %zu out of range (size %zu)", ds->path, i,
                         ds->n);
    if (!rd) rd = ds->rd; /* the set's own reader, as dataset_get */
    if (ds->files) return dataset_jpeg_crop(ds, rd, i, img, target_size, crop, arg, box);
    int rc = dataset_read(ds, rd, i, img, target_size);
    return rc ? rc : crop(arg, img->w, img->h, box);
}

int dataset_get(dataset_t *ds, size_t i, image_u8 *img, int target_size) {
    return dataset_read(ds, ds ? ds->rd : NULL, i, img, target_size);
}
