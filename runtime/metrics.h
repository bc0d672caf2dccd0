/* metrics — progress lines for people and JSON-lines records for machines.
 *
 * A metrics_t owns one JSON-lines file (appended, flushed per record so a crash loses
 * at most the line being written). Records are built with metrics_begin /
 * metrics_num / metrics_int / metrics_str / metrics_end; progress lines go to stderr
 * via metrics_progress with step, loss, lr, images/s and an ETA. */
#ifndef MIMIC_METRICS_H
#define MIMIC_METRICS_H

#include <stdio.h>

typedef struct {
    FILE *f;
    int fields; /* fields written in the open record */
} metrics_t;

/* path may be NULL (records are dropped). Appends when the file exists. */
int metrics_open(metrics_t *m, const char *path);
void metrics_close(metrics_t *m);
void metrics_begin(metrics_t *m, const char *event);
void metrics_num(metrics_t *m, const char *key, double v);
void metrics_int(metrics_t *m, const char *key, long long v);
void metrics_str(metrics_t *m, const char *key, const char *v);
void metrics_end(metrics_t *m);

/* "step 120/2000 | loss 0.6543 | lr 1.20e-04 | 103.2 img/s | ETA 5m12s" */
void metrics_progress(FILE *f, const char *who, long step, long total, double loss, double lr,
                      double img_per_s, double eta_s);

#endif
