/* fuzz_config — libFuzzer target for the configuration parser: an INI file (libinih
 * into config_set) and `--section.key=value` overrides, then the pipeline's per-stage
 * configurations. The input is the INI text, a NUL byte, then one override a line.
 * Every input must be refused with one line naming the file, key or flag, or give a
 * configuration that config_write writes and config_load reads back to the same text
 * (what a run directory's config.ini promises), unless a written line is longer than
 * libinih reads (a path near CFG_PATH_MAX): config_load must then refuse it by name.
 * Built as fuzz_config (MIMIC_FUZZ=ON, clang) and as the ctest fuzz_config_replay
 * (tests/CMakeLists.txt; fuzzutil.h says how to run them). */
#define _POSIX_C_SOURCE 200809L
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "config.h"
#include "fuzzutil.h"

static mimic_cfg_t cfg, again, stage; /* 100 KB each: not on the stack */

/* config_write's text of c, owned by the caller. */
static char *written(const mimic_cfg_t *c, size_t *n) {
    char *text = NULL;
    FILE *f = open_memstream(&text, n);
    if (!f) fuzz_fail("config", "open_memstream failed", NULL);
    config_write(c, f);
    fclose(f);
    return text;
}

/* 1 when a line of text is longer than libinih reads in one piece. */
static int has_long_line(const char *text) {
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        if (n > INI_MAX_LINE - 2) return 1;
        p += n + (p[n] != 0);
    }
    return 0;
}

/* Applies the override lines of data[0..n); the first failure ends it. */
static int overrides(mimic_cfg_t *c, const uint8_t *data, size_t n) {
    char line[2048];
    while (n > 0) {
        const uint8_t *next;
        size_t rest, len = fuzz_split(data, n, '\n', &next, &rest);
        if (len < sizeof line && len > 0) {
            memcpy(line, data, len);
            line[len] = '\0';
            const char *a = strncmp(line, "--", 2) == 0 ? line + 2 : line;
            if (strlen(a) == len - (a - line)) { /* no NUL inside: argv cannot hold one */
                int rc = config_override(c, a);
                if (rc) return rc;
            }
        }
        data = next;
        n = next ? rest : 0;
    }
    return 0;
}

