/* fuzz_jpeg — libFuzzer target for JPEG decoding as the ImageFolder and label-list sets
 * do it (dataset_get: TurboJPEG header, DCT scaling towards the training size, decode
 * to RGB, warnings as corruption), followed by the resize of the training and
 * evaluation transforms (augment_rrc, augment_resize); and the training path's crop
 * decode (dataset_read_crop: libjpeg's API, rows skipped, columns cropped, DCT scaling
 * per crop) with augment_crop_ws. The input is a byte choosing
 * the training size (16, 32, 64, 224) and the crop's random stream, then the file. Every
 * input must be refused as a bad sample (MIMIC_EFORMAT), leaving the reader able to
 * decode the next good file, or give an RGB image no smaller than the target that both
 * resizes turn into finite floats.
 * Built as fuzz_jpeg (MIMIC_FUZZ=ON, clang) and as the ctest fuzz_jpeg_replay. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "augment.h"
#include "common.h"
#include "dataset.h"
#include "fuzzutil.h"

#define S_MAX 224

/* A label list of the one file x.jpg, opened once per process. */
static dataset_t *one_file_set(const char *file) {
    static dataset_t *ds;
    if (ds) return ds;
    const char *list = fuzz_path("x.txt");
    fuzz_write(list, "x.jpg 0\n", 8);
    fuzz_write(file, "", 0);
    char *dir = strdup(file);
    MIMIC_CHECK(dir != NULL);
    *strrchr(dir, '/') = '\0';
    dataset_opts o = {DATASET_LABELLIST, dir, list, NULL, 0};
    if (dataset_open(&ds, &o) != 0) fuzz_fail("jpeg", "cannot open the one-file set", dir);
    free(dir);
    return ds;
}

/* After a refusal: a small good JPEG must still decode with the same reader. */
static void check_recovers(dataset_t *ds, const char *file, image_u8 *im) {
    static unsigned char *good;
    static unsigned long ngood;
    if (!good) {
        uint8_t px[16 * 16 * 3];
        for (size_t i = 0; i < sizeof px; i++)
            px[i] = (uint8_t)(i * 7);
        tjhandle tj = tjInitCompress();
        if (!tj || tjCompress2(tj, px, 16, 0, 16, TJPF_RGB, &good, &ngood, TJSAMP_420, 80, 0))
            fuzz_fail("jpeg", "cannot encode the good JPEG", NULL);
        tjDestroy(tj);
    }
    fuzz_write(file, good, ngood);
    if (dataset_get(ds, 0, im, 16) != 0 || im->w != 16)
        fuzz_fail("jpeg", "a good JPEG fails after a bad one: the reader kept the error", NULL);
}

static void check_floats(const float *x, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]) || x[i] < -1.01f || x[i] > 1.01f) fuzz_fail("jpeg", what, NULL);
}

static int draw_crop(void *arg, int w, int h, augment_box *box) {
    int flip;
    return augment_rrc_draw(box, &flip, w, h, 0.08f, 1.0f, 0.75f, 4.0f / 3.0f, 1, arg);
}

/* The crop path on the file as written: refused as a bad sample (and the reader then
 * decodes a good crop), or a region that holds the crop, resized to finite floats. */
