// TIMEOUT: 120
/* test_maskpolicy — MAE's masking policies (models/maskpolicy.h, stages/mae.c): with the
 * scores concentrated on a few positions, adversarial masking removes those far more
 * often than the others (through MAE's own masking, fixed seed); Gumbel-top-k with one
 * removed patch removes each position with probability p (a binomial check per
 * position); uniform scores and the random policy give random masking's masks; the score
 * update; the MAE stage with each policy (random: the loss of mae_forward on the raw
 * noise, bit for bit; adversarial: the scores saved and restored with the checkpoint);
 * and bad keys refused, naming them. */
#include "checkpoint.h"
#include "common.h"
#include "config.h"
#include "mae.h"
#include "maskpolicy.h"
#include "rng.h"
#include "safetensors.h"
#include "stage.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void tiny_cfg(mimic_cfg_t *cfg, const char *ratio) {
    config_defaults(cfg);
    const char *set[] = {
        "model.img_size=16",       "model.in_chans=1",        "model.patch_size=4",
        "model.embed_dim=8",       "model.depth=1",           "model.num_heads=2",
        "model.mlp_ratio=2",       "mae.decoder_embed_dim=8", "mae.decoder_depth=1",
        "mae.decoder_num_heads=2", "train.stage=mae"};
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
        T_CHECK(config_override(cfg, set[i]) == 0);
    char r[64];
    snprintf(r, sizeof r, "mae.mask_ratio=%s", ratio);
    T_CHECK(config_override(cfg, r) == 0);
}

/* Removal frequency per position over `batches` batches of B samples of fresh noise,
 * masked by MAE itself (mae_forward on the policy's keys). */
static void removal_rates(double *rate, mae_t *m, mae_batch_t *b, maskpolicy_t *mp, int B,
                          int batches, uint64_t seed) {
    const int L = m->L;
    rng_t r;
    rng_seed(&r, seed);
    float *noise = malloc((size_t)B * L * sizeof(float)),
          *keys = malloc((size_t)B * L * sizeof(float));
    float *imgs = calloc((size_t)B * 16 * 16, sizeof(float));
    for (int l = 0; l < L; l++)
        rate[l] = 0.0;
    for (int it = 0; it < batches; it++) {
        for (int i = 0; i < B * L; i++)
            noise[i] = rng_uniform(&r);
        maskpolicy_keys(mp, keys, noise, B);
        mae_forward(m, b, imgs, keys);
        for (int s = 0; s < B; s++)
            for (int l = 0; l < L; l++)
                rate[l] += b->mask[(size_t)s * L + l];
    }
    for (int l = 0; l < L; l++)
        rate[l] /= (double)B * batches;
    free(noise);
    free(keys);
    free(imgs);
}

static void test_concentrated(void) {
    mimic_cfg_t cfg;
    tiny_cfg(&cfg, "0.25"); /* L = 16, 4 removed: room for a preference to show */
    T_CHECK(config_override(&cfg, "mae.mask_policy=adversarial") == 0);
    mae_t *m = NULL;
    mae_batch_t *b = NULL;
    maskpolicy_t *mp = NULL;
    const int B = 16, batches = 100;
    T_CHECK(mae_new(&m, &cfg.model) == 0 && mae_batch_alloc(&b, m, B) == 0 &&
            maskpolicy_new(&mp, &cfg, m->L) == 0);
    if (!mp) return;
    mae_init(m, 1);
    const int L = m->L, hot[3] = {2, 9, 13};
    T_CHECK(L == 16 && L - m->keep == 4);
    /* three positions are 4x as hard as the rest */
    for (int l = 0; l < L; l++)
        mp->score[l] = 0.5f;
    for (int h = 0; h < 3; h++)
        mp->score[hot[h]] = 2.0f;
    maskpolicy_distribution(mp);
    double rate[16], hot_rate = 0, cold_rate = 0, cold_max = 0;
    removal_rates(rate, m, b, mp, B, batches, 77);
    for (int l = 0; l < L; l++) {
        int is_hot = l == hot[0] || l == hot[1] || l == hot[2];
        if (is_hot) {
            hot_rate += rate[l] / 3;
        } else {
            cold_rate += rate[l] / (L - 3);
            cold_max = fmax(cold_max, rate[l]);
        }
    }
    printf("adversarial, 3 hot positions of 16, 4 removed, %d masks: hot %.3f, cold mean %.3f "
           "(max %.3f); random: 0.25 each\n",
           B * batches, hot_rate, cold_rate, cold_max);
    /* p = 0.5 softmax + 0.5/16: ~0.18 for a hot position, ~0.035 for a cold one; drawn
     * without replacement, 4 of 16: measured hot 0.63, cold 0.16 (random: 0.25 each;
     * s.e. of a rate ~0.012) */
    T_CHECK(hot_rate > 0.55 && cold_rate < 0.2 && hot_rate > 3 * cold_max);
    /* mix = 1 is random masking's distribution: every position near 0.25 (s.e. 0.011) */
    mp->mix = 1.0f;
    maskpolicy_distribution(mp);
    removal_rates(rate, m, b, mp, B, batches, 78);
    for (int l = 0; l < L; l++)
        T_CHECK(fabs(rate[l] - 0.25) < 0.05);
    /* uniform scores: the keys sort as the noise does, so the very masks of random masking */
    for (int l = 0; l < L; l++)
        mp->score[l] = 0.0f;
    mp->mix = 0.5f;
    maskpolicy_distribution(mp);
    rng_t r;
    rng_seed(&r, 5);
    float noise[8 * 16], keys[8 * 16], mask_keys[8 * 16], imgs[8 * 16 * 16] = {0};
    for (int i = 0; i < 8 * 16; i++)
        noise[i] = rng_uniform(&r);
    maskpolicy_keys(mp, keys, noise, 8);
    mae_batch_resize(b, 8);
    mae_forward(m, b, imgs, keys);
    memcpy(mask_keys, b->mask, sizeof mask_keys);
    mae_forward(m, b, imgs, noise);
    T_CHECK(memcmp(mask_keys, b->mask, sizeof mask_keys) == 0);
    maskpolicy_destroy(&mp);
    T_CHECK(mp == NULL);
    mae_batch_free(&b);
    mae_destroy(&m);
}

