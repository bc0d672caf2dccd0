#include "adamw.h"

#include <math.h>

/* One tensor's slice: decay is uniform inside it, so the inner loop has no branch. */
static void update_slice(const adamw_cfg_t *c, float *w, const float *g, float gscale, float *m,
                         float *v, size_t n, float lr, float wd, float bc1, float bc2) {
    const float b1 = c->beta1, b2 = c->beta2, eps = c->eps;
    const float decay = 1.0f - lr * wd, step = lr / bc1, inv_sqrt_bc2 = 1.0f / sqrtf(bc2);
    /* element-wise, so any thread count gives the same bits; small tensors stay serial */
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gscale;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * decay - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}

void adamw_update(const adamw_cfg_t *c, const params_t *table, float *w, const float *g,
                  float gscale, float *m, float *v, size_t lo, size_t hi, float lr, long t) {
    float bc1 = 1.0f - powf(c->beta1, (float)t), bc2 = 1.0f - powf(c->beta2, (float)t);
    for (int k = 0; k < table->n; k++) {
        const params_tensor_t *tt = &table->t[k];
        size_t a = tt->offset, b = tt->offset + tt->numel;
        if (b <= lo || a >= hi) continue;
        if (a < lo) a = lo;
        if (b > hi) b = hi;
        size_t off = a - lo;
        update_slice(c, w + off, g + off, gscale, m + off, v + off, b - a, lr,
                     tt->decay ? c->weight_decay : 0.0f, bc1, bc2);
    }
}

float adamw_lr(long step, long warmup, long total, float lr, float min_lr) {
    if (step < warmup) return lr * (float)step / (float)warmup;
    if (total <= warmup) return lr;
    double progress = (double)(step - warmup) / (double)(total - warmup);
    if (progress > 1.0) progress = 1.0;
    return min_lr + (lr - min_lr) * 0.5f * (float)(1.0 + cos(M_PI * progress));
}
