/* kvstore — what one parameter server holds: its key range [lo, hi) of the running
 * stage's flat parameter vector (values w, AdamW moments m and v, an EMA copy), the gradient
 * accumulator of the BSP step in progress, and read-only snapshots for PULL replies.
 *
 * kvstore_new builds the running stage's parameters (stage_new with batch 0) and runs
 * its init(train.seed) — a pure function of the seed, so every server starts exactly
 * where the standalone trainer starts — and keeps
 * only the range plus the tensor table (AdamW needs each tensor's decay flag). Every
 * update is one AdamW step, on one gradient (ASP/SSP: kvstore_step) or on the weighted
 * mean of the accumulated ones (BSP: kvstore_accumulate, then kvstore_step_mean); it
 * bumps the version and then, when the store keeps one (ema_on), the momentum copy:
 * ema = m_t * ema + (1 - m_t) * w, with m_t of adamw_ema_momentum (MoCo v3's cosine
 * schedule towards 1, or a constant m0). Without it, ema is NULL and costs nothing.
 *
 * Zero-copy replies: w changes at the next update while ZeroMQ may still be sending an
 * older reply, so replies never point at w. kvstore_snapshot copies w (or ema) once per
 * version into a pooled buffer shared by every reply of that version; each send holds
 * the buffer's tracker and ZeroMQ releases it, and a buffer is reused only when no send
 * holds it. All calls come from the server's one thread. */
#ifndef MIMIC_KVSTORE_H
#define MIMIC_KVSTORE_H

#include "adamw.h"
#include "config.h"
#include "params.h"
#include "proto.h"

#include <stddef.h>
#include <stdint.h>

/* Snapshots per kind (params, EMA). More are needed only when some peer is so slow
 * that ZeroMQ still holds replies of KVSTORE_SNAP_MAX older versions. */
#define KVSTORE_SNAP_MAX 4

typedef struct {
    void *buf; /* n values of dtype: w or ema of the range at `version` (room for f32) */
    int dtype; /* PROTO_DT_F32, or PROTO_DT_BF16 (rounded copies, cluster.wire=bf16) */
    uint64_t version;
    int valid;
    proto_track_t track; /* sends still reading buf */
} kvstore_snap_t;

/* A sum of pushed gradients over a range (BSP): sum(batch * g) and sum(batch). The first
 * f32 push is borrowed, not copied, while it is the only one (`held`). */
typedef struct {
    const float *held; /* the first push, borrowed until a second comes; else NULL */
    double held_weight;
    double weight; /* sum of batch sizes pushed */
    int count;     /* pushes */
} kvstore_sum_t;

typedef struct {
    params_t table; /* the model's tensor table, no values (decay flags for AdamW) */
    size_t total;   /* floats in the whole model */
    size_t lo, hi, n;
    uint64_t version;  /* optimiser steps applied to this range */
    float *w, *m, *v;  /* n floats each; element lo is at index 0 */
    float *ema;        /* n floats when ema_on, else NULL */
    int ema_on;        /* the momentum encoder is kept (cluster.ema) */
    int ema_cosine;    /* contrastive.momentum_cosine */
    float ema_m0;      /* contrastive.momentum */
    float *acc;        /* BSP: sum of batch * gradient for the current version */
    kvstore_sum_t sum; /* BSP: the whole-range pushes summed into acc */
    /* BSP, sliced pushes (kvstore_piece_*): slice k = [k*slice, min((k+1)*slice, n)) of
     * the range has its own sum, in acc's elements of the slice */
    kvstore_sum_t *pieces;
    size_t slice, npieces;
    adamw_cfg_t opt;
    float base_lr, min_lr;
    long warmup, steps;
    kvstore_snap_t snaps[2][KVSTORE_SNAP_MAX]; /* [PROTO_WHICH_PARAMS or _EMA] */
    /* measurements, logged at exit: time in the updates (AdamW, and the EMA when on)
     * and in snapshot copies */
    double t_update, t_snap;
    long n_update, n_snap, n_snap_fallback;
} kvstore_t;

/* Builds the range [lo, hi) = keyrange_of(total, servers, rank) of the model in
 * cfg, initialised from cfg->train.seed, version 0. The learning rate is
 * config_lr(cfg, train.batch_size * cluster.workers) on adamw_lr's schedule. With
 * ema_on the store keeps the momentum copy (starting equal to w) with m0 =
 * contrastive.momentum, the cosine schedule when contrastive.momentum_cosine, over
 * T = train.steps. */
int kvstore_new(kvstore_t **out, const mimic_cfg_t *cfg, int servers, int rank, int ema_on);
/* Frees the store. Snapshots still held by ZeroMQ are leaked, never freed under it. */
void kvstore_destroy(kvstore_t **kv);