/* Gumbel-top-1: position l is the largest key with probability p_l; 20000 draws, each
 * position's count within 4.5 binomial standard deviations of 20000 p_l. */
static void test_gumbel_top1(void) {
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    T_CHECK(config_override(&cfg, "mae.mask_policy=adversarial") == 0 &&
            config_override(&cfg, "mae.mask_mix=0.2") == 0 &&
            config_override(&cfg, "mae.mask_temp=0.7") == 0);
    enum { L = 6, DRAWS = 20000 };
    maskpolicy_t *mp = NULL;
    T_CHECK(maskpolicy_new(&mp, &cfg, L) == 0);
    if (!mp) return;
    const float sc[L] = {1.0f, 0.2f, 0.5f, 2.0f, 1.0f, 0.0f}; /* the last one unseen */
    memcpy(mp->score, sc, sizeof sc);
    maskpolicy_distribution(mp);
    double psum = 0;
    for (int l = 0; l < L; l++)
        psum += exp(mp->logp[l]);
    T_CHECK(fabs(psum - 1) < 1e-5);
    /* position 3 is 4x as hard as the mean-ish: it has the largest p; unseen = mean */
    T_CHECK(mp->logp[3] > mp->logp[0] && mp->logp[0] > mp->logp[1]);
    int count[L] = {0};
    float noise[L], keys[L];
    rng_t r;
    rng_seed(&r, 99);
    for (int it = 0; it < DRAWS; it++) {
        for (int l = 0; l < L; l++)
            noise[l] = rng_uniform(&r);
        maskpolicy_keys(mp, keys, noise, 1);
        int best = 0;
        for (int l = 1; l < L; l++)
            if (keys[l] > keys[best]) best = l;
        count[best]++;
    }
    for (int l = 0; l < L; l++) {
        double p = exp(mp->logp[l]), mu = DRAWS * p, sd = sqrt(DRAWS * p * (1 - p));
        printf("gumbel top-1: position %d p %.4f drawn %.4f\n", l, p, (double)count[l] / DRAWS);
        T_CHECK(fabs(count[l] - mu) < 4.5 * sd);
    }
    /* noise 0 is a key of -inf (kept), never NaN */
    noise[0] = 0.0f;
    maskpolicy_keys(mp, keys, noise, 1);
    T_CHECK(isinf(keys[0]) && keys[0] < 0);
    maskpolicy_destroy(&mp);
}

static void test_update(void) {
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    T_CHECK(config_override(&cfg, "mae.mask_policy=adversarial") == 0 &&
            config_override(&cfg, "mae.mask_decay=0.75") == 0);
    maskpolicy_t *mp = NULL;
    T_CHECK(maskpolicy_new(&mp, &cfg, 3) == 0);
    if (!mp) return;
    /* two samples; position 0 removed in both, 1 in one, 2 in none; a NaN is skipped */
    const float loss1[6] = {1.0f, 5.0f, 7.0f, 3.0f, NAN, 9.0f}, mask1[6] = {1, 1, 0, 1, 1, 0};
    maskpolicy_update(mp, loss1, mask1, 2);
    T_CHECK(mp->score[0] == 2.0f && mp->score[1] == 5.0f && mp->score[2] == 0.0f);
    const float loss2[3] = {6.0f, 1.0f, 4.0f}, mask2[3] = {1, 0, 1};
    maskpolicy_update(mp, loss2, mask2, 1);
    T_CHECK(fabsf(mp->score[0] - (0.75f * 2.0f + 0.25f * 6.0f)) < 1e-6f && mp->score[1] == 5.0f &&
            mp->score[2] == 4.0f && mp->updates == 2);
    maskpolicy_destroy(&mp);
}

