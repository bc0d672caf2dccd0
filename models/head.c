#include "head.h"

#include "batchnorm.h"
#include "common.h"
#include "linear.h"
#include "relu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int head_spec_mocov3(head_layer_t *l, int num_layers, int mlp_dim, int out, int last_bn) {
    if (num_layers < 1 || num_layers > HEAD_MAX_LAYERS || mlp_dim <= 0 || out <= 0)
        return mimic_err(MIMIC_EINVAL, "MoCo v3 head: bad num_layers %d, mlp_dim %d or out %d",
                         num_layers, mlp_dim, out);
    for (int i = 0; i < num_layers; i++) {
        int last = i == num_layers - 1;
        l[i] =
            (head_layer_t){.out = last ? out : mlp_dim,
                           .bias = 0,
                           .bn = last ? (last_bn ? HEAD_BN_PLAIN : HEAD_BN_NONE) : HEAD_BN_AFFINE,
                           .relu = !last};
    }
    return num_layers;
}

int head_spec_mlp2(head_layer_t *l, int hidden, int out) {
    l[0] = (head_layer_t){.out = hidden, .bias = 1, .bn = HEAD_BN_NONE, .relu = 1};
    l[1] = (head_layer_t){.out = out, .bias = 1, .bn = HEAD_BN_NONE, .relu = 0};
    return 2;
}

int head_spec_byol(head_layer_t *l, int hidden, int out, int last_bias) {
    l[0] = (head_layer_t){.out = hidden, .bias = 0, .bn = HEAD_BN_AFFINE, .relu = 1};
    l[1] = (head_layer_t){.out = out, .bias = last_bias != 0, .bn = HEAD_BN_NONE, .relu = 0};
    return 2;
}

static int add_tensor(params_t *p, const char *prefix, int k, const char *leaf, int ndim,
                      int64_t d0, int64_t d1) {
    char name[PARAMS_NAME_MAX];
    int n = snprintf(name, sizeof name, "%s.%d.%s", prefix, k, leaf);
    if (n < 0 || n >= (int)sizeof name)
        return mimic_err(MIMIC_EINVAL, "head prefix '%s' too long", prefix);
    int64_t shape[2] = {d0, d1};
    return params_add(p, name, ndim, shape);
}

int head_register(head_t *h, params_t *p, const char *prefix, int in_dim,
                  const head_layer_t *layers, int nlayers) {
    memset(h, 0, sizeof *h);
    if (nlayers < 1 || nlayers > HEAD_MAX_LAYERS || in_dim <= 0)
        return mimic_err(MIMIC_EINVAL, "%s: bad head (%d layers, in %d)", prefix, nlayers, in_dim);
    h->nlayers = nlayers;
    h->in_dim = h->max_dim = in_dim;
    h->bn_eps = HEAD_BN_EPS;
    h->bn_momentum = HEAD_BN_MOMENTUM;
    size_t nrun = 0;
    int k = 0, in = in_dim;
    for (int l = 0; l < nlayers; l++) {
        const head_layer_t *s = &layers[l];
        if (s->out <= 0 || s->bn < HEAD_BN_NONE || s->bn > HEAD_BN_PLAIN)
            return mimic_err(MIMIC_EINVAL, "%s: layer %d: bad width %d or BN kind", prefix, l,
                             s->out);
        h->layer[l] = *s;
        h->w[l] = h->b[l] = h->bn_w[l] = h->bn_b[l] = h->bn_index[l] = -1;
        h->lin_index[l] = k;
        if ((h->w[l] = add_tensor(p, prefix, k, "weight", 2, s->out, in)) < 0) return h->w[l];
        if (s->bias && (h->b[l] = add_tensor(p, prefix, k, "bias", 1, s->out, 0)) < 0)
            return h->b[l];
        k++;
        if (s->bn != HEAD_BN_NONE) {
            h->bn_index[l] = k;
            nrun += 2 * (size_t)s->out;
            if (s->bn == HEAD_BN_AFFINE &&
                ((h->bn_w[l] = add_tensor(p, prefix, k, "weight", 1, s->out, 0)) < 0 ||
                 (h->bn_b[l] = add_tensor(p, prefix, k, "bias", 1, s->out, 0)) < 0))
                return MIMIC_EINVAL;
            k++;
        }
        if (s->relu) k++;
        in = s->out;
        if (in > h->max_dim) h->max_dim = in;
    }
    h->out_dim = in;
    if (nrun) {
        h->running = mimic_alloc(nrun * sizeof(float));
        if (!h->running) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", prefix);
        float *r = h->running;
        for (int l = 0; l < nlayers; l++) {
            if (h->layer[l].bn == HEAD_BN_NONE) continue;
            int o = h->layer[l].out;
            h->run_mean[l] = r;
            h->run_var[l] = r + o;
            for (int c = 0; c < o; c++)
                h->run_var[l][c] = 1.0f;
            r += 2 * (size_t)o;
        }
    }
    return 0;
}

