/* kvstore.c — a server's key range, its AdamW/EMA updates and reply snapshots. */
#include "kvstore.h"

#include "common.h"
#include "keyrange.h"
#include "stage.h"
#include "wire.h"

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
    free(kv->pieces);
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

void kvstore_step(kvstore_t *kv, const void *g, int dtype) {
    if (dtype == PROTO_DT_BF16) { /* ASP/SSP keep no sum: acc is free to widen into */
        wire_from_bf16(kv->acc, g, kv->n);
        g = kv->acc;
    }
    step_scaled(kv, g, 1.0f);
}

/* Adds weight * g (n values of dtype) to the sum st over acc (n floats). */
static void sum_add(kvstore_sum_t *st, float *acc, size_t n, const void *gv, int dtype,
                    double weight) {
    const float *g = gv;
    const float b = (float)weight;
    if (dtype == PROTO_DT_BF16) { /* into acc at once; a borrowed f32 push first */
        if (st->held) {
            const float *h = st->held, hw = (float)st->held_weight;
            for (size_t i = 0; i < n; i++)
                acc[i] = hw * h[i];
            st->held = NULL;
        }
        wire_axpby_bf16(acc, st->count > 0 ? 1.0f : 0.0f, gv, b, n);
    } else if (st->count == 0) {
        /* the first push is only borrowed: with one worker the step reads it in place
         * and no accumulate pass is needed at all */
        st->held = g;
        st->held_weight = weight;
    } else if (st->held) { /* the second push: both go into acc in one pass */
        const float *h = st->held;
        const float a = (float)st->held_weight;
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++)
            acc[i] = a * h[i] + b * g[i];
        st->held = NULL;
    } else {
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++)
            acc[i] += b * g[i];
    }
    st->weight += weight;
    st->count++;
}

/* The sum's gradient source and the factor that turns it into the weighted mean. */
static const float *sum_grad(const kvstore_sum_t *st, const float *acc, float *gscale) {
    MIMIC_CHECK(st->count > 0 && st->weight > 0);
    if (st->held) {
        *gscale = (float)(st->held_weight / st->weight); /* 1 */
        return st->held;
    }
    /* the weighted mean's 1/sum(n) rides along in AdamW's read of the gradient */
    *gscale = (float)(1.0 / st->weight);
    return acc;
}

void kvstore_accumulate(kvstore_t *kv, const void *g, int dtype, double weight) {
    sum_add(&kv->sum, kv->acc, kv->n, g, dtype, weight);
}

void kvstore_drop_acc(kvstore_t *kv) {
    kv->sum = (kvstore_sum_t){0};
    for (size_t k = 0; k < kv->npieces; k++)
        kv->pieces[k] = (kvstore_sum_t){0};
}

