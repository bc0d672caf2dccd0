// TIMEOUT: 300
/* test_bf16 — the bf16 compute path (models/mm.h) against the fp32 one.
 *
 * 1. Rounding: known values (ties to even, NaN, infinity, overflow to infinity), and
 *    the AVX512_BF16 instruction path equal to the portable one on random data.
 * 2. GEMMs, every transpose and beta the layers use: against a double-precision
 *    product of the bf16-rounded operands to fp32-accumulation accuracy (so the
 *    products are bf16 and the sums fp32), and against sgemm of the unrounded operands
 *    within bf16's bound, yet not equal to it (so the bf16 path really ran).
 * 3. linear forward/backward, attention forward/backward, and a whole MAE forward/backward in bf16 against fp32:
 *    loss to 1%, every gradient tensor to cosine >= 0.999.
 * 4. A loss curve: 300 MAE steps (AdamW) from one initialisation on one data set in
 *    fp32 and in bf16; both learn, and the bf16 curve tracks the fp32 one (windows of
 *    25 steps within 4%, the last 50 steps within 2.5%).
 * On a CPU without AVX512_BF16 the test checks that bf16 is refused with a message
 * and that auto picks fp32, then skips the rest (exit 77). */
#include "adamw.h"
#include "attention.h"
#include "bf16.h"
#include "common.h"
#include "linear.h"
#include "mae.h"
#include "mm.h"
#include "testutil.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float f32_of_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void test_rounding(void) {
    struct {
        uint32_t in;
        uint16_t out;
    } cases[] = {
        {0x3f800000u, 0x3f80}, /* 1 */
        {0x3f808000u, 0x3f80}, /* 1 + 2^-8: a tie, to the even 1 */
        {0x3f818000u, 0x3f82}, /* 1 + 3 2^-8: a tie, to the even 1 + 2^-6 */
        {0x3f808001u, 0x3f81}, /* just above the tie: up */
        {0xbf807fffu, 0xbf80}, /* just below the tie, negative: down in magnitude */
        {0x7f800000u, 0x7f80}, /* +inf */
        {0xff800000u, 0xff80}, /* -inf */
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds to +inf */
        {0x00000000u, 0x0000},
        {0x80000000u, 0x8000},
    };
    int n = (int)(sizeof cases / sizeof cases[0]);
    /* 32 copies so the vector path (32 and 16 at a time) and the tail both see them */
    uint32_t in[32 * 10];
    uint16_t out[32 * 10];
    for (int i = 0; i < 32 * n; i++)
        in[i] = cases[i % n].in;
    mm_to_bf16(out, (const float *)in, 32L * n);
    int bad = 0;
    for (int i = 0; i < 32 * n; i++)
        bad += out[i] != cases[i % n].out;
    T_CHECK(bad == 0);
    uint32_t nan = 0x7fc00001u, snan = 0x7f800001u;
    uint16_t h;
    mm_to_bf16(&h, (const float *)&nan, 1);
    T_CHECK(isnan(bf16_widen(h)));
    mm_to_bf16(&h, (const float *)&snan, 1);
    T_CHECK(isnan(bf16_widen(h)));
    /* the bulk path (AVX512_BF16 where present) against one value at a time (the
     * portable rounding), on normal numbers of every magnitude */
    enum { R = 4099 };
    float *x = malloc(R * sizeof *x);
    uint16_t *bulk = malloc(R * sizeof *bulk), one;
    unsigned long long seed = 7;
    for (int i = 0; i < R; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        uint32_t u = (uint32_t)(seed >> 32);
        uint32_t e = 1 + (u >> 8) % 253; /* normal exponents */
        x[i] = f32_of_bits((u & 0x807fffffu) | (e << 23));
    }
    mm_to_bf16(bulk, x, R);
    bad = 0;
    for (int i = 0; i < R; i++) {
        mm_to_bf16(&one, x + i, 1);
        bad += one != bulk[i];
    }
    printf("rounding: %d of %d differ between the bulk and one-at-a-time paths\n", bad, R);
    T_CHECK(bad == 0);
    free(x);
    free(bulk);
}

