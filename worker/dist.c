#define _GNU_SOURCE
#include "adamw.h"
#include "bootstrap.h"
#include "common.h"
#include "mm.h"
#include "kv.h"
#include "loader.h"
#include "member.h"
#include "metrics.h"
#include "proto.h"
#include "stopsig.h"
#include "trace.h"
#include "train.h"
#include "worker.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <zmq.h>

/* The distributed worker (docs/runtime.md): pull parameters, take a chunk from the
 * scheduler's work queue, compute the MAE gradient, push it, report the chunk done. */

typedef struct {
    const mimic_cfg_t *cfg;
    member_t *mb;
    curve_t *curve; /* NULL: cluster.curve off */
    kv_t *kv;
    loader_t *ld;
    int id, rank, S, W;
    cons_mode_t mode;
    size_t max_payload;
    /* the chunks held, oldest first: the one of the step being trained (reported done
     * after its update) and, with cluster.prefetch, the next step's */
    struct {
        int64_t epoch, id;
    } held[2];
    int nheld, chunk_n;
    uint64_t version; /* of the parameters in the stage */
    uint64_t clock;   /* ASP/SSP: pushes made */
    int shutdown;
    uint64_t seq; /* of requests to the scheduler */
    double t_push, t_done, t_pull; /* the last update's phases */
    double t_chunk, busy;          /* when the chunk came; its step time (-1: no step used it) */
    int slow_ms;                   /* test hook MIMIC_TEST_SLOW_MS: a sleep per step */
    double t_slow;                 /* the last step's test-hook sleep */
    /* phase seconds summed since the start (METRICS f[PROTO_METRIC_DATA_S..]) */
    double phase_s[PROTO_METRIC_PHASES];
    uint64_t steps;                /* trained by this worker */
    float *keys_all;               /* MoCo v3: every worker's keys of the step */
    size_t keys_cap;               /* rows keys_all holds */
    kv_queue_info_t qi;            /* MoCo v2: what the last queue pull brought */
    /* cluster.overlap: the BSP push-pull begun during backward (dist_grad_final) */
    stage_t *stage;
    int pp_open, pp_ts, pp_err;
    double t_pp_begin;             /* when its first piece went */
    double t_queue;                /* its wait after the parameters arrived */
    double t_rec;                  /* when the last step record was written (wall_s) */
    size_t wire_bytes;             /* payload bytes of one push (and of one pull) */
    metrics_t mx;
    trace_t tr;
} dist_t;

/* One request/reply with the scheduler; SHUTDOWN ends the run. (Heartbeats come from
 * the member's own thread, member_beat_thread.) */
static int sched_call(dist_t *d, proto_hdr_t *req, proto_type_t want, proto_msg_t *reply) {
    void *sock = member_socket(d->mb);
    int rc = proto_send(sock, NULL, 0, req, NULL, NULL, NULL);
    if (rc) return rc;
    double deadline = mimic_now() + member_sched_timeout_s(d->cfg->cluster.dead_ms);
    while (mimic_now() < deadline) {
        rc = proto_recv(sock, reply, d->max_payload, 200);
        if (rc == MIMIC_ETIMEOUT) {
            proto_msg_close(reply);
            continue;
        }
        if (rc) {
            rc = mimic_err(MIMIC_EPEER, "scheduler sent a malformed message: %s", reply->why);
            proto_msg_close(reply);
            return rc;
        }
        if (reply->hdr.type == PROTO_SHUTDOWN) {
            d->shutdown = 1;
            proto_msg_close(reply);
            return 0;
        }
        if (reply->hdr.type == PROTO_ERROR) {
            rc = mimic_err(MIMIC_EPEER, "scheduler refused %s: %s", proto_type_name(req->type),
                           reply->hdr.str);
            proto_msg_close(reply);
            return rc;
        }
        if (reply->hdr.type == want && reply->hdr.seq == req->seq) return 0;
        proto_msg_close(reply); /* a late reply, or something we do not expect here */
    }
    return mimic_err(MIMIC_ETIMEOUT,
                     "scheduler did not answer %s within %.1f s (5 x cluster.dead_ms): it is "
                     "gone; restart the cluster from the last checkpoint",
                     proto_type_name(req->type), member_sched_timeout_s(d->cfg->cluster.dead_ms));
}

