/* consistency.c — the BSP/ASP/SSP rules and the table of workers they read. */
#include "consistency.h"

#include "common.h"

#include <stdlib.h>

typedef struct {
    int32_t id;
    int live;
    uint64_t bsp_mark; /* BSP: 1 + the version this worker last pushed for; 0 = none */
    uint64_t clock;    /* SSP: pushes applied */
} cons_worker_t;

struct cons {
    cons_mode_t mode;
    uint64_t staleness;
    int quorum;
    cons_worker_t *workers;
    int nworkers, capworkers;
    int membership_known;
    int64_t epoch;
};

int cons_new(cons_t **out, cons_mode_t mode, int staleness, int quorum) {
    *out = NULL;
    if (staleness < 0)
        return mimic_err(MIMIC_EINVAL, "cluster.staleness: %d is negative", staleness);
    cons_t *c = calloc(1, sizeof *c);
    if (!c) return mimic_err(MIMIC_ENOMEM, "out of memory for the consistency state");
    c->mode = mode;
    c->staleness = (uint64_t)staleness;
    c->quorum = quorum;
    *out = c;
    return 0;
}

void cons_destroy(cons_t **cp) {
    if (!cp || !*cp) return;
    free((*cp)->workers);
    free(*cp);
    *cp = NULL;
}

static cons_worker_t *worker_find(const cons_t *c, int32_t id) {
    for (int i = 0; i < c->nworkers; i++)
        if (c->workers[i].id == id) return &c->workers[i];
    return NULL;
}

/* The entry of worker id, created (not live, SSP clock clock0) when new; NULL when the
 * table is full. */
static cons_worker_t *worker_get(cons_t *c, int32_t id, uint64_t clock0) {
    cons_worker_t *w = worker_find(c, id);
    if (w) return w;
    if (c->nworkers == c->capworkers) {
        if (c->capworkers >= CONS_WORKERS_MAX) return NULL;
        int cap = c->capworkers ? 2 * c->capworkers : 16;
        cons_worker_t *nw = realloc(c->workers, (size_t)cap * sizeof *nw);
        if (!nw) return NULL;
        c->workers = nw;
        c->capworkers = cap;
    }
    w = &c->workers[c->nworkers++];
    *w = (cons_worker_t){.id = id, .clock = clock0};
    return w;
}

/* Workers a step waits for: the live set once MEMBERSHIP arrived; before that, every
 * worker seen (and the quorum is checked on top). */
static int worker_counts(const cons_t *c, const cons_worker_t *w) {
    return c->membership_known ? w->live : 1;
}

cons_push_t cons_push(cons_t *c, int32_t worker, uint64_t step, uint64_t version) {
    if (c->mode == CONS_BSP && step != version) return CONS_STALE;
    if (c->mode != CONS_BSP && step > version) return CONS_AHEAD;
    /* before the first MEMBERSHIP a worker counts from its first push on */
    cons_worker_t *w = c->membership_known ? worker_find(c, worker) : worker_get(c, worker, 0);
    if (!w || (c->membership_known && !w->live)) return CONS_NOT_LIVE;
    if (c->mode == CONS_BSP) {
        if (w->bsp_mark == version + 1) return CONS_DUPLICATE;
        w->bsp_mark = version + 1;
        return CONS_SUM;
    }
    w->clock++;
    return CONS_APPLY;
}

int cons_step_due(const cons_t *c, uint64_t version) {
    if (c->mode != CONS_BSP) return 0;
    uint64_t mark = version + 1;
    int any = 0, pushed = 0;
    for (int i = 0; i < c->nworkers; i++) {
        const cons_worker_t *w = &c->workers[i];
        any |= w->bsp_mark == mark; /* a worker that left since still has its push summed */
        if (!worker_counts(c, w)) continue;
        if (w->bsp_mark != mark) return 0;
        pushed++;
    }
    return any && (c->membership_known || pushed >= c->quorum);
}

uint64_t cons_min_clock(const cons_t *c) {
    uint64_t mn = UINT64_MAX;
    int counted = 0;
    for (int i = 0; i < c->nworkers; i++) {
        const cons_worker_t *w = &c->workers[i];
        if (!worker_counts(c, w)) continue;
        counted++;
        if (w->clock < mn) mn = w->clock;
    }
    if (!c->membership_known && counted < c->quorum) return 0;
    return mn;
}

int cons_pull_ready(const cons_t *c, uint64_t want, uint64_t version) {
    if (c->mode == CONS_SSP) {
        uint64_t mn = cons_min_clock(c);
        return mn == UINT64_MAX || mn + c->staleness >= want;
    }
    return version >= want;
}

int cons_membership_outdated(const cons_t *c, int64_t epoch) {
    return c->membership_known && epoch < c->epoch;
}

int cons_membership(cons_t *c, int64_t epoch, const int32_t *ids, size_t n) {
    /* SSP: a joining worker starts at the slowest live worker's clock, so that it does
     * not hold everybody back until it has made as many pushes as they have. */
    uint64_t mn = cons_min_clock(c), clock0 = mn == UINT64_MAX ? 0 : mn;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0 && !worker_get(c, ids[i], clock0)) return MIMIC_ENOMEM;
    for (int i = 0; i < c->nworkers; i++)
        c->workers[i].live = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0) worker_find(c, ids[i])->live = 1;
    c->membership_known = 1;
    c->epoch = epoch;
    return 0;
}

int cons_counts_at(const cons_t *c, int i, int32_t *id) {
    if (i < 0 || i >= c->nworkers) return -1;
    *id = c->workers[i].id;
    return worker_counts(c, &c->workers[i]);
}

int cons_is_live(const cons_t *c, int32_t worker) {
    if (!c->membership_known) return 1;
    const cons_worker_t *w = worker_find(c, worker);
    return w && w->live;
}

int cons_quorum_met(const cons_t *c, size_t n) {
    return c->membership_known || n >= (size_t)(c->quorum > 0 ? c->quorum : 0);
}

int64_t cons_epoch(const cons_t *c) {
    return c->epoch;
}
