// TIMEOUT: 300
/* test_train — the standalone trainer end to end, through the mimic-worker binary:
 * the loss falls on a small synthetic set, a run stopped and resumed from its
 * checkpoint equals the uninterrupted run bit for bit, SIGTERM checkpoints and exits
 * cleanly, and bad input (corrupt data file, unknown flag, bad value) fails with a
 * one-line error naming it. */
#include "common.h"
#include "config.h"
#include "mm.h"
#include "safetensors.h"
#include "stage.h"
#include "testutil.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char worker[4096], data[4096], labels[4096];

static void write_idx(void) {
    snprintf(data, sizeof data, "%.4000s/img.idx", testutil_tmpdir());
    snprintf(labels, sizeof labels, "%.4000s/lab.idx", testutil_tmpdir());
    T_CHECK(testutil_write_idx(data, labels, 96, 16, 3) == 0);
}

/* The trainer's command line for the small test model on the IDX set. */
static void train_args(char *buf, size_t cap, const char *out_dir, const char *extra) {
    snprintf(buf, cap,
             "%s --standalone --model.img_size=16 --model.patch_size=4 --model.embed_dim=32 "
             "--model.depth=2 --model.num_heads=2 --mae.decoder_embed_dim=16 "
             "--mae.decoder_depth=1 --mae.decoder_num_heads=2 --data.kind=idx --data.path=%s "
             "--data.labels=%s --data.mean=0.5 --data.std=0.25 --train.batch_size=16 "
             "--train.warmup_steps=5 --train.lr=2e-3 --train.log_every=5 --train.out_dir=%s %s",
             worker, data, labels, out_dir, extra);
}

/* Starts the trainer with train_args in the background (buf holds the arguments while
 * it runs); its pid. */
static int spawn_train(char *buf, size_t cap, const char *out_dir, const char *extra,
                       const char *log) {
    train_args(buf, cap, out_dir, extra);
    char *argv[96];
    int argc = 0;
    for (char *t = strtok(buf, " "); t && argc < 95; t = strtok(NULL, " "))
        argv[argc++] = t;
    argv[argc] = NULL;
    return testutil_spawn(argv, log);
}

