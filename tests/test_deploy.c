// TIMEOUT: 300
/* test_deploy — the launch recipes, as far as a machine without Slurm or Kubernetes
 * can check them (docs/operations.md, "Launch recipes"):
 *  - `bash -n` of every deploy script and of the Slurm batch script;
 *  - tests/check_deploy.py (python3-yaml): the MPIJob's and the elastic manifests'
 *    required fields, the Service port against the scheduler's --port, keys from
 *    Secrets only, and the Dockerfile's RUN steps against the CI scripts; then broken
 *    copies of each file, which it must refuse;
 *  - the MPMD split that deploy/hostfile.sh and deploy/slurm/mimicps.sbatch (mpirun and
 *    srun --multi-prog) would launch (--dry-run / MIMIC_DRY_RUN=1);
 *  - deploy/hostfile.sh for real: a hostfile naming localhost, one mpirun, a tiny model
 *    (bound to 127.0.0.1), and mimic-report on the run it leaves. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *src, *build;

/* Runs a shell command; its output in *out (may be NULL); returns its exit status. */
static int sh(const char *cmd, char **out) {
    char log[1200], full[16384];
    static int k;
    snprintf(log, sizeof log, "%.1000s/sh-%d.txt", testutil_tmpdir(), k++);
    snprintf(full, sizeof full, "cd '%s' && ( %s ) > '%s' 2>&1", src, cmd, log);
    int rc = system(full);
    char *o = testutil_slurp(log);
    if (out)
        *out = o ? o : calloc(1, 1);
    else
        free(o);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

static void test_syntax(void) {
    const char *scripts[] = {"deploy/cluster.sh",  "deploy/hostfile.sh", "deploy/rank.sh",
                             "deploy/mpmd.sh",     "deploy/build.sh",    "deploy/test.sh",
                             "deploy/install-deps.sh", "deploy/report.sh", "deploy/supervise.sh",
                             "deploy/slurm/mimicps.sbatch"};
    for (size_t i = 0; i < sizeof scripts / sizeof *scripts; i++) {
        char cmd[300], *out;
        snprintf(cmd, sizeof cmd, "bash -n %s", scripts[i]);
        int rc = sh(cmd, &out);
        printf("bash -n %-30s %s%s", scripts[i], rc == 0 ? "ok\n" : "FAILED: ", rc ? out : "");
        T_CHECK(rc == 0);
        free(out);
    }
}

/* check_deploy.py on a copy of `file` with `from` replaced by `to` must fail naming `why`. */
static void expect_refused(const char *label, const char *file, const char *flag,
                           const char *from, const char *to, const char *why) {
    char cmd[4096], *out;
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import sys; s = open(sys.argv[1]).read(); "
             "assert sys.argv[2] in s, \"not in file: \" + sys.argv[2]; "
             "open(sys.argv[4], \"w\").write(s.replace(sys.argv[2], sys.argv[3], 1))' "
             "%s '%s' '%s' '%s/broken' && /usr/bin/python3 tests/check_deploy.py . %s '%s/broken'",
             file, from, to, testutil_tmpdir(), flag, testutil_tmpdir());
    int rc = sh(cmd, &out);
    int ok = rc == 1 && strstr(out, why) != NULL;
    printf("refused: %-40s %s  %s", label, ok ? "ok" : "FAIL", out);
    T_CHECK(ok);
    free(out);
}

