// TIMEOUT: 180
/* test_fiqa — SDD-FIQA quality scores (eval/fiqa.h, mimic-fiqa):
 *  1. the 1-D Wasserstein distance against hand-computed cases (equal sizes, unequal
 *     sizes, identical samples = 0, a shifted sample = the shift) and against the CDF
 *     form integral |F_a(x) - F_b(x)| dx on random samples of unequal sizes;
 *  2. a synthetic labelled IDX set (4 classes of patterns) where known images are
 *     corrupted (heavy noise; wrong labels): through the mimic-fiqa binary, with pixel
 *     features and with a random ViT, the corrupted ones score lower on average than
 *     the clean ones (asserted per corruption), scores are 0..100 with both ends reached,
 *     the run is deterministic and another seed changes it; the filtered copy holds
 *     n - floor(drop n) images, mostly the clean ones, and the data layer reads it back;
 *  3. the regression head recovers a linear score (held-out r > 0.95);
 *  4. bad inputs: m larger than a class, a class of one image, a missing encoder or data
 *     file: a non-zero exit or error code with one line naming the key, class or file. */
#include "common.h"
#include "config.h"
#include "dataset.h"
#include "fiqa.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* ------------------------------------------------------------------ W1 */

static double w1(const float *a, int n, const float *b, int m) {
    float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)m * sizeof *y);
    memcpy(x, a, (size_t)n * sizeof *x);
    memcpy(y, b, (size_t)m * sizeof *y);
    double d = fiqa_wasserstein1(x, n, y, m);
    free(x);
    free(y);
    return d;
}

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* integral over x of |F_a(x) - F_b(x)|, the CDF form, in double */
static double w1_cdf(const float *a, int n, const float *b, int m) {
    double *pts = malloc((size_t)(n + m) * sizeof *pts);
    for (int i = 0; i < n; i++)
        pts[i] = a[i];
    for (int j = 0; j < m; j++)
        pts[n + j] = b[j];
    qsort(pts, (size_t)(n + m), sizeof *pts, cmpd);
    double acc = 0;
    for (int k = 0; k + 1 < n + m; k++) {
        double x = pts[k], fa = 0, fb = 0;
        for (int i = 0; i < n; i++)
            fa += a[i] <= x;
        for (int j = 0; j < m; j++)
            fb += b[j] <= x;
        acc += fabs(fa / n - fb / m) * (pts[k + 1] - pts[k]);
    }
    free(pts);
    return acc;
}

static void check_w1(const char *what, double got, double want) {
    int ok = fabs(got - want) <= 1e-6 * (1 + fabs(want));
    printf("W1 %-40s %.9f (want %.9f) %s\n", what, got, want, ok ? "ok" : "FAIL");
    T_CHECK(ok);
}

static void test_w1(void) {
    const float a3[] = {3, 1, 2}, b3[] = {4, 2, 3};
    check_w1("{1,2,3} vs {2,3,4}", w1(a3, 3, b3, 3), 1.0);
    const float c3[] = {0, 1, 0}, d3[] = {1, 0, 1};
    check_w1("{0,0,1} vs {0,1,1}", w1(c3, 3, d3, 3), 1.0 / 3);
    const float e2[] = {1, 0}, f3[] = {0, 1, 0};
    /* quantiles: a 0 on (0,1/2], 1 after; b 0 on (0,2/3], 1 after: |1-0| on (1/2,2/3] */
    check_w1("{0,1} vs {0,0,1} (unequal)", w1(e2, 2, f3, 3), 1.0 / 6);
    const float g1[] = {0}, h2[] = {3, 1};
    check_w1("{0} vs {1,3} (unequal)", w1(g1, 1, h2, 2), 2.0);
    const float i4[] = {1, 2, 3, 4}, j1[] = {10};
    check_w1("{1,2,3,4} vs {10} (unequal)", w1(i4, 4, j1, 1), 7.5);
    const float k2[] = {0, 1}, l4[] = {0.5f, 0.5f, 0.5f, 0.5f};
    check_w1("{0,1} vs {.5 x4} (unequal)", w1(k2, 2, l4, 4), 0.5);
    unsigned long long seed = 5;
    float r[24], s[24], t[17];
    testutil_fill(r, 24, -1, 1, &seed);
    testutil_fill(t, 17, -0.5f, 1.5f, &seed);
    check_w1("identical samples", w1(r, 24, r, 24), 0.0);
    for (int i = 0; i < 24; i++)
        s[i] = r[23 - i] + 0.25f; /* the shift, in another order */
    check_w1("shifted by 0.25", w1(r, 24, s, 24), 0.25);
    check_w1("random 24 vs 17 against the CDF form", w1(r, 24, t, 17), w1_cdf(r, 24, t, 17));
    check_w1("random 17 vs 24 (symmetric)", w1(t, 17, r, 24), w1_cdf(r, 24, t, 17));
}

