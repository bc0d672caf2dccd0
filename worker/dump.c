#include "checkpoint.h"
#include "common.h"
#include "maskpolicy.h"
#include "safetensors.h"
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Loads every trainable tensor of `m` from a weights file by name (the fixed position
 * embeddings are recomputed, not read: they are not parameters). */
static int load_weights(mae_t *m, const char *path) {
    st_file_t *f = NULL;
    int rc = st_open(&f, path);
    if (rc) return rc;
    const params_t *p = m->p;
    for (int i = 0; i < p->n && !rc; i++)
        rc = st_read_f32(f, p->t[i].name, params_w(p, i), p->t[i].shape, p->t[i].ndim);
    st_close(&f);
    return rc;
}

/* Reads every trainable tensor of s by name from a weights file (a checkpoint or
 * model.safetensors of the stage), and its momentum copy ("momentum.<name>") when the
 * stage keeps one: from the file when there, else equal to the weights. */
static int load_stage_weights(stage_t *s, const char *path) {
    st_file_t *f = NULL;
    char name[PARAMS_NAME_MAX + 16];
    int rc = st_open(&f, path);
    if (rc) return rc;
    const params_t *p = s->p;
    for (int i = 0; i < p->n && !rc; i++)
        rc = st_read_f32(f, p->t[i].name, params_w(p, i), p->t[i].shape, p->t[i].ndim);
    for (int i = 0; i < p->n && !rc && s->ema; i++) {
        const params_tensor_t *t = &p->t[i];
        snprintf(name, sizeof name, "momentum.%s", t->name);
        if (st_find(f, name))
            rc = st_read_f32(f, name, s->ema + t->offset, t->shape, t->ndim);
        else
            memcpy(s->ema + t->offset, params_w(p, i), t->numel * sizeof(float));
    }
    if (!rc && s->queue && st_find(f, "queue")) { /* MoCo v2: the negatives of the file */
        checkpoint_state_t st = stage_queue_state(s);
        if (!(rc = checkpoint_read_queue(f, &st))) s->queue_keys = st.queue_keys;
    }
    if (!rc && s->mask_score && st_find(f, "mask_score")) { /* adversarial masking's scores */
        int64_t shape[1] = {(int64_t)s->mask_score_len};
        rc = st_read_f32(f, "mask_score", s->mask_score, shape, 1);
    }
    st_close(&f);
    return rc;
}

/* Writes loss and grad.<name> of every tensor of p (names: scratch, p->n entries). */
static int write_grads(const char *out, const params_t *p, float loss,
                       char (*names)[PARAMS_NAME_MAX + 8], st_writer_t *w) {
    int64_t one = 1;
    int rc = st_writer_add(w, "loss", "F32", &one, 1, &loss);
    for (int i = 0; i < p->n && !rc; i++) {
        const params_tensor_t *t = &p->t[i];
        snprintf(names[i], sizeof names[i], "grad.%s", t->name);
        rc = st_writer_add(w, names[i], "F32", t->shape, t->ndim, params_g(p, i));
    }
    if (!rc) rc = st_writer_meta(w, "format", "mimicps-grads");
    if (!rc) rc = st_writer_meta(w, "version", "1");
    if (!rc) rc = st_writer_save(w, out);
    if (!rc) printf("loss %.8f; %d gradients written to %s\n", loss, p->n, out);
    return rc;
}

/* Any stage other than MAE: images (B*views,C,H,W), and labels (B) / noise (B, noise_len)
 * when the stage needs them; writes the loss and every gradient. */
static int dump_stage(const mimic_cfg_t *cfg, const char *weights, const char *batch,
                      const char *out) {
    stage_t *s = NULL;
    st_file_t *in = NULL;
    st_writer_t *w = NULL;
    float *imgs = NULL, *noise = NULL, *flab = NULL;
    int *labels = NULL;
    char(*names)[PARAMS_NAME_MAX + 8] = NULL;
    int rc = st_open(&in, batch);
    if (rc) return rc;
    const st_tensor_t *ti = st_find(in, "images");
    /* the views per sample, from the stage's parameters-only build */
    if ((rc = stage_new(&s, cfg, 0))) goto out;
    int views = s->views;
    stage_destroy(&s);
    if (!ti || ti->ndim != 4 || ti->shape[0] % views) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: tensor 'images' (B*%d,C,H,W) missing", batch, views);
        goto out;
    }
    int B = (int)(ti->shape[0] / views), C = cfg->model.in_chans, S = cfg->model.img_size;
    if ((rc = stage_new(&s, cfg, B)) || (rc = load_stage_weights(s, weights))) goto out;
    int64_t ishape[4] = {(int64_t)B * s->views, C, S, S}, nshape[2] = {B, s->noise_len},
            lshape[1] = {B};
    imgs = malloc((size_t)B * s->views * C * S * S * sizeof(float));
    noise = s->noise_len ? malloc((size_t)B * s->noise_len * sizeof(float)) : NULL;
    flab = s->wants_labels ? malloc((size_t)B * sizeof(float)) : NULL;
    labels = s->wants_labels ? malloc((size_t)B * sizeof(int)) : NULL;
    names = calloc((size_t)s->p->n, sizeof *names);
    if (!imgs || (s->noise_len && !noise) || (s->wants_labels && (!flab || !labels)) || !names) {
        rc = mimic_err(MIMIC_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = st_read_f32(in, "images", imgs, ishape, 4)) ||
        (noise && (rc = st_read_f32(in, "noise", noise, nshape, 2))) ||
        (flab && (rc = st_read_f32(in, "labels", flab, lshape, 1))))
        goto out;
    for (int i = 0; flab && i < B; i++)
        labels[i] = (int)flab[i];
    stage_input_t input = {imgs, noise, labels};
    float loss = (float)stage_compute(s, &input, B, NULL, NULL);
    if (!(w = st_writer_new())) {
        rc = MIMIC_ENOMEM;
        goto out;
    }
    rc = write_grads(out, s->p, loss, names, w);
