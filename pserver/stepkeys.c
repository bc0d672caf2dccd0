/* stepkeys.c — gathering a step's keys from every live worker. */
#include "stepkeys.h"

#include "common.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t id;
    uint64_t step;
    size_t n;
    float *rows; /* n x dim, owned */
} sk_part_t;

typedef struct {
    int32_t id;
    uint64_t floor; /* pushes nothing for steps < floor */
} sk_floor_t;

/* A worker's rows in the released matrix. */
typedef struct {
    int32_t id;
    size_t offset, n;
} sk_slot_t;

struct stepkeys {
    size_t dim, max_rows;
    uint64_t next; /* steps < next are released or refused */
    sk_part_t *parts;
    int nparts, capparts;
    size_t pending_rows;
    sk_floor_t *floors;
    int nfloors, capfloors;
    /* the released step */
    int released;
    uint64_t rel_step;
    float *rel;
    size_t rel_count, rel_cap;
    sk_slot_t *slots;
    int nslots, capslots;
};

int stepkeys_new(stepkeys_t **out, size_t dim, size_t max_rows) {
    *out = NULL;
    if (dim == 0 || max_rows == 0)
        return mimic_err(MIMIC_EINVAL, "stepkeys: %zu rows of %zu floats", max_rows, dim);
    stepkeys_t *k = calloc(1, sizeof *k);
    if (!k) return mimic_err(MIMIC_ENOMEM, "out of memory for the step keys");
    k->dim = dim;
    k->max_rows = max_rows;
    *out = k;
    return 0;
}

static void drop_parts(stepkeys_t *k) {
    for (int i = 0; i < k->nparts; i++)
        free(k->parts[i].rows);
    k->nparts = 0;
    k->pending_rows = 0;
}

void stepkeys_destroy(stepkeys_t **kp) {
    if (!kp || !*kp) return;
    stepkeys_t *k = *kp;
    drop_parts(k);
    free(k->parts);
    free(k->floors);
    free(k->rel);
    free(k->slots);
    free(k);
    *kp = NULL;
}

void stepkeys_reset(stepkeys_t *k, uint64_t next) {
    drop_parts(k);
    k->nfloors = 0;
    k->released = 0;
    k->rel_count = 0;
    k->nslots = 0;
    k->next = next;
}

/* Grows *buf (of *cap elements of size es) to hold need; 0 or -1. */
static int grow(void **buf, int *cap, int need, size_t es) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap : 8;
    while (nc < need)
        nc *= 2;
    void *nb = realloc(*buf, (size_t)nc * es);
    if (!nb) return -1;
    *buf = nb;
    *cap = nc;
    return 0;
}

static uint64_t floor_of(const stepkeys_t *k, int32_t id) {
    for (int i = 0; i < k->nfloors; i++)
        if (k->floors[i].id == id) return k->floors[i].floor;
    return 0;
}

int stepkeys_floor(stepkeys_t *k, int32_t worker, uint64_t step) {
    for (int i = 0; i < k->nfloors; i++)
        if (k->floors[i].id == worker) {
            if (step > k->floors[i].floor) k->floors[i].floor = step;
            return 0;
        }
    if (grow((void **)&k->floors, &k->capfloors, k->nfloors + 1, sizeof *k->floors))
        return MIMIC_ENOMEM;
    k->floors[k->nfloors++] = (sk_floor_t){worker, step};
    return 0;
}

static const sk_slot_t *slot_of(const stepkeys_t *k, int32_t id) {
    for (int i = 0; i < k->nslots; i++)
        if (k->slots[i].id == id) return &k->slots[i];
    return NULL;
}

/* Appends n rows of worker to the released matrix. */
static int append_released(stepkeys_t *k, int32_t id, const float *rows, size_t n) {
    size_t need = k->rel_count + n;
    if (need > k->rel_cap) {
        size_t cap = k->rel_cap ? k->rel_cap : 64;
        while (cap < need)
            cap *= 2;
        float *nr = realloc(k->rel, cap * k->dim * sizeof(float));
        if (!nr) return MIMIC_ENOMEM;
        k->rel = nr;
        k->rel_cap = cap;
    }
    if (grow((void **)&k->slots, &k->capslots, k->nslots + 1, sizeof *k->slots))
        return MIMIC_ENOMEM;
    if (n) memcpy(k->rel + k->rel_count * k->dim, rows, n * k->dim * sizeof(float));
    k->slots[k->nslots++] = (sk_slot_t){id, k->rel_count, n};
    k->rel_count = need;
    return 0;
}