static int run(const char *out_dir, const char *extra, const char *log) {
    char args[32768], cmd[36000];
    train_args(args, sizeof args, out_dir, extra);
    snprintf(cmd, sizeof cmd, "%s > %s 2>&1", args, log);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc((size_t)n + 1, 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    return s;
}

/* loss of the first and last "step" records of a metrics file */
static void first_last_loss(const char *path, double *first, double *last) {
    char *s = slurp(path);
    *first = *last = NAN;
    for (char *p = s; p && (p = strstr(p, "\"loss\":")); p += 7) {
        double v = atof(p + 7);
        if (isnan(*first)) *first = v;
        *last = v;
    }
    free(s);
}

static void compare_ckpts(const char *a, const char *b) {
    st_file_t *fa = NULL, *fb = NULL;
    T_CHECK(st_open(&fa, a) == 0);
    T_CHECK(st_open(&fb, b) == 0);
    if (!fa || !fb) goto out;
    T_CHECK(st_count(fa) == st_count(fb));
    int same = 1;
    for (int i = 0; i < st_count(fa); i++) {
        const st_tensor_t *ta = st_at(fa, i), *tb = st_find(fb, ta->name);
        if (!tb || tb->nbytes != ta->nbytes || memcmp(ta->data, tb->data, ta->nbytes) != 0) {
            fprintf(stderr, "  tensor %s differs after resume\n", ta->name);
            same = 0;
        }
    }
    T_CHECK(same);
    T_CHECK(strcmp(st_meta(fa, "step"), st_meta(fb, "step")) == 0);
    T_CHECK(strcmp(st_meta(fa, "cursor"), st_meta(fb, "cursor")) == 0);
    printf("resume: every tensor and the data cursor equal the uninterrupted run: %s\n",
           same ? "ok" : "FAIL");
out:
    st_close(&fa);
    st_close(&fb);
}

/* Unreadable data never spins: an ImageFolder and a label list whose every file is
 * garbage end with exit 2 and a message naming the data set; a set with some readable
 * images trains to the end and counts the others, unless more than data.max_bad_run
 * come in a row. */
static void test_bad_data(void) {
    const char *tmp = testutil_tmpdir();
    char root[1200], path[1600], list[1400], extra[4096], out[1400], log[1400];
    snprintf(root, sizeof root, "%.1000s/allbad", tmp);
    snprintf(list, sizeof list, "%.1000s/allbad.txt", tmp);
    snprintf(out, sizeof out, "%.1000s/allbad-out", tmp);
    snprintf(log, sizeof log, "%.1000s/allbad-log.txt", tmp);
    mkdir(root, 0755);
    FILE *lf = fopen(list, "w");
    unsigned long long seed = 3;
    for (int c = 0; c < 2; c++) {
        snprintf(path, sizeof path, "%s/c%d", root, c);
        mkdir(path, 0755);
        for (int i = 0; i < 6; i++) {
            unsigned char junk[300];
            for (size_t k = 0; k < sizeof junk; k++)
                junk[k] = (unsigned char)((seed = seed * 6364136223846793005ULL + 1) >> 56);
            snprintf(path, sizeof path, "%s/c%d/%d.jpg", root, c, i);
            FILE *f = fopen(path, "wb");
            T_CHECK(f && fwrite(junk, 1, sizeof junk, f) == sizeof junk);
            if (f) fclose(f);
            if (lf) fprintf(lf, "c%d/%d.jpg %d\n", c, i, c);
        }
    }
    if (lf) fclose(lf);
    const char *common = "--model.in_chans=3 --data.mean=0.5,0.5,0.5 --data.std=0.25,0.25,0.25 "
                         "--train.batch_size=4 --train.steps=20 --train.ckpt_every=0";
    snprintf(extra, sizeof extra, "%s --data.kind=imagefolder --data.path=%s", common, root);
    T_CHECK(run(out, extra, log) == 2);
    char *txt = slurp(log);
    T_CHECK(txt && strstr(txt, "none of its 12 samples is readable") && strstr(txt, root));
    free(txt);
    snprintf(extra, sizeof extra, "%s --data.kind=labellist --data.path=%s --data.labels=%s",
             common, root, list);
    T_CHECK(run(out, extra, log) == 2);
    txt = slurp(log);
    T_CHECK(txt && strstr(txt, "none of its 12 samples is readable"));
    free(txt);
    /* 6 readable images beside the 12 bad ones: training ends, the bad ones counted */
    snprintf(path, sizeof path, "%s/c2", root);
    mkdir(path, 0755);
    for (int i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "%s/c2/%d.jpg", root, i);
        T_CHECK(testutil_write_jpeg(path, 24, 24, (unsigned long long)(500 + i)) == 0);
    }
    snprintf(extra, sizeof extra, "%s --data.kind=imagefolder --data.path=%s", common, root);
    T_CHECK(run(out, extra, log) == 0);
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    txt = slurp(path);
    T_CHECK(txt && strstr(txt, "\"event\":\"end\"") && strstr(txt, "\"bad_images\":12"));
    free(txt);
    /* the same set with at most 3 unreadable in a row allowed: a batch of 4 bad stops it */
    snprintf(extra, sizeof extra, "%s --data.kind=imagefolder --data.path=%s --data.max_bad_run=3",
             common, root);
    T_CHECK(run(out, extra, log) == 2);
    txt = slurp(log);
    T_CHECK(txt && strstr(txt, "in a row unreadable (data.max_bad_run 3"));
    free(txt);
    /* with no limit (max_bad_run 0) and one readable image in 201 the loop mostly skips
     * unreadable batches; SIGTERM still ends it promptly, after the step under way */
    char spin[1300], line[32768];
    snprintf(spin, sizeof spin, "%.1000s/spin", tmp);
    mkdir(spin, 0755);
    for (int c = 0; c < 2; c++) {
        snprintf(path, sizeof path, "%s/c%d", spin, c);
        mkdir(path, 0755);
    }
    snprintf(path, sizeof path, "%s/c0/good.jpg", spin);
    T_CHECK(testutil_write_jpeg(path, 24, 24, 77) == 0);
    for (int i = 0; i < 200; i++) {
        snprintf(path, sizeof path, "%s/c1/%03d.jpg", spin, i);
        FILE *f = fopen(path, "wb");
        T_CHECK(f && fputs("not a jpeg", f) >= 0);
        if (f) fclose(f);
    }
    snprintf(extra, sizeof extra,
             "--model.in_chans=3 --data.mean=0.5,0.5,0.5 --data.std=0.25,0.25,0.25 "
             "--train.batch_size=4 --train.steps=1000000 --train.ckpt_every=0 "
             "--data.kind=imagefolder --data.path=%s --data.max_bad_run=0",
             spin);
    int pid = spawn_train(line, sizeof line, out, extra, log);
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    T_CHECK(pid > 0 && testutil_wait_file(path, "\"event\":\"start\"", 30000));
    usleep(500000); /* into the loop */
    kill(pid, SIGTERM);
    double t0 = mimic_now();
    int st = testutil_wait_pid(pid, 30000);
    if (st < 0) testutil_kill(pid);
    txt = slurp(log);
    printf("SIGTERM to a loader skipping unreadable batches: exit %d after %.2f s\n", st,
           mimic_now() - t0);
    T_CHECK(st == 0 && txt && strstr(txt, "stopped at step"));
    free(txt);
}

