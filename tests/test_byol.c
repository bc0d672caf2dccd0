// TIMEOUT: 300
/* test_byol — BYOL and ContraWarping (stages/byol.c, models/byol.c, data/warp.c):
 *  - the losses: finite differences through the L2 normalisation (BYOL's 2 - 2 cos and
 *    the warped-negative term), backward accumulating, and parity with PyTorch on the
 *    committed golden file tests/golden/byol_expect.safetensors (gen_byol.py: BYOL's
 *    heads with torch names, both losses, every head gradient and the inputs'; <= 1e-4);
 *  - the local warp: bit-identical outside its discs, exactly 0 displacement there,
 *    displacement slopes bounded by the documented Jacobian bound, bilinear resampling
 *    exact on a linear ramp (out - in = a ux + b uy away from the border), the draws a
 *    pure function of the stream; the loader's warped views (global views unchanged,
 *    warped views differ from their source only in a small part of the image); the
 *    malformed data.warp_* and contrawarp.* keys refused naming the key;
 *  - the stages: every tensor's gradient by finite differences for byol and contrawarp,
 *    the target (momentum copy) untouched and used (changing it changes the loss),
 *    contrawarp with w_neg = 0 equal to byol on the same global views. */
#include "byol.h"
#include "common.h"
#include "config.h"
#include "head.h"
#include "l2norm.h"
#include "loader.h"
#include "rng.h"
#include "safetensors.h"
#include "stage.h"
#include "testutil.h"
#include "warp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long seed = 77;

/* ---------------------------------------------------------------- the losses */

typedef struct {
    float *p, *pn, *pnorm, *z, *w, *q;
    int N, D;
    float tau, w_neg;
} loss_ctx;

/* byol(normalize(p), z) + w_neg * warpneg(normalize(p), z, w) */
static double loss_fn(void *vc) {
    loss_ctx *c = vc;
    l2norm_forward(c->pn, c->pnorm, c->p, c->N, c->D);
    double l = byol_forward(c->pn, c->z, c->N, c->D);
    if (c->w_neg != 0.0f)
        l += c->w_neg * byol_warpneg_forward(c->q, c->pn, c->z, c->w, c->N, c->D, c->tau);
    return l;
}

static void loss_grad(loss_ctx *c, float *dp) {
    size_t n = (size_t)c->N * c->D;
    float *dpn = testutil_zeros(n);
    loss_fn(c);
    byol_backward(dpn, c->z, c->N, c->D, 1.0f);
    if (c->w_neg != 0.0f)
        byol_warpneg_backward(dpn, c->q, c->z, c->w, c->N, c->D, c->tau, c->w_neg);
    l2norm_backward(dp, dpn, c->pn, c->pnorm, c->N, c->D);
}

static void unit_rows(float *x, int N, int D) {
    float *norm = testutil_zeros((size_t)N);
    l2norm_forward(x, norm, x, N, D);
}

static void test_losses_fd(void) {
    const int N = 5, D = 7;
    size_t n = (size_t)N * D;
    loss_ctx c = {testutil_rnd(n, -1, 1, &seed),
                  testutil_zeros(n),
                  testutil_zeros(N),
                  testutil_rnd(n, -1, 1, &seed),
                  testutil_rnd(n, -1, 1, &seed),
                  testutil_zeros(N),
                  N,
                  D,
                  0.3f,
                  0.0f};
    unit_rows(c.z, N, D);
    unit_rows(c.w, N, D);
    float *dp = testutil_zeros(n);
    loss_grad(&c, dp);
    double l = loss_fn(&c);
    /* 2 - 2cos in [0, 4] and the closed form from the cosines */
    double ref = 0;
    for (int i = 0; i < N; i++)
        ref += 2 - 2 * testutil_dot(c.pn + i * D, c.z + i * D, D);
    T_CHECK(l >= 0 && l <= 4 && fabs(l - ref / N) < 1e-6);
    testutil_fd_check_scaled("byol 2-2cos d/dp (through l2norm)", loss_fn, &c, c.p, dp, n, 64, 1e-3,
                             1e-2, 1e-2);
    /* p = z: the loss is 0 and so is its gradient */
    memcpy(c.p, c.z, n * sizeof(float));
    T_CHECK(fabs(loss_fn(&c)) < 1e-6);

    testutil_fill(c.p, n, -1, 1, &seed);
    c.w_neg = 0.7f;
    float *dp2 = testutil_zeros(n);
    loss_grad(&c, dp2);
    testutil_fd_check_scaled("contrawarp byol + w_neg * neg d/dp", loss_fn, &c, c.p, dp2, n, 64,
                             1e-3, 1e-2, 1e-2);
    /* the negative term alone: softplus((p.w - p.z)/tau), and its gradient */
    l2norm_forward(c.pn, c.pnorm, c.p, N, D);
    double neg = byol_warpneg_forward(c.q, c.pn, c.z, c.w, N, D, c.tau), sref = 0;
    for (int i = 0; i < N; i++) {
        double x = (testutil_dot(c.pn + i * D, c.w + i * D, D) -
                    testutil_dot(c.pn + i * D, c.z + i * D, D)) /
                   c.tau;
        sref += log1p(exp(x));
    }
    printf("warped-negative term %.6f, softplus reference %.6f\n", neg, sref / N);
    T_CHECK(fabs(neg - sref / N) < 1e-5);
    /* w = z: the negative is the positive, the term is log 2 whatever p is */
    memcpy(c.w, c.z, n * sizeof(float));
    T_CHECK(fabs(byol_warpneg_forward(c.q, c.pn, c.z, c.w, N, D, c.tau) - log(2.0)) < 1e-6);
    /* backward accumulates */
    testutil_fill(c.w, n, -1, 1, &seed);
    unit_rows(c.w, N, D);
    float *g1 = testutil_zeros(n), *g2 = testutil_zeros(n);
    byol_warpneg_forward(c.q, c.pn, c.z, c.w, N, D, c.tau);
    byol_warpneg_backward(g1, c.q, c.z, c.w, N, D, c.tau, 1.0f);
    byol_warpneg_backward(g2, c.q, c.z, c.w, N, D, c.tau, 1.0f);
    byol_warpneg_backward(g2, c.q, c.z, c.w, N, D, c.tau, 1.0f);
    byol_backward(g1, c.z, N, D, 0.5f);
    byol_backward(g2, c.z, N, D, 0.5f);
    byol_backward(g2, c.z, N, D, 0.5f);
    for (size_t i = 0; i < n; i++)
        g1[i] *= 2.0f;
    testutil_close("byol losses: backward accumulates (2 calls = 2x)", g2, g1, n, 1e-6);
}

