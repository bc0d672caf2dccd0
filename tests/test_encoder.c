// TIMEOUT: 120
/* test_encoder — the ViT encoder (models/encoder.c): finite-difference check of every
 * parameter gradient on whole images and on K chosen patches, PyTorch parity on
 * tests/golden/encoder_tiny.safetensors (features, output and every gradient, normwise
 * relative error <= 1e-4), MAE's registration prefix, and clear errors for bad files. */
#include "common.h"
#include "encoder.h"
#include "mae.h"
#include "safetensors.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4

typedef struct {
    encoder_t e;
    params_t *p;
    encoder_acts_t a;
} model_t;

static int model_new(model_t *m, const mae_cfg_t *cfg, int B, int K) {
    memset(m, 0, sizeof *m);
    m->p = params_new();
    int rc = encoder_register(&m->e, m->p, cfg);
    if (!rc) rc = params_finalize(m->p);
    if (!rc) rc = encoder_acts_alloc(&m->a, &m->e, B, K);
    return rc;
}

static void model_free(model_t *m) {
    encoder_acts_free(&m->a);
    encoder_free(&m->e);
    params_destroy(&m->p);
}

/* loss = sum(R * out) + sum(rc * cls feature) + sum(ra * avg feature) */
typedef struct {
    model_t *m;
    const float *imgs, *R, *rc, *ra;
    const int *ids;
    int ld;
    float *feat;
} ctx_t;

static double loss_fn(void *pc) {
    ctx_t *c = pc;
    const float *out = encoder_forward(&c->m->e, c->m->p, &c->m->a, c->imgs, c->ids, c->ld);
    size_t n = (size_t)c->m->a.B * c->m->a.T * c->m->e.dim, nf = (size_t)c->m->a.B * c->m->e.dim;
    double loss = 0.0;
    for (size_t i = 0; i < n; i++)
        loss += (double)c->R[i] * out[i];
    encoder_features(c->feat, &c->m->a, ENCODER_POOL_CLS);
    for (size_t i = 0; i < nf; i++)
        loss += (double)c->rc[i] * c->feat[i];
    encoder_features(c->feat, &c->m->a, ENCODER_POOL_AVG);
    for (size_t i = 0; i < nf; i++)
        loss += (double)c->ra[i] * c->feat[i];
    return loss;
}

static void backward(ctx_t *c, float *dout) {
    size_t n = (size_t)c->m->a.B * c->m->a.T * c->m->e.dim;
    memcpy(dout, c->R, n * sizeof(float));
    encoder_features_backward(dout, &c->m->a, c->rc, ENCODER_POOL_CLS);
    encoder_features_backward(dout, &c->m->a, c->ra, ENCODER_POOL_AVG);
    encoder_backward(&c->m->e, c->m->p, &c->m->a, dout);
}

static const mae_cfg_t fd_cfg = {.img_size = 8,
                                 .in_chans = 2,
                                 .patch_size = 2,
                                 .embed_dim = 8,
                                 .depth = 2,
                                 .num_heads = 2,
                                 .mlp_ratio = 2};

/* K == 16: whole images (ids NULL); K < 16: the first K of a per-image permutation. */
static void test_fd(int K) {
    int B = 2, L = 16, D = 8;
    model_t m;
    T_CHECK(model_new(&m, &fd_cfg, B, K) == 0);
    T_CHECK(m.e.L == L && m.a.T == 1 + K);
    unsigned long long seed = 11 + (unsigned long long)K;
    testutil_fill(m.p->w, m.p->total, -0.5f, 0.5f, &seed);
    size_t nimg = (size_t)B * 2 * 8 * 8, nout = (size_t)B * (1 + K) * D;
    float *imgs = malloc(nimg * sizeof(float)), *R = malloc(nout * sizeof(float));
    float *rc = malloc((size_t)B * D * sizeof(float)), *ra = malloc((size_t)B * D * sizeof(float));
    float *feat = malloc((size_t)B * D * sizeof(float)), *dout = malloc(nout * sizeof(float));
    int ids[2 * 16];
    for (int s = 0; s < B; s++)
        for (int l = 0; l < L; l++)
            ids[s * L + l] = (l * (s ? 7 : 5) + 3) % L; /* permutations: 5, 7 coprime to 16 */
    testutil_fill(imgs, nimg, -1.0f, 1.0f, &seed);
    testutil_fill(R, nout, -1.0f, 1.0f, &seed);
    testutil_fill(rc, (size_t)B * D, -1.0f, 1.0f, &seed);
    testutil_fill(ra, (size_t)B * D, -1.0f, 1.0f, &seed);
    ctx_t c = {&m, imgs, R, rc, ra, K == L ? NULL : ids, L, feat};
    loss_fn(&c);
    params_zero_grad(m.p);
    backward(&c, dout);
    char name[128];
    for (int i = 0; i < m.p->n; i++) {
        const params_tensor_t *t = &m.p->t[i];
        snprintf(name, sizeof name, "encoder K=%d %s", K, t->name);
        testutil_fd_check_scaled(name, loss_fn, &c, params_w(m.p, i), params_g(m.p, i), t->numel,
                                 16, 1e-2, 3e-2, 5e-2);
    }
    /* backward accumulates: a second pass doubles the gradient */
    float *g1 = malloc(m.p->total * sizeof(float));
    memcpy(g1, m.p->g, m.p->total * sizeof(float));
    loss_fn(&c);
    backward(&c, dout);
    for (size_t i = 0; i < m.p->total; i++)
        g1[i] *= 2;
    snprintf(name, sizeof name, "encoder K=%d backward accumulates", K);
    testutil_close(name, m.p->g, g1, m.p->total, 1e-6);
    if (K == L) {
        /* ids listing every patch in grid order is the whole-image path, bit for bit */
        int ident[2 * 16];
        for (int i = 0; i < B * L; i++)
            ident[i] = i % L;
        float *o1 = malloc(nout * sizeof(float));
        memcpy(o1, encoder_forward(&m.e, m.p, &m.a, imgs, NULL, L), nout * sizeof(float));
        const float *o2 = encoder_forward(&m.e, m.p, &m.a, imgs, ident, L);
        T_CHECK(memcmp(o1, o2, nout * sizeof(float)) == 0);
        free(o1);
    }
    free(g1);
    free(imgs);
    free(R);
    free(rc);
    free(ra);
    free(feat);
    free(dout);
    model_free(&m);
}

