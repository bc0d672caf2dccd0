/* The MIMIC stage: mix-supervised contrastive fine-tuning on a labelled set (Zhang et
 * al. 2024; METHODS.md). Per step the batch (one view per sample, its labels) is mixed
 * — mixup with lam ~ Beta(alpha, alpha), or CutMix with probability mimic.cutmix_p;
 * sample b paired with B-1-b as timm does — and
 *   h = encoder CLS features of the mixed images,
 *   L = CE(head(h), y~) + w_con * SupCon_w(z, tau),  z = l2norm(projector(h)),
 * with y~ the mixed labels (smoothed by mimic.smoothing for the CE) and the positive
 * weights w_ij = y^_i . y^_j of the mixed labels without smoothing (contrastive_weights_
 * soft), so a mixed sample is a partial positive of both its source classes.
 *
 * Parameters: the encoder with timm names (a prefix of the flat vector), then the
 * classifier as timm names it (head.weight (K, D), head.bias (K)), then SupCon's
 * projection head projector.0.* / projector.2.* (Linear(D,D), ReLU, Linear(D,
 * proj_dim); head.h). Reads the weights, pushes gradients, nothing on the servers.
 *
 * Decisions (ours):
 * - The mix of a batch is drawn from an rng seeded by train.seed and the masking noise
 *   of the batch's first sample (s->noise_len = 2: the loader draws it from the
 *   sample's stream (seed, epoch, index)), i.e. from the first sample of the batch.
 *   So a batch is mixed the same way on any worker, on any thread count and after a
 *   resume (the data cursor is in the checkpoint), with no counter to keep; each
 *   worker of a step mixes its own batch with its own lam. Repeated forwards of one
 *   batch (finite differences) see the same mix.
 * - Label smoothing is a calibration device of the classifier, so it enters the CE
 *   targets only; the contrastive weights use the unsmoothed mixed labels (with
 *   smoothing every pair would be a faint positive).
 * - mixup and CutMix share alpha; alpha 0 turns mixing off (lam 1, images as loaded).
 * - The classifier starts as MAE's fine-tuning does (weight ~ N(0, 2e-5) truncated at
 *   2 std, bias 0); the projector with torch's defaults; the encoder with MAE's init
 *   (a pre-trained encoder is loaded by the caller, not here).
 * - Layer-wise lr decay (0.65 in METHODS.md) is NOT implemented: every tensor gets the
 *   optimiser's one lr. */
#include "checkpoint.h"
#include "common.h"
#include "contrastive.h"
#include "encoder.h"
#include "head.h"
#include "l2norm.h"
#include "linear.h"
#include "mixup.h"
#include "rng.h"
#include "stage.h"
#include "xent.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { PROJ_LAYERS = 2, NOISE_LEN = 2 };
/* Tags the mix's rng stream apart from the loader's per-sample streams ("MI"). */
#define MIX_STREAM_TAG (0x4d49ull << 48)

typedef struct {
    mae_cfg_t model;
    mixup_cfg_t mix;
    uint64_t seed;
    float tau, w_con;
    int B, D, K, dim, n;
    params_t *p;
    encoder_t enc;
    int head_w, head_b; /* the classifier's tensors */
    head_t proj;
    encoder_acts_t ea;
    head_acts_t proj_a;
    int *pair; /* (B) the mix partner of each sample */
    float lam; /* of the last forward */
    double loss_ce, loss_con;
    float *x;                   /* (B, C, S, S) the mixed images */
    float *y, *yw;              /* (B, K) CE targets (smoothed); labels for the weights */
    float *feat;                /* (B, D) CLS features */
    float *prob;                /* (B, K) classifier logits, then their softmax */
    float *zn, *znorm;          /* (B, dim) normalised projections, (B) their norms */
    float *w, *cprob, *scratch; /* (B, B) positive weights, SupCon softmax, scratch */
    float *dlogits, *dzn, *dz, *dfeat, *dout;
    float *mem;
} mimic_t;

