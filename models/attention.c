#include "attention.h"

#include "fastmath.h"
#include "mm.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

/* ---- bf16 (train.precision=bf16): the per-head products batched over every (sample,
 * head) pair in one oneDNN call each, on head-major bf16 copies; softmax and its
 * backward stay fp32, as in the fp32 path. ---------------------------------------- */

/* dst (B*NH, T, hd) head-major bf16 from the head blocks of src rows (B*T rows of
 * leading dimension ld, head h at column off + h*hd), times scale. */
static void heads_to_bf16(uint16_t *dst, const float *src, int ld, int off, float scale, int B,
                          int T, int C, int NH) {
    int hd = C / NH;
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        float tmp[512];
        for (int t = 0; t < T; t++) {
            const float *row = src + ((size_t)b * T + t) * ld + off + (size_t)h * hd;
            uint16_t *out = dst + ((size_t)bh * T + t) * hd;
            if (scale == 1.0f) {
                mm_to_bf16(out, row, hd);
            } else {
                for (int d = 0; d < hd; d++)
                    tmp[d] = row[d] * scale;
                mm_to_bf16(out, tmp, hd);
            }
        }
    }
}

/* dst rows (B*T, leading dimension ld, head h at column off + h*hd) = the head-major
 * src (B*NH, T, hd). */
static void heads_from(float *dst, int ld, int off, const float *src, int B, int T, int C, int NH) {
    int hd = C / NH;
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        for (int t = 0; t < T; t++) {
            float *row = dst + ((size_t)b * T + t) * ld + off + (size_t)h * hd;
            const float *in = src + ((size_t)bh * T + t) * hd;
            memcpy(row, in, (size_t)hd * sizeof *row);
        }
    }
}

static int use_bf16(int C, int NH) { return mm_precision() == MM_BF16 && C / NH <= 512; }

static void attention_forward_bf16(float *out, float *att, const float *qkv, int B, int T, int C,
                                   int NH) {
    int hd = C / NH, BH = B * NH, ld = 3 * C;
    size_t nh = (size_t)B * T * C;
    uint16_t *q = mm_buffer(4, nh), *k = mm_buffer(5, nh), *v = mm_buffer(6, nh);
    heads_to_bf16(q, qkv, ld, 0, 1.0f / sqrtf((float)hd), B, T, C, NH);
    heads_to_bf16(k, qkv, ld, C, 1.0f, B, T, C, NH);
    heads_to_bf16(v, qkv, ld, 2 * C, 1.0f, B, T, C, NH);
    mm_bmm_bf16(BH, 0, 1, T, T, hd, q, k, 0.0f, att); /* scores = (scale q) k^T */
    uint16_t *a = mm_buffer(7, (size_t)BH * T * T);
    /* each pair's probabilities rounded for the second product while still in cache */
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < BH; bh++) {
        attention_softmax(att + (size_t)bh * T * T, T);
        mm_to_bf16(a + (size_t)bh * T * T, att + (size_t)bh * T * T, (long)T * T);
    }
    float *o = mm_fbuffer(0, nh);
    mm_bmm_bf16(BH, 0, 0, T, hd, T, a, v, 0.0f, o);
    heads_from(out, C, 0, o, B, T, C, NH);
}

static void attention_backward_bf16(float *dqkv, float *da, const float *dout, const float *qkv,
                                    const float *att, int B, int T, int C, int NH) {
    int hd = C / NH, BH = B * NH, ld = 3 * C;
    float scale = 1.0f / sqrtf((float)hd);
    size_t nh = (size_t)B * T * C;
    uint16_t *q = mm_buffer(4, nh), *k = mm_buffer(5, nh), *v = mm_buffer(6, nh);
    uint16_t *dy = mm_buffer(8, nh), *a = mm_buffer(7, (size_t)BH * T * T);
    heads_to_bf16(q, qkv, ld, 0, 1.0f, B, T, C, NH);
    heads_to_bf16(k, qkv, ld, C, 1.0f, B, T, C, NH);
    heads_to_bf16(v, qkv, ld, 2 * C, 1.0f, B, T, C, NH);
    heads_to_bf16(dy, dout, C, 0, 1.0f, B, T, C, NH);
    float *dq = mm_fbuffer(0, nh), *dk = mm_fbuffer(1, nh), *dv = mm_fbuffer(2, nh);
    mm_bmm_bf16(BH, 0, 1, T, T, hd, dy, v, 0.0f, da); /* datt = dout v^T */
    mm_round(a, att, (long)BH * T * T);
    mm_bmm_bf16(BH, 1, 0, T, hd, T, a, dy, 0.0f, dv); /* dv = att^T dout */
    /* softmax backward, with the score scale folded in: ds = scale * att * (datt - s) */
    /* (a is free again once dv is made: each pair's ds is rounded into it in place) */
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < BH; bh++) {
        for (int i = 0; i < T; i++) {
            const float *ar = att + ((size_t)bh * T + i) * T;
            float *dr = da + ((size_t)bh * T + i) * T;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j < T; j++)
                s += ar[j] * dr[j];
            for (int j = 0; j < T; j++)
                dr[j] = scale * ar[j] * (dr[j] - s);
        }
        mm_to_bf16(a + (size_t)bh * T * T, da + (size_t)bh * T * T, (long)T * T);
    }
    mm_bmm_bf16(BH, 0, 0, T, hd, T, a, k, 0.0f, dq); /* dq = ds k */
    mm_bmm_bf16(BH, 1, 0, T, hd, T, a, q, 0.0f, dk); /* dk = ds^T q */
    heads_from(dqkv, ld, 0, dq, B, T, C, NH);
    heads_from(dqkv, ld, C, dk, B, T, C, NH);
    heads_from(dqkv, ld, 2 * C, dv, B, T, C, NH);
}

/* Every (sample, head) pair is independent and owns disjoint rows of att/scratch and
 * disjoint column blocks of out/dqkv, so threads split the pairs and each result is
 * computed by exactly one thread in a fixed order. The GEMMs read q, k and v in place
 * from the packed qkv rows (leading dimension 3C): no transposes, no copies. */
void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH) {
    if (use_bf16(C, NH)) {
        attention_forward_bf16(out, att, qkv, B, T, C, NH);
        return;
    }
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
    if (use_bf16(C, NH)) {
        attention_backward_bf16(dqkv, scratch, dout, qkv, att, B, T, C, NH);
        return;
    }
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
        /* datt = dout v^T; dv = att^T dout (each (sample, head) block of dqkv is written
         * once, so backward overwrites) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dy, C, v, ld, 0.0f, da,
                    T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, a, T, dy, C, 0.0f, dv,
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
        /* scores = scale * q k^T, so the scale folds into alpha: dq = scale dS k,
         * dk = scale dS^T q. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, da, T, k, ld, 0.0f,
                    dq, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, da, T, q, ld, 0.0f,
                    dk, ld);
    }
}
