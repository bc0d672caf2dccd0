#include "byol.h"

#include <math.h>
#include <stddef.h>

static double dot(const float *a, const float *b, int D) {
    double s = 0.0;
    for (int d = 0; d < D; d++)
        s += (double)a[d] * b[d];
    return s;
}

float byol_forward(const float *p, const float *z, int N, int D) {
    double loss = 0.0;
    for (int i = 0; i < N; i++)
        loss += 2.0 - 2.0 * dot(p + (size_t)i * D, z + (size_t)i * D, D);
    return (float)(loss / N);
}

void byol_backward(float *dp, const float *z, int N, int D, float dloss) {
    float c = -2.0f * dloss / (float)N;
    for (size_t i = 0; i < (size_t)N * D; i++)
        dp[i] += c * z[i];
}

/* softplus(x) = log(1 + e^x) without overflow for large |x| */
static double softplus(double x) {
    return (x > 0 ? x : 0.0) + log1p(exp(-fabs(x)));
}

float byol_warpneg_forward(float *q, const float *p, const float *z, const float *w, int N, int D,
                           float tau) {
    double loss = 0.0;
    for (int i = 0; i < N; i++) {
        const float *pi = p + (size_t)i * D;
        double x = (dot(pi, w + (size_t)i * D, D) - dot(pi, z + (size_t)i * D, D)) / tau;
        loss += softplus(x);
        q[i] = (float)(1.0 / (1.0 + exp(-x)));
    }
    return (float)(loss / N);
}

/* d softplus(s- - s+) = q (ds- - ds+), s = p . (w or z) / tau */
void byol_warpneg_backward(float *dp, const float *q, const float *z, const float *w, int N, int D,
                           float tau, float dloss) {
    float c = dloss / ((float)N * tau);
    for (int i = 0; i < N; i++) {
        float a = c * q[i];
        const float *zi = z + (size_t)i * D, *wi = w + (size_t)i * D;
        float *di = dp + (size_t)i * D;
        for (int d = 0; d < D; d++)
            di[d] += a * (wi[d] - zi[d]);
    }
}
