// TIMEOUT: 120
/* test_contrastive — the contrastive stage's layers, heads and losses: BatchNorm1d
 * against a double reference (batch statistics, backward, eval mode, running
 * statistics), BN and heads with statistics per group of rows (contrastive.bn_groups)
 * against the same applied slice by slice, finite differences for every backward (BN,
 * grouped BN, ReLU, L2 normalisation, the
 * MLP heads' parameters and input, the queue / MoCo v3 / SupCon / soft-CE losses), the
 * degenerate cases (one-row BN refused, SupCon rows without positives), the weight
 * builders, Mixup/CutMix, and parity with PyTorch on the committed golden file
 * tests/golden/contrastive_expect.safetensors (gen_contrastive.py; <= 1e-4). */
#include "batchnorm.h"
#include "common.h"
#include "contrastive.h"
#include "head.h"
#include "l2norm.h"
#include "mixup.h"
#include "reference.h"
#include "relu.h"
#include "safetensors.h"
#include "testutil.h"
#include "xent.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PARITY_TOL 1e-4
/* finite differences of float32 forwards: relative tolerance, absolute tolerance as a
 * fraction of the largest difference of the tensor, and the step: 1e-3 for smooth
 * functions (float32 rounding of the loss dominates below), 1e-4 through ReLUs, where
 * a 1e-3 step moved a pre-activation of the projector across 0 (10% off at one entry) */
#define FD_H 1e-3
#define FD_H_RELU 1e-4
#define FD_RTOL 1e-2
#define FD_AFRAC 1e-2

static unsigned long long seed = 2024;

static float *rnd(size_t n, float lo, float hi) {
    return testutil_rnd(n, lo, hi, &seed);
}


static void fd_h(const char *name, testutil_loss_fn loss, void *ctx, float *param,
                 const float *grad, size_t n, double h) {
    testutil_fd_check_scaled(name, loss, ctx, param, grad, n, 64, h, FD_RTOL, FD_AFRAC);
}

static void fd(const char *name, testutil_loss_fn loss, void *ctx, float *param, const float *grad,
               size_t n) {
    fd_h(name, loss, ctx, param, grad, n, FD_H);
}

/* ---------------------------------------------------------------- BatchNorm1d */

typedef struct {
    float *out, *mean, *rstd, *inp, *w, *b, *r;
    int N, C, G; /* G > 1: batchnorm_forward_groups */
} bn_ctx;

static double bn_loss(void *p) {
    bn_ctx *c = p;
    if (c->G > 1)
        batchnorm_forward_groups(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->G, c->N, c->C,
                                 1e-5f);
    else
        batchnorm_forward(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C, 1e-5f);
    return testutil_dot(c->out, c->r, (size_t)c->N * c->C);
}

static void test_batchnorm_case(int N, int C, int affine) {
    size_t n = (size_t)N * C;
    bn_ctx c = {testutil_zeros(n),
                testutil_zeros(C),
                testutil_zeros(C),
                rnd(n, -2, 3),
                affine ? rnd(C, 0.5f, 1.5f) : NULL,
                affine ? rnd(C, -0.5f, 0.5f) : NULL,
                rnd(n, -1, 1),
                N,
                C,
                1};
    float *o2 = testutil_zeros(n), *m2 = testutil_zeros(C), *r2 = testutil_zeros(C);
    bn_loss(&c);
    batchnorm_forward_ref(o2, m2, r2, c.inp, c.w, c.b, N, C, 1e-5f);
    char name[96];
    snprintf(name, sizeof name, "batchnorm fwd N=%d C=%d affine=%d vs ref", N, C, affine);
    testutil_close(name, c.out, o2, n, 1e-6);
    testutil_close("  saved mean vs ref", c.mean, m2, C, 1e-6);
    testutil_close("  saved rstd vs ref", c.rstd, r2, C, 1e-6);
    if (!affine) { /* every channel of the output: mean 0, biased variance 1/(1+eps/var) */
        double worst = 0.0;
        for (int ch = 0; ch < C; ch++) {
            double s = 0.0, ss = 0.0;
            for (int i = 0; i < N; i++)
                s += c.out[(size_t)i * C + ch];
            for (int i = 0; i < N; i++)
                ss += pow(c.out[(size_t)i * C + ch] - s / N, 2);
            double var = 1.0 / ((double)r2[ch] * r2[ch]) - 1e-5;
            worst = fmax(worst, fmax(fabs(s / N), fabs(ss / N - var / (var + 1e-5))));
        }
        printf("%-48s max err %.3e\n", "  output batch mean 0, var 1", worst);
        T_CHECK(worst < 1e-5);
    }

    float *gi = testutil_zeros(n), *gw = affine ? testutil_zeros(C) : NULL, *gb = affine ? testutil_zeros(C) : NULL;
    float *ri = testutil_zeros(n), *rw = affine ? testutil_zeros(C) : NULL, *rb = affine ? testutil_zeros(C) : NULL;
    batchnorm_backward(gi, gw, gb, c.r, c.inp, c.w, c.mean, c.rstd, N, C);
    batchnorm_backward_ref(ri, rw, rb, c.r, c.inp, c.w, N, C, 1e-5f);
    testutil_close("  backward dinp vs ref", gi, ri, n, 1e-5);
    fd("  batchnorm dinp", bn_loss, &c, c.inp, gi, n);
    if (affine) {
        testutil_close("  backward dw vs ref", gw, rw, C, 1e-5);
        testutil_close("  backward db vs ref", gb, rb, C, 1e-5);
        fd("  batchnorm dw", bn_loss, &c, c.w, gw, C);
        fd("  batchnorm db", bn_loss, &c, c.b, gb, C);
    }
    /* accumulation: a second call adds the same again (the statistics refreshed:
     * the last finite difference left them at a perturbed input) */
    bn_loss(&c);
    float *g2 = testutil_zeros(n);
    memcpy(g2, gi, n * sizeof *g2);
    batchnorm_backward(g2, NULL, NULL, c.r, c.inp, c.w, c.mean, c.rstd, N, C);
    for (size_t i = 0; i < n; i++)
        ri[i] = 2.0f * gi[i];
    testutil_close("  backward accumulates (2 calls = 2x)", g2, ri, n, 1e-6);
}

