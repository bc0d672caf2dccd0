#include "linear.h"

#include <cblas.h>
#include <stddef.h>
#include <string.h>

void linear_forward(float *out, const float *inp, const float *w, const float *b, int M, int K,
                    int N) {
    /* Seeding out with the bias and letting the GEMM add to it (beta = 1) costs one
     * write-only pass instead of a read-modify-write pass after the GEMM. */
    float beta = 0.0f;
    if (b) {
        for (int m = 0; m < M; m++)
            memcpy(out + (size_t)m * N, b, (size_t)N * sizeof *b);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, inp, K, w, K, beta, out, N);
}

void linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, int M, int K, int N) {
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, dout, N, w, K, 1.0f,
                    dinp, K);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, dout, N, inp, K, 1.0f,
                    dw, K);
    if (db) {
        /* Row by row so the inner loop runs along contiguous memory and vectorises;
         * the order of summation over rows is fixed, so results do not depend on
         * the thread count. */
        for (int m = 0; m < M; m++) {
            const float *row = dout + (size_t)m * N;
            for (int n = 0; n < N; n++)
                db[n] += row[n];
        }
    }
}
