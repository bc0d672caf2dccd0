/* mimic-eval — evaluates a frozen encoder (or raw pixels) on a labelled train/test pair:
 * linear probe and k-NN, and a fine-tuned model's own classifier (eval.h), with the
 * [eval] keys of the configuration. */
#include "common.h"
#include "config.h"
#include "mm.h"
#include "eval.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fputs("usage: mimic-eval [CONFIG.ini] [--section.key=value ...] [--eval.key=value ...]\n"
          "                  [--encoder ENCODER.safetensors] [--out METRICS.jsonl]\n"
          "  --encoder F   an MAE checkpoint or exported encoder (timm names); its [model]\n"
          "                metadata overrides model.* (not needed with --eval.features=pixels);\n"
          "                a fine-tuned model's classifier (head.weight, head.bias: the mimic\n"
          "                stage's model.safetensors) is scored too, the fine-tuned row\n"
          "  --out F       append the result as one JSON line to F\n"
          "The model.*, data.* (mean, std, kind), train.seed/threads and eval.* keys apply\n"
          "(mimic-eval --help-config lists them).\n",
          f);
}

int main(int argc, char **argv) {
    mimic_cfg_t *cfg = malloc(sizeof *cfg);
    eval_cfg_t ec;
    char **args = malloc((size_t)(argc + 1) * sizeof *args),
         **rest = malloc((size_t)(argc + 1) * sizeof *rest);
    if (!cfg || !args || !rest) return 1;
    config_defaults(cfg);
    int nargs = 0, nrest = 0, rc = 0;
    args[nargs++] = argv[0];
    for (int i = 1; i < argc; i++) {
        if (config_help_flag(argv[i], usage)) return 0;
        args[nargs++] = argv[i];
    }
    if (config_parse_args(cfg, nargs, args, rest, &nrest)) return 2;
    const char *encoder = NULL, *out = NULL;
    for (int i = 0; i < nrest; i++) {
        if (strcmp(rest[i], "--encoder") == 0 && i + 1 < nrest)
            encoder = rest[++i];
        else if (strcmp(rest[i], "--out") == 0 && i + 1 < nrest)
            out = rest[++i];
        else {
            mimic_err(MIMIC_EINVAL, "unknown argument '%s' (mimic-eval --help)", rest[i]);
            return 2;
        }
    }
    if (mm_setup(cfg->train.threads, config_enum_name("train", "precision", cfg->train.precision),
                 "train.precision"))
        return 2;
    eval_result_t r;
    if (eval_cfg_from(&ec, cfg)) return 2;
    rc = eval_run(cfg, &ec, encoder, out, &r);
    if (rc == 0) eval_print(stdout, &r);
    free(cfg);
    free(args);
    free(rest);
    return rc == 0 ? 0 : 1;
}
