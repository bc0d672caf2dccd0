/* obs — what the scheduler shows to people and to Prometheus (docs/operations.md):
 * a plain snapshot of the cluster (obs_state_t: progress, checkpoint, membership,
 * per-worker phase counters, a bounded history of progress lines) and the renderers of
 * /metrics (Prometheus text format) and /api/state (JSON).
 *
 * The scheduler owns a working obs_state_t that only its event loop touches; now and
 * then it publishes it with obs_publish, which copies it under the mutex only when the
 * mutex is free (pthread_mutex_trylock): the event loop never waits for a reader. The
 * HTTP thread copies the published state out with obs_read (the lock is held for one
 * memcpy) and renders its copy outside the lock.
 *   obs_t *o = obs_new();  obs_publish(o, &work);   // event loop
 *   obs_read(o, &copy);  obs_render_prom(&sb, &copy, time(NULL));  // HTTP thread */
#ifndef MIMIC_OBS_H
#define MIMIC_OBS_H

#include <stddef.h>
#include <stdint.h>

#define OBS_WORKERS_MAX 64 /* per-worker rows shown; more workers are summed only */
#define OBS_HIST 512       /* history points; when full every other one is dropped */
#define OBS_PHASES 5

/* the phase names of the worker counters, in METRICS f[] order */
extern const char *const obs_phase_names[OBS_PHASES];

typedef struct {
    double t; /* seconds since the scheduler started */
    long step;
    double loss, img_s;
    int workers, servers;
} obs_point_t;

typedef struct {
    int32_t id;
    int rank, live, flagged;
    double ratio;               /* step time over the others' median (straggler.h) */
    long step;                  /* METRICS st of its last report */
    double phase_s[OBS_PHASES]; /* summed since the worker started */
    uint64_t steps, bytes_out, bytes_in, bad_images;
} obs_worker_t;

typedef struct {
    double t;    /* seconds since the scheduler started, at publication */
    double wall; /* unix time at publication */
    long step, total;
    double loss, lr, img_s; /* of the last progress line */
    uint64_t images;        /* samples processed (CHUNK_DONE), since the start */
    int workers_live, servers_live;
    long ckpt_step;         /* -1: none yet */
    double ckpt_wall;       /* unix time of that checkpoint (0: none) */
    uint64_t bad_images;    /* unreadable images the workers' loaders met */
    long unreadable_chunks; /* chunks with no readable sample */
    uint64_t requeued_chunks;
    int stragglers;                                 /* flagged now */
    long stragglers_total;                          /* ever flagged */
    uint64_t departed_bytes_out, departed_bytes_in; /* of workers no longer in w[] */
    char stage[32], consistency[8], out_dir[1024];
    int nworkers;
    obs_worker_t w[OBS_WORKERS_MAX];
    int nhist;
    double hist_dt; /* history keeps a point at most this often (doubles when full) */
    obs_point_t hist[OBS_HIST];
} obs_state_t;

typedef struct obs obs_t;

/* A growable text buffer for the renderers (HTTP thread only: it allocates). */
typedef struct {
    char *p;
    size_t len, cap;
    int oom; /* an append failed: the text is incomplete */
} obs_buf_t;

obs_t *obs_new(void);
void obs_destroy(obs_t **o);
/* Copies st to the published state if no reader holds it; 1 published, 0 busy. */
int obs_publish(obs_t *o, const obs_state_t *st);
/* Copies the published state into out (waits for a publication under way: one memcpy). */
void obs_read(obs_t *o, obs_state_t *out);

/* The row of worker id (added, as live, if absent and there is room); NULL when full. */
obs_worker_t *obs_worker(obs_state_t *st, int32_t id);
/* Appends a history point; when full, keeps every other point and doubles hist_dt, so
 * the history always spans the whole run in at most OBS_HIST points. */
void obs_history_add(obs_state_t *st, const obs_point_t *p);

void obs_buf_free(obs_buf_t *b);
__attribute__((format(printf, 2, 3))) void obs_buf_printf(obs_buf_t *b, const char *fmt, ...);
/* A Prometheus label value: backslash, double quote and newline escaped. */
void obs_buf_label(obs_buf_t *b, const char *v);
/* A JSON string, quoted and escaped. */
void obs_buf_json_str(obs_buf_t *b, const char *v);

/* /metrics: the Prometheus text exposition format 0.0.4 (HELP and TYPE lines first,
 * `mimicps_*` names). now: unix time, for the checkpoint's age. */
void obs_render_prom(obs_buf_t *b, const obs_state_t *st, double now);
/* /api/state: the same state and the history as one JSON object (the live page's data). */
void obs_render_json(obs_buf_t *b, const obs_state_t *st, double now);

#endif
