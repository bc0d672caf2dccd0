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

/* gelu'(x) */
static inline float gelu_grad(float x) {
    float e = fm_expf(-0.5f * x * x);
    return gelu_phi(x, e) + x * e * GELU_INV_SQRT_2PI;
}

void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= GELU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dinp[i] = dout[i] * gelu_grad(inp[i]);
}

typedef struct {
    const float *dout, *inp;
} gelu_rows_t;

/* mm_pack_rows' producer: rows r0 .. r0+n-1 of dout * gelu'(inp) into tmp */
static const float *gelu_backward_rows(void *ctx, int r0, int n, int cols, float *tmp) {
    const gelu_rows_t *g = ctx;
    size_t lo = (size_t)r0 * cols, len = (size_t)n * cols;
#pragma omp simd
    for (size_t i = 0; i < len; i++)
        tmp[i] = g->dout[lo + i] * gelu_grad(g->inp[lo + i]);
    return tmp;
}

unsigned short *gelu_backward_pack(int slot, float *colsum, const float *dout, const float *inp,
                                   int rows, int cols) {
    gelu_rows_t g = {dout, inp};
    return mm_pack_rows(slot, rows, cols, colsum, gelu_backward_rows, &g);
}
