// TIMEOUT: 300
/* test_stages — the objectives as the training step sees them (stages/stage.h): the
 * MoCo v3 stage's whole loss (two views, encoder, projector, predictor, momentum
 * network, symmetric contrastive loss) checked by finite differences on every tensor,
 * the keys of other workers through the exchange hook (offset and M), the momentum copy
 * untouched by backward, and backward accumulating; MoCo v2's loss against the queue
 * the same way, its keys and the queue's FIFO; DenseCL's whole loss the same way, its
 * [global | pooled dense] queue rows and lambda 0 = MoCo v2; the masked online view of
 * MoCo v2 and DenseCL (contrastive.mask_ratio, random and adversarial policy); and the
 * pipeline's per-stage configuration (config_pipeline_stage). */
#include "common.h"
#include "config.h"
#include "stage.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    stage_t *s;
    stage_input_t in;
    int n;
} ctx_t;

static double loss_fn(void *p) {
    ctx_t *c = p;
    return c->s->ops->forward(c->s, &c->in, c->n);
}

static void tiny_cfg(mimic_cfg_t *cfg) {
    config_defaults(cfg);
    const char *set[] = {"model.img_size=8",     "model.in_chans=1",         "model.patch_size=4",
                         "model.embed_dim=8",    "model.depth=1",            "model.num_heads=2",
                         "model.mlp_ratio=2",    "contrastive.mlp_dim=12",   "contrastive.dim=6",
                         "train.stage=mocov3",   "contrastive.temperature=0.5"};
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
        T_CHECK(config_override(cfg, set[i]) == 0);
}

/* A second worker's keys around ours: M = 3n rows, ours at offset n. */
typedef struct {
    float *all;
    int n, dim, calls;
} xchg_t;

static int exchange(void *ctx, const float *keys, int n, int dim, const float **all, int *M,
                    int *offset) {
    xchg_t *x = ctx;
    T_CHECK(n == x->n && dim == x->dim);
    memcpy(x->all + (size_t)n * dim, keys, (size_t)n * dim * sizeof(float));
    *all = x->all;
    *M = 3 * n;
    *offset = n;
    x->calls++;
    return 0;
}

