#include "vit.h"

#include "attention.h"
#include "common.h"
#include "gelu.h"
#include "layernorm.h"
#include "linear.h"
#include "mm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int add_named(params_t *p, const char *prefix, int i, const char *leaf, int ndim, int64_t d0,
                     int64_t d1) {
    char name[PARAMS_NAME_MAX];
    snprintf(name, sizeof name, "%s.%d.%s", prefix, i, leaf);
    int64_t shape[2] = {d0, d1};
    return params_add(p, name, ndim, shape);
}

int vit_stack_register(vit_stack_t *s, params_t *p, const char *prefix, int depth, int dim,
                       int heads, int hidden) {
    if (depth < 0 || dim <= 0 || heads <= 0 || dim % heads != 0 || hidden <= 0)
        return mimic_err(MIMIC_EINVAL,
                         "%s: bad shape (depth %d, dim %d, heads %d, hidden %d): dim must be a "
                         "multiple of heads",
                         prefix, depth, dim, heads, hidden);
    s->depth = depth;
    s->dim = dim;
    s->heads = heads;
    s->hidden = hidden;
    s->eps = 1e-6f;
    s->blk = calloc((size_t)(depth > 0 ? depth : 1), sizeof *s->blk);
    if (!s->blk) return mimic_err(MIMIC_ENOMEM, "out of memory for %s", prefix);
    for (int i = 0; i < depth; i++) {
        vit_block_ix_t *b = &s->blk[i];
        int C = dim, H = hidden;
        if ((b->norm1_w = add_named(p, prefix, i, "norm1.weight", 1, C, 0)) < 0 ||
            (b->norm1_b = add_named(p, prefix, i, "norm1.bias", 1, C, 0)) < 0 ||
            (b->qkv_w = add_named(p, prefix, i, "attn.qkv.weight", 2, 3 * C, C)) < 0 ||
            (b->qkv_b = add_named(p, prefix, i, "attn.qkv.bias", 1, 3 * C, 0)) < 0 ||
            (b->proj_w = add_named(p, prefix, i, "attn.proj.weight", 2, C, C)) < 0 ||
            (b->proj_b = add_named(p, prefix, i, "attn.proj.bias", 1, C, 0)) < 0 ||
            (b->norm2_w = add_named(p, prefix, i, "norm2.weight", 1, C, 0)) < 0 ||
            (b->norm2_b = add_named(p, prefix, i, "norm2.bias", 1, C, 0)) < 0 ||
            (b->fc1_w = add_named(p, prefix, i, "mlp.fc1.weight", 2, H, C)) < 0 ||
            (b->fc1_b = add_named(p, prefix, i, "mlp.fc1.bias", 1, H, 0)) < 0 ||
            (b->fc2_w = add_named(p, prefix, i, "mlp.fc2.weight", 2, C, H)) < 0 ||
            (b->fc2_b = add_named(p, prefix, i, "mlp.fc2.bias", 1, C, 0)) < 0)
            return MIMIC_EINVAL;
    }
    return 0;
}

void vit_stack_free(vit_stack_t *s) {
    free(s->blk);
    s->blk = NULL;
}

void vit_xavier_uniform(float *w, int fan_out, int fan_in, rng_t *rng) {
    float bound = sqrtf(6.0f / (float)(fan_in + fan_out));
    for (size_t i = 0; i < (size_t)fan_out * (size_t)fan_in; i++)
        w[i] = (2.0f * rng_uniform(rng) - 1.0f) * bound;
}

