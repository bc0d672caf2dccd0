#include "gelu.h"

#include "fastmath.h"

#include <math.h>

/* Below this many elements the OpenMP fork/join costs more than the loop. */
#define GELU_PAR_MIN 32768

#define GELU_INV_SQRT2 0.70710678118654752f
#define GELU_INV_SQRT_2PI 0.39894228040143268f

/* Phi(x), the standard normal CDF, given e = exp(-x^2/2). Equal to
 * 0.5 * (1 + erf(x/sqrt2)) but, for large |x|, built from erfc so that the negative
 * tail keeps its relative precision instead of cancelling to 0 at about x = -5. */
static inline float gelu_phi(float x, float e) {
    float z = fabsf(x) * GELU_INV_SQRT2;
    float small = 0.5f + 0.5f * copysignf(fm_erf_small(fm_clamp_small(z)), x);
    float tail = 0.5f * e * fm_erfcx_large(fm_clamp_large(z)); /* 0.5 * erfc(z) */
    float large = x < 0.0f ? tail : 1.0f - tail;
    return z < FM_ERF_SPLIT ? small : large;
}

void gelu_forward(float *out, const float *inp, size_t n) {
    /* out may alias inp: each iteration reads inp[i] before writing out[i]. */
#pragma omp parallel for simd schedule(static) if (n >= GELU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float e = fm_expf(-0.5f * x * x);
        out[i] = x * gelu_phi(x, e);
    }
}

void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= GELU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float e = fm_expf(-0.5f * x * x);
        float d = gelu_phi(x, e) + x * e * GELU_INV_SQRT_2PI;
        dinp[i] = dout[i] * d;
    }
}
