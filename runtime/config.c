#include "config.h"

#include "common.h"

#include <errno.h>
#include <float.h>
#include <ini.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* K_ENUM: an int field holding the index of the value in `choices` ("a|b|c"); the
 * name is parsed here once, so code switches on an enum and never compares strings. */
typedef enum { K_INT, K_LONG, K_U64, K_FLOAT, K_STR, K_FLOAT4, K_ENUM } kind_t;

typedef struct {
    const char *section, *key;
    kind_t kind;
    size_t offset, size; /* size: string capacity */
    const char *def, *help;
    const char *choices; /* K_ENUM: "a|b|c" */
} key_t_;

#define F(sec, key, kind, field, def, help)                                                        \
    { sec, key, kind, offsetof(mimic_cfg_t, field), sizeof(((mimic_cfg_t *)0)->field), def, help, NULL }

#define E(sec, key, field, choices, def, help)                                                     \
    { sec, key, K_ENUM, offsetof(mimic_cfg_t, field), sizeof(int), def, help, choices }

static const key_t_ KEYS[] = {
    F("model", "img_size", K_INT, model.img_size, "32", "input image side in pixels"),
    F("model", "in_chans", K_INT, model.in_chans, "1", "image channels (1 gray, 3 RGB)"),
    F("model", "patch_size", K_INT, model.patch_size, "4", "ViT patch side"),
    F("model", "embed_dim", K_INT, model.embed_dim, "192", "encoder width"),
    F("model", "depth", K_INT, model.depth, "12", "encoder blocks"),
    F("model", "num_heads", K_INT, model.num_heads, "3", "encoder attention heads"),
    F("model", "mlp_ratio", K_FLOAT, model.mlp_ratio, "4", "MLP hidden = ratio * width"),
    F("mae", "decoder_embed_dim", K_INT, model.decoder_embed_dim, "128", "decoder width"),
    F("mae", "decoder_depth", K_INT, model.decoder_depth, "2", "decoder blocks"),
    F("mae", "decoder_num_heads", K_INT, model.decoder_num_heads, "4", "decoder heads"),
    F("mae", "mask_ratio", K_FLOAT, model.mask_ratio, "0.75", "fraction of patches removed"),
    F("mae", "norm_pix_loss", K_INT, model.norm_pix_loss, "1",
      "regress per-patch normalised pixels (1) or raw pixels (0)"),
    E("mae", "mask_policy", mask.policy, "random|adversarial", "random",
      "masking policy of MAE (and of the online view under contrastive.mask_ratio): random "
      "(the reference: remove the largest noise) | adversarial (Gumbel-top-k from a running "
      "per-position score, MAE: reconstruction error, contrastive: first-order loss gain of a "
      "removal; harder positions removed more often; docs/objectives.md)"),
    F("mae", "mask_temp", K_FLOAT, mask.temperature, "0.5",
      "adversarial masking: temperature of softmax(score/mean(score)/T) (> 0; small: greedier)"),
    F("mae", "mask_mix", K_FLOAT, mask.mix, "0.5",
      "adversarial masking: weight of the uniform distribution mixed into the scores' softmax "
      "(in [0,1]; 1 = random masking's distribution)"),
    F("mae", "mask_decay", K_FLOAT, mask.decay, "0.9",
      "adversarial masking: EMA decay of the per-position score (in [0,1))"),
    F("data", "kind", K_STR, data.kind, "idx", "idx | imagefolder | csv | labellist"),
    F("data", "path", K_STR, data.path,
      "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
      "IDX images file, ImageFolder root, FER2013 CSV, or image root of a label list"),
    F("data", "labels", K_STR, data.labels,
      "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz",
      "IDX labels file, RAF-DB-style list (`name label` lines; a missing name.jpg is looked "
      "up as name_aligned.jpg), or for a CSV set FERPlus's fer2013new.csv (majority-vote "
      "labels); empty = none (CSV: the emotion column)"),
    F("data", "usage", K_STR, data.usage, "",
      "FER2013 CSV: keep rows with this Usage; label list: keep names starting with this "
      "(RAF-DB: train_ or test_)"),
    F("data", "label_base", K_INT, data.label_base, "0",
      "label list: the number its first class has (RAF-DB's list counts 1..7: 1)"),
    F("data", "scale_min", K_FLOAT, data.scale_min, "0.2", "RandomResizedCrop lower area scale"),
    F("data", "scale_max", K_FLOAT, data.scale_max, "1.0", "RandomResizedCrop upper area scale"),
    F("data", "hflip", K_INT, data.hflip, "1", "random horizontal flip (0/1)"),
    F("data", "mean", K_FLOAT4, data.mean, "0.2860", "per-channel normalisation mean, comma list"),
    F("data", "std", K_FLOAT4, data.std, "0.3530", "per-channel normalisation std, comma list"),
    F("data", "threads", K_INT, data.threads, "1",
      "decode/augment threads running ahead of the training step (0: none, the step builds "
      "its batch). 1: on 2 cores beside 2 compute threads it hides Fashion-MNIST's ~0.5 ms "
      "per 128-image batch, more would only contend with them; JPEG sets (~1 ms an image) "
      "want more"),
    F("data", "max_bad_run", K_LONG, data.max_bad_run, "1000",
      "unreadable samples in a row (no readable one between) after which training stops with "
      "an error naming the data set (0: no limit); a data set whose every sample is unreadable "
      "stops at once"),
    F("data", "jitter_p", K_FLOAT, data.jitter_p, "0.8",
      "two-view stages: probability of ColorJitter (on gray images only brightness and "
      "contrast act)"),
    F("data", "brightness", K_FLOAT, data.brightness, "0.4", "ColorJitter brightness strength"),
    F("data", "contrast", K_FLOAT, data.contrast, "0.4", "ColorJitter contrast strength"),
    F("data", "saturation", K_FLOAT, data.saturation, "0.2",
      "ColorJitter saturation strength (no-op on gray images)"),
    F("data", "hue", K_FLOAT, data.hue, "0.1", "ColorJitter hue strength (no-op on gray images)"),
    F("data", "gray_p", K_FLOAT, data.gray_p, "0.2",
      "two-view stages: probability of RandomGrayscale (no-op on gray images)"),
    F("data", "blur_p", K_FLOAT4, data.blur_p, "1.0,0.1",
      "two-view stages: probability of Gaussian blur for view 1, view 2"),
    F("data", "solarize_p", K_FLOAT4, data.solarize_p, "0,0.2",
      "two-view stages: probability of solarize for view 1, view 2"),
    F("data", "warp_regions", K_INT, data.warp_regions, "2",
      "contrawarp: discs of the random local warp per warped view (1..16)"),
    F("data", "warp_radius", K_FLOAT, data.warp_radius, "0.25",
      "contrawarp: radius of each warp disc as a fraction of the image side (0..1]; the "
      "displacement is exactly 0 outside the discs"),
    F("data", "warp_magnitude", K_FLOAT, data.warp_magnitude, "0.08",
      "contrawarp: largest displacement at a disc's centre as a fraction of the image side "
      "(0..warp_radius/2, so a disc's map does not fold)"),
    E("train", "stage", train.stage, "mae|mocov3|mimic|mocov2|byol|contrawarp|densecl|crscont", "mae",
      "the objective trained (stages/): mae = masked-autoencoder pre-training, mocov3 = "
      "MoCo v3 (two views, momentum encoder, keys of every worker; [contrastive] keys), "
      "mimic = mix-supervised contrastive fine-tuning on labels ([mimic] keys), mocov2 = "
      "MoCo v2 (InfoNCE against the servers' negative queue of contrastive.queue_size keys), "
      "byol = BYOL (predictor regresses the servers' EMA target, 2 - 2 cos; tau_base = "
      "contrastive.momentum), contrawarp = ContraWarping (BYOL + contrawarp.w_neg x a negative "
      "term against locally warped views, data.warp_* keys), densecl = DenseCL (MoCo v2 plus a dense per-patch-token InfoNCE; [densecl] keys), crscont = CRS-CONT (two views, labels mapped to coarse groups, weighted SupCon + coarse CE + SimCLR; [crscont] keys)"),
    F("train", "batch_size", K_INT, train.batch_size, "128", "images per step per worker"),
    F("train", "steps", K_LONG, train.steps, "2000", "optimiser steps in the run"),
    F("train", "stop_after", K_LONG, train.stop_after, "0",
      "stop this invocation after N steps, checkpointing (the schedule still spans steps)"),
    F("train", "blr", K_FLOAT, train.blr, "1.5e-4", "base lr; lr = blr * global_batch / 256"),
    F("train", "lr", K_FLOAT, train.lr, "0", "absolute lr (overrides blr when > 0)"),
    F("train", "min_lr", K_FLOAT, train.min_lr, "0", "lr at the end of the cosine"),
    F("train", "weight_decay", K_FLOAT, train.weight_decay, "0.05", "AdamW decoupled decay"),
    F("train", "beta1", K_FLOAT, train.beta1, "0.9", "AdamW beta1"),
    F("train", "beta2", K_FLOAT, train.beta2, "0.95", "AdamW beta2"),
    F("train", "eps", K_FLOAT, train.eps, "1e-8", "AdamW epsilon"),
    F("train", "warmup_steps", K_LONG, train.warmup_steps, "100", "linear warmup steps"),
    F("train", "seed", K_U64, train.seed, "0", "seed of init, masking, augmentation, sharding"),
    F("train", "out_dir", K_STR, train.out_dir, "runs/mae", "metrics, checkpoints, traces"),
    F("train", "log_every", K_INT, train.log_every, "10", "steps between progress lines"),
    F("train", "ckpt_every", K_INT, train.ckpt_every, "500",
      "steps between checkpoints (0: end only)"),
    F("train", "resume", K_STR, train.resume, "",
      "checkpoint to resume from (\"auto\": latest in out_dir)"),
    F("train", "threads", K_INT, train.threads, "0",
      "compute threads (0: OPENBLAS_NUM_THREADS or all cores)"),
    E("train", "precision", train.precision, "auto|fp32|bf16", "auto",
      "the linear layers' GEMMs: fp32, or bf16 products with fp32 accumulation (oneDNN; "
      "weights, optimiser and element-wise layers stay fp32); auto: bf16 where the CPU has "
      "AVX512_BF16 (docs/precision.md)"),
    F("train", "init_from", K_STR, train.init_from, "",
      "start from the tensors of this safetensors file that the stage has (by name and shape; "
      "a pipeline sets it to the previous stage's model)"),
    F("cluster", "scheduler", K_STR, cluster.scheduler, "",
      "scheduler address tcp://HOST:PORT (elastic launch; env MIMIC_SCHEDULER)"),
    F("cluster", "bind_host", K_STR, cluster.bind_host, "127.0.0.1",
      "interface the scheduler/servers bind and advertise"),
    F("cluster", "servers", K_INT, cluster.servers, "1", "parameter servers"),
    F("cluster", "workers", K_INT, cluster.workers, "2", "workers expected before step 0"),
    E("cluster", "consistency", cluster.consistency, "bsp|asp|ssp", "bsp",
      "bsp (a step waits for every live worker) | asp (every push is a step) | ssp (bounded "
      "staleness, cluster.staleness)"),
    F("cluster", "staleness", K_INT, cluster.staleness, "2", "SSP bound s"),
    F("cluster", "heartbeat_ms", K_INT, cluster.heartbeat_ms, "500", "heartbeat period"),
    F("cluster", "dead_ms", K_INT, cluster.dead_ms, "3000", "silence after which a peer is dead"),
    F("cluster", "chunk_size", K_INT, cluster.chunk_size, "0",
      "samples per work-queue chunk (0: train.batch_size, one chunk per worker step)"),
    F("cluster", "slice_floats", K_LONG, cluster.slice_floats, "262144",
      "servers update and answer BSP pulls in slices of this many floats, so the update "
      "overlaps the transfer (0: one piece)"),
    E("cluster", "push_slices", cluster.push_slices, "off|on", "on",
      "BSP: a worker pushes each server's range in pieces of cluster.slice_floats, and a "
      "server applies a slice (and sends it back) once every worker's piece of it is in, "
      "so receiving, updating and replying overlap"),
    E("cluster", "overlap", cluster.overlap, "off|on", "on",
      "BSP: a worker pushes each slice of its gradient as soon as backward has finished it "
      "(MAE: after each ViT block), while the blocks below are still in backward"),
    E("cluster", "prefetch", cluster.prefetch, "off|on", "on",
      "a worker asks the scheduler for its next chunk one step ahead, so the loader builds "
      "the next batch while this one computes and its push-pull is in flight"),
    E("cluster", "wire", cluster.wire, "fp32|bf16|auto", "fp32",
      "dtype of pushed gradients and pulled weights/EMA on the wire (bf16: half the bytes, "
      "round-to-nearest-even; servers keep fp32 master weights, sums and AdamW); auto: bf16 "
      "when the worker computes in bf16 (train.precision), fp32 otherwise"),
    F("cluster", "server_threads", K_INT, cluster.server_threads, "0",
      "a server's update threads (0: $OMP_NUM_THREADS if set, else the cores but one, left "
      "to ZeroMQ's I/O thread that streams the slices)"),
    F("cluster", "ckpt_every", K_INT, cluster.ckpt_every, "500",
      "steps between cluster checkpoints"),
    F("cluster", "chunk_retries", K_INT, cluster.chunk_retries, "3",
      "a chunk whose holder died is handed out again at most this many times; then it is "
      "skipped as a poison chunk (counted in epoch_done's skipped; 0: retry forever)"),
    F("cluster", "straggler_k", K_FLOAT, cluster.straggler_k, "2.0",
      "the scheduler flags a worker whose step time exceeds k x the median of the others' "
      "(log line, scheduler.jsonl event \"straggler\"); under ASP/SSP its chunks shrink to its "
      "speed (0: off; else > 1)"),
    F("cluster", "straggler_n", K_INT, cluster.straggler_n, "5",
      "... for this many consecutive steps (>= 1); one step back under k x the median "
      "recovers it"),
    F("cluster", "quorum_ms", K_INT, cluster.quorum_ms, "600000",
      "the scheduler ends (exit 1) when the servers and cluster.workers have not all registered "
      "within this time (0: wait forever)"),
    F("cluster", "idle_ms", K_INT, cluster.idle_ms, "600000",
      "the scheduler ends (exit 1) when no worker has been live for this long during training, "
      "e.g. every worker died and none joined (0: wait forever)"),
    F("cluster", "grace_ms", K_INT, cluster.grace_ms, "30000",
      "on SIGTERM/SIGINT/SIGUSR1 the scheduler has the cluster checkpoint the step it stops at "
      "within this time, then ends (0: end at once, as a second signal does)"),
    F("cluster", "keep_ckpts", K_INT, cluster.keep_ckpts, "3",
      "complete cluster checkpoints kept on disk, newest first; older steps are deleted "
      "(0: keep all). A damaged newest step is skipped at resume for the previous one"),
    F("cluster", "ckpt_dir", K_STR, cluster.ckpt_dir, "",
      "checkpoint directory (default out_dir/ckpt)"),
    F("cluster", "trace", K_INT, cluster.trace, "0", "write Chrome trace-event JSON per process"),
    F("cluster", "max_msg_mb", K_LONG, cluster.max_msg_mb, "256",
      "largest accepted message payload"),
    E("cluster", "ema", cluster.ema, "auto|on|off", "auto",
      "servers keep the momentum (EMA) copy: auto = when the running stage reads it"),
    E("cluster", "curve", cluster.curve, "off|on", "off",
      "encrypt and authenticate every cluster socket with CURVE: peers need a key of "
      "cluster.keys' allow-list (docs/security.md; keys from mimic-keys)"),
    F("cluster", "keys", K_STR, cluster.keys, "",
      "CURVE key directory written by mimic-keys (scheduler.pub, allow, the key pairs)"),
    F("cluster", "key", K_STR, cluster.key, "",
      "this process's CURVE key pair file (default: picked from cluster.keys by MPI rank)"),
    F("contrastive", "momentum", K_FLOAT, contrastive.momentum, "0.99",
      "m0 of the momentum encoder k = m*k + (1-m)*q (BYOL, ContraWarping: tau_base)"),
    F("contrastive", "momentum_cosine", K_INT, contrastive.momentum_cosine, "1",
      "MoCo v3's schedule m_t = 1 - (1 + cos(pi t / steps)) (1 - m0) / 2 (0: constant m0)"),
    F("contrastive", "queue_size", K_INT, contrastive.queue_size, "4096",
      "K keys in the negative queue (MoCo v2)"),
    F("contrastive", "dim", K_INT, contrastive.dim, "256", "key dimension (projector output)"),
    F("contrastive", "mlp_dim", K_INT, contrastive.mlp_dim, "1024",
      "hidden width of the projector and predictor MLPs"),
    F("contrastive", "temperature", K_FLOAT, contrastive.temperature, "0.2",
      "InfoNCE temperature tau"),
    F("contrastive", "bn_groups", K_INT, contrastive.bn_groups, "1",
      "standalone only: the heads' BatchNorm statistics per group of batch_size/G contiguous "
      "samples, as G workers of batch_size/G compute them (G > 1 is refused on a cluster, whose "
      "workers each have their own)"),
    F("contrastive", "mask_ratio", K_FLOAT, contrastive.mask_ratio, "0",
      "mocov2 and densecl: fraction of the online (query) view's patch tokens removed before "
      "the encoder, chosen by the masking policy mae.mask_policy (and mae.mask_temp, mask_mix, "
      "mask_decay) from the loader's noise; the key view stays whole. 0: no masking; in [0,1)"),
    E("eval", "features", eval.features, "encoder|random|pixels", "encoder",
      "what is evaluated: encoder (the stage's or file's features) | random (an encoder of "
      "model.* at MAE's init, seed train.seed) | pixels (the normalised images)"),
    E("eval", "pool", eval.pool, "cls|avg", "cls",
      "encoder feature: cls (cls token of the final norm, MAE's probe) | avg (mean of the patch "
      "tokens of the final norm)"),
    F("eval", "kind", K_STR, eval.kind, "",
      "data set kind of both sets (idx, imagefolder, csv, labellist); empty: data.kind"),
    F("eval", "train_path", K_STR, eval.train_path, "",
      "labelled set the probe trains on and k-NN searches; empty: data.path, data.labels and "
      "data.usage"),
    F("eval", "train_labels", K_STR, eval.train_labels, "",
      "labels of eval.train_path (IDX, label list)"),
    F("eval", "train_usage", K_STR, eval.train_usage, "",
      "CSV Usage rows of eval.train_path (e.g. Training)"),
    F("eval", "test_path", K_STR, eval.test_path,
      "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
      "labelled held-out set the accuracies are measured on"),
    F("eval", "test_labels", K_STR, eval.test_labels,
      "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
      "labels of eval.test_path (IDX, label list)"),
    F("eval", "test_usage", K_STR, eval.test_usage, "",
      "CSV Usage rows of eval.test_path (e.g. PublicTest)"),
    F("eval", "train_limit", K_LONG, eval.train_limit, "0",
      "use the first N training samples (0: all)"),
    F("eval", "test_limit", K_LONG, eval.test_limit, "0", "use the first N test samples (0: all)"),
    F("eval", "batch_size", K_INT, eval.batch_size, "32",
      "images per encoder forward during extraction"),
    F("eval", "probe_epochs", K_INT, eval.probe_epochs, "30",
      "linear probe: epochs over the features"),
    F("eval", "probe_batch", K_INT, eval.probe_batch, "256",
      "linear probe: batch size (last partial batch dropped)"),
    F("eval", "probe_lr", K_FLOAT, eval.probe_lr, "0.1",
      "linear probe: SGD learning rate (half-cosine to 0)"),
    F("eval", "probe_momentum", K_FLOAT, eval.probe_momentum, "0.9", "linear probe: SGD momentum"),
    F("eval", "probe_weight_decay", K_FLOAT, eval.probe_weight_decay, "0",
      "linear probe: weight decay of the Linear weight (MAE: 0)"),
    F("eval", "knn_k", K_STR, eval.knn_k, "1,10,20", "k-NN: comma-separated k values (up to 8)"),
    F("eval", "knn_temp", K_FLOAT, eval.knn_temp, "0.07",
      "k-NN: vote weight exp(cos/T) (DINO); 0: majority vote"),
    F("pipeline", "stages", K_STR, pipeline.stages, "",
      "stages run in order, e.g. mae,mocov3,eval: each starts from the previous one's "
      "model (train.init_from) in out_dir/<i>-<stage>; [pipeline.<stage>] sections hold that "
      "stage's keys (section.key = value); empty: the one stage train.stage"),
    F("pipeline", "run", K_INT, pipeline.run, "-1",
      "the pipeline stage this process runs (deploy/pipeline.sh sets it; -1: all, in-process)"),
    F("mimic", "num_classes", K_INT, mimic.num_classes, "10",
      "classes of the labelled set (labels 0..N-1; must match data.labels)"),
    F("mimic", "alpha", K_FLOAT, mimic.alpha, "0.8",
      "mix lambda ~ Beta(alpha, alpha) for mixup and CutMix (0: no mixing)"),
    F("mimic", "cutmix_p", K_FLOAT, mimic.cutmix_p, "0.5",
      "probability that a batch is mixed by CutMix instead of mixup"),
    F("mimic", "smoothing", K_FLOAT, mimic.smoothing, "0.1",
      "label smoothing of the classifier's soft targets (not of the contrastive weights)"),
    F("mimic", "w_con", K_FLOAT, mimic.w_con, "1.0",
      "weight of the mix-supervised contrastive term: L = CE + w_con * SupCon (0: CE only)"),
    F("mimic", "tau", K_FLOAT, mimic.tau, "0.1", "temperature of the contrastive term"),
    F("mimic", "proj_dim", K_INT, mimic.proj_dim, "128",
      "projection head output: Linear(D,D), ReLU, Linear(D,proj_dim)"),
    F("contrawarp", "w_neg", K_FLOAT, contrawarp.w_neg, "1.0",
      "weight of the warped-negative term: L = BYOL + w_neg * softplus((p.z_warp - p.z)/tau) "
      "(>= 0; 0: BYOL with the warped views computed and unused)"),
    F("contrawarp", "tau", K_FLOAT, contrawarp.tau, "0.2",
      "temperature of the warped-negative term (> 0)"),
    F("densecl", "lambda", K_FLOAT, densecl.lambda, "0.5",
      "DenseCL: L = (1-lambda) InfoNCE_global + lambda InfoNCE_dense, in [0,1]; both use "
      "contrastive.temperature, contrastive.dim and the one queue of contrastive.queue_size "
      "rows [global key | pooled dense key]"),
    F("metrics", "port", K_INT, metrics.port, "0",
      "the scheduler serves /metrics (Prometheus), /api/state and the live page / on this "
      "HTTP port (0: off; 1..65535; docs/operations.md)"),
    F("metrics", "bind", K_STR, metrics.bind, "127.0.0.1",
      "numeric address (or localhost) the scheduler's HTTP endpoint binds; a non-loopback "
      "one needs metrics.public=1"),
    F("metrics", "public", K_INT, metrics.public_ok, "0",
      "1: allow metrics.bind on a non-loopback address (the pages reveal the job: loss, "
      "paths, members; no authentication)"),
    F("crscont", "coarse_map", K_STR, crscont.coarse_map, "1,1,1,2,1,3,0",
      "fine label i -> coarse group (comma list, one entry per fine class, groups 0..G-1 each "
      "used); default: FER2013's order angry,disgust,fear,happy,sad,surprise,neutral -> "
      "0 neutral, 1 negative, 2 positive, 3 surprise (RAF-DB, label_base 1: 3,1,1,2,1,1,0)"),
    F("crscont", "weights", K_STR, crscont.weights, "1,0.5,1,1",
      "per coarse group weight (>= 0) of its anchors in the supervised contrastive term, one "
      "per group of crscont.coarse_map (CRS-CONT: 0.5 for the negative group)"),
    F("crscont", "tau", K_FLOAT, crscont.tau, "0.07",
      "temperature of the SupCon and SimCLR terms"),
    F("crscont", "base_tau", K_FLOAT, crscont.base_tau, "0.07",
      "SupContrast's base temperature: both terms are scaled by tau / base_tau"),
    F("crscont", "w_ce", K_FLOAT, crscont.w_ce, "1.0",
      "weight of the coarse classifier's cross-entropy (view 1, coarse labels)"),
    F("crscont", "w_simclr", K_FLOAT, crscont.w_simclr, "0.4",
      "weight of the SimCLR term on the two views' normalised coarse probabilities"),
    F("crscont", "proj_dim", K_INT, crscont.proj_dim, "128",
      "projection head output: Linear(D,D), ReLU, Linear(D,proj_dim)"),
    F("fiqa", "m", K_INT, fiqa.m, "24",
      "mimic-fiqa: same-class and other-class images drawn per repeat (>= 1; at most the "
      "smallest class minus one)"),
    F("fiqa", "repeats", K_INT, fiqa.repeats, "12",
      "mimic-fiqa: repeats K of the draw, whose Wasserstein distances are averaged (>= 1)"),
    F("fiqa", "drop", K_FLOAT, fiqa.drop, "0",
      "mimic-fiqa --filtered: fraction of the lowest-scoring images left out, in [0, 1)"),
    F("fiqa", "per_class", K_INT, fiqa.per_class, "0",
      "mimic-fiqa --filtered: 1 drops the fiqa.drop fraction within each class (keeps the "
      "class balance), 0 over the whole set"),
    F("fiqa", "limit", K_LONG, fiqa.limit, "0",
      "mimic-fiqa: score the first N samples of the data.* set (0: all)"),
    F("fiqa", "head_epochs", K_INT, fiqa.head_epochs, "0",
      "mimic-fiqa: epochs of the quality regression head (Linear on the frozen features, "
      "SmoothL1 on score/100; 0: no head)"),
    F("fiqa", "head_lr", K_FLOAT, fiqa.head_lr, "0.2",
      "mimic-fiqa: SGD (momentum 0.9) learning rate of the regression head, half-cosine to 0"),
    F("fiqa", "head_beta", K_FLOAT, fiqa.head_beta, "0.01",
      "mimic-fiqa: SmoothL1 beta of the head on scores / 100 (0.01: the paper's beta 1 on "
      "0..100 labels)"),
};
#undef F
#undef E

