/* consistency — when a parameter server applies pushed gradients and answers pulls:
 * BSP, ASP or SSP with bound s (cluster.consistency, docs/runtime.md "Data plane").
 *
 * It owns the table of the workers the server has heard of: live or not (the scheduler's
 * last MEMBERSHIP), the version each last pushed for (BSP) and each one's clock (SSP:
 * pushes applied). Before the first MEMBERSHIP every worker that pushed counts, and a
 * step or a held SSP pull also waits until `quorum` (cluster.workers) of them did. The
 * event loop asks it whether a PUSH is accepted and what to do with it (cons_push),
 * whether the BSP step is due (cons_step_due) and whether a PULL can be answered
 * (cons_pull_ready), and tells it every MEMBERSHIP (cons_membership). Versions are the
 * store's (kvstore.h), passed in: the module holds no gradients and sends nothing. */
#ifndef MIMIC_CONSISTENCY_H
#define MIMIC_CONSISTENCY_H

#include "config.h"

#include <stddef.h>
#include <stdint.h>

#define CONS_WORKERS_MAX 65536 /* distinct worker ids tracked */

typedef struct cons cons_t;

/* What becomes of a PUSH. Refusals record nothing. */
typedef enum {
    CONS_SUM,       /* BSP: add it to the step's sum, then ask cons_step_due */
    CONS_APPLY,     /* ASP, SSP: one step with this gradient alone, now */
    CONS_STALE,     /* BSP: computed on another version than the server's */
    CONS_AHEAD,     /* ASP, SSP: computed on a version the server has not reached */
    CONS_NOT_LIVE,  /* the worker is not in the live set (or the table is full) */
    CONS_DUPLICATE, /* BSP: the worker already pushed for this version */
} cons_push_t;

/* quorum: workers a step (and an SSP pull) waits for before the first MEMBERSHIP.
 * MIMIC_EINVAL naming cluster.staleness when it is negative. */
int cons_new(cons_t **out, cons_mode_t mode, int staleness, int quorum);
void cons_destroy(cons_t **c);

/* A PUSH from `worker` computed on version `step`, the server being at `version`. An
 * accepted one is recorded (BSP: the worker pushed for `version`; SSP: its clock + 1). */
cons_push_t cons_push(cons_t *c, int32_t worker, uint64_t step, uint64_t version);
/* BSP: 1 when the step from `version` is due: somebody pushed for it and every counted
 * worker did (before the first MEMBERSHIP: at least `quorum` of them). Else 0. */
int cons_step_due(const cons_t *c, uint64_t version);
/* Whether a PULL asking for `want` (BSP, ASP: a version; SSP: the worker's clock) can be
 * answered at `version`. SSP: when the slowest clock + s >= want. */
int cons_pull_ready(const cons_t *c, uint64_t want, uint64_t version);

/* 1 when a MEMBERSHIP of `epoch` is older than the one applied (to be ignored). */
int cons_membership_outdated(const cons_t *c, int64_t epoch);
/* The live set becomes ids (n of them; negative ids are skipped). A worker new to the
 * table starts at the slowest clock, so it does not hold SSP pulls back. MIMIC_ENOMEM,
 * without a message, beyond CONS_WORKERS_MAX workers (then nothing changed but the
 * entries created, which are not live). A shrink can
 * make the BSP step due. */
int cons_membership(cons_t *c, int64_t epoch, const int32_t *ids, size_t n);
/* The epoch of the MEMBERSHIP applied (0 before the first). */
int64_t cons_epoch(const cons_t *c);
/* Walks the worker table for modules that wait on the same workers as a step
 * (stepkeys.h): for entry i, 1 and *id when that worker counts (live once MEMBERSHIP
 * arrived, before it every worker seen), 0 when it does not, -1 past the end. */
int cons_counts_at(const cons_t *c, int i, int32_t *id);
/* 1 when `worker` may take part in a step: it is live (before the first MEMBERSHIP:
 * always), else 0. */
int cons_is_live(const cons_t *c, int32_t worker);
/* 1 when n pushes are enough for a step as far as the quorum goes: always after the
 * first MEMBERSHIP, before it n >= quorum. */
int cons_quorum_met(const cons_t *c, size_t n);
/* SSP: the slowest counted worker's clock; UINT64_MAX when no worker counts, 0 while
 * fewer than the quorum pushed before the first MEMBERSHIP. */
uint64_t cons_min_clock(const cons_t *c);

#endif
