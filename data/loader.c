#define _POSIX_C_SOURCE 200809L
#include "loader.h"

#include "common.h"
#include "order.h"
#include "rng.h"
#include "warp.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Where a batch is built: the caller's context (slot 0) or one loader thread's. Each
 * owns its decoder, image and resampling scratch, made once in loader_new. */
typedef struct {
    loader_t *ld;
    pthread_t thread;
    dataset_reader_t *rd;
    image_u8 img;
    augment_ws ws;
    /* the first hard failure of this slot in the current batch (sample, code, text: the
     * text lives in the failing thread's mimic_last_error, so it is copied here) */
    int err_k, err_rc;
    char err_msg[256];
} slot_t;

enum { SAMPLE_OK, SAMPLE_SKIP, SAMPLE_ERR };

/* The batch in flight: sample k goes to position k of the caller's buffers; loader_wait
 * then moves the good ones down over the skipped ones, in order. */
typedef struct {
    const uint32_t *idx;
    int n, L;
    uint64_t epoch;
    float *imgs, *noise;
    int *labels;
    uint8_t *state;    /* n SAMPLE_* (capacity state_cap) */
    atomic_int next;   /* next sample to claim: slots claim in increasing order */
    atomic_int done;   /* samples finished (built, skipped or failed) */
    atomic_int failed; /* a sample failed hard: claim no more */
} batch_t;

struct loader {
    dataset_t *ds;
    int S, C;
    float scale_lo, scale_hi;
    int hflip;
    float mean[4], std[4];
    uint64_t seed;
    int views; /* images per sample (loader_set_views) */
    int eval;  /* the deterministic resize instead of the augmentation (loader_set_eval) */
    augment_view view[LOADER_MAX_VIEWS]; /* the recipe of view v when views >= 2 */
    int warped;                          /* trailing views that warp the first ones */
    warp_cfg_t warp;

    int nslots;    /* data.threads + 1 */
    int nthreads;  /* threads running (slots 1..nthreads) */
    slot_t *slots; /* slot 0 is the caller's */
    batch_t b;
    int state_cap, in_flight;
    pthread_mutex_t mu;
    pthread_cond_t work, idle;
    unsigned gen; /* batches handed to the threads */
    int closed;   /* loader_wait took the rest of batch `gen`: no thread joins it now */
    int busy;     /* threads working on batch `gen` */
    int stop;
};

static size_t img_floats(const loader_t *ld) {
    return (size_t)ld->C * (size_t)ld->S * (size_t)ld->S;
}

/* The views of one sample into out (views, C, S, S) from the decoded image, every draw
 * from the sample's stream r: the evaluation resize, or (views >= 2) view v drawn from a
 * stream seeded by the v-th draw of r, so a view's choices do not shift with what the
 * views before it drew. (One training view, the MAE transform, is build_sample's.) */
static int build_views(loader_t *ld, slot_t *s, float *out, rng_t *r) {
    const size_t isz = img_floats(ld);
    if (ld->eval) {
        int rc = augment_resize_ws(out, &s->img, ld->S, ld->mean, ld->std, ld->C, &s->ws);
        for (int v = 1; v < ld->views && !rc; v++)
            memcpy(out + (size_t)v * isz, out, isz * sizeof(float));
        return rc;
    }
    MIMIC_CHECK(ld->views >= 2); /* one view: build_sample's crop path */
    uint64_t seeds[LOADER_MAX_VIEWS];
    for (int v = 0; v < ld->views; v++)
        seeds[v] = rng_u64(r);
    const int G = ld->views - ld->warped; /* the globally augmented views come first */
    for (int v = 0; v < G; v++) {
        rng_t rv;
        rng_seed(&rv, seeds[v]);
        int rc = augment_view_ws(out + (size_t)v * isz, &s->img, ld->S, &ld->view[v], ld->mean,
                                 ld->std, ld->C, &rv, &s->ws);
        if (rc) return rc;
    }
    for (int j = 0; j < ld->warped; j++) { /* warped view G+j: a local warp of view j */
        rng_t rv;
        warp_field_t f;
        rng_seed(&rv, seeds[G + j]);
        warp_draw(&f, &ld->warp, ld->S, &rv);
        warp_apply(out + (size_t)(G + j) * isz, out + (size_t)j * isz, ld->C, ld->S, &f);
    }
    return 0;
}

/* The MAE transform's crop, drawn once the decoder knows the image's size. */
typedef struct {
    const loader_t *ld;
    rng_t *r;
    int flip;
} crop_draw_t;

static int draw_crop(void *arg, int w, int h, augment_box *box) {
    crop_draw_t *c = arg;
    return augment_rrc_draw(box, &c->flip, w, h, c->ld->scale_lo, c->ld->scale_hi, 3.0f / 4.0f,
                            4.0f / 3.0f, c->ld->hflip, c->r);
}

