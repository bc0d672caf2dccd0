/* kvstore.c — a server's key range, its AdamW/EMA updates and reply snapshots. */
#include "kvstore.h"

#include "common.h"
#include "keyrange.h"
#include "stage.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Copies the tensor table of the model (no values): AdamW needs only offsets, sizes and
 * decay flags, and the full-size value buffers of the model are freed right away. */
static int copy_table(params_t *dst, const params_t *src) {
    memset(dst, 0, sizeof *dst);
    dst->t = malloc((size_t)src->n * sizeof *dst->t);
    if (!dst->t) return mimic_err(MIMIC_ENOMEM, "out of memory for the parameter table");
    memcpy(dst->t, src->t, (size_t)src->n * sizeof *dst->t);
    dst->n = dst->cap = src->n;
    dst->total = src->total;
    return 0;
}

int kvstore_new(kvstore_t **out, const mimic_cfg_t *cfg, int servers, int rank, int ema_on) {
    int rc;
    stage_t *model = NULL;
    *out = NULL;
    if (servers < 1 || rank < 0 || rank >= servers)
        return mimic_err(MIMIC_EINVAL, "server rank %d of %d servers is out of range", rank,
                         servers);
    kvstore_t *kv = calloc(1, sizeof *kv);
    if (!kv) return mimic_err(MIMIC_ENOMEM, "out of memory for the key-value store");
    /* the running stage's parameters, initialised as every worker and the standalone
     * trainer initialise them (a pure function of the seed) */
    if ((rc = stage_new(&model, cfg, 0))) goto fail;
    model->ops->init(model, cfg->train.seed);
    /* a pipeline stage starts from the previous stage's model (every server loads the
     * file; only the range is kept); a resume then overwrites it from the shard */
    if (cfg->train.init_from[0] && (rc = stage_init_from(model, cfg->train.init_from))) goto fail;
    if ((rc = copy_table(&kv->table, model->p))) goto fail;
    kv->total = model->p->total;
    keyrange_of(kv->total, servers, rank, &kv->lo, &kv->hi);
    kv->n = kv->hi - kv->lo;
    if (kv->n == 0) {
        rc = mimic_err(MIMIC_EINVAL, "server rank %d of %d gets no keys of %zu: too many servers",
                       rank, servers, kv->total);
        goto fail;
    }
    kv->ema_on = ema_on != 0;
    float **bufs[] = {&kv->w, &kv->m, &kv->v, &kv->acc, &kv->ema};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0] - !kv->ema_on; i++) {
        if (!(*bufs[i] = mimic_alloc(kv->n * sizeof(float)))) {
            rc = MIMIC_ENOMEM;
            goto fail;
        }
    }
    memcpy(kv->w, model->p->w + kv->lo, kv->n * sizeof(float));
    if (kv->ema) memcpy(kv->ema, kv->w, kv->n * sizeof(float));
    stage_destroy(&model);
    kv->opt =
        (adamw_cfg_t){cfg->train.beta1, cfg->train.beta2, cfg->train.eps, cfg->train.weight_decay};
    kv->base_lr = config_lr(cfg, cfg->train.batch_size * cfg->cluster.workers);
    kv->min_lr = cfg->train.min_lr;
    kv->warmup = cfg->train.warmup_steps;
    kv->steps = cfg->train.steps;
    kv->ema_m0 = cfg->contrastive.momentum;
    kv->ema_cosine = cfg->contrastive.momentum_cosine;
    *out = kv;
    return 0;
fail:
    stage_destroy(&model);
    kvstore_destroy(&kv);
    return rc;
}

void kvstore_destroy(kvstore_t **kvp) {
    if (!kvp || !*kvp) return;
    kvstore_t *kv = *kvp;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < KVSTORE_SNAP_MAX; i++) {
            kvstore_snap_t *s = &kv->snaps[k][i];
            if (atomic_load(&s->track.inflight) == 0)
                mimic_free(s->buf);
            else /* ZeroMQ still reads it: leaking beats a use-after-free */
                mimic_warn("kvstore: snapshot still held by %d sends, not freed",
                           atomic_load(&s->track.inflight));
        }
    free(kv->table.t);
    mimic_free(kv->w);
    mimic_free(kv->m);
    mimic_free(kv->v);
    mimic_free(kv->ema);
    mimic_free(kv->acc);
    kvstore_drop_acc(kv);
    free(kv);
    *kvp = NULL;
}

float kvstore_lr(const kvstore_t *kv) {
    return adamw_lr((long)kv->version, kv->warmup, kv->steps, kv->base_lr, kv->min_lr);
}

/* The momentum of the step that makes version kv->version + 1. */
static float next_momentum(const kvstore_t *kv) {
    return adamw_ema_momentum(kv->ema_m0, kv->ema_cosine, (long)kv->version + 1, kv->steps);
}

/* One AdamW step on g * gscale with the EMA update (when kept) in the same pass. */
static void step_scaled(kvstore_t *kv, const float *g, float gscale) {
    double t0 = mimic_now();
    adamw_update_ema(&kv->opt, &kv->table, kv->w, g, gscale, kv->m, kv->v, kv->lo, kv->hi,
                     kvstore_lr(kv), (long)kv->version + 1, kv->ema, next_momentum(kv), NULL);
    kv->version++;
    kv->t_update += mimic_now() - t0;
    kv->n_update++;
}

