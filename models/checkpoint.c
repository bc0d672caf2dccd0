#include "checkpoint.h"

#include "common.h"
#include "posemb.h"
#include "safetensors.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CKPT_FORMAT "mimicps-checkpoint"
#define CKPT_VERSION "1"

static int is_encoder(const char *name) {
    return strcmp(name, "cls_token") == 0 || strncmp(name, "patch_embed.", 12) == 0 ||
           strncmp(name, "blocks.", 7) == 0 || strncmp(name, "norm.", 5) == 0;
}

/* Names of the optimiser tensors live as long as the writer: one buffer per save. */
typedef struct {
    char (*names)[PARAMS_NAME_MAX + 32];
    int n;
} namebuf_t;

/* Adds "<prefix><name>" for every tensor of p with the values of buf (indexed like p->w). */
static int add_copy(st_writer_t *w, namebuf_t *nb, const params_t *p, const char *prefix,
                    const float *buf) {
    for (int i = 0; i < p->n; i++) {
        const params_tensor_t *t = &p->t[i];
        snprintf(nb->names[nb->n], sizeof nb->names[0], "%s%s", prefix, t->name);
        int rc = st_writer_add(w, nb->names[nb->n++], "F32", t->shape, t->ndim, buf + t->offset);
        if (rc) return rc;
    }
    return 0;
}

/* The [model] keys, the format tag and the training state as metadata. */
static int add_meta(st_writer_t *w, const mae_cfg_t *c, const char *format,
                    const checkpoint_state_t *st, const char *config_ini) {
    char buf[64];
    int rc;
    struct {
        const char *k;
        double v;
    } meta[] = {{"img_size", c->img_size},
                {"in_chans", c->in_chans},
                {"patch_size", c->patch_size},
                {"embed_dim", c->embed_dim},
                {"depth", c->depth},
                {"num_heads", c->num_heads},
                {"mlp_ratio", c->mlp_ratio},
                {"decoder_embed_dim", c->decoder_embed_dim},
                {"decoder_depth", c->decoder_depth},
                {"decoder_num_heads", c->decoder_num_heads},
                {"mask_ratio", c->mask_ratio},
                {"norm_pix_loss", c->norm_pix_loss}};
    for (size_t i = 0; i < sizeof meta / sizeof meta[0]; i++) {
        snprintf(buf, sizeof buf, "%.9g", meta[i].v);
        if ((rc = st_writer_meta(w, meta[i].k, buf))) return rc;
    }
    if ((rc = st_writer_meta(w, "format", format)) ||
        (rc = st_writer_meta(w, "version", CKPT_VERSION)))
        return rc;
    if (st) {
        snprintf(buf, sizeof buf, "%ld", st->step);
        if ((rc = st_writer_meta(w, "step", buf))) return rc;
        snprintf(buf, sizeof buf, "%" PRIu64, st->epoch);
        if ((rc = st_writer_meta(w, "epoch", buf))) return rc;
        snprintf(buf, sizeof buf, "%" PRIu64, st->cursor);
        if ((rc = st_writer_meta(w, "cursor", buf))) return rc;
    }
    if (config_ini && (rc = st_writer_meta(w, "config", config_ini))) return rc;
    return 0;
}