static uint64_t next_seq(dist_t *d) {
    return ++d->seq;
}

/* The next batch: the scheduler's chunk for the version it will be trained on (the
 * current one, or with a chunk held — cluster.prefetch — the next; under ASP/SSP the
 * version reached by then is not known, so this is a lower bound). */
static int dist_next(void *self, train_batch_t *b, int cap) {
    dist_t *d = self;
    proto_hdr_t h;
    proto_msg_t r;
    int rc;
    MIMIC_CHECK(d->nheld < 2);
    proto_make_chunk_req(&h, d->id, next_seq(d), d->version + (uint64_t)d->nheld);
    if ((rc = sched_call(d, &h, PROTO_CHUNK, &r))) return rc;
    if (d->shutdown) return TRAIN_END;
    const proto_hdr_t *c = &r.hdr;
    if (c->na > PROTO_CHUNK_STATUS && c->a[PROTO_CHUNK_STATUS] == PROTO_CHUNK_END) {
        proto_msg_close(&r); /* training is over: this worker leaves (LEAVE) when done */
        return TRAIN_END;
    }
    int count = (int)c->a[PROTO_CHUNK_COUNT];
    if (count <= 0 || count > cap || c->dtype != PROTO_DT_U32) {
        rc = mimic_err(MIMIC_EPEER, "scheduler sent a chunk of %d samples (batch %d, dtype %s)",
                       count, cap, proto_dtype_name(c->dtype));
        proto_msg_close(&r);
        return rc;
    }
    memcpy(b->idx, proto_msg_data(&r), (size_t)count * sizeof(uint32_t));
    int64_t epoch = c->a[PROTO_CHUNK_EPOCH];
    d->held[d->nheld].epoch = epoch;
    d->held[d->nheld].id = c->a[PROTO_CHUNK_ID];
    d->nheld++;
    proto_msg_close(&r);
    for (int i = 0; i < count; i++) {
        if (b->idx[i] >= loader_size(d->ld))
            return mimic_err(MIMIC_EPEER, "scheduler sent sample %u of a %zu-sample data set",
                             b->idx[i], loader_size(d->ld));
        b->epoch[i] = (uint64_t)epoch;
    }
    b->count = count;
    /* nothing was held: this step starts now (with a chunk held ahead, the step starts
     * when the previous update ends: dist_update) */
    if (d->nheld == 1) d->t_chunk = mimic_now();
    return 0;
}

/* Reports held chunk k done with `processed` samples (busy: the step's compute time, -1
 * when no step used it) and forgets it. */
static int chunk_report(dist_t *d, int k, int processed, double busy) {
    proto_hdr_t h;
    proto_msg_t r;
    MIMIC_CHECK(k >= 0 && k < d->nheld);
    proto_make_chunk_done(&h, d->id, next_seq(d), d->held[k].epoch, d->held[k].id, processed,
                          busy);
    int rc = sched_call(d, &h, PROTO_ACK, &r);
    if (!rc && !d->shutdown) proto_msg_close(&r);
    for (int i = k; i + 1 < d->nheld; i++)
        d->held[i] = d->held[i + 1];
    d->nheld--;
    return rc;
}

/* The chunk of the step just applied: the oldest held. */
static int chunk_done(dist_t *d) {
    return chunk_report(d, 0, d->chunk_n, d->busy);
}

/* The chunk taken last had no readable sample: done with 0 processed (the scheduler
 * never hands it out again), before the next is asked for. */
static int dist_skip(void *self) {
    dist_t *d = self;
    int rc = chunk_report(d, d->nheld - 1, 0, -1);
    return rc ? rc : d->shutdown ? TRAIN_END : 0;
}

