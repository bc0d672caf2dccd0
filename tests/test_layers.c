// TIMEOUT: 120
/* test_layers — every compute layer of models/: optimised kernels against plain double
 * references, backward against finite differences (loss = sum(out * R) for a fixed
 * random R), accumulation (+=) semantics, independence from the thread count, the
 * fast exp/erf against libm, and hand-computed entries for patches and posemb. */
#include "attention.h"
#include "common.h"
#include "fastmath.h"
#include "gelu.h"
#include "layernorm.h"
#include "linear.h"
#include "patch.h"
#include "posemb.h"
#include "reference.h"
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long seed = 12345;

static float *rnd(size_t n, float lo, float hi) {
    return testutil_rnd(n, lo, hi, &seed);
}

static float *copy(const float *src, size_t n) {
    float *x = testutil_zeros(n);
    memcpy(x, src, n * sizeof *x);
    return x;
}


/* Checks that a second backward call into grads already holding g1 leaves 2*g1. */
/* g2 held g1 when the backward ran again into it: an overwriting backward leaves g1. */
static void check_overwrites(const char *name, const float *g1, const float *g2, size_t n) {
    char buf[96];
    snprintf(buf, sizeof buf, "%s overwrites (2 calls = 1x)", name);
    testutil_close(buf, g2, g1, n, 0.0);
}

static void check_twice(const char *name, const float *g1, const float *g2, size_t n) {
    float *want = testutil_zeros(n);
    for (size_t i = 0; i < n; i++)
        want[i] = 2.0f * g1[i];
    char buf[96];
    snprintf(buf, sizeof buf, "%s accumulates (2 calls = 2x)", name);
    testutil_close(buf, g2, want, n, 1e-6);
}

/* ---------------------------------------------------------------- fast math */

static void test_fastmath(void) {
    double worst_exp = 0.0;
    for (int i = 0; i <= 2000000; i++) {
        float x = -87.0f + (float)i * (175.0f / 2000000.0f);
        double want = exp((double)x);
        double rel = fabs((double)fm_expf(x) - want) / want;
        if (rel > worst_exp) worst_exp = rel;
    }
    printf("%-48s max rel err %.3e\n", "fm_expf on [-87,88]", worst_exp);
    T_CHECK(worst_exp < 3.0e-7);
    T_CHECK(fm_expf(0.0f) == 1.0f);
    T_CHECK(fm_expf(-100.0f) == 0.0f);
    T_CHECK(fm_expf(-INFINITY) == 0.0f);

    double worst_abs = 0.0, worst_rel_small = 0.0;
    for (int i = 0; i <= 4000000; i++) {
        float x = -10.0f + (float)i * (20.0f / 4000000.0f);
        double want = erf((double)x);
        double got = fm_erff(x);
        double d = fabs(got - want);
        if (d > worst_abs) worst_abs = d;
        if (fabs(x) < 0.75f && x != 0.0f && d / fabs(want) > worst_rel_small)
            worst_rel_small = d / fabs(want);
    }
    printf("%-48s max abs err %.3e\n", "fm_erff on [-10,10]", worst_abs);
    printf("%-48s max rel err %.3e\n", "fm_erff on |x| < 0.75", worst_rel_small);
    T_CHECK(worst_abs <= 2.0e-7);
    T_CHECK(worst_rel_small <= 5.0e-7);
    T_CHECK(fm_erff(0.0f) == 0.0f);
    T_CHECK(fm_erff(1e-30f) > 0.0f && fm_erff(-1e-30f) < 0.0f);
    T_CHECK(fm_erff(20.0f) == 1.0f && fm_erff(-1e30f) == -1.0f);
    T_CHECK(isnan(fm_erff(NAN)));
}

/* ---------------------------------------------------------------- GELU */

static double gelu_ref(double x) {
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}
static double gelu_grad_ref(double x) {
    return 0.5 * (1.0 + erf(x / sqrt(2.0))) +
           x * exp(-0.5 * x * x) / sqrt(2.0 * 3.14159265358979323846);
}

typedef struct {
    float *inp, *out, *r;
    size_t n;
} gelu_ctx;

