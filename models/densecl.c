#include "densecl.h"

#include "contrastive.h"
#include "l2norm.h"

#include <cblas.h>
#include <stddef.h>
#include <string.h>

void densecl_match(int *idx, float *scratch, const float *fq, int Sq, const float *fk, int Sk,
                   int N, int D) {
    float *kn = scratch, *sim = scratch + (size_t)Sk * D, norm_unused[1];
    for (int n = 0; n < N; n++) {
        const float *q = fq + (size_t)n * Sq * D;
        /* only the keys need normalising: a query row's norm scales its whole row of
         * similarities and cannot move the argmax over t */
        for (int t = 0; t < Sk; t++)
            l2norm_forward(kn + (size_t)t * D, norm_unused, fk + ((size_t)n * Sk + t) * D, 1, D);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Sq, Sk, D, 1.0f, q, D, kn, D, 0.0f,
                    sim, Sk);
        for (int s = 0; s < Sq; s++) {
            const float *row = sim + (size_t)s * Sk;
            int best = 0;
            for (int t = 1; t < Sk; t++)
                if (row[t] > row[best]) best = t;
            idx[(size_t)n * Sq + s] = best;
        }
    }
}

void densecl_gather(float *kpos, const float *kd, const int *idx, int N, int Sq, int Sk, int Dd) {
    for (int n = 0; n < N; n++)
        for (int s = 0; s < Sq; s++)
            memcpy(kpos + ((size_t)n * Sq + s) * Dd,
                   kd + ((size_t)n * Sk + idx[(size_t)n * Sq + s]) * Dd,
                   (size_t)Dd * sizeof(float));
}

void densecl_pool(float *out, float *norm, const float *zk, int N, int S, int Dd) {
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * Dd;
        memset(o, 0, (size_t)Dd * sizeof(float));
        for (int s = 0; s < S; s++) {
            const float *z = zk + ((size_t)n * S + s) * Dd;
            for (int d = 0; d < Dd; d++)
                o[d] += z[d];
        }
        for (int d = 0; d < Dd; d++)
            o[d] /= (float)S;
    }
    l2norm_forward(out, norm, out, N, Dd);
}

float densecl_dense_forward(float *prob, float *kpos, int *idx, float *scratch, const float *qd,
                            const float *kd, const float *fq, const float *fk, const float *queue,
                            int ldq, int K, int N, int Sq, int Sk, int D, int Dd, float T) {
    densecl_match(idx, scratch, fq, Sq, fk, Sk, N, D);
    densecl_gather(kpos, kd, idx, N, Sq, Sk, Dd);
    return contrastive_queue_forward_ld(prob, qd, kpos, queue, ldq, N * Sq, K, Dd, T);
}

void densecl_dense_backward(float *dqd, const float *prob, const float *kpos, const float *queue,
                            int ldq, int K, int N, int Sq, int Dd, float T, float dloss) {
    contrastive_queue_backward_ld(dqd, prob, kpos, queue, ldq, N * Sq, K, Dd, T, dloss);
}
