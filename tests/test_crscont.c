// TIMEOUT: 300
/* test_crscont — the CRS-CONT stage (stages/crscont.c):
 *  1. its pieces in models/: SupCon with per-anchor weights against the formula in
 *     double and by finite differences (weights 0 drop an anchor, aw = NULL equals all
 *     ones), and the softmax backward by finite differences;
 *  2. the whole stage (two views, encoder, coarse classifier, projector, SupCon_w +
 *     CE + SimCLR) by finite differences on every tensor, backward accumulating;
 *  3. PyTorch parity through the gradient dump: `mimic-worker --dump-grads
 *     --train.stage=crscont` on tests/golden/crscont_expect.safetensors (gen_crscont.py,
 *     the reference's loss in float64) — loss and every gradient within 1e-4;
 *  4. malformed [crscont] keys and labels outside the map: one error naming the key;
 *  5. a short distributed run (scheduler, 1 server, 2 workers on loopback) with the
 *     Fashion-MNIST map of deploy/fmnist.ini: every process exits 0, the loss is finite
 *     and the model the cluster wrote differs from its initialisation. */
#include "common.h"
#include "config.h"
#include "contrastive.h"
#include "l2norm.h"
#include "safetensors.h"
#include "stage.h"
#include "testutil.h"
#include "xent.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define PARITY_TOL 1e-4

/* ------------------------------------------------------------------ the pieces */

typedef struct {
    float *prob, *z, *w, *aw, *x, *r;
    int M, D, N, K;
    float tau, scale;
} piece_t;

static double anchor_loss(void *p) {
    piece_t *c = p;
    return contrastive_supcon_anchor_forward(c->prob, c->z, c->w, c->aw, c->M, c->D, c->tau,
                                             c->scale);
}

/* sum r * softmax(x): a loss through the softmax as a value */
static double softmax_loss(void *p) {
    piece_t *c = p;
    double s = 0;
    for (int i = 0; i < c->N; i++) {
        memcpy(c->prob + i * c->K, c->x + i * c->K, c->K * sizeof(float));
        xent_softmax_row(c->prob + i * c->K, c->K);
        for (int k = 0; k < c->K; k++)
            s += (double)c->r[i * c->K + k] * c->prob[i * c->K + k];
    }
    return s;
}

static double anchor_ref(const float *z, const float *w, const float *aw, int M, int D, double tau,
                         double scale) {
    double total = 0;
    for (int i = 0; i < M; i++) {
        double den = 0, W = 0, num = 0;
        for (int j = 0; j < M; j++)
            if (j != i) den += exp(testutil_dot(z + i * D, z + j * D, D) / tau);
        for (int j = 0; j < M; j++) {
            if (j == i) continue;
            W += w[i * M + j];
            num += w[i * M + j] * (testutil_dot(z + i * D, z + j * D, D) / tau - log(den));
        }
        if (W > 0) total += -aw[i] * num / W;
    }
    return scale * total / M;
}