static void send_metrics(dist_t *d, uint64_t step, double loss, double imgs, double lr) {
    proto_hdr_t h;
    uint64_t out, in;
    kv_bytes(d->kv, &out, &in);
    proto_make_metrics(&h, d->id, next_seq(d), step, loss, imgs, lr);
    proto_make_metrics_counters(&h, d->phase_s, out, in, loader_bad(d->ld), d->steps);
    proto_send(member_socket(d->mb), NULL, 0, &h, NULL, NULL, NULL); /* no reply needed */
}

/* Messages the scheduler sent while we wait on the servers: SHUTDOWN (the run ended,
 * e.g. because a server died) or ERROR (we were declared dead) end the wait. */
static int check_scheduler(dist_t *d) {
    for (;;) {
        proto_msg_t m;
        int rc = proto_recv(member_socket(d->mb), &m, d->max_payload, 0);
        if (rc == MIMIC_ETIMEOUT) {
            proto_msg_close(&m);
            return 0;
        }
        int type = rc == 0 ? (int)m.hdr.type : PROTO_INVALID;
        char why[PROTO_STR_MAX + 1];
        snprintf(why, sizeof why, "%s", rc == 0 ? m.hdr.str : m.why);
        proto_msg_close(&m);
        if (type == PROTO_SHUTDOWN) {
            d->shutdown = 1;
            return mimic_err(MIMIC_EPEER,
                             "scheduler ended the run while waiting on the servers%s%s",
                             why[0] ? ": " : "", why);
        }
        if (type == PROTO_ERROR) return mimic_err(MIMIC_EPEER, "scheduler: %s", why);
    }
}

/* kv_wait in slices, listening to the scheduler in between: a dead server makes the
 * scheduler end the run while a BSP pull is held, and this worker must not wait
 * forever. (Heartbeats go on in the member's own thread meanwhile.) */
static int wait_tick(dist_t *d, int ts, uint64_t *version) {
    const double limit = 600.0 + 0.1 * d->cfg->cluster.dead_ms; /* a last resort */
    double start = mimic_now();
    for (;;) {
        int rc = kv_wait(d->kv, ts, 50, version);
        if (rc != MIMIC_ETIMEOUT) return rc;
        if ((rc = check_scheduler(d))) return rc;
        double silent = member_sched_silence_s(d->mb);
        if (silent > member_sched_timeout_s(d->cfg->cluster.dead_ms))
            return mimic_err(MIMIC_EPEER,
                             "the scheduler has been silent for %.1f s (5 x cluster.dead_ms) "
                             "while waiting on the servers: it is gone; restart the cluster "
                             "from the last checkpoint",
                             silent);
        if (mimic_now() - start > limit)
            return mimic_err(MIMIC_ETIMEOUT, "no answer from the servers for %.0f s", limit);
    }
}

/* MoCo v3's keys of every worker (stage_t.exchange): this worker's keys of the step go
 * to server rank 0, which answers once every live worker's keys are in. */
static int dist_exchange(void *ctx, const float *keys, int n, int dim, const float **all, int *M,
                         int *offset) {
    dist_t *d = ctx;
    kv_keys_info_t ki;
    int ts = kv_keys_exchange(d->kv, d->version, keys, (size_t)n, (size_t)dim, d->keys_all,
                              d->keys_cap, &ki);
    if (ts < 0) return ts;
    int rc = wait_tick(d, ts, NULL);
    if (rc) return rc;
    *all = d->keys_all;
    *M = (int)ki.count;
    *offset = (int)ki.offset;
    return 0;
}

/* The momentum copy at d->version for a stage that reads it. Under BSP every version
 * is seen, so the worker updates its copy in lock-step with the servers' EMA (the same
 * arithmetic, adamw_ema: no bytes on the wire; the servers' copy is what checkpoints
 * keep, pulled once at the start). Under ASP/SSP versions are skipped: pull it. */
static int dist_momentum(dist_t *d, stage_t *s) {
    const mimic_cfg_t *c = d->cfg;
    if (d->mode == CONS_BSP) {
        adamw_ema(s->ema, s->p->w, s->p->total,
                  adamw_ema_momentum(c->contrastive.momentum, c->contrastive.momentum_cosine,
                                     (long)d->version, c->train.steps));
        return 0;
    }
    int ts = kv_pull(d->kv, PROTO_WHICH_EMA, 0, s->ema);
    return ts < 0 ? ts : wait_tick(d, ts, NULL);
}

