/* test_densecl — DenseCL's dense loss (models/densecl.h): the argmax-cosine match on a
 * case built by hand (a shuffled, rescaled copy, where a dot product would pick wrong
 * tokens), the pooled key against its formula, the dense InfoNCE's gradient by finite
 * differences with the queue read in place from a [global | dense] ring and fewer query
 * than key tokens (a masked online view), and the whole
 * DenseCL loss (global + dense, lambda) against PyTorch on the committed golden file
 * tests/golden/densecl_expect.safetensors (gen_densecl.py; <= 1e-4). */
#include "common.h"
#include "contrastive.h"
#include "densecl.h"
#include "l2norm.h"
#include "safetensors.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PARITY_TOL 1e-4

/* Key token t is c_t * (query token perm[t]) + a little noise, with scales c_t up to 20:
 * the cosine match must return perm^-1, whatever the scales. */
static void test_match(void) {
    enum { N = 2, S = 7, D = 5 };
    unsigned long long seed = 3;
    float *fq = testutil_rnd((size_t)N * S * D, -1.0f, 1.0f, &seed);
    float *fk = testutil_zeros((size_t)N * S * D);
    float *scratch = testutil_zeros(DENSECL_MATCH_SCRATCH(S, S, D));
    int perm[N][S], idx[N * S], dot_wrong = 0;
    for (int n = 0; n < N; n++)
        for (int t = 0; t < S; t++)
            perm[n][t] = (t * 3 + n) % S; /* 3 is prime to 7: a permutation */
    for (int n = 0; n < N; n++)
        for (int t = 0; t < S; t++) {
            float c = t == 0 ? 20.0f : 0.3f + 0.2f * (float)t;
            for (int d = 0; d < D; d++)
                fk[((size_t)n * S + t) * D + d] = c * fq[((size_t)n * S + perm[n][t]) * D + d];
        }
    densecl_match(idx, scratch, fq, S, fk, S, N, D);
    for (int n = 0; n < N; n++)
        for (int s = 0; s < S; s++) {
            int want = -1;
            for (int t = 0; t < S; t++)
                if (perm[n][t] == s) want = t;
            T_CHECK(idx[n * S + s] == want);
            /* the raw dot product would mostly pick the scaled-up token 0 instead */
            int best = 0;
            double bv = -INFINITY;
            for (int t = 0; t < S; t++) {
                double v =
                    testutil_dot(fq + ((size_t)n * S + s) * D, fk + ((size_t)n * S + t) * D, D);
                if (v > bv) bv = v, best = t;
            }
            dot_wrong += best != want;
        }
    T_CHECK(dot_wrong > 0); /* the case tells cosine from dot product apart */
    /* gather copies the matched key rows */
    float *kd = testutil_rnd((size_t)N * S * 3, -1.0f, 1.0f, &seed),
          *kpos = testutil_zeros((size_t)N * S * 3);
    densecl_gather(kpos, kd, idx, N, S, S, 3);
    for (int n = 0; n < N; n++)
        for (int s = 0; s < S; s++)
            T_CHECK(memcmp(kpos + ((size_t)n * S + s) * 3,
                           kd + ((size_t)n * S + idx[n * S + s]) * 3, 3 * sizeof(float)) == 0);
    testutil_release_all();
}

static void test_pool(void) {
    enum { N = 3, S = 4, Dd = 5 };
    unsigned long long seed = 8;
    float *zk = testutil_rnd((size_t)N * S * Dd, -1.0f, 2.0f, &seed);
    float out[N * Dd], norm[N];
    densecl_pool(out, norm, zk, N, S, Dd);
    for (int n = 0; n < N; n++) {
        double m[Dd] = {0}, n2 = 0;
        for (int d = 0; d < Dd; d++) {
            for (int s = 0; s < S; s++)
                m[d] += zk[((size_t)n * S + s) * Dd + d];
            m[d] /= S;
            n2 += m[d] * m[d];
        }
        T_CHECK(fabs(norm[n] - sqrt(n2)) < 1e-5 * sqrt(n2));
        for (int d = 0; d < Dd; d++)
            T_CHECK(fabs(out[n * Dd + d] - m[d] / sqrt(n2)) < 1e-6);
    }
    testutil_release_all();
}

typedef struct {
    float *prob, *kpos, *scratch, *qd, *kd, *fq, *fk, *ring;
    int *idx;
    int N, Sq, Sk, D, Dd, K, ldq;
    float T;
} dense_ctx;

static double dense_loss(void *p) {
    dense_ctx *c = p;
    return densecl_dense_forward(c->prob, c->kpos, c->idx, c->scratch, c->qd, c->kd, c->fq, c->fk,
                                 c->ring + (c->ldq - c->Dd), c->ldq, c->K, c->N, c->Sq, c->Sk, c->D,
                                 c->Dd, c->T);
}