/* ---------------------------------------------------------------- PyTorch parity */

static const char *meta_or(const st_file_t *f, const char *k) {
    const char *v = st_meta(f, k);
    if (!v) {
        fprintf(stderr, "golden file lacks metadata '%s'\n", k);
        exit(2);
    }
    return v;
}

static float *read_t(const st_file_t *f, const char *name, int64_t r, int64_t c) {
    float *x = testutil_zeros((size_t)(r * c));
    int64_t shape[2] = {r, c};
    T_CHECK(st_read_f32(f, name, x, shape, 2) == 0);
    return x;
}

static void compare(const st_file_t *f, const char *name, const float *got, size_t n) {
    const st_tensor_t *t = st_find(f, name);
    if (!t || t->dtype != ST_F32 || (size_t)t->numel != n) {
        printf("%-48s missing or shape mismatch FAIL\n", name);
        testutil_failures++;
        return;
    }
    testutil_close(name, got, t->data, n, 1e-4);
}

/* One golden loss ("byol" or "cw") through C heads loaded by torch's names. */
static void parity_case(const st_file_t *f, const char *kind) {
    const int N = atoi(meta_or(f, "batch")), I = atoi(meta_or(f, "in_dim")),
              H = atoi(meta_or(f, "mlp_dim")), K = atoi(meta_or(f, "out_dim"));
    const float w_neg = (float)atof(meta_or(f, "w_neg")), tau = (float)atof(meta_or(f, "tau"));
    const int cw = strcmp(kind, "cw") == 0;
    head_layer_t pl[2], ql[2];
    T_CHECK(head_spec_byol(pl, H, K, 0) == 2 && head_spec_byol(ql, H, K, 1) == 2);
    params_t *p = params_new();
    head_t proj, pred;
    T_CHECK(head_register(&proj, p, "projector", I, pl, 2) >= 0 &&
            head_register(&pred, p, "predictor", K, ql, 2) >= 0 && params_finalize(p) >= 0);
    /* every tensor of the file is one of ours, and the other way round */
    int in_file = 0;
    for (int i = 0; i < st_count(f); i++)
        in_file += strncmp(st_at(f, i)->name, "projector.", 10) == 0 ||
                   strncmp(st_at(f, i)->name, "predictor.", 10) == 0;
    T_CHECK(in_file == p->n && p->n == 9 && params_find(p, "predictor.3.bias") >= 0 &&
            params_find(p, "projector.3.bias") < 0 && params_find(p, "projector.0.bias") < 0);
    for (int i = 0; i < p->n; i++)
        T_CHECK(st_read_f32(f, p->t[i].name, params_w(p, i), p->t[i].shape, p->t[i].ndim) == 0);
    float *x[2] = {read_t(f, "x1", N, I), read_t(f, "x2", N, I)};
    float *z[2] = {read_t(f, "z1", N, K), read_t(f, "z2", N, K)};
    float *zw[2] = {read_t(f, "zw1", N, K), read_t(f, "zw2", N, K)};
    float *zn[2], *wn[2], *pn[2], *pnorm[2], *q[2], *dx[2];
    head_acts_t pa[2], qa[2];
    params_zero_grad(p);
    double loss = 0;
    for (int v = 0; v < 2; v++) {
        zn[v] = testutil_zeros((size_t)N * K);
        wn[v] = testutil_zeros((size_t)N * K);
        l2norm_forward(zn[v], testutil_zeros(N), z[v], N, K);
        l2norm_forward(wn[v], testutil_zeros(N), zw[v], N, K);
    }
    for (int v = 0; v < 2; v++) {
        T_CHECK(head_acts_alloc(&pa[v], &proj, N) == 0 && head_acts_alloc(&qa[v], &pred, N) == 0);
        const float *h = head_forward(&proj, p, &pa[v], x[v], HEAD_TRAIN);
        const float *o = head_forward(&pred, p, &qa[v], h, HEAD_TRAIN);
        pn[v] = testutil_zeros((size_t)N * K);
        pnorm[v] = testutil_zeros(N);
        q[v] = testutil_zeros(N);
        l2norm_forward(pn[v], pnorm[v], o, N, K);
        loss += byol_forward(pn[v], zn[1 - v], N, K);
        if (cw) loss += w_neg * byol_warpneg_forward(q[v], pn[v], zn[1 - v], wn[1 - v], N, K, tau);
    }
    for (int v = 0; v < 2; v++) {
        float *dpn = testutil_zeros((size_t)N * K), *dp = testutil_zeros((size_t)N * K),
              *dh = testutil_zeros((size_t)N * K);
        dx[v] = testutil_zeros((size_t)N * I);
        byol_backward(dpn, zn[1 - v], N, K, 1.0f);
        if (cw) byol_warpneg_backward(dpn, q[v], zn[1 - v], wn[1 - v], N, K, tau, w_neg);
        l2norm_backward(dp, dpn, pn[v], pnorm[v], N, K);
        head_backward(&pred, p, &qa[v], dh, dp);
        head_backward(&proj, p, &pa[v], dx[v], dh);
    }
    char name[160];
    float lf = (float)loss;
    snprintf(name, sizeof name, "%s.loss", kind);
    compare(f, name, &lf, 1);
    for (int i = 0; i < p->n; i++) {
        snprintf(name, sizeof name, "%s.grad.%s", kind, p->t[i].name);
        compare(f, name, params_g(p, i), p->t[i].numel);
    }
    snprintf(name, sizeof name, "%s.grad.x1", kind);
    compare(f, name, dx[0], (size_t)N * I);
    snprintf(name, sizeof name, "%s.grad.x2", kind);
    compare(f, name, dx[1], (size_t)N * I);
    for (int v = 0; v < 2; v++) {
        head_acts_free(&pa[v]);
        head_acts_free(&qa[v]);
    }
    head_free(&proj);
    head_free(&pred);
    params_destroy(&p);
}

