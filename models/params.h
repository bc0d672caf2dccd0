/* params — the one flat float32 parameter vector with its table (name, shape, offset).
 *
 * A model registers its trainable tensors in a fixed order (timm's state_dict order)
 * with params_add, then params_finalize allocates the value, gradient and (when asked)
 * optimiser buffers as single contiguous arrays. This flat layout is what parameter
 * servers shard into key ranges and what checkpoints write tensor by tensor. Tensors
 * are referred to by index; params_w/params_g give their current addresses. */
#ifndef MIMIC_PARAMS_H
#define MIMIC_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#define PARAMS_NAME_MAX 80
#define PARAMS_MAX_DIM 4

typedef struct {
    char name[PARAMS_NAME_MAX];
    int ndim;
    int64_t shape[PARAMS_MAX_DIM];
    size_t offset; /* in floats from the start of the flat vector */
    size_t numel;
    int decay; /* 1 if AdamW weight decay applies (MAE: ndim > 1 and not a bias) */
} params_tensor_t;

typedef struct {
    params_tensor_t *t;
    int n, cap;
    size_t total; /* floats */
    float *w;     /* values (total) */
    float *g;     /* gradients (total) */
} params_t;

params_t *params_new(void);
void params_destroy(params_t **p);
/* Registers a tensor; returns its index (>= 0) or a negative error. Weight decay
 * follows MAE's rule unless the caller overrides it with params_set_decay. */
int params_add(params_t *p, const char *name, int ndim, const int64_t *shape);
/* Allocates w and g (zeroed). No params_add afterwards. */
int params_finalize(params_t *p);
int params_find(const params_t *p, const char *name);
void params_zero_grad(params_t *p);

static inline float *params_w(const params_t *p, int i) {
    return p->w + p->t[i].offset;
}
static inline float *params_g(const params_t *p, int i) {
    return p->g + p->t[i].offset;
}

#endif
