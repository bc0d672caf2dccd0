/* mimic-pserver — one parameter server process (server.h does the work).
 *
 * mimic-pserver [CONFIG.ini] [--section.key=value ...] [--scheduler tcp://H:P]
 * The scheduler's address comes from --scheduler, else $MIMIC_SCHEDULER, else
 * cluster.scheduler, else (under mpirun) from the MPI bootstrap. Exit status: 0 after
 * SHUTDOWN (or SIGINT/SIGTERM), 1 on a runtime error, 2 on bad arguments. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "config.h"
#include "server.h"
#include "stopsig.h"

#if __has_include("bootstrap.h")
#include "bootstrap.h"
#define PS_HAVE_BOOTSTRAP 1
#endif

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fputs("usage: mimic-pserver [CONFIG.ini] [--section.key=value ...] [--scheduler tcp://H:P]\n"
          "  --scheduler EP   the scheduler (else $MIMIC_SCHEDULER, else cluster.scheduler,\n"
          "                   else the mpirun bootstrap)\n"
          "  --help-config    list every config key with its default\n",
          f);
}

/* Picks the scheduler endpoint by the documented precedence into ep (cap bytes). */
static int find_scheduler(const mimic_cfg_t *cfg, const char *flag, char *ep, size_t cap) {
    const char *env = getenv("MIMIC_SCHEDULER");
    const char *pick = flag && *flag ? flag : env && *env ? env : cfg->cluster.scheduler;
    if (pick && *pick) {
        if (strlen(pick) >= cap) return mimic_err(MIMIC_EINVAL, "scheduler endpoint too long");
        snprintf(ep, cap, "%s", pick);
        return 0;
    }
#ifdef PS_HAVE_BOOTSTRAP
    if (bootstrap_under_mpi()) return bootstrap_receive_as(BOOTSTRAP_SERVER, ep, cap);
#endif
    return mimic_err(MIMIC_EINVAL, "mimic-pserver: no scheduler: give --scheduler tcp://HOST:PORT, "
                                   "MIMIC_SCHEDULER or cluster.scheduler, or launch with mpirun");
}

/* config_flag_fn: --scheduler EP or --scheduler=EP into *(const char **)ctx. */
static int pserver_flag(void *ctx, char **rest, int n, int *i) {
    const char **flag = ctx;
    if (strcmp(rest[*i], "--scheduler") == 0 && *i + 1 < n)
        *flag = rest[++*i];
    else if (strncmp(rest[*i], "--scheduler=", 12) == 0)
        *flag = rest[*i] + 12;
    else
        return 0;
    return 1;
}

int main(int argc, char **argv) {
    mimic_cfg_t cfg;
    char sched[512];
    const char *flag = NULL;
    int rc = config_start(&cfg, argc, argv, "mimic-pserver", usage, pserver_flag, &flag);
    if (rc != CONFIG_RUN) return rc;
    if (find_scheduler(&cfg, flag, sched, sizeof sched)) return CONFIG_EXIT_USAGE;

    mimic_catch_stop_signals(0); /* zmq_poll returns EINTR at once */

    server_t *s = NULL;
    if ((rc = server_new(&s, &cfg, sched))) {
        fprintf(stderr, "[pserver ?] not started: %s\n", mimic_last_error());
        return rc == MIMIC_EINVAL ? 2 : 1; /* 2: a bad setting, as for a bad flag */
    }
    rc = server_run(s, mimic_stop_flag());
    server_destroy(&s);
    return rc ? 1 : 0;
}
