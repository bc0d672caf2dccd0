/* The MoCo v2 stage (He et al. 2020, Chen et al. 2020; METHODS.md): two views of each
 * image; the query q = l2norm(projector(encoder(view 1))) from the online network, the
 * key k = l2norm(projector_m(encoder_m(view 2))) from the momentum network, and
 *   L = CE([q.k, q.queue] / T, target 0), mean over the batch,
 * against the negative queue of earlier steps' keys (stage_t.queue: the servers' queue
 * on a cluster, the trainer's own ring standalone). This step's keys (stage_t.keys) are
 * appended after the update, so a step never sees its own keys among the negatives.
 *
 * Parameters: the encoder with timm names (a prefix of the flat vector), then MoCo v2's
 * head as the reference's encoder_q.fc names it here: projector.0 (Linear(D, mlp_dim)),
 * ReLU, projector.2 (Linear(mlp_dim, dim)) (head_spec_mlp2). The momentum network is a
 * second table of the same layout whose values are stage_t.ema. The head has no
 * BatchNorm, so MoCo's shuffling BN has nothing to do and a cluster step is exactly the
 * standalone step over the workers' batches.
 *
 * Decisions (ours): the loss is the reference's asymmetric one (one query view, one key
 * view: 4 encoder passes of work per sample where MoCo v3 does 8); the hidden width is
 * contrastive.mlp_dim (the reference uses the backbone's width: set mlp_dim = embed_dim
 * for that layout); before the queue has filled, only its valid rows are negatives
 * (the reference starts from random unit vectors instead, which carry no signal).
 *
 * Masking (ours, contrastive.mask_ratio > 0): the query view keeps int(L (1 - r)) patch
 * tokens chosen by the masking policy (mae.mask_policy, models/maskpolicy.h) from the
 * loader's noise; the key view stays whole. The adversarial policy scores a position by
 * the first-order loss increase of removing its token (maskpolicy_removal_gain), folded
 * in after each backward and saved with the stage (stage_t.mask_score). */
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
    head_t proj;
    encoder_acts_t ea;
    head_acts_t pa;
} net_t;

typedef struct {
    float tau;
    int B, D, dim, n, K;
    int L, Kq;               /* patches; query-view tokens (L, or the kept ones) */
    maskpolicy_t *policy;    /* contrastive.mask_ratio > 0 only */
    int *ids;                /* (B, L) ids_shuffle of the query view */
    float *mkeys, *gain, *counted; /* (B, L) */
    size_t img; /* floats per image */
    net_t on, mo;
    float *view[VIEWS];     /* (B, img) images of each view */
    float *feat, *featm;    /* (B, D) encoder features */
    float *q, *qnorm, *k, *knorm; /* (B, dim) normalised, (B) norms */
    float *prob;            /* (B, 1 + queue_cap) */
    float *dq, *dz, *dfeat, *dout;
    float *mem;
} moco2_t;

/* mask_ratio: the share of patch tokens this network's view loses (0: none); the
 * encoder's activations are sized for the kept ones. */
