#include "workq.h"

#include "common.h"
#include "json.h"
#include "order.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define WORKQ_FORMAT "mimicps-scheduler-queue"
#define WORKQ_FORMAT_VERSION 2 /* 2: "requeued" may list pieces [epoch, start, count] */
#define WQ_NONE UINT32_MAX

/* An epoch's permutation, shared with ZeroMQ by the CHUNK payloads that point into it:
 * the epoch holds one reference, every payload in flight another. */
typedef struct {
    atomic_int refs;
    uint32_t n;
    uint32_t idx[];
} wq_perm_t;

enum { CH_NEW, CH_OUT, CH_QUEUED, CH_DONE };

/* One piece of an epoch: at first piece k is grid chunk k (positions [k*cs, ...)); a
 * hand-out capped below a piece's size (workq_next_max) splits it, and the tail becomes
 * a new piece (id >= nchunks) linked from the grid chunk's head, queued at the front. */
typedef struct {
    uint8_t state;
    uint32_t done;    /* times reported done */
    uint32_t deaths;  /* holders that died with it */
    int32_t worker;   /* holder while CH_OUT */
    uint64_t version; /* parameter version of the last hand-out */
    uint32_t start, count; /* positions in the epoch's permutation */
    uint32_t next;         /* the grid chunk's next piece, WQ_NONE at the end */
} wq_chunk_t;

typedef struct {
    uint64_t epoch;
    wq_perm_t *perm;
    wq_chunk_t *ch;
    uint32_t npieces, cap, ndone; /* pieces 0..nchunks-1 are the grid chunks' heads */
    uint64_t covered, duplicates, skipped;
    uint32_t requeued, split;
    int reported;
    int handed;           /* any chunk handed out since the epoch was created */
    uint64_t max_version; /* over hand-outs, valid when handed */
} wq_epoch_t;

typedef struct {
    uint64_t epoch;
    uint32_t id;
} wq_ref_t;

struct workq {
    uint32_t n, cs, nchunks;
    uint64_t seed;
    wq_epoch_t **ep; /* epochs still in play, ascending; the last one is the cursor's */
    int nep, capep;
    uint32_t next; /* cursor: next fresh chunk id of the last epoch (may equal nchunks) */
    wq_ref_t *rq;  /* requeued chunks; the front of the queue is the END of the array */
    size_t nrq, caprq;
    int max_deaths; /* a chunk whose holders died more often is skipped (0: never) */
};

static void perm_unref(wq_perm_t *p) {
    if (p && atomic_fetch_sub(&p->refs, 1) == 1) free(p);
}

void workq_release(void *data, void *hint) {
    (void)data;
    perm_unref(hint);
}

static void epoch_free(wq_epoch_t *e) {
    if (!e) return;
    perm_unref(e->perm);
    free(e->ch);
    free(e);
}

static uint32_t chunk_count(const workq_t *q, uint32_t id) {
    uint64_t start = (uint64_t)id * q->cs;
    return (uint32_t)(q->n - start < q->cs ? q->n - start : q->cs);
}

static wq_epoch_t *epoch_new(const workq_t *q, uint64_t epoch) {
    wq_epoch_t *e = calloc(1, sizeof *e);
    if (!e) goto fail;
    e->epoch = epoch;
    e->npieces = e->cap = q->nchunks;
    e->ch = calloc(q->nchunks, sizeof *e->ch);
    e->perm = malloc(sizeof *e->perm + (size_t)q->n * sizeof(uint32_t));
    if (!e->ch || !e->perm) goto fail;
    for (uint32_t k = 0; k < q->nchunks; k++)
        e->ch[k] = (wq_chunk_t){.start = k * q->cs, .count = chunk_count(q, k), .next = WQ_NONE};
    atomic_init(&e->perm->refs, 1);
    e->perm->n = q->n;
    order_permutation(e->perm->idx, q->n, q->seed, epoch);
    return e;
fail:
    if (e) {
        free(e->ch);
        free(e->perm);
        free(e);
    }
    mimic_err(MIMIC_ENOMEM, "out of memory for epoch %" PRIu64 " of the work queue", epoch);
    return NULL;
}

