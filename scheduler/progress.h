/* progress — the cluster's progress as the scheduler sees it: one line per logging step
 * for people (`[cluster] step S/T | loss L | lr X | N img/s | ETA ...`) and one JSON
 * record for machines.
 *
 * Loss and lr come from the workers' METRICS (f[LOSS], f[LR], st = step): the reports
 * of one step are averaged into one line, written when every live worker reported, when
 * a later step is reported, or after PROGRESS_HOLD_S. Images/s are counted by the
 * scheduler itself from the samples CHUNK_DONE says were processed, so the rate is the
 * cluster's and does not depend on how workers define f[IMGS].
 *   progress_init(&p, total, start_step, now); progress_samples(&p, n);
 *   if (progress_metrics(&p, step, loss, lr, live, now)) progress_flush(...); */
#ifndef MIMIC_PROGRESS_H
#define MIMIC_PROGRESS_H

#include "metrics.h"

#include <stdint.h>
#include <stdio.h>

#define PROGRESS_HOLD_S 2.0

typedef struct {
    long total;
    double t_last; /* last line (or the start) */
    long step_last;
    uint64_t samples; /* processed since the last line */
    /* reports of the step being collected */
    long step;
    int n;
    double loss_sum, lr, first_t;
    int stragglers; /* workers flagged now (the scheduler keeps it current) */
    /* the last line written (the scheduler's /metrics and live page) */
    long lines, last_step;
    double last_t, last_loss, last_lr, last_img_s;
} progress_t;

void progress_init(progress_t *p, long total, long start_step, double now);
void progress_samples(progress_t *p, uint64_t n);
/* Adds one worker's report, writing the previous step's line first when this is a new
 * step; then writes this step's line once `live` reports arrived. */
void progress_metrics(progress_t *p, long step, double loss, double lr, int live, double now,
                      FILE *out, metrics_t *mx, double t0);
/* Writes the collected line when reports have waited PROGRESS_HOLD_S. */
void progress_tick(progress_t *p, double now, FILE *out, metrics_t *mx, double t0);
/* Writes the line of the collected reports now (no-op when there are none). */
void progress_flush(progress_t *p, double now, FILE *out, metrics_t *mx, double t0);

#endif