static double gelu_loss(void *p) {
    gelu_ctx *c = p;
    gelu_forward(c->out, c->inp, c->n);
    return testutil_dot(c->out, c->r, c->n);
}

static void test_gelu(void) {
    size_t n = 400001;
    float *x = testutil_zeros(n), *y = testutil_zeros(n), *dy = testutil_zeros(n), *dx = testutil_zeros(n);
    for (size_t i = 0; i < n; i++) {
        x[i] = -12.0f + 24.0f * (float)i / (float)(n - 1);
        dy[i] = 1.0f;
    }
    gelu_forward(y, x, n);
    gelu_backward(dx, dy, x, n);
    double worst_f = 0.0, worst_b = 0.0;
    for (size_t i = 0; i < n; i++) {
        double ef = fabs(y[i] - gelu_ref(x[i])), eb = fabs(dx[i] - gelu_grad_ref(x[i]));
        /* absolute near 0, relative where |gelu| is large */
        ef /= fmax(1.0, fabs(gelu_ref(x[i])));
        if (ef > worst_f) worst_f = ef;
        if (eb > worst_b) worst_b = eb;
    }
    printf("%-48s max err %.3e\n", "gelu forward vs erf() on [-12,12]", worst_f);
    printf("%-48s max err %.3e\n", "gelu backward vs analytic on [-12,12]", worst_b);
    T_CHECK(worst_f < 5e-7);
    T_CHECK(worst_b < 5e-7);
    /* the negative tail keeps its relative precision (no 1 + erf cancellation) */
    float t[1] = {-6.0f}, ty[1];
    gelu_forward(ty, t, 1);
    T_CHECK(fabs(ty[0] / gelu_ref(-6.0) - 1.0) < 1e-5);

    float *alias = copy(x, n);
    gelu_forward(alias, alias, n);
    T_CHECK(memcmp(alias, y, n * sizeof *y) == 0);

    /* same bits whatever the thread count */
    float *y2 = testutil_zeros(n), *dx2 = testutil_zeros(n);
    omp_set_num_threads(2);
    gelu_forward(y2, x, n);
    gelu_backward(dx2, dy, x, n);
    omp_set_num_threads(1);
    T_CHECK(memcmp(y2, y, n * sizeof *y) == 0);
    T_CHECK(memcmp(dx2, dx, n * sizeof *dx) == 0);

    /* finite differences and overwriting on a small random case */
    size_t m = 96;
    gelu_ctx c = {rnd(m, -4.0f, 4.0f), testutil_zeros(m), rnd(m, -1.0f, 1.0f), m};
    float *g = testutil_zeros(m);
    gelu_backward(g, c.r, c.inp, m);
    testutil_fd_check("gelu dinp", gelu_loss, &c, c.inp, g, m, 96, 1e-2, 1e-3, 1e-4);
    float *g2 = copy(g, m);
    gelu_backward(g2, c.r, c.inp, m);
    check_overwrites("gelu dinp", g, g2, m);

    testutil_release_all();
}

/* ---------------------------------------------------------------- linear */

typedef struct {
    float *out, *inp, *w, *b, *r;
    int M, K, N;
} linear_ctx;

static double linear_loss(void *p) {
    linear_ctx *c = p;
    linear_forward(c->out, c->inp, c->w, c->b, c->M, c->K, c->N);
    return testutil_dot(c->out, c->r, (size_t)c->M * c->N);
}

