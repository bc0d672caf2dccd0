#include "stage.h"

#include "checkpoint.h"
#include "common.h"
#include "safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

extern const stage_ops_t stage_mae_ops, stage_mocov3_ops, stage_mimic_ops, stage_mocov2_ops;
extern const stage_ops_t stage_byol_ops, stage_contrawarp_ops, stage_densecl_ops,
    stage_crscont_ops;

/* Indexed by cfg->train.stage (the order of the key's choices in config.c). */
static const stage_ops_t *const STAGES[] = {&stage_mae_ops,      &stage_mocov3_ops,
                                            &stage_mimic_ops,    &stage_mocov2_ops,
                                            &stage_byol_ops,     &stage_contrawarp_ops,
                                            &stage_densecl_ops,  &stage_crscont_ops};

const stage_ops_t *stage_ops_of(const mimic_cfg_t *cfg) {
    int i = (int)cfg->train.stage;
    MIMIC_CHECK(i >= 0 && i < (int)(sizeof STAGES / sizeof STAGES[0]));
    return STAGES[i];
}

int stage_new(stage_t **out, const mimic_cfg_t *cfg, int batch) {
    *out = NULL;
    if (batch < 0) return mimic_err(MIMIC_EINVAL, "config train.batch_size: must be positive");
    stage_t *s = calloc(1, sizeof *s);
    if (!s) return mimic_err(MIMIC_ENOMEM, "out of memory for the stage");
    s->ops = stage_ops_of(cfg);
    s->model = cfg->model;
    s->batch = batch;
    s->views = 1;
    int rc = s->ops->create(s, cfg, batch);
    if (rc) {
        stage_destroy(&s);
        return rc;
    }
    *out = s;
    return 0;
}

void stage_destroy(stage_t **sp) {
    if (!sp || !*sp) return;
    stage_t *s = *sp;
    if (s->ops && s->ops->destroy) s->ops->destroy(s);
    free(s);
    *sp = NULL;
}

void stage_grad_final(stage_t *s, size_t offset) {
    if (s->grad_final && s->grads_live) s->grad_final(s->grad_final_ctx, offset);
}

double stage_compute(stage_t *s, const stage_input_t *in, int n, double *t_fwd, double *t_bwd) {
    double t0 = mimic_now();
    double loss = s->ops->forward(s, in, n);
    double t1 = mimic_now();
    params_zero_grad(s->p);
    s->n = n;
    s->grads_live = isfinite(loss);         /* nothing leaves before a finite loss is known */
    if (s->grads_live) s->ops->backward(s); /* a failed forward left nothing to go back on */
    s->grads_live = 0;
    double t2 = mimic_now();
    if (t_fwd) *t_fwd = t1 - t0;
    if (t_bwd) *t_bwd = t2 - t1;
    return loss;
}

size_t stage_queue_dim(const mimic_cfg_t *cfg) {
    int parts = stage_ops_of(cfg)->queue_parts;
    return (size_t)(cfg->contrastive.dim > 0 ? cfg->contrastive.dim : 0) *
           (size_t)(parts > 1 ? parts : 1);
}

checkpoint_state_t stage_queue_state(const stage_t *s) {
    return (checkpoint_state_t){.queue = s->queue,
                                .queue_cap = s->queue_cap,
                                .queue_dim = s->queue_dim,
                                .queue_keys = s->queue_keys};
}

void stage_queue_append(stage_t *s) {
    if (!s->queue || !s->keys) return;
    for (int i = 0; i < s->nkeys; i++) {
        size_t slot = (size_t)(s->queue_keys++ % s->queue_cap);
        memcpy(s->queue + slot * s->queue_dim, s->keys + (size_t)i * s->queue_dim,
               s->queue_dim * sizeof(float));
    }
}

int stage_init_from(stage_t *s, const char *path) {
    st_file_t *f = NULL;
    int rc = st_open(&f, path), taken = 0;
    if (rc) return rc;
    for (int i = 0; i < s->p->n && !rc; i++) {
        const params_tensor_t *t = &s->p->t[i];
        if (!st_find(f, t->name)) continue;
        if (!(rc = st_read_f32(f, t->name, s->p->w + t->offset, t->shape, t->ndim))) taken++;
    }
    st_close(&f);
    if (rc) return rc;
    if (taken == 0)
        return mimic_err(MIMIC_EFORMAT, "%s: none of stage %s's %d tensors is in the file", path,
                         s->ops->name, s->p->n);
    if (s->ema) memcpy(s->ema, s->p->w, s->p->total * sizeof(float));
    mimic_log("%s: %d of %d tensors from %s", s->ops->name, taken, s->p->n, path);
    return 0;
}

int stage_export_encoder(const stage_t *s, const mae_cfg_t *model, const char *path) {
    return checkpoint_export_encoder_params(path, s->p, model);
}

int stage_save_params(const stage_t *s, const char *path, const float *m, const float *v,
                      long step, uint64_t epoch, uint64_t cursor, const char *ini) {
    checkpoint_state_t st = stage_queue_state(s);
    st.mask_score = s->mask_score;
    st.mask_score_len = s->mask_score_len;
    st.step = step;
    st.epoch = epoch;
    st.cursor = cursor;
    return checkpoint_save_params(path, s->p, &s->model, m, v, s->ema, &st, ini);
}

int stage_load_params(stage_t *s, const char *path, float *m, float *v, long *step,
                      uint64_t *epoch, uint64_t *cursor) {
    checkpoint_state_t st = stage_queue_state(s);
    st.mask_score = s->mask_score;
    st.mask_score_len = s->mask_score_len;
    int rc = checkpoint_load_params(path, s->p, m, v, s->ema, &st);
    s->queue_keys = st.queue_keys;
    *step = st.step;
    *epoch = st.epoch;
    *cursor = st.cursor;
    return rc;
}