static void compare(const char *what, const float *got, const st_file_t *f, const char *name,
                    size_t n, double tol) {
    const st_tensor_t *t = st_find(f, name);
    if (!t || t->dtype != ST_F32 || (size_t)t->numel != n) {
        printf("%-48s missing or shape mismatch FAIL\n", name);
        testutil_failures++;
        return;
    }
    testutil_close(what, got, t->data, n, tol);
}

static void test_parity(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s", testutil_src_path("tests/golden/encoder_tiny.safetensors"));
    st_file_t *f = NULL;
    if (st_open(&f, path)) {
        printf("cannot open %s FAIL\n", path);
        testutil_failures++;
        return;
    }
    T_CHECK(strcmp(st_meta(f, "format"), "mimicps-golden-encoder") == 0);
    T_CHECK(strcmp(st_meta(f, "version"), "1") == 0);
    int B = atoi(st_meta(f, "batch"));
    mae_cfg_t cfg = {0};
    T_CHECK(encoder_cfg_from_file(&cfg, path) == 0);
    T_CHECK(cfg.img_size == 12 && cfg.patch_size == 3 && cfg.embed_dim == 24 &&
            cfg.mlp_ratio == 2.0f);
    model_t m;
    T_CHECK(model_new(&m, &cfg, B,
                      (cfg.img_size / cfg.patch_size) * (cfg.img_size / cfg.patch_size)) == 0);
    T_CHECK(encoder_load(&m.e, m.p, path) == 0);
    int D = m.e.dim, T = m.a.T;
    size_t nimg = (size_t)B * cfg.in_chans * cfg.img_size * cfg.img_size, nout = (size_t)B * T * D;
    float *imgs = malloc(nimg * sizeof(float)), *rc = malloc((size_t)B * D * sizeof(float));
    float *ra = malloc((size_t)B * D * sizeof(float)), *R = calloc(nout, sizeof(float));
    float *feat = malloc((size_t)B * D * sizeof(float)), *dout = malloc(nout * sizeof(float));
    int64_t ishape[4] = {B, cfg.in_chans, cfg.img_size, cfg.img_size}, rshape[2] = {B, D};
    T_CHECK(st_read_f32(f, "images", imgs, ishape, 4) == 0);
    T_CHECK(st_read_f32(f, "r_cls", rc, rshape, 2) == 0);
    T_CHECK(st_read_f32(f, "r_avg", ra, rshape, 2) == 0);
    ctx_t c = {&m, imgs, R, rc, ra, NULL, 0, feat};
    float loss = (float)loss_fn(&c);
    compare("encoder parity loss", &loss, f, "loss", 1, TOL);
    compare("encoder parity out", m.a.out, f, "out", nout, TOL);
    encoder_features(feat, &m.a, ENCODER_POOL_CLS);
    compare("encoder parity feat_cls", feat, f, "feat_cls", (size_t)B * D, TOL);
    encoder_features(feat, &m.a, ENCODER_POOL_AVG);
    compare("encoder parity feat_avg", feat, f, "feat_avg", (size_t)B * D, TOL);
    params_zero_grad(m.p);
    backward(&c, dout);
    char name[PARAMS_NAME_MAX + 16];
    for (int i = 0; i < m.p->n; i++) {
        const params_tensor_t *t = &m.p->t[i];
        snprintf(name, sizeof name, "grad.%s", t->name);
        compare(name, params_g(m.p, i), f, name, t->numel, TOL);
    }
    free(imgs);
    free(rc);
    free(ra);
    free(R);
    free(feat);
    free(dout);
    model_free(&m);
    st_close(&f);
}

/* MAE registers exactly the encoder's tensors first, so an encoder reads a prefix of
 * MAE's flat vector; encoder_init is MAE's encoder init. */