static void test_mocov3_fd(int with_exchange) {
    mimic_cfg_t cfg;
    tiny_cfg(&cfg);
    const int B = 4;
    stage_t *s = NULL;
    T_CHECK(stage_new(&s, &cfg, B) == 0);
    if (!s) return;
    T_CHECK(s->views == 2 && s->ema && (s->ops->reads & STAGE_READ_EMA));
    unsigned long long seed = 11;
    s->ops->init(s, 3);
    T_CHECK(memcmp(s->ema, s->p->w, s->p->total * sizeof(float)) == 0);
    /* O(0.3) weights everywhere so every tensor matters; the momentum copy differs */
    testutil_fill(s->p->w, s->p->total, -0.5f, 0.5f, &seed);
    testutil_fill(s->ema, s->p->total, -0.5f, 0.5f, &seed);
    size_t nimg = (size_t)B * 2 * 8 * 8;
    float *imgs = malloc(nimg * sizeof(float));
    testutil_fill(imgs, nimg, -1.0f, 1.0f, &seed);
    xchg_t x = {calloc((size_t)3 * B * 12, sizeof(float)), B, 12, 0};
    testutil_fill(x.all, (size_t)3 * B * 12, -0.4f, 0.4f, &seed);
    if (with_exchange) {
        s->exchange = exchange;
        s->exchange_ctx = &x;
    }
    ctx_t c = {s, {imgs, NULL, NULL}, B};
    float *ema0 = malloc(s->p->total * sizeof(float));
    memcpy(ema0, s->ema, s->p->total * sizeof(float));
    double loss = stage_compute(s, &c.in, B, NULL, NULL);
    T_CHECK(isfinite(loss) && loss > 0);
    T_CHECK(!with_exchange || x.calls == 1);
    T_CHECK(memcmp(ema0, s->ema, s->p->total * sizeof(float)) == 0);
    char name[160];
    /* The encoder's final norm bias shifts every feature by the same vector, which the
     * projector's first BatchNorm removes: its gradient is exactly 0, which float32
     * differences (noise ~1e-3 here) cannot confirm, so it is checked to be ~0 instead. */
    int nb = params_find(s->p, "norm.bias"), nw = params_find(s->p, "norm.weight");
    double gmax = 0, bmax = 0;
    for (int j = 0; j < 8; j++) {
        gmax = fmax(gmax, fabs(params_g(s->p, nw)[j]));
        bmax = fmax(bmax, fabs(params_g(s->p, nb)[j]));
    }
    T_CHECK(gmax > 1e-3 && bmax < 1e-3 * gmax);
    for (int i = 0; i < s->p->n; i++) {
        const params_tensor_t *t = &s->p->t[i];
        if (i == nb) continue;
        snprintf(name, sizeof name, "mocov3%s %s", with_exchange ? " (2 workers)" : "", t->name);
        testutil_fd_check_scaled(name, loss_fn, &c, params_w(s->p, i), params_g(s->p, i), t->numel,
                                 12, 1e-3, 3e-2, 5e-2);
    }
    /* backward accumulates: a second pass doubles the gradient */
    float *g1 = malloc(s->p->total * sizeof(float));
    memcpy(g1, s->p->g, s->p->total * sizeof(float));
    s->ops->forward(s, &c.in, B);
    s->ops->backward(s);
    for (size_t i = 0; i < s->p->total; i++)
        g1[i] *= 2;
    testutil_close("mocov3 backward accumulates", s->p->g, g1, s->p->total, 1e-5);
    /* a batch too small for BatchNorm is a non-finite loss with a reason, not a crash */
    mimic_set_quiet(1);
    T_CHECK(!isfinite(s->ops->forward(s, &c.in, 1)));
    mimic_set_quiet(0);
    free(g1);
    free(ema0);
    free(imgs);
    free(x.all);
    stage_destroy(&s);
}

/* MoCo v2: the loss against a partly filled queue (only its valid rows are negatives)
 * checked by finite differences on every tensor; the keys it leaves are the momentum
 * network's (unit rows, independent of the online weights); the queue appends them in
 * FIFO order, wrapping; a step never sees its own keys. */
