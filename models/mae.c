#include "mae.h"
#include "maskpolicy.h"

#include "common.h"
#include "layernorm.h"
#include "linear.h"
#include "patch.h"
#include "posemb.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int bad_cfg(const char *key, const char *why) {
    return mimic_err(MIMIC_EINVAL, "config %s: %s", key, why);
}

static int check_cfg(const mae_cfg_t *c) {
    int rc = encoder_check_cfg(c);
    if (rc) return rc;
    if (c->decoder_embed_dim <= 0 || c->decoder_embed_dim % 4)
        return bad_cfg("mae.decoder_embed_dim", "must be a positive multiple of 4");
    if (c->decoder_num_heads <= 0 || c->decoder_embed_dim % c->decoder_num_heads)
        return bad_cfg("mae.decoder_num_heads", "must divide decoder_embed_dim");
    if (c->decoder_depth < 0) return bad_cfg("mae.decoder_depth", "must be >= 0");
    if (!(c->mask_ratio >= 0.0f && c->mask_ratio < 1.0f))
        return bad_cfg("mae.mask_ratio", "must be in [0,1)");
    return 0;
}

static int add(params_t *p, const char *name, int ndim, int64_t a, int64_t b, int64_t c,
               int64_t d) {
    int64_t shape[4] = {a, b, c, d};
    return params_add(p, name, ndim, shape);
}

int mae_new(mae_t **out, const mae_cfg_t *cfg) {
    *out = NULL;
    int rc = check_cfg(cfg);
    if (rc) return rc;
    mae_t *m = calloc(1, sizeof *m);
    if (!m) return mimic_err(MIMIC_ENOMEM, "out of memory for the MAE model");
    m->cfg = *cfg;
    const mae_cfg_t *c = &m->cfg;
    m->grid = c->img_size / c->patch_size;
    m->L = m->grid * m->grid;
    m->keep = (int)((float)m->L * (1.0f - c->mask_ratio)); /* int(L*(1-r)) as the reference */
    if (m->keep < 1) {
        rc = bad_cfg("mae.mask_ratio", "leaves no visible patch");
        goto fail;
    }
    m->cpp = c->in_chans * c->patch_size * c->patch_size;
    int D = c->embed_dim, Dd = c->decoder_embed_dim;
    int ppc = m->cpp;
    m->p = params_new();
    if (!m->p) {
        rc = MIMIC_ENOMEM;
        goto fail;
    }
    params_t *p = m->p;
    if ((rc = encoder_register(&m->enc, p, c))) goto fail;
    m->pos_embed = m->enc.pos_embed;
    rc = MIMIC_EINVAL;
    if ((m->mask_token = add(p, "mask_token", 3, 1, 1, Dd, 0)) < 0) goto fail;
    if ((m->dec_embed_w = add(p, "decoder_embed.weight", 2, Dd, D, 0, 0)) < 0) goto fail;
    if ((m->dec_embed_b = add(p, "decoder_embed.bias", 1, Dd, 0, 0, 0)) < 0) goto fail;
    if (vit_stack_register(&m->dec, p, "decoder_blocks", c->decoder_depth, Dd, c->decoder_num_heads,
                           (int)((float)Dd * c->mlp_ratio)))
        goto fail;
    if ((m->dec_norm_w = add(p, "decoder_norm.weight", 1, Dd, 0, 0, 0)) < 0) goto fail;
    if ((m->dec_norm_b = add(p, "decoder_norm.bias", 1, Dd, 0, 0, 0)) < 0) goto fail;
    if ((m->dec_pred_w = add(p, "decoder_pred.weight", 2, ppc, Dd, 0, 0)) < 0) goto fail;
    if ((m->dec_pred_b = add(p, "decoder_pred.bias", 1, ppc, 0, 0, 0)) < 0) goto fail;
    if ((rc = params_finalize(p))) goto fail;
    m->dec_pos_embed = mimic_alloc((size_t)(1 + m->L) * (size_t)Dd * sizeof(float));
    if (!m->dec_pos_embed) {
        rc = MIMIC_ENOMEM;
        goto fail;
    }
    posemb_sincos_2d(m->dec_pos_embed, Dd, m->grid, 1);
    *out = m;
    return 0;
fail:
    mae_destroy(&m);
    return rc;
}

void mae_destroy(mae_t **mm) {
    if (!mm || !*mm) return;
    mae_t *m = *mm;
    encoder_free(&m->enc);
    vit_stack_free(&m->dec);
    params_destroy(&m->p);
    mimic_free(m->dec_pos_embed);
    free(m);
    *mm = NULL;
}