static void test_manifests(void) {
    char *out;
    int rc = sh("/usr/bin/python3 tests/check_deploy.py .", &out);
    printf("%s", out);
    T_CHECK(rc == 0 && strstr(out, "ok"));
    free(out);
    expect_refused("Service port != scheduler --port", "deploy/k8s/elastic.yaml", "--elastic",
                   "targetPort: 7070", "targetPort: 7071", "--port 7070");
    expect_refused("worker pointed elsewhere", "deploy/k8s/elastic.yaml", "--elastic",
                   "            - tcp://mimicps-scheduler:7070",
                   "            - tcp://scheduler:7070", "worker --scheduler");
    expect_refused("worker runs another binary", "deploy/k8s/elastic.yaml", "--elastic",
                   "/build/worker/mimic-worker", "/build/worker/other", "mimic-worker");
    expect_refused("a key literal in a manifest", "deploy/k8s/elastic.yaml", "--elastic",
                   "metadata:", "metadata:\n  annotations: {k: \"secret "
                   "0123456789012345678901234567890123456789\"}\n  x:", "literal CURVE key");
    expect_refused("CURVE off", "deploy/k8s/elastic.yaml", "--elastic",
                   "            - --cluster.curve=on\n            - --cluster.keys=/etc/mimicps/keys\n"
                   "            - --cluster.key=/etc/mimicps/keys/worker-0.key",
                   "            - --cluster.curve=off", "cluster.curve is not on");
    expect_refused("MPIJob apiVersion", "deploy/k8s/mpijob.yaml", "--mpijob",
                   "kubeflow.org/v2beta1", "kubeflow.org/v1", "apiVersion");
    expect_refused("MPIJob replicas != 1+S+W", "deploy/k8s/mpijob.yaml", "--mpijob",
                   "      replicas: 4", "      replicas: 5", "Worker replicas");
    expect_refused("MPIJob without a Launcher", "deploy/k8s/mpijob.yaml", "--mpijob",
                   "    Launcher:", "    Launch:", "Launcher and Worker");
    expect_refused("keys not from a Secret", "deploy/k8s/mpijob.yaml", "--mpijob",
                   "                - /etc/mimicps/keys", "                - /tmp/keys",
                   "does not mount a Secret");
    expect_refused("YAML that does not parse", "deploy/k8s/mpijob.yaml", "--mpijob",
                   "kind: MPIJob", "kind: [MPIJob", "check_deploy:");
    expect_refused("Dockerfile: a RUN of its own", "deploy/Dockerfile", "--dockerfile",
                   "COPY . .", "RUN apt-get install -y foo\nCOPY . .", "not one of the CI scripts");
    expect_refused("Dockerfile: not Debian 12", "deploy/Dockerfile", "--dockerfile",
                   "FROM debian:bookworm", "FROM ubuntu:22.04", "bookworm");
    expect_refused("Dockerfile: no tests", "deploy/Dockerfile", "--dockerfile",
                   "FUZZ_SECONDS=0 bash deploy/test.sh", "true", "CI runs");
}

/* The command a dry run prints has the MPMD split 1 : S : W with our three binaries. */
static int mpmd_ok(const char *out, int S, int W) {
    char a[64], b[64], c[64];
    snprintf(a, sizeof a, "-np 1 ");
    snprintf(b, sizeof b, " : -np %d ", S);
    snprintf(c, sizeof c, " : -np %d ", W);
    const char *p = strstr(out, a), *q = p ? strstr(p, b) : NULL, *r = q ? strstr(q + 1, c) : NULL;
    return p && q && r && strstr(p, "/scheduler/mimic-scheduler") < q &&
           strstr(q, "/pserver/mimic-pserver") < r && strstr(r, "/worker/mimic-worker") &&
           strstr(p, "deploy/rank.sh") < q;
}

