/* adamw — decoupled-weight-decay Adam (torch.optim.AdamW) over a range of the flat
 * parameter vector, and MAE's learning-rate schedule.
 *
 * adamw_update works on any key range [lo,hi) of the flat vector, so a parameter
 * server applies it to its shard and a single process to the whole vector; the table
 * tells which tensors are decayed. Moment buffers m, v are owned by the caller and
 * indexed like w (element lo is at index 0). */
#ifndef MIMIC_ADAMW_H
#define MIMIC_ADAMW_H

#include "params.h"

#include <stddef.h>

typedef struct {
    float beta1, beta2, eps, weight_decay;
} adamw_cfg_t;

/* One step (t >= 1 counts steps taken, including this one) on elements [lo,hi):
 * w, g, m, v point at element lo; the gradient used is g * gscale (a server passes
 * 1/sum of batch sizes here instead of rescaling its accumulator in a separate pass).
 * Matches torch.optim.AdamW. */
void adamw_update(const adamw_cfg_t *c, const params_t *table, float *w, const float *g,
                  float gscale, float *m, float *v, size_t lo, size_t hi, float lr, long t);

/* adamw_update, then in the same pass over memory: ema = mom * ema + (1 - mom) * w
 * with the new w (a momentum encoder), and copy = the new w when copy is not NULL (a
 * parameter server's reply snapshot). ema and copy are indexed like w. The same bits
 * as adamw_update followed by those two loops. */
void adamw_update_ema(const adamw_cfg_t *c, const params_t *table, float *w, const float *g,
                      float gscale, float *m, float *v, size_t lo, size_t hi, float lr, long t,
                      float *ema, float mom, float *copy);

/* The momentum encoder's m for the EMA that makes version t (1-based: the update after
 * optimiser step t-1) of a run of `total` steps: m0 constant, or with `cosine` MoCo
 * v3's schedule m_t = 1 - (1 + cos(pi t / total)) (1 - m0) / 2, rising to 1. */
float adamw_ema_momentum(float m0, int cosine, long t, long total);
/* ema = mom * ema + (1 - mom) * w over n floats: the same arithmetic, bit for bit, as
 * adamw_update_ema's fused pass, so a worker that keeps the momentum copy in lock-step
 * with the servers holds exactly their bits. */
void adamw_ema(float *ema, const float *w, size_t n, float mom);

/* Linear warmup over warmup steps to lr, then half-cosine to min_lr at total steps
 * (MAE's per-iteration schedule). step counts from 0. */
float adamw_lr(long step, long warmup, long total, float lr, float min_lr);

#endif
