// TIMEOUT: 300
/* test_byol_cluster — BYOL and ContraWarping under the parameter servers, on loopback
 * (scheduler, 2 servers, 2 workers; BSP), a few steps of a tiny ViT:
 *  - every process exits 0 and every step's loss (worker-<rank>.jsonl) is finite;
 *  - the target network is the servers' EMA: the momentum copy the worker kept in
 *    lock-step ("momentum.<name>" in model.safetensors) equals the servers' "ema" shards
 *    bit for bit, and differs from the weights (it lags them, so it was not just copied);
 *  - the gradient dump serves both stages: --dump-grads on the cluster's model and a
 *    batch of 2 (BYOL) or 4 (ContraWarping: 2 global + 2 warped) views per sample writes
 *    a finite loss and every gradient, the same bits on two runs, and ContraWarping's
 *    loss depends on the warped views (they are in the dumped loss);
 *  - the standalone trainer resumes ContraWarping exactly: stop at step 3, resume to 6
 *    equals 6 in one go (weights, target "momentum.*", optimiser moments, cursor), so
 *    the warps of a resumed epoch are the ones it would have drawn. */
#include "common.h"
#include "config.h"
#include "safetensors.h"
#include "stage.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char bin[3][1024], data[1024], labels[1024];
enum { SCHED, SERVER, WORKER };
enum { STEPS = 4, S = 2, W = 2 };

#define MODEL                                                                                      \
    "--model.img_size=16 --model.patch_size=4 --model.embed_dim=32 --model.depth=2 "               \
    "--model.num_heads=2 --contrastive.mlp_dim=32 --contrastive.dim=16 "
#define MAXARGS 48

static int spawn(int role, const char *log, const char *flags) {
    char *argv[MAXARGS], line[8192];
    int n = 0;
    argv[n++] = bin[role];
    snprintf(line, sizeof line, "%s", flags);
    for (char *tok = strtok(line, " "); tok && n < MAXARGS - 1; tok = strtok(NULL, " "))
        argv[n++] = tok; /* testutil_spawn copies nothing: line lives until exec */
    argv[n] = NULL;
    return testutil_spawn(argv, log);
}

/* Runs the cluster for `stage`; returns 1 when every process exited 0. dir gets its
 * train.out_dir. */
static int run_cluster(const char *stage, char *dir, size_t cap) {
    char log[1300], ep_file[1300], flags[6000], pf[8000];
    snprintf(dir, cap, "%.900s/%s", testutil_tmpdir(), stage);
    snprintf(log, sizeof log, "%s-log.txt", dir);
    snprintf(ep_file, sizeof ep_file, "%s-endpoint", dir);
    snprintf(flags, sizeof flags,
             MODEL "--train.stage=%s --data.kind=idx --data.path=%s --data.labels=%s "
                   "--data.mean=0.5 --data.std=0.25 --data.scale_min=0.08 --train.warmup_steps=1 "
                   "--train.lr=2e-3 --train.log_every=1 --train.batch_size=8 --train.steps=%d "
                   "--train.precision=fp32 --train.out_dir=%s --cluster.servers=%d "
                   "--cluster.workers=%d --cluster.ckpt_every=%d --cluster.heartbeat_ms=100 "
                   "--cluster.dead_ms=3000 --contrastive.momentum=0.9",
             stage, data, labels, STEPS, dir, S, W, STEPS);
    snprintf(pf, sizeof pf, "%s --endpoint-file %s", flags, ep_file);
    int pids[1 + S + W] = {0}, ok = 1;
    pids[0] = spawn(SCHED, log, pf);
    if (!testutil_wait_file(ep_file, "tcp://", 10000)) {
        fprintf(stderr, "%s: the scheduler wrote no endpoint file\n", stage);
        testutil_kill(pids[0]);
        return 0;
    }
    char *ep = testutil_slurp(ep_file);
    ep[strcspn(ep, "\n")] = 0;
    snprintf(pf, sizeof pf, "%s --scheduler %s", flags, ep);
    free(ep);
    for (int i = 1; i < 1 + S + W; i++)
        pids[i] = spawn(i <= S ? SERVER : WORKER, log, pf);
    for (int i = 0; i < 1 + S + W; i++) {
        int st = testutil_wait_pid(pids[i], i == 0 ? 120000 : 15000);
        if (st != 0) {
            fprintf(stderr, "%s: process %d exit status %d\n", stage, i, st);
            ok = 0;
        }
        if (st < 0) testutil_kill(pids[i]); /* still running: ours to stop */
    }
    if (!ok) {
        char *text = testutil_slurp(log);
        if (text) fprintf(stderr, "---- %s ----\n%s\n----\n", log, text);
        free(text);
    }
    return ok;
}

/* Every step record of both workers has a finite loss; returns how many there were. */
static int finite_losses(const char *dir, double *first, double *last) {
    int count = 0, bad = 0;
    for (int r = 0; r < W; r++) {
        char path[1300];
        snprintf(path, sizeof path, "%s/worker-%d.jsonl", dir, r);
        char *text = testutil_slurp(path);
        for (char *p = text ? strstr(text, "\"loss\":") : NULL; p; p = strstr(p + 1, "\"loss\":")) {
            double l = strtod(p + 7, NULL);
            if (!isfinite(l)) bad++;
            if (r == 0 && count == 0) *first = l;
            if (r == 0) *last = l;
            count++;
        }
        free(text);
    }
    return bad ? -1 : count;
}

