/* Checking the options and reading a data set's index (counts, labels, in-memory pixels,
 * JPEG file lists): everything of dataset_open but the decoder, so that dataset_count
 * and whoever links only it stay free of TurboJPEG. */
#define _POSIX_C_SOURCE 200809L
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

int dataset_scan(dataset_t *ds, const dataset_opts *o, int keep_pixels) {
    if (!o->path) return mimic_err(MIMIC_EINVAL, "dataset: %s needs a path", kind_name(o->kind));
    if (o->kind == DATASET_LABELLIST && !o->labels)
        return mimic_err(MIMIC_EINVAL, "dataset: label list %s needs a labels file", o->path);
    ds->kind = o->kind;
    switch (o->kind) {
    case DATASET_IDX:
        return dataset_idx_open(ds, o, keep_pixels);
    case DATASET_CSV:
        return dataset_csv_open(ds, o, keep_pixels);
    case DATASET_IMAGEFOLDER:
        return dataset_folder_open(ds, o);
    case DATASET_LABELLIST:
        return dataset_list_open(ds, o);
    }
    return mimic_err(MIMIC_EINVAL, "dataset: unknown kind %d", (int)o->kind);
}

void dataset_release(dataset_t *ds) {
    dataset_files_free(ds);
    free(ds->pixels);
    free(ds->labels);
    free(ds->path);
    ds->pixels = NULL;
    ds->labels = NULL;
    ds->path = NULL;
}

int dataset_count(const dataset_opts *o, size_t *n) {
    MIMIC_CHECK(o != NULL && n != NULL);
    *n = 0;
    dataset_t ds = {0};
    if (o->path && !(ds.path = strdup(o->path)))
        return mimic_err(MIMIC_ENOMEM, "dataset: out of memory");
    int rc = dataset_scan(&ds, o, 0);
    if (!rc) *n = ds.n;
    dataset_release(&ds);
    return rc;
}