static int net_build(net_t *nt, const mimic_cfg_t *cfg, int B, float mask_ratio) {
    head_layer_t l[HEAD_LAYERS];
    int rc;
    if (!(nt->p = params_new())) return mimic_err(MIMIC_ENOMEM, "out of memory for MoCo v2");
    head_spec_mlp2(l, cfg->contrastive.mlp_dim, cfg->contrastive.dim);
    if ((rc = encoder_register(&nt->enc, nt->p, &cfg->model)) < 0 ||
        (rc = head_register(&nt->proj, nt->p, "projector", cfg->model.embed_dim, l,
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
        (rc = head_acts_alloc(&nt->pa, &nt->proj, B)) < 0)
        return rc;
    return 0;
}

static void net_free(net_t *nt) {
    head_acts_free(&nt->pa);
    encoder_acts_free(&nt->ea);
    head_free(&nt->proj);
    encoder_free(&nt->enc);
    params_destroy(&nt->p);
}

/* Every per-step buffer and the queue ring in one allocation. */
static int moco2_buffers(stage_t *s, moco2_t *mc) {
    size_t B = (size_t)mc->B, D = (size_t)mc->D, k = (size_t)mc->dim, K = (size_t)mc->K;
    size_t T = 1 + (size_t)mc->on.enc.L;
    size_t total = VIEWS * B * mc->img + 3 * B * D + 4 * B * k + 2 * B + B * (1 + K) + K * k +
                   B * T * D;
    if (mc->policy) total += 3 * B * (size_t)mc->L;
    if (mc->policy && !(mc->ids = malloc(B * (size_t)mc->L * sizeof(int))))
        return mimic_err(MIMIC_ENOMEM, "out of memory for MoCo v2's masking");
    if (!(mc->mem = mimic_alloc(total * sizeof(float))))
        return mimic_err(MIMIC_ENOMEM, "out of memory for MoCo v2's buffers and queue (%d x %d)",
                         mc->K, mc->dim);
    float *m = mc->mem;
#define TAKE(ptr, cnt)                                                                             \
    do {                                                                                           \
        (ptr) = m;                                                                                 \
        m += (cnt);                                                                                \
    } while (0)
    TAKE(mc->view[0], B * mc->img);
    TAKE(mc->view[1], B * mc->img);
    TAKE(mc->feat, B * D);
    TAKE(mc->featm, B * D);
    TAKE(mc->dfeat, B * D);
    TAKE(mc->q, B * k);
    TAKE(mc->k, B * k);
    TAKE(mc->dq, B * k);
    TAKE(mc->dz, B * k);
    TAKE(mc->qnorm, B);
    TAKE(mc->knorm, B);
    TAKE(mc->prob, B * (1 + K));
    TAKE(s->queue, K * k);
    TAKE(mc->dout, B * T * D);
    if (mc->policy) {
        TAKE(mc->mkeys, B * (size_t)mc->L);
        TAKE(mc->gain, B * (size_t)mc->L);
        TAKE(mc->counted, B * (size_t)mc->L);
    }
#undef TAKE
    mimic_zero(s->queue, K * k);
    return 0;
}

static int moco2_create(stage_t *s, const mimic_cfg_t *cfg, int batch) {
    moco2_t *mc = calloc(1, sizeof *mc);
    if (!mc) return mimic_err(MIMIC_ENOMEM, "out of memory for MoCo v2");
    s->impl = mc;
    if (cfg->contrastive.dim <= 0 || cfg->contrastive.mlp_dim <= 0 ||
        cfg->contrastive.queue_size <= 0 || !(cfg->contrastive.temperature > 0))
        return mimic_err(MIMIC_EINVAL, "config contrastive.dim, mlp_dim, queue_size and "
                                       "temperature must be positive");
    const float ratio = cfg->contrastive.mask_ratio;
    if (!(ratio >= 0.0f && ratio < 1.0f))
        return mimic_err(MIMIC_EINVAL, "config contrastive.mask_ratio: %g is not in [0, 1)",
                         (double)ratio);
    mc->tau = cfg->contrastive.temperature;
    mc->B = batch;
    mc->D = cfg->model.embed_dim;
    mc->dim = cfg->contrastive.dim;
    mc->K = cfg->contrastive.queue_size;
    mc->img = (size_t)cfg->model.in_chans * cfg->model.img_size * cfg->model.img_size;
    int rc;
    if ((rc = net_build(&mc->on, cfg, batch, ratio)) || (rc = net_build(&mc->mo, cfg, batch, 0.0f)))
        return rc;
    mc->L = mc->on.enc.L;
    mc->Kq = batch > 0 ? mc->on.ea.K : mc->L;
    if (ratio > 0.0f) {
        if ((rc = maskpolicy_new(&mc->policy, cfg, mc->L))) return rc;
        s->noise_len = mc->L; /* the loader's uniform noise, one per patch */
        if (mc->policy->policy == MASK_POLICY_ADVERSARIAL) { /* state worth saving */
            s->mask_score = mc->policy->score;
            s->mask_score_len = (size_t)mc->L;
        }
    }
    if (batch > 0 && (rc = moco2_buffers(s, mc))) return rc;
    s->p = mc->on.p;
    s->ema = mc->mo.p->w;
    s->views = VIEWS;
    s->queue_cap = (size_t)mc->K;
    s->queue_dim = (size_t)mc->dim;
    double encq = encoder_forward_flops(&mc->on.enc, mc->Kq),
           enck = encoder_forward_flops(&mc->on.enc, mc->L), proj = head_flops(&mc->on.proj);
    /* per sample: the query view forward + backward (3x), the key view forward, and the
     * logits against the queue (forward and backward) */
    s->flops_per_image = 3.0 * (encq + proj) + enck + proj + 3.0 * 2.0 * mc->K * mc->dim;
    return 0;
}

static void moco2_destroy(stage_t *s) {
    moco2_t *mc = s->impl;
    if (!mc) return;
    net_free(&mc->on);
    net_free(&mc->mo);
    mimic_free(mc->mem);
    free(mc->ids);
    maskpolicy_destroy(&mc->policy);
    s->mask_score = NULL;
    free(mc);
    s->impl = NULL;
    s->queue = NULL;
}

static void moco2_init(stage_t *s, uint64_t seed) {
    moco2_t *mc = s->impl;
    rng_t r;
    rng_seed(&r, seed);
    encoder_init(&mc->on.enc, mc->on.p, &r);
    head_init(&mc->on.proj, mc->on.p, &r);
    memcpy(s->ema, s->p->w, s->p->total * sizeof(float)); /* the momentum copy starts equal */
    if (s->queue) mimic_zero(s->queue, s->queue_cap * s->queue_dim);
    s->queue_keys = 0;
    if (mc->policy) /* scores start unseen: uniform masking */
        memset(mc->policy->score, 0, (size_t)mc->L * sizeof(float));
}

/* projector(encoder cls features) of n images of one view; ids (n, L): embed the first
 * ea.K patches of each row (NULL: all, in grid order). */
static const float *net_embed(net_t *nt, float *feat, const float *imgs, const int *ids, int n) {
    encoder_acts_resize(&nt->ea, n);
    encoder_forward(&nt->enc, nt->p, &nt->ea, imgs, ids, nt->enc.L);
    encoder_features(feat, &nt->ea, ENCODER_POOL_CLS);
    head_acts_resize(&nt->pa, n);
    return head_forward(&nt->proj, nt->p, &nt->pa, feat, HEAD_TRAIN);
}

static double moco2_forward(stage_t *s, const stage_input_t *in, int n) {
    moco2_t *mc = s->impl;
    if (n < 1 || n > mc->B) {
        mimic_err(MIMIC_EINVAL, "MoCo v2: a batch of %d samples (room for %d)", n, mc->B);
        return NAN;
    }
    if (mc->policy && !in->noise) {
        mimic_err(MIMIC_EINVAL, "MoCo v2: contrastive.mask_ratio > 0 needs the batch's noise");
        return NAN;
    }
    mc->n = n;
    if (mc->policy) { /* the query view's kept tokens: the first Kq of each row of ids */
        maskpolicy_keys(mc->policy, mc->mkeys, in->noise, n);
        maskpolicy_argsort(mc->ids, mc->mkeys, n, mc->L);
    }
    for (int i = 0; i < n; i++) /* sample i's views are rows 2i, 2i+1 */
        for (int v = 0; v < VIEWS; v++)
            memcpy(mc->view[v] + (size_t)i * mc->img, in->imgs + ((size_t)i * VIEWS + v) * mc->img,
                   mc->img * sizeof(float));
    const float *z = net_embed(&mc->on, mc->feat, mc->view[0], mc->ids, n);
    l2norm_forward(mc->q, mc->qnorm, z, n, mc->dim);
    const float *zk = net_embed(&mc->mo, mc->featm, mc->view[1], NULL, n);
    l2norm_forward(mc->k, mc->knorm, zk, n, mc->dim);
    s->keys = mc->k;
    s->nkeys = n;
    int rows = s->queue_keys < s->queue_cap ? (int)s->queue_keys : mc->K;
    return contrastive_queue_forward(mc->prob, mc->q, mc->k, s->queue, n, rows, mc->dim, mc->tau);
}

static void moco2_backward(stage_t *s) {
    moco2_t *mc = s->impl;
    net_t *on = &mc->on;
    const int n = mc->n, k = mc->dim;
    int rows = s->queue_keys < s->queue_cap ? (int)s->queue_keys : mc->K;
    mimic_zero(mc->dq, (size_t)n * k);
    mimic_zero(mc->dz, (size_t)n * k);
    mimic_zero(mc->dfeat, (size_t)n * mc->D);
    contrastive_queue_backward(mc->dq, mc->prob, mc->k, s->queue, n, rows, k, mc->tau, 1.0f);
    l2norm_backward(mc->dz, mc->dq, mc->q, mc->qnorm, n, k);
    head_backward(&on->proj, on->p, &on->pa, mc->dfeat, mc->dz);
    mimic_zero(mc->dout, (size_t)n * (1 + mc->Kq) * mc->D);
    encoder_features_backward(mc->dout, &on->ea, mc->dfeat, ENCODER_POOL_CLS);
    encoder_backward(&on->enc, on->p, &on->ea, mc->dout);
    if (mc->policy && mc->policy->policy == MASK_POLICY_ADVERSARIAL) {
        maskpolicy_removal_gain(mc->gain, mc->counted, on->ea.x0, on->ea.d_x0, mc->ids, n, mc->Kq,
                                mc->L, mc->D);
        maskpolicy_update(mc->policy, mc->gain, mc->counted, n);
    }
}

const stage_ops_t stage_mocov2_ops = {
    .name = "mocov2",
    .reads = STAGE_READ_WEIGHTS | STAGE_READ_EMA,
    .pushes = STAGE_PUSH_GRAD | STAGE_PUSH_KEYS,
    .server_state = STAGE_STATE_QUEUE,
    .key_views = 0,
    .create = moco2_create,
    .destroy = moco2_destroy,
    .init = moco2_init,
    .forward = moco2_forward,
    .backward = moco2_backward,
    .save = stage_save_params,
    .load = stage_load_params,
};