static int save(const char *path, const mae_t *model, const float *m, const float *v,
                const checkpoint_state_t *st, const char *config_ini, int encoder_only) {
    const params_t *p = model->p;
    int rc = MIMIC_ENOMEM;
    st_writer_t *w = st_writer_new();
    namebuf_t nb = {calloc((size_t)p->n * 2 + 1, sizeof *nb.names), 0};
    if (!w || !nb.names) goto fail;
    int64_t pos_shape[3] = {1, 1 + model->L, model->cfg.embed_dim};
    int64_t dpos_shape[3] = {1, 1 + model->L, model->cfg.decoder_embed_dim};
    for (int i = 0; i < p->n; i++) {
        const params_tensor_t *t = &p->t[i];
        if (encoder_only && !is_encoder(t->name)) continue;
        if ((rc = st_writer_add(w, t->name, "F32", t->shape, t->ndim, p->w + t->offset))) goto fail;
        /* keep state_dict-like order: the fixed embeddings follow their tokens */
        if (strcmp(t->name, "cls_token") == 0 &&
            (rc = st_writer_add(w, "pos_embed", "F32", pos_shape, 3, model->pos_embed)))
            goto fail;
        if (strcmp(t->name, "mask_token") == 0 &&
            (rc =
                 st_writer_add(w, "decoder_pos_embed", "F32", dpos_shape, 3, model->dec_pos_embed)))
            goto fail;
    }
    if (m && v && !encoder_only &&
        ((rc = add_copy(w, &nb, p, "optimizer.exp_avg.", m)) ||
         (rc = add_copy(w, &nb, p, "optimizer.exp_avg_sq.", v))))
        goto fail;
    if ((rc = add_meta(w, &model->cfg, encoder_only ? "mimicps-encoder" : CKPT_FORMAT, st,
                       config_ini)))
        goto fail;
    if (!encoder_only && st && st->mask_score) {
        int64_t shape[1] = {(int64_t)st->mask_score_len};
        if ((rc = st_writer_add(w, "mask_score", "F32", shape, 1, st->mask_score))) goto fail;
    }
    rc = st_writer_save(w, path);
fail:
    st_writer_destroy(&w);
    free(nb.names);
    return rc;
}

int checkpoint_save(const char *path, const mae_t *model, const float *m, const float *v,
                    const checkpoint_state_t *st, const char *config_ini) {
    return save(path, model, m, v, st, config_ini, 0);
}

int checkpoint_export_encoder(const char *path, const mae_t *model) {
    return save(path, model, NULL, NULL, NULL, NULL, 1);
}

int checkpoint_save_params(const char *path, const params_t *p, const mae_cfg_t *model,
                           const float *m, const float *v, const float *ema,
                           const checkpoint_state_t *st, const char *config_ini) {
    int rc = MIMIC_ENOMEM;
    st_writer_t *w = st_writer_new();
    namebuf_t nb = {calloc((size_t)p->n * 4 + 1, sizeof *nb.names), 0};
    if (!w || !nb.names) goto fail;
    if ((rc = add_copy(w, &nb, p, "", p->w))) goto fail;
    if (ema && (rc = add_copy(w, &nb, p, "momentum.", ema))) goto fail;
    if (m && v &&
        ((rc = add_copy(w, &nb, p, "optimizer.exp_avg.", m)) ||
         (rc = add_copy(w, &nb, p, "optimizer.exp_avg_sq.", v))))
        goto fail;
    if ((rc = add_meta(w, model, CKPT_FORMAT, st, config_ini))) goto fail;
    char keys[32];
    if (st && st->queue) {
        int64_t shape[2] = {(int64_t)st->queue_cap, (int64_t)st->queue_dim};
        snprintf(keys, sizeof keys, "%" PRIu64, st->queue_keys);
        if ((rc = st_writer_add(w, "queue", "F32", shape, 2, st->queue)) ||
            (rc = st_writer_meta(w, "queue_keys", keys)))
            goto fail;
    }
    if (st && st->mask_score) {
        int64_t shape[1] = {(int64_t)st->mask_score_len};
        if ((rc = st_writer_add(w, "mask_score", "F32", shape, 1, st->mask_score))) goto fail;
    }
    rc = st_writer_save(w, path);
fail:
    st_writer_destroy(&w);
    free(nb.names);
    return rc;
}

static int meta_u64(const st_file_t *f, const char *key, uint64_t *out) {
    const char *s = st_meta(f, key);
    char *end;
    if (!s || !*s) return mimic_err(MIMIC_EFORMAT, "%s: metadata '%s' missing", st_path(f), key);
    unsigned long long x = strtoull(s, &end, 10);
    if (*end) return mimic_err(MIMIC_EFORMAT, "%s: metadata '%s' is not a number", st_path(f), key);
    *out = x;
    return 0;
}

