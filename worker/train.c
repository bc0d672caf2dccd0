#include "train.h"

#include "adamw.h"
#include "common.h"
#include "stopsig.h"

#include <math.h>
#include <stdlib.h>

/* One batch's buffers; two of them when the backend lets the next batch run ahead. */
typedef struct {
    train_batch_t b;
    stage_input_t in;
    int taken;   /* indices taken from the backend, batch built or being built */
    int pending; /* submitted to the loader's threads, not yet waited for */
} slot_t;

static void slot_free(slot_t *sl, loader_t *ld) {
    if (sl->pending) loader_wait(ld); /* the loader's threads write into these buffers */
    free(sl->b.idx);
    free(sl->b.epoch);
    mimic_free(sl->in.imgs);
    mimic_free(sl->in.noise);
    free(sl->in.labels);
}

static int slot_alloc(slot_t *sl, const stage_t *s, size_t img_floats) {
    size_t B = (size_t)s->batch;
    sl->b.idx = calloc(B, sizeof *sl->b.idx);
    sl->b.epoch = calloc(B, sizeof *sl->b.epoch);
    sl->in.imgs = mimic_alloc(B * (size_t)s->views * img_floats * sizeof(float));
    if (s->noise_len > 0) sl->in.noise = mimic_alloc(B * (size_t)s->noise_len * sizeof(float));
    if (s->wants_labels) sl->in.labels = calloc(B, sizeof(int));
    if (!sl->b.idx || !sl->b.epoch || !sl->in.imgs || (s->noise_len > 0 && !sl->in.noise) ||
        (s->wants_labels && !sl->in.labels))
        return mimic_err(MIMIC_ENOMEM, "out of memory for the batch buffers");
    return 0;
}

/* Builds the slot's batch from its indices, in this thread. Samples of a batch that
 * straddles an epoch boundary keep their own epoch, so a run of equal epochs is one
 * loader call. */
static int slot_build(slot_t *sl, loader_t *ld, const stage_t *s, size_t img_floats) {
    const train_batch_t *b = &sl->b;
    int n = 0;
    for (int i = 0; i < b->count;) {
        int j = i;
        while (j < b->count && b->epoch[j] == b->epoch[i])
            j++;
        int got = loader_fill(ld, b->idx + i, j - i, b->epoch[i],
                              sl->in.imgs + (size_t)n * s->views * img_floats,
                              sl->in.noise ? sl->in.noise + (size_t)n * s->noise_len : NULL,
                              s->noise_len, sl->in.labels ? sl->in.labels + n : NULL);
        if (got < 0) return got;
        n += got;
        i = j;
    }
    sl->b.n = n;
    return 0;
}

/* Unreadable data never makes the loop spin: after each built batch, the samples since
 * the last readable one are counted, and training stops with an error naming the data
 * set when they exceed data.max_bad_run or when every sample of the set has been found
 * unreadable (the loader's warnings name each file and why). */
typedef struct {
    const mimic_cfg_t *cfg;
    long run; /* unreadable samples since the last readable one */
} bad_guard_t;

static int bad_check(bad_guard_t *g, loader_t *ld, const train_batch_t *b) {
    const mimic_cfg_t *c = g->cfg;
    if (b->n == b->count) {
        g->run = 0;
        return 0;
    }
    /* a batch with readable samples ends the run; the order within it is not known */
    g->run = b->n > 0 ? 0 : g->run + b->count;
    size_t bad = loader_bad(ld), size = loader_size(ld);
    if (size > 0 && bad >= size)
        return mimic_err(MIMIC_EINVAL,
                         "data set %s (data.kind %s): none of its %zu samples is readable (the "
                         "warnings above say why); check data.path, data.kind and data.labels",
                         c->data.path, c->data.kind, size);
    if (c->data.max_bad_run > 0 && g->run > c->data.max_bad_run)
        return mimic_err(MIMIC_EINVAL,
                         "data set %s (data.kind %s): %ld samples in a row unreadable "
                         "(data.max_bad_run %ld; %zu of %zu unreadable so far): stopping",
                         c->data.path, c->data.kind, g->run, c->data.max_bad_run, bad, size);
    return 0;
}

/* The batch taken last had no readable sample and is not trained: the backend may
 * account for it (the scheduler's chunk) before the next is taken. */
static int skip_batch(const train_backend_t *be) {
    return be->skip ? be->skip(be->self) : 0;
}

/* Takes indices from the backend and starts the batch: on the loader's threads when
 * `ahead` and the batch lies in one epoch (slot_ready waits for it), else built here,
 * again while every sample of a batch was corrupt. 0, TRAIN_END or an error. */
static int slot_take(slot_t *sl, loader_t *ld, const stage_t *s, const train_backend_t *be,
                     size_t img_floats, int ahead, bad_guard_t *g) {
    for (int again = 0;; again = 1) {
        int rc = again ? skip_batch(be) : 0;
        if (rc) return rc;
        rc = be->next(be->self, &sl->b, s->batch);
        if (rc) return rc;
        const train_batch_t *b = &sl->b;
        MIMIC_CHECK(b->count > 0 && b->count <= s->batch);
        sl->taken = 1;
        if (ahead && b->epoch[0] == b->epoch[b->count - 1]) {
            rc = loader_submit(ld, b->idx, b->count, b->epoch[0], sl->in.imgs, sl->in.noise,
                               s->noise_len, sl->in.labels);
            sl->pending = rc == 0;
            return rc;
        }
        if ((rc = slot_build(sl, ld, s, img_floats)) || (rc = bad_check(g, ld, b))) return rc;
        if (sl->b.n > 0 || *mimic_stop_flag()) return 0;
    }
}

