/* negqueue — the negative-key queue of the contrastive stage (MoCo's queue), kept by
 * server rank 0: a ring of K rows of D floats that workers append keys to (QUEUE_PUSH)
 * and read the rows they have not seen yet from (QUEUE_PULL -> QUEUE_REPLY).
 *
 * `version` counts keys ever pushed; key number k lives in slot k % K. A reader at
 * version `since` gets the newest min(version - since, K) rows, starting at the slot
 * negqueue_span gives (docs/protocol.md, "Queue versions"). D is fixed by the first
 * push and the ring is allocated then; pushes never allocate. K is NEGQUEUE_CAPACITY
 * until the contrastive stage brings a config key for it. */
#ifndef MIMIC_NEGQUEUE_H
#define MIMIC_NEGQUEUE_H

#include <stddef.h>
#include <stdint.h>

#define NEGQUEUE_CAPACITY 4096

typedef struct {
    float *rows; /* cap x dim, allocated by the first push */
    size_t cap, dim;
    uint64_t version; /* keys ever pushed */
} negqueue_t;

int negqueue_new(negqueue_t **out, size_t capacity);
void negqueue_destroy(negqueue_t **q);
/* Appends count rows of dim floats. The first push fixes dim (cap * dim * 4 must not
 * exceed max_bytes, the largest reply peers accept); MIMIC_EINVAL with a reason in why
 * for a different dim or a too large ring, MIMIC_ENOMEM when the ring can't be had. */
int negqueue_push(negqueue_t *q, const float *rows, size_t count, size_t dim, size_t max_bytes,
                  char *why, size_t whylen);
/* What a reader at version `since` needs: *count rows from ring slot *slot on (wrapping).
 * MIMIC_EINVAL when since is ahead of the queue. */
int negqueue_span(const negqueue_t *q, uint64_t since, size_t *slot, size_t *count);
/* Copies count rows from slot on (wrapping at cap) into out (count x dim). */
void negqueue_copy(const negqueue_t *q, size_t slot, size_t count, float *out);

#endif
