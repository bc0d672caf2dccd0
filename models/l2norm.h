/* l2norm — row-wise L2 normalisation, PyTorch's F.normalize(x, dim=1) (eps 1e-12).
 *
 * out_i = x_i / max(||x_i||, eps). Every contrastive loss works on normalised
 * embeddings; forward keeps each row's norm so backward does not recompute it. A row
 * whose norm is below eps is divided by eps (a linear map), as in PyTorch. */
#ifndef MIMIC_L2NORM_H
#define MIMIC_L2NORM_H

#define L2NORM_EPS 1e-12f

/* out (N,D); norm (N) saved for backward (the unclamped ||x_i||); inp (N,D). out may
 * alias inp. */
void l2norm_forward(float *out, float *norm, const float *inp, int N, int D);
/* dinp (N,D) += d out_i / d x_i^T dout_i = (dout_i - out_i (out_i . dout_i)) / ||x_i||,
 * or dout_i / eps for rows below eps; dout, out (N,D); norm (N) from forward. */
void l2norm_backward(float *dinp, const float *dout, const float *out, const float *norm, int N,
                     int D);

#endif
