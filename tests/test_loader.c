/* test_loader — the loader's threads change nothing but speed: the batches built
 * synchronously (data.threads = 0, loader_fill) and with 1, 2 and 4 threads running
 * ahead (loader_submit / loader_wait, double-buffered like a trainer) are equal byte for
 * byte, over several batches and two epochs, on an IDX set and on a JPEG ImageFolder
 * with corrupt files (whose batches come back compacted: checked against one-sample
 * fills). The same with two views per sample (loader_set_views): identical batches
 * whatever data.threads, view 1 != view 2, both views of a corrupt sample dropped
 * together, and no allocation per batch once warmed up; evaluation mode
 * (loader_set_eval) equals augment_resize of the decoded sample; one view, which decodes
 * only its crop, equals augment_rrc_ws on the whole decoded image. Also: exact bad-sample
 * counts, duplicate indices, a hard error raised in the caller's thread, and
 * loader_count equal to loader_size for every data set kind. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <turbojpeg.h>

#include "augment.h"
#include "common.h"
#include "config.h"
#include "dataset.h"
#include "loader.h"
#include "order.h"
#include "rng.h"
#include "testutil.h"

#define MAXB 16
#define PATH_CAP 1200

#include "alloccount.h"
#define COUNT_ALLOCS ALLOCCOUNT_ON

/* A fixed list of batches: per-epoch permutations cut into chunks of B, V views each. */
typedef struct {
    int nb, B, L, V;
    uint32_t idx[MAXB][64];
    int n[MAXB];
    uint64_t epoch[MAXB];
} plan_t;

/* Everything a run produced, batch after batch. */
typedef struct {
    int count[MAXB];
    float *imgs, *noise; /* nb * B samples (V images each) */
    int *labels;
    size_t bad;
} trace_t;

static void plan_make(plan_t *p, uint32_t n, int B, int nb, int L, uint64_t seed) {
    uint32_t *perm = malloc(n * sizeof *perm);
    p->nb = nb;
    p->B = B;
    p->L = L;
    p->V = 1;
    uint64_t epoch = 0;
    uint32_t cursor = 0;
    order_permutation(perm, n, seed, epoch);
    for (int j = 0; j < nb; j++) {
        if (cursor == n) {
            order_permutation(perm, n, seed, ++epoch);
            cursor = 0;
        }
        p->epoch[j] = epoch;
        p->n[j] = (int)(n - cursor < (uint32_t)B ? n - cursor : (uint32_t)B);
        memcpy(p->idx[j], perm + cursor, (size_t)p->n[j] * sizeof(uint32_t));
        cursor += (uint32_t)p->n[j];
    }
    free(perm);
}

/* The floats of one sample: its V images. */
static size_t sample_floats(const mimic_cfg_t *c, const plan_t *p) {
    return (size_t)p->V * c->model.in_chans * c->model.img_size * c->model.img_size;
}

static void trace_alloc(trace_t *t, const plan_t *p, size_t img_sz) {
    size_t ns = (size_t)p->nb * p->B;
    t->imgs = calloc(ns * img_sz, sizeof(float));
    t->noise = calloc(ns * (size_t)p->L, sizeof(float));
    t->labels = calloc(ns, sizeof(int));
}

static void trace_free(trace_t *t) {
    free(t->imgs);
    free(t->noise);
    free(t->labels);
}

/* Runs the plan with `threads` loader threads: synchronously (loader_fill) or running
 * one batch ahead into a second set of buffers. Returns 0, or the first error. */
