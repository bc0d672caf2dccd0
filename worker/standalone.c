#define _GNU_SOURCE
#include "adamw.h"
#include "checkpoint.h"
#include "common.h"
#include "loader.h"
#include "mae.h"
#include "metrics.h"
#include "order.h"
#include "stopsig.h"
#include "worker.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *config_text(const mimic_cfg_t *cfg) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return NULL;
    config_write(cfg, f);
    fclose(f);
    return text;
}

/* The epoch walk of the standalone trainer: the same permutation the scheduler cuts
 * into chunks, consumed in order. */
typedef struct {
    uint32_t *perm;
    uint32_t n;
    uint64_t seed, epoch, cursor;
} walk_t;

static void walk_take(walk_t *w, uint32_t *idx, int count, uint64_t *epoch_of) {
    for (int i = 0; i < count; i++) {
        if (w->cursor == w->n) {
            w->epoch++;
            w->cursor = 0;
            order_permutation(w->perm, w->n, w->seed, w->epoch);
        }
        idx[i] = w->perm[w->cursor++];
        epoch_of[i] = w->epoch;
    }
}

int worker_standalone(const mimic_cfg_t *cfg) {
    mae_t *m = NULL;
    mae_batch_t *b = NULL;
    loader_t *ld = NULL;
    metrics_t mx = {0};
    float *mom = NULL, *vel = NULL, *imgs = NULL, *noise = NULL;
    uint32_t *idx = NULL;
    uint64_t *ep = NULL;
    char *cfg_text = NULL;
    walk_t walk = {0};
    char path[CFG_PATH_MAX + 64], ckpt[CFG_PATH_MAX + 64];
    int B = cfg->train.batch_size, rc;
    if (B <= 0) return mimic_err(MIMIC_EINVAL, "config train.batch_size: must be positive");
    if (cfg->train.steps <= 0)
        return mimic_err(MIMIC_EINVAL, "config train.steps: must be positive");

    if ((rc = mae_new(&m, &cfg->model))) return rc;
    mae_init(m, cfg->train.seed);
    if ((rc = loader_new(&ld, cfg))) goto out;
    if ((rc = mae_batch_alloc(&b, m, B))) goto out;
    size_t total = m->p->total,
           img_sz = (size_t)cfg->model.in_chans * cfg->model.img_size * cfg->model.img_size;
    walk.n = (uint32_t)loader_size(ld);
    walk.seed = cfg->train.seed;
    mom = mimic_alloc(total * sizeof(float));
    vel = mimic_alloc(total * sizeof(float));
    imgs = mimic_alloc((size_t)B * img_sz * sizeof(float));
    noise = mimic_alloc((size_t)B * m->L * sizeof(float));
    idx = calloc((size_t)B, sizeof *idx);
    ep = calloc((size_t)B, sizeof *ep);
    walk.perm = calloc(walk.n, sizeof *walk.perm);
    cfg_text = config_text(cfg);
    if (!mom || !vel || !imgs || !noise || !idx || !ep || !walk.perm || !cfg_text) {
        rc = mimic_err(MIMIC_ENOMEM, "out of memory for training buffers");
        goto out;
    }
    if ((rc = mimic_mkdir_p(cfg->train.out_dir))) goto out;
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", cfg->train.out_dir);
    snprintf(path, sizeof path, "%s/config.ini", cfg->train.out_dir);
    FILE *cf = fopen(path, "w");
    if (!cf) {
        rc = mimic_err(MIMIC_EIO, "%s: cannot write", path);
        goto out;
    }
    fputs(cfg_text, cf);
    fclose(cf);
    snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->train.out_dir);
    if ((rc = metrics_open(&mx, path))) goto out;

    checkpoint_state_t st = {0, 0, 0};
    const char *resume = cfg->train.resume;
    if (strcmp(resume, "auto") == 0) resume = access(ckpt, R_OK) == 0 ? ckpt : "";
    if (resume[0]) {
        if ((rc = checkpoint_load(resume, m, mom, vel, &st))) goto out;
        mimic_log("resumed from %s at step %ld (epoch %llu, sample %llu)", resume, st.step,
                  (unsigned long long)st.epoch, (unsigned long long)st.cursor);
        if (st.cursor > walk.n) {
            rc = mimic_err(MIMIC_EFORMAT, "%s: data cursor %llu beyond the data set (%u samples)",
                           resume, (unsigned long long)st.cursor, walk.n);
            goto out;
        }
    }
    walk.epoch = st.epoch;
    walk.cursor = st.cursor;
    order_permutation(walk.perm, walk.n, walk.seed, walk.epoch);

    mimic_catch_stop_signals(1); /* the loop finishes its step, checkpoints and exits */
    float base_lr = config_lr(cfg, B);
    adamw_cfg_t oc = {cfg->train.beta1, cfg->train.beta2, cfg->train.eps, cfg->train.weight_decay};
    mimic_log("MAE standalone: %zu parameters (%.1f M), %zu samples, batch %d, lr %.3g, %.3f "
              "GFLOP/img",
              total, (double)total / 1e6, loader_size(ld), B, base_lr,
              mae_train_flops_per_image(m) / 1e9);
    metrics_begin(&mx, "start");
    metrics_int(&mx, "params", (long long)total);
    metrics_int(&mx, "samples", (long long)walk.n);
    metrics_int(&mx, "batch", B);
    metrics_num(&mx, "gflop_per_img", mae_train_flops_per_image(m) / 1e9);
    metrics_int(&mx, "start_step", st.step);
    metrics_end(&mx);

    double t_win = mimic_now(), t_data = 0, t_fwd = 0, t_bwd = 0, t_opt = 0, loss_win = 0;
    long win_steps = 0, win_imgs = 0, step = st.step;
    long last = cfg->train.steps;
    if (cfg->train.stop_after > 0 && st.step + cfg->train.stop_after < last)
        last = st.step + cfg->train.stop_after;
    for (; step < last && !*mimic_stop_flag(); step++) {
        double t0 = mimic_now();
        int n = 0;
        while (n == 0) { /* a batch made only of corrupt files: take the next one */
            walk_take(&walk, idx, B, ep);
            /* samples of a batch that straddles an epoch boundary keep their own epoch */
            n = 0;
            for (int i = 0; i < B;) {
                int j = i;
                while (j < B && ep[j] == ep[i])
                    j++;
                int got = loader_fill(ld, idx + i, j - i, ep[i], imgs + (size_t)n * img_sz,
                                      noise + (size_t)n * m->L, m->L, NULL);
                if (got < 0) {
                    rc = got;
                    goto out;
                }
                n += got;
                i = j;
            }
        }
        mae_batch_resize(b, n);
        double t1 = mimic_now();
        float loss = (float)mae_forward(m, b, imgs, noise);
        double t2 = mimic_now();
        params_zero_grad(m->p);
        mae_backward(m, b);
        double t3 = mimic_now();
        float lr =
            adamw_lr(step, cfg->train.warmup_steps, cfg->train.steps, base_lr, cfg->train.min_lr);
        adamw_update(&oc, m->p, m->p->w, m->p->g, 1.0f, mom, vel, 0, total, lr, step + 1);
        double t4 = mimic_now();
        if (!isfinite(loss)) {
            rc = mimic_err(MIMIC_EINVAL, "loss is %f at step %ld: stopping (last checkpoint kept)",
                           loss, step);
            goto out;
        }
        t_data += t1 - t0;
        t_fwd += t2 - t1;
        t_bwd += t3 - t2;
        t_opt += t4 - t3;
        loss_win += loss;
        win_steps++;
        win_imgs += n;
        long done = step + 1;
        if (done % cfg->train.log_every == 0 || done == cfg->train.steps) {
            double dt = mimic_now() - t_win, ips = (double)win_imgs / dt;
            double eta = (double)(cfg->train.steps - done) * dt / (double)win_steps;
            metrics_progress(stderr, "[mae]", done, cfg->train.steps, loss_win / win_steps, lr, ips,
                             eta);
            metrics_begin(&mx, "step");
            metrics_int(&mx, "step", done);
            metrics_num(&mx, "loss", loss_win / win_steps);
            metrics_num(&mx, "lr", lr);
            metrics_num(&mx, "images_per_s", ips);
            metrics_num(&mx, "data_s", t_data / win_steps);
            metrics_num(&mx, "forward_s", t_fwd / win_steps);
            metrics_num(&mx, "backward_s", t_bwd / win_steps);
            metrics_num(&mx, "optimizer_s", t_opt / win_steps);
            metrics_int(&mx, "epoch", (long long)walk.epoch);
            metrics_int(&mx, "bad_images", (long long)loader_bad(ld));
            metrics_end(&mx);
            t_win = mimic_now();
            t_data = t_fwd = t_bwd = t_opt = loss_win = 0;
            win_steps = win_imgs = 0;
        }
        if (cfg->train.ckpt_every > 0 && done % cfg->train.ckpt_every == 0 &&
            done < cfg->train.steps) {
            checkpoint_state_t cs = {done, walk.epoch, walk.cursor};
            if ((rc = checkpoint_save(ckpt, m, mom, vel, &cs, cfg_text))) goto out;
        }
    }
    checkpoint_state_t cs = {step, walk.epoch, walk.cursor};
    if ((rc = checkpoint_save(ckpt, m, mom, vel, &cs, cfg_text))) goto out;
    mimic_log("%s at step %ld; checkpoint %s", *mimic_stop_flag() ? "stopped" : "done", step, ckpt);
    metrics_begin(&mx, "end");
    metrics_int(&mx, "step", step);
    metrics_int(&mx, "bad_images", (long long)loader_bad(ld));
    metrics_end(&mx);
out:
    metrics_close(&mx);
    mae_batch_free(&b);
    mae_destroy(&m);
    loader_destroy(&ld);
    mimic_free(mom);
    mimic_free(vel);
    mimic_free(imgs);
    mimic_free(noise);
    free(idx);
    free(ep);
    free(walk.perm);
    free(cfg_text);
    return rc;
}