static void fill(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

void mae_init(mae_t *m, uint64_t seed) {
    rng_t r;
    rng_seed(&r, seed);
    params_t *p = m->p;
    const mae_cfg_t *c = &m->cfg;
    int D = c->embed_dim, Dd = c->decoder_embed_dim;
    /* the draw order (patch projection, cls, mask token, encoder blocks, decoder blocks,
     * decoder linears) is the one every earlier run used: a seed gives the same model */
    encoder_init_embed(&m->enc, p, &r);
    for (int i = 0; i < Dd; i++)
        params_w(p, m->mask_token)[i] = 0.02f * rng_normal(&r);
    encoder_init_blocks(&m->enc, p, &r);
    vit_stack_init(&m->dec, p, &r);
    fill(params_w(p, m->dec_norm_w), (size_t)Dd, 1.0f);
    fill(params_w(p, m->dec_norm_b), (size_t)Dd, 0.0f);
    vit_xavier_uniform(params_w(p, m->dec_embed_w), Dd, D, &r);
    fill(params_w(p, m->dec_embed_b), (size_t)Dd, 0.0f);
    vit_xavier_uniform(params_w(p, m->dec_pred_w), m->cpp, Dd, &r);
    fill(params_w(p, m->dec_pred_b), (size_t)m->cpp, 0.0f);
}

int mae_batch_alloc(mae_batch_t **out, const mae_t *m, int B) {
    *out = NULL;
    if (B <= 0) return mimic_err(MIMIC_EINVAL, "batch size must be positive (got %d)", B);
    mae_batch_t *b = calloc(1, sizeof *b);
    if (!b) return mimic_err(MIMIC_ENOMEM, "out of memory for a batch");
    b->B = b->cap = B;
    size_t D = (size_t)m->cfg.embed_dim, Dd = (size_t)m->cfg.decoder_embed_dim;
    size_t L = (size_t)m->L, K = (size_t)m->keep, P = (size_t)m->cpp, nB = (size_t)B;
    size_t T1 = 1 + K, T2 = 1 + L;
    b->ids_shuffle = calloc(nB * L, sizeof(int));
    b->ids_restore = calloc(nB * L, sizeof(int));
    struct {
        float **dst;
        size_t n;
    } want[] = {
        {&b->mask, nB * L},       {&b->y, nB * T1 * Dd},        {&b->z, nB * T2 * Dd},
        {&b->dn, nB * T2 * Dd},   {&b->dn_mean, nB * T2},       {&b->dn_rstd, nB * T2},
        {&b->pred, nB * T2 * P},  {&b->target, nB * L * P},     {&b->d_pred, nB * T2 * P},
        {&b->d_dn, nB * T2 * Dd}, {&b->d_decout, nB * T2 * Dd}, {&b->d_z, nB * T2 * Dd},
        {&b->d_y, nB * T1 * Dd},  {&b->d_lat, nB * T1 * D},
    };
    int rc = MIMIC_ENOMEM;
    if (!b->ids_shuffle || !b->ids_restore) goto fail;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!(*want[i].dst = mimic_alloc(want[i].n * sizeof(float)))) goto fail;
    if ((rc = encoder_acts_alloc(&b->enc, &m->enc, B, (int)K))) goto fail;
    if ((rc = vit_acts_alloc(&b->dec, &m->dec, B, (int)T2))) goto fail;
    *out = b;
    return 0;
fail:
    mae_batch_free(&b);
    return rc;
}

void mae_batch_free(mae_batch_t **bb) {
    if (!bb || !*bb) return;
    mae_batch_t *b = *bb;
    encoder_acts_free(&b->enc);
    vit_acts_free(&b->dec);
    free(b->ids_shuffle);
    free(b->ids_restore);
    float *all[] = {b->mask,   b->y,      b->z,    b->dn,       b->dn_mean, b->dn_rstd, b->pred,
                    b->target, b->d_pred, b->d_dn, b->d_decout, b->d_z,     b->d_y,     b->d_lat};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        mimic_free(all[i]);
    free(b);
    *bb = NULL;
}

void mae_batch_resize(mae_batch_t *b, int n) {
    MIMIC_CHECK(n > 0 && n <= b->cap);
    b->B = b->dec.B = n;
    encoder_acts_resize(&b->enc, n);
}

/* The loss on the removed patches: target = the image's patches in (i,j,c) order
 * (patchify), normalised per patch with norm_pix_loss; mean squared error per patch,
 * averaged over the removed ones. */
