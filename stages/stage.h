/* stage — an objective of the training pipeline (MAE now; MoCo, MIMIC, BYOL, ... next),
 * as the one training step (worker/train.h) and the parameter servers see it.
 *
 * A stage declares what it needs from the cluster — which parameter versions it reads
 * (the weights; the servers' momentum copy), what it pushes (gradients; keys for the
 * negative queue), which server-side state it uses (the queue) — and what a batch must
 * hold (images per sample, masking noise, labels). It owns its model (the flat
 * parameter vector p: w and g) and the activations of one batch shape, and computes
 * forward (the loss) and backward (d loss / d p->g, accumulated).
 *
 * Adding an objective: one file stages/<name>.c that defines a stage_ops_t, one line in
 * the table of stage.c, its name in the choices of the config key train.stage, and
 * its own config keys (docs/layout.md walks through it). */
#ifndef MIMIC_STAGE_H
#define MIMIC_STAGE_H

#include "checkpoint.h"
#include "config.h"
#include "params.h"

#include <stdint.h>

/* Parameter versions a stage reads. */
enum { STAGE_READ_WEIGHTS = 1u << 0, STAGE_READ_EMA = 1u << 1 };
/* What a stage pushes each step. */
enum { STAGE_PUSH_GRAD = 1u << 0, STAGE_PUSH_KEYS = 1u << 1 };
/* Server-side state a stage uses. */
enum { STAGE_STATE_QUEUE = 1u << 0 };

/* One batch as the loader filled it for the stage (n samples). */
typedef struct {
    float *imgs;  /* (n*views, C, S, S): the views of sample i are rows i*views.. */
    float *noise; /* (n, noise_len) masking noise, or NULL when noise_len is 0 */
    int *labels;  /* (n), or NULL when the stage needs none */
} stage_input_t;

typedef struct stage stage_t;

typedef struct {
    const char *name; /* the train.stage value, and the progress line's tag */
    unsigned reads, pushes, server_state;
    int key_views; /* key vectors per sample in the step's key exchange (MoCo v3: 2) */
    /* Keys of contrastive.dim floats in one row of the negative queue (0 counts as 1).
     * DenseCL: 2, each row is [global key | pooled dense key], so its second queue
     * rides in the servers' one ring unchanged (stage_queue_dim). */
    int queue_parts;
    /* Builds the model of cfg and the activations for batches of up to `batch`. */
    int (*create)(stage_t *s, const mimic_cfg_t *cfg, int batch);
    void (*destroy)(stage_t *s);
    /* The model's initialisation (a pure function of the seed). */
    void (*init)(stage_t *s, uint64_t seed);
    /* n <= batch samples -> loss; keeps what backward needs. */
    double (*forward)(stage_t *s, const stage_input_t *in, int n);
    /* Accumulates d loss / d params into p->g (the caller zeroes it first). */
    void (*backward)(stage_t *s);
    /* Training state as a file (m, v may be NULL; ini may be NULL), and back. */
    int (*save)(const stage_t *s, const char *path, const float *m, const float *v, long step,
                uint64_t epoch, uint64_t cursor, const char *ini);
    int (*load)(stage_t *s, const char *path, float *m, float *v, long *step, uint64_t *epoch,
                uint64_t *cursor);
} stage_ops_t;

