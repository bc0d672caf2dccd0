#include "members.h"

#include "common.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

struct members {
    members_entry_t *v;
    int n, cap;
    int max; /* entries at most (members_set_max) */
    int32_t next_id;
};

members_t *members_new(int max) {
    MIMIC_CHECK(max >= 1);
    members_t *t = calloc(1, sizeof *t);
    if (!t) {
        mimic_err(MIMIC_ENOMEM, "out of memory for the membership table");
        return NULL;
    }
    t->max = max;
    t->next_id = PROTO_ID_SCHEDULER + 1;
    return t;
}

void members_set_max(members_t *t, int max) {
    MIMIC_CHECK(max >= 1);
    t->max = max;
}

int members_max(const members_t *t) {
    return t->max;
}

void members_destroy(members_t **pt) {
    if (!pt || !*pt) return;
    free((*pt)->v);
    free(*pt);
    *pt = NULL;
}

/* A full table makes room by forgetting departed workers (DEAD or LEFT), oldest first,
 * up to a quarter of the table at once, so the compaction is paid once per many adds.
 * The order (ascending ids) is kept; servers are never forgotten: their entries are
 * what rank assignment counts. Returns how many were forgotten. */
static int forget_departed(members_t *t) {
    int want = t->max / 4 > 0 ? t->max / 4 : 1, dropped = 0, w = 0;
    for (int i = 0; i < t->n; i++) {
        const members_entry_t *m = &t->v[i];
        if (dropped < want && m->role == PROTO_ROLE_WORKER &&
            (m->state == MEMBERS_DEAD || m->state == MEMBERS_LEFT)) {
            dropped++;
            continue;
        }
        if (w != i) t->v[w] = t->v[i];
        w++;
    }
    t->n = w;
    return dropped;
}

int members_add(members_t *t, int role, const uint8_t *ident, size_t identlen, double now,
                members_entry_t **out) {
    MIMIC_CHECK(identlen > 0 && identlen <= PROTO_ID_MAX);
    *out = NULL;
    if (t->n >= t->max && forget_departed(t) == 0) return MIMIC_EPEER;
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 16;
        if (cap > t->max && t->max > t->n) cap = t->max; /* never more than max */
        members_entry_t *v = realloc(t->v, (size_t)cap * sizeof *v);
        if (!v) return mimic_err(MIMIC_ENOMEM, "out of memory for %d members", cap);
        t->v = v;
        t->cap = cap;
    }
    members_entry_t *m = &t->v[t->n++];
    memset(m, 0, sizeof *m);
    m->id = t->next_id++;
    m->role = role;
    m->rank = -1;
    m->state = MEMBERS_PENDING;
    memcpy(m->ident, ident, identlen);
    m->identlen = identlen;
    m->joined = m->last_seen = now;
    /* 62 random bits: what an outsider who knows the id cannot guess */
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) /* never on Linux >= 3.17 */
        r = (uint64_t)(now * 1e9) ^ ((uint64_t)m->id << 32) ^ (uint64_t)getpid();
    m->token = (int64_t)(r >> 2) | 1;
    *out = m;
    return 0;
}

members_entry_t *members_by_ident(members_t *t, const uint8_t *ident, size_t identlen) {
    /* Newest first: a routing identity is unique per connection. */
    for (int i = t->n - 1; i >= 0; i--)
        if (t->v[i].identlen == identlen && memcmp(t->v[i].ident, ident, identlen) == 0)
            return &t->v[i];
    return NULL;
}

members_entry_t *members_by_id(members_t *t, int32_t id) {
    for (int i = 0; i < t->n; i++)
        if (t->v[i].id == id) return &t->v[i];
    return NULL;
}

members_entry_t *members_at(members_t *t, int i) {
    MIMIC_CHECK(i >= 0 && i < t->n);
    return &t->v[i];
}

int members_size(const members_t *t) {
    return t->n;
}

void members_touch(members_entry_t *m, double now) {
    m->last_seen = now;
}

int members_count(const members_t *t, int role, members_state_t state) {
    int c = 0;
    for (int i = 0; i < t->n; i++)
        c += (role == 0 || t->v[i].role == role) && t->v[i].state == state;
    return c;
}

int members_live_workers(const members_t *t, int64_t *pairs, int cap) {
    int c = 0; /* ids are assigned in table order, so this is ascending */
    for (int i = 0; i < t->n && c < cap; i++)
        if (t->v[i].role == PROTO_ROLE_WORKER && t->v[i].state == MEMBERS_LIVE) {
            pairs[2 * c] = t->v[i].id;
            pairs[2 * c + 1] = t->v[i].token;
            c++;
        }
    return c;
}

int members_free_worker_rank(const members_t *t) {
    /* one pass over the table (a rank-by-rank search is quadratic in it) */
    uint8_t *used = calloc((size_t)t->n + 1, 1);
    if (!used) return mimic_err(MIMIC_ENOMEM, "out of memory choosing a worker rank");
    for (int i = 0; i < t->n; i++) {
        const members_entry_t *m = &t->v[i];
        if (m->role == PROTO_ROLE_WORKER && m->rank >= 0 && m->rank <= t->n &&
            (m->state == MEMBERS_LIVE || m->state == MEMBERS_PENDING))
            used[m->rank] = 1;
    }
    int r = 0;
    while (used[r]) /* n + 1 slots, at most n used */
        r++;
    free(used);
    return r;
}

members_entry_t *members_expired(members_t *t, double now, double dead_s) {
    for (int i = 0; i < t->n; i++)
        if (t->v[i].state == MEMBERS_LIVE && now - t->v[i].last_seen > dead_s) return &t->v[i];
    return NULL;
}

const char *members_role_name(int role) {
    return role == PROTO_ROLE_WORKER ? "worker" : role == PROTO_ROLE_SERVER ? "server" : "?";
}