static void test_pieces(void) {
    unsigned long long seed = 77;
    const int M = 10, D = 5;
    int labels[10] = {0, 1, 2, 1, 0, 0, 1, 2, 1, 0};
    float aw[10] = {1, 0.5f, 1, 0.5f, 1, 1, 0.5f, 1, 0.5f, 0};
    piece_t c = {.prob = testutil_zeros(M * M),
                 .z = testutil_rnd(M * D, -0.6f, 0.6f, &seed),
                 .w = testutil_zeros(M * M),
                 .aw = aw,
                 .M = M,
                 .D = D,
                 .tau = 0.2f,
                 .scale = 0.2f / 0.07f};
    float *zn = testutil_zeros(M * D), *norm = testutil_zeros(M), *g = testutil_zeros(M * D);
    float *scratch = testutil_zeros(M * M);
    l2norm_forward(zn, norm, c.z, M, D);
    memcpy(c.z, zn, M * D * sizeof(float));
    contrastive_weights_labels(c.w, labels, M);
    double l = anchor_loss(&c), want = anchor_ref(c.z, c.w, aw, M, D, c.tau, c.scale);
    printf("%-48s %.7f vs %.7f\n", "supcon with anchor weights vs double formula", l, want);
    T_CHECK(fabs(l - want) <= 1e-5 * fabs(want));
    contrastive_supcon_anchor_backward(g, scratch, c.prob, c.w, aw, c.z, M, D, c.tau, c.scale,
                                       1.0f);
    testutil_fd_check("supcon anchor-weighted dz", anchor_loss, &c, c.z, g, M * D, 50, 1e-3, 2e-2,
                      1e-4);
    /* aw = NULL is all ones, and equals the unweighted SupCon bit for bit */
    float ones[10];
    for (int i = 0; i < M; i++)
        ones[i] = 1.0f;
    double a = contrastive_supcon_anchor_forward(c.prob, c.z, c.w, ones, M, D, c.tau, c.scale);
    double b = contrastive_supcon_anchor_forward(c.prob, c.z, c.w, NULL, M, D, c.tau, c.scale);
    double u = contrastive_supcon_forward(c.prob, c.z, c.w, M, D, c.tau, c.scale);
    T_CHECK(a == b && b == u);
    /* a weighted loss is strictly between: the weights do act */
    T_CHECK(l < b && l > 0.3 * b);

    /* softmax as a value */
    const int N = 4, K = 5;
    piece_t s = {.prob = testutil_zeros(N * K),
                 .x = testutil_rnd(N * K, -2, 2, &seed),
                 .r = testutil_rnd(N * K, -1, 1, &seed),
                 .N = N,
                 .K = K};
    float *dx = testutil_zeros(N * K);
    softmax_loss(&s);
    xent_softmax_backward(dx, s.prob, s.r, N, K);
    testutil_fd_check("softmax backward", softmax_loss, &s, s.x, dx, N * K, 20, 1e-3, 1e-2, 1e-5);
    testutil_release_all();
}

/* ------------------------------------------------------------------ the stage */

enum { B = 6, S = 8 };

typedef struct {
    stage_t *s;
    stage_input_t in;
    int n;
} ctx_t;

static double loss_fn(void *p) {
    ctx_t *c = p;
    return c->s->ops->forward(c->s, &c->in, c->n);
}

static void tiny_cfg(mimic_cfg_t *cfg, const char *extra) {
    config_defaults(cfg);
    const char *set[] = {"model.img_size=8",  "model.in_chans=1",     "model.patch_size=4",
                         "model.embed_dim=8", "model.depth=1",        "model.num_heads=2",
                         "model.mlp_ratio=2", "train.stage=crscont",  "crscont.proj_dim=6",
                         "crscont.tau=0.5",   "crscont.base_tau=0.4", "train.seed=7"};
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
        T_CHECK(config_override(cfg, set[i]) == 0);
    if (extra) T_CHECK(config_override(cfg, extra) == 0);
}