/* Standalone MAE runs on the other formats: an RGB ImageFolder of JPEGs, the same
 * files as a RAF-DB-style label list, and a FER2013 CSV (48x48 -> 16x16). */
static void test_formats(void) {
    const char *tmp = testutil_tmpdir();
    char root[1200], path[1600], list[1400], csv[1400], extra[4096], out[1400], log[1400];
    snprintf(root, sizeof root, "%.1000s/folder", tmp);
    snprintf(list, sizeof list, "%.1000s/list.txt", tmp);
    snprintf(csv, sizeof csv, "%.1000s/fer.csv", tmp);
    snprintf(log, sizeof log, "%.1000s/formats-log.txt", tmp);
    mkdir(root, 0755);
    FILE *lf = fopen(list, "w");
    const char *classes[2] = {"angry", "happy"};
    for (int c = 0; c < 2; c++) {
        snprintf(path, sizeof path, "%s/%s", root, classes[c]);
        mkdir(path, 0755);
        for (int i = 0; i < 12; i++) {
            snprintf(path, sizeof path, "%s/%s/%02d.jpg", root, classes[c], i);
            T_CHECK(testutil_write_jpeg(path, 40 + 8 * (i % 3), 36, (unsigned long long)(c * 100 + i)) == 0);
            fprintf(lf, "%s/%02d.jpg %d\n", classes[c], i, c + 1);
        }
    }
    fclose(lf);
    FILE *cf = fopen(csv, "w");
    fprintf(cf, "emotion,pixels,Usage\n");
    unsigned long long seed = 21;
    for (int r = 0; r < 40; r++) {
        float c[2];
        testutil_fill(c, 2, 0.0f, 1.0f, &seed);
        fprintf(cf, "%d,", r % 7);
        for (int i = 0; i < 48 * 48; i++)
            fprintf(
                cf, "%s%d", i ? " " : "",
                (int)(127 + 120 * sin(c[0] * 6 + (i % 48) * 0.2) * cos(c[1] * 6 + (i / 48) * 0.2)));
        fprintf(cf, ",%s\n", r < 32 ? "Training" : "PublicTest");
    }
    fclose(cf);
    const char *rgb = "--model.in_chans=3 --data.mean=0.5,0.5,0.5 --data.std=0.25,0.25,0.25";
    struct {
        const char *name;
        char flags[3000];
    } runs[3];
    runs[0].name = "imagefolder";
    snprintf(runs[0].flags, sizeof runs[0].flags,
             "--data.kind=imagefolder --data.path=%s --data.labels= %s", root, rgb);
    runs[1].name = "labellist";
    snprintf(runs[1].flags, sizeof runs[1].flags,
             "--data.kind=labellist --data.path=%s --data.labels=%s %s", root, list, rgb);
    runs[2].name = "csv";
    snprintf(runs[2].flags, sizeof runs[2].flags,
             "--data.kind=csv --data.path=%s --data.labels= --data.usage=Training", csv);
    for (int k = 0; k < 3; k++) {
        snprintf(out, sizeof out, "%.1000s/%s", tmp, runs[k].name);
        snprintf(extra, sizeof extra,
                 "%s --train.batch_size=8 --train.steps=6 --train.ckpt_every=0", runs[k].flags);
        int rc = run(out, extra, log);
        snprintf(path, sizeof path, "%s/metrics.jsonl", out);
        char *m = slurp(path);
        int ok = rc == 0 && m && strstr(m, "\"step\":6,") && strstr(m, "\"bad_images\":0");
        printf("standalone MAE on %-12s %s\n", runs[k].name, ok ? "ok" : "FAIL");
        if (!ok) {
            char *l = slurp(log);
            fprintf(stderr, "%s\n", l ? l : "(no log)");
            free(l);
        }
        T_CHECK(ok);
        free(m);
    }
}

