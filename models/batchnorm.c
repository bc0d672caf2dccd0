#include "batchnorm.h"

#include "common.h"

#include <math.h>
#include <stddef.h>

/* Statistics run over rows (stride C), so the channels are processed in blocks of
 * BN_BLOCK: every pass over the rows then reads BN_BLOCK contiguous floats per row and
 * the per-channel accumulators live on the stack, which keeps a step allocation-free.
 * Threads split the blocks, so each channel is summed over rows in a fixed order and
 * results do not depend on the thread count. */
#define BN_BLOCK 64
#define BN_PAR_MIN 65536

/* Per-channel mean and sum of squared deviations (two passes, no E[x^2]-E[x]^2
 * cancellation) over the rows, for channels [c0, c1). */
static void channel_stats(float *mu, float *ssd, const float *inp, int N, int C, int c0, int c1) {
    int n = c1 - c0;
    for (int c = 0; c < n; c++)
        mu[c] = ssd[c] = 0.0f;
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C + c0;
        for (int c = 0; c < n; c++)
            mu[c] += x[c];
    }
    for (int c = 0; c < n; c++)
        mu[c] /= (float)N;
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C + c0;
        for (int c = 0; c < n; c++) {
            float d = x[c] - mu[c];
            ssd[c] += d * d;
        }
    }
}

void batchnorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps) {
    MIMIC_CHECK(N >= 2);
    int nblk = (C + BN_BLOCK - 1) / BN_BLOCK;
#pragma omp parallel for schedule(static) if ((size_t)N * C >= BN_PAR_MIN && nblk > 1)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * BN_BLOCK, c1 = c0 + BN_BLOCK < C ? c0 + BN_BLOCK : C, n = c1 - c0;
        float mu[BN_BLOCK], ssd[BN_BLOCK], scale[BN_BLOCK], shift[BN_BLOCK];
        channel_stats(mu, ssd, inp, N, C, c0, c1);
        for (int c = 0; c < n; c++) {
            float rs = 1.0f / sqrtf(ssd[c] / (float)N + eps);
            mean[c0 + c] = mu[c];
            rstd[c0 + c] = rs;
            /* y = (x - mu) * rs * w + b = x * scale + shift */
            scale[c] = rs * (w ? w[c0 + c] : 1.0f);
            shift[c] = (b ? b[c0 + c] : 0.0f) - mu[c] * scale[c];
        }
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * C + c0;
            float *y = out + (size_t)i * C + c0;
            for (int c = 0; c < n; c++)
                y[c] = x[c] * scale[c] + shift[c];
        }
    }
}

/* dx = rs * w / N * (N dy - sum dy - xhat * sum(dy xhat)), xhat = (x - mu) rs:
 * the usual BN backward, the two sums being the batch-statistics terms. */
void batchnorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C) {
    int nblk = (C + BN_BLOCK - 1) / BN_BLOCK;
#pragma omp parallel for schedule(static) if ((size_t)N * C >= BN_PAR_MIN && nblk > 1)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * BN_BLOCK, c1 = c0 + BN_BLOCK < C ? c0 + BN_BLOCK : C, n = c1 - c0;
        float sdy[BN_BLOCK], sdyx[BN_BLOCK];
        for (int c = 0; c < n; c++)
            sdy[c] = sdyx[c] = 0.0f;
        const float *mu = mean + c0, *rs = rstd + c0;
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * C + c0, *dy = dout + (size_t)i * C + c0;
            for (int c = 0; c < n; c++) {
                sdy[c] += dy[c];
                sdyx[c] += dy[c] * (x[c] - mu[c]) * rs[c];
            }
        }
        for (int c = 0; c < n; c++) {
            if (dw) dw[c0 + c] += sdyx[c];
            if (db) db[c0 + c] += sdy[c];
        }
        if (!dinp) continue;
        float k[BN_BLOCK];
        for (int c = 0; c < n; c++) {
            k[c] = rs[c] * (w ? w[c0 + c] : 1.0f);
            sdy[c] /= (float)N;
            sdyx[c] /= (float)N;
        }
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * C + c0, *dy = dout + (size_t)i * C + c0;
            float *dx = dinp + (size_t)i * C + c0;
            for (int c = 0; c < n; c++) {
                float xhat = (x[c] - mu[c]) * rs[c];
                dx[c] += k[c] * (dy[c] - sdy[c] - xhat * sdyx[c]);
            }
        }
    }
}

void batchnorm_forward_groups(float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int G, int N, int C, float eps) {
    MIMIC_CHECK(G >= 1 && N % G == 0);
    size_t at = (size_t)(N / G) * C; /* floats of one group */
    for (int g = 0; g < G; g++)
        batchnorm_forward(out + g * at, mean + (size_t)g * C, rstd + (size_t)g * C, inp + g * at, w,
                          b, N / G, C, eps);
}

void batchnorm_backward_groups(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean,
                               const float *rstd, int G, int N, int C) {
    MIMIC_CHECK(G >= 1 && N % G == 0);
    size_t at = (size_t)(N / G) * C; /* floats of one group */
    for (int g = 0; g < G; g++)
        batchnorm_backward(dinp ? dinp + g * at : NULL, dw, db, dout + g * at, inp + g * at, w,
                           mean + (size_t)g * C, rstd + (size_t)g * C, N / G, C);
}

void batchnorm_forward_eval(float *out, const float *inp, const float *run_mean,
                            const float *run_var, const float *w, const float *b, int N, int C,
                            float eps) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *y = out + (size_t)i * C;
        for (int c = 0; c < C; c++) {
            float s = (w ? w[c] : 1.0f) / sqrtf(run_var[c] + eps);
            y[c] = (x[c] - run_mean[c]) * s + (b ? b[c] : 0.0f);
        }
    }
}

void batchnorm_update_running(float *run_mean, float *run_var, const float *inp, int N, int C,
                              float momentum) {
    MIMIC_CHECK(N >= 2);
    int nblk = (C + BN_BLOCK - 1) / BN_BLOCK;
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * BN_BLOCK, c1 = c0 + BN_BLOCK < C ? c0 + BN_BLOCK : C;
        float mu[BN_BLOCK], ssd[BN_BLOCK];
        channel_stats(mu, ssd, inp, N, C, c0, c1);
        for (int c = 0; c < c1 - c0; c++) {
            float *rm = run_mean + c0 + c, *rv = run_var + c0 + c;
            *rm = (1.0f - momentum) * *rm + momentum * mu[c];
            *rv = (1.0f - momentum) * *rv + momentum * ssd[c] / (float)(N - 1);
        }
    }
}
