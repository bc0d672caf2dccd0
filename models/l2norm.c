#include "l2norm.h"

#include <math.h>
#include <stddef.h>

void l2norm_forward(float *out, float *norm, const float *inp, int N, int D) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * D;
        float *y = out + (size_t)i * D;
        float ss = 0.0f;
        for (int d = 0; d < D; d++)
            ss += x[d] * x[d];
        float nrm = sqrtf(ss);
        float inv = 1.0f / (nrm > L2NORM_EPS ? nrm : L2NORM_EPS);
        for (int d = 0; d < D; d++)
            y[d] = x[d] * inv;
        norm[i] = nrm;
    }
}

void l2norm_backward(float *dinp, const float *dout, const float *out, const float *norm, int N,
                     int D) {
    for (int i = 0; i < N; i++) {
        const float *y = out + (size_t)i * D, *dy = dout + (size_t)i * D;
        float *dx = dinp + (size_t)i * D;
        if (!(norm[i] > L2NORM_EPS)) {
            for (int d = 0; d < D; d++)
                dx[d] += dy[d] / L2NORM_EPS;
            continue;
        }
        float ydy = 0.0f;
        for (int d = 0; d < D; d++)
            ydy += y[d] * dy[d];
        float inv = 1.0f / norm[i];
        for (int d = 0; d < D; d++)
            dx[d] += (dy[d] - y[d] * ydy) * inv;
    }
}