/* Carves every per-step buffer out of one allocation. */
static int mimic_buffers(mimic_t *mm) {
    size_t B = (size_t)mm->B, D = (size_t)mm->D, K = (size_t)mm->K, k = (size_t)mm->dim;
    size_t img = (size_t)mm->model.in_chans * mm->model.img_size * mm->model.img_size;
    size_t T = 1 + (size_t)mm->enc.L;
    float **take[] = {&mm->x,       &mm->y,     &mm->yw, &mm->feat,  &mm->prob,
                      &mm->zn,      &mm->znorm, &mm->w,  &mm->cprob, &mm->scratch,
                      &mm->dlogits, &mm->dzn,   &mm->dz, &mm->dfeat, &mm->dout};
    const size_t sizes[] = {B * img, B * K, B * K, B * D, B * K, B * k, B,        B * B,
                            B * B,   B * B, B * K, B * k, B * k, B * D, B * T * D};
    enum { NBUF = sizeof sizes / sizeof sizes[0] };
    _Static_assert(sizeof take / sizeof take[0] == NBUF, "a size for every buffer");
    size_t total = 0;
    for (int i = 0; i < NBUF; i++)
        total += sizes[i];
    if (!(mm->mem = mimic_alloc(total * sizeof(float))) || !(mm->pair = calloc(B, sizeof(int))))
        return mimic_err(MIMIC_ENOMEM, "out of memory for MIMIC's buffers");
    float *m = mm->mem;
    for (int i = 0; i < NBUF; i++) {
        *take[i] = m;
        m += sizes[i];
    }
    return 0;
}

/* The [mimic] keys; every message names its key. */
static int mimic_check_cfg(const mimic_cfg_t *cfg, int batch) {
    const float a = cfg->mimic.alpha, c = cfg->mimic.cutmix_p, sm = cfg->mimic.smoothing;
    if (cfg->mimic.num_classes <= 0)
        return mimic_err(MIMIC_EINVAL,
                         "config mimic.num_classes: %d, must be > 0 for train.stage=mimic (the "
                         "classes of the labelled set data.labels, labels 0..N-1)",
                         cfg->mimic.num_classes);
    if (!(a >= 0.0f && isfinite(a)))
        return mimic_err(MIMIC_EINVAL, "config mimic.alpha: %g, must be >= 0", a);
    if (!(c >= 0.0f && c <= 1.0f))
        return mimic_err(MIMIC_EINVAL, "config mimic.cutmix_p: %g, must be in [0, 1]", c);
    if (!(sm >= 0.0f && sm < 1.0f))
        return mimic_err(MIMIC_EINVAL, "config mimic.smoothing: %g, must be in [0, 1)", sm);
    if (!(cfg->mimic.w_con >= 0.0f && isfinite(cfg->mimic.w_con)))
        return mimic_err(MIMIC_EINVAL, "config mimic.w_con: %g, must be >= 0", cfg->mimic.w_con);
    if (!(cfg->mimic.tau > 0.0f))
        return mimic_err(MIMIC_EINVAL, "config mimic.tau: %g, must be > 0", cfg->mimic.tau);
    if (cfg->mimic.proj_dim <= 0)
        return mimic_err(MIMIC_EINVAL, "config mimic.proj_dim: %d, must be > 0",
                         cfg->mimic.proj_dim);
    /* batch 0 builds the parameters only (a server's table, the dump's first pass) */
    if (batch == 1 || batch < 0)
        return mimic_err(MIMIC_EINVAL, "config train.batch_size: MIMIC needs at least 2 "
                                       "(pairs to mix, anchors to contrast)");
    return 0;
}

static int mimic_build(mimic_t *mm, const mimic_cfg_t *cfg, int B) {
    head_layer_t pl[PROJ_LAYERS];
    const int64_t wshape[2] = {mm->K, mm->D}, bshape[1] = {mm->K};
    int rc;
    if (!(mm->p = params_new())) return mimic_err(MIMIC_ENOMEM, "out of memory for MIMIC");
    if ((rc = encoder_register(&mm->enc, mm->p, &cfg->model)) < 0 ||
        (rc = mm->head_w = params_add(mm->p, "head.weight", 2, wshape)) < 0 ||
        (rc = mm->head_b = params_add(mm->p, "head.bias", 1, bshape)) < 0 ||
        (rc = head_spec_mlp2(pl, mm->D, mm->dim)) < 0 ||
        (rc = head_register(&mm->proj, mm->p, "projector", mm->D, pl, PROJ_LAYERS)) < 0 ||
        (rc = params_finalize(mm->p)) < 0)
        return rc;
    if (B == 0) return 0; /* parameters only (a server's table, the dump's probe) */
    if ((rc = encoder_acts_alloc(&mm->ea, &mm->enc, B, mm->enc.L)) < 0 ||
        (rc = head_acts_alloc(&mm->proj_a, &mm->proj, B)) < 0)
        return rc;
    return 0;
}

