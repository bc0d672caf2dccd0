// TIMEOUT: 300
/* test_report — mimic-report (tools/report.c), the profiling report of a run directory:
 *  - bad input (a missing directory, an empty one, garbled, truncated, non-object and
 *    ill-typed lines) ends it with exit 1 and exactly one line naming the file and line;
 *    --lenient skips such lines instead;
 *  - on hand-written records it names the slow worker, sums the phases and the
 *    bandwidth, and its three SVGs parse as XML (/usr/bin/python3, xml.etree) with one
 *    bar group per worker, the straggler's labelled;
 *  - on a real local cluster (1 scheduler, 1 server, 3 workers, BSP) whose worker rank 1
 *    is slowed by the test hook MIMIC_TEST_SLOW_MS/_RANK, it names rank 1 the straggler. */
#include "testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char report_bin[1024], bins[3][1024];

/* Runs mimic-report with up to 3 arguments; returns its exit status and its output. */
static int run_report(const char *a1, const char *a2, const char *a3, char **out) {
    char log[1200];
    static int k;
    snprintf(log, sizeof log, "%.1000s/report-out-%d.txt", testutil_tmpdir(), k++);
    char *argv[] = {report_bin, (char *)a1, (char *)a2, (char *)a3, NULL};
    int st = testutil_wait_pid(testutil_spawn(argv, log), 60000);
    *out = testutil_slurp(log);
    if (!*out) *out = calloc(1, 1);
    return st;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    T_CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static const char *mkrun(const char *name) {
    static char dir[1200];
    snprintf(dir, sizeof dir, "%.1000s/%s", testutil_tmpdir(), name);
    mkdir(dir, 0755);
    return dir;
}

static int lines(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* Exit 1, one line, naming `want` (file:line) and `why`. */
static void expect_bad(const char *label, const char *dir, const char *want, const char *why) {
    char *out;
    int st = run_report(dir, NULL, NULL, &out);
    int ok = st == 1 && lines(out) == 1 && strstr(out, want) && (!why || strstr(out, why));
    printf("%-32s exit %d: %s%s", label, st, out, ok ? "" : "  FAIL\n");
    T_CHECK(ok);
    free(out);
}

#define STEP(ver, d, f, b, push, wall) \
    "{\"event\":\"step\",\"version\":" #ver ",\"loss\":1.5,\"samples\":8,\"data_s\":" #d \
    ",\"forward_s\":" #f ",\"backward_s\":" #b ",\"push_pull_s\":" #push \
    ",\"chunk_done_s\":0.001,\"wall_s\":" #wall ",\"push_bytes\":4000000,\"pull_bytes\":4000000}\n"

static void test_bad_input(void) {
    char path[1400], *out;
    int st = run_report(NULL, NULL, NULL, &out);
    T_CHECK(st == 1 && strstr(out, "usage") && lines(out) == 1);
    free(out);
    snprintf(path, sizeof path, "%s/no-such-run", testutil_tmpdir());
    expect_bad("missing directory", path, "no-such-run: cannot open the run directory", NULL);
    expect_bad("empty directory", mkrun("empty"), "not a run directory", NULL);

    const char *d = mkrun("garbled");
    snprintf(path, sizeof path, "%s/worker-0.jsonl", d);
    write_file(path, STEP(1, 0.01, 0.02, 0.03, 0.01, 0.08) STEP(2, 0.01, 0.02, 0.03, 0.01, 0.08)
                     "{\"event\":\"step\",\"data_s\":0.1,, garbage\n");
    expect_bad("garbled line", d, "worker-0.jsonl:3: malformed JSON", NULL);

    d = mkrun("truncated");
    snprintf(path, sizeof path, "%s/worker-3.jsonl", d);
    write_file(path, STEP(1, 0.01, 0.02, 0.03, 0.01, 0.08) "{\"event\":\"step\",\"version\":2,\"lo");
    expect_bad("truncated last line", d, "worker-3.jsonl:2: truncated", NULL);

    d = mkrun("nonobject");
    snprintf(path, sizeof path, "%s/scheduler.jsonl", d);
    write_file(path, "{\"event\":\"start\",\"t\":0}\n[1,2]\n");
    expect_bad("line not an object", d, "scheduler.jsonl:2: not a JSON object", NULL);

    d = mkrun("badfield");
    snprintf(path, sizeof path, "%s/worker-1.jsonl", d);
    write_file(path, "{\"event\":\"step\",\"data_s\":\"fast\",\"forward_s\":0.1,\"backward_s\":0.1}\n");
    expect_bad("phase not a number", d, "worker-1.jsonl:1:", "\"data_s\"");

    d = mkrun("missingfield");
    snprintf(path, sizeof path, "%s/worker-1.jsonl", d);
    write_file(path, "{\"event\":\"step\",\"data_s\":0.1,\"backward_s\":0.1}\n");
    expect_bad("phase missing", d, "worker-1.jsonl:1:", "\"forward_s\" is missing");

    d = mkrun("negative");
    snprintf(path, sizeof path, "%s/worker-1.jsonl", d);
    write_file(path, STEP(1, -0.5, 0.02, 0.03, 0.01, 0.08));
    expect_bad("negative phase", d, "worker-1.jsonl:1:", "\"data_s\"");

    d = mkrun("badprogress");
    snprintf(path, sizeof path, "%s/scheduler.jsonl", d);
    write_file(path, "{\"event\":\"progress\",\"t\":1,\"step\":\"two\",\"loss\":1}\n");
    expect_bad("progress step not a number", d, "scheduler.jsonl:1:", "\"step\"");

    d = mkrun("binary");
    snprintf(path, sizeof path, "%s/worker-0.jsonl", d);
    write_file(path, "\xff\xfe{\"event\":\x01}\n");
    expect_bad("binary junk", d, "worker-0.jsonl:1:", NULL);

    /* --lenient: the truncated line is skipped, the rest reported */
    d = mkrun("truncated");
    st = run_report(d, "--lenient", NULL, &out);
    T_CHECK(st == 0 && strstr(out, "warning: ") && strstr(out, "worker-3.jsonl:2:") &&
            strstr(out, "1 malformed line(s) skipped"));
    free(out);
    st = run_report(d, "--bogus", NULL, &out);
    T_CHECK(st == 1 && lines(out) == 1 && strstr(out, "--bogus"));
    free(out);
}

/* The three SVGs of dir/report parse as XML; phases.svg has `workers` bar groups, and
 * the group of worker rank `straggler` (-1: none) alone is labelled straggler. */
static void check_svgs(const char *dir, int workers, int straggler, int has_progress) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c '\n"
             "import sys, xml.etree.ElementTree as ET\n"
             "ns = \"{http://www.w3.org/2000/svg}\"\n"
             "for n in (\"loss\", \"images_per_s\", \"phases\"):\n"
             "    root = ET.parse(\"%s/report/\" + n + \".svg\").getroot()\n"
             "    assert root.tag == ns + \"svg\", root.tag\n"
             "    if n != \"phases\":\n"
             "        assert (root.find(ns + \"polyline\") is not None) == %d, n + \": line?\"\n"
             "g = [e for e in ET.parse(\"%s/report/phases.svg\").getroot().iter(ns + \"g\")]\n"
             "assert len(g) == %d, len(g)\n"
             "marked = [e.get(\"data-rank\") for e in g for t in e.iter(ns + \"text\")"
             " if t.get(\"class\") == \"straggler\"]\n"
             "assert marked == ([] if %d < 0 else [\"%d\"]), marked\n"
             "assert all(float(r.get(\"width\")) > 0 for e in g for r in e.iter(ns + \"rect\")"
             " if r.get(\"class\") == \"phase\" and \"forward\" in r.find(ns + \"title\").text)\n"
             "'",
             dir, has_progress, dir, workers, straggler, straggler);
    int rc = system(cmd);
    printf("SVGs of %s parse as XML with %d worker bars: %s\n", dir, workers, rc == 0 ? "yes" : "NO");
    T_CHECK(rc == 0);
}