/* C = op(A) op(B) (+ C) in double from the bf16-rounded operands. */
static void ref_gemm(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
                     int ldb, float beta, const float *C0, float *C, int ldc, int round) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) {
                float a = ta ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k];
                float b = tb ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n];
                if (round) {
                    uint16_t ha, hb;
                    mm_to_bf16(&ha, &a, 1);
                    mm_to_bf16(&hb, &b, 1);
                    a = bf16_widen(ha);
                    b = bf16_widen(hb);
                }
                s += (double)a * b;
            }
            C[(size_t)m * ldc + n] = (float)(s + beta * C0[(size_t)m * ldc + n]);
        }
}

static void test_gemm(void) {
    unsigned long long seed = 11;
    int M = 67, N = 45, K = 130; /* odd sizes: every edge of the kernels */
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bi = 0; bi < 2; bi++) {
                float beta = (float)bi;
                int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
                float *A = testutil_rnd((size_t)(ta ? K : M) * lda, -1, 1, &seed);
                float *B = testutil_rnd((size_t)(tb ? N : K) * ldb, -1, 1, &seed);
                float *C0 = testutil_rnd((size_t)M * ldc, -1, 1, &seed);
                float *C = testutil_zeros((size_t)M * ldc), *R = testutil_zeros((size_t)M * ldc);
                float *S = testutil_zeros((size_t)M * ldc);
                memcpy(C, C0, (size_t)M * ldc * sizeof *C);
                memcpy(S, C0, (size_t)M * ldc * sizeof *S);
                mm_set_precision(MM_BF16);
                mm_gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
                mm_set_precision(MM_FP32);
                mm_gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, S, ldc);
                ref_gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, C0, R, ldc, 1);
                /* |a||b| <= 1: the sum of K magnitudes bounds each entry */
                double e_acc = 0, e_fp32 = 0;
                for (int m = 0; m < M; m++)
                    for (int n = 0; n < N; n++) {
                        size_t i = (size_t)m * ldc + n;
                        e_acc = fmax(e_acc, fabs((double)C[i] - R[i]));
                        e_fp32 = fmax(e_fp32, fabs((double)C[i] - S[i]));
                    }
                printf("gemm ta=%d tb=%d beta=%d: |bf16 - exact(bf16 operands)| %.2e, "
                       "|bf16 - sgemm| %.2e\n",
                       ta, tb, bi, e_acc, e_fp32);
                T_CHECK(e_acc <= 1e-5 * K);                   /* fp32 accumulation */
                T_CHECK(e_fp32 <= 2.0 * K * ldexp(1.0, -8)); /* bf16 products */
                T_CHECK(e_fp32 > 1e-6);                       /* and not fp32's */
            }
}

static double cosine(const float *a, const float *b, size_t n) {
    double ab = testutil_dot(a, b, n), aa = testutil_dot(a, a, n), bb = testutil_dot(b, b, n);
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : (aa == bb ? 1.0 : 0.0);
}