static void test_mocov2(void) {
    mimic_cfg_t cfg;
    tiny_cfg(&cfg);
    T_CHECK(config_override(&cfg, "train.stage=mocov2") == 0 &&
            config_override(&cfg, "contrastive.queue_size=10") == 0);
    const int B = 4, K = 10, dim = 6;
    stage_t *s = NULL;
    T_CHECK(stage_new(&s, &cfg, B) == 0);
    if (!s) return;
    T_CHECK(s->views == 2 && s->ema && s->queue && s->queue_cap == (size_t)K &&
            s->queue_dim == (size_t)dim && (s->ops->pushes & STAGE_PUSH_KEYS) &&
            (s->ops->server_state & STAGE_STATE_QUEUE));
    s->ops->init(s, 5);
    /* (the seed keeps every hidden ReLU input farther than the difference step from 0 on
     * this batch: seed 17 puts one within it, and the difference then straddles the kink) */
    unsigned long long seed = 19;
    testutil_fill(s->p->w, s->p->total, -0.5f, 0.5f, &seed);
    testutil_fill(s->ema, s->p->total, -0.5f, 0.5f, &seed);
    size_t nimg = (size_t)B * 2 * 8 * 8;
    float *imgs = malloc(nimg * sizeof(float));
    testutil_fill(imgs, nimg, -1.0f, 1.0f, &seed);
    /* 7 valid rows of 10; rows 7.. hold garbage that must not count */
    testutil_fill(s->queue, (size_t)K * dim, -0.4f, 0.4f, &seed);
    s->queue_keys = 7;
    float *rows8 = malloc((size_t)K * dim * sizeof(float));
    memcpy(rows8, s->queue, (size_t)K * dim * sizeof(float));
    ctx_t c = {s, {imgs, NULL, NULL}, B};
    double loss = stage_compute(s, &c.in, B, NULL, NULL);
    T_CHECK(isfinite(loss) && loss > 0);
    for (int j = 7 * dim; j < K * dim; j++) /* garbage rows changed: the loss must not */
        s->queue[j] = 100.0f;
    T_CHECK(s->ops->forward(s, &c.in, B) == loss);
    memcpy(s->queue, rows8, (size_t)K * dim * sizeof(float));
    T_CHECK(s->keys && s->nkeys == B);
    for (int i = 0; i < B; i++) {
        double n2 = 0;
        for (int d = 0; d < dim; d++)
            n2 += (double)s->keys[i * dim + d] * s->keys[i * dim + d];
        T_CHECK(fabs(n2 - 1) < 1e-5);
    }
    /* the keys come from the momentum copy: new online weights leave them as they are */
    float *k0 = malloc((size_t)B * dim * sizeof(float));
    memcpy(k0, s->keys, (size_t)B * dim * sizeof(float));
    float *w0 = malloc(s->p->total * sizeof(float));
    memcpy(w0, s->p->w, s->p->total * sizeof(float));
    testutil_fill(s->p->w, s->p->total, -0.5f, 0.5f, &seed);
    s->ops->forward(s, &c.in, B);
    T_CHECK(memcmp(k0, s->keys, (size_t)B * dim * sizeof(float)) == 0);
    memcpy(s->p->w, w0, s->p->total * sizeof(float));
    loss = stage_compute(s, &c.in, B, NULL, NULL);
    char name[160];
    int checked = 0;
    for (int i = 0; i < s->p->n; i++) {
        const params_tensor_t *t = &s->p->t[i];
        snprintf(name, sizeof name, "mocov2 %s", t->name);
        testutil_fd_check_scaled(name, loss_fn, &c, params_w(s->p, i), params_g(s->p, i), t->numel,
                                 12, 1e-3, 3e-2, 5e-2);
        checked++;
    }
    T_CHECK(checked == s->p->n && params_find(s->p, "projector.2.weight") >= 0);
    /* appending: keys 7..10 go to rows 7, 8, 9, 0 (wrapping), the oldest row 0 replaced */
    stage_queue_append(s);
    T_CHECK(s->queue_keys == 11);
    for (int i = 0; i < B; i++) {
        int row = (7 + i) % K;
        T_CHECK(memcmp(s->queue + (size_t)row * dim, k0 + (size_t)i * dim, dim * sizeof(float)) == 0);
    }
    T_CHECK(memcmp(s->queue + dim, rows8 + dim, 6 * dim * sizeof(float)) == 0);
    /* with a full queue every row is a negative: the loss changes with any row */
    double full = s->ops->forward(s, &c.in, B);
    s->queue[8 * dim] += 0.5f;
    T_CHECK(s->ops->forward(s, &c.in, B) != full);
    free(k0);
    free(w0);
    free(rows8);
    free(imgs);
    stage_destroy(&s);
}

/* DenseCL: the whole loss (global + dense branch, encoder, both heads) against a partly
 * filled [global | pooled dense] queue, by finite differences on every tensor; the keys it
 * leaves are rows [global key | pooled dense key] of unit halves from the momentum
 * network; lambda 0 is MoCo v2's loss on the global half of the rows; bad keys refused. */
