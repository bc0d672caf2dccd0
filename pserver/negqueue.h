/* negqueue — the negative-key queue of the contrastive stage (MoCo v2's queue), kept by
 * server rank 0: a ring of K rows of D floats (contrastive.queue_size, contrastive.dim)
 * that workers append keys to (QUEUE_PUSH) and read the rows they have not seen yet
 * from (QUEUE_PULL -> QUEUE_REPLY).
 *
 * `version` counts keys ever pushed; key number k lives in slot k % K. A reader at
 * version `since` gets the newest min(version - since, K) rows, starting at the slot
 * negqueue_span gives (docs/protocol.md, "Queue versions"). `step` is the queue's step:
 * under BSP the keys of every step < step are in (the server appends a step's keys
 * when every live worker's are in, stepkeys.h). The ring is allocated by
 * negqueue_alloc or the first push; pushes never allocate after that. */
#ifndef MIMIC_NEGQUEUE_H
#define MIMIC_NEGQUEUE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float *rows; /* cap x dim, NULL until allocated */
    size_t cap, dim;
    uint64_t version; /* keys ever pushed */
    uint64_t step;    /* BSP: the keys of steps < step are in */
} negqueue_t;

/* A queue of capacity rows of dim floats; nothing allocated yet. */
int negqueue_new(negqueue_t **out, size_t capacity, size_t dim);
void negqueue_destroy(negqueue_t **q);
/* Allocates the ring (zeroed) if not yet: cap * dim * 4 must not exceed max_bytes, the
 * largest reply peers accept. MIMIC_EINVAL naming the config keys, MIMIC_ENOMEM. */
int negqueue_alloc(negqueue_t *q, size_t max_bytes);
/* Appends count rows of dim floats (allocating the ring on the first push). MIMIC_EINVAL
 * with a reason in why for a dim other than the queue's or a too large ring,
 * MIMIC_ENOMEM when the ring can't be had. */
int negqueue_push(negqueue_t *q, const float *rows, size_t count, size_t dim, size_t max_bytes,
                  char *why, size_t whylen);
/* What a reader at version `since` needs: *count rows from ring slot *slot on (wrapping).
 * MIMIC_EINVAL when since is ahead of the queue. */
int negqueue_span(const negqueue_t *q, uint64_t since, size_t *slot, size_t *count);
/* Copies count rows from slot on (wrapping at cap) into out (count x dim). */
void negqueue_copy(const negqueue_t *q, size_t slot, size_t count, float *out);

#endif
