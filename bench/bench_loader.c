/* bench_loader — the data loader's throughput and what its threads buy a trainer.
 * (a) A JPEG ImageFolder of --bench.jpegs 224x224 photo-like files (bench/benchjpeg.c,
 *     under $TMPDIR, removed at the end) loaded at 224x224 RGB in batches of 64 with
 *     data.threads 0, 1, 2: images/s of loader_fill (decode + RandomResizedCrop + noise),
 *     then with two views per sample (loader_set_views: the contrastive recipe, crop,
 *     jitter, grayscale, blur, solarize per view, the config's data.* probabilities).
 * (a') The same two-view fill on the config's data set (Fashion-MNIST 32x32), over
 *     --bench.samples N (8192) samples.
 * (b) MAE steps on the given config (deploy/mae-fmnist.ini) with the next batch built
 *     by loader_submit during the step and collected by loader_wait after it, for
 *     data.threads 0, 1, 2 in turn: images/s, and the time the step spent on its data.
 *   OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 build/bench/bench_loader deploy/mae-fmnist.ini
 * Flags: --bench.jpegs N (300), --bench.samples N (8192), --bench.rounds N (5) of
 * --bench.steps N (4) steps per thread count, --section.key=value as usual. */
#define _GNU_SOURCE
#include "adamw.h"
#include "benchjpeg.h"
#include "benchutil.h"
#include "common.h"
#include "config.h"
#include "loader.h"
#include "mae.h"
#include "order.h"
#include "rng.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* CPU seconds of the whole process (all threads): the work an image costs, apart from
 * how busy the machine is. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* (a) loader_fill on the first n samples of a permutation of cfg's data set with
 * `views` views per sample, best of 3 passes: samples/s, images/s (views included) and
 * the CPU time of a sample. */
static void bench_fill_views(const mimic_cfg_t *cfg, const char *name, int n, int threads,
                             int views) {
    mimic_cfg_t c = *cfg;
    c.data.threads = threads;
    enum { B = 64, L = 196 };
    loader_t *ld = NULL;
    size_t isz = (size_t)c.model.in_chans * c.model.img_size * c.model.img_size;
    float *imgs = mimic_alloc((size_t)B * views * isz * sizeof(float));
    float *noise = mimic_alloc((size_t)B * L * sizeof(float));
    if (!imgs || !noise || loader_new(&ld, &c) || loader_set_views(ld, views)) exit(1);
    uint32_t size = (uint32_t)loader_size(ld);
    uint32_t *perm = malloc((size_t)size * sizeof *perm);
    if (!perm) exit(1);
    order_permutation(perm, size, 0, 0);
    if ((uint32_t)n > size) n = (int)size;
    double best = 0, cpu_ms = 0;
    for (int pass = 0; pass < 3; pass++) {
        double t0 = mimic_now(), c0 = cpu_s();
        int done = 0;
        for (int i = 0; i < n; i += B) {
            int got = loader_fill(ld, perm + i, n - i < B ? n - i : B, 0, imgs, noise, L, NULL);
            if (got < 0) exit(1);
            done += got;
        }
        double ips = done / (mimic_now() - t0);
        if (ips > best) best = ips, cpu_ms = 1e3 * (cpu_s() - c0) / done;
    }
    printf("%s_views%d_threads%d_samples_per_s=%.0f img_per_s=%.0f cpu_ms_per_sample=%.3f\n", name,
           views, threads, best, best * views, cpu_ms);
    loader_destroy(&ld);
    mimic_free(imgs);
    mimic_free(noise);
    free(perm);
}

/* (b) The MAE steps of a trainer whose next batch is built during the step. */
typedef struct {
    mae_t *m;
    mae_batch_t *b;
    float *imgs[2], *noise[2], *mo, *ve;
    uint32_t *perm, n;
    long step;
} trainer_t;

/* steps MAE steps on ld, run ahead; returns images/s, adds the time the step spent in
 * loader_submit + loader_wait to *data_s. */
static double train_steps(trainer_t *t, loader_t *ld, int steps, double *data_s) {
    const int B = t->b->cap, L = t->m->L;
    const adamw_cfg_t oc = {0.9f, 0.95f, 1e-8f, 0.05f};
    const size_t P = t->m->p->total;
    uint32_t span = t->n - t->n % (uint32_t)B;
    double t0 = mimic_now(), d0 = mimic_now();
    if (loader_submit(ld, t->perm, B, 0, t->imgs[0], t->noise[0], L, NULL)) exit(1);
    *data_s += mimic_now() - d0;
    for (int s = 0; s < steps; s++) {
        int k = s % 2;
        d0 = mimic_now();
        int got = loader_wait(ld);
        uint32_t *next = t->perm + (size_t)(s + 1) * B % span;
        if (got <= 0 ||
            (s + 1 < steps && loader_submit(ld, next, B, 0, t->imgs[!k], t->noise[!k], L, NULL)))
            exit(1);
        *data_s += mimic_now() - d0;
        mae_batch_resize(t->b, got);
        mae_forward(t->m, t->b, t->imgs[k], t->noise[k]);
        params_zero_grad(t->m->p);
        mae_backward(t->m, t->b);
        adamw_update(&oc, t->m->p, t->m->p->w, t->m->p->g, 1.0f, t->mo, t->ve, 0, P, 1e-4f,
                     ++t->step);
    }
    return steps * B / (mimic_now() - t0);
}

