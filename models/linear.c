#include "linear.h"

#include "mm.h"

#include <stddef.h>
#include <string.h>

void linear_forward(float *out, const float *inp, const float *w, const float *b, int M, int K,
                    int N) {
    if (mm_precision() == MM_BF16) { /* the bias is added in the product's pass */
        mm_gemm_bf16_bias(0, 1, M, N, K, mm_pack(0, inp, M, K, K), mm_pack(1, w, N, K, K), b,
                          0.0f, out, N);
        return;
    }
    /* Seeding out with the bias and letting the GEMM add to it (beta = 1) costs one
     * write-only pass instead of a read-modify-write pass after the GEMM. */
    float beta = 0.0f;
    if (b) {
        for (int m = 0; m < M; m++)
            memcpy(out + (size_t)m * N, b, (size_t)N * sizeof *b);
        beta = 1.0f;
    }
    mm_gemm(0, 1, M, N, K, inp, K, w, K, beta, out, N);
}

void linear_forward_bf16(float *out, const unsigned short *inp, const unsigned short *w,
                         const float *b, int M, int K, int N) {
    mm_gemm_bf16_bias(0, 1, M, N, K, inp, w, b, 0.0f, out, N);
}

/* bf16: dout rounded once for both products, its column sums (the bias gradient) taken
 * in the same pass; inp and w as the forward pass rounded them. */
static void products_bf16(float *dinp, float beta, float *dw, const unsigned short *d16,
                          const unsigned short *inp, const unsigned short *w, int M, int K,
                          int N) {
    if (dinp) mm_gemm_bf16(0, 0, M, K, N, d16, w, beta, dinp, K);
    if (dw) mm_gemm_bf16(1, 0, N, K, M, d16, inp, 1.0f, dw, K);
}

static void backward_bf16(float *dinp, float beta, float *dw, float *db, const float *dout,
                          const unsigned short *inp, const unsigned short *w, int M, int K,
                          int N) {
    products_bf16(dinp, beta, dw, mm_pack_colsum(0, dout, M, N, db), inp, w, M, K, N);
}

void linear_backward_bf16_packed(float *dinp, float *dw, const unsigned short *dout,
                                 const unsigned short *inp, const unsigned short *w, int M, int K,
                                 int N) {
    products_bf16(dinp, 0.0f, dw, dout, inp, w, M, K, N);
}

void linear_backward_bf16(float *dinp, float *dw, float *db, const float *dout,
                          const unsigned short *inp, const unsigned short *w, int M, int K,
                          int N) {
    backward_bf16(dinp, 0.0f, dw, db, dout, inp, w, M, K, N);
}

static void backward(float *dinp, float beta, float *dw, float *db, const float *dout,
                     const float *inp, const float *w, int M, int K, int N) {
    if (mm_precision() == MM_BF16) {
        const unsigned short *w16 = dinp ? mm_pack(1, w, N, K, K) : NULL;
        const unsigned short *i16 = dw ? mm_pack(2, inp, M, K, K) : NULL;
        backward_bf16(dinp, beta, dw, db, dout, i16, w16, M, K, N);
        return;
    }
    if (dinp) mm_gemm(0, 0, M, K, N, dout, N, w, K, beta, dinp, K);
    if (dw) mm_gemm(1, 0, N, K, M, dout, N, inp, K, 1.0f, dw, K);
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

void linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, int M, int K, int N) {
    backward(dinp, 1.0f, dw, db, dout, inp, w, M, K, N);
}

void linear_backward_set(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                         const float *w, int M, int K, int N) {
    backward(dinp, 0.0f, dw, db, dout, inp, w, M, K, N);
}
