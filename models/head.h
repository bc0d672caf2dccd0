/* head — the MLP heads of the contrastive stages: a stack of Linear -> [BN] -> [ReLU].
 *
 * A head_layer_t list describes the stack (head_spec_* build the published ones:
 * MoCo v3's projector and predictor, MoCo v2's and SupCon's two-layer heads), and
 * head_register puts its tensors in a caller's params_t under a prefix with the names
 * of the equivalent torch nn.Sequential, whose index counts the Linear, BN and ReLU
 * modules: "<prefix>.<k>.weight" / ".bias". So MoCo v3's base_encoder.head and
 * predictor, MoCo v2's encoder_q.fc and SupCon's head load by name (see head_register).
 * BN running statistics are buffers, not parameters (the optimiser and the servers
 * must not touch them): the head_t owns them. Activations live in a head_acts_t
 * allocated once per batch size; forward and backward allocate nothing. The acts also
 * say how the rows are grouped for BN's batch statistics (head_acts_alloc_groups): one
 * group is the usual per-process BN; G groups reproduce G workers' per-worker BN in
 * one process (contrastive.bn_groups). */
#ifndef MIMIC_HEAD_H
#define MIMIC_HEAD_H

#include "params.h"
#include "rng.h"

#define HEAD_MAX_LAYERS 8
#define HEAD_BN_EPS 1e-5f     /* nn.BatchNorm1d default */
#define HEAD_BN_MOMENTUM 0.1f /* nn.BatchNorm1d default */

typedef enum {
    HEAD_BN_NONE = 0,
    HEAD_BN_AFFINE, /* BatchNorm1d(out) with weight and bias */
    HEAD_BN_PLAIN,  /* BatchNorm1d(out, affine=False) */
} head_bn_t;

typedef struct {
    int out;      /* Linear output features */
    int bias;     /* Linear has a bias */
    head_bn_t bn; /* BN after the Linear */
    int relu;     /* ReLU last */
} head_layer_t;

typedef enum { HEAD_TRAIN, HEAD_EVAL } head_mode_t;

typedef struct {
    int nlayers, in_dim, out_dim, max_dim;
    head_layer_t layer[HEAD_MAX_LAYERS];
    /* params_t indices, -1 where absent */
    int w[HEAD_MAX_LAYERS], b[HEAD_MAX_LAYERS], bn_w[HEAD_MAX_LAYERS], bn_b[HEAD_MAX_LAYERS];
    /* torch module index of each layer's Linear and BN (for names) */
    int lin_index[HEAD_MAX_LAYERS], bn_index[HEAD_MAX_LAYERS];
    float bn_eps, bn_momentum;
    /* BN running statistics (owned): layer l's mean and var, out floats each, NULL when
     * the layer has no BN. Updated by every HEAD_TRAIN forward, as in torch. */
    float *run_mean[HEAD_MAX_LAYERS], *run_var[HEAD_MAX_LAYERS];
    float *running; /* the one allocation behind run_mean/run_var */
} head_t;

typedef struct {
    int N, cap; /* rows in use, rows allocated */
    int groups; /* BN statistics per group of N/groups contiguous rows */
    const float *x;               /* the input of the last forward (borrowed) */
    float *lin[HEAD_MAX_LAYERS];  /* Linear outputs (N, out) */
    float *y[HEAD_MAX_LAYERS];    /* layer outputs after BN/ReLU (may equal lin) */
    float *mean[HEAD_MAX_LAYERS]; /* BN batch statistics (groups, out) */
    float *rstd[HEAD_MAX_LAYERS];
    float *d0, *d1; /* backward scratch (N, max_dim) */
    float *mem;
} head_acts_t;

/* MoCo v3's _build_mlp(num_layers, in, mlp_dim, out, last_bn): num_layers - 1 blocks of
 * Linear(no bias), BN, ReLU, then Linear(no bias) and, if last_bn, BN(affine=False).
 * Projector: (3, 4096, 256, 1); predictor: (2, 4096, 256, 1) in the reference.
 * Writes num_layers entries to l; returns num_layers or MIMIC_EINVAL. */
