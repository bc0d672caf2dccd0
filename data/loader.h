/* loader — turns sample indices into a training batch: decode, augment, masking noise.
 *
 * Every random choice for a sample comes from rng stream (seed, epoch, index) (see
 * order.h), so the batch a worker builds for a set of indices does not depend on which
 * worker builds it or in which order. Corrupt samples are skipped (warned once, counted
 * by the dataset) and the batch comes back shorter. */
#ifndef MIMIC_LOADER_H
#define MIMIC_LOADER_H

#include "config.h"
#include "dataset.h"

#include <stdint.h>

typedef struct loader loader_t;

int loader_new(loader_t **out, const mimic_cfg_t *cfg);
void loader_destroy(loader_t **ld);
size_t loader_size(const loader_t *ld);
size_t loader_bad(const loader_t *ld);
const dataset_t *loader_dataset(const loader_t *ld);

/* Builds up to n samples from idx[0..n): imgs (n,C,S,S), noise (n,L) masking noise
 * (may be NULL), labels (n) (may be NULL). Returns how many samples were filled
 * (corrupt ones are skipped), or a negative error. */
int loader_fill(loader_t *ld, const uint32_t *idx, int n, uint64_t epoch, float *imgs, float *noise,
                int L, int *labels);

#endif