/* Builds sample k of the batch at position k. Returns 0, 1 for a corrupt sample (the
 * dataset warned and counted it), or a negative error. The one-view training transform
 * draws its crop before decoding, so that only the crop is decoded (dataset_read_crop);
 * the draws are those of augment_rrc_ws on the whole image, in the same order. */
static int build_sample(loader_t *ld, slot_t *s, int k) {
    const batch_t *b = &ld->b;
    uint32_t i = b->idx[k];
    rng_t r;
    rng_split(&r, ld->seed, order_sample_stream(b->epoch, i));
    float *out = b->imgs + (size_t)k * (size_t)ld->views * img_floats(ld);
    int rc;
    if (ld->views == 1 && !ld->eval) {
        crop_draw_t c = {ld, &r, 0};
        augment_box box;
        rc = dataset_read_crop(ld->ds, s->rd, i, &s->img, ld->S, draw_crop, &c, &box);
        if (rc == MIMIC_EFORMAT) return 1;
        if (!rc)
            rc = augment_crop_ws(out, &s->img, &box, ld->S, c.flip, ld->mean, ld->std, ld->C,
                                 &s->ws);
    } else {
        rc = dataset_read(ld->ds, s->rd, i, &s->img, ld->S);
        if (rc == MIMIC_EFORMAT) return 1;
        if (!rc) rc = build_views(ld, s, out, &r);
    }
    if (rc) return rc;
    if (b->noise)
        for (int l = 0; l < b->L; l++)
            b->noise[(size_t)k * b->L + l] = rng_uniform(&r);
    if (b->labels) b->labels[k] = dataset_label(ld->ds, i);
    return 0;
}

/* Claims and builds samples of the batch until none is left (or one failed). */
static void run_samples(loader_t *ld, slot_t *s) {
    batch_t *b = &ld->b;
    while (!atomic_load(&b->failed)) {
        int k = atomic_fetch_add(&b->next, 1);
        if (k >= b->n) return;
        int rc = build_sample(ld, s, k);
        b->state[k] = rc == 0 ? SAMPLE_OK : rc == 1 ? SAMPLE_SKIP : SAMPLE_ERR;
        if (rc < 0) {
            if (s->err_k < 0) {
                s->err_k = k;
                s->err_rc = rc;
                snprintf(s->err_msg, sizeof s->err_msg, "%s", mimic_last_error());
            }
            atomic_store(&b->failed, 1);
        }
        atomic_fetch_add(&b->done, 1);
    }
}

static void *loader_thread(void *arg) {
    slot_t *s = arg;
    loader_t *ld = s->ld;
    unsigned seen = 0;
    pthread_mutex_lock(&ld->mu);
    for (;;) {
        while (!ld->stop && ld->gen == seen)
            pthread_cond_wait(&ld->work, &ld->mu);
        if (ld->stop) break;
        seen = ld->gen;
        /* woken too late (a busy machine): the caller has done the batch, and waits for
         * no thread that has not joined it */
        if (ld->closed) continue;
        ld->busy++;
        pthread_mutex_unlock(&ld->mu);
        run_samples(ld, s);
        pthread_mutex_lock(&ld->mu);
        if (--ld->busy == 0) pthread_cond_signal(&ld->idle);
    }
    pthread_mutex_unlock(&ld->mu);
    return NULL;
}

/* Decoder and scratch of every slot; for in-memory sets (one image size) sized now for
 * the largest crop, so that no batch ever allocates. */
static int slots_init(loader_t *ld) {
    int w, h, fixed = dataset_fixed_size(ld->ds, &w, &h), c = dataset_channels(ld->ds);
    for (int t = 0; t < ld->nslots; t++) {
        slot_t *s = &ld->slots[t];
        s->ld = ld;
        int rc = dataset_reader_new(&s->rd, ld->ds);
        if (!rc && fixed) rc = image_u8_reserve(&s->img, w, h, c);
        if (!rc && fixed) rc = augment_ws_reserve(&s->ws, w, h, c, ld->S);
        if (rc) return rc;
    }
    return 0;
}

/* Starts the threads with every signal blocked, so that signals (SIGTERM: checkpoint and
 * stop) interrupt the caller's thread, not a loader thread. */
static int threads_start(loader_t *ld, int want) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int err = 0;
    while (ld->nthreads < want && !err) {
        slot_t *s = &ld->slots[ld->nthreads + 1];
        if (!(err = pthread_create(&s->thread, NULL, loader_thread, s))) ld->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err)
        return mimic_err(MIMIC_ENOMEM, "data loader: cannot start thread %d of %d (data.threads)",
                         ld->nthreads + 1, want);
    return 0;
}

