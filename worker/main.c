#include "common.h"
#include "config.h"
#include "mm.h"
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fputs("usage: mimic-worker [CONFIG.ini] [--section.key=value ...] MODE\n"
          "modes:\n"
          "  (default)                    distributed worker: --scheduler tcp://HOST:PORT,\n"
          "                               MIMIC_SCHEDULER, cluster.scheduler or mpirun\n"
          "  --standalone                 train train.stage in this process (no servers); with\n"
          "                               pipeline.stages, every stage in turn\n"
          "  --pipeline-list              print the pipeline's stages: index name out_dir\n"
          "  --dump-grads --weights W.safetensors --batch X.safetensors --out G.safetensors\n"
          "                               write loss, pred, mask and every gradient\n"
          "  --export-encoder CKPT OUT    write the encoder of a checkpoint (timm names)\n"
          "  --help-config                list every config key with its default\n"
          "Exit codes: 0 done, 1 a failure (I/O, a peer, memory), 2 bad arguments or input\n"
          "(a flag, a setting, a file's content: e.g. a data set with no readable sample).\n",
          f);
}

int worker_set_compute(const mimic_cfg_t *cfg) {
    return mm_setup(cfg->train.threads, config_enum_name("train", "precision", cfg->train.precision),
                    "train.precision");
}

/* What the command line asks of this process (pointers into argv). */
typedef struct {
    const char *mode, *sched, *weights, *batch, *out, *ckpt;
} worker_args_t;

/* config_flag_fn: the worker's own flags. */
static int worker_flag(void *ctx, char **rest, int n, int *i) {
    worker_args_t *w = ctx;
    const char *a = rest[*i];
    if (strcmp(a, "--standalone") == 0 || strcmp(a, "--dump-grads") == 0 ||
        strcmp(a, "--pipeline-list") == 0) {
        w->mode = a;
    } else if (strcmp(a, "--export-encoder") == 0 && *i + 2 < n) {
        w->mode = a;
        w->ckpt = rest[++*i];
        w->out = rest[++*i];
    } else if (strcmp(a, "--scheduler") == 0 && *i + 1 < n) {
        w->sched = rest[++*i];
    } else if (strcmp(a, "--weights") == 0 && *i + 1 < n) {
        w->weights = rest[++*i];
    } else if (strcmp(a, "--batch") == 0 && *i + 1 < n) {
        w->batch = rest[++*i];
    } else if (strcmp(a, "--out") == 0 && *i + 1 < n) {
        w->out = rest[++*i];
    } else {
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    mimic_cfg_t cfg;
    worker_args_t w = {.mode = "--distributed"};
    int rc = config_start(&cfg, argc, argv, "mimic-worker", usage, worker_flag, &w);
    if (rc != CONFIG_RUN) return rc;
    if (worker_set_compute(&cfg)) return CONFIG_EXIT_USAGE;
    int whole = cfg.pipeline.stages[0] && cfg.pipeline.run < 0;
    if (strcmp(w.mode, "--pipeline-list") == 0) {
        rc = worker_pipeline_list(&cfg);
    } else if (strcmp(w.mode, "--standalone") == 0 && whole) {
        rc = worker_pipeline(&cfg);
    } else if (strcmp(w.mode, "--distributed") == 0 || strcmp(w.mode, "--standalone") == 0) {
        rc = worker_stage(&cfg, w.sched, strcmp(w.mode, "--standalone") == 0);
    } else if (strcmp(w.mode, "--dump-grads") == 0) {
        if (!w.weights || !w.batch || !w.out) {
            mimic_err(MIMIC_EINVAL, "--dump-grads needs --weights, --batch and --out");
            return CONFIG_EXIT_USAGE;
        }
        rc = worker_dump_grads(&cfg, w.weights, w.batch, w.out);
    } else {
        rc = worker_export_encoder(&cfg, w.ckpt, w.out);
    }
    /* 2: bad arguments or input (a setting, a file's content), as for a bad flag */
    return rc == MIMIC_EINVAL || rc == MIMIC_EFORMAT || rc == MIMIC_ESHAPE ? 2 : rc ? 1 : 0;
}
