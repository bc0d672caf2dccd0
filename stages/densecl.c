/* The DenseCL stage (Wang et al., CVPR 2021; WXinlong/DenseCL; METHODS.md) on ViT patch
 * tokens: MoCo v2's global branch (stages/mocov2.c: the query q = l2norm(projector(cls of
 * view 1)) of the online network, the key from the momentum network = stage_t.ema on
 * view 2, InfoNCE against the negative queue) plus a dense branch: a per-token projection
 * (dense_projector: Linear, ReLU, Linear -> contrastive.dim, on every patch token of the
 * encoder's final norm output), positives matched by argmax cosine of the BACKBONE tokens
 * of the two views, negatives a second queue of pooled dense keys (models/densecl.h):
 *   L = (1 - lambda) InfoNCE_global + lambda InfoNCE_dense,  lambda = densecl.lambda.
 *
 * The two queues are one ring (ours): row k of stage_t.queue is [global key k | pooled
 * dense key k], contrastive.dim floats each (queue_parts = 2), so the servers' queue, its
 * pushes and delta pulls, the checkpoints and the standalone ring serve DenseCL unchanged;
 * the losses read each half in place (contrastive_queue_forward_ld). Both branches' keys
 * of a sample enter and leave the queues together, which is what the reference's two
 * FIFO queues of equal length do too.
 *
 * Decisions (ours): the global feature is the cls token (as our MoCo v2; the reference's
 * ResNet average-pools the grid); the dense head's hidden width is contrastive.mlp_dim and
 * its output contrastive.dim (the reference: 2048 and 128, like its global head); the
 * dense loss is a mean over every query token of the batch (the reference's mean over
 * N*S^2 rows); one temperature (contrastive.temperature) for both branches, as the
 * reference; before the queue has filled only its valid rows are negatives (as our MoCo
 * v2). No BatchNorm in either head, so a cluster step is the standalone step over the
 * workers' batches.
 *
 * Masking (ours, contrastive.mask_ratio > 0): the online view keeps Kq = int(L (1 - r))
 * patch tokens chosen by the masking policy (mae.mask_policy; models/maskpolicy.h) from
 * the loader's noise, as MAE keeps its visible patches; the key view stays whole. The
 * dense loss then runs over the Kq query tokens, each matched among all L key tokens.
 * The adversarial policy scores a position by the first-order loss increase of removing
 * its token (maskpolicy_removal_gain on the encoder's stack input), folded in after each
 * backward; the scores are saved with the stage (stage_t.mask_score). */
#include "densecl.h"
#include "common.h"
#include "contrastive.h"
#include "encoder.h"
#include "head.h"
#include "l2norm.h"
#include "maskpolicy.h"
#include "stage.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { HEAD_LAYERS = 2, VIEWS = 2 };

typedef struct {
    params_t *p;
    encoder_t enc;
    head_t proj, dense;
    encoder_acts_t ea;
    head_acts_t pa, da; /* da: B*L rows, one per patch token */
} net_t;

typedef struct {
    float tau, lambda;
    int B, D, dim, L, n, K, rows;
    int Kq;                        /* online-view tokens: L, or the kept ones when masking */
    maskpolicy_t *policy;          /* contrastive.mask_ratio > 0 only */
    int *ids;                      /* (B, L) ids_shuffle of the online view */
    float *mkeys, *gain, *counted; /* (B, L) */
    size_t img, ldq;               /* floats per image; per queue row (2 dim) */
    net_t on, mo;
    float *view[VIEWS];
    float *feat, *featm, *dfeat;      /* (B, D) cls features */
    float *q, *qnorm, *k, *knorm;     /* (B, dim), (B) */
    float *dq, *dz;                   /* (B, dim) */
    float *tokq, *tokk, *dtok;        /* (B, L, D) patch tokens of the final norm */
    float *qd, *qdnorm, *kd, *kdnorm; /* (B, L, dim), (B*L) normalised dense projections */
    float *kpos, *dqd, *dzd;          /* (B, L, dim) */
    float *pool, *poolnorm;           /* (B, dim), (B) pooled dense keys */
    float *keys;                      /* (B, 2 dim) rows [k | pool] for the queue */
    float *prob, *probd;              /* (B, 1+K), (B*L, 1+K) */
    float *scratch;                   /* densecl_match's */
    float *dout;                      /* (B, 1+L, D) */
    int *idx;                         /* (B, L) matched key tokens */
    float *mem;
} densecl_t;

