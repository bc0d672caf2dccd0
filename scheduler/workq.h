/* workq — the scheduler's never-ending work queue of sample chunks, with the accounting
 * that proves every sample of an epoch was processed exactly once.
 *
 * Epoch e is order_permutation(N, seed, e) cut into chunks of chunk_size samples; chunk
 * id k covers positions [k*chunk_size, ...) of it. Chunks are handed out in order, epoch
 * after epoch; chunks taken back from a dead worker go to the front. Every hand-out
 * records the parameter version the worker will compute on, so that a checkpoint of
 * version N can be written as the queue "as of N" (chunks handed out for a version >= N
 * put back) and restored by a restarted scheduler. A hand-out may be capped below a chunk's
 * size (workq_next_max: a straggler's smaller steps); the chunk is then split and its tail
 * waits at the front of the queue as a piece of its own, so an epoch is still covered
 * exactly once and the accounting counts pieces. The queue owns one permutation per
 * epoch still in play; CHUNK payloads point into it (zero-copy) and hold a reference:
 *   workq_next(q, worker, version, &c);
 *   proto_send(sock, id, n, &h, c.idx, workq_release, c.hold);
 *   workq_done(q, worker, epoch, id, &st, &finished, why, sizeof why); */
#ifndef MIMIC_WORKQ_H
#define MIMIC_WORKQ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct workq workq_t;

/* One handed-out chunk. idx stays valid while the reference in `hold` is held; every
 * workq_next takes one, released by workq_release(idx, hold) (a proto_free_fn, safe on
 * ZeroMQ's I/O thread). */
typedef struct {
    uint64_t epoch;
    uint32_t id, start, count;
    const uint32_t *idx;
    void *hold;
    int requeued; /* 1 when it came from the front of the queue */
} workq_chunk_t;

/* Accounting of one epoch once every chunk of it is DONE. */
typedef struct {
    uint64_t epoch, samples, covered, duplicates;
    uint32_t requeued_chunks;
    uint64_t skipped; /* samples of poison chunks skipped: covered + skipped == samples */
    uint32_t split_chunks; /* hand-outs capped below a chunk's size (workq_next_max) */
} workq_epoch_stats_t;

enum { WORKQ_DONE = 0, WORKQ_DUPLICATE = 1 };

/* n samples (>0), chunk_size (>0), seed of the permutations. Starts at epoch 0. */
int workq_new(workq_t **out, uint32_t n, uint32_t chunk_size, uint64_t seed);
void workq_destroy(workq_t **q);

uint32_t workq_chunks_per_epoch(const workq_t *q);
uint32_t workq_chunk_size(const workq_t *q);
/* The next fresh chunk: epoch and chunk id (the "cursor"). */
void workq_position(const workq_t *q, uint64_t *epoch, uint32_t *next);

/* Hands the next chunk (front of the queue first) to worker for `version`. 0 or
 * MIMIC_ENOMEM (when a new epoch's permutation cannot be allocated). */
int workq_next(workq_t *q, int32_t worker, uint64_t version, workq_chunk_t *out);
/* The same with at most max samples (0: no cap): a larger chunk or piece is split, the
 * rest put at the front of the queue (the next hand-out, to whichever worker asks). Its
 * id (> chunks per epoch for a tail) is what CHUNK_DONE then reports. */
int workq_next_max(workq_t *q, int32_t worker, uint64_t version, uint32_t max, workq_chunk_t *out);
void workq_release(void *data, void *hint);

/* worker reports chunk (epoch, id) done. Returns WORKQ_DONE, WORKQ_DUPLICATE (already
 * done: counted in duplicates) or MIMIC_EINVAL with the reason in why (unknown epoch or
 * chunk, never handed out). *finished = 1 and *st filled when this completed its epoch. */
int workq_done(workq_t *q, int32_t worker, uint64_t epoch, uint32_t id, workq_epoch_stats_t *st,
               int *finished, char *why, size_t whylen);

/* Puts every chunk handed to worker and not done back at the front, oldest first.
 * Returns how many. died = 1 when the worker died holding them: a chunk whose holders
 * died more than max_deaths times (workq_set_max_deaths; 0: no limit) is a poison
 * chunk — it is not handed out again but skipped, counted in its epoch's `skipped`,
 * and *skipped (may be NULL) gets how many were. */
int workq_requeue_worker(workq_t *q, int32_t worker, int died, int *skipped);
void workq_set_max_deaths(workq_t *q, int max_deaths);
/* Chunks handed to worker and not yet done. */
int workq_outstanding(const workq_t *q, int32_t worker);

/* Forgets complete epochs none of whose chunks was handed out for a version >=
 * keep_version (checkpoints still to be written need those; UINT64_MAX: none). */
void workq_prune(workq_t *q, uint64_t keep_version);

/* Writes the queue as of parameter version `version` as one JSON object (format
 * "mimicps-scheduler-queue"): every chunk handed out for a version >= `version` is put
 * back (by moving the cursor back, or into "requeued": [epoch, chunk], or for the
 * pending pieces of a split chunk [epoch, start, count], format_version 2). 0 or
 * MIMIC_EIO. */
int workq_snapshot(const workq_t *q, uint64_t version, FILE *f);
/* Replaces q's state by a snapshot (text of len bytes read from path, for messages).
 * Checks format, samples, chunk_size and seed against q. 0 or MIMIC_EFORMAT. */
int workq_restore(workq_t *q, const char *text, size_t len, const char *path);

#endif
