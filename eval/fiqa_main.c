/* mimic-fiqa — SDD-FIQA quality scores of a labelled set (the data.* keys) from a frozen
 * encoder (fiqa.h): a CSV of scores, optionally a quality regression head, and a filtered
 * copy of the set without its lowest-scoring fraction for the next stage. */
#include "common.h"
#include "config.h"
#include "eval.h"
#include "fiqa.h"
#include "mm.h"
#include "safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fputs(
        "usage: mimic-fiqa [CONFIG.ini] [--section.key=value ...] --scores SCORES.csv\n"
        "                  [--encoder ENCODER.safetensors] [--head HEAD.safetensors]\n"
        "                  [--filtered PREFIX]\n"
        "  --encoder F    the encoder (timm names; its [model] metadata overrides model.*);\n"
        "                 not read with --eval.features=random or pixels\n"
        "  --scores F     write index,label,score (0..100) of every image of the data.* set\n"
        "  --head F       with fiqa.head_epochs > 0: write the regression head\n"
        "                 quality_head.weight (1, D), quality_head.bias (1) on raw features\n"
        "  --filtered P   write the set without its fiqa.drop lowest-scoring fraction: P-images-\n"
        "                 idx3-ubyte + P-labels-idx1-ubyte (IDX, CSV sets) or P-labels.txt (a\n"
        "                 label list of JPEG sets); the log line names the data.* keys to use\n"
        "Keys: data.* (the set), fiqa.* (m, repeats, drop, per_class, limit, head_*), "
        "eval.features,\n"
        "eval.pool, eval.batch_size, train.seed, train.threads (--help-config lists them).\n",
        f);
}

/* The encoder of path (or MAE's init with seed for random features) into e and *pp; the
 * file's [model] metadata overrides model. */
static int open_encoder(encoder_t *e, params_t **pp, mae_cfg_t *model, const eval_cfg_t *ec,
                        const char *path, uint64_t seed) {
    int random = ec->features == EVAL_FEATURES_RANDOM, rc;
    if (!random && (!path || !path[0]))
        return mimic_err(MIMIC_EINVAL, "mimic-fiqa: eval.features=encoder needs --encoder FILE");
    if (!random && (rc = encoder_cfg_from_file(model, path))) return rc;
    if (!(*pp = params_new())) return mimic_err(MIMIC_ENOMEM, "out of memory");
    if ((rc = encoder_register(e, *pp, model)) || (rc = params_finalize(*pp))) return rc;
    if (!random) return encoder_load(e, *pp, path);
    rng_t r;
    rng_seed(&r, seed);
    encoder_init(e, *pp, &r);
    return 0;
}

static int write_head(const char *path, const float *w, float b, int D) {
    st_writer_t *wr = st_writer_new();
    int64_t ws[2] = {1, D}, bs[1] = {1};
    if (!wr) return mimic_err(MIMIC_ENOMEM, "out of memory");
    int rc = st_writer_add(wr, "quality_head.weight", "F32", ws, 2, w);
    if (!rc) rc = st_writer_add(wr, "quality_head.bias", "F32", bs, 1, &b);
    if (!rc) rc = st_writer_meta(wr, "format", "mimicps-fiqa-head");
    if (!rc) rc = st_writer_meta(wr, "version", "1");
    if (!rc) rc = st_writer_save(wr, path);
    st_writer_destroy(&wr);
    return rc;
}

/* The command on the caller's cfg and rest (argc + 1 pointers): the exit code (0 done, 1
 * failed, 2 usage), every message one line. */