/* mask_ratio: the share of patch tokens this network's view loses (0: none); the
 * encoder's activations are sized for the kept ones. */
static int net_build(net_t *nt, const mimic_cfg_t *cfg, int B, float mask_ratio) {
    head_layer_t l[HEAD_LAYERS], ld[HEAD_LAYERS];
    int rc;
    if (!(nt->p = params_new())) return mimic_err(MIMIC_ENOMEM, "out of memory for DenseCL");
    head_spec_mlp2(l, cfg->contrastive.mlp_dim, cfg->contrastive.dim);
    head_spec_mlp2(ld, cfg->contrastive.mlp_dim, cfg->contrastive.dim);
    if ((rc = encoder_register(&nt->enc, nt->p, &cfg->model)) < 0 ||
        (rc = head_register(&nt->proj, nt->p, "projector", cfg->model.embed_dim, l, HEAD_LAYERS)) <
            0 ||
        (rc = head_register(&nt->dense, nt->p, "dense_projector", cfg->model.embed_dim, ld,
                            HEAD_LAYERS)) < 0 ||
        (rc = params_finalize(nt->p)) < 0)
        return rc;
    if (B == 0) return 0; /* parameters only */
    /* MAE's keep = int(L * (1 - r)) */
    int K = mask_ratio > 0.0f ? (int)((float)nt->enc.L * (1.0f - mask_ratio)) : nt->enc.L;
    if (K < 1)
        return mimic_err(MIMIC_EINVAL, "config contrastive.mask_ratio %g leaves no patch token",
                         (double)mask_ratio);
    if ((rc = encoder_acts_alloc(&nt->ea, &nt->enc, B, K)) < 0 ||
        (rc = head_acts_alloc(&nt->pa, &nt->proj, B)) < 0 ||
        (rc = head_acts_alloc(&nt->da, &nt->dense, B * K)) < 0)
        return rc;
    return 0;
}

static void net_free(net_t *nt) {
    head_acts_free(&nt->pa);
    head_acts_free(&nt->da);
    encoder_acts_free(&nt->ea);
    head_free(&nt->proj);
    head_free(&nt->dense);
    encoder_free(&nt->enc);
    params_destroy(&nt->p);
}

/* Every per-step buffer and the queue ring in one allocation (the match indices apart). */
static int densecl_buffers(stage_t *s, densecl_t *dc) {
    size_t B = (size_t)dc->B, D = (size_t)dc->D, k = (size_t)dc->dim, K = (size_t)dc->K;
    size_t L = (size_t)dc->L, T = 1 + L;
    size_t total = VIEWS * B * dc->img + 3 * B * D + 4 * B * k + 2 * B + 3 * B * L * D +
                   5 * B * L * k + 2 * B * L + B * k + B + 2 * B * k + B * (1 + K) +
                   B * L * (1 + K) + DENSECL_MATCH_SCRATCH(L, L, D) + B * T * D + K * dc->ldq;
    if (dc->policy) total += 3 * B * L;
    dc->idx = malloc(B * L * sizeof(int));
    dc->ids = dc->policy ? malloc(B * L * sizeof(int)) : NULL;
    if (!dc->idx || (dc->policy && !dc->ids) || !(dc->mem = mimic_alloc(total * sizeof(float))))
        return mimic_err(MIMIC_ENOMEM,
                         "out of memory for DenseCL's buffers and queue (%d x %zu; the dense "
                         "logits alone are %zu x %zu floats)",
                         dc->K, dc->ldq, B * L, K + 1);
    float *m = dc->mem;
#define TAKE(ptr, cnt)                                                                             \
    do {                                                                                           \
        (ptr) = m;                                                                                 \
        m += (cnt);                                                                                \
    } while (0)
    TAKE(dc->view[0], B * dc->img);
    TAKE(dc->view[1], B * dc->img);
    TAKE(dc->feat, B * D);
    TAKE(dc->featm, B * D);
    TAKE(dc->dfeat, B * D);
    TAKE(dc->q, B * k);
    TAKE(dc->k, B * k);
    TAKE(dc->dq, B * k);
    TAKE(dc->dz, B * k);
    TAKE(dc->qnorm, B);
    TAKE(dc->knorm, B);
    TAKE(dc->tokq, B * L * D);
    TAKE(dc->tokk, B * L * D);
    TAKE(dc->dtok, B * L * D);
    TAKE(dc->qd, B * L * k);
    TAKE(dc->kd, B * L * k);
    TAKE(dc->kpos, B * L * k);
    TAKE(dc->dqd, B * L * k);
    TAKE(dc->dzd, B * L * k);
    TAKE(dc->qdnorm, B * L);
    TAKE(dc->kdnorm, B * L);
    TAKE(dc->pool, B * k);
    TAKE(dc->poolnorm, B);
    TAKE(dc->keys, 2 * B * k);
    TAKE(dc->prob, B * (1 + K));
    TAKE(dc->probd, B * L * (1 + K));
    TAKE(dc->scratch, DENSECL_MATCH_SCRATCH(L, L, D));
    TAKE(dc->dout, B * T * D);
    TAKE(s->queue, K * dc->ldq);
    if (dc->policy) {
        TAKE(dc->mkeys, B * L);
        TAKE(dc->gain, B * L);
        TAKE(dc->counted, B * L);
    }
#undef TAKE
    mimic_zero(s->queue, K * dc->ldq);
    return 0;
}

