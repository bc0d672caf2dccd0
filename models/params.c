#include "params.h"

#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

params_t *params_new(void) {
    params_t *p = calloc(1, sizeof *p);
    if (!p) mimic_err(MIMIC_ENOMEM, "out of memory for the parameter table");
    return p;
}

void params_destroy(params_t **pp) {
    if (!pp || !*pp) return;
    params_t *p = *pp;
    free(p->t);
    mimic_free(p->w);
    mimic_free(p->g);
    free(p);
    *pp = NULL;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int params_add(params_t *p, const char *name, int ndim, const int64_t *shape) {
    MIMIC_CHECK(p->w == NULL); /* registering after finalize would move every tensor */
    if (ndim < 1 || ndim > PARAMS_MAX_DIM || strlen(name) >= PARAMS_NAME_MAX)
        return mimic_err(MIMIC_EINVAL, "parameter '%s': bad rank %d or name too long", name, ndim);
    if (params_find(p, name) >= 0)
        return mimic_err(MIMIC_EINVAL, "parameter '%s' registered twice", name);
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        params_tensor_t *t = realloc(p->t, (size_t)cap * sizeof *t);
        if (!t) return mimic_err(MIMIC_ENOMEM, "out of memory for the parameter table");
        p->t = t;
        p->cap = cap;
    }
    params_tensor_t *t = &p->t[p->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] <= 0) return mimic_err(MIMIC_EINVAL, "parameter '%s': empty dimension", name);
        t->shape[d] = shape[d];
        t->numel *= (size_t)shape[d];
    }
    t->offset = p->total;
    t->decay = ndim > 1 && !ends_with(name, ".bias");
    p->total += t->numel;
    return p->n++;
}

int params_finalize(params_t *p) {
    p->w = mimic_alloc(p->total * sizeof(float));
    p->g = mimic_alloc(p->total * sizeof(float));
    if (!p->w || !p->g) return MIMIC_ENOMEM;
    return 0;
}

int params_find(const params_t *p, const char *name) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->t[i].name, name) == 0) return i;
    return -1;
}

void params_zero_grad(params_t *p) {
    mimic_zero(p->g, p->total);
}