static void test_parity(void) {
    st_file_t *f = NULL;
    if (st_open(&f, testutil_src_path("tests/golden/byol_expect.safetensors"))) {
        printf("cannot open tests/golden/byol_expect.safetensors FAIL\n");
        testutil_failures++;
        return;
    }
    T_CHECK(strcmp(meta_or(f, "format"), "mimicps-golden-byol") == 0);
    T_CHECK(strcmp(meta_or(f, "version"), "1") == 0);
    parity_case(f, "byol");
    parity_case(f, "cw");
    st_close(&f);
}

/* The whole stages through the documented gradient dump (mimic-worker --dump-grads) on
 * gen_byol.py's tiny ViT, heads, target ("momentum.*") and batches: loss and every
 * gradient against PyTorch. The final norm's bias has an exactly zero gradient (the
 * projector's first BN removes a shift of every CLS feature): torch's is ~1e-17, ours
 * rounding noise, so it is checked to be small against the largest gradient instead. */
static void dump_parity(const char *stage, const char *kind, const char *batch) {
    char w[1200], b[1200], out[1200], log[1200], cmd[8192];
    snprintf(w, sizeof w, "%s", testutil_src_path("tests/golden/byol_stage_weights.safetensors"));
    snprintf(b, sizeof b, "%s", testutil_src_path(batch));
    snprintf(out, sizeof out, "%.1000s/dump-%s.safetensors", testutil_tmpdir(), stage);
    snprintf(log, sizeof log, "%.1000s/dump-%s.txt", testutil_tmpdir(), stage);
    st_file_t *fe = NULL, *fg = NULL;
    if (st_open(&fe, testutil_src_path("tests/golden/byol_stage_expect.safetensors"))) {
        printf("cannot open tests/golden/byol_stage_expect.safetensors FAIL\n");
        testutil_failures++;
        return;
    }
    T_CHECK(strcmp(meta_or(fe, "format"), "mimicps-golden-byol-stage") == 0 &&
            strcmp(meta_or(fe, "version"), "1") == 0);
    const char *build = getenv("MIMIC_BUILD_DIR");
    snprintf(cmd, sizeof cmd,
             "%s/worker/mimic-worker --dump-grads --train.precision=fp32 --train.stage=%s "
             "--weights %s --batch %s --out %s --model.img_size=%s --model.in_chans=%s "
             "--model.patch_size=%s --model.embed_dim=%s --model.depth=%s --model.num_heads=%s "
             "--model.mlp_ratio=%s --contrastive.mlp_dim=%s --contrastive.dim=%s "
             "--contrawarp.w_neg=%s --contrawarp.tau=%s > %s 2>&1",
             build ? build : ".", stage, w, b, out, meta_or(fe, "img_size"),
             meta_or(fe, "in_chans"), meta_or(fe, "patch_size"), meta_or(fe, "embed_dim"),
             meta_or(fe, "depth"), meta_or(fe, "num_heads"), meta_or(fe, "mlp_ratio"),
             meta_or(fe, "mlp_dim"), meta_or(fe, "out_dim"), meta_or(fe, "w_neg"),
             meta_or(fe, "tau"), log);
    T_CHECK(system(cmd) == 0);
    if (st_open(&fg, out)) {
        printf("%s: no gradient dump (log %s) FAIL\n", stage, log);
        testutil_failures++;
        st_close(&fe);
        return;
    }
    char name[200];
    snprintf(name, sizeof name, "%s.loss", kind);
    const st_tensor_t *l = st_find(fg, "loss");
    if (l) compare(fe, name, l->data, 1);
    T_CHECK(l != NULL);
    int compared = 0;
    double gmax = 0, nb_max = -1;
    for (int i = 0; i < st_count(fg); i++) {
        const st_tensor_t *t = st_at(fg, i);
        if (strncmp(t->name, "grad.", 5) != 0) continue;
        const float *x = t->data;
        for (int64_t j = 0; j < t->numel; j++)
            gmax = fmax(gmax, fabs(x[j]));
        snprintf(name, sizeof name, "%s.%s", kind, t->name);
        if (strcmp(t->name, "grad.norm.bias") == 0) {
            nb_max = 0;
            for (int64_t j = 0; j < t->numel; j++)
                nb_max = fmax(nb_max, fabs(x[j]));
            T_CHECK(st_find(fe, name) != NULL);
            continue;
        }
        compare(fe, name, x, (size_t)t->numel);
        compared++;
    }
    /* every expected gradient was dumped: the dump's count equals the file's */
    int expected = 0;
    snprintf(name, sizeof name, "%s.grad.", kind);
    for (int i = 0; i < st_count(fe); i++)
        expected += strncmp(st_at(fe, i)->name, name, strlen(name)) == 0;
    printf("%s dump: %d gradients compared (of %d expected), norm.bias |g| %.2e vs max %.2e\n",
           stage, compared, expected, nb_max, gmax);
    T_CHECK(compared == expected - 1 && compared > 20 && nb_max >= 0 && nb_max <= 1e-5 * gmax);
    st_close(&fg);
    st_close(&fe);
}

