// TIMEOUT: 300
/* test_mpirun — the cluster launch: one mpirun in MPMD form (1 scheduler, 1 server,
 * 2 workers, --oversubscribe) on a tiny model; MPI only hands out the scheduler's
 * address. Asserts a clean exit, the trained model file, both workers' metrics and the
 * scheduler's accounting. Then preemption: SIGUSR1 to mpirun mid-run (what
 * deploy/cluster.sh turns a SIGTERM into) checkpoints the step the cluster stops at;
 * a resume from it ends with every tensor equal to the uninterrupted run's. And a lost
 * message: the server drops its first CKPT_DONE, the last step's (a test hook), without
 * which the run cannot end; the scheduler sends the CKPT again and the run checkpoints
 * and finishes. And a server SIGKILLed mid-run under deploy/supervise.sh: the cluster is
 * started again from its last checkpoint and the final model equals the uninterrupted
 * run's bit for bit. And a poison chunk: an ImageFolder whose first chunk of epoch 0 is
 * four garbage files trains to the end, the chunk skipped and accounted. And checkpoints
 * that cannot be silently wrong: only cluster.keep_ckpts steps stay on disk; a shard
 * damaged in place makes the resume fall back to the previous step; a fresh start over
 * an existing checkpoint directory is refused. */
#include "order.h"
#include "safetensors.h"
#include "testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_preempt(const char *b, const char *dir, const char *data, const char *labels);
static int same_files(const char *a, const char *c, const char *what);
static void test_lost_ckpt_done(const char *b, const char *dir, const char *data,
                                const char *labels);
static void test_server_kill(const char *b, const char *dir, const char *data, const char *labels);
static void test_poison_chunk(const char *b, const char *dir);
static void test_damaged_ckpt(const char *b, const char *dir, const char *data,
                              const char *labels);

int main(void) {
    const char *b = getenv("MIMIC_BUILD_DIR");
    const char *dir = testutil_tmpdir();
    char data[1200], labels[1200];
    snprintf(data, sizeof data, "%s/img.idx", dir);
    snprintf(labels, sizeof labels, "%s/lab.idx", dir);
    T_CHECK(testutil_write_idx(data, labels, 64, 16, 9) == 0);
    char flags[4096], cmd[16384];
    snprintf(flags, sizeof flags,
             "--model.img_size=16 --model.patch_size=4 --model.embed_dim=32 --model.depth=2 "
             "--model.num_heads=2 --mae.decoder_embed_dim=16 --mae.decoder_depth=1 "
             "--mae.decoder_num_heads=2 --data.path=%s --data.labels=%s --train.batch_size=8 "
             "--train.steps=8 --train.log_every=2 --train.out_dir=%s/out "
             "--cluster.heartbeat_ms=100",
             data, labels, dir);
    const char *root = geteuid() == 0 ? "--allow-run-as-root" : "";
    /* Open MPI's MPI_Init/MPI_Finalize leave allocations in dlopen'ed components that
     * LeakSanitizer reports as "<unknown module>" (so no suppression file can name
     * them). Leak checking of our own code in these binaries is done by test_cluster,
     * which runs them without MPI; here ASan/UBSan errors stay fatal. */
    const char *env = "env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
                      "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1";
    snprintf(cmd, sizeof cmd,
             "timeout 150 mpirun %s --oversubscribe --bind-to none "
             "-np 1 %s %s/scheduler/mimic-scheduler %s : -np 1 %s %s/pserver/mimic-pserver %s : "
             "-np 2 %s %s/worker/mimic-worker %s > %s/log.txt 2>&1",
             root, env, b, flags, env, b, flags, env, b, flags, dir);
    int rc = system(cmd);
    int ok = WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
    T_CHECK(ok);
    char path[1400];
    snprintf(path, sizeof path, "%s/log.txt", dir);
    char *log = testutil_slurp(path);
    if (!ok && log) fprintf(stderr, "%s\n", log);
    T_CHECK(log && strstr(log, "training finished at step 8"));
    T_CHECK(log && strstr(log, "[cluster] step 8/8"));
    free(log);
    snprintf(path, sizeof path, "%s/out/model.safetensors", dir);
    st_file_t *m = NULL;
    T_CHECK(st_open(&m, path) == 0);
    if (m) {
        T_CHECK(st_find(m, "blocks.1.attn.qkv.weight") != NULL);
        T_CHECK(strcmp(st_meta(m, "step"), "8") == 0);
    }
    st_close(&m);
    for (int w = 0; w < 2; w++) {
        snprintf(path, sizeof path, "%s/out/worker-%d.jsonl", dir, w);
        char *s = testutil_slurp(path);
        T_CHECK(s && strstr(s, "\"forward_s\"") && strstr(s, "\"push_pull_s\""));
        free(s);
    }
    snprintf(path, sizeof path, "%s/out/scheduler.jsonl", dir);
    char *s = testutil_slurp(path);
    T_CHECK(s && strstr(s, "\"covered\":64,\"duplicates\":0"));
    free(s);
    test_preempt(b, dir, data, labels);
    test_lost_ckpt_done(b, dir, data, labels);
    test_server_kill(b, dir, data, labels);
    test_poison_chunk(b, dir);
    test_damaged_ckpt(b, dir, data, labels);
    return testutil_summary("test_mpirun");
}