void head_free(head_t *h) {
    mimic_free(h->running);
    h->running = NULL;
    for (int l = 0; l < HEAD_MAX_LAYERS; l++)
        h->run_mean[l] = h->run_var[l] = NULL;
}

static void fill_uniform(float *x, size_t n, float bound, rng_t *rng) {
    for (size_t i = 0; i < n; i++)
        x[i] = (2.0f * rng_uniform(rng) - 1.0f) * bound;
}

void head_init(const head_t *h, params_t *p, rng_t *rng) {
    int in = h->in_dim;
    for (int l = 0; l < h->nlayers; l++) {
        int o = h->layer[l].out;
        float bound = 1.0f / sqrtf((float)in);
        fill_uniform(params_w(p, h->w[l]), (size_t)o * in, bound, rng);
        if (h->b[l] >= 0) fill_uniform(params_w(p, h->b[l]), (size_t)o, bound, rng);
        if (h->bn_w[l] >= 0)
            for (int c = 0; c < o; c++) {
                params_w(p, h->bn_w[l])[c] = 1.0f;
                params_w(p, h->bn_b[l])[c] = 0.0f;
            }
        if (h->run_mean[l])
            for (int c = 0; c < o; c++) {
                h->run_mean[l][c] = 0.0f;
                h->run_var[l][c] = 1.0f;
            }
        in = o;
    }
}

void head_acts_resize(head_acts_t *a, int n) {
    MIMIC_CHECK(n >= 1 && n <= a->cap && n % a->groups == 0);
    a->N = n;
}

int head_acts_alloc(head_acts_t *a, const head_t *h, int N) {
    return head_acts_alloc_groups(a, h, N, 1);
}

int head_acts_alloc_groups(head_acts_t *a, const head_t *h, int N, int G) {
    memset(a, 0, sizeof *a);
    if (G < 1 || N % G)
        return mimic_err(MIMIC_EINVAL, "head: %d rows do not split into %d BatchNorm groups", N, G);
    int has_bn = 0;
    size_t total = 2 * (size_t)N * h->max_dim;
    for (int l = 0; l < h->nlayers; l++) {
        size_t o = (size_t)h->layer[l].out;
        total += (size_t)N * o;
        if (h->layer[l].bn != HEAD_BN_NONE) {
            has_bn = 1;
            total += (size_t)N * o + 2 * (size_t)G * o;
        }
    }
    if (N < 1 || (has_bn && N / G < 2))
        return mimic_err(MIMIC_EINVAL,
                         "head: batch of %d row(s) (%d per BatchNorm group); BatchNorm needs at "
                         "least 2 rows per group",
                         N, N / G);
    a->mem = mimic_alloc(total * sizeof(float));
    if (!a->mem) return MIMIC_ENOMEM;
    a->N = a->cap = N;
    a->groups = G;
    float *m = a->mem;
    a->d0 = m;
    m += (size_t)N * h->max_dim;
    a->d1 = m;
    m += (size_t)N * h->max_dim;
    for (int l = 0; l < h->nlayers; l++) {
        size_t o = (size_t)h->layer[l].out;
        a->lin[l] = a->y[l] = m;
        m += (size_t)N * o;
        if (h->layer[l].bn == HEAD_BN_NONE) continue;
        /* BN backward needs its input, so BN output gets its own buffer; a ReLU alone
         * runs in place (its backward needs only the sign) */
        a->y[l] = m;
        m += (size_t)N * o;
        a->mean[l] = m;
        a->rstd[l] = m + (size_t)G * o;
        m += 2 * (size_t)G * o;
    }
    return 0;
}