/* Appends e (epochs are appended in ascending order). Takes ownership, also on failure. */
static int push_epoch(workq_t *q, wq_epoch_t *e) {
    if (q->nep == q->capep) {
        int cap = q->capep ? 2 * q->capep : 4;
        wq_epoch_t **v = realloc(q->ep, (size_t)cap * sizeof *v);
        if (!v) {
            epoch_free(e);
            return mimic_err(MIMIC_ENOMEM, "out of memory for the work queue");
        }
        q->ep = v;
        q->capep = cap;
    }
    q->ep[q->nep++] = e;
    return 0;
}

static int push_front(workq_t *q, uint64_t epoch, uint32_t id) {
    if (q->nrq == q->caprq) {
        size_t cap = q->caprq ? 2 * q->caprq : 64;
        wq_ref_t *v = realloc(q->rq, cap * sizeof *v);
        if (!v) return mimic_err(MIMIC_ENOMEM, "out of memory for the requeue list");
        q->rq = v;
        q->caprq = cap;
    }
    q->rq[q->nrq++] = (wq_ref_t){epoch, id};
    return 0;
}

static wq_epoch_t *find_epoch(const workq_t *q, uint64_t epoch) {
    for (int i = 0; i < q->nep; i++)
        if (q->ep[i]->epoch == epoch) return q->ep[i];
    return NULL;
}

/* A new queued piece [start, start+count) of grid chunk k of e, linked after its head;
 * its id in *id. 0 or MIMIC_ENOMEM. */
static int add_piece(wq_epoch_t *e, uint32_t k, uint32_t start, uint32_t count, uint32_t *id) {
    if (e->npieces == e->cap) {
        uint32_t cap = e->cap ? 2 * e->cap : 4;
        wq_chunk_t *v = realloc(e->ch, (size_t)cap * sizeof *v);
        if (!v) return mimic_err(MIMIC_ENOMEM, "out of memory splitting a chunk");
        e->ch = v;
        e->cap = cap;
    }
    *id = e->npieces++;
    e->ch[*id] =
        (wq_chunk_t){.state = CH_QUEUED, .start = start, .count = count, .next = e->ch[k].next};
    e->ch[k].next = *id;
    return 0;
}

uint32_t workq_chunk_size(const workq_t *q) {
    return q->cs;
}

int workq_new(workq_t **out, uint32_t n, uint32_t chunk_size, uint64_t seed) {
    *out = NULL;
    if (n == 0 || chunk_size == 0)
        return mimic_err(MIMIC_EINVAL, "work queue: %u samples in chunks of %u", n, chunk_size);
    workq_t *q = calloc(1, sizeof *q);
    if (!q) return mimic_err(MIMIC_ENOMEM, "out of memory for the work queue");
    q->n = n;
    q->cs = chunk_size;
    q->nchunks = (uint32_t)(((uint64_t)n + chunk_size - 1) / chunk_size);
    q->seed = seed;
    wq_epoch_t *e = epoch_new(q, 0);
    int rc = e ? push_epoch(q, e) : MIMIC_ENOMEM;
    if (rc) {
        workq_destroy(&q);
        return rc;
    }
    *out = q;
    return 0;
}

static void clear(workq_t *q) {
    for (int i = 0; i < q->nep; i++)
        epoch_free(q->ep[i]);
    q->nep = 0;
    q->nrq = 0;
    q->next = 0;
}

void workq_destroy(workq_t **pq) {
    if (!pq || !*pq) return;
    clear(*pq);
    free((*pq)->ep);
    free((*pq)->rq);
    free(*pq);
    *pq = NULL;
}

uint32_t workq_chunks_per_epoch(const workq_t *q) {
    return q->nchunks;
}