/* The MAE stage: random policy is mae_forward on the loader's noise, bit for bit;
 * adversarial learns scores from its steps, saves them and reads them back. */
static void test_stage(void) {
    mimic_cfg_t cfg;
    tiny_cfg(&cfg, "0.75");
    const int B = 4;
    stage_t *s = NULL, *a = NULL, *a2 = NULL;
    mae_t *m = NULL;
    mae_batch_t *b = NULL;
    T_CHECK(stage_new(&s, &cfg, B) == 0 && mae_new(&m, &cfg.model) == 0 &&
            mae_batch_alloc(&b, m, B) == 0);
    if (!s || !m || !b) return;
    s->ops->init(s, 3);
    mae_init(m, 3);
    unsigned long long seed = 12;
    float *imgs = testutil_rnd((size_t)B * 16 * 16, -1.0f, 1.0f, &seed);
    float *noise = testutil_rnd((size_t)B * 16, 0.0f, 1.0f, &seed);
    stage_input_t in = {imgs, noise, NULL};
    double ls = s->ops->forward(s, &in, B), lm = mae_forward(m, b, imgs, noise);
    T_CHECK(memcmp(&ls, &lm, sizeof ls) == 0);
    T_CHECK(config_override(&cfg, "mae.mask_policy=adversarial") == 0);
    T_CHECK(stage_new(&a, &cfg, B) == 0 && stage_new(&a2, &cfg, B) == 0);
    if (a && a2) {
        a->ops->init(a, 3);
        a2->ops->init(a2, 3);
        /* the first step's scores are uniform: random masking's mask, so its loss */
        double la = a->ops->forward(a, &in, B);
        T_CHECK(la == ls);
        for (int it = 0; it < 3; it++) {
            testutil_fill(noise, (size_t)B * 16, 0.0f, 1.0f, &seed);
            T_CHECK(isfinite(stage_compute(a, &in, B, NULL, NULL)));
        }
        char path[1200];
        snprintf(path, sizeof path, "%s/adv.safetensors", testutil_tmpdir());
        T_CHECK(a->ops->save(a, path, NULL, NULL, 4, 0, 16, NULL) == 0);
        st_file_t *f = NULL;
        T_CHECK(st_open(&f, path) == 0);
        const st_tensor_t *t = f ? st_find(f, "mask_score") : NULL;
        T_CHECK(t && t->numel == 16);
        int seen = 0;
        for (int l = 0; t && l < 16; l++)
            seen += ((const float *)t->data)[l] > 0.0f;
        T_CHECK(seen > 8); /* 4 steps of 4 samples x 12 removed patches of 16 */
        st_close(&f);
        long step;
        uint64_t ep, cur;
        T_CHECK(a2->ops->load(a2, path, NULL, NULL, &step, &ep, &cur) == 0 && step == 4);
        /* the same scores: the same keys, mask and loss on the next batch */
        testutil_fill(noise, (size_t)B * 16, 0.0f, 1.0f, &seed);
        double x = a->ops->forward(a, &in, B), y = a2->ops->forward(a2, &in, B);
        T_CHECK(x == y);
    }
    stage_destroy(&a);
    stage_destroy(&a2);
    stage_destroy(&s);
    mae_batch_free(&b);
    mae_destroy(&m);
    testutil_release_all();
}

static void test_bad_keys(void) {
    mimic_cfg_t cfg;
    tiny_cfg(&cfg, "0.75");
    stage_t *s = NULL;
    const char *bad[][2] = {
        {"mae.mask_temp=0", "mae.mask_temp"},   {"mae.mask_temp=-1", "mae.mask_temp"},
        {"mae.mask_mix=1.5", "mae.mask_mix"},   {"mae.mask_mix=-0.1", "mae.mask_mix"},
        {"mae.mask_decay=1", "mae.mask_decay"}, {"mae.mask_decay=-0.5", "mae.mask_decay"}};
    mimic_set_quiet(1);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mimic_cfg_t c = cfg;
        T_CHECK(config_override(&c, bad[i][0]) == 0);
        T_CHECK(stage_new(&s, &c, 2) == MIMIC_EINVAL && strstr(mimic_last_error(), bad[i][1]));
        T_CHECK(s == NULL);
    }
    T_CHECK(config_override(&cfg, "mae.mask_policy=greedy") == MIMIC_EINVAL &&
            strstr(mimic_last_error(), "mae.mask_policy"));
    T_CHECK(config_override(&cfg, "mae.mask_temp=abc") == MIMIC_EINVAL);
    mimic_set_quiet(0);
}

int main(void) {
    test_concentrated();
    test_gumbel_top1();
    test_update();
    test_stage();
    test_bad_keys();
    return testutil_summary("test_maskpolicy");
}