/* SIGTERM mid-run: the trainer finishes its step, writes the checkpoint, exits 0, and
 * --train.resume=auto continues from there. */
static void test_sigterm(void) {
    const char *tmp = testutil_tmpdir();
    char dir[1200], log[1300], metrics[1300], line[32768];
    snprintf(dir, sizeof dir, "%.1000s/term", tmp);
    snprintf(log, sizeof log, "%s-log.txt", dir);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    int pid = spawn_train(line, sizeof line, dir, "--train.ckpt_every=0 --train.steps=1000000",
                          log);
    T_CHECK(pid > 0);
    T_CHECK(testutil_wait_file(metrics, "\"step\":10,", 60000));
    kill(pid, SIGTERM);
    int st = testutil_wait_pid(pid, 60000);
    if (st < 0) testutil_kill(pid);
    char *txt = slurp(log);
    const char *at = txt ? strstr(txt, "stopped at step ") : NULL;
    long stopped = at ? atol(at + 16) : -1;
    printf("SIGTERM: exit %d, stopped at step %ld\n", st, stopped);
    T_CHECK(st == 0 && stopped >= 10 && stopped < 1000000);
    free(txt);
    char extra[256];
    snprintf(extra, sizeof extra, "--train.steps=%ld --train.ckpt_every=0 --train.resume=auto",
             stopped + 3);
    T_CHECK(run(dir, extra, log) == 0);
    txt = slurp(log);
    char want[64];
    snprintf(want, sizeof want, "step %ld", stopped);
    T_CHECK(txt && strstr(txt, "resumed from") && strstr(txt, want));
    free(txt);
}

/* Runs `flags` to the end in out_dir <tmp>/<tag>-a, and again in <tag>-b stopped after
 * 5 steps and resumed; the two checkpoints must be equal. Their paths go to pa, pb. */
static void resume_equal(const char *tag, const char *flags, char *pa, char *pb, size_t cap) {
    const char *tmp = testutil_tmpdir();
    char a[1200], b[1200], log[1300], extra[6000];
    snprintf(a, sizeof a, "%.1000s/%s-a", tmp, tag);
    snprintf(b, sizeof b, "%.1000s/%s-b", tmp, tag);
    snprintf(log, sizeof log, "%.1000s/%s.txt", tmp, tag);
    T_CHECK(run(a, flags, log) == 0);
    snprintf(extra, sizeof extra, "%s --train.stop_after=5", flags);
    T_CHECK(run(b, extra, log) == 0);
    snprintf(extra, sizeof extra, "%s --train.resume=auto", flags);
    T_CHECK(run(b, extra, log) == 0);
    snprintf(pa, cap, "%s/checkpoint.safetensors", a);
    snprintf(pb, cap, "%s/checkpoint.safetensors", b);
    compare_ckpts(pa, pb);
}

/* MoCo v2 standalone: the negative queue is part of the checkpoint and resumes exactly
 * (stop at 5, resume to 12 equals 12 in one go); 12 steps of 8 keys wrap a queue of 40. */
static void test_mocov2_resume(void) {
    char pa[1300], pb[1300];
    resume_equal("moco2",
                 "--train.stage=mocov2 --contrastive.mlp_dim=32 --contrastive.dim=16 "
                 "--contrastive.queue_size=40 --data.scale_min=0.08 --train.batch_size=8 "
                 "--train.steps=12 --train.ckpt_every=0",
                 pa, pb, sizeof pa);
    st_file_t *f = NULL;
    T_CHECK(st_open(&f, pa) == 0);
    const st_tensor_t *q = f ? st_find(f, "queue") : NULL;
    T_CHECK(q && q->ndim == 2 && q->shape[0] == 40 && q->shape[1] == 16);
    T_CHECK(f && st_meta(f, "queue_keys") && strcmp(st_meta(f, "queue_keys"), "96") == 0);
    T_CHECK(f && st_find(f, "momentum.projector.2.weight") && !st_find(f, "predictor.0.weight"));
    st_close(&f);
}

/* MoCo v3 standalone: the momentum copy and the two-view batches resume exactly too
 * (stop at 5, resume to 12 equals 12 in one go, "momentum.*" included). */
