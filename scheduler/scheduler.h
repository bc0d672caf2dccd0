/* sched — the scheduler process: one ROUTER socket, one event loop, and the state of the
 * cluster (docs/runtime.md): membership and heartbeats (members.c), the chunk work queue
 * (workq.c), checkpoint orchestration (ckpt.c) and progress (progress.c).
 *
 * sched_new reads the data set's size, restores a checkpoint when asked, and binds;
 * sched_run serves until training ends (every server wrote the checkpoint of the last
 * step), a server dies, or *stop becomes non-zero (a signal), and returns the process
 * exit code (SCHED_EXIT_*). Nothing in the loop blocks on one peer: sends never wait
 * (a full or vanished peer costs that message) and zmq_poll wakes every SCHED_TICK_MS
 * to check heartbeats.
 *   sched_new(&s, &cfg, &opts); puts(sched_endpoint(s)); rc = sched_run(s);
 *   sched_destroy(&s); */
#ifndef MIMIC_SCHED_H
#define MIMIC_SCHED_H

#include "config.h"

#include <signal.h>

#define SCHED_TICK_MS 50
#define SCHED_MAX_PAYLOAD (64u << 10) /* nothing sent to the scheduler carries a payload */

enum {
    SCHED_EXIT_OK = 0,
    SCHED_EXIT_FAIL = 1,    /* a checkpoint could not be written, an I/O error */
    SCHED_EXIT_USAGE = 2,   /* bad flags, config, data set or checkpoint to resume */
    SCHED_EXIT_SERVER = 3,  /* a server died or left: restart from the last checkpoint */
    SCHED_EXIT_SIGNAL = 128 /* + signal number */
};

typedef struct {
    int port;                    /* 0: ephemeral */
    volatile sig_atomic_t *stop; /* set to a signal number to stop; may be NULL */
} sched_opts_t;

typedef struct sched sched_t;

int sched_new(sched_t **out, const mimic_cfg_t *cfg, const sched_opts_t *o);
void sched_destroy(sched_t **s);
/* The address to give the other processes: tcp://HOST:PORT. */
const char *sched_endpoint(const sched_t *s);
/* Overrides cluster.servers / cluster.workers (mpirun told how many it started). */
void sched_set_quorum(sched_t *s, int servers, int workers);
int sched_run(sched_t *s);

#endif
