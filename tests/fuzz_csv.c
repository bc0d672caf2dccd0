/* fuzz_csv — libFuzzer target for the FER2013 CSV reader and FERPlus's vote file. The
 * input is a flags byte (bits 0-1: the Usage kept: none, Training, PublicTest,
 * PrivateTest; bit 2: a vote file), the CSV, a NUL byte, and fer2013new.csv. Every input
 * must be refused with one line, or open as square gray images with labels in
 * [0, num_classes); dataset_count (which checks every row too) gives the same answer.
 * Built as fuzz_csv (MIMIC_FUZZ=ON, clang) and as the ctest fuzz_csv_replay. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dataset.h"
#include "fuzzutil.h"

static void check_set(dataset_t *ds) {
    size_t n = dataset_size(ds);
    int w = 0, h = 0, k = dataset_num_classes(ds);
    if (n == 0 || !dataset_fixed_size(ds, &w, &h) || w <= 0 || w != h ||
        dataset_channels(ds) != 1)
        fuzz_fail("csv", "an opened set is empty, not square or not gray", NULL);
    image_u8 im = {0};
    for (size_t i = 0; i < n; i++) {
        int label = dataset_label(ds, i);
        if (label < 0 || label >= k) fuzz_fail("csv", "a label outside [0, num_classes)", NULL);
        if (i < 64 && (dataset_get(ds, i, &im, 48) != 0 || im.w != w || im.h != h))
            fuzz_fail("csv", "a sample does not read back at the set's size", NULL);
    }
    image_u8_free(&im);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *usages[4] = {NULL, "Training", "PublicTest", "PrivateTest"};
    if (size < 1) return 0;
    const char *csv = fuzz_path("fer2013.csv"), *votes = fuzz_path("fer2013new.csv");
    int flags = data[0];
    const uint8_t *rest;
    size_t nrest, ncsv = fuzz_split(data + 1, size - 1, 0, &rest, &nrest);
    fuzz_write(csv, data + 1, ncsv);
    if (flags & 4) fuzz_write(votes, rest ? rest : data, nrest);
    dataset_opts o = {DATASET_CSV, csv, flags & 4 ? votes : NULL, usages[flags & 3], 0};
    fuzz_run_set("csv", &o, check_set);
    return 0;
}

#ifdef FUZZ_REPLAY
/* A CSV of n rows of side x side pixels (quoted like Kaggle's file when quoted), and
 * the FERPlus votes of those rows. */
static void seed(fuzz_seeds_t *s, int flags, int n, int side, int quoted, const char *eol) {
    static const char *usage[3] = {"Training", "PublicTest", "PrivateTest"};
    static const char *votes[4] = {"0,10,0,0,0,0,0,0,0,0", "4,0,0,1,3,2,0,0,0,0",
                                   "0,0,0,0,0,0,0,0,0,10", "6,1,1,0,0,0,0,0,2,0"};
    char buf[8192];
    size_t len = (size_t)snprintf(buf, sizeof buf, "%cemotion,pixels,Usage%s", flags, eol);
    for (int r = 0; r < n; r++) {
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%d,%s", r % 7, quoted ? "\"" : "");
        for (int k = 0; k < side * side; k++)
            len += (size_t)snprintf(buf + len, sizeof buf - len, k ? " %d" : "%d", (r + k) * 37 % 256);
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%s,%s%s", quoted ? "\"" : "",
                                usage[r % 3], eol);
    }
    if (flags & 4) {
        buf[len++] = '\0';
        len += (size_t)snprintf(buf + len, sizeof buf - len,
                                "Usage,Image name,neutral,happiness,surprise,sadness,anger,"
                                "disgust,fear,contempt,unknown,NF%s",
                                eol);
        for (int r = 0; r < n; r++)
            len += (size_t)snprintf(buf + len, sizeof buf - len, "%s,fer%07d.png,%s%s",
                                    usage[r % 3], r, votes[r % 4], eol);
    }
    fuzz_seed_add(s, buf, len);
}

static void seeds(fuzz_seeds_t *s) {
    seed(s, 0, 3, 4, 0, "\n");
    seed(s, 1, 4, 3, 1, "\r\n");
    seed(s, 2, 5, 2, 0, "\n");
    seed(s, 4, 4, 4, 1, "\n");
    seed(s, 4 | 1, 6, 2, 0, "\r\n");
    fuzz_seed_str(s, "\x03pixels,Usage,emotion\n\"0 0 0 0\",PrivateTest,6\n\n");
    static const char bom[] = "\0\xef\xbb\xbf" "emotion,pixels\n0,255\n1,7\n";
    fuzz_seed_add(s, bom, sizeof bom - 1);
}

static const char *const dict[] = {"emotion",  "pixels",   "Usage", "Training", "PublicTest",
                                   "PrivateTest", "neutral", "contempt", "unknown", "NF",
                                   "\"",       ",",        " ",     "\r\n",     "255",
                                   "256",      "\xef\xbb\xbf",       NULL};

int main(int argc, char **argv) {
    static const fuzz_target_t t = {"csv", seeds, dict, 10000};
    return fuzz_replay_main(&t, argc, argv);
}
#endif
