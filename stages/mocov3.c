/* The MoCo v3 stage (Chen, Xie, He 2021; METHODS.md): two views of each image, the
 * online network q = predictor(projector(encoder(x))) and the momentum network
 * k = projector_m(encoder_m(x)), loss ctr(q1, k2) + ctr(q2, k1) with
 * ctr(q, k) = CE(q k^T / tau, positives on the diagonal) * 2 tau over the keys of every
 * worker of the step (stage_t.exchange).
 *
 * Parameters: the encoder with timm names (a prefix of the flat vector, so evaluation
 * and export read it by name), then projector.N.* and predictor.N.* (torch Sequential
 * indices, head.h). The momentum network is a second table of the same layout whose
 * values are stage_t.ema (the servers' EMA, or the standalone trainer's): its predictor
 * is never run. BatchNorm statistics are per worker (batch statistics of the local
 * batch), as MoCo v3 without SyncBatchNorm; the standalone trainer reproduces G
 * workers with contrastive.bn_groups = G (statistics per group of n/G samples). (ours)
 * The encoder starts from MAE's init (METHODS.md) and AdamW leaves biases and norms
 * undecayed, like MAE's groups. */
#include "checkpoint.h"
#include "common.h"
#include "contrastive.h"
#include "encoder.h"
#include "head.h"
#include "l2norm.h"
#include "stage.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { PROJ_LAYERS = 3, PRED_LAYERS = 2, VIEWS = 2 };

/* One network: encoder + projector + predictor in one table. */
typedef struct {
    params_t *p;
    encoder_t enc;
    head_t proj, pred;
    encoder_acts_t ea;
    head_acts_t proj_a[VIEWS], pred_a[VIEWS];
} net_t;

typedef struct {
    mae_cfg_t model;
    float tau;
    int B, D, dim, Mcap, n, M, offset;
    int groups;   /* contrastive.bn_groups: BN statistics per group of n/groups samples */
    net_t on, mo; /* online; momentum (its w is stage_t.ema) */
    /* (2B, D) features of both views interleaved as loaded, and per view (B, D) */
    float *feat, *fv[VIEWS], *fm, *fmv[VIEWS];
    float *qn[VIEWS], *qnorm[VIEWS]; /* normalised predictions (B, dim), norms (B) */
    float *kn[VIEWS], *knorm[VIEWS]; /* normalised keys */
    float *pack, *kall[VIEWS];       /* (B, 2 dim) for the exchange; (Mcap, dim) all keys */
    float *prob[VIEWS];              /* (B, Mcap) */
    float *dq[VIEWS], *dqr[VIEWS], *dz[VIEWS], *dfv[VIEWS], *dfeat, *dout;
    float *mem;
} moco_t;

static int net_build(net_t *nt, const mimic_cfg_t *cfg, int B) {
    head_layer_t pl[PROJ_LAYERS], ql[PRED_LAYERS];
    const int D = cfg->model.embed_dim, mlp = cfg->contrastive.mlp_dim, dim = cfg->contrastive.dim,
              G = cfg->contrastive.bn_groups;
    int rc;
    if (!(nt->p = params_new())) return mimic_err(MIMIC_ENOMEM, "out of memory for MoCo v3");
    if ((rc = encoder_register(&nt->enc, nt->p, &cfg->model)) < 0 ||
        (rc = head_spec_mocov3(pl, PROJ_LAYERS, mlp, dim, 1)) < 0 ||
        (rc = head_spec_mocov3(ql, PRED_LAYERS, mlp, dim, 1)) < 0 ||
        (rc = head_register(&nt->proj, nt->p, "projector", D, pl, PROJ_LAYERS)) < 0 ||
        (rc = head_register(&nt->pred, nt->p, "predictor", dim, ql, PRED_LAYERS)) < 0 ||
        (rc = params_finalize(nt->p)) < 0)
        return rc;
    if (B == 0) return 0; /* parameters only */
    if ((rc = encoder_acts_alloc(&nt->ea, &nt->enc, VIEWS * B, nt->enc.L)) < 0) return rc;
    for (int v = 0; v < VIEWS; v++)
        if ((rc = head_acts_alloc_groups(&nt->proj_a[v], &nt->proj, B, G)) < 0 ||
            (rc = head_acts_alloc_groups(&nt->pred_a[v], &nt->pred, B, G)) < 0)
            return rc;
    return 0;
}

