/* mimic-keys: writes a CURVE key directory for cluster.curve=on (curve_keygen does it). */
#include "common.h"
#include "curve.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: mimic-keys DIR --servers S --workers W\n"
    "Writes DIR (mode 0700): scheduler.key, server-<i>.key and worker-<i>.key (0600),\n"
    "scheduler.pub, and allow (one 'server <key>' / 'worker <key>' line each). Existing\n"
    "key files are kept, so running it again with a larger W grows a cluster; allow and\n"
    "scheduler.pub are rewritten. Give DIR to every process as cluster.keys\n"
    "(docs/security.md). Exit codes: 0 written, 1 I/O error, 2 bad arguments.\n";

/* A count of 1..INT_MAX, or -1. */
static int keys_count(const char *v) {
    char *end;
    long n = v ? strtol(v, &end, 10) : -1;
    if (!v || end == v || *end || n < 1 || n > INT_MAX) return -1;
    return (int)n;
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    int servers = 0, workers = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        }
        int *count = !strcmp(a, "--servers") ? &servers : !strcmp(a, "--workers") ? &workers : NULL;
        if (count) {
            if ((*count = keys_count(i + 1 < argc ? argv[++i] : NULL)) < 0) {
                fprintf(stderr, "mimic-keys: %s needs a count of at least 1 (--help)\n", a);
                return 2;
            }
        } else if (a[0] == '-' || dir) {
            fprintf(stderr, "mimic-keys: unexpected argument '%s' (--help)\n", a);
            return 2;
        } else {
            dir = a;
        }
    }
    if (!dir || servers < 1 || workers < 1) {
        fprintf(stderr, "mimic-keys: usage: mimic-keys DIR --servers S --workers W\n");
        return 2;
    }
    int rc = curve_keygen(dir, servers, workers);
    if (rc) return rc == MIMIC_EINVAL ? 2 : 1; /* mimic_err printed why */
    printf("mimic-keys: %s: scheduler, %d server and %d worker key pairs; allow lists %d "
           "public keys\n",
           dir, servers, workers, servers + workers);
    return 0;
}