static int mimic_create(stage_t *s, const mimic_cfg_t *cfg, int batch) {
    mimic_t *mm = calloc(1, sizeof *mm);
    if (!mm) return mimic_err(MIMIC_ENOMEM, "out of memory for MIMIC");
    s->impl = mm;
    int rc = mimic_check_cfg(cfg, batch);
    if (rc) return rc;
    mm->model = cfg->model;
    mm->seed = cfg->train.seed;
    mm->tau = cfg->mimic.tau;
    mm->w_con = cfg->mimic.w_con;
    mm->B = batch;
    mm->D = cfg->model.embed_dim;
    mm->K = cfg->mimic.num_classes;
    mm->dim = cfg->mimic.proj_dim;
    /* one alpha for both; cutmix_p 0 disables CutMix, 1 makes it the only mix */
    mm->mix = (mixup_cfg_t){.mixup_alpha = cfg->mimic.cutmix_p < 1.0f ? cfg->mimic.alpha : 0.0f,
                            .cutmix_alpha = cfg->mimic.cutmix_p > 0.0f ? cfg->mimic.alpha : 0.0f,
                            .switch_prob = cfg->mimic.cutmix_p,
                            .smoothing = cfg->mimic.smoothing};
    if ((rc = mimic_build(mm, cfg, batch)) || (batch > 0 && (rc = mimic_buffers(mm)))) return rc;
    s->p = mm->p;
    s->views = 1;
    s->wants_labels = 1;
    s->noise_len = NOISE_LEN;
    double enc = encoder_forward_flops(&mm->enc, mm->enc.L);
    /* forward + backward (3x) of the encoder, the classifier and the projector's two
     * Linears (D -> D -> dim) */
    s->flops_per_image = 3.0 * (enc + 2.0 * mm->D * (mm->K + mm->D + mm->dim));
    return 0;
}

static void mimic_destroy(stage_t *s) {
    mimic_t *mm = s->impl;
    if (!mm) return;
    head_acts_free(&mm->proj_a);
    encoder_acts_free(&mm->ea);
    head_free(&mm->proj);
    encoder_free(&mm->enc);
    params_destroy(&mm->p);
    mimic_free(mm->mem);
    free(mm->pair);
    free(mm);
    s->impl = NULL;
}

static void mimic_init(stage_t *s, uint64_t seed) {
    mimic_t *mm = s->impl;
    rng_t r;
    rng_seed(&r, seed);
    encoder_init(&mm->enc, mm->p, &r);
    float *w = params_w(mm->p, mm->head_w);
    for (size_t i = 0; i < mm->p->t[mm->head_w].numel; i++) {
        float v;
        do
            v = rng_normal(&r);
        while (fabsf(v) > 2.0f);
        w[i] = 2e-5f * v;
    }
    memset(params_w(mm->p, mm->head_b), 0, (size_t)mm->K * sizeof(float));
    head_init(&mm->proj, mm->p, &r);
}

/* The batch's labels, checked: a label outside [0, K) is refused with its position. */
static int check_labels(const mimic_t *mm, const int *labels, int n) {
    if (!labels)
        return mimic_err(MIMIC_EINVAL, "MIMIC: the batch has no labels (data.labels is empty?)");
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= mm->K)
            return mimic_err(MIMIC_EINVAL,
                             "MIMIC: sample %d of the batch has label %d, outside [0, %d) "
                             "(mimic.num_classes must cover data.labels; -1: no label)",
                             i, labels[i], mm->K);
    return 0;
}

/* Mixes n images and labels into mm->x, mm->y, mm->yw with the rng of the first
 * sample's noise (see the header). */