static int run(mimic_cfg_t *cfg, char **rest, int argc, char **argv) {
    config_defaults(cfg);
    for (int i = 1; i < argc; i++)
        if (config_help_flag(argv[i], usage)) return 0;
    int nrest = 0;
    if (config_parse_args(cfg, argc, argv, rest, &nrest)) return 2;
    const char *encoder = NULL, *scores = NULL, *head = NULL, *filtered = NULL;
    for (int i = 0; i < nrest; i++) {
        const char **dst = strcmp(rest[i], "--encoder") == 0    ? &encoder
                           : strcmp(rest[i], "--scores") == 0   ? &scores
                           : strcmp(rest[i], "--head") == 0     ? &head
                           : strcmp(rest[i], "--filtered") == 0 ? &filtered
                                                                : NULL;
        if (!dst || i + 1 >= nrest) {
            mimic_err(MIMIC_EINVAL, "mimic-fiqa: unknown or incomplete argument '%s' (--help)",
                      rest[i]);
            return 2;
        }
        *dst = rest[++i];
    }
    if (!scores) {
        mimic_err(MIMIC_EINVAL, "mimic-fiqa: --scores FILE is required");
        return 2;
    }
    if (head && cfg->fiqa.head_epochs < 1) {
        mimic_err(MIMIC_EINVAL, "mimic-fiqa: --head needs config fiqa.head_epochs >= 1");
        return 2;
    }
    if (filtered && !(cfg->fiqa.drop >= 0.0f && cfg->fiqa.drop < 1.0f)) { /* before the work */
        mimic_err(MIMIC_EINVAL, "config fiqa.drop: %g, must be in [0, 1)", cfg->fiqa.drop);
        return 2;
    }
    if (cfg->fiqa.per_class != 0 && cfg->fiqa.per_class != 1) {
        mimic_err(MIMIC_EINVAL, "config fiqa.per_class: %d, must be 0 or 1", cfg->fiqa.per_class);
        return 2;
    }
    if (cfg->fiqa.limit < 0) {
        mimic_err(MIMIC_EINVAL, "config fiqa.limit: %ld, must be >= 0", cfg->fiqa.limit);
        return 2;
    }
    if (mm_setup(cfg->train.threads, config_enum_name("train", "precision", cfg->train.precision),
                 "train.precision"))
        return 2;
    eval_cfg_t ec;
    if (eval_cfg_from(&ec, cfg)) return 2;
    ec.train_path[0] = 0; /* the data.* set */
    ec.train_limit = cfg->fiqa.limit;
    encoder_t e;
    memset(&e, 0, sizeof e);
    params_t *p = NULL;
    eval_set_t set = {0};
    float *q = NULL, *raw = NULL, *w = NULL;
    uint8_t *keep = NULL;
    int rc = 0;
    if (ec.features != EVAL_FEATURES_PIXELS &&
        (rc = open_encoder(&e, &p, &cfg->model, &ec, encoder, cfg->train.seed)))
        goto out;
    double t0 = mimic_now();
    if ((rc = eval_extract(&set, cfg, &ec, &e, p, 1))) goto out;
    double t1 = mimic_now();
    q = malloc((size_t)set.n * sizeof *q);
    raw = malloc((size_t)set.n * sizeof *raw);
    keep = malloc((size_t)set.n);
    w = malloc((size_t)set.dim * sizeof *w);
    if (!q || !raw || !keep || !w) {
        rc = mimic_err(MIMIC_ENOMEM, "out of memory");
        goto out;
    }
    fiqa_cfg_t fc = {cfg->fiqa.m, cfg->fiqa.repeats, cfg->train.seed};
    if ((rc = fiqa_score(q, raw, set.x, set.y, set.n, set.dim, &fc))) goto out;
    double lo = INFINITY, hi = -INFINITY, mean = 0;
    for (int i = 0; i < set.n; i++) {
        lo = fmin(lo, raw[i]);
        hi = fmax(hi, raw[i]);
        mean += q[i] / set.n;
    }
    printf("fiqa: %d images, %d classes, features of %d floats (%.1f s); m %d, K %d: W1 %.4f .. "
           "%.4f, mean score %.2f (%.1f s)\n",
           set.n, set.classes, set.dim, t1 - t0, fc.m, fc.repeats, lo, hi, mean, mimic_now() - t1);
    if ((rc = fiqa_write_csv(scores, set.ids, set.y, q, set.n))) goto out;
    printf("fiqa: scores written to %s\n", scores);
    if (cfg->fiqa.head_epochs > 0) {
        fiqa_head_cfg_t hc = {cfg->fiqa.head_epochs, cfg->fiqa.head_lr, cfg->fiqa.head_beta,
                              cfg->train.seed};
        fiqa_head_result_t hr;
        float b = 0;
        if ((rc = fiqa_head_fit(w, &b, &hr, set.x, q, set.n, set.dim, &hc))) goto out;
        printf("fiqa head: SmoothL1 %.5f; fit %d images: MAE %.2f, r %.3f; held out %d: MAE "
               "%.2f, r %.3f\n",
               hr.loss, hr.n_fit, hr.mae_fit, hr.r_fit, hr.n_held, hr.mae_held, hr.r_held);
        if (head && (rc = write_head(head, w, b, set.dim))) goto out;
        if (head) printf("fiqa head: written to %s\n", head);
    }
    if (filtered) {
        int kept = fiqa_keep(keep, q, cfg->fiqa.per_class ? set.y : NULL, set.n, cfg->fiqa.drop);
        if (kept < 0) {
            rc = kept;
            goto out;
        }
        if ((rc = fiqa_write_filtered(cfg, set.ids, keep, set.n, filtered))) goto out;
        printf("fiqa: %d of %d images kept (fiqa.drop %g%s) in %s-*\n", kept, set.n, cfg->fiqa.drop,
               cfg->fiqa.per_class ? " per class" : "", filtered);
    }
out:
    eval_set_free(&set);
    encoder_free(&e);
    params_destroy(&p);
    free(q);
    free(raw);
    free(keep);
    free(w);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    mimic_cfg_t *cfg = malloc(sizeof *cfg); /* too large for the stack */
    char **rest = malloc((size_t)(argc + 1) * sizeof *rest);
    int code = cfg && rest ? run(cfg, rest, argc, argv) : 1;
    free(cfg);
    free(rest);
    return code;
}
