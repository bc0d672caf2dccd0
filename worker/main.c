#include "common.h"
#include "config.h"
#include "worker.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fputs("usage: mimic-worker [CONFIG.ini] [--section.key=value ...] MODE\n"
          "modes:\n"
          "  (default)                    distributed worker: --scheduler tcp://HOST:PORT,\n"
          "                               MIMIC_SCHEDULER, cluster.scheduler or mpirun\n"
          "  --standalone                 train MAE in this process (no servers)\n"
          "  --dump-grads --weights W.safetensors --batch X.safetensors --out G.safetensors\n"
          "                               write loss, pred, mask and every gradient\n"
          "  --export-encoder CKPT OUT    write the encoder of a checkpoint (timm names)\n"
          "  --help-config                list every config key with its default\n",
          f);
}

void worker_set_threads(const mimic_cfg_t *cfg) {
    if (cfg->train.threads > 0) {
        openblas_set_num_threads(cfg->train.threads);
        omp_set_num_threads(cfg->train.threads);
    }
}

int main(int argc, char **argv) {
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    int nrest = 0;
    if (!rest || config_parse_args(&cfg, argc, argv, rest, &nrest)) {
        free(rest);
        return 2;
    }
    const char *mode = "--distributed", *sched = NULL, *weights = NULL, *batch = NULL, *out = NULL,
               *ckpt = NULL;
    for (int i = 0; i < nrest; i++) {
        const char *a = rest[i];
        if (config_help_flag(a, usage)) {
            free(rest);
            return 0;
        } else if (strcmp(a, "--standalone") == 0 || strcmp(a, "--dump-grads") == 0) {
            mode = a;
        } else if (strcmp(a, "--export-encoder") == 0 && i + 2 < nrest) {
            mode = a;
            ckpt = rest[++i];
            out = rest[++i];
        } else if (strcmp(a, "--scheduler") == 0 && i + 1 < nrest) {
            sched = rest[++i];
        } else if (strcmp(a, "--weights") == 0 && i + 1 < nrest) {
            weights = rest[++i];
        } else if (strcmp(a, "--batch") == 0 && i + 1 < nrest) {
            batch = rest[++i];
        } else if (strcmp(a, "--out") == 0 && i + 1 < nrest) {
            out = rest[++i];
        } else {
            mimic_err(MIMIC_EINVAL, "mimic-worker: unknown or incomplete flag '%s'", a);
            usage(stderr);
            free(rest);
            return 2;
        }
    }
    free(rest);
    worker_set_threads(&cfg);
    int rc;
    if (strcmp(mode, "--distributed") == 0) {
        rc = worker_distributed(&cfg, sched);
    } else if (strcmp(mode, "--standalone") == 0) {
        rc = worker_standalone(&cfg);
    } else if (strcmp(mode, "--dump-grads") == 0) {
        if (!weights || !batch || !out) {
            mimic_err(MIMIC_EINVAL, "--dump-grads needs --weights, --batch and --out");
            return 2;
        }
        rc = worker_dump_grads(&cfg, weights, batch, out);
    } else {
        rc = worker_export_encoder(&cfg, ckpt, out);
    }
    return rc ? 1 : 0;
}