/* MoCo v2's queue as of the start of step d->version into the stage's ring: only the
 * rows added since the last pull (under BSP held until every live worker's keys of the
 * steps before are in). */
static int queue_pull(dist_t *d, stage_t *s) {
    int ts = kv_queue_pull(d->kv, d->version, s->queue, s->queue_cap, s->queue_dim, &d->qi);
    if (ts < 0) return ts;
    int rc = wait_tick(d, ts, NULL);
    if (!rc) s->queue_keys = d->qi.version;
    return rc;
}

/* cluster.overlap (BSP): the stage says p->g[offset, total) is final during backward:
 * the push-pull begins with the first call (the pull of version+1 is sent) and every
 * slice in that range is pushed at once, while the blocks below are still in backward.
 * An error is kept for dist_update, which also sends the rest. */
static void dist_grad_final(void *ctx, size_t offset) {
    dist_t *d = ctx;
    stage_t *s = d->stage;
    if (d->pp_err) return;
    if (!d->pp_open) {
        int ts = kv_pushpull_begin(d->kv, d->version, s->n, s->p->g, s->p->w);
        if (ts < 0) {
            d->pp_err = ts;
            return;
        }
        d->pp_ts = ts;
        d->pp_open = 1;
        d->t_pp_begin = mimic_now();
    }
    int rc = kv_push_final(d->kv, offset);
    if (rc) d->pp_err = rc;
}

/* The BSP push-pull: finished (begun during backward) or sent whole. */
static int pushpull(dist_t *d, stage_t *s, int n) {
    if (!d->pp_open && !d->pp_err) return kv_pushpull(d->kv, d->version, n, s->p->g, s->p->w);
    int rc = d->pp_err;
    d->pp_open = 0;
    d->pp_err = 0;
    if (rc) return rc;
    return kv_pushpull_end(d->kv);
}

/* Applies the gradient with the servers: under BSP one push-pull (the servers stream
 * version+1 back while computing it); under ASP/SSP a push, then a pull (SSP: of a
 * version at most cluster.staleness behind). The chunk is reported done in between.
 * MoCo v2 pushes its keys to the queue first (so a checkpoint of version+1 holds the
 * queue as of that step) and pulls the queue's new rows once the parameters are in. */
static int dist_update(void *self, stage_t *s, int n, long *step) {
    dist_t *d = self;
    int rc, ts, tq = 0;
    double t0 = mimic_now(), t1, t2;
    if (d->slow_ms > 0) /* test hook: an artificial straggler */
        nanosleep(&(struct timespec){d->slow_ms / 1000, (d->slow_ms % 1000) * 1000000L}, NULL);
    d->t_slow = mimic_now() - t0;
    t0 = mimic_now();
    d->busy = t0 - d->t_chunk; /* data + forward + backward: the scheduler's step time */
    d->chunk_n = n;
    if (s->queue && (tq = kv_queue_push(d->kv, d->version, s->keys, (size_t)s->nkeys,
                                        s->queue_dim)) < 0)
        return tq;
    if (d->mode == CONS_BSP) {
        ts = pushpull(d, s, n);
        if (ts < 0) return ts;
        if ((rc = wait_tick(d, ts, &d->version))) return rc;
        t1 = mimic_now();
        if ((rc = chunk_done(d)) || d->shutdown) return rc ? rc : TRAIN_END;
        t2 = mimic_now();
    } else {
        ts = kv_push(d->kv, d->version, n, s->p->g);
        if (ts < 0) return ts;
        if ((rc = wait_tick(d, ts, NULL))) return rc;
        d->clock++;
        t1 = mimic_now();
        if ((rc = chunk_done(d)) || d->shutdown) return rc ? rc : TRAIN_END;
        t2 = mimic_now();
        ts = kv_pull(d->kv, PROTO_WHICH_PARAMS, d->mode == CONS_SSP ? d->clock : 0, s->p->w);
        if (ts < 0) return ts;
        if ((rc = wait_tick(d, ts, &d->version))) return rc;
    }
    if (s->ema && (rc = dist_momentum(d, s))) return rc;
    double t3 = mimic_now();
    if (tq && ((rc = wait_tick(d, tq, NULL)) || (rc = queue_pull(d, s)))) return rc;
    d->t_push = t1 - t0;
    d->t_done = t2 - t1;
    d->t_pull = t3 - t2;
    d->t_queue = mimic_now() - t3;
    d->t_chunk = mimic_now(); /* the next step's compute starts now (its chunk may be held) */
    *step = (long)d->version;
    return 0;
}