static void test_dry_runs(void) {
    char cmd[2048], *out;
    snprintf(cmd, sizeof cmd,
             "printf 'node1 slots=4\\nnode2 slots=4\\n' > %s/hosts && MIMIC_BUILD=%s bash "
             "deploy/hostfile.sh --hostfile %s/hosts --servers 2 --workers 5 --keys /shared/keys "
             "--dry-run --train.steps=9",
             testutil_tmpdir(), build, testutil_tmpdir());
    int rc = sh(cmd, &out);
    printf("hostfile.sh --dry-run: %s", out);
    T_CHECK(rc == 0 && mpmd_ok(out, 2, 5) && strstr(out, "--hostfile ") &&
            strstr(out, "--cluster.curve=on --cluster.keys=/shared/keys") &&
            strstr(out, "-x MIMIC_RESUME") && strstr(out, "--train.steps=9"));
    free(out);
    rc = sh("bash deploy/hostfile.sh --servers 1 --dry-run", &out);
    T_CHECK(rc == 2 && strstr(out, "--hostfile"));
    free(out);
    rc = sh("SLURM_NTASKS=8 SLURM_JOB_ID=42 MIMIC_SERVERS=2 MIMIC_DRY_RUN=1 "
            "bash deploy/slurm/mimicps.sbatch --train.steps=9", &out);
    printf("mimicps.sbatch (mpirun): %s", out);
    T_CHECK(rc == 0 && mpmd_ok(out, 2, 5) && strstr(out, "--cluster.workers=5") &&
            strstr(out, "--train.out_dir=") && strstr(out, "slurm-42"));
    free(out);
    snprintf(cmd, sizeof cmd,
             "SLURM_NTASKS=8 SLURM_JOB_ID=42 MIMIC_SERVERS=2 MIMIC_DRY_RUN=1 MIMIC_LAUNCHER=srun "
             "MIMIC_HOME=%s bash deploy/slurm/mimicps.sbatch; rm -f %s/runs/slurm-42.multi-prog; "
             "rmdir %s/runs 2>/dev/null; true",
             src, src, src);
    rc = sh(cmd, &out);
    printf("mimicps.sbatch (srun):\n%s", out);
    T_CHECK(rc == 0 && strstr(out, "srun --mpi=pmix") && strstr(out, "\n0-0 ") &&
            strstr(out, "\n1-2 ") && strstr(out, "\n3-7 ") && strstr(out, "mimic-scheduler") &&
            strstr(out, "mimic-pserver") && strstr(out, "mimic-worker"));
    free(out);
    rc = sh("SLURM_NTASKS=2 MIMIC_DRY_RUN=1 bash deploy/slurm/mimicps.sbatch", &out);
    T_CHECK(rc == 2 && strstr(out, "no worker"));
    free(out);
}

/* deploy/hostfile.sh for real on this machine, then the report of its run. Leak checks
 * off as in test_mpirun: Open MPI's MPI_Init leaves allocations LeakSanitizer cannot
 * attribute; ASan/UBSan errors stay fatal. */
static void test_hostfile_run(void) {
    if (system("command -v mpirun > /dev/null") != 0) {
        printf("no mpirun: the hostfile launch is not run\n");
        return;
    }
    char idx[1200], lab[1200], cmd[8192], *out;
    snprintf(idx, sizeof idx, "%.1000s/img.idx", testutil_tmpdir());
    snprintf(lab, sizeof lab, "%.1000s/lab.idx", testutil_tmpdir());
    T_CHECK(testutil_write_idx(idx, lab, 64, 16, 5) == 0);
    snprintf(cmd, sizeof cmd,
             "printf 'localhost slots=8\\n' > %s/local && MIMIC_BIND_HOST=127.0.0.1 "
             "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 "
             "MIMIC_BUILD=%s MIMIC_RESTARTS=0 timeout 120 bash deploy/hostfile.sh --hostfile "
             "%s/local --servers 1 --workers 2 --model.img_size=16 --model.patch_size=4 "
             "--model.embed_dim=32 --model.depth=2 --model.num_heads=2 "
             "--mae.decoder_embed_dim=16 --mae.decoder_depth=1 --mae.decoder_num_heads=2 "
             "--data.kind=idx --data.path=%s --data.labels=%s --data.mean=0.5 --data.std=0.25 "
             "--train.batch_size=8 --train.steps=8 --train.log_every=2 "
             "--train.out_dir=%s/hostrun && %s/tools/mimic-report %s/hostrun",
             testutil_tmpdir(), build, testutil_tmpdir(), idx, lab, testutil_tmpdir(), build,
             testutil_tmpdir());
    int rc = sh(cmd, &out);
    const char *rep = strstr(out, "where the time goes");
    printf("hostfile.sh on localhost: exit %d\n%s", rc, rc ? out : rep ? rep : out);
    T_CHECK(rc == 0 && rep && strstr(out, "training finished at step 8") &&
            strstr(out, "3 worker(s)") == NULL && strstr(out, "2 worker(s)"));
    free(out);
}

int main(void) {
    src = getenv("MIMIC_SOURCE_DIR");
    build = getenv("MIMIC_BUILD_DIR");
    if (!src || !build) {
        printf("MIMIC_SOURCE_DIR / MIMIC_BUILD_DIR unset: run under ctest\n");
        return 1;
    }
    test_syntax();
    test_manifests();
    test_dry_runs();
    test_hostfile_run();
    return testutil_summary("test_deploy");
}
