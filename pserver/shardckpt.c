/* shardckpt.c — writing and checking a server's checkpoint shard. */
#define _POSIX_C_SOURCE 200809L
#include "shardckpt.h"

#include "common.h"
#include "safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* w, m, v always; ema only when the store keeps the momentum copy (ema_on). */
static const char *const TENSORS[4] = {"w", "m", "v", "ema"};
enum { T_EMA = 3 };

static int tensor_count(const kvstore_t *kv) {
    return kv->ema ? 4 : 3;
}

static float *tensor_buf(const kvstore_t *kv, int i) {
    switch (i) {
    case 0:
        return kv->w;
    case 1:
        return kv->m;
    case 2:
        return kv->v;
    default:
        return kv->ema;
    }
}

int shardckpt_path(char *out, size_t cap, const char *dir, int rank, uint64_t step) {
    int n = snprintf(out, cap, "%s/server-%d-step-%" PRIu64 ".safetensors", dir, rank, step);
    if (n < 0 || (size_t)n >= cap)
        return mimic_err(MIMIC_EINVAL, "checkpoint directory '%s' makes too long a path", dir);
    return 0;
}

/* The metadata of a shard of this store, as (key, value) text pairs. The first
 * META_CHECKED must equal the running server's on load ("version" is checked apart:
 * a version-1 file, which always held ema, still loads); "ema" says whether the file
 * holds the momentum copy. */
enum { META_N = 9, META_CHECKED = 8, META_VERSION = 1 };
typedef struct {
    char val[META_N][32];
} shard_meta_t;
static const char *const META_KEYS[META_N] = {"format", "version", "rank", "servers", "lo",
                                              "hi",     "total",   "step", "ema"};

static void meta_fill(shard_meta_t *sm, const kvstore_t *kv, int rank, int servers, uint64_t step) {
    snprintf(sm->val[0], sizeof sm->val[0], "%s", SHARDCKPT_FORMAT);
    snprintf(sm->val[1], sizeof sm->val[1], "%d", SHARDCKPT_VERSION);
    snprintf(sm->val[2], sizeof sm->val[2], "%d", rank);
    snprintf(sm->val[3], sizeof sm->val[3], "%d", servers);
    snprintf(sm->val[4], sizeof sm->val[4], "%zu", kv->lo);
    snprintf(sm->val[5], sizeof sm->val[5], "%zu", kv->hi);
    snprintf(sm->val[6], sizeof sm->val[6], "%zu", kv->total);
    snprintf(sm->val[7], sizeof sm->val[7], "%" PRIu64, step);
    snprintf(sm->val[8], sizeof sm->val[8], "%d", kv->ema != NULL);
}

/* The queue's tensor and metadata, added to w when the ring exists. */
static int add_queue(st_writer_t *w, const negqueue_t *q, char val[2][32]) {
    if (!q) return 0;
    snprintf(val[0], 32, "%" PRIu64, q->version);
    snprintf(val[1], 32, "%" PRIu64, q->step);
    int rc = st_writer_meta(w, "queue_keys", val[0]);
    if (!rc) rc = st_writer_meta(w, "queue_step", val[1]);
    int64_t shape[2] = {(int64_t)q->cap, (int64_t)q->dim};
    if (!rc && q->rows) rc = st_writer_add(w, "queue", "F32", shape, 2, q->rows);
    return rc;
}

int shardckpt_save(const kvstore_t *kv, const negqueue_t *q, const char *dir, int rank, int servers,
                   char *path_out, size_t cap) {
    char path[4096];
    int rc;
    if ((rc = shardckpt_path(path, sizeof path, dir, rank, kv->version))) return rc;
    if ((rc = mimic_mkdir_p(dir))) return rc;
    st_writer_t *w = st_writer_new();
    if (!w) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", path);
    int64_t shape[1] = {(int64_t)kv->n};
    for (int i = 0; i < tensor_count(kv) && !rc; i++)
        rc = st_writer_add(w, TENSORS[i], "F32", shape, 1, tensor_buf(kv, i));
    shard_meta_t sm = {0};
    meta_fill(&sm, kv, rank, servers, kv->version);
    for (int i = 0; i < META_N && !rc; i++)
        rc = st_writer_meta(w, META_KEYS[i], sm.val[i]);
    char qval[2][32];
    if (!rc) rc = add_queue(w, q, qval);
    if (!rc) rc = st_writer_save(w, path);
    st_writer_destroy(&w);
    if (!rc && path_out) snprintf(path_out, cap, "%s", path);
    return rc;
}