static void test_linear_vs_ref(int M, int K, int N, int with_bias) {
    float *inp = rnd((size_t)M * K, -1, 1), *w = rnd((size_t)N * K, -1, 1);
    float *b = with_bias ? rnd(N, -1, 1) : NULL, *dout = rnd((size_t)M * N, -1, 1);
    float *o1 = testutil_zeros((size_t)M * N), *o2 = testutil_zeros((size_t)M * N);
    linear_forward(o1, inp, w, b, M, K, N);
    linear_forward_ref(o2, inp, w, b, M, K, N);
    char name[96];
    snprintf(name, sizeof name, "linear fwd blas vs ref %dx%dx%d%s", M, K, N,
             with_bias ? "" : " nobias");
    testutil_close(name, o1, o2, (size_t)M * N, 1e-5);

    /* non-zero starting gradients so that += is checked against the reference too */
    float *di1 = rnd((size_t)M * K, -1, 1), *dw1 = rnd((size_t)N * K, -1, 1), *db1 = rnd(N, -1, 1);
    float *di2 = copy(di1, (size_t)M * K), *dw2 = copy(dw1, (size_t)N * K), *db2 = copy(db1, N);
    linear_backward(di1, dw1, db1, dout, inp, w, M, K, N);
    linear_backward_ref(di2, dw2, db2, dout, inp, w, M, K, N);
    snprintf(name, sizeof name, "linear bwd dinp blas vs ref %dx%dx%d", M, K, N);
    testutil_close(name, di1, di2, (size_t)M * K, 1e-5);
    snprintf(name, sizeof name, "linear bwd dw blas vs ref %dx%dx%d", M, K, N);
    testutil_close(name, dw1, dw2, (size_t)N * K, 1e-5);
    snprintf(name, sizeof name, "linear bwd db blas vs ref %dx%dx%d", M, K, N);
    testutil_close(name, db1, db2, N, 1e-5);

    /* NULL gradients are skipped; the others are unaffected */
    float *di3 = testutil_zeros((size_t)M * K), *di4 = testutil_zeros((size_t)M * K);
    linear_backward(di3, NULL, NULL, dout, inp, w, M, K, N);
    linear_backward(di4, dw1, db1, dout, inp, w, M, K, N);
    T_CHECK(memcmp(di3, di4, (size_t)M * K * sizeof *di3) == 0);
    linear_backward(NULL, NULL, NULL, dout, inp, w, M, K, N);

    testutil_release_all();
}

static void test_linear(void) {
    test_linear_vs_ref(5, 7, 6, 1);
    test_linear_vs_ref(65, 192, 576, 1);
    test_linear_vs_ref(34, 128, 96, 0);

    int M = 5, K = 7, N = 6;
    linear_ctx c = {testutil_zeros((size_t)M * N),
                    rnd((size_t)M * K, -1, 1),
                    rnd((size_t)N * K, -1, 1),
                    rnd(N, -1, 1),
                    rnd((size_t)M * N, -1, 1),
                    M,
                    K,
                    N};
    float *di = testutil_zeros((size_t)M * K), *dw = testutil_zeros((size_t)N * K), *db = testutil_zeros(N);
    linear_backward(di, dw, db, c.r, c.inp, c.w, M, K, N);
    testutil_fd_check("linear dinp", linear_loss, &c, c.inp, di, (size_t)M * K, 100, 1e-2, 1e-3,
                      1e-4);
    testutil_fd_check("linear dw", linear_loss, &c, c.w, dw, (size_t)N * K, 100, 1e-2, 1e-3, 1e-4);
    testutil_fd_check("linear db", linear_loss, &c, c.b, db, N, 100, 1e-2, 1e-3, 1e-4);
    float *di2 = copy(di, (size_t)M * K), *dw2 = copy(dw, (size_t)N * K), *db2 = copy(db, N);
    linear_backward(di2, dw2, db2, c.r, c.inp, c.w, M, K, N);
    check_twice("linear dinp", di, di2, (size_t)M * K);
    check_twice("linear dw", dw, dw2, (size_t)N * K);
    check_twice("linear db", db, db2, N);
    /* linear_backward_set: dinp written over whatever it held; dw, db still accumulate */
    float *di3 = rnd((size_t)M * K, -5, 5), *dw3 = copy(dw, (size_t)N * K), *db3 = copy(db, N);
    linear_backward_set(di3, dw3, db3, c.r, c.inp, c.w, M, K, N);
    check_overwrites("linear_backward_set dinp", di, di3, (size_t)M * K);
    check_twice("linear_backward_set dw", dw, dw3, (size_t)N * K);
    check_twice("linear_backward_set db", db, db3, N);
    testutil_release_all();
}

/* ---------------------------------------------------------------- layernorm */