/* Statistics per group of N/G rows: the same as batchnorm_forward/backward on each
 * slice (dw, db summed over the slices), unlike one BN over all N rows; and the
 * gradients by finite differences. */
static void test_batchnorm_groups(int G, int N, int C) {
    size_t n = (size_t)N * C, at = (size_t)(N / G) * C, gc = (size_t)G * C;
    bn_ctx c = {.out = testutil_zeros(n),
                .mean = testutil_zeros(gc),
                .rstd = testutil_zeros(gc),
                .inp = rnd(n, -2, 3),
                .w = rnd(C, 0.5f, 1.5f),
                .b = rnd(C, -0.5f, 0.5f),
                .r = rnd(n, -1, 1),
                .N = N,
                .C = C,
                .G = G};
    for (size_t i = at; i < n; i++) /* the groups' statistics differ */
        c.inp[i] = 2.0f * c.inp[i] + 1.0f;
    float *y = testutil_zeros(n), *m = testutil_zeros(gc), *r = testutil_zeros(gc);
    float *whole = testutil_zeros(n), *wm = testutil_zeros(C), *wr = testutil_zeros(C);
    bn_loss(&c);
    for (int g = 0; g < G; g++)
        batchnorm_forward(y + g * at, m + (size_t)g * C, r + (size_t)g * C, c.inp + g * at, c.w,
                          c.b, N / G, C, 1e-5f);
    batchnorm_forward(whole, wm, wr, c.inp, c.w, c.b, N, C, 1e-5f);
    char name[96];
    snprintf(name, sizeof name, "batchnorm %d groups of %d rows == slice by slice", G, N / G);
    int same = memcmp(c.out, y, n * sizeof *y) == 0 && memcmp(c.mean, m, gc * sizeof *m) == 0 &&
               memcmp(c.rstd, r, gc * sizeof *r) == 0;
    double apart = testutil_rel_err(c.out, whole, n);
    printf("%-48s %s (vs one BN over %d rows: rel err %.2e)\n", name, same ? "ok" : "FAIL", N,
           apart);
    T_CHECK(same && apart > 0.1);

    float *gi = testutil_zeros(n), *gw = testutil_zeros(C), *gb = testutil_zeros(C);
    float *si = testutil_zeros(n), *sw = testutil_zeros(C), *sb = testutil_zeros(C);
    batchnorm_backward_groups(gi, gw, gb, c.r, c.inp, c.w, c.mean, c.rstd, G, N, C);
    for (int g = 0; g < G; g++)
        batchnorm_backward(si + g * at, sw, sb, c.r + g * at, c.inp + g * at, c.w,
                           m + (size_t)g * C, r + (size_t)g * C, N / G, C);
    same = memcmp(gi, si, n * sizeof *si) == 0 && memcmp(gw, sw, C * sizeof *sw) == 0 &&
           memcmp(gb, sb, C * sizeof *sb) == 0;
    printf("%-48s %s\n", "  backward == slice by slice (dw, db summed)", same ? "ok" : "FAIL");
    T_CHECK(same);
    fd("  grouped batchnorm dinp", bn_loss, &c, c.inp, gi, n);
    fd("  grouped batchnorm dw", bn_loss, &c, c.w, gw, C);
    fd("  grouped batchnorm db", bn_loss, &c, c.b, gb, C);
}

static void test_batchnorm(void) {
    test_batchnorm_groups(2, 8, 70);
    test_batchnorm_groups(3, 9, 5);
    test_batchnorm_case(5, 70, 1); /* two channel blocks, the second partial */
    test_batchnorm_case(3, 3, 0);
    test_batchnorm_case(9, 17, 0);

    /* same bits whatever the thread count (a size large enough to go parallel) */
    int Nt = 64, Ct = 1100;
    size_t nt = (size_t)Nt * Ct;
    float *xt = rnd(nt, -1, 1), *dyt = rnd(nt, -1, 1), *wt = rnd(Ct, 0.5f, 1.5f);
    float *yt[2], *mt[2], *st[2], *dxt[2], *dwt[2];
    for (int t = 0; t < 2; t++) {
        yt[t] = testutil_zeros(nt), mt[t] = testutil_zeros(Ct), st[t] = testutil_zeros(Ct), dxt[t] = testutil_zeros(nt);
        dwt[t] = testutil_zeros(Ct);
        omp_set_num_threads(t + 1);
        batchnorm_forward(yt[t], mt[t], st[t], xt, wt, NULL, Nt, Ct, 1e-5f);
        batchnorm_backward(dxt[t], dwt[t], NULL, dyt, xt, wt, mt[t], st[t], Nt, Ct);
    }
    omp_set_num_threads(1);
    T_CHECK(memcmp(yt[0], yt[1], nt * sizeof(float)) == 0);
    T_CHECK(memcmp(dxt[0], dxt[1], nt * sizeof(float)) == 0);
    T_CHECK(memcmp(dwt[0], dwt[1], Ct * sizeof(float)) == 0);

    /* running statistics: torch's momentum rule with the unbiased variance */
    int N = 7, C = 66;
    float *x = rnd((size_t)N * C, -1, 2), *rm = rnd(C, -1, 1), *rv = rnd(C, 0.5f, 2);
    float *want_m = testutil_zeros(C), *want_v = testutil_zeros(C);
    for (int c = 0; c < C; c++) {
        double s = 0.0, ss = 0.0;
        for (int i = 0; i < N; i++)
            s += x[(size_t)i * C + c];
        for (int i = 0; i < N; i++)
            ss += pow(x[(size_t)i * C + c] - s / N, 2);
        want_m[c] = (float)(0.9 * rm[c] + 0.1 * s / N);
        want_v[c] = (float)(0.9 * rv[c] + 0.1 * ss / (N - 1));
    }
    batchnorm_update_running(rm, rv, x, N, C, 0.1f);
    testutil_close("batchnorm running mean (momentum 0.1)", rm, want_m, C, 1e-6);
    testutil_close("batchnorm running var (unbiased)", rv, want_v, C, 1e-6);

    /* eval mode normalises with the given statistics */
    float *w = rnd(C, 0.5f, 1.5f), *b = rnd(C, -1, 1), *y = testutil_zeros((size_t)N * C);
    float *want = testutil_zeros((size_t)N * C);
    batchnorm_forward_eval(y, x, rm, rv, w, b, N, C, 1e-5f);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++)
            want[(size_t)i * C + c] =
                (float)((x[(size_t)i * C + c] - rm[c]) / sqrt(rv[c] + 1e-5) * w[c] + b[c]);
    testutil_close("batchnorm eval forward", y, want, (size_t)N * C, 1e-6);
    testutil_release_all();
}

