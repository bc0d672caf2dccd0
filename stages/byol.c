/* The BYOL stage (Grill et al. 2020) and ContraWarping (Xue et al. 2023) on top of it
 * (METHODS.md; docs/objectives.md).
 *
 * BYOL: two globally augmented views of each image; the online network
 * p = predictor(projector(encoder(x))) regresses the target network's projection
 * z = projector_t(encoder_t(x')) of the other view:
 *   L = mean_i [2 - 2 cos(p1_i, sg(z2_i))] + mean_i [2 - 2 cos(p2_i, sg(z1_i))].
 * The target network is the servers' momentum (EMA) copy of the whole flat vector
 * (STAGE_READ_EMA, exactly as MoCo v3): its schedule is MoCo v3's cosine one, which is
 * BYOL's tau_t = 1 - (1 - tau_base)(cos(pi t / T) + 1) / 2 with tau_base =
 * contrastive.momentum and contrastive.momentum_cosine = 1. Its predictor is never run.
 *
 * ContraWarping (train.stage=contrawarp): the loader adds two more views per sample,
 * local warps of views 1 and 2 (loader_set_warp; data/warp.h); the target network also
 * projects those, and each direction's loss gains w_neg x a two-way InfoNCE term
 * (byol_warpneg_*) whose positive is the target of the other view and whose negative is
 * the target of that view's warp. (ours, docs/objectives.md)
 *
 * Heads (METHODS.md): projector Linear(D -> mlp_dim), BN, ReLU, Linear(-> dim);
 * predictor Linear(dim -> mlp_dim), BN, ReLU, Linear(-> dim) (contrastive.mlp_dim,
 * contrastive.dim). (ours) Only the predictor's last Linear has a bias: the reference's
 * other biases have an exactly zero gradient here (one before each BN; the projector's
 * last one, whose shift the predictor's BN removes), see head_spec_byol. Parameters:
 * the encoder with timm names (a prefix, so export and evaluation read it by name),
 * then projector.{0,1,3}.* and predictor.{0,1,3}.* (torch Sequential indices). BN
 * statistics are per worker and per view (each view's batch is normalised alone, the
 * target's warped views too), as MoCo v3 here; contrastive.bn_groups reproduces G
 * workers in the standalone trainer. (ours) */
#include "byol.h"
#include "common.h"
#include "encoder.h"
#include "head.h"
#include "l2norm.h"
#include "stage.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { GLOBAL = 2, MAX_VIEWS = 4, HEAD_LAYERS = 2 };

/* One network: encoder + projector + predictor in one table. */
typedef struct {
    params_t *p;
    encoder_t enc;
    head_t proj, pred;
    encoder_acts_t ea;
    head_acts_t proj_a[MAX_VIEWS], pred_a[GLOBAL];
} net_t;

typedef struct {
    int B, D, dim, V, W, groups, n;
    int contrawarp;
    float w_neg, tau;
    net_t on, tg; /* online; target (its w is stage_t.ema) */
    size_t img;   /* floats per image */
    float *gimgs; /* (2B, C,S,S) the online network's images when warped views exist */
    float *ofeat, *ofv[GLOBAL];              /* online features (2B, D) and per view (B, D) */
    float *tfeat, *tfv[MAX_VIEWS];           /* target features (VB, D) and per view */
    float *pn[GLOBAL], *pnorm[GLOBAL];       /* normalised predictions (B, dim), norms (B) */
    float *zn[MAX_VIEWS], *znorm[MAX_VIEWS]; /* normalised target projections */
    float *q[GLOBAL];                        /* (B) the negatives' softmax weights */
    float *dpn[GLOBAL], *dp[GLOBAL], *dz[GLOBAL], *dfv[GLOBAL], *dfeat, *dout;
    float *mem;
} byol_t;

/* views: images per sample the network's encoder runs on; online: the predictor runs
 * too (the target's never does). */