/* Reads "<prefix><name>" of every tensor of p into buf (indexed like p->w). */
static int read_copy(const st_file_t *f, const params_t *p, const char *prefix, float *buf) {
    char name[PARAMS_NAME_MAX + 32];
    for (int i = 0; i < p->n; i++) {
        const params_tensor_t *t = &p->t[i];
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        int rc = st_read_f32(f, name, buf + t->offset, t->shape, t->ndim);
        if (rc) return rc;
    }
    return 0;
}

int checkpoint_read_queue(const st_file_t *f, checkpoint_state_t *st) {
    int64_t shape[2] = {(int64_t)st->queue_cap, (int64_t)st->queue_dim};
    int rc = st_read_f32(f, "queue", st->queue, shape, 2);
    return rc ? rc : meta_u64(f, "queue_keys", &st->queue_keys);
}

int checkpoint_load_params(const char *path, params_t *p, float *m, float *v, float *ema,
                           checkpoint_state_t *st) {
    st_file_t *f = NULL;
    int rc = st_open(&f, path);
    if (rc) return rc;
    const char *fmt = st_meta(f, "format");
    if (!fmt || strcmp(fmt, CKPT_FORMAT) != 0) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: not a mimicps checkpoint (format '%s')", path,
                       fmt ? fmt : "");
        goto out;
    }
    if ((rc = read_copy(f, p, "", p->w))) goto out;
    if (ema && (rc = read_copy(f, p, "momentum.", ema))) goto out;
    if (m && v &&
        ((rc = read_copy(f, p, "optimizer.exp_avg.", m)) ||
         (rc = read_copy(f, p, "optimizer.exp_avg_sq.", v))))
        goto out;
    if (st) {
        uint64_t step;
        if ((rc = meta_u64(f, "step", &step)) || (rc = meta_u64(f, "epoch", &st->epoch)) ||
            (rc = meta_u64(f, "cursor", &st->cursor)))
            goto out;
        st->step = (long)step;
        if (st->queue && (rc = checkpoint_read_queue(f, st))) goto out;
        /* absent (a checkpoint of random masking): the scores stay as the caller set them */
        int64_t shape[1] = {(int64_t)st->mask_score_len};
        if (st->mask_score && st_find(f, "mask_score") &&
            (rc = st_read_f32(f, "mask_score", st->mask_score, shape, 1)))
            goto out;
    }
out:
    st_close(&f);
    return rc;
}

int checkpoint_load(const char *path, mae_t *model, float *m, float *v, checkpoint_state_t *st) {
    return checkpoint_load_params(path, model->p, m, v, NULL, st);
}

int checkpoint_export_encoder_params(const char *path, const params_t *p, const mae_cfg_t *model) {
    int grid = model->img_size / model->patch_size, D = model->embed_dim, rc = MIMIC_ENOMEM;
    int64_t pos_shape[3] = {1, 1 + (int64_t)grid * grid, D};
    float *pos = mimic_alloc((size_t)(1 + grid * grid) * D * sizeof(float));
    st_writer_t *w = st_writer_new();
    if (!pos || !w) goto out;
    posemb_sincos_2d(pos, D, grid, 1);
    for (int i = 0; i < p->n; i++) {
        const params_tensor_t *t = &p->t[i];
        if (!is_encoder(t->name)) continue;
        if ((rc = st_writer_add(w, t->name, "F32", t->shape, t->ndim, p->w + t->offset)))
            goto out;
        if (strcmp(t->name, "cls_token") == 0 &&
            (rc = st_writer_add(w, "pos_embed", "F32", pos_shape, 3, pos)))
            goto out;
    }
    if ((rc = add_meta(w, model, "mimicps-encoder", NULL, NULL))) goto out;
    rc = st_writer_save(w, path);
out:
    st_writer_destroy(&w);
    mimic_free(pos);
    return rc;
}