int stepkeys_add(stepkeys_t *k, int32_t worker, uint64_t step, const float *rows, size_t n,
                 char *why, size_t whylen) {
    if (n > k->max_rows || k->pending_rows + k->rel_count + n > k->max_rows) {
        snprintf(why, whylen,
                 "header field 'a[0]' (count): %zu more key rows exceed the %zu this server "
                 "holds at once (message limit)",
                 n, k->max_rows);
        return MIMIC_EINVAL;
    }
    if (k->released && step == k->rel_step) { /* late: a worker the step did not wait for */
        if (slot_of(k, worker)) {
            snprintf(why, whylen, "duplicate keys: worker %d already pushed for step %" PRIu64,
                     (int)worker, step);
            return MIMIC_EINVAL;
        }
        int rc = append_released(k, worker, rows, n);
        if (rc) {
            snprintf(why, whylen, "out of memory for the keys of step %" PRIu64, step);
            return rc;
        }
        return STEPKEYS_LATE;
    }
    if (step < k->next) {
        snprintf(why, whylen,
                 "header field 'st': keys of step %" PRIu64 ", but steps before %" PRIu64
                 " are complete",
                 step, k->next);
        return MIMIC_EINVAL;
    }
    for (int i = 0; i < k->nparts; i++)
        if (k->parts[i].id == worker && k->parts[i].step == step) {
            snprintf(why, whylen, "duplicate keys: worker %d already pushed for step %" PRIu64,
                     (int)worker, step);
            return MIMIC_EINVAL;
        }
    float *copy = NULL;
    if (n && !(copy = malloc(n * k->dim * sizeof(float)))) goto nomem;
    if (grow((void **)&k->parts, &k->capparts, k->nparts + 1, sizeof *k->parts)) goto nomem;
    if (stepkeys_floor(k, worker, step)) goto nomem;
    if (n) memcpy(copy, rows, n * k->dim * sizeof(float));
    k->parts[k->nparts++] = (sk_part_t){worker, step, n, copy};
    k->pending_rows += n;
    return 0;
nomem:
    free(copy);
    snprintf(why, whylen, "out of memory for the keys of step %" PRIu64, step);
    return MIMIC_ENOMEM;
}

uint64_t stepkeys_pending(const stepkeys_t *k, size_t *rows) {
    uint64_t s = UINT64_MAX;
    for (int i = 0; i < k->nparts; i++)
        if (k->parts[i].step < s) s = k->parts[i].step;
    if (rows) {
        *rows = 0;
        for (int i = 0; i < k->nparts; i++)
            if (k->parts[i].step == s) *rows += k->parts[i].n;
    }
    return s;
}

static int has_part(const stepkeys_t *k, int32_t id, uint64_t step) {
    for (int i = 0; i < k->nparts; i++)
        if (k->parts[i].id == id && k->parts[i].step == step) return 1;
    return 0;
}

/* Whether step s (which has parts) is complete: every counted worker not past s pushed. */
static int complete(const stepkeys_t *k, const cons_t *c, uint64_t s) {
    size_t parts = 0;
    for (int i = 0; i < k->nparts; i++)
        parts += k->parts[i].step == s;
    if (!cons_quorum_met(c, parts)) return 0;
    int32_t id;
    for (int i = 0, r; (r = cons_counts_at(c, i, &id)) >= 0; i++)
        if (r == 1 && floor_of(k, id) <= s && !has_part(k, id, s)) return 0;
    return 1;
}

static int by_id(const void *a, const void *b) {
    const sk_part_t *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

int stepkeys_release(stepkeys_t *k, const cons_t *c) {
    uint64_t s = stepkeys_pending(k, NULL);
    if (s == UINT64_MAX || !complete(k, c, s)) return 0;
    /* the step's parts to the front, in worker-id order */
    int m = 0;
    for (int i = 0; i < k->nparts; i++)
        if (k->parts[i].step == s) {
            sk_part_t t = k->parts[m];
            k->parts[m++] = k->parts[i];
            k->parts[i] = t;
        }
    qsort(k->parts, (size_t)m, sizeof *k->parts, by_id);
    k->released = 1;
    k->rel_step = s;
    k->rel_count = 0;
    k->nslots = 0;
    int rc = 0;
    for (int i = 0; i < m; i++) {
        if (!rc) rc = append_released(k, k->parts[i].id, k->parts[i].rows, k->parts[i].n);
        k->pending_rows -= k->parts[i].n;
        free(k->parts[i].rows);
    }
    memmove(k->parts, k->parts + m, (size_t)(k->nparts - m) * sizeof *k->parts);
    k->nparts -= m;
    k->next = s + 1;
    return rc ? rc : 1;
}

stepkeys_view_t stepkeys_released(const stepkeys_t *k) {
    stepkeys_view_t v = {.dim = k->dim};
    if (!k->released) return v;
    v.step = k->rel_step;
    v.rows = k->rel;
    v.count = k->rel_count;
    v.workers = k->nslots;
    return v;
}

int stepkeys_rows_of(const stepkeys_t *k, int32_t worker, size_t *offset, size_t *n) {
    const sk_slot_t *sl = k->released ? slot_of(k, worker) : NULL;
    if (!sl) return -1;
    *offset = sl->offset;
    *n = sl->n;
    return 0;
}