static const key_t_ *find_key(const char *section, const char *key) {
    for (size_t i = 0; i < sizeof KEYS / sizeof KEYS[0]; i++)
        if (strcmp(KEYS[i].section, section) == 0 && strcmp(KEYS[i].key, key) == 0) return &KEYS[i];
    return NULL;
}

static int parse_float(const char *v, float *out) {
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    /* 1e39 is a finite double but an infinite float (found by fuzz_config) */
    if (end == v || *end != '\0' || errno || !(fabs(d) <= FLT_MAX)) return -1;
    *out = (float)d;
    return 0;
}

static int parse_long(const char *v, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (end == v || *end != '\0' || errno) return -1;
    *out = x;
    return 0;
}

/* Why an INI file cannot hold string value v, or NULL when it can: libinih strips the
 * blanks around a value, starts a comment at " ;" and has no escapes, so config_write's
 * file would load back something else (found by fuzz_config). */
static const char *ini_unsafe(const char *v) {
    size_t n = strlen(v);
    if (n && (v[0] == ' ' || v[n - 1] == ' ')) return "leading or trailing blanks";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) return "a control character";
    if (v[0] == ';' || strstr(v, " ;")) return "';' at the start or after a blank (a comment)";
    return NULL;
}

/* Index of value in "a|b|c", or -1. */
static int enum_index(const char *choices, const char *value) {
    size_t n = strlen(value);
    int i = 0;
    for (const char *p = choices; *p; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (n > 0 && len == n && strncmp(p, value, n) == 0) return i;
        if (!bar) break;
        p = bar + 1;
    }
    return -1;
}

