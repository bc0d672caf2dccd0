/* config — the one configuration struct every binary reads, filled from an INI file
 * (libinih) and then overridden by `--section.key=value` flags.
 *
 * Every key, its type, default and one-line documentation live in the table in
 * config.c and nowhere else: config_defaults applies it, config_set parses into it,
 * config_print_help documents it (README points at `mimic-worker --help-config`). */
#ifndef MIMIC_CONFIG_H
#define MIMIC_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#define CFG_PATH_MAX 1024
/* [pipeline.<stage>] keys a config may hold over all its stages (8 objectives x ~12) */
#define CFG_PIPELINE_KEYS 160

/* The [model] and [mae] sections: the ViT and its MAE decoder (mae_new validates them). */
typedef struct {
    int img_size, in_chans, patch_size;
    int embed_dim, depth, num_heads;
    float mlp_ratio;
    int decoder_embed_dim, decoder_depth, decoder_num_heads;
    float mask_ratio;
    int norm_pix_loss;
} mae_cfg_t;

/* cluster.consistency: when a server applies pushed gradients (pserver/consistency.h). */
typedef enum { CONS_BSP, CONS_ASP, CONS_SSP } cons_mode_t;
/* cluster.ema: whether servers keep the momentum copy (auto: the stage declares it). */
typedef enum { EMA_AUTO, EMA_ON, EMA_OFF } ema_mode_t;
typedef enum { WIRE_FP32, WIRE_BF16, WIRE_AUTO } wire_t; /* cluster.wire */
/* train.stage: the objective (stages/stage.h; the order of its table). */
typedef enum {
    STAGE_KIND_MAE,
    STAGE_KIND_MOCOV3,
    STAGE_KIND_MIMIC,
    STAGE_KIND_MOCOV2,
    STAGE_KIND_BYOL,
    STAGE_KIND_CONTRAWARP,
    STAGE_KIND_DENSECL,
    STAGE_KIND_CRSCONT,
} stage_kind_t;
/* mae.mask_policy: how a mask (MAE's; a contrastive stage's online view under
 * contrastive.mask_ratio) is drawn from the loader's noise (models/maskpolicy.h). */
typedef enum { MASK_POLICY_RANDOM, MASK_POLICY_ADVERSARIAL } mask_policy_t;