/* ------------------------------------------------------------------ a synthetic set */

enum { N = 240, SIDE = 16, CLASSES = 4 };
/* image i is corrupted by noise when i % 10 == 3, has a wrong label when i % 10 == 7 */
static int noisy(int i) {
    return i % 10 == 3;
}
static int wrong(int i) {
    return i % 10 == 7;
}

/* Class c: a stripe pattern of its own orientation and frequency, with a per-image
 * contrast and a little noise; noisy images are mostly uniform noise. */
static int write_set(const char *images, const char *labels) {
    FILE *f = fopen(images, "wb"), *g = fopen(labels, "wb");
    if (!f || !g) return -1;
    unsigned char hdr[16] = {0, 0, 8, 3, 0, 0, 0, N, 0, 0, 0, SIDE, 0, 0, 0, SIDE};
    unsigned char lhdr[8] = {0, 0, 8, 1, 0, 0, 0, N};
    fwrite(hdr, 1, 16, f);
    fwrite(lhdr, 1, 8, g);
    unsigned long long seed = 99;
    for (int i = 0; i < N; i++) {
        int c = i % CLASSES;
        float u[SIDE * SIDE], gain[1];
        testutil_fill(u, SIDE * SIDE, -1, 1, &seed);
        testutil_fill(gain, 1, 0.6f, 1.0f, &seed);
        for (int y = 0; y < SIDE; y++)
            for (int x = 0; x < SIDE; x++) {
                double ph = c == 0   ? x * 0.8
                            : c == 1 ? y * 0.8
                            : c == 2 ? (x + y) * 0.6
                                     : (x - y) * 0.6;
                double v = 0.5 + 0.4 * gain[0] * sin(ph) + 0.05 * u[y * SIDE + x];
                if (noisy(i)) v = 0.5 + 0.5 * u[y * SIDE + x] + 0.1 * sin(ph);
                fputc((int)(255 * fmin(1, fmax(0, v))), f);
            }
        fputc(wrong(i) ? (c + 1 + i % 3) % CLASSES : c, g);
    }
    fclose(f);
    fclose(g);
    return 0;
}

static char data[1100], labels[1100], bin[1100];

/* Runs mimic-fiqa with the set's keys and extra flags; returns its exit status. */
static int run_fiqa(const char *extra, const char *log) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "%s --data.kind=idx --data.path=%s --data.labels=%s --data.mean=0.5 --data.std=0.25 "
             "--model.img_size=16 --model.in_chans=1 --model.patch_size=4 --model.embed_dim=32 "
             "--model.depth=2 --model.num_heads=2 --eval.batch_size=64 %s > %s 2>&1",
             bin, data, labels, extra, log);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Reads a scores CSV: score[index]; returns the rows read. */