struct stage {
    const stage_ops_t *ops;
    params_t *p;            /* the trainable parameters: w, g (owned by the model) */
    int batch;              /* samples per batch allocated */
    int views;              /* images per sample the loader must produce */
    /* Of those, the last warp_views are local warps (data/warp.h) of views 0.. in order
     * (ContraWarping's negatives: view views-warp_views+j warps view j); 0: none. */
    int warp_views;
    int noise_len;          /* masking-noise floats per sample (0: none) */
    int wants_labels;       /* 1 when the loader must fill labels */
    double flops_per_image; /* training FLOPs per sample (2*M*N*K over GEMMs, x3) */
    /* The momentum copy of p->w (p->total floats) when reads & STAGE_READ_EMA: the
     * backend keeps it at the version the step computes on (servers' EMA, or the same
     * update in-process; adamw_ema). */
    float *ema;
    /* MoCo v3's keys of every worker of the step. The backend sets it (NULL: this
     * process's keys are all the keys): keys (n, dim) -> all (M, dim), rows of worker
     * order, this worker's rows at *offset. *all stays valid until the next call. */
    int (*exchange)(void *ctx, const float *keys, int n, int dim, const float **all, int *M,
                    int *offset);
    void *exchange_ctx;
    /* MoCo v2's negative queue (ops->server_state & STAGE_STATE_QUEUE), owned by the
     * stage: a ring of queue_cap rows of queue_dim floats where key number k (counting
     * every key ever appended) lives in row k % queue_cap, the layout of the servers'
     * queue (pserver/negqueue.h), so a cluster worker's delta pulls write straight into
     * it. queue_keys counts the keys appended: rows 0 .. min(queue_keys, queue_cap)-1
     * are valid. forward reads it as of the end of the previous step and leaves this
     * step's keys in keys (nkeys rows of queue_dim). The standalone trainer appends
     * them after each update (stage_queue_append); a cluster worker pushes them to the
     * servers' queue and pulls what every worker appended. Saved with the stage. */
    float *queue;
    size_t queue_cap, queue_dim;
    uint64_t queue_keys;
    const float *keys;
    int nkeys;
    /* The backend's hook for gradients final before backward ends (NULL: none): a stage
     * that knows its backward order calls stage_grad_final(s, offset) once p->g[offset,
     * p->total) will not change any more in this backward (MAE: after each ViT block,
     * vit_stack_t.block_done); the cluster backend pushes those slices at once
     * (cluster.overlap). Never called after a non-finite loss. */
    void (*grad_final)(void *ctx, size_t offset);
    void *grad_final_ctx;
    /* Adversarial masking's per-position scores (models/maskpolicy.h) of a stage that
     * masks its online view (NULL: none): saved and restored by stage_save_params /
     * stage_load_params as tensor "mask_score". */
    float *mask_score;
    size_t mask_score_len;
    int n;           /* samples of the last forward */
    int grads_live;  /* stage_compute's backward is running on a finite loss */
    mae_cfg_t model; /* the [model] keys, recorded in checkpoints */
    void *impl;      /* the objective's own state */
};

/* The stage named by cfg->train.stage, built for batches of up to `batch` samples;
 * batch 0 builds the parameters only (a server's table and initial values). */
int stage_new(stage_t **out, const mimic_cfg_t *cfg, int batch);
void stage_destroy(stage_t **s);
/* The declaration of the stage cfg selects, without building it (servers ask what the
 * running stage reads and pushes). */
const stage_ops_t *stage_ops_of(const mimic_cfg_t *cfg);

/* save/load for any stage whose state is its parameters (and momentum copy): a
 * checkpoint_save_params file with timm names. Stages point their ops at these. */
int stage_save_params(const stage_t *s, const char *path, const float *m, const float *v,
                      long step, uint64_t epoch, uint64_t cursor, const char *ini);
int stage_load_params(stage_t *s, const char *path, float *m, float *v, long *step,
                      uint64_t *epoch, uint64_t *cursor);

/* Starts from the tensors of a safetensors file the stage has too (same name and shape;
 * others are ignored, e.g. an MAE decoder when a MoCo stage starts from MAE): the
 * weights and, when kept, the momentum copy. Logs how many it took; an error when the
 * file has none of them, or one with the right name and the wrong shape. */
int stage_init_from(stage_t *s, const char *path);
/* Writes the encoder part of the weights (timm names: cls_token, pos_embed,
 * patch_embed.*, blocks.*, norm.*) for timm's VisionTransformer and for eval. */
int stage_export_encoder(const stage_t *s, const mae_cfg_t *model, const char *path);

/* Floats per row of the negative queue of the stage cfg selects: contrastive.dim x its
 * queue_parts. The servers size their ring and check pushed keys with it. */
size_t stage_queue_dim(const mimic_cfg_t *cfg);

/* The checkpoint state of the stage's queue (queue NULL when it keeps none): ring,
 * shape and keys appended, for checkpoint_save_params / _load_params / _read_queue. */
checkpoint_state_t stage_queue_state(const stage_t *s);

/* Appends the last forward's keys to the stage's queue (FIFO: the oldest rows are
 * overwritten once it is full), as the servers' queue does under BSP. */
void stage_queue_append(stage_t *s);

/* Tells the backend (grad_final) that p->g[offset, p->total) is final for this step. */
void stage_grad_final(stage_t *s, size_t offset);

/* One training step's compute: forward, zero the gradients, backward. Returns the loss;
 * *t_fwd and *t_bwd (may be NULL) get the seconds each phase took. */
double stage_compute(stage_t *s, const stage_input_t *in, int n, double *t_fwd, double *t_bwd);

#endif