/* The name of choice i of "a|b|c" ("" when out of range), in buf. */
static const char *enum_name(const char *choices, int i, char *buf, size_t cap) {
    buf[0] = 0;
    for (const char *p = choices; *p; i--) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (i == 0) {
            snprintf(buf, cap, "%.*s", (int)len, p);
            break;
        }
        if (!bar) break;
        p = bar + 1;
    }
    return buf;
}

const char *config_enum_name(const char *section, const char *key, int value) {
    static __thread char name[64];
    const key_t_ *k = find_key(section, key);
    name[0] = 0;
    if (!k || k->kind != K_ENUM) return name;
    return enum_name(k->choices, value, name, sizeof name);
}

/* A key of one pipeline stage, kept as "<stage>\0<assignment>" and applied by
 * config_pipeline_stage: from [pipeline.<stage>] sections (key = "section.key") or
 * flags --pipeline.<stage>.<section>.<key>=value. */
static int pipeline_override(mimic_cfg_t *c, const char *stage, size_t stage_len,
                             const char *assign_key, const char *value) {
    if (c->pipeline.noverrides == (int)(sizeof c->pipeline.overrides /
                                        sizeof c->pipeline.overrides[0]))
        return mimic_err(MIMIC_EINVAL, "pipeline: more than %d stage keys", CFG_PIPELINE_KEYS);
    char *dst = c->pipeline.overrides[c->pipeline.noverrides];
    size_t cap = sizeof c->pipeline.overrides[0];
    if (stage_len == 0 || !strchr(assign_key, '.') ||
        stage_len + 2 + strlen(assign_key) + strlen(value) >= cap)
        return mimic_err(MIMIC_EINVAL, "pipeline.%.*s: '%s = %s' is not a section.key = value",
                         (int)stage_len, stage, assign_key, value);
    memcpy(dst, stage, stage_len);
    dst[stage_len] = 0;
    snprintf(dst + stage_len + 1, cap - stage_len - 1, "%s=%s", assign_key, value);
    c->pipeline.noverrides++;
    return 0;
}

