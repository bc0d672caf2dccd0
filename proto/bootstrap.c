#define _GNU_SOURCE
#include "bootstrap.h"

#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MIMIC_HAVE_MPI
#include <mpi.h>
#endif

#define EP_MAX 256

/* Written once by the bootstrap exchange, before any training thread exists. */
static int n_servers = -1, n_workers = -1;

int bootstrap_under_mpi(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMI_SIZE") != NULL ||
           getenv("PMIX_RANK") != NULL;
}

void bootstrap_counts(int *servers, int *workers) {
    *servers = n_servers;
    *workers = n_workers;
}

#ifdef MIMIC_HAVE_MPI
/* Allgather of roles, then a broadcast of the endpoint from rank 0. */
static int exchange(int role, char *endpoint, size_t cap) {
    int rc = 0, rank = 0, size = 0, inited = 0;
    MPI_Initialized(&inited);
    if (!inited && MPI_Init(NULL, NULL) != MPI_SUCCESS)
        return mimic_err(MIMIC_EPEER, "bootstrap: MPI_Init failed");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int *roles = calloc((size_t)size, sizeof *roles);
    char buf[EP_MAX] = {0};
    if (!roles) {
        MPI_Abort(MPI_COMM_WORLD, 1);
        return MIMIC_ENOMEM;
    }
    MPI_Allgather(&role, 1, MPI_INT, roles, 1, MPI_INT, MPI_COMM_WORLD);
    n_servers = n_workers = 0;
    for (int i = 0; i < size; i++) {
        n_servers += roles[i] == BOOTSTRAP_SERVER;
        n_workers += roles[i] == BOOTSTRAP_WORKER;
    }
    int sched_first = roles[0] == BOOTSTRAP_SCHEDULER;
    free(roles);
    if (!sched_first) {
        rc = mimic_err(MIMIC_EINVAL, "bootstrap: rank 0 must be mimic-scheduler (put it first in "
                                     "the mpirun command)");
        MPI_Finalize();
        return rc;
    }
    if (rank == 0) snprintf(buf, sizeof buf, "%s", endpoint);
    MPI_Bcast(buf, EP_MAX, MPI_CHAR, 0, MPI_COMM_WORLD);
    MPI_Finalize();
    if (rank != 0) {
        if (strlen(buf) >= cap) return mimic_err(MIMIC_EINVAL, "bootstrap: endpoint too long");
        memcpy(endpoint, buf, strlen(buf) + 1);
    }
    return 0;
}
#else
static int exchange(int role, char *endpoint, size_t cap) {
    (void)role;
    (void)endpoint;
    (void)cap;
    return mimic_err(MIMIC_EINVAL, "bootstrap: built without MPI (-DMIMIC_MPI=OFF); give "
                                   "--scheduler tcp://HOST:PORT");
}
#endif

int bootstrap_publish(const char *endpoint) {
    char buf[EP_MAX];
    if (strlen(endpoint) >= sizeof buf)
        return mimic_err(MIMIC_EINVAL, "bootstrap: endpoint too long");
    snprintf(buf, sizeof buf, "%s", endpoint);
    return exchange(BOOTSTRAP_SCHEDULER, buf, sizeof buf);
}

int bootstrap_receive_as(int role, char *endpoint, size_t cap) {
    return exchange(role, endpoint, cap);
}

int bootstrap_receive(char *endpoint, size_t cap) {
    const char *self = program_invocation_short_name;
    int role = strstr(self, "pserver") ? BOOTSTRAP_SERVER : BOOTSTRAP_WORKER;
    return exchange(role, endpoint, cap);
}