/* The mpirun command of a 1 x 2 cluster training 60 steps into dir/<name> (extra flags
 * appended), its output to dir/<name>.txt. */
static void supervised_cmd(char *cmd, size_t cap, const char *launcher, const char *b,
                           const char *dir, const char *data, const char *labels, const char *name,
                           const char *extra) {
    char flags[4096];
    snprintf(flags, sizeof flags,
             "--model.img_size=16 --model.patch_size=4 --model.embed_dim=32 --model.depth=2 "
             "--model.num_heads=2 --mae.decoder_embed_dim=16 --mae.decoder_depth=1 "
             "--mae.decoder_num_heads=2 --data.path=%s --data.labels=%s --train.batch_size=8 "
             "--train.steps=60 --train.log_every=2 --train.out_dir=%s/%s "
             "--cluster.heartbeat_ms=100 --cluster.ckpt_every=1000 %s",
             data, labels, dir, name, extra);
    const char *root = geteuid() == 0 ? "--allow-run-as-root" : "";
    const char *env = "env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
                      "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1";
    snprintf(cmd, cap,
             "exec %s mpirun %s --oversubscribe --bind-to none "
             "-np 1 %s %s/scheduler/mimic-scheduler %s : -np 1 %s %s/pserver/mimic-pserver %s : "
             "-np 2 %s %s/worker/mimic-worker %s > %s/%s.txt 2>&1",
             launcher, root, env, b, flags, env, b, flags, env, b, flags, dir, name);
}

static void cluster_cmd(char *cmd, size_t cap, const char *b, const char *dir, const char *data,
                        const char *labels, const char *name, const char *extra) {
    supervised_cmd(cmd, cap, "", b, dir, data, labels, name, extra);
}

/* The step dir/<name>/ckpt/latest names, -1 when there is none. */
static int latest_step(const char *dir, const char *name) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s/ckpt/latest", dir, name);
    char *txt = testutil_slurp(path);
    int at = txt ? atoi(txt) : -1;
    free(txt);
    return at;
}

/* Runs cmd in a session of its own, so that a timeout kills every rank mpirun started
 * (a SIGKILLed mpirun leaves them running). */
static int run_sh(const char *cmd, int timeout_ms, int preempt_at_step, const char *log) {
    char *argv[] = {"/usr/bin/setsid", "/bin/sh", "-c", (char *)cmd, NULL};
    int pid = testutil_spawn(argv, "/dev/null");
    if (pid < 0) return -1;
    if (preempt_at_step > 0) {
        char want[64];
        snprintf(want, sizeof want, "step %d/60", preempt_at_step);
        T_CHECK(testutil_wait_file(log, want, timeout_ms));
        kill(pid, SIGUSR1);
    }
    int rc = testutil_wait_pid(pid, timeout_ms);
    if (rc < 0) {
        kill(-pid, SIGKILL); /* the session's process group: mpirun and its ranks */
        testutil_kill(pid);
    }
    return rc;
}