static void test_densecl(void) {
    mimic_cfg_t cfg;
    tiny_cfg(&cfg);
    T_CHECK(config_override(&cfg, "train.stage=densecl") == 0 &&
            config_override(&cfg, "contrastive.queue_size=10") == 0 &&
            config_override(&cfg, "densecl.lambda=0.6") == 0);
    const int B = 3, K = 10, dim = 6;
    T_CHECK(stage_queue_dim(&cfg) == 2 * (size_t)dim);
    stage_t *s = NULL;
    T_CHECK(stage_new(&s, &cfg, B) == 0);
    if (!s) return;
    T_CHECK(s->views == 2 && s->ema && s->queue && s->queue_cap == (size_t)K &&
            s->queue_dim == 2 * (size_t)dim && (s->ops->pushes & STAGE_PUSH_KEYS) &&
            (s->ops->server_state & STAGE_STATE_QUEUE) && (s->ops->reads & STAGE_READ_EMA));
    T_CHECK(params_find(s->p, "dense_projector.0.weight") >= 0 &&
            params_find(s->p, "dense_projector.2.bias") >= 0 &&
            params_find(s->p, "projector.2.weight") >= 0);
    s->ops->init(s, 5);
    unsigned long long seed = 19;
    testutil_fill(s->p->w, s->p->total, -0.5f, 0.5f, &seed);
    testutil_fill(s->ema, s->p->total, -0.5f, 0.5f, &seed);
    size_t nimg = (size_t)B * 2 * 8 * 8;
    float *imgs = malloc(nimg * sizeof(float));
    testutil_fill(imgs, nimg, -1.0f, 1.0f, &seed);
    testutil_fill(s->queue, (size_t)K * 2 * dim, -0.4f, 0.4f, &seed);
    s->queue_keys = 7;
    ctx_t c = {s, {imgs, NULL, NULL}, B};
    double loss = stage_compute(s, &c.in, B, NULL, NULL);
    T_CHECK(isfinite(loss) && loss > 0);
    for (int j = 7 * 2 * dim; j < K * 2 * dim; j++) /* rows past the valid ones: no effect */
        s->queue[j] = 100.0f;
    T_CHECK(s->ops->forward(s, &c.in, B) == loss);
    T_CHECK(s->keys && s->nkeys == B);
    for (int i = 0; i < B; i++)
        for (int h = 0; h < 2; h++) {
            double n2 = 0;
            for (int d = 0; d < dim; d++) {
                double v = s->keys[(size_t)i * 2 * dim + h * dim + d];
                n2 += v * v;
            }
            T_CHECK(fabs(n2 - 1) < 1e-5);
        }
    char name[160];
    int checked = 0;
    loss = stage_compute(s, &c.in, B, NULL, NULL);
    for (int i = 0; i < s->p->n; i++) {
        const params_tensor_t *t = &s->p->t[i];
        snprintf(name, sizeof name, "densecl %s", t->name);
        testutil_fd_check_scaled(name, loss_fn, &c, params_w(s->p, i), params_g(s->p, i), t->numel,
                                 12, 1e-3, 3e-2, 5e-2);
        checked++;
    }
    T_CHECK(checked == s->p->n);
    /* the dense head's gradient is there (lambda > 0) and reaches the patch embedding */
    double gd = 0;
    int di = params_find(s->p, "dense_projector.0.weight");
    for (size_t j = 0; j < s->p->t[di].numel; j++)
        gd += fabs(params_g(s->p, di)[j]);
    T_CHECK(gd > 0);
    stage_queue_append(s);
    T_CHECK(s->queue_keys == 10);
    stage_destroy(&s);
    /* lambda = 0: the loss is MoCo v2's on the same weights and the global half of the rows */
    T_CHECK(config_override(&cfg, "densecl.lambda=0") == 0);
    mimic_cfg_t v2 = cfg;
    T_CHECK(config_override(&v2, "train.stage=mocov2") == 0);
    stage_t *a = NULL, *b = NULL;
    T_CHECK(stage_new(&a, &cfg, B) == 0 && stage_new(&b, &v2, B) == 0);
    if (a && b) {
        a->ops->init(a, 9);
        b->ops->init(b, 9);
        seed = 4;
        testutil_fill(a->p->w, a->p->total, -0.5f, 0.5f, &seed);
        testutil_fill(a->ema, a->p->total, -0.5f, 0.5f, &seed);
        for (int i = 0; i < b->p->n; i++) { /* by name: DenseCL has the dense head too */
            int j = params_find(a->p, b->p->t[i].name);
            T_CHECK(j >= 0);
            memcpy(params_w(b->p, i), params_w(a->p, j), b->p->t[i].numel * sizeof(float));
            memcpy(b->ema + b->p->t[i].offset, a->ema + a->p->t[j].offset,
                   b->p->t[i].numel * sizeof(float));
        }
        testutil_fill(a->queue, (size_t)K * 2 * dim, -0.4f, 0.4f, &seed);
        for (int r = 0; r < K; r++)
            memcpy(b->queue + (size_t)r * dim, a->queue + (size_t)r * 2 * dim, dim * sizeof(float));
        a->queue_keys = b->queue_keys = 12;
        stage_input_t in = {imgs, NULL, NULL};
        double la = stage_compute(a, &in, B, NULL, NULL), lb = stage_compute(b, &in, B, NULL, NULL);
        T_CHECK(fabs(la - lb) < 1e-6 * fabs(lb));
        printf("densecl lambda=0 %.7f vs mocov2 %.7f\n", la, lb);
    }
    stage_destroy(&a);
    stage_destroy(&b);
    mimic_set_quiet(1);
    T_CHECK(config_override(&cfg, "densecl.lambda=1.5") == 0);
    T_CHECK(stage_new(&s, &cfg, B) == MIMIC_EINVAL && strstr(mimic_last_error(), "densecl.lambda"));
    T_CHECK(config_override(&cfg, "densecl.lambda=abc") == MIMIC_EINVAL);
    mimic_set_quiet(0);
    free(imgs);
}

