#include "attention.h"

#include "fastmath.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>

/* Row-wise softmax of a (T,T) block in place. Rows are short (T = 17 or 65), so the
 * exp runs once over the whole block, where it vectorises, between per-row passes. */
static void attention_softmax(float *a, int T) {
    for (int i = 0; i < T; i++) {
        float *row = a + (size_t)i * T;
        float mx = row[0];
#pragma omp simd reduction(max : mx)
        for (int j = 1; j < T; j++)
            mx = row[j] > mx ? row[j] : mx;
        for (int j = 0; j < T; j++)
            row[j] -= mx;
    }
    int n = T * T;
    for (int j = 0; j < n; j++)
        a[j] = fm_expf(a[j]);
    for (int i = 0; i < T; i++) {
        float *row = a + (size_t)i * T;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < T; j++)
            s += row[j];
        float inv = 1.0f / s;
        for (int j = 0; j < T; j++)
            row[j] *= inv;
    }
}

/* Every (sample, head) pair is independent and owns disjoint rows of att/scratch and
 * disjoint column blocks of out/dqkv, so threads split the pairs and each result is
 * computed by exactly one thread in a fixed order. The GEMMs read q, k and v in place
 * from the packed qkv rows (leading dimension 3C): no transposes, no copies. */
void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH) {
    int hd = C / NH;
    int ld = 3 * C;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * T * ld + (size_t)h * hd;
        const float *k = q + C;
        const float *v = q + 2 * C;
        float *a = att + (size_t)bh * T * T;
        float *o = out + (size_t)b * T * C + (size_t)h * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, ld, k, ld, 0.0f, a,
                    T);
        attention_softmax(a, T);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, a, T, v, ld, 0.0f, o,
                    C);
    }
}

void attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH) {
    int hd = C / NH;
    int ld = 3 * C;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        size_t off = (size_t)b * T * ld + (size_t)h * hd;
        const float *q = qkv + off, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
        const float *a = att + (size_t)bh * T * T;
        float *da = scratch + (size_t)bh * T * T;
        const float *dy = dout + (size_t)b * T * C + (size_t)h * hd;
        /* datt = dout v^T; dv += att^T dout */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dy, C, v, ld, 0.0f, da,
                    T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, a, T, dy, C, 1.0f, dv,
                    ld);
        /* Softmax backward: dscores_ij = att_ij * (datt_ij - sum_k att_ik datt_ik). */
        for (int i = 0; i < T; i++) {
            const float *ar = a + (size_t)i * T;
            float *dr = da + (size_t)i * T;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j < T; j++)
                s += ar[j] * dr[j];
            for (int j = 0; j < T; j++)
                dr[j] = ar[j] * (dr[j] - s);
        }
        /* scores = scale * q k^T, so the scale folds into alpha: dq += scale dS k,
         * dk += scale dS^T q. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, da, T, k, ld, 1.0f,
                    dq, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, da, T, q, ld, 1.0f,
                    dk, ld);
    }
}