static void test_mocov3_resume(void) {
    const char *tmp = testutil_tmpdir();
    char a[1200], log[1300], pa[1300], pb[1300];
    const char *moco = "--train.stage=mocov3 --contrastive.mlp_dim=32 --contrastive.dim=16 "
                       "--data.scale_min=0.08 --train.batch_size=8 --train.steps=12 "
                       "--train.ckpt_every=0";
    char extra[6000];
    resume_equal("moco", moco, pa, pb, sizeof pa);
    snprintf(a, sizeof a, "%.1000s/moco-a", tmp);
    snprintf(log, sizeof log, "%.1000s/moco.txt", tmp);
    st_file_t *f = NULL;
    T_CHECK(st_open(&f, pa) == 0);
    T_CHECK(f && st_find(f, "momentum.blocks.0.attn.qkv.weight") &&
            st_find(f, "projector.0.weight") && st_find(f, "predictor.3.weight"));
    st_close(&f);

    /* the gradient dump serves this stage too: loss and every gradient of a batch of
     * two views, the same bits on two runs */
    char batch[1300], g1[1300], g2[1300];
    snprintf(batch, sizeof batch, "%.1000s/moco-batch.safetensors", tmp);
    float imgs[4 * 2 * 16 * 16];
    unsigned long long seed = 5;
    testutil_fill(imgs, sizeof imgs / sizeof imgs[0], -1.0f, 1.0f, &seed);
    int64_t shape[4] = {8, 1, 16, 16};
    st_writer_t *w = st_writer_new();
    T_CHECK(w && st_writer_add(w, "images", "F32", shape, 4, imgs) == 0 &&
            st_writer_save(w, batch) == 0);
    st_writer_destroy(&w);
    for (int k = 0; k < 2; k++) {
        snprintf(extra, sizeof extra, "%s --dump-grads --weights %s --batch %s --out %s/moco-g%d.st",
                 moco, pa, batch, tmp, k);
        T_CHECK(run(a, extra, log) == 0);
    }
    snprintf(g1, sizeof g1, "%.1000s/moco-g0.st", tmp);
    snprintf(g2, sizeof g2, "%.1000s/moco-g1.st", tmp);
    st_file_t *d1 = NULL, *d2 = NULL;
    T_CHECK(st_open(&d1, g1) == 0 && st_open(&d2, g2) == 0);
    const st_tensor_t *l = d1 ? st_find(d1, "loss") : NULL;
    T_CHECK(l && isfinite(((const float *)l->data)[0]) && ((const float *)l->data)[0] > 0);
    const st_tensor_t *ga = d1 ? st_find(d1, "grad.predictor.0.weight") : NULL,
                      *gb = d2 ? st_find(d2, "grad.predictor.0.weight") : NULL,
                      *ge = d1 ? st_find(d1, "grad.blocks.1.mlp.fc2.weight") : NULL;
    T_CHECK(ga && gb && ge && ga->nbytes == gb->nbytes &&
            memcmp(ga->data, gb->data, ga->nbytes) == 0);
    double norm = 0;
    for (int64_t i = 0; ge && i < ge->numel; i++)
        norm += fabs(((const float *)ge->data)[i]);
    T_CHECK(norm > 0);
    printf("MoCo v3 gradient dump: loss %.4f, encoder gradient |g|_1 %.3g\n",
           l ? ((const float *)l->data)[0] : NAN, norm);
    st_close(&d1);
    st_close(&d2);
}

/* DenseCL standalone: resumes bit for bit, its queue rows are [global | pooled dense]
 * (2 x contrastive.dim); the gradient dump of the stage equals the same stage computed
 * in this process from the same checkpoint and batch (loss and every gradient). */