/* ---------------------------------------------------------------- ReLU, L2 norm */

typedef struct {
    float *out, *norm, *inp, *r;
    int N, D;
} ew_ctx;

static double relu_loss(void *p) {
    ew_ctx *c = p;
    relu_forward(c->out, c->inp, (size_t)c->N * c->D);
    return testutil_dot(c->out, c->r, (size_t)c->N * c->D);
}

static double l2_loss(void *p) {
    ew_ctx *c = p;
    l2norm_forward(c->out, c->norm, c->inp, c->N, c->D);
    return testutil_dot(c->out, c->r, (size_t)c->N * c->D);
}

static void test_relu_l2norm(void) {
    int N = 6, D = 10;
    size_t n = (size_t)N * D;
    ew_ctx c = {testutil_zeros(n), testutil_zeros(N), rnd(n, -1, 1), rnd(n, -1, 1), N, D};
    for (size_t i = 0; i < n; i++) /* keep inputs a step away from the kink */
        c.inp[i] += c.inp[i] >= 0 ? 0.05f : -0.05f;
    float *g = testutil_zeros(n);
    relu_forward(c.out, c.inp, n);
    relu_backward(g, c.r, c.out, n); /* from the output: same sign pattern */
    fd("relu dinp", relu_loss, &c, c.inp, g, n);

    float *g2 = testutil_zeros(n);
    l2_loss(&c);
    double worst = 0.0;
    for (int i = 0; i < N; i++)
        worst = fmax(worst, fabs(testutil_dot(c.out + (size_t)i * D, c.out + (size_t)i * D, D) - 1.0));
    printf("%-48s max err %.3e\n", "l2norm rows have unit norm", worst);
    T_CHECK(worst < 1e-6);
    l2norm_backward(g2, c.r, c.out, c.norm, N, D);
    fd("l2norm dinp", l2_loss, &c, c.inp, g2, n);

    /* a zero row stays zero and is differentiated as x / eps, as F.normalize does */
    float zr[3] = {0, 0, 0}, zo[3], zn, dz[3] = {0, 0, 0}, dy[3] = {1e-13f, 0, -2e-13f};
    l2norm_forward(zo, &zn, zr, 1, 3);
    l2norm_backward(dz, dy, zo, &zn, 1, 3);
    T_CHECK(zo[0] == 0.0f && zo[1] == 0.0f && zo[2] == 0.0f && zn == 0.0f);
    T_CHECK(fabsf(dz[0] - 0.1f) < 1e-6f && fabsf(dz[2] + 0.2f) < 1e-6f);
    testutil_release_all();
}

/* ---------------------------------------------------------------- heads */

typedef struct {
    head_t *h;
    params_t *p;
    head_acts_t *a;
    float *x, *r;
    int N;
} head_ctx;

static double head_loss(void *ptr) {
    head_ctx *c = ptr;
    const float *y = head_forward(c->h, c->p, c->a, c->x, HEAD_TRAIN);
    return testutil_dot(y, c->r, (size_t)c->N * c->h->out_dim);
}

/* Finite differences of every parameter and of the input, BN statistics per group of
 * N/G rows. */
static void check_head_grads(const char *what, head_t *h, params_t *p, int N, int G) {
    head_acts_t a;
    T_CHECK(head_acts_alloc_groups(&a, h, N, G) == 0);
    head_ctx c = {h, p, &a, rnd((size_t)N * h->in_dim, -1, 1), rnd((size_t)N * h->out_dim, -1, 1),
                  N};
    float *dx = testutil_zeros((size_t)N * h->in_dim);
    params_zero_grad(p);
    head_loss(&c);
    head_backward(h, p, &a, dx, c.r);
    char name[128];
    for (int i = 0; i < p->n; i++) {
        snprintf(name, sizeof name, "%s %s", what, p->t[i].name);
        fd_h(name, head_loss, &c, params_w(p, i), params_g(p, i), p->t[i].numel, FD_H_RELU);
    }
    snprintf(name, sizeof name, "%s dx", what);
    fd_h(name, head_loss, &c, c.x, dx, (size_t)N * h->in_dim, FD_H_RELU);
    /* backward accumulates into the parameter gradients */
    float *g1 = testutil_zeros(p->total), *dx2 = testutil_zeros((size_t)N * h->in_dim);
    memcpy(g1, p->g, p->total * sizeof *g1);
    head_loss(&c);
    head_backward(h, p, &a, dx2, c.r);
    for (size_t i = 0; i < p->total; i++)
        g1[i] *= 2.0f;
    snprintf(name, sizeof name, "%s grads accumulate (2 calls = 2x)", what);
    testutil_close(name, p->g, g1, p->total, 1e-6);
    head_acts_free(&a);
}

