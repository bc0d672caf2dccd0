/* The pipeline in one process: each stage of pipeline.stages trains standalone (or is
 * evaluated) in its own out_dir/<i>-<name>, starting from the previous stage's
 * model.safetensors (config_pipeline_stage). A stage already finished (its
 * model.safetensors exists) is skipped, so `--train.resume=auto` continues a pipeline
 * where it stopped; deploy/pipeline.sh runs the same stages on the cluster. */
#include "common.h"
#include "eval.h"
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The evaluation stage: the previous stage's model (train.init_from) on the [eval] sets;
 * the result as out_dir/eval.jsonl and a printed table. */
static int run_eval(const mimic_cfg_t *cfg) {
    eval_cfg_t ec;
    eval_result_t r;
    char out[CFG_PATH_MAX + 32];
    int rc = eval_cfg_from(&ec, cfg);
    if (rc) return rc;
    if (ec.features == EVAL_FEATURES_ENCODER && !cfg->train.init_from[0])
        return mimic_err(MIMIC_EINVAL, "pipeline stage eval: no encoder (it needs a training "
                                       "stage before it, or train.init_from)");
    if ((rc = mimic_mkdir_p(cfg->train.out_dir))) return rc;
    snprintf(out, sizeof out, "%s/eval.jsonl", cfg->train.out_dir);
    if ((rc = eval_run(cfg, &ec, cfg->train.init_from, out, &r))) return rc;
    eval_print(stdout, &r);
    fflush(stdout);
    return 0;
}

/* Runs the stage whose configuration cfg is (pipeline.name), in this process. */
int worker_stage(const mimic_cfg_t *cfg, const char *sched, int standalone) {
    if (strcmp(cfg->pipeline.name, "eval") == 0) return run_eval(cfg);
    return standalone ? worker_standalone(cfg) : worker_distributed(cfg, sched);
}

int worker_pipeline(const mimic_cfg_t *base) {
    int n = config_pipeline_count(base), rc = 0;
    mimic_cfg_t *cfg = malloc(sizeof *cfg);
    if (!cfg) return mimic_err(MIMIC_ENOMEM, "out of memory for the pipeline");
    for (int i = 0; i < n && !rc; i++) {
        char name[64], done[CFG_PATH_MAX + 32];
        if ((rc = config_pipeline_stage(base, i, cfg, name, sizeof name))) break;
        snprintf(done, sizeof done, "%s/model.safetensors", cfg->train.out_dir);
        if (strcmp(name, "eval") != 0 && access(done, R_OK) == 0) {
            mimic_log("pipeline stage %d (%s): done already (%s)", i, name, done);
            continue;
        }
        mimic_log("pipeline stage %d of %d: %s in %s", i + 1, n, name, cfg->train.out_dir);
        rc = worker_stage(cfg, NULL, 1);
    }
    free(cfg);
    return rc;
}

int worker_pipeline_list(const mimic_cfg_t *base) {
    mimic_cfg_t *cfg = malloc(sizeof *cfg);
    if (!cfg) return mimic_err(MIMIC_ENOMEM, "out of memory for the pipeline");
    int rc = 0;
    for (int i = 0; i < config_pipeline_count(base) && !rc; i++) {
        char name[64];
        if (!(rc = config_pipeline_stage(base, i, cfg, name, sizeof name)))
            printf("%d %s %s\n", i, name, cfg->train.out_dir);
    }
    free(cfg);
    return rc;
}
