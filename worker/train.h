/* train — the one training loop of mimic-worker, shared by the standalone trainer and
 * the distributed worker; they differ only in their backend: where the next batch's
 * sample indices come from and how an update is applied (AdamW in this process, or a
 * push-pull with the parameter servers).
 *
 * Per step the loop asks the backend for sample indices, has the loader build the
 * batch (decode, augment, masking noise; with `ahead` the next batch's indices are
 * taken before this step computes, so it is built on the loader's threads while this
 * step computes and is applied), runs the stage's forward and backward
 * (stages/stage.h), refuses a non-finite loss before anything is applied, hands the
 * gradient to the backend's update, and reports windows of log_every steps. */
#ifndef MIMIC_TRAIN_H
#define MIMIC_TRAIN_H

#include "config.h"
#include "loader.h"
#include "stage.h"

#include <stdint.h>

/* The sample indices of one batch, and where the data order stands after it. */
typedef struct {
    uint32_t *idx;   /* (cap) */
    uint64_t *epoch; /* (cap): the epoch of each sample (a batch may straddle two) */
    int count;       /* indices taken */
    int n;           /* samples the loader built (corrupt ones skipped) */
    uint64_t next_epoch, next_cursor; /* the order's position after this batch */
} train_batch_t;

/* One step as the loop measured it, for the backend's records. */
typedef struct {
    long step;            /* the version the step computed on */
    long done;            /* the version after the update */
    double loss;          /* of the step */
    int n;                /* samples */
    double t_start;                        /* when the step began (mimic_now) */
    double t_data, t_fwd, t_bwd, t_update; /* seconds */
    const train_batch_t *batch;
} train_step_t;

/* A window of steps, averaged, as progress lines and metrics report it. */
typedef struct {
    long done, steps;
    double loss, lr, images_per_s, eta_s;
    double t_data, t_fwd, t_bwd, t_update; /* seconds per step */
} train_window_t;

enum { TRAIN_END = 1 }; /* a backend's "no more steps" (the run ended elsewhere) */

typedef struct {
    void *self;
    /* Batches are asked for one step ahead: `next` is called for step k+1 before step k
     * computes (the standalone order is known in advance; the cluster's scheduler hands
     * out the chunk of the next version early, cluster.prefetch). */
    int ahead;
    float base_lr; /* the schedule's peak lr (adamw_lr), for reports */
    /* Fills b->idx/epoch/count (<= cap) and the position after it; 0, TRAIN_END or an
     * error. */
    int (*next)(void *self, train_batch_t *b, int cap);
    /* Applies the gradient in s->p->g (n samples) computed on version *step; on return
     * s->p->w holds the next version and *step is its number. 0, TRAIN_END or error. */
    int (*update)(void *self, stage_t *s, int n, long *step);
    /* After each step (checkpoints, the scheduler's chunk report, per-step records). */
    int (*after)(void *self, stage_t *s, const train_step_t *st);
    /* Every log_every steps and at the end of training. */
    void (*report)(void *self, const train_window_t *w);
    /* May be NULL. The batch `next` gave last had no readable sample and will not be
     * trained (called before `next` is asked again). 0 or an error. */
    int (*skip)(void *self);
} train_backend_t;

/* Trains s from version *step until cfg->train.steps, `stop_at`, a stop signal or
 * the backend's TRAIN_END; *step is the version reached. 0 or an error. */
int train_run(const mimic_cfg_t *cfg, stage_t *s, loader_t *ld, const train_backend_t *be,
              long *step, long stop_at);

#endif
