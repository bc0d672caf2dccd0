// TIMEOUT: 120
/* test_noalloc — a training step allocates nothing: this program interposes the C
 * allocator (counting calls into glibc's __libc_* functions), warms up, then runs
 * whole MAE steps (batch assembly from the data loader, forward, backward, AdamW)
 * and asserts that not one allocation happened in them. Built without sanitizers
 * only (ASan owns malloc). One thread: OpenBLAS 0.3.21's multi-threaded GEMM driver
 * (sgemm_thread_nn/nt/tn) mallocs a small job array on every call — library
 * internals, ~18 per MAE step — while its single-threaded path and all of our code
 * allocate nothing. */
#include "adamw.h"
#include "common.h"
#include "config.h"
#include "loader.h"
#include "mae.h"
#include "testutil.h"

#include <cblas.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static atomic_long allocs;
void *malloc(size_t n) {
    atomic_fetch_add(&allocs, 1);
    return __libc_malloc(n);
}
void *calloc(size_t a, size_t b) {
    atomic_fetch_add(&allocs, 1);
    return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n) {
    atomic_fetch_add(&allocs, 1);
    return __libc_realloc(p, n);
}
int posix_memalign(void **p, size_t align, size_t n) {
    atomic_fetch_add(&allocs, 1);
    *p = __libc_memalign(align, n);
    return *p ? 0 : 12;
}
void free(void *p) {
    __libc_free(p);
}

int main(void) {
    /* a real data set file, so the loader's decode and augmentation path is included */
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    char data[1024];
    snprintf(data, sizeof data, "%.900s/img.idx", testutil_tmpdir());
    T_CHECK(testutil_write_idx(data, NULL, 64, 20, 11) == 0);
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    T_CHECK(config_override(&cfg, "model.img_size=16") == 0);
    T_CHECK(config_override(&cfg, "model.embed_dim=32") == 0);
    T_CHECK(config_override(&cfg, "model.depth=2") == 0);
    T_CHECK(config_override(&cfg, "model.num_heads=2") == 0);
    T_CHECK(config_override(&cfg, "mae.decoder_embed_dim=16") == 0);
    T_CHECK(config_override(&cfg, "mae.decoder_depth=1") == 0);
    T_CHECK(config_override(&cfg, "mae.decoder_num_heads=2") == 0);
    snprintf(cfg.data.path, sizeof cfg.data.path, "%s", data);
    cfg.data.labels[0] = 0;
    const int B = 16;
    mae_t *m = NULL;
    mae_batch_t *b = NULL;
    loader_t *ld = NULL;
    T_CHECK(mae_new(&m, &cfg.model) == 0);
    mae_init(m, 1);
    T_CHECK(mae_batch_alloc(&b, m, B) == 0);
    T_CHECK(loader_new(&ld, &cfg) == 0);
    if (!m || !b || !ld) return testutil_summary("test_noalloc");
    size_t img = (size_t)16 * 16, n = m->p->total;
    float *imgs = mimic_alloc(B * img * sizeof(float)), *noise = mimic_alloc(B * m->L * 4);
    float *mo = mimic_alloc(n * 4), *ve = mimic_alloc(n * 4);
    uint32_t idx[16];
    adamw_cfg_t oc = {0.9f, 0.95f, 1e-8f, 0.05f};
    long before = 0;
    for (int step = 0; step < 8; step++) {
        if (step == 3) before = atomic_load(&allocs); /* warm-up done: thread pools, crops */
        for (int i = 0; i < B; i++)
            idx[i] = (uint32_t)((step * B + i) % 64);
        int got = loader_fill(ld, idx, B, 0, imgs, noise, m->L, NULL);
        T_CHECK(got == B);
        mae_forward(m, b, imgs, noise);
        params_zero_grad(m->p);
        mae_backward(m, b);
        adamw_update(&oc, m->p, m->p->w, m->p->g, 1.0f, mo, ve, 0, n, 1e-3f, step + 1);
    }
    long during = atomic_load(&allocs) - before;
    printf("allocations in 5 training steps after warm-up: %ld\n", during);
    T_CHECK(during == 0);
    mimic_free(imgs);
    mimic_free(noise);
    mimic_free(mo);
    mimic_free(ve);
    loader_destroy(&ld);
    mae_batch_free(&b);
    mae_destroy(&m);
    return testutil_summary("test_noalloc");
}