/* Token masking of the online view (contrastive.mask_ratio, ours) in MoCo v2 and DenseCL:
 * the stage asks the loader for noise; with the random policy the query view keeps the
 * patches of the smallest noise (pixels of a removed patch do not move the loss, of a
 * kept one do), every tensor's gradient passes finite differences at a fixed mask; the
 * adversarial policy scores the visible positions after backward and its scores travel
 * with the stage's checkpoint; a ratio outside [0,1) is refused. */
static void test_masked_view(const char *stage) {
    mimic_cfg_t cfg;
    tiny_cfg(&cfg);
    char set[64];
    snprintf(set, sizeof set, "train.stage=%s", stage);
    T_CHECK(config_override(&cfg, set) == 0 && config_override(&cfg, "contrastive.queue_size=10") == 0 &&
            config_override(&cfg, "contrastive.mask_ratio=0.5") == 0);
    const int B = 3, L = 4, dim = 6;
    stage_t *s = NULL;
    T_CHECK(stage_new(&s, &cfg, B) == 0);
    if (!s) return;
    T_CHECK(s->noise_len == L && !s->mask_score); /* random policy: no scores to save */
    s->ops->init(s, 5);
    unsigned long long seed = 23;
    testutil_fill(s->p->w, s->p->total, -0.5f, 0.5f, &seed);
    testutil_fill(s->ema, s->p->total, -0.5f, 0.5f, &seed);
    size_t nimg = (size_t)B * 2 * 8 * 8;
    float *imgs = malloc(nimg * sizeof(float)), *noise = malloc((size_t)B * L * sizeof(float));
    testutil_fill(imgs, nimg, -1.0f, 1.0f, &seed);
    testutil_fill(s->queue, s->queue_cap * s->queue_dim, -0.4f, 0.4f, &seed);
    s->queue_keys = 6;
    /* sample i keeps patches 1 and 2 (the two smallest noise values), loses 0 and 3 */
    for (int i = 0; i < B; i++) {
        const float nz[4] = {0.9f, 0.1f, 0.2f, 0.7f};
        memcpy(noise + i * L, nz, sizeof nz);
    }
    ctx_t c = {s, {imgs, noise, NULL}, B};
    double loss = stage_compute(s, &c.in, B, NULL, NULL);
    T_CHECK(isfinite(loss) && loss > 0);
    /* patch 3 of view 0 (rows 4..7, columns 4..7): removed, so the loss stays */
    float *v0 = imgs; /* sample 0, view 0 */
    float saved = v0[5 * 8 + 5];
    v0[5 * 8 + 5] += 3.0f;
    T_CHECK(s->ops->forward(s, &c.in, B) == loss);
    v0[5 * 8 + 5] = saved;
    /* patch 1 (rows 0..3, columns 4..7): kept, so it moves the loss */
    v0[1 * 8 + 5] += 3.0f;
    T_CHECK(s->ops->forward(s, &c.in, B) != loss);
    v0[1 * 8 + 5] = saved = v0[1 * 8 + 5] - 3.0f;
    /* the key view (row 1) is whole: its removed-in-view-0 patch 3 does move the loss */
    float *v1 = imgs + 8 * 8;
    v1[5 * 8 + 5] += 3.0f;
    T_CHECK(s->ops->forward(s, &c.in, B) != loss);
    v1[5 * 8 + 5] -= 3.0f;
    T_CHECK(s->ops->forward(s, &c.in, B) == loss);
    char name[160];
    loss = stage_compute(s, &c.in, B, NULL, NULL);
    int checked = 0;
    for (int i = 0; i < s->p->n; i++) {
        const params_tensor_t *t = &s->p->t[i];
        snprintf(name, sizeof name, "%s masked %s", stage, t->name);
        testutil_fd_check_scaled(name, loss_fn, &c, params_w(s->p, i), params_g(s->p, i), t->numel,
                                 12, 1e-3, 3e-2, 5e-2);
        checked++;
    }
    T_CHECK(checked == s->p->n);
    stage_destroy(&s);

    /* adversarial: the kept positions 1 and 2 get scores, the removed 0 and 3 none yet */
    T_CHECK(config_override(&cfg, "mae.mask_policy=adversarial") == 0);
    stage_t *a = NULL, *b = NULL;
    T_CHECK(stage_new(&a, &cfg, B) == 0 && stage_new(&b, &cfg, B) == 0);
    if (a && b) {
        T_CHECK(a->mask_score && a->mask_score_len == (size_t)L);
        a->ops->init(a, 5);
        b->ops->init(b, 5);
        /* uniform scores: the first step's mask is the random policy's, 1 and 2 kept */
        T_CHECK(isfinite(stage_compute(a, &c.in, B, NULL, NULL)));
        T_CHECK(a->mask_score[1] > 0 && a->mask_score[2] > 0 && a->mask_score[0] == 0 &&
                a->mask_score[3] == 0);
        char path[1200];
        snprintf(path, sizeof path, "%s/%s-masked.safetensors", testutil_tmpdir(), stage);
        T_CHECK(a->ops->save(a, path, NULL, NULL, 1, 0, 3, NULL) == 0);
        long step;
        uint64_t ep, cur;
        T_CHECK(b->ops->load(b, path, NULL, NULL, &step, &ep, &cur) == 0);
        T_CHECK(memcmp(a->mask_score, b->mask_score, L * sizeof(float)) == 0);
        /* the same scores draw the same masks: the same loss on new noise */
        testutil_fill(noise, (size_t)B * L, 0.0f, 1.0f, &seed);
        T_CHECK(a->ops->forward(a, &c.in, B) == b->ops->forward(b, &c.in, B));
    }
    stage_destroy(&a);
    stage_destroy(&b);
    mimic_set_quiet(1);
    const char *bad[] = {"contrastive.mask_ratio=1", "contrastive.mask_ratio=-0.2"};
    for (int i = 0; i < 2; i++) {
        mimic_cfg_t x = cfg;
        T_CHECK(config_override(&x, bad[i]) == 0);
        T_CHECK(stage_new(&s, &x, B) == MIMIC_EINVAL &&
                strstr(mimic_last_error(), "contrastive.mask_ratio"));
    }
    mimic_cfg_t x = cfg; /* a ratio that leaves no token of L = 4 */
    T_CHECK(config_override(&x, "contrastive.mask_ratio=0.9") == 0);
    T_CHECK(stage_new(&s, &x, B) == MIMIC_EINVAL && strstr(mimic_last_error(), "mask_ratio"));
    /* the policy keys are checked for the contrastive stage too */
    x = cfg;
    T_CHECK(config_override(&x, "mae.mask_temp=0") == 0);
    T_CHECK(stage_new(&s, &x, B) == MIMIC_EINVAL && strstr(mimic_last_error(), "mae.mask_temp"));
    mimic_set_quiet(0);
    (void)dim;
    free(noise);
    free(imgs);
}