/* A decimal metadata value (def when absent); MIMIC_EFORMAT naming path and key. */
static int meta_u64(const st_file_t *f, const char *path, const char *key, uint64_t def,
                    uint64_t *out) {
    const char *v = st_meta(f, key);
    *out = def;
    if (!v) return 0;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (end == v || *end || errno || v[0] == '-')
        return mimic_err(MIMIC_EFORMAT, "%s: metadata field '%s' is '%s', not a count", path, key,
                         v);
    *out = x;
    return 0;
}

/* Checks the queue of f against q before anything is read: shape [K, D] of this run. */
static int check_queue(const st_file_t *f, const char *path, const negqueue_t *q) {
    const st_tensor_t *t = st_find(f, "queue");
    if (!t) return 0;
    if (t->dtype != ST_F32 || t->ndim != 2 || t->shape[0] != (int64_t)q->cap ||
        t->shape[1] != (int64_t)q->dim)
        return mimic_err(MIMIC_EFORMAT,
                         "%s: tensor 'queue' is not F32 of shape [%zu, %zu] "
                         "(contrastive.queue_size, contrastive.dim of this run)",
                         path, q->cap, q->dim);
    return 0;
}

int shardckpt_load(kvstore_t *kv, negqueue_t *q, const char *dir, int rank, int servers,
                   uint64_t step) {
    char path[4096];
    st_file_t *f = NULL;
    int rc;
    if ((rc = shardckpt_path(path, sizeof path, dir, rank, step))) return rc;
    if ((rc = st_open(&f, path))) return rc; /* names the file */
    shard_meta_t sm = {0};
    meta_fill(&sm, kv, rank, servers, step);
    for (int i = 0; i < META_CHECKED; i++) {
        const char *got = st_meta(f, META_KEYS[i]);
        if (!got) {
            rc = mimic_err(MIMIC_EFORMAT, "%s: metadata field '%s' missing (not a %s file?)", path,
                           META_KEYS[i], SHARDCKPT_FORMAT);
            goto out;
        }
        if (i == META_VERSION) {
            if (strcmp(got, "1") != 0 && strcmp(got, sm.val[i]) != 0) {
                rc = mimic_err(MIMIC_EFORMAT,
                               "%s: metadata field 'version' is '%s'; this server reads 1..%s",
                               path, got, sm.val[i]);
                goto out;
            }
            continue;
        }
        if (strcmp(got, sm.val[i]) != 0) {
            rc = mimic_err(MIMIC_EFORMAT, "%s: metadata field '%s' is '%s' but this run needs '%s'",
                           path, META_KEYS[i], got, sm.val[i]);
            goto out;
        }
    }
    /* Check every tensor before writing any, so a bad file leaves kv unchanged. A file
     * without ema (written with the momentum copy off) gives a store that keeps one the
     * copy it starts with everywhere: ema = w. */
    int64_t shape[1] = {(int64_t)kv->n};
    int with_ema = kv->ema && st_find(f, TENSORS[T_EMA]);
    for (int i = 0; i < 3 + with_ema; i++) {
        const st_tensor_t *t = st_find(f, TENSORS[i]);
        if (!t || t->dtype != ST_F32 || t->ndim != 1 || t->shape[0] != shape[0]) {
            rc = mimic_err(MIMIC_EFORMAT, "%s: tensor '%s' missing or not F32 of shape [%zu]", path,
                           TENSORS[i], kv->n);
            goto out;
        }
    }
    uint64_t qkeys = 0, qstep = step;
    int with_queue = q && st_find(f, "queue");
    if (q && ((rc = check_queue(f, path, q)) || (rc = meta_u64(f, path, "queue_keys", 0, &qkeys)) ||
              (rc = meta_u64(f, path, "queue_step", step, &qstep))))
        goto out;
    if (with_queue && (rc = negqueue_alloc(q, SIZE_MAX))) goto out;
    for (int i = 0; i < 3 + with_ema && !rc; i++)
        rc = st_read_f32(f, TENSORS[i], tensor_buf(kv, i), shape, 1);
    if (!rc && with_queue) {
        int64_t qshape[2] = {(int64_t)q->cap, (int64_t)q->dim};
        rc = st_read_f32(f, "queue", q->rows, qshape, 2);
    }
    if (rc) goto out;
    if (q) {
        q->version = with_queue ? qkeys : 0;
        q->step = qstep;
    }
    if (kv->ema && !with_ema) {
        mimic_warn("%s holds no momentum copy (written with cluster.ema off): it starts as the "
                   "weights of step %" PRIu64,
                   path, step);
        memcpy(kv->ema, kv->w, kv->n * sizeof(float));
    }
    kv->version = step;
    kvstore_drop_acc(kv);
    kvstore_invalidate(kv);
out:
    st_close(&f);
    return rc;
}