static void test_linear(void) {
    unsigned long long seed = 3;
    int M = 96, K = 64, N = 80;
    float *x = testutil_rnd((size_t)M * K, -1, 1, &seed), *w = testutil_rnd((size_t)N * K, -1, 1, &seed);
    float *b = testutil_rnd(N, -1, 1, &seed), *dy = testutil_rnd((size_t)M * N, -1, 1, &seed);
    float *y[2], *dx[2], *dw[2], *db[2];
    for (int p = 0; p < 2; p++) {
        y[p] = testutil_zeros((size_t)M * N);
        dx[p] = testutil_zeros((size_t)M * K);
        dw[p] = testutil_zeros((size_t)N * K);
        db[p] = testutil_zeros(N);
        mm_set_precision(p ? MM_BF16 : MM_FP32);
        linear_forward(y[p], x, w, b, M, K, N);
        linear_backward(dx[p], dw[p], db[p], dy, x, w, M, K, N);
    }
    mm_set_precision(MM_FP32);
    /* |x||w| <= 1 over K terms: bf16 rounding of both operands, relative 2^-8 each */
    testutil_close("linear forward bf16", y[1], y[0], (size_t)M * N, 0.02);
    testutil_close("linear dinp bf16", dx[1], dx[0], (size_t)M * K, 0.02);
    testutil_close("linear dw bf16", dw[1], dw[0], (size_t)N * K, 0.02);
    testutil_close("linear db (fp32 in both)", db[1], db[0], N, 1e-6);
    T_CHECK(testutil_rel_err(y[1], y[0], (size_t)M * N) > 1e-6);
}

/* attention in bf16 (batched per-head products) against fp32, T odd and hd not a
 * multiple of 16, so every edge of the batched kernels is used */
static void test_attention(void) {
    unsigned long long seed = 8;
    int B = 3, T = 17, C = 60, NH = 3;
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, na = (size_t)B * NH * T * T;
    float *qkv = testutil_rnd(nq, -1, 1, &seed), *dout = testutil_rnd(no, -1, 1, &seed);
    float *out[2], *att[2], *dqkv[2], *scr = testutil_zeros(na);
    dqkv[0] = testutil_rnd(nq, -1, 1, &seed); /* backward writes over it */
    dqkv[1] = testutil_rnd(nq, -1, 1, &seed);
    for (int p = 0; p < 2; p++) {
        out[p] = testutil_zeros(no);
        att[p] = testutil_zeros(na);
        mm_set_precision(p ? MM_BF16 : MM_FP32);
        attention_forward(out[p], att[p], qkv, B, T, C, NH);
        attention_backward(dqkv[p], scr, dout, qkv, att[p], B, T, C, NH);
    }
    mm_set_precision(MM_FP32);
    testutil_close("attention probabilities bf16", att[1], att[0], na, 0.02);
    testutil_close("attention out bf16", out[1], out[0], no, 0.02);
    testutil_close("attention dqkv bf16", dqkv[1], dqkv[0], nq, 0.02);
    T_CHECK(testutil_rel_err(out[1], out[0], no) > 1e-6);
}

/* Smooth images (sums of Gaussian blobs): what masked patches are predictable from. */
static void blob_images(float *x, int n, int side, unsigned long long seed) {
    for (int i = 0; i < n; i++) {
        float *im = x + (size_t)i * side * side;
        memset(im, 0, (size_t)side * side * sizeof *im);
        for (int g = 0; g < 3; g++) {
            float c[4];
            testutil_fill(c, 4, 0, 1, &seed);
            float cx = c[0] * side, cy = c[1] * side, s = 1.5f + c[2] * side / 4, a = c[3] * 2 - 1;
            for (int yy = 0; yy < side; yy++)
                for (int xx = 0; xx < side; xx++) {
                    float d2 = (xx - cx) * (xx - cx) + (yy - cy) * (yy - cy);
                    im[yy * side + xx] += a * expf(-d2 / (2 * s * s));
                }
        }
    }
}

static mae_cfg_t small_cfg(void) {
    return (mae_cfg_t){.img_size = 16, .in_chans = 1, .patch_size = 4, .embed_dim = 64,
                       .depth = 2, .num_heads = 2, .mlp_ratio = 4, .decoder_embed_dim = 32,
                       .decoder_depth = 1, .decoder_num_heads = 2, .mask_ratio = 0.75f,
                       .norm_pix_loss = 1};
}

