#include "probe.h"

#include "batchnorm.h"
#include "common.h"
#include "linear.h"
#include "rng.h"
#include "xent.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PROBE_BN_EPS 1e-6f /* main_linprobe.py: BatchNorm1d(affine=False, eps=1e-6) */
#define PROBE_BN_MOMENTUM 0.1f
#define PROBE_EVAL_ROWS 1024

typedef struct {
    int D, K, bs;
    float *w, *b, *gw, *gb, *mw, *mb;   /* Linear (K,D), (K); grads; momentum buffers */
    float *run_mean, *run_var;          /* BN running statistics (D) */
    float *xb, *xn, *mean, *rstd;       /* batch rows (bs,D), normalised, BN stats (D) */
    float *logits, *prob, *target, *dl; /* (bs, K) */
    uint32_t *order;
} probe_t;

static void probe_free(probe_t *p) {
    float *all[] = {p->w,  p->b,  p->gw,   p->gb,   p->mw,     p->mb,   p->run_mean, p->run_var,
                    p->xb, p->xn, p->mean, p->rstd, p->logits, p->prob, p->target,   p->dl};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        mimic_free(all[i]);
    free(p->order);
}

static int probe_alloc(probe_t *p, int D, int K, int bs, int ntrain) {
    memset(p, 0, sizeof *p);
    p->D = D;
    p->K = K;
    p->bs = bs;
    int rows = bs > PROBE_EVAL_ROWS ? bs : PROBE_EVAL_ROWS;
    size_t nD = (size_t)D, nK = (size_t)K, nR = (size_t)rows;
    struct {
        float **dst;
        size_t n;
    } want[] = {
        {&p->w, nK * nD},      {&p->b, nK},         {&p->gw, nK * nD},     {&p->gb, nK},
        {&p->mw, nK * nD},     {&p->mb, nK},        {&p->run_mean, nD},    {&p->run_var, nD},
        {&p->xb, nR * nD},     {&p->xn, nR * nD},   {&p->mean, nD},        {&p->rstd, nD},
        {&p->logits, nR * nK}, {&p->prob, nR * nK}, {&p->target, nR * nK}, {&p->dl, nR * nK}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!(*want[i].dst = mimic_alloc(want[i].n * sizeof(float)))) return MIMIC_ENOMEM;
    if (!(p->order = malloc((size_t)ntrain * sizeof *p->order)))
        return mimic_err(MIMIC_ENOMEM, "probe: out of memory for %d indices", ntrain);
    return 0;
}

/* Fraction of rows of x (n, D) whose eval-mode prediction equals y. */
static double accuracy(probe_t *p, const float *x, const int *y, int n) {
    int D = p->D, K = p->K;
    long right = 0;
    for (int i0 = 0; i0 < n; i0 += PROBE_EVAL_ROWS) {
        int m = n - i0 < PROBE_EVAL_ROWS ? n - i0 : PROBE_EVAL_ROWS;
        batchnorm_forward_eval(p->xn, x + (size_t)i0 * D, p->run_mean, p->run_var, NULL, NULL, m, D,
                               PROBE_BN_EPS);
        linear_forward(p->logits, p->xn, p->w, p->b, m, D, K);
        for (int i = 0; i < m; i++) {
            const float *l = p->logits + (size_t)i * K;
            int best = 0;
            for (int k = 1; k < K; k++)
                if (l[k] > l[best]) best = k;
            right += best == y[i0 + i];
        }
    }
    return n > 0 ? (double)right / n : 0.0;
}

/* torch.optim.SGD: g += wd * w; buf = momentum * buf + g; w -= lr * buf. */
static void sgd(float *w, float *buf, const float *g, size_t n, float lr, float mom, float wd) {
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] + wd * w[i];
        buf[i] = mom * buf[i] + gi;
        w[i] -= lr * buf[i];
    }
}

