#include "shard.h"

#include "rng.h"

void shard_permutation(uint32_t *perm, uint32_t n, uint64_t seed, uint64_t epoch) {
    for (uint32_t i = 0; i < n; i++)
        perm[i] = i;
    rng_t r;
    rng_split(&r, seed, 0x5eed0000ULL + epoch);
    rng_shuffle_u32(&r, perm, n);
}

uint64_t shard_sample_stream(uint64_t epoch, uint32_t index) {
    return (epoch << 32) ^ (uint64_t)index ^ 0xa5a5000000000000ULL;
}

void shard_key_range(size_t total, int S, int s, size_t *lo, size_t *hi) {
    size_t a = (size_t)((double)total * s / S), b = (size_t)((double)total * (s + 1) / S);
    a &= ~(size_t)15;
    b = s + 1 == S ? total : (b & ~(size_t)15);
    *lo = a;
    *hi = b;
}
