/* mixup — Mixup and CutMix of a batch with soft labels, for MIMIC's fine-tuning stage.
 *
 * Each sample b is paired with pair[b] (timm pairs b with B-1-b: mixup_pair_flip; any
 * permutation works); mixup blends whole images, x~ = lam x_b + (1 - lam) x_pair[b];
 * CutMix pastes a box of x_pair[b] into x_b, the box drawn as timm's rand_bbox does and
 * lam corrected to the area actually kept; labels mix with the same lam. Every random
 * draw comes from the caller's rng_t, so a batch is reproducible from its seed. Lives
 * with the models because the soft labels it makes feed the losses (contrastive.h,
 * xent.h) directly. Images are (B,C,H,W) float. */
#ifndef MIMIC_MIXUP_H
#define MIMIC_MIXUP_H

#include "rng.h"

#include <stddef.h>

typedef struct {
    int y0, y1, x0, x1; /* rows [y0, y1), columns [x0, x1) */
} mixup_box_t;

typedef struct {
    float mixup_alpha;  /* Beta(alpha, alpha) for mixup; 0 disables mixup */
    float cutmix_alpha; /* Beta for CutMix; 0 disables CutMix */
    float switch_prob;  /* with both enabled, P(CutMix) (timm's switch_prob, 0.5) */
    float smoothing;    /* label smoothing (timm: off = s/K, on = 1 - s + s/K) */
} mixup_cfg_t;

/* A draw from Beta(alpha, alpha), alpha > 0 (Marsaglia-Tsang gammas). */
float mixup_beta(rng_t *rng, float alpha);
/* pair[b] = B - 1 - b, timm's x.flip(0). */
void mixup_pair_flip(int *pair, int B);

/* timm rand_bbox(margin 0): cut = int(side * sqrt(1 - lam)) per side, centre uniform in
 * the image, box clipped to it. Returns lam corrected to the box: 1 - area / (H W). */
float mixup_cutmix_box(mixup_box_t *box, rng_t *rng, int H, int W, float lam);

/* out (B, n) = lam * x_b + (1 - lam) * x_pair[b]; x (B, n), n = C*H*W. out != x. */
void mixup_images(float *out, const float *x, const int *pair, float lam, int B, size_t n);
/* out (B,C,H,W) = x_b with box taken from x_pair[b]; x (B,C,H,W). out != x. */
void mixup_cutmix_images(float *out, const float *x, const int *pair, const mixup_box_t *box, int B,
                         int C, int H, int W);
/* y (B,K) = lam * smooth(onehot(labels_b)) + (1 - lam) * smooth(onehot(labels_pair[b])). */
void mixup_labels(float *y, const int *labels, const int *pair, float lam, int B, int K,
                  float smoothing);

/* One batch as timm's Mixup(mode="batch") does it: CutMix with probability switch_prob
 * when both are enabled, lam ~ Beta, the box and corrected lam for CutMix, then images
 * and labels. out, x (B,C,H,W); y (B,K); labels (B); pair (B). Returns the lam used
 * (1 with both disabled: out = x, one-hot labels). */
float mixup_batch(float *out, float *y, const float *x, const int *labels, const int *pair,
                  const mixup_cfg_t *cfg, rng_t *rng, int B, int C, int H, int W, int K);

#endif