static void net_free(net_t *nt) {
    for (int v = 0; v < VIEWS; v++) {
        head_acts_free(&nt->proj_a[v]);
        head_acts_free(&nt->pred_a[v]);
    }
    encoder_acts_free(&nt->ea);
    head_free(&nt->proj);
    head_free(&nt->pred);
    encoder_free(&nt->enc);
    params_destroy(&nt->p);
}

/* Carves every per-step buffer out of one allocation. */
static int moco_buffers(moco_t *mc) {
    size_t B = (size_t)mc->B, D = (size_t)mc->D, k = (size_t)mc->dim, M = (size_t)mc->Mcap;
    size_t T = 1 + (size_t)mc->on.enc.L;
    size_t sizes[] = {2 * B * D, 2 * B * D, 2 * B * k, M * k,     M * k,     B * M,
                      B * M,     2 * B * D, 2 * B * T * D};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        total += sizes[i];
    /* per view: fv, fmv (B*D), qn, kn, dq, dqr, dz (B*dim), qnorm, knorm (B), dfv (B*D) */
    total += VIEWS * (3 * B * D + 5 * B * k + 2 * B);
    if (!(mc->mem = mimic_alloc(total * sizeof(float))))
        return mimic_err(MIMIC_ENOMEM, "out of memory for MoCo v3's buffers");
    float *m = mc->mem;
#define TAKE(ptr, n)                                                                               \
    do {                                                                                           \
        (ptr) = m;                                                                                 \
        m += (n);                                                                                  \
    } while (0)
    TAKE(mc->feat, 2 * B * D);
    TAKE(mc->fm, 2 * B * D);
    TAKE(mc->pack, 2 * B * k);
    TAKE(mc->kall[0], M * k);
    TAKE(mc->kall[1], M * k);
    TAKE(mc->prob[0], B * M);
    TAKE(mc->prob[1], B * M);
    TAKE(mc->dfeat, 2 * B * D);
    TAKE(mc->dout, 2 * B * T * D);
    for (int v = 0; v < VIEWS; v++) {
        TAKE(mc->fv[v], B * D);
        TAKE(mc->fmv[v], B * D);
        TAKE(mc->dfv[v], B * D);
        TAKE(mc->qn[v], B * k);
        TAKE(mc->kn[v], B * k);
        TAKE(mc->dq[v], B * k);
        TAKE(mc->dqr[v], B * k);
        TAKE(mc->dz[v], B * k);
        TAKE(mc->qnorm[v], B);
        TAKE(mc->knorm[v], B);
    }
#undef TAKE
    return 0;
}

static int moco_create(stage_t *s, const mimic_cfg_t *cfg, int batch) {
    moco_t *mc = calloc(1, sizeof *mc);
    if (!mc) return mimic_err(MIMIC_ENOMEM, "out of memory for MoCo v3");
    s->impl = mc;
    if (batch == 1)
        return mimic_err(MIMIC_EINVAL, "config train.batch_size: MoCo v3 needs at least 2 "
                                       "(BatchNorm in its heads)");
    if (cfg->contrastive.dim <= 0 || cfg->contrastive.mlp_dim <= 0 ||
        !(cfg->contrastive.temperature > 0))
        return mimic_err(MIMIC_EINVAL,
                         "config contrastive.dim, mlp_dim and temperature must be positive");
    const int G = cfg->contrastive.bn_groups;
    if (G < 1 || (batch > 0 && (batch % G || batch / G < 2)))
        return mimic_err(MIMIC_EINVAL,
                         "config contrastive.bn_groups = %d: train.batch_size %d must split into "
                         "that many groups of at least 2 samples (BatchNorm in the heads)",
                         G, batch);
    mc->model = cfg->model;
    mc->tau = cfg->contrastive.temperature;
    mc->B = batch;
    mc->D = cfg->model.embed_dim;
    mc->dim = cfg->contrastive.dim;
    mc->groups = G;
    /* the keys of every worker: room for twice the expected cluster (elastic joins) */
    mc->Mcap = batch * 2 * (cfg->cluster.workers > 1 ? cfg->cluster.workers : 1);
    int rc;
    if ((rc = net_build(&mc->on, cfg, batch)) || (rc = net_build(&mc->mo, cfg, batch)) ||
        (batch > 0 && (rc = moco_buffers(mc))))
        return rc;
    s->p = mc->on.p;
    s->ema = mc->mo.p->w;
    s->views = VIEWS;
    double enc = encoder_forward_flops(&mc->on.enc, mc->on.enc.L),
           proj = head_flops(&mc->on.proj), pred = head_flops(&mc->on.pred);
    /* per image, both views: online forward + backward (3x), momentum forward (1x) */
    s->flops_per_image = VIEWS * (3.0 * (enc + proj + pred) + enc + proj);
    return 0;
}

