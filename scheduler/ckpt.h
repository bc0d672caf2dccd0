/* ckpt — checkpoint orchestration on the scheduler side (docs/runtime.md, "Checkpoints").
 *
 * The plan is every multiple of cluster.ckpt_every after the resume step, and
 * train.steps (the end); a window of at most CKPT_WINDOW of them is requested from the
 * servers ahead of time (CKPT), so a server never passes a version it should have
 * written. When every server answered CKPT_DONE for N, ckpt_commit writes
 * DIR/scheduler-step-<N>.json (the work queue as of version N) and then DIR/latest =
 * "N\n", both atomically (temp file, fsync, rename): `latest` never names a step whose
 * files are incomplete. A restarted scheduler reads them back with ckpt_read_latest and
 * ckpt_load_queue.
 *   ckpt_new(&c, dir, every, resume, end, S); while (ckpt_next_request(c, &n)) send...;
 *   ckpt_server_done(c, n, rank, status, &complete, &failed); ckpt_commit(c, n, q); */
#ifndef MIMIC_CKPT_H
#define MIMIC_CKPT_H

#include "workq.h"

#include <stddef.h>

#define CKPT_WINDOW 16

typedef struct ckpt ckpt_t;

/* dir is copied; every <= 0 plans only the end; steps after `resume` up to `end`. */
int ckpt_new(ckpt_t **out, const char *dir, long every, long resume, long end, int nservers);
void ckpt_destroy(ckpt_t **c);
const char *ckpt_dir(const ckpt_t *c);

/* 1 and the next step to request from every server when the window has room, else 0. */
int ckpt_next_request(ckpt_t *c, long *step);
/* Records rank's CKPT_DONE(step, status). *complete = 1 when it was the last server for
 * that step (then *failed = how many servers reported an error). 1 for a repeated
 * answer (to a resent CKPT; nothing recorded), MIMIC_EINVAL (reason in why) for a step
 * never requested. */
int ckpt_server_done(ckpt_t *c, long step, int rank, int status, int *complete, int *failed,
                     char *why, size_t whylen);
/* The requested steps <= version that server `rank` has not answered (its CKPT or
 * CKPT_DONE was lost: the caller sends CKPT again), at most cap of them into steps. */
int ckpt_overdue(const ckpt_t *c, int rank, long version, long *steps, int cap);
/* Makes `step` the plan's last checkpoint (a preemption's stop step, > the servers'
 * version): requests for later steps are forgotten (their answers are then refused). */
void ckpt_stop_at(ckpt_t *c, long step);
/* Smallest planned step not complete yet (requested or not), -1 when none remain. */
long ckpt_min_pending(const ckpt_t *c);
/* Last step committed to DIR/latest by this process or found at start, -1 if none. */
long ckpt_latest(const ckpt_t *c);
void ckpt_set_latest(ckpt_t *c, long step);

/* Writes DIR/scheduler-step-<step>.json from q as of version step, then DIR/latest
 * (only when step is newer than the current latest). 0 or a negative error. */
int ckpt_commit(ckpt_t *c, long step, const workq_t *q);

/* Reads DIR/latest: 0 and *step, 1 when there is no latest file, MIMIC_EFORMAT. */
int ckpt_read_latest(const char *dir, long *step);
/* Restores q from DIR/scheduler-step-<step>.json. */
int ckpt_load_queue(const char *dir, long step, workq_t *q);

/* mimic_write_atomic with mode 0644: temp file, fsync, rename, fsync of the directory. */
int ckpt_write_atomic(const char *path, const char *data, size_t len);

/* The steps that have a queue snapshot in dir, newest first (at most cap; the newest
 * kept); how many, or MIMIC_EIO. */
int ckpt_steps_on_disk(const char *dir, long *steps, int cap);
/* Whether step is complete and intact: every server's shard opens (its tensors' CRC-32
 * match) and the queue snapshot is there. 0, or an error with the reason in why. */
int ckpt_verify(const char *dir, long step, int nservers, char *why, size_t whylen);
/* Deletes step's files (queue snapshot first, then every server's shard). */
void ckpt_remove_step(const char *dir, long step, int nservers);

#endif
