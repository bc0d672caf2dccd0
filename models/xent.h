/* xent — softmax cross-entropy with soft targets, and the row softmax every loss of
 * the contrastive stage shares.
 *
 * MIMIC trains its classifier on mixup/cutmix labels (rows of target sum to 1; hard
 * labels are one-hot rows). Forward keeps the softmax for backward; the loss is the
 * mean over the N rows. */
#ifndef MIMIC_XENT_H
#define MIMIC_XENT_H

/* Turns x (n) into softmax(x) in place and returns log(sum(exp(x))) of the input.
 * Entries equal to -INFINITY get probability 0 (how the contrastive losses leave a
 * column out of a row's softmax). At least one entry must be finite. */
double xent_softmax_row(float *x, int n);

/* Returns mean_i sum_k -target_ik log softmax(logits_i)_k; prob (N,K) keeps the softmax;
 * logits, target (N,K). */
float xent_soft_forward(float *prob, const float *logits, const float *target, int N, int K);
/* dlogits (N,K) += dloss / N * (prob * sum_k target - target), which is
 * dloss / N * (prob - target) when target rows sum to 1. */
void xent_soft_backward(float *dlogits, const float *prob, const float *target, int N, int K,
                        float dloss);

/* Backward of a row softmax p = softmax(x) (N,K) used as a value (CRS-CONT's SimCLR term
 * on the coarse classifier's probabilities): dx (N,K) += p * (dp - sum_k p_k dp_k). */
void xent_softmax_backward(float *dx, const float *p, const float *dp, int N, int K);

#endif
