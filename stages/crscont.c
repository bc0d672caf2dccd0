/* The CRS-CONT stage (Li et al., IEEE TIP 2022; code hangyu94/CRS-CONT; METHODS.md):
 * supervised contrastive training on coarse labels. Fine labels (data.labels) are mapped
 * to a few coarse groups by crscont.coarse_map; two views of each sample go through the
 * encoder, and with h = CLS features, z = l2norm(projector(h)), logits = head(h) (G
 * coarse classes), p = softmax(logits), u = l2norm(p):
 *   L = SupCon_a(z, coarse) + w_ce * CE(logits of view 1, coarse) + w_simclr * SimCLR(u),
 * where SupCon_a weighs each anchor by a[coarse group] (crscont.weights: the reference's
 * "weight vector", 0.5 for the negative group) so that the coarse constraint does not
 * flatten the fine structure inside a large group. Both contrastive terms run over the
 * 2n rows of both views, view-major (row v*n + i), through models/contrastive.h's one
 * SupCon (contrastive_supcon_anchor_*): SupCon_a with w = [same coarse label] and the
 * anchor weights, SimCLR with w = [same sample]; both scaled by tau / base_tau.
 *
 * Parameters: the encoder with timm names (a prefix of the flat vector), then the coarse
 * classifier head.weight (G, D), head.bias (G), then projector.0.* / projector.2.*
 * (Linear(D,D), ReLU, Linear(D, proj_dim); head.h) — MIMIC's layout. Reads the weights,
 * pushes gradients, nothing on the servers.
 *
 * Decisions:
 * - (reference) the SimCLR term is on the coarse classifier's probabilities, as
 *   hangyu94/CRS-CONT's pretrain.py does (criterion(F.normalize(softmax(c)))), not on z;
 *   the CE is on view 1's logits only, as there; SupCon anchor weights multiply each
 *   anchor's mean log-probability and the mean is over all 2n anchors (losses.py).
 * - (ours) the classifier reads the CLS feature h (the reference puts it on the
 *   normalised projection z); MIMIC's classifier sits there too and a linear probe of h
 *   is what evaluation measures.
 * - (ours) the classifier starts like MIMIC's (N(0, 2e-5) truncated at 2 std, bias 0),
 *   the projector with torch's defaults, the encoder with MAE's init (a pre-trained
 *   encoder is loaded by the caller).
 * - (ours) every group 0..G-1 of the map must hold a fine label (an empty group is a
 *   typo in the map, and its classifier row would only ever be pushed down). */
#include "common.h"
#include "contrastive.h"
#include "encoder.h"
#include "head.h"
#include "l2norm.h"
#include "linear.h"
#include "rng.h"
#include "stage.h"
#include "xent.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { PROJ_LAYERS = 2, VIEWS = 2, MAX_FINE = 64 };

typedef struct {
    float tau, scale, w_ce, w_simclr;
    int B, D, G, nfine, dim, n;
    size_t img;              /* floats per image */
    int coarse[MAX_FINE];    /* fine label -> coarse group */
    float gweight[MAX_FINE]; /* coarse group -> anchor weight */
    params_t *p;
    encoder_t enc;
    int head_w, head_b;
    head_t proj;
    encoder_acts_t ea;
    head_acts_t proj_a;
    int *lab2;            /* (2B) coarse label of each row */
    float *x;             /* (2B, img) both views, view-major */
    float *feat;          /* (2B, D) CLS features */
    float *logits, *prob; /* (2B, G) coarse logits; their softmax */
    float *onehot;        /* (B, G) CE targets of view 1 */
    float *u, *unorm;     /* (2B, G) normalised probabilities; (2B) their norms */
    float *zn, *znorm;    /* (2B, dim) normalised projections; (2B) norms */
    float *aw;            /* (2B) anchor weights */
    float *wl, *wv;       /* (2B, 2B) positives: same coarse label; same sample */
    float *cprob, *sprob; /* (2B, 2B) softmaxes of the SupCon and SimCLR terms */
    float *scratch;       /* (2B, 2B) */
    float *dlogits, *du, *dp, *dzn, *dz, *dfeat, *dout;
    float *mem;
    double loss_con, loss_ce, loss_simclr; /* of the last forward */
} crs_t;

