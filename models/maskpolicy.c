#include "maskpolicy.h"

#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int maskpolicy_new(maskpolicy_t **out, const mimic_cfg_t *cfg, int L) {
    *out = NULL;
    if (L < 1) return mimic_err(MIMIC_EINVAL, "maskpolicy: %d patches", L);
    if (!(cfg->mask.temperature > 0.0f) || !isfinite(cfg->mask.temperature))
        return mimic_err(MIMIC_EINVAL, "config mae.mask_temp: %g must be positive",
                         (double)cfg->mask.temperature);
    if (!(cfg->mask.mix >= 0.0f && cfg->mask.mix <= 1.0f))
        return mimic_err(MIMIC_EINVAL, "config mae.mask_mix: %g is not in [0, 1]",
                         (double)cfg->mask.mix);
    if (!(cfg->mask.decay >= 0.0f && cfg->mask.decay < 1.0f))
        return mimic_err(MIMIC_EINVAL, "config mae.mask_decay: %g is not in [0, 1)",
                         (double)cfg->mask.decay);
    if (cfg->mask.policy != MASK_POLICY_RANDOM && cfg->mask.policy != MASK_POLICY_ADVERSARIAL)
        return mimic_err(MIMIC_EINVAL, "config mae.mask_policy: unknown policy %d",
                         (int)cfg->mask.policy);
    maskpolicy_t *mp = calloc(1, sizeof *mp);
    if (!mp) return mimic_err(MIMIC_ENOMEM, "out of memory for the masking policy");
    mp->policy = cfg->mask.policy;
    mp->L = L;
    mp->temperature = cfg->mask.temperature;
    mp->mix = cfg->mask.mix;
    mp->decay = cfg->mask.decay;
    mp->score = calloc((size_t)L, sizeof(float));
    mp->logp = calloc((size_t)L, sizeof(float));
    mp->sum = calloc((size_t)L, sizeof(double));
    mp->count = calloc((size_t)L, sizeof(int));
    if (!mp->score || !mp->logp || !mp->sum || !mp->count) {
        maskpolicy_destroy(&mp);
        return mimic_err(MIMIC_ENOMEM, "out of memory for the masking policy");
    }
    maskpolicy_distribution(mp);
    *out = mp;
    return 0;
}

void maskpolicy_destroy(maskpolicy_t **mpp) {
    if (!mpp || !*mpp) return;
    maskpolicy_t *mp = *mpp;
    free(mp->score);
    free(mp->logp);
    free(mp->sum);
    free(mp->count);
    free(mp);
    *mpp = NULL;
}

void maskpolicy_distribution(maskpolicy_t *mp) {
    const int L = mp->L;
    double mean = 0.0;
    int seen = 0;
    for (int l = 0; l < L; l++)
        if (mp->score[l] > 0.0f) {
            mean += mp->score[l];
            seen++;
        }
    if (!seen) { /* nothing known yet: uniform */
        for (int l = 0; l < L; l++)
            mp->logp[l] = -logf((float)L);
        return;
    }
    mean /= seen;
    /* softmax of r / T with r = score / mean (unseen: r = 1), in double, max-shifted */
    double mx = -INFINITY, z = 0.0;
    for (int l = 0; l < L; l++) {
        double r = mp->score[l] > 0.0f ? mp->score[l] / mean : 1.0;
        mp->sum[l] = r / mp->temperature; /* the scratch holds the logits here */
        if (mp->sum[l] > mx) mx = mp->sum[l];
    }
    for (int l = 0; l < L; l++)
        z += exp(mp->sum[l] - mx);
    for (int l = 0; l < L; l++) {
        double p = (1.0 - mp->mix) * exp(mp->sum[l] - mx) / z + mp->mix / L;
        mp->logp[l] = (float)log(p);
        mp->sum[l] = 0.0;
    }
}

void maskpolicy_keys(maskpolicy_t *mp, float *keys, const float *noise, int B) {
    const int L = mp->L;
    if (mp->policy == MASK_POLICY_RANDOM) {
        memcpy(keys, noise, (size_t)B * L * sizeof(float));
        return;
    }
    maskpolicy_distribution(mp); /* O(L): the scores may have been loaded since */
    for (int b = 0; b < B; b++)
        for (int l = 0; l < L; l++) {
            /* Gumbel(0,1) = -log(-log u); u = 0 gives -inf (kept first), never NaN */
            double u = noise[(size_t)b * L + l];
            keys[(size_t)b * L + l] = (float)(mp->logp[l] - log(-log(u)));
        }
}

void maskpolicy_update(maskpolicy_t *mp, const float *value, const float *counted, int B) {
    const int L = mp->L;
    for (int l = 0; l < L; l++) {
        mp->sum[l] = 0.0;
        mp->count[l] = 0;
    }
    for (int b = 0; b < B; b++)
        for (int l = 0; l < L; l++) {
            float e = value[(size_t)b * L + l];
            if (counted[(size_t)b * L + l] == 0.0f || !isfinite(e)) continue;
            mp->sum[l] += e;
            mp->count[l]++;
        }
    for (int l = 0; l < L; l++) {
        if (!mp->count[l]) continue;
        /* a mean error of exactly 0 would read as "unseen": keep it a tiny positive */
        float m = fmaxf((float)(mp->sum[l] / mp->count[l]), 1e-12f);
        mp->score[l] = mp->score[l] > 0.0f ? mp->decay * mp->score[l] + (1.0f - mp->decay) * m : m;
    }
    for (int l = 0; l < L; l++)
        mp->sum[l] = 0.0;
    mp->updates++;
    maskpolicy_distribution(mp);
}

void maskpolicy_argsort(int *ids, const float *keys, int B, int L) {
    for (int b = 0; b < B; b++) {
        int *idx = ids + (size_t)b * L;
        const float *v = keys + (size_t)b * L;
        for (int i = 0; i < L; i++) { /* insertion sort: stable, and L is small */
            int j = i;
            while (j > 0 && v[idx[j - 1]] > v[i]) {
                idx[j] = idx[j - 1];
                j--;
            }
            idx[j] = i;
        }
    }
}

void maskpolicy_removal_gain(float *value, float *counted, const float *x0, const float *dx0,
                             const int *ids, int B, int K, int L, int D) {
    const size_t T = 1 + (size_t)K;
    memset(value, 0, (size_t)B * L * sizeof(float));
    memset(counted, 0, (size_t)B * L * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int j = 0; j < K; j++) {
            /* removing token j takes its row x out of the stack input: to first order the
             * loss moves by -g . x */
            const float *x = x0 + ((size_t)b * T + 1 + j) * D,
                        *g = dx0 + ((size_t)b * T + 1 + j) * D;
            double gain = 0.0;
            for (int d = 0; d < D; d++)
                gain -= (double)g[d] * x[d];
            int l = ids[(size_t)b * L + j];
            value[(size_t)b * L + l] = gain > 0.0 ? (float)gain : 0.0f;
            counted[(size_t)b * L + l] = 1.0f;
        }
}
