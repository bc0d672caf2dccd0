/* bench_mae — in one run: (a) GEMM GFLOP/s on exactly the GEMM calls of one MAE
 * training step (shapes, transposes, accumulation), as sgemm and, when train.precision
 * gives bf16, as the bf16 path (MFU is against the precision's own rate), and (b) this project's MAE
 * training step (forward, backward, AdamW) in images/s. Same threads for both (set
 * OMP_NUM_THREADS / OPENBLAS_NUM_THREADS). Config flags as for mimic-worker
 * (`--model.depth=12 ...`); `--bench.batch N`, `--bench.windows N`, `--bench.steps N`, `--bench.gemm_reps N` (3;
 * 0 skips the GEMM timing, e.g. to profile the step alone).
 * Prints key=value lines that bench/run.sh parses. Synthetic data: the step is timed,
 * not the data set. */
#include "benchutil.h"
#include "adamw.h"
#include "common.h"
#include "config.h"
#include "mae.h"
#include "mm.h"
#include "rng.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int M, K, N, count; /* a linear layer (M rows, K in, N out) used count times */
} gemm_use_t;

/* Every linear layer of one MAE step with its multiplicity. */
static int model_gemms(const mae_t *m, int B, gemm_use_t *u) {
    int n = 0, K = m->keep, L = m->L, D = m->cfg.embed_dim, Dd = m->cfg.decoder_embed_dim;
    int T1 = 1 + K, T2 = 1 + L, H = m->enc.hidden, Hd = m->dec.hidden;
    u[n++] = (gemm_use_t){B * K, m->cpp, D, 1};
    u[n++] = (gemm_use_t){B * T1, D, 3 * D, m->cfg.depth};
    u[n++] = (gemm_use_t){B * T1, D, D, m->cfg.depth};
    u[n++] = (gemm_use_t){B * T1, D, H, m->cfg.depth};
    u[n++] = (gemm_use_t){B * T1, H, D, m->cfg.depth};
    u[n++] = (gemm_use_t){B * T1, D, Dd, 1};
    if (m->cfg.decoder_depth > 0) {
        u[n++] = (gemm_use_t){B * T2, Dd, 3 * Dd, m->cfg.decoder_depth};
        u[n++] = (gemm_use_t){B * T2, Dd, Dd, m->cfg.decoder_depth};
        u[n++] = (gemm_use_t){B * T2, Dd, Hd, m->cfg.decoder_depth};
        u[n++] = (gemm_use_t){B * T2, Hd, Dd, m->cfg.decoder_depth};
    }
    u[n++] = (gemm_use_t){B * T2, Dd, m->cpp, 1};
    return n;
}

/* Times forward (NT) and the two backward GEMMs (NN into dinp, TN into dw) of each
 * layer as linear.c issues them, in the current precision (mm_gemm, operand rounding
 * included for bf16); returns GFLOP/s over the whole set. */
static double gemm_gflops(const gemm_use_t *u, int n, int reps) {
    size_t maxa = 0, maxw = 0, maxo = 0;
    for (int i = 0; i < n; i++) {
        size_t a = (size_t)u[i].M * u[i].K, w = (size_t)u[i].N * u[i].K,
               o = (size_t)u[i].M * u[i].N;
        if (a > maxa) maxa = a;
        if (w > maxw) maxw = w;
        if (o > maxo) maxo = o;
    }
    float *A = mimic_alloc(maxa * 4), *W = mimic_alloc(maxw * 4), *O = mimic_alloc(maxo * 4);
    float *dA = mimic_alloc(maxa * 4), *dW = mimic_alloc(maxw * 4);
    rng_t r;
    rng_seed(&r, 1);
    for (size_t i = 0; i < maxa; i++)
        A[i] = rng_uniform(&r) - 0.5f;
    for (size_t i = 0; i < maxw; i++)
        W[i] = rng_uniform(&r) - 0.5f;
    for (size_t i = 0; i < maxo; i++)
        O[i] = rng_uniform(&r) - 0.5f;
    double best = 0;
    for (int rep = 0; rep < reps; rep++) {
        double flops = 0, t = 0;
        for (int i = 0; i < n; i++) {
            int M = u[i].M, K = u[i].K, N = u[i].N;
            double t0 = mimic_now();
            for (int c = 0; c < u[i].count; c++) {
                mm_gemm(0, 1, M, N, K, A, K, W, K, 0.0f, O, N);
                mm_gemm(0, 0, M, K, N, O, N, W, K, 1.0f, dA, K);
                mm_gemm(1, 0, N, K, M, O, N, A, K, 1.0f, dW, K);
            }
            t += mimic_now() - t0;
            flops += 3.0 * 2.0 * M * K * N * u[i].count;
        }
        double g = flops / t / 1e9;
        if (g > best) best = g;
    }
    mimic_free(A);
    mimic_free(W);
    mimic_free(O);
    mimic_free(dA);
    mimic_free(dW);
    return best;
}


