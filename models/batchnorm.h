/* batchnorm — BatchNorm1d over the rows of a (N,C) batch, PyTorch's nn.BatchNorm1d.
 *
 * Training mode normalises each channel with the batch mean and the biased variance
 * and keeps mean/rstd (C each) for backward; eval mode uses given running statistics;
 * batchnorm_update_running folds a batch into them with PyTorch's momentum and the
 * unbiased variance. w and b NULL means affine=False (MoCo v3's last BN). Training
 * mode needs N >= 2 (PyTorch raises "Expected more than 1 value per channel"): with
 * one row every output would be 0. Statistics are local to the caller's rows; a
 * SyncBatchNorm across workers would all-reduce the per-channel sums first. The
 * _groups variants split the rows into G contiguous groups with statistics of their
 * own ("ghost" BatchNorm): one process computing what G workers without SyncBatchNorm
 * compute on their slices of the batch (contrastive.bn_groups). */
#ifndef MIMIC_BATCHNORM_H
#define MIMIC_BATCHNORM_H

/* out (N,C); mean, rstd (C) saved for backward; inp (N,C); w, b (C) or both NULL.
 * N >= 2 (checked). out may alias inp only when backward is not needed. */
void batchnorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps);
/* dinp (N,C) +=, dw (C) +=, db (C) +=, any may be NULL; dout, inp (N,C); w (C) or NULL;
 * mean, rstd (C) from batchnorm_forward. */
void batchnorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C);

/* Statistics per group: rows [g*N/G, (g+1)*N/G) are normalised with their own batch
 * statistics, kept in mean, rstd (G,C) at g*C; the same as batchnorm_forward on each
 * slice. G divides N and N/G >= 2 (checked); G = 1 is batchnorm_forward. */
void batchnorm_forward_groups(float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int G, int N, int C, float eps);
/* The backward of batchnorm_forward_groups: dinp (N,C) +=; dw, db (C) += the sums over
 * every group; mean, rstd (G,C). */
void batchnorm_backward_groups(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean,
                               const float *rstd, int G, int N, int C);

/* Eval mode: out (N,C) = (inp - run_mean) / sqrt(run_var + eps) * w + b; w, b may be
 * NULL. out may alias inp. */
void batchnorm_forward_eval(float *out, const float *inp, const float *run_mean,
                            const float *run_var, const float *w, const float *b, int N, int C,
                            float eps);
/* run_mean, run_var (C) <- (1 - momentum) * run + momentum * statistic of inp (N,C),
 * the variance unbiased (divided by N - 1) as in PyTorch, whose default momentum is
 * 0.1. Recomputes the statistics in the forward's order (bitwise the same mean) rather
 * than deriving the variance back from rstd, which would lose it when var << eps. */
void batchnorm_update_running(float *run_mean, float *run_var, const float *inp, int N, int C,
                              float momentum);

#endif