int head_spec_mocov3(head_layer_t *l, int num_layers, int mlp_dim, int out, int last_bn);
/* Linear(hidden, bias), ReLU, Linear(out, bias): MoCo v2's head (hidden = backbone
 * width, out 128) and SupCon's (hidden = d, out 128). Writes 2 entries; returns 2. */
int head_spec_mlp2(head_layer_t *l, int hidden, int out);
/* BYOL's projector and predictor (METHODS.md): Linear(hidden, no bias), BN (affine), ReLU,
 * Linear(out, bias iff last_bias): torch indices 0, 1, 3. The first Linear has no bias
 * because the BN after it removes any shift (an exactly zero gradient, which float32
 * turns into rounding noise that Adam would amplify into lr-sized steps). Writes 2
 * entries; returns 2. */
int head_spec_byol(head_layer_t *l, int hidden, int out, int last_bias);

/* Registers the head's tensors as "<prefix>.<k>.weight" / "<prefix>.<k>.bias" where k
 * is the torch Sequential index: for MoCo v3's projector k = 0 Linear, 1 BN, 2 ReLU,
 * 3 Linear, 4 BN, 5 ReLU, 6 Linear, 7 BN(affine=False, no tensors); for mlp2, 0 and 2.
 * Linear weights are (out, in) as in torch. Returns 0 or a negative error. */
int head_register(head_t *h, params_t *p, const char *prefix, int in_dim,
                  const head_layer_t *layers, int nlayers);
void head_free(head_t *h);
/* torch's defaults: Linear weight and bias U(-1/sqrt(in), 1/sqrt(in)); BN weight 1,
 * bias 0; running mean 0, var 1. (MoCo v3 builds its heads after the ViT's own init,
 * so they keep these defaults.) */
void head_init(const head_t *h, params_t *p, rng_t *rng);

/* Forward FLOPs per row: 2 * in * out summed over the Linears (BN and ReLU not
 * counted, as for the encoder). */
double head_flops(const head_t *h);

/* Buffers for batches of N rows; N >= 2 if the head has a BN (MIMIC_EINVAL otherwise:
 * batch statistics of one row are undefined). */
int head_acts_alloc(head_acts_t *a, const head_t *h, int N);
/* The same with BN batch statistics per group: the rows are G contiguous groups of N/G
 * rows, each normalised as if it were a batch of its own (batchnorm_forward_groups).
 * G must divide N, and N/G >= 2 if the head has a BN (MIMIC_EINVAL otherwise). */
int head_acts_alloc_groups(head_acts_t *a, const head_t *h, int N, int G);
void head_acts_free(head_acts_t *a);
/* Runs the next passes on n rows, 2 <= n <= the allocated rows (a batch shortened by
 * corrupt samples), n a multiple of the groups (checked); nothing is reallocated. */
void head_acts_resize(head_acts_t *a, int n);

/* x (N, in_dim) -> returns the output (N, out_dim), owned by a. HEAD_TRAIN uses batch
 * statistics (per group of a) and updates h's running statistics with those of the
 * first group, i.e. what worker 0 of a cluster keeps (torch's DDP, which broadcasts
 * rank 0's BN buffers, does the same); HEAD_EVAL uses the running ones (its
 * activations are not meant for backward). x must stay valid until backward. */
const float *head_forward(head_t *h, const params_t *p, head_acts_t *a, const float *x,
                          head_mode_t mode);
/* After a HEAD_TRAIN forward: dx (N, in_dim) += d loss / d x (dx may be NULL); dout
 * (N, out_dim) is read only; parameter gradients accumulate into p->g. */
void head_backward(const head_t *h, params_t *p, head_acts_t *a, float *dx, const float *dout);

#endif