static void tiny_cfg(mimic_cfg_t *cfg, const char *stage) {
    config_defaults(cfg);
    char st[64];
    snprintf(st, sizeof st, "train.stage=%s", stage);
    const char *set[] = {
        "model.img_size=16", "model.patch_size=4",     "model.embed_dim=32", "model.depth=2",
        "model.num_heads=2", "contrastive.mlp_dim=32", "contrastive.dim=16", st};
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
        T_CHECK(config_override(cfg, set[i]) == 0);
}

/* The worker's momentum copy against the servers' EMA shards of the last step. */
static void check_ema(const char *stage, const char *dir) {
    mimic_cfg_t *cfg = malloc(sizeof *cfg);
    tiny_cfg(cfg, stage);
    stage_t *s = NULL;
    char a[1300], b[1400], name[160];
    snprintf(a, sizeof a, "%s/model.safetensors", dir);
    st_file_t *fw = NULL;
    T_CHECK(stage_new(&s, cfg, 0) == 0 && st_open(&fw, a) == 0);
    float *ema = s ? calloc(s->p->total, sizeof(float)) : NULL;
    int shards_ok = ema != NULL;
    for (int r = 0; r < S && shards_ok; r++) {
        st_file_t *fs = NULL;
        snprintf(b, sizeof b, "%s/ckpt/server-%d-step-%d.safetensors", dir, r, STEPS);
        const st_tensor_t *e = st_open(&fs, b) == 0 ? st_find(fs, "ema") : NULL;
        const char *lo = fs ? st_meta(fs, "lo") : NULL;
        shards_ok = e && lo && (size_t)atol(lo) + (size_t)e->numel <= s->p->total;
        if (shards_ok) memcpy(ema + atol(lo), e->data, (size_t)e->numel * sizeof(float));
        st_close(&fs);
    }
    T_CHECK(shards_ok);
    int same = shards_ok && fw, moved = 0;
    for (int i = 0; same && i < s->p->n; i++) {
        const params_tensor_t *t = &s->p->t[i];
        snprintf(name, sizeof name, "momentum.%s", t->name);
        const st_tensor_t *m = st_find(fw, name), *w = st_find(fw, t->name);
        same = m && w && (size_t)m->numel == t->numel &&
               memcmp(m->data, ema + t->offset, t->numel * 4) == 0;
        moved |= same && memcmp(m->data, w->data, t->numel * 4) != 0;
    }
    printf("%s cluster (%d servers x %d workers): the target == servers' EMA bit for bit %s, "
           "lags the weights %s\n",
           stage, S, W, same ? "yes" : "NO", moved ? "yes" : "NO");
    T_CHECK(same && moved);
    st_close(&fw);
    free(ema);
    free(cfg);
    stage_destroy(&s);
}

/* --dump-grads of the stage on the cluster's model: finite loss, deterministic; for
 * contrawarp the warped views enter the loss. Returns the loss. */
static float dump(const char *stage, const char *dir, int views, int tag, float warp_shift) {
    const int B = 4, isz = 16 * 16;
    char batch[1300], out[1300], log[1300], cmd[8192];
    snprintf(batch, sizeof batch, "%s/batch-%d.safetensors", dir, tag);
    snprintf(out, sizeof out, "%s/grads-%d.safetensors", dir, tag);
    snprintf(log, sizeof log, "%s/dump-%d.txt", dir, tag);
    float *imgs = malloc((size_t)B * views * isz * sizeof(float));
    unsigned long long seed = 5;
    testutil_fill(imgs, (size_t)B * views * isz, -1.0f, 1.0f, &seed);
    for (int i = 0; i < B && views == 4; i++) /* warped views: near their sources */
        for (int v = 0; v < 2; v++) {
            float *w = imgs + ((size_t)i * 4 + 2 + v) * isz;
            memcpy(w, imgs + ((size_t)i * 4 + v) * isz, isz * sizeof(float));
            for (int k = 40; k < 90; k++)
                w[k] += warp_shift;
        }
    int64_t shape[4] = {B * views, 1, 16, 16};
    st_writer_t *wr = st_writer_new();
    T_CHECK(wr && st_writer_add(wr, "images", "F32", shape, 4, imgs) == 0 &&
            st_writer_save(wr, batch) == 0);
    st_writer_destroy(&wr);
    free(imgs);
    snprintf(cmd, sizeof cmd,
             "%s " MODEL "--train.stage=%s --train.precision=fp32 --dump-grads --weights "
             "%s/model.safetensors --batch %s --out %s > %s 2>&1",
             bin[WORKER], stage, dir, batch, out, log);
    T_CHECK(system(cmd) == 0);
    st_file_t *f = NULL;
    T_CHECK(st_open(&f, out) == 0);
    const st_tensor_t *l = f ? st_find(f, "loss") : NULL;
    float loss = l ? ((const float *)l->data)[0] : NAN;
    T_CHECK(isfinite(loss) && loss > 0);
    const st_tensor_t *g = f ? st_find(f, "grad.blocks.1.mlp.fc2.weight") : NULL,
                      *gp = f ? st_find(f, "grad.predictor.3.bias") : NULL;
    double norm = 0;
    for (int64_t i = 0; g && i < g->numel; i++)
        norm += fabs(((const float *)g->data)[i]);
    T_CHECK(g && gp && norm > 0);
    st_close(&f);
    return loss;
}

