/* augment — 8-bit images and the per-sample transforms of the training data path.
 *
 * image_u8 is an interleaved HWC byte image that owns its buffer and grows it in place,
 * so one image can be reused for every sample a worker decodes (dataset_get fills it);
 * image_u8_free releases it. augment_rrc is torchvision's RandomResizedCrop +
 * RandomHorizontalFlip + ToTensor + Normalize fused into one pass that writes CHW floats;
 * augment_resize is the deterministic evaluation transform; augment_view is one view of
 * the contrastive recipe (MoCo v3 / BYOL: crop, flip, colour jitter, grayscale, blur,
 * solarize). Resizing is bilinear with PIL/torchvision antialiasing (the filter widens
 * when shrinking). All randomness comes from the caller's rng_t, so a (seed, sample) pair
 * always gives the same crop. */
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

/* A crop in pixel units of the image it applies to (pixel j covers [j, j+1)); x, y, w, h
 * may be fractional, as PIL's resize box, when the image was decoded at a reduced scale. */
typedef struct {
    double x, y, w, h;
} augment_box;
/* The crop and flip augment_rrc would draw for a W x H image (same draws, same order),
 * apart from the resampling, so that a decoder can read only the crop
 * (dataset_read_crop). Returns 0 or MIMIC_EINVAL for bad ranges. */
int augment_rrc_draw(augment_box *box, int *flip, int W, int H, float scale_lo, float scale_hi,
                     float ratio_lo, float ratio_hi, int hflip, rng_t *rng);
/* out (out_channels, S, S): the box of in resized to S x S, mirrored if flip, normalised
 * as in augment_rrc (augment_rrc_ws = augment_rrc_draw + augment_crop_ws). The box must
 * lie inside in. Returns 0 or MIMIC_EINVAL / MIMIC_ENOMEM. */
int augment_crop_ws(float *out, const image_u8 *in, const augment_box *box, int S, int flip,
                    const float *mean, const float *std, int out_channels, augment_ws *ws);

/* out (out_channels, S, S): the whole image resized to S x S (aspect ratio not kept),
 * normalised as in augment_rrc. Deterministic: the evaluation transform. */
int augment_resize(float *out, const image_u8 *in, int S, const float *mean, const float *std,
                   int out_channels);
/* augment_resize with caller-owned scratch (augment_ws_reserve covers it). */
int augment_resize_ws(float *out, const image_u8 *in, int S, const float *mean, const float *std,
                      int out_channels, augment_ws *ws);

/* One view of the contrastive stages' recipe, in torchvision's terms:
 *   RandomResizedCrop(S, (scale_lo, scale_hi), (ratio_lo, ratio_hi)), RandomHorizontalFlip
 *   if hflip, RandomApply([ColorJitter(brightness, contrast, saturation, hue)], jitter_p),
 *   RandomGrayscale(gray_p), RandomApply([GaussianBlur(augment_blur_ksize(S), (0.1, 2))],
 *   blur_p), RandomSolarize(0.5, solarize_p), ToTensor, Normalize.
 * The colour ops follow torchvision's float-tensor formulas (clamped to [0,1] after each
 * op) on the resampled floats: nothing is rounded to 8 bits between ops as the PIL path
 * does. A strength of 0 turns its jitter op off (torchvision's None). */
typedef struct {
    float scale_lo, scale_hi, ratio_lo, ratio_hi;
    int hflip;
    float jitter_p, brightness, contrast, saturation, hue; /* hue in [0, 0.5] */
    float gray_p, blur_p, solarize_p;
} augment_view;

/* out (out_channels, S, S) from in, one draw of the recipe v from rng (the crop and flip
 * draws first, exactly as augment_rrc, then jitter, grayscale, blur, solarize).
 * On one output channel saturation, hue and grayscale are no-ops (brightness and
 * contrast still act); a 3-channel input made gray by out_channels == 1 is converted
 * first. Returns 0 or MIMIC_EINVAL / MIMIC_ENOMEM. */
int augment_view_ws(float *out, const image_u8 *in, int S, const augment_view *v, const float *mean,
                    const float *std, int out_channels, rng_t *rng, augment_ws *ws);

/* The single ops of augment_view, on img (c, npx) planar floats in [0,1], c = 1 or 3,
 * with torchvision's tensor formulas (functional_tensor.py); luma is ITU-R 601
 * (0.299, 0.587, 0.114, as PIL; torchvision's tensor path has 0.2989).
 *   brightness: f x, clamped.  contrast: f x + (1-f) mean(luma), clamped.
 *   saturation: f x + (1-f) luma, clamped (c = 1: no-op).
 *   hue: RGB -> HSV, h += f modulo 1, HSV -> RGB (c = 1: no-op).
 *   grayscale: every channel = luma (c = 1: no-op).  solarize: x >= t -> 1 - x. */
void augment_brightness(float *img, int c, size_t npx, float f);
void augment_contrast(float *img, int c, size_t npx, float f);
void augment_saturation(float *img, int c, size_t npx, float f);
void augment_hue(float *img, int c, size_t npx, float f);
void augment_grayscale(float *img, int c, size_t npx);
void augment_solarize(float *img, int c, size_t npx, float threshold);
/* Odd Gaussian kernel side for S x S images: ~10% of the side as SimCLR prescribes
 * (2 floor(S/20) + 1, at least 3): 23 at 224 as MoCo v3 / BYOL, 3 at 32. */
int augment_blur_ksize(int S);
/* img (c, S, S): separable Gaussian blur like torchvision's gaussian_blur (kernel of k
 * taps exp(-x^2 / 2 sigma^2), normalised; reflect padding), scratch from ws. */
int augment_blur(float *img, int c, int S, float sigma, int k, augment_ws *ws);

#endif