/* The slot's batch, built: waits for the loader's threads when it ran ahead, and takes
 * another batch when every sample was corrupt. */
static int slot_ready(slot_t *sl, loader_t *ld, const stage_t *s, const train_backend_t *be,
                      size_t img_floats, bad_guard_t *g) {
    if (!sl->taken) return slot_take(sl, ld, s, be, img_floats, 0, g);
    if (!sl->pending) return 0;
    sl->pending = 0;
    int n = loader_wait(ld);
    if (n < 0) return n;
    sl->b.n = n;
    int rc = bad_check(g, ld, &sl->b);
    if (rc) return rc;
    if (n > 0 || *mimic_stop_flag()) return 0;
    if ((rc = skip_batch(be))) return rc;
    return slot_take(sl, ld, s, be, img_floats, 0, g);
}

typedef struct {
    double t0, loss, t_data, t_fwd, t_bwd, t_update;
    long steps, images;
} window_t;

static void window_add(window_t *w, const train_step_t *st) {
    w->loss += st->loss;
    w->t_data += st->t_data;
    w->t_fwd += st->t_fwd;
    w->t_bwd += st->t_bwd;
    w->t_update += st->t_update;
    w->steps++;
    w->images += st->n;
}

/* Reports the window when log_every steps have passed or training is over. */
static void window_report(window_t *w, const mimic_cfg_t *cfg, const train_backend_t *be,
                          long done) {
    long every = cfg->train.log_every > 0 ? cfg->train.log_every : 1;
    if (w->steps == 0 || (w->steps < every && done % every != 0 && done < cfg->train.steps))
        return;
    double dt = mimic_now() - w->t0, k = (double)w->steps;
    train_window_t r = {
        .done = done,
        .steps = cfg->train.steps,
        .loss = w->loss / k,
        .lr = adamw_lr(done - 1, cfg->train.warmup_steps, cfg->train.steps, be->base_lr,
                       cfg->train.min_lr),
        .images_per_s = (double)w->images / dt,
        .eta_s = done < cfg->train.steps ? (double)(cfg->train.steps - done) * dt / k : 0,
        .t_data = w->t_data / k,
        .t_fwd = w->t_fwd / k,
        .t_bwd = w->t_bwd / k,
        .t_update = w->t_update / k,
    };
    be->report(be->self, &r);
    *w = (window_t){.t0 = mimic_now()};
}

int train_run(const mimic_cfg_t *cfg, stage_t *s, loader_t *ld, const train_backend_t *be,
              long *step, long stop_at) {
    size_t img_floats = (size_t)cfg->model.in_chans * cfg->model.img_size * cfg->model.img_size;
    slot_t slots[2] = {0};
    int nslots = be->ahead ? 2 : 1, cur = 0, rc = 0;
    if ((rc = loader_set_views(ld, s->views)) || (rc = loader_set_warp(ld, s->warp_views)))
        return rc;
    for (int i = 0; i < nslots && !rc; i++)
        rc = slot_alloc(&slots[i], s, img_floats);
    window_t w = {.t0 = mimic_now()};
    bad_guard_t guard = {cfg, 0};
    while (!rc && *step < stop_at && *step < cfg->train.steps && !*mimic_stop_flag()) {
        slot_t *sl = &slots[cur];
        double t0 = mimic_now();
        if ((rc = slot_ready(sl, ld, s, be, img_floats, &guard))) break;
        if (sl->b.n == 0) break; /* stopped while skipping corrupt batches */
        /* the next batch is built on the loader's threads while this one computes and
         * is applied; a backend with no next batch (TRAIN_END) still gets this step */
        slot_t *nx = &slots[cur ^ 1];
        int last = 0;
        if (be->ahead && !nx->taken && *step + 1 < stop_at && *step + 1 < cfg->train.steps) {
            rc = slot_take(nx, ld, s, be, img_floats, 1, &guard);
            last = rc == TRAIN_END;
            if (rc && !last) break;
            rc = 0;
        }
        train_step_t st = {.step = *step, .n = sl->b.n, .t_start = t0, .batch = &sl->b};
        st.t_data = mimic_now() - t0;
        st.loss = stage_compute(s, &sl->in, sl->b.n, &st.t_fwd, &st.t_bwd);
        if (!isfinite(st.loss)) {
            rc = mimic_err(MIMIC_EINVAL, "loss is %f at step %ld: stopping (last checkpoint kept)",
                           st.loss, *step);
            break;
        }
        double t1 = mimic_now();
        if ((rc = be->update(be->self, s, sl->b.n, step))) break;
        st.t_update = mimic_now() - t1;
        st.done = *step;
        if ((rc = be->after(be->self, s, &st))) break;
        sl->taken = 0;
        window_add(&w, &st);
        window_report(&w, cfg, be, *step);
        cur = be->ahead ? cur ^ 1 : 0;
        if (last) rc = TRAIN_END;
    }
    for (int i = 0; i < nslots; i++)
        slot_free(&slots[i], ld);
    return rc == TRAIN_END ? 0 : rc;
}