static void copy_params(loader_t *ld, const mimic_cfg_t *cfg) {
    ld->S = cfg->model.img_size;
    ld->C = cfg->model.in_chans;
    ld->scale_lo = cfg->data.scale_min;
    ld->scale_hi = cfg->data.scale_max;
    ld->hflip = cfg->data.hflip;
    memcpy(ld->mean, cfg->data.mean, sizeof ld->mean);
    memcpy(ld->std, cfg->data.std, sizeof ld->std);
    ld->seed = cfg->train.seed;
    ld->views = 1;
    ld->warp = (warp_cfg_t){cfg->data.warp_regions, cfg->data.warp_radius,
                            cfg->data.warp_magnitude};
    for (int v = 0; v < LOADER_MAX_VIEWS; v++)
        ld->view[v] = (augment_view){
            .scale_lo = ld->scale_lo,
            .scale_hi = ld->scale_hi,
            .ratio_lo = 3.0f / 4.0f,
            .ratio_hi = 4.0f / 3.0f,
            .hflip = ld->hflip,
            .jitter_p = cfg->data.jitter_p,
            .brightness = cfg->data.brightness,
            .contrast = cfg->data.contrast,
            .saturation = cfg->data.saturation,
            .hue = cfg->data.hue,
            .gray_p = cfg->data.gray_p,
            .blur_p = cfg->data.blur_p[v],
            .solarize_p = cfg->data.solarize_p[v],
        };
}

int loader_new(loader_t **out, const mimic_cfg_t *cfg) {
    *out = NULL;
    dataset_opts o;
    int rc = loader_opts(&o, cfg);
    if (rc) return rc;
    loader_t *ld = calloc(1, sizeof *ld);
    if (!ld) return mimic_err(MIMIC_ENOMEM, "out of memory for the data loader");
    pthread_mutex_init(&ld->mu, NULL);
    pthread_cond_init(&ld->work, NULL);
    pthread_cond_init(&ld->idle, NULL);
    copy_params(ld, cfg);
    if ((rc = dataset_open(&ld->ds, &o))) goto fail;
    if (dataset_size(ld->ds) == 0) {
        rc = mimic_err(MIMIC_EINVAL, "%s: data set is empty", cfg->data.path);
        goto fail;
    }
    int cap = cfg->train.batch_size > cfg->cluster.chunk_size ? cfg->train.batch_size
                                                              : cfg->cluster.chunk_size;
    ld->state_cap = cap > 1 ? cap : 1;
    ld->b.state = malloc((size_t)ld->state_cap);
    ld->nslots = cfg->data.threads + 1;
    ld->slots = calloc((size_t)ld->nslots, sizeof *ld->slots);
    if (!ld->b.state || !ld->slots) {
        rc = mimic_err(MIMIC_ENOMEM, "out of memory for the data loader");
        goto fail;
    }
    if ((rc = slots_init(ld))) goto fail;
    if ((rc = threads_start(ld, cfg->data.threads))) goto fail;
    *out = ld;
    return 0;
fail:
    loader_destroy(&ld);
    return rc;
}

void loader_destroy(loader_t **pl) {
    if (!pl || !*pl) return;
    loader_t *ld = *pl;
    if (ld->in_flight) loader_wait(ld);
    pthread_mutex_lock(&ld->mu);
    ld->stop = 1;
    pthread_cond_broadcast(&ld->work);
    pthread_mutex_unlock(&ld->mu);
    for (int t = 1; t <= ld->nthreads; t++)
        pthread_join(ld->slots[t].thread, NULL);
    for (int t = 0; ld->slots && t < ld->nslots; t++) {
        dataset_reader_destroy(&ld->slots[t].rd);
        image_u8_free(&ld->slots[t].img);
        augment_ws_free(&ld->slots[t].ws);
    }
    free(ld->slots);
    free(ld->b.state);
    dataset_destroy(&ld->ds);
    pthread_cond_destroy(&ld->work);
    pthread_cond_destroy(&ld->idle);
    pthread_mutex_destroy(&ld->mu);
    free(ld);
    *pl = NULL;
}

int loader_set_views(loader_t *ld, int views) {
    MIMIC_CHECK(ld != NULL && !ld->in_flight);
    if (views < 1 || views > LOADER_MAX_VIEWS)
        return mimic_err(MIMIC_EINVAL, "loader: %d views per sample (need 1..%d)", views,
                         LOADER_MAX_VIEWS);
    ld->views = views;
    ld->warped = 0;
    return 0;
}

int loader_set_warp(loader_t *ld, int warped) {
    MIMIC_CHECK(ld != NULL && !ld->in_flight);
    if (warped < 0 || 2 * warped > ld->views)
        return mimic_err(MIMIC_EINVAL, "loader: %d warped views of %d (need 0..%d)", warped,
                         ld->views, ld->views / 2);
    ld->warped = warped;
    return 0;
}