int probe_run(probe_result_t *res, const probe_cfg_t *cfg, const float *train, const int *ytrain,
              int ntrain, const float *test, const int *ytest, int ntest, int D, int K) {
    memset(res, 0, sizeof *res);
    if (D <= 0 || K < 2)
        return mimic_err(MIMIC_EINVAL, "probe: need features (D %d) and >= 2 classes (K %d)", D, K);
    if (cfg->batch < 2 || cfg->batch > ntrain)
        return mimic_err(MIMIC_EINVAL, "probe: batch %d must be in [2, %d training samples]",
                         cfg->batch, ntrain);
    if (cfg->epochs < 1 || !(cfg->lr > 0))
        return mimic_err(MIMIC_EINVAL, "probe: need epochs >= 1 and lr > 0 (got %d, %g)",
                         cfg->epochs, cfg->lr);
    for (int i = 0; i < ntrain; i++)
        if (ytrain[i] < 0 || ytrain[i] >= K)
            return mimic_err(MIMIC_EINVAL, "probe: training label %d of sample %d not in [0,%d)",
                             ytrain[i], i, K);
    probe_t p;
    int rc = probe_alloc(&p, D, K, cfg->batch, ntrain);
    if (rc) goto out;
    rng_t r;
    rng_seed(&r, cfg->seed);
    /* main_linprobe.py: trunc_normal_(head.weight, std=0.01), zero bias; BN starts at
     * mean 0, var 1 */
    for (size_t i = 0; i < (size_t)K * D; i++)
        p.w[i] = 0.01f * rng_normal(&r);
    for (int d = 0; d < D; d++)
        p.run_var[d] = 1.0f;
    for (int i = 0; i < ntrain; i++)
        p.order[i] = (uint32_t)i;
    int bs = cfg->batch, steps_per_epoch = ntrain / bs; /* drop_last */
    long total = (long)steps_per_epoch * cfg->epochs, step = 0;
    for (int ep = 0; ep < cfg->epochs; ep++) {
        rng_shuffle_u32(&r, p.order, (uint64_t)ntrain);
        double loss_sum = 0.0;
        for (int s = 0; s < steps_per_epoch; s++, step++) {
            mimic_zero(p.target, (size_t)bs * K);
            for (int i = 0; i < bs; i++) {
                uint32_t j = p.order[(size_t)s * bs + i];
                memcpy(p.xb + (size_t)i * D, train + (size_t)j * D, (size_t)D * sizeof(float));
                p.target[(size_t)i * K + ytrain[j]] = 1.0f;
            }
            batchnorm_forward(p.xn, p.mean, p.rstd, p.xb, NULL, NULL, bs, D, PROBE_BN_EPS);
            batchnorm_update_running(p.run_mean, p.run_var, p.xb, bs, D, PROBE_BN_MOMENTUM);
            linear_forward(p.logits, p.xn, p.w, p.b, bs, D, K);
            loss_sum += xent_soft_forward(p.prob, p.logits, p.target, bs, K);
            mimic_zero(p.dl, (size_t)bs * K);
            xent_soft_backward(p.dl, p.prob, p.target, bs, K, 1.0f);
            mimic_zero(p.gw, (size_t)K * D);
            mimic_zero(p.gb, (size_t)K);
            linear_backward(NULL, p.gw, p.gb, p.dl, p.xn, p.w, bs, D, K);
            float lr = (float)(cfg->lr * 0.5 *
                               (1.0 + cos(3.14159265358979323846 * (double)step / (double)total)));
            sgd(p.w, p.mw, p.gw, (size_t)K * D, lr, cfg->momentum, cfg->weight_decay);
            sgd(p.b, p.mb, p.gb, (size_t)K, lr, cfg->momentum, 0.0f); /* no decay on a bias */
        }
        res->last_loss = loss_sum / steps_per_epoch;
    }
    if (!isfinite(res->last_loss)) {
        rc = mimic_err(MIMIC_EINVAL, "probe: training loss is %g (lr %g too large?)",
                       res->last_loss, cfg->lr);
        goto out;
    }
    res->train_top1 = accuracy(&p, train, ytrain, ntrain);
    res->test_top1 = accuracy(&p, test, ytest, ntest);
out:
    probe_free(&p);
    return rc;
}