static void test_densecl_resume_dump(void) {
    const char *tmp = testutil_tmpdir();
    char pa[1300], pb[1300], a[1200], log[1300], extra[6000], batch[1300], gout[1300];
    const char *flags = "--train.stage=densecl --contrastive.mlp_dim=32 --contrastive.dim=16 "
                        "--contrastive.queue_size=40 --densecl.lambda=0.5 --data.scale_min=0.08 "
                        "--train.batch_size=8 --train.steps=12 --train.ckpt_every=0";
    resume_equal("dense", flags, pa, pb, sizeof pa);
    st_file_t *f = NULL;
    T_CHECK(st_open(&f, pa) == 0);
    const st_tensor_t *q = f ? st_find(f, "queue") : NULL;
    T_CHECK(q && q->ndim == 2 && q->shape[0] == 40 && q->shape[1] == 32);
    T_CHECK(f && st_meta(f, "queue_keys") && strcmp(st_meta(f, "queue_keys"), "96") == 0);
    T_CHECK(f && st_find(f, "dense_projector.2.weight") &&
            st_find(f, "momentum.dense_projector.0.weight"));
    st_close(&f);

    snprintf(a, sizeof a, "%.1000s/dense-a", tmp);
    snprintf(log, sizeof log, "%.1000s/dense.txt", tmp);
    snprintf(batch, sizeof batch, "%.1000s/dense-batch.safetensors", tmp);
    snprintf(gout, sizeof gout, "%.1000s/dense-g.st", tmp);
    enum { NB = 3 };
    static float imgs[NB * 2 * 16 * 16];
    unsigned long long seed = 6;
    testutil_fill(imgs, sizeof imgs / sizeof imgs[0], -1.0f, 1.0f, &seed);
    int64_t shape[4] = {NB * 2, 1, 16, 16};
    st_writer_t *w = st_writer_new();
    T_CHECK(w && st_writer_add(w, "images", "F32", shape, 4, imgs) == 0 &&
            st_writer_save(w, batch) == 0);
    st_writer_destroy(&w);
    snprintf(extra, sizeof extra,
             "%s --train.precision=fp32 --dump-grads --weights %s --batch %s --out %s", flags, pa,
             batch, gout);
    T_CHECK(run(a, extra, log) == 0);
    /* the same in-process */
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    const char *set[] = {"model.img_size=16",         "model.patch_size=4",
                         "model.embed_dim=32",        "model.depth=2",
                         "model.num_heads=2",         "train.stage=densecl",
                         "contrastive.mlp_dim=32",    "contrastive.dim=16",
                         "contrastive.queue_size=40", "densecl.lambda=0.5"};
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
        T_CHECK(config_override(&cfg, set[i]) == 0);
    mm_set_precision(MM_FP32);
    stage_t *s = NULL;
    long step;
    uint64_t ep, cur;
    T_CHECK(stage_new(&s, &cfg, NB) == 0);
    st_file_t *g = NULL;
    T_CHECK(st_open(&g, gout) == 0);
    if (s && g && s->ops->load(s, pa, NULL, NULL, &step, &ep, &cur) == 0) {
        T_CHECK(s->queue_keys == 96);
        stage_input_t in = {imgs, NULL, NULL};
        float loss = (float)stage_compute(s, &in, NB, NULL, NULL);
        const st_tensor_t *l = st_find(g, "loss");
        T_CHECK(l && fabsf(((const float *)l->data)[0] - loss) <= 1e-5f * fabsf(loss));
        double worst = 0;
        char name[PARAMS_NAME_MAX + 8];
        for (int i = 0; i < s->p->n; i++) {
            const params_tensor_t *t = &s->p->t[i];
            snprintf(name, sizeof name, "grad.%s", t->name);
            const st_tensor_t *gt = st_find(g, name);
            T_CHECK(gt && (size_t)gt->numel == t->numel);
            if (gt && (size_t)gt->numel == t->numel)
                worst = fmax(worst, testutil_rel_err(gt->data, params_g(s->p, i), t->numel));
        }
        T_CHECK(worst < 1e-5);
        printf("DenseCL gradient dump: loss %.5f, every gradient within %.2g of the in-process "
               "step\n", loss, worst);
    } else {
        T_CHECK(0);
    }
    st_close(&g);
    stage_destroy(&s);
    /* its online view masked by the adversarial policy: the scores are in the checkpoint
     * and the run resumes bit for bit */
    char masked[1200];
    snprintf(masked, sizeof masked, "%s --contrastive.mask_ratio=0.5 --mae.mask_policy=adversarial",
             flags);
    resume_equal("densemask", masked, pa, pb, sizeof pa);
    T_CHECK(st_open(&f, pa) == 0);
    const st_tensor_t *sc = f ? st_find(f, "mask_score") : NULL;
    int seen = 0;
    for (int64_t i = 0; sc && i < sc->numel; i++)
        seen += ((const float *)sc->data)[i] > 0.0f;
    T_CHECK(sc && sc->numel == 16 && seen == 16);
    st_close(&f);
}

/* MAE with adversarial masking through the trainer: resumes bit for bit (the scores are
 * in the checkpoint, "mask_score"), and trains other weights than random masking. */
