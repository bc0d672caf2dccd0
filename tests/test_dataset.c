// TIMEOUT: 240
/* test_dataset — the four data set formats on small files written here: IDX (raw and
 * gzip, broken headers and sizes), FER2013 CSV (usage filter, broken header, rows and
 * values), RAF-DB label lists and ImageFolder trees of JPEGs encoded with TurboJPEG
 * (truncated, random bytes, gray, DCT scaling, mutated bytes), and the training path's
 * crop decode against the full decode (4:2:0, 4:2:2, 4:4:4, 4:4:0, 4:1:1, gray,
 * progressive; unscaled crops bit-exact). The FER sets in the
 * layouts they ship in: RAF-DB basic (its list, 1-based labels, _aligned images; MAE
 * and MIMIC train on it through mimic-worker), FERPlus votes beside fer2013.csv,
 * AffectNet-style class folders. Fashion-MNIST is checked when its Debian package is
 * installed. Prints decode+augment throughput. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include "augment.h"
#include "common.h"
#include "dataset.h"
#include "rng.h"
#include "testutil.h"

#define PATH_CAP 2048
static char tmp[512];

static const char *tp(char *buf, const char *rel) {
    snprintf(buf, PATH_CAP, "%s/%s", tmp, rel);
    return buf;
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    MIMIC_CHECK(f != NULL);
    MIMIC_CHECK(fwrite(data, 1, n, f) == n);
    fclose(f);
}

static void write_text(const char *path, const char *s) {
    write_file(path, s, strlen(s));
}

static void write_gz(const char *path, const void *data, size_t n) {
    gzFile f = gzopen(path, "wb");
    MIMIC_CHECK(f != NULL);
    MIMIC_CHECK(gzwrite(f, data, (unsigned)n) == (int)n);
    gzclose(f);
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    MIMIC_CHECK(f != NULL);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*n);
    MIMIC_CHECK(fread(b, 1, *n, f) == *n);
    fclose(f);
    return b;
}

/* mimic_last_error() names `file` (the test's own failures print what it said). */
static int names(const char *file) {
    int ok = strstr(mimic_last_error(), file) != NULL;
    if (!ok) fprintf(stderr, "last error \"%s\" does not name %s\n", mimic_last_error(), file);
    return ok;
}

static int open_quiet(dataset_t **ds, dataset_kind kind, const char *path, const char *labels,
                      const char *usage) {
    dataset_opts o = {kind, path, labels, usage, 0};
    mimic_set_quiet(1);
    int rc = dataset_open(ds, &o);
    mimic_set_quiet(0);
    return rc;
}

/* dataset_count for these options (quiet), or the error code. */
static long long count_quiet(dataset_kind kind, const char *path, const char *labels,
                             const char *usage) {
    dataset_opts o = {kind, path, labels, usage, 0};
    size_t n = 0;
    mimic_set_quiet(1);
    int rc = dataset_count(&o, &n);
    mimic_set_quiet(0);
    return rc ? rc : (long long)n;
}

/* ---------------------------------------------------------------- IDX */

/* IDX bytes: header (magic type, ndims) + dims + payload of `items` images. */
static unsigned char *idx_bytes(int type, int nd, const uint32_t *dims, size_t items,
                                size_t item_bytes, size_t *n) {
    *n = 4 + 4 * (size_t)nd + items * item_bytes;
    unsigned char *b = malloc(*n);
    b[0] = b[1] = 0;
    b[2] = (unsigned char)type;
    b[3] = (unsigned char)nd;
    for (int d = 0; d < nd; d++)
        for (int k = 0; k < 4; k++)
            b[4 + 4 * d + k] = (unsigned char)(dims[d] >> (24 - 8 * k));
    for (size_t i = 0; i < items * item_bytes; i++)
        b[4 + 4 * nd + i] = (unsigned char)((i * 7 + i / 784 * 13) & 255);
    return b;
}