/* Parses a comma list of up to cap numbers (ints when ints != NULL, else floats) from
 * the value of key; every message names the key. Returns the count or an error. */
static int parse_list(const char *key, const char *text, int *ints, float *floats, int cap) {
    int n = 0;
    const char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        if (n == cap)
            return mimic_err(MIMIC_EINVAL, "config %s: more than %d entries in '%s'", key, cap,
                             text);
        char *end;
        errno = 0;
        if (ints) {
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < 0 || v >= cap)
                return mimic_err(MIMIC_EINVAL,
                                 "config %s: entry %d of '%s' is not a group number in [0, %d)",
                                 key, n, text, cap);
            ints[n] = (int)v;
        } else {
            double v = strtod(p, &end);
            if (end == p || errno || !isfinite(v) || v < 0.0)
                return mimic_err(MIMIC_EINVAL,
                                 "config %s: entry %d of '%s' is not a finite weight >= 0", key, n,
                                 text);
            floats[n] = (float)v;
        }
        n++;
        p = end;
        while (*p == ' ')
            p++;
        if (*p == ',') {
            p++;
            if (!*p) break; /* a trailing comma: caught below as an empty entry */
        } else if (*p) {
            return mimic_err(MIMIC_EINVAL, "config %s: '%s' is not a comma-separated list", key,
                             text);
        }
    }
    size_t len = strlen(text);
    if (n == 0 || (len && text[len - 1] == ','))
        return mimic_err(MIMIC_EINVAL, "config %s: '%s' has an empty entry", key, text);
    return n;
}

/* The [crscont] keys and the map; every message names its key. */
static int crs_check_cfg(crs_t *cs, const mimic_cfg_t *cfg, int batch) {
    const float tau = cfg->crscont.tau, bt = cfg->crscont.base_tau;
    int rc = parse_list("crscont.coarse_map", cfg->crscont.coarse_map, cs->coarse, NULL, MAX_FINE);
    if (rc < 0) return rc;
    cs->nfine = rc;
    cs->G = 0;
    for (int i = 0; i < cs->nfine; i++)
        if (cs->coarse[i] + 1 > cs->G) cs->G = cs->coarse[i] + 1;
    for (int g = 0; g < cs->G; g++) {
        int used = 0;
        for (int i = 0; i < cs->nfine; i++)
            used |= cs->coarse[i] == g;
        if (!used)
            return mimic_err(MIMIC_EINVAL,
                             "config crscont.coarse_map: group %d of 0..%d holds no fine label "
                             "in '%s'",
                             g, cs->G - 1, cfg->crscont.coarse_map);
    }
    if (cs->G < 2)
        return mimic_err(MIMIC_EINVAL, "config crscont.coarse_map: '%s' has one group (needs 2+)",
                         cfg->crscont.coarse_map);
    if ((rc = parse_list("crscont.weights", cfg->crscont.weights, NULL, cs->gweight, MAX_FINE)) < 0)
        return rc;
    if (rc != cs->G)
        return mimic_err(MIMIC_EINVAL,
                         "config crscont.weights: %d weight(s) in '%s', but crscont.coarse_map "
                         "has %d groups",
                         rc, cfg->crscont.weights, cs->G);
    if (!(tau > 0.0f && isfinite(tau)))
        return mimic_err(MIMIC_EINVAL, "config crscont.tau: %g, must be > 0", tau);
    if (!(bt > 0.0f && isfinite(bt)))
        return mimic_err(MIMIC_EINVAL, "config crscont.base_tau: %g, must be > 0", bt);
    if (!(cfg->crscont.w_ce >= 0.0f && isfinite(cfg->crscont.w_ce)))
        return mimic_err(MIMIC_EINVAL, "config crscont.w_ce: %g, must be >= 0", cfg->crscont.w_ce);
    if (!(cfg->crscont.w_simclr >= 0.0f && isfinite(cfg->crscont.w_simclr)))
        return mimic_err(MIMIC_EINVAL, "config crscont.w_simclr: %g, must be >= 0",
                         cfg->crscont.w_simclr);
    if (cfg->crscont.proj_dim <= 0)
        return mimic_err(MIMIC_EINVAL, "config crscont.proj_dim: %d, must be > 0",
                         cfg->crscont.proj_dim);
    if (batch == 1)
        return mimic_err(MIMIC_EINVAL, "config train.batch_size: CRS-CONT needs at least 2");
    return 0;
}

