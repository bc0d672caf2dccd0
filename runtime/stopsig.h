/* stopsig — how the three binaries stop on SIGINT/SIGTERM (one handler for all; the
 * main loops poll the flag). Kept out of common.h so that only they see <signal.h>. */
#ifndef MIMIC_STOPSIG_H
#define MIMIC_STOPSIG_H

#include <signal.h>

/* SIGINT and SIGTERM set a flag that long loops poll, so a run ends between steps (and
 * checkpoints) instead of dying mid-write; SIGPIPE is ignored. restart = 1 resumes
 * interrupted reads (SA_RESTART; trainers reading data files), 0 lets blocking calls
 * return EINTR at once (event loops; zmq_poll is never restarted anyway). */
void mimic_catch_stop_signals(int restart);
/* SIGUSR1 is a launcher's preemption notice for the scheduler (deploy/cluster.sh turns
 * a SIGTERM into a SIGUSR1 that mpirun forwards to every rank, since mpirun itself
 * kills its ranks a second after a SIGTERM): mimic_catch_stop_signals ignores it;
 * the scheduler calls this too, and then it sets the flag as SIGTERM does. */
void mimic_catch_preempt_signal(void);
/* The flag: 0, or the last SIGINT/SIGTERM received. */
volatile sig_atomic_t *mimic_stop_flag(void);

#endif