static void moco_destroy(stage_t *s) {
    moco_t *mc = s->impl;
    if (!mc) return;
    net_free(&mc->on);
    net_free(&mc->mo);
    mimic_free(mc->mem);
    free(mc);
    s->impl = NULL;
}

static void moco_init(stage_t *s, uint64_t seed) {
    moco_t *mc = s->impl;
    rng_t r;
    rng_seed(&r, seed);
    encoder_init(&mc->on.enc, mc->on.p, &r);
    head_init(&mc->on.proj, mc->on.p, &r);
    head_init(&mc->on.pred, mc->on.p, &r);
    memcpy(s->ema, s->p->w, s->p->total * sizeof(float)); /* the momentum copy starts equal */
}

/* (2n, D) rows of both views interleaved (sample i: rows 2i, 2i+1) <-> per view (n, D). */
static void split_views(float *const *out, const float *in, int n, int D) {
    for (int i = 0; i < n; i++)
        for (int v = 0; v < VIEWS; v++)
            memcpy(out[v] + (size_t)i * D, in + ((size_t)i * VIEWS + v) * D,
                   (size_t)D * sizeof(float));
}

static void join_views(float *out, float *const *in, int n, int D) {
    for (int i = 0; i < n; i++)
        for (int v = 0; v < VIEWS; v++)
            memcpy(out + ((size_t)i * VIEWS + v) * D, in[v] + (size_t)i * D,
                   (size_t)D * sizeof(float));
}

/* Encoder features of both views of n images, per view. */
static void net_features(net_t *nt, float *feat, float *const *fv, const float *imgs, int n,
                         int D) {
    encoder_acts_resize(&nt->ea, VIEWS * n);
    encoder_forward(&nt->enc, nt->p, &nt->ea, imgs, NULL, nt->enc.L);
    encoder_features(feat, &nt->ea, ENCODER_POOL_CLS);
    split_views(fv, feat, n, D);
}

/* The keys of every worker: this worker's two views packed per row, exchanged, and
 * unpacked into kall[v] (M, dim). */
static int gather_keys(stage_t *s, moco_t *mc, int n) {
    const int k = mc->dim;
    if (!s->exchange) {
        for (int v = 0; v < VIEWS; v++)
            memcpy(mc->kall[v], mc->kn[v], (size_t)n * k * sizeof(float));
        mc->M = n;
        mc->offset = 0;
        return 0;
    }
    for (int i = 0; i < n; i++)
        for (int v = 0; v < VIEWS; v++)
            memcpy(mc->pack + ((size_t)i * VIEWS + v) * k, mc->kn[v] + (size_t)i * k,
                   (size_t)k * sizeof(float));
    const float *all = NULL;
    int rc = s->exchange(s->exchange_ctx, mc->pack, n, VIEWS * k, &all, &mc->M, &mc->offset);
    if (rc) return rc;
    if (mc->M > mc->Mcap || mc->offset < 0 || mc->offset + n > mc->M)
        return mimic_err(MIMIC_EPEER, "MoCo v3: %d keys this step (room for %d, offset %d)",
                         mc->M, mc->Mcap, mc->offset);
    for (int i = 0; i < mc->M; i++)
        for (int v = 0; v < VIEWS; v++)
            memcpy(mc->kall[v] + (size_t)i * k, all + ((size_t)i * VIEWS + v) * k,
                   (size_t)k * sizeof(float));
    return 0;
}

