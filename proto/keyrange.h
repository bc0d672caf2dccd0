/* keyrange — how the flat parameter vector is split over the parameter servers.
 *
 * Workers (kv.c) and servers (kvstore.c) must agree on it bit for bit, so it is one
 * function of (total, S, s) that both call. */
#ifndef MIMIC_KEYRANGE_H
#define MIMIC_KEYRANGE_H

#include <stddef.h>

/* Server s's contiguous key range [*lo, *hi) of a flat vector of `total` floats split
 * over S servers: equal sizes (byte-balanced), boundaries on 16-float (64-byte) lines. */
void keyrange_of(size_t total, int S, int s, size_t *lo, size_t *hi);

#endif