static void test_adversarial_resume(void) {
    char pa[1300], pb[1300], pr[1300], pr2[1300];
    resume_equal("adv", "--mae.mask_policy=adversarial --mae.mask_temp=0.3 --train.steps=12 "
                 "--train.ckpt_every=0", pa, pb, sizeof pa);
    resume_equal("rnd", "--train.steps=12 --train.ckpt_every=0", pr, pr2, sizeof pr);
    st_file_t *fa = NULL, *fr = NULL;
    T_CHECK(st_open(&fa, pa) == 0 && st_open(&fr, pr) == 0);
    const st_tensor_t *sc = fa ? st_find(fa, "mask_score") : NULL;
    T_CHECK(sc && sc->numel == 16 && fr && !st_find(fr, "mask_score"));
    const st_tensor_t *wa = fa ? st_find(fa, "decoder_pred.weight") : NULL,
                      *wr = fr ? st_find(fr, "decoder_pred.weight") : NULL;
    T_CHECK(wa && wr && wa->nbytes == wr->nbytes && memcmp(wa->data, wr->data, wa->nbytes) != 0);
    double lo = INFINITY, hi = 0;
    for (int64_t i = 0; sc && i < sc->numel; i++) {
        lo = fmin(lo, ((const float *)sc->data)[i]);
        hi = fmax(hi, ((const float *)sc->data)[i]);
    }
    T_CHECK(lo > 0 && hi > lo);
    printf("adversarial masking: per-position scores after 12 steps in [%.3f, %.3f]\n", lo, hi);
    st_close(&fa);
    st_close(&fr);

    /* the gradient dump draws the mask as the next training step would (the checkpoint's
     * scores through the policy): its loss is the stage's in-process, and its mask is not
     * the random policy's on the same noise */
    const char *tmp = testutil_tmpdir();
    char batch[1300], g[2][1300], dir[1200], log[1300], extra[6000];
    snprintf(batch, sizeof batch, "%.1000s/adv-batch.safetensors", tmp);
    snprintf(dir, sizeof dir, "%.1000s/adv-dump", tmp);
    snprintf(log, sizeof log, "%.1000s/adv-dump.txt", tmp);
    enum { NB = 8 };
    static float imgs[NB * 16 * 16], noise[NB * 16];
    unsigned long long seed = 9;
    testutil_fill(imgs, NB * 16 * 16, -1.0f, 1.0f, &seed);
    testutil_fill(noise, NB * 16, 0.0f, 1.0f, &seed);
    int64_t ishape[4] = {NB, 1, 16, 16}, nshape[2] = {NB, 16};
    st_writer_t *w = st_writer_new();
    T_CHECK(w && st_writer_add(w, "images", "F32", ishape, 4, imgs) == 0 &&
            st_writer_add(w, "noise", "F32", nshape, 2, noise) == 0 && st_writer_save(w, batch) == 0);
    st_writer_destroy(&w);
    for (int k = 0; k < 2; k++) {
        snprintf(g[k], sizeof g[k], "%.1000s/adv-g%d.st", tmp, k);
        snprintf(extra, sizeof extra,
                 "%s --train.precision=fp32 --dump-grads --weights %s --batch %s --out %s",
                 k ? "" : "--mae.mask_policy=adversarial --mae.mask_temp=0.3", pa, batch, g[k]);
        T_CHECK(run(dir, extra, log) == 0);
    }
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    const char *set[] = {"model.img_size=16",       "model.patch_size=4",    "model.embed_dim=32",
                         "model.depth=2",           "model.num_heads=2",     "mae.decoder_embed_dim=16",
                         "mae.decoder_depth=1",     "mae.decoder_num_heads=2",
                         "mae.mask_policy=adversarial", "mae.mask_temp=0.3"};
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
        T_CHECK(config_override(&cfg, set[i]) == 0);
    mm_set_precision(MM_FP32);
    stage_t *s = NULL;
    long step;
    uint64_t ep, cur;
    st_file_t *d[2] = {NULL, NULL};
    T_CHECK(stage_new(&s, &cfg, NB) == 0 && st_open(&d[0], g[0]) == 0 && st_open(&d[1], g[1]) == 0);
    if (s && d[0] && d[1] && s->ops->load(s, pa, NULL, NULL, &step, &ep, &cur) == 0) {
        stage_input_t in = {imgs, noise, NULL};
        float loss = (float)s->ops->forward(s, &in, NB);
        const st_tensor_t *l = st_find(d[0], "loss"), *m0 = st_find(d[0], "mask"),
                          *m1 = st_find(d[1], "mask");
        T_CHECK(l && fabsf(((const float *)l->data)[0] - loss) <= 1e-6f * fabsf(loss));
        T_CHECK(m0 && m1 && m0->nbytes == m1->nbytes && memcmp(m0->data, m1->data, m0->nbytes) != 0);
        printf("adversarial MAE gradient dump: loss %.6f (in-process %.6f), mask unlike random's\n",
               l ? ((const float *)l->data)[0] : NAN, loss);
    } else {
        T_CHECK(0);
    }
    st_close(&d[0]);
    st_close(&d[1]);
    stage_destroy(&s);
}