static void test_synthetic(void) {
    const char *d = mkrun("synthetic <&> run");
    char path[1400];
    for (int w = 0; w < 3; w++) {
        snprintf(path, sizeof path, "%s/worker-%d.jsonl", d, w);
        /* rank 2 spends 0.5 s per step of its own: in "other" (not a named phase) */
        write_file(path, w == 2 ? STEP(1, 0.01, 0.02, 0.03, 0.04, 0.6) STEP(2, 0.01, 0.02, 0.03,
                                                                             0.04, 0.6)
                                : STEP(1, 0.01, 0.02, 0.03, 0.54, 0.6) STEP(2, 0.01, 0.02, 0.03,
                                                                             0.54, 0.6));
    }
    snprintf(path, sizeof path, "%s/scheduler.jsonl", d);
    write_file(path, "{\"event\":\"start\",\"t\":0}\n"
                     "{\"event\":\"progress\",\"t\":1,\"step\":2,\"total\":4,\"loss\":2.5,\"lr\":1e-3,"
                     "\"img_per_s\":40,\"eta_s\":1,\"reports\":3,\"stragglers\":0}\n"
                     "{\"event\":\"progress\",\"t\":2,\"step\":4,\"total\":4,\"loss\":null,\"lr\":1e-3,"
                     "\"img_per_s\":44,\"eta_s\":0,\"reports\":3,\"stragglers\":0}\n"
                     "{\"event\":\"end\",\"t\":2.5,\"exit_code\":0}\n");
    char *out;
    int st = run_report(d, NULL, NULL, &out);
    printf("%s", out);
    T_CHECK(st == 0);
    T_CHECK(strstr(out, "straggler: worker rank 2 (worker-2.jsonl)") != NULL);
    T_CHECK(strstr(out, "its largest phase is other") != NULL);
    /* BSP: 4 MB each way per step, 3 workers x 2 steps, over 2 x 0.54 + 2 x 0.54 + 2 x 0.04 s */
    T_CHECK(strstr(out, " 48.0 MB in     2.24 s:     21.4 MB/s") != NULL);
    T_CHECK(strstr(out, "3 worker(s), 2 progress record(s)") != NULL);
    free(out);
    check_svgs(d, 3, 2, 1);
    /* no straggler when the workers are alike */
    d = mkrun("alike");
    for (int w = 0; w < 2; w++) {
        snprintf(path, sizeof path, "%s/worker-%d.jsonl", d, w);
        write_file(path, STEP(1, 0.01, 0.02, 0.03, 0.04, 0.1));
    }
    st = run_report(d, NULL, NULL, &out);
    T_CHECK(st == 0 && strstr(out, "(no straggler: under 1.5x)") && !strstr(out, "\nstraggler: "));
    free(out);
    check_svgs(d, 2, -1, 0); /* no scheduler.jsonl */
    /* a standalone run: metrics.jsonl only (loss and images/s, no per-worker table) */
    d = mkrun("standalone");
    snprintf(path, sizeof path, "%s/metrics.jsonl", d);
    write_file(path, "{\"event\":\"start\",\"params\":10}\n"
                     "{\"event\":\"step\",\"step\":1,\"loss\":2.0,\"lr\":1e-3,\"images_per_s\":50}\n"
                     "{\"event\":\"step\",\"step\":2,\"loss\":1.5,\"lr\":1e-3,\"images_per_s\":60}\n");
    st = run_report(d, NULL, NULL, &out);
    T_CHECK(st == 0 && strstr(out, "0 worker(s), 2 progress record(s)") &&
            strstr(out, "a standalone run"));
    free(out);
    check_svgs(d, 0, -1, 1);
}

