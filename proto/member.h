/* member — one process's membership in the cluster: its DEALER to the scheduler, the
 * id the scheduler gave it, and its heartbeat. Role-neutral: servers and workers both
 * use it (docs/runtime.md, "Membership").
 *
 * member_join connects, sends REGISTER and waits for REGISTER_ACK. REGISTER is sent
 * again only when the TCP connection to the scheduler was re-established (a restarted
 * scheduler never saw it), never on a live connection, so a deferred REGISTER_ACK
 * (workers wait until every server registered) cannot create a second registration.
 * After the join the caller starts member_beat_thread() (HEARTBEAT every period from a
 * thread of its own), polls member_socket() for the scheduler's messages, and calls
 * member_leave() + member_destroy(&m) at the end. Sends never block: a scheduler that
 * stopped reading costs dropped heartbeats, not a stuck process. */
#ifndef MIMIC_MEMBER_H
#define MIMIC_MEMBER_H

#include "proto.h"

#include <stdint.h>

#define MEMBER_HEARTBEAT_MS 500 /* until member_set_heartbeat (cluster.heartbeat_ms) */

typedef struct member member_t;

/* Joins the cluster as role (PROTO_ROLE_WORKER or PROTO_ROLE_SERVER); my_endpoint is
 * the server's bound ROUTER endpoint (REGISTER.str), NULL for workers. Waits up to
 * timeout_ms (-1: forever) for REGISTER_ACK and copies its header to *ack_out (may be
 * NULL). curve (NULL: off) makes both connections to the scheduler CURVE clients. Errors name the scheduler endpoint: MIMIC_ETIMEOUT (no answer), MIMIC_EPEER
 * (the scheduler answered ERROR), MIMIC_EINVAL (bad arguments), MIMIC_EIO. */
int member_join(member_t **out, void *zctx, const curve_t *curve, const char *sched_endpoint,
                int role, const char *my_endpoint, int timeout_ms, proto_hdr_t *ack_out);

void *member_socket(member_t *m); /* the scheduler DEALER, for zmq_poll and proto_send */
int member_id(const member_t *m); /* id from REGISTER_ACK: the sender of every message */
/* The server endpoints of REGISTER_ACK separated by single spaces, in rank order,
 * wherever they travelled (str, or the payload when they exceed PROTO_STR_MAX). */
const char *member_servers(const member_t *m);
const char *member_endpoint(const member_t *m); /* the scheduler's endpoint */
/* REGISTER_ACK's token: a worker names its connections to the servers by it
 * (proto_peer_ident); 0 when the scheduler gave none. */
int64_t member_token(const member_t *m);

void member_set_heartbeat(member_t *m, int period_ms); /* <= 0 keeps the current period */
/* How long a member waits on a silent scheduler before it ends itself: 5 x dead_ms
 * (cluster.dead_ms), in seconds. The scheduler answers every request and every
 * heartbeat at once, so only a dead scheduler is silent that long. */
static inline double member_sched_timeout_s(int dead_ms) {
    return 5.0 * dead_ms / 1000.0;
}
void member_set_step(member_t *m, uint64_t step); /* HEARTBEAT.st from now on */
/* Starts a thread that sends HEARTBEAT every period on a connection of its own (the
 * scheduler matches heartbeats by sender id), so liveness does not depend on how long
 * the caller computes between its own calls. member_destroy stops it. Call after
 * member_join and member_set_heartbeat. */
int member_beat_thread(member_t *m);
/* Seconds since the heartbeat thread last heard the scheduler (it ACKs every
 * heartbeat); -1 without a heartbeat thread. */
double member_sched_silence_s(const member_t *m);

/* Sends LEAVE and waits up to one second for the scheduler's ACK; other messages that
 * arrive meanwhile are dropped. 0, MIMIC_ETIMEOUT or MIMIC_EIO. */
int member_leave(member_t *m);
/* Closes the socket (LEAVE/CKPT_DONE still queued get up to a second to go out). */
void member_destroy(member_t **m);

#endif
