// TIMEOUT: 120
/* test_noalloc — a training step allocates nothing: this program interposes the C
 * allocator (counting calls into glibc's __libc_* functions), warms up, then runs
 * whole MAE steps of the real training loop (train_run: batch assembly from the data
 * loader one step ahead, the stage's forward and backward, AdamW, progress reports)
 * and asserts that not one allocation happened in them. Built without sanitizers
 * only (ASan owns malloc). One thread: OpenBLAS 0.3.21's multi-threaded GEMM driver
 * (sgemm_thread_nn/nt/tn) mallocs a small job array on every call — library
 * internals, ~18 per MAE step — while its single-threaded path and all of our code
 * allocate nothing. On a CPU with AVX512_BF16 the same steps run again in bf16
 * (models/mm.h: oneDNN primitives and the engine's buffers are kept across steps);
 * there oneDNN's execute call itself allocates a fixed few times per call, so the
 * check is that every step allocates the same count (nothing made per step grows). */
#include "adamw.h"
#include "common.h"
#include "config.h"
#include "loader.h"
#include "mm.h"
#include "stage.h"
#include "train.h"
#include "alloccount.h"
#include "testutil.h"

#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* A backend for the real training loop (worker/train.h): sequential indices, AdamW in
 * place, and the allocation counter read around the steps after warm-up. */
enum { B = 16, WARMUP = 3 };
typedef struct {
    float *mo, *ve;
    long before, during;
    long at[16]; /* the counter after each step */
    int steps, reports;
} noalloc_t;

static int na_next(void *self, train_batch_t *b, int cap) {
    noalloc_t *na = self;
    for (int i = 0; i < cap; i++) {
        b->idx[i] = (uint32_t)((na->steps * cap + i) % 64);
        b->epoch[i] = 0;
    }
    b->count = cap;
    return 0;
}

static int na_update(void *self, stage_t *s, int n, long *step) {
    noalloc_t *na = self;
    adamw_cfg_t oc = {0.9f, 0.95f, 1e-8f, 0.05f};
    adamw_update(&oc, s->p, s->p->w, s->p->g, 1.0f, na->mo, na->ve, 0, s->p->total, 1e-3f,
                 *step + 1);
    stage_queue_append(s); /* a queue stage's keys (DenseCL), as the standalone trainer */
    ++*step;
    return 0;
}

static int na_after(void *self, stage_t *s, const train_step_t *st) {
    noalloc_t *na = self;
    T_CHECK(st->n == B);
    /* warm-up done after WARMUP steps (thread pools, crops, the batch run ahead) */
    if (++na->steps == WARMUP) na->before = alloccount_get();
    if (na->steps < 16) na->at[na->steps] = alloccount_get();
    if (na->steps == WARMUP + 5) na->during = alloccount_get() - na->before;
    return 0;
}

static void na_report(void *self, const train_window_t *w) {
    ((noalloc_t *)self)->reports++;
}

/* 8 steps of the real loop in one precision; the allocation count of steps 4-8. extra:
 * NULL or a NULL-terminated list of further section.key=value settings (another stage). */
