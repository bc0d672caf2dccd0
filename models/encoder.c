#include "encoder.h"

#include "common.h"
#include "layernorm.h"
#include "patch.h"
#include "posemb.h"
#include "safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int bad_cfg(const char *key, const char *why) {
    return mimic_err(MIMIC_EINVAL, "config %s: %s", key, why);
}

int encoder_check_cfg(const mae_cfg_t *c) {
    if (c->patch_size <= 0) return bad_cfg("model.patch_size", "must be positive");
    if (c->img_size <= 0 || c->img_size % c->patch_size)
        return bad_cfg("model.img_size", "must be a positive multiple of patch_size");
    if (c->in_chans <= 0 || c->in_chans > 4) return bad_cfg("model.in_chans", "must be 1..4");
    if (c->embed_dim <= 0 || c->embed_dim % 4)
        return bad_cfg("model.embed_dim", "must be a positive multiple of 4");
    if (c->num_heads <= 0 || c->embed_dim % c->num_heads)
        return bad_cfg("model.num_heads", "must divide embed_dim");
    if (c->depth < 1) return bad_cfg("model.depth", "must be >= 1");
    if (!(c->mlp_ratio > 0) || c->mlp_ratio > 64) return bad_cfg("model.mlp_ratio", "out of range");
    return 0;
}

static int add(params_t *p, const char *name, int ndim, int64_t a, int64_t b, int64_t c,
               int64_t d) {
    int64_t shape[4] = {a, b, c, d};
    return params_add(p, name, ndim, shape);
}

int encoder_register(encoder_t *e, params_t *p, const mae_cfg_t *c) {
    memset(e, 0, sizeof *e);
    int rc = encoder_check_cfg(c);
    if (rc) return rc;
    e->img_size = c->img_size;
    e->in_chans = c->in_chans;
    e->patch_size = c->patch_size;
    e->dim = c->embed_dim;
    e->depth = c->depth;
    e->heads = c->num_heads;
    e->hidden = (int)((float)c->embed_dim * c->mlp_ratio);
    e->grid = c->img_size / c->patch_size;
    e->L = e->grid * e->grid;
    e->cpp = c->in_chans * c->patch_size * c->patch_size;
    int D = e->dim, P = e->patch_size;
    e->first = p->n;
    rc = MIMIC_EINVAL;
    if ((e->cls_token = add(p, "cls_token", 3, 1, 1, D, 0)) < 0) goto fail;
    if ((e->patch_w = add(p, "patch_embed.proj.weight", 4, D, e->in_chans, P, P)) < 0) goto fail;
    if ((e->patch_b = add(p, "patch_embed.proj.bias", 1, D, 0, 0, 0)) < 0) goto fail;
    if (vit_stack_register(&e->blocks, p, "blocks", e->depth, D, e->heads, e->hidden)) goto fail;
    if ((e->norm_w = add(p, "norm.weight", 1, D, 0, 0, 0)) < 0) goto fail;
    if ((e->norm_b = add(p, "norm.bias", 1, D, 0, 0, 0)) < 0) goto fail;
    e->ntensors = p->n - e->first;
    e->pos_embed = mimic_alloc((size_t)(1 + e->L) * (size_t)D * sizeof(float));
    if (!e->pos_embed) {
        rc = MIMIC_ENOMEM;
        goto fail;
    }
    posemb_sincos_2d(e->pos_embed, D, e->grid, 1);
    return 0;
fail:
    encoder_free(e);
    return rc;
}

void encoder_free(encoder_t *e) {
    vit_stack_free(&e->blocks);
    mimic_free(e->pos_embed);
    e->pos_embed = NULL;
}