static void fuzz_crop(dataset_t *ds, const char *file, image_u8 *im, int S, uint8_t key,
                      float *out) {
    rng_t r;
    rng_seed(&r, key);
    augment_box box;
    int rc = dataset_read_crop(ds, NULL, 0, im, S, draw_crop, &r, &box);
    if (rc) {
        if (rc != MIMIC_EFORMAT) fuzz_check_error("jpeg crop", rc);
        if (rc != MIMIC_EFORMAT && rc != MIMIC_ENOMEM)
            fuzz_fail("jpeg crop", "a bad file is not a bad sample", mimic_strerror(rc));
        if (im->w != 0 || im->h != 0)
            fuzz_fail("jpeg crop", "a refused sample keeps its size", NULL);
        check_recovers(ds, file, im);
        if (dataset_read_crop(ds, NULL, 0, im, 16, draw_crop, &r, &box) != 0)
            fuzz_fail("jpeg crop", "a good JPEG fails after a bad one", NULL);
        return;
    }
    if (im->c != 3 || im->w <= 0 || im->h <= 0 || box.x < 0 || box.y < 0 ||
        box.x + box.w > im->w + 1e-9 || box.y + box.h > im->h + 1e-9)
        fuzz_fail("jpeg crop", "the decoded region does not hold the crop", NULL);
    static augment_ws ws;
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std[3] = {0.5f, 0.5f, 0.5f};
    if (augment_crop_ws(out, im, &box, S, key & 1, mean, std, 3, &ws) != 0)
        fuzz_fail("jpeg crop", "augment_crop_ws refused a decoded crop", mimic_last_error());
    check_floats(out, (size_t)3 * S * S, "augment_crop_ws wrote values outside [-1, 1]");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const int sizes[4] = {16, 32, 64, S_MAX};
    static float out[3 * S_MAX * S_MAX];
    static image_u8 im;
    if (size < 1) return 0;
    const char *file = fuzz_path("x.jpg");
    dataset_t *ds = one_file_set(file);
    int S = sizes[data[0] & 3];
    fuzz_write(file, data + 1, size - 1);
    mimic_set_quiet(1);
    fuzz_crop(ds, file, &im, S, data[0], out);
    fuzz_write(file, data + 1, size - 1); /* the crop's recovery check wrote a good file */
    int rc = dataset_get(ds, 0, &im, S);
    if (rc) {
        if (rc != MIMIC_EFORMAT) fuzz_check_error("jpeg", rc);
        if (rc != MIMIC_EFORMAT && rc != MIMIC_ENOMEM)
            fuzz_fail("jpeg", "a bad file is not a bad sample", mimic_strerror(rc));
        if (im.w != 0 || im.h != 0) fuzz_fail("jpeg", "a refused sample keeps its size", NULL);
        check_recovers(ds, file, &im);
        return 0;
    }
    if (im.c != 3 || im.w <= 0 || im.h <= 0 || im.cap < (size_t)im.w * im.h * 3)
        fuzz_fail("jpeg", "a decoded image is not RGB or not allocated", NULL);
    /* DCT scaling keeps both sides >= S when the file had them */
    int w = 0, h = 0, ss, cs;
    tjhandle tj = tjInitDecompress();
    if (tj && tjDecompressHeader3(tj, data + 1, (unsigned long)(size - 1), &w, &h, &ss, &cs) == 0 &&
        (im.w > w || im.h > h || (w >= S && im.w < S) || (h >= S && im.h < S)))
        fuzz_fail("jpeg", "the DCT-scaled size broke its promise", NULL);
    if (tj) tjDestroy(tj);
    rng_t r;
    rng_seed(&r, data[0]);
    /* mean 0.5, std 0.5: every normalised value lies in [-1, 1] */
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std[3] = {0.5f, 0.5f, 0.5f};
    int oc = data[0] & 4 ? 1 : 3;
    if (augment_rrc(out, &im, S, 0.08f, 1.0f, 0.75f, 4.0f / 3.0f, 1, mean, std, oc, &r) != 0)
        fuzz_fail("jpeg", "augment_rrc refused a decoded image", mimic_last_error());
    check_floats(out, (size_t)oc * S * S, "augment_rrc wrote values outside [-1, 1]");
    if (augment_resize(out, &im, S, mean, std, oc) != 0)
        fuzz_fail("jpeg", "augment_resize refused a decoded image", mimic_last_error());
    check_floats(out, (size_t)oc * S * S, "augment_resize wrote values outside [-1, 1]");
    fuzz_accepted++;
    return 0;
}

#ifdef FUZZ_REPLAY
/* A w x h JPEG of a smooth pattern, encoded with the given subsampling and flags. */
static void seed(fuzz_seeds_t *s, int sizeb, int w, int h, int c, int samp, int flags) {
    uint8_t *px = malloc((size_t)w * h * c);
    for (int i = 0; i < w * h * c; i++)
        px[i] = (uint8_t)(i * 3 + (i / (w * c)) * 5);
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    unsigned long n = 0;
    MIMIC_CHECK(tjCompress2(tj, px, w, 0, h, c == 1 ? TJPF_GRAY : TJPF_RGB, &jpg, &n, samp, 75,
                            flags) == 0);
    uint8_t *b = malloc(n + 1);
    b[0] = (uint8_t)sizeb;
    memcpy(b + 1, jpg, n);
    fuzz_seed_add(s, b, n + 1);
    free(b);
    tjFree(jpg);
    tjDestroy(tj);
    free(px);
}

static void seeds(fuzz_seeds_t *s) {
    seed(s, 0, 24, 20, 3, TJSAMP_420, 0);
    seed(s, 1, 40, 33, 3, TJSAMP_444, TJFLAG_PROGRESSIVE);
    seed(s, 4, 16, 16, 1, TJSAMP_GRAY, 0);
    seed(s, 2, 130, 9, 3, TJSAMP_422, 0);
    seed(s, 0, 70, 40, 3, TJSAMP_411, TJFLAG_PROGRESSIVE); /* DCT-scaled at S = 16 */
    seed(s, 5, 8, 8, 3, TJSAMP_440, 0);
}

static const char *const dict[] = {"\xff\xd8", "\xff\xd9", "\xff\xc0",     "\xff\xc2",
                                   "\xff\xc4", "\xff\xda", "\xff\xdb",     "\xff\xdd",
                                   "\xff\xe0", "\xff\xee", "\xff\xff\xff", NULL};

int main(int argc, char **argv) {
    static const fuzz_target_t t = {"jpeg", seeds, dict, 10000};
    return fuzz_replay_main(&t, argc, argv);
}
#endif