int config_set(mimic_cfg_t *c, const char *section, const char *key, const char *value) {
    if (strncmp(section, "pipeline.", 9) == 0)
        return pipeline_override(c, section + 9, strlen(section + 9), key, value);
    const char *dot = strchr(key, '.');
    if (strcmp(section, "pipeline") == 0 && dot)
        return pipeline_override(c, key, (size_t)(dot - key), dot + 1, value);
    const key_t_ *k = find_key(section, key);
    if (!k) return mimic_err(MIMIC_EINVAL, "unknown config key %s.%s", section, key);
    char *dst = (char *)c + k->offset;
    long long x;
    float f;
    switch (k->kind) {
    case K_INT:
        if (parse_long(value, &x) || x < -2147483647LL || x > 2147483647LL) goto bad;
        *(int *)dst = (int)x;
        return 0;
    case K_LONG:
        if (parse_long(value, &x)) goto bad;
        *(long *)dst = (long)x;
        return 0;
    case K_U64:
        if (parse_long(value, &x) || x < 0) goto bad;
        *(uint64_t *)dst = (uint64_t)x;
        return 0;
    case K_FLOAT:
        if (parse_float(value, &f)) goto bad;
        *(float *)dst = f;
        return 0;
    case K_STR: {
        const char *why = ini_unsafe(value);
        if (why)
            return mimic_err(MIMIC_EINVAL, "config %s.%s: a value with %s cannot be kept in an "
                             "INI file", section, key, why);
        if (strlen(value) >= k->size)
            return mimic_err(MIMIC_EINVAL, "config %s.%s: value longer than %zu bytes", section,
                             key, k->size - 1);
        memcpy(dst, value, strlen(value) + 1);
        return 0;
    }
    case K_ENUM: {
        int i = enum_index(k->choices, value);
        if (i < 0)
            return mimic_err(MIMIC_EINVAL, "config %s.%s: '%s' is not one of %s", section, key,
                             value, k->choices);
        *(int *)dst = i;
        return 0;
    }
    case K_FLOAT4: {
        float vals[4];
        int n = 0;
        char buf[256];
        if (strlen(value) >= sizeof buf) goto bad;
        strcpy(buf, value);
        for (char *tok = strtok(buf, ", "); tok; tok = strtok(NULL, ", ")) {
            if (n == 4 || parse_float(tok, &vals[n])) goto bad;
            n++;
        }
        if (n == 0) goto bad;
        for (int i = 0; i < 4; i++)
            ((float *)dst)[i] = vals[i < n ? i : n - 1];
        return 0;
    }
    }
bad:
    return mimic_err(MIMIC_EINVAL, "config %s.%s: cannot parse '%s'", section, key, value);
}