/* The dense InfoNCE by finite differences on qd, the queue being the dense half of a
 * ring of [global (4) | dense] rows, with fewer query tokens (4, a masked online view)
 * than key tokens (6); and its value against a direct double sum. */
static void test_dense_fd(void) {
    unsigned long long seed = 21;
    dense_ctx c = {.N = 2, .Sq = 4, .Sk = 6, .D = 6, .Dd = 4, .K = 7, .T = 0.3f};
    c.ldq = 4 + c.Dd;
    size_t NQ = (size_t)c.N * c.Sq, NK = (size_t)c.N * c.Sk;
    c.prob = testutil_zeros(NQ * (1 + c.K));
    c.kpos = testutil_zeros(NQ * c.Dd);
    c.scratch = testutil_zeros(DENSECL_MATCH_SCRATCH(c.Sq, c.Sk, c.D));
    c.qd = testutil_rnd(NQ * c.Dd, -0.7f, 0.7f, &seed);
    c.kd = testutil_rnd(NK * c.Dd, -0.7f, 0.7f, &seed);
    c.fq = testutil_rnd(NQ * c.D, -1.0f, 1.0f, &seed);
    c.fk = testutil_rnd(NK * c.D, -1.0f, 1.0f, &seed);
    c.ring = testutil_rnd((size_t)c.K * c.ldq, -0.6f, 0.6f, &seed);
    c.idx = calloc(NQ, sizeof(int));
    double loss = dense_loss(&c);
    /* the formula in double, with matches found here by brute force on the cosines */
    double want = 0.0;
    int beyond = 0;
    for (size_t r = 0; r < NQ; r++) {
        size_t n = r / (size_t)c.Sq;
        int best = 0;
        double bv = -INFINITY;
        for (int t = 0; t < c.Sk; t++) {
            const float *fk = c.fk + (n * c.Sk + t) * c.D;
            double v = testutil_dot(c.fq + r * c.D, fk, c.D) / sqrt(testutil_dot(fk, fk, c.D));
            if (v > bv) bv = v, best = t;
        }
        T_CHECK(c.idx[r] == best);
        beyond += best >= c.Sq;
        const float *q = c.qd + r * c.Dd, *kp = c.kd + (n * c.Sk + (size_t)best) * c.Dd;
        double pos = testutil_dot(q, kp, (size_t)c.Dd) / c.T, z = exp(pos);
        for (int j = 0; j < c.K; j++)
            z += exp(testutil_dot(q, c.ring + (size_t)j * c.ldq + 4, (size_t)c.Dd) / c.T);
        want += log(z) - pos;
    }
    want /= (double)NQ;
    T_CHECK(beyond > 0); /* some matches are key tokens past the query count */
    T_CHECK(fabs(loss - want) < 1e-5 * fabs(want));
    float *g = testutil_zeros(NQ * c.Dd);
    const float dloss = 0.7f;
    densecl_dense_backward(g, c.prob, c.kpos, c.ring + 4, c.ldq, c.K, c.N, c.Sq, c.Dd, c.T, dloss);
    for (size_t i = 0; i < NQ * c.Dd; i++)
        g[i] /= dloss; /* the check compares with d loss / d qd */
    testutil_fd_check("densecl dense d/dqd", dense_loss, &c, c.qd, g, NQ * c.Dd, 32, 1e-3, 1e-2,
                      1e-4);
    /* the global half of the ring never enters the dense loss */
    for (int j = 0; j < c.K; j++)
        c.ring[(size_t)j * c.ldq] += 5.0f;
    T_CHECK(dense_loss(&c) == loss);
    free(c.idx);
    testutil_release_all();
}

/* ---------------------------------------------------------------- PyTorch parity */

static st_file_t *golden;

static int meta_i(const char *k) {
    const char *v = st_meta(golden, k);
    if (!v) {
        fprintf(stderr, "golden file lacks metadata '%s'\n", k);
        exit(2);
    }
    return atoi(v);
}
static float meta_f(const char *k) {
    const char *v = st_meta(golden, k);
    if (!v) {
        fprintf(stderr, "golden file lacks metadata '%s'\n", k);
        exit(2);
    }
    return (float)atof(v);
}

static const float *gold(const char *name, size_t n) {
    const st_tensor_t *t = st_find(golden, name);
    if (!t || t->dtype != ST_F32 || (size_t)t->numel != n) {
        fprintf(stderr, "golden tensor '%s' missing or not F32 of %zu values\n", name, n);
        exit(2);
    }
    return t->data;
}

