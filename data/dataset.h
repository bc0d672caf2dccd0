/* dataset — random access to labelled image data sets on local disk, by sample index.
 *
 * A dataset_t owns what it takes to produce sample i: the decoded pixels of small sets
 * (IDX as in Fashion-MNIST, FER2013 CSV: loaded whole at open) or the sorted file list of
 * JPEG sets (ImageFolder, RAF-DB label lists: decoded on demand with libjpeg-turbo, using
 * DCT scaling when a file is much larger than the training resolution). Access is by
 * index because the scheduler hands workers chunks of a seeded permutation:
 *   dataset_open(&ds, &opts); dataset_get(ds, i, &img, 224); augment_rrc(out, &img, ...);
 * The training path decodes only the crop it will use, drawn from the header's size:
 *   dataset_read_crop(ds, rd, i, &img, 224, draw, arg, &box); augment_crop_ws(out, &img, &box..);
 * dataset_get reuses a reader (decoder handle, file buffer) inside the dataset_t, so it
 * serves one thread; threads share one dataset_t through dataset_read, a reader each.
 * dataset_count sizes a set without decoding and links without the JPEG decoder. */
#ifndef MIMIC_DATASET_H
#define MIMIC_DATASET_H

#include <stddef.h>

#include "augment.h"

typedef enum { DATASET_IDX, DATASET_IMAGEFOLDER, DATASET_CSV, DATASET_LABELLIST } dataset_kind;

/* What to open (strings are copied, the caller keeps ownership):
 * - DATASET_IDX: path = ubyte images file (N,H,W) or (N,H,W,C), gzip or raw; labels =
 *   matching ubyte labels file (N), or NULL (every label is then -1).
 * - DATASET_IMAGEFOLDER: path = root with one sub-folder per class; sorted folder names
 *   give labels 0..K-1; .jpg/.jpeg files (any case, sub-folders included, dot-files
 *   skipped) in sorted name order.
 * - DATASET_CSV: path = FER2013-style CSV with header "emotion,pixels,Usage" (Usage
 *   optional, column order free); pixels = a square number of 0..255 values separated
 *   by spaces, the same count in every row; usage = keep only rows whose Usage equals
 *   it (e.g. "Training", "PublicTest"), NULL keeps all. labels = NULL (the emotion
 *   column), or FERPlus's fer2013new.csv (one row of votes per row of path, in order):
 *   the label is then FERPlus's majority vote (neutral, happiness, surprise, sadness,
 *   anger, disgust, fear, contempt = 0..7) and rows without one (no majority after
 *   dropping single votes, unknown, not a face) are left out.
 * - DATASET_LABELLIST: labels = text file of "name label" lines (RAF-DB's
 *   list_patition_label.txt; blank lines and '#' comments skipped), path = directory the
 *   names are relative to. A name whose file is missing is looked up with "_aligned"
 *   before its extension (RAF-DB's list names train_00001.jpg, its Image/aligned folder
 *   holds train_00001_aligned.jpg); in neither place it is an error. The class is the
 *   label minus label_base (RAF-DB counts 1..7: label_base 1). usage = keep only the
 *   lines whose name starts with it (RAF-DB: "train_", "test_"), NULL keeps all. */
typedef struct {
    dataset_kind kind;
    const char *path;
    const char *labels;
    const char *usage;
    int label_base; /* label lists: the list's first class number (0 or RAF-DB's 1) */
} dataset_opts;

typedef struct dataset dataset_t;

/* Opens a data set, checking its format (a malformed IDX header or size, CSV header or
 * row, list line, or a missing file or directory is reported by mimic_err naming the
 * file and line). Returns 0 and sets *out, or a negative MIMIC_E* code. */
int dataset_open(dataset_t **out, const dataset_opts *o);
void dataset_destroy(dataset_t **ds);

