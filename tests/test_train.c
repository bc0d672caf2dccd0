// TIMEOUT: 300
/* test_train — the standalone trainer end to end, through the mimic-worker binary:
 * the loss falls on a small synthetic set, a run stopped and resumed from its
 * checkpoint equals the uninterrupted run bit for bit, and bad input (corrupt data
 * file, unknown flag, bad value) fails with a one-line error naming it. */
#include "common.h"
#include "safetensors.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char worker[4096], data[4096], labels[4096];

static void write_idx(void) {
    snprintf(data, sizeof data, "%.4000s/img.idx", testutil_tmpdir());
    snprintf(labels, sizeof labels, "%.4000s/lab.idx", testutil_tmpdir());
    T_CHECK(testutil_write_idx(data, labels, 96, 16, 3) == 0);
}

static int run(const char *out_dir, const char *extra, const char *log) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "%s --standalone --model.img_size=16 --model.patch_size=4 --model.embed_dim=32 "
             "--model.depth=2 --model.num_heads=2 --mae.decoder_embed_dim=16 "
             "--mae.decoder_depth=1 --mae.decoder_num_heads=2 --data.kind=idx --data.path=%s "
             "--data.labels=%s --data.mean=0.5 --data.std=0.25 --train.batch_size=16 "
             "--train.warmup_steps=5 --train.lr=2e-3 --train.log_every=5 --train.out_dir=%s %s "
             "> %s 2>&1",
             worker, data, labels, out_dir, extra, log);
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

int main(void) {
    const char *build = getenv("MIMIC_BUILD_DIR");
    snprintf(worker, sizeof worker, "%s/worker/mimic-worker", build ? build : ".");
    write_idx();
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
    T_CHECK(run(dir_a, extra, log) != 0);
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
    T_CHECK(run(dir_a, extra, log) != 0);
    txt = slurp(log);
    T_CHECK(txt && strstr(txt, "trunc.idx"));
    free(txt);
    return testutil_summary("test_train");
}