static void fill(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

void encoder_init_embed(const encoder_t *e, params_t *p, rng_t *rng) {
    vit_xavier_uniform(params_w(p, e->patch_w), e->dim, e->cpp, rng);
    fill(params_w(p, e->patch_b), (size_t)e->dim, 0.0f);
    for (int i = 0; i < e->dim; i++)
        params_w(p, e->cls_token)[i] = 0.02f * rng_normal(rng);
}

void encoder_init_blocks(const encoder_t *e, params_t *p, rng_t *rng) {
    vit_stack_init(&e->blocks, p, rng);
    fill(params_w(p, e->norm_w), (size_t)e->dim, 1.0f);
    fill(params_w(p, e->norm_b), (size_t)e->dim, 0.0f);
}

void encoder_init(const encoder_t *e, params_t *p, rng_t *rng) {
    encoder_init_embed(e, p, rng);
    encoder_init_blocks(e, p, rng);
}

int encoder_acts_alloc(encoder_acts_t *a, const encoder_t *e, int B, int K) {
    memset(a, 0, sizeof *a);
    if (B <= 0 || K <= 0 || K > e->L)
        return mimic_err(MIMIC_EINVAL, "encoder: bad batch shape (%d images of %d patches, L %d)",
                         B, K, e->L);
    a->B = a->cap = B;
    a->K = K;
    a->T = 1 + K;
    size_t nB = (size_t)B, D = (size_t)e->dim, nK = (size_t)K, T = (size_t)a->T;
    struct {
        float **dst;
        size_t n;
    } want[] = {
        {&a->cols, nB * nK * (size_t)e->cpp},
        {&a->xp, nB * nK * D},
        {&a->x0, nB * T * D},
        {&a->out, nB * T * D},
        {&a->mean, nB * T},
        {&a->rstd, nB * T},
        {&a->d_stack, nB * T * D},
        {&a->d_x0, nB * T * D},
        {&a->d_xp, nB * nK * D},
    };
    int rc = MIMIC_ENOMEM;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!(*want[i].dst = mimic_alloc(want[i].n * sizeof(float)))) goto fail;
    if ((rc = vit_acts_alloc(&a->vit, &e->blocks, B, a->T))) goto fail;
    return 0;
fail:
    encoder_acts_free(a);
    return rc;
}

void encoder_acts_free(encoder_acts_t *a) {
    vit_acts_free(&a->vit);
    float **all[] = {&a->cols, &a->xp,      &a->x0,   &a->out, &a->mean,
                     &a->rstd, &a->d_stack, &a->d_x0, &a->d_xp};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        mimic_free(*all[i]);
        *all[i] = NULL;
    }
    a->stack_out = NULL;
}

void encoder_acts_resize(encoder_acts_t *a, int n) {
    MIMIC_CHECK(n > 0 && n <= a->cap);
    a->B = a->vit.B = n;
}

const float *encoder_forward(const encoder_t *e, const params_t *p, encoder_acts_t *a,
                             const float *imgs, const int *ids, int ld) {
    int B = a->B, K = a->K, T = a->T, D = e->dim;
    MIMIC_CHECK(ids ? ld >= K : K == e->L);
    patch_embed_forward(a->xp, a->cols, imgs, params_w(p, e->patch_w), params_w(p, e->patch_b), B,
                        e->in_chans, e->img_size, e->img_size, e->patch_size, D, ids, K, ld);
    /* the cls token gets pos_embed row 0 (zeros for sin-cos, kept for a learned table);
     * patch l gets row 1 + l, wherever it sits among the K embedded */
    const float *cls = params_w(p, e->cls_token);
    for (int s = 0; s < B; s++) {
        float *row = a->x0 + (size_t)s * T * D;
        for (int d = 0; d < D; d++)
            row[d] = cls[d] + e->pos_embed[d];
        for (int j = 0; j < K; j++) {
            int l = ids ? ids[(size_t)s * ld + j] : j;
            const float *pe = e->pos_embed + (size_t)(1 + l) * D;
            const float *xv = a->xp + ((size_t)s * K + j) * D;
            float *dst = row + (size_t)(1 + j) * D;
            for (int d = 0; d < D; d++)
                dst[d] = xv[d] + pe[d];
        }
    }
    a->stack_out = vit_stack_forward(&e->blocks, p, &a->vit, a->x0);
    layernorm_forward(a->out, a->mean, a->rstd, a->stack_out, params_w(p, e->norm_w),
                      params_w(p, e->norm_b), B * T, D, e->blocks.eps);
    return a->out;
}

