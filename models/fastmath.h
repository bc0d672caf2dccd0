/* fastmath — branch-free float exp and erf that GCC auto-vectorises.
 *
 * libm's expf/erff are opaque calls, so any loop using them stays scalar; these are
 * static inline, use only arithmetic, compares and selects, and so vectorise under
 * -O3 -march=native (a plain SSE2 build, MIMIC_NATIVE=OFF, leaves them scalar). Used
 * by the softmax (attention.c) and GELU (gelu.c). Accuracy, checked by
 * tests/test_layers.c against libm in double: fm_expf within 1.5 ulp, fm_erff absolute
 * error below 2e-7 on the whole line and relative error below 5e-7 for |x| < 0.75.
 * Coefficients were fitted with mpmath.chebyfit. */
#ifndef MIMIC_FASTMATH_H
#define MIMIC_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float fm_bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* exp(x). Below -87.33 (where exp(x) is no longer a normal float) it returns 0 rather
 * than a denormal, so the 2^n scale can be built straight from the exponent bits. */
static inline float fm_expf(float x) {
    const float lo = -87.33f, hi = 88.0f;
    float xc = x < lo ? lo : (x > hi ? hi : x);
    /* Adding then subtracting 1.5*2^23 rounds to the nearest integer (default
     * rounding mode) with two plain adds. */
    const float magic = 12582912.0f;
    float n = (xc * 1.44269504088896341f + magic) - magic;
    /* Cody-Waite: ln2 split so that n*ln2_hi is exact and r keeps full precision. */
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    /* Cephes expf minimax polynomial for exp(r) on [-ln2/2, ln2/2]. */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    float scale = fm_bits_to_float((uint32_t)((int32_t)n + 127) << 23);
    return x < lo ? 0.0f : p * scale;
}

/* The erf split point: below it erf is an odd polynomial, above it erfc is. */
#define FM_ERF_SPLIT 0.75f
/* Beyond this erfc(z) < 5e-37: erfc is treated as exp(-z^2) * erfcx(9). */
#define FM_ERF_ZMAX 9.0f

/* erf(z) for 0 <= z <= FM_ERF_SPLIT, as z * P(z^2) (relative error ~2e-9 before
 * rounding to float). */
static inline float fm_erf_small(float z) {
    float s = z * z;
    float p = -6.756479569e-04f;
    p = p * s + 5.115332113e-03f;
    p = p * s + -2.683511457e-02f;
    p = p * s + 1.128338654e-01f;
    p = p * s + -3.761261947e-01f;
    p = p * s + 1.128379166e+00f;
    return z * p;
}

/* erfcx(z) = erfc(z) * exp(z^2) for FM_ERF_SPLIT <= z <= FM_ERF_ZMAX, as a polynomial
 * in t = 1/(1 + z/2): erfcx is nearly rational in z, and in t a degree-9 fit reaches
 * ~1.4e-10 absolute over the whole range, far better than any polynomial in z. */
static inline float fm_erfcx_large(float z) {
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = -8.027258444e-02f;
    p = p * t + 3.756499677e-01f;
    p = p * t + -6.550652219e-01f;
    p = p * t + 4.516756795e-01f;
    p = p * t + -1.372354183e-01f;
    p = p * t + 2.475487207e-01f;
    p = p * t + 2.315557189e-01f;
    p = p * t + 2.841907823e-01f;
    p = p * t + 2.819283616e-01f;
    p = p * t + 5.811124955e-06f;
    return p;
}

/* Clamps z into the range of each branch; both branches are always evaluated and one
 * selected, which is what lets the caller's loop vectorise. */
static inline float fm_clamp_small(float z) {
    return z < FM_ERF_SPLIT ? z : FM_ERF_SPLIT;
}
static inline float fm_clamp_large(float z) {
    return z < FM_ERF_SPLIT ? FM_ERF_SPLIT : (z > FM_ERF_ZMAX ? FM_ERF_ZMAX : z);
}

static inline float fm_erff(float x) {
    float z = fabsf(x);
    float zl = fm_clamp_large(z);
    float small = fm_erf_small(fm_clamp_small(z));
    float large = 1.0f - fm_expf(-zl * zl) * fm_erfcx_large(zl);
    return copysignf(z < FM_ERF_SPLIT ? small : large, x);
}

#endif
