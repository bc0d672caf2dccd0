/* contrastive — the losses of the contrastive stages: InfoNCE against a queue (MoCo v2),
 * MoCo v3's in-batch loss over every worker's keys, and SupCon with a general
 * positive-weight matrix and optional per-anchor weights (SupCon, SimCLR, MIMIC's
 * mix-supervised loss and CRS-CONT's weighted SupCon).
 *
 * Each forward returns the loss and keeps the row softmax (the caller's buffer) that
 * its backward needs; each backward accumulates (+=) dloss * d loss / d input, so a
 * weighted sum of losses (MIMIC's w_con, MoCo v3's two symmetric terms) is a sequence
 * of calls. Logits are GEMMs through cblas_sgemm. Inputs are expected L2-normalised
 * (l2norm.h); keys and queue are constants (no gradient), as in the references. */
#ifndef MIMIC_CONTRASTIVE_H
#define MIMIC_CONTRASTIVE_H

/* MoCo v2: logits_i = [q_i . k_i, q_i . queue_j (j < K)] / T, cross-entropy with target
 * 0, mean over N. prob (N, 1+K) keeps the softmax; q, k (N,D); queue (K,D). */
float contrastive_queue_forward(float *prob, const float *q, const float *k, const float *queue,
                                int N, int K, int D, float T);
/* dq (N,D) += dloss * d loss / d q. */
void contrastive_queue_backward(float *dq, const float *prob, const float *k, const float *queue,
                                int N, int K, int D, float T, float dloss);
/* The same with queue row j at queue + j*ldq (ldq >= D): DenseCL keeps its two queues
 * in one ring of [global key | pooled dense key] rows and reads each part in place. */
float contrastive_queue_forward_ld(float *prob, const float *q, const float *k,
                                   const float *queue, int ldq, int N, int K, int D, float T);
void contrastive_queue_backward_ld(float *dq, const float *prob, const float *k,
                                   const float *queue, int ldq, int N, int K, int D, float T,
                                   float dloss);

/* MoCo v3: ctr(q, k) = CE(q k^T / tau, targets) * 2 tau, mean over the N local rows;
 * k (M,D) holds the keys of every worker of the step and the positive of local row i
 * is key offset + i (offset = this worker's first row among them; 0 <= offset,
 * offset + N <= M). prob (N,M) keeps the softmax; q (N,D). The symmetric loss
 * ctr(q1, k2) + ctr(q2, k1) is two calls. Each worker's loss is a mean over its own
 * rows; the reference's DDP averages the workers' gradients, so servers that sum them
 * must divide by the worker count to optimise the same global mean. */
float contrastive_v3_forward(float *prob, const float *q, const float *k, int N, int M, int D,
                             int offset, float tau);
/* dq (N,D) += dloss * d ctr / d q. */
void contrastive_v3_backward(float *dq, const float *prob, const float *k, int N, int M, int D,
                             int offset, float tau, float dloss);

/* SupCon with positive weights: every row i of z (M,D) is an anchor;
 *   L = scale * mean_i [ -(1/W_i) sum_{j!=i} w_ij log softmax_{a!=i}(z_i . z_a / tau)_j ],
 *   W_i = sum_{j!=i} w_ij;
 * w (M,M) >= 0, diagonal ignored. A row with W_i = 0 (no positive) contributes 0 but
 * still counts in the mean over M, as in SupContrast, which clamps |P(i)| to >= 1.
 * scale = tau / base_tau for SupCon (1 when base_tau = tau), w_con for MIMIC.
 * prob (M,M) keeps the softmax (0 on the diagonal). M >= 2 (checked). */
float contrastive_supcon_forward(float *prob, const float *z, const float *w, int M, int D,
                                 float tau, float scale);
/* dz (M,D) += dloss * dL/dz, through anchors and contrasts both; scratch (M,M) is
 * overwritten. */
void contrastive_supcon_backward(float *dz, float *scratch, const float *prob, const float *w,
                                 const float *z, int M, int D, float tau, float scale, float dloss);

/* The same with a weight a_i per anchor (aw (M); NULL: all 1), CRS-CONT's SupCon_w:
 *   L = scale * mean_i a_i [ -(1/W_i) sum_{j!=i} w_ij log softmax_{a!=i}(z_i . z_a / tau)_j ],
 * the mean still over all M rows (hangyu94/CRS-CONT multiplies each anchor's
 * mean_log_prob_pos by its weight, then averages). The two functions above are this one
 * with aw = NULL. */
float contrastive_supcon_anchor_forward(float *prob, const float *z, const float *w,
                                        const float *aw, int M, int D, float tau, float scale);
void contrastive_supcon_anchor_backward(float *dz, float *scratch, const float *prob,
                                        const float *w, const float *aw, const float *z, int M,
                                        int D, float tau, float scale, float dloss);

/* Positive weights w (M,M) with a zero diagonal, for contrastive_supcon_*:
 * SupCon: w_ij = [labels_i == labels_j]; labels (M), one per row (repeat a sample's
 * label for each of its views). */
void contrastive_weights_labels(float *w, const int *labels, int M);
/* SimCLR: rows are V views of B samples, view-major (row v*B + b, as torch.cat of the
 * views); w_ij = 1 when i and j are different views of one sample. M = V*B. */
void contrastive_weights_views(float *w, int B, int V);
/* MIMIC (ours, METHODS.md): w_ij = y_i . y_j for soft labels y (M,K) (mixup/cutmix
 * labels; one-hot rows give SupCon's weights). */
void contrastive_weights_soft(float *w, const float *y, int M, int K);

#endif
