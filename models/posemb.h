/* posemb — fixed 2D sine-cosine position embeddings (MAE's get_2d_sincos_pos_embed).
 *
 * Not trained: computed once at model creation. Laid out as facebookresearch/mae
 * util/pos_embed.py: the first D/2 columns embed the patch's column coordinate, the
 * last D/2 its row coordinate; each half is [sin(pos*omega) | cos(pos*omega)] with
 * omega_k = 10000^(-k/(D/4)). */
#ifndef MIMIC_POSEMB_H
#define MIMIC_POSEMB_H

/* out ((cls + grid*grid), D): with cls = 1 a leading all-zero row for the cls token.
 * D must be a multiple of 4. */
void posemb_sincos_2d(float *out, int D, int grid, int cls);

#endif