static int net_build(net_t *nt, const mimic_cfg_t *cfg, int B, int views, int online) {
    head_layer_t pl[HEAD_LAYERS], ql[HEAD_LAYERS];
    const int D = cfg->model.embed_dim, dim = cfg->contrastive.dim, G = cfg->contrastive.bn_groups;
    int rc;
    /* (ours) the projector's output has no bias: the predictor's BN removes any shift of
     * it, so the online gradient of such a bias is exactly 0 (rounding noise in float32,
     * which Adam would turn into lr-sized random steps) */
    head_spec_byol(pl, cfg->contrastive.mlp_dim, dim, 0);
    head_spec_byol(ql, cfg->contrastive.mlp_dim, dim, 1);
    if (!(nt->p = params_new())) return mimic_err(MIMIC_ENOMEM, "out of memory for BYOL");
    if ((rc = encoder_register(&nt->enc, nt->p, &cfg->model)) < 0 ||
        (rc = head_register(&nt->proj, nt->p, "projector", D, pl, HEAD_LAYERS)) < 0 ||
        (rc = head_register(&nt->pred, nt->p, "predictor", dim, ql, HEAD_LAYERS)) < 0 ||
        (rc = params_finalize(nt->p)) < 0)
        return rc;
    if (B == 0) return 0; /* parameters only */
    if ((rc = encoder_acts_alloc(&nt->ea, &nt->enc, views * B, nt->enc.L)) < 0) return rc;
    for (int v = 0; v < views; v++)
        if ((rc = head_acts_alloc_groups(&nt->proj_a[v], &nt->proj, B, G)) < 0) return rc;
    for (int v = 0; v < GLOBAL && online; v++)
        if ((rc = head_acts_alloc_groups(&nt->pred_a[v], &nt->pred, B, G)) < 0) return rc;
    return 0;
}

static void net_free(net_t *nt) {
    for (int v = 0; v < MAX_VIEWS; v++)
        head_acts_free(&nt->proj_a[v]);
    for (int v = 0; v < GLOBAL; v++)
        head_acts_free(&nt->pred_a[v]);
    encoder_acts_free(&nt->ea);
    head_free(&nt->proj);
    head_free(&nt->pred);
    encoder_free(&nt->enc);
    params_destroy(&nt->p);
}

/* Carves every per-step buffer out of one allocation. */
static int byol_buffers(byol_t *b) {
    size_t B = (size_t)b->B, D = (size_t)b->D, k = (size_t)b->dim, V = (size_t)b->V;
    size_t T = 1 + (size_t)b->on.enc.L;
    size_t gimg = b->W > 0 ? GLOBAL * B * b->img : 0;
    size_t total = gimg + GLOBAL * B * D + V * B * D + GLOBAL * B * D + GLOBAL * B * T * D;
    /* per global view: ofv, dfv (B D), pn, dpn, dp, dz (B dim), pnorm, q (B); per view:
     * tfv (B D), zn (B dim), znorm (B) */
    total += GLOBAL * (2 * B * D + 4 * B * k + 2 * B) + V * (B * D + B * k + B);
    if (!(b->mem = mimic_alloc(total * sizeof(float))))
        return mimic_err(MIMIC_ENOMEM, "out of memory for BYOL's buffers");
    float *m = b->mem;
#define TAKE(ptr, n)                                                                               \
    do {                                                                                           \
        (ptr) = m;                                                                                 \
        m += (n);                                                                                  \
    } while (0)
    if (gimg) TAKE(b->gimgs, gimg);
    TAKE(b->ofeat, GLOBAL * B * D);
    TAKE(b->tfeat, V * B * D);
    TAKE(b->dfeat, GLOBAL * B * D);
    TAKE(b->dout, GLOBAL * B * T * D);
    for (int v = 0; v < GLOBAL; v++) {
        TAKE(b->ofv[v], B * D);
        TAKE(b->pn[v], B * k);
        TAKE(b->dpn[v], B * k);
        TAKE(b->pnorm[v], B);
        TAKE(b->q[v], B);
        TAKE(b->dp[v], B * k);
        TAKE(b->dz[v], B * k);
        TAKE(b->dfv[v], B * D);
    }
    for (size_t v = 0; v < V; v++) {
        TAKE(b->tfv[v], B * D);
        TAKE(b->zn[v], B * k);
        TAKE(b->znorm[v], B);
    }
#undef TAKE
    return 0;
}

