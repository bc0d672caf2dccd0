/* fuzz_labellist — libFuzzer target for RAF-DB-style label lists ("name label" lines,
 * names looked up as written and with _aligned). The input is a flags byte (bit 0:
 * label_base 1; bits 1-2: the name prefix kept: none, train_, test_, sub/) and the list;
 * the image directory is a fixed fixture of small JPEGs (a.jpg, b_aligned.jpg,
 * sub/c.jpg, train_00001_aligned.jpg, test_0001.jpg). Every input must be refused with
 * one line, or open as a set whose labels lie in [0, num_classes) and whose samples
 * decode or are refused as bad; dataset_count gives the same answer.
 * Built as fuzz_labellist (MIMIC_FUZZ=ON, clang) and as the ctest fuzz_labellist_replay. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>

#include "common.h"
#include "dataset.h"
#include "fuzzutil.h"

/* The image directory, written once per process. */
static const char *fixture(void) {
    static const char *dir;
    static const char *const names[] = {"a.jpg", "b_aligned.jpg", "sub/c.jpg",
                                        "train_00001_aligned.jpg", "test_0001.jpg"};
    if (dir) return dir;
    dir = fuzz_path("images");
    char sub[64];
    snprintf(sub, sizeof sub, "images/sub");
    if (mkdir(dir, 0755) != 0 || mkdir(fuzz_path(sub), 0755) != 0)
        fuzz_fail("labellist", "cannot create the image directory", dir);
    uint8_t px[8 * 8 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 5);
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    unsigned long size = 0;
    if (!tj || tjCompress2(tj, px, 8, 0, 8, TJPF_RGB, &jpg, &size, TJSAMP_444, 90, 0) != 0)
        fuzz_fail("labellist", "cannot encode the fixture JPEG", NULL);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char rel[64];
        snprintf(rel, sizeof rel, "images/%s", names[i]);
        fuzz_write(fuzz_path(rel), jpg, size);
    }
    tjFree(jpg);
    tjDestroy(tj);
    return dir;
}

static void check_set(dataset_t *ds) {
    if (dataset_channels(ds) != 3) fuzz_fail("labellist", "an opened list is not RGB", NULL);
    image_u8 im = {0};
    for (size_t i = 0; i < dataset_size(ds); i++) {
        int label = dataset_label(ds, i);
        if (label < 0 || label >= dataset_num_classes(ds))
            fuzz_fail("labellist", "a label outside [0, num_classes)", NULL);
        if (i < 4 && dataset_get(ds, i, &im, 8) != 0)
            fuzz_fail("labellist", "a listed fixture image does not decode", NULL);
    }
    image_u8_free(&im);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *prefixes[4] = {NULL, "train_", "test_", "sub/"};
    if (size < 1) return 0;
    const char *dir = fixture(), *list = fuzz_path("list_patition_label.txt");
    fuzz_write(list, data + 1, size - 1);
    dataset_opts o = {DATASET_LABELLIST, dir, list, prefixes[(data[0] >> 1) & 3], data[0] & 1};
    fuzz_run_set("labellist", &o, check_set);
    return 0;
}

#ifdef FUZZ_REPLAY
static void seeds(fuzz_seeds_t *s) {
    fuzz_seed_str(s, "\x01train_00001.jpg 5\ntest_0001.jpg 7\n");
    fuzz_seed_str(s, "\x03test_0001.jpg 1\ntrain_00001.jpg 2\r\n");
    fuzz_seed_str(s, "\x04# comment\n\n  a.jpg\t3  \nb.jpg 0\nsub/c.jpg 12\n");
    fuzz_seed_str(s, "\x06sub/c.jpg 1\na.jpg 1\n");
    fuzz_seed_str(s, "\x01" "a.jpg 0\n");
    fuzz_seed_str(s, "\x02missing.jpg 3\n");
}

static const char *const dict[] = {"a.jpg", "b.jpg", "sub/c.jpg", "train_00001.jpg",
                                   "test_0001.jpg", "_aligned", ".jpg", " ", "\t", "\n",
                                   "#", "-1", "1048577", NULL};

int main(int argc, char **argv) {
    static const fuzz_target_t t = {"labellist", seeds, dict, 10000};
    return fuzz_replay_main(&t, argc, argv);
}
#endif
