/* straggler — the scheduler's straggler detector (docs/runtime.md, "Stragglers").
 *
 * A worker's step time comes with each CHUNK_DONE (f[PROTO_CDONE_BUSY_S]: seconds from
 * receiving the chunk to handing its gradient to the servers, i.e. data + forward +
 * backward, never the wait for others), normalised to a full chunk so that a cut
 * chunk does not make a slow worker look fast again. A worker whose step time exceeds
 * k x the median of the other live workers' last step times for n consecutive steps
 * is flagged; its first step back under k x that median recovers it. Under ASP/SSP a
 * flagged worker's chunks are cut in proportion to its speed (straggler_chunk). The
 * state is one straggler_t per member (members_entry_t.strag); the scheduler calls
 *   ev = straggler_step(&m->strag, t, straggler_median(others, n), k, n);
 *   cap = straggler_chunk(&m->strag, chunk_size);  -> workq_next_max(..., cap, ...) */
#ifndef MIMIC_STRAGGLER_H
#define MIMIC_STRAGGLER_H

#include <stdint.h>

/* A flagged worker's chunk is never cut below chunk_size / STRAGGLER_MIN_SHARE (and 1
 * sample): a step on fewer samples is mostly the fixed cost of the push and pull. */
#define STRAGGLER_MIN_SHARE 8

typedef struct {
    double step_s;   /* its last step time, normalised to a full chunk (0: none yet) */
    double median_s; /* the others' median it was last compared with (0: none) */
    double ratio;    /* step_s / median_s */
    int slow;        /* consecutive steps above k x the median */
    int flagged;
} straggler_t;

enum { STRAGGLER_SAME = 0, STRAGGLER_FLAGGED = 1, STRAGGLER_RECOVERED = 2 };

/* The median of v[0..n) (sorts v); 0 when n is 0. */
double straggler_median(double *v, int n);
/* Records one step of w lasting step_s against the others' median (0: no other worker
 * has a step time yet: nothing is compared). k <= 0 disables flagging (a flagged worker
 * recovers). Returns STRAGGLER_FLAGGED on the n-th consecutive step above k x median,
 * STRAGGLER_RECOVERED on a flagged worker's first step at or under it, else
 * STRAGGLER_SAME. */
int straggler_step(straggler_t *w, double step_s, double median_s, double k, int n);
/* The most samples to hand a worker: 0 (no cap) unless flagged; then chunk_size x
 * median/step (its speed relative to the others), at least chunk_size /
 * STRAGGLER_MIN_SHARE rounded up. */
uint32_t straggler_chunk(const straggler_t *w, uint32_t chunk_size);

#endif
