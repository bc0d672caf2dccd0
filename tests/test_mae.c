// TIMEOUT: 120
/* test_mae — the whole MAE loss: finite-difference check of the gradient of every
 * parameter tensor, masking invariants, and the AdamW step/schedule. */
#include "adamw.h"
#include "common.h"
#include "mae.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    mae_t *m;
    mae_batch_t *b;
    const float *imgs, *noise;
} ctx_t;

static double loss_fn(void *p) {
    ctx_t *c = p;
    return mae_forward(c->m, c->b, c->imgs, c->noise);
}

static void test_fd(int norm_pix) {
    mae_cfg_t cfg = {.img_size = 8,
                     .in_chans = 2,
                     .patch_size = 2,
                     .embed_dim = 8,
                     .depth = 2,
                     .num_heads = 2,
                     .mlp_ratio = 2,
                     .decoder_embed_dim = 8,
                     .decoder_depth = 1,
                     .decoder_num_heads = 2,
                     .mask_ratio = 0.75f,
                     .norm_pix_loss = norm_pix};
    mae_t *m = NULL;
    mae_batch_t *b = NULL;
    T_CHECK(mae_new(&m, &cfg) == 0);
    T_CHECK(m->L == 16 && m->keep == 4);
    int B = 2;
    T_CHECK(mae_batch_alloc(&b, m, B) == 0);
    unsigned long long seed = 7;
    /* random weights of O(0.3), not MAE's init, so that every tensor matters */
    testutil_fill(m->p->w, m->p->total, -0.5f, 0.5f, &seed);
    size_t nimg = (size_t)B * 2 * 8 * 8;
    float *imgs = malloc(nimg * sizeof(float)), *noise = malloc((size_t)B * 16 * sizeof(float));
    testutil_fill(imgs, nimg, -1.0f, 1.0f, &seed);
    testutil_fill(noise, (size_t)B * 16, 0.0f, 1.0f, &seed);
    ctx_t c = {m, b, imgs, noise};
    float loss = mae_forward(m, b, imgs, noise);
    T_CHECK(isfinite(loss) && loss > 0);
    /* masking: exactly keep patches visible per sample, and they have the smallest noise */
    for (int s = 0; s < B; s++) {
        int visible = 0;
        float maxvis = -1, minmask = 2;
        for (int l = 0; l < 16; l++) {
            float nz = noise[s * 16 + l];
            if (b->mask[s * 16 + l] == 0.0f) {
                visible++;
                if (nz > maxvis) maxvis = nz;
            } else if (nz < minmask) {
                minmask = nz;
            }
        }
        T_CHECK(visible == 4);
        T_CHECK(maxvis < minmask);
    }
    params_zero_grad(m->p);
    mae_backward(m, b);
    char name[128];
    for (int i = 0; i < m->p->n; i++) {
        const params_tensor_t *t = &m->p->t[i];
        snprintf(name, sizeof name, "mae%s %s", norm_pix ? "" : "(raw pix)", t->name);
        testutil_fd_check_scaled(name, loss_fn, &c, params_w(m->p, i), params_g(m->p, i), t->numel,
                                 16, 1e-2, 3e-2, 5e-2);
    }
    /* backward accumulates: a second pass doubles the gradient */
    float *g1 = malloc(m->p->total * sizeof(float));
    memcpy(g1, m->p->g, m->p->total * sizeof(float));
    mae_forward(m, b, imgs, noise);
    mae_backward(m, b);
    for (size_t i = 0; i < m->p->total; i++)
        g1[i] *= 2;
    testutil_close("mae backward accumulates", m->p->g, g1, m->p->total, 1e-6);
    free(g1);
    free(imgs);
    free(noise);
    mae_batch_free(&b);
    mae_destroy(&m);
    T_CHECK(m == NULL && b == NULL);
}

static void test_bad_config(void) {
    mae_cfg_t cfg = {.img_size = 30,
                     .in_chans = 1,
                     .patch_size = 4,
                     .embed_dim = 16,
                     .depth = 1,
                     .num_heads = 2,
                     .mlp_ratio = 4,
                     .decoder_embed_dim = 8,
                     .decoder_depth = 1,
                     .decoder_num_heads = 2,
                     .mask_ratio = 0.75f,
                     .norm_pix_loss = 1};
    mae_t *m = NULL;
    mimic_set_quiet(1);
    T_CHECK(mae_new(&m, &cfg) == MIMIC_EINVAL && m == NULL);
    T_CHECK(strstr(mimic_last_error(), "img_size") != NULL);
    cfg.img_size = 32;
    cfg.num_heads = 3;
    T_CHECK(mae_new(&m, &cfg) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "num_heads") != NULL);
    cfg.num_heads = 2;
    cfg.mask_ratio = 1.0f;
    T_CHECK(mae_new(&m, &cfg) == MIMIC_EINVAL);
    mimic_set_quiet(0);
}

