/* rng — small deterministic random number generator (xoshiro256**, seeded by splitmix64).
 *
 * Every random choice in training (masking noise, augmentation, init, epoch
 * permutations) draws from an explicit rng_t so runs are reproducible from a seed and
 * no global state exists. rng_split derives independent streams (per worker, per
 * sample) from one seed. */
#ifndef MIMIC_RNG_H
#define MIMIC_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} rng_t;

void rng_seed(rng_t *r, uint64_t seed);
/* Seeds r from (seed, stream) so that different streams are independent. */
void rng_split(rng_t *r, uint64_t seed, uint64_t stream);
uint64_t rng_u64(rng_t *r);
/* Uniform in [0,1) with 24 random bits (exactly representable as float). */
float rng_uniform(rng_t *r);
/* Uniform integer in [0, n), unbiased. n > 0. */
uint64_t rng_below(rng_t *r, uint64_t n);
/* Standard normal (Box-Muller). */
float rng_normal(rng_t *r);
/* Fisher-Yates shuffle of n indices. */
void rng_shuffle_u32(rng_t *r, uint32_t *a, uint64_t n);

#endif