void workq_position(const workq_t *q, uint64_t *epoch, uint32_t *next) {
    const wq_epoch_t *cur = q->ep[q->nep - 1];
    *epoch = cur->epoch + (q->next == q->nchunks);
    *next = q->next == q->nchunks ? 0 : q->next;
}

/* Hands out piece id of e, first cutting it to max samples: the tail becomes a piece of
 * its own at the front of the queue. */
static void hand_out(wq_epoch_t *e, workq_t *q, uint32_t id, int32_t worker, uint64_t version,
                     uint32_t max, workq_chunk_t *out) {
    uint32_t tail = 0;
    if (max > 0 && e->ch[id].count > max &&
        add_piece(e, e->ch[id].start / q->cs, e->ch[id].start + max, e->ch[id].count - max,
                  &tail) == 0) {
        if (push_front(q, e->epoch, tail) == 0) {
            e->ch[id].count = max;
            e->split++;
        } else { /* out of memory: the piece is handed out whole */
            e->ch[e->ch[id].start / q->cs].next = e->ch[tail].next;
            e->npieces--;
        }
    }
    wq_chunk_t *c = &e->ch[id];
    c->state = CH_OUT;
    c->worker = worker;
    c->version = version;
    if (!e->handed || version > e->max_version) e->max_version = version;
    e->handed = 1;
    atomic_fetch_add(&e->perm->refs, 1);
    out->epoch = e->epoch;
    out->id = id;
    out->start = c->start;
    out->count = c->count;
    out->idx = e->perm->idx + out->start;
    out->hold = e->perm;
}

int workq_next(workq_t *q, int32_t worker, uint64_t version, workq_chunk_t *out) {
    return workq_next_max(q, worker, version, 0, out);
}

int workq_next_max(workq_t *q, int32_t worker, uint64_t version, uint32_t max, workq_chunk_t *out) {
    memset(out, 0, sizeof *out);
    while (q->nrq > 0) {
        wq_ref_t r = q->rq[--q->nrq];
        wq_epoch_t *e = find_epoch(q, r.epoch);
        if (!e || e->ch[r.id].state != CH_QUEUED) continue; /* done meanwhile */
        hand_out(e, q, r.id, worker, version, max, out);
        out->requeued = 1;
        return 0;
    }
    if (q->next == q->nchunks) { /* the queue never ends: the next epoch begins */
        wq_epoch_t *e = epoch_new(q, q->ep[q->nep - 1]->epoch + 1);
        int rc = e ? push_epoch(q, e) : MIMIC_ENOMEM;
        if (rc) return rc;
        q->next = 0;
    }
    hand_out(q->ep[q->nep - 1], q, q->next++, worker, version, max, out);
    return 0;
}

/* One more chunk of e is over (done or skipped): the epoch's stats once all are. */
static void epoch_chunk_done(const workq_t *q, wq_epoch_t *e, workq_epoch_stats_t *st,
                             int *finished) {
    e->ndone++;
    if (e->ndone == e->npieces && !e->reported) {
        e->reported = 1;
        *finished = 1;
        st->epoch = e->epoch;
        st->samples = q->n;
        st->covered = e->covered;
        st->duplicates = e->duplicates;
        st->requeued_chunks = e->requeued;
        st->skipped = e->skipped;
        st->split_chunks = e->split;
    }
}