/* Plain double reference of forward and backward (accumulating like the kernel). */
static void layernorm_ref(float *out, float *dinp, float *dw, float *db, const float *dout,
                          const float *inp, const float *w, const float *b, int M, int C,
                          double eps) {
    for (int m = 0; m < M; m++) {
        const float *x = inp + (size_t)m * C;
        double mu = 0.0, var = 0.0;
        for (int c = 0; c < C; c++)
            mu += x[c];
        mu /= C;
        for (int c = 0; c < C; c++)
            var += (x[c] - mu) * (x[c] - mu);
        var /= C;
        double rs = 1.0 / sqrt(var + eps), a = 0.0, bb = 0.0;
        for (int c = 0; c < C; c++) {
            double n = (x[c] - mu) * rs, dn = (double)dout[(size_t)m * C + c] * w[c];
            out[(size_t)m * C + c] = (float)(n * w[c] + b[c]);
            a += dn;
            bb += dn * n;
            dw[c] += (float)(dout[(size_t)m * C + c] * n);
            db[c] += dout[(size_t)m * C + c];
        }
        a /= C, bb /= C;
        for (int c = 0; c < C; c++) {
            double n = (x[c] - mu) * rs, dn = (double)dout[(size_t)m * C + c] * w[c];
            dinp[(size_t)m * C + c] += (float)((dn - a - n * bb) * rs);
        }
    }
}

typedef struct {
    float *out, *mean, *rstd, *inp, *w, *b, *r;
    int M, C;
} ln_ctx;

static double ln_loss(void *p) {
    ln_ctx *c = p;
    layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->M, c->C, 1e-5f);
    return testutil_dot(c->out, c->r, (size_t)c->M * c->C);
}

static void test_layernorm(void) {
    /* a mean far from 0 exercises the two-pass variance */
    int M = 2176, C = 192;
    size_t n = (size_t)M * C;
    float *inp = rnd(n, 2.0f, 6.0f), *w = rnd(C, 0.5f, 1.5f), *b = rnd(C, -0.5f, 0.5f);
    float *dout = rnd(n, -1, 1), *out = testutil_zeros(n), *mean = testutil_zeros(M), *rstd = testutil_zeros(M);
    float *di = rnd(n, -1, 1), *dw = rnd(C, -1, 1), *db = rnd(C, -1, 1);
    float *out_r = testutil_zeros(n), *di_r = copy(di, n), *dw_r = copy(dw, C), *db_r = copy(db, C);
    float *di0 = copy(di, n), *dw0 = copy(dw, C), *db0 = copy(db, C);
    layernorm_forward(out, mean, rstd, inp, w, b, M, C, 1e-5f);
    layernorm_backward(di, dw, db, dout, inp, w, mean, rstd, M, C);
    layernorm_ref(out_r, di_r, dw_r, db_r, dout, inp, w, b, M, C, 1e-5);
    testutil_close("layernorm fwd vs double ref", out, out_r, n, 2e-6);
    testutil_close("layernorm bwd dinp vs double ref", di, di_r, n, 2e-6);
    testutil_close("layernorm bwd dw vs double ref", dw, dw_r, C, 1e-5);
    testutil_close("layernorm bwd db vs double ref", db, db_r, C, 1e-5);

    /* bitwise identical with two threads */
    float *out2 = testutil_zeros(n), *mean2 = testutil_zeros(M), *rstd2 = testutil_zeros(M);
    omp_set_num_threads(2);
    layernorm_forward(out2, mean2, rstd2, inp, w, b, M, C, 1e-5f);
    layernorm_backward(di0, dw0, db0, dout, inp, w, mean, rstd, M, C);
    omp_set_num_threads(1);
    T_CHECK(memcmp(out2, out, n * sizeof *out) == 0);
    T_CHECK(memcmp(rstd2, rstd, M * sizeof *rstd) == 0);
    T_CHECK(memcmp(di0, di, n * sizeof *di) == 0);
    T_CHECK(memcmp(dw0, dw, C * sizeof *dw) == 0);
    T_CHECK(memcmp(db0, db, C * sizeof *db) == 0);

    /* finite differences for input, weight and bias; accumulation */
    int m = 4, c = 16;
    ln_ctx x = {testutil_zeros((size_t)m * c),
                testutil_zeros(m),
                testutil_zeros(m),
                rnd((size_t)m * c, -1.0f, 2.0f),
                rnd(c, 0.5f, 1.5f),
                rnd(c, -0.5f, 0.5f),
                rnd((size_t)m * c, -1, 1),
                m,
                c};
    float *gi = testutil_zeros((size_t)m * c), *gw = testutil_zeros(c), *gb = testutil_zeros(c);
    ln_loss(&x);
    layernorm_backward(gi, gw, gb, x.r, x.inp, x.w, x.mean, x.rstd, m, c);
    testutil_fd_check("layernorm dinp", ln_loss, &x, x.inp, gi, (size_t)m * c, 64, 1e-2, 1e-2,
                      1e-3);
    testutil_fd_check("layernorm dw", ln_loss, &x, x.w, gw, c, 64, 1e-2, 1e-2, 1e-3);
    testutil_fd_check("layernorm db", ln_loss, &x, x.b, gb, c, 64, 1e-2, 1e-2, 1e-3);
    /* NULL gradients are skipped and do not change the others */
    float *gw3 = testutil_zeros(c);
    layernorm_backward(NULL, gw3, NULL, x.r, x.inp, x.w, x.mean, x.rstd, m, c);
    T_CHECK(memcmp(gw3, gw, c * sizeof *gw) == 0);
    layernorm_backward(NULL, NULL, NULL, x.r, x.inp, x.w, x.mean, x.rstd, m, c);
    float *gi2 = copy(gi, (size_t)m * c), *gw2 = copy(gw, c), *gb2 = copy(gb, c);
    ln_loss(&x);
    layernorm_backward(gi2, gw2, gb2, x.r, x.inp, x.w, x.mean, x.rstd, m, c);
    check_twice("layernorm dinp", gi, gi2, (size_t)m * c);
    check_twice("layernorm dw", gw, gw2, c);
    check_twice("layernorm db", gb, gb2, c);

    testutil_release_all();
}

