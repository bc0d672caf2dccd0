#include "warp.h"

#include "common.h"

#include <math.h>
#include <stddef.h>

int warp_check(const warp_cfg_t *c) {
    if (c->regions < 1 || c->regions > WARP_MAX_REGIONS)
        return mimic_err(MIMIC_EINVAL, "config data.warp_regions: %d (need 1..%d)", c->regions,
                         WARP_MAX_REGIONS);
    if (!(c->radius > 0.0f && c->radius <= 1.0f))
        return mimic_err(MIMIC_EINVAL,
                         "config data.warp_radius: %g (need a fraction of the image "
                         "side in (0, 1])",
                         (double)c->radius);
    /* (ours) a lone disc's map stays fold-free: Jacobian norm <= 1.72 magnitude / radius */
    if (!(c->magnitude >= 0.0f && c->magnitude <= 0.5f * c->radius))
        return mimic_err(MIMIC_EINVAL,
                         "config data.warp_magnitude: %g (need 0 <= magnitude <= "
                         "data.warp_radius / 2 = %g)",
                         (double)c->magnitude, (double)(0.5f * c->radius));
    return 0;
}

void warp_draw(warp_field_t *f, const warp_cfg_t *c, int S, rng_t *r) {
    f->k = c->regions;
    f->R = c->radius * (float)S;
    for (int k = 0; k < f->k; k++) {
        f->cx[k] = rng_uniform(r) * (float)(S - 1);
        f->cy[k] = rng_uniform(r) * (float)(S - 1);
        float len = c->magnitude * (float)S * (0.5f + 0.5f * rng_uniform(r));
        float ang = 6.28318530718f * rng_uniform(r);
        f->dx[k] = len * cosf(ang);
        f->dy[k] = len * sinf(ang);
    }
}

void warp_displacement(const warp_field_t *f, float x, float y, float *ux, float *uy) {
    float sx = 0.0f, sy = 0.0f, inv = 1.0f / (f->R * f->R);
    for (int k = 0; k < f->k; k++) {
        float ex = x - f->cx[k], ey = y - f->cy[k];
        float t2 = (ex * ex + ey * ey) * inv;
        if (!(t2 < 1.0f)) continue; /* compact support: nothing outside the disc */
        float a = 1.0f - t2, phi = a * a * a;
        sx += f->dx[k] * phi;
        sy += f->dy[k] * phi;
    }
    *ux = sx;
    *uy = sy;
}

static float clampf(float v, float lo, float hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

void warp_apply(float *out, const float *in, int C, int S, const warp_field_t *f) {
    const size_t plane = (size_t)S * S;
    const float top = (float)(S - 1);
    for (int i = 0; i < S; i++)
        for (int j = 0; j < S; j++) {
            size_t at = (size_t)i * S + j;
            float ux, uy;
            warp_displacement(f, (float)j, (float)i, &ux, &uy);
            if (ux == 0.0f && uy == 0.0f) { /* outside the discs: the pixel itself */
                for (int c = 0; c < C; c++)
                    out[c * plane + at] = in[c * plane + at];
                continue;
            }
            float x = clampf((float)j + ux, 0.0f, top), y = clampf((float)i + uy, 0.0f, top);
            int x0 = (int)x, y0 = (int)y;
            int x1 = x0 + 1 < S ? x0 + 1 : x0, y1 = y0 + 1 < S ? y0 + 1 : y0;
            float fx = x - (float)x0, fy = y - (float)y0;
            for (int c = 0; c < C; c++) {
                const float *p = in + c * plane;
                float a = p[(size_t)y0 * S + x0], b = p[(size_t)y0 * S + x1];
                float d = p[(size_t)y1 * S + x0], e = p[(size_t)y1 * S + x1];
                out[c * plane + at] =
                    (1.0f - fy) * ((1.0f - fx) * a + fx * b) + fy * ((1.0f - fx) * d + fx * e);
            }
        }
}