static void mimic_mix(mimic_t *mm, const stage_input_t *in, int n) {
    const mae_cfg_t *md = &mm->model;
    uint64_t a = (uint64_t)(in->noise[0] * 16777216.0f), b = (uint64_t)(in->noise[1] * 16777216.0f);
    rng_t r;
    rng_split(&r, mm->seed, MIX_STREAM_TAG | a << 24 | b);
    mixup_pair_flip(mm->pair, n);
    mm->lam = mixup_batch(mm->x, mm->y, in->imgs, in->labels, mm->pair, &mm->mix, &r, n,
                          md->in_chans, md->img_size, md->img_size, mm->K);
    mixup_labels(mm->yw, in->labels, mm->pair, mm->lam, n, mm->K, 0.0f);
}

static double mimic_forward(stage_t *s, const stage_input_t *in, int n) {
    mimic_t *mm = s->impl;
    const int D = mm->D, K = mm->K;
    if (n < 2 || n > mm->B) {
        mimic_err(MIMIC_EINVAL, "MIMIC: a batch of %d sample(s) (needs 2 to %d)", n, mm->B);
        return NAN;
    }
    if (!in->noise) {
        mimic_err(MIMIC_EINVAL, "MIMIC: the batch has no noise to seed its mix");
        return NAN;
    }
    if (check_labels(mm, in->labels, n)) return NAN;
    mm->n = n;
    mimic_mix(mm, in, n);
    encoder_acts_resize(&mm->ea, n);
    encoder_forward(&mm->enc, mm->p, &mm->ea, mm->x, NULL, mm->enc.L);
    encoder_features(mm->feat, &mm->ea, ENCODER_POOL_CLS);
    linear_forward(mm->prob, mm->feat, params_w(mm->p, mm->head_w), params_w(mm->p, mm->head_b), n,
                   D, K);
    mm->loss_ce = xent_soft_forward(mm->prob, mm->prob, mm->y, n, K);
    mm->loss_con = 0.0;
    if (mm->w_con > 0.0f) {
        head_acts_resize(&mm->proj_a, n);
        const float *z = head_forward(&mm->proj, mm->p, &mm->proj_a, mm->feat, HEAD_TRAIN);
        l2norm_forward(mm->zn, mm->znorm, z, n, mm->dim);
        contrastive_weights_soft(mm->w, mm->yw, n, K);
        mm->loss_con =
            contrastive_supcon_forward(mm->cprob, mm->zn, mm->w, n, mm->dim, mm->tau, 1.0f);
    }
    return mm->loss_ce + (double)mm->w_con * mm->loss_con;
}

static void mimic_backward(stage_t *s) {
    mimic_t *mm = s->impl;
    const int n = mm->n, D = mm->D, K = mm->K, k = mm->dim;
    mimic_zero(mm->dlogits, (size_t)n * K);
    mimic_zero(mm->dfeat, (size_t)n * D);
    xent_soft_backward(mm->dlogits, mm->prob, mm->y, n, K, 1.0f);
    linear_backward(mm->dfeat, params_g(mm->p, mm->head_w), params_g(mm->p, mm->head_b),
                    mm->dlogits, mm->feat, params_w(mm->p, mm->head_w), n, D, K);
    if (mm->w_con > 0.0f) {
        mimic_zero(mm->dzn, (size_t)n * k);
        mimic_zero(mm->dz, (size_t)n * k);
        contrastive_supcon_backward(mm->dzn, mm->scratch, mm->cprob, mm->w, mm->zn, n, k, mm->tau,
                                    1.0f, mm->w_con);
        l2norm_backward(mm->dz, mm->dzn, mm->zn, mm->znorm, n, k);
        head_backward(&mm->proj, mm->p, &mm->proj_a, mm->dfeat, mm->dz);
    }
    mimic_zero(mm->dout, (size_t)n * (1 + mm->enc.L) * D);
    encoder_features_backward(mm->dout, &mm->ea, mm->dfeat, ENCODER_POOL_CLS);
    encoder_backward(&mm->enc, mm->p, &mm->ea, mm->dout);
}

const stage_ops_t stage_mimic_ops = {
    .name = "mimic",
    .reads = STAGE_READ_WEIGHTS,
    .pushes = STAGE_PUSH_GRAD,
    .server_state = 0,
    .create = mimic_create,
    .destroy = mimic_destroy,
    .init = mimic_init,
    .forward = mimic_forward,
    .backward = mimic_backward,
    .save = stage_save_params,
    .load = stage_load_params,
};