static int read_scores(const char *path, float *score, int *lab) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[256];
    int n = 0;
    if (!fgets(line, sizeof line, f) || strcmp(line, "index,label,score\n") != 0) {
        fclose(f);
        return -1;
    }
    unsigned idx;
    int y;
    float q;
    while (fscanf(f, "%u,%d,%f", &idx, &y, &q) == 3 && idx < N) {
        score[idx] = q;
        lab[idx] = y;
        n++;
    }
    fclose(f);
    return n;
}

static void check_scores(const char *what, const float *q) {
    double sum[3] = {0, 0, 0}, lo = 1e9, hi = -1e9;
    int cnt[3] = {0, 0, 0};
    for (int i = 0; i < N; i++) {
        int k = noisy(i) ? 1 : wrong(i) ? 2 : 0;
        sum[k] += q[i];
        cnt[k]++;
        lo = fmin(lo, q[i]);
        hi = fmax(hi, q[i]);
    }
    double clean = sum[0] / cnt[0], nz = sum[1] / cnt[1], wr = sum[2] / cnt[2];
    int ok = clean > nz + 10 && clean > wr + 10 && lo == 0 && hi == 100;
    printf("%s: mean score clean %.2f (%d), heavy noise %.2f (%d), wrong label %.2f (%d); range "
           "%.0f..%.0f %s\n",
           what, clean, cnt[0], nz, cnt[1], wr, cnt[2], lo, hi, ok ? "ok" : "FAIL");
    T_CHECK(ok);
}

static void setup(void) {
    const char *tmp = testutil_tmpdir();
    snprintf(data, sizeof data, "%.1000s/fiqa-img.idx", tmp);
    snprintf(labels, sizeof labels, "%.1000s/fiqa-lab.idx", tmp);
    const char *build = getenv("MIMIC_BUILD_DIR");
    snprintf(bin, sizeof bin, "%.1000s/eval/mimic-fiqa", build ? build : ".");
    T_CHECK(write_set(data, labels) == 0);
}