static void test_preempt(const char *b, const char *dir, const char *data, const char *labels) {
    char cmd[16384], log[1300], path[1400], a[1400], c[1400];
    cluster_cmd(cmd, sizeof cmd, b, dir, data, labels, "straight", "");
    snprintf(log, sizeof log, "%s/straight.txt", dir);
    T_CHECK(run_sh(cmd, 120000, 0, log) == 0);
    cluster_cmd(cmd, sizeof cmd, b, dir, data, labels, "preempted", "");
    snprintf(log, sizeof log, "%s/preempted.txt", dir);
    int rc = run_sh(cmd, 120000, 10, log);
    char *txt = testutil_slurp(log);
    T_CHECK(rc == 128 + SIGUSR1 && txt && strstr(txt, "preempted by signal 10: stopped at step"));
    free(txt);
    int at = latest_step(dir, "preempted");
    printf("preempted: SIGUSR1 to mpirun after step 10, checkpoint of step %d of 60\n", at);
    T_CHECK(at >= 10 && at < 60);
    snprintf(path, sizeof path, "%s/preempted/model.safetensors", dir);
    T_CHECK(access(path, F_OK) != 0); /* no final model from a stopped run */
    cluster_cmd(cmd, sizeof cmd, b, dir, data, labels, "preempted", "--train.resume=auto");
    T_CHECK(run_sh(cmd, 120000, 0, log) == 0);
    txt = testutil_slurp(log);
    char want[64];
    snprintf(want, sizeof want, "resuming from checkpoint step %d", at);
    T_CHECK(txt && strstr(txt, want));
    free(txt);
    snprintf(a, sizeof a, "%s/straight/model.safetensors", dir);
    snprintf(c, sizeof c, "%s/preempted/model.safetensors", dir);
    int same = same_files(a, c, "after the preemption and resume");
    printf("preempted at %d, resumed: every tensor equals the uninterrupted run bit for bit: %s\n",
           at, same ? "ok" : "FAIL");
    T_CHECK(same);
}

static void test_lost_ckpt_done(const char *b, const char *dir, const char *data,
                                const char *labels) {
    char cmd[16384], full[16500], log[1300];
    cluster_cmd(cmd, sizeof cmd, b, dir, data, labels, "lost", "--train.steps=12");
    snprintf(full, sizeof full, "MIMIC_TEST_DROP_CKPT_DONE=1 %s", cmd);
    snprintf(log, sizeof log, "%s/lost.txt", dir);
    T_CHECK(run_sh(full, 120000, 0, log) == 0);
    char *txt = testutil_slurp(log);
    T_CHECK(txt && strstr(txt, "CKPT_DONE for step 12 dropped (test hook"));
    T_CHECK(txt && strstr(txt, "without answering checkpoint 12; CKPT sent again"));
    T_CHECK(txt && strstr(txt, "checkpoint of step 12 complete") &&
            strstr(txt, "training finished at step 12"));
    free(txt);
    T_CHECK(latest_step(dir, "lost") == 12);
    printf("lost CKPT_DONE of the last step: CKPT resent, answered again, the run finished\n");
}

/* Every tensor of two safetensors files equal, bit for bit. */
static int same_files(const char *a, const char *c, const char *what) {
    st_file_t *fa = NULL, *fc = NULL;
    T_CHECK(st_open(&fa, a) == 0 && st_open(&fc, c) == 0);
    int same = fa && fc && st_count(fa) == st_count(fc) && st_count(fa) > 10;
    for (int i = 0; same && i < st_count(fa); i++) {
        const st_tensor_t *x = st_at(fa, i), *y = st_find(fc, x->name);
        same = y && x->nbytes == y->nbytes && memcmp(x->data, y->data, x->nbytes) == 0;
        if (!same) fprintf(stderr, "  %s differs (%s)\n", x->name, what);
    }
    st_close(&fa);
    st_close(&fc);
    return same;
}