static void test_dump_parity(void) {
    dump_parity("byol", "byol", "tests/golden/byol_stage_batch2.safetensors");
    dump_parity("contrawarp", "cw", "tests/golden/byol_stage_batch4.safetensors");
}

/* ---------------------------------------------------------------- the local warp */

/* 1 when pixel (i, j) lies inside a disc of f (distance < R). */
static int in_disc(const warp_field_t *f, int i, int j) {
    for (int k = 0; k < f->k; k++) {
        float ex = (float)j - f->cx[k], ey = (float)i - f->cy[k];
        if (ex * ex + ey * ey < f->R * f->R) return 1;
    }
    return 0;
}

static void test_warp(void) {
    const int S = 32, C = 2;
    const size_t plane = (size_t)S * S;
    warp_cfg_t wc = {3, 0.2f, 0.1f};
    T_CHECK(warp_check(&wc) == 0);
    float *in = testutil_rnd((size_t)C * plane, -1, 1, &seed),
          *out = testutil_zeros((size_t)C * plane);
    int outside_same = 1, inside_changed = 0, zero_outside = 1, trials = 20;
    double worst_slope = 0, bound = 1.72 * wc.magnitude / wc.radius; /* per disc */
    for (int t = 0; t < trials; t++) {
        rng_t r;
        rng_split(&r, 99, (uint64_t)t);
        warp_field_t f;
        warp_draw(&f, &wc, S, &r);
        T_CHECK(f.k == 3 && fabsf(f.R - 0.2f * S) < 1e-5f);
        warp_apply(out, in, C, S, &f);
        for (int i = 0; i < S; i++)
            for (int j = 0; j < S; j++) {
                float ux, uy;
                warp_displacement(&f, (float)j, (float)i, &ux, &uy);
                int inside = in_disc(&f, i, j);
                if (!inside) {
                    zero_outside &= ux == 0.0f && uy == 0.0f;
                    for (int c = 0; c < C; c++)
                        outside_same &= memcmp(&out[c * plane + i * S + j],
                                               &in[c * plane + i * S + j], sizeof(float)) == 0;
                } else if (out[i * S + j] != in[i * S + j]) {
                    inside_changed = 1;
                }
                /* slopes of the field at a sub-pixel step, against K discs' worst case */
                float ux2, uy2, ux3, uy3, h = 0.25f;
                warp_displacement(&f, (float)j + h, (float)i, &ux2, &uy2);
                warp_displacement(&f, (float)j, (float)i + h, &ux3, &uy3);
                double sl = fmax(fmax(fabs(ux2 - ux), fabs(uy2 - uy)),
                                 fmax(fabs(ux3 - ux), fabs(uy3 - uy))) /
                            h;
                worst_slope = fmax(worst_slope, sl);
            }
    }
    printf("warp: outside the discs bit-identical %s, displacement 0 there %s, changed inside "
           "%s; worst slope %.3f (<= K x %.3f)\n",
           outside_same ? "yes" : "NO", zero_outside ? "yes" : "NO", inside_changed ? "yes" : "NO",
           worst_slope, bound);
    T_CHECK(outside_same && zero_outside && inside_changed);
    T_CHECK(worst_slope > 0.05 * bound && worst_slope <= wc.regions * bound * 1.01);

    /* a linear ramp in(x, y) = a x + b y is resampled exactly: out - in = a ux + b uy
     * wherever x + u stays inside the image (no clamping) */
    const float a = 0.37f, b = -0.21f;
    for (int i = 0; i < S; i++)
        for (int j = 0; j < S; j++)
            in[i * S + j] = a * (float)j + b * (float)i;
    double worst = 0, worst_field = 0;
    for (int t = 0; t < trials; t++) {
        rng_t r;
        rng_split(&r, 7, (uint64_t)t);
        warp_field_t f;
        warp_draw(&f, &wc, S, &r);
        warp_apply(out, in, 1, S, &f);
        for (int i = 0; i < S; i++)
            for (int j = 0; j < S; j++) {
                float ux, uy;
                warp_displacement(&f, (float)j, (float)i, &ux, &uy);
                float x = (float)j + ux, y = (float)i + uy;
                worst_field = fmax(worst_field, hypot(ux, uy));
                if (x < 0 || y < 0 || x > S - 1 || y > S - 1) continue;
                worst = fmax(worst, fabs(out[i * S + j] - in[i * S + j] - (a * ux + b * uy)));
            }
    }
    printf("warp: linear ramp resampled exactly, worst error %.2e; largest displacement %.2f px "
           "(magnitude %.2f px per disc)\n",
           worst, worst_field, wc.magnitude * S);
    T_CHECK(worst < 1e-4 && worst_field > 0.5 * wc.magnitude * S &&
            worst_field <= wc.regions * wc.magnitude * S * 1.0001);

    /* the draws are a pure function of the stream */
    rng_t r1, r2;
    rng_split(&r1, 3, 4);
    rng_split(&r2, 3, 4);
    warp_field_t f1, f2;
    memset(&f1, 0, sizeof f1);
    memset(&f2, 0, sizeof f2);
    warp_draw(&f1, &wc, S, &r1);
    warp_draw(&f2, &wc, S, &r2);
    T_CHECK(memcmp(&f1, &f2, sizeof f1) == 0);

    /* malformed keys, each refused naming itself */
    const struct {
        warp_cfg_t c;
        const char *key;
    } bad[] = {{{0, 0.2f, 0.05f}, "data.warp_regions"},
               {{WARP_MAX_REGIONS + 1, 0.2f, 0.05f}, "data.warp_regions"},
               {{2, 0.0f, 0.0f}, "data.warp_radius"},
               {{2, 1.5f, 0.05f}, "data.warp_radius"},
               {{2, NAN, 0.05f}, "data.warp_radius"},
               {{2, 0.2f, 0.11f}, "data.warp_magnitude"},
               {{2, 0.2f, -0.01f}, "data.warp_magnitude"}};
    mimic_set_quiet(1);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        T_CHECK(warp_check(&bad[i].c) == MIMIC_EINVAL);
        T_CHECK(strstr(mimic_last_error(), bad[i].key) != NULL);
    }
    mimic_set_quiet(0);
}

