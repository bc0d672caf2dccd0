/* checkpoint — MAE training state as a safetensors file PyTorch users can load.
 *
 * Tensor names follow timm/MAE (`blocks.0.attn.qkv.weight`, ...); the fixed position
 * embeddings are included so models_mae.MaskedAutoencoderViT loads the file with
 * load_state_dict after dropping the `optimizer.` entries (AdamW moments
 * `optimizer.exp_avg.<name>` / `optimizer.exp_avg_sq.<name>`). Metadata records the
 * format tag, step and data cursor, so a resumed run continues the same run. Writes are
 * atomic (safetensors.c: temp file, fsync, rename). */
#ifndef MIMIC_CHECKPOINT_H
#define MIMIC_CHECKPOINT_H

#include "mae.h"
#include "safetensors.h"

#include <stdint.h>

typedef struct {
    long step;       /* optimiser steps taken */
    uint64_t epoch;  /* epoch of the next sample */
    uint64_t cursor; /* position of the next sample in that epoch's permutation */
    /* A negative queue kept with the state (MoCo v2; NULL: none): a ring of queue_cap x
     * queue_dim floats, tensor "queue" [cap, dim], and queue_keys (keys ever appended),
     * metadata "queue_keys" — the names of the servers' shards. checkpoint_save_params
     * writes them; checkpoint_load_params requires them when queue is set, checks the
     * shape and fills the ring and queue_keys. */
    float *queue;
    size_t queue_cap, queue_dim;
    uint64_t queue_keys;
    /* Adversarial masking's per-position scores (models/maskpolicy.h: MAE's, or a masked
     * contrastive view's; NULL: none): tensor "mask_score" [len]; read back when the
     * file has it, else left as they are (a file of random masking). */
    float *mask_score;
    size_t mask_score_len;
} checkpoint_state_t;

/* m, v may be NULL (an export without optimiser state). config_ini may be NULL. */
int checkpoint_save(const char *path, const mae_t *model, const float *m, const float *v,
                    const checkpoint_state_t *st, const char *config_ini);
/* Loads weights (and m, v when non-NULL: then they must be in the file) and the state.
 * Every tensor's shape is checked against the model; errors name the file and tensor. */
int checkpoint_load(const char *path, mae_t *model, float *m, float *v, checkpoint_state_t *st);
/* Writes only the encoder (cls_token, pos_embed, patch_embed, blocks, norm): loads into
 * a timm VisionTransformer(global_pool='token') with strict=False (no head). */
int checkpoint_export_encoder(const char *path, const mae_t *model);

/* Any stage's state: every tensor of p by name, the momentum copy as "momentum.<name>"
 * (ema may be NULL), the AdamW moments (m, v may be NULL), the [model] keys of `model`
 * and the state as metadata. */
int checkpoint_save_params(const char *path, const params_t *p, const mae_cfg_t *model,
                           const float *m, const float *v, const float *ema,
                           const checkpoint_state_t *st, const char *config_ini);
/* Reads the negative queue of an open checkpoint into st->queue (st->queue_cap x
 * st->queue_dim, shape checked) and st->queue_keys ("queue_keys" metadata); errors name
 * the file. */
int checkpoint_read_queue(const st_file_t *f, checkpoint_state_t *st);
/* Reads what checkpoint_save_params wrote (m, v, ema when non-NULL: then they must be in
 * the file). Errors name the file and tensor. */
int checkpoint_load_params(const char *path, params_t *p, float *m, float *v, float *ema,
                           checkpoint_state_t *st);
/* The encoder tensors of any stage's p (cls_token, patch_embed.*, blocks.*, norm.*, and
 * the sin-cos pos_embed of `model`), for timm's VisionTransformer and for evaluation. */
int checkpoint_export_encoder_params(const char *path, const params_t *p, const mae_cfg_t *model);

#endif