static int densecl_create(stage_t *s, const mimic_cfg_t *cfg, int batch) {
    densecl_t *dc = calloc(1, sizeof *dc);
    if (!dc) return mimic_err(MIMIC_ENOMEM, "out of memory for DenseCL");
    s->impl = dc;
    if (cfg->contrastive.dim <= 0 || cfg->contrastive.mlp_dim <= 0 ||
        cfg->contrastive.queue_size <= 0 || !(cfg->contrastive.temperature > 0))
        return mimic_err(MIMIC_EINVAL, "config contrastive.dim, mlp_dim, queue_size and "
                                       "temperature must be positive");
    if (!(cfg->densecl.lambda >= 0.0f && cfg->densecl.lambda <= 1.0f))
        return mimic_err(MIMIC_EINVAL, "config densecl.lambda: %g is not in [0, 1]",
                         (double)cfg->densecl.lambda);
    const float ratio = cfg->contrastive.mask_ratio;
    if (!(ratio >= 0.0f && ratio < 1.0f))
        return mimic_err(MIMIC_EINVAL, "config contrastive.mask_ratio: %g is not in [0, 1)",
                         (double)ratio);
    dc->tau = cfg->contrastive.temperature;
    dc->lambda = cfg->densecl.lambda;
    dc->B = batch;
    dc->D = cfg->model.embed_dim;
    dc->dim = cfg->contrastive.dim;
    dc->K = cfg->contrastive.queue_size;
    dc->ldq = 2 * (size_t)dc->dim;
    dc->img = (size_t)cfg->model.in_chans * cfg->model.img_size * cfg->model.img_size;
    int rc;
    if ((rc = net_build(&dc->on, cfg, batch, ratio)) || (rc = net_build(&dc->mo, cfg, batch, 0.0f)))
        return rc;
    dc->L = dc->on.enc.L;
    dc->Kq = batch > 0 ? dc->on.ea.K : dc->L;
    if (ratio > 0.0f) {
        if ((rc = maskpolicy_new(&dc->policy, cfg, dc->L))) return rc;
        s->noise_len = dc->L; /* the loader's uniform noise, one per patch */
        if (dc->policy->policy == MASK_POLICY_ADVERSARIAL) { /* state worth saving */
            s->mask_score = dc->policy->score;
            s->mask_score_len = (size_t)dc->L;
        }
    }
    if (batch > 0 && (rc = densecl_buffers(s, dc))) return rc;
    s->p = dc->on.p;
    s->ema = dc->mo.p->w;
    s->views = VIEWS;
    s->queue_cap = (size_t)dc->K;
    s->queue_dim = dc->ldq;
    double head = head_flops(&dc->on.proj), dhead = head_flops(&dc->on.dense);
    double encq = encoder_forward_flops(&dc->on.enc, dc->Kq),
           enck = encoder_forward_flops(&dc->on.enc, dc->L);
    /* per sample: the query view forward + backward (3x), the key view forward, the
     * logits of the global query and of every query token against the queue (fwd +
     * bwd), and the Kq x L token similarities of the match */
    s->flops_per_image = 3.0 * (encq + head + dc->Kq * dhead) + enck + head + dc->L * dhead +
                         3.0 * 2.0 * dc->K * dc->dim * (1.0 + dc->Kq) +
                         2.0 * dc->Kq * dc->L * dc->D;
    return 0;
}