static double moco_forward(stage_t *s, const stage_input_t *in, int n) {
    moco_t *mc = s->impl;
    const int D = mc->D, k = mc->dim;
    mc->n = 0; /* until the keys are in: stage_compute runs backward after a failed forward */
    if (n < 2 * mc->groups || n % mc->groups) {
        mimic_err(MIMIC_EINVAL,
                  "MoCo v3: a batch of %d sample(s) does not split into contrastive.bn_groups = "
                  "%d group(s) of at least 2 (BatchNorm)",
                  n, mc->groups);
        return NAN;
    }
    if (mc->groups > 1 && s->exchange) { /* the backend that exchanges keys is a cluster's */
        mimic_err(MIMIC_EINVAL,
                  "config contrastive.bn_groups = %d is for the standalone trainer: on a cluster "
                  "each worker's BatchNorm already has statistics of its own batch (set it to 1)",
                  mc->groups);
        return NAN;
    }
    net_features(&mc->on, mc->feat, mc->fv, in->imgs, n, D);
    net_features(&mc->mo, mc->fm, mc->fmv, in->imgs, n, D);
    for (int v = 0; v < VIEWS; v++) {
        net_t *on = &mc->on, *mo = &mc->mo;
        head_acts_resize(&on->proj_a[v], n);
        head_acts_resize(&on->pred_a[v], n);
        head_acts_resize(&mo->proj_a[v], n);
        const float *z = head_forward(&on->proj, on->p, &on->proj_a[v], mc->fv[v], HEAD_TRAIN);
        const float *q = head_forward(&on->pred, on->p, &on->pred_a[v], z, HEAD_TRAIN);
        l2norm_forward(mc->qn[v], mc->qnorm[v], q, n, k);
        const float *km = head_forward(&mo->proj, mo->p, &mo->proj_a[v], mc->fmv[v], HEAD_TRAIN);
        l2norm_forward(mc->kn[v], mc->knorm[v], km, n, k);
    }
    if (gather_keys(s, mc, n)) return NAN;
    mc->n = n;
    double loss = 0;
    for (int v = 0; v < VIEWS; v++) /* q of view v against the keys of the other view */
        loss += contrastive_v3_forward(mc->prob[v], mc->qn[v], mc->kall[1 - v], n, mc->M, k,
                                       mc->offset, mc->tau);
    return loss;
}

static void moco_backward(stage_t *s) {
    moco_t *mc = s->impl;
    net_t *on = &mc->on;
    const int n = mc->n, D = mc->D, k = mc->dim;
    if (n == 0) return; /* the forward failed (and said why) */
    for (int v = 0; v < VIEWS; v++) {
        size_t nk = (size_t)n * k;
        mimic_zero(mc->dq[v], nk);
        mimic_zero(mc->dqr[v], nk);
        mimic_zero(mc->dz[v], nk);
        mimic_zero(mc->dfv[v], (size_t)n * D);
        contrastive_v3_backward(mc->dq[v], mc->prob[v], mc->kall[1 - v], n, mc->M, k, mc->offset,
                                mc->tau, 1.0f);
        l2norm_backward(mc->dqr[v], mc->dq[v], mc->qn[v], mc->qnorm[v], n, k);
        head_backward(&on->pred, on->p, &on->pred_a[v], mc->dz[v], mc->dqr[v]);
        head_backward(&on->proj, on->p, &on->proj_a[v], mc->dfv[v], mc->dz[v]);
    }
    join_views(mc->dfeat, mc->dfv, n, D);
    mimic_zero(mc->dout, (size_t)VIEWS * n * (1 + on->enc.L) * D);
    encoder_features_backward(mc->dout, &on->ea, mc->dfeat, ENCODER_POOL_CLS);
    encoder_backward(&on->enc, on->p, &on->ea, mc->dout);
}

const stage_ops_t stage_mocov3_ops = {
    .name = "mocov3",
    .reads = STAGE_READ_WEIGHTS | STAGE_READ_EMA,
    .pushes = STAGE_PUSH_GRAD,
    .server_state = 0,
    .key_views = VIEWS,
    .create = moco_create,
    .destroy = moco_destroy,
    .init = moco_init,
    .forward = moco_forward,
    .backward = moco_backward,
    .save = stage_save_params,
    .load = stage_load_params,
};
