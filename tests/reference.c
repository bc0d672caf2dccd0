#include "reference.h"

#include <math.h>
#include <stddef.h>

void linear_forward_ref(float *out, const float *inp, const float *w, const float *b, int M, int K,
                        int N) {
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double acc = b ? b[n] : 0.0;
            for (int k = 0; k < K; k++)
                acc += (double)inp[(size_t)m * K + k] * w[(size_t)n * K + k];
            out[(size_t)m * N + n] = (float)acc;
        }
    }
}

void linear_backward_ref(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                         const float *w, int M, int K, int N) {
    if (dinp) {
        for (int m = 0; m < M; m++) {
            for (int k = 0; k < K; k++) {
                double acc = 0.0;
                for (int n = 0; n < N; n++)
                    acc += (double)dout[(size_t)m * N + n] * w[(size_t)n * K + k];
                dinp[(size_t)m * K + k] += (float)acc;
            }
        }
    }
    if (dw) {
        for (int n = 0; n < N; n++) {
            for (int k = 0; k < K; k++) {
                double acc = 0.0;
                for (int m = 0; m < M; m++)
                    acc += (double)dout[(size_t)m * N + n] * inp[(size_t)m * K + k];
                dw[(size_t)n * K + k] += (float)acc;
            }
        }
    }
    if (db) {
        for (int n = 0; n < N; n++) {
            double acc = 0.0;
            for (int m = 0; m < M; m++)
                acc += dout[(size_t)m * N + n];
            db[n] += (float)acc;
        }
    }
}

/* Channel c's mean and 1/sqrt(biased var + eps), in double. */
static void bn_stats_ref(double *mu, double *rs, const float *inp, int N, int C, int c, float eps) {
    double s = 0.0, v = 0.0;
    for (int i = 0; i < N; i++)
        s += inp[(size_t)i * C + c];
    *mu = s / N;
    for (int i = 0; i < N; i++) {
        double d = inp[(size_t)i * C + c] - *mu;
        v += d * d;
    }
    *rs = 1.0 / sqrt(v / N + eps);
}

void batchnorm_forward_ref(float *out, float *mean, float *rstd, const float *inp, const float *w,
                           const float *b, int N, int C, float eps) {
    for (int c = 0; c < C; c++) {
        double mu, rs;
        bn_stats_ref(&mu, &rs, inp, N, C, c, eps);
        for (int i = 0; i < N; i++) {
            double y = (inp[(size_t)i * C + c] - mu) * rs;
            out[(size_t)i * C + c] = (float)(y * (w ? w[c] : 1.0) + (b ? b[c] : 0.0));
        }
        mean[c] = (float)mu;
        rstd[c] = (float)rs;
    }
}

/* Straight from the chain rule through xhat = (x - mu) rs with mu and rs depending on
 * every x of the channel: dx_i = rs (g_i - mean(g) - xhat_i mean(g xhat)), g = dy w. */
void batchnorm_backward_ref(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, int N, int C, float eps) {
    for (int c = 0; c < C; c++) {
        double mu, rs, sg = 0.0, sgx = 0.0, sdy = 0.0, sdyx = 0.0;
        bn_stats_ref(&mu, &rs, inp, N, C, c, eps);
        for (int i = 0; i < N; i++) {
            double dy = dout[(size_t)i * C + c], xh = (inp[(size_t)i * C + c] - mu) * rs;
            double g = dy * (w ? w[c] : 1.0);
            sg += g;
            sgx += g * xh;
            sdy += dy;
            sdyx += dy * xh;
        }
        if (dw) dw[c] += (float)sdyx;
        if (db) db[c] += (float)sdy;
        if (!dinp) continue;
        for (int i = 0; i < N; i++) {
            double xh = (inp[(size_t)i * C + c] - mu) * rs;
            double g = dout[(size_t)i * C + c] * (w ? w[c] : 1.0);
            dinp[(size_t)i * C + c] += (float)(rs * (g - sg / N - xh * sgx / N));
        }
    }
}