size_t dataset_size(const dataset_t *ds);
/* max label + 1 over the whole file (0 when unlabelled); ImageFolder: class folders. */
int dataset_num_classes(const dataset_t *ds);
/* Label of sample i (i < dataset_size), -1 when the set has no labels. */
int dataset_label(const dataset_t *ds, size_t i);
/* The file of sample i of a JPEG set (the root joined with its name, as opened), NULL
 * for in-memory sets (IDX, CSV). A filtered copy of a set (mimic-fiqa) lists these. */
const char *dataset_file(const dataset_t *ds, size_t i);
/* Channels dataset_get produces: 1 for IDX (C=1) and CSV, 3 for JPEG sets. */
int dataset_channels(const dataset_t *ds);

/* Per-thread decoding state for dataset_read: a TurboJPEG handle and the file buffer
 * (nothing for in-memory sets). Created once per thread, reused for every sample. */
typedef struct dataset_reader dataset_reader_t;
int dataset_reader_new(dataset_reader_t **out, const dataset_t *ds);
void dataset_reader_destroy(dataset_reader_t **rd);

/* Decodes sample i into img (HWC bytes; img's buffer is grown as needed). JPEGs at least
 * 2*target_size on both sides are decoded with the strongest DCT scaling that keeps both
 * sides >= target_size (target_size <= 0: full size); in-memory sets ignore it.
 * A JPEG that is unreadable, corrupt or truncated (libjpeg warnings count as corruption)
 * returns MIMIC_EFORMAT, warns once naming the file and counts the sample as bad.
 * Index out of range: MIMIC_EINVAL. */
int dataset_get(dataset_t *ds, size_t i, image_u8 *img, int target_size);
/* dataset_get with the caller's reader: threads with distinct readers (and images) may
 * read one dataset_t at once; bad samples are still warned once and counted once. */
int dataset_read(dataset_t *ds, dataset_reader_t *rd, size_t i, image_u8 *img, int target_size);
/* Chooses the crop of a sample from its full size w x h, before any pixel is decoded
 * (the loader draws augment_rrc_draw here). Sets *box inside the image; a non-zero
 * return is passed back by dataset_read_crop. */
typedef int (*dataset_crop_fn)(void *arg, int w, int h, augment_box *box);
/* dataset_read for one crop (the training path): reads sample i's header, asks crop for
 * the box (full-size pixels), then decodes only what the box needs: the rows it spans
 * and the iMCU columns around it (libjpeg skips the rows above, crops the columns, and
 * never decodes the rows below), with the strongest DCT scaling (1/2, 1/4, 1/8) that
 * keeps the scaled box >= target_size on both sides. img receives that region and *box
 * becomes the crop in img's pixels (fractional under scaling), ready for
 * augment_crop_ws. In-memory sets copy the whole image and keep the box as drawn.
 * rd NULL: the set's own reader (one thread, as dataset_get). Errors as dataset_read (a
 * corrupt file warns once, naming it, and gives MIMIC_EFORMAT). */
int dataset_read_crop(dataset_t *ds, dataset_reader_t *rd, size_t i, image_u8 *img, int target_size,
                      dataset_crop_fn crop, void *arg, augment_box *box);
/* Number of distinct samples dataset_get/dataset_read found bad so far. */
size_t dataset_bad_count(const dataset_t *ds);
/* In-memory sets (IDX, CSV), whose samples all have one size: sets *w, *h and returns 1.
 * JPEG sets: returns 0. */
int dataset_fixed_size(const dataset_t *ds, int *w, int *h);

/* The number of samples dataset_open would give for o, without decoding anything: IDX
 * reads the headers (images and labels counts must agree), CSV parses and checks every
 * row (the Usage filter applies), JPEG sets are listed. Errors are those of
 * dataset_open for the same defects, except damage past an IDX header (a truncated
 * payload), which only dataset_open sees. Defined apart from the decoder (dataset_scan.c),
 * so a program that only counts (the scheduler) does not link TurboJPEG. */
int dataset_count(const dataset_opts *o, size_t *n);

#endif
