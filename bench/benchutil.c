#include "benchutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int bench_args(mimic_cfg_t *cfg, int argc, char **argv, const char *prog,
               const char *const *names, int *values, int n) {
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    int nrest = 0, rc = 0;
    if (!rest || config_parse_args(cfg, argc, argv, rest, &nrest)) {
        free(rest);
        return 2;
    }
    for (int i = 0; i < nrest && !rc; i += 2) {
        int k = 0;
        while (k < n && !(strncmp(rest[i], "--bench.", 8) == 0 && strcmp(rest[i] + 8, names[k]) == 0))
            k++;
        if (k == n || i + 1 >= nrest) {
            fprintf(stderr, "%s: unknown or incomplete flag %s\n", prog, rest[i]);
            rc = 2;
        } else {
            values[k] = atoi(rest[i + 1]);
        }
    }
    free(rest);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}
