/* bf16 — bfloat16, the top 16 bits of an IEEE f32 (f32's 8 exponent bits, 8 bits of
 * mantissa), and the one rounding from f32 to it that the compute path (models/mm.c)
 * and the wire (proto/wire.c) share: round to nearest, ties to even, on the 16 bits
 * dropped; a NaN stays a NaN of the same sign (its top payload bits, the quiet bit
 * set, since rounding could carry a payload into infinity); a value past the largest
 * finite bf16 becomes infinity. Widening is exact. Inline, so the loops that call
 * these vectorise. */
#ifndef MIMIC_BF16_H
#define MIMIC_BF16_H

#include <stdint.h>
#include <string.h>

static inline uint16_t bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : r);
}

static inline float bf16_widen(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

#endif