/* What stages/densecl.c computes from the heads' outputs on, step by step. */
static void test_parity(void) {
    const char *path = testutil_src_path("tests/golden/densecl_expect.safetensors");
    if (st_open(&golden, path)) {
        fprintf(stderr, "cannot open %s\n", path);
        T_CHECK(0);
        return;
    }
    T_CHECK(strcmp(st_meta(golden, "format"), "mimicps-golden-densecl") == 0 &&
            strcmp(st_meta(golden, "version"), "1") == 0);
    const int N = meta_i("batch"), S = meta_i("tokens"), D = meta_i("backbone_dim"),
              Dg = meta_i("global_dim"), Dd = meta_i("dense_dim"), K = meta_i("queue_len");
    const float T = meta_f("T"), lam = meta_f("lambda");
    const int ldq = Dg + Dd;
    const size_t NS = (size_t)N * S;
    const float *ring = gold("queue", (size_t)K * ldq);
    float *q = testutil_zeros((size_t)N * Dg), *qn = testutil_zeros(N),
          *k = testutil_zeros((size_t)N * Dg), *kn = testutil_zeros(N),
          *qd = testutil_zeros(NS * Dd), *qdn = testutil_zeros(NS), *kd = testutil_zeros(NS * Dd),
          *kdn = testutil_zeros(NS), *k2 = testutil_zeros((size_t)N * Dd), *k2n = testutil_zeros(N),
          *prob = testutil_zeros((size_t)N * (1 + K)), *probd = testutil_zeros(NS * (1 + K)),
          *kpos = testutil_zeros(NS * Dd),
          *scratch = testutil_zeros(DENSECL_MATCH_SCRATCH(S, S, D)),
          *dq = testutil_zeros((size_t)N * Dg), *dqraw = testutil_zeros((size_t)N * Dg),
          *dqd = testutil_zeros(NS * Dd), *dqdraw = testutil_zeros(NS * Dd);
    int *idx = calloc(NS, sizeof(int));
    l2norm_forward(q, qn, gold("q_raw", (size_t)N * Dg), N, Dg);
    l2norm_forward(k, kn, gold("k_raw", (size_t)N * Dg), N, Dg);
    l2norm_forward(qd, qdn, gold("q_grid_raw", NS * Dd), (int)NS, Dd);
    l2norm_forward(kd, kdn, gold("k_grid_raw", NS * Dd), (int)NS, Dd);
    densecl_pool(k2, k2n, gold("k_grid_raw", NS * Dd), N, S, Dd);
    testutil_close("densecl k2 (pooled dense key)", k2, gold("k2", (size_t)N * Dd), (size_t)N * Dd,
                   PARITY_TOL);
    float ls = contrastive_queue_forward_ld(prob, q, k, ring, ldq, N, K, Dg, T);
    float ld = densecl_dense_forward(probd, kpos, idx, scratch, qd, kd, gold("q_b", NS * D),
                                     gold("k_b", NS * D), ring + Dg, ldq, K, N, S, S, D, Dd, T);
    float loss = (1.0f - lam) * ls + lam * ld;
    const st_tensor_t *ti = st_find(golden, "idx");
    T_CHECK(ti && ti->dtype == ST_I64 && (size_t)ti->numel == NS);
    int same = 0;
    for (size_t i = 0; ti && i < NS; i++)
        same += idx[i] == (int)((const int64_t *)ti->data)[i];
    T_CHECK(same == (int)NS);
    printf("densecl matches: %d of %zu equal torch's argmax\n", same, NS);
    testutil_close("densecl loss_single", &ls, gold("loss_single", 1), 1, PARITY_TOL);
    testutil_close("densecl loss_dense", &ld, gold("loss_dense", 1), 1, PARITY_TOL);
    testutil_close("densecl loss", &loss, gold("loss", 1), 1, PARITY_TOL);
    contrastive_queue_backward_ld(dq, prob, k, ring, ldq, N, K, Dg, T, 1.0f - lam);
    l2norm_backward(dqraw, dq, q, qn, N, Dg);
    densecl_dense_backward(dqd, probd, kpos, ring + Dg, ldq, K, N, S, Dd, T, lam);
    l2norm_backward(dqdraw, dqd, qd, qdn, (int)NS, Dd);
    testutil_close("densecl grad.q_raw", dqraw, gold("grad.q_raw", (size_t)N * Dg), (size_t)N * Dg,
                   PARITY_TOL);
    testutil_close("densecl grad.q_grid_raw", dqdraw, gold("grad.q_grid_raw", NS * Dd), NS * Dd,
                   PARITY_TOL);
    free(idx);
    st_close(&golden);
    testutil_release_all();
}

int main(void) {
    test_match();
    test_pool();
    test_dense_fd();
    test_parity();
    return testutil_summary("test_densecl");
}