static void test_heads(void) {
    /* MoCo v3 projector: names are torch's Sequential indices */
    head_layer_t spec[HEAD_MAX_LAYERS];
    params_t *p = params_new();
    head_t proj, pred;
    int n = head_spec_mocov3(spec, 3, 12, 5, 1);
    T_CHECK(n == 3);
    T_CHECK(head_register(&proj, p, "projector", 7, spec, n) == 0);
    n = head_spec_mocov3(spec, 2, 12, 5, 1);
    T_CHECK(head_register(&pred, p, "predictor", 5, spec, n) == 0);
    const char *want[] = {"projector.0.weight", "projector.1.weight", "projector.1.bias",
                          "projector.3.weight", "projector.4.weight", "projector.4.bias",
                          "projector.6.weight", "predictor.0.weight", "predictor.1.weight",
                          "predictor.1.bias",   "predictor.3.weight"};
    T_CHECK(p->n == (int)(sizeof want / sizeof *want));
    for (int i = 0; i < p->n && i < (int)(sizeof want / sizeof *want); i++)
        T_CHECK(strcmp(p->t[i].name, want[i]) == 0);
    T_CHECK(proj.bn_index[2] == 7 && proj.bn_w[2] < 0 && proj.run_mean[2] != NULL);
    T_CHECK(params_finalize(p) == 0);
    rng_t rng;
    rng_seed(&rng, 7);
    head_init(&proj, p, &rng);
    head_init(&pred, p, &rng);
    head_acts_t a;
    mimic_set_quiet(1);
    T_CHECK(head_acts_alloc(&a, &proj, 1) == MIMIC_EINVAL); /* BN of one row */
    mimic_set_quiet(0);
    check_head_grads("mocov3 projector", &proj, p, 6, 1);
    check_head_grads("mocov3 predictor", &pred, p, 4, 1);
    check_head_grads("mocov3 projector, 2 BN groups", &proj, p, 8, 2);
    head_free(&proj);
    head_free(&pred);
    params_destroy(&p);

    /* MoCo v2 / SupCon head: Linear, ReLU, Linear with biases; one row is fine */
    p = params_new();
    head_t h2;
    n = head_spec_mlp2(spec, 9, 4);
    T_CHECK(head_register(&h2, p, "head", 9, spec, n) == 0);
    T_CHECK(p->n == 4 && strcmp(p->t[2].name, "head.2.weight") == 0);
    T_CHECK(params_finalize(p) == 0);
    head_init(&h2, p, &rng);
    T_CHECK(head_acts_alloc(&a, &h2, 1) == 0);
    head_acts_free(&a);
    check_head_grads("mlp2 head", &h2, p, 5, 1);
    head_free(&h2);
    params_destroy(&p);
    testutil_release_all();
}

/* A head whose BN statistics are per group of rows (head_acts_alloc_groups) equals the
 * head run on each slice: output, input gradient, parameter gradients (summed over the
 * slices) and the running statistics (those of the first slice); and differs from the
 * head with one group. */
static void test_heads_groups(void) {
    enum { G = 2, n = 5, N = G * n, IN = 7 };
    head_layer_t spec[HEAD_MAX_LAYERS];
    params_t *p = params_new();
    head_t h;
    T_CHECK(head_register(&h, p, "projector", IN, spec, head_spec_mocov3(spec, 3, 12, 5, 1)) == 0);
    T_CHECK(params_finalize(p) == 0);
    rng_t rng;
    rng_seed(&rng, 11);
    head_init(&h, p, &rng);
    const size_t out = (size_t)h.out_dim;
    size_t nrun = 0;
    for (int l = 0; l < h.nlayers; l++)
        nrun += h.run_mean[l] ? 2 * (size_t)h.layer[l].out : 0;
    head_acts_t ag, as, a1, bad;
    T_CHECK(head_acts_alloc_groups(&ag, &h, N, G) == 0 && head_acts_alloc(&as, &h, n) == 0 &&
            head_acts_alloc(&a1, &h, N) == 0);
    mimic_set_quiet(1);
    T_CHECK(head_acts_alloc_groups(&bad, &h, 9, 2) == MIMIC_EINVAL); /* 9 rows, 2 groups */
    T_CHECK(head_acts_alloc_groups(&bad, &h, 6, 6) == MIMIC_EINVAL); /* 1 row per group */
    mimic_set_quiet(0);
    float *x = rnd((size_t)N * IN, -1, 1), *r = rnd((size_t)N * out, -1, 1);
    for (size_t i = (size_t)n * IN; i < (size_t)N * IN; i++) /* the slices differ */
        x[i] = 1.5f * x[i] + 0.5f;
    float *run0 = testutil_zeros(nrun), *run_g = testutil_zeros(nrun),
          *run_s = testutil_zeros(nrun);
    float *yg = testutil_zeros((size_t)N * out), *ys = testutil_zeros((size_t)N * out);
    float *dxg = testutil_zeros((size_t)N * IN), *dxs = testutil_zeros((size_t)N * IN);
    float *gg = testutil_zeros(p->total);
    memcpy(run0, h.running, nrun * sizeof *run0);

    memcpy(yg, head_forward(&h, p, &ag, x, HEAD_TRAIN), (size_t)N * out * sizeof *yg);
    memcpy(run_g, h.running, nrun * sizeof *run_g);
    params_zero_grad(p);
    head_backward(&h, p, &ag, dxg, r);
    memcpy(gg, p->g, p->total * sizeof *gg);

    memcpy(h.running, run0, nrun * sizeof *run0);
    params_zero_grad(p);
    for (int g = 0; g < G; g++) {
        const float *xs = x + (size_t)g * n * IN;
        memcpy(ys + (size_t)g * n * out, head_forward(&h, p, &as, xs, HEAD_TRAIN),
               (size_t)n * out * sizeof *ys);
        if (g == 0) memcpy(run_s, h.running, nrun * sizeof *run_s);
        head_backward(&h, p, &as, dxs + (size_t)g * n * IN, r + (size_t)g * n * out);
    }
    testutil_close("head, 2 BN groups == slice by slice: output", yg, ys, (size_t)N * out, 1e-6);
    testutil_close("  input gradient", dxg, dxs, (size_t)N * IN, 1e-5);
    testutil_close("  parameter gradients (summed)", gg, p->g, p->total, 1e-5);
    testutil_close("  running statistics (first group's)", run_g, run_s, nrun, 1e-6);
    double apart = testutil_rel_err(head_forward(&h, p, &a1, x, HEAD_TRAIN), yg, (size_t)N * out);
    printf("%-48s rel err %.2e\n", "  vs one BN group over all rows (must differ)", apart);
    T_CHECK(apart > 0.01);
    head_acts_free(&ag);
    head_acts_free(&as);
    head_acts_free(&a1);
    head_free(&h);
    params_destroy(&p);
    testutil_release_all();
}