static int run(trace_t *t, const plan_t *p, const mimic_cfg_t *cfg, int threads, int ahead) {
    mimic_cfg_t c = *cfg;
    c.data.threads = threads;
    loader_t *ld = NULL;
    int rc = loader_new(&ld, &c);
    if (!rc && p->V != 1) rc = loader_set_views(ld, p->V);
    if (rc) {
        loader_destroy(&ld);
        return rc;
    }
    size_t isz = sample_floats(cfg, p), B = (size_t)p->B, L = (size_t)p->L;
    trace_alloc(t, p, isz);
    float *imgs[2], *noise[2];
    int *labels[2];
    for (int k = 0; k < 2; k++) {
        imgs[k] = malloc(B * isz * sizeof(float));
        noise[k] = malloc(B * L * sizeof(float));
        labels[k] = malloc(B * sizeof(int));
    }
    if (ahead)
        rc = loader_submit(ld, p->idx[0], p->n[0], p->epoch[0], imgs[0], noise[0], p->L, labels[0]);
    for (int j = 0; j < p->nb && rc >= 0; j++) {
        int k = j % 2, got;
        if (ahead) {
            got = loader_wait(ld);
            if (j + 1 < p->nb)
                rc = loader_submit(ld, p->idx[j + 1], p->n[j + 1], p->epoch[j + 1], imgs[!k],
                                   noise[!k], p->L, labels[!k]);
        } else {
            got = loader_fill(ld, p->idx[j], p->n[j], p->epoch[j], imgs[k], noise[k], p->L,
                              labels[k]);
        }
        if (got < 0) {
            rc = got;
            break;
        }
        t->count[j] = got; /* batch j is read while batch j+1 is being written */
        memcpy(t->imgs + j * B * isz, imgs[k], (size_t)got * isz * sizeof(float));
        memcpy(t->noise + j * B * L, noise[k], (size_t)got * L * sizeof(float));
        memcpy(t->labels + j * B, labels[k], (size_t)got * sizeof(int));
    }
    t->bad = loader_bad(ld);
    loader_destroy(&ld);
    T_CHECK(ld == NULL);
    for (int k = 0; k < 2; k++) {
        free(imgs[k]);
        free(noise[k]);
        free(labels[k]);
    }
    return rc < 0 ? rc : 0;
}

static int trace_equal(const trace_t *a, const trace_t *b, const plan_t *p, size_t isz) {
    size_t B = (size_t)p->B, ns = (size_t)p->nb * B;
    return memcmp(a->count, b->count, (size_t)p->nb * sizeof(int)) == 0 &&
           memcmp(a->imgs, b->imgs, ns * isz * sizeof(float)) == 0 &&
           memcmp(a->noise, b->noise, ns * (size_t)p->L * sizeof(float)) == 0 &&
           memcmp(a->labels, b->labels, ns * sizeof(int)) == 0 && a->bad == b->bad;
}

/* The synchronous run is the reference; 1, 2 and 4 threads, run ahead or not, equal it. */
static void check_threads(const char *what, const plan_t *p, const mimic_cfg_t *cfg, trace_t *ref) {
    T_CHECK(run(ref, p, cfg, 0, 0) == 0);
    int total = 0;
    for (int j = 0; j < p->nb; j++)
        total += ref->count[j];
    static const int threads[] = {0, 1, 2, 4};
    for (size_t i = 0; i < sizeof threads / sizeof threads[0]; i++)
        for (int ahead = 0; ahead < 2; ahead++) {
            if (!threads[i] && !ahead) continue; /* the reference itself */
            trace_t t = {0};
            T_CHECK(run(&t, p, cfg, threads[i], ahead) == 0);
            int same = trace_equal(&t, ref, p, sample_floats(cfg, p));
            printf("%s: %d batches, %d samples, threads %d%s: %s\n", what, p->nb, total, threads[i],
                   ahead ? " run ahead" : "", same ? "identical" : "DIFFERENT");
            T_CHECK(same);
            trace_free(&t);
        }
}

static void cfg_for(mimic_cfg_t *c, const char *kind, const char *path, const char *labels, int S,
                    int C) {
    config_defaults(c);
    snprintf(c->data.kind, sizeof c->data.kind, "%s", kind);
    snprintf(c->data.path, sizeof c->data.path, "%s", path);
    snprintf(c->data.labels, sizeof c->data.labels, "%s", labels ? labels : "");
    c->model.img_size = S;
    c->model.in_chans = C;
    c->train.seed = 7;
    c->train.batch_size = 8; /* smaller than some batches: the loader grows once */
    for (int k = 0; k < 4; k++) {
        c->data.mean[k] = 0.5f;
        c->data.std[k] = 0.25f;
    }
}

