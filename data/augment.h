/* augment — 8-bit images and the per-sample transforms of the training data path.
 *
 * image_u8 is an interleaved HWC byte image that owns its buffer and grows it in place,
 * so one image can be reused for every sample a worker decodes (dataset_get fills it);
 * image_u8_free releases it. augment_rrc is torchvision's RandomResizedCrop +
 * RandomHorizontalFlip + ToTensor + Normalize fused into one pass that writes CHW floats;
 * augment_resize is the deterministic evaluation transform. Resizing is bilinear with
 * PIL/torchvision antialiasing (the filter widens when shrinking). All randomness comes
 * from the caller's rng_t, so a (seed, sample) pair always gives the same crop. */
#ifndef MIMIC_AUGMENT_H
#define MIMIC_AUGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

typedef struct image_u8 {
    int w, h, c; /* width, height, channels (1 gray or 3 RGB) */
    size_t cap;  /* bytes allocated at px */
    uint8_t *px; /* h x w x c bytes, row-major, channels interleaved */
} image_u8;

/* Sets the size of img to w x h x c, growing px with realloc when needed (start from a
 * zeroed image_u8). Pixel contents are unspecified afterwards. Returns 0 or MIMIC_E*. */
int image_u8_reserve(image_u8 *img, int w, int h, int c);
/* Frees the buffer and zeroes the struct (safe to call twice). */
void image_u8_free(image_u8 *img);

/* out (out_channels, S, S) float CHW; in any size, c = 1 or 3.
 * Picks a crop like torchvision RandomResizedCrop(S, scale=(scale_lo, scale_hi),
 * ratio=(ratio_lo, ratio_hi)): up to 10 draws of area fraction and log-uniform aspect
 * ratio, else a central crop clamped to the ratio range. Resizes it to S x S, mirrors it
 * with probability 0.5 if hflip, and writes (px/255 - mean[c]) / std[c]. A 3-channel
 * input becomes gray (ITU-R 601 luma) when out_channels == 1; a gray input is
 * replicated when out_channels == 3. mean/std hold out_channels values; NULL means 0
 * and 1. Returns 0 or MIMIC_EINVAL / MIMIC_ENOMEM. */
int augment_rrc(float *out, const image_u8 *in, int S, float scale_lo, float scale_hi,
                float ratio_lo, float ratio_hi, int hflip, const float *mean, const float *std,
                int out_channels, rng_t *rng);

/* Scratch for the resampling plans; reused across calls so that a training loop
 * allocates nothing per image. Start zeroed; augment_ws_free releases it. */
typedef struct {
    int *ibuf;
    float *fbuf;
    size_t icap, fcap;
} augment_ws;
void augment_ws_free(augment_ws *ws);
/* Grows ws for every crop of a w x h x c image resized to S, so that a loop over images
 * of that size allocates nothing, not even when its largest crop first comes. */
int augment_ws_reserve(augment_ws *ws, int w, int h, int c, int S);
/* augment_rrc with caller-owned scratch (grown on demand, then reused). */
int augment_rrc_ws(float *out, const image_u8 *in, int S, float scale_lo, float scale_hi,
                   float ratio_lo, float ratio_hi, int hflip, const float *mean, const float *std,
                   int out_channels, rng_t *rng, augment_ws *ws);

/* out (out_channels, S, S): the whole image resized to S x S (aspect ratio not kept),
 * normalised as in augment_rrc. Deterministic: the evaluation transform. */
int augment_resize(float *out, const image_u8 *in, int S, const float *mean, const float *std,
                   int out_channels);

#endif
