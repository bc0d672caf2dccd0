#define _GNU_SOURCE
#include "adamw.h"
#include "bootstrap.h"
#include "checkpoint.h"
#include "common.h"
#include "kv.h"
#include "loader.h"
#include "mae.h"
#include "member.h"
#include "metrics.h"
#include "proto.h"
#include "stopsig.h"
#include "trace.h"
#include "worker.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

/* The distributed worker (docs/runtime.md): pull parameters, take a chunk from the
 * scheduler's work queue, compute the MAE gradient, push it, report the chunk done. */

typedef struct {
    const mimic_cfg_t *cfg;
    member_t *mb;
    kv_t *kv;
    mae_t *m;
    mae_batch_t *b;
    loader_t *ld;
    float *imgs, *noise;
    uint32_t *idx;
    int id, rank, S, W, mode; /* mode: 0 bsp, 1 asp, 2 ssp */
    size_t max_payload;
    /* the chunk loaded for the next step */
    int have_chunk, chunk_n;
    int64_t chunk_epoch, chunk_id;
    int shutdown;
    uint64_t seq; /* of requests to the scheduler */
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

/* Asks for the chunk of `version` and loads it (decode, augment, noise). */
static int load_next(dist_t *d, uint64_t version) {
    proto_hdr_t h;
    proto_msg_t r;
    proto_hdr_init(&h, PROTO_CHUNK_REQ, d->id);
    h.seq = next_seq(d);
    h.step = version;
    int rc = sched_call(d, &h, PROTO_CHUNK, &r);
    if (rc || d->shutdown) return rc;
    const proto_hdr_t *c = &r.hdr;
    if (c->na > PROTO_CHUNK_STATUS && c->a[PROTO_CHUNK_STATUS] == PROTO_CHUNK_END) {
        d->shutdown = 1;
        proto_msg_close(&r);
        return 0;
    }
    int count = (int)c->a[PROTO_CHUNK_COUNT];
    if (count <= 0 || count > d->b->cap || c->dtype != PROTO_DT_U32) {
        rc = mimic_err(MIMIC_EPEER, "scheduler sent a chunk of %d samples (batch %d, dtype %s)",
                       count, d->b->cap, proto_dtype_name(c->dtype));
        proto_msg_close(&r);
        return rc;
    }
    memcpy(d->idx, proto_msg_data(&r), (size_t)count * sizeof(uint32_t));
    d->chunk_epoch = c->a[PROTO_CHUNK_EPOCH];
    d->chunk_id = c->a[PROTO_CHUNK_ID];
    proto_msg_close(&r);
    for (int i = 0; i < count; i++)
        if (d->idx[i] >= loader_size(d->ld))
            return mimic_err(MIMIC_EPEER, "scheduler sent sample %u of a %zu-sample data set",
                             d->idx[i], loader_size(d->ld));
    int n = loader_fill(d->ld, d->idx, count, (uint64_t)d->chunk_epoch, d->imgs, d->noise, d->m->L,
                        NULL);
    if (n < 0) return n;
    d->chunk_n = n;
    d->have_chunk = 1;
    return 0;
}

static int chunk_done(dist_t *d) {
    proto_hdr_t h;
    proto_msg_t r;
    proto_hdr_init(&h, PROTO_CHUNK_DONE, d->id);
    h.seq = next_seq(d);
    h.na = 3;
    h.a[PROTO_CDONE_EPOCH] = d->chunk_epoch;
    h.a[PROTO_CDONE_ID] = d->chunk_id;
    h.a[PROTO_CDONE_PROCESSED] = d->chunk_n;
    int rc = sched_call(d, &h, PROTO_ACK, &r);
    if (!rc && !d->shutdown) proto_msg_close(&r);
    d->have_chunk = 0;
    return rc;
}

static void send_metrics(dist_t *d, uint64_t step, double loss, double imgs, double lr) {
    proto_hdr_t h;
    proto_hdr_init(&h, PROTO_METRICS, d->id);
    h.seq = next_seq(d);
    h.step = step;
    h.nf = 3;
    h.f[PROTO_METRIC_LOSS] = loss;
    h.f[PROTO_METRIC_IMGS] = imgs;
    h.f[PROTO_METRIC_LR] = lr;
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

int worker_distributed(const mimic_cfg_t *cfg, const char *sched_flag) {
    dist_t d = {0};
    d.cfg = cfg;
    char ep[256], path[CFG_PATH_MAX + 64];
    int rc = resolve_scheduler(cfg, sched_flag, ep, sizeof ep);
    if (rc) return rc;
    d.mode = (int)cfg->cluster.consistency;
    d.max_payload = (size_t)cfg->cluster.max_msg_mb << 20;
    void *zctx = zmq_ctx_new();
    if (!zctx) return mimic_err(MIMIC_EIO, "cannot create a ZeroMQ context");
    proto_hdr_t ack;
    if ((rc = member_join(&d.mb, zctx, ep, PROTO_ROLE_WORKER, NULL, 60000, &ack))) goto out;
    member_set_heartbeat(d.mb, cfg->cluster.heartbeat_ms);
    if ((rc = member_beat_thread(d.mb))) goto out;
    d.id = (int)ack.a[PROTO_RACK_ID];
    d.S = (int)ack.a[PROTO_RACK_NSERVERS];
    d.W = (int)ack.a[PROTO_RACK_NWORKERS];
    d.rank = (int)ack.a[PROTO_RACK_RANK];
    char who[32];
    snprintf(who, sizeof who, "[worker %d]", d.rank);
    mimic_log("%s id %d, %d servers, %d workers, scheduler %s", who, d.id, d.S, d.W, ep);

    if ((rc = mae_new(&d.m, &cfg->model))) goto out;
    if ((rc = loader_new(&d.ld, cfg))) goto out;
    int B = cfg->train.batch_size;
    if ((rc = mae_batch_alloc(&d.b, d.m, B))) goto out;
    size_t img = (size_t)cfg->model.in_chans * cfg->model.img_size * cfg->model.img_size;
    d.imgs = mimic_alloc((size_t)B * img * sizeof(float));
    d.noise = mimic_alloc((size_t)B * d.m->L * sizeof(float));
    d.idx = calloc((size_t)B, sizeof *d.idx);
    if (!d.imgs || !d.noise || !d.idx) {
        rc = mimic_err(MIMIC_ENOMEM, "out of memory for the batch");
        goto out;
    }
    if ((rc = kv_new(&d.kv, zctx, ack.str, d.S, d.m->p->total, d.id, d.max_payload))) goto out;
    if ((rc = mimic_mkdir_p(cfg->train.out_dir))) goto out;
    snprintf(path, sizeof path, "%s/worker-%d.jsonl", cfg->train.out_dir, d.rank);
    if ((rc = metrics_open(&d.mx, path))) goto out;
    snprintf(path, sizeof path, "%s/trace-worker-%d.json", cfg->train.out_dir, d.rank);
    if ((rc = trace_open(&d.tr, cfg->cluster.trace ? path : NULL, 100 + d.rank, who))) goto out;
    mimic_catch_stop_signals(1);

    float base_lr = config_lr(cfg, B * (cfg->cluster.workers > 0 ? cfg->cluster.workers : 1));
    uint64_t version = 0, clock = 0;
    double t0 = mimic_now();
    int ts = kv_pull(d.kv, PROTO_WHICH_PARAMS, 0, d.m->p->w);
    if (ts < 0 || (rc = wait_tick(&d, ts, &version))) {
        rc = ts < 0 ? ts : rc;
        goto out;
    }
    trace_event(&d.tr, "pull", t0, mimic_now());
    double win_t = mimic_now(), win_loss = 0;
    long win_steps = 0, win_imgs = 0;
    while (version < (uint64_t)cfg->train.steps && !*mimic_stop_flag()) {
        double ta = mimic_now();
        if (!d.have_chunk && (rc = load_next(&d, version))) goto out;
        if (d.shutdown) break;
        double tb = mimic_now();
        mae_batch_resize(d.b, d.chunk_n);
        double loss = mae_forward(d.m, d.b, d.imgs, d.noise);
        double tc = mimic_now();
        params_zero_grad(d.m->p);
        mae_backward(d.m, d.b);
        double td = mimic_now();
        int n = d.chunk_n;
        double te, tf, tg;
        if (d.mode == 0) {
            /* BSP: one push-pull; the servers stream version+1 back while computing it */
            ts = kv_pushpull(d.kv, version, n, d.m->p->g, d.m->p->w);
            if (ts < 0 || (rc = wait_tick(&d, ts, &version))) {
                if (rc == 0) rc = ts;
                goto out;
            }
            te = mimic_now();
            if ((rc = chunk_done(&d)) || d.shutdown) goto out;
            tf = tg = mimic_now();
        } else {
            ts = kv_push(d.kv, version, n, d.m->p->g);
            if (ts < 0 || (rc = wait_tick(&d, ts, NULL))) {
                if (rc == 0) rc = ts;
                goto out;
            }
            clock++;
            te = mimic_now();
            if ((rc = chunk_done(&d)) || d.shutdown) goto out;
            uint64_t want = d.mode == 2 ? clock : 0;
            ts = kv_pull(d.kv, PROTO_WHICH_PARAMS, want, d.m->p->w);
            if (ts < 0) {
                rc = ts;
                goto out;
            }
            tf = mimic_now();
            if ((rc = wait_tick(&d, ts, &version))) goto out;
            tg = mimic_now();
        }
        /* The next chunk is asked for only once the parameters it will be used with
         * arrived: a fast worker then cannot take step v+1's chunk before a slow one
         * took step v's, so each step sees the same samples however workers race. */
        trace_event(&d.tr, "data", ta, tb);
        trace_event(&d.tr, "forward", tb, tc);
        trace_event(&d.tr, "backward", tc, td);
        trace_event(&d.tr, d.mode == 0 ? "push+pull" : "push", td, te);
        if (d.mode != 0) trace_event(&d.tr, "pull+wait", tf, tg);
        metrics_begin(&d.mx, "step");
        metrics_int(&d.mx, "version", (long long)version);
        metrics_num(&d.mx, "loss", loss);
        metrics_int(&d.mx, "samples", n);
        metrics_num(&d.mx, "data_s", tb - ta);
        metrics_num(&d.mx, "forward_s", tc - tb);
        metrics_num(&d.mx, "backward_s", td - tc);
        if (d.mode == 0) { /* one push-pull: push, server update and pull overlap */
            metrics_num(&d.mx, "push_pull_s", te - td);
            metrics_num(&d.mx, "chunk_done_s", tf - te);
        } else {
            metrics_num(&d.mx, "push_s", te - td);
            metrics_num(&d.mx, "chunk_done_s", tf - te);
            metrics_num(&d.mx, "pull_wait_s", tg - tf);
        }
        metrics_end(&d.mx);
        win_loss += loss;
        win_steps++;
        win_imgs += n;
        if (win_steps >= cfg->train.log_every) {
            double dt = mimic_now() - win_t;
            float lr = adamw_lr((long)version, cfg->train.warmup_steps, cfg->train.steps, base_lr,
                                cfg->train.min_lr);
            send_metrics(&d, version, win_loss / win_steps, (double)win_imgs / dt, lr);
            win_t = mimic_now();
            win_loss = 0;
            win_steps = win_imgs = 0;
        }
    }
    if (d.rank == 0 && version >= (uint64_t)cfg->train.steps) {
        snprintf(path, sizeof path, "%s/model.safetensors", cfg->train.out_dir);
        checkpoint_state_t st = {(long)version, 0, 0};
        if ((rc = checkpoint_save(path, d.m, NULL, NULL, &st, NULL))) goto out;
        mimic_log("%s trained model (version %llu) written to %s", who, (unsigned long long)version,
                  path);
    }
    mimic_log("%s done at version %llu", who, (unsigned long long)version);
out:
    if (d.mb && !d.shutdown) member_leave(d.mb);
    trace_close(&d.tr);
    metrics_close(&d.mx);
    kv_destroy(&d.kv);
    member_destroy(&d.mb);
    zmq_ctx_term(zctx); /* after this ZeroMQ holds none of our buffers */
    mae_batch_free(&d.b);
    mae_destroy(&d.m);
    loader_destroy(&d.ld);
    mimic_free(d.imgs);
    mimic_free(d.noise);
    free(d.idx);
    return rc;
}