/* The step's record (worker-<rank>.jsonl) and trace events. */
static int dist_after(void *self, stage_t *s, const train_step_t *st) {
    dist_t *d = self;
    double ta = st->t_start, tb = ta + st->t_data, tc = tb + st->t_fwd, td = tc + st->t_bwd,
           te = td + d->t_push, tf = te + d->t_done;
    int bsp = d->mode == CONS_BSP;
    /* the test hook's sleep stands for a slow machine's compute: counted as backward, the
     * phase it follows (ours), so the live page shows the straggler where it spends it */
    const double ph[PROTO_METRIC_PHASES] = {st->t_data, st->t_fwd, st->t_bwd + d->t_slow,
                                            d->t_push, d->t_done + d->t_pull + d->t_queue};
    for (int i = 0; i < PROTO_METRIC_PHASES; i++)
        d->phase_s[i] += ph[i];
    d->steps++;
    trace_event(&d->tr, "data", ta, tb);
    trace_event(&d->tr, "forward", tb, tc);
    trace_event(&d->tr, "backward", tc, td);
    trace_event(&d->tr, bsp ? "push+pull" : "push", td, te);
    if (!bsp) trace_event(&d->tr, "pull+wait", tf, tf + d->t_pull);
    metrics_begin(&d->mx, "step");
    metrics_int(&d->mx, "version", (long long)d->version);
    metrics_num(&d->mx, "loss", st->loss);
    metrics_int(&d->mx, "samples", st->n);
    metrics_num(&d->mx, "data_s", st->t_data);
    metrics_num(&d->mx, "forward_s", st->t_fwd);
    metrics_num(&d->mx, "backward_s", st->t_bwd);
    metrics_num(&d->mx, bsp ? "push_pull_s" : "push_s", d->t_push);
    metrics_num(&d->mx, "chunk_done_s", d->t_done);
    /* the step's wall time, record to record: what the phases above do not cover (chunk
     * waits, scheduler calls, a slowed worker's sleep) is wall_s minus their sum, and the
     * payload of the parameter traffic; both for mimic-report's table and bandwidth */
    double now = mimic_now();
    metrics_num(&d->mx, "wall_s", now - (d->t_rec > 0 ? d->t_rec : ta));
    d->t_rec = now;
    metrics_int(&d->mx, "push_bytes", (long long)d->wire_bytes);
    metrics_int(&d->mx, "pull_bytes", (long long)d->wire_bytes);
    if (d->t_pp_begin > 0) /* cluster.overlap: pushing began this long before backward ended */
        metrics_num(&d->mx, "push_in_backward_s", td - d->t_pp_begin);
    d->t_pp_begin = 0;
    if (!bsp) metrics_num(&d->mx, "pull_wait_s", d->t_pull);
    if (s->queue) { /* MoCo v2: the queue's delta pull of this step */
        metrics_num(&d->mx, "queue_s", d->t_queue);
        metrics_int(&d->mx, "queue_bytes", (long long)d->qi.bytes);
        metrics_int(&d->mx, "queue_rows", (long long)d->qi.received);
        metrics_int(&d->mx, "queue_keys", (long long)d->qi.version);
    }
    metrics_end(&d->mx);
    return 0;
}

static void dist_report(void *self, const train_window_t *w) {
    dist_t *d = self;
    send_metrics(d, (uint64_t)w->done, w->loss, w->images_per_s, w->lr);
}