int workq_done(workq_t *q, int32_t worker, uint64_t epoch, uint32_t id, workq_epoch_stats_t *st,
               int *finished, char *why, size_t whylen) {
    (void)worker; /* a chunk is processed whoever reports it; the holder is informative */
    *finished = 0;
    wq_epoch_t *e = find_epoch(q, epoch);
    if (!e) {
        uint64_t cur = q->ep[q->nep - 1]->epoch;
        snprintf(why, whylen, "chunk %" PRIu64 "/%u: epoch %s", epoch, id,
                 epoch > cur ? "not started" : "already complete");
        return MIMIC_EINVAL;
    }
    if (id >= e->npieces) {
        snprintf(why, whylen, "chunk %" PRIu64 "/%u: the epoch has %u chunks", epoch, id,
                 e->npieces);
        return MIMIC_EINVAL;
    }
    wq_chunk_t *c = &e->ch[id];
    uint32_t count = c->count;
    if (c->state == CH_NEW) {
        snprintf(why, whylen, "chunk %" PRIu64 "/%u was never handed out", epoch, id);
        return MIMIC_EINVAL;
    }
    if (c->state == CH_DONE) {
        c->done++;
        e->duplicates += count;
        return WORKQ_DUPLICATE;
    }
    c->state = CH_DONE; /* from OUT, or QUEUED: a stale requeue entry is skipped later */
    c->done = 1;
    e->covered += count;
    epoch_chunk_done(q, e, st, finished);
    return WORKQ_DONE;
}

void workq_set_max_deaths(workq_t *q, int max_deaths) {
    q->max_deaths = max_deaths > 0 ? max_deaths : 0;
}

int workq_requeue_worker(workq_t *q, int32_t worker, int died, int *skipped) {
    int n = 0;
    if (skipped) *skipped = 0;
    /* Newest first onto the front, so the oldest chunk is handed out first. */
    for (int i = q->nep - 1; i >= 0; i--) {
        wq_epoch_t *e = q->ep[i];
        for (uint32_t k = e->npieces; k-- > 0;) {
            wq_chunk_t *c = &e->ch[k];
            if (c->state != CH_OUT || c->worker != worker) continue;
            if (died && q->max_deaths > 0 && ++c->deaths > (uint32_t)q->max_deaths) {
                /* a poison chunk: every worker that takes it dies; skip it, accounted */
                workq_epoch_stats_t st;
                int finished = 0;
                c->state = CH_DONE;
                e->skipped += c->count;
                epoch_chunk_done(q, e, &st, &finished);
                mimic_warn("work queue: chunk %" PRIu64 "/%u skipped: %u worker(s) died holding "
                           "it (cluster.chunk_retries %d)%s",
                           e->epoch, k, c->deaths, q->max_deaths,
                           finished ? "; it was the epoch's last chunk" : "");
                if (skipped) ++*skipped;
                continue;
            }
            if (push_front(q, e->epoch, k)) {
                mimic_warn("work queue: chunk %" PRIu64 "/%u lost (out of memory)", e->epoch, k);
                continue;
            }
            c->state = CH_QUEUED;
            e->requeued++;
            n++;
        }
    }
    return n;
}

int workq_outstanding(const workq_t *q, int32_t worker) {
    int n = 0;
    for (int i = 0; i < q->nep; i++)
        for (uint32_t k = 0; k < q->ep[i]->npieces; k++)
            n += q->ep[i]->ch[k].state == CH_OUT && q->ep[i]->ch[k].worker == worker;
    return n;
}

void workq_prune(workq_t *q, uint64_t keep_version) {
    int w = 0;
    for (int i = 0; i < q->nep; i++) {
        wq_epoch_t *e = q->ep[i];
        int keep = i == q->nep - 1 || !e->reported || (e->handed && e->max_version >= keep_version);
        if (keep)
            q->ep[w++] = e;
        else
            epoch_free(e);
    }
    q->nep = w;
}

/* ---- snapshot ---------------------------------------------------------------------- */

/* Whether piece k of e is still to be processed as of parameter version v. */
static int pending_at(const wq_epoch_t *e, uint32_t k, uint64_t v) {
    const wq_chunk_t *c = &e->ch[k];
    return c->state == CH_NEW || c->state == CH_QUEUED || c->version >= v;
}

/* Whether every piece of grid chunk k is (0: some are, 1: all, -1: none). */
static int grid_pending_at(const wq_epoch_t *e, uint32_t k, uint64_t v) {
    int any = 0, all = 1;
    for (uint32_t p = k; p != WQ_NONE; p = e->ch[p].next) {
        int pend = pending_at(e, p, v);
        any |= pend;
        all &= pend;
    }
    return all ? 1 : any ? 0 : -1;
}