static void fill(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

void vit_stack_init(const vit_stack_t *s, params_t *p, rng_t *rng) {
    int C = s->dim, H = s->hidden;
    for (int i = 0; i < s->depth; i++) {
        const vit_block_ix_t *b = &s->blk[i];
        fill(params_w(p, b->norm1_w), (size_t)C, 1.0f);
        fill(params_w(p, b->norm2_w), (size_t)C, 1.0f);
        fill(params_w(p, b->norm1_b), (size_t)C, 0.0f);
        fill(params_w(p, b->norm2_b), (size_t)C, 0.0f);
        vit_xavier_uniform(params_w(p, b->qkv_w), 3 * C, C, rng);
        vit_xavier_uniform(params_w(p, b->proj_w), C, C, rng);
        vit_xavier_uniform(params_w(p, b->fc1_w), H, C, rng);
        vit_xavier_uniform(params_w(p, b->fc2_w), C, H, rng);
        fill(params_w(p, b->qkv_b), 3 * (size_t)C, 0.0f);
        fill(params_w(p, b->proj_b), (size_t)C, 0.0f);
        fill(params_w(p, b->fc1_b), (size_t)H, 0.0f);
        fill(params_w(p, b->fc2_b), (size_t)C, 0.0f);
    }
}

int vit_acts_alloc(vit_acts_t *a, const vit_stack_t *s, int B, int T) {
    memset(a, 0, sizeof *a);
    a->B = a->cap = B;
    a->T = T;
    a->depth = s->depth;
    a->dim = s->dim;
    a->heads = s->heads;
    a->hidden = s->hidden;
    size_t L = (size_t)(s->depth > 0 ? s->depth : 1);
    size_t BT = (size_t)B * (size_t)T, C = (size_t)s->dim, H = (size_t)s->hidden;
    size_t AT = (size_t)B * (size_t)s->heads * (size_t)T * (size_t)T;
    struct {
        float **dst;
        size_t n;
    } want[] = {
        {&a->ln1, L * BT * C},     {&a->ln1_mean, L * BT}, {&a->ln1_rstd, L * BT},
        {&a->qkv, L * BT * 3 * C}, {&a->att, L * AT},      {&a->atty, L * BT * C},
        {&a->res1, L * BT * C},    {&a->ln2, L * BT * C},  {&a->ln2_mean, L * BT},
        {&a->ln2_rstd, L * BT},    {&a->fc1, L * BT * H},  {&a->act, L * BT * H},
        {&a->out, L * BT * C},     {&a->d_res1, BT * C},   {&a->d_ln, BT * C},
        {&a->d_qkv, BT * 3 * C},   {&a->d_atty, BT * C},   {&a->d_hid, BT * H},
        {&a->d_fc1, BT * H},       {&a->d_att, AT},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        *want[i].dst = mimic_alloc(want[i].n * sizeof(float));
        if (!*want[i].dst) {
            vit_acts_free(a);
            return MIMIC_ENOMEM;
        }
    }
    return 0;
}

void vit_acts_free(vit_acts_t *a) {
    float **all[] = {&a->ln1,   &a->ln1_mean, &a->ln1_rstd, &a->qkv,      &a->att,
                     &a->atty,  &a->res1,     &a->ln2,      &a->ln2_mean, &a->ln2_rstd,
                     &a->fc1,   &a->act,      &a->out,      &a->d_res1,   &a->d_ln,
                     &a->d_qkv, &a->d_atty,   &a->d_hid,    &a->d_fc1,    &a->d_att};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        mimic_free(*all[i]);
        *all[i] = NULL;
    }
    unsigned short **half[] = {&a->ln1_16, &a->atty16, &a->ln2_16, &a->act16, &a->w16};
    for (size_t i = 0; i < sizeof half / sizeof half[0]; i++) {
        mimic_free(*half[i]);
        *half[i] = NULL;
    }
}

/* The bf16 arrays of acts, made once (0), or MIMIC_ENOMEM (the caller then rounds each
 * operand where it is used, as every other layer does). */
