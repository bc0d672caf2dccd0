#include "mixup.h"

#include "common.h"

#include <math.h>
#include <string.h>

/* Gamma(a, 1) by Marsaglia and Tsang (2000); a < 1 through Gamma(a + 1) * U^(1/a). */
static double gamma_draw(rng_t *rng, double a) {
    if (a < 1.0) {
        double u = rng_uniform(rng);
        return gamma_draw(rng, a + 1.0) * pow(u, 1.0 / a);
    }
    double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = rng_normal(rng), v = 1.0 + c * x;
        if (v <= 0.0) continue;
        v = v * v * v;
        double u = rng_uniform(rng);
        if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
        if (u > 0.0 && log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v;
    }
}

float mixup_beta(rng_t *rng, float alpha) {
    MIMIC_CHECK(alpha > 0.0f);
    double a = gamma_draw(rng, alpha), b = gamma_draw(rng, alpha);
    return a + b > 0.0 ? (float)(a / (a + b)) : 0.5f;
}

void mixup_pair_flip(int *pair, int B) {
    for (int b = 0; b < B; b++)
        pair[b] = B - 1 - b;
}

static int clampi(int v, int lo, int hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

float mixup_cutmix_box(mixup_box_t *box, rng_t *rng, int H, int W, float lam) {
    double ratio = sqrt(1.0 - (double)lam);
    int cut_h = (int)(H * ratio), cut_w = (int)(W * ratio);
    int cy = (int)rng_below(rng, (uint64_t)H), cx = (int)rng_below(rng, (uint64_t)W);
    box->y0 = clampi(cy - cut_h / 2, 0, H);
    box->y1 = clampi(cy + cut_h / 2, 0, H);
    box->x0 = clampi(cx - cut_w / 2, 0, W);
    box->x1 = clampi(cx + cut_w / 2, 0, W);
    int area = (box->y1 - box->y0) * (box->x1 - box->x0);
    return (float)(1.0 - (double)area / ((double)H * W));
}

void mixup_images(float *out, const float *x, const int *pair, float lam, int B, size_t n) {
    MIMIC_CHECK(out != x);
    for (int b = 0; b < B; b++) {
        const float *xa = x + (size_t)b * n, *xb = x + (size_t)pair[b] * n;
        float *o = out + (size_t)b * n;
        for (size_t i = 0; i < n; i++)
            o[i] = lam * xa[i] + (1.0f - lam) * xb[i];
    }
}

void mixup_cutmix_images(float *out, const float *x, const int *pair, const mixup_box_t *box, int B,
                         int C, int H, int W) {
    MIMIC_CHECK(out != x);
    size_t plane = (size_t)H * W, n = (size_t)C * plane;
    size_t len = box->x1 > box->x0 ? (size_t)(box->x1 - box->x0) : 0;
    memcpy(out, x, (size_t)B * n * sizeof *out);
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            const float *src = x + (size_t)pair[b] * n + (size_t)c * plane;
            float *dst = out + (size_t)b * n + (size_t)c * plane;
            for (int y = box->y0; y < box->y1 && len; y++)
                memcpy(dst + (size_t)y * W + box->x0, src + (size_t)y * W + box->x0,
                       len * sizeof *dst);
        }
}

void mixup_labels(float *y, const int *labels, const int *pair, float lam, int B, int K,
                  float smoothing) {
    float off = smoothing / (float)K, on = 1.0f - smoothing + off;
    for (int b = 0; b < B; b++) {
        float *row = y + (size_t)b * K;
        for (int k = 0; k < K; k++)
            row[k] = off;
        row[labels[b]] += lam * (on - off);
        row[labels[pair[b]]] += (1.0f - lam) * (on - off);
    }
}

float mixup_batch(float *out, float *y, const float *x, const int *labels, const int *pair,
                  const mixup_cfg_t *cfg, rng_t *rng, int B, int C, int H, int W, int K) {
    int use_mix = cfg->mixup_alpha > 0.0f, use_cut = cfg->cutmix_alpha > 0.0f;
    float lam = 1.0f;
    if (use_cut && (!use_mix || rng_uniform(rng) < cfg->switch_prob)) {
        mixup_box_t box;
        lam = mixup_cutmix_box(&box, rng, H, W, mixup_beta(rng, cfg->cutmix_alpha));
        mixup_cutmix_images(out, x, pair, &box, B, C, H, W);
    } else if (use_mix) {
        lam = mixup_beta(rng, cfg->mixup_alpha);
        mixup_images(out, x, pair, lam, B, (size_t)C * H * W);
    } else {
        memcpy(out, x, (size_t)B * C * H * W * sizeof *out);
    }
    mixup_labels(y, labels, pair, lam, B, K, cfg->smoothing);
    return lam;
}
