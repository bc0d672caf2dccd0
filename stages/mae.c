/* The MAE stage: masked-autoencoder pre-training (models/mae.h). Reads the weights,
 * pushes gradients, one view per sample plus its masking noise, no labels. */
#include "checkpoint.h"
#include "common.h"
#include "mae.h"
#include "stage.h"

#include <stdlib.h>

typedef struct {
    mae_t *m;
    mae_batch_t *b;
} mae_stage_t;

static void mae_block_done(void *ctx, size_t offset) {
    stage_grad_final(ctx, offset);
}

static int mae_stage_create(stage_t *s, const mimic_cfg_t *cfg, int batch) {
    mae_stage_t *ms = calloc(1, sizeof *ms);
    if (!ms) return mimic_err(MIMIC_ENOMEM, "out of memory for the MAE stage");
    s->impl = ms;
    int rc = mae_new(&ms->m, &cfg->model);
    if (!rc && batch > 0) rc = mae_batch_alloc(&ms->b, ms->m, batch);
    if (rc) return rc;
    s->p = ms->m->p;
    /* the layout is cls, patch embedding, blocks, norm, mask token, decoder embedding,
     * decoder blocks, decoder norm and head, and backward runs it from the end: after a
     * block of either stack every tensor from the block's first on is final */
    ms->m->enc.blocks.block_done = ms->m->dec.block_done = mae_block_done;
    ms->m->enc.blocks.block_ctx = ms->m->dec.block_ctx = s;
    s->noise_len = ms->m->L;
    s->flops_per_image = mae_train_flops_per_image(ms->m);
    return 0;
}

static void mae_stage_destroy(stage_t *s) {
    mae_stage_t *ms = s->impl;
    if (!ms) return;
    mae_batch_free(&ms->b);
    mae_destroy(&ms->m);
    free(ms);
    s->impl = NULL;
}

static void mae_stage_init(stage_t *s, uint64_t seed) {
    mae_init(((mae_stage_t *)s->impl)->m, seed);
}

static double mae_stage_forward(stage_t *s, const stage_input_t *in, int n) {
    mae_stage_t *ms = s->impl;
    mae_batch_resize(ms->b, n);
    return mae_forward(ms->m, ms->b, in->imgs, in->noise);
}

static void mae_stage_backward(stage_t *s) {
    mae_stage_t *ms = s->impl;
    mae_backward(ms->m, ms->b);
}

static int mae_stage_save(const stage_t *s, const char *path, const float *m, const float *v,
                          long step, uint64_t epoch, uint64_t cursor, const char *ini) {
    checkpoint_state_t st = {.step = step, .epoch = epoch, .cursor = cursor};
    return checkpoint_save(path, ((const mae_stage_t *)s->impl)->m, m, v, &st, ini);
}

static int mae_stage_load(stage_t *s, const char *path, float *m, float *v, long *step,
                          uint64_t *epoch, uint64_t *cursor) {
    checkpoint_state_t st = {.step = 0};
    int rc = checkpoint_load(path, ((mae_stage_t *)s->impl)->m, m, v, &st);
    *step = st.step;
    *epoch = st.epoch;
    *cursor = st.cursor;
    return rc;
}

const stage_ops_t stage_mae_ops = {
    .name = "mae",
    .reads = STAGE_READ_WEIGHTS,
    .pushes = STAGE_PUSH_GRAD,
    .server_state = 0,
    .create = mae_stage_create,
    .destroy = mae_stage_destroy,
    .init = mae_stage_init,
    .forward = mae_stage_forward,
    .backward = mae_stage_backward,
    .save = mae_stage_save,
    .load = mae_stage_load,
};