static double mae_loss(const mae_t *m, mae_batch_t *b, const float *imgs) {
    const mae_cfg_t *c = &m->cfg;
    int B = b->B, L = m->L, ppc = m->cpp, T2 = 1 + L;
    patch_patchify(b->target, imgs, B, c->in_chans, c->img_size, c->img_size, c->patch_size);
    double loss = 0.0, msum = 0.0;
    for (int s = 0; s < B; s++) {
        for (int l = 0; l < L; l++) {
            float *t = b->target + ((size_t)s * L + l) * ppc;
            if (c->norm_pix_loss) {
                double mean = 0.0, var = 0.0;
                for (int k = 0; k < ppc; k++)
                    mean += t[k];
                mean /= ppc;
                for (int k = 0; k < ppc; k++)
                    var += (t[k] - mean) * (t[k] - mean);
                var /= (ppc > 1 ? ppc - 1 : 1); /* unbiased, as torch.var */
                double inv = 1.0 / sqrt(var + 1e-6);
                for (int k = 0; k < ppc; k++)
                    t[k] = (float)((t[k] - mean) * inv);
            }
            float mk = b->mask[(size_t)s * L + l];
            if (mk == 0.0f) continue;
            const float *pr_row = b->pred + ((size_t)s * T2 + 1 + l) * ppc;
            double e = 0.0;
            for (int k = 0; k < ppc; k++)
                e += (double)(pr_row[k] - t[k]) * (pr_row[k] - t[k]);
            loss += mk * e / ppc;
            msum += mk;
        }
    }
    b->mask_sum = msum;
    return msum > 0 ? loss / msum : 0.0;
}

double mae_forward(const mae_t *m, mae_batch_t *b, const float *imgs, const float *noise) {
    const mae_cfg_t *c = &m->cfg;
    const params_t *p = m->p;
    int B = b->B, L = m->L, K = m->keep, D = c->embed_dim, Dd = c->decoder_embed_dim;
    int ppc = m->cpp, T1 = 1 + K, T2 = 1 + L;

    /* per-sample masking: keep the K patches with the smallest noise */
    for (int s = 0; s < B; s++) {
        int *shuf = b->ids_shuffle + (size_t)s * L, *rest = b->ids_restore + (size_t)s * L;
        maskpolicy_argsort(shuf, noise + (size_t)s * L, 1, L);
        for (int j = 0; j < L; j++)
            rest[shuf[j]] = j;
        for (int l = 0; l < L; l++)
            b->mask[(size_t)s * L + l] = rest[l] < K ? 0.0f : 1.0f;
    }
    /* the encoder sees the visible patches only (the first K of each shuffle): the
     * masked ones never reach it */
    b->latent = encoder_forward(&m->enc, p, &b->enc, imgs, b->ids_shuffle, L);

    /* decoder: embed, put mask tokens at removed positions, unshuffle, add positions */
    linear_forward(b->y, b->latent, params_w(p, m->dec_embed_w), params_w(p, m->dec_embed_b),
                   B * T1, D, Dd);
    const float *mtok = params_w(p, m->mask_token);
    /* samples write disjoint rows: split over the threads */
#pragma omp parallel for schedule(static) if ((size_t)B * T2 * Dd >= 65536)
    for (int s = 0; s < B; s++) {
        const float *ys = b->y + (size_t)s * T1 * Dd;
        float *zs = b->z + (size_t)s * T2 * Dd;
        for (int t = 0; t < T2; t++) {
            const float *src = ys; /* cls row */
            if (t > 0) {
                int r = b->ids_restore[(size_t)s * L + (t - 1)];
                src = r < K ? ys + (size_t)(1 + r) * Dd : mtok;
            }
            const float *pe = m->dec_pos_embed + (size_t)t * Dd;
            float *dst = zs + (size_t)t * Dd;
            for (int d = 0; d < Dd; d++)
                dst[d] = src[d] + pe[d];
        }
    }
    b->dec_out = vit_stack_forward(&m->dec, p, &b->dec, b->z);
    layernorm_forward(b->dn, b->dn_mean, b->dn_rstd, b->dec_out, params_w(p, m->dec_norm_w),
                      params_w(p, m->dec_norm_b), B * T2, Dd, m->dec.eps);
    linear_forward(b->pred, b->dn, params_w(p, m->dec_pred_w), params_w(p, m->dec_pred_b), B * T2,
                   Dd, ppc);

    return mae_loss(m, b, imgs);
}

void mae_patch_loss(const mae_t *m, const mae_batch_t *b, float *out) {
    int L = m->L, ppc = m->cpp, T2 = 1 + L;
    for (int s = 0; s < b->B; s++)
        for (int l = 0; l < L; l++) {
            const float *pr = b->pred + ((size_t)s * T2 + 1 + l) * ppc;
            const float *t = b->target + ((size_t)s * L + l) * ppc;
            double e = 0.0;
            for (int k = 0; k < ppc; k++)
                e += (double)(pr[k] - t[k]) * (pr[k] - t[k]);
            out[(size_t)s * L + l] = (float)(e / ppc);
        }
}