/* The pipeline's configuration: stage i gets its name as train.stage, its own
 * [pipeline.<stage>] keys, its directory and the previous stage's model; a misspelt
 * section or a bad key in one is refused, naming it. */
static void test_pipeline_cfg(void) {
    static mimic_cfg_t base, st;
    char name[64];
    config_defaults(&base);
    T_CHECK(config_override(&base, "train.out_dir=/tmp/p") == 0);
    T_CHECK(config_override(&base, "pipeline.stages=mae,mocov3,eval") == 0);
    T_CHECK(config_set(&base, "pipeline.mocov3", "train.steps", "7") == 0); /* INI form */
    T_CHECK(config_override(&base, "pipeline.eval.eval.test_limit=5") == 0); /* flag form */
    T_CHECK(config_pipeline_count(&base) == 3);
    T_CHECK(config_pipeline_stage(&base, 0, &st, name, sizeof name) == 0);
    T_CHECK(strcmp(name, "mae") == 0 && st.train.stage == STAGE_KIND_MAE &&
            st.train.steps == base.train.steps && strcmp(st.train.out_dir, "/tmp/p/0-mae") == 0 &&
            st.train.init_from[0] == 0);
    T_CHECK(config_pipeline_stage(&base, 1, &st, name, sizeof name) == 0);
    T_CHECK(strcmp(name, "mocov3") == 0 && st.train.stage == STAGE_KIND_MOCOV3 &&
            st.train.steps == 7 && strcmp(st.train.out_dir, "/tmp/p/1-mocov3") == 0 &&
            strcmp(st.train.init_from, "/tmp/p/0-mae/model.safetensors") == 0);
    T_CHECK(config_pipeline_stage(&base, 2, &st, name, sizeof name) == 0);
    T_CHECK(strcmp(st.pipeline.name, "eval") == 0 && st.eval.test_limit == 5 &&
            strcmp(st.train.init_from, "/tmp/p/1-mocov3/model.safetensors") == 0);
    mimic_set_quiet(1);
    T_CHECK(config_pipeline_stage(&base, 3, &st, name, sizeof name) == MIMIC_EINVAL);
    T_CHECK(config_override(&base, "pipeline.mocv3.train.steps=1") == 0);
    T_CHECK(config_pipeline_stage(&base, 0, &st, name, sizeof name) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "mocv3") != NULL);
    base.pipeline.noverrides--; /* drop the misspelt one */
    T_CHECK(config_override(&base, "pipeline.mocov3.train.bogus=1") == 0);
    T_CHECK(config_pipeline_stage(&base, 1, &st, name, sizeof name) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "pipeline.mocov3") && strstr(mimic_last_error(), "bogus"));
    mimic_set_quiet(0);
}

int main(void) {
    test_pipeline_cfg();
    test_mocov3_fd(0);
    test_mocov3_fd(1);
    test_mocov2();
    test_densecl();
    test_masked_view("mocov2");
    test_masked_view("densecl");
    return testutil_summary("test_stages");
}
