#include "contrastive.h"

#include "common.h"
#include "xent.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>

float contrastive_queue_forward(float *prob, const float *q, const float *k, const float *queue,
                                int N, int K, int D, float T) {
    return contrastive_queue_forward_ld(prob, q, k, queue, D, N, K, D, T);
}

float contrastive_queue_forward_ld(float *prob, const float *q, const float *k,
                                   const float *queue, int ldq, int N, int K, int D, float T) {
    int ld = K + 1;
    /* columns 1..K: q queue^T / T straight into the logits rows */
    if (K > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, K, D, 1.0f / T, q, D, queue, ldq,
                    0.0f, prob + 1, ld);
    double loss = 0.0;
    for (int i = 0; i < N; i++) {
        const float *qi = q + (size_t)i * D, *ki = k + (size_t)i * D;
        float *row = prob + (size_t)i * ld;
        float pos = 0.0f;
        for (int d = 0; d < D; d++)
            pos += qi[d] * ki[d];
        row[0] = pos / T;
        loss += xent_softmax_row(row, ld) - (double)(pos / T);
    }
    return (float)(loss / N);
}

/* d loss / d logits_i = (prob_i - onehot_0) / N, and logits = [q.k, q queue^T] / T. */
void contrastive_queue_backward(float *dq, const float *prob, const float *k, const float *queue,
                                int N, int K, int D, float T, float dloss) {
    contrastive_queue_backward_ld(dq, prob, k, queue, D, N, K, D, T, dloss);
}

void contrastive_queue_backward_ld(float *dq, const float *prob, const float *k,
                                   const float *queue, int ldq, int N, int K, int D, float T,
                                   float dloss) {
    int ld = K + 1;
    float c = dloss / ((float)N * T);
    if (K > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, D, K, c, prob + 1, ld, queue,
                    ldq, 1.0f, dq, D);
    for (int i = 0; i < N; i++) {
        float a = c * (prob[(size_t)i * ld] - 1.0f);
        const float *ki = k + (size_t)i * D;
        float *dqi = dq + (size_t)i * D;
        for (int d = 0; d < D; d++)
            dqi[d] += a * ki[d];
    }
}

float contrastive_v3_forward(float *prob, const float *q, const float *k, int N, int M, int D,
                             int offset, float tau) {
    MIMIC_CHECK(offset >= 0 && offset + N <= M);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, D, 1.0f / tau, q, D, k, D, 0.0f,
                prob, M);
    double loss = 0.0;
    for (int i = 0; i < N; i++) {
        float *row = prob + (size_t)i * M;
        double pos = row[offset + i];
        loss += xent_softmax_row(row, M) - pos;
    }
    return (float)(2.0 * tau * loss / N);
}

/* d ctr / d q_i = 2 tau / N * (prob_i - onehot_{offset+i}) k / tau = 2/N (prob_i k - k_{offset+i})
 */
void contrastive_v3_backward(float *dq, const float *prob, const float *k, int N, int M, int D,
                             int offset, float tau, float dloss) {
    (void)tau;
    float c = 2.0f * dloss / (float)N;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, D, M, c, prob, M, k, D, 1.0f, dq, D);
    for (int i = 0; i < N; i++) {
        const float *kp = k + (size_t)(offset + i) * D;
        float *dqi = dq + (size_t)i * D;
        for (int d = 0; d < D; d++)
            dqi[d] -= c * kp[d];
    }
}

static double row_weight(const float *w, int i, int M) {
    double s = 0.0;
    for (int j = 0; j < M; j++)
        if (j != i) s += w[(size_t)i * M + j];
    return s;
}

float contrastive_supcon_forward(float *prob, const float *z, const float *w, int M, int D,
                                 float tau, float scale) {
    return contrastive_supcon_anchor_forward(prob, z, w, NULL, M, D, tau, scale);
}

float contrastive_supcon_anchor_forward(float *prob, const float *z, const float *w,
                                        const float *aw, int M, int D, float tau, float scale) {
    MIMIC_CHECK(M >= 2); /* a lone row has nothing to contrast with */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, M, D, 1.0f / tau, z, D, z, D, 0.0f,
                prob, M);
    double loss = 0.0;
    for (int i = 0; i < M; i++) {
        float *row = prob + (size_t)i * M;
        const float *wi = w + (size_t)i * M;
        double W = row_weight(w, i, M), sws = 0.0;
        for (int j = 0; j < M; j++)
            if (j != i) sws += (double)wi[j] * row[j];
        row[i] = -INFINITY; /* the anchor is not its own contrast */
        double lse = xent_softmax_row(row, M);
        /* -(a_i/W) sum_j w_ij (s_ij - lse) */
        if (W > 0.0) loss += (aw ? (double)aw[i] : 1.0) * (lse - sws / W);
    }
    return (float)(scale * loss / M);
}

/* With p the softmax over a != i and W_i = sum_j w_ij, row i's term has
 * d/ds_ij = a_i scale/M (p_ij - w_ij / W_i) (j != i), and s = z z^T / tau, so
 * dz = (G + G^T) z / tau for that matrix G. */
void contrastive_supcon_backward(float *dz, float *scratch, const float *prob, const float *w,
                                 const float *z, int M, int D, float tau, float scale,
                                 float dloss) {
    contrastive_supcon_anchor_backward(dz, scratch, prob, w, NULL, z, M, D, tau, scale, dloss);
}

void contrastive_supcon_anchor_backward(float *dz, float *scratch, const float *prob,
                                        const float *w, const float *aw, const float *z, int M,
                                        int D, float tau, float scale, float dloss) {
    float c0 = dloss * scale / (float)M;
    for (int i = 0; i < M; i++) {
        const float *p = prob + (size_t)i * M, *wi = w + (size_t)i * M;
        float *g = scratch + (size_t)i * M;
        double W = row_weight(w, i, M);
        float inv = W > 0.0 ? (float)(1.0 / W) : 0.0f, c = aw ? c0 * aw[i] : c0;
        for (int j = 0; j < M; j++)
            g[j] = W > 0.0 ? c * (p[j] - wi[j] * inv) : 0.0f;
        g[i] = 0.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, D, M, 1.0f / tau, scratch, M, z, D,
                1.0f, dz, D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, D, M, 1.0f / tau, scratch, M, z, D,
                1.0f, dz, D);
}

void contrastive_weights_labels(float *w, const int *labels, int M) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++)
            w[(size_t)i * M + j] = i != j && labels[i] == labels[j] ? 1.0f : 0.0f;
}

void contrastive_weights_views(float *w, int B, int V) {
    int M = B * V;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++)
            w[(size_t)i * M + j] = i != j && i % B == j % B ? 1.0f : 0.0f;
}

void contrastive_weights_soft(float *w, const float *y, int M, int K) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, M, K, 1.0f, y, K, y, K, 0.0f, w, M);
    for (int i = 0; i < M; i++)
        w[(size_t)i * M + i] = 0.0f;
}
