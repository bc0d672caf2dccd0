/* maskpolicy — how MAE's mask is drawn from the loader's uniform noise u (B,L): random
 * (the reference: the patches with the largest u are removed) or adversarial (ours, after
 * the AMCL idea: prefer removing the positions whose reconstruction is hardest).
 *
 * Adversarial keeps a running score per patch position, an EMA over steps of the mean
 * reconstruction error of that position where it was removed (mae_patch_loss), and turns
 * it into a distribution p = (1 - mix) softmax(r / T) + mix / L over positions, r = score /
 * mean(score) (relative, so T does not depend on the loss's scale). The mask is a
 * Gumbel-top-k sample from p (Kool et al. 2019): key_l = log p_l - log(-log u_l), and
 * MAE removes the largest keys exactly as it removes the largest noise, so the mask stays
 * a deterministic function of the seed's noise and the loader is unchanged. With p
 * uniform the keys are an increasing function of u: the same mask as random masking.
 * Random policy never touches the noise (bit-identical to no policy). Nothing allocates
 * after maskpolicy_new. */
#ifndef MIMIC_MASKPOLICY_H
#define MIMIC_MASKPOLICY_H

#include "config.h"

typedef struct {
    mask_policy_t policy;
    int L;
    float temperature, mix, decay;
    float *score; /* (L) running score; 0 = position not yet seen removed */
    float *logp;  /* (L) log p of the current scores */
    double *sum;  /* (L) scratch of maskpolicy_update */
    int *count;   /* (L) */
    long updates; /* batches folded into the scores */
} maskpolicy_t;

/* The policy of cfg's mae.mask_* keys for L patches; errors name the key. */
int maskpolicy_new(maskpolicy_t **out, const mimic_cfg_t *cfg, int L);
void maskpolicy_destroy(maskpolicy_t **mp);
/* log p (L) of the current scores into mp->logp (uniform until a position is seen; an
 * unseen position counts as the mean of the seen ones). */
void maskpolicy_distribution(maskpolicy_t *mp);
/* keys (B,L) for mae_forward's noise argument from the loader's noise (B,L) in [0,1):
 * Gumbel-top-k keys of the distribution of the current scores (recomputed here, so
 * scores read from a checkpoint take effect). (Random policy: a plain copy.) */
void maskpolicy_keys(maskpolicy_t *mp, float *keys, const float *noise, int B);
/* Folds one batch into the scores: value (B,L) per sample and position, counted where
 * counted (B,L) is non-zero. MAE: value = mae_patch_loss, counted = its mask (a visible
 * patch's error says nothing about its removal); a contrastive stage: value =
 * maskpolicy_removal_gain of its visible tokens. score = the mean over the batch at the
 * first sight of a position, then decay * score + (1 - decay) * mean. Non-finite values
 * are skipped. */
void maskpolicy_update(maskpolicy_t *mp, const float *value, const float *counted, int B);

/* ids (B,L): per row the stable ascending argsort of keys (B,L), i.e. MAE's ids_shuffle:
 * the first K are the kept patches, ties keep the lower index first (torch.argsort on
 * the reference's noise has none). */
void maskpolicy_argsort(int *ids, const float *keys, int B, int L);

/* For a contrastive stage's masked view (ours): the first-order estimate of how much the
 * loss would rise if visible token j of sample b were removed, -dx0 . x0 of its stack
 * input row (patch embedding + position), positive part, as value[b, ids[b, j]] with
 * counted = 1 there (0 at the removed positions). x0, dx0 (B, 1+K, D) the encoder's stack
 * input and its gradient (encoder_acts_t.x0, .d_x0 after encoder_backward), ids (B,L). */
void maskpolicy_removal_gain(float *value, float *counted, const float *x0, const float *dx0,
                             const int *ids, int B, int K, int L, int D);

#endif
