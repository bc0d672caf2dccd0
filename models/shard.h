/* shard — which samples a step sees: per-epoch seeded permutations of sample indices.
 *
 * The scheduler cuts each epoch's permutation into chunks for its work queue; the
 * standalone trainer walks the same permutation, so a run's sample order depends only
 * on (seed, epoch), never on how many workers share it. */
#ifndef MIMIC_SHARD_H
#define MIMIC_SHARD_H

#include <stddef.h>
#include <stdint.h>

/* Server s's contiguous key range [*lo, *hi) of a flat vector of `total` floats split
 * over S servers: equal sizes (byte-balanced), boundaries on 16-float (64-byte) lines. */
void shard_key_range(size_t total, int S, int s, size_t *lo, size_t *hi);

/* perm (n) = a permutation of 0..n-1 determined by (seed, epoch). */
void shard_permutation(uint32_t *perm, uint32_t n, uint64_t seed, uint64_t epoch);
/* The seed of every random choice made for one sample in one epoch (augmentation,
 * masking noise), so any worker that gets the sample makes the same choices. */
uint64_t shard_sample_stream(uint64_t epoch, uint32_t index);

#endif