void config_defaults(mimic_cfg_t *c) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < sizeof KEYS / sizeof KEYS[0]; i++) {
        int rc = config_set(c, KEYS[i].section, KEYS[i].key, KEYS[i].def);
        MIMIC_CHECK(rc == 0);
    }
}

typedef struct {
    mimic_cfg_t *c;
    const char *path;
    int rc;
} load_ctx_t;

static int cfg_ini_line(void *user, const char *section, const char *name, const char *value) {
    load_ctx_t *ctx = user;
    int rc = config_set(ctx->c, section, name, value);
    if (rc) {
        /* a copy: mimic_err writes the buffer mimic_last_error points at (formatting it
         * into itself garbled every message about a bad key in a file) */
        char why[512];
        snprintf(why, sizeof why, "%s", mimic_last_error());
        mimic_err(rc, "%s: %s", ctx->path, why);
        if (!ctx->rc) ctx->rc = rc;
        return 0;
    }
    return 1;
}

/* libinih reads a line in pieces of INI_MAX_LINE - 1 bytes and takes the rest for the
 * next line: a value cut short, or continued as a multi-line value when the rest starts
 * with a blank (a path silently became "= 5"; found by fuzz_config). Refuse such lines. */
static int check_line_lengths(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0; /* ini_parse reports it */
    int c, line = 1, rc = 0;
    size_t len = 0;
    while (!rc && (c = getc(f)) != EOF) {
        if (c == '\n') {
            line++;
            len = 0;
        } else if (++len > INI_MAX_LINE - 2) {
            rc = mimic_err(MIMIC_EFORMAT, "%s:%d: line longer than %d bytes (libinih's limit)",
                           path, line, INI_MAX_LINE - 2);
        }
    }
    fclose(f);
    return rc;
}

