/* knn — k-nearest-neighbour evaluation of frozen features (the protocol of DINO's
 * eval_knn.py and of instance-discrimination papers): cosine similarity of L2-normalised
 * features, top-1 accuracy by a (weighted) vote of the k nearest training samples, and
 * recall@k (any of the k nearest has the right label).
 *
 * Nothing is copied or normalised in place: similarities are GEMM blocks of test rows
 * against all training rows, scaled by the inverse norms. Neighbours are ranked by
 * similarity, equal similarities by the lower training index. Votes: temp > 0 weighs a
 * neighbour by exp(sim / temp) (DINO, temp 0.07), temp == 0 counts each once (majority);
 * a tie between classes goes to the class of the nearest neighbour among them. */
#ifndef MIMIC_KNN_H
#define MIMIC_KNN_H

#define KNN_MAX_K 1024

typedef struct {
    int k;
    double top1;   /* fraction of test rows whose vote is their label */
    double recall; /* fraction of test rows with their label among the k nearest */
} knn_result_t;

/* res[i] for k = ks[i], i < nk (1 <= k <= min(ntrain, KNN_MAX_K)). train (ntrain, D) with
 * labels in [0, K); test (ntest, D), ytest. A zero feature row has similarity 0 to
 * everything. Returns 0, MIMIC_EINVAL (named) or MIMIC_ENOMEM. */
int knn_run(knn_result_t *res, const int *ks, int nk, float temp, const float *train,
            const int *ytrain, int ntrain, const float *test, const int *ytest, int ntest, int D,
            int K);

#endif