typedef struct {
    mae_cfg_t model; /* sections [model] and [mae] */
    struct {
        char kind[16]; /* idx | imagefolder | csv | labellist */
        char path[CFG_PATH_MAX];
        char labels[CFG_PATH_MAX];
        char usage[32];
        int label_base; /* label lists: the list's first class number */
        float scale_min, scale_max;
        int hflip;
        float mean[4], std[4];
        int threads; /* loader threads decoding and augmenting ahead of the step */
        long max_bad_run; /* unreadable samples in a row before training gives up */
        /* augmentation of the two views of contrastive stages (MoCo v3's asymmetric
         * recipe); [0] and [1] = view 1 and view 2 (K_FLOAT4 lists fill four) */
        float jitter_p, brightness, contrast, saturation, hue;
        float gray_p, blur_p[4], solarize_p[4];
        /* ContraWarping's local warp (data/warp.h): discs, radius and displacement as
         * fractions of the image side */
        int warp_regions;
        float warp_radius, warp_magnitude;
    } data;
    struct {
        stage_kind_t stage;
        int batch_size;
        long steps;
        long stop_after; /* stop this invocation after so many steps (0: run to steps) */
        float blr, lr, min_lr, weight_decay, beta1, beta2, eps;
        long warmup_steps;
        uint64_t seed;
        char out_dir[CFG_PATH_MAX];
        int log_every, ckpt_every;
        char resume[CFG_PATH_MAX];
        int threads;
        int precision; /* 0 auto, 1 fp32, 2 bf16 (models/mm.h) */
        char init_from[CFG_PATH_MAX];
    } train;
    struct {
        char scheduler[256]; /* tcp://host:port of the scheduler (elastic launch) */
        char bind_host[128]; /* address servers/scheduler bind and advertise */
        int servers, workers;
        cons_mode_t consistency;
        int staleness;
        int heartbeat_ms, dead_ms;
        int chunk_size;
        long slice_floats;  /* BSP pull replies in slices, overlapping update and send */
        int server_threads; /* a server's OpenMP threads (0: automatic) */
        int prefetch;       /* 0 off, 1 on: the next chunk is asked for one step ahead */
        int push_slices;    /* 0 off, 1 on: BSP pushes in pieces of slice_floats */
        int overlap;        /* 0 off, 1 on: BSP pieces pushed during backward */
        wire_t wire;        /* dtype of pushes and pulls on the wire */
        int ckpt_every;
        int keep_ckpts; /* complete checkpoints kept on disk (0: all) */
        int grace_ms; /* preemption: time to checkpoint the stop step */
        int quorum_ms, idle_ms; /* the scheduler's longest waits */
        int chunk_retries;      /* hand-outs of a chunk whose holders died */
        float straggler_k;      /* flag a worker slower than k x the median (0: off) */
        int straggler_n;        /* ... for this many consecutive steps */
        char ckpt_dir[CFG_PATH_MAX];
        int trace;
        long max_msg_mb;
        ema_mode_t ema;
        int curve;                /* 0 off, 1 on: CURVE on every socket (docs/security.md) */
        char keys[CFG_PATH_MAX];  /* the key directory of mimic-keys */
        char key[CFG_PATH_MAX];   /* this process's key pair ("" : by MPI rank in keys) */
    } cluster;
    struct {
        float momentum;      /* m0 of the momentum encoder */
        int momentum_cosine; /* MoCo v3's schedule m -> 1 over train.steps (0: constant) */
        int queue_size;      /* K keys of the negative queue (MoCo v2) */
        int dim;             /* key dimension (the projector's output) */
        int mlp_dim;         /* hidden width of projector and predictor */
        float temperature;
        int bn_groups;       /* heads' BN statistics per batch/G samples (standalone) */
        float mask_ratio;    /* patch tokens removed from the online view (mocov2, densecl) */
    } contrastive;
    struct { /* frozen-encoder evaluation (eval/eval.h) */
        int features, pool; /* encoder|random|pixels; cls|avg */
        char kind[16];
        char train_path[CFG_PATH_MAX], train_labels[CFG_PATH_MAX], train_usage[32];
        char test_path[CFG_PATH_MAX], test_labels[CFG_PATH_MAX], test_usage[32];
        long train_limit, test_limit;
        int batch_size, probe_epochs, probe_batch;
        float probe_lr, probe_momentum, probe_weight_decay, knn_temp;
        char knn_k[64]; /* "1,10,20": parsed by eval_cfg_from */
    } eval;
    struct {
        char stages[256]; /* "mae,mocov3,eval"; empty: the one stage train.stage */
        int run;          /* the index of the stage this process runs (-1: every stage) */
        char name[64];    /* its name, set by config_pipeline_stage */
        int noverrides;
        /* [pipeline.<stage>] keys: "<stage>\0section.key=value" */
        char overrides[CFG_PIPELINE_KEYS][CFG_PATH_MAX + 128];
    } pipeline;
    struct {
        int num_classes; /* classes of the labelled set (the classifier's outputs) */
        float alpha;     /* Beta(alpha, alpha) of the mix; 0: no mixing */
        float cutmix_p;  /* probability that a batch is mixed by CutMix, not mixup */
        float smoothing; /* label smoothing of the classifier's targets */
        float w_con;     /* weight of the mix-supervised contrastive term */
        float tau;       /* its temperature */
        int proj_dim;    /* the projection head's output */
    } mimic;
    struct {           /* ContraWarping (stages/byol.c; docs/objectives.md) */
        float w_neg;   /* weight of the warped-negative term added to BYOL's loss */
        float tau;     /* its temperature */
    } contrawarp;
    struct { /* DenseCL (stages/densecl.c) */
        float lambda; /* L = (1-lambda) global + lambda dense */
    } densecl;
    struct { /* the masking policy (models/maskpolicy.h), section [mae] */
        mask_policy_t policy;
        float temperature; /* softmax temperature of the relative per-position scores */
        float mix;         /* weight of the uniform distribution mixed in */
        float decay;       /* EMA decay of the per-position scores */
    } mask;
    struct {            /* the scheduler's HTTP endpoint (scheduler/httpd.h) */
        char bind[128]; /* numeric address or localhost */
        int port;       /* 0: off */
        int public_ok;  /* 1: a non-loopback bind is allowed */
    } metrics;
    struct { /* CRS-CONT (stages/crscont.c) */
        char coarse_map[256]; /* fine label i -> coarse group, "1,1,1,2,1,3,0" */
        char weights[256];    /* per coarse group weight of its SupCon anchors */
        float tau, base_tau;  /* temperature; SupContrast's base temperature */
        float w_ce, w_simclr; /* weights of the coarse CE and of the SimCLR term */
        int proj_dim;         /* the projection head's output */
    } crscont;
    struct { /* SDD-FIQA quality scores (eval/fiqa.h, mimic-fiqa) */
        int m, repeats;   /* same-/other-class images per repeat; repeats averaged */
        float drop;       /* fraction of the lowest scores left out of the filtered copy */
        int per_class;    /* 1: drop that fraction within each class */
        long limit;       /* score the first N samples of data.* (0: all) */
        int head_epochs;  /* regression head epochs (0: none) */
        float head_lr, head_beta; /* its SGD lr; SmoothL1 beta on scores / 100 */
    } fiqa;
} mimic_cfg_t;