/* ---------------------------------------------------------------- losses */

typedef struct {
    float *prob, *q, *k, *queue, *w, *target;
    int N, M, K, D, offset;
    float T, scale;
} loss_ctx;

static double queue_loss(void *p) {
    loss_ctx *c = p;
    return contrastive_queue_forward(c->prob, c->q, c->k, c->queue, c->N, c->K, c->D, c->T);
}
static double v3_loss(void *p) {
    loss_ctx *c = p;
    return contrastive_v3_forward(c->prob, c->q, c->k, c->N, c->M, c->D, c->offset, c->T);
}
static double supcon_loss(void *p) {
    loss_ctx *c = p;
    return contrastive_supcon_forward(c->prob, c->q, c->w, c->M, c->D, c->T, c->scale);
}
static double xent_loss(void *p) {
    loss_ctx *c = p;
    return xent_soft_forward(c->prob, c->q, c->target, c->N, c->K);
}

/* SupCon with weights in double, straight from the formula. */
static double supcon_ref(const float *z, const float *w, int M, int D, double tau, double scale) {
    double total = 0.0;
    for (int i = 0; i < M; i++) {
        double den = 0.0, W = 0.0, num = 0.0;
        for (int j = 0; j < M; j++)
            if (j != i) den += exp(testutil_dot(z + (size_t)i * D, z + (size_t)j * D, D) / tau);
        for (int j = 0; j < M; j++) {
            if (j == i) continue;
            double s = testutil_dot(z + (size_t)i * D, z + (size_t)j * D, D) / tau;
            W += w[(size_t)i * M + j];
            num += w[(size_t)i * M + j] * (s - log(den));
        }
        if (W > 0) total += -num / W;
    }
    return scale * total / M;
}

static void test_losses(void) {
    int N = 5, K = 7, D = 6, M = 12;
    float dloss = 1.7f; /* backward scales by the upstream gradient */
    loss_ctx c = {.prob = testutil_zeros((size_t)M * (M + K + 1)),
                  .q = rnd((size_t)M * D, -0.6f, 0.6f),
                  .k = rnd((size_t)M * D, -0.6f, 0.6f),
                  .queue = rnd((size_t)K * D, -0.6f, 0.6f),
                  .N = N,
                  .M = M,
                  .K = K,
                  .D = D,
                  .offset = 4,
                  .T = 0.2f,
                  .scale = 1.0f};
    float *g = testutil_zeros((size_t)M * D);
    queue_loss(&c);
    contrastive_queue_backward(g, c.prob, c.k, c.queue, N, K, D, c.T, 1.0f);
    fd("queue infonce dq", queue_loss, &c, c.q, g, (size_t)N * D);
    contrastive_queue_backward(g, c.prob, c.k, c.queue, N, 0, D, c.T, 0.0f); /* K=0 safe */

    memset(g, 0, (size_t)M * D * sizeof *g);
    v3_loss(&c);
    contrastive_v3_backward(g, c.prob, c.k, N, M, D, c.offset, c.T, 1.0f);
    fd("mocov3 ctr dq (offset 4 of 12 keys)", v3_loss, &c, c.q, g, (size_t)N * D);

    /* SupCon with labels; label 9 occurs once, so row 3 has no positive */
    int labels[12] = {0, 1, 2, 9, 0, 1, 2, 0, 1, 2, 0, 1};
    c.w = testutil_zeros((size_t)M * M);
    contrastive_weights_labels(c.w, labels, M);
    c.scale = 0.1f / 0.07f;
    c.T = 0.1f;
    float *scratch = testutil_zeros((size_t)M * M);
    double l = supcon_loss(&c), want = supcon_ref(c.q, c.w, M, D, c.T, c.scale);
    printf("%-48s %.7f vs %.7f\n", "supcon loss vs double formula", l, want);
    T_CHECK(fabs(l - want) <= 1e-5 * fabs(want));
    memset(g, 0, (size_t)M * D * sizeof *g);
    contrastive_supcon_backward(g, scratch, c.prob, c.w, c.q, M, D, c.T, c.scale, dloss);
    for (int i = 0; i < M * D; i++)
        g[i] /= dloss;
    fd("supcon dz (labels, one row w/o positive)", supcon_loss, &c, c.q, g, (size_t)M * D);

    /* no positives anywhere: loss 0, gradient 0 */
    int distinct[12];
    for (int i = 0; i < M; i++)
        distinct[i] = i;
    contrastive_weights_labels(c.w, distinct, M);
    memset(g, 0, (size_t)M * D * sizeof *g);
    T_CHECK(supcon_loss(&c) == 0.0);
    contrastive_supcon_backward(g, scratch, c.prob, c.w, c.q, M, D, c.T, c.scale, 1.0f);
    double gmax = 0.0;
    for (int i = 0; i < M * D; i++)
        gmax = fmax(gmax, fabs(g[i]));
    T_CHECK(gmax == 0.0);

    /* soft weights (MIMIC) */
    int Kc = 3;
    float *y = rnd((size_t)M * Kc, 0, 1);
    contrastive_weights_soft(c.w, y, M, Kc);
    c.scale = 1.0f;
    memset(g, 0, (size_t)M * D * sizeof *g);
    l = supcon_loss(&c);
    want = supcon_ref(c.q, c.w, M, D, c.T, 1.0);
    T_CHECK(fabs(l - want) <= 1e-5 * fabs(want));
    contrastive_supcon_backward(g, scratch, c.prob, c.w, c.q, M, D, c.T, c.scale, 1.0f);
    fd("supcon dz (soft weights)", supcon_loss, &c, c.q, g, (size_t)M * D);

    /* soft-target cross-entropy, targets not normalised on purpose */
    c.target = rnd((size_t)N * K, 0, 1);
    memset(g, 0, (size_t)M * D * sizeof *g);
    xent_loss(&c);
    xent_soft_backward(g, c.prob, c.target, N, K, 1.0f);
    fd("soft cross-entropy dlogits", xent_loss, &c, c.q, g, (size_t)N * K);
    testutil_release_all();
}

