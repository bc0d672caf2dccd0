/* probe — the linear probe of a frozen encoder: BatchNorm1d(affine=False) + Linear on
 * cached features, trained with softmax cross-entropy (MAE's linear-probing recipe,
 * facebookresearch/mae main_linprobe.py, with SGD + momentum in place of LARS).
 *
 * Features are computed once (eval.c) and passed in as (N, D) rows; the probe owns
 * nothing after probe_run returns. Training: epochs over a per-epoch shuffle (seeded),
 * full batches only (drop_last, as the reference loader; BN needs >= 2 rows), BN in
 * training mode with running statistics (momentum 0.1), lr on a half-cosine to 0 per
 * step. Evaluation: BN with the running statistics, argmax of the logits. */
#ifndef MIMIC_PROBE_H
#define MIMIC_PROBE_H

#include <stdint.h>

typedef struct {
    int epochs, batch;
    float lr, momentum, weight_decay; /* torch.optim.SGD semantics */
    uint64_t seed;                    /* weight init and shuffles */
} probe_cfg_t;

typedef struct {
    double train_top1, test_top1; /* fractions in [0,1], eval-mode BN */
    double last_loss;             /* mean training loss of the last epoch */
} probe_result_t;

/* train (ntrain, D) with labels ytrain in [0, K); test (ntest, D), ytest. Returns 0, or
 * MIMIC_EINVAL for a bad argument (named), MIMIC_ENOMEM. */
int probe_run(probe_result_t *res, const probe_cfg_t *cfg, const float *train, const int *ytrain,
              int ntrain, const float *test, const int *ytest, int ntest, int D, int K);

#endif
