/* fuzz_idx — libFuzzer target for the IDX reader (images and labels files, raw or
 * gzip). The input is a flags byte (bit 0: gzip the images, bit 1: a labels file,
 * bit 2: gzip the labels), then the images file, a 0xA5 byte, and the labels file.
 * Every input must be refused with one line, or open as a set whose samples all read
 * back at its fixed size with labels in [-1, num_classes); dataset_count agrees with
 * dataset_open (it only reads headers, so it may accept a truncated payload).
 * Built as fuzz_idx (MIMIC_FUZZ=ON, clang) and as the ctest fuzz_idx_replay. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common.h"
#include "dataset.h"
#include "fuzzutil.h"

#define SEP 0xA5

/* Writes data to path, gzip-compressed when gz (so the fuzzer reaches the IDX parser
 * behind zlib; raw inputs that happen to be gzip test zlib's errors). */
static void write_maybe_gz(const char *path, const uint8_t *data, size_t n, int gz) {
    if (!gz) {
        fuzz_write(path, data, n);
        return;
    }
    gzFile f = gzopen(path, "wb1");
    if (!f || (n && gzwrite(f, data, (unsigned)n) != (int)n) || gzclose(f) != Z_OK)
        fuzz_fail("idx", "cannot write gzip", path);
}

static void check_set(dataset_t *ds) {
    size_t n = dataset_size(ds);
    int w = 0, h = 0, k = dataset_num_classes(ds), c = dataset_channels(ds);
    if (n == 0 || !dataset_fixed_size(ds, &w, &h) || w <= 0 || h <= 0 || (c != 1 && c != 3))
        fuzz_fail("idx", "an opened set has no samples, no fixed size or odd channels", NULL);
    image_u8 im = {0};
    for (size_t i = 0; i < n && i < 64; i++) {
        int label = dataset_label(ds, i);
        if (label < -1 || label >= k || (label == -1 && k != 0))
            fuzz_fail("idx", "a label outside [-1, num_classes)", NULL);
        if (dataset_get(ds, i, &im, 32) != 0 || im.w != w || im.h != h || im.c != c)
            fuzz_fail("idx", "a sample does not read back at the set's size", NULL);
    }
    image_u8_free(&im);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *img = fuzz_path("images.idx"), *lab = fuzz_path("labels.idx");
    int flags = data[0];
    const uint8_t *rest;
    size_t nrest, nimg = fuzz_split(data + 1, size - 1, SEP, &rest, &nrest);
    write_maybe_gz(img, data + 1, nimg, flags & 1);
    if (flags & 2) write_maybe_gz(lab, rest ? rest : data, nrest, flags & 4);
    dataset_opts o = {DATASET_IDX, img, flags & 2 ? lab : NULL, NULL, 0};
    fuzz_run_set("idx", &o, check_set);
    return 0;
}

#ifdef FUZZ_REPLAY
/* An IDX file: magic, dims, then `payload` bytes of a pattern. */
static size_t idx_bytes(uint8_t *out, int nd, const uint32_t *dims, size_t payload) {
    size_t n = 0;
    out[n++] = 0, out[n++] = 0, out[n++] = 8, out[n++] = (uint8_t)nd;
    for (int d = 0; d < nd; d++)
        for (int k = 3; k >= 0; k--)
            out[n++] = (uint8_t)(dims[d] >> (8 * k));
    for (size_t i = 0; i < payload; i++)
        out[n++] = (uint8_t)(i * 7 % 10);
    return n;
}

static void seed(fuzz_seeds_t *s, int flags, int nd, const uint32_t *dims, size_t payload,
                 uint32_t nlabels) {
    uint8_t buf[2048];
    size_t n = 0;
    buf[n++] = (uint8_t)flags;
    n += idx_bytes(buf + n, nd, dims, payload);
    if (flags & 2) {
        buf[n++] = SEP;
        n += idx_bytes(buf + n, 1, &nlabels, nlabels);
    }
    fuzz_seed_add(s, buf, n);
}

static void seeds(fuzz_seeds_t *s) {
    const uint32_t gray[3] = {5, 4, 4}, rgb[4] = {3, 2, 3, 3}, one[3] = {1, 1, 1};
    seed(s, 0, 3, gray, 80, 0);
    seed(s, 2, 3, gray, 80, 5);
    seed(s, 1 | 2 | 4, 3, gray, 80, 5);
    seed(s, 2, 4, rgb, 54, 3);
    seed(s, 1, 4, rgb, 54, 0);
    seed(s, 2, 3, one, 1, 1);
    seed(s, 2, 3, gray, 40, 5); /* truncated payload */
}

/* tokens are C strings: the zero bytes of a magic are the mutator's own */
static const char *const dict[] = {"\x08\x03", "\x08\x01",         "\x08\x04", "\x1f\x8b\x08",
                                   "\xa5",     "\xff\xff\xff\xff", "\x01\x01", NULL};

int main(int argc, char **argv) {
    static const fuzz_target_t t = {"idx", seeds, dict, 2000};
    return fuzz_replay_main(&t, argc, argv);
}
#endif