static void test_weights(void) {
    float w[36];
    int labels[6] = {1, 2, 1, 3, 2, 1};
    contrastive_weights_labels(w, labels, 6);
    T_CHECK(w[0 * 6 + 2] == 1 && w[0 * 6 + 5] == 1 && w[0 * 6 + 1] == 0 && w[0] == 0);
    T_CHECK(w[3 * 6 + 0] == 0 && w[3 * 6 + 3] == 0 && w[4 * 6 + 1] == 1);
    contrastive_weights_views(w, 3, 2); /* rows v*3 + b */
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++)
            T_CHECK(w[i * 6 + j] == (float)(i != j && (i % 3) == (j % 3)));
    float y[6 * 2] = {1, 0, 0, 1, 0.5f, 0.5f, 1, 0, 0.7f, 0.3f, 0, 1};
    contrastive_weights_soft(w, y, 6, 2);
    T_CHECK(w[0] == 0 && w[0 * 6 + 3] == 1 && w[0 * 6 + 1] == 0);
    T_CHECK(fabsf(w[2 * 6 + 4] - 0.5f) < 1e-7f && fabsf(w[4 * 6 + 0] - 0.7f) < 1e-7f);
}

/* ---------------------------------------------------------------- mixup / cutmix */

static void test_mixup(void) {
    int B = 4, C = 2, H = 8, W = 10, K = 5;
    size_t n = (size_t)C * H * W;
    float *x = rnd((size_t)B * n, -1, 1), *out = testutil_zeros((size_t)B * n), *y = testutil_zeros((size_t)B * K);
    int labels[4] = {0, 3, 3, 1}, pair[4];
    mixup_pair_flip(pair, B);
    T_CHECK(pair[0] == 3 && pair[3] == 0 && pair[1] == 2);

    /* Beta(a, a): in (0, 1), mean 1/2, variance 1 / (4 (2a + 1)) */
    rng_t rng;
    rng_seed(&rng, 99);
    for (int ai = 0; ai < 2; ai++) {
        float alpha = ai ? 0.8f : 2.0f;
        double s = 0.0, ss = 0.0;
        int draws = 20000, inside = 1;
        for (int i = 0; i < draws; i++) {
            double v = mixup_beta(&rng, alpha);
            inside &= v >= 0.0 && v <= 1.0;
            s += v;
            ss += v * v;
        }
        double mean = s / draws, var = ss / draws - mean * mean;
        double want_var = 1.0 / (4.0 * (2.0 * alpha + 1.0));
        printf("beta(%.1f): mean %.4f var %.4f (want 0.5, %.4f)\n", alpha, mean, var, want_var);
        T_CHECK(inside && fabs(mean - 0.5) < 0.01 && fabs(var - want_var) < 0.01);
    }

    /* mixup images and labels */
    mixup_images(out, x, pair, 0.3f, B, n);
    T_CHECK(fabsf(out[n + 5] - (0.3f * x[n + 5] + 0.7f * x[2 * n + 5])) < 1e-6f);
    mixup_labels(y, labels, pair, 0.3f, B, K, 0.0f);
    T_CHECK(fabsf(y[0 * K + 0] - 0.3f) < 1e-7f && fabsf(y[0 * K + 1] - 0.7f) < 1e-7f);
    T_CHECK(fabsf(y[1 * K + 3] - 1.0f) < 1e-7f); /* sample 1 and its pair share label 3 */
    mixup_labels(y, labels, pair, 0.3f, B, K, 0.1f);
    double rowsum = 0.0;
    for (int k = 0; k < K; k++)
        rowsum += y[2 * K + k];
    T_CHECK(fabs(rowsum - 1.0) < 1e-6 && fabsf(y[2 * K + 0] - 0.02f) < 1e-7f);

    /* CutMix box: timm's rand_bbox from the same draws, lam corrected to its area */
    for (int trial = 0; trial < 200; trial++) {
        rng_t r1, r2;
        rng_seed(&r1, 1000 + trial);
        r2 = r1;
        float lam = (float)trial / 200.0f;
        mixup_box_t box;
        float lc = mixup_cutmix_box(&box, &r1, H, W, lam);
        int cut_h = (int)(H * sqrt(1.0 - lam)), cut_w = (int)(W * sqrt(1.0 - lam));
        int cy = (int)rng_below(&r2, H), cx = (int)rng_below(&r2, W);
        int y0 = cy - cut_h / 2 < 0 ? 0 : cy - cut_h / 2,
            y1 = cy + cut_h / 2 > H ? H : cy + cut_h / 2;
        int x0 = cx - cut_w / 2 < 0 ? 0 : cx - cut_w / 2,
            x1 = cx + cut_w / 2 > W ? W : cx + cut_w / 2;
        T_CHECK(box.y0 == y0 && box.y1 == y1 && box.x0 == x0 && box.x1 == x1);
        T_CHECK(fabsf(lc - (1.0f - (float)((y1 - y0) * (x1 - x0)) / (float)(H * W))) < 1e-6f);
        T_CHECK(lc >= lam - 1e-6f); /* clipping and rounding only shrink the box */
    }
    mixup_box_t box = {2, 5, 3, 9};
    mixup_cutmix_images(out, x, pair, &box, B, C, H, W);
    int bad = 0;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    int in = i >= 2 && i < 5 && j >= 3 && j < 9;
                    size_t o = (size_t)c * H * W + (size_t)i * W + j;
                    bad += out[b * n + o] != x[(size_t)(in ? pair[b] : b) * n + o];
                }
    T_CHECK(bad == 0);

    /* one batch: reproducible from the seed; labels carry the returned lam */
    mixup_cfg_t cfg = {.mixup_alpha = 0.8f, .cutmix_alpha = 1.0f, .switch_prob = 0.5f};
    float *out2 = testutil_zeros((size_t)B * n), *y2 = testutil_zeros((size_t)B * K);
    for (int s = 0; s < 6; s++) {
        rng_t r1, r2;
        rng_seed(&r1, 50 + s);
        rng_seed(&r2, 50 + s);
        float l1 = mixup_batch(out, y, x, labels, pair, &cfg, &r1, B, C, H, W, K);
        float l2 = mixup_batch(out2, y2, x, labels, pair, &cfg, &r2, B, C, H, W, K);
        T_CHECK(l1 == l2 && memcmp(out, out2, (size_t)B * n * sizeof *out) == 0);
        T_CHECK(memcmp(y, y2, (size_t)B * K * sizeof *y) == 0);
        T_CHECK(fabsf(y[0 * K + 0] - l1) < 1e-6f && fabsf(y[0 * K + 1] - (1.0f - l1)) < 1e-6f);
    }
    testutil_release_all();
}

