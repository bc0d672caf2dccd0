/* negqueue.c — the ring buffer of negative keys. */
#include "negqueue.h"

#include "common.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int negqueue_new(negqueue_t **out, size_t capacity, size_t dim) {
    *out = NULL;
    if (capacity == 0)
        return mimic_err(MIMIC_EINVAL, "contrastive.queue_size: the queue needs >= 1 key");
    if (dim == 0) return mimic_err(MIMIC_EINVAL, "contrastive.dim: keys need >= 1 float");
    negqueue_t *q = calloc(1, sizeof *q);
    if (!q) return mimic_err(MIMIC_ENOMEM, "out of memory for the negative-key queue");
    q->cap = capacity;
    q->dim = dim;
    *out = q;
    return 0;
}

/* The ring, zeroed; 0, or MIMIC_EINVAL / MIMIC_ENOMEM with a reason in why. */
static int ring_alloc(negqueue_t *q, size_t max_bytes, char *why, size_t whylen) {
    if (q->rows) return 0;
    if (q->cap > max_bytes / sizeof(float) / q->dim) {
        snprintf(why, whylen,
                 "a queue of %zu x %zu floats (contrastive.queue_size x contrastive.dim) exceeds "
                 "the message limit of %zu bytes (cluster.max_msg_mb): a full pull could not "
                 "be answered",
                 q->cap, q->dim, max_bytes);
        return MIMIC_EINVAL;
    }
    if (!(q->rows = mimic_alloc(q->cap * q->dim * sizeof(float)))) {
        snprintf(why, whylen, "out of memory for a %zu x %zu queue", q->cap, q->dim);
        return MIMIC_ENOMEM;
    }
    memset(q->rows, 0, q->cap * q->dim * sizeof(float));
    return 0;
}

int negqueue_alloc(negqueue_t *q, size_t max_bytes) {
    char why[512];
    int rc = ring_alloc(q, max_bytes, why, sizeof why);
    return rc ? mimic_err(rc, "%s", why) : 0;
}

void negqueue_destroy(negqueue_t **qp) {
    if (!qp || !*qp) return;
    mimic_free((*qp)->rows);
    free(*qp);
    *qp = NULL;
}

int negqueue_push(negqueue_t *q, const float *rows, size_t count, size_t dim, size_t max_bytes,
                  char *why, size_t whylen) {
    if (dim != q->dim) {
        snprintf(why, whylen,
                 "QUEUE_PUSH header field 'a[1]' (dim): %zu, but the queue's keys are %zu floats "
                 "(contrastive.dim)",
                 dim, q->dim);
        return MIMIC_EINVAL;
    }
    int rc = ring_alloc(q, max_bytes, why, whylen);
    if (rc) return rc;
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
