/* encoder — the plain ViT encoder of MAE and timm's VisionTransformer: patch embedding,
 * fixed 2D sin-cos position embedding, cls token (+ its position row), the pre-LN block
 * stack and the final LayerNorm, as one forward/backward pair.
 *
 * encoder_register puts its tensors in a caller's params_t with timm names (cls_token,
 * patch_embed.proj.weight/bias, blocks.N.*, norm.weight/bias), in that order, so a model
 * that registers its encoder first (mae.c) has the encoder as a prefix of its flat
 * vector. The fixed pos_embed (1+L, D) belongs to the encoder_t, not to params_t.
 * An encoder_acts_t holds the activations of one (batch, tokens) shape: every patch of
 * the image (contrastive stages, fine-tuning, evaluation) or K chosen patches per image
 * (MAE's visible ones). Allocate it once, reuse it every step. */
#ifndef MIMIC_ENCODER_H
#define MIMIC_ENCODER_H

#include "config.h"
#include "params.h"
#include "rng.h"
#include "vit.h"

typedef struct {
    int img_size, in_chans, patch_size, dim, depth, heads, hidden;
    int grid, L, cpp; /* patches per side, patches per image, C*p*p values per patch */
    /* params_t indices; the encoder's tensors are indices first .. first+ntensors-1 */
    int cls_token, patch_w, patch_b, norm_w, norm_b;
    int first, ntensors;
    vit_stack_t blocks;
    float *pos_embed; /* (1+L, D) fixed sin-cos: row 0 for the cls token is all zero */
} encoder_t;

typedef struct {
    int B, cap; /* images in use, images allocated */
    int K, T;   /* patches per image, tokens per image (1 + K) */
    vit_acts_t vit;
    float *cols;            /* (B*K, cpp) im2col of the embedded patches */
    float *xp;              /* (B*K, D) patch embeddings */
    float *x0;              /* (B, T, D) stack input: cls + pos, patches + pos */
    const float *stack_out; /* (B, T, D) owned by vit */
    float *out;             /* (B, T, D) after the final norm: the encoder output */
    float *mean, *rstd;     /* (B*T) final norm statistics */
    float *d_stack, *d_x0;  /* (B, T, D) backward scratch */
    float *d_xp;            /* (B*K, D) */
} encoder_acts_t;

/* How a (B, D) feature is read from the encoder output:
 * ENCODER_POOL_CLS - the cls row of the final norm output (MAE's linear probe,
 *   timm global_pool='token');
 * ENCODER_POOL_AVG - the mean of the patch rows of the final norm output. timm's
 *   global_pool='avg' averages the *pre-norm* tokens and applies a separate fc_norm;
 *   a pre-trained MAE has no fc_norm, so we average after `norm` instead. */
typedef enum { ENCODER_POOL_CLS = 0, ENCODER_POOL_AVG } encoder_pool_t;

/* Checks the [model] keys (every message names the key). */
int encoder_check_cfg(const mae_cfg_t *cfg);
/* Validates cfg's [model] keys and registers the encoder's tensors in p (not yet
 * finalised); computes pos_embed. On error e holds nothing to free. */
int encoder_register(encoder_t *e, params_t *p, const mae_cfg_t *cfg);
void encoder_free(encoder_t *e);

/* MAE's initialisation: Xavier-uniform patch projection (as a Linear on its (D, C*p*p)
 * view) and block linears, zero biases, cls ~ N(0, 0.02), LayerNorms 1/0.
 * encoder_init = encoder_init_embed then encoder_init_blocks; the halves exist so that
 * mae_init keeps the draw order it always had (its mask token is drawn in between). */
void encoder_init(const encoder_t *e, params_t *p, rng_t *rng);
void encoder_init_embed(const encoder_t *e, params_t *p, rng_t *rng);
void encoder_init_blocks(const encoder_t *e, params_t *p, rng_t *rng);

/* Activations for B images of K embedded patches each (K = e->L for whole images). */
int encoder_acts_alloc(encoder_acts_t *a, const encoder_t *e, int B, int K);
void encoder_acts_free(encoder_acts_t *a);
/* Runs the next passes on n <= the allocated images; nothing is reallocated. */
void encoder_acts_resize(encoder_acts_t *a, int n);

/* imgs (B,C,H,W) -> returns the encoder output (B, 1+K, D), owned by a: row 0 of each
 * image is the cls token, rows 1..K the patches in the order embedded. ids (B, ld)
 * names each image's patches, the first K of each row are embedded (MAE passes its
 * ids_shuffle with ld = L); ids NULL embeds every patch in grid order (K must be L). */
const float *encoder_forward(const encoder_t *e, const params_t *p, encoder_acts_t *a,
                             const float *imgs, const int *ids, int ld);
/* After encoder_forward: accumulates d loss / d params into p->g from dout (B, 1+K, D),
 * the gradient of the encoder output (read only). No image gradient. */
void encoder_backward(const encoder_t *e, params_t *p, encoder_acts_t *a, const float *dout);

/* feat (B, D) from the last encoder_forward's output. */
void encoder_features(float *feat, const encoder_acts_t *a, encoder_pool_t pool);
/* dout (B, 1+K, D) += the gradient of encoder_features' input given dfeat (B, D). */
void encoder_features_backward(float *dout, const encoder_acts_t *a, const float *dfeat,
                               encoder_pool_t pool);

/* Encoder-only forward FLOPs of one image of K patches (2*M*N*K over GEMMs). */
double encoder_forward_flops(const encoder_t *e, int K);

/* The [model] keys an encoder file records in its safetensors metadata (checkpoints and
 * exports of checkpoint.c: img_size, in_chans, patch_size, embed_dim, depth, num_heads,
 * mlp_ratio) overwrite those in cfg; keys absent from the file (a timm export) are left
 * as they are. Errors name the file and key. */
int encoder_cfg_from_file(mae_cfg_t *cfg, const char *path);
/* Reads the encoder's tensors from a safetensors file by their timm names (any other
 * tensors in it, such as an MAE decoder, are ignored). pos_embed is read too when the
 * file has it (a learned table of a timm model), else the sin-cos table stays. Every
 * error names the file and the tensor: a missing tensor, a dtype other than F32, a
 * shape that differs from the model's (both shapes given). */
int encoder_load(encoder_t *e, params_t *p, const char *path);

#endif