static void test_server_kill(const char *b, const char *dir, const char *data, const char *labels) {
    char cmd[16384], launcher[1200], log[1300], find[2800], a[1400], c[1400];
    const char *src = getenv("MIMIC_SOURCE_DIR");
    snprintf(launcher, sizeof launcher, "%s/deploy/supervise.sh --restarts 2 --",
             src ? src : ".");
    supervised_cmd(cmd, sizeof cmd, launcher, b, dir, data, labels, "killed",
                   "--cluster.ckpt_every=10");
    snprintf(log, sizeof log, "%s/killed.txt", dir);
    char *argv[] = {"/usr/bin/setsid", "/bin/sh", "-c", cmd, NULL};
    int pid = testutil_spawn(argv, "/dev/null");
    T_CHECK(pid > 0 && testutil_wait_file(log, "step 26/60", 120000));
    /* the server of this run (its out_dir is in its arguments), SIGKILLed */
    snprintf(find, sizeof find, "pgrep -f '^%s/pserver/mimic-pserver .*out_dir=%s/killed '", b,
             dir);
    FILE *p = popen(find, "r");
    int spid = 0;
    if (p && fscanf(p, "%d", &spid) != 1) spid = 0;
    if (p) pclose(p);
    T_CHECK(spid > 0);
    if (spid > 0) kill(spid, SIGKILL);
    int rc = pid > 0 ? testutil_wait_pid(pid, 180000) : -1;
    if (rc < 0 && pid > 0) {
        kill(-pid, SIGKILL);
        testutil_kill(pid);
    }
    T_CHECK(rc == 0);
    char *txt = testutil_slurp(log);
    T_CHECK(txt && strstr(txt, "supervise: the cluster exited") &&
            strstr(txt, "resuming from checkpoint step") &&
            strstr(txt, "training finished at step 60"));
    free(txt);
    snprintf(a, sizeof a, "%s/straight/model.safetensors", dir);
    snprintf(c, sizeof c, "%s/killed/model.safetensors", dir);
    int same = same_files(a, c, "after a server was killed");
    printf("server SIGKILLed after step 26: restarted from the last checkpoint, final model "
           "equals the uninterrupted run bit for bit: %s\n",
           same ? "ok" : "FAIL");
    T_CHECK(same);
}

static void test_poison_chunk(const char *b, const char *dir) {
    enum { PER_CLASS = 16, N = 2 * PER_CLASS, CHUNK = 4, SEED = 7 };
    char root[1200], path[1400], cmd[16384], log[1300];
    snprintf(root, sizeof root, "%s/poison", dir);
    mkdir(root, 0755);
    /* sample i of the folder is class i / 16, file i % 16 (sorted names); the garbage
     * goes exactly where epoch 0's first chunk is */
    uint32_t perm[N];
    order_permutation(perm, N, SEED, 0);
    int bad[N] = {0};
    for (int k = 0; k < CHUNK; k++)
        bad[perm[k]] = 1;
    for (int c = 0; c < 2; c++) {
        snprintf(path, sizeof path, "%s/c%d", root, c);
        mkdir(path, 0755);
        for (int i = 0; i < PER_CLASS; i++) {
            snprintf(path, sizeof path, "%s/c%d/%02d.jpg", root, c, i);
            if (bad[c * PER_CLASS + i]) {
                FILE *f = fopen(path, "wb");
                T_CHECK(f && fputs("not a jpeg at all", f) >= 0);
                if (f) fclose(f);
            } else {
                T_CHECK(testutil_write_jpeg(path, 20, 20, (unsigned long long)(c * 100 + i)) == 0);
            }
        }
    }
    const char *root_flag = geteuid() == 0 ? "--allow-run-as-root" : "";
    char flags[4096];
    snprintf(flags, sizeof flags,
             "--model.img_size=16 --model.in_chans=3 --model.patch_size=4 --model.embed_dim=32 "
             "--model.depth=1 --model.num_heads=2 --mae.decoder_embed_dim=16 "
             "--mae.decoder_depth=1 --mae.decoder_num_heads=2 --data.kind=imagefolder "
             "--data.path=%s --data.mean=0.5,0.5,0.5 --data.std=0.25,0.25,0.25 "
             "--train.batch_size=%d --train.seed=%d --train.steps=12 --train.log_every=2 "
             "--train.out_dir=%s/poison-out --cluster.heartbeat_ms=100",
             root, CHUNK, SEED, dir);
    const char *env = "env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
                      "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1";
    snprintf(log, sizeof log, "%s/poison.txt", dir);
    snprintf(cmd, sizeof cmd,
             "exec mpirun %s --oversubscribe --bind-to none "
             "-np 1 %s %s/scheduler/mimic-scheduler %s : -np 1 %s %s/pserver/mimic-pserver %s : "
             "-np 2 %s %s/worker/mimic-worker %s > %s 2>&1",
             root_flag, env, b, flags, env, b, flags, env, b, flags, log);
    T_CHECK(run_sh(cmd, 120000, 0, log) == 0);
    char *txt = testutil_slurp(log);
    T_CHECK(txt && strstr(txt, "chunk 0/0 had no readable sample") &&
            strstr(txt, "training finished at step 12"));
    free(txt);
    snprintf(path, sizeof path, "%s/poison-out/scheduler.jsonl", dir);
    txt = testutil_slurp(path);
    T_CHECK(txt && strstr(txt, "\"event\":\"chunk_unreadable\"") &&
            strstr(txt, "\"epoch\":0,\"chunk\":0,"));
    T_CHECK(txt && strstr(txt, "\"epoch\":0,\"samples\":32,\"covered\":32,\"duplicates\":0"));
    free(txt);
    printf("poison chunk (epoch 0, chunk 0: 4 garbage files) skipped and accounted; training "
           "finished\n");
}