/* ---------------------------------------------------------------- PyTorch parity */

static st_file_t *golden;

static const char *meta(const char *k) {
    const char *v = st_meta(golden, k);
    if (!v) {
        fprintf(stderr, "golden file lacks metadata '%s'\n", k);
        exit(2);
    }
    return v;
}
static int meta_i(const char *k) {
    return atoi(meta(k));
}
static float meta_f(const char *k) {
    return (float)atof(meta(k));
}

/* A golden F32 tensor of exactly n floats (the test fails and exits otherwise). */
static const float *gold(const char *name, size_t n) {
    const st_tensor_t *t = st_find(golden, name);
    if (!t || t->dtype != ST_F32 || (size_t)t->numel != n) {
        fprintf(stderr, "golden tensor '%s' missing or not F32 of %zu values\n", name, n);
        exit(2);
    }
    return t->data;
}

static void gold_labels(int *out, const char *name, int n) {
    const st_tensor_t *t = st_find(golden, name);
    if (!t || t->dtype != ST_I64 || t->numel != n) {
        fprintf(stderr, "golden tensor '%s' missing or not I64 of %d values\n", name, n);
        exit(2);
    }
    for (int i = 0; i < n; i++)
        out[i] = (int)((const int64_t *)t->data)[i];
}

static void parity(const char *name, const float *got, size_t n) {
    testutil_close(name, got, gold(name, n), n, PARITY_TOL);
}

/* Both views through projector and predictor, q = normalize(.), the symmetric loss
 * against the two workers' keys, then backward through the whole chain. */
static void parity_v3(void) {
    int N = meta_i("batch"), in = meta_i("in_dim"), hid = meta_i("mlp_dim"), D = meta_i("out_dim");
    int M = N * meta_i("workers"), off = meta_i("v3_offset");
    float tau = meta_f("v3_tau");
    head_layer_t spec[HEAD_MAX_LAYERS];
    params_t *p = params_new();
    head_t proj, pred;
    T_CHECK(head_register(&proj, p, "projector", in, spec,
                          head_spec_mocov3(spec, meta_i("proj_layers"), hid, D, 1)) == 0);
    T_CHECK(head_register(&pred, p, "predictor", D, spec,
                          head_spec_mocov3(spec, meta_i("pred_layers"), hid, D, 1)) == 0);
    T_CHECK(params_finalize(p) == 0);
    proj.bn_eps = pred.bn_eps = meta_f("bn_eps");
    proj.bn_momentum = pred.bn_momentum = meta_f("bn_momentum");
    for (int i = 0; i < p->n; i++)
        memcpy(params_w(p, i), gold(p->t[i].name, p->t[i].numel), p->t[i].numel * sizeof(float));

    const float *x[2] = {gold("v3.x1", (size_t)N * in), gold("v3.x2", (size_t)N * in)};
    const float *k[2] = {gold("v3.k1", (size_t)M * D), gold("v3.k2", (size_t)M * D)};
    head_acts_t pa[2], qa[2];
    float *q[2], *qn[2], *norm[2], *dq[2], *dqn[2], *dh[2], *dx[2], *prob = testutil_zeros((size_t)N * M);
    double loss = 0.0;
    for (int v = 0; v < 2; v++) {
        T_CHECK(head_acts_alloc(&pa[v], &proj, N) == 0 && head_acts_alloc(&qa[v], &pred, N) == 0);
        const float *h = head_forward(&proj, p, &pa[v], x[v], HEAD_TRAIN);
        q[v] = (float *)head_forward(&pred, p, &qa[v], h, HEAD_TRAIN);
        qn[v] = testutil_zeros((size_t)N * D);
        norm[v] = testutil_zeros(N);
        dq[v] = testutil_zeros((size_t)N * D);
        dqn[v] = testutil_zeros((size_t)N * D);
        dh[v] = testutil_zeros((size_t)N * D);
        dx[v] = testutil_zeros((size_t)N * in);
        l2norm_forward(qn[v], norm[v], q[v], N, D);
    }
    parity("v3.q1", qn[0], (size_t)N * D);
    params_zero_grad(p);
    for (int v = 0; v < 2; v++) { /* ctr(q1, k2) + ctr(q2, k1) */
        loss += contrastive_v3_forward(prob, qn[v], k[1 - v], N, M, D, off, tau);
        contrastive_v3_backward(dqn[v], prob, k[1 - v], N, M, D, off, tau, 1.0f);
        l2norm_backward(dq[v], dqn[v], qn[v], norm[v], N, D);
        head_backward(&pred, p, &qa[v], dh[v], dq[v]);
        head_backward(&proj, p, &pa[v], dx[v], dh[v]);
    }
    float lf = (float)loss;
    parity("v3.loss", &lf, 1);
    char name[PARAMS_NAME_MAX + 16];
    for (int i = 0; i < p->n; i++) {
        snprintf(name, sizeof name, "v3.grad.%s", p->t[i].name);
        parity(name, params_g(p, i), p->t[i].numel);
    }
    parity("v3.grad.x1", dx[0], (size_t)N * in);
    parity("v3.grad.x2", dx[1], (size_t)N * in);
    /* running statistics after the two training forwards, mean and var together (a
     * zero-mean layer's running mean is ~1e-17 in float64: no scale of its own) */
    head_t *hs[2] = {&proj, &pred};
    const char *pre[2] = {"projector", "predictor"};
    for (int m = 0; m < 2; m++)
        for (int l = 0; l < hs[m]->nlayers; l++) {
            if (!hs[m]->run_mean[l]) continue;
            int o = hs[m]->layer[l].out;
            float *got = testutil_zeros(2 * (size_t)o), *want = testutil_zeros(2 * (size_t)o);
            snprintf(name, sizeof name, "v3.after.%s.%d.running_mean", pre[m], hs[m]->bn_index[l]);
            memcpy(want, gold(name, o), o * sizeof(float));
            snprintf(name, sizeof name, "v3.after.%s.%d.running_var", pre[m], hs[m]->bn_index[l]);
            memcpy(want + o, gold(name, o), o * sizeof(float));
            memcpy(got, hs[m]->run_mean[l], o * sizeof(float));
            memcpy(got + o, hs[m]->run_var[l], o * sizeof(float));
            snprintf(name, sizeof name, "v3.after.%s.%d.running_{mean,var}", pre[m],
                     hs[m]->bn_index[l]);
            testutil_close(name, got, want, 2 * (size_t)o, PARITY_TOL);
        }
    for (int v = 0; v < 2; v++) {
        head_acts_free(&pa[v]);
        head_acts_free(&qa[v]);
    }
    head_free(&proj);
    head_free(&pred);
    params_destroy(&p);
}

