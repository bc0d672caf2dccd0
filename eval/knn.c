#include "knn.h"

#include "common.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define KNN_BLOCK 256 /* test rows per similarity GEMM: 256 x 60000 floats = 61 MB */

static void inv_norms(float *inv, const float *x, int n, int D) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        double s = 0.0;
        const float *r = x + (size_t)i * D;
        for (int d = 0; d < D; d++)
            s += (double)r[d] * r[d];
        inv[i] = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
    }
}

/* The kmax most similar rows of sim (n), most similar first; ties keep the lower index
 * first (a later equal value never displaces an earlier one). Returns how many. */
static int top_k(int *idx, float *val, const float *sim, const float *inv, int n, int kmax) {
    int m = 0;
    for (int j = 0; j < n; j++) {
        float s = sim[j] * inv[j];
        if (m == kmax && !(s > val[m - 1])) continue;
        int pos = m < kmax ? m++ : m - 1;
        while (pos > 0 && s > val[pos - 1]) {
            val[pos] = val[pos - 1];
            idx[pos] = idx[pos - 1];
            pos--;
        }
        val[pos] = s;
        idx[pos] = j;
    }
    return m;
}

/* The vote of the first k neighbours; ties go to the class of the nearest among them. */
static int vote(const int *nb, const float *sim, int k, const int *ytrain, float temp,
                double *votes, int K) {
    memset(votes, 0, (size_t)K * sizeof *votes);
    double best = -1.0;
    for (int i = 0; i < k; i++) {
        double w = temp > 0 ? exp((double)sim[i] / temp) : 1.0;
        double v = votes[ytrain[nb[i]]] += w;
        if (v > best) best = v;
    }
    for (int i = 0; i < k; i++)
        if (votes[ytrain[nb[i]]] == best) return ytrain[nb[i]];
    return -1;
}

int knn_run(knn_result_t *res, const int *ks, int nk, float temp, const float *train,
            const int *ytrain, int ntrain, const float *test, const int *ytest, int ntest, int D,
            int K) {
    int kmax = 0;
    for (int i = 0; i < nk; i++) {
        if (ks[i] < 1 || ks[i] > ntrain || ks[i] > KNN_MAX_K)
            return mimic_err(MIMIC_EINVAL, "knn: k = %d not in [1, %d]", ks[i],
                             ntrain < KNN_MAX_K ? ntrain : KNN_MAX_K);
        if (ks[i] > kmax) kmax = ks[i];
    }
    if (D <= 0 || K < 1 || !(temp >= 0))
        return mimic_err(MIMIC_EINVAL, "knn: bad dimensions (D %d, K %d) or temp %g", D, K, temp);
    for (int i = 0; i < ntrain; i++)
        if (ytrain[i] < 0 || ytrain[i] >= K)
            return mimic_err(MIMIC_EINVAL, "knn: training label %d of sample %d not in [0,%d)",
                             ytrain[i], i, K);
    int nb = ntest < KNN_BLOCK ? ntest : KNN_BLOCK;
    float *sims = mimic_alloc((size_t)(nb > 0 ? nb : 1) * ntrain * sizeof(float));
    float *inv_tr = mimic_alloc((size_t)ntrain * sizeof(float));
    float *inv_te = mimic_alloc((size_t)(ntest > 0 ? ntest : 1) * sizeof(float));
    long *right = calloc((size_t)nk * 2, sizeof(long)); /* top-1 and recall counts per k */
    int rc = MIMIC_ENOMEM;
    if (!sims || !inv_tr || !inv_te || !right) goto out;
    inv_norms(inv_tr, train, ntrain, D);
    inv_norms(inv_te, test, ntest, D);
    for (int i0 = 0; i0 < ntest; i0 += KNN_BLOCK) {
        int m = ntest - i0 < KNN_BLOCK ? ntest - i0 : KNN_BLOCK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, ntrain, D, 1.0f,
                    test + (size_t)i0 * D, D, train, D, 0.0f, sims, ntrain);
        int fail = 0;
#pragma omp parallel reduction(+ : fail)
        {
            int *idx = malloc((size_t)kmax * sizeof(int));
            float *val = malloc((size_t)kmax * sizeof(float));
            double *votes = malloc((size_t)K * sizeof(double));
            long *mine = calloc((size_t)nk * 2, sizeof(long));
            if (!idx || !val || !votes || !mine) fail++;
#pragma omp for schedule(static)
            for (int i = 0; i < m; i++) {
                if (fail) continue;
                int got = top_k(idx, val, sims + (size_t)i * ntrain, inv_tr, ntrain, kmax);
                int y = ytest[i0 + i], first = got; /* rank of the first right neighbour */
                /* the test row's norm scales all its similarities alike: it changes no
                 * ranking, only the weights of a temperature vote */
                for (int j = 0; j < got; j++) {
                    val[j] *= inv_te[i0 + i];
                    if (first == got && ytrain[idx[j]] == y) first = j;
                }
                for (int q = 0; q < nk; q++) {
                    int k = ks[q] < got ? ks[q] : got;
                    mine[2 * q] += vote(idx, val, k, ytrain, temp, votes, K) == y;
                    mine[2 * q + 1] += first < k;
                }
            }
#pragma omp critical
            for (int q = 0; q < 2 * nk && mine; q++)
                right[q] += mine[q];
            free(idx);
            free(val);
            free(votes);
            free(mine);
        }
        if (fail) goto out;
    }
    for (int q = 0; q < nk; q++) {
        res[q].k = ks[q];
        res[q].top1 = ntest > 0 ? (double)right[2 * q] / ntest : 0.0;
        res[q].recall = ntest > 0 ? (double)right[2 * q + 1] / ntest : 0.0;
    }
    rc = 0;
out:
    if (rc) mimic_err(rc, "knn: out of memory for %d x %d similarities", nb, ntrain);
    mimic_free(sims);
    mimic_free(inv_tr);
    mimic_free(inv_te);
    free(right);
    return rc;
}