/* dir/img.idx, dir/lab.idx: 60 gray 20x20 images, loaded at 16x16. */
static void idx_set(mimic_cfg_t *cfg, const char *dir) {
    char img[PATH_CAP], lab[PATH_CAP];
    snprintf(img, sizeof img, "%s/img.idx", dir);
    snprintf(lab, sizeof lab, "%s/lab.idx", dir);
    T_CHECK(testutil_write_idx(img, lab, 60, 20, 5) == 0);
    cfg_for(cfg, "idx", img, lab, 16, 1);
}

static void test_idx(const char *dir) {
    mimic_cfg_t cfg;
    idx_set(&cfg, dir);
    plan_t p;
    plan_make(&p, 60, 16, 9, 16, cfg.train.seed); /* 60 = 3 x 16 + 12: a short last batch */
    trace_t ref = {0};
    check_threads("idx", &p, &cfg, &ref);
    int labels_ok = 1, noise_ok = 1;
    for (int j = 0; j < p.nb; j++) {
        T_CHECK(ref.count[j] == p.n[j]);
        for (int k = 0; k < ref.count[j]; k++) {
            labels_ok &= ref.labels[j * p.B + k] == (int)(p.idx[j][k] % 10);
            float u = ref.noise[((size_t)j * p.B + k) * p.L];
            noise_ok &= u >= 0.0f && u < 1.0f;
        }
    }
    T_CHECK(labels_ok && noise_ok && ref.bad == 0);

    /* noise and labels are optional; imgs comes out the same without them */
    mimic_cfg_t c = cfg;
    c.data.threads = 2;
    loader_t *ld = NULL;
    T_CHECK(loader_new(&ld, &c) == 0);
    if (ld) {
        float *imgs = malloc((size_t)p.B * 256 * sizeof(float));
        T_CHECK(loader_submit(ld, p.idx[4], p.n[4], p.epoch[4], imgs, NULL, 0, NULL) == 0);
        T_CHECK(loader_wait(ld) == p.n[4]);
        T_CHECK(memcmp(imgs, ref.imgs + (size_t)4 * p.B * 256,
                       (size_t)p.n[4] * 256 * sizeof(float)) == 0);
        T_CHECK(loader_fill(ld, p.idx[0], 0, 0, imgs, NULL, 0, NULL) == 0); /* empty batch */
        /* a hard error (index out of range) comes back from the threads to the caller */
        uint32_t bad_idx[12] = {0, 1, 2, 3, 4, 60, 6, 7, 8, 9, 10, 11};
        mimic_set_quiet(1);
        T_CHECK(loader_fill(ld, bad_idx, 12, 0, imgs, NULL, 0, NULL) == MIMIC_EINVAL);
        mimic_set_quiet(0);
        T_CHECK(strstr(mimic_last_error(), "out of range") != NULL);
        printf("idx: error from a loader thread: %s\n", mimic_last_error());
        T_CHECK(loader_fill(ld, bad_idx, 5, 0, imgs, NULL, 0, NULL) == 5); /* still usable */
        /* a batch in flight when the loader is destroyed is waited for */
        T_CHECK(loader_submit(ld, p.idx[1], p.n[1], p.epoch[1], imgs, NULL, 0, NULL) == 0);
        loader_destroy(&ld);
        free(imgs);
    }
    c.data.threads = -1;
    mimic_set_quiet(1);
    T_CHECK(loader_new(&ld, &c) == MIMIC_EINVAL && ld == NULL);
    mimic_set_quiet(0);
    trace_free(&ref);
}

/* ---------------------------------------------------------------- JPEG */

static void write_bytes(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    MIMIC_CHECK(f != NULL);
    MIMIC_CHECK(fwrite(b, 1, n, f) == n);
    fclose(f);
}

/* A w x h RGB JPEG of smooth noise (seeded); returns its bytes (tjFree them). */
static unsigned char *encode_jpeg(int w, int h, uint64_t seed, unsigned long *size) {
    uint8_t *px = malloc((size_t)w * h * 3);
    rng_t r;
    rng_seed(&r, seed);
    int a = (int)rng_below(&r, 7) + 1, b = (int)rng_below(&r, 5) + 1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < 3; k++)
                px[((size_t)y * w + x) * 3 + k] =
                    (uint8_t)((x * a + y * b + k * 60) % 200 + rng_below(&r, 40));
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    MIMIC_CHECK(tj && tjCompress2(tj, px, w, 0, h, TJPF_RGB, &buf, size, TJSAMP_420, 90, 0) == 0);
    tjDestroy(tj);
    free(px);
    return buf;
}