static void test_stage_fd(void) {
    mimic_cfg_t cfg;
    tiny_cfg(&cfg, NULL);
    stage_t *s = NULL;
    T_CHECK(stage_new(&s, &cfg, B) == 0);
    if (!s) return;
    T_CHECK(s->views == 2 && s->wants_labels && !s->ema && !(s->ops->reads & STAGE_READ_EMA));
    s->ops->init(s, 3);
    unsigned long long seed = 19;
    testutil_fill(s->p->w, s->p->total, -0.5f, 0.5f, &seed);
    /* every hidden unit of the projector on by a wide margin (test_mimic's device), so no
     * ReLU kink lies within a difference step */
    int b0 = params_find(s->p, "projector.0.bias"), w2 = params_find(s->p, "projector.2.weight"),
        b2 = params_find(s->p, "projector.2.bias"), hw = params_find(s->p, "head.weight");
    T_CHECK(b0 >= 0 && w2 >= 0 && b2 >= 0 && hw >= 0);
    T_CHECK(s->p->t[hw].shape[0] == 4 && s->p->t[hw].shape[1] == 8); /* 4 coarse groups */
    for (int j = 0; j < 8; j++)
        params_w(s->p, b0)[j] = 3.0f;
    for (int i = 0; i < 6; i++) {
        float acc = 0;
        for (int j = 0; j < 8; j++)
            acc += params_w(s->p, w2)[i * 8 + j] * 3.0f;
        params_w(s->p, b2)[i] = -acc;
    }
    float imgs[B * 2 * S * S];
    testutil_fill(imgs, B * 2 * S * S, -1, 1, &seed);
    for (int r = 0; r < 2 * B; r++) /* spread the features apart (test_mimic) */
        for (int j = 0; j < S * S; j++)
            imgs[r * S * S + j] = (0.5f + 0.35f * (float)(r / 2)) * imgs[r * S * S + j] +
                                  0.8f * (float)((r * 5) % 7) - 2.0f;
    int labels[B] = {0, 4, 3, 5, 6, 2}; /* groups 1, 1, 2, 3, 0, 1 */
    ctx_t c = {s, {imgs, NULL, labels}, B};
    double loss = stage_compute(s, &c.in, B, NULL, NULL);
    printf("crscont loss %.6f\n", loss);
    T_CHECK(isfinite(loss) && loss > 0);
    char name[160];
    for (int i = 0; i < s->p->n; i++) {
        const params_tensor_t *t = &s->p->t[i];
        snprintf(name, sizeof name, "crscont %s", t->name);
        testutil_fd_check_scaled(name, loss_fn, &c, params_w(s->p, i), params_g(s->p, i), t->numel,
                                 12, 2e-3, 3e-2, 5e-2);
    }
    float *g1 = malloc(s->p->total * sizeof(float));
    memcpy(g1, s->p->g, s->p->total * sizeof(float));
    s->ops->forward(s, &c.in, B);
    s->ops->backward(s);
    for (size_t i = 0; i < s->p->total; i++)
        g1[i] *= 2;
    testutil_close("crscont backward accumulates", s->p->g, g1, s->p->total, 1e-5);
    free(g1);
    /* labels outside the map: a non-finite loss naming the sample, never a crash */
    mimic_set_quiet(1);
    labels[2] = 7;
    T_CHECK(!isfinite(s->ops->forward(s, &c.in, B)));
    T_CHECK(strstr(mimic_last_error(), "sample 2 of the batch has label 7") &&
            strstr(mimic_last_error(), "crscont.coarse_map"));
    labels[2] = 3;
    stage_input_t nolab = {imgs, NULL, NULL};
    T_CHECK(!isfinite(s->ops->forward(s, &nolab, B)));
    T_CHECK(!isfinite(s->ops->forward(s, &c.in, 1)));
    mimic_set_quiet(0);
    T_CHECK(s->ops->forward(s, &c.in, B) == loss); /* still usable, deterministic */
    stage_destroy(&s);
    /* the parameters-only build (servers, the dump) has the same table */
    tiny_cfg(&cfg, NULL);
    T_CHECK(stage_new(&s, &cfg, 0) == 0 && s && s->p->n > 0);
    stage_destroy(&s);
}

