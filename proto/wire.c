/* wire.c — f32 <-> bfloat16 for the data plane. */
#include "wire.h"

#include <string.h>

static inline uint16_t to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    /* round to nearest even on the 16 bits dropped; a NaN keeps its sign and becomes
     * the quiet NaN (rounding could carry its payload into infinity) */
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : r);
}

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

void wire_to_bf16(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = to_bf16(src[i]);
}

void wire_from_bf16(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = from_bf16(src[i]);
}

void wire_axpby_bf16(float *acc, float a, const uint16_t *src, float b, size_t n) {
    if (a == 0.0f) {
        for (size_t i = 0; i < n; i++)
            acc[i] = b * from_bf16(src[i]);
        return;
    }
    for (size_t i = 0; i < n; i++)
        acc[i] = a * acc[i] + b * from_bf16(src[i]);
}