/* root/class{0,1,2}/NN.jpg: 27 images of several sizes (some large enough for DCT
 * scaling at 32) and 5 corrupt files (truncated, random bytes, empty). Returns how many
 * files are corrupt. */
static int write_folder(const char *root) {
    char p[PATH_CAP];
    mkdir(root, 0755);
    int bad = 0;
    for (int i = 0; i < 32; i++) {
        snprintf(p, sizeof p, "%.1100s/class%d", root, i % 3);
        mkdir(p, 0755);
        snprintf(p, sizeof p, "%.1100s/class%d/%02d.jpg", root, i % 3, i);
        unsigned long size;
        unsigned char *j = encode_jpeg(40 + 13 * (i % 5) + (i % 4 == 0 ? 60 : 0), 36 + 7 * (i % 6),
                                       (uint64_t)i + 100, &size);
        if (i % 7 == 3) { /* 3, 10, 17, 24, 31 */
            bad++;
            if (i == 10) memset(j + 2, 0x5a, size - 2); /* random bytes after the start marker */
            size = i == 17 ? 0 : size / 2;              /* empty, or truncated */
        }
        write_bytes(p, j, size);
        tjFree(j);
    }
    return bad;
}

/* Compaction: every batch of ref is the one-sample fills of its good samples, in order
 * (all V views of a sample kept or dropped together). */
static void check_compaction(const char *what, const plan_t *p, const mimic_cfg_t *cfg,
                             const trace_t *ref, int nbad) {
    loader_t *ld = NULL;
    T_CHECK(loader_new(&ld, cfg) == 0 && loader_set_views(ld, p->V) == 0);
    size_t isz = sample_floats(cfg, p);
    float *one = malloc(isz * sizeof(float)), noise[8];
    int lab, ok = 1, total = 0;
    for (int j = 0; ld && j < p->nb; j++) {
        int filled = 0;
        for (int k = 0; k < p->n[j]; k++) {
            int got = loader_fill(ld, &p->idx[j][k], 1, p->epoch[j], one, noise, p->L, &lab);
            T_CHECK(got == 0 || got == 1);
            if (got != 1) continue;
            size_t at = (size_t)j * p->B + filled++;
            ok &= memcmp(one, ref->imgs + at * isz, isz * sizeof(float)) == 0 &&
                  memcmp(noise, ref->noise + at * p->L, sizeof noise) == 0 &&
                  lab == ref->labels[at];
        }
        ok &= filled == ref->count[j];
        total += filled;
    }
    T_CHECK(ok && total == 2 * (32 - nbad));
    printf("%s: batches equal the one-sample fills of their %d good samples\n", what, total);
    free(one);
    loader_destroy(&ld);
}

/* The first and second view of every sample of a trace differ. */
static void check_views_differ(const char *what, const plan_t *p, const mimic_cfg_t *cfg,
                               const trace_t *t) {
    size_t isz = sample_floats(cfg, p) / (size_t)p->V;
    int differ = 0, total = 0;
    for (int j = 0; j < p->nb; j++)
        for (int k = 0; k < t->count[j]; k++, total++) {
            const float *v0 = t->imgs + ((size_t)j * p->B + k) * p->V * isz;
            differ += memcmp(v0, v0 + isz, isz * sizeof(float)) != 0;
        }
    printf("%s: view 1 != view 2 for %d of %d samples\n", what, differ, total);
    T_CHECK(total > 0 && differ == total);
}

/* One view (the MAE transform) decodes only the crop it drew (dataset_read_crop): each
 * good sample equals the reference built by hand from the whole image decoded at full
 * size (augment_rrc_ws on the sample's stream, then the masking noise from the same
 * stream): exactly when the crop is decoded unscaled, within 2/255 mean |diff| when it
 * is under 2*S on no side and the decoder used DCT scaling. */
