/* server — the parameter server: one key range of the flat MAE vector served over a
 * ZeroMQ ROUTER to the workers, driven by the scheduler over a DEALER (docs/runtime.md).
 *
 * server_new binds the ROUTER on tcp://<cluster.bind_host>:*, registers with the
 * scheduler (member.h), learns its rank among S servers, builds its range of the model
 * (kvstore.h) and, when REGISTER_ACK names a resume step, loads its checkpoint shard
 * (shardckpt.h). server_run is a single-threaded zmq_poll loop over both sockets: it
 * answers PULL/PUSH (BSP, ASP or SSP per cluster.consistency), holds pulls until their
 * version exists, applies MEMBERSHIP, writes checkpoints on CKPT and heartbeats, until
 * SHUTDOWN or *stop. It never waits on one peer: receives happen only on readable
 * sockets and sends never block (a reply to a stuck peer is dropped and logged). */
#ifndef MIMIC_SERVER_H
#define MIMIC_SERVER_H

#include "config.h"

#include <signal.h>

typedef struct server server_t;

/* Binds, registers and builds the range. Errors name the scheduler, file or field. */
int server_new(server_t **out, const mimic_cfg_t *cfg, const char *sched_endpoint);
/* Serves until SHUTDOWN (returns 0) or until *stop becomes non-zero (returns 0 too);
 * MIMIC_EIO if polling itself fails. */
int server_run(server_t *s, const volatile sig_atomic_t *stop);
/* Closes the sockets (queued replies get a second to leave), then frees the state. */
void server_destroy(server_t **s);

#endif
