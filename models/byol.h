/* byol — the losses of the BYOL and ContraWarping stages (stages/byol.c; METHODS.md,
 * docs/objectives.md).
 *
 * BYOL regresses the online prediction onto the target network's projection of the
 * other view: per row 2 - 2 cos(p, z) = ||p/|p| - z/|z|||^2. ContraWarping adds a
 * negative term (ours) that pushes the online prediction away from the target
 * projection of a locally warped copy of that view: a two-way InfoNCE with the
 * unwarped target as the positive and the warped one as the only negative.
 *
 * Like contrastive.h, inputs are L2-normalised rows (l2norm.h) and the targets are
 * constants (stop-gradient: they come from the momentum copy); forwards return the
 * batch mean and keep what their backward needs in the caller's buffer; backwards
 * accumulate (+=) dloss * d loss / d p, so the symmetric loss and a weighted sum of
 * terms are a sequence of calls. */
#ifndef MIMIC_BYOL_H
#define MIMIC_BYOL_H

/* L = mean_i (2 - 2 p_i . z_i); p, z (N,D) unit rows. */
float byol_forward(const float *p, const float *z, int N, int D);
/* dp (N,D) += dloss * dL/dp = -2 dloss / N * z. */
void byol_backward(float *dp, const float *z, int N, int D, float dloss);

/* ContraWarping's negative term (ours): with s+ = p_i . z_i / tau, s- = p_i . w_i / tau,
 *   L = mean_i -log( e^{s+} / (e^{s+} + e^{s-}) ) = mean_i softplus(s- - s+);
 * p, z, w (N,D) unit rows (w: the target projection of the warped view); q (N) keeps
 * the negative's softmax weight sigmoid(s- - s+) for backward. tau > 0. */
float byol_warpneg_forward(float *q, const float *p, const float *z, const float *w, int N, int D,
                           float tau);
/* dp (N,D) += dloss / (N tau) * q_i (w_i - z_i). */
void byol_warpneg_backward(float *dp, const float *q, const float *z, const float *w, int N, int D,
                           float tau, float dloss);

#endif