static void test_idx(void) {
    char p[PATH_CAP], pl[PATH_CAP], pg[PATH_CAP], plg[PATH_CAP];
    uint32_t dims[3] = {10, 28, 28}, ldims[1] = {10};
    size_t n, nl;
    unsigned char *img = idx_bytes(8, 3, dims, 10, 784, &n);
    unsigned char *lab = idx_bytes(8, 1, ldims, 0, 0, &nl);
    unsigned char lab_full[8 + 10];
    memcpy(lab_full, lab, 8);
    for (int i = 0; i < 10; i++)
        lab_full[8 + i] = (unsigned char)((i * 3) % 10);
    write_file(tp(p, "img.idx"), img, n);
    write_file(tp(pl, "lab.idx"), lab_full, sizeof lab_full);
    write_gz(tp(pg, "img.idx.gz"), img, n);
    write_gz(tp(plg, "lab.idx.gz"), lab_full, sizeof lab_full);

    for (int gz = 0; gz < 2; gz++) {
        dataset_t *ds = NULL;
        dataset_opts o = {DATASET_IDX, gz ? pg : p, gz ? plg : pl, NULL, 0};
        T_CHECK(dataset_open(&ds, &o) == 0);
        if (!ds) continue;
        T_CHECK(dataset_size(ds) == 10);
        T_CHECK(dataset_num_classes(ds) == 10);
        T_CHECK(dataset_channels(ds) == 1);
        image_u8 im = {0};
        int pix_ok = 1, lab_ok = 1;
        for (size_t i = 0; i < 10; i++) {
            T_CHECK(dataset_get(ds, i, &im, 32) == 0);
            pix_ok &= im.w == 28 && im.h == 28 && im.c == 1 &&
                      memcmp(im.px, img + 16 + i * 784, 784) == 0;
            lab_ok &= dataset_label(ds, i) == (int)((i * 3) % 10);
        }
        T_CHECK(pix_ok);
        T_CHECK(lab_ok);
        mimic_set_quiet(1);
        T_CHECK(dataset_get(ds, 10, &im, 32) == MIMIC_EINVAL);
        mimic_set_quiet(0);
        image_u8_free(&im);
        dataset_destroy(&ds);
        T_CHECK(ds == NULL);
        dataset_destroy(&ds); /* no-op */
    }
    printf("idx: raw and gz read back\n");
    T_CHECK(count_quiet(DATASET_IDX, p, pl, NULL) == 10 &&
            count_quiet(DATASET_IDX, pg, plg, NULL) == 10);

    /* no labels file: labels -1, no classes */
    dataset_t *ds = NULL;
    T_CHECK(open_quiet(&ds, DATASET_IDX, p, NULL, NULL) == 0);
    T_CHECK(ds && dataset_label(ds, 3) == -1 && dataset_num_classes(ds) == 0);
    dataset_destroy(&ds);

    /* bad magic, unsupported type, wrong ndims */
    char bad[PATH_CAP];
    unsigned char *b = malloc(n);
    memcpy(b, img, n);
    b[0] = 0x12;
    write_file(tp(bad, "badmagic.idx"), b, n);
    T_CHECK(open_quiet(&ds, DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT);
    T_CHECK(names(bad) && strstr(mimic_last_error(), "magic"));
    T_CHECK(ds == NULL);
    T_CHECK(count_quiet(DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    b[0] = 0;
    b[2] = 0x0D; /* float */
    write_file(tp(bad, "float.idx"), b, n);
    T_CHECK(open_quiet(&ds, DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    T_CHECK(open_quiet(&ds, DATASET_IDX, pl, NULL, NULL) == MIMIC_EFORMAT && names(pl));

    /* truncated payload (5 of 10 images), raw and gz */
    write_file(tp(bad, "trunc.idx"), img, 16 + 5 * 784);
    T_CHECK(open_quiet(&ds, DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT);
    T_CHECK(names(bad) && strstr(mimic_last_error(), "truncated"));
    T_CHECK(count_quiet(DATASET_IDX, bad, NULL, NULL) == 10); /* counting reads the header */
    write_gz(tp(bad, "trunc.idx.gz"), img, 16 + 5 * 784);
    T_CHECK(open_quiet(&ds, DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    /* truncated header */
    write_file(tp(bad, "hdr.idx"), img, 10);
    T_CHECK(open_quiet(&ds, DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    /* dims say 10 images, the file holds 11 */
    uint32_t dims11[3] = {11, 28, 28};
    size_t n11;
    unsigned char *img11 = idx_bytes(8, 3, dims11, 11, 784, &n11);
    memcpy(img11, img, 16);
    write_file(tp(bad, "extra.idx"), img11, n11);
    T_CHECK(open_quiet(&ds, DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT);
    T_CHECK(names(bad) && strstr(mimic_last_error(), "dims"));
    write_gz(tp(bad, "extra.idx.gz"), img11, n11);
    T_CHECK(open_quiet(&ds, DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    /* a zero dimension */
    memcpy(b, img, n);
    b[11] = 0;
    b[10] = 0;
    write_file(tp(bad, "zero.idx"), b, n);
    T_CHECK(open_quiet(&ds, DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    /* a gzip file cut in the middle of the compressed stream */
    size_t gn;
    unsigned char *g = read_all(pg, &gn);
    write_file(tp(bad, "cut.idx.gz"), g, gn / 2);
    T_CHECK(open_quiet(&ds, DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    /* a gzip file whose trailer (CRC, length) is missing */
    write_file(tp(bad, "notrailer.idx.gz"), g, gn - 8);
    T_CHECK(open_quiet(&ds, DATASET_IDX, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    /* labels count differs from images */
    lab_full[7] = 9;
    write_file(tp(bad, "lab9.idx"), lab_full, sizeof lab_full - 1);
    T_CHECK(open_quiet(&ds, DATASET_IDX, p, bad, NULL) == MIMIC_EFORMAT && names(bad));
    T_CHECK(count_quiet(DATASET_IDX, p, bad, NULL) == MIMIC_EFORMAT && names(bad));
    /* missing file */
    T_CHECK(open_quiet(&ds, DATASET_IDX, tp(bad, "nope.idx"), NULL, NULL) == MIMIC_EIO);
    T_CHECK(names(bad));
    T_CHECK(ds == NULL);
    printf("idx: malformed files rejected: %s\n", mimic_last_error());
    free(g);
    free(b);
    free(img);
    free(img11);
    free(lab);
}

/* ---------------------------------------------------------------- CSV */

static void csv_row(char *buf, size_t cap, int label, int npix, int seed, const char *usage,
                    int quoted, const char *eol) {
    size_t len = (size_t)snprintf(buf, cap, "%d,%s", label, quoted ? "\"" : "");
    for (int k = 0; k < npix; k++)
        len += (size_t)snprintf(buf + len, cap - len, k ? " %d" : "%d", (seed * 31 + k * 7) % 256);
    snprintf(buf + len, cap - len, "%s,%s%s", quoted ? "\"" : "", usage, eol);
}

static char *fer_csv(int quoted, const char *eol, int bad_count_row, int bad_value_row) {
    static const int labels[4] = {0, 3, 6, 2};
    static const char *usage[4] = {"Training", "Training", "PublicTest", "Training"};
    size_t cap = 5 * 12000;
    char *s = malloc(cap), row[12000];
    snprintf(s, cap, "emotion,pixels,Usage%s", eol);
    for (int r = 0; r < 4; r++) {
        csv_row(row, sizeof row, labels[r], r == bad_count_row ? 2303 : 2304, r, usage[r], quoted,
                eol);
        if (r == bad_value_row) {
            char *sp = strchr(strchr(row, ',') + 1, ' '); /* after the first pixel */
            memcpy(sp + 1, "300 ", 4);
        }
        strcat(s, row);
    }
    return s;
}

static void test_csv(void) {
    char p[PATH_CAP], bad[PATH_CAP];
    for (int variant = 0; variant < 2; variant++) {
        char *s = variant ? fer_csv(1, "\r\n", -1, -1) : fer_csv(0, "\n", -1, -1);
        write_text(tp(p, variant ? "fer_crlf.csv" : "fer.csv"), s);
        free(s);
        dataset_t *ds = NULL;
        dataset_opts o = {DATASET_CSV, p, NULL, "Training", 0};
        T_CHECK(dataset_open(&ds, &o) == 0);
        if (!ds) continue;
        T_CHECK(dataset_size(ds) == 3);
        T_CHECK(dataset_num_classes(ds) == 7); /* over every row, PublicTest included */
        T_CHECK(dataset_channels(ds) == 1);
        T_CHECK(dataset_label(ds, 0) == 0 && dataset_label(ds, 1) == 3 &&
                dataset_label(ds, 2) == 2);
        image_u8 im = {0};
        T_CHECK(dataset_get(ds, 2, &im, 48) == 0); /* file row 3 */
        int ok = im.w == 48 && im.h == 48 && im.c == 1;
        for (int k = 0; ok && k < 2304; k++)
            ok = im.px[k] == (3 * 31 + k * 7) % 256;
        T_CHECK(ok);
        image_u8_free(&im);
        dataset_destroy(&ds);
        T_CHECK(open_quiet(&ds, DATASET_CSV, p, NULL, NULL) == 0);
        T_CHECK(ds && dataset_size(ds) == 4 && dataset_label(ds, 2) == 6);
        dataset_destroy(&ds);
        T_CHECK(open_quiet(&ds, DATASET_CSV, p, NULL, "PublicTest") == 0);
        T_CHECK(ds && dataset_size(ds) == 1 && dataset_label(ds, 0) == 6);
        dataset_destroy(&ds);
        T_CHECK(open_quiet(&ds, DATASET_CSV, p, NULL, "Train") == MIMIC_EINVAL && names(p));
        T_CHECK(count_quiet(DATASET_CSV, p, NULL, "Training") == 3);
        T_CHECK(count_quiet(DATASET_CSV, p, NULL, NULL) == 4);
        T_CHECK(count_quiet(DATASET_CSV, p, NULL, "Train") == MIMIC_EINVAL);
    }
    printf("csv: FER2013 rows read, usage filter ok\n");

    dataset_t *ds = NULL;
    write_text(tp(bad, "hdr.csv"), "label,data\n0,1 2 3 4,Training\n");
    T_CHECK(open_quiet(&ds, DATASET_CSV, bad, NULL, NULL) == MIMIC_EFORMAT);
    T_CHECK(names(bad) && strstr(mimic_last_error(), ":1:"));
    write_text(tp(bad, "empty.csv"), "");
    T_CHECK(open_quiet(&ds, DATASET_CSV, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));

    char *s = fer_csv(0, "\n", 1, -1); /* row 2 of data = line 3 has 2303 pixels */
    write_text(tp(bad, "short.csv"), s);
    free(s);
    T_CHECK(open_quiet(&ds, DATASET_CSV, bad, NULL, NULL) == MIMIC_EFORMAT);
    T_CHECK(names(bad) && strstr(mimic_last_error(), ":3:") && strstr(mimic_last_error(), "2303"));
    printf("csv: %s\n", mimic_last_error());

    s = fer_csv(0, "\n", 0, -1); /* the first row sets the size: 2303 is not square */
    write_text(tp(bad, "short0.csv"), s);
    free(s);
    T_CHECK(open_quiet(&ds, DATASET_CSV, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));

    s = fer_csv(0, "\n", -1, 2); /* line 4 has a pixel 300 */
    write_text(tp(bad, "value.csv"), s);
    free(s);
    T_CHECK(open_quiet(&ds, DATASET_CSV, bad, NULL, NULL) == MIMIC_EFORMAT);
    T_CHECK(names(bad) && strstr(mimic_last_error(), ":4:") && strstr(mimic_last_error(), "300"));
    printf("csv: %s\n", mimic_last_error());
    T_CHECK(count_quiet(DATASET_CSV, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));

    write_text(tp(bad, "fields.csv"), "emotion,pixels,Usage\n1,1 2 3 4\n");
    T_CHECK(open_quiet(&ds, DATASET_CSV, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    write_text(tp(bad, "label.csv"), "emotion,pixels,Usage\nx,1 2 3 4,Training\n");
    T_CHECK(open_quiet(&ds, DATASET_CSV, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    write_text(tp(bad, "chars.csv"), "emotion,pixels,Usage\n1,1 2 a 4,Training\n");
    T_CHECK(open_quiet(&ds, DATASET_CSV, bad, NULL, NULL) == MIMIC_EFORMAT && names(bad));
    T_CHECK(open_quiet(&ds, DATASET_CSV, tp(bad, "missing.csv"), NULL, NULL) == MIMIC_EIO);
    T_CHECK(names(bad) && ds == NULL);
}

/* ---------------------------------------------------------------- JPEG */

/* A smooth RGB (or gray) test image whose ramp direction depends on seed. */
static uint8_t *ramp_image(int w, int h, int c, int seed) {
    uint8_t *px = malloc((size_t)w * h * c);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++) {
                double u = (double)x / w, v = (double)y / h;
                double t = (seed & 1) ? u * 0.7 + v * 0.3 : v * 0.8 + u * 0.2;
                px[((size_t)y * w + x) * c + k] = (uint8_t)(30 + 180 * t + 12 * k + 3 * seed);
            }
    return px;
}

/* Encodes px with TurboJPEG (quality 95, 4:4:4, or gray) and writes it to path. */
static void write_jpeg(const char *path, const uint8_t *px, int w, int h, int c) {
    tjhandle tj = tjInitCompress();
    MIMIC_CHECK(tj != NULL);
    unsigned char *buf = NULL;
    unsigned long size = 0;
    int rc = tjCompress2(tj, px, w, 0, h, c == 1 ? TJPF_GRAY : TJPF_RGB, &buf, &size,
                         c == 1 ? TJSAMP_GRAY : TJSAMP_444, 95, TJFLAG_ACCURATEDCT);
    MIMIC_CHECK(rc == 0);
    write_file(path, buf, size);
    tjFree(buf);
    tjDestroy(tj);
}

/* Mean and max |decoded - source| where the source is box-averaged by factor f. */
static void jpeg_diff(const image_u8 *im, const uint8_t *src, int sw, int sc, int f, double *mean,
                      double *max) {
    double sum = 0, worst = 0;
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++)
            for (int k = 0; k < 3; k++) {
                double ref = 0;
                for (int dy = 0; dy < f; dy++)
                    for (int dx = 0; dx < f; dx++)
                        ref +=
                            src[((size_t)(y * f + dy) * sw + x * f + dx) * sc + (sc == 3 ? k : 0)];
                double d = fabs(im->px[((size_t)y * im->w + x) * 3 + k] - ref / (f * f));
                sum += d;
                if (d > worst) worst = d;
            }
    *mean = sum / ((double)im->w * im->h * 3);
    *max = worst;
}

static void check_decoded(const char *what, const image_u8 *im, const uint8_t *src, int w, int h,
                          int c, int f) {
    T_CHECK(im->w == w / f && im->h == h / f && im->c == 3);
    if (im->w != w / f || im->h != h / f) return;
    double mean, max;
    jpeg_diff(im, src, w, c, f, &mean, &max);
    printf("%-40s %dx%d mean |err| %.2f max %.0f\n", what, im->w, im->h, mean, max);
    T_CHECK(mean < 2.0 && max < 16.0);
}

static void test_labellist(void) {
    char dir[PATH_CAP], list[PATH_CAP], p[PATH_CAP];
    mkdir(tp(dir, "raf"), 0755);
    uint8_t *a = ramp_image(40, 30, 3, 1), *b = ramp_image(40, 30, 3, 2);
    write_jpeg(tp(p, "raf/train_00001.jpg"), a, 40, 30, 3);
    write_jpeg(tp(p, "raf/train_00002.jpg"), b, 40, 30, 3);
    write_text(tp(p, "raf/broken.jpg"), "not a JPEG\n");
    write_text(tp(list, "raf_list.txt"),
               "train_00001.jpg 1\n\n# comment\ntrain_00002.jpg 7\r\nbroken.jpg 3\n");
    dataset_t *ds = NULL;
    dataset_opts o = {DATASET_LABELLIST, dir, list, NULL, 0};
    T_CHECK(count_quiet(DATASET_LABELLIST, dir, list, NULL) == 3);
    T_CHECK(dataset_open(&ds, &o) == 0);
    if (ds) {
        T_CHECK(dataset_size(ds) == 3 && dataset_num_classes(ds) == 8 && dataset_channels(ds) == 3);
        T_CHECK(dataset_label(ds, 0) == 1 && dataset_label(ds, 1) == 7 &&
                dataset_label(ds, 2) == 3);
        image_u8 im = {0};
        T_CHECK(dataset_get(ds, 1, &im, 224) == 0);
        check_decoded("raf: train_00002.jpg", &im, b, 40, 30, 3, 1);
        mimic_set_quiet(1);
        T_CHECK(dataset_get(ds, 2, &im, 224) == MIMIC_EFORMAT);
        T_CHECK(im.w == 0 && dataset_bad_count(ds) == 1);
        T_CHECK(dataset_get(ds, 2, &im, 224) == MIMIC_EFORMAT);
        T_CHECK(dataset_bad_count(ds) == 1); /* distinct samples */
        mimic_set_quiet(0);
        T_CHECK(dataset_get(ds, 0, &im, 224) == 0);
        check_decoded("raf: train_00001.jpg", &im, a, 40, 30, 3, 1);
        image_u8_free(&im);
        dataset_destroy(&ds);
    }
    /* a name that is a file in neither form: one line naming the list, line, both paths */
    write_text(tp(p, "raf_missing.txt"), "train_00001.jpg 1\n\nmissing.jpg 3\n");
    T_CHECK(open_quiet(&ds, DATASET_LABELLIST, dir, p, NULL) == MIMIC_EIO && ds == NULL);
    T_CHECK(names(p) && strstr(mimic_last_error(), ":3:") && names("raf/missing.jpg") &&
            names("raf/missing_aligned.jpg") && !strchr(mimic_last_error(), '\n'));
    printf("list: %s\n", mimic_last_error());
    T_CHECK(count_quiet(DATASET_LABELLIST, dir, p, NULL) == MIMIC_EIO);
    write_text(tp(p, "raf_bad.txt"), "train_00001.jpg 1\ntrain_00002.jpg\n");
    T_CHECK(open_quiet(&ds, DATASET_LABELLIST, dir, p, NULL) == MIMIC_EFORMAT);
    T_CHECK(names(p) && strstr(mimic_last_error(), ":2:"));
    write_text(tp(p, "raf_neg.txt"), "train_00001.jpg -1\n");
    T_CHECK(open_quiet(&ds, DATASET_LABELLIST, dir, p, NULL) == MIMIC_EFORMAT && names(p));
    T_CHECK(open_quiet(&ds, DATASET_LABELLIST, tp(p, "nodir"), list, NULL) == MIMIC_EIO);
    T_CHECK(names(p));
    T_CHECK(open_quiet(&ds, DATASET_LABELLIST, dir, tp(p, "nolist.txt"), NULL) == MIMIC_EIO);
    T_CHECK(names(p) && ds == NULL);
    free(a);
    free(b);
}

static void test_imagefolder(void) {
    char root[PATH_CAP], p[PATH_CAP];
    const char *dirs[] = {"folder", "folder/cat", "folder/dog", "folder/dog/sub", "folder/emu"};
    for (int i = 0; i < 5; i++)
        mkdir(tp(p, dirs[i]), 0755);
    uint8_t *c1 = ramp_image(48, 40, 3, 3), *c2 = ramp_image(33, 17, 3, 4);
    uint8_t *gray = ramp_image(24, 24, 1, 5), *big = ramp_image(512, 512, 3, 6);
    uint8_t *sub = ramp_image(16, 16, 3, 7);
    write_jpeg(tp(p, "folder/cat/1.jpg"), c1, 48, 40, 3);
    write_jpeg(tp(p, "folder/cat/2.JPEG"), c2, 33, 17, 3);
    write_jpeg(tp(p, "folder/cat/3gray.jpeg"), gray, 24, 24, 1);
    write_jpeg(tp(p, "folder/dog/big.jpg"), big, 512, 512, 3);
    write_jpeg(tp(p, "folder/dog/sub/x.jpg"), sub, 16, 16, 3);
    write_text(tp(p, "folder/cat/notes.txt"), "not an image\n");
    write_text(tp(p, "folder/cat/._1.jpg"), "macOS resource fork\n");
    size_t n;
    unsigned char *j = read_all(tp(p, "folder/cat/1.jpg"), &n);
    write_file(tp(p, "folder/cat/bad_trunc.jpg"), j, n * 6 / 10);
    rng_t r;
    rng_seed(&r, 9);
    unsigned char noise[2000];
    for (size_t i = 0; i < sizeof noise; i++)
        noise[i] = (unsigned char)rng_below(&r, 256);
    write_file(tp(p, "folder/cat/random.jpg"), noise, sizeof noise);
    noise[0] = 0xFF, noise[1] = 0xD8, noise[2] = 0xFF, noise[3] = 0xE0; /* JPEG start */
    write_file(tp(p, "folder/cat/soi_random.jpg"), noise, sizeof noise);

    dataset_t *ds = NULL;
    dataset_opts o = {DATASET_IMAGEFOLDER, tp(root, "folder"), NULL, NULL, 0};
    mimic_set_quiet(1); /* empty class emu, skipped notes.txt */
    T_CHECK(dataset_open(&ds, &o) == 0);
    mimic_set_quiet(0);
    T_CHECK(count_quiet(DATASET_IMAGEFOLDER, o.path, NULL, NULL) == 8);
    if (ds) {
        /* cat: 1.jpg 2.JPEG 3gray.jpeg bad_trunc.jpg random.jpg soi_random.jpg;
         * dog: big.jpg sub/x.jpg; emu: empty but still class 2 */
        T_CHECK(dataset_size(ds) == 8 && dataset_num_classes(ds) == 3);
        int labels_ok = 1;
        for (size_t i = 0; i < 8; i++)
            labels_ok &= dataset_label(ds, i) == (i < 6 ? 0 : 1);
        T_CHECK(labels_ok);
        image_u8 im = {0};
        T_CHECK(dataset_get(ds, 0, &im, 224) == 0);
        check_decoded("folder: cat/1.jpg", &im, c1, 48, 40, 3, 1);
        T_CHECK(dataset_get(ds, 1, &im, 224) == 0);
        check_decoded("folder: cat/2.JPEG", &im, c2, 33, 17, 3, 1);
        T_CHECK(dataset_get(ds, 2, &im, 224) == 0);
        check_decoded("folder: cat/3gray.jpeg (gray -> RGB)", &im, gray, 24, 24, 1, 1);
        int same = 1;
        for (int i = 0; i < 24 * 24; i++)
            same &= im.px[3 * i] == im.px[3 * i + 1] && im.px[3 * i] == im.px[3 * i + 2];
        T_CHECK(same);
        mimic_set_quiet(1);
        T_CHECK(dataset_get(ds, 3, &im, 224) == MIMIC_EFORMAT);
        T_CHECK(dataset_get(ds, 4, &im, 224) == MIMIC_EFORMAT);
        T_CHECK(dataset_get(ds, 5, &im, 224) == MIMIC_EFORMAT);
        mimic_set_quiet(0);
        T_CHECK(dataset_bad_count(ds) == 3);
        T_CHECK(dataset_get(ds, 7, &im, 224) == 0);
        check_decoded("folder: dog/sub/x.jpg", &im, sub, 16, 16, 3, 1);

        /* DCT scaling of the 512x512 file: factor, then pixels vs the box-averaged source */
        struct {
            int target, side, f;
        } sc[] = {{224, 256, 2}, {128, 128, 4}, {100, 128, 4}, {256, 256, 2},
                  {192, 192, 0}, {300, 512, 1}, {0, 512, 1},   {64, 64, 8}};
        for (size_t k = 0; k < sizeof sc / sizeof sc[0]; k++) {
            T_CHECK(dataset_get(ds, 6, &im, sc[k].target) == 0);
            T_CHECK(im.w == sc[k].side && im.h == sc[k].side);
            T_CHECK(sc[k].target <= 0 || im.w >= sc[k].target);
            if (sc[k].f) {
                char what[64];
                snprintf(what, sizeof what, "folder: big.jpg target %d (1/%d)", sc[k].target,
                         sc[k].f);
                check_decoded(what, &im, big, 512, 512, 3, sc[k].f);
            }
        }
        T_CHECK(dataset_bad_count(ds) == 3);
        image_u8_free(&im);
        dataset_destroy(&ds);
    }
    T_CHECK(open_quiet(&ds, DATASET_IMAGEFOLDER, tp(p, "nofolder"), NULL, NULL) == MIMIC_EIO);
    T_CHECK(names(p) && ds == NULL);
    printf("folder: %s\n", mimic_last_error());
    T_CHECK(open_quiet(&ds, DATASET_IMAGEFOLDER, tp(p, "folder/emu"), NULL, NULL) == MIMIC_EFORMAT);
    T_CHECK(names(p));
    T_CHECK(open_quiet(&ds, DATASET_IMAGEFOLDER, tp(p, "folder/cat"), NULL, NULL) ==
            MIMIC_EFORMAT); /* files but no class folders */
    free(j);
    free(c1);
    free(c2);
    free(gray);
    free(big);
    free(sub);
}

/* A photo-like w x h image: the ramp plus Gaussian texture noise of sigma 12. */
static uint8_t *photo_image(int w, int h, int seed) {
    uint8_t *px = ramp_image(w, h, 3, seed);
    rng_t r;
    rng_seed(&r, (uint64_t)seed);
    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        int v = px[i] + (int)(rng_normal(&r) * 12.0f);
        px[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    return px;
}

/* subsamp: a TJSAMP_*, plus 100 for a progressive file */
static void write_jpeg_sub(const char *path, const uint8_t *px, int w, int h, int subsamp) {
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    unsigned long size = 0;
    int flags = subsamp >= 100 ? TJFLAG_PROGRESSIVE : 0;
    MIMIC_CHECK(tj &&
                tjCompress2(tj, px, w, 0, h, TJPF_RGB, &buf, &size, subsamp % 100, 90, flags) == 0);
    write_file(path, buf, size);
    tjFree(buf);
    tjDestroy(tj);
}

typedef struct {
    rng_t *r;
    float slo;
    int flip;
    augment_box drawn; /* the box in full-size pixels, for the test */
} crop_arg;

static int crop_cb(void *arg, int w, int h, augment_box *box) {
    crop_arg *c = arg;
    int rc = augment_rrc_draw(box, &c->flip, w, h, c->slo, 1.0f, 0.75f, 4.0f / 3.0f, 1, c->r);
    c->drawn = *box;
    return rc;
}

static int fail_cb(void *arg, int w, int h, augment_box *box) {
    (void)arg, (void)w, (void)h, (void)box;
    return MIMIC_EINVAL;
}

/* Every truncation length and a few hundred byte mutations of a valid JPEG: dataset_get
 * returns 0 or MIMIC_EFORMAT and never crashes (run under ASan to mean something). */
static void test_jpeg_fuzz(void) {
    char dir[PATH_CAP], list[PATH_CAP], p[PATH_CAP];
    mkdir(tp(dir, "fuzz"), 0755);
    uint8_t *src = ramp_image(64, 48, 3, 8);
    write_jpeg(tp(p, "fuzz/x.jpg"), src, 64, 48, 3);
    size_t n;
    unsigned char *good = read_all(p, &n), *buf = malloc(n);
    write_text(tp(list, "fuzz.txt"), "x.jpg 0\n");
    dataset_t *ds = NULL;
    dataset_opts o = {DATASET_LABELLIST, dir, list, NULL, 0};
    T_CHECK(dataset_open(&ds, &o) == 0);
    if (!ds) {
        free(good);
        free(buf);
        free(src);
        return;
    }
    image_u8 im = {0};
    rng_t r;
    rng_seed(&r, 77);
    int ok = 0, bad = 0, other = 0, crop_ok = 0, crop_trunc_bad = 0;
    mimic_set_quiet(1);
    for (int t = 0; t < 400; t++) {
        size_t len = n;
        memcpy(buf, good, n);
        if (t < 100) {
            len = n * (size_t)t / 100; /* truncated at t% */
        } else {
            int flips = 1 + (int)rng_below(&r, 8);
            for (int k = 0; k < flips; k++)
                buf[rng_below(&r, n)] = (unsigned char)rng_u64(&r);
        }
        write_file(p, buf, len);
        int rc = dataset_get(ds, 0, &im, t % 2 ? 16 : 0);
        if (rc == 0)
            ok++;
        else if (rc == MIMIC_EFORMAT)
            bad++;
        else
            other++;
        /* the crop path (libjpeg's API, not TurboJPEG's) on the same damage */
        rng_t rc_r;
        rng_seed(&rc_r, (uint64_t)t);
        crop_arg c = {.r = &rc_r, .slo = 0.2f};
        augment_box box;
        rc = dataset_read_crop(ds, NULL, 0, &im, t % 2 ? 16 : 0, crop_cb, &c, &box);
        if (rc == 0)
            crop_ok++;
        else if (rc != MIMIC_EFORMAT)
            other++;
        else if (t < 100)
            crop_trunc_bad++;
    }
    /* an unsupported marker after the start: TurboJPEG 2.1.5 kept the handle in that
     * error, so every later file failed too (found by fuzz_jpeg); the next good file
     * must decode */
    write_file(p, "\xff\xd8\xff\xfa\x00\x04\x00\x00", 8);
    T_CHECK(dataset_get(ds, 0, &im, 16) == MIMIC_EFORMAT);
    write_file(p, good, n);
    T_CHECK(dataset_get(ds, 0, &im, 0) == 0 && im.w == 64 && im.h == 48);
    /* a start marker, then no marker at all: TurboJPEG 2.1.5 reads the header "fine"
     * without giving a size (found by UBSan in test_loader) */
    memcpy(buf, good, 2);
    memset(buf + 2, 0x5a, n - 2);
    write_file(p, buf, n);
    T_CHECK(dataset_get(ds, 0, &im, 16) == MIMIC_EFORMAT);
    mimic_set_quiet(0);
    printf("fuzz: 400 damaged JPEGs: %d decoded, %d rejected, %d other; crops: %d decoded, %d of "
           "100 truncations rejected\n",
           ok, bad, other, crop_ok, crop_trunc_bad);
    T_CHECK(other == 0 && bad >= 100); /* every truncation is rejected */
    /* a crop may end above a file's cut (the rows below are never decoded) and then
     * succeed: most truncations still fail */
    T_CHECK(crop_trunc_bad >= 50);
    T_CHECK(dataset_bad_count(ds) == 1);
    image_u8_free(&im);
    dataset_destroy(&ds);
    free(good);
    free(buf);
    free(src);
}

/* ---------------------------------------------------------------- crops (the training path) */

/* Runs dataset_read_crop on sample i with stderr captured; returns its code and puts
 * what it printed in msg. */
static int crop_captured(dataset_t *ds, size_t i, image_u8 *im, char *msg, size_t cap) {
    char path[PATH_CAP];
    fflush(stderr);
    int saved = dup(2);
    FILE *f = fopen(tp(path, "stderr.txt"), "w+");
    MIMIC_CHECK(saved >= 0 && f != NULL);
    dup2(fileno(f), 2);
    rng_t r;
    rng_seed(&r, 1);
    crop_arg c = {.r = &r, .slo = 0.2f};
    augment_box box;
    int rc = dataset_read_crop(ds, NULL, i, im, 224, crop_cb, &c, &box);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(f);
    size_t n = fread(msg, 1, cap - 1, f);
    msg[n] = 0;
    fclose(f);
    return rc;
}

/* The training path (header, crop drawn, only the crop decoded, DCT-scaled when the crop
 * is >= 2x the output) against the reference (the whole image decoded at full size,
 * augment_rrc_ws): same draws, and the same output image within a stated tolerance.
 * Unscaled, the crop decode gives the full decode's pixels (libjpeg-turbo's skip and
 * crop keep the upsampling context, and one extra column each side is decoded):
 * |diff| <= 1e-5 in normalised units. Scaled (1/2, 1/4, 1/8 IDCT then the antialiased
 * resize, against the antialiased resize alone): mean |diff| <= 1.5/255 and max <=
 * 40/255 in [0,1] pixel units (a DCT box filter differs from a triangle one at edges
 * and on the noise). */
static void test_jpeg_crop(void) {
    char dir[PATH_CAP], p[PATH_CAP];
    mkdir(tp(dir, "crop"), 0755);
    mkdir(tp(p, "crop/a"), 0755);
    struct {
        const char *name;
        int w, h, sub;
    } f[] = {{"crop/a/0photo420.jpg", 500, 375, TJSAMP_420},
             {"crop/a/1photo444.jpg", 333, 250, TJSAMP_444},
             {"crop/a/2photo422.jpg", 375, 500, TJSAMP_422},
             {"crop/a/3big420.jpg", 1600, 1200, TJSAMP_420},
             {"crop/a/4gray.jpg", 300, 200, -1},
             {"crop/a/5small.jpg", 100, 90, TJSAMP_420},
             {"crop/a/6photo440.jpg", 301, 257, TJSAMP_440},
             {"crop/a/7photo411.jpg", 419, 233, TJSAMP_411},
             {"crop/a/8progressive.jpg", 480, 360, 100 + TJSAMP_420}};
    const int nf = (int)(sizeof f / sizeof f[0]);
    for (int k = 0; k < nf; k++) {
        uint8_t *px = photo_image(f[k].w, f[k].h, 20 + k);
        if (f[k].sub < 0)
            write_jpeg(tp(p, f[k].name), px, f[k].w, f[k].h, 1); /* takes channel 0 */
        else
            write_jpeg_sub(tp(p, f[k].name), px, f[k].w, f[k].h, f[k].sub);
        free(px);
    }
    dataset_t *ds = NULL;
    dataset_opts o = {DATASET_IMAGEFOLDER, dir, NULL, NULL, 0};
    T_CHECK(dataset_open(&ds, &o) == 0 && ds && dataset_size(ds) == (size_t)nf);
    if (!ds) return;
    const int S = 224;
    const size_t n = (size_t)3 * S * S;
    float *ref = testutil_zeros(n), *out = testutil_zeros(n);
    const float mean[3] = {0.485f, 0.456f, 0.406f}, sd[3] = {0.229f, 0.224f, 0.225f};
    image_u8 full = {0}, part = {0};
    augment_ws ws = {0};
    int draws_same = 1, scaled = 0, unscaled = 0;
    double worst_exact = 0, worst_mean = 0, worst_max = 0;
    for (int k = 0; k < nf; k++) {
        T_CHECK(dataset_get(ds, (size_t)k, &full, 0) == 0);
        for (int t = 0; t < 24; t++) {
            const float slo = t % 3 == 0 ? 0.08f : t % 3 == 1 ? 0.2f : 1.0f;
            rng_t r1, r2;
            rng_seed(&r1, 1000u * (unsigned)k + (unsigned)t);
            r2 = r1;
            T_CHECK(augment_rrc_ws(ref, &full, S, slo, 1.0f, 0.75f, 4.0f / 3.0f, 1, mean, sd, 3,
                                   &r1, &ws) == 0);
            crop_arg c = {.r = &r2, .slo = slo};
            augment_box box;
            int rc = dataset_read_crop(ds, NULL, (size_t)k, &part, S, crop_cb, &c, &box);
            T_CHECK(rc == 0);
            if (rc) continue;
            T_CHECK(augment_crop_ws(out, &part, &box, S, c.flip, mean, sd, 3, &ws) == 0);
            draws_same &= rng_u64(&r1) == rng_u64(&r2); /* the same number of draws */
            /* the decoded region is no larger than the crop's iMCU columns and rows */
            T_CHECK(part.h <= (int)ceil(c.drawn.h) + 1 &&
                    part.w <= (int)ceil(c.drawn.w) + 2 * 16 + 2);
            double sum = 0, max = 0;
            for (size_t i = 0; i < n; i++) {
                double d = fabs(out[i] - ref[i]) * sd[i / ((size_t)S * S)]; /* [0,1] units */
                sum += d;
                if (d > max) max = d;
            }
            if (c.drawn.w >= 2 * S && c.drawn.h >= 2 * S) {
                scaled++;
                if (sum / n > worst_mean) worst_mean = sum / n;
                if (max > worst_max) worst_max = max;
            } else {
                unscaled++;
                if (max > worst_exact) worst_exact = max;
            }
        }
    }
    printf("crop decode vs full decode: %d unscaled crops max |diff| %.2g, %d DCT-scaled crops "
           "worst mean |diff| %.4f max %.4f (x255: %.2f, %.1f)\n",
           unscaled, worst_exact, scaled, worst_mean, worst_max, 255 * worst_mean, 255 * worst_max);
    T_CHECK(draws_same);
    T_CHECK(unscaled > 50 && scaled > 5); /* both paths ran */
    T_CHECK(worst_exact <= 1e-5);
    T_CHECK(worst_mean <= 1.5 / 255 && worst_max <= 40.0 / 255);

    /* the crop callback's error comes back unchanged, and nothing is flagged bad */
    augment_box box;
    T_CHECK(dataset_read_crop(ds, NULL, 0, &part, S, fail_cb, NULL, &box) == MIMIC_EINVAL);
    T_CHECK(dataset_bad_count(ds) == 0);
    /* truncated and corrupt files: MIMIC_EFORMAT and one warning line naming the file */
    size_t len;
    unsigned char *good = read_all(tp(p, f[0].name), &len);
    char msg[1024];
    const size_t cuts[] = {2, 100, len / 3, len - 40};
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        dataset_destroy(&ds); /* a fresh set: a file is warned about once per set */
        write_file(tp(p, f[0].name), good, cuts[c]);
        T_CHECK(dataset_open(&ds, &o) == 0 && ds);
        if (!ds) break;
        int rc = crop_captured(ds, 0, &part, msg, sizeof msg);
        char *nl = strchr(msg, '\n');
        int one_line = nl && nl[1] == 0;
        printf("crop: file cut at %zu of %zu bytes: rc %d: %s", cuts[c], len, rc, msg);
        T_CHECK(rc == MIMIC_EFORMAT && one_line && strstr(msg, f[0].name) != NULL);
        T_CHECK(part.w == 0 && part.h == 0); /* no stale pixels */
        /* the reader is still good: the next file decodes */
        rng_t r;
        rng_seed(&r, 3);
        crop_arg ca = {.r = &r, .slo = 0.2f};
        T_CHECK(dataset_read_crop(ds, NULL, 1, &part, S, crop_cb, &ca, &box) == 0);
    }
    memcpy(good + len / 2, "\xff\xd9garbage", 9); /* an end marker mid-scan */
    for (size_t i = 600; i < 700; i++)
        good[i] ^= 0x5a;
    write_file(tp(p, f[0].name), good, len);
    dataset_destroy(&ds);
    T_CHECK(dataset_open(&ds, &o) == 0 && ds);
    if (ds) {
        int rc = crop_captured(ds, 0, &part, msg, sizeof msg);
        printf("crop: corrupt file: rc %d: %s", rc, msg);
        T_CHECK(rc == MIMIC_EFORMAT && strstr(msg, f[0].name) != NULL);
        T_CHECK(dataset_bad_count(ds) == 1);
    }
    free(good);
    image_u8_free(&full);
    image_u8_free(&part);
    augment_ws_free(&ws);
    dataset_destroy(&ds);
    testutil_release_all();
}

/* ---------------------------------------------------------------- FER layouts as shipped */

/* The mimic-worker binary trains `steps` standalone steps on a data set given by `data`
 * flags (RGB, 16x16 tiny model); returns 1 when metrics.jsonl shows the last step, a
 * finite loss and no bad image (printing the log otherwise). */
static int trains(const char *tag, const char *data, const char *stage, int steps) {
    const char *build = getenv("MIMIC_BUILD_DIR");
    char out[PATH_CAP], log[PATH_CAP], cmd[4 * PATH_CAP + 1024], want[32];
    snprintf(out, sizeof out, "%s/run-%s", tmp, tag);
    snprintf(log, sizeof log, "%s/run-%s.txt", tmp, tag);
    snprintf(cmd, sizeof cmd,
             "%s/worker/mimic-worker --standalone --model.img_size=16 --model.in_chans=3 "
             "--model.patch_size=4 --model.embed_dim=32 --model.depth=2 --model.num_heads=2 "
             "--mae.decoder_embed_dim=16 --mae.decoder_depth=1 --mae.decoder_num_heads=2 "
             "--data.mean=0.5,0.5,0.5 --data.std=0.25,0.25,0.25 --train.batch_size=4 "
             "--train.steps=%d --train.warmup_steps=1 --train.lr=1e-3 --train.log_every=1 "
             "--train.ckpt_every=0 --train.out_dir=%s %s %s > %s 2>&1",
             build ? build : ".", steps, out, stage, data, log);
    int rc = system(cmd);
    snprintf(cmd, sizeof cmd, "%s/metrics.jsonl", out);
    char *m = testutil_slurp(cmd);
    snprintf(want, sizeof want, "\"step\":%d,", steps);
    const char *last = m ? strstr(m, want) : NULL, *loss = last ? strstr(last, "\"loss\":") : NULL;
    int ok = rc == 0 && loss && isfinite(atof(loss + 7)) && strstr(last, "\"bad_images\":0");
    printf("standalone %s on %s: %s\n", stage[0] ? stage + 2 : "train.stage=mae", tag,
           ok ? "trains" : "FAIL");
    if (!ok) {
        char *l = testutil_slurp(log);
        fprintf(stderr, "exit %d\n%s\n", rc, l ? l : "(no log)");
        free(l);
    }
    free(m);
    return ok;
}

/* RAF-DB basic as it ships: EmotionLabel/list_patition_label.txt names train_00001.jpg
 * with labels 1..7, Image/aligned holds train_00001_aligned.jpg (100x100). */
static void test_rafdb(void) {
    char root[PATH_CAP], aligned[PATH_CAP], list[PATH_CAP], p[PATH_CAP];
    const char *dirs[] = {"rafdb", "rafdb/basic", "rafdb/basic/EmotionLabel", "rafdb/basic/Image",
                          "rafdb/basic/Image/aligned"};
    for (int i = 0; i < 5; i++)
        mkdir(tp(p, dirs[i]), 0755);
    tp(root, "rafdb/basic");
    tp(aligned, "rafdb/basic/Image/aligned");
    tp(list, "rafdb/basic/EmotionLabel/list_patition_label.txt");
    FILE *f = fopen(list, "w");
    MIMIC_CHECK(f != NULL);
    uint8_t *first = NULL;
    for (int i = 0; i < 16; i++) { /* 12 train, 4 test, listed test first as RAF-DB does */
        int train = i >= 4, k = train ? i - 3 : i + 1;
        char name[64];
        snprintf(name, sizeof name, train ? "train_%05d" : "test_%04d", k);
        fprintf(f, "%s.jpg %d\n", name, 1 + i % 7);
        uint8_t *px = ramp_image(100, 100, 3, i);
        snprintf(p, sizeof p, "%.1900s/%s_aligned.jpg", aligned, name);
        write_jpeg(p, px, 100, 100, 3);
        if (i == 4)
            first = px;
        else
            free(px);
    }
    fclose(f);

    dataset_t *ds = NULL;
    dataset_opts o = {DATASET_LABELLIST, aligned, list, "train_", 1};
    T_CHECK(dataset_open(&ds, &o) == 0);
    if (ds) {
        T_CHECK(dataset_size(ds) == 12 && dataset_num_classes(ds) == 7 &&
                dataset_channels(ds) == 3);
        int labels_ok = 1;
        for (size_t i = 0; i < 12; i++)
            labels_ok &= dataset_label(ds, i) == (int)((i + 4) % 7); /* 1..7 -> 0..6 */
        T_CHECK(labels_ok);
        image_u8 im = {0};
        T_CHECK(dataset_get(ds, 0, &im, 224) == 0);
        check_decoded("rafdb: train_00001.jpg -> _aligned", &im, first, 100, 100, 3, 1);
        image_u8_free(&im);
        dataset_destroy(&ds);
    }
    T_CHECK(count_quiet(DATASET_LABELLIST, aligned, list, "train_") == 12);
    o.usage = "test_";
    T_CHECK(dataset_open(&ds, &o) == 0);
    T_CHECK(ds && dataset_size(ds) == 4 && dataset_label(ds, 3) == 3);
    dataset_destroy(&ds);
    o.usage = NULL;
    o.label_base = 0; /* labels as written: class 0 empty */
    T_CHECK(dataset_open(&ds, &o) == 0);
    T_CHECK(ds && dataset_size(ds) == 16 && dataset_num_classes(ds) == 8 &&
            dataset_label(ds, 0) == 1);
    dataset_destroy(&ds);
    printf("rafdb: list_patition_label.txt + Image/aligned: 12 train, 4 test, labels 0..6\n");

    /* the listed name wins over its _aligned twin */
    uint8_t *a = ramp_image(20, 20, 3, 21), *b = ramp_image(20, 20, 3, 22);
    write_jpeg(tp(p, "rafdb/basic/Image/aligned/both.jpg"), a, 20, 20, 3);
    write_jpeg(tp(p, "rafdb/basic/Image/aligned/both_aligned.jpg"), b, 20, 20, 3);
    write_text(tp(p, "rafdb/both.txt"), "both.jpg 2\n");
    dataset_opts ob = {DATASET_LABELLIST, aligned, p, NULL, 1};
    T_CHECK(dataset_open(&ds, &ob) == 0);
    if (ds) {
        image_u8 im = {0};
        T_CHECK(dataset_get(ds, 0, &im, 0) == 0 && dataset_label(ds, 0) == 1);
        check_decoded("rafdb: both.jpg (listed name first)", &im, a, 20, 20, 3, 1);
        image_u8_free(&im);
        dataset_destroy(&ds);
    }
    /* a label below label_base names the list and line */
    write_text(tp(p, "rafdb/zero.txt"), "train_00001.jpg 1\ntrain_00002.jpg 0\n");
    dataset_opts oz = {DATASET_LABELLIST, aligned, p, NULL, 1};
    mimic_set_quiet(1);
    T_CHECK(dataset_open(&ds, &oz) == MIMIC_EFORMAT && ds == NULL);
    mimic_set_quiet(0);
    T_CHECK(names(p) && strstr(mimic_last_error(), ":2:") && strstr(mimic_last_error(), ">= 1"));
    T_CHECK(open_quiet(&ds, DATASET_LABELLIST, aligned, list, "val_") == MIMIC_EINVAL);
    T_CHECK(names(list) && strstr(mimic_last_error(), "val_"));

    /* the done-when: MAE and MIMIC (7 classes, so labels 1..7 must have become 0..6) train
     * on the layout as shipped */
    char flags[3 * PATH_CAP];
    snprintf(flags, sizeof flags,
             "--data.kind=labellist --data.path=%s --data.labels=%s --data.label_base=1 "
             "--data.usage=train_",
             aligned, list);
    T_CHECK(trains("rafdb", flags, "", 4));
    T_CHECK(
        trains("rafdb", flags, "--train.stage=mimic --mimic.num_classes=7 --mimic.proj_dim=16", 3));
    free(first);
    free(a);
    free(b);
}

/* FERPlus: fer2013.csv's pixels with fer2013new.csv's majority-vote labels. */
static void test_ferplus(void) {
    static const struct {
        const char *votes; /* neutral happiness surprise sadness anger disgust fear contempt
                            * unknown NF */
        int label;         /* -1: FERPlus leaves the image out */
    } rows[] = {
        {"0,10,0,0,0,0,0,0,0,0", 1},  {"4,0,0,1,3,2,0,0,0,0", -1}, /* 4 of 9: no majority */
        {"0,0,0,0,0,0,0,0,0,10", -1},                              /* not a face */
        {"6,1,1,0,0,0,0,0,2,0", 0}, /* single votes dropped: 6 of 8 */
        {"0,0,0,0,0,0,0,6,4,0", 7},   {"0,0,0,0,0,0,0,0,8,2", -1}, /* unknown */
        {"5,5,0,0,0,0,0,0,0,0", -1},  {"2,0,0,0,0,0,8,0,0,0", 6},
    };
    const int n = (int)(sizeof rows / sizeof rows[0]);
    char csv[PATH_CAP], votes[PATH_CAP], bad[PATH_CAP], line[256];
    FILE *fc = fopen(tp(csv, "fer2013.csv"), "w"), *fv = fopen(tp(votes, "fer2013new.csv"), "w");
    MIMIC_CHECK(fc && fv);
    fprintf(fc, "emotion,pixels,Usage\n");
    fprintf(fv, "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
                "unknown,NF\n");
    for (int r = 0; r < n; r++) {
        const char *usage = r < 6 ? "Training" : "PublicTest";
        csv_row(line, sizeof line, r % 7, 16, r, usage, 1, "\n");
        fputs(line, fc);
        if (rows[r].label == -1 && r == 2)
            fprintf(fv, "%s,,%s\n", usage, rows[r].votes); /* FERPlus leaves the name empty */
        else
            fprintf(fv, "%s,fer%07d.png,%s\n", usage, r, rows[r].votes);
    }
    fclose(fc);
    fclose(fv);
    dataset_t *ds = NULL;
    dataset_opts o = {DATASET_CSV, csv, votes, NULL, 0};
    T_CHECK(dataset_open(&ds, &o) == 0);
    if (ds) {
        int k = 0, ok = 1;
        for (int r = 0; r < n; r++)
            if (rows[r].label >= 0) ok &= dataset_label(ds, (size_t)k++) == rows[r].label;
        T_CHECK(ok && dataset_size(ds) == (size_t)k && k == 4);
        T_CHECK(dataset_num_classes(ds) == 8);
        image_u8 im = {0};
        T_CHECK(dataset_get(ds, 1, &im, 4) == 0 && im.w == 4 && im.px[0] == (3 * 31) % 256);
        image_u8_free(&im);
        dataset_destroy(&ds);
    }
    T_CHECK(count_quiet(DATASET_CSV, csv, votes, "Training") == 3);
    T_CHECK(count_quiet(DATASET_CSV, csv, votes, "PublicTest") == 1);
    printf("ferplus: fer2013.csv + fer2013new.csv majority votes: 4 of %d rows kept\n", n);

    /* the vote file is not that file, is short, is long, or is not row for row */
    write_text(tp(bad, "notvotes.csv"), "Usage,Image name,neutral,happiness\nTraining,x,1,2\n");
    T_CHECK(open_quiet(&ds, DATASET_CSV, csv, bad, NULL) == MIMIC_EFORMAT && names(bad));
    T_CHECK(strstr(mimic_last_error(), ":1:") && strstr(mimic_last_error(), "surprise"));
    char *all = testutil_slurp(votes);
    MIMIC_CHECK(all != NULL);
    char *cut = all;
    for (int i = 0; i < n; i++) /* header + n-1 rows */
        cut = strchr(cut, '\n') + 1;
    write_file(tp(bad, "short.csv"), all, (size_t)(cut - all));
    T_CHECK(open_quiet(&ds, DATASET_CSV, csv, bad, NULL) == MIMIC_EFORMAT && names(bad));
    T_CHECK(names(csv) && strstr(mimic_last_error(), ":9"));
    printf("ferplus: %s\n", mimic_last_error());
    FILE *fl = fopen(tp(bad, "long.csv"), "w");
    fprintf(fl, "%sTraining,x.png,10,0,0,0,0,0,0,0,0,0\n", all);
    fclose(fl);
    T_CHECK(open_quiet(&ds, DATASET_CSV, csv, bad, NULL) == MIMIC_EFORMAT && names(bad));
    T_CHECK(strstr(mimic_last_error(), ":10:") != NULL);
    char *pub = strstr(all, "PublicTest");
    memcpy(pub, "PrivateTes", 10); /* row 7 of the votes (line 8) */
    write_text(tp(bad, "shifted.csv"), all);
    T_CHECK(open_quiet(&ds, DATASET_CSV, csv, bad, NULL) == MIMIC_EFORMAT && names(bad));
    T_CHECK(names(csv) && strstr(mimic_last_error(), ":8:"));
    printf("ferplus: %s\n", mimic_last_error());
    free(all);
    write_text(tp(bad, "votes_nan.csv"),
               "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
               "unknown,NF\nTraining,a.png,1,x,0,0,0,0,0,0,0,0\n");
    T_CHECK(open_quiet(&ds, DATASET_CSV, csv, bad, NULL) == MIMIC_EFORMAT && names(bad));
    T_CHECK(strstr(mimic_last_error(), ":2:") != NULL);
}

/* Image-folder releases: FER2013 as Kaggle ships it (train/angry/x.jpg) and AffectNet's
 * class-numbered folders (train_set/0 .. 7): labels are the sorted folder names. */
static void test_class_folders(void) {
    char p[PATH_CAP];
    mkdir(tp(p, "affectnet"), 0755);
    mkdir(tp(p, "affectnet/train_set"), 0755);
    uint8_t *px = ramp_image(24, 24, 3, 30);
    for (int c = 7; c >= 0; c--) {
        snprintf(p, sizeof p, "%s/affectnet/train_set/%d", tmp, c);
        mkdir(p, 0755);
        for (int i = 0; i < 2; i++) {
            snprintf(p, sizeof p, "%s/affectnet/train_set/%d/%d.jpg", tmp, c, 100 * c + i);
            write_jpeg(p, px, 24, 24, 3);
        }
    }
    dataset_t *ds = NULL;
    T_CHECK(open_quiet(&ds, DATASET_IMAGEFOLDER, tp(p, "affectnet/train_set"), NULL, NULL) == 0);
    if (ds) {
        int ok = dataset_size(ds) == 16 && dataset_num_classes(ds) == 8;
        for (size_t i = 0; ok && i < 16; i++)
            ok = dataset_label(ds, i) == (int)(i / 2);
        T_CHECK(ok);
        dataset_destroy(&ds);
    }
    printf("affectnet-style: train_set/0..7 folders -> labels 0..7\n");
    free(px);
}

/* ---------------------------------------------------------------- real data, speed */

static void test_fashion_mnist(void) {
    const char *dir = "/usr/share/datasets/fashion-mnist";
    char img[512], lab[512];
    snprintf(img, sizeof img, "%s/train-images-idx3-ubyte.gz", dir);
    snprintf(lab, sizeof lab, "%s/train-labels-idx1-ubyte.gz", dir);
    FILE *f = fopen(img, "rb");
    if (!f) {
        printf("fashion-mnist: not installed, skipped\n");
        return;
    }
    fclose(f);
    dataset_t *ds = NULL;
    dataset_opts o = {DATASET_IDX, img, lab, NULL, 0};
    double t0 = mimic_now();
    T_CHECK(dataset_open(&ds, &o) == 0);
    if (!ds) return;
    printf("fashion-mnist: opened 60000 in %.2f s\n", mimic_now() - t0);
    T_CHECK(dataset_size(ds) == 60000 && dataset_num_classes(ds) == 10);
    T_CHECK(dataset_label(ds, 0) == 9); /* ankle boot */
    image_u8 im = {0};
    T_CHECK(dataset_get(ds, 0, &im, 32) == 0);
    T_CHECK(im.w == 28 && im.h == 28 && im.c == 1 && im.px[0] == 0);
    int hist[10] = {0}, balanced = 1;
    for (size_t i = 0; i < 60000; i++)
        hist[dataset_label(ds, i)]++;
    for (int k = 0; k < 10; k++)
        balanced &= hist[k] == 6000;
    T_CHECK(balanced);

    float out[32 * 32], mean = 0.2860f, std = 0.3530f;
    rng_t r;
    rng_seed(&r, 1);
    const int iters = 20000;
    t0 = mimic_now();
    for (int i = 0; i < iters; i++) {
        size_t idx = (size_t)rng_below(&r, 60000);
        if (dataset_get(ds, idx, &im, 32) ||
            augment_rrc(out, &im, 32, 0.2f, 1.0f, 0.75f, 4.0f / 3.0f, 1, &mean, &std, 1, &r))
            testutil_failures++;
    }
    printf("bench fashion-mnist get + rrc 28 -> 32: %.0f images/s (1 thread)\n",
           iters / (mimic_now() - t0));
    image_u8_free(&im);
    dataset_destroy(&ds);

    snprintf(img, sizeof img, "%s/t10k-images-idx3-ubyte.gz", dir);
    snprintf(lab, sizeof lab, "%s/t10k-labels-idx1-ubyte.gz", dir);
    T_CHECK(dataset_open(&ds, &o) == 0);
    T_CHECK(ds && dataset_size(ds) == 10000 && dataset_num_classes(ds) == 10);
    dataset_destroy(&ds);
}

/* A photo-like 500x375 JPEG (smooth shading plus texture noise, 4:2:0, quality 90, as
 * typical of ImageNet / RAF-DB files), decoded and cropped to 224. */
static void bench_jpeg(void) {
    char dir[PATH_CAP], list[PATH_CAP], p[PATH_CAP];
    mkdir(tp(dir, "bench"), 0755);
    const int w = 500, h = 375;
    uint8_t *px = ramp_image(w, h, 3, 9);
    rng_t r;
    rng_seed(&r, 5);
    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        int v = px[i] + (int)(rng_normal(&r) * 12.0f);
        px[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    unsigned long size = 0;
    MIMIC_CHECK(tjCompress2(tj, px, w, 0, h, TJPF_RGB, &buf, &size, TJSAMP_420, 90, 0) == 0);
    write_file(tp(p, "bench/photo.jpg"), buf, size);
    tjFree(buf);
    tjDestroy(tj);
    write_text(tp(list, "bench.txt"), "photo.jpg 0\n");
    dataset_t *ds = NULL;
    dataset_opts o = {DATASET_LABELLIST, dir, list, NULL, 0};
    T_CHECK(dataset_open(&ds, &o) == 0);
    if (!ds) {
        free(px);
        return;
    }
    image_u8 im = {0};
    float *out = malloc(sizeof(float) * 3 * 224 * 224);
    float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    const int iters = 300;
    double t_dec = 0, t0 = mimic_now();
    for (int i = 0; i < iters; i++) {
        double t1 = mimic_now();
        if (dataset_get(ds, 0, &im, 224)) testutil_failures++;
        t_dec += mimic_now() - t1;
        if (augment_rrc(out, &im, 224, 0.08f, 1.0f, 0.75f, 4.0f / 3.0f, 1, mean, std, 3, &r))
            testutil_failures++;
    }
    double dt = mimic_now() - t0;
    printf("bench 500x375 JPEG (%lu bytes) get + rrc -> 224: %.0f images/s (1 thread; decode "
           "%.2f ms, augment %.2f ms)\n",
           size, iters / dt, 1e3 * t_dec / iters, 1e3 * (dt - t_dec) / iters);
    /* the training path: only the crop decoded (same draws) */
    augment_ws ws = {0};
    t0 = mimic_now();
    for (int i = 0; i < iters; i++) {
        crop_arg c = {.r = &r, .slo = 0.08f};
        augment_box box;
        if (dataset_read_crop(ds, NULL, 0, &im, 224, crop_cb, &c, &box) ||
            augment_crop_ws(out, &im, &box, 224, c.flip, mean, std, 3, &ws))
            testutil_failures++;
    }
    printf("bench 500x375 JPEG read_crop + crop -> 224: %.0f images/s (1 thread)\n",
           iters / (mimic_now() - t0));
    augment_ws_free(&ws);
    free(out);
    free(px);
    image_u8_free(&im);
    dataset_destroy(&ds);
}

int main(void) {
    MIMIC_CHECK(strlen(testutil_tmpdir()) < sizeof tmp);
    snprintf(tmp, sizeof tmp, "%s", testutil_tmpdir());
    test_idx();
    test_csv();
    test_labellist();
    test_rafdb();
    test_ferplus();
    test_class_folders();
    test_imagefolder();
    test_jpeg_fuzz();
    test_jpeg_crop();
    test_fashion_mnist();
    bench_jpeg();
    return testutil_summary("test_dataset");
}
