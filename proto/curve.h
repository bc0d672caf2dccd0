/* curve — CURVE encryption and authentication of the cluster's sockets (docs/security.md).
 *
 * With cluster.curve=on every process has a CURVE key pair; the scheduler's and the
 * servers' ROUTERs are CURVE servers whose ZAP handler (a thread of this module, on the
 * process's ZeroMQ context) admits only the public keys of an allow-list, each with the
 * role it may register as; every DEALER (member, heartbeat, worker -> server) is a CURVE
 * client that knows its server's public key. Refused peers are logged (rate-limited).
 *
 * A key directory (mimic-keys DIR --servers S --workers W) holds:
 *   scheduler.key, server-<i>.key, worker-<i>.key   "public <z85>\nsecret <z85>\n", 0600
 *   scheduler.pub                                   "<z85>\n": what every client needs
 *   allow                                           "server <z85>" / "worker <z85>" lines
 * A process takes cluster.key when set, else picks its file in cluster.keys by its MPI
 * world rank in deploy/cluster.sh's order (rank 0 scheduler, 1..S servers, then workers).
 *
 * A curve_t NULL means "CURVE off": every function below accepts it and does nothing.
 * The authenticated peer of a received message is in proto_msg_t.user ("worker <z85>"
 * or "server <z85>", the ZAP User-Id; "" without CURVE).
 *   curve_open(&c, &opts);                 // NULL when off
 *   curve_serve(c, zctx, router);          // before zmq_bind of the one ROUTER
 *   curve_client(c, dealer, server_key);   // before zmq_connect; NULL: the scheduler
 *   ...; curve_close(&c);                  // after the sockets and before zmq_ctx_term */
#ifndef MIMIC_CURVE_H
#define MIMIC_CURVE_H

#include <stddef.h>

#include "config.h"

#define CURVE_Z85 41       /* a Z85 key: 40 characters and the NUL */
#define CURVE_USER_MAX 64  /* "worker " + 40 + NUL fits */
#define CURVE_ROLE_SCHEDULER 0 /* the other roles are PROTO_ROLE_WORKER / _SERVER */

typedef struct curve curve_t;

typedef struct {
    int on;               /* cluster.curve */
    const char *dir;      /* cluster.keys: scheduler.pub and allow are read from here */
    const char *key_file; /* cluster.key: this process's key pair ("" or NULL: by rank) */
    int role;             /* CURVE_ROLE_SCHEDULER, PROTO_ROLE_SERVER or PROTO_ROLE_WORKER */
    int nservers;         /* cluster.servers: where worker keys start in rank order */
    const char *who;      /* log prefix: "scheduler", "server", "worker" */
} curve_opts_t;

/* Loads this process's key pair, the scheduler's public key, and (scheduler and servers)
 * the allow-list. *out = NULL when o->on is 0. Errors name the file and field:
 * MIMIC_EINVAL (missing setting, no MPI rank to pick a key by), MIMIC_EFORMAT (a key file
 * or allow line that is not what mimic-keys writes), MIMIC_EIO. */
int curve_open(curve_t **out, const curve_opts_t *o);
/* Stops the ZAP thread (which closes its two sockets) and wipes the secret key.
 * NULL-safe. Call it after closing the ROUTER given to curve_serve and before zmq_ctx_term;
 * closing that ROUTER ends its monitor (it is not touched here: it may be gone), and the
 * sockets of other threads are the caller's to close before zmq_ctx_term. */
void curve_close(curve_t **c);

/* Makes router a CURVE server with this process's key and starts the ZAP handler on
 * zctx (once per process), which also watches router for failed handshakes (peers with
 * no CURVE or a wrong server key) and logs them. Call before zmq_bind. 0 or MIMIC_EIO.
 * A second router of the same curve_t and zctx is answered for but not watched. */
int curve_serve(curve_t *c, void *zctx, void *router);
/* Makes sock a CURVE client of the server whose Z85 public key is server_key (NULL: the
 * scheduler's). Call before zmq_connect. 0, MIMIC_EFORMAT (bad key) or MIMIC_EIO. */
int curve_client(const curve_t *c, void *sock, const char *server_key);

const char *curve_public(const curve_t *c); /* this process's Z85 public key ("" when off) */
/* Peers refused so far (logged or not): 400 answers of the ZAP handler, and handshakes
 * that failed before it (no CURVE, wrong server key). Zeros when off. */
typedef struct {
    unsigned long zap_refused, handshake_failed;
} curve_stats_t;
void curve_stats(const curve_t *c, curve_stats_t *out);
/* The role a ZAP User-Id ("worker <z85>") grants: PROTO_ROLE_WORKER/_SERVER, or -1. */
int curve_user_role(const char *user);

/* Writes a key directory for S servers and W workers (mimic-keys). Existing key files
 * are kept (a cluster grows by running it again with a larger W); allow is rewritten.
 * 0, MIMIC_EINVAL or MIMIC_EIO naming the file. */
int curve_keygen(const char *dir, int servers, int workers);

/* curve_open with the process's cluster.curve, .keys, .key and .servers settings. */
static inline int curve_open_cfg(curve_t **out, const mimic_cfg_t *cfg, int role,
                                 const char *who) {
    curve_opts_t o = {.on = cfg->cluster.curve,
                      .dir = cfg->cluster.keys,
                      .key_file = cfg->cluster.key,
                      .role = role,
                      .nservers = cfg->cluster.servers,
                      .who = who};
    return curve_open(out, &o);
}

#endif