static void check_crop_reference(const mimic_cfg_t *cfg) {
    const int S = cfg->model.img_size, L = 5;
    const size_t isz = (size_t)3 * S * S;
    loader_t *ld = NULL;
    dataset_opts o;
    dataset_t *ds = NULL;
    T_CHECK(loader_new(&ld, cfg) == 0 && loader_opts(&o, cfg) == 0 && dataset_open(&ds, &o) == 0);
    float *got = malloc(isz * sizeof(float)), *want = malloc(isz * sizeof(float));
    float gn[L], wn[L];
    image_u8 im = {0};
    augment_ws ws = {0};
    int good = 0, exact = 0, close = 0;
    mimic_set_quiet(1);
    for (uint32_t i = 0; ld && ds && i < (uint32_t)dataset_size(ds); i++) {
        if (loader_fill(ld, &i, 1, 1, got, gn, L, NULL) != 1) continue;
        good++;
        rng_t r;
        rng_split(&r, cfg->train.seed, order_sample_stream(1, i));
        T_CHECK(dataset_get(ds, i, &im, 0) == 0);
        T_CHECK(augment_rrc_ws(want, &im, S, cfg->data.scale_min, cfg->data.scale_max, 0.75f,
                               4.0f / 3.0f, cfg->data.hflip, cfg->data.mean, cfg->data.std, 3, &r,
                               &ws) == 0);
        for (int l = 0; l < L; l++)
            wn[l] = rng_uniform(&r);
        T_CHECK(memcmp(gn, wn, sizeof gn) == 0);
        double sum = 0;
        for (size_t k = 0; k < isz; k++)
            sum += fabs(got[k] - want[k]) * cfg->data.std[0];
        exact += sum == 0;
        close += sum / isz <= 2.0 / 255;
    }
    mimic_set_quiet(0);
    printf("imagefolder: one view from the crop decode: %d of %d samples equal the full-decode "
           "reference, %d within 2/255\n",
           exact, good, close);
    T_CHECK(good > 20 && exact > good / 2 && close == good);

    /* loader_ready: the threads alone finish a submitted batch (the caller only polls,
     * for at most 60 s), after which loader_wait has nothing left to build */
    mimic_cfg_t c2 = *cfg;
    c2.data.threads = 2;
    loader_t *l2 = NULL;
    uint32_t idx[6] = {0, 1, 2, 4, 5, 6};
    float *b6 = malloc(6 * isz * sizeof(float));
    T_CHECK(loader_new(&l2, &c2) == 0);
    if (l2 && b6 && loader_submit(l2, idx, 6, 0, b6, NULL, 0, NULL) == 0) {
        int polls = 0;
        while (!loader_ready(l2) && polls < 60000) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
            polls++;
        }
        T_CHECK(loader_ready(l2));
        mimic_set_quiet(1);
        int got = loader_wait(l2);
        mimic_set_quiet(0);
        printf("loader_ready after %d polls of 1 ms; the batch gave %d of 6\n", polls, got);
        T_CHECK(got == 6 - (int)loader_bad(l2));
    }
    free(b6);
    loader_destroy(&l2);
    image_u8_free(&im);
    augment_ws_free(&ws);
    free(got);
    free(want);
    dataset_destroy(&ds);
    loader_destroy(&ld);
}

