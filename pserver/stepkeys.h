/* stepkeys — the keys every live worker pushes for one training step, gathered on a
 * server until the step is complete and then released as one matrix in worker-id
 * order. Two services use it: MoCo v3's in-batch keys of all workers (KEYS_PUSH, each
 * push answered with the step's matrix) and, under BSP, the negative queue (a step's
 * keys are appended in worker-id order, not in arrival order, so the queue is the same
 * whatever the timing).
 *
 * Step s is complete when somebody pushed for it and every worker the consistency rules
 * count (consistency.h: the live set; before the first MEMBERSHIP every worker seen,
 * and at least the quorum of parts) pushed for it — except a worker known to be past
 * s: one that pushed for a later step or asked for the queue as of a later step
 * (stepkeys_floor). That worker is an elastic joiner that never computes step s, and
 * waiting for it would hang. A membership shrink can complete a step; keys that a worker
 * pushed before it died stay in. Steps are released in order. The last released matrix
 * stays until the next release: keys that arrive for it late (a joiner that was not
 * awaited) are appended to it (stepkeys_add returns STEPKEYS_LATE).
 *
 * Usage: stepkeys_add on each push; stepkeys_release after each push and each
 * MEMBERSHIP, as long as it returns 1; then stepkeys_released / stepkeys_rows_of. */
#ifndef MIMIC_STEPKEYS_H
#define MIMIC_STEPKEYS_H

#include "consistency.h"

#include <stddef.h>
#include <stdint.h>

#define STEPKEYS_LATE 1 /* stepkeys_add: appended to the released step */

typedef struct stepkeys stepkeys_t;

/* The released matrix: count rows of dim floats from `workers` workers, in worker-id
 * order, for `step`. rows is NULL (and count 0) before the first release. */
typedef struct {
    uint64_t step;
    const float *rows;
    size_t count, dim;
    int workers;
} stepkeys_view_t;

/* Keys of dim floats; at most max_rows rows held at once (pending and released), so
 * that a released matrix always fits a reply. */
int stepkeys_new(stepkeys_t **out, size_t dim, size_t max_rows);
void stepkeys_destroy(stepkeys_t **k);
/* Worker's n rows for step (copied). 0 when kept for the step; STEPKEYS_LATE when step
 * is the released step and the rows were appended to it; MIMIC_EINVAL with a reason in
 * why for another dim, an older step (or one before stepkeys_reset's), a second push of a worker
 * for a step, or more rows than max_rows; MIMIC_ENOMEM. */
int stepkeys_add(stepkeys_t *k, int32_t worker, uint64_t step, const float *rows, size_t n,
                 char *why, size_t whylen);
/* Worker will push nothing for steps < step (it asked for the queue as of step). */
int stepkeys_floor(stepkeys_t *k, int32_t worker, uint64_t step);
/* Releases the lowest pending step when it is complete under c's live set. 1 when a
 * step was released, 0 when none is complete, MIMIC_ENOMEM. */
int stepkeys_release(stepkeys_t *k, const cons_t *c);
/* The released matrix (see stepkeys_view_t). */
stepkeys_view_t stepkeys_released(const stepkeys_t *k);
/* Where worker's rows are in the released matrix: 0 and *offset, *n; -1 when it has
 * none. */
int stepkeys_rows_of(const stepkeys_t *k, int32_t worker, size_t *offset, size_t *n);
/* The lowest step still gathering (UINT64_MAX when none) and the rows held for it. */
uint64_t stepkeys_pending(const stepkeys_t *k, size_t *rows);
/* Forgets everything pending and released, and refuses steps < next from now on (a
 * resume at step next). */
void stepkeys_reset(stepkeys_t *k, uint64_t next);

#endif
