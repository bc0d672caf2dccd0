/* negqueue.c — the ring buffer of negative keys. */
#include "negqueue.h"

#include "common.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int negqueue_new(negqueue_t **out, size_t capacity) {
    *out = NULL;
    if (capacity == 0) return mimic_err(MIMIC_EINVAL, "negative-key queue capacity must be >= 1");
    negqueue_t *q = calloc(1, sizeof *q);
    if (!q) return mimic_err(MIMIC_ENOMEM, "out of memory for the negative-key queue");
    q->cap = capacity;
    *out = q;
    return 0;
}

void negqueue_destroy(negqueue_t **qp) {
    if (!qp || !*qp) return;
    mimic_free((*qp)->rows);
    free(*qp);
    *qp = NULL;
}

int negqueue_push(negqueue_t *q, const float *rows, size_t count, size_t dim, size_t max_bytes,
                  char *why, size_t whylen) {
    if (!q->rows) {
        if (dim == 0 || q->cap > max_bytes / sizeof(float) / dim) {
            snprintf(why, whylen,
                     "QUEUE_PUSH header field 'a[1]' (dim): a ring of %zu x %zu floats exceeds "
                     "the message limit of %zu bytes",
                     q->cap, dim, max_bytes);
            return MIMIC_EINVAL;
        }
        if (!(q->rows = mimic_alloc(q->cap * dim * sizeof(float)))) {
            snprintf(why, whylen, "out of memory for a %zu x %zu queue", q->cap, dim);
            return MIMIC_ENOMEM;
        }
        q->dim = dim;
    }
    if (dim != q->dim) {
        snprintf(why, whylen, "QUEUE_PUSH header field 'a[1]' (dim): %zu, but the queue holds %zu",
                 dim, q->dim);
        return MIMIC_EINVAL;
    }
    /* Only the newest cap rows survive a push larger than the ring. */
    size_t skip = count > q->cap ? count - q->cap : 0;
    for (size_t i = skip; i < count; i++) {
        size_t slot = (size_t)((q->version + i) % q->cap);
        memcpy(q->rows + slot * dim, rows + i * dim, dim * sizeof(float));
    }
    q->version += count;
    return 0;
}

int negqueue_span(const negqueue_t *q, uint64_t since, size_t *slot, size_t *count) {
    if (since > q->version)
        return mimic_err(MIMIC_EINVAL,
                         "QUEUE_PULL header field 'a[0]' (since): %" PRIu64
                         " is ahead of the queue's version %" PRIu64,
                         since, q->version);
    uint64_t n = q->version - since;
    if (n > q->cap) n = q->cap;
    *count = (size_t)n;
    *slot = (size_t)((q->version - n) % q->cap);
    return 0;
}

void negqueue_copy(const negqueue_t *q, size_t slot, size_t count, float *out) {
    if (count == 0) return;
    size_t first = count < q->cap - slot ? count : q->cap - slot;
    memcpy(out, q->rows + slot * q->dim, first * q->dim * sizeof(float));
    memcpy(out + first * q->dim, q->rows, (count - first) * q->dim * sizeof(float));
}
