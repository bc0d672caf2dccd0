/* members — the scheduler's table of registered processes: who is who, and who is alive.
 *
 * An entry (members_entry_t; proto/member.h's member_t is the other end, a process's own
 * membership client) is one DEALER connection (its ZeroMQ routing identity) that sent
 * REGISTER: it gets an id (1, 2, ... never reused), a rank within its role and a state.
 * Workers wait in MEMBERS_PENDING until the initial quorum (docs/runtime.md,
 * "Membership"); LIVE members are timed out after cluster.dead_ms of silence. Dead and
 * departed members stay in the table so that a late message from them is answered "not
 * a member" rather than mistaken for a newcomer — until the table holds `max` entries:
 * then the oldest departed workers are forgotten to make room, and when none is left
 * to forget a registration is refused (a flood of connections cannot grow it further).
 * The table owns nothing but itself:
 *   t = members_new(max); members_add(t, role, ident, len, now, &m); members_touch(m, now);
 *   while ((m = members_expired(t, now, dead_s))) ...; members_destroy(&t); */
#ifndef MIMIC_MEMBERS_H
#define MIMIC_MEMBERS_H

#include "proto.h"
#include "straggler.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    MEMBERS_PENDING, /* registered worker waiting for its deferred REGISTER_ACK */
    MEMBERS_LIVE,
    MEMBERS_DEAD, /* silent for dead_ms */
    MEMBERS_LEFT, /* sent LEAVE */
} members_state_t;

typedef struct {
    int32_t id;
    int role; /* PROTO_ROLE_WORKER or PROTO_ROLE_SERVER */
    int rank; /* servers: key-range index; workers: lowest free rank at registration */
    members_state_t state;
    uint8_t ident[PROTO_ID_MAX]; /* ZeroMQ routing identity */
    size_t identlen;
    double joined, last_seen;         /* mimic_now() seconds */
    uint64_t step;                    /* last HEARTBEAT.st */
    uint64_t reg_seq;                 /* REGISTER.seq, echoed by the (deferred) REGISTER_ACK */
    int64_t token; /* random, in REGISTER_ACK: a heartbeat on another connection needs it */
    int warned_token; /* a foreign heartbeat for this id was logged */
    /* workers: REGISTER_ACK is due once every live server acknowledged MEMBERSHIP
     * version ack_after (the first that lists it), so no server refuses its first pull */
    int ack_due;
    uint64_t ack_after;
    /* workers, BSP: 1 + the step of the last chunk handed out (before the first: the
     * start step for the workers of the quorum, UINT64_MAX for an elastic joiner), and
     * a CHUNK_REQ held until every other live worker has one for the step before (a
     * worker asking one step ahead, cluster.prefetch, must not take a chunk of the step
     * in progress: each step's chunks stay the consecutive ones of a run without it) */
    uint64_t chunk_next;
    int req_held;
    uint64_t req_seq, req_step;
    char endpoint[PROTO_STR_MAX + 1]; /* servers: their ROUTER endpoint */
    char key[CURVE_Z85];              /* servers: the CURVE public key they registered with */
    /* servers: MEMBERSHIP delivery (version acknowledged, last send, resends) */
    uint64_t memb_acked;
    double memb_sent;
    int memb_resends;
    straggler_t strag; /* workers: step times and the straggler flag (straggler.h) */
} members_entry_t;

typedef struct members members_t;

/* A table of at most max (>= 1) entries; NULL when out of memory. */
members_t *members_new(int max);
void members_destroy(members_t **t);
void members_set_max(members_t *t, int max);
int members_max(const members_t *t);

/* Adds a member with the next id (state PENDING, rank -1) into *out. The pointer
 * stays valid until the next members_add (which may forget departed workers and move
 * entries). 0, MIMIC_ENOMEM, or MIMIC_EPEER (nothing recorded: the caller words it)
 * when the table holds max entries and no departed worker is left to forget. */
int members_add(members_t *t, int role, const uint8_t *ident, size_t identlen, double now,
                members_entry_t **out);
members_entry_t *members_by_ident(members_t *t, const uint8_t *ident, size_t identlen);
members_entry_t *members_by_id(members_t *t, int32_t id);
/* i-th member in registration order (i < members_size). */
members_entry_t *members_at(members_t *t, int i);
int members_size(const members_t *t);

void members_touch(members_entry_t *m, double now);
/* Members of `role` in `state` (role 0: any role). */
int members_count(const members_t *t, int role, members_state_t state);
/* The live workers as {id, token} pairs (MEMBERSHIP's payload), ids ascending, into pairs
 * (cap pairs); returns how many. */
int members_live_workers(const members_t *t, int64_t *pairs, int cap);
/* The lowest worker rank not held by a pending or live worker, or MIMIC_ENOMEM. */
int members_free_worker_rank(const members_t *t);
/* A live member silent for more than dead_s seconds, or NULL. The caller marks it. */
members_entry_t *members_expired(members_t *t, double now, double dead_s);

const char *members_role_name(int role); /* "worker", "server", "?" */

#endif
