/* shardckpt.c — writing and checking a server's checkpoint shard. */
#define _POSIX_C_SOURCE 200809L
#include "shardckpt.h"

#include "common.h"
#include "safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const TENSORS[4] = {"w", "m", "v", "ema"};

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

/* The metadata of a shard of this store, as (key, value) text pairs. */
typedef struct {
    char val[8][32];
} shard_meta_t;
static const char *const META_KEYS[8] = {"format", "version", "rank",  "servers",
                                         "lo",     "hi",      "total", "step"};

static void meta_fill(shard_meta_t *sm, const kvstore_t *kv, int rank, int servers, uint64_t step) {
    snprintf(sm->val[0], sizeof sm->val[0], "%s", SHARDCKPT_FORMAT);
    snprintf(sm->val[1], sizeof sm->val[1], "%d", SHARDCKPT_VERSION);
    snprintf(sm->val[2], sizeof sm->val[2], "%d", rank);
    snprintf(sm->val[3], sizeof sm->val[3], "%d", servers);
    snprintf(sm->val[4], sizeof sm->val[4], "%zu", kv->lo);
    snprintf(sm->val[5], sizeof sm->val[5], "%zu", kv->hi);
    snprintf(sm->val[6], sizeof sm->val[6], "%zu", kv->total);
    snprintf(sm->val[7], sizeof sm->val[7], "%" PRIu64, step);
}

int shardckpt_save(const kvstore_t *kv, const char *dir, int rank, int servers, char *path_out,
                   size_t cap) {
    char path[4096];
    int rc;
    if ((rc = shardckpt_path(path, sizeof path, dir, rank, kv->version))) return rc;
    if ((rc = mimic_mkdir_p(dir))) return rc;
    st_writer_t *w = st_writer_new();
    if (!w) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", path);
    int64_t shape[1] = {(int64_t)kv->n};
    for (int i = 0; i < 4 && !rc; i++)
        rc = st_writer_add(w, TENSORS[i], "F32", shape, 1, tensor_buf(kv, i));
    shard_meta_t sm = {0};
    meta_fill(&sm, kv, rank, servers, kv->version);
    for (int i = 0; i < 8 && !rc; i++)
        rc = st_writer_meta(w, META_KEYS[i], sm.val[i]);
    if (!rc) rc = st_writer_save(w, path);
    st_writer_destroy(&w);
    if (!rc && path_out) snprintf(path_out, cap, "%s", path);
    return rc;
}

int shardckpt_load(kvstore_t *kv, const char *dir, int rank, int servers, uint64_t step) {
    char path[4096];
    st_file_t *f = NULL;
    int rc;
    if ((rc = shardckpt_path(path, sizeof path, dir, rank, step))) return rc;
    if ((rc = st_open(&f, path))) return rc; /* names the file */
    shard_meta_t sm = {0};
    meta_fill(&sm, kv, rank, servers, step);
    for (int i = 0; i < 8; i++) {
        const char *got = st_meta(f, META_KEYS[i]);
        if (!got) {
            rc = mimic_err(MIMIC_EFORMAT, "%s: metadata field '%s' missing (not a %s file?)", path,
                           META_KEYS[i], SHARDCKPT_FORMAT);
            goto out;
        }
        if (strcmp(got, sm.val[i]) != 0) {
            rc = mimic_err(MIMIC_EFORMAT, "%s: metadata field '%s' is '%s' but this run needs '%s'",
                           path, META_KEYS[i], got, sm.val[i]);
            goto out;
        }
    }
    /* Check all four tensors before writing any, so a bad file leaves kv unchanged. */
    int64_t shape[1] = {(int64_t)kv->n};
    for (int i = 0; i < 4; i++) {
        const st_tensor_t *t = st_find(f, TENSORS[i]);
        if (!t || t->dtype != ST_F32 || t->ndim != 1 || t->shape[0] != shape[0]) {
            rc = mimic_err(MIMIC_EFORMAT, "%s: tensor '%s' missing or not F32 of shape [%zu]", path,
                           TENSORS[i], kv->n);
            goto out;
        }
    }
    for (int i = 0; i < 4 && !rc; i++)
        rc = st_read_f32(f, TENSORS[i], tensor_buf(kv, i), shape, 1);
    if (rc) goto out;
    kv->version = step;
    kvstore_drop_acc(kv);
    kvstore_invalidate(kv);
out:
    st_close(&f);
    return rc;
}