static void test_damaged_ckpt(const char *b, const char *dir, const char *data,
                              const char *labels) {
    char cmd[16384], log[1300], path[1400];
    const char *ck = "--train.steps=30 --cluster.ckpt_every=10 --cluster.keep_ckpts=2";
    cluster_cmd(cmd, sizeof cmd, b, dir, data, labels, "damaged", ck);
    snprintf(log, sizeof log, "%s/damaged.txt", dir);
    T_CHECK(run_sh(cmd, 120000, 0, log) == 0);
    /* steps 20 and 30 kept, 10 deleted */
    int kept[3];
    for (int k = 1; k <= 3; k++) {
        snprintf(path, sizeof path, "%s/damaged/ckpt/server-0-step-%d.safetensors", dir, 10 * k);
        kept[k - 1] = access(path, F_OK) == 0;
    }
    T_CHECK(!kept[0] && kept[1] && kept[2]);
    /* 64 bytes of step 30's shard overwritten in place (same size) */
    snprintf(path, sizeof path, "%s/damaged/ckpt/server-0-step-30.safetensors", dir);
    FILE *f = fopen(path, "r+b");
    T_CHECK(f && fseek(f, -4096, SEEK_END) == 0);
    for (int i = 0; f && i < 64; i++)
        fputc(0xff, f);
    if (f) fclose(f);
    /* a fresh start over it is refused (exit 2), naming the way out */
    cluster_cmd(cmd, sizeof cmd, b, dir, data, labels, "damaged", "--train.steps=40");
    T_CHECK(run_sh(cmd, 120000, 0, log) == 2);
    char *txt = testutil_slurp(log);
    T_CHECK(txt && strstr(txt, "exists and train.resume is empty"));
    free(txt);
    /* the resume detects the damage and continues from step 20 */
    cluster_cmd(cmd, sizeof cmd, b, dir, data, labels, "damaged",
                "--train.steps=40 --train.resume=auto");
    T_CHECK(run_sh(cmd, 120000, 0, log) == 0);
    txt = testutil_slurp(log);
    T_CHECK(txt && strstr(txt, "checkpoint 30 is damaged") && strstr(txt, "the file is corrupt") &&
            strstr(txt, "resuming from checkpoint 20 instead of 30") &&
            strstr(txt, "training finished at step 40"));
    free(txt);
    T_CHECK(latest_step(dir, "damaged") == 40);
    printf("checkpoints: 2 kept; step 30's shard damaged in place -> resumed from 20, "
           "finished at 40; a fresh start over the directory refused\n");
}