static int byol_create_kind(stage_t *s, const mimic_cfg_t *cfg, int batch, int contrawarp) {
    byol_t *b = calloc(1, sizeof *b);
    if (!b) return mimic_err(MIMIC_ENOMEM, "out of memory for BYOL");
    s->impl = b;
    const char *name = contrawarp ? "ContraWarping" : "BYOL";
    if (batch == 1)
        return mimic_err(MIMIC_EINVAL,
                         "config train.batch_size: %s needs at least 2 "
                         "(BatchNorm in its heads)",
                         name);
    if (cfg->contrastive.dim <= 0 || cfg->contrastive.mlp_dim <= 0)
        return mimic_err(MIMIC_EINVAL, "config contrastive.dim and mlp_dim must be positive");
    if (contrawarp && !(cfg->contrawarp.w_neg >= 0.0f && cfg->contrawarp.w_neg < 1e6f))
        return mimic_err(MIMIC_EINVAL, "config contrawarp.w_neg: %g (need >= 0)",
                         (double)cfg->contrawarp.w_neg);
    if (contrawarp && !(cfg->contrawarp.tau > 0.0f && cfg->contrawarp.tau < 1e6f))
        return mimic_err(MIMIC_EINVAL, "config contrawarp.tau: %g (need > 0)",
                         (double)cfg->contrawarp.tau);
    const int G = cfg->contrastive.bn_groups;
    if (G < 1 || (batch > 0 && (batch % G || batch / G < 2)))
        return mimic_err(MIMIC_EINVAL,
                         "config contrastive.bn_groups = %d: train.batch_size %d must split into "
                         "that many groups of at least 2 samples (BatchNorm in the heads)",
                         G, batch);
    b->contrawarp = contrawarp;
    b->w_neg = cfg->contrawarp.w_neg;
    b->tau = cfg->contrawarp.tau;
    b->B = batch;
    b->D = cfg->model.embed_dim;
    b->dim = cfg->contrastive.dim;
    b->W = contrawarp ? GLOBAL : 0;
    b->V = GLOBAL + b->W;
    b->groups = G;
    b->img = (size_t)cfg->model.in_chans * cfg->model.img_size * cfg->model.img_size;
    int rc;
    if ((rc = net_build(&b->on, cfg, batch, GLOBAL, 1)) ||
        (rc = net_build(&b->tg, cfg, batch, b->V, 0)) || (batch > 0 && (rc = byol_buffers(b))))
        return rc;
    s->p = b->on.p;
    s->ema = b->tg.p->w;
    s->views = b->V;
    s->warp_views = b->W;
    double enc = encoder_forward_flops(&b->on.enc, b->on.enc.L), proj = head_flops(&b->on.proj),
           pred = head_flops(&b->on.pred);
    /* per sample: online forward + backward (3x) of both global views, target forward of
     * every view */
    s->flops_per_image = GLOBAL * 3.0 * (enc + proj + pred) + b->V * (enc + proj);
    return 0;
}

static int byol_create(stage_t *s, const mimic_cfg_t *cfg, int batch) {
    return byol_create_kind(s, cfg, batch, 0);
}

static int contrawarp_create(stage_t *s, const mimic_cfg_t *cfg, int batch) {
    return byol_create_kind(s, cfg, batch, 1);
}

static void byol_destroy(stage_t *s) {
    byol_t *b = s->impl;
    if (!b) return;
    net_free(&b->on);
    net_free(&b->tg);
    mimic_free(b->mem);
    free(b);
    s->impl = NULL;
}

static void byol_init(stage_t *s, uint64_t seed) {
    byol_t *b = s->impl;
    rng_t r;
    rng_seed(&r, seed);
    encoder_init(&b->on.enc, b->on.p, &r);
    head_init(&b->on.proj, b->on.p, &r);
    head_init(&b->on.pred, b->on.p, &r);
    memcpy(s->ema, s->p->w, s->p->total * sizeof(float)); /* the target starts equal */
}

/* (V n, D) rows of V views interleaved (sample i: rows V i ..) <-> per view (n, D). */
static void split_views(float *const *out, const float *in, int n, int V, int D) {
    for (int i = 0; i < n; i++)
        for (int v = 0; v < V; v++)
            memcpy(out[v] + (size_t)i * D, in + ((size_t)i * V + v) * D, (size_t)D * sizeof(float));
}

static void join_views(float *out, float *const *in, int n, int V, int D) {
    for (int i = 0; i < n; i++)
        for (int v = 0; v < V; v++)
            memcpy(out + ((size_t)i * V + v) * D, in[v] + (size_t)i * D, (size_t)D * sizeof(float));
}

/* CLS features of n samples' V views through one network, per view. */
static void net_features(net_t *nt, float *feat, float *const *fv, const float *imgs, int n, int V,
                         int D) {
    encoder_acts_resize(&nt->ea, V * n);
    encoder_forward(&nt->enc, nt->p, &nt->ea, imgs, NULL, nt->enc.L);
    encoder_features(feat, &nt->ea, ENCODER_POOL_CLS);
    split_views(fv, feat, n, V, D);
}