static void densecl_destroy(stage_t *s) {
    densecl_t *dc = s->impl;
    if (!dc) return;
    net_free(&dc->on);
    net_free(&dc->mo);
    mimic_free(dc->mem);
    free(dc->idx);
    free(dc->ids);
    maskpolicy_destroy(&dc->policy);
    s->mask_score = NULL;
    free(dc);
    s->impl = NULL;
    s->queue = NULL;
}

static void densecl_init(stage_t *s, uint64_t seed) {
    densecl_t *dc = s->impl;
    rng_t r;
    rng_seed(&r, seed);
    encoder_init(&dc->on.enc, dc->on.p, &r);
    head_init(&dc->on.proj, dc->on.p, &r);
    head_init(&dc->on.dense, dc->on.p, &r);
    memcpy(s->ema, s->p->w, s->p->total * sizeof(float)); /* the momentum copy starts equal */
    if (s->queue) mimic_zero(s->queue, s->queue_cap * s->queue_dim);
    s->queue_keys = 0;
    if (dc->policy) /* scores start unseen: uniform masking */
        memset(dc->policy->score, 0, (size_t)dc->L * sizeof(float));
}

/* One view through a network: the cls feature's global projection z (returned, (n, dim))
 * and the dense projections *zd (n*K, dim) of the K embedded patch tokens (all L, or
 * the first K of ids (n, L)), copied to tok (n, K, D). */
static const float *net_run(densecl_t *dc, net_t *nt, float *feat, float *tok, const float *imgs,
                            const int *ids, int n, const float **zd) {
    const int L = dc->L, D = dc->D, K = nt->ea.K;
    encoder_acts_resize(&nt->ea, n);
    const float *out = encoder_forward(&nt->enc, nt->p, &nt->ea, imgs, ids, L);
    encoder_features(feat, &nt->ea, ENCODER_POOL_CLS);
    for (int i = 0; i < n; i++) /* rows 1..K of each sample: the patch tokens */
        memcpy(tok + (size_t)i * K * D, out + ((size_t)i * (1 + K) + 1) * D,
               (size_t)K * D * sizeof(float));
    head_acts_resize(&nt->pa, n);
    head_acts_resize(&nt->da, n * K);
    *zd = head_forward(&nt->dense, nt->p, &nt->da, tok, HEAD_TRAIN);
    return head_forward(&nt->proj, nt->p, &nt->pa, feat, HEAD_TRAIN);
}

static double densecl_forward(stage_t *s, const stage_input_t *in, int n) {
    densecl_t *dc = s->impl;
    if (n < 1 || n > dc->B) {
        mimic_err(MIMIC_EINVAL, "DenseCL: a batch of %d samples (room for %d)", n, dc->B);
        return NAN;
    }
    const int L = dc->L, Kq = dc->Kq, k = dc->dim;
    if (dc->policy && !in->noise) {
        mimic_err(MIMIC_EINVAL, "DenseCL: contrastive.mask_ratio > 0 needs the batch's noise");
        return NAN;
    }
    dc->n = n;
    for (int i = 0; i < n; i++) /* sample i's views are rows 2i, 2i+1 */
        for (int v = 0; v < VIEWS; v++)
            memcpy(dc->view[v] + (size_t)i * dc->img, in->imgs + ((size_t)i * VIEWS + v) * dc->img,
                   dc->img * sizeof(float));
    const float *zqd, *zkd;
    if (dc->policy) { /* the online view's kept tokens: the first Kq of each row of ids */
        maskpolicy_keys(dc->policy, dc->mkeys, in->noise, n);
        maskpolicy_argsort(dc->ids, dc->mkeys, n, L);
    }
    const float *z = net_run(dc, &dc->on, dc->feat, dc->tokq, dc->view[0], dc->ids, n, &zqd);
    l2norm_forward(dc->q, dc->qnorm, z, n, k);
    l2norm_forward(dc->qd, dc->qdnorm, zqd, n * Kq, k);
    const float *zk = net_run(dc, &dc->mo, dc->featm, dc->tokk, dc->view[1], NULL, n, &zkd);
    l2norm_forward(dc->k, dc->knorm, zk, n, k);
    l2norm_forward(dc->kd, dc->kdnorm, zkd, n * L, k);
    densecl_pool(dc->pool, dc->poolnorm, zkd, n, L, k);
    for (int i = 0; i < n; i++) { /* the queue rows of this step: [global | pooled dense] */
        memcpy(dc->keys + (size_t)i * dc->ldq, dc->k + (size_t)i * k, (size_t)k * sizeof(float));
        memcpy(dc->keys + (size_t)i * dc->ldq + k, dc->pool + (size_t)i * k,
               (size_t)k * sizeof(float));
    }
    s->keys = dc->keys;
    s->nkeys = n;
    dc->rows = s->queue_keys < s->queue_cap ? (int)s->queue_keys : dc->K;
    float lg = contrastive_queue_forward_ld(dc->prob, dc->q, dc->k, s->queue, (int)dc->ldq, n,
                                            dc->rows, k, dc->tau);
    float ld = densecl_dense_forward(dc->probd, dc->kpos, dc->idx, dc->scratch, dc->qd, dc->kd,
                                     dc->tokq, dc->tokk, s->queue + k, (int)dc->ldq, dc->rows, n,
                                     Kq, L, dc->D, k, dc->tau);
    return (1.0 - dc->lambda) * lg + (double)dc->lambda * ld;
}