int workq_snapshot(const workq_t *q, uint64_t version, FILE *f) {
    /* The cursor moves back over every trailing chunk handed out for >= version (all
     * of its pieces); the pending chunks before it are listed as requeued, whole ones
     * as [epoch, chunk], pieces of split ones as [epoch, start, count]. */
    int pi = q->nep - 1;
    uint32_t pk = q->next;
    for (;;) {
        int i = pi;
        uint32_t k = pk;
        if (k > 0)
            k--;
        else if (i > 0 && q->ep[i - 1]->epoch + 1 == q->ep[i]->epoch) {
            i--;
            k = q->nchunks - 1;
        } else
            break;
        if (grid_pending_at(q->ep[i], k, version) != 1) break;
        pi = i;
        pk = k;
    }
    uint64_t epoch = q->ep[pi]->epoch;
    uint32_t next = pk;
    if (next == q->nchunks) {
        epoch++;
        next = 0;
    }
    int pieces = 0;
    for (int i = 0; i <= pi; i++)
        for (uint32_t k = 0; k < (i == pi ? pk : q->nchunks); k++)
            pieces |= grid_pending_at(q->ep[i], k, version) == 0;
    fprintf(f,
            "{\"format\":\"%s\",\"format_version\":%d,\"step\":%" PRIu64 ",\"samples\":%u,"
            "\"chunk_size\":%u,\"seed\":%" PRIu64 ",\"epoch\":%" PRIu64 ",\"next_chunk\":%u,"
            "\"requeued\":[",
            WORKQ_FORMAT, pieces ? WORKQ_FORMAT_VERSION : 1, version, q->n, q->cs, q->seed, epoch,
            next);
    int first = 1;
    for (int i = 0; i <= pi; i++) {
        const wq_epoch_t *e = q->ep[i];
        uint32_t end = i == pi ? pk : q->nchunks;
        for (uint32_t k = 0; k < end; k++) {
            int g = grid_pending_at(e, k, version);
            if (g == 1) {
                fprintf(f, "%s[%" PRIu64 ",%u]", first ? "" : ",", e->epoch, k);
                first = 0;
            }
            for (uint32_t p = k; g == 0 && p != WQ_NONE; p = e->ch[p].next)
                if (pending_at(e, p, version)) {
                    fprintf(f, "%s[%" PRIu64 ",%u,%u]", first ? "" : ",", e->epoch, e->ch[p].start,
                            e->ch[p].count);
                    first = 0;
                }
        }
    }
    fputs("],\"epochs\":[", f);
    first = 1;
    for (int i = 0; i <= pi; i++) {
        const wq_epoch_t *e = q->ep[i];
        fprintf(f, "%s{\"epoch\":%" PRIu64 ",\"requeued_chunks\":%u,\"duplicates\":%" PRIu64 "}",
                first ? "" : ",", e->epoch, e->requeued, e->duplicates);
        first = 0;
    }
    fputs("]}\n", f);
    return ferror(f) ? mimic_err(MIMIC_EIO, "work queue snapshot: write failed") : 0;
}

/* ---- restore ----------------------------------------------------------------------- */

static int get_uint(const json_value_t *root, const char *key, uint64_t *out, const char *path) {
    const json_value_t *v = json_get(root, key);
    if (!v || v->type != JSON_NUMBER || !v->is_int || v->i < 0)
        return mimic_err(MIMIC_EFORMAT, "%s: field '%s' missing or not a non-negative integer",
                         path, key);
    *out = (uint64_t)v->i;
    return 0;
}

static int check_eq(const json_value_t *root, const char *key, uint64_t want, const char *path) {
    uint64_t got = 0;
    int rc = get_uint(root, key, &got, path);
    if (rc) return rc;
    if (got != want)
        return mimic_err(MIMIC_EFORMAT,
                         "%s: '%s' is %" PRIu64 " but this run has %" PRIu64
                         " (data set or config changed since the checkpoint)",
                         path, key, got, want);
    return 0;
}

