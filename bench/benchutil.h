/* benchutil — what the benchmark programs share: their command line (the config and
 * --section.key=value flags, then --bench.<name> N integers) and the median of the
 * timed windows. */
#ifndef MIMIC_BENCHUTIL_H
#define MIMIC_BENCHUTIL_H

#include "config.h"

/* Fills cfg from argv (config_parse_args), then each "--bench.<names[k]> N" into
 * values[k] (defaults kept when absent). 0, or 2 after printing the bad flag. */
int bench_args(mimic_cfg_t *cfg, int argc, char **argv, const char *prog,
               const char *const *names, int *values, int n);
/* Sorts v (n) and returns its median. */
double bench_median(double *v, int n);

#endif