static void parity_queue(void) {
    int N = meta_i("batch"), K = meta_i("queue_len"), D = meta_i("out_dim");
    float *qn = testutil_zeros((size_t)N * D), *norm = testutil_zeros(N), *prob = testutil_zeros((size_t)N * (K + 1));
    float *dqn = testutil_zeros((size_t)N * D), *dq = testutil_zeros((size_t)N * D);
    l2norm_forward(qn, norm, gold("queue.q_raw", (size_t)N * D), N, D);
    const float *k = gold("queue.k", (size_t)N * D), *queue = gold("queue.queue", (size_t)K * D);
    float loss = contrastive_queue_forward(prob, qn, k, queue, N, K, D, meta_f("queue_T"));
    contrastive_queue_backward(dqn, prob, k, queue, N, K, D, meta_f("queue_T"), 1.0f);
    l2norm_backward(dq, dqn, qn, norm, N, D);
    parity("queue.loss", &loss, 1);
    parity("queue.grad.q_raw", dq, (size_t)N * D);
}

/* z_raw (M,D) -> normalize -> SupCon with weights w and scale; returns the loss and
 * accumulates dloss * dL/dz_raw into dz. */
static float supcon_chain(float *dz, const float *z_raw, const float *w, int M, int D, float tau,
                          float scale, float dloss) {
    float *z = testutil_zeros((size_t)M * D), *norm = testutil_zeros(M), *prob = testutil_zeros((size_t)M * M);
    float *scratch = testutil_zeros((size_t)M * M), *dzn = testutil_zeros((size_t)M * D);
    l2norm_forward(z, norm, z_raw, M, D);
    float loss = contrastive_supcon_forward(prob, z, w, M, D, tau, scale);
    contrastive_supcon_backward(dzn, scratch, prob, w, z, M, D, tau, scale, dloss);
    l2norm_backward(dz, dzn, z, norm, M, D);
    return loss;
}

static void parity_supcon(void) {
    int B = meta_i("batch"), M = 2 * B, D = meta_i("out_dim"), labels[64];
    MIMIC_CHECK(M <= 64);
    float tau = meta_f("supcon_tau");
    float *w = testutil_zeros((size_t)M * M), *dz = testutil_zeros((size_t)M * D);
    gold_labels(labels, "supcon.labels", M);
    contrastive_weights_labels(w, labels, M);
    float loss = supcon_chain(dz, gold("supcon.z_raw", (size_t)M * D), w, M, D, tau,
                              tau / meta_f("supcon_base_tau"), 1.0f);
    parity("supcon.loss", &loss, 1);
    parity("supcon.grad.z_raw", dz, (size_t)M * D);
}

static void parity_mimic(void) {
    int B = meta_i("batch"), M = 2 * B, D = meta_i("out_dim"), K = meta_i("num_classes");
    int labels[32], pair[32];
    MIMIC_CHECK(B <= 32);
    float wcon = meta_f("w_con");
    gold_labels(labels, "mimic.labels", B);
    mixup_pair_flip(pair, B);
    float *y = testutil_zeros((size_t)M * K), *w = testutil_zeros((size_t)M * M), *dz = testutil_zeros((size_t)M * D);
    float *prob = testutil_zeros((size_t)B * K), *dl = testutil_zeros((size_t)B * K);
    mixup_labels(y, labels, pair, meta_f("mix_lam"), B, K, meta_f("smoothing"));
    parity("mimic.y", y, (size_t)B * K);
    memcpy(y + (size_t)B * K, y, (size_t)B * K * sizeof *y); /* both views */
    contrastive_weights_soft(w, y, M, K);
    float con = supcon_chain(dz, gold("mimic.z_raw", (size_t)M * D), w, M, D, meta_f("mimic_tau"),
                             1.0f, wcon);
    const float *logits = gold("mimic.logits", (size_t)B * K);
    float ce = xent_soft_forward(prob, logits, y, B, K);
    xent_soft_backward(dl, prob, y, B, K, 1.0f);
    float total = ce + wcon * con;
    parity("mimic.loss_con", &con, 1);
    parity("mimic.loss_ce", &ce, 1);
    parity("mimic.loss", &total, 1);
    parity("mimic.grad.z_raw", dz, (size_t)M * D);
    parity("mimic.grad.logits", dl, (size_t)B * K);
}

static void test_parity(void) {
    const char *path = testutil_src_path("tests/golden/contrastive_expect.safetensors");
    if (st_open(&golden, path)) {
        fprintf(stderr, "cannot open %s\n", path);
        testutil_failures++;
        return;
    }
    T_CHECK(strcmp(meta("format"), "mimicps-golden-contrastive") == 0);
    T_CHECK(strcmp(meta("version"), "1") == 0);
    parity_v3();
    parity_queue();
    parity_supcon();
    parity_mimic();
    testutil_release_all();
    st_close(&golden);
}

int main(void) {
    test_batchnorm();
    test_relu_l2norm();
    test_heads();
    test_heads_groups();
    test_losses();
    test_weights();
    test_mixup();
    test_parity();
    return testutil_summary("test_contrastive");
}