static void run(const char *data, mm_precision_t prec, const char *const *extra) {
    mm_set_precision(prec);
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    T_CHECK(config_override(&cfg, "model.img_size=16") == 0);
    T_CHECK(config_override(&cfg, "model.embed_dim=32") == 0);
    T_CHECK(config_override(&cfg, "model.depth=2") == 0);
    T_CHECK(config_override(&cfg, "model.num_heads=2") == 0);
    T_CHECK(config_override(&cfg, "mae.decoder_embed_dim=16") == 0);
    T_CHECK(config_override(&cfg, "mae.decoder_depth=1") == 0);
    T_CHECK(config_override(&cfg, "mae.decoder_num_heads=2") == 0);
    for (int i = 0; extra && extra[i]; i++)
        T_CHECK(config_override(&cfg, extra[i]) == 0);
    snprintf(cfg.data.path, sizeof cfg.data.path, "%s", data);
    cfg.data.labels[0] = 0;
    cfg.train.batch_size = B;
    cfg.train.steps = 8;
    cfg.train.log_every = 2; /* reports inside the counted steps, too */
    stage_t *s = NULL;
    loader_t *ld = NULL;
    T_CHECK(stage_new(&s, &cfg, B) == 0);
    T_CHECK(loader_new(&ld, &cfg) == 0);
    if (!s || !ld) return;
    s->ops->init(s, 1);
    size_t n = s->p->total;
    noalloc_t na = {.mo = mimic_alloc(n * 4), .ve = mimic_alloc(n * 4)};
    train_backend_t be = {&na, 1, 1e-3f, na_next, na_update, na_after, na_report, NULL};
    long step = 0;
    T_CHECK(train_run(&cfg, s, ld, &be, &step, cfg.train.steps) == 0);
    T_CHECK(step == 8 && na.steps == 8 && na.reports == 4);
    int ne = 0;
    while (extra && extra[ne])
        ne++;
    printf("%s%s%s%s%s: allocations in 5 training steps after warm-up: %ld\n",
           mm_precision_name(prec), ne ? " " : "", ne ? extra[0] : "", ne > 1 ? " ... " : "",
           ne > 1 ? extra[ne - 1] : "", na.during);
    if (prec == MM_FP32) {
        T_CHECK(na.during == 0);
    } else {
        /* oneDNN 2.6's dnnl_primitive_execute builds a C++ map of its arguments on every
         * call (library internals, like OpenBLAS's threaded driver above): a fixed count
         * per step, which must not grow (no buffer or primitive is made in the step) */
        int steady = 1;
        for (int k = WARMUP + 1; k < WARMUP + 5; k++)
            steady &= na.at[k + 1] - na.at[k] == na.at[WARMUP + 1] - na.at[WARMUP];
        printf("bf16: %ld allocations a step, the same in every step: %s\n",
               na.at[WARMUP + 1] - na.at[WARMUP], steady ? "yes" : "no");
        T_CHECK(steady);
    }
    mimic_free(na.mo);
    mimic_free(na.ve);
    loader_destroy(&ld);
    stage_destroy(&s);
    mm_set_precision(MM_FP32);
}

int main(void) {
    /* a real data set file, so the loader's decode and augmentation path is included */
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    char data[1024];
    snprintf(data, sizeof data, "%.900s/img.idx", testutil_tmpdir());
    T_CHECK(testutil_write_idx(data, NULL, 64, 20, 11) == 0);
    run(data, MM_FP32, NULL);
    /* bf16: the engine's buffers and oneDNN's primitives are made in the warm-up steps */
    if (mm_cpu_has_bf16()) run(data, MM_BF16, NULL);
    /* ContraWarping: 4 views a sample, 2 of them warped in the loader, two networks */
    const char *const contrawarp[] = {"train.stage=contrawarp", "contrastive.mlp_dim=32",
                                      "contrastive.dim=16", NULL};
    run(data, MM_FP32, contrawarp);
    /* MAE with adversarial masking (the scores' update and the keys), and DenseCL (two
     * views, both heads, the match, the queue's in-place halves) */
    const char *adv[] = {"mae.mask_policy=adversarial", NULL};
    const char *dense[] = {"train.stage=densecl", "contrastive.dim=16", "contrastive.mlp_dim=32",
                           "contrastive.queue_size=40", NULL};
    const char *dense_adv[] = {"train.stage=densecl",       "contrastive.dim=16",
                               "contrastive.mlp_dim=32",    "contrastive.queue_size=40",
                               "contrastive.mask_ratio=0.5", "mae.mask_policy=adversarial", NULL};
    run(data, MM_FP32, adv);
    run(data, MM_FP32, dense);
    run(data, MM_FP32, dense_adv); /* the masked online view and its scores */
    mm_release();
    return testutil_summary("test_noalloc");
}