/* A real cluster on loopback, launched the elastic way (the scheduler writes its
 * endpoint; servers and workers are given it). */
static void test_cluster_straggler(void) {
    char dir[1200], log[1300], ep_file[1300], idx[1300], lab[1300];
    snprintf(dir, sizeof dir, "%.1000s/cluster", testutil_tmpdir());
    snprintf(log, sizeof log, "%s-log.txt", dir);
    snprintf(ep_file, sizeof ep_file, "%s-endpoint", dir);
    snprintf(idx, sizeof idx, "%.1000s/img.idx", testutil_tmpdir());
    snprintf(lab, sizeof lab, "%.1000s/lab.idx", testutil_tmpdir());
    T_CHECK(testutil_write_idx(idx, lab, 96, 16, 5) == 0);
    char common[8000];
    snprintf(common, sizeof common,
             "--model.img_size=16 --model.patch_size=4 --model.embed_dim=32 --model.depth=2 "
             "--model.num_heads=2 --mae.decoder_embed_dim=16 --mae.decoder_depth=1 "
             "--mae.decoder_num_heads=2 --data.kind=idx --data.path=%s --data.labels=%s "
             "--data.mean=0.5 --data.std=0.25 --train.warmup_steps=2 --train.lr=2e-3 "
             "--train.log_every=2 --train.out_dir=%s --cluster.heartbeat_ms=100 "
             "--cluster.dead_ms=3000 --cluster.servers=1 --cluster.workers=3 "
             "--train.batch_size=8 --train.steps=30",
             idx, lab, dir);
    char line[9600], store[9600];
    char *argv[64];
    int pids[5] = {0}, np = 0;
    for (int role = 0; role < 3; role++) {
        for (int k = 0; k < (role == 2 ? 3 : 1); k++) {
            if (role == 0)
                snprintf(line, sizeof line, "%s --endpoint-file %s", common, ep_file);
            else {
                if (!testutil_wait_file(ep_file, "tcp://", 20000)) break;
                char *ep = testutil_slurp(ep_file);
                ep[strcspn(ep, "\n")] = 0;
                snprintf(line, sizeof line, "%s --scheduler %s", common, ep);
                free(ep);
            }
            memcpy(store, line, sizeof line);
            int n = 0;
            argv[n++] = bins[role];
            for (char *t = strtok(store, " "); t && n < 63; t = strtok(NULL, " "))
                argv[n++] = t;
            argv[n] = NULL;
            if (role == 2) { /* the slowed one: worker rank 1 (ranks in joining order) */
                setenv("MIMIC_TEST_SLOW_MS", "40", 1);
                setenv("MIMIC_TEST_SLOW_RANK", "1", 1);
            }
            pids[np++] = testutil_spawn(argv, log);
        }
    }
    unsetenv("MIMIC_TEST_SLOW_MS");
    unsetenv("MIMIC_TEST_SLOW_RANK");
    int ok = np == 5;
    for (int i = 0; i < np; i++) {
        int st = testutil_wait_pid(pids[i], 180000);
        if (st != 0) ok = 0;
        if (st < 0) testutil_kill(pids[i]);
    }
    if (!ok) {
        char *l = testutil_slurp(log);
        fprintf(stderr, "cluster failed (log %s):\n%s\n", log, l ? l : "");
        free(l);
    }
    T_CHECK(ok);
    char *out;
    int st = run_report(dir, NULL, NULL, &out);
    printf("%s", out);
    T_CHECK(st == 0);
    T_CHECK(strstr(out, "straggler: worker rank 1 (worker-1.jsonl)") != NULL);
    T_CHECK(strstr(out, "MB/s") != NULL);
    free(out);
    check_svgs(dir, 3, 1, 1);
}

int main(void) {
    const char *build = getenv("MIMIC_BUILD_DIR");
    snprintf(report_bin, sizeof report_bin, "%s/tools/mimic-report", build ? build : ".");
    snprintf(bins[0], sizeof bins[0], "%s/scheduler/mimic-scheduler", build ? build : ".");
    snprintf(bins[1], sizeof bins[1], "%s/pserver/mimic-pserver", build ? build : ".");
    snprintf(bins[2], sizeof bins[2], "%s/worker/mimic-worker", build ? build : ".");
    if (access("/usr/bin/python3", X_OK) != 0) {
        printf("no /usr/bin/python3: cannot check the SVGs\n");
        return 77;
    }
    test_bad_input();
    test_synthetic();
    test_cluster_straggler();
    return testutil_summary("test_report");
}