void encoder_backward(const encoder_t *e, params_t *p, encoder_acts_t *a, const float *dout) {
    int B = a->B, K = a->K, T = a->T, D = e->dim;
    mimic_zero(a->d_stack, (size_t)B * T * D);
    layernorm_backward(a->d_stack, params_g(p, e->norm_w), params_g(p, e->norm_b), dout,
                       a->stack_out, params_w(p, e->norm_w), a->mean, a->rstd, B * T, D);
    mimic_zero(a->d_x0, (size_t)B * T * D);
    vit_stack_backward(&e->blocks, p, &a->vit, a->d_x0, a->x0, a->d_stack);
    /* pos_embed is fixed: the token gradient goes to the cls token and the patches */
    float *gcls = params_g(p, e->cls_token);
    for (int s = 0; s < B; s++) {
        const float *dx = a->d_x0 + (size_t)s * T * D;
        for (int d = 0; d < D; d++)
            gcls[d] += dx[d];
        memcpy(a->d_xp + (size_t)s * K * D, dx + D, (size_t)K * D * sizeof(float));
    }
    patch_embed_backward(params_g(p, e->patch_w), params_g(p, e->patch_b), a->d_xp, a->cols, B, K,
                         e->in_chans, e->patch_size, D);
}

void encoder_features(float *feat, const encoder_acts_t *a, encoder_pool_t pool) {
    int T = a->T, K = a->K, D = a->vit.dim;
    for (int s = 0; s < a->B; s++) {
        const float *o = a->out + (size_t)s * T * D;
        float *f = feat + (size_t)s * D;
        if (pool == ENCODER_POOL_CLS) {
            memcpy(f, o, (size_t)D * sizeof(float));
            continue;
        }
        for (int d = 0; d < D; d++) {
            double acc = 0.0;
            for (int j = 1; j <= K; j++)
                acc += o[(size_t)j * D + d];
            f[d] = (float)(acc / K);
        }
    }
}

void encoder_features_backward(float *dout, const encoder_acts_t *a, const float *dfeat,
                               encoder_pool_t pool) {
    int T = a->T, K = a->K, D = a->vit.dim;
    for (int s = 0; s < a->B; s++) {
        float *g = dout + (size_t)s * T * D;
        const float *df = dfeat + (size_t)s * D;
        if (pool == ENCODER_POOL_CLS) {
            for (int d = 0; d < D; d++)
                g[d] += df[d];
            continue;
        }
        float inv = 1.0f / (float)K;
        for (int j = 1; j <= K; j++)
            for (int d = 0; d < D; d++)
                g[(size_t)j * D + d] += df[d] * inv;
    }
}

double encoder_forward_flops(const encoder_t *e, int K) {
    double C = e->dim, H = e->hidden, t = 1 + K;
    double block = 2 * t * C * 3 * C + 2 * t * C * C + 2 * 2 * t * C * H + 2 * 2 * t * t * C;
    return 2.0 * K * e->cpp * C + block * e->depth;
}

/* ---- files ---- */

int encoder_cfg_from_file(mae_cfg_t *cfg, const char *path) {
    st_file_t *f = NULL;
    int rc = st_open(&f, path);
    if (rc) return rc;
    struct {
        const char *key;
        int *i;
        float *f;
    } keys[] = {{"img_size", &cfg->img_size, NULL},     {"in_chans", &cfg->in_chans, NULL},
                {"patch_size", &cfg->patch_size, NULL}, {"embed_dim", &cfg->embed_dim, NULL},
                {"depth", &cfg->depth, NULL},           {"num_heads", &cfg->num_heads, NULL},
                {"mlp_ratio", NULL, &cfg->mlp_ratio}};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const char *s = st_meta(f, keys[k].key);
        if (!s) continue;
        char *end;
        double v = strtod(s, &end);
        if (end == s || *end || (keys[k].i && (v != (int)v || v < 0))) {
            rc = mimic_err(MIMIC_EFORMAT, "%s: metadata '%s' = '%s' is not a valid value", path,
                           keys[k].key, s);
            break;
        }
        if (keys[k].i)
            *keys[k].i = (int)v;
        else
            *keys[k].f = (float)v;
    }
    st_close(&f);
    return rc;
}

int encoder_load(encoder_t *e, params_t *p, const char *path) {
    st_file_t *f = NULL;
    int rc = st_open(&f, path);
    if (rc) return rc;
    for (int i = e->first; i < e->first + e->ntensors; i++) {
        const params_tensor_t *t = &p->t[i];
        if ((rc = st_read_f32(f, t->name, p->w + t->offset, t->shape, t->ndim))) goto out;
    }
    if (st_find(f, "pos_embed")) {
        int64_t shape[3] = {1, 1 + e->L, e->dim};
        rc = st_read_f32(f, "pos_embed", e->pos_embed, shape, 3);
    }
out:
    st_close(&f);
    return rc;
}
