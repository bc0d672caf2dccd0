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
/* The flag: 0, or the last SIGINT/SIGTERM received. */
volatile sig_atomic_t *mimic_stop_flag(void);

#endif