static double byol_forward_step(stage_t *s, const stage_input_t *in, int n) {
    byol_t *b = s->impl;
    const int D = b->D, k = b->dim, V = b->V;
    b->n = 0; /* until the loss is known: a failed forward leaves backward nothing */
    if (n < 2 * b->groups || n % b->groups) {
        mimic_err(MIMIC_EINVAL,
                  "%s: a batch of %d sample(s) does not split into contrastive.bn_groups = %d "
                  "group(s) of at least 2 (BatchNorm)",
                  s->ops->name, n, b->groups);
        return NAN;
    }
    if (b->groups > 1 && s->exchange) { /* the backend that sets exchange is a cluster's */
        mimic_err(MIMIC_EINVAL,
                  "config contrastive.bn_groups = %d is for the standalone trainer: on a cluster "
                  "each worker's BatchNorm already has statistics of its own batch (set it to 1)",
                  b->groups);
        return NAN;
    }
    /* the online network sees the global views only: gathered when warps follow them */
    const float *gimgs = in->imgs;
    if (b->W > 0) {
        for (int i = 0; i < n; i++)
            memcpy(b->gimgs + (size_t)i * GLOBAL * b->img, in->imgs + (size_t)i * V * b->img,
                   GLOBAL * b->img * sizeof(float));
        gimgs = b->gimgs;
    }
    net_t *on = &b->on, *tg = &b->tg;
    net_features(on, b->ofeat, b->ofv, gimgs, n, GLOBAL, D);
    net_features(tg, b->tfeat, b->tfv, in->imgs, n, V, D);
    for (int v = 0; v < V; v++) {
        head_acts_resize(&tg->proj_a[v], n);
        const float *z = head_forward(&tg->proj, tg->p, &tg->proj_a[v], b->tfv[v], HEAD_TRAIN);
        l2norm_forward(b->zn[v], b->znorm[v], z, n, k);
    }
    double loss = 0;
    for (int v = 0; v < GLOBAL; v++) {
        head_acts_resize(&on->proj_a[v], n);
        head_acts_resize(&on->pred_a[v], n);
        const float *z = head_forward(&on->proj, on->p, &on->proj_a[v], b->ofv[v], HEAD_TRAIN);
        const float *p = head_forward(&on->pred, on->p, &on->pred_a[v], z, HEAD_TRAIN);
        l2norm_forward(b->pn[v], b->pnorm[v], p, n, k);
        /* p of view v against the target of the other view (and of its warp) */
        loss += byol_forward(b->pn[v], b->zn[1 - v], n, k);
        if (b->contrawarp)
            loss += b->w_neg * byol_warpneg_forward(b->q[v], b->pn[v], b->zn[1 - v],
                                                    b->zn[GLOBAL + 1 - v], n, k, b->tau);
    }
    b->n = n;
    return loss;
}

static void byol_backward_step(stage_t *s) {
    byol_t *b = s->impl;
    net_t *on = &b->on;
    const int n = b->n, D = b->D, k = b->dim;
    if (n == 0) return; /* the forward failed (and said why) */
    for (int v = 0; v < GLOBAL; v++) {
        size_t nk = (size_t)n * k;
        mimic_zero(b->dpn[v], nk);
        mimic_zero(b->dp[v], nk);
        mimic_zero(b->dz[v], nk);
        mimic_zero(b->dfv[v], (size_t)n * D);
        byol_backward(b->dpn[v], b->zn[1 - v], n, k, 1.0f);
        if (b->contrawarp)
            byol_warpneg_backward(b->dpn[v], b->q[v], b->zn[1 - v], b->zn[GLOBAL + 1 - v], n, k,
                                  b->tau, b->w_neg);
        l2norm_backward(b->dp[v], b->dpn[v], b->pn[v], b->pnorm[v], n, k);
        head_backward(&on->pred, on->p, &on->pred_a[v], b->dz[v], b->dp[v]);
        head_backward(&on->proj, on->p, &on->proj_a[v], b->dfv[v], b->dz[v]);
    }
    join_views(b->dfeat, b->dfv, n, GLOBAL, D);
    mimic_zero(b->dout, (size_t)GLOBAL * n * (1 + on->enc.L) * D);
    encoder_features_backward(b->dout, &on->ea, b->dfeat, ENCODER_POOL_CLS);
    encoder_backward(&on->enc, on->p, &on->ea, b->dout);
}

const stage_ops_t stage_byol_ops = {
    .name = "byol",
    .reads = STAGE_READ_WEIGHTS | STAGE_READ_EMA,
    .pushes = STAGE_PUSH_GRAD,
    .server_state = 0,
    .key_views = 0, /* no keys are exchanged: the target is per sample */
    .create = byol_create,
    .destroy = byol_destroy,
    .init = byol_init,
    .forward = byol_forward_step,
    .backward = byol_backward_step,
    .save = stage_save_params,
    .load = stage_load_params,
};

const stage_ops_t stage_contrawarp_ops = {
    .name = "contrawarp",
    .reads = STAGE_READ_WEIGHTS | STAGE_READ_EMA,
    .pushes = STAGE_PUSH_GRAD,
    .server_state = 0,
    .key_views = 0,
    .create = contrawarp_create,
    .destroy = byol_destroy,
    .init = byol_init,
    .forward = byol_forward_step,
    .backward = byol_backward_step,
    .save = stage_save_params,
    .load = stage_load_params,
};