static void densecl_backward(stage_t *s) {
    densecl_t *dc = s->impl;
    net_t *on = &dc->on;
    const int n = dc->n, k = dc->dim, Kq = dc->Kq, D = dc->D;
    /* global branch, as MoCo v2 */
    mimic_zero(dc->dq, (size_t)n * k);
    mimic_zero(dc->dz, (size_t)n * k);
    mimic_zero(dc->dfeat, (size_t)n * D);
    contrastive_queue_backward_ld(dc->dq, dc->prob, dc->k, s->queue, (int)dc->ldq, n, dc->rows, k,
                                  dc->tau, 1.0f - dc->lambda);
    l2norm_backward(dc->dz, dc->dq, dc->q, dc->qnorm, n, k);
    head_backward(&on->proj, on->p, &on->pa, dc->dfeat, dc->dz);
    /* dense branch: into every query token's projection, back to the patch tokens */
    mimic_zero(dc->dqd, (size_t)n * Kq * k);
    mimic_zero(dc->dzd, (size_t)n * Kq * k);
    mimic_zero(dc->dtok, (size_t)n * Kq * D);
    densecl_dense_backward(dc->dqd, dc->probd, dc->kpos, s->queue + k, (int)dc->ldq, dc->rows, n,
                           Kq, k, dc->tau, dc->lambda);
    l2norm_backward(dc->dzd, dc->dqd, dc->qd, dc->qdnorm, n * Kq, k);
    head_backward(&on->dense, on->p, &on->da, dc->dtok, dc->dzd);
    mimic_zero(dc->dout, (size_t)n * (1 + Kq) * D);
    encoder_features_backward(dc->dout, &on->ea, dc->dfeat, ENCODER_POOL_CLS);
    for (int i = 0; i < n; i++) {
        float *dst = dc->dout + ((size_t)i * (1 + Kq) + 1) * D;
        const float *src = dc->dtok + (size_t)i * Kq * D;
        for (size_t j = 0; j < (size_t)Kq * D; j++)
            dst[j] += src[j];
    }
    encoder_backward(&on->enc, on->p, &on->ea, dc->dout);
    if (dc->policy && dc->policy->policy == MASK_POLICY_ADVERSARIAL) {
        maskpolicy_removal_gain(dc->gain, dc->counted, on->ea.x0, on->ea.d_x0, dc->ids, n, Kq,
                                dc->L, D);
        maskpolicy_update(dc->policy, dc->gain, dc->counted, n);
    }
}

const stage_ops_t stage_densecl_ops = {
    .name = "densecl",
    .reads = STAGE_READ_WEIGHTS | STAGE_READ_EMA,
    .pushes = STAGE_PUSH_GRAD | STAGE_PUSH_KEYS,
    .server_state = STAGE_STATE_QUEUE,
    .key_views = 0,
    .queue_parts = 2,
    .create = densecl_create,
    .destroy = densecl_destroy,
    .init = densecl_init,
    .forward = densecl_forward,
    .backward = densecl_backward,
    .save = stage_save_params,
    .load = stage_load_params,
};
