#include "xent.h"

#include "fastmath.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

double xent_softmax_row(float *x, int n) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++)
        mx = x[j] > mx ? x[j] : mx;
    /* fm_expf vectorises (libm's expf would not); exp(-inf) is 0 */
    float s = 0.0f;
    for (int j = 0; j < n; j++) {
        x[j] = fm_expf(x[j] - mx);
        s += x[j];
    }
    float inv = 1.0f / s;
    for (int j = 0; j < n; j++)
        x[j] *= inv;
    return (double)mx + log((double)s);
}

float xent_soft_forward(float *prob, const float *logits, const float *target, int N, int K) {
    double loss = 0.0;
    for (int i = 0; i < N; i++) {
        const float *l = logits + (size_t)i * K, *t = target + (size_t)i * K;
        float *p = prob + (size_t)i * K;
        double st = 0.0, stl = 0.0;
        for (int k = 0; k < K; k++) {
            st += t[k];
            stl += (double)t[k] * l[k];
        }
        if (p != l) memcpy(p, l, (size_t)K * sizeof *p);
        double lse = xent_softmax_row(p, K);
        loss += lse * st - stl;
    }
    return (float)(loss / N);
}

void xent_soft_backward(float *dlogits, const float *prob, const float *target, int N, int K,
                        float dloss) {
    float c = dloss / (float)N;
    for (int i = 0; i < N; i++) {
        const float *p = prob + (size_t)i * K, *t = target + (size_t)i * K;
        float *d = dlogits + (size_t)i * K;
        float st = 0.0f;
        for (int k = 0; k < K; k++)
            st += t[k];
        for (int k = 0; k < K; k++)
            d[k] += c * (p[k] * st - t[k]);
    }
}

void xent_softmax_backward(float *dx, const float *p, const float *dp, int N, int K) {
    for (int i = 0; i < N; i++) {
        const float *pi = p + (size_t)i * K, *gi = dp + (size_t)i * K;
        double dot = 0.0;
        for (int k = 0; k < K; k++)
            dot += (double)pi[k] * gi[k];
        float *di = dx + (size_t)i * K;
        for (int k = 0; k < K; k++)
            di[k] += pi[k] * (gi[k] - (float)dot);
    }
}
