#include "layernorm.h"

#include "mm.h"

#include <math.h>
#include <stddef.h>

/* Rows of work (M*C floats) below which threads are not worth starting. */
#define LN_PAR_MIN 65536

/* One row: its mean and 1/std, and the normalised, scaled and shifted values of columns
 * [c0, c1) into y[0 ..). The per-row sums use `omp simd reduction` so they vectorise
 * without -ffast-math; the summation order then depends only on the vector width chosen
 * at compile time, never on the thread count. */
static inline void ln_stats(const float *x, int C, float eps, float *mu_out, float *rs_out) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int c = 0; c < C; c++)
        s += x[c];
    float mu = s / (float)C;
    /* Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2,
     * which cancels badly when |mean| >> std. */
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int c = 0; c < C; c++) {
        float d = x[c] - mu;
        v += d * d;
    }
    *mu_out = mu;
    *rs_out = 1.0f / sqrtf(v / (float)C + eps);
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int M, int C, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)M * C >= LN_PAR_MIN)
    for (int m = 0; m < M; m++) {
        const float *x = inp + (size_t)m * C;
        float *y = out + (size_t)m * C;
        float mu, rs;
        ln_stats(x, C, eps, &mu, &rs);
        for (int c = 0; c < C; c++)
            y[c] = (x[c] - mu) * rs * w[c] + b[c];
        mean[m] = mu;
        rstd[m] = rs;
    }
}

/* Columns a bf16 row is built in before it is rounded. */
#define LN_BF16_COLS 256

void layernorm_forward_bf16(unsigned short *out, float *mean, float *rstd, const float *inp,
                            const float *w, const float *b, int M, int C, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)M * C >= LN_PAR_MIN)
    for (int m = 0; m < M; m++) {
        const float *x = inp + (size_t)m * C;
        float mu, rs, y[LN_BF16_COLS];
        ln_stats(x, C, eps, &mu, &rs);
        for (int c0 = 0; c0 < C; c0 += LN_BF16_COLS) {
            int n = C - c0 < LN_BF16_COLS ? C - c0 : LN_BF16_COLS;
            for (int c = 0; c < n; c++)
                y[c] = (x[c0 + c] - mu) * rs * w[c0 + c] + b[c0 + c];
            mm_to_bf16(out + (size_t)m * C + c0, y, n);
        }
        mean[m] = mu;
        rstd[m] = rs;
    }
}

static void layernorm_backward_inp(float *dinp, const float *dout, const float *inp, const float *w,
                                   const float *mean, const float *rstd, int M, int C) {
#pragma omp parallel for schedule(static) if ((size_t)M * C >= LN_PAR_MIN)
    for (int m = 0; m < M; m++) {
        const float *x = inp + (size_t)m * C;
        const float *dy = dout + (size_t)m * C;
        float *dx = dinp + (size_t)m * C;
        float mu = mean[m], rs = rstd[m];
        float sum_dn = 0.0f, sum_dn_n = 0.0f;
#pragma omp simd reduction(+ : sum_dn, sum_dn_n)
        for (int c = 0; c < C; c++) {
            float dn = dy[c] * w[c];
            sum_dn += dn;
            sum_dn_n += dn * (x[c] - mu) * rs;
        }
        float mean_dn = sum_dn / (float)C, mean_dn_n = sum_dn_n / (float)C;
        for (int c = 0; c < C; c++) {
            float n = (x[c] - mu) * rs;
            dx[c] += (dy[c] * w[c] - mean_dn - n * mean_dn_n) * rs;
        }
    }
}

/* dw and db sum over rows. Splitting rows across threads would need a cross-thread
 * reduction whose order depends on the thread count, so threads split the columns
 * instead and each column is summed over rows in order. */
#define LN_COL_BLOCK 32

static void layernorm_backward_params(float *dw, float *db, const float *dout, const float *inp,
                                      const float *mean, const float *rstd, int M, int C) {
    int nblk = (C + LN_COL_BLOCK - 1) / LN_COL_BLOCK;
#pragma omp parallel for schedule(static) if ((size_t)M * C >= LN_PAR_MIN && nblk > 1)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * LN_COL_BLOCK;
        int c1 = c0 + LN_COL_BLOCK < C ? c0 + LN_COL_BLOCK : C;
        for (int m = 0; m < M; m++) {
            const float *x = inp + (size_t)m * C;
            const float *dy = dout + (size_t)m * C;
            float mu = mean[m], rs = rstd[m];
            if (dw)
                for (int c = c0; c < c1; c++)
                    dw[c] += dy[c] * (x[c] - mu) * rs;
            if (db)
                for (int c = c0; c < c1; c++)
                    db[c] += dy[c];
        }
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int M, int C) {
    if (dinp) layernorm_backward_inp(dinp, dout, inp, w, mean, rstd, M, C);
    if (dw || db) layernorm_backward_params(dw, db, dout, inp, mean, rstd, M, C);
}