/* The loader's warped views: views 0, 1 are exactly a two-view loader's; view 2 (3) is
 * view 0 (1) changed in some pixels only (the discs); bad counts refused; a bad
 * data.warp_* key refused by loader_new. */
static void test_loader_warp(void) {
    char img[1000], lab[1000];
    snprintf(img, sizeof img, "%.980s/img.idx", testutil_tmpdir());
    snprintf(lab, sizeof lab, "%.980s/lab.idx", testutil_tmpdir());
    T_CHECK(testutil_write_idx(img, lab, 16, 20, 5) == 0);
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    snprintf(cfg.data.path, sizeof cfg.data.path, "%s", img);
    snprintf(cfg.data.labels, sizeof cfg.data.labels, "%s", lab);
    cfg.model.img_size = 16;
    cfg.data.threads = 1;
    cfg.data.mean[0] = 0.5f;
    cfg.data.std[0] = 0.25f;
    cfg.data.warp_regions = 2;
    cfg.data.warp_radius = 0.25f;
    cfg.data.warp_magnitude = 0.1f;
    const int n = 8, isz = 16 * 16;
    uint32_t idx[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    float *two = malloc((size_t)n * 2 * isz * sizeof(float)),
          *four = malloc((size_t)n * 4 * isz * sizeof(float)),
          *again = malloc((size_t)n * 4 * isz * sizeof(float));
    loader_t *ld = NULL;
    T_CHECK(loader_new(&ld, &cfg) == 0);
    if (!ld) return;
    T_CHECK(loader_set_views(ld, 2) == 0 && loader_fill(ld, idx, n, 0, two, NULL, 0, NULL) == n);
    T_CHECK(loader_set_views(ld, 4) == 0 && loader_set_warp(ld, 2) == 0);
    T_CHECK(loader_fill(ld, idx, n, 0, four, NULL, 0, NULL) == n);
    T_CHECK(loader_fill(ld, idx, n, 0, again, NULL, 0, NULL) == n);
    T_CHECK(memcmp(four, again, (size_t)n * 4 * isz * sizeof(float)) == 0);
    int globals_same = 1, changed = 0;
    double worst_frac = 0;
    for (int i = 0; i < n; i++)
        for (int v = 0; v < 2; v++) {
            const float *g = four + ((size_t)i * 4 + v) * isz,
                        *w = four + ((size_t)i * 4 + 2 + v) * isz;
            globals_same &= memcmp(g, two + ((size_t)i * 2 + v) * isz, isz * sizeof(float)) == 0;
            int diff = 0;
            for (int k = 0; k < isz; k++)
                diff += w[k] != g[k];
            changed += diff > 0;
            worst_frac = fmax(worst_frac, (double)diff / isz);
        }
    /* two discs of radius 4 px cover at most 2 pi 16 / 256 = 39% of a 16 x 16 image */
    printf("loader: 4 views (2 warped): global views equal the 2-view loader's %s; %d of %d "
           "warped views changed, at most %.0f%% of their pixels\n",
           globals_same ? "yes" : "NO", changed, 2 * n, 100 * worst_frac);
    T_CHECK(globals_same && changed >= n && worst_frac <= 2 * M_PI * 16 / 256 + 1e-9);
    mimic_set_quiet(1);
    T_CHECK(loader_set_warp(ld, 3) == MIMIC_EINVAL && loader_set_warp(ld, -1) == MIMIC_EINVAL);
    T_CHECK(loader_set_views(ld, 2) == 0 && loader_set_warp(ld, 2) == MIMIC_EINVAL);
    loader_destroy(&ld);
    cfg.data.warp_magnitude = 0.2f; /* > radius / 2 */
    T_CHECK(loader_new(&ld, &cfg) == MIMIC_EINVAL && !ld);
    T_CHECK(strstr(mimic_last_error(), "data.warp_magnitude") != NULL);
    mimic_set_quiet(0);
    free(two);
    free(four);
    free(again);
}

/* ---------------------------------------------------------------- the stages */

typedef struct {
    stage_t *s;
    stage_input_t in;
    int n;
} stage_ctx;

static double stage_loss(void *p) {
    stage_ctx *c = p;
    return c->s->ops->forward(c->s, &c->in, c->n);
}

static void tiny_cfg(mimic_cfg_t *cfg, const char *stage) {
    config_defaults(cfg);
    const char *set[] = {"model.img_size=8",   "model.in_chans=1",       "model.patch_size=4",
                         "model.embed_dim=8",  "model.depth=1",          "model.num_heads=2",
                         "model.mlp_ratio=2",  "contrastive.mlp_dim=12", "contrastive.dim=6",
                         "contrawarp.tau=0.5", "contrawarp.w_neg=0.8"};
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
        T_CHECK(config_override(cfg, set[i]) == 0);
    char st[64];
    snprintf(st, sizeof st, "train.stage=%s", stage);
    T_CHECK(config_override(cfg, st) == 0);
}

static void test_stage_fd(const char *kind) {
    mimic_cfg_t cfg;
    tiny_cfg(&cfg, kind);
    const int B = 4, cw = strcmp(kind, "contrawarp") == 0, V = cw ? 4 : 2;
    stage_t *s = NULL;
    T_CHECK(stage_new(&s, &cfg, B) == 0);
    if (!s) return;
    T_CHECK(s->views == V && s->warp_views == (cw ? 2 : 0) && s->ema &&
            (s->ops->reads & STAGE_READ_EMA) && !(s->ops->pushes & STAGE_PUSH_KEYS));
    T_CHECK(params_find(s->p, "predictor.3.bias") >= 0 &&
            params_find(s->p, "projector.3.bias") < 0 &&
            params_find(s->p, "blocks.0.attn.qkv.weight") >= 0);
    s->ops->init(s, 3);
    T_CHECK(memcmp(s->ema, s->p->w, s->p->total * sizeof(float)) == 0);
    unsigned long long sd = 23;
    testutil_fill(s->p->w, s->p->total, -0.5f, 0.5f, &sd);
    testutil_fill(s->ema, s->p->total, -0.5f, 0.5f, &sd);
    size_t nimg = (size_t)B * V * 64;
    float *imgs = malloc(nimg * sizeof(float));
    testutil_fill(imgs, nimg, -1.0f, 1.0f, &sd);
    if (cw) /* the warped views: their source plus a local change */
        for (int i = 0; i < B; i++)
            for (int v = 0; v < 2; v++) {
                float *w = imgs + ((size_t)i * 4 + 2 + v) * 64;
                memcpy(w, imgs + ((size_t)i * 4 + v) * 64, 64 * sizeof(float));
                for (int k = 18; k < 30; k++)
                    w[k] += 0.6f;
            }
    stage_ctx c = {s, {imgs, NULL, NULL}, B};
    float *ema0 = malloc(s->p->total * sizeof(float));
    memcpy(ema0, s->ema, s->p->total * sizeof(float));
    double loss = stage_compute(s, &c.in, B, NULL, NULL);
    printf("%s: loss %.5f\n", kind, loss);
    T_CHECK(isfinite(loss) && loss > 0 && (cw || loss <= 8.0));
    T_CHECK(memcmp(ema0, s->ema, s->p->total * sizeof(float)) == 0);
    char name[160];
    int nb = params_find(s->p, "norm.bias"), checked = 0;
    for (int i = 0; i < s->p->n; i++) {
        const params_tensor_t *t = &s->p->t[i];
        /* the final norm's bias shifts every CLS feature by one vector, which the
         * projector's BatchNorm removes: exactly zero gradient (as for MoCo v3) */
        if (i == nb) continue;
        snprintf(name, sizeof name, "%s %s", kind, t->name);
        testutil_fd_check_scaled(name, stage_loss, &c, params_w(s->p, i), params_g(s->p, i),
                                 t->numel, 12, 1e-3, 3e-2, 5e-2);
        checked++;
    }
    T_CHECK(checked == s->p->n - 1);
    /* the online predictor is trained, the target's is never run: its gradient is the
     * online one's; the target (ema) is used: another target changes the loss */
    testutil_fill(s->ema, s->p->total, -0.5f, 0.5f, &sd);
    T_CHECK(s->ops->forward(s, &c.in, B) != loss);
    memcpy(s->ema, ema0, s->p->total * sizeof(float));
    if (cw) {
        /* the negatives count: other warped views change the loss ... */
        float keep = imgs[2 * 64 + 5];
        imgs[2 * 64 + 5] += 0.3f;
        T_CHECK(s->ops->forward(s, &c.in, B) != loss);
        imgs[2 * 64 + 5] = keep;
        /* ... and with w_neg = 0 the loss is BYOL's on the same global views and weights */
        mimic_cfg_t cb;
        tiny_cfg(&cb, "byol");
        stage_t *sb = NULL;
        T_CHECK(stage_new(&sb, &cb, B) == 0);
        stage_t *s0 = NULL;
        T_CHECK(config_override(&cfg, "contrawarp.w_neg=0") == 0 && stage_new(&s0, &cfg, B) == 0);
        if (sb && s0) {
            memcpy(sb->p->w, s->p->w, s->p->total * sizeof(float));
            memcpy(sb->ema, s->ema, s->p->total * sizeof(float));
            memcpy(s0->p->w, s->p->w, s->p->total * sizeof(float));
            memcpy(s0->ema, s->ema, s->p->total * sizeof(float));
            float *g2 = malloc((size_t)B * 2 * 64 * sizeof(float));
            for (int i = 0; i < B; i++)
                memcpy(g2 + (size_t)i * 2 * 64, imgs + (size_t)i * 4 * 64, 2 * 64 * sizeof(float));
            stage_input_t in2 = {g2, NULL, NULL};
            double lb = stage_compute(sb, &in2, B, NULL, NULL),
                   l0 = stage_compute(s0, &c.in, B, NULL, NULL);
            /* not bit for bit: the target encoder runs 4 views a sample instead of 2, so
             * its GEMMs have other shapes (other blocking, other rounding), which the
             * target's BatchNorm over 4 rows amplifies to ~5e-6; a wrong pairing of
             * views or targets would differ at O(1) */
            printf("contrawarp with w_neg 0: %.7f, byol: %.7f\n", l0, lb);
            T_CHECK(fabs(l0 - lb) <= 1e-4 * fabs(lb));
            testutil_close("contrawarp w_neg 0 gradient == byol's", s0->p->g, sb->p->g, s->p->total,
                           1e-4);
            free(g2);
        }
        stage_destroy(&sb);
        stage_destroy(&s0);
    }
    /* backward accumulates: a second pass doubles the gradient */
    stage_compute(s, &c.in, B, NULL, NULL);
    float *g1 = malloc(s->p->total * sizeof(float));
    memcpy(g1, s->p->g, s->p->total * sizeof(float));
    s->ops->forward(s, &c.in, B);
    s->ops->backward(s);
    for (size_t i = 0; i < s->p->total; i++)
        g1[i] *= 2;
    testutil_close("backward accumulates", s->p->g, g1, s->p->total, 1e-5);
    mimic_set_quiet(1);
    T_CHECK(!isfinite(s->ops->forward(s, &c.in, 1))); /* one sample: no BatchNorm statistics */
    mimic_set_quiet(0);
    free(g1);
    free(ema0);
    free(imgs);
    stage_destroy(&s);
}

/* Malformed keys of the stages: refused at stage_new, naming the key. */
static void test_stage_cfg(void) {
    const struct {
        const char *stage, *set, *key;
    } bad[] = {{"contrawarp", "contrawarp.w_neg=-0.5", "contrawarp.w_neg"},
               {"contrawarp", "contrawarp.tau=0", "contrawarp.tau"},
               {"contrawarp", "contrawarp.tau=-1", "contrawarp.tau"},
               {"byol", "contrastive.dim=0", "contrastive.dim"},
               {"byol", "contrastive.bn_groups=3", "contrastive.bn_groups"}};
    mimic_set_quiet(1);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mimic_cfg_t cfg;
        tiny_cfg(&cfg, bad[i].stage);
        T_CHECK(config_override(&cfg, bad[i].set) == 0);
        stage_t *s = NULL;
        T_CHECK(stage_new(&s, &cfg, 4) == MIMIC_EINVAL && !s);
        T_CHECK(strstr(mimic_last_error(), bad[i].key) != NULL);
        if (!strstr(mimic_last_error(), bad[i].key))
            printf("  (%s: %s)\n", bad[i].set, mimic_last_error());
    }
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    T_CHECK(config_override(&cfg, "train.stage=contrawarps") != 0);
    T_CHECK(config_override(&cfg, "contrawarp.w_neg=abc") != 0);
    T_CHECK(config_override(&cfg, "data.warp_regions=2.5") != 0);
    mimic_set_quiet(0);
    T_CHECK(config_override(&cfg, "train.stage=contrawarp") == 0 &&
            cfg.train.stage == STAGE_KIND_CONTRAWARP &&
            strcmp(stage_ops_of(&cfg)->name, "contrawarp") == 0);
    T_CHECK(config_override(&cfg, "train.stage=byol") == 0 && cfg.train.stage == STAGE_KIND_BYOL &&
            strcmp(stage_ops_of(&cfg)->name, "byol") == 0);
}