void config_defaults(mimic_cfg_t *c);
/* Loads an INI file over the current values; errors name the file, line and key. */
int config_load(mimic_cfg_t *c, const char *path);
/* Sets one key ("section", "key", "value"); errors name the key and the bad value. */
int config_set(mimic_cfg_t *c, const char *section, const char *key, const char *value);
/* Applies a "section.key=value" override (the part after "--"). */
int config_override(mimic_cfg_t *c, const char *assignment);
/* Effective learning rate: train.lr if set, else blr * batch / 256 (MAE's rule). */
float config_lr(const mimic_cfg_t *c, int global_batch);
void config_print_help(FILE *f);
/* The name of value of the enum key section.key ("bsp"), for logs; "" if not an enum. */
const char *config_enum_name(const char *section, const char *key, int value);
/* The help flags every binary shares: "--help"/"-h" prints usage(stdout),
 * "--help-config" the key table. Returns 1 when arg was one of them (the caller then
 * exits 0), else 0. */
int config_help_flag(const char *arg, void (*usage)(FILE *));
/* Writes every key as INI (for run directories: what exactly ran). */
void config_write(const mimic_cfg_t *c, FILE *f);

/* Shared command-line handling of all three binaries: an argument ending in ".ini"
 * (anywhere) is the INI file, `--section.key=value` flags override it, and `--config F`
 * also names the file. Other arguments are left in rest[] (rest_n of them) in order
 * for the binary's own flags. The file is loaded before any override is applied. */
int config_parse_args(mimic_cfg_t *c, int argc, char **argv, char **rest, int *rest_n);

/* A binary's own flags, for config_start: 1 when rest[*i] is one of them (values it
 * takes advance *i), 0 when it is not, or a negative error after reporting a bad value. */
typedef int(config_flag_fn)(void *ctx, char **rest, int n, int *i);
#define CONFIG_RUN (-1)     /* config_start: go on */
#define CONFIG_EXIT_USAGE 2 /* the exit code of a bad flag, config file or value */
/* The start of every binary's main: config_defaults, config_parse_args, then each
 * other argument in order: a help flag (config_help_flag) ends with exit code 0;
 * flag(ctx, ...) takes the binary's own (flag may be NULL); anything else is reported
 * as "prog: unknown or incomplete flag" with usage on stderr. Returns CONFIG_RUN, or
 * the exit code main returns at once (0 or CONFIG_EXIT_USAGE):
 *   if ((rc = config_start(&cfg, argc, argv, "mimic-x", usage, x_flag, &x)) != CONFIG_RUN)
 *       return rc; */
int config_start(mimic_cfg_t *c, int argc, char **argv, const char *prog, void (*usage)(FILE *),
                 config_flag_fn *flag, void *ctx);

/* Stages of the pipeline (1 when pipeline.stages is empty). */
int config_pipeline_count(const mimic_cfg_t *c);
/* The config of pipeline stage i: base with train.stage = its name (not for "eval"),
 * its [pipeline.<name>] keys applied, train.out_dir = base out_dir/<i>-<name>, and
 * train.init_from = the previous stage's out_dir/model.safetensors unless the stage
 * sets one. name (cap bytes) gets the stage's name. */
int config_pipeline_stage(const mimic_cfg_t *base, int i, mimic_cfg_t *out, char *name,
                          size_t cap);

#endif