int main(void) {
    const char *build = getenv("MIMIC_BUILD_DIR");
    snprintf(worker, sizeof worker, "%s/worker/mimic-worker", build ? build : ".");
    write_idx();
    test_sigterm();
    const char *tmp = testutil_tmpdir();
    char dir_a[4200], dir_b[4200], log[4300], path_a[4300], path_b[4300];
    snprintf(dir_a, sizeof dir_a, "%s/a", tmp);
    snprintf(dir_b, sizeof dir_b, "%s/b", tmp);
    snprintf(log, sizeof log, "%s/log.txt", tmp);

    /* uninterrupted: 40 steps (the data set is 6 batches, so epochs roll over) */
    T_CHECK(run(dir_a, "--train.steps=40 --train.ckpt_every=0", log) == 0);
    snprintf(path_a, sizeof path_a, "%s/metrics.jsonl", dir_a);
    double first, last;
    first_last_loss(path_a, &first, &last);
    printf("loss: first window %.4f, last window %.4f\n", first, last);
    T_CHECK(last < 0.7 * first);
    char *txt = slurp(log);
    T_CHECK(txt && strstr(txt, "img/s") && strstr(txt, "ETA"));
    free(txt);

    /* the same run in two invocations: stop at 17, resume to 40 */
    T_CHECK(run(dir_b, "--train.steps=40 --train.ckpt_every=0 --train.stop_after=17", log) == 0);
    T_CHECK(run(dir_b, "--train.steps=40 --train.ckpt_every=0 --train.resume=auto", log) == 0);
    txt = slurp(log);
    T_CHECK(txt && strstr(txt, "resumed from") && strstr(txt, "step 17"));
    free(txt);
    snprintf(path_a, sizeof path_a, "%s/checkpoint.safetensors", dir_a);
    snprintf(path_b, sizeof path_b, "%s/checkpoint.safetensors", dir_b);
    compare_ckpts(path_a, path_b);

    /* bad input: a truncated IDX file, an unknown key, a bad value, a bad checkpoint */
    char bad[4300];
    snprintf(bad, sizeof bad, "%s/trunc.idx", tmp);
    FILE *f = fopen(bad, "wb");
    unsigned char hdr[16] = {0, 0, 8, 3, 0, 0, 0, 96, 0, 0, 0, 16, 0, 0, 0, 16};
    fwrite(hdr, 1, 16, f);
    fwrite(hdr, 1, 16, f);
    fclose(f);
    char extra[4400];
    snprintf(extra, sizeof extra, "--data.path=%s", bad);
    T_CHECK(run(dir_a, extra, log) == 2);
    txt = slurp(log);
    T_CHECK(txt && strstr(txt, "trunc.idx"));
    free(txt);
    T_CHECK(run(dir_a, "--train.bogus=1", log) == 2);
    txt = slurp(log);
    T_CHECK(txt && strstr(txt, "train.bogus"));
    free(txt);
    T_CHECK(run(dir_a, "--train.batch_size=abc", log) == 2);
    txt = slurp(log);
    T_CHECK(txt && strstr(txt, "train.batch_size"));
    free(txt);
    snprintf(extra, sizeof extra, "--train.resume=%s", bad);
    T_CHECK(run(dir_a, extra, log) == 2);
    txt = slurp(log);
    T_CHECK(txt && strstr(txt, "trunc.idx"));
    free(txt);
    test_formats();
    test_bad_data();
    test_mocov3_resume();
    test_mocov2_resume();
    test_densecl_resume_dump();
    test_adversarial_resume();
    return testutil_summary("test_train");
}