static int resolve_scheduler(const mimic_cfg_t *cfg, const char *flag, char *ep, size_t cap) {
    const char *env = getenv("MIMIC_SCHEDULER");
    const char *src = flag && *flag ? flag : env && *env ? env : cfg->cluster.scheduler;
    if (src && *src) {
        snprintf(ep, cap, "%s", src);
        return 0;
    }
    if (bootstrap_under_mpi()) return bootstrap_receive_as(BOOTSTRAP_WORKER, ep, cap);
    return mimic_err(MIMIC_EINVAL, "no scheduler address: give --scheduler tcp://HOST:PORT, set "
                                   "MIMIC_SCHEDULER or cluster.scheduler, or launch with mpirun");
}

/* Registers with the scheduler: id, rank, the servers' endpoints (member_servers). */
static int dist_join(dist_t *d, void *zctx, const char *ep, proto_hdr_t *ack) {
    int rc = curve_open_cfg(&d->curve, d->cfg, PROTO_ROLE_WORKER, "worker");
    if (rc) return rc;
    rc = member_join(&d->mb, zctx, d->curve, ep, PROTO_ROLE_WORKER, NULL, 60000, ack);
    if (rc) return rc;
    member_set_heartbeat(d->mb, d->cfg->cluster.heartbeat_ms);
    if ((rc = member_beat_thread(d->mb))) return rc;
    d->id = (int)ack->a[PROTO_RACK_ID];
    d->S = (int)ack->a[PROTO_RACK_NSERVERS];
    d->W = (int)ack->a[PROTO_RACK_NWORKERS];
    d->rank = (int)ack->a[PROTO_RACK_RANK];
    /* test hook (docs/runtime.md, "Stragglers"): MIMIC_TEST_SLOW_MS=ms sleeps that long
     * every step, in the worker of rank MIMIC_TEST_SLOW_RANK only when that is set */
    const char *slow = getenv("MIMIC_TEST_SLOW_MS"), *who = getenv("MIMIC_TEST_SLOW_RANK");
    if (slow && (!who || atoi(who) == d->rank) && (d->slow_ms = atoi(slow)) > 0)
        mimic_log("[worker %d] test hook MIMIC_TEST_SLOW_MS: %d ms more per step", d->rank,
                  d->slow_ms);
    mimic_log("[worker %d] id %d, %d servers, %d workers, scheduler %s", d->rank, d->id, d->S,
              d->W, ep);
    return 0;
}

/* worker-<rank>.jsonl and, with cluster.trace, trace-worker-<rank>.json. */
static int dist_open_records(dist_t *d) {
    const mimic_cfg_t *cfg = d->cfg;
    char path[CFG_PATH_MAX + 64], who[32];
    int rc = mimic_mkdir_p(cfg->train.out_dir);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/worker-%d.jsonl", cfg->train.out_dir, d->rank);
    if ((rc = metrics_open(&d->mx, path))) return rc;
    snprintf(path, sizeof path, "%s/trace-worker-%d.json", cfg->train.out_dir, d->rank);
    snprintf(who, sizeof who, "[worker %d]", d->rank);
    return trace_open(&d->tr, cfg->cluster.trace ? path : NULL, 100 + d->rank, who);
}

/* cluster.wire: bf16 when asked, or (auto) when this worker's GEMMs round to bf16
 * anyway (docs/runtime.md, "Wire dtype"). */
static int wire_bf16(const mimic_cfg_t *cfg) {
    return cfg->cluster.wire == WIRE_BF16 ||
           (cfg->cluster.wire == WIRE_AUTO && mm_precision() == MM_BF16);
}