static int restore_epoch(workq_t *q, uint64_t epoch, uint32_t fresh_from) {
    wq_epoch_t *e = epoch_new(q, epoch);
    if (!e) return MIMIC_ENOMEM;
    for (uint32_t k = 0; k < fresh_from; k++) {
        e->ch[k].state = CH_DONE;
        e->ch[k].done = 1;
        e->ndone++;
        e->covered += chunk_count(q, k);
    }
    return push_epoch(q, e);
}

/* One entry of a snapshot's "requeued": a whole grid chunk or a piece of one. */
typedef struct {
    uint64_t epoch;
    uint32_t k, start, count; /* grid chunk k; positions [start, start+count) */
    int whole;
} wq_entry_t;

/* [epoch, chunk] or [epoch, start, count] (a piece within one chunk), before the cursor. */
static int parse_entry(const json_value_t *v, const workq_t *q, uint64_t ep_end, uint32_t next,
                       wq_entry_t *r) {
    if (v->type != JSON_ARRAY || (v->n != 2 && v->n != 3)) return -1;
    for (int j = 0; j < v->n; j++)
        if (v->items[j].type != JSON_NUMBER || !v->items[j].is_int || v->items[j].i < 0 ||
            v->items[j].i > UINT32_MAX)
            return -1;
    r->epoch = (uint64_t)v->items[0].i;
    r->whole = v->n == 2;
    if (r->whole) {
        if (v->items[1].i >= q->nchunks) return -1;
        r->k = (uint32_t)v->items[1].i;
        r->start = r->k * q->cs;
        r->count = chunk_count(q, r->k);
    } else {
        if (v->items[1].i >= q->n || v->items[2].i == 0) return -1;
        r->start = (uint32_t)v->items[1].i;
        r->count = (uint32_t)v->items[2].i;
        r->k = r->start / q->cs;
        if ((uint64_t)r->start + r->count > (uint64_t)r->k * q->cs + chunk_count(q, r->k))
            return -1; /* crosses the end of its chunk */
    }
    if (r->epoch > ep_end || (r->epoch == ep_end && r->k >= next)) return -1;
    return 0;
}