out:
    st_writer_destroy(&w);
    st_close(&in);
    stage_destroy(&s);
    free(imgs);
    free(noise);
    free(flab);
    free(labels);
    free(names);
    return rc;
}

/* noise (B, L) -> the adversarial policy's keys, in place, with the scores of the weights
 * file when it has them. */
static int adversarial_keys(const mimic_cfg_t *cfg, const mae_t *m, const char *weights,
                            float *noise, int B) {
    maskpolicy_t *mp = NULL;
    st_file_t *f = NULL;
    int rc = maskpolicy_new(&mp, cfg, m->L);
    if (!rc) rc = st_open(&f, weights);
    int64_t shape[1] = {m->L};
    if (!rc && st_find(f, "mask_score")) rc = st_read_f32(f, "mask_score", mp->score, shape, 1);
    float *keys = rc ? NULL : malloc((size_t)B * m->L * sizeof(float));
    if (!rc && !keys) rc = mimic_err(MIMIC_ENOMEM, "out of memory");
    if (!rc) {
        maskpolicy_keys(mp, keys, noise, B);
        memcpy(noise, keys, (size_t)B * m->L * sizeof(float));
    }
    free(keys);
    st_close(&f);
    maskpolicy_destroy(&mp);
    return rc;
}

int worker_dump_grads(const mimic_cfg_t *cfg, const char *weights, const char *batch,
                      const char *out) {
    if (cfg->train.stage != STAGE_KIND_MAE) return dump_stage(cfg, weights, batch, out);
    mae_t *m = NULL;
    mae_batch_t *b = NULL;
    st_file_t *in = NULL;
    st_writer_t *w = NULL;
    float *imgs = NULL, *noise = NULL, *pred = NULL;
    char(*names)[PARAMS_NAME_MAX + 8] = NULL;
    int rc = mae_new(&m, &cfg->model);
    if (rc) return rc;
    if ((rc = load_weights(m, weights))) goto out;
    if ((rc = st_open(&in, batch))) goto out;
    const st_tensor_t *ti = st_find(in, "images");
    if (!ti || ti->ndim != 4) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: tensor 'images' (B,C,H,W) missing", batch);
        goto out;
    }
    int B = (int)ti->shape[0], C = m->cfg.in_chans, S = m->cfg.img_size, L = m->L;
    int64_t ishape[4] = {B, C, S, S}, nshape[2] = {B, L};
    imgs = malloc((size_t)B * C * S * S * sizeof(float));
    noise = malloc((size_t)B * L * sizeof(float));
    pred = malloc((size_t)B * L * m->cpp * sizeof(float));
    names = calloc((size_t)m->p->n, sizeof *names);
    if (!imgs || !noise || !pred || !names) {
        rc = mimic_err(MIMIC_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = st_read_f32(in, "images", imgs, ishape, 4)) ||
        (rc = st_read_f32(in, "noise", noise, nshape, 2)))
        goto out;
    if ((rc = mae_batch_alloc(&b, m, B))) goto out;
    /* adversarial masking: the batch's noise through the policy with the scores of the
     * weights file (a checkpoint's "mask_score"; none: uniform), as the training step
     * that file would take next draws its mask */
    if (cfg->mask.policy == MASK_POLICY_ADVERSARIAL &&
        (rc = adversarial_keys(cfg, m, weights, noise, B)))
        goto out;
    float loss = (float)mae_forward(m, b, imgs, noise);
    params_zero_grad(m->p);
    mae_backward(m, b);
    mae_pred(m, b, pred);

    w = st_writer_new();
    if (!w) {
        rc = MIMIC_ENOMEM;
        goto out;
    }
    int64_t one = 1, pshape[3] = {B, L, m->cpp}, lshape[3] = {B, 1 + m->keep, m->cfg.embed_dim};
    if ((rc = st_writer_add(w, "loss", "F32", &one, 1, &loss)) ||
        (rc = st_writer_add(w, "pred", "F32", pshape, 3, pred)) ||
        (rc = st_writer_add(w, "mask", "F32", nshape, 2, b->mask)) ||
        (rc = st_writer_add(w, "latent", "F32", lshape, 3, b->latent)))
        goto out;
    for (int i = 0; i < m->p->n; i++) {
        const params_tensor_t *t = &m->p->t[i];
        snprintf(names[i], sizeof names[i], "grad.%s", t->name);
        if ((rc = st_writer_add(w, names[i], "F32", t->shape, t->ndim, params_g(m->p, i))))
            goto out;
    }
    if ((rc = st_writer_meta(w, "format", "mimicps-grads")) ||
        (rc = st_writer_meta(w, "version", "1")))
        goto out;
    rc = st_writer_save(w, out);
    if (!rc) printf("loss %.8f; %d gradients written to %s\n", loss, m->p->n, out);
