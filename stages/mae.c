/* The MAE stage: masked-autoencoder pre-training (models/mae.h). Reads the weights,
 * pushes gradients, one view per sample plus its masking noise, no labels.
 *
 * mae.mask_policy = adversarial (ours, models/maskpolicy.h) turns the noise into
 * Gumbel-top-k keys of a per-position score before mae_forward and folds each finite
 * step's per-patch errors into that score after it. The score is this process's: on a
 * cluster each worker keeps its own from its own batches, and it is saved with the
 * standalone checkpoint but not with the servers' (a resumed cluster worker starts from
 * uniform scores and re-learns them in ~1/(1 - mae.mask_decay) steps). Random policy
 * passes the loader's noise straight through, as before the policy existed. */
#include "mae.h"
#include "checkpoint.h"
#include "common.h"
#include "maskpolicy.h"
#include "stage.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    mae_t *m;
    mae_batch_t *b;
    maskpolicy_t *policy;
    float *keys, *patch_loss; /* (B, L) adversarial masking only */
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
    if (!rc) rc = maskpolicy_new(&ms->policy, cfg, ms->m->L); /* checks the keys either way */
    if (rc) return rc;
    if (ms->policy->policy == MASK_POLICY_ADVERSARIAL && batch > 0) {
        ms->keys = malloc((size_t)batch * ms->m->L * sizeof(float));
        ms->patch_loss = malloc((size_t)batch * ms->m->L * sizeof(float));
        if (!ms->keys || !ms->patch_loss)
            return mimic_err(MIMIC_ENOMEM, "out of memory for adversarial masking");
    }
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
    maskpolicy_destroy(&ms->policy);
    free(ms->keys);
    free(ms->patch_loss);
    free(ms);
    s->impl = NULL;
}

static void mae_stage_init(stage_t *s, uint64_t seed) {
    mae_stage_t *ms = s->impl;
    mae_init(ms->m, seed);
    for (int l = 0; l < ms->policy->L; l++) /* scores start unseen: uniform masking */
        ms->policy->score[l] = 0.0f;
    ms->policy->updates = 0;
    maskpolicy_distribution(ms->policy);
}

static double mae_stage_forward(stage_t *s, const stage_input_t *in, int n) {
    mae_stage_t *ms = s->impl;
    mae_batch_resize(ms->b, n);
    if (!ms->keys) return mae_forward(ms->m, ms->b, in->imgs, in->noise);
    maskpolicy_keys(ms->policy, ms->keys, in->noise, n);
    double loss = mae_forward(ms->m, ms->b, in->imgs, ms->keys);
    if (isfinite(loss)) { /* a refused step teaches the scores nothing */
        mae_patch_loss(ms->m, ms->b, ms->patch_loss);
        maskpolicy_update(ms->policy, ms->patch_loss, ms->b->mask, n);
    }
    return loss;
}

static void mae_stage_backward(stage_t *s) {
    mae_stage_t *ms = s->impl;
    mae_backward(ms->m, ms->b);
}

static int mae_stage_save(const stage_t *s, const char *path, const float *m, const float *v,
                          long step, uint64_t epoch, uint64_t cursor, const char *ini) {
    const mae_stage_t *ms = s->impl;
    checkpoint_state_t st = {.step = step, .epoch = epoch, .cursor = cursor};
    if (ms->keys) {
        st.mask_score = ms->policy->score;
        st.mask_score_len = (size_t)ms->policy->L;
    }
    return checkpoint_save(path, ms->m, m, v, &st, ini);
}

static int mae_stage_load(stage_t *s, const char *path, float *m, float *v, long *step,
                          uint64_t *epoch, uint64_t *cursor) {
    mae_stage_t *ms = s->impl;
    checkpoint_state_t st = {.step = 0};
    if (ms->keys) {
        st.mask_score = ms->policy->score;
        st.mask_score_len = (size_t)ms->policy->L;
    }
    int rc = checkpoint_load(path, ms->m, m, v, &st);
    if (!rc && ms->keys) maskpolicy_distribution(ms->policy);
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
