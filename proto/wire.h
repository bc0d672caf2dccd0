/* wire — the tensor dtypes of the data plane (cluster.wire): gradients and weights go
 * on the wire as f32 or as bfloat16, the top 16 bits of an IEEE f32 (8 exponent bits:
 * the range of f32, 8 bits of mantissa). Conversions round to nearest, ties to even,
 * and keep NaN a NaN (runtime/bf16.h, the rounding the compute path uses too);
 * everything on either side of the wire stays f32 (the servers'
 * master weights, AdamW moments and the step's sum of gradients).
 *
 * Used by the worker's kv client (pushes out, pull replies in) and the servers' store
 * (pushes in, pull replies out). Loops are plain so the compiler vectorises them. */
#ifndef MIMIC_WIRE_H
#define MIMIC_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* dst[i] = bf16(src[i]), i < n. */
void wire_to_bf16(uint16_t *dst, const float *src, size_t n);
/* dst[i] = f32(src[i]) (exact). */
void wire_from_bf16(float *dst, const uint16_t *src, size_t n);
/* acc[i] = a * acc[i] + b * f32(src[i]); a == 0 overwrites acc (its old values are
 * not read, so they may be anything). */
void wire_axpby_bf16(float *acc, float a, const uint16_t *src, float b, size_t n);

#endif
