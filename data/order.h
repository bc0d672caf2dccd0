/* order — which samples a step sees: per-epoch seeded permutations of sample indices.
 *
 * The scheduler cuts each epoch's permutation into chunks for its work queue; the
 * standalone trainer walks the same permutation, so a run's sample order depends only
 * on (seed, epoch), never on how many workers share it. */
#ifndef MIMIC_ORDER_H
#define MIMIC_ORDER_H

#include <stddef.h>
#include <stdint.h>

/* perm (n) = a permutation of 0..n-1 determined by (seed, epoch). */
void order_permutation(uint32_t *perm, uint32_t n, uint64_t seed, uint64_t epoch);
/* The seed of every random choice made for one sample in one epoch (augmentation,
 * masking noise), so any worker that gets the sample makes the same choices. */
uint64_t order_sample_stream(uint64_t epoch, uint32_t index);

#endif
