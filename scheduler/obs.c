#include "obs.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const obs_phase_names[OBS_PHASES] = {"data", "forward", "backward", "push",
                                                 "pull_wait"};

struct obs {
    pthread_mutex_t mu;
    obs_state_t shared;
};

obs_t *obs_new(void) {
    obs_t *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    if (pthread_mutex_init(&o->mu, NULL)) {
        free(o);
        return NULL;
    }
    o->shared.ckpt_step = -1;
    return o;
}

void obs_destroy(obs_t **po) {
    if (!po || !*po) return;
    pthread_mutex_destroy(&(*po)->mu);
    free(*po);
    *po = NULL;
}

int obs_publish(obs_t *o, const obs_state_t *st) {
    if (pthread_mutex_trylock(&o->mu)) return 0; /* a reader copies: next time */
    memcpy(&o->shared, st, sizeof *st);
    pthread_mutex_unlock(&o->mu);
    return 1;
}

void obs_read(obs_t *o, obs_state_t *out) {
    pthread_mutex_lock(&o->mu);
    memcpy(out, &o->shared, sizeof *out);
    pthread_mutex_unlock(&o->mu);
}

obs_worker_t *obs_worker(obs_state_t *st, int32_t id) {
    for (int i = 0; i < st->nworkers; i++)
        if (st->w[i].id == id) return &st->w[i];
    if (st->nworkers == OBS_WORKERS_MAX) {
        /* room for a new worker: forget a departed one (its bytes stay in the totals) */
        int i = 0;
        while (i < st->nworkers && st->w[i].live)
            i++;
        if (i == st->nworkers) return NULL;
        st->departed_bytes_out += st->w[i].bytes_out;
        st->departed_bytes_in += st->w[i].bytes_in;
        memmove(&st->w[i], &st->w[i + 1], (size_t)(st->nworkers - i - 1) * sizeof st->w[0]);
        st->nworkers--;
    }
    obs_worker_t *w = &st->w[st->nworkers++];
    memset(w, 0, sizeof *w);
    w->id = id;
    w->rank = -1;
    w->live = 1;
    return w;
}

void obs_history_add(obs_state_t *st, const obs_point_t *p) {
    if (st->nhist > 0 && p->t - st->hist[st->nhist - 1].t < st->hist_dt) {
        st->hist[st->nhist - 1] = *p; /* within the spacing: the newest replaces the last */
        return;
    }
    if (st->nhist == OBS_HIST) {
        for (int i = 0; i < OBS_HIST / 2; i++)
            st->hist[i] = st->hist[2 * i];
        st->nhist = OBS_HIST / 2;
        st->hist_dt = st->hist_dt > 0 ? 2 * st->hist_dt : (p->t - st->hist[0].t) / OBS_HIST;
    }
    st->hist[st->nhist++] = *p;
}

/* ---- text buffer -------------------------------------------------------------------- */