/* Carves every per-step buffer out of one allocation. */
static int crs_buffers(crs_t *cs) {
    size_t R = VIEWS * (size_t)cs->B, D = (size_t)cs->D, G = (size_t)cs->G, k = (size_t)cs->dim;
    size_t T = 1 + (size_t)cs->enc.L;
    float **take[] = {&cs->x,     &cs->feat,  &cs->logits,  &cs->prob,    &cs->onehot, &cs->u,
                      &cs->unorm, &cs->zn,    &cs->znorm,   &cs->aw,      &cs->wl,     &cs->wv,
                      &cs->cprob, &cs->sprob, &cs->scratch, &cs->dlogits, &cs->du,     &cs->dp,
                      &cs->dzn,   &cs->dz,    &cs->dfeat,   &cs->dout};
    const size_t sizes[] = {R * cs->img, R * D, R * G, R * G, R / VIEWS * G, R * G,    R,     R * k,
                            R,           R,     R * R, R * R, R * R,         R * R,    R * R, R * G,
                            R * G,       R * G, R * k, R * k, R * D,         R * T * D};
    enum { NBUF = sizeof sizes / sizeof sizes[0] };
    _Static_assert(sizeof take / sizeof take[0] == NBUF, "a size for every buffer");
    size_t total = 0;
    for (int i = 0; i < NBUF; i++)
        total += sizes[i];
    if (!(cs->mem = mimic_alloc(total * sizeof(float))) || !(cs->lab2 = calloc(R, sizeof(int))))
        return mimic_err(MIMIC_ENOMEM, "out of memory for CRS-CONT's buffers");
    float *m = cs->mem;
    for (int i = 0; i < NBUF; i++) {
        *take[i] = m;
        m += sizes[i];
    }
    return 0;
}

static int crs_build(crs_t *cs, const mimic_cfg_t *cfg, int B) {
    head_layer_t pl[PROJ_LAYERS];
    const int64_t wshape[2] = {cs->G, cs->D}, bshape[1] = {cs->G};
    int rc;
    if (!(cs->p = params_new())) return mimic_err(MIMIC_ENOMEM, "out of memory for CRS-CONT");
    if ((rc = encoder_register(&cs->enc, cs->p, &cfg->model)) < 0 ||
        (rc = cs->head_w = params_add(cs->p, "head.weight", 2, wshape)) < 0 ||
        (rc = cs->head_b = params_add(cs->p, "head.bias", 1, bshape)) < 0 ||
        (rc = head_spec_mlp2(pl, cs->D, cs->dim)) < 0 ||
        (rc = head_register(&cs->proj, cs->p, "projector", cs->D, pl, PROJ_LAYERS)) < 0 ||
        (rc = params_finalize(cs->p)) < 0)
        return rc;
    if (B == 0) return 0; /* parameters only (a server's table, the dump's probe) */
    if ((rc = encoder_acts_alloc(&cs->ea, &cs->enc, VIEWS * B, cs->enc.L)) < 0 ||
        (rc = head_acts_alloc(&cs->proj_a, &cs->proj, VIEWS * B)) < 0)
        return rc;
    return 0;
}