static void test_imagefolder(const char *dir) {
    char root[PATH_CAP];
    snprintf(root, sizeof root, "%s/folder", dir);
    int nbad = write_folder(root);
    mimic_cfg_t cfg;
    cfg_for(&cfg, "imagefolder", root, NULL, 32, 3);
    mimic_set_quiet(1); /* the corrupt files' warnings; set before any thread starts */
    for (int V = 1; V <= 2; V++) {
        const char *what = V == 1 ? "imagefolder" : "imagefolder 2 views";
        plan_t p;
        plan_make(&p, 32, 12, 6, 8, cfg.train.seed); /* two epochs of 12 + 12 + 8 */
        p.V = V;
        trace_t ref = {0};
        check_threads(what, &p, &cfg, &ref);
        T_CHECK(ref.bad == (size_t)nbad); /* each corrupt file counted once over two epochs */
        check_compaction(what, &p, &cfg, &ref, nbad);
        if (V == 2) check_views_differ(what, &p, &cfg, &ref);
        trace_free(&ref);
    }

    /* one corrupt file named 4 times in a batch, decoded by several threads: counted once
     * (sorted names: sample 0 is class0/00.jpg, sample 1 class0/03.jpg, truncated) */
    mimic_cfg_t c = cfg;
    c.data.threads = 4;
    loader_t *l4 = NULL;
    T_CHECK(loader_new(&l4, &c) == 0);
    uint32_t dup[8] = {1, 0, 1, 0, 1, 0, 1, 0};
    float *buf = malloc(8 * 3 * 32 * 32 * sizeof(float));
    int got = l4 ? loader_fill(l4, dup, 8, 0, buf, NULL, 0, NULL) : -1;
    T_CHECK(got == 4 && l4 && loader_bad(l4) == 1);
    loader_destroy(&l4);
    mimic_set_quiet(0);
    free(buf);
    check_crop_reference(&cfg);
}

/* ---------------------------------------------------------------- views on gray data */

/* Two views of the IDX set: the same batches whatever the threads, views that differ,
 * one view again after two on the same loader, no allocation per batch once warm, the
 * evaluation mode, and the view count and recipe keys checked. */
static void test_views_idx(const char *dir) {
    mimic_cfg_t cfg;
    idx_set(&cfg, dir);
    plan_t p;
    plan_make(&p, 60, 16, 9, 16, cfg.train.seed);
    p.V = 2;
    trace_t ref = {0};
    check_threads("idx 2 views", &p, &cfg, &ref);
    check_views_differ("idx 2 views", &p, &cfg, &ref);

    /* one view after two on the same loader is the plain single-view batch */
    enum { ISZ = 256 };
    float *a = malloc((size_t)p.B * 2 * ISZ * sizeof(float));
    float *b = malloc((size_t)p.B * 2 * ISZ * sizeof(float));
    loader_t *l1 = NULL, *l2 = NULL;
    T_CHECK(loader_new(&l1, &cfg) == 0 && loader_new(&l2, &cfg) == 0);
    if (!l1 || !l2) goto out;
    T_CHECK(loader_views(l2) == 1 && loader_set_views(l2, 2) == 0 && loader_views(l2) == 2);
    T_CHECK(loader_fill(l2, p.idx[0], p.n[0], 0, b, NULL, 0, NULL) == p.n[0]);
    T_CHECK(memcmp(b, ref.imgs, (size_t)p.n[0] * 2 * ISZ * sizeof(float)) == 0);
    T_CHECK(loader_set_views(l2, 1) == 0);
    T_CHECK(loader_fill(l1, p.idx[0], p.n[0], 0, a, NULL, 0, NULL) == p.n[0]);
    T_CHECK(loader_fill(l2, p.idx[0], p.n[0], 0, b, NULL, 0, NULL) == p.n[0]);
    T_CHECK(memcmp(a, b, (size_t)p.n[0] * ISZ * sizeof(float)) == 0);

    /* evaluation mode: every view is augment_resize of the decoded sample, any epoch */
    loader_set_eval(l2, 1);
    T_CHECK(loader_set_views(l2, 2) == 0);
    T_CHECK(loader_fill(l2, p.idx[1], p.n[1], 3, a, NULL, 0, NULL) == p.n[1]);
    T_CHECK(loader_fill(l2, p.idx[1], p.n[1], 0, b, NULL, 0, NULL) == p.n[1]);
    T_CHECK(memcmp(a, b, (size_t)p.n[1] * 2 * ISZ * sizeof(float)) == 0);
    dataset_opts o;
    dataset_t *ds = NULL;
    dataset_reader_t *rd = NULL;
    image_u8 im = {0};
    float want[ISZ];
    int eval_ok = loader_opts(&o, &cfg) == 0 && dataset_open(&ds, &o) == 0 &&
                  dataset_reader_new(&rd, ds) == 0;
    for (int k = 0; eval_ok && k < p.n[1]; k++) {
        eval_ok &= dataset_read(ds, rd, p.idx[1][k], &im, 16) == 0 &&
                   augment_resize(want, &im, 16, cfg.data.mean, cfg.data.std, 1) == 0;
        eval_ok &= memcmp(a + (size_t)2 * k * ISZ, want, sizeof want) == 0 &&
                   memcmp(a + (size_t)(2 * k + 1) * ISZ, want, sizeof want) == 0;
    }
    printf("idx eval mode: %d samples, both views = augment_resize: %s\n", p.n[1],
           eval_ok ? "yes" : "NO");
    T_CHECK(eval_ok);
    image_u8_free(&im);
    dataset_reader_destroy(&rd);
    dataset_destroy(&ds);
    loader_set_eval(l2, 0);
    T_CHECK(loader_fill(l2, p.idx[1], p.n[1], 0, b, NULL, 0, NULL) == p.n[1]);
    T_CHECK(memcmp(a, b, (size_t)p.n[1] * 2 * ISZ * sizeof(float)) != 0);

    mimic_set_quiet(1);
    T_CHECK(loader_set_views(l2, 0) == MIMIC_EINVAL && loader_set_views(l2, 5) == MIMIC_EINVAL);
    T_CHECK(loader_views(l2) == 2);
    mimic_set_quiet(0);
out:
    loader_destroy(&l1);
    loader_destroy(&l2);
    free(a);
    free(b);
    trace_free(&ref);

    /* the recipe's keys are checked when the loader is made */
    struct {
        const char *key;
        float *field, bad;
    } keys[] = {{"gray_p", &cfg.data.gray_p, 1.5f},    {"jitter_p", &cfg.data.jitter_p, -0.1f},
                {"hue", &cfg.data.hue, 0.6f},          {"brightness", &cfg.data.brightness, -1},
                {"blur_p", &cfg.data.blur_p[1], 2.0f}, {"solarize_p", &cfg.data.solarize_p[0], -1}};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        float keep = *keys[k].field;
        *keys[k].field = keys[k].bad;
        loader_t *ld = NULL;
        mimic_set_quiet(1);
        int rc = loader_new(&ld, &cfg);
        mimic_set_quiet(0);
        T_CHECK(rc == MIMIC_EINVAL && ld == NULL && strstr(mimic_last_error(), keys[k].key));
        *keys[k].field = keep;
    }
}