static int acts_bf16(vit_acts_t *a) {
    if (a->w16) return 0;
    size_t L = (size_t)(a->depth > 0 ? a->depth : 1), BT = (size_t)a->cap * (size_t)a->T;
    size_t C = (size_t)a->dim, H = (size_t)a->hidden;
    struct {
        unsigned short **dst;
        size_t n;
    } want[] = {{&a->ln1_16, L * BT * C}, {&a->atty16, L * BT * C}, {&a->ln2_16, L * BT * C},
                {&a->act16, L * BT * H},  {&a->w16, L * (4 * C * C + 2 * C * H)}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        *want[i].dst = mimic_alloc(want[i].n * sizeof(unsigned short));
        if (!*want[i].dst) {
            for (size_t j = 0; j <= i; j++) {
                mimic_free(*want[j].dst);
                *want[j].dst = NULL;
            }
            return MIMIC_ENOMEM;
        }
    }
    return 0;
}

/* Layer l's slice of the bf16 arrays. */
typedef struct {
    unsigned short *ln1, *atty, *ln2, *act, *qkv_w, *proj_w, *fc1_w, *fc2_w;
} layer16_t;

static layer16_t layer16(const vit_acts_t *a, int l) {
    size_t BT = (size_t)a->B * (size_t)a->T, C = (size_t)a->dim, H = (size_t)a->hidden;
    size_t L = (size_t)l;
    unsigned short *w = a->w16 + L * (4 * C * C + 2 * C * H);
    layer16_t v = {a->ln1_16 + L * BT * C, a->atty16 + L * BT * C, a->ln2_16 + L * BT * C,
                   a->act16 + L * BT * H,  w,
                   w + 3 * C * C,          w + 4 * C * C,
                   w + 4 * C * C + H * C};
    return v;
}

/* Pointers to layer l's slice of every saved activation. */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *res1;
    float *ln2, *ln2_mean, *ln2_rstd, *fc1, *act, *out;
} layer_view_t;

static layer_view_t layer_view(const vit_acts_t *a, int l) {
    size_t BT = (size_t)a->B * (size_t)a->T, C = (size_t)a->dim, H = (size_t)a->hidden;
    size_t AT = (size_t)a->B * (size_t)a->heads * (size_t)a->T * (size_t)a->T;
    size_t L = (size_t)l;
    layer_view_t v = {
        a->ln1 + L * BT * C,  a->ln1_mean + L * BT, a->ln1_rstd + L * BT, a->qkv + L * BT * 3 * C,
        a->att + L * AT,      a->atty + L * BT * C, a->res1 + L * BT * C, a->ln2 + L * BT * C,
        a->ln2_mean + L * BT, a->ln2_rstd + L * BT, a->fc1 + L * BT * H,  a->act + L * BT * H,
        a->out + L * BT * C,
    };
    return v;
}

/* The lowest offset of a block's tensors in the flat vector. */
static size_t block_offset(const vit_block_ix_t *b, const params_t *p) {
    const int ix[] = {b->norm1_w, b->norm1_b, b->qkv_w, b->qkv_b, b->proj_w, b->proj_b,
                      b->norm2_w, b->norm2_b, b->fc1_w, b->fc1_b, b->fc2_w,  b->fc2_b};
    size_t lo = p->t[ix[0]].offset;
    for (size_t i = 1; i < sizeof ix / sizeof ix[0]; i++)
        if (p->t[ix[i]].offset < lo) lo = p->t[ix[i]].offset;
    return lo;
}

/* Below this many floats the element-wise passes of the stack run on one thread. */
#define VIT_PAR_MIN 65536

static void add_inplace(float *y, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= VIT_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
}

static void copy(float *y, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= VIT_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] = x[i];
}

/* The bf16 forward: as the f32 one below, with every GEMM input rounded once (LayerNorm
 * and GELU write theirs rounded) and kept for backward. */