static int crs_create(stage_t *s, const mimic_cfg_t *cfg, int batch) {
    crs_t *cs = calloc(1, sizeof *cs);
    if (!cs) return mimic_err(MIMIC_ENOMEM, "out of memory for CRS-CONT");
    s->impl = cs;
    int rc = crs_check_cfg(cs, cfg, batch);
    if (rc) return rc;
    cs->tau = cfg->crscont.tau;
    cs->scale = cfg->crscont.tau / cfg->crscont.base_tau;
    cs->w_ce = cfg->crscont.w_ce;
    cs->w_simclr = cfg->crscont.w_simclr;
    cs->B = batch;
    cs->D = cfg->model.embed_dim;
    cs->dim = cfg->crscont.proj_dim;
    cs->img = (size_t)cfg->model.in_chans * cfg->model.img_size * cfg->model.img_size;
    if ((rc = crs_build(cs, cfg, batch)) || (batch > 0 && (rc = crs_buffers(cs)))) return rc;
    s->p = cs->p;
    s->views = VIEWS;
    s->wants_labels = 1;
    double enc = encoder_forward_flops(&cs->enc, cs->enc.L);
    /* two views, forward + backward (3x) of the encoder, the classifier and the
     * projector's two Linears (D -> D -> dim) */
    s->flops_per_image = VIEWS * 3.0 * (enc + 2.0 * cs->D * (cs->G + cs->D + cs->dim));
    return 0;
}

static void crs_destroy(stage_t *s) {
    crs_t *cs = s->impl;
    if (!cs) return;
    head_acts_free(&cs->proj_a);
    encoder_acts_free(&cs->ea);
    head_free(&cs->proj);
    encoder_free(&cs->enc);
    params_destroy(&cs->p);
    mimic_free(cs->mem);
    free(cs->lab2);
    free(cs);
    s->impl = NULL;
}

static void crs_init(stage_t *s, uint64_t seed) {
    crs_t *cs = s->impl;
    rng_t r;
    rng_seed(&r, seed);
    encoder_init(&cs->enc, cs->p, &r);
    float *w = params_w(cs->p, cs->head_w);
    for (size_t i = 0; i < cs->p->t[cs->head_w].numel; i++) {
        float v;
        do
            v = rng_normal(&r);
        while (fabsf(v) > 2.0f);
        w[i] = 2e-5f * v;
    }
    memset(params_w(cs->p, cs->head_b), 0, (size_t)cs->G * sizeof(float));
    head_init(&cs->proj, cs->p, &r);
}

/* The batch's coarse labels per row (view-major) and the anchor weights; a fine label
 * outside the map is refused with its position. */
static int crs_labels(crs_t *cs, const int *labels, int n) {
    if (!labels)
        return mimic_err(MIMIC_EINVAL, "CRS-CONT: the batch has no labels (data.labels is empty?)");
    for (int i = 0; i < n; i++) {
        if (labels[i] < 0 || labels[i] >= cs->nfine)
            return mimic_err(MIMIC_EINVAL,
                             "CRS-CONT: sample %d of the batch has label %d, outside the %d "
                             "fine labels of crscont.coarse_map",
                             i, labels[i], cs->nfine);
        int g = cs->coarse[labels[i]];
        for (int v = 0; v < VIEWS; v++) {
            cs->lab2[v * n + i] = g;
            cs->aw[v * n + i] = cs->gweight[g];
        }
        for (int k = 0; k < cs->G; k++)
            cs->onehot[(size_t)i * cs->G + k] = k == g ? 1.0f : 0.0f;
    }
    return 0;
}