/* The configuration of every pipeline stage (the checks config_start runs). */
static int stages(const mimic_cfg_t *c) {
    if (!c->pipeline.stages[0]) return 0;
    char name[64];
    for (int i = 0; i < config_pipeline_count(c); i++) {
        int rc = config_pipeline_stage(c, i, &stage, name, sizeof name);
        if (rc) return rc;
        if (stage.pipeline.run != i || strcmp(stage.pipeline.name, name) != 0)
            fuzz_fail("config", "a stage does not carry its index and name", name);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *ini = fuzz_path("config.ini"), *back = fuzz_path("written.ini");
    const uint8_t *rest;
    size_t nrest, nini = fuzz_split(data, size, 0, &rest, &nrest);
    fuzz_write(ini, data, nini);
    mimic_set_quiet(1);
    config_defaults(&cfg);
    int rc = config_load(&cfg, ini);
    if (!rc) rc = overrides(&cfg, rest, nrest);
    if (!rc) rc = stages(&cfg);
    if (rc) {
        fuzz_check_error("config", rc);
        return 0;
    }
    /* what was accepted is written and read back to the same text */
    size_t n1, n2;
    char *t1 = written(&cfg, &n1);
    fuzz_write(back, t1, n1);
    config_defaults(&again);
    rc = config_load(&again, back);
    if (has_long_line(t1)) {
        if (rc != MIMIC_EFORMAT || !strstr(mimic_last_error(), "line longer"))
            fuzz_fail("config", "an over-long line is not refused", mimic_last_error());
        free(t1);
        return 0;
    }
    if (rc) fuzz_fail("config", "config_write's output does not load", mimic_last_error());
    char *t2 = written(&again, &n2);
    if (n1 != n2 || memcmp(t1, t2, n1) != 0) {
        size_t k = 0;
        while (k < n1 && k < n2 && t1[k] == t2[k])
            k++;
        while (k > 0 && t1[k - 1] != '\n')
            k--;
        fuzz_fail("config", "written, loaded and written again differs at", t1 + k);
    }
    free(t1);
    free(t2);
    fuzz_accepted++;
    return 0;
}

#ifdef FUZZ_REPLAY
/* The messages of the defects the fuzzer found, checked word for word. */
static void known_answers(void) {
    const char *ini = fuzz_path("known.ini");
    char want[1024];
    mimic_set_quiet(1);
    fuzz_write(ini, "[train]\nbogus = 1\n", 19); /* the message was formatted into itself */
    config_defaults(&cfg);
    snprintf(want, sizeof want, "%s: unknown config key train.bogus", ini);
    if (config_load(&cfg, ini) != MIMIC_EINVAL || strcmp(mimic_last_error(), want) != 0)
        fuzz_fail("config", "a bad key in a file is not named plainly", mimic_last_error());
    char line[400];
    int n = snprintf(line, sizeof line, "[data]\npath = /%0250d x = 5\n", 0);
    fuzz_write(ini, line, (size_t)n); /* was: data.path silently "= 5" */
    snprintf(want, sizeof want, "%s:2: line longer than", ini);
    if (config_load(&cfg, ini) != MIMIC_EFORMAT || strncmp(mimic_last_error(), want, strlen(want)))
        fuzz_fail("config", "an over-long line is not refused", mimic_last_error());
    if (config_override(&cfg, "train.lr=1e39") != MIMIC_EINVAL ||
        config_override(&cfg, "data.kind= ;x") != MIMIC_EINVAL ||
        config_override(&cfg, "data.path=a ;b") != MIMIC_EINVAL ||
        config_override(&cfg, "data.usage=a\tb") != MIMIC_EINVAL ||
        config_override(&cfg, "data.path=/a;b c") != 0)
        fuzz_fail("config", "a value an INI file cannot hold is accepted", NULL);
}

static void seeds(fuzz_seeds_t *s) {
    known_answers();
    fuzz_seed_str(s, "");
    fuzz_seed_str(s, "; a comment\n[model]\nimg_size = 32\nin_chans = 1\npatch_size = 4\n"
                     "embed_dim = 192\ndepth = 12\nnum_heads = 3\nmlp_ratio = 4\n[mae]\n"
                     "mask_ratio = 0.75\n[data]\nkind = idx\npath = /x/train.gz\nlabels =\n"
                     "mean = 0.2860\nstd = 0.3530\nblur_p = 1.0,0.1\n[train]\nstage = mae\n"
                     "batch_size = 128\nsteps = 2000\nblr = 1.5e-3\nseed = 0\n");
    fuzz_seed_str(s, "[cluster]\nconsistency = ssp\nstaleness = 3\nema = auto\n"
                     "slice_floats = 262144\nmax_msg_mb = 256\n[contrastive]\nmomentum = 0.99\n"
                     "[eval]\nfeatures = encoder\npool = avg\nknn_k = 1,10,20\n");
    fuzz_seed_str(s, "[pipeline]\nstages = mae,mocov3,eval\n[pipeline.mae]\ntrain.steps = 400\n"
                     "train.warmup_steps = 40\n[pipeline.mocov3]\ntrain.steps = 60\n"
                     "data.scale_min = 0.08\n");
    static const char both[] = "[data]\nkind = labellist\nlabel_base = 1\nusage = train_\n"
                               "\0--train.lr=1e-3\n--data.mean=0.5,0.5,0.5\n"
                               "--pipeline.mae.train.steps=3\n--pipeline.stages=mae,eval\n"
                               "--mimic.num_classes=7";
    fuzz_seed_add(s, both, sizeof both - 1);
    static const char run[] = "[pipeline]\nstages = mae,mimic\nrun = 1\n[pipeline.mimic]\n"
                              "mimic.tau = 0.2\n\0--train.stage=mimic\n--eval.kind=csv";
    fuzz_seed_add(s, run, sizeof run - 1);
}

static const char *const dict[] = {
    "[model]", "[mae]", "[data]", "[train]", "[cluster]", "[contrastive]", "[eval]",
    "[pipeline]", "[mimic]", "[pipeline.mae]", "img_size = ", "kind = ", "path = ",
    "mean = ", "stages = ", "run = ", "stage = ", "consistency = ", "seed = ",
    "train.steps = ", "--train.lr=", "--pipeline.mae.train.seed=", "--data.blur_p=",
    "mocov3", "eval", ",", "=", ";", "#", " ;", "\n", "1e39", "-1", "18446744073709551615",
    "9223372036854775808", "0x1p3", "inf", NULL};

int main(int argc, char **argv) {
    static const fuzz_target_t t = {"config", seeds, dict, 5000};
    return fuzz_replay_main(&t, argc, argv);
}
#endif
