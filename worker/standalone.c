/* The standalone trainer: the training loop (train.h) with AdamW in this process, the
 * data order walked here, checkpoints with optimiser state and data cursor, and the
 * run directory (config.ini, metrics.jsonl, checkpoint.safetensors). */
#define _GNU_SOURCE
#include "adamw.h"
#include "common.h"
#include "metrics.h"
#include "order.h"
#include "stopsig.h"
#include "train.h"
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const mimic_cfg_t *cfg;
    loader_t *ld;
    float *mom, *vel;
    adamw_cfg_t opt;
    float base_lr;
    /* the epoch walk: the same permutation the scheduler cuts into chunks */
    uint32_t *perm;
    uint32_t n;
    uint64_t epoch, cursor;       /* of the next index to take (may run a batch ahead) */
    uint64_t done_epoch, done_cursor; /* after the last trained batch: what checkpoints keep */
    char ckpt[CFG_PATH_MAX + 64];
    char *ini; /* the effective config, written into checkpoints */
    metrics_t mx;
    const char *tag;
} solo_t;

static int solo_next(void *self, train_batch_t *b, int cap) {
    solo_t *so = self;
    for (int i = 0; i < cap; i++) {
        if (so->cursor == so->n) {
            so->epoch++;
            so->cursor = 0;
            order_permutation(so->perm, so->n, so->cfg->train.seed, so->epoch);
        }
        b->idx[i] = so->perm[so->cursor++];
        b->epoch[i] = so->epoch;
    }
    b->count = cap;
    b->next_epoch = so->epoch;
    b->next_cursor = so->cursor;
    return 0;
}

static int solo_update(void *self, stage_t *s, int n, long *step) {
    solo_t *so = self;
    const mimic_cfg_t *c = so->cfg;
    float lr = adamw_lr(*step, c->train.warmup_steps, c->train.steps, so->base_lr, c->train.min_lr);
    adamw_update(&so->opt, s->p, s->p->w, s->p->g, 1.0f, so->mom, so->vel, 0, s->p->total, lr,
                 *step + 1);
    ++*step;
    if (s->ema) /* the momentum copy follows, as the servers' EMA does */
        adamw_ema(s->ema, s->p->w, s->p->total,
                  adamw_ema_momentum(c->contrastive.momentum, c->contrastive.momentum_cosine,
                                     *step, c->train.steps));
    stage_queue_append(s); /* MoCo v2: this step's keys join the negatives of the next */
    return 0;
}

static int solo_save(solo_t *so, stage_t *s, long step) {
    return s->ops->save(s, so->ckpt, so->mom, so->vel, step, so->done_epoch, so->done_cursor,
                        so->ini);
}

static int solo_after(void *self, stage_t *s, const train_step_t *st) {
    solo_t *so = self;
    so->done_epoch = st->batch->next_epoch;
    so->done_cursor = st->batch->next_cursor;
    int every = so->cfg->train.ckpt_every;
    if (every > 0 && st->done % every == 0 && st->done < so->cfg->train.steps)
        return solo_save(so, s, st->done);
    return 0;
}

static void solo_report(void *self, const train_window_t *w) {
    solo_t *so = self;
    metrics_progress(stderr, so->tag, w->done, w->steps, w->loss, w->lr, w->images_per_s,
                     w->eta_s);
    metrics_begin(&so->mx, "step");
    metrics_int(&so->mx, "step", w->done);
    metrics_num(&so->mx, "loss", w->loss);
    metrics_num(&so->mx, "lr", w->lr);
    metrics_num(&so->mx, "images_per_s", w->images_per_s);
    metrics_num(&so->mx, "data_s", w->t_data);
    metrics_num(&so->mx, "forward_s", w->t_fwd);
    metrics_num(&so->mx, "backward_s", w->t_bwd);
    metrics_num(&so->mx, "optimizer_s", w->t_update);
    metrics_int(&so->mx, "epoch", (long long)so->done_epoch);
    metrics_int(&so->mx, "bad_images", (long long)loader_bad(so->ld));
    metrics_end(&so->mx);
}

static char *config_text(const mimic_cfg_t *cfg) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return NULL;
    config_write(cfg, f);
    fclose(f);
    return text;
}

/* out_dir/config.ini, metrics.jsonl, and the checkpoint path. */
static int open_run_dir(solo_t *so) {
    const mimic_cfg_t *cfg = so->cfg;
    char path[CFG_PATH_MAX + 64];
    int rc = mimic_mkdir_p(cfg->train.out_dir);
    if (rc) return rc;
    snprintf(so->ckpt, sizeof so->ckpt, "%s/checkpoint.safetensors", cfg->train.out_dir);
    snprintf(path, sizeof path, "%s/config.ini", cfg->train.out_dir);
    FILE *cf = fopen(path, "w");
    if (!cf) return mimic_err(MIMIC_EIO, "%s: cannot write", path);
    fputs(so->ini, cf);
    fclose(cf);
    snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->train.out_dir);
    return metrics_open(&so->mx, path);
}