out:
    st_writer_destroy(&w);
    st_close(&in);
    mae_batch_free(&b);
    mae_destroy(&m);
    free(imgs);
    free(noise);
    free(pred);
    free(names);
    return rc;
}

/* The metadata value key of a shard as an unsigned number; errors name the file. */
static int shard_u64(const st_file_t *f, const char *key, uint64_t *out) {
    const char *v = st_meta(f, key);
    char *end;
    if (!v || !*v || *v == '-')
        return mimic_err(MIMIC_EFORMAT, "%s: metadata '%s' missing", st_path(f), key);
    *out = strtoull(v, &end, 10);
    if (*end) return mimic_err(MIMIC_EFORMAT, "%s: metadata '%s' is not a number", st_path(f), key);
    return 0;
}

/* A cluster checkpoint directory (cluster.ckpt_dir, default out_dir/ckpt): the step
 * `latest` names, every server's shard of it, their ranges of "w" assembled into the
 * stage's flat vector. */
static int load_cluster_ckpt(stage_t *s, const char *dir) {
    char path[CFG_PATH_MAX + 96], text[32] = "";
    snprintf(path, sizeof path, "%s/latest", dir);
    FILE *lf = fopen(path, "r");
    if (!lf) return mimic_err(MIMIC_EIO, "%s: cannot read (not a cluster checkpoint directory)", path);
    int got = fgets(text, sizeof text, lf) != NULL;
    fclose(lf);
    char *end;
    unsigned long long step = strtoull(text, &end, 10);
    if (!got || end == text || (*end && *end != '\n'))
        return mimic_err(MIMIC_EFORMAT, "%s: '%s' is not a step", path, text);
    uint64_t servers = 1, lo, hi, total;
    int rc = 0;
    for (uint64_t r = 0; r < servers && !rc; r++) {
        st_file_t *f = NULL;
        snprintf(path, sizeof path, "%s/server-%llu-step-%llu.safetensors", dir,
                 (unsigned long long)r, step);
        if ((rc = st_open(&f, path))) break;
        if (!(rc = shard_u64(f, "servers", &servers)) && !(rc = shard_u64(f, "lo", &lo)) &&
            !(rc = shard_u64(f, "hi", &hi)) && !(rc = shard_u64(f, "total", &total))) {
            int64_t n = (int64_t)(hi - lo);
            if (total != s->p->total || lo > hi || hi > total || servers < 1 || servers > 65536)
                rc = mimic_err(MIMIC_EFORMAT,
                               "%s: range [%llu, %llu) of %llu floats, but stage %s has %zu", path,
                               (unsigned long long)lo, (unsigned long long)hi,
                               (unsigned long long)total, s->ops->name, s->p->total);
            else
                rc = st_read_f32(f, "w", s->p->w + lo, &n, 1);
        }
        st_close(&f);
    }
    if (!rc) mimic_log("%s: step %llu from %llu server shard(s)", dir, step,
                       (unsigned long long)servers);
    return rc;
}

int worker_export_encoder(const mimic_cfg_t *cfg, const char *ckpt, const char *out) {
    struct stat sb;
    int dir = stat(ckpt, &sb) == 0 && S_ISDIR(sb.st_mode); /* a cluster checkpoint */
    if (dir || cfg->train.stage != STAGE_KIND_MAE) { /* any stage; or a stage's file */
        stage_t *s = NULL;
        int rc = stage_new(&s, cfg, 0);
        if (!rc) rc = dir ? load_cluster_ckpt(s, ckpt) : load_stage_weights(s, ckpt);
        if (!rc) rc = checkpoint_export_encoder_params(out, s->p, &cfg->model);
        if (!rc) printf("encoder of %s written to %s\n", ckpt, out);
        stage_destroy(&s);
        return rc;
    }
    mae_t *m = NULL;
    int rc = mae_new(&m, &cfg->model);
    if (rc) return rc;
    if (!(rc = checkpoint_load(ckpt, m, NULL, NULL, NULL))) rc = checkpoint_export_encoder(out, m);
    if (!rc) printf("encoder of %s written to %s\n", ckpt, out);
    mae_destroy(&m);
    return rc;
}