static void test_adamw(void) {
    /* one tensor decayed, one not; compare with a scalar re-derivation of torch.AdamW */
    params_t *p = params_new();
    int64_t s2[2] = {2, 3}, s1[1] = {3};
    T_CHECK(params_add(p, "fc.weight", 2, s2) == 0);
    T_CHECK(params_add(p, "fc.bias", 1, s1) == 1);
    T_CHECK(params_finalize(p) == 0);
    T_CHECK(p->t[0].decay == 1 && p->t[1].decay == 0);
    float m[9] = {0}, v[9] = {0}, w0[9];
    for (int i = 0; i < 9; i++) {
        p->w[i] = 0.1f * (float)(i - 4);
        p->g[i] = 0.05f * (float)(i % 4) - 0.07f;
        w0[i] = p->w[i];
    }
    adamw_cfg_t c = {0.9f, 0.95f, 1e-8f, 0.05f};
    double lr = 1e-2;
    for (long t = 1; t <= 3; t++)
        adamw_update(&c, p, p->w, p->g, 1.0f, m, v, 0, 9, (float)lr, t);
    for (int i = 0; i < 9; i++) {
        double w = w0[i], mm = 0, vv = 0, g = p->g[i], wd = i < 6 ? 0.05 : 0.0;
        for (int t = 1; t <= 3; t++) {
            w *= 1 - lr * wd;
            mm = 0.9 * mm + 0.1 * g;
            vv = 0.95 * vv + 0.05 * g * g;
            double bc1 = 1 - pow(0.9, t), bc2 = 1 - pow(0.95, t);
            w -= lr / bc1 * mm / (sqrt(vv) / sqrt(bc2) + 1e-8);
        }
        T_CHECK(fabs(w - p->w[i]) < 1e-6);
    }
    /* a range update touches only its range */
    float before = p->w[0];
    adamw_update(&c, p, p->w + 4, p->g + 4, 1.0f, m + 4, v + 4, 4, 9, (float)lr, 4);
    T_CHECK(p->w[0] == before);
    params_destroy(&p);
    /* schedule: linear warmup then half cosine */
    T_CHECK(adamw_lr(0, 10, 110, 1.0f, 0.0f) == 0.0f);
    T_CHECK(fabsf(adamw_lr(5, 10, 110, 1.0f, 0.0f) - 0.5f) < 1e-6f);
    T_CHECK(fabsf(adamw_lr(10, 10, 110, 1.0f, 0.0f) - 1.0f) < 1e-6f);
    T_CHECK(fabsf(adamw_lr(60, 10, 110, 1.0f, 0.0f) - 0.5f) < 1e-6f);
    T_CHECK(fabsf(adamw_lr(110, 10, 110, 1.0f, 0.1f) - 0.1f) < 1e-6f);
    /* momentum: MoCo v3's cosine from m0 to 1, or constant */
    T_CHECK(adamw_ema_momentum(0.99f, 1, 0, 100) == 0.99f);
    T_CHECK(fabsf(adamw_ema_momentum(0.99f, 1, 50, 100) - 0.995f) < 1e-7f);
    T_CHECK(adamw_ema_momentum(0.99f, 1, 100, 100) == 1.0f);
    T_CHECK(adamw_ema_momentum(0.99f, 0, 50, 100) == 0.99f);
}

/* adamw_update_ema == adamw_update, then ema = mom*ema + (1-mom)*w and copy = w, bit for
 * bit, on tensors large enough for the threaded path, over a range that starts and ends
 * inside tensors; and without copy, w holds the same values. */
static void test_adamw_ema(void) {
    params_t *p = params_new();
    int64_t big[2] = {300, 400}, bias[1] = {400}, tail[1] = {70001};
    T_CHECK(params_add(p, "a.weight", 2, big) == 0);
    T_CHECK(params_add(p, "a.bias", 1, bias) == 1);
    T_CHECK(params_add(p, "b.weight", 1, tail) == 2);
    T_CHECK(params_finalize(p) == 0);
    size_t lo = 1234, hi = p->total - 17, n = hi - lo;
    float *buf[11];
    for (int k = 0; k < 11; k++)
        buf[k] = calloc(n, sizeof(float));
    float *w1 = buf[0], *m1 = buf[1], *v1 = buf[2], *e1 = buf[3], *g = buf[4];
    float *w2 = buf[5], *m2 = buf[6], *v2 = buf[7], *e2 = buf[8], *copy = buf[9], *w3 = buf[10];
    unsigned long long seed = 99;
    testutil_fill(w1, n, -1.0f, 1.0f, &seed);
    testutil_fill(e1, n, -1.0f, 1.0f, &seed);
    memcpy(w2, w1, n * sizeof(float));
    memcpy(e2, e1, n * sizeof(float));
    adamw_cfg_t c = {0.9f, 0.95f, 1e-8f, 0.05f};
    int same = 1;
    for (long t = 1; t <= 3; t++) {
        testutil_fill(g, n, -0.5f, 0.5f, &seed);
        adamw_update(&c, p, w1, g, 0.25f, m1, v1, lo, hi, 1e-3f, t);
        adamw_ema(e1, w1, n, 0.99f); /* what a worker in lock-step with the servers runs */
        memcpy(w3, w2, n * sizeof(float));
        adamw_update_ema(&c, p, w2, g, 0.25f, m2, v2, lo, hi, 1e-3f, t, e2, 0.99f, copy);
        same &= memcmp(w1, w2, n * sizeof(float)) == 0 && memcmp(m1, m2, n * sizeof(float)) == 0 &&
                memcmp(v1, v2, n * sizeof(float)) == 0 && memcmp(e1, e2, n * sizeof(float)) == 0 &&
                memcmp(copy, w2, n * sizeof(float)) == 0 && memcmp(w3, w2, n * sizeof(float)) != 0;
    }
    T_CHECK(same);
    adamw_update(&c, p, w1, g, 1.0f, m1, v1, lo, hi, 1e-3f, 4);
    adamw_update_ema(&c, p, w2, g, 1.0f, m2, v2, lo, hi, 1e-3f, 4, e2, 0.99f, NULL);
    T_CHECK(memcmp(w1, w2, n * sizeof(float)) == 0);
    for (int k = 0; k < 11; k++)
        free(buf[k]);
    params_destroy(&p);
}

int main(void) {
    test_fd(1);
    test_fd(0);
    test_bad_config();
    test_adamw();
    test_adamw_ema();
    return testutil_summary("test_mae");
}