static void test_mae_grads(void) {
    mae_cfg_t c = small_cfg();
    mae_t *m = NULL;
    mae_batch_t *b = NULL;
    int B = 32;
    T_CHECK(mae_new(&m, &c) == 0 && mae_batch_alloc(&b, m, B) == 0);
    if (!m || !b) return;
    mae_init(m, 5);
    float *imgs = testutil_zeros((size_t)B * 16 * 16);
    blob_images(imgs, B, 16, 9);
    unsigned long long seed = 4;
    float *noise = testutil_rnd((size_t)B * m->L, 0, 1, &seed);
    size_t total = m->p->total;
    float *g32 = testutil_zeros(total);
    double loss[2];
    for (int p = 0; p < 2; p++) {
        mm_set_precision(p ? MM_BF16 : MM_FP32);
        loss[p] = mae_forward(m, b, imgs, noise);
        params_zero_grad(m->p);
        mae_backward(m, b);
        if (!p) memcpy(g32, m->p->g, total * sizeof *g32);
    }
    mm_set_precision(MM_FP32);
    printf("mae loss fp32 %.6f bf16 %.6f\n", loss[0], loss[1]);
    T_CHECK(fabs(loss[1] - loss[0]) <= 0.01 * fabs(loss[0]));
    T_CHECK(loss[1] != loss[0]);
    double worst = 1;
    const char *worst_name = "";
    for (int t = 0; t < m->p->n; t++) {
        size_t off = m->p->t[t].offset, n = m->p->t[t].numel;
        double cs = cosine(m->p->g + off, g32 + off, n);
        if (cs < worst) {
            worst = cs;
            worst_name = m->p->t[t].name;
        }
    }
    printf("mae gradients: worst cosine bf16 vs fp32 %.6f (%s)\n", worst, worst_name);
    T_CHECK(worst >= 0.999);
    mae_batch_free(&b);
    mae_destroy(&m);
}

/* The stack's bf16 arrays are made at the first bf16 forward, for the batch capacity:
 * a short batch first (a loader that skipped unreadable samples) and then a full one
 * computes the full batch exactly as a model that only ever saw full batches. */
static void test_short_batch_first(void) {
    mae_cfg_t c = small_cfg();
    mae_t *m = NULL;
    mae_batch_t *b = NULL, *fresh = NULL;
    int B = 16;
    T_CHECK(mae_new(&m, &c) == 0 && mae_batch_alloc(&b, m, B) == 0 &&
            mae_batch_alloc(&fresh, m, B) == 0);
    if (!m || !b || !fresh) return;
    mae_init(m, 3);
    float *imgs = testutil_zeros((size_t)B * 16 * 16);
    blob_images(imgs, B, 16, 5);
    unsigned long long seed = 8;
    float *noise = testutil_rnd((size_t)B * m->L, 0, 1, &seed);
    size_t total = m->p->total;
    float *g = testutil_zeros(total);
    mm_set_precision(MM_BF16);
    mae_forward(m, fresh, imgs, noise);
    params_zero_grad(m->p);
    mae_backward(m, fresh);
    memcpy(g, m->p->g, total * sizeof *g);
    mae_batch_resize(b, 3);
    mae_forward(m, b, imgs, noise);
    params_zero_grad(m->p);
    mae_backward(m, b);
    mae_batch_resize(b, B);
    mae_forward(m, b, imgs, noise);
    params_zero_grad(m->p);
    mae_backward(m, b);
    mm_set_precision(MM_FP32);
    T_CHECK(memcmp(g, m->p->g, total * sizeof *g) == 0);
    printf("bf16 after a short batch: gradients equal a fresh model's: %s\n",
           memcmp(g, m->p->g, total * sizeof *g) ? "no" : "yes");
    mae_batch_free(&b);
    mae_batch_free(&fresh);
    mae_destroy(&m);
}