/* Pulls the starting parameters, trains, and (rank 0) writes the trained model. */
static int dist_train(dist_t *d, stage_t *s) {
    const mimic_cfg_t *cfg = d->cfg;
    int B = cfg->train.batch_size;
    float base_lr = config_lr(cfg, B * (cfg->cluster.workers > 0 ? cfg->cluster.workers : 1));
    train_backend_t be = {d,          cfg->cluster.prefetch, base_lr,  dist_next, dist_update,
                          dist_after, dist_report,           dist_skip};
    double t0 = mimic_now();
    int rc, ts = kv_pull(d->kv, PROTO_WHICH_PARAMS, 0, s->p->w);
    if (ts < 0) return ts;
    if ((rc = wait_tick(d, ts, &d->version))) return rc;
    if (s->ema) { /* the momentum copy of the starting version */
        if ((ts = kv_pull(d->kv, PROTO_WHICH_EMA, 0, s->ema)) < 0) return ts;
        if ((rc = wait_tick(d, ts, NULL))) return rc;
    }
    if (s->queue && (rc = queue_pull(d, s))) return rc; /* the whole ring, once */
    trace_event(&d->tr, "pull", t0, mimic_now());
    long step = (long)d->version;
    if ((rc = train_run(cfg, s, d->ld, &be, &step, cfg->train.steps))) return rc;
    if (d->rank == 0 && d->version >= (uint64_t)cfg->train.steps &&
        (rc = write_model(cfg, s, (long)d->version)))
        return rc;
    mimic_log("[worker %d] done at version %llu", d->rank, (unsigned long long)d->version);
    return 0;
}

int worker_distributed(const mimic_cfg_t *cfg, const char *sched_flag) {
    dist_t d = {.cfg = cfg, .mode = cfg->cluster.consistency};
    stage_t *s = NULL;
    char ep[256];
    proto_hdr_t ack;
    int rc = resolve_scheduler(cfg, sched_flag, ep, sizeof ep);
    if (rc) return rc;
    d.max_payload = (size_t)cfg->cluster.max_msg_mb << 20;
    void *zctx = zmq_ctx_new();
    if (!zctx) return mimic_err(MIMIC_EIO, "cannot create a ZeroMQ context");
    if ((rc = dist_join(&d, zctx, ep, &ack))) goto out;
    if ((rc = stage_new(&s, cfg, cfg->train.batch_size))) goto out;
    if ((rc = loader_new(&d.ld, cfg))) goto out;
    kv_opts_t ko = {.endpoints = member_servers(d.mb),
                    .nservers = d.S,
                    .total = s->p->total,
                    .id = d.id,
                    .token = member_token(d.mb),
                    .max_payload = d.max_payload,
                    .curve = d.curve,
                    .wire = wire_bf16(cfg) ? PROTO_DT_BF16 : PROTO_DT_F32,
                    .slice = kv_slice_of(cfg)};
    if ((rc = kv_new(&d.kv, zctx, &ko))) goto out;
    d.wire_bytes = s->p->total * (ko.wire == PROTO_DT_BF16 ? 2 : 4);
    if ((rc = dist_open_records(&d))) goto out;
    if (s->ops->reads & STAGE_READ_EMA) { /* room for the keys of twice the cluster */
        int W = cfg->cluster.workers > 1 ? cfg->cluster.workers : 1;
        d.keys_cap = (size_t)cfg->train.batch_size * 2 * (size_t)W;
        d.keys_all = mimic_alloc(d.keys_cap * 2 * (size_t)cfg->contrastive.dim * sizeof(float));
        if (!d.keys_all) {
            rc = MIMIC_ENOMEM;
            goto out;
        }
        s->exchange = dist_exchange;
        s->exchange_ctx = &d;
    }
    /* pieces go while backward runs, BSP only, and not when MoCo v2's keys must reach
     * the queue before the gradient */
    if (cfg->cluster.overlap && d.mode == CONS_BSP && !s->queue) {
        d.stage = s;
        s->grad_final = dist_grad_final;
        s->grad_final_ctx = &d;
    }
    mimic_catch_stop_signals(1);
    rc = dist_train(&d, s);
out:
    if (d.mb && !d.shutdown) member_leave(d.mb);
    trace_close(&d.tr);
    metrics_close(&d.mx);
    kv_destroy(&d.kv);
    member_destroy(&d.mb);
    curve_close(&d.curve);
    zmq_ctx_term(zctx); /* after this ZeroMQ holds none of our buffers */
    stage_destroy(&s);
    loader_destroy(&d.ld);
    mimic_free(d.keys_all);
    return rc;
}
