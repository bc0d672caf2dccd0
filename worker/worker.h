/* worker — the modes of the mimic-worker binary.
 *
 * main.c parses flags and dispatches; standalone.c trains MAE in one process (no
 * servers); dist.c is the worker of the distributed runtime (docs/runtime.md); dump.c writes the
 * loss and every gradient for a given weights file and batch, so anyone can check parity with
 * PyTorch on any config. */
#ifndef MIMIC_WORKER_H
#define MIMIC_WORKER_H

#include "config.h"
#include "stage.h"

int worker_standalone(const mimic_cfg_t *cfg);
/* The distributed worker: scheduler from sched_flag, MIMIC_SCHEDULER,
 * cluster.scheduler, or the mpirun bootstrap. */
int worker_distributed(const mimic_cfg_t *cfg, const char *sched_flag);
int worker_dump_grads(const mimic_cfg_t *cfg, const char *weights, const char *batch,
                      const char *out);
/* out_dir/model.safetensors and encoder.safetensors of a trained stage (standalone.c). */
int write_model(const mimic_cfg_t *cfg, const stage_t *s, long step);
/* Runs every stage of pipeline.stages in this process (training stages standalone,
 * evaluation in-process), or the one stage of pipeline.run. */
int worker_pipeline(const mimic_cfg_t *cfg);
/* Runs the stage cfg describes (pipeline.name "eval": the evaluation, in-process). */
int worker_stage(const mimic_cfg_t *cfg, const char *sched, int standalone);
/* Prints "index name out_dir" per stage (for deploy/pipeline.sh). */
int worker_pipeline_list(const mimic_cfg_t *cfg);
int worker_export_encoder(const mimic_cfg_t *cfg, const char *ckpt, const char *out);
/* Sets OpenBLAS and OpenMP threads from train.threads (0: leave the environment's) and
 * the GEMM precision from train.precision; MIMIC_EINVAL when the CPU cannot. */
int worker_set_compute(const mimic_cfg_t *cfg);

#endif