static void test_mae_prefix(void) {
    mae_cfg_t cfg = fd_cfg;
    cfg.decoder_embed_dim = 8;
    cfg.decoder_depth = 1;
    cfg.decoder_num_heads = 2;
    cfg.mask_ratio = 0.75f;
    mae_t *mae = NULL;
    model_t m;
    T_CHECK(mae_new(&mae, &cfg) == 0);
    T_CHECK(model_new(&m, &cfg, 1, 16) == 0);
    T_CHECK(mae->enc.first == 0 && mae->enc.ntensors == m.p->n && m.p->n == 3 + 12 * 2 + 2);
    int same = 1;
    for (int i = 0; i < m.p->n; i++)
        same &= strcmp(mae->p->t[i].name, m.p->t[i].name) == 0 &&
                mae->p->t[i].offset == m.p->t[i].offset && mae->p->t[i].numel == m.p->t[i].numel;
    T_CHECK(same);
    T_CHECK(strcmp(m.p->t[0].name, "cls_token") == 0 &&
            strcmp(m.p->t[m.p->n - 1].name, "norm.bias") == 0);
    rng_t r;
    rng_seed(&r, 5);
    encoder_init(&m.e, m.p, &r);
    T_CHECK(params_w(m.p, m.e.norm_w)[0] == 1.0f && params_w(m.p, m.e.patch_b)[3] == 0.0f);
    T_CHECK(fabsf(params_w(m.p, m.e.cls_token)[0]) < 0.2f && params_w(m.p, m.e.cls_token)[0] != 0);
    model_free(&m);
    mae_destroy(&mae);
}

/* Writes the tensors of src except `drop`, with `bad` (if not NULL) given shape (3). */
static void write_variant(const char *out, const char *src, const char *drop, const char *bad) {
    st_file_t *f = NULL;
    T_CHECK(st_open(&f, src) == 0);
    st_writer_t *w = st_writer_new();
    static const float zeros[64];
    int64_t three = 3;
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor_t *t = st_at(f, i);
        if (drop && strcmp(t->name, drop) == 0) continue;
        if (bad && strcmp(t->name, bad) == 0)
            T_CHECK(st_writer_add(w, t->name, "F32", &three, 1, zeros) == 0);
        else
            T_CHECK(st_writer_add(w, t->name, st_dtype_name(t->dtype), t->shape, t->ndim,
                                  t->data) == 0);
    }
    T_CHECK(st_writer_save(w, out) == 0);
    st_writer_destroy(&w);
    st_close(&f);
}

static void test_bad_files(void) {
    char src[4096], missing[4200], shape[4200], none[4200];
    snprintf(src, sizeof src, "%s", testutil_src_path("tests/golden/encoder_tiny.safetensors"));
    snprintf(missing, sizeof missing, "%s/missing.safetensors", testutil_tmpdir());
    snprintf(shape, sizeof shape, "%s/shape.safetensors", testutil_tmpdir());
    snprintf(none, sizeof none, "%s/none.safetensors", testutil_tmpdir());
    write_variant(missing, src, "blocks.1.mlp.fc1.bias", NULL);
    write_variant(shape, src, NULL, "norm.weight");
    mae_cfg_t cfg = {0};
    T_CHECK(encoder_cfg_from_file(&cfg, src) == 0);
    model_t m;
    T_CHECK(model_new(&m, &cfg, 1, 16) == 0);
    mimic_set_quiet(1);
    T_CHECK(encoder_load(&m.e, m.p, missing) == MIMIC_EFORMAT);
    T_CHECK(strstr(mimic_last_error(), "blocks.1.mlp.fc1.bias") &&
            strstr(mimic_last_error(), missing));
    T_CHECK(encoder_load(&m.e, m.p, shape) == MIMIC_ESHAPE);
    T_CHECK(strstr(mimic_last_error(), "norm.weight") && strstr(mimic_last_error(), shape));
    T_CHECK(encoder_load(&m.e, m.p, none) < 0);
    T_CHECK(strstr(mimic_last_error(), none) != NULL);
    T_CHECK(encoder_cfg_from_file(&cfg, none) < 0);
    /* an encoder of another width does not load: the shape error names the tensor */
    mae_cfg_t wide = cfg;
    wide.embed_dim = 32;
    wide.num_heads = 4;
    model_t w;
    T_CHECK(model_new(&w, &wide, 1, 16) == 0);
    T_CHECK(encoder_load(&w.e, w.p, src) == MIMIC_ESHAPE);
    T_CHECK(strstr(mimic_last_error(), "cls_token") != NULL);
    /* bad [model] keys are named */
    encoder_t e;
    params_t *p = params_new();
    wide.num_heads = 5;
    T_CHECK(encoder_register(&e, p, &wide) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "model.num_heads") != NULL);
    mimic_set_quiet(0);
    params_destroy(&p);
    model_free(&w);
    model_free(&m);
}

int main(void) {
    test_fd(16);
    test_fd(5);
    test_parity();
    test_mae_prefix();
    test_bad_files();
    return testutil_summary("test_encoder");
}