/* Malformed keys: stage_new refuses with one line naming the key. */
static void test_bad_keys(void) {
    static const struct {
        const char *set, *key;
    } bad[] = {
        {"crscont.coarse_map=0,1,1,1,2,3,0", "crscont.weights"},     /* 4 groups, 4 weights: ok? */
        {"crscont.weights=1,0.5,1", "crscont.weights"},              /* 3 weights for 4 groups */
        {"crscont.weights=1,0.5,1,1,1", "crscont.weights"},          /* 5 */
        {"crscont.weights=1,-0.5,1,1", "crscont.weights"},           /* negative */
        {"crscont.weights=1,x,1,1", "crscont.weights"},              /* not a number */
        {"crscont.weights=1,nan,1,1", "crscont.weights"},            /* not finite */
        {"crscont.coarse_map=1,1,-1,2,1,3,0", "crscont.coarse_map"}, /* negative group */
        {"crscont.coarse_map=1,1,1,2,1,99,0", "crscont.coarse_map"}, /* out of range */
        {"crscont.coarse_map=0,1,1,2,1,4,0", "crscont.coarse_map"},  /* group 3 empty */
        {"crscont.coarse_map=1,1,,2", "crscont.coarse_map"},         /* empty entry */
        {"crscont.coarse_map=1,1,2,", "crscont.coarse_map"},         /* trailing comma */
        {"crscont.coarse_map=0,0,0", "crscont.coarse_map"},          /* one group */
        {"crscont.coarse_map=1;2", "crscont.coarse_map"},            /* not a list */
        {"crscont.tau=0", "crscont.tau"},
        {"crscont.base_tau=-1", "crscont.base_tau"},
        {"crscont.w_ce=-1", "crscont.w_ce"},
        {"crscont.w_simclr=-0.4", "crscont.w_simclr"},
        {"crscont.proj_dim=0", "crscont.proj_dim"},
    };
    mimic_cfg_t cfg;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tiny_cfg(&cfg, bad[i].set);
        stage_t *s = NULL;
        mimic_set_quiet(1);
        int rc = stage_new(&s, &cfg, B);
        mimic_set_quiet(0);
        if (i == 0) { /* the brief's example map has 4 groups: the default weights fit */
            T_CHECK(rc == 0 && s);
            stage_destroy(&s);
            continue;
        }
        const char *why = mimic_last_error();
        int ok = rc == MIMIC_EINVAL && !s && strstr(why, bad[i].key) && !strchr(why, '\n');
        printf("%-40s -> %s %s\n", bad[i].set, why, ok ? "ok" : "FAIL");
        T_CHECK(ok);
        stage_destroy(&s);
    }
}

/* deploy/fmnist.ini's [pipeline.crscont]: kept while pipeline.stages does not name it (the
 * main job's mae,mocov3,eval still loads), applied when it does, and its Fashion-MNIST map
 * builds a 4-group classifier; a misspelt objective's section is still refused. */
static void test_fmnist_ini(void) {
    static mimic_cfg_t base, st;
    char name[64];
    config_defaults(&base);
    T_CHECK(config_load(&base, testutil_src_path("deploy/fmnist.ini")) == 0);
    for (int i = 0; i < config_pipeline_count(&base); i++)
        T_CHECK(config_pipeline_stage(&base, i, &st, name, sizeof name) == 0);
    T_CHECK(config_override(&base, "pipeline.stages=mae,crscont,eval") == 0);
    T_CHECK(config_pipeline_stage(&base, 1, &st, name, sizeof name) == 0);
    T_CHECK(st.train.stage == STAGE_KIND_CRSCONT && st.train.steps == 60 &&
            strcmp(st.crscont.coarse_map, "0,1,0,1,0,2,0,2,3,2") == 0);
    stage_t *s = NULL;
    T_CHECK(stage_new(&s, &st, 0) == 0 && s);
    int hw = s ? params_find(s->p, "head.weight") : -1;
    T_CHECK(hw >= 0 && s->p->t[hw].shape[0] == 4);
    stage_destroy(&s);
    T_CHECK(config_override(&base, "pipeline.crscnt.train.steps=1") == 0);
    mimic_set_quiet(1);
    T_CHECK(config_pipeline_stage(&base, 1, &st, name, sizeof name) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "crscnt") != NULL);
    mimic_set_quiet(0);
}

/* ------------------------------------------------------------------ parity (dump) */