/* 300 AdamW steps from one start; curve[s] is the loss of step s. */
static void train_curve(mm_precision_t prec, double *curve, int steps) {
    mae_cfg_t c = small_cfg();
    mae_t *m = NULL;
    mae_batch_t *b = NULL;
    int B = 32, pool = 512;
    if (mae_new(&m, &c) || mae_batch_alloc(&b, m, B)) {
        T_CHECK(0);
        return;
    }
    mae_init(m, 1);
    float *imgs = malloc((size_t)pool * 256 * sizeof *imgs);
    float *noise = malloc((size_t)B * m->L * sizeof *noise);
    size_t total = m->p->total;
    float *mo = calloc(total, sizeof *mo), *ve = calloc(total, sizeof *ve);
    blob_images(imgs, pool, 16, 21);
    unsigned long long seed = 99;
    adamw_cfg_t oc = {0.9f, 0.95f, 1e-8f, 0.05f};
    mm_set_precision(prec);
    for (int s = 0; s < steps; s++) {
        testutil_fill(noise, (size_t)B * m->L, 0, 1, &seed);
        const float *batch = imgs + (size_t)((s * B) % pool) * 256;
        curve[s] = mae_forward(m, b, batch, noise);
        params_zero_grad(m->p);
        mae_backward(m, b);
        float lr = 1e-3f * (s < 20 ? (s + 1) / 20.0f : 1.0f);
        adamw_update(&oc, m->p, m->p->w, m->p->g, 1.0f, mo, ve, 0, total, lr, s + 1);
    }
    mm_set_precision(MM_FP32);
    free(imgs);
    free(noise);
    free(mo);
    free(ve);
    mae_batch_free(&b);
    mae_destroy(&m);
}

static double mean(const double *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++)
        s += x[i];
    return s / n;
}

static void test_curve(void) {
    enum { S = 300, W = 25 };
    double c32[S], c16[S];
    train_curve(MM_FP32, c32, S);
    train_curve(MM_BF16, c16, S);
    double worst = 0;
    for (int w = 0; w + W <= S; w += W) {
        double a = mean(c32 + w, W), b = mean(c16 + w, W);
        printf("steps %3d-%3d: loss fp32 %.4f bf16 %.4f\n", w, w + W - 1, a, b);
        worst = fmax(worst, fabs(b - a) / a);
    }
    double a = mean(c32 + S - 50, 50), b = mean(c16 + S - 50, 50);
    printf("curve: worst window %.2f%%, last 50 steps fp32 %.4f bf16 %.4f (%.2f%%)\n",
           100 * worst, a, b, 100 * fabs(b - a) / a);
    T_CHECK(mean(c32 + S - 50, 50) < 0.8 * mean(c32, 10)); /* fp32 learns */
    T_CHECK(mean(c16 + S - 50, 50) < 0.8 * mean(c16, 10)); /* bf16 learns */
    T_CHECK(worst <= 0.04);
    T_CHECK(fabs(b - a) <= 0.025 * a);
}

int main(void) {
    mm_precision_t p;
    if (!mm_cpu_has_bf16()) {
        mimic_set_quiet(1);
        T_CHECK(mm_precision_parse("bf16", "train.precision", &p) == MIMIC_EINVAL);
        T_CHECK(mm_precision_parse("auto", "train.precision", &p) == 0 && p == MM_FP32);
        mimic_set_quiet(0);
        if (testutil_failures) return testutil_summary("test_bf16");
        printf("test_bf16: SKIP, this CPU has no AVX512_BF16 (auto computes in fp32)\n");
        return 77;
    }
    mimic_set_quiet(1);
    T_CHECK(mm_precision_parse("fp16", "train.precision", &p) == MIMIC_EINVAL);
    mimic_set_quiet(0);
    T_CHECK(mm_precision_parse("auto", "train.precision", &p) == 0 && p == MM_BF16);
    test_rounding();
    test_gemm();
    test_linear();
    test_attention();
    test_mae_grads();
    test_short_batch_first();
    test_curve();
    mm_release();
    testutil_release_all();
    return testutil_summary("test_bf16");
}