void obs_buf_free(obs_buf_t *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

static int reserve(obs_buf_t *b, size_t more) {
    if (b->oom) return -1;
    if (b->len + more + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void obs_buf_printf(obs_buf_t *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void obs_buf_label(obs_buf_t *b, const char *v) {
    for (; *v; v++) {
        if (*v == '\\')
            obs_buf_printf(b, "\\\\");
        else if (*v == '"')
            obs_buf_printf(b, "\\\"");
        else if (*v == '\n')
            obs_buf_printf(b, "\\n");
        else
            obs_buf_printf(b, "%c", *v);
    }
}

void obs_buf_json_str(obs_buf_t *b, const char *v) {
    obs_buf_printf(b, "\"");
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if (c == '"' || c == '\\')
            obs_buf_printf(b, "\\%c", c);
        else if (c < 0x20)
            obs_buf_printf(b, "\\u%04x", c);
        else
            obs_buf_printf(b, "%c", c);
    }
    obs_buf_printf(b, "\"");
}

/* ---- /metrics ------------------------------------------------------------------------ */

/* A sample value as Prometheus writes it: NaN, +Inf, -Inf or a round-tripping float. */
static void prom_value(obs_buf_t *b, double v) {
    if (isnan(v))
        obs_buf_printf(b, "NaN\n");
    else if (isinf(v))
        obs_buf_printf(b, "%sInf\n", v > 0 ? "+" : "-");
    else
        obs_buf_printf(b, "%.17g\n", v);
}

static void head(obs_buf_t *b, const char *name, const char *type, const char *help) {
    obs_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void scalar(obs_buf_t *b, const char *name, const char *type, const char *help, double v) {
    head(b, name, type, help);
    obs_buf_printf(b, "%s ", name);
    prom_value(b, v);
}

static void worker_sample(obs_buf_t *b, const char *name, const obs_worker_t *w, const char *phase,
                          double v) {
    obs_buf_printf(b, "%s{worker=\"%d\",rank=\"%d\"", name, (int)w->id, w->rank);
    if (phase) obs_buf_printf(b, ",phase=\"%s\"", phase);
    obs_buf_printf(b, "} ");
    prom_value(b, v);
}

void obs_render_prom(obs_buf_t *b, const obs_state_t *st, double now) {
    head(b, "mimicps_info", "gauge",
         "The run: training stage, consistency model, output directory.");
    obs_buf_printf(b, "mimicps_info{stage=\"");
    obs_buf_label(b, st->stage);
    obs_buf_printf(b, "\",consistency=\"");
    obs_buf_label(b, st->consistency);
    obs_buf_printf(b, "\",out_dir=\"");
    obs_buf_label(b, st->out_dir);
    obs_buf_printf(b, "\"} 1\n");
    scalar(b, "mimicps_uptime_seconds", "gauge", "Seconds since the scheduler started.", st->t);
    scalar(b, "mimicps_step", "gauge", "Step of the last cluster progress line.", (double)st->step);
    scalar(b, "mimicps_end_step", "gauge", "Step the run trains to.", (double)st->total);
    scalar(b, "mimicps_loss", "gauge", "Mean loss of the workers' reports of that step.", st->loss);
    scalar(b, "mimicps_lr", "gauge", "Learning rate of that step.", st->lr);
    scalar(b, "mimicps_images_per_second", "gauge",
           "Cluster images/s between the last two progress lines (from CHUNK_DONE).", st->img_s);
    scalar(b, "mimicps_images_total", "counter", "Samples the workers reported processed.",
           (double)st->images);
    scalar(b, "mimicps_workers_live", "gauge", "Live workers.", st->workers_live);
    scalar(b, "mimicps_servers_live", "gauge", "Live parameter servers.", st->servers_live);
    scalar(b, "mimicps_checkpoint_step", "gauge",
           "Step of the last complete checkpoint (-1: none).", (double)st->ckpt_step);
    scalar(b, "mimicps_checkpoint_age_seconds", "gauge",
           "Seconds since the last complete checkpoint (NaN: none yet).",
           st->ckpt_wall > 0 ? now - st->ckpt_wall : NAN);
    scalar(b, "mimicps_bad_images_total", "counter",
           "Unreadable images the workers' loaders met (live workers and those reported).",
           (double)st->bad_images);
    scalar(b, "mimicps_unreadable_chunks_total", "counter", "Chunks with no readable sample.",
           (double)st->unreadable_chunks);
    scalar(b, "mimicps_requeued_chunks_total", "counter",
           "Chunks put back in the queue because their worker died or left.",
           (double)st->requeued_chunks);
    scalar(b, "mimicps_stragglers", "gauge", "Workers flagged as stragglers now.", st->stragglers);
    scalar(b, "mimicps_stragglers_flagged_total", "counter", "Times a worker was flagged.",
           (double)st->stragglers_total);
    uint64_t out = st->departed_bytes_out, in = st->departed_bytes_in;
    for (int i = 0; i < st->nworkers; i++) {
        out += st->w[i].bytes_out;
        in += st->w[i].bytes_in;
    }
    scalar(b, "mimicps_pushed_bytes_total", "counter",
           "Payload bytes the workers pushed to the servers.", (double)out);
    scalar(b, "mimicps_pulled_bytes_total", "counter",
           "Payload bytes the workers pulled from the servers.", (double)in);

    head(b, "mimicps_worker_phase_seconds_total", "counter",
         "Seconds a worker spent per phase of its steps (data, forward, backward, push, "
         "pull_wait).");
    for (int i = 0; i < st->nworkers; i++)
        for (int p = 0; p < OBS_PHASES; p++)
            worker_sample(b, "mimicps_worker_phase_seconds_total", &st->w[i], obs_phase_names[p],
                          st->w[i].phase_s[p]);
    head(b, "mimicps_worker_steps_total", "counter", "Steps a worker trained.");
    for (int i = 0; i < st->nworkers; i++)
        worker_sample(b, "mimicps_worker_steps_total", &st->w[i], NULL, (double)st->w[i].steps);
    head(b, "mimicps_worker_pushed_bytes_total", "counter", "Payload bytes a worker pushed.");
    for (int i = 0; i < st->nworkers; i++)
        worker_sample(b, "mimicps_worker_pushed_bytes_total", &st->w[i], NULL,
                      (double)st->w[i].bytes_out);
    head(b, "mimicps_worker_pulled_bytes_total", "counter", "Payload bytes a worker pulled.");
    for (int i = 0; i < st->nworkers; i++)
        worker_sample(b, "mimicps_worker_pulled_bytes_total", &st->w[i], NULL,
                      (double)st->w[i].bytes_in);
    head(b, "mimicps_worker_live", "gauge", "1 while the worker is a live member.");
    for (int i = 0; i < st->nworkers; i++)
        worker_sample(b, "mimicps_worker_live", &st->w[i], NULL, st->w[i].live);
    head(b, "mimicps_worker_straggler", "gauge", "1 while the worker is flagged as a straggler.");
    for (int i = 0; i < st->nworkers; i++)
        worker_sample(b, "mimicps_worker_straggler", &st->w[i], NULL, st->w[i].flagged);
    head(b, "mimicps_worker_step_ratio", "gauge",
         "A worker's last step time over the others' median (0: not compared yet).");
    for (int i = 0; i < st->nworkers; i++)
        worker_sample(b, "mimicps_worker_step_ratio", &st->w[i], NULL, st->w[i].ratio);
}

/* ---- /api/state ---------------------------------------------------------------------- */

/* A JSON number; JSON has no NaN or infinity: null. */
static void jnum(obs_buf_t *b, const char *sep, const char *key, double v) {
    if (isfinite(v))
        obs_buf_printf(b, "%s\"%s\":%.9g", sep, key, v);
    else
        obs_buf_printf(b, "%s\"%s\":null", sep, key);
}

static void jval(obs_buf_t *b, const char *sep, double v) {
    if (isfinite(v))
        obs_buf_printf(b, "%s%.9g", sep, v);
    else
        obs_buf_printf(b, "%snull", sep);
}

void obs_render_json(obs_buf_t *b, const obs_state_t *st, double now) {
    obs_buf_printf(b, "{\"stage\":");
    obs_buf_json_str(b, st->stage);
    obs_buf_printf(b, ",\"consistency\":");
    obs_buf_json_str(b, st->consistency);
    jnum(b, ",", "t", st->t);
    jnum(b, ",", "step", (double)st->step);
    jnum(b, ",", "end_step", (double)st->total);
    jnum(b, ",", "loss", st->loss);
    jnum(b, ",", "lr", st->lr);
    jnum(b, ",", "img_per_s", st->img_s);
    jnum(b, ",", "images", (double)st->images);
    jnum(b, ",", "workers_live", st->workers_live);
    jnum(b, ",", "servers_live", st->servers_live);
    jnum(b, ",", "checkpoint_step", (double)st->ckpt_step);
    jnum(b, ",", "checkpoint_age_s", st->ckpt_wall > 0 ? now - st->ckpt_wall : NAN);
    jnum(b, ",", "bad_images", (double)st->bad_images);
    jnum(b, ",", "requeued_chunks", (double)st->requeued_chunks);
    jnum(b, ",", "stragglers", st->stragglers);
    obs_buf_printf(b, ",\"phases\":[");
    for (int p = 0; p < OBS_PHASES; p++)
        obs_buf_printf(b, "%s\"%s\"", p ? "," : "", obs_phase_names[p]);
    obs_buf_printf(b, "],\"workers\":[");
    for (int i = 0; i < st->nworkers; i++) {
        const obs_worker_t *w = &st->w[i];
        obs_buf_printf(b, "%s{\"id\":%d,\"rank\":%d,\"live\":%d,\"straggler\":%d", i ? "," : "",
                       (int)w->id, w->rank, w->live, w->flagged);
        jnum(b, ",", "ratio", w->ratio);
        jnum(b, ",", "step", (double)w->step);
        jnum(b, ",", "steps", (double)w->steps);
        jnum(b, ",", "bytes_pushed", (double)w->bytes_out);
        jnum(b, ",", "bytes_pulled", (double)w->bytes_in);
        obs_buf_printf(b, ",\"phase_s\":[");
        for (int p = 0; p < OBS_PHASES; p++)
            jval(b, p ? "," : "", w->phase_s[p]);
        obs_buf_printf(b, "]}");
    }
    /* history: [t, step, loss, img_per_s, workers, servers] rows, oldest first */
    obs_buf_printf(b, "],\"history\":[");
    for (int i = 0; i < st->nhist; i++) {
        const obs_point_t *p = &st->hist[i];
        obs_buf_printf(b, "%s[", i ? "," : "");
        jval(b, "", p->t);
        jval(b, ",", (double)p->step);
        jval(b, ",", p->loss);
        jval(b, ",", p->img_s);
        obs_buf_printf(b, ",%d,%d]", p->workers, p->servers);
    }
    obs_buf_printf(b, "]}\n");
}