static void test_stage(const char *stage, int views) {
    char dir[1000];
    if (!run_cluster(stage, dir, sizeof dir)) {
        T_CHECK(!"cluster run");
        return;
    }
    double first = NAN, last = NAN;
    int n = finite_losses(dir, &first, &last);
    printf("%s cluster: %d step records, every loss finite %s (worker 0: %.4f -> %.4f)\n", stage, n,
           n == W * STEPS ? "yes" : "NO", first, last);
    T_CHECK(n == W * STEPS);
    check_ema(stage, dir);
    float l1 = dump(stage, dir, views, 1, 0.5f), l2 = dump(stage, dir, views, 2, 0.5f);
    printf("%s gradient dump: loss %.6f, again %.6f\n", stage, l1, l2);
    T_CHECK(l1 == l2);
    if (views == 4) {
        float l3 = dump(stage, dir, views, 3, 1.5f);
        printf("%s gradient dump with other warped views: loss %.6f\n", stage, l3);
        T_CHECK(l3 != l1);
    }
}

static int run_solo(const char *dir, const char *extra) {
    char flags[4096], log[1300];
    snprintf(log, sizeof log, "%s-log.txt", dir);
    snprintf(flags, sizeof flags,
             "--standalone " MODEL "--train.stage=contrawarp --data.kind=idx --data.path=%s "
             "--data.labels=%s --data.mean=0.5 --data.std=0.25 --train.warmup_steps=1 "
             "--train.lr=2e-3 --train.batch_size=8 --train.steps=6 --train.ckpt_every=0 "
             "--train.precision=fp32 --train.out_dir=%s %s",
             data, labels, dir, extra);
    return testutil_wait_pid(spawn(WORKER, log, flags), 60000);
}

static void test_resume(void) {
    char a[1100], b[1100], pa[1200], pb[1200];
    snprintf(a, sizeof a, "%.1000s/solo-a", testutil_tmpdir());
    snprintf(b, sizeof b, "%.1000s/solo-b", testutil_tmpdir());
    T_CHECK(run_solo(a, "") == 0);
    T_CHECK(run_solo(b, "--train.stop_after=3") == 0);
    T_CHECK(run_solo(b, "--train.resume=auto") == 0);
    snprintf(pa, sizeof pa, "%s/checkpoint.safetensors", a);
    snprintf(pb, sizeof pb, "%s/checkpoint.safetensors", b);
    st_file_t *fa = NULL, *fb = NULL;
    T_CHECK(st_open(&fa, pa) == 0 && st_open(&fb, pb) == 0);
    int same = fa && fb && st_count(fa) == st_count(fb), count = 0, momentum = 0;
    for (int i = 0; same && i < st_count(fa); i++) {
        const st_tensor_t *ta = st_at(fa, i), *tb = st_find(fb, ta->name);
        same = tb && tb->nbytes == ta->nbytes && memcmp(ta->data, tb->data, ta->nbytes) == 0;
        if (!same) fprintf(stderr, "  tensor %s differs after resume\n", ta->name);
        momentum += strncmp(ta->name, "momentum.", 9) == 0;
        count++;
    }
    same = same && strcmp(st_meta(fa, "step"), "6") == 0 && strcmp(st_meta(fb, "step"), "6") == 0 &&
           strcmp(st_meta(fa, "cursor"), st_meta(fb, "cursor")) == 0;
    printf("contrawarp standalone: stop at 3 + resume to 6 == 6 in one go (%d tensors, %d of "
           "them the target): %s\n",
           count, momentum, same ? "ok" : "FAIL");
    T_CHECK(same && momentum > 10);
    st_close(&fa);
    st_close(&fb);
}

int main(void) {
    const char *build = getenv("MIMIC_BUILD_DIR");
    snprintf(bin[SCHED], sizeof bin[0], "%s/scheduler/mimic-scheduler", build ? build : ".");
    snprintf(bin[SERVER], sizeof bin[0], "%s/pserver/mimic-pserver", build ? build : ".");
    snprintf(bin[WORKER], sizeof bin[0], "%s/worker/mimic-worker", build ? build : ".");
    snprintf(data, sizeof data, "%.1000s/img.idx", testutil_tmpdir());
    snprintf(labels, sizeof labels, "%.1000s/lab.idx", testutil_tmpdir());
    T_CHECK(testutil_write_idx(data, labels, 64, 16, 5) == 0);
    test_stage("byol", 2);
    test_stage("contrawarp", 4);
    test_resume();
    return testutil_summary("test_byol_cluster");
}
