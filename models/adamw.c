#include "adamw.h"

#include <math.h>

/* The step's constants for one tensor. */
typedef struct {
    float b1, b2, eps, decay, step, inv_sqrt_bc2, gscale;
} adam_k_t;

/* One element: updates *m and *v, returns the new w (torch.optim.AdamW's arithmetic). */
static inline float adam_one(const adam_k_t *k, float w, float g, float *m, float *v) {
    float gi = g * k->gscale;
    float mi = k->b1 * *m + (1.0f - k->b1) * gi;
    float vi = k->b2 * *v + (1.0f - k->b2) * gi * gi;
    *m = mi;
    *v = vi;
    return w * k->decay - k->step * mi / (sqrtf(vi) * k->inv_sqrt_bc2 + k->eps);
}

/* One EMA element. Written as one explicit fused multiply-add so that the fused update
 * pass and adamw_ema give the same bits whatever the compiler contracts elsewhere. */
static inline float ema_one(float ea, float eb, float e, float w) {
    return fmaf(ea, e, eb * w);
}

/* One tensor's slice: decay is uniform inside it, so the inner loop has no branch.
 * With ema, the same pass also moves the EMA towards the new w and writes the new w
 * to copy (or, when copy is NULL, a second time to w: cheaper than another loop).
 * Element-wise, so any thread count gives the same bits; small tensors stay serial. */
static void update_slice(const adamw_cfg_t *c, float *w, const float *g, float gscale, float *m,
                         float *v, size_t n, float lr, float wd, float bc1, float bc2, float *ema,
                         float mom, float *copy) {
    const adam_k_t k = {c->beta1, c->beta2,          c->eps, 1.0f - lr * wd,
                        lr / bc1, 1.0f / sqrtf(bc2), gscale};
    if (!ema) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++)
            w[i] = adam_one(&k, w[i], g[i], &m[i], &v[i]);
        return;
    }
    const float ea = mom, eb = 1.0f - mom;
    float *out = copy ? copy : w;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float wi = adam_one(&k, w[i], g[i], &m[i], &v[i]);
        w[i] = wi;
        out[i] = wi;
        ema[i] = ema_one(ea, eb, ema[i], wi);
    }
}

static void update_range(const adamw_cfg_t *c, const params_t *table, float *w, const float *g,
                         float gscale, float *m, float *v, size_t lo, size_t hi, float lr, long t,
                         float *ema, float mom, float *copy) {
    float bc1 = 1.0f - powf(c->beta1, (float)t), bc2 = 1.0f - powf(c->beta2, (float)t);
    for (int k = 0; k < table->n; k++) {
        const params_tensor_t *tt = &table->t[k];
        size_t a = tt->offset, b = tt->offset + tt->numel;
        if (b <= lo || a >= hi) continue;
        if (a < lo) a = lo;
        if (b > hi) b = hi;
        size_t off = a - lo;
        update_slice(c, w + off, g + off, gscale, m + off, v + off, b - a, lr,
                     tt->decay ? c->weight_decay : 0.0f, bc1, bc2, ema ? ema + off : NULL, mom,
                     copy ? copy + off : NULL);
    }
}

void adamw_update(const adamw_cfg_t *c, const params_t *table, float *w, const float *g,
                  float gscale, float *m, float *v, size_t lo, size_t hi, float lr, long t) {
    update_range(c, table, w, g, gscale, m, v, lo, hi, lr, t, NULL, 0.0f, NULL);
}

void adamw_update_ema(const adamw_cfg_t *c, const params_t *table, float *w, const float *g,
                      float gscale, float *m, float *v, size_t lo, size_t hi, float lr, long t,
                      float *ema, float mom, float *copy) {
    update_range(c, table, w, g, gscale, m, v, lo, hi, lr, t, ema, mom, copy);
}

float adamw_lr(long step, long warmup, long total, float lr, float min_lr) {
    if (step < warmup) return lr * (float)step / (float)warmup;
    if (total <= warmup) return lr;
    double progress = (double)(step - warmup) / (double)(total - warmup);
    if (progress > 1.0) progress = 1.0;
    return min_lr + (lr - min_lr) * 0.5f * (float)(1.0 + cos(M_PI * progress));
}

float adamw_ema_momentum(float m0, int cosine, long t, long total) {
    if (!cosine || total <= 0) return m0;
    if (t > total) t = total;
    if (t < 0) t = 0;
    double c = cos(M_PI * (double)t / (double)total);
    return (float)(1.0 - 0.5 * (1.0 + c) * (1.0 - (double)m0));
}

void adamw_ema(float *ema, const float *w, size_t n, float mom) {
    const float ea = mom, eb = 1.0f - mom;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        ema[i] = ema_one(ea, eb, ema[i], w[i]);
}