/* ---------------------------------------------------------------- attention */

/* Plain double reference of timm's attention, forward and (accumulating) backward. */
static void attention_ref(float *out, float *dqkv, const float *dout, const float *qkv, int B,
                          int T, int C, int NH) {
    int hd = C / NH, ld = 3 * C;
    double scale = 1.0 / sqrt((double)hd);
    double *p = malloc(sizeof(double) * T * T), *dp = malloc(sizeof(double) * T * T);
    MIMIC_CHECK(p && dp);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * ld + h * hd, *k = q + C, *v = q + 2 * C;
            for (int i = 0; i < T; i++) {
                double mx = -1e300, sum = 0.0;
                for (int j = 0; j < T; j++) {
                    double s = 0.0;
                    for (int d = 0; d < hd; d++)
                        s += (double)q[i * ld + d] * k[j * ld + d];
                    p[i * T + j] = s * scale;
                    if (s * scale > mx) mx = s * scale;
                }
                for (int j = 0; j < T; j++)
                    sum += p[i * T + j] = exp(p[i * T + j] - mx);
                for (int j = 0; j < T; j++)
                    p[i * T + j] /= sum;
                for (int d = 0; d < hd; d++) {
                    double o = 0.0;
                    for (int j = 0; j < T; j++)
                        o += p[i * T + j] * v[j * ld + d];
                    out[((size_t)b * T + i) * C + h * hd + d] = (float)o;
                }
            }
            if (!dqkv) continue;
            float *dq = dqkv + (size_t)b * T * ld + h * hd, *dk = dq + C, *dv = dq + 2 * C;
            const float *dy = dout + (size_t)b * T * C + h * hd;
            for (int i = 0; i < T; i++) {
                double s = 0.0;
                for (int j = 0; j < T; j++) {
                    double d_ = 0.0;
                    for (int d = 0; d < hd; d++)
                        d_ += (double)dy[i * C + d] * v[j * ld + d];
                    dp[i * T + j] = d_;
                    s += d_ * p[i * T + j];
                }
                for (int j = 0; j < T; j++)
                    dp[i * T + j] = p[i * T + j] * (dp[i * T + j] - s);
            }
            for (int j = 0; j < T; j++)
                for (int d = 0; d < hd; d++) {
                    double gv = 0.0, gk = 0.0, gq = 0.0;
                    for (int i = 0; i < T; i++) {
                        gv += p[i * T + j] * dy[i * C + d];
                        gk += dp[i * T + j] * q[i * ld + d];
                        gq += dp[j * T + i] * k[i * ld + d];
                    }
                    dv[j * ld + d] += (float)gv;
                    dk[j * ld + d] += (float)(gk * scale);
                    dq[j * ld + d] += (float)(gq * scale);
                }
        }
    free(p);
    free(dp);
}