void loader_set_eval(loader_t *ld, int on) {
    MIMIC_CHECK(ld != NULL && !ld->in_flight);
    ld->eval = on != 0;
}

int loader_views(const loader_t *ld) {
    return ld->views;
}

size_t loader_size(const loader_t *ld) {
    return dataset_size(ld->ds);
}
int loader_num_classes(const loader_t *ld) {
    return dataset_num_classes(ld->ds);
}

size_t loader_bad(const loader_t *ld) {
    return dataset_bad_count(ld->ds);
}

int loader_submit(loader_t *ld, const uint32_t *idx, int n, uint64_t epoch, float *imgs,
                  float *noise, int L, int *labels) {
    MIMIC_CHECK(ld != NULL && !ld->in_flight); /* at most one batch in flight */
    if (n < 0 || (n > 0 && (!idx || !imgs)) || (noise && L < 0))
        return mimic_err(MIMIC_EINVAL, "loader: bad batch (%d samples, idx %p, imgs %p, L %d)", n,
                         (const void *)idx, (void *)imgs, L);
    batch_t *b = &ld->b;
    if (n > ld->state_cap) { /* a batch larger than train.batch_size: grown once */
        uint8_t *p = realloc(b->state, (size_t)n);
        if (!p) return mimic_err(MIMIC_ENOMEM, "loader: out of memory for a %d-sample batch", n);
        b->state = p;
        ld->state_cap = n;
    }
    b->idx = idx;
    b->n = n;
    b->L = L;
    b->epoch = epoch;
    b->imgs = imgs;
    b->noise = noise;
    b->labels = labels;
    atomic_store(&b->next, 0);
    atomic_store(&b->done, 0);
    atomic_store(&b->failed, 0);
    for (int t = 0; t <= ld->nthreads; t++)
        ld->slots[t].err_k = -1;
    ld->in_flight = 1;
    if (ld->nthreads == 0 || n == 0) {
        run_samples(ld, &ld->slots[0]);
        return 0;
    }
    pthread_mutex_lock(&ld->mu);
    ld->gen++;
    ld->closed = 0;
    pthread_cond_broadcast(&ld->work);
    pthread_mutex_unlock(&ld->mu);
    return 0;
}

/* The error of sample k, raised again in the caller's thread when a loader thread met it
 * (its message was printed there already; this one makes mimic_last_error tell it). */
static int batch_error(const loader_t *ld, int k) {
    for (int t = 0; t <= ld->nthreads; t++) {
        const slot_t *s = &ld->slots[t];
        if (s->err_k == k) return t == 0 ? s->err_rc : mimic_err(s->err_rc, "%s", s->err_msg);
    }
    return mimic_err(MIMIC_EINVAL, "loader: sample %d failed without a reason", k);
}

/* Moves the good samples down over the skipped ones, keeping their order. */
static int compact(const loader_t *ld) {
    const batch_t *b = &ld->b;
    const size_t img_sz = (size_t)ld->views * img_floats(ld); /* a sample's views move together */
    int filled = 0;
    for (int k = 0; k < b->n; k++) {
        if (b->state[k] == SAMPLE_SKIP) continue;
        if (b->state[k] == SAMPLE_ERR) return batch_error(ld, k);
        if (filled != k) {
            memmove(b->imgs + filled * img_sz, b->imgs + k * img_sz, img_sz * sizeof(float));
            if (b->noise)
                memmove(b->noise + (size_t)filled * b->L, b->noise + (size_t)k * b->L,
                        (size_t)b->L * sizeof(float));
            if (b->labels) b->labels[filled] = b->labels[k];
        }
        filled++;
    }
    return filled;
}

int loader_ready(loader_t *ld) {
    MIMIC_CHECK(ld != NULL && ld->in_flight); /* loader_submit first */
    return atomic_load(&ld->b.done) >= ld->b.n || atomic_load(&ld->b.failed);
}

int loader_wait(loader_t *ld) {
    MIMIC_CHECK(ld != NULL && ld->in_flight); /* loader_submit first */
    run_samples(ld, &ld->slots[0]);
    pthread_mutex_lock(&ld->mu);
    ld->closed = 1;
    while (ld->busy > 0)
        pthread_cond_wait(&ld->idle, &ld->mu);
    pthread_mutex_unlock(&ld->mu);
    ld->in_flight = 0;
    return compact(ld);
}

int loader_fill(loader_t *ld, const uint32_t *idx, int n, uint64_t epoch, float *imgs, float *noise,
                int L, int *labels) {
    int rc = loader_submit(ld, idx, n, epoch, imgs, noise, L, labels);
    return rc ? rc : loader_wait(ld);
}