int config_load(mimic_cfg_t *c, const char *path) {
    load_ctx_t ctx = {c, path, 0};
    int rc = check_line_lengths(path);
    if (rc) return rc;
    int line = ini_parse(path, cfg_ini_line, &ctx);
    if (line == -1) return mimic_err(MIMIC_EIO, "%s: cannot open config file", path);
    if (line == -2) return mimic_err(MIMIC_ENOMEM, "%s: out of memory parsing", path);
    if (ctx.rc) return ctx.rc;
    if (line > 0) return mimic_err(MIMIC_EFORMAT, "%s:%d: malformed line", path, line);
    return 0;
}

int config_override(mimic_cfg_t *c, const char *assignment) {
    const char *dot = strchr(assignment, '.'), *eq = strchr(assignment, '=');
    if (!dot || !eq || dot > eq)
        return mimic_err(MIMIC_EINVAL, "flag --%s: expected --section.key=value", assignment);
    char section[64], key[64];
    size_t ns = (size_t)(dot - assignment), nk = (size_t)(eq - dot - 1);
    if (ns >= sizeof section || nk >= sizeof key)
        return mimic_err(MIMIC_EINVAL, "flag --%s: key too long", assignment);
    memcpy(section, assignment, ns);
    section[ns] = 0;
    memcpy(key, dot + 1, nk);
    key[nk] = 0;
    return config_set(c, section, key, eq + 1);
}