static double crs_forward(stage_t *s, const stage_input_t *in, int n) {
    crs_t *cs = s->impl;
    const int D = cs->D, G = cs->G, R = VIEWS * n;
    if (n < 2 || n > cs->B) {
        mimic_err(MIMIC_EINVAL, "CRS-CONT: a batch of %d sample(s) (needs 2 to %d)", n, cs->B);
        return NAN;
    }
    if (crs_labels(cs, in->labels, n)) return NAN;
    cs->n = n;
    for (int i = 0; i < n; i++) /* sample i's views are rows 2i, 2i+1: to rows i, n + i */
        for (int v = 0; v < VIEWS; v++)
            memcpy(cs->x + ((size_t)v * n + i) * cs->img,
                   in->imgs + ((size_t)i * VIEWS + v) * cs->img, cs->img * sizeof(float));
    encoder_acts_resize(&cs->ea, R);
    encoder_forward(&cs->enc, cs->p, &cs->ea, cs->x, NULL, cs->enc.L);
    encoder_features(cs->feat, &cs->ea, ENCODER_POOL_CLS);
    linear_forward(cs->logits, cs->feat, params_w(cs->p, cs->head_w), params_w(cs->p, cs->head_b),
                   R, D, G);
    /* the CE's softmax of view 1 is the SimCLR term's too; view 2's rows are added */
    cs->loss_ce = xent_soft_forward(cs->prob, cs->logits, cs->onehot, n, G);
    for (int r = n; r < R; r++) {
        memcpy(cs->prob + (size_t)r * G, cs->logits + (size_t)r * G, G * sizeof(float));
        xent_softmax_row(cs->prob + (size_t)r * G, G);
    }
    head_acts_resize(&cs->proj_a, R);
    const float *z = head_forward(&cs->proj, cs->p, &cs->proj_a, cs->feat, HEAD_TRAIN);
    l2norm_forward(cs->zn, cs->znorm, z, R, cs->dim);
    contrastive_weights_labels(cs->wl, cs->lab2, R);
    cs->loss_con = contrastive_supcon_anchor_forward(cs->cprob, cs->zn, cs->wl, cs->aw, R, cs->dim,
                                                     cs->tau, cs->scale);
    cs->loss_simclr = 0.0;
    if (cs->w_simclr > 0.0f) {
        l2norm_forward(cs->u, cs->unorm, cs->prob, R, G);
        contrastive_weights_views(cs->wv, n, VIEWS);
        cs->loss_simclr =
            contrastive_supcon_forward(cs->sprob, cs->u, cs->wv, R, G, cs->tau, cs->scale);
    }
    return cs->loss_con + (double)cs->w_ce * cs->loss_ce + (double)cs->w_simclr * cs->loss_simclr;
}

static void crs_backward(stage_t *s) {
    crs_t *cs = s->impl;
    const int n = cs->n, R = VIEWS * n, D = cs->D, G = cs->G, k = cs->dim;
    mimic_zero(cs->dlogits, (size_t)R * G);
    mimic_zero(cs->dfeat, (size_t)R * D);
    if (cs->w_ce > 0.0f) /* view 1's rows only */
        xent_soft_backward(cs->dlogits, cs->prob, cs->onehot, n, G, cs->w_ce);
    if (cs->w_simclr > 0.0f) {
        mimic_zero(cs->du, (size_t)R * G);
        mimic_zero(cs->dp, (size_t)R * G);
        contrastive_supcon_backward(cs->du, cs->scratch, cs->sprob, cs->wv, cs->u, R, G, cs->tau,
                                    cs->scale, cs->w_simclr);
        l2norm_backward(cs->dp, cs->du, cs->u, cs->unorm, R, G);
        xent_softmax_backward(cs->dlogits, cs->prob, cs->dp, R, G);
    }
    linear_backward(cs->dfeat, params_g(cs->p, cs->head_w), params_g(cs->p, cs->head_b),
                    cs->dlogits, cs->feat, params_w(cs->p, cs->head_w), R, D, G);
    mimic_zero(cs->dzn, (size_t)R * k);
    mimic_zero(cs->dz, (size_t)R * k);
    contrastive_supcon_anchor_backward(cs->dzn, cs->scratch, cs->cprob, cs->wl, cs->aw, cs->zn, R,
                                       k, cs->tau, cs->scale, 1.0f);
    l2norm_backward(cs->dz, cs->dzn, cs->zn, cs->znorm, R, k);
    head_backward(&cs->proj, cs->p, &cs->proj_a, cs->dfeat, cs->dz);
    mimic_zero(cs->dout, (size_t)R * (1 + cs->enc.L) * D);
    encoder_features_backward(cs->dout, &cs->ea, cs->dfeat, ENCODER_POOL_CLS);
    encoder_backward(&cs->enc, cs->p, &cs->ea, cs->dout);
}

const stage_ops_t stage_crscont_ops = {
    .name = "crscont",
    .reads = STAGE_READ_WEIGHTS,
    .pushes = STAGE_PUSH_GRAD,
    .server_state = 0,
    .create = crs_create,
    .destroy = crs_destroy,
    .init = crs_init,
    .forward = crs_forward,
    .backward = crs_backward,
    .save = stage_save_params,
    .load = stage_load_params,
};