/* Rounds of `steps` steps with data.threads 0, 1, 2 in turn (so that the load of a
 * shared machine hits all three alike); median images/s and data ms per step. */
static void bench_overlap(const mimic_cfg_t *cfg, int steps, int rounds) {
    enum { NT = 3, MAXR = 32 };
    trainer_t t = {0};
    const int B = cfg->train.batch_size;
    loader_t *ld[NT] = {0};
    for (int th = 0; th < NT; th++) {
        mimic_cfg_t c = *cfg;
        c.data.threads = th;
        if (loader_new(&ld[th], &c)) exit(1);
    }
    if (rounds > MAXR || mae_new(&t.m, &cfg->model) || mae_batch_alloc(&t.b, t.m, B)) exit(1);
    mae_init(t.m, 0);
    size_t isz = (size_t)cfg->model.in_chans * cfg->model.img_size * cfg->model.img_size;
    t.n = (uint32_t)loader_size(ld[0]);
    t.perm = malloc(t.n * sizeof *t.perm);
    t.mo = mimic_alloc(t.m->p->total * 4);
    t.ve = mimic_alloc(t.m->p->total * 4);
    for (int k = 0; k < 2; k++) {
        t.imgs[k] = mimic_alloc((size_t)B * isz * sizeof(float));
        t.noise[k] = mimic_alloc((size_t)B * t.m->L * sizeof(float));
    }
    order_permutation(t.perm, t.n, cfg->train.seed, 0);
    double ips[NT][MAXR], data_s[NT] = {0}, warm = 0;
    train_steps(&t, ld[0], 2, &warm);
    for (int r = 0; r < rounds; r++)
        for (int th = 0; th < NT; th++)
            ips[th][r] = train_steps(&t, ld[th], steps, &data_s[th]);
    for (int th = 0; th < NT; th++) {
        printf("mae_threads%d_img_per_s=%.2f data_ms_per_step=%.3f (median of %d x %d steps)\n", th,
               bench_median(ips[th], rounds), 1e3 * data_s[th] / (rounds * steps), rounds, steps);
        loader_destroy(&ld[th]);
    }
    for (int k = 0; k < 2; k++) {
        mimic_free(t.imgs[k]);
        mimic_free(t.noise[k]);
    }
    mimic_free(t.mo);
    mimic_free(t.ve);
    free(t.perm);
    mae_batch_free(&t.b);
    mae_destroy(&t.m);
}

/* Synchronous data time of one batch of the config (what run-ahead can hide). */
static void bench_fill(const mimic_cfg_t *cfg) {
    mimic_cfg_t c = *cfg;
    c.data.threads = 0;
    loader_t *ld = NULL;
    const int B = c.train.batch_size, L = 64, reps = 50;
    size_t isz = (size_t)c.model.in_chans * c.model.img_size * c.model.img_size;
    float *imgs = mimic_alloc((size_t)B * isz * sizeof(float)), *noise = mimic_alloc(B * L * 4);
    uint32_t *idx = malloc((size_t)B * sizeof *idx);
    if (!imgs || !noise || !idx || loader_new(&ld, &c)) exit(1);
    for (int i = 0; i < B; i++)
        idx[i] = (uint32_t)(i * 7919u % loader_size(ld));
    double t0 = mimic_now();
    for (int r = 0; r < reps; r++)
        loader_fill(ld, idx, B, (uint64_t)r, imgs, noise, L, NULL);
    printf("config_batch_fill_ms=%.3f (batch %d, threads 0)\n", 1e3 * (mimic_now() - t0) / reps, B);
    loader_destroy(&ld);
    mimic_free(imgs);
    mimic_free(noise);
    free(idx);
}

int main(int argc, char **argv) {
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    int v[4] = {300, 4, 8192, 5}; /* jpegs, steps, samples, rounds */
    const char *const names[4] = {"jpegs", "steps", "samples", "rounds"};
    if (bench_args(&cfg, argc, argv, "bench_loader", names, v, 4)) return 2;
    int njpeg = v[0], steps = v[1], nviews = v[2], rounds = v[3];
    printf("omp_threads=%d cores=%ld\n", omp_get_max_threads(), sysconf(_SC_NPROCESSORS_ONLN));
    if (njpeg > 0) {
        char dir[900];
        if (bench_jpeg_folder(dir, sizeof dir, njpeg, 224, 224, 3, NULL)) return 1;
        mimic_cfg_t c = cfg;
        snprintf(c.data.kind, sizeof c.data.kind, "imagefolder");
        snprintf(c.data.path, sizeof c.data.path, "%.900s", dir);
        c.data.labels[0] = 0;
        c.model.img_size = 224;
        c.model.in_chans = 3;
        for (int views = 1; views <= 2; views++)
            for (int th = 0; th <= 2; th++)
                bench_fill_views(&c, "jpeg_224", njpeg, th, views);
        bench_jpeg_folder_remove(dir, njpeg);
    }
    if (nviews > 0)
        for (int th = 0; th <= 2; th++)
            bench_fill_views(&cfg, "config", nviews, th, 2);
    if (steps > 0) {
        bench_fill(&cfg);
        bench_overlap(&cfg, steps, rounds);
    }
    return 0;
}