float config_lr(const mimic_cfg_t *c, int global_batch) {
    if (c->train.lr > 0) return c->train.lr;
    return c->train.blr * (float)global_batch / 256.0f;
}

void config_print_help(FILE *f) {
    const char *sec = "";
    for (size_t i = 0; i < sizeof KEYS / sizeof KEYS[0]; i++) {
        if (strcmp(sec, KEYS[i].section) != 0) {
            sec = KEYS[i].section;
            fprintf(f, "[%s]\n", sec);
        }
        fprintf(f, "  %-20s %-12s %s\n", KEYS[i].key, KEYS[i].def[0] ? KEYS[i].def : "\"\"",
                KEYS[i].help);
    }
}

int config_help_flag(const char *arg, void (*usage)(FILE *)) {
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
        usage(stdout);
        return 1;
    }
    if (strcmp(arg, "--help-config") == 0) {
        config_print_help(stdout);
        return 1;
    }
    return 0;
}

void config_write(const mimic_cfg_t *c, FILE *f) {
    const char *sec = "";
    for (size_t i = 0; i < sizeof KEYS / sizeof KEYS[0]; i++) {
        const key_t_ *k = &KEYS[i];
        if (strcmp(sec, k->section) != 0) {
            sec = k->section;
            fprintf(f, "[%s]\n", sec);
        }
        const char *src = (const char *)c + k->offset;
        fprintf(f, "%s = ", k->key);
        switch (k->kind) {
        case K_INT:
            fprintf(f, "%d\n", *(const int *)src);
            break;
        case K_LONG:
            fprintf(f, "%ld\n", *(const long *)src);
            break;
        case K_U64:
            fprintf(f, "%llu\n", (unsigned long long)*(const uint64_t *)src);
            break;
        case K_FLOAT:
            fprintf(f, "%.9g\n", *(const float *)src);
            break;
        case K_STR:
            fprintf(f, "%s\n", src);
            break;
        case K_ENUM: {
            char name[64];
            fprintf(f, "%s\n", enum_name(k->choices, *(const int *)src, name, sizeof name));
            break;
        }
        case K_FLOAT4: {
            const float *v = (const float *)src;
            fprintf(f, "%.9g,%.9g,%.9g,%.9g\n", v[0], v[1], v[2], v[3]);
            break;
        }
        }
    }
}

static int is_ini_arg(const char *a) {
    size_t n = strlen(a);
    return a[0] != '-' && n > 4 && strcmp(a + n - 4, ".ini") == 0;
}

int config_parse_args(mimic_cfg_t *c, int argc, char **argv, char **rest, int *rest_n) {
    const char *file = NULL;
    int nr = 0, rc;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            file = argv[++i];
        else if (is_ini_arg(argv[i]))
            file = argv[i];
    }
    if (file && (rc = config_load(c, file))) return rc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (is_ini_arg(a)) continue;
        const char *eq = strchr(a, '='), *dot = strchr(a, '.');
        if (strncmp(a, "--", 2) == 0 && eq && dot && dot < eq) {
            if ((rc = config_override(c, a + 2))) return rc;
        } else {
            rest[nr++] = argv[i];
        }
    }
    *rest_n = nr;
    return 0;
}