static void test_synthetic(void) {
    const char *tmp = testutil_tmpdir();
    char csv[1200], csv2[1200], log[1200], flags[4096], prefix[1200];
    static float q[N], q2[N];
    static int y[N];
    snprintf(csv, sizeof csv, "%.1000s/pixels.csv", tmp);
    snprintf(log, sizeof log, "%.1000s/fiqa-log.txt", tmp);
    snprintf(prefix, sizeof prefix, "%.1000s/kept", tmp);
    snprintf(flags, sizeof flags,
             "--eval.features=pixels --fiqa.m=12 --fiqa.repeats=6 --scores %s --filtered %s "
             "--fiqa.drop=0.25",
             csv, prefix);
    T_CHECK(run_fiqa(flags, log) == 0);
    T_CHECK(read_scores(csv, q, y) == N);
    for (int i = 0; i < N; i++) /* the labels as the file has them */
        T_CHECK(y[i] == (wrong(i) ? (i % CLASSES + 1 + i % 3) % CLASSES : i % CLASSES));
    check_scores("pixels", q);
    /* the filtered copy: N - floor(0.25 N) images, the dropped ones mostly corrupted (20%
     * of the set is), and the data layer reads it */
    char fi[1300], fl[1300];
    snprintf(fi, sizeof fi, "%s-images-idx3-ubyte", prefix);
    snprintf(fl, sizeof fl, "%s-labels-idx1-ubyte", prefix);
    dataset_opts o = {.kind = DATASET_IDX, .path = fi, .labels = fl};
    dataset_t *ds = NULL;
    T_CHECK(dataset_open(&ds, &o) == 0);
    int kept = ds ? (int)dataset_size(ds) : -1;
    uint8_t keep[N];
    T_CHECK(fiqa_keep(keep, q, NULL, N, 0.25f) == N - 60 && kept == N - 60);
    int dropped_bad = 0;
    for (int i = 0; i < N; i++)
        dropped_bad += !keep[i] && (noisy(i) || wrong(i));
    printf("filtered: %d kept; %d of the 60 dropped are corrupted (48 corrupted in all)\n", kept,
           dropped_bad);
    T_CHECK(dropped_bad >= 40);
    /* the kept images are the file's rows in order: compare labels */
    int k = 0, same = 1;
    for (int i = 0; i < N && ds; i++)
        if (keep[i]) same &= dataset_label(ds, (size_t)k++) == y[i];
    T_CHECK(same);
    dataset_destroy(&ds);
    /* per class: each class of 60 loses its 15 lowest */
    int cls[N], per[CLASSES] = {0};
    for (int i = 0; i < N; i++)
        cls[i] = i % CLASSES;
    T_CHECK(fiqa_keep(keep, q, cls, N, 0.25f) == N - 60);
    for (int i = 0; i < N; i++) {
        per[cls[i]] += keep[i];
        for (int j = 0; j < N; j++) /* a kept image outscores every dropped one of its class */
            if (cls[j] == cls[i] && keep[i] && !keep[j]) T_CHECK(q[i] >= q[j]);
    }
    T_CHECK(per[0] == 45 && per[1] == 45 && per[2] == 45 && per[3] == 45);

    /* deterministic; another seed draws other partners */
    T_CHECK(run_fiqa(flags, log) == 0);
    T_CHECK(read_scores(csv, q2, y) == N && memcmp(q, q2, sizeof q) == 0);
    snprintf(csv2, sizeof csv2, "%.1000s/seed.csv", tmp);
    snprintf(flags, sizeof flags,
             "--eval.features=pixels --fiqa.m=12 --fiqa.repeats=6 --scores %s --train.seed=3",
             csv2);
    T_CHECK(run_fiqa(flags, log) == 0);
    T_CHECK(read_scores(csv2, q2, y) == N && memcmp(q, q2, sizeof q) != 0);

    /* a random ViT's cls features, the head, and the paper's m 24, K 12 */
    char head[1200];
    snprintf(head, sizeof head, "%.1000s/head.safetensors", tmp);
    snprintf(flags, sizeof flags,
             "--eval.features=random --scores %s --fiqa.head_epochs=20 --head %s", csv, head);
    T_CHECK(run_fiqa(flags, log) == 0);
    T_CHECK(read_scores(csv, q, y) == N);
    check_scores("random ViT", q);
    char *text = testutil_slurp(log);
    T_CHECK(text && strstr(text, "fiqa head: SmoothL1") && strstr(text, "written to"));
    if (text) printf("%s", strstr(text, "fiqa head:") ? strstr(text, "fiqa head:") : "");
    free(text);
}

/* ------------------------------------------------------------------ head */

static void test_head(void) {
    enum { n = 400, D = 8 };
    static float x[n * D], q[n], w[D];
    unsigned long long seed = 42;
    testutil_fill(x, n * D, -1, 1, &seed);
    const float wt[D] = {10, -20, 5, 0, 0, 15, -5, 8};
    for (int i = 0; i < n; i++) {
        double v = 50;
        for (int d = 0; d < D; d++)
            v += wt[d] * x[i * D + d];
        q[i] = (float)v;
    }
    fiqa_head_cfg_t c = {40, 0.2f, 0.01f, 1};
    fiqa_head_result_t r;
    float b;
    T_CHECK(fiqa_head_fit(w, &b, &r, x, q, n, D, &c) == 0);
    printf("head on a linear score: fit MAE %.2f r %.4f, held out MAE %.2f r %.4f; b %.2f\n",
           r.mae_fit, r.r_fit, r.mae_held, r.r_held, b);
    T_CHECK(r.n_held == 40 && r.r_held > 0.95 && r.mae_held < 5);
    c.epochs = 0;
    mimic_set_quiet(1);
    T_CHECK(fiqa_head_fit(w, &b, &r, x, q, n, D, &c) == MIMIC_EINVAL);
    mimic_set_quiet(0);
}

