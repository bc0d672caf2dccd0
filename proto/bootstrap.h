/* bootstrap — how a process launched by `mpirun` finds the scheduler.
 *
 * Under the MPMD launch (`mpirun -np 1 mimic-scheduler : -np S mimic-pserver : -np W
 * mimic-worker`) rank 0 is the scheduler: it binds its ZeroMQ socket, then
 * bootstrap_publish broadcasts the endpoint; every other rank gets it from
 * bootstrap_receive. Both also exchange roles, so the scheduler learns how many
 * servers and workers were launched. MPI is finalised before returning: nothing on the
 * training path uses MPI, so the elastic launch (each process given --scheduler) runs
 * the very same code. Built without MPI (-DMIMIC_MPI=OFF), both return MIMIC_EINVAL. */
#ifndef MIMIC_BOOTSTRAP_H
#define MIMIC_BOOTSTRAP_H

#include <stddef.h>

enum { BOOTSTRAP_SCHEDULER = 0, BOOTSTRAP_SERVER = 1, BOOTSTRAP_WORKER = 2 };

/* 1 when this process was started by mpirun (Open MPI or another PMI launcher). */
int bootstrap_under_mpi(void);
/* Scheduler side (must be rank 0). */
int bootstrap_publish(const char *endpoint);
/* Server (role BOOTSTRAP_SERVER) and worker (BOOTSTRAP_WORKER) side. */
int bootstrap_receive_as(int role, char *endpoint, size_t cap);
/* Same as bootstrap_receive_as(BOOTSTRAP_SERVER or _WORKER as guessed from argv[0]). */
int bootstrap_receive(char *endpoint, size_t cap);
/* After publish/receive: how many servers and workers mpirun started (else -1). */
void bootstrap_counts(int *servers, int *workers);

#endif