static void test_attention_vs_ref(int B, int T, int C, int NH) {
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, na = (size_t)B * NH * T * T;
    /* a wide range of scores so that the softmax is far from uniform */
    float *qkv = rnd(nq, -2, 2), *dout = rnd(no, -1, 1), *out = testutil_zeros(no), *att = testutil_zeros(na);
    float *scratch = testutil_zeros(na), *dqkv = rnd(nq, -1, 1);
    /* backward overwrites dqkv: it starts with garbage, the reference from zero */
    float *out_r = testutil_zeros(no), *dqkv_r = testutil_zeros(nq), *dqkv0 = copy(dqkv, nq);
    attention_forward(out, att, qkv, B, T, C, NH);
    attention_backward(dqkv, scratch, dout, qkv, att, B, T, C, NH);
    attention_ref(out_r, dqkv_r, dout, qkv, B, T, C, NH);
    char name[96];
    snprintf(name, sizeof name, "attention fwd vs ref B%d T%d C%d NH%d", B, T, C, NH);
    testutil_close(name, out, out_r, no, 1e-5);
    snprintf(name, sizeof name, "attention bwd vs ref B%d T%d C%d NH%d", B, T, C, NH);
    testutil_close(name, dqkv, dqkv_r, nq, 1e-5);
    double worst = 0.0;
    for (size_t r = 0; r < (size_t)B * NH * T; r++) {
        double s = 0.0;
        for (int j = 0; j < T; j++)
            s += att[r * T + j];
        worst = fmax(worst, fabs(s - 1.0));
    }
    T_CHECK(worst < 1e-5);

    float *out2 = testutil_zeros(no), *att2 = testutil_zeros(na);
    omp_set_num_threads(2);
    attention_forward(out2, att2, qkv, B, T, C, NH);
    attention_backward(dqkv0, scratch, dout, qkv, att, B, T, C, NH);
    omp_set_num_threads(1);
    T_CHECK(memcmp(out2, out, no * sizeof *out) == 0);
    T_CHECK(memcmp(att2, att, na * sizeof *att) == 0);
    T_CHECK(memcmp(dqkv0, dqkv, nq * sizeof *dqkv) == 0);

    testutil_release_all();
}

typedef struct {
    float *out, *att, *qkv, *r;
    int B, T, C, NH;
} attn_ctx;

static double attn_loss(void *p) {
    attn_ctx *c = p;
    attention_forward(c->out, c->att, c->qkv, c->B, c->T, c->C, c->NH);
    return testutil_dot(c->out, c->r, (size_t)c->B * c->T * c->C);
}

static void test_attention(void) {
    test_attention_vs_ref(2, 17, 192, 3);
    test_attention_vs_ref(2, 65, 128, 4);
    test_attention_vs_ref(3, 5, 12, 2);

    int B = 2, T = 5, C = 8, NH = 2;
    size_t nq = (size_t)B * T * 3 * C, na = (size_t)B * NH * T * T;
    attn_ctx c = {testutil_zeros((size_t)B * T * C),
                  testutil_zeros(na),
                  rnd(nq, -1.5f, 1.5f),
                  rnd((size_t)B * T * C, -1, 1),
                  B,
                  T,
                  C,
                  NH};
    float *g = testutil_zeros(nq), *scratch = testutil_zeros(na);
    attn_loss(&c);
    attention_backward(g, scratch, c.r, c.qkv, c.att, B, T, C, NH);
    testutil_fd_check("attention dqkv", attn_loss, &c, c.qkv, g, nq, (int)nq, 1e-2, 1e-2, 1e-3);
    float *g2 = copy(g, nq);
    attn_loss(&c);
    attention_backward(g2, scratch, c.r, c.qkv, c.att, B, T, C, NH);
    check_overwrites("attention dqkv", g, g2, nq);
    testutil_release_all();
}