int config_start(mimic_cfg_t *c, int argc, char **argv, const char *prog, void (*usage)(FILE *),
                 config_flag_fn *flag, void *ctx) {
    int n = 0, code = CONFIG_RUN;
    config_defaults(c);
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest || config_parse_args(c, argc, argv, rest, &n)) {
        free(rest);
        return CONFIG_EXIT_USAGE;
    }
    for (int i = 0; i < n && code == CONFIG_RUN; i++) {
        if (config_help_flag(rest[i], usage)) {
            code = 0;
            break;
        }
        int taken = flag ? flag(ctx, rest, n, &i) : 0;
        if (taken == 0) {
            mimic_err(MIMIC_EINVAL, "%s: unknown or incomplete flag '%s'", prog, rest[i]);
            usage(stderr);
        }
        if (taken <= 0) code = CONFIG_EXIT_USAGE;
    }
    free(rest); /* what the flags keep points into argv */
    if (code == CONFIG_RUN && c->pipeline.stages[0]) {
        /* the pipeline is checked here (a bad stage key is a usage error); one stage of
         * it (pipeline.run) makes this process run with that stage's configuration */
        static mimic_cfg_t stage; /* too large for the stack of a caller's caller */
        char name[64];
        for (int i = 0; i < config_pipeline_count(c); i++)
            if (config_pipeline_stage(c, i, &stage, name, sizeof name)) return CONFIG_EXIT_USAGE;
        if (c->pipeline.run >= 0) {
            if (config_pipeline_stage(c, c->pipeline.run, &stage, name, sizeof name))
                return CONFIG_EXIT_USAGE;
            *c = stage;
        }
    }
    return code;
}

int config_pipeline_count(const mimic_cfg_t *c) {
    if (!c->pipeline.stages[0]) return 1;
    int n = 1;
    for (const char *p = c->pipeline.stages; *p; p++)
        n += *p == ',';
    return n;
}

/* Name of stage i of pipeline.stages (or train.stage's name for a one-stage run). */
static int stage_name(const mimic_cfg_t *c, int i, char *name, size_t cap) {
    const char *p = c->pipeline.stages;
    for (int k = 0; k < i && p; k++) {
        p = strchr(p, ',');
        if (p) p++;
    }
    if (!p) return mimic_err(MIMIC_EINVAL, "pipeline.stages: no stage %d in '%s'", i, c->pipeline.stages);
    size_t n = strcspn(p, ",");
    if (n == 0 || n >= cap)
        return mimic_err(MIMIC_EINVAL, "pipeline.stages: stage %d of '%s' is empty or too long", i,
                         c->pipeline.stages);
    memcpy(name, p, n);
    name[n] = 0;
    return 0;
}

int config_pipeline_stage(const mimic_cfg_t *base, int i, mimic_cfg_t *out, char *name,
                          size_t cap) {
    int n = config_pipeline_count(base), rc;
    if (i < 0 || i >= n)
        return mimic_err(MIMIC_EINVAL, "pipeline.run: %d is not a stage of '%s' (0..%d)", i,
                         base->pipeline.stages, n - 1);
    *out = *base;
    out->pipeline.run = i;
    if (!base->pipeline.stages[0]) {
        snprintf(name, cap, "%s", config_enum_name("train", "stage", base->train.stage));
        snprintf(out->pipeline.name, sizeof out->pipeline.name, "%s", name);
        return 0;
    }
    if ((rc = stage_name(base, i, name, cap))) return rc;
    snprintf(out->pipeline.name, sizeof out->pipeline.name, "%s", name);
    /* a misspelt section is an error; a section of a stage the pipeline does not run is
     * kept for when it does (a config file holds one for every objective, and
     * --pipeline.stages picks) */
    const key_t_ *stage_key = find_key("train", "stage");
    for (int k = 0; k < base->pipeline.noverrides; k++) {
        const char *o = base->pipeline.overrides[k];
        int known = strcmp(o, "eval") == 0 || enum_index(stage_key->choices, o) >= 0;
        char other[64];
        for (int j = 0; j < n && !known; j++)
            known = stage_name(base, j, other, sizeof other) == 0 && strcmp(other, o) == 0;
        if (!known)
            return mimic_err(MIMIC_EINVAL, "[pipeline.%s] (%s): '%s' is neither one of "
                                           "pipeline.stages '%s' nor a train.stage",
                             o, o + strlen(o) + 1, o, base->pipeline.stages);
    }
    if (strcmp(name, "eval") != 0 && (rc = config_set(out, "train", "stage", name))) return rc;
    for (int k = 0; k < base->pipeline.noverrides; k++) {
        const char *o = base->pipeline.overrides[k];
        if (strcmp(o, name) == 0 && (rc = config_override(out, o + strlen(o) + 1))) {
            char why[512];
            snprintf(why, sizeof why, "%s", mimic_last_error());
            return mimic_err(rc, "[pipeline.%s]: %s", name, why);
        }
    }
    int w = snprintf(out->train.out_dir, sizeof out->train.out_dir, "%s/%d-%s",
                     base->train.out_dir, i, name);
    if (w < 0 || (size_t)w >= sizeof out->train.out_dir)
        return mimic_err(MIMIC_EINVAL, "train.out_dir: too long for pipeline stage dirs");
    if (i > 0 && !out->train.init_from[0]) {
        char prev[64];
        if ((rc = stage_name(base, i - 1, prev, sizeof prev))) return rc;
        snprintf(out->train.init_from, sizeof out->train.init_from, "%.900s/%d-%s/model.safetensors",
                 base->train.out_dir, i - 1, prev);
    }
    return 0;
}
