#include "gelu.h"

#include "fastmath.h"
#include "mm.h"

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

static inline float gelu_value(float x) { return x * gelu_phi(x, fm_expf(-0.5f * x * x)); }

void gelu_forward(float *out, const float *inp, size_t n) {
    /* out may alias inp: each iteration reads inp[i] before writing out[i]. */
#pragma omp parallel for simd schedule(static) if (n >= GELU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = gelu_value(inp[i]);
}

/* Values a bf16 chunk is built in before it is rounded. */
#define GELU_BF16_CHUNK 512

void gelu_forward_bf16(unsigned short *out, const float *inp, size_t n) {
    size_t nchunks = (n + GELU_BF16_CHUNK - 1) / GELU_BF16_CHUNK;
#pragma omp parallel for schedule(static) if (n >= GELU_PAR_MIN)
    for (size_t k = 0; k < nchunks; k++) {
        size_t lo = k * GELU_BF16_CHUNK, len = n - lo < GELU_BF16_CHUNK ? n - lo : GELU_BF16_CHUNK;
        float y[GELU_BF16_CHUNK];
#pragma omp simd
        for (size_t i = 0; i < len; i++)
            y[i] = gelu_value(inp[lo + i]);
        mm_to_bf16(out + lo, y, (long)len);
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