/* ---------------------------------------------------------------- patches */

typedef struct {
    float *out, *cols, *img, *w, *b, *r;
    int B, C, H, W, p, D;
} pe_ctx;

static double pe_loss(void *p) {
    pe_ctx *c = p;
    int L = (c->H / c->p) * (c->W / c->p);
    patch_embed_forward(c->out, c->cols, c->img, c->w, c->b, c->B, c->C, c->H, c->W, c->p, c->D,
                        NULL, L, L);
    return testutil_dot(c->out, c->r, (size_t)c->B * L * c->D);
}

static void test_patch(void) {
    int B = 2, C = 3, H = 8, W = 12, p = 4, gh = H / p, gw = W / p, L = gh * gw, P = p * p * C;
    size_t ni = (size_t)B * C * H * W;
    float *img = testutil_zeros(ni), *pt = testutil_zeros(ni), *back = testutil_zeros(ni);
    for (size_t i = 0; i < ni; i++)
        img[i] = (float)i;
    patch_patchify(pt, img, B, C, H, W, p);
    /* patch (b=1, row 1, col 2) is l = 1*3+2 = 5; its entry (i=3, j=1, c=2) is pixel
     * (b=1, c=2, y=1*4+3=7, x=2*4+1=9) */
    size_t want = ((size_t)(1 * C + 2) * H + 7) * W + 9;
    T_CHECK(pt[((size_t)1 * L + 5) * P + (3 * p + 1) * C + 2] == (float)want);
    T_CHECK(pt[0] == 0.0f && pt[1] == (float)(H * W)); /* (i,j,c): c fastest */
    patch_unpatchify(back, pt, B, C, H, W, p);
    T_CHECK(memcmp(back, img, ni * sizeof *img) == 0);

    /* the embedding equals a direct strided convolution */
    int D = 5;
    pe_ctx c = {testutil_zeros((size_t)B * L * D),
                testutil_zeros((size_t)B * L * P),
                rnd(ni, -1, 1),
                rnd((size_t)D * P, -1, 1),
                rnd(D, -1, 1),
                rnd((size_t)B * L * D, -1, 1),
                B,
                C,
                H,
                W,
                p,
                D};
    pe_loss(&c);
    float *conv = testutil_zeros((size_t)B * L * D), *dw_r = testutil_zeros((size_t)D * P), *db_r = testutil_zeros(D);
    for (int n = 0; n < B; n++)
        for (int l = 0; l < L; l++)
            for (int d = 0; d < D; d++) {
                double acc = c.b[d];
                double go = c.r[((size_t)n * L + l) * D + d];
                for (int ch = 0; ch < C; ch++)
                    for (int i = 0; i < p; i++)
                        for (int j = 0; j < p; j++) {
                            size_t wi = (((size_t)d * C + ch) * p + i) * p + j;
                            size_t pi = (((size_t)n * C + ch) * H + (l / gw) * p + i) * W +
                                        (l % gw) * p + j;
                            acc += (double)c.w[wi] * c.img[pi];
                            dw_r[wi] += (float)(go * c.img[pi]);
                        }
                conv[((size_t)n * L + l) * D + d] = (float)acc;
                db_r[d] += (float)go;
            }
    testutil_close("patch_embed fwd vs direct conv", c.out, conv, (size_t)B * L * D, 1e-5);
    float *dw = testutil_zeros((size_t)D * P), *db = testutil_zeros(D);
    patch_embed_backward(dw, db, c.r, c.cols, B, L, C, p, D);
    testutil_close("patch_embed dw vs direct conv", dw, dw_r, (size_t)D * P, 1e-5);
    testutil_close("patch_embed db vs direct conv", db, db_r, D, 1e-5);
    testutil_fd_check("patch_embed dw", pe_loss, &c, c.w, dw, (size_t)D * P, 120, 1e-2, 1e-3, 1e-4);
    testutil_fd_check("patch_embed db", pe_loss, &c, c.b, db, D, 16, 1e-2, 1e-3, 1e-4);
    float *dw2 = copy(dw, (size_t)D * P), *db2 = copy(db, D);
    patch_embed_backward(dw2, db2, c.r, c.cols, B, L, C, p, D);
    check_twice("patch_embed dw", dw, dw2, (size_t)D * P);
    check_twice("patch_embed db", db, db2, D);

    /* a subset of patches per image (MAE's visible ones), in the order given: the rows of
     * the full embedding, picked */
    int K = 4, ids[2 * 6] = {5, 0, 3, 2, 1, 4, 1, 2, 0, 5, 3, 4}; /* (B, ld = L = 6) */
    T_CHECK(L == 6);
    pe_loss(&c); /* c.out from the unperturbed weights (the FD checks left the last probe) */
    float *sub = testutil_zeros((size_t)B * K * D), *subcols = testutil_zeros((size_t)B * K * P);
    patch_embed_forward(sub, subcols, c.img, c.w, c.b, B, C, H, W, p, D, ids, K, L);
    for (int n = 0; n < B; n++)
        for (int j = 0; j < K; j++) {
            char what[64];
            snprintf(what, sizeof what, "patch_embed subset image %d patch %d", n, j);
            testutil_close(what, sub + ((size_t)n * K + j) * D,
                           c.out + ((size_t)n * L + ids[n * L + j]) * D, D, 1e-6);
        }

    testutil_release_all();
}

