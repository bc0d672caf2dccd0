/* wire.c — f32 <-> bfloat16 for the data plane. */
#include "wire.h"

#include "bf16.h"

void wire_to_bf16(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = bf16_round(src[i]);
}

void wire_from_bf16(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = bf16_widen(src[i]);
}

void wire_axpby_bf16(float *acc, float a, const uint16_t *src, float b, size_t n) {
    if (a == 0.0f) {
        for (size_t i = 0; i < n; i++)
            acc[i] = b * bf16_widen(src[i]);
        return;
    }
    for (size_t i = 0; i < n; i++)
        acc[i] = a * acc[i] + b * bf16_widen(src[i]);
}
