/* mimic-scheduler: command line, signals, publishing the endpoint; sched.c does the rest. */
#define _GNU_SOURCE
#include "ckpt.h"
#include "common.h"
#include "config.h"
#include "scheduler.h"
#include "stopsig.h"

#if __has_include("bootstrap.h")
#include "bootstrap.h"
#define SCHED_HAVE_BOOTSTRAP 1
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fputs("usage: mimic-scheduler [CONFIG.ini] [--section.key=value ...] [--port P]\n"
          "                       [--endpoint-file F]\n"
          "  --port P             bind tcp://<cluster.bind_host>:P (default: any free port)\n"
          "  --endpoint-file F    write the endpoint to F (atomically) once bound\n"
          "  --help-config        list every config key with its default\n"
          "Prints `scheduler listening on tcp://HOST:PORT`; give that address to every\n"
          "mimic-pserver and mimic-worker (--scheduler, MIMIC_SCHEDULER or cluster.scheduler).\n"
          "Exit codes: 0 trained, 1 checkpoint/I-O failure, 2 bad arguments or input,\n"
          "3 a server died (restart with --train.resume=auto), 128+N stopped by signal N\n"
          "(SIGTERM, SIGINT or SIGUSR1 after the quorum: the cluster first checkpoints the\n"
          "step it stops at, within cluster.grace_ms; --train.resume=auto continues there).\n",
          f);
}

/* "--flag V" or "--flag=V"; returns the value and advances *i, or NULL. */
static const char *flag_value(char **rest, int n, int *i, const char *flag) {
    size_t len = strlen(flag);
    if (strncmp(rest[*i], flag, len) != 0) return NULL;
    if (rest[*i][len] == '=') return rest[*i] + len + 1;
    if (rest[*i][len] == 0 && *i + 1 < n) return rest[++*i];
    return NULL;
}

static int parse_port(const char *v, int *port) {
    char *end;
    long p = strtol(v, &end, 10);
    if (end == v || *end || p < 0 || p > 65535)
        return mimic_err(MIMIC_EINVAL, "--port: '%s' is not a port number (0..65535)", v);
    *port = (int)p;
    return 0;
}

typedef struct {
    int port, port_given;
    const char *epfile;
} sched_args_t;

/* config_flag_fn: --port and --endpoint-file. */
static int sched_flag(void *ctx, char **rest, int n, int *i) {
    sched_args_t *a = ctx;
    const char *v;
    if ((v = flag_value(rest, n, i, "--port"))) {
        if (parse_port(v, &a->port)) return MIMIC_EINVAL;
        a->port_given = 1;
    } else if ((v = flag_value(rest, n, i, "--endpoint-file"))) {
        a->epfile = v;
    } else {
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    mimic_cfg_t cfg;
    sched_args_t args = {0};
    int rc = config_start(&cfg, argc, argv, "mimic-scheduler", usage, sched_flag, &args);
    if (rc != CONFIG_RUN) return rc;

    mimic_catch_stop_signals(0); /* zmq_poll returns EINTR at once */
    mimic_catch_preempt_signal();  /* SIGUSR1 too: a launcher's forwarded SIGTERM */

    sched_t *s = NULL;
    sched_opts_t opts = {.port = args.port, .stop = mimic_stop_flag()};
    if (sched_new(&s, &cfg, &opts)) return SCHED_EXIT_USAGE;
    const char *ep = sched_endpoint(s);
    printf("scheduler listening on %s\n", ep);
    fflush(stdout);
    if (args.epfile) {
        char line[600];
        int n = snprintf(line, sizeof line, "%s\n", ep);
        if (ckpt_write_atomic(args.epfile, line, (size_t)n)) {
            sched_destroy(&s);
            return SCHED_EXIT_USAGE;
        }
    }
#ifdef SCHED_HAVE_BOOTSTRAP
    else if (!args.port_given && bootstrap_under_mpi()) {
        if (bootstrap_publish(ep)) {
            sched_destroy(&s);
            return SCHED_EXIT_USAGE;
        }
        int ns = -1, nw = -1;
        bootstrap_counts(&ns, &nw);
        if (ns >= 1 && nw >= 0 && (ns != cfg.cluster.servers || nw != cfg.cluster.workers))
            mimic_log("scheduler: mpirun started %d server(s) and %d worker(s); using these "
                      "instead of cluster.servers=%d, cluster.workers=%d",
                      ns, nw, cfg.cluster.servers, cfg.cluster.workers);
        sched_set_quorum(s, ns, nw);
    }
#else
    (void)args.port_given;
#endif
    rc = sched_run(s);
    sched_destroy(&s);
    return rc;
}
