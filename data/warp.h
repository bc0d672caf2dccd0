/* warp — ContraWarping's random local warp (ours; METHODS.md, docs/objectives.md): a
 * smooth displacement field confined to K random discs, applied by bilinear resampling.
 *
 * The loader (loader_set_warp) turns a globally augmented view into its warped negative:
 * same identity and global appearance, a locally changed shape (for faces, the
 * expression). Each disc k has a centre c_k uniform over the image, radius R = radius *
 * S and a displacement d_k of length magnitude * S * U[0.5, 1] in a uniform direction;
 * the field is the sum of compactly supported bumps
 *   u(x) = sum_k d_k phi(|x - c_k| / R),  phi(t) = (1 - t^2)^3 for t < 1, else 0,
 * a C2 bump (value 1 at the centre, zero value and slope at the rim), so u is exactly 0
 * outside the discs. out(x) = in(x + u(x)) (backward mapping, coordinates clamped to
 * the image: edge pixels repeat). A pixel where u = 0 is copied, so the image outside
 * the discs is bit-identical. max |phi'| = 1.72, so one bump's Jacobian has norm
 * <= 1.72 * |d| / R; warp_check keeps magnitude <= radius / 2 (norm <= 0.86 < 1, a
 * fold-free map for a lone disc). Every draw comes from the caller's stream. */
#ifndef MIMIC_WARP_H
#define MIMIC_WARP_H

#include "rng.h"

#define WARP_MAX_REGIONS 16

/* The config of the warp: data.warp_regions, data.warp_radius, data.warp_magnitude. */
typedef struct {
    int regions;
    float radius, magnitude; /* fractions of the image side */
} warp_cfg_t;

/* One drawn field for an S x S image, in pixel units (pixel (i, j) sits at x = j, y = i). */
typedef struct {
    int k;
    float R;
    float cx[WARP_MAX_REGIONS], cy[WARP_MAX_REGIONS];
    float dx[WARP_MAX_REGIONS], dy[WARP_MAX_REGIONS];
} warp_field_t;

/* 0, or MIMIC_EINVAL naming the data.warp_* key that is out of range. */
int warp_check(const warp_cfg_t *c);
/* Draws K centres and displacements (4 draws of r per region, in region order). */
void warp_draw(warp_field_t *f, const warp_cfg_t *c, int S, rng_t *r);
/* The displacement u(x, y) (exactly 0 outside every disc). */
void warp_displacement(const warp_field_t *f, float x, float y, float *ux, float *uy);
/* out (C,S,S) = in (C,S,S) resampled at x + u(x): bilinear, clamped; out != in. */
void warp_apply(float *out, const float *in, int C, int S, const warp_field_t *f);

#endif