static void test_parity_dump(void) {
    const char *golden = testutil_src_path("tests/golden/crscont_expect.safetensors");
    char gpath[4200], out[4200], cmd[16384];
    snprintf(gpath, sizeof gpath, "%s", golden);
    snprintf(out, sizeof out, "%.4000s/crscont-grads.safetensors", testutil_tmpdir());
    st_file_t *e = NULL, *g = NULL;
    if (st_open(&e, gpath)) {
        printf("cannot open %s FAIL\n", gpath);
        testutil_failures++;
        return;
    }
    T_CHECK(strcmp(st_meta(e, "format"), "mimicps-golden-crscont") == 0 &&
            strcmp(st_meta(e, "version"), "1") == 0);
    const char *keys[] = {"img_size", "in_chans",  "patch_size", "embed_dim",
                          "depth",    "num_heads", "mlp_ratio"};
    char flags[2048] = "";
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        size_t len = strlen(flags);
        snprintf(flags + len, sizeof flags - len, " --model.%s=%s", keys[i], st_meta(e, keys[i]));
    }
    const char *ck[] = {"coarse_map", "weights", "tau", "base_tau", "w_ce", "w_simclr", "proj_dim"};
    for (size_t i = 0; i < sizeof ck / sizeof ck[0]; i++) {
        char mk[64];
        snprintf(mk, sizeof mk, "crscont.%s", ck[i]);
        size_t len = strlen(flags);
        snprintf(flags + len, sizeof flags - len, " --%s=%s", mk, st_meta(e, mk));
    }
    const char *build = getenv("MIMIC_BUILD_DIR");
    snprintf(cmd, sizeof cmd,
             "%s/worker/mimic-worker --dump-grads --train.precision=fp32 --train.stage=crscont "
             "--weights %s --batch %s --out %s%s",
             build ? build : ".", gpath, gpath, out, flags);
    int rc = system(cmd);
    T_CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
    if (st_open(&g, out)) {
        st_close(&e);
        testutil_failures++;
        return;
    }
    int n = 0;
    for (int i = 0; i < st_count(e); i++) {
        const st_tensor_t *want = st_at(e, i);
        if (strcmp(want->name, "loss") != 0 && strncmp(want->name, "grad.", 5) != 0) continue;
        const st_tensor_t *got = st_find(g, want->name);
        if (!got || got->numel != want->numel) {
            printf("%-48s missing in the dump FAIL\n", want->name);
            testutil_failures++;
            continue;
        }
        testutil_close(want->name, got->data, want->data, (size_t)want->numel, PARITY_TOL);
        n++;
    }
    printf("crscont parity: %d tensors compared (loss + gradients)\n", n);
    T_CHECK(n >= 20 && st_count(g) == n); /* every gradient the dump wrote has a golden twin */
    st_close(&e);
    st_close(&g);
}

/* ------------------------------------------------------------------ cluster smoke */

#define MAXARGS 48
static char bin[3][1024];
enum { SCHED, SERVER, WORKER };

static int spawn(int role, const char *flags, const char *log) {
    char *argv[MAXARGS], store[16384];
    int n = 0;
    size_t used = 0;
    argv[n++] = bin[role];
    char line[16384];
    snprintf(line, sizeof line, "%s", flags);
    for (char *tok = strtok(line, " "); tok && n < MAXARGS - 1; tok = strtok(NULL, " ")) {
        size_t len = strlen(tok) + 1;
        memcpy(store + used, tok, len);
        argv[n++] = store + used;
        used += len;
    }
    argv[n] = NULL;
    return testutil_spawn(argv, log);
}

/* A labelled stage (CRS-CONT; MIMIC, whose servers build its table with batch 0 too) on
 * 1 server x 2 workers: `stage` flags, its classifier's rows. */