/* ---------------------------------------------------------------- posemb */

static void test_posemb(void) {
    int D = 16, g = 4;
    float *pe = testutil_zeros((size_t)(1 + g * g) * D);
    posemb_sincos_2d(pe, D, g, 1);
    int zero = 1;
    for (int k = 0; k < D; k++)
        zero &= pe[k] == 0.0f;
    T_CHECK(zero);
    /* patch (r=2, c=3) is row 1 + 2*4 + 3 = 12; D/4 = 4 so omega = 1, 0.1, 0.01, 0.001 */
    const float *row = pe + 12 * D;
    T_CHECK(fabsf(row[0] - sinf(3.0f)) < 1e-6f);
    T_CHECK(fabsf(row[1] - sinf(0.3f)) < 1e-6f);
    T_CHECK(fabsf(row[3] - sinf(0.003f)) < 1e-6f);
    T_CHECK(fabsf(row[4] - cosf(3.0f)) < 1e-6f);
    T_CHECK(fabsf(row[5] - cosf(0.3f)) < 1e-6f);
    T_CHECK(fabsf(row[8] - sinf(2.0f)) < 1e-6f);
    T_CHECK(fabsf(row[10] - sinf(0.02f)) < 1e-6f);
    T_CHECK(fabsf(row[12] - cosf(2.0f)) < 1e-6f);
    T_CHECK(fabsf(row[15] - cosf(0.002f)) < 1e-6f);
    /* patch (0,0) embeds position 0: sin half 0, cos half 1 */
    row = pe + 1 * D;
    for (int k = 0; k < D; k++)
        T_CHECK(row[k] == ((k / 4) % 2 ? 1.0f : 0.0f));

    /* without cls the same rows start at 0 */
    float *pe2 = testutil_zeros((size_t)g * g * D);
    posemb_sincos_2d(pe2, D, g, 0);
    T_CHECK(memcmp(pe2, pe + D, (size_t)g * g * D * sizeof *pe) == 0);
    testutil_release_all();
}

int main(void) {
    omp_set_num_threads(1);
    test_fastmath();
    test_gelu();
    test_linear();
    test_layernorm();
    test_attention();
    test_patch();
    test_posemb();
    return testutil_summary("test_layers");
}