/* ------------------------------------------------------------------ bad inputs */

static void one_line(const char *what, int rc, const char *want) {
    const char *why = mimic_last_error();
    int ok = rc != 0 && strstr(why, want) && !strchr(why, '\n');
    printf("%-28s -> %s %s\n", what, why, ok ? "ok" : "FAIL");
    T_CHECK(ok);
}

static void test_bad(void) {
    /* 3 classes of 4, 4, 1 and of 4, 4, 3 images */
    const float x[11 * 2] = {1, 0,   1, .1f, 1, .2f, 1, .3f, 0,   1,  .1f,
                             1, .2f, 1, .3f, 1, -1,  0, -1,  .1f, -1, .2f};
    const int y1[11] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 0, 0},
              y3[11] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2};
    float q[11];
    fiqa_cfg_t c = {3, 2, 1};
    mimic_set_quiet(1);
    one_line("a class of one image", fiqa_score(q, NULL, x, y1, 11, 2, &c), "class 2 has 1 image");
    c.m = 4;
    one_line("m larger than a class", fiqa_score(q, NULL, x, y3, 11, 2, &c), "config fiqa.m: 4");
    c.m = 0;
    one_line("m = 0", fiqa_score(q, NULL, x, y3, 11, 2, &c), "config fiqa.m");
    c.m = 2;
    c.repeats = 0;
    one_line("repeats = 0", fiqa_score(q, NULL, x, y3, 11, 2, &c), "config fiqa.repeats");
    const int y0[11] = {0};
    c.repeats = 1;
    one_line("one class", fiqa_score(q, NULL, x, y0, 11, 2, &c), "1 class");
    uint8_t keep[11];
    one_line("drop 1", fiqa_keep(keep, q, NULL, 11, 1.0f), "config fiqa.drop");
    mimic_set_quiet(0);
    c.m = 2;
    T_CHECK(fiqa_score(q, NULL, x, y3, 11, 2, &c) == 0);

    /* the binary: one error line naming the file or key, exit 1 (2 for usage) */
    char log[1200], csv[1200], flags[4096];
    snprintf(log, sizeof log, "%.1000s/bad-log.txt", testutil_tmpdir());
    snprintf(csv, sizeof csv, "%.1000s/bad.csv", testutil_tmpdir());
    struct {
        const char *flags, *want;
        int code;
    } cases[] = {
        {"--encoder /nonexistent/enc.safetensors", "/nonexistent/enc.safetensors", 1},
        {"--eval.features=pixels --data.path=/nonexistent/img.idx", "/nonexistent/img.idx", 1},
        {"--eval.features=pixels --fiqa.m=100", "config fiqa.m: 100", 1},
        {"--eval.features=pixels --fiqa.limit=5", "class", 1},
        {"--eval.features=pixels --fiqa.drop=1.5 --filtered /tmp/x", "config fiqa.drop", 2},
        {"--eval.features=pixels --fiqa.per_class=2", "config fiqa.per_class", 2},
        {"--eval.features=pixels --fiqa.limit=-1", "config fiqa.limit", 2},
        {"--eval.features=pixels --fiqa.repeats=0", "config fiqa.repeats", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(flags, sizeof flags, "%s --scores %s", cases[i].flags, csv);
        int code = run_fiqa(flags, log);
        char *text = testutil_slurp(log);
        int lines = 0;
        for (const char *p = text; p && *p; p++)
            lines += *p == '\n';
        int ok = code == cases[i].code && text && strstr(text, cases[i].want) && lines <= 2;
        printf("mimic-fiqa %-50s exit %d: %s", cases[i].flags, code, text ? text : "(no output)\n");
        printf("  %s\n", ok ? "ok" : "FAIL");
        T_CHECK(ok);
        free(text);
    }
}

int main(void) {
    setup();
    test_w1();
    test_head();
    test_bad();
    test_synthetic();
    return testutil_summary("test_fiqa");
}
