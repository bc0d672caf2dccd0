/* eval — frozen-encoder evaluation: extract features of a labelled train and test set
 * once (batched, no gradient, no augmentation), then a linear probe (probe.h) and k-NN
 * (knn.h) on them; results as one JSON line in a metrics file and a printed table.
 *
 * The features are an encoder's (cls token or patch mean of its final norm output,
 * encoder.h) or the raw pixels as the loader normalises them (the baseline arm). The
 * encoder comes from a safetensors file with timm names (an MAE checkpoint or an export
 * of checkpoint_export_encoder): eval_run; or from memory, for a pipeline stage that
 * has just trained it: eval_run_model. Its keys are the [eval] section of the one
 * configuration (runtime/config.c), read into an eval_cfg_t by eval_cfg_from.
 *
 * A model that carries its own classifier (timm's head.weight (K, D) and head.bias (K)
 * on the cls feature, as the mimic stage trains and saves it) is also evaluated as it is:
 * its top-1 on the same sets, the "fine-tune" row next to the frozen-encoder ones. */
#ifndef MIMIC_EVAL_H
#define MIMIC_EVAL_H

#include "config.h"
#include "encoder.h"
#include "knn.h"
#include "params.h"

#include <stdint.h>
#include <stdio.h>

#define EVAL_MAX_KS 8

/* encoder: a trained encoder's features; random: an encoder of model.* at MAE's
 * initialisation (seed train.seed), the untrained baseline; pixels: the images. */
typedef enum {
    EVAL_FEATURES_ENCODER = 0,
    EVAL_FEATURES_RANDOM,
    EVAL_FEATURES_PIXELS
} eval_features_t;

typedef struct {
    eval_features_t features; /* eval.features: encoder | random | pixels */
    encoder_pool_t pool;      /* eval.pool: cls | avg */
    /* the labelled sets; an empty train_* falls back to data.kind/path/labels/usage */
    char kind[16];
    char train_path[CFG_PATH_MAX], train_labels[CFG_PATH_MAX], train_usage[32];
    char test_path[CFG_PATH_MAX], test_labels[CFG_PATH_MAX], test_usage[32];
    long train_limit, test_limit; /* use the first N samples (0: all) */
    int batch_size;               /* images per encoder forward */
    int probe_epochs, probe_batch;
    float probe_lr, probe_momentum, probe_weight_decay;
    int knn_k[EVAL_MAX_KS], knn_nk;
    float knn_temp;
} eval_cfg_t;

typedef struct {
    int n_train, n_test, dim, classes;
    double probe_train_top1, probe_test_top1, probe_loss;
    knn_result_t knn[EVAL_MAX_KS];
    int knn_nk;
    /* the model's own classifier, when it has one (finetune 1): top-1 of argmax(head(cls
     * feature)) on the test set and on the (limited) training set, and its classes */
    int finetune, finetune_classes;
    double finetune_top1, finetune_train_top1;
    double t_extract_train, t_extract_test, t_probe, t_knn; /* seconds */
} eval_result_t;

/* The [eval] keys of cfg, checked (knn_k parsed); errors name the key. */
int eval_cfg_from(eval_cfg_t *c, const mimic_cfg_t *cfg);

/* Loads the encoder of encoder_path (its [model] metadata overrides cfg->model, so an
 * MAE checkpoint needs no model flags) and evaluates it; with EVAL_FEATURES_RANDOM or
 * _PIXELS encoder_path is not read (may be NULL). out_json may be NULL (no file); res may be
 * NULL. Returns 0 or a negative error naming the file, tensor or key at fault. */
int eval_run(const mimic_cfg_t *cfg, const eval_cfg_t *ec, const char *encoder_path,
             const char *out_json, eval_result_t *res);
/* The same with an encoder in memory (e, p: e.g. the prefix of a stage's parameters);
 * e and p are ignored for EVAL_FEATURES_PIXELS. cfg->model must describe e (image size
 * and channels for the loader). name labels the JSON record and the errors. When p holds
 * head.weight and head.bias (a mimic stage's parameters), that classifier is evaluated
 * too; a test label outside its classes is an error. */
int eval_run_model(const mimic_cfg_t *cfg, const eval_cfg_t *ec, const encoder_t *e,
                   const params_t *p, const char *name, const char *out_json, eval_result_t *res);

/* The features of one labelled set, extracted as eval_run_model does (no augmentation,
 * batched, corrupt samples skipped): the train set (eval.train_*, empty: data.*, limited
 * to eval.train_limit) when train is 1, else the test set. ids gives each row's index in
 * the data set (rows of skipped samples are absent). Other tools (SDD-FIQA, fiqa.h)
 * build on it. eval_set_free frees what it filled. */
typedef struct {
    float *x;      /* (n, dim) */
    int *y;        /* (n) labels */
    uint32_t *ids; /* (n) data set indices */
    int n, dim, classes;
} eval_set_t;
int eval_extract(eval_set_t *set, const mimic_cfg_t *cfg, const eval_cfg_t *ec, const encoder_t *e,
                 const params_t *p, int train);
void eval_set_free(eval_set_t *set);

/* The table of a result, for people. */
void eval_print(FILE *f, const eval_result_t *r);

#endif
