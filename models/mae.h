/* mae — the masked autoencoder of He et al. (facebookresearch/mae models_mae.py) on a
 * plain ViT: per-sample random masking, encoder on visible patches + cls token,
 * decoder with a learned mask token, loss on the removed patches' (normalised) pixels.
 *
 * mae_new registers every trainable tensor, with timm names, in one params_t: the
 * encoder first (models/encoder.h registers and runs it), so the encoder is a prefix of
 * the flat vector, then the decoder. mae_batch_t holds the
 * activations of one batch shape; allocate it once and reuse it every step. Masking
 * noise is an input (B,L) so that a run, a test or PyTorch can reproduce the mask. */
#ifndef MIMIC_MAE_H
#define MIMIC_MAE_H

#include "config.h"
#include "encoder.h"
#include "params.h"
#include "rng.h"
#include "vit.h"

typedef struct {
    mae_cfg_t cfg;
    int grid, L, keep; /* patches per side, patches, visible patches */
    int cpp;           /* C*p*p: one patch as the embedding reads it, (c,i,j) */
    params_t *p;
    encoder_t enc; /* cls token, patch embedding, blocks, norm */
    int mask_token, dec_embed_w, dec_embed_b, dec_norm_w, dec_norm_b, dec_pred_w, dec_pred_b;
    vit_stack_t dec;
    const float *pos_embed; /* (1+L, D), fixed sin-cos: enc.pos_embed (borrowed) */
    float *dec_pos_embed;   /* (1+L, Dd), fixed sin-cos */
} mae_t;

typedef struct {
    int B, cap;         /* batch in use, batch allocated */
    encoder_acts_t enc; /* the encoder on the keep visible patches */
    vit_acts_t dec;
    int *ids_shuffle, *ids_restore; /* (B,L) */
    float *mask;                    /* (B,L), 1 = removed */
    const float *latent;            /* (B,1+keep,D) encoder output, owned by enc */
    const float *dec_out;           /* owned by dec */
    float *y, *z;                   /* (B,1+keep,Dd), (B,1+L,Dd) */
    float *dn, *dn_mean, *dn_rstd;  /* (B,1+L,Dd) */
    float *pred;                    /* (B,1+L,ppc): row 0 of each sample is the cls output */
    float *target;                  /* (B,L,ppc) */
    float *d_pred, *d_dn, *d_decout, *d_z, *d_y, *d_lat;
    double mask_sum;
} mae_batch_t;

/* Validates cfg (every error names the key) and registers the parameters. */
int mae_new(mae_t **out, const mae_cfg_t *cfg);
void mae_destroy(mae_t **m);
/* MAE's initialisation (Xavier-uniform linears, N(0,0.02) tokens). */
void mae_init(mae_t *m, uint64_t seed);

int mae_batch_alloc(mae_batch_t **out, const mae_t *m, int B);
void mae_batch_free(mae_batch_t **b);
/* Runs the next steps on n <= the allocated batch size (a batch shortened by corrupt
 * samples); buffers are not reallocated. */
void mae_batch_resize(mae_batch_t *b, int n);

/* imgs (B,C,H,W), noise (B,L) -> loss. Fills every activation backward needs. */
double mae_forward(const mae_t *m, mae_batch_t *b, const float *imgs, const float *noise);
/* Accumulates d loss / d params into m->p->g (call params_zero_grad first). */
void mae_backward(mae_t *m, mae_batch_t *b);
/* After mae_forward: out (B,L) = mean over the pixels of (pred - target)^2 of every
 * patch, removed or not (the loss averages it over the removed ones): the per-position
 * reconstruction error adversarial masking scores positions by (maskpolicy.h). */
void mae_patch_loss(const mae_t *m, const mae_batch_t *b, float *out);
/* Copies the per-patch predictions (B,L,ppc), dropping the cls rows. */
void mae_pred(const mae_t *m, const mae_batch_t *b, float *out);

/* Training/model FLOPs of one image (2*M*N*K over forward GEMMs incl. attention, x3). */
double mae_train_flops_per_image(const mae_t *m);

#endif