static void cluster_smoke(const char *name, const char *stage, int head_rows) {
    const char *build = getenv("MIMIC_BUILD_DIR");
    snprintf(bin[SCHED], sizeof bin[0], "%s/scheduler/mimic-scheduler", build ? build : ".");
    snprintf(bin[SERVER], sizeof bin[0], "%s/pserver/mimic-pserver", build ? build : ".");
    snprintf(bin[WORKER], sizeof bin[0], "%s/worker/mimic-worker", build ? build : ".");
    char data[1100], labels[1100], dir[1100], log[1200], ep[1200], flags[8192], more[10000];
    snprintf(data, sizeof data, "%.1000s/img.idx", testutil_tmpdir());
    snprintf(labels, sizeof labels, "%.1000s/lab.idx", testutil_tmpdir());
    snprintf(dir, sizeof dir, "%.1000s/cluster-%s", testutil_tmpdir(), name);
    snprintf(log, sizeof log, "%s-log.txt", dir);
    snprintf(ep, sizeof ep, "%s-endpoint", dir);
    T_CHECK(testutil_write_idx(data, labels, 64, 16, 5) == 0); /* labels i % 10 */
    snprintf(flags, sizeof flags,
             "--model.img_size=16 --model.patch_size=4 --model.embed_dim=32 --model.depth=2 "
             "--model.num_heads=2 --data.kind=idx --data.path=%s --data.labels=%s "
             "--data.mean=0.5 --data.std=0.25 --train.warmup_steps=2 --train.lr=2e-3 "
             "--train.log_every=1 --train.out_dir=%s --cluster.heartbeat_ms=100 "
             "--cluster.dead_ms=1500 --train.precision=fp32 --train.batch_size=8 "
             "--train.steps=4 --data.scale_min=0.5 --cluster.servers=1 --cluster.workers=2 %s",
             data, labels, dir, stage);
    snprintf(more, sizeof more, "%s --endpoint-file %s", flags, ep);
    int sched = spawn(SCHED, more, log), pids[3] = {0, 0, 0};
    if (!testutil_wait_file(ep, "tcp://", 10000)) {
        printf("%s cluster: the scheduler wrote no endpoint FAIL\n", name);
        testutil_failures++;
        testutil_kill(sched);
        return;
    }
    char *addr = testutil_slurp(ep);
    addr[strcspn(addr, "\n")] = 0;
    snprintf(more, sizeof more, "%s --scheduler %s", flags, addr);
    free(addr);
    for (int i = 0; i < 3; i++)
        pids[i] = spawn(i == 0 ? SERVER : WORKER, more, log);
    int ok = testutil_wait_pid(sched, 120000) == 0;
    for (int i = 0; i < 3; i++)
        ok &= testutil_wait_pid(pids[i], 10000) == 0;
    testutil_kill(sched);
    for (int i = 0; i < 3; i++)
        testutil_kill(pids[i]);
    char *text = testutil_slurp(log);
    int nan = text && (strstr(text, "nan") || strstr(text, "non-finite"));
    if (!ok || nan) printf("---- %s ----\n%s\n----\n", log, text ? text : "");
    /* the cluster's progress lines: the stage ran its steps with a loss */
    int lines = 0;
    for (const char *q = text; q && (q = strstr(q, "loss")); q++, lines++)
        if (lines < 6) printf("  %.*s\n", (int)strcspn(q, "\n"), q);
    T_CHECK(lines >= 2);
    free(text);
    /* the model the cluster wrote: the stage's table, trained away from its init */
    char model[1300];
    snprintf(model, sizeof model, "%s/model.safetensors", dir);
    st_file_t *f = NULL;
    int trained = 0;
    if (ok && st_open(&f, model) == 0) {
        const st_tensor_t *h = st_find(f, "head.weight");
        T_CHECK(h && h->ndim == 2 && h->shape[0] == head_rows && h->shape[1] == 32);
        /* the classifier starts at ~2e-5: after 4 steps at lr 2e-3 it has moved */
        double mx = 0;
        for (int64_t i = 0; h && i < h->numel; i++)
            mx = fmax(mx, fabs(((const float *)h->data)[i]));
        trained = mx > 1e-4;
        printf("%s cluster: head.weight max |w| %.2e after 4 steps\n", name, mx);
        st_close(&f);
    }
    printf("%s cluster (1 server x 2 workers, 4 steps): %s\n", name,
           ok && !nan && trained ? "ok" : "FAIL");
    T_CHECK(ok && !nan && trained);
}

int main(void) {
    test_pieces();
    test_stage_fd();
    test_bad_keys();
    test_fmnist_ini();
    test_parity_dump();
    /* deploy/fmnist.ini's map: tops, bottoms, footwear, bags */
    cluster_smoke("crscont",
                  "--train.stage=crscont --crscont.proj_dim=16 "
                  "--crscont.coarse_map=0,1,0,1,0,2,0,2,3,2 --crscont.weights=0.5,1,1,1",
                  4);
    cluster_smoke("mimic", "--train.stage=mimic --mimic.proj_dim=16 --mimic.num_classes=10", 10);
    return testutil_summary("test_crscont");
}