static const float *forward_bf16(const vit_stack_t *s, const params_t *p, vit_acts_t *a,
                                 const float *x) {
    int B = a->B, T = a->T, C = s->dim, H = s->hidden, NH = s->heads, BT = B * T;
    const float *xin = x;
    for (int l = 0; l < s->depth; l++) {
        const vit_block_ix_t *b = &s->blk[l];
        layer_view_t v = layer_view(a, l);
        layer16_t h = layer16(a, l);
        mm_round(h.qkv_w, params_w(p, b->qkv_w), 3L * C * C);
        mm_round(h.proj_w, params_w(p, b->proj_w), (long)C * C);
        mm_round(h.fc1_w, params_w(p, b->fc1_w), (long)H * C);
        mm_round(h.fc2_w, params_w(p, b->fc2_w), (long)C * H);
        layernorm_forward_bf16(h.ln1, v.ln1_mean, v.ln1_rstd, xin, params_w(p, b->norm1_w),
                               params_w(p, b->norm1_b), BT, C, s->eps);
        linear_forward_bf16(v.qkv, h.ln1, h.qkv_w, params_w(p, b->qkv_b), BT, C, 3 * C);
        attention_forward(v.atty, v.att, v.qkv, B, T, C, NH);
        mm_round(h.atty, v.atty, (long)BT * C);
        linear_forward_bf16(v.res1, h.atty, h.proj_w, params_w(p, b->proj_b), BT, C, C);
        add_inplace(v.res1, xin, (size_t)BT * C);
        layernorm_forward_bf16(h.ln2, v.ln2_mean, v.ln2_rstd, v.res1, params_w(p, b->norm2_w),
                               params_w(p, b->norm2_b), BT, C, s->eps);
        linear_forward_bf16(v.fc1, h.ln2, h.fc1_w, params_w(p, b->fc1_b), BT, C, H);
        gelu_forward_bf16(h.act, v.fc1, (size_t)BT * H);
        linear_forward_bf16(v.out, h.act, h.fc2_w, params_w(p, b->fc2_b), BT, H, C);
        add_inplace(v.out, v.res1, (size_t)BT * C);
        xin = v.out;
    }
    return xin;
}

const float *vit_stack_forward(const vit_stack_t *s, const params_t *p, vit_acts_t *a,
                               const float *x) {
    a->bf16 = mm_precision() == MM_BF16 && acts_bf16(a) == 0;
    if (a->bf16) return forward_bf16(s, p, a, x);
    int B = a->B, T = a->T, C = s->dim, H = s->hidden, NH = s->heads, BT = B * T;
    const float *xin = x;
    for (int l = 0; l < s->depth; l++) {
        const vit_block_ix_t *b = &s->blk[l];
        layer_view_t v = layer_view(a, l);
        layernorm_forward(v.ln1, v.ln1_mean, v.ln1_rstd, xin, params_w(p, b->norm1_w),
                          params_w(p, b->norm1_b), BT, C, s->eps);
        linear_forward(v.qkv, v.ln1, params_w(p, b->qkv_w), params_w(p, b->qkv_b), BT, C, 3 * C);
        attention_forward(v.atty, v.att, v.qkv, B, T, C, NH);
        linear_forward(v.res1, v.atty, params_w(p, b->proj_w), params_w(p, b->proj_b), BT, C, C);
        add_inplace(v.res1, xin, (size_t)BT * C);
        layernorm_forward(v.ln2, v.ln2_mean, v.ln2_rstd, v.res1, params_w(p, b->norm2_w),
                          params_w(p, b->norm2_b), BT, C, s->eps);
        linear_forward(v.fc1, v.ln2, params_w(p, b->fc1_w), params_w(p, b->fc1_b), BT, C, H);
        gelu_forward(v.act, v.fc1, (size_t)BT * H);
        linear_forward(v.out, v.act, params_w(p, b->fc2_w), params_w(p, b->fc2_b), BT, H, C);
        add_inplace(v.out, v.res1, (size_t)BT * C);
        xin = v.out;
    }
    return xin;
}


