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

/* Linear warmup over warmup steps to lr, then half-cosine to min_lr at total steps
 * (MAE's per-iteration schedule). step counts from 0. */
float adamw_lr(long step, long warmup, long total, float lr, float min_lr);

#endif