void mae_backward(mae_t *m, mae_batch_t *b) {
    const mae_cfg_t *c = &m->cfg;
    params_t *p = m->p;
    int B = b->B, L = m->L, K = m->keep, D = c->embed_dim, Dd = c->decoder_embed_dim;
    int ppc = m->cpp, T1 = 1 + K, T2 = 1 + L;

    /* d loss / d pred, only at removed patches */
    mimic_zero(b->d_pred, (size_t)B * T2 * ppc);
    float scale = b->mask_sum > 0 ? (float)(2.0 / ((double)ppc * b->mask_sum)) : 0.0f;
    for (int s = 0; s < B; s++)
        for (int l = 0; l < L; l++) {
            float mk = b->mask[(size_t)s * L + l];
            if (mk == 0.0f) continue;
            size_t row = (size_t)s * T2 + 1 + l;
            const float *pr = b->pred + row * ppc, *t = b->target + ((size_t)s * L + l) * ppc;
            float *dp = b->d_pred + row * ppc;
            for (int k = 0; k < ppc; k++)
                dp[k] = mk * scale * (pr[k] - t[k]);
        }
    mimic_zero(b->d_dn, (size_t)B * T2 * Dd);
    linear_backward(b->d_dn, params_g(p, m->dec_pred_w), params_g(p, m->dec_pred_b), b->d_pred,
                    b->dn, params_w(p, m->dec_pred_w), B * T2, Dd, ppc);
    mimic_zero(b->d_decout, (size_t)B * T2 * Dd);
    layernorm_backward(b->d_decout, params_g(p, m->dec_norm_w), params_g(p, m->dec_norm_b), b->d_dn,
                       b->dec_out, params_w(p, m->dec_norm_w), b->dn_mean, b->dn_rstd, B * T2, Dd);
    mimic_zero(b->d_z, (size_t)B * T2 * Dd);
    vit_stack_backward(&m->dec, p, &b->dec, b->d_z, b->z, b->d_decout);

    /* route the decoder-input gradient back to visible tokens and the mask token */
    float *gmask = params_g(p, m->mask_token);
    for (int s = 0; s < B; s++) {
        const float *dz = b->d_z + (size_t)s * T2 * Dd;
        float *dy = b->d_y + (size_t)s * T1 * Dd;
        memcpy(dy, dz, (size_t)Dd * sizeof(float));
        for (int l = 0; l < L; l++) {
            int r = b->ids_restore[(size_t)s * L + l];
            const float *src = dz + (size_t)(1 + l) * Dd;
            float *dst = r < K ? dy + (size_t)(1 + r) * Dd : gmask;
            if (r < K)
                memcpy(dst, src, (size_t)Dd * sizeof(float));
            else
                for (int d = 0; d < Dd; d++)
                    dst[d] += src[d];
        }
    }
    mimic_zero(b->d_lat, (size_t)B * T1 * D);
    linear_backward(b->d_lat, params_g(p, m->dec_embed_w), params_g(p, m->dec_embed_b), b->d_y,
                    b->latent, params_w(p, m->dec_embed_w), B * T1, D, Dd);
    encoder_backward(&m->enc, p, &b->enc, b->d_lat);
}

void mae_pred(const mae_t *m, const mae_batch_t *b, float *out) {
    int L = m->L, ppc = m->cpp, T2 = 1 + L;
    for (int s = 0; s < b->B; s++)
        memcpy(out + (size_t)s * L * ppc, b->pred + ((size_t)s * T2 + 1) * ppc,
               (size_t)L * ppc * sizeof(float));
}

static double stack_flops(const vit_stack_t *s, int T) {
    double C = s->dim, H = s->hidden, t = T;
    double per = 2 * t * C * 3 * C + 2 * t * C * C + 2 * 2 * t * C * H + 2 * 2 * t * t * C;
    return per * s->depth;
}

double mae_train_flops_per_image(const mae_t *m) {
    double D = m->cfg.embed_dim, Dd = m->cfg.decoder_embed_dim, K = m->keep, L = m->L;
    double fwd = encoder_forward_flops(&m->enc, m->keep) /* patch embedding + encoder */
                 + 2 * (1 + K) * D * Dd                  /* decoder embed */
                 + stack_flops(&m->dec, 1 + m->L)        /* decoder */
                 + 2 * (1 + L) * Dd * m->cpp;            /* prediction head */
    return 3.0 * fwd;
}
