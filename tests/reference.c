#include "reference.h"

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
