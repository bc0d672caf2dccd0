/* dataset_impl — the dataset_t layout shared by the per-format readers (internal).
 *
 * dataset_scan.c checks the options and dispatches on the kind: dataset_idx.c and
 * dataset_csv.c fill pixels/labels (or only count), dataset_files.c lists the JPEG files
 * of ImageFolder trees and label lists. None of them touches TurboJPEG, so dataset_count
 * links without the decoder. dataset.c opens (scan + decoder set-up) and serves samples;
 * dataset_jpeg.c decodes JPEG files with a dataset_reader_t. Only dataset*.c include this
 * header. */
#ifndef MIMIC_DATASET_IMPL_H
#define MIMIC_DATASET_IMPL_H

#include <stdatomic.h>
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
    dataset_reader_t *rd; /* the reader of dataset_get */
    /* n flags: sample already found corrupt (warn once). Atomic because the loader's
     * threads decode samples of one dataset_t concurrently, each with its own reader. */
    atomic_uchar *bad;
    atomic_size_t bad_count;
};

/* Checks o and fills ds (n, labels, and with keep_pixels the pixels and num_classes of
 * in-memory sets; without it IDX reads only the headers and CSV parses and checks every
 * row but keeps no pixels) or returns MIMIC_E* after reporting. ds->path must be set.
 * dataset_release frees whatever was filled (not the decoder state, not ds itself). */
int dataset_scan(dataset_t *ds, const dataset_opts *o, int keep_pixels);
void dataset_release(dataset_t *ds);

int dataset_idx_open(dataset_t *ds, const dataset_opts *o, int keep_pixels);
int dataset_csv_open(dataset_t *ds, const dataset_opts *o, int keep_pixels);
int dataset_folder_open(dataset_t *ds, const dataset_opts *o);
int dataset_list_open(dataset_t *ds, const dataset_opts *o);
void dataset_files_free(dataset_t *ds);

/* JPEG sets after listing: the corrupt-sample flags and the reader of dataset_get. */
int dataset_jpeg_init(dataset_t *ds);
int dataset_jpeg_get(dataset_t *ds, dataset_reader_t *rd, size_t i, image_u8 *img, int target_size);
int dataset_jpeg_crop(dataset_t *ds, dataset_reader_t *rd, size_t i, image_u8 *img, int target,
                      dataset_crop_fn crop, void *arg, augment_box *box);

#endif
