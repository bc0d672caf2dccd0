/* vit — the pre-LN Transformer block stack shared by the ViT encoder, the MAE decoder
 * and (later) the contrastive heads' backbones.
 *
 * A stack registers its tensors in a params_t under a prefix with timm names
 * ("blocks.3.attn.qkv.weight"), and runs on token tensors (B,T,C). Activations live in
 * a vit_acts_t allocated once for a (B,T) shape and reused every step, so a training
 * step allocates nothing. Block: x + proj(attn(LN1(x))), then + fc2(GELU(fc1(LN2(.)))).
 * Patch embedding, cls token and final norms belong to the models that use a stack
 * (mae.c); this module is only the stack. */
#ifndef MIMIC_VIT_H
#define MIMIC_VIT_H

#include "params.h"
#include "rng.h"

typedef struct {
    int norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b;
    int norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b;
} vit_block_ix_t;

typedef struct {
    int depth, dim, heads, hidden;
    float eps;
    vit_block_ix_t *blk; /* depth entries */
    /* NULL, or called after block l's backward with the lowest offset of its tensors: a
     * model whose tensors after the block are all final by then (its backward runs the
     * stack once) lets its trainer push those gradients while the blocks below run */
    void (*block_done)(void *ctx, size_t offset);
    void *block_ctx;
} vit_stack_t;

/* Per-layer saved activations (contiguous over layers) and backward scratch. */
typedef struct {
    int B, T, depth, dim, heads, hidden;
    int cap; /* the B the arrays were made for (B may be set lower for a short batch) */
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *res1;
    float *ln2, *ln2_mean, *ln2_rstd, *fc1, *act, *out;
    /* backward scratch, one layer's worth */
    float *d_res1, *d_ln, *d_qkv, *d_atty, *d_hid, *d_fc1, *d_att;
    /* bf16 compute (models/mm.h): each GEMM input as the forward pass rounded it (LayerNorm
     * and GELU write it rounded, with no f32 copy), kept for the weight gradients of
     * backward, and the blocks' weight matrices rounded once a step (qkv, proj, fc1, fc2
     * of block l at w16 + l * (4 C^2 + 2 C H)); made at the first bf16 forward. bf16: the
     * last forward took this path, so backward does too. */
    unsigned short *ln1_16, *atty16, *ln2_16, *act16, *w16;
    int bf16;
} vit_acts_t;

/* Registers depth blocks named "<prefix>.<i>.<...>". */
int vit_stack_register(vit_stack_t *s, params_t *p, const char *prefix, int depth, int dim,
                       int heads, int hidden);
void vit_stack_free(vit_stack_t *s);
/* Xavier-uniform weights, zero biases, LayerNorm weight 1 / bias 0 (MAE's init). */
void vit_xavier_uniform(float *w, int fan_out, int fan_in, rng_t *rng);
void vit_stack_init(const vit_stack_t *s, params_t *p, rng_t *rng);

int vit_acts_alloc(vit_acts_t *a, const vit_stack_t *s, int B, int T);
void vit_acts_free(vit_acts_t *a);

/* x (B,T,C) -> returns the last layer's output (B,T,C), owned by acts. */
const float *vit_stack_forward(const vit_stack_t *s, const params_t *p, vit_acts_t *a,
                               const float *x);
/* dx (B,T,C) += d loss / d x; dout (B,T,C) is the gradient of the stack output and is
 * used as scratch (clobbered). Parameter gradients accumulate into p->g. */
void vit_stack_backward(const vit_stack_t *s, params_t *p, vit_acts_t *a, float *dx, const float *x,
                        float *dout);

#endif