void head_acts_free(head_acts_t *a) {
    mimic_free(a->mem);
    memset(a, 0, sizeof *a);
}

static const float *opt_w(const params_t *p, int i) {
    return i >= 0 ? params_w(p, i) : NULL;
}
static float *opt_g(const params_t *p, int i) {
    return i >= 0 ? params_g(p, i) : NULL;
}

const float *head_forward(head_t *h, const params_t *p, head_acts_t *a, const float *x,
                          head_mode_t mode) {
    int N = a->N, in = h->in_dim;
    const float *cur = x;
    a->x = x;
    for (int l = 0; l < h->nlayers; l++) {
        const head_layer_t *s = &h->layer[l];
        size_t n = (size_t)N * s->out;
        linear_forward(a->lin[l], cur, params_w(p, h->w[l]), opt_w(p, h->b[l]), N, in, s->out);
        if (s->bn != HEAD_BN_NONE) {
            const float *bw = opt_w(p, h->bn_w[l]), *bb = opt_w(p, h->bn_b[l]);
            if (mode == HEAD_TRAIN) {
                batchnorm_forward_groups(a->y[l], a->mean[l], a->rstd[l], a->lin[l], bw, bb,
                                         a->groups, N, s->out, h->bn_eps);
                batchnorm_update_running(h->run_mean[l], h->run_var[l], a->lin[l], N / a->groups,
                                         s->out, h->bn_momentum);
            } else {
                batchnorm_forward_eval(a->y[l], a->lin[l], h->run_mean[l], h->run_var[l], bw, bb, N,
                                       s->out, h->bn_eps);
            }
        }
        if (s->relu) relu_forward(a->y[l], a->y[l], n);
        cur = a->y[l];
        in = s->out;
    }
    return cur;
}

void head_backward(const head_t *h, params_t *p, head_acts_t *a, float *dx, const float *dout) {
    int N = a->N;
    float *cur = a->d0, *other = a->d1, *t;
    memcpy(cur, dout, (size_t)N * h->out_dim * sizeof *cur);
    for (int l = h->nlayers - 1; l >= 0; l--) {
        const head_layer_t *s = &h->layer[l];
        int o = s->out, in = l ? h->layer[l - 1].out : h->in_dim;
        size_t n = (size_t)N * o;
        if (s->relu) {
            mimic_zero(other, n);
            relu_backward(other, cur, a->y[l], n);
            t = cur, cur = other, other = t;
        }
        if (s->bn != HEAD_BN_NONE) {
            mimic_zero(other, n);
            batchnorm_backward_groups(other, opt_g(p, h->bn_w[l]), opt_g(p, h->bn_b[l]), cur,
                                      a->lin[l], opt_w(p, h->bn_w[l]), a->mean[l], a->rstd[l],
                                      a->groups, N, o);
            t = cur, cur = other, other = t;
        }
        const float *xin = l ? a->y[l - 1] : a->x;
        float *din = l ? other : dx;
        if (l) mimic_zero(other, (size_t)N * in);
        linear_backward(din, params_g(p, h->w[l]), opt_g(p, h->b[l]), cur, xin,
                        params_w(p, h->w[l]), N, in, o);
        if (l) t = cur, cur = other, other = t;
    }
}

double head_flops(const head_t *h) {
    double f = 0;
    int in = h->in_dim;
    for (int l = 0; l < h->nlayers; l++) {
        f += 2.0 * in * h->layer[l].out;
        in = h->layer[l].out;
    }
    return f;
}