static int cmp_entry(const void *a, const void *b) {
    const wq_entry_t *x = a, *y = b;
    if (x->epoch != y->epoch) return x->epoch < y->epoch ? -1 : 1;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Puts entry r back into the restored queue: a whole chunk flips from done to queued,
 * a piece becomes a queued piece of its (otherwise done) chunk. */
static int requeue_entry(workq_t *q, const wq_entry_t *r, const char *path) {
    wq_epoch_t *e = find_epoch(q, r->epoch);
    wq_chunk_t *c = &e->ch[r->k];
    uint32_t id = r->k;
    if (c->state != CH_DONE) {
        if (r->whole) return 0; /* listed twice */
        return mimic_err(MIMIC_EFORMAT, "%s: requeued piece [%" PRIu64 ",%u,%u] overlaps chunk %u",
                         path, r->epoch, r->start, r->count, r->k);
    }
    if (r->whole) {
        c->state = CH_QUEUED;
        c->done = 0;
        e->ndone--;
    } else {
        int rc = add_piece(e, r->k, r->start, r->count, &id);
        if (rc) return rc;
    }
    e->covered -= r->count;
    return push_front(q, r->epoch, id);
}

int workq_restore(workq_t *q, const char *text, size_t len, const char *path) {
    json_value_t *root = NULL;
    wq_entry_t *refs = NULL;
    char err[256];
    int rc = json_parse(&root, text, len, err, sizeof err);
    if (rc) return mimic_err(MIMIC_EFORMAT, "%s: %s", path, err);
    const json_value_t *fmt = json_get(root, "format");
    uint64_t epoch = 0, next = 0, fv = 0;
    if (!fmt || fmt->type != JSON_STRING || strcmp(fmt->str, WORKQ_FORMAT) != 0) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: field 'format' is not \"%s\"", path, WORKQ_FORMAT);
        goto out;
    }
    if ((rc = get_uint(root, "format_version", &fv, path))) goto out;
    if (fv != 1 && fv != WORKQ_FORMAT_VERSION) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: format_version %" PRIu64 " (this build reads 1 and %d)",
                       path, fv, WORKQ_FORMAT_VERSION);
        goto out;
    }
    if ((rc = check_eq(root, "samples", q->n, path)) ||
        (rc = check_eq(root, "chunk_size", q->cs, path)) ||
        (rc = check_eq(root, "seed", q->seed, path)) ||
        (rc = get_uint(root, "epoch", &epoch, path)) ||
        (rc = get_uint(root, "next_chunk", &next, path)))
        goto out;
    if (next >= q->nchunks) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: next_chunk %" PRIu64 " but an epoch has %u chunks", path,
                       next, q->nchunks);
        goto out;
    }
    const json_value_t *rq = json_get(root, "requeued"), *eps = json_get(root, "epochs");
    if (!rq || rq->type != JSON_ARRAY || (eps && eps->type != JSON_ARRAY)) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: field 'requeued' (or 'epochs') is not an array", path);
        goto out;
    }
    refs = calloc((size_t)rq->n + 1, sizeof *refs);
    if (!refs) {
        rc = mimic_err(MIMIC_ENOMEM, "out of memory restoring %s", path);
        goto out;
    }
    for (int j = 0; j < rq->n; j++)
        if (parse_entry(&rq->items[j], q, epoch, (uint32_t)next, &refs[j])) {
            rc = mimic_err(MIMIC_EFORMAT,
                           "%s: requeued[%d] is neither [epoch, chunk] nor [epoch, start, count] "
                           "within one chunk, before the cursor",
                           path, j);
            goto out;
        }
    qsort(refs, (size_t)rq->n, sizeof *refs, cmp_entry);
    for (int j = 1; j < rq->n; j++) {
        const wq_entry_t *a = &refs[j - 1], *b = &refs[j];
        int same = a->whole && b->whole && a->start == b->start;
        if (a->epoch == b->epoch && a->start + a->count > b->start && !same) {
            rc = mimic_err(MIMIC_EFORMAT,
                           "%s: requeued entries overlap at position %u of epoch %" PRIu64, path,
                           b->start, b->epoch);
            goto out;
        }
    }
    clear(q);
    /* One epoch state per epoch with requeued chunks, plus the cursor's epoch. */
    for (int j = 0; j < rq->n && !rc; j++)
        if (refs[j].epoch != epoch && (j == 0 || refs[j].epoch != refs[j - 1].epoch))
            rc = restore_epoch(q, refs[j].epoch, q->nchunks);
    if (!rc) rc = restore_epoch(q, epoch, (uint32_t)next);
    q->next = (uint32_t)next;
    for (int j = rq->n - 1; j >= 0 && !rc; j--)
        rc = requeue_entry(q, &refs[j], path);
    for (int j = 0; eps && j < eps->n && !rc; j++) {
        uint64_t ee = 0, r = 0, d = 0;
        const json_value_t *o = &eps->items[j];
        if (get_uint(o, "epoch", &ee, path) || get_uint(o, "requeued_chunks", &r, path) ||
            get_uint(o, "duplicates", &d, path)) {
            rc = MIMIC_EFORMAT;
            break;
        }
        wq_epoch_t *e = find_epoch(q, ee);
        if (e) {
            e->requeued = (uint32_t)r;
            e->duplicates = d;
        }
    }
    if (rc) { /* never leave a half-restored queue behind: back to a fresh epoch 0 */
        clear(q);
        wq_epoch_t *e = epoch_new(q, 0);
        if (e) push_epoch(q, e);
    }
out:
    free(refs);
    json_destroy(&root);
    return rc;
}