/* A linear layer's backward in the precision of the last forward: dinp written. */
static void linear_back(const vit_acts_t *a, float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const unsigned short *inp16, const float *w,
                        const unsigned short *w16, int M, int K, int N) {
    if (a->bf16)
        linear_backward_bf16(dinp, dw, db, dout, inp16, w16, M, K, N);
    else
        linear_backward_set(dinp, dw, db, dout, inp, w, M, K, N);
}

void vit_stack_backward(const vit_stack_t *s, params_t *p, vit_acts_t *a, float *dx, const float *x,
                        float *dout) {
    int B = a->B, T = a->T, C = s->dim, H = s->hidden, NH = s->heads, BT = B * T;
    size_t nC = (size_t)BT * C, nH = (size_t)BT * H;
    layer16_t h = {0};
    for (int l = s->depth - 1; l >= 0; l--) {
        const vit_block_ix_t *b = &s->blk[l];
        layer_view_t v = layer_view(a, l);
        if (a->bf16) h = layer16(a, l);
        const float *xin = l == 0 ? x : layer_view(a, l - 1).out;
        /* MLP branch: out = res1 + fc2(gelu(fc1(ln2(res1)))) */
        copy(a->d_res1, dout, nC);
        /* the branch's intermediate gradients have one source each: written, not
         * accumulated, so nothing is cleared first */
        linear_back(a, a->d_hid, params_g(p, b->fc2_w), params_g(p, b->fc2_b), dout, v.act, h.act,
                    params_w(p, b->fc2_w), h.fc2_w, BT, H, C);
        if (a->bf16) { /* GELU's gradient made, rounded and bias-summed in one pass */
            const unsigned short *d16 =
                gelu_backward_pack(0, params_g(p, b->fc1_b), a->d_hid, v.fc1, BT, H);
            linear_backward_bf16_packed(a->d_ln, params_g(p, b->fc1_w), d16, h.ln2, h.fc1_w, BT,
                                        C, H);
        } else {
            gelu_backward(a->d_fc1, a->d_hid, v.fc1, nH);
            linear_backward_set(a->d_ln, params_g(p, b->fc1_w), params_g(p, b->fc1_b), a->d_fc1,
                                v.ln2, params_w(p, b->fc1_w), BT, C, H);
        }
        layernorm_backward(a->d_res1, params_g(p, b->norm2_w), params_g(p, b->norm2_b), a->d_ln,
                           v.res1, params_w(p, b->norm2_w), v.ln2_mean, v.ln2_rstd, BT, C);
        /* attention branch: res1 = xin + proj(attn(qkv(ln1(xin)))) */
        linear_back(a, a->d_atty, params_g(p, b->proj_w), params_g(p, b->proj_b), a->d_res1,
                    v.atty, h.atty, params_w(p, b->proj_w), h.proj_w, BT, C, C);
        attention_backward(a->d_qkv, a->d_att, a->d_atty, v.qkv, v.att, B, T, C, NH);
        linear_back(a, a->d_ln, params_g(p, b->qkv_w), params_g(p, b->qkv_b), a->d_qkv, v.ln1,
                    h.ln1, params_w(p, b->qkv_w), h.qkv_w, BT, C, 3 * C);
        /* the gradient reaching this block's input: residual path + LN1 path; layers
         * above the first write it over dout, which is no longer needed */
        float *dinp = dx;
        if (l > 0) {
            dinp = dout;
            copy(dinp, a->d_res1, nC);
        } else {
            add_inplace(dinp, a->d_res1, nC);
        }
        layernorm_backward(dinp, params_g(p, b->norm1_w), params_g(p, b->norm1_b), a->d_ln, xin,
                           params_w(p, b->norm1_w), v.ln1_mean, v.ln1_rstd, BT, C);
        if (s->block_done) s->block_done(s->block_ctx, block_offset(b, p));
    }
    if (s->depth == 0) add_inplace(dx, dout, nC);
}