/* Two views, 2 threads, run ahead like a trainer: after one warm-up batch, no batch
 * allocates (the slots' scratch, made in loader_new, covers crop, jitter and blur). */
static void test_views_noalloc(const char *dir) {
#if COUNT_ALLOCS
    char img[PATH_CAP];
    snprintf(img, sizeof img, "%s/img.idx", dir);
    mimic_cfg_t cfg;
    cfg_for(&cfg, "idx", img, NULL, 16, 1);
    cfg.data.threads = 2;
    plan_t p;
    plan_make(&p, 60, 8, 12, 16, cfg.train.seed);
    loader_t *ld = NULL;
    float *imgs[2], *noise[2];
    for (int k = 0; k < 2; k++) {
        imgs[k] = malloc((size_t)p.B * 2 * 256 * sizeof(float));
        noise[k] = malloc((size_t)p.B * p.L * sizeof(float));
    }
    T_CHECK(loader_new(&ld, &cfg) == 0 && loader_set_views(ld, 2) == 0);
    long before = 0;
    int ok =
        ld && loader_submit(ld, p.idx[0], p.n[0], p.epoch[0], imgs[0], noise[0], p.L, NULL) == 0;
    for (int j = 0; ok && j < p.nb; j++) {
        if (j == 1) before = alloccount_get();
        ok &= loader_wait(ld) == p.n[j];
        if (j + 1 < p.nb)
            ok &= loader_submit(ld, p.idx[j + 1], p.n[j + 1], p.epoch[j + 1], imgs[(j + 1) % 2],
                                noise[(j + 1) % 2], p.L, NULL) == 0;
    }
    long during = alloccount_get() - before;
    printf("idx 2 views, 2 threads: allocations in %d batches after warm-up: %ld\n", p.nb - 1,
           during);
    T_CHECK(ok && before > 0 && during == 0); /* before > 0: the counter counts */
    loader_destroy(&ld);
    for (int k = 0; k < 2; k++) {
        free(imgs[k]);
        free(noise[k]);
    }
#else
    (void)dir;
    printf("allocation count skipped: the sanitizers own malloc\n");
#endif
}