/* deploy/fmnist.ini switches to either objective with one key and gives it MoCo v3's
 * step budget; its sections of stages a pipeline does not run are kept, not refused; a
 * misspelt section still is. */
static void test_pipeline_cfg(void) {
    static mimic_cfg_t base, st, moco;
    char name[64];
    const char *stages[] = {"byol", "contrawarp"};
    for (int k = 0; k < 2; k++) {
        config_defaults(&base);
        T_CHECK(config_load(&base, testutil_src_path("deploy/fmnist.ini")) == 0);
        T_CHECK(config_pipeline_stage(&base, 1, &moco, name, sizeof name) == 0 &&
                strcmp(name, "mocov3") == 0); /* the file's own pipeline runs as before */
        char flag[96];
        snprintf(flag, sizeof flag, "pipeline.stages=mae,%s,eval", stages[k]);
        T_CHECK(config_override(&base, flag) == 0);
        T_CHECK(config_pipeline_stage(&base, 1, &st, name, sizeof name) == 0);
        T_CHECK(strcmp(name, stages[k]) == 0 &&
                st.train.stage == (k ? STAGE_KIND_CONTRAWARP : STAGE_KIND_BYOL));
        T_CHECK(st.train.steps == moco.train.steps &&
                st.train.batch_size == moco.train.batch_size && st.train.blr == moco.train.blr &&
                st.train.warmup_steps == moco.train.warmup_steps &&
                st.train.weight_decay == moco.train.weight_decay);
        T_CHECK(strstr(st.train.init_from, "0-mae/model.safetensors") != NULL);
        T_CHECK(config_pipeline_stage(&base, 2, &st, name, sizeof name) == 0 &&
                strcmp(name, "eval") == 0);
        printf(
            "deploy/fmnist.ini with pipeline.stages=mae,%s,eval: %ld steps of %d, like mocov3 ok\n",
            stages[k], moco.train.steps, moco.train.batch_size);
    }
    T_CHECK(config_override(&base, "pipeline.byl.train.steps=1") == 0);
    mimic_set_quiet(1);
    T_CHECK(config_pipeline_stage(&base, 0, &st, name, sizeof name) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "byl") != NULL);
    mimic_set_quiet(0);
}

int main(void) {
    test_pipeline_cfg();
    test_losses_fd();
    test_parity();
    test_dump_parity();
    test_warp();
    test_loader_warp();
    test_stage_cfg();
    test_stage_fd("byol");
    test_stage_fd("contrawarp");
    testutil_release_all();
    return testutil_summary("test_byol");
}