void kvstore_step_mean(kvstore_t *kv) {
    float gscale;
    const float *g = sum_grad(&kv->sum, kv->acc, &gscale);
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

void kvstore_copy_out(const kvstore_t *kv, int which, int dtype, void *dst, size_t a, size_t b) {
    const float *src = (which == PROTO_WHICH_EMA ? kv->ema : kv->w) + a;
    if (dtype == PROTO_DT_BF16)
        wire_to_bf16(dst, src, b - a);
    else
        memcpy(dst, src, (b - a) * sizeof(float));
}

/* One slice [a, b) of the step to version + 1 with gradient g (indexed from a) * gscale:
 * AdamW, EMA and the snapshot copy in one pass over the slice; without the EMA (or for a
 * bf16 snapshot) adamw writes only w, and the slice (still in cache) is copied after. */
static void apply_slice(kvstore_t *kv, const float *g, float gscale, size_t a, size_t b,
                        kvstore_snap_t *snap) {
    double t0 = mimic_now();
    int fused = snap && snap->dtype == PROTO_DT_F32 && kv->ema;
    adamw_update_ema(&kv->opt, &kv->table, kv->w + a, g, gscale, kv->m + a, kv->v + a, kv->lo + a,
                     kv->lo + b, kvstore_lr(kv), (long)kv->version + 1,
                     kv->ema ? kv->ema + a : NULL, next_momentum(kv),
                     fused ? kvstore_snap_at(snap, a) : NULL);
    if (snap && !fused)
        kvstore_copy_out(kv, PROTO_WHICH_PARAMS, snap->dtype, kvstore_snap_at(snap, a), a, b);
    kv->t_update += mimic_now() - t0;
}

/* The PARAMS snapshot the slices of the next version are copied into, or NULL. */
static kvstore_snap_t *next_snap(kvstore_t *kv, int dtype) {
    kvstore_snap_t *snap = free_snap(kv, PROTO_WHICH_PARAMS);
    if (!snap) return NULL;
    snap->valid = 0;
    snap->dtype = dtype;
    return snap;
}

/* The step is complete: the new version, whose values snap holds. */
static void finish_step(kvstore_t *kv, kvstore_snap_t *snap) {
    kv->version++;
    kv->n_update++;
    if (snap) {
        snap->version = kv->version;
        snap->valid = 1;
    }
    kvstore_drop_acc(kv);
}

int kvstore_step_mean_sliced(kvstore_t *kv, size_t slice, int dtype, kvstore_slice_fn fn,
                             void *ctx) {
    MIMIC_CHECK(slice > 0);
    float gscale;
    const float *g = sum_grad(&kv->sum, kv->acc, &gscale);
    kvstore_snap_t *snap = next_snap(kv, dtype);
    if (!snap) return -1;
    for (size_t a = 0; a < kv->n; a += slice) {
        size_t b = a + slice < kv->n ? a + slice : kv->n;
        apply_slice(kv, g + a, gscale, a, b, snap);
        fn(ctx, snap, a, b, kv->version + 1);
    }
    finish_step(kv, snap);
    return 0;
}

int kvstore_piece_setup(kvstore_t *kv, size_t slice) {
    MIMIC_CHECK(slice > 0);
    if (kv->pieces) return kv->slice == slice ? 0 : MIMIC_EINVAL;
    kv->npieces = (kv->n + slice - 1) / slice;
    if (!(kv->pieces = calloc(kv->npieces, sizeof *kv->pieces)))
        return mimic_err(MIMIC_ENOMEM, "out of memory for %zu slices", kv->npieces);
    kv->slice = slice;
    return 0;
}

void kvstore_piece_range(const kvstore_t *kv, size_t k, size_t *a, size_t *b) {
    MIMIC_CHECK(k < kv->npieces);
    *a = k * kv->slice;
    *b = *a + kv->slice < kv->n ? *a + kv->slice : kv->n;
}

void kvstore_piece_accumulate(kvstore_t *kv, size_t k, const void *g, int dtype, double weight) {
    size_t a, b;
    kvstore_piece_range(kv, k, &a, &b);
    sum_add(&kv->pieces[k], kv->acc + a, b - a, g, dtype, weight);
}

kvstore_snap_t *kvstore_piece_snap(kvstore_t *kv, int dtype) {
    return next_snap(kv, dtype);
}

void kvstore_piece_apply(kvstore_t *kv, size_t k, kvstore_snap_t *snap) {
    size_t a, b;
    float gscale;
    kvstore_piece_range(kv, k, &a, &b);
    const float *g = sum_grad(&kv->pieces[k], kv->acc + a, &gscale);
    apply_slice(kv, g, gscale, a, b, snap);
    kv->pieces[k] = (kvstore_sum_t){0};
}

void kvstore_piece_finish(kvstore_t *kv, kvstore_snap_t *snap) {
    finish_step(kv, snap);
}

kvstore_snap_t *kvstore_snapshot(kvstore_t *kv, int which, int dtype) {
    MIMIC_CHECK(which == PROTO_WHICH_PARAMS || (which == PROTO_WHICH_EMA && kv->ema));
    kvstore_snap_t *pool = kv->snaps[which];
    for (int i = 0; i < KVSTORE_SNAP_MAX; i++)
        if (pool[i].valid && pool[i].version == kv->version && pool[i].dtype == dtype)
            return &pool[i];
    kvstore_snap_t *pick = free_snap(kv, which);
    if (!pick) {
        kv->n_snap_fallback++;
        return NULL;
    }
    double t0 = mimic_now();
    kvstore_copy_out(kv, which, dtype, pick->buf, 0, kv->n);
    pick->dtype = dtype;
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
