/* dataset_impl — the dataset_t layout shared by the per-format readers (internal).
 *
 * dataset.c dispatches on the kind and serves the in-memory sets; dataset_idx.c and
 * dataset_csv.c fill pixels/labels at open; dataset_jpeg.c lists JPEG files at open and
 * decodes them in dataset_get. Only dataset*.c include this header. */
#ifndef MIMIC_DATASET_IMPL_H
#define MIMIC_DATASET_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"

struct dataset {
    dataset_kind kind;
    char *path; /* the file or directory opened, for messages */
    size_t n;
    int num_classes;
    int channels;
    int *labels; /* n labels, -1 when unlabelled */

    /* IDX, CSV: n images of h x w x channels bytes, decoded at open */
    uint8_t *pixels;
    int w, h;

    /* JPEG sets: one path per sample, decoded on demand */
    char **files;
    void *tj;         /* tjhandle */
    uint8_t *filebuf; /* last file read */
    size_t filecap;
    uint8_t *bad; /* n flags: sample already found corrupt (warn once) */
    size_t bad_count;
};

/* Each fills ds (n, labels, num_classes, channels and its storage) or returns MIMIC_E*
 * after reporting; dataset_open frees whatever was filled on failure. */
int dataset_idx_open(dataset_t *ds, const dataset_opts *o);
int dataset_csv_open(dataset_t *ds, const dataset_opts *o);
int dataset_folder_open(dataset_t *ds, const dataset_opts *o);
int dataset_list_open(dataset_t *ds, const dataset_opts *o);
int dataset_jpeg_get(dataset_t *ds, size_t i, image_u8 *img, int target_size);
void dataset_jpeg_free(dataset_t *ds);

#endif