void kvstore_step(kvstore_t *kv, const float *g) {
    step_scaled(kv, g, 1.0f);
}

void kvstore_accumulate(kvstore_t *kv, const float *g, double weight) {
    float *acc = kv->acc;
    if (kv->acc_count == 0) {
        /* the step's first push is only borrowed: with one worker the step reads it in
         * place and no accumulate pass is needed at all */
        kv->held = g;
        kv->held_weight = weight;
    } else if (kv->held) { /* the second push: both go into acc in one pass */
        const float *h = kv->held;
        const float a = (float)kv->held_weight, b = (float)weight;
#pragma omp parallel for simd schedule(static) if (kv->n > 65536)
        for (size_t i = 0; i < kv->n; i++)
            acc[i] = a * h[i] + b * g[i];
        kv->held = NULL;
    } else {
        const float b = (float)weight;
#pragma omp parallel for simd schedule(static) if (kv->n > 65536)
        for (size_t i = 0; i < kv->n; i++)
            acc[i] += b * g[i];
    }
    kv->acc_weight += weight;
    kv->acc_count++;
}

void kvstore_drop_acc(kvstore_t *kv) {
    kv->held = NULL;
    kv->acc_weight = 0;
    kv->acc_count = 0;
}

/* The step's gradient source and the factor that turns it into the weighted mean. */
static const float *acc_grad(const kvstore_t *kv, float *gscale) {
    MIMIC_CHECK(kv->acc_count > 0 && kv->acc_weight > 0);
    if (kv->held) {
        *gscale = (float)(kv->held_weight / kv->acc_weight); /* 1 */
        return kv->held;
    }
    /* the weighted mean's 1/sum(n) rides along in AdamW's read of the gradient */
    *gscale = (float)(1.0 / kv->acc_weight);
    return kv->acc;
}

void kvstore_step_mean(kvstore_t *kv) {
    float gscale;
    const float *g = acc_grad(kv, &gscale);
    step_scaled(kv, g, gscale);
    kvstore_drop_acc(kv);
}

/* A PARAMS or EMA buffer no send is reading (allocated on first use), or NULL. */
static kvstore_snap_t *free_snap(kvstore_t *kv, int which) {
    kvstore_snap_t *pool = kv->snaps[which], *pick = NULL;
    for (int i = 0; i < KVSTORE_SNAP_MAX && !pick; i++)
        if (pool[i].buf && atomic_load(&pool[i].track.inflight) == 0) pick = &pool[i];
    for (int i = 0; i < KVSTORE_SNAP_MAX && !pick; i++)
        if (!pool[i].buf) pick = &pool[i];
    if (pick && !pick->buf && !(pick->buf = mimic_alloc(kv->n * sizeof(float)))) return NULL;
    return pick;
}

int kvstore_step_mean_sliced(kvstore_t *kv, size_t slice, kvstore_slice_fn fn, void *ctx) {
    MIMIC_CHECK(slice > 0);
    float gscale;
    const float *g = acc_grad(kv, &gscale);
    kvstore_snap_t *snap = free_snap(kv, PROTO_WHICH_PARAMS);
    if (!snap) return -1;
    snap->valid = 0;
    const float lr = kvstore_lr(kv), mom = next_momentum(kv);
    const long t = (long)kv->version + 1;
    for (size_t a = 0; a < kv->n; a += slice) {
        size_t b = a + slice < kv->n ? a + slice : kv->n;
        double t0 = mimic_now();
        /* AdamW, EMA and the snapshot copy in one pass over the slice; without the EMA
         * adamw writes only w, and the slice (still in cache) is copied after */
        adamw_update_ema(&kv->opt, &kv->table, kv->w + a, g + a, gscale, kv->m + a, kv->v + a,
                         kv->lo + a, kv->lo + b, lr, t, kv->ema ? kv->ema + a : NULL, mom,
                         snap->buf + a);
        if (!kv->ema) memcpy(snap->buf + a, kv->w + a, (b - a) * sizeof(float));
        kv->t_update += mimic_now() - t0;
        fn(ctx, snap, a, b, kv->version + 1);
    }
    kv->version++;
    kv->n_update++;
    snap->version = kv->version;
    snap->valid = 1;
    kvstore_drop_acc(kv);
    return 0;
}

kvstore_snap_t *kvstore_snapshot(kvstore_t *kv, int which) {
    MIMIC_CHECK(which == PROTO_WHICH_PARAMS || (which == PROTO_WHICH_EMA && kv->ema));
    kvstore_snap_t *pool = kv->snaps[which];
    for (int i = 0; i < KVSTORE_SNAP_MAX; i++)
        if (pool[i].valid && pool[i].version == kv->version) return &pool[i];
    kvstore_snap_t *pick = free_snap(kv, which);
    if (!pick) {
        kv->n_snap_fallback++;
        return NULL;
    }
    double t0 = mimic_now();
    memcpy(pick->buf, which == PROTO_WHICH_EMA ? kv->ema : kv->w, kv->n * sizeof(float));
    kv->t_snap += mimic_now() - t0;
    kv->n_snap++;
    pick->version = kv->version;
    pick->valid = 1;
    return pick;
}

void kvstore_invalidate(kvstore_t *kv) {
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < KVSTORE_SNAP_MAX; i++)
            kv->snaps[k][i].valid = 0;
}