/* The learning rate of the next step (version -> version + 1). */
float kvstore_lr(const kvstore_t *kv);
/* One AdamW step with gradient g (n values of dtype: PROTO_DT_F32 or PROTO_DT_BF16,
 * widened to f32), then version++ and the EMA update. */
void kvstore_step(kvstore_t *kv, const void *g, int dtype);
/* BSP: adds weight * g (n values of dtype, as above) to the step's f32 sum. The first
 * f32 push's g is borrowed, not copied, and read in place by the step when no other
 * push comes; the second one folds both into acc in one pass (a bf16 push goes into
 * acc at once). No allocation. The caller keeps a borrowed g valid and unchanged while
 * kvstore_borrows: until the second push, the step or kvstore_drop_acc (the
 * server keeps the ZeroMQ message it arrived in). */
void kvstore_accumulate(kvstore_t *kv, const void *g, int dtype, double weight);
/* Whether a borrowed first push is still read (the caller must keep it). */
static inline int kvstore_borrows(const kvstore_t *kv) {
    return kv->sum.held != NULL;
}
/* BSP: one step with the weighted mean of the pushes, then clears the sum. */
void kvstore_step_mean(kvstore_t *kv);
/* Forgets the pushes summed so far (after a resume; at exit). */
void kvstore_drop_acc(kvstore_t *kv);

/* The buffer holding w (which = PROTO_WHICH_PARAMS) or ema (PROTO_WHICH_EMA, only when
 * ema_on) at the current version in dtype (f32, or bf16 rounded), made at most once per
 * version and dtype. NULL when every pooled buffer is still held by ZeroMQ (or memory
 * ran out): the caller then copies per reply (kvstore_copy_out). */
kvstore_snap_t *kvstore_snapshot(kvstore_t *kv, int which, int dtype);
/* Values [a, b) (offsets in the range) of w or ema in dtype into dst. */
void kvstore_copy_out(const kvstore_t *kv, int which, int dtype, void *dst, size_t a, size_t b);
/* Where element a of a snapshot's buffer is. */
static inline void *kvstore_snap_at(const kvstore_snap_t *snap, size_t a) {
    return (char *)snap->buf + a * (snap->dtype == PROTO_DT_BF16 ? 2 : 4);
}
/* Called by kvstore_step_mean_sliced once elements [a, b) (offsets in the range) of
 * version `version` are final; snap->buf + a holds them. */
typedef void (*kvstore_slice_fn)(void *ctx, kvstore_snap_t *snap, size_t a, size_t b,
                                 uint64_t version);
/* kvstore_step_mean in slices of `slice` floats: after each slice's AdamW (and EMA), its
 * new values are copied into the PARAMS snapshot (in dtype) of the new version and fn
 * is called, so replies can go out while the next slice is computed (ZeroMQ sends from
 * its I/O thread). The same bits as kvstore_step_mean. Returns 0, or -1 when no
 * snapshot buffer is free (nothing was done: fall back to kvstore_step_mean). */
int kvstore_step_mean_sliced(kvstore_t *kv, size_t slice, int dtype, kvstore_slice_fn fn,
                             void *ctx);
/* BSP in slices (cluster.slice_floats): workers push each slice of the range as its own
 * piece, and a slice is applied as soon as every worker's piece of it is in, so the
 * update of slice k runs while later pieces still arrive and earlier slices' replies
 * go out. Same bits as the whole-range step. kvstore_piece_setup sizes the slices
 * (once; 0 or MIMIC_ENOMEM); kvstore_piece_accumulate adds a piece to slice k's sum
 * (borrowing the first f32 piece: the caller keeps it valid until the slice is applied
 * or the next piece of it comes, i.e. while pieces[k].held is not NULL);
 * kvstore_piece_apply runs AdamW (and the EMA) on slice k with its mean and writes its
 * new values into snap (kvstore_piece_snap: the PARAMS snapshot of the new version in
 * dtype, taken before the first slice; NULL when none is free: then no copy is made);
 * kvstore_piece_finish, after every slice was
 * applied, makes the new version (version++, snap valid). Between the first apply and
 * the finish w holds a mix of two versions: no reply or checkpoint may read it. */
int kvstore_piece_setup(kvstore_t *kv, size_t slice);
void kvstore_piece_range(const kvstore_t *kv, size_t k, size_t *a, size_t *b);
void kvstore_piece_accumulate(kvstore_t *kv, size_t k, const void *g, int dtype, double weight);
kvstore_snap_t *kvstore_piece_snap(kvstore_t *kv, int dtype);
void kvstore_piece_apply(kvstore_t *kv, size_t k, kvstore_snap_t *snap);
void kvstore_piece_finish(kvstore_t *kv, kvstore_snap_t *snap);

/* Drops the snapshots' validity (after w/ema were replaced, e.g. by a resume). */
void kvstore_invalidate(kvstore_t *kv);

#endif
