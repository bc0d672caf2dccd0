#include "order.h"

#include "rng.h"

void order_permutation(uint32_t *perm, uint32_t n, uint64_t seed, uint64_t epoch) {
    for (uint32_t i = 0; i < n; i++)
        perm[i] = i;
    rng_t r;
    rng_split(&r, seed, 0x5eed0000ULL + epoch);
    rng_shuffle_u32(&r, perm, n);
}

uint64_t order_sample_stream(uint64_t epoch, uint32_t index) {
    return (epoch << 32) ^ (uint64_t)index ^ 0xa5a5000000000000ULL;
}