/* ---------------------------------------------------------------- counting */

/* loader_count gives loader_size (or the same error code) without a loader. */
static void check_count(const char *what, const mimic_cfg_t *cfg, size_t want) {
    loader_t *ld = NULL;
    size_t n = 12345;
    mimic_set_quiet(1);
    int rc_new = loader_new(&ld, cfg), rc_count = loader_count(cfg, &n);
    mimic_set_quiet(0);
    size_t size = ld ? loader_size(ld) : 0;
    printf("count %-28s loader_new %d size %zu, loader_count %d n %zu\n", what, rc_new, size,
           rc_count, n);
    T_CHECK(rc_new == rc_count && n == size && size == want);
    loader_destroy(&ld);
}

static void test_count(const char *dir) {
    char a[PATH_CAP], b[PATH_CAP];
    mimic_cfg_t c;
    snprintf(a, sizeof a, "%s/img.idx", dir);
    snprintf(b, sizeof b, "%s/lab.idx", dir);
    cfg_for(&c, "idx", a, b, 16, 1);
    check_count("idx", &c, 60);
    cfg_for(&c, "idx", a, NULL, 16, 1);
    check_count("idx without labels", &c, 60);
    snprintf(b, sizeof b, "%s/lab9.idx", dir);
    T_CHECK(testutil_write_idx(a, b, 9, 20, 5) == 0 && testutil_write_idx(a, NULL, 60, 20, 5) == 0);
    cfg_for(&c, "idx", a, b, 16, 1);
    check_count("idx, 9 labels for 60 images", &c, 0);
    cfg_for(&c, "idx", b, NULL, 16, 1);
    check_count("idx, labels file as images", &c, 0);

    snprintf(a, sizeof a, "%s/folder", dir);
    cfg_for(&c, "imagefolder", a, NULL, 32, 3);
    check_count("imagefolder", &c, 32);
    snprintf(a, sizeof a, "%s/nowhere", dir);
    cfg_for(&c, "imagefolder", a, NULL, 32, 3);
    check_count("imagefolder, missing", &c, 0);

    snprintf(a, sizeof a, "%s/list.txt", dir);
    FILE *f = fopen(a, "w");
    fprintf(f, "class0/00.jpg 1\n# comment\nclass1/01.jpg 2\n\n");
    fclose(f);
    snprintf(b, sizeof b, "%s/folder", dir);
    cfg_for(&c, "labellist", b, a, 32, 3);
    check_count("labellist", &c, 2);
    f = fopen(a, "a");
    fprintf(f, "missing.jpg 0\n");
    fclose(f);
    check_count("labellist naming a missing file", &c, 0);

    snprintf(a, sizeof a, "%s/fer.csv", dir);
    f = fopen(a, "w");
    fprintf(f, "emotion,pixels,Usage\n");
    for (int r = 0; r < 7; r++)
        fprintf(f, "%d,1 2 3 4 5 6 7 8 9,%s\n", r % 7, r % 3 ? "Training" : "PublicTest");
    fclose(f);
    cfg_for(&c, "csv", a, NULL, 16, 1);
    check_count("csv", &c, 7);
    snprintf(c.data.usage, sizeof c.data.usage, "Training");
    check_count("csv Usage=Training", &c, 4);
    snprintf(c.data.usage, sizeof c.data.usage, "Nope");
    check_count("csv Usage=Nope", &c, 0);
    f = fopen(a, "a");
    fprintf(f, "1,1 2 3 4 5 6 7 8 300,Training\n");
    fclose(f);
    c.data.usage[0] = 0;
    check_count("csv with a bad value", &c, 0);
    cfg_for(&c, "tfrecord", a, NULL, 16, 1);
    check_count("unknown kind", &c, 0);
}

int main(void) {
    const char *dir = testutil_tmpdir();
    test_idx(dir);
    test_imagefolder(dir);
    test_views_idx(dir);
    test_views_noalloc(dir);
    test_count(dir);
    return testutil_summary("test_loader");
}
