/* densecl — the dense branch of DenseCL (Wang et al., CVPR 2021; WXinlong/DenseCL) on the
 * patch tokens of a ViT (METHODS.md; applying it to ViT tokens is ours).
 *
 * For sample n and query token s the positive key is token j* = argmax_t cos(fq[n,s],
 * fk[n,t]) of the key view, matched on the BACKBONE tokens (the encoder's final norm
 * output; the argmax carries no gradient, as the reference's torch.max index), and the
 * loss is InfoNCE of the normalised dense projection qd[n,s] against kd[n,j*] and a queue
 * of pooled dense keys (densecl_pool), target 0, mean over the N*S query tokens:
 *   L_dense = mean_{n,s} CE([qd_ns . kd_{n j*}, qd_ns . queue_j] / T, 0).
 * The global branch and the weighting L = (1-lambda) L_global + lambda L_dense are the
 * stage's (stages/densecl.c). Inputs qd, kd are expected L2-normalised per token
 * (l2norm.h); keys and queue are constants. Nothing here allocates. */
#ifndef MIMIC_DENSECL_H
#define MIMIC_DENSECL_H

/* The query view may hold fewer tokens than the key view (Sq <= Sk: the stage's
 * contrastive.mask_ratio removes some of the online view's patches; ours): each query
 * token is matched among all Sk key tokens. */

/* Floats of scratch densecl_match needs: the key tokens normalised and one sample's
 * similarity matrix, Sk*D + Sq*Sk. */
#define DENSECL_MATCH_SCRATCH(Sq, Sk, D) ((size_t)(Sk) * (size_t)(D) + (size_t)(Sq) * (size_t)(Sk))

/* idx (N,Sq): for each query token s of sample n, argmax_t cos(fq[n,s], fk[n,t]) over the
 * Sk key tokens of the same sample (the first maximum on ties). fq (N,Sq,D), fk
 * (N,Sk,D); scratch as DENSECL_MATCH_SCRATCH. */
void densecl_match(int *idx, float *scratch, const float *fq, int Sq, const float *fk, int Sk,
                   int N, int D);
/* kpos (N,Sq,Dd): kpos[n,s] = kd[n, idx[n,s]], kd (N,Sk,Dd). */
void densecl_gather(float *kpos, const float *kd, const int *idx, int N, int Sq, int Sk, int Dd);
/* The pooled dense key of each sample, normalize(mean_s zk[n,s]) as the reference's
 * avgpool of the key grid then F.normalize: out (N,Dd), norm (N) (the mean's norm), zk
 * (N,S,Dd) the key view's dense projections BEFORE their per-token normalisation. */
void densecl_pool(float *out, float *norm, const float *zk, int N, int S, int Dd);

/* The dense loss, a mean over the N*Sq query tokens: matches (idx, kpos filled as
 * above) and InfoNCE against the K rows of queue (row j at queue + j*ldq, Dd floats).
 * prob (N*Sq, 1+K) keeps the softmax for backward. qd (N,Sq,Dd), kd (N,Sk,Dd)
 * normalised; fq (N,Sq,D), fk (N,Sk,D) backbone tokens. */
float densecl_dense_forward(float *prob, float *kpos, int *idx, float *scratch, const float *qd,
                            const float *kd, const float *fq, const float *fk, const float *queue,
                            int ldq, int K, int N, int Sq, int Sk, int D, int Dd, float T);
/* dqd (N,Sq,Dd) += dloss * d L_dense / d qd (no gradient to kd, fq, fk: constants /
 * argmax). */
void densecl_dense_backward(float *dqd, const float *prob, const float *kpos, const float *queue,
                            int ldq, int K, int N, int Sq, int Dd, float T, float dloss);

#endif