int main(int argc, char **argv) {
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    int v[4] = {128, 3, 10, 3}, warmup = 3; /* batch, windows, steps, GEMM timing reps */
    const char *const names[4] = {"batch", "windows", "steps", "gemm_reps"};
    if (bench_args(&cfg, argc, argv, "bench_mae", names, v, 4)) return 2;
    int B = v[0], windows = v[1], steps = v[2];
    if (B <= 0 || windows <= 0 || windows > 64 || steps <= 0) {
        fprintf(stderr, "bench_mae: bad --bench.* value\n");
        return 2;
    }
    mae_t *m = NULL;
    mae_batch_t *b = NULL;
    if (mae_new(&m, &cfg.model) || mae_batch_alloc(&b, m, B)) return 1;
    mae_init(m, 0);
    gemm_use_t uses[16];
    int nu = model_gemms(m, B, uses);
    mm_precision_t prec;
    if (mm_precision_parse(config_enum_name("train", "precision", cfg.train.precision),
                           "train.precision", &prec))
        return 2;
    mm_set_precision(MM_FP32);
    double sg = v[3] > 0 ? gemm_gflops(uses, nu, v[3]) : 0;
    mm_set_precision(prec);
    double pg = prec == MM_FP32 || v[3] <= 0 ? sg : gemm_gflops(uses, nu, v[3]);

    size_t total = m->p->total,
           img = (size_t)cfg.model.in_chans * cfg.model.img_size * cfg.model.img_size;
    float *imgs = mimic_alloc((size_t)B * img * 4), *noise = mimic_alloc((size_t)B * m->L * 4);
    float *mo = mimic_alloc(total * 4), *ve = mimic_alloc(total * 4);
    rng_t r;
    rng_seed(&r, 2);
    for (size_t i = 0; i < (size_t)B * img; i++)
        imgs[i] = rng_normal(&r);
    adamw_cfg_t oc = {0.9f, 0.95f, 1e-8f, 0.05f};
    double ips[64], loss = 0;
    long t = 0;
    for (int w = -1; w < windows; w++) {
        int n = w < 0 ? warmup : steps;
        double t0 = mimic_now();
        for (int s = 0; s < n; s++) {
            for (size_t i = 0; i < (size_t)B * m->L; i++)
                noise[i] = rng_uniform(&r);
            loss = mae_forward(m, b, imgs, noise);
            params_zero_grad(m->p);
            mae_backward(m, b);
            adamw_update(&oc, m->p, m->p->w, m->p->g, 1.0f, mo, ve, 0, total, 1e-4f, ++t);
        }
        if (w >= 0) ips[w] = (double)B * n / (mimic_now() - t0);
    }
    double med = bench_median(ips, windows), gf = mae_train_flops_per_image(m) / 1e9;
    printf("threads=%d\n", omp_get_max_threads());
    printf("batch=%d\n", B);
    printf("gflop_per_img=%.4f\n", gf);
    printf("precision=%s\n", mm_precision_name(prec));
    printf("sgemm_gflops=%.2f\n", sg);
    printf("gemm_gflops=%.2f\n", pg);
    printf("mimic_img_per_s=%.2f\n", med);
    printf("mimic_model_gflops=%.2f\n", med * gf);
    printf("mfu=%.3f\n", med * gf / pg);
    printf("final_loss=%.4f\n", loss);
    mae_batch_free(&b);
    mae_destroy(&m);
    mimic_free(imgs);
    mimic_free(noise);
    mimic_free(mo);
    mimic_free(ve);
    return 0;
}
