// TIMEOUT: 180
/* test_mpirun — the cluster launch: one mpirun in MPMD form (1 scheduler, 1 server,
 * 2 workers, --oversubscribe) on a tiny model; MPI only hands out the scheduler's
 * address. Asserts a clean exit, the trained model file, both workers' metrics and the
 * scheduler's accounting. */
#include "safetensors.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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
    return testutil_summary("test_mpirun");
}