/* Resumes from train.resume ("auto": the run directory's checkpoint when there is one). */
static int solo_resume(solo_t *so, stage_t *s, long *step) {
    const char *resume = so->cfg->train.resume;
    if (strcmp(resume, "auto") == 0) resume = access(so->ckpt, R_OK) == 0 ? so->ckpt : "";
    if (!resume[0]) return 0;
    int rc = s->ops->load(s, resume, so->mom, so->vel, step, &so->epoch, &so->cursor);
    if (rc) return rc;
    mimic_log("resumed from %s at step %ld (epoch %llu, sample %llu)", resume, *step,
              (unsigned long long)so->epoch, (unsigned long long)so->cursor);
    if (so->cursor > so->n)
        return mimic_err(MIMIC_EFORMAT, "%s: data cursor %llu beyond the data set (%u samples)",
                         resume, (unsigned long long)so->cursor, so->n);
    return 0;
}

static void log_start(solo_t *so, const stage_t *s, long step) {
    size_t total = s->p->total;
    mimic_log("%s standalone: %zu parameters (%.1f M), %u samples, batch %d, lr %.3g, %.3f "
              "GFLOP/img",
              s->ops->name, total, (double)total / 1e6, so->n, s->batch, so->base_lr,
              s->flops_per_image / 1e9);
    metrics_begin(&so->mx, "start");
    metrics_int(&so->mx, "params", (long long)total);
    metrics_int(&so->mx, "samples", (long long)so->n);
    metrics_int(&so->mx, "batch", s->batch);
    metrics_num(&so->mx, "gflop_per_img", s->flops_per_image / 1e9);
    metrics_int(&so->mx, "start_step", step);
    metrics_end(&so->mx);
}

/* At the end of training: out_dir/model.safetensors (weights, momentum copy, no
 * optimiser state: what a next pipeline stage starts from) and encoder.safetensors
 * (timm's VisionTransformer names). The distributed worker of rank 0 writes the same. */
int write_model(const mimic_cfg_t *cfg, const stage_t *s, long step) {
    char path[CFG_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/model.safetensors", cfg->train.out_dir);
    int rc = s->ops->save(s, path, NULL, NULL, step, 0, 0, NULL);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/encoder.safetensors", cfg->train.out_dir);
    if ((rc = stage_export_encoder(s, &cfg->model, path))) return rc;
    mimic_log("trained model (step %ld) in %s/model.safetensors, encoder in %s", step,
              cfg->train.out_dir, path);
    return 0;
}

/* Trains to the end (or the stop), then writes the final checkpoint. */
static int solo_train(solo_t *so, stage_t *s, long step) {
    const mimic_cfg_t *cfg = so->cfg;
    train_backend_t be = {so,          1,          so->base_lr, solo_next,
                          solo_update, solo_after, solo_report, NULL};
    long stop_at = cfg->train.steps;
    if (cfg->train.stop_after > 0 && step + cfg->train.stop_after < stop_at)
        stop_at = step + cfg->train.stop_after;
    int rc = train_run(cfg, s, so->ld, &be, &step, stop_at);
    if (rc) return rc;
    if ((rc = solo_save(so, s, step))) return rc;
    mimic_log("%s at step %ld; checkpoint %s", *mimic_stop_flag() ? "stopped" : "done", step,
              so->ckpt);
    if (step >= cfg->train.steps && (rc = write_model(cfg, s, step))) return rc;
    metrics_begin(&so->mx, "end");
    metrics_int(&so->mx, "step", step);
    metrics_int(&so->mx, "bad_images", (long long)loader_bad(so->ld));
    metrics_end(&so->mx);
    return 0;
}

int worker_standalone(const mimic_cfg_t *cfg) {
    solo_t so = {.cfg = cfg};
    stage_t *s = NULL;
    int B = cfg->train.batch_size, rc;
    long step = 0;
    if (cfg->train.steps <= 0)
        return mimic_err(MIMIC_EINVAL, "config train.steps: must be positive");
    /* from the start: opening a large or broken data set takes time too, and a stop
     * meanwhile must end the run cleanly (the loop then trains no step) */
    mimic_catch_stop_signals(1);
    if ((rc = stage_new(&s, cfg, B))) return rc;
    s->ops->init(s, cfg->train.seed);
    if ((rc = loader_new(&so.ld, cfg))) goto out;
    so.n = (uint32_t)loader_size(so.ld);
    so.mom = mimic_alloc(s->p->total * sizeof(float));
    so.vel = mimic_alloc(s->p->total * sizeof(float));
    so.perm = calloc(so.n, sizeof *so.perm);
    so.ini = config_text(cfg);
    if (!so.mom || !so.vel || !so.perm || !so.ini) {
        rc = mimic_err(MIMIC_ENOMEM, "out of memory for training buffers");
        goto out;
    }
    so.opt = (adamw_cfg_t){cfg->train.beta1, cfg->train.beta2, cfg->train.eps,
                           cfg->train.weight_decay};
    so.base_lr = config_lr(cfg, B);
    char tag[32];
    snprintf(tag, sizeof tag, "[%s]", s->ops->name);
    so.tag = tag;
    if ((rc = open_run_dir(&so)) || (rc = solo_resume(&so, s, &step))) goto out;
    if (step == 0 && so.epoch == 0 && so.cursor == 0 && cfg->train.init_from[0] &&
        (rc = stage_init_from(s, cfg->train.init_from)))
        goto out;
    so.done_epoch = so.epoch;
    so.done_cursor = so.cursor;
    order_permutation(so.perm, so.n, cfg->train.seed, so.epoch);
    log_start(&so, s, step);
    rc = solo_train(&so, s, step);
out:
    metrics_close(&so.mx);
    stage_destroy(&s);
    loader_destroy(&so.ld);
    mimic_free(so.mom);
    mimic_free(so.vel);
    free(so.perm);
    free(so.ini);
    return rc;
}
