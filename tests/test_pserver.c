// TIMEOUT: 120
/* test_pserver — a real mimic-pserver process driven by an in-process fake scheduler
 * (ROUTER) and fake workers (DEALERs) on loopback: registration and key range, the
 * initial values, BSP weighted aggregation against a local AdamW step, held pulls,
 * membership shrink, stale and malformed input, ASP, SSP, checkpoint and resume; the
 * momentum encoder (EMA) on its schedule, and refused when the servers keep none; the
 * negative queue and the key exchange through the worker's client (kv.h) with two
 * workers: BSP order, delta pulls, crash-restart from the shard, a dead worker, and
 * malformed or oversized pushes; a stranger's 64 MB frame is dropped by ZeroMQ before
 * it is buffered (the server's RSS stays flat) and the server goes on serving. */
#define _XOPEN_SOURCE 700
#include "testutil.h"

#include "adamw.h"
#include "common.h"
#include "config.h"
#include "keyrange.h"
#include "kv.h"
#include "kvstore.h"
#include "mae.h"
#include "proto.h"
#include "wire.h"

#include <fcntl.h>
#include <inttypes.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define WAIT_MS 10000 /* anything slower than this is a failure, not a slow machine */
#define QUIET_MS 200  /* "nothing arrives" window */
#define MAXPAY (64u << 20)

static const char *const BASE_ARGS[] = {"--model.img_size=8",
                                        "--model.patch_size=4",
                                        "--model.in_chans=1",
                                        "--model.embed_dim=16",
                                        "--model.depth=1",
                                        "--model.num_heads=2",
                                        "--mae.decoder_embed_dim=8",
                                        "--mae.decoder_depth=1",
                                        "--mae.decoder_num_heads=2",
                                        "--train.seed=7",
                                        "--train.steps=50",
                                        "--train.warmup_steps=3",
                                        "--train.lr=0.01",
                                        "--train.min_lr=0.001",
                                        "--train.batch_size=4",
                                        "--cluster.workers=2",
                                        "--cluster.heartbeat_ms=50",
                                        "--cluster.max_msg_mb=1",
                                        "--cluster.bind_host=127.0.0.1"};
#define NBASE ((int)(sizeof BASE_ARGS / sizeof BASE_ARGS[0]))

/* ---- the fake scheduler ---------------------------------------------------------------- */

typedef struct {
    void *router;
    char ep[256];
    int beats;
} fsched_t;

typedef struct {
    int pid;
    uint8_t id[PROTO_ID_MAX]; /* the server's identity on the scheduler ROUTER */
    size_t idlen;
    char ep[PROTO_STR_MAX + 1]; /* its data endpoint */
    char log[1024];
} child_t;

/* Receives the next message of `type`, skipping (and counting) heartbeats. */
static int sched_expect(fsched_t *f, proto_msg_t *m, int type) {
    for (;;) {
        int rc = proto_recv(f->router, m, MAXPAY, WAIT_MS);
        if (rc) {
            fprintf(stderr, "scheduler: waiting for %s: %s\n", proto_type_name(type), m->why);
            return rc;
        }
        if (m->hdr.type == PROTO_HEARTBEAT) {
            f->beats++;
            proto_msg_close(m);
            continue;
        }
        if ((int)m->hdr.type == type) return 0;
        fprintf(stderr, "scheduler: wanted %s, got %s (%s)\n", proto_type_name(type),
                proto_type_name(m->hdr.type), m->hdr.str);
        proto_msg_close(m);
        return -1;
    }
}

static void free_buf(void *data, void *hint) {
    free(data);
}

static void sched_send(fsched_t *f, const child_t *c, proto_hdr_t *h, const void *payload) {
    void *copy = NULL;
    if (h->nbytes && payload) {
        copy = malloc((size_t)h->nbytes);
        memcpy(copy, payload, (size_t)h->nbytes);
    }
    int rc = proto_send(f->router, c->id, c->idlen, h, copy, copy ? free_buf : NULL, NULL);
    T_CHECK(rc == 0);
}

/* The REGISTER_ACK token the fake scheduler gives worker `id`: MEMBERSHIP carries it to
 * the server, and a worker's connections are named by it (proto_peer_ident). */
static int64_t token_of(int32_t id) {
    return 7000 + id;
}

static void sched_membership(fsched_t *f, const child_t *c, int64_t epoch, const int32_t *ids,
                             int n) {
    proto_hdr_t h;
    proto_msg_t m;
    int64_t pairs[2 * 16];
    T_CHECK(n <= 16);
    for (int i = 0; i < n; i++) {
        pairs[2 * i] = ids[i];
        pairs[2 * i + 1] = token_of(ids[i]);
    }
    proto_make_membership(&h, PROTO_ID_SCHEDULER, 900 + (uint64_t)epoch, (uint64_t)epoch,
                          (uint64_t)n);
    sched_send(f, c, &h, pairs);
    T_CHECK(sched_expect(f, &m, PROTO_ACK) == 0);
    T_CHECK(m.hdr.a[PROTO_ACK_TYPE] == PROTO_MEMBERSHIP && m.hdr.seq == h.seq);
    proto_msg_close(&m);
}

static void sched_simple(fsched_t *f, const child_t *c, proto_type_t type, uint64_t step,
                         const char *str) {
    proto_hdr_t h;
    proto_hdr_init(&h, type, PROTO_ID_SCHEDULER);
    h.step = step;
    proto_hdr_set_str(&h, str);
    sched_send(f, c, &h, NULL);
}

/* Starts mimic-pserver with BASE_ARGS + extra + --scheduler ep; its output goes to
 * <tmpdir>/<name>.log. Returns 0 or -1. */
static int spawn_server(child_t *c, const char *name, const char *ep, const char *const *extra) {
    char *argv[64];
    int n = 0;
    static char bin[1024];
    const char *build = getenv("MIMIC_BUILD_DIR");
    snprintf(bin, sizeof bin, "%s/pserver/mimic-pserver", build ? build : ".");
    memset(c, 0, sizeof *c);
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "%s is missing: build the mimic-pserver target first\n", bin);
        return -1;
    }
    argv[n++] = bin;
    for (int i = 0; i < NBASE; i++)
        argv[n++] = (char *)BASE_ARGS[i];
    /* the directory the fake scheduler's CKPTs name (a server writes only to its own);
     * a later --cluster.ckpt_dir in extra overrides it */
    static char ckflag[1100];
    snprintf(ckflag, sizeof ckflag, "--cluster.ckpt_dir=%s/ckpt", testutil_tmpdir());
    argv[n++] = ckflag;
    for (int i = 0; extra && extra[i]; i++)
        argv[n++] = (char *)extra[i];
    argv[n++] = "--scheduler";
    argv[n++] = (char *)ep;
    argv[n] = NULL;
    snprintf(c->log, sizeof c->log, "%s/%s.log", testutil_tmpdir(), name);
    c->pid = testutil_spawn(argv, c->log);
    return c->pid > 0 ? 0 : -1;
}

/* Receives the server's REGISTER on f and records its identity and endpoint. */
static int expect_register(fsched_t *f, child_t *c) {
    proto_msg_t m;
    if (sched_expect(f, &m, PROTO_REGISTER) != 0) return -1;
    T_CHECK(m.hdr.a[PROTO_REG_ROLE] == PROTO_ROLE_SERVER);
    T_CHECK(strncmp(m.hdr.str, "tcp://127.0.0.1:", 16) == 0);
    snprintf(c->ep, sizeof c->ep, "%s", m.hdr.str);
    memcpy(c->id, m.id, m.idlen);
    c->idlen = m.idlen;
    proto_msg_close(&m);
    return 0;
}

static void ack_register(fsched_t *f, const child_t *c, int S, int rank, const char *resume) {
    proto_hdr_t h;
    proto_hdr_init(&h, PROTO_REGISTER_ACK, PROTO_ID_SCHEDULER);
    h.seq = 1;
    h.na = 4;
    h.a[PROTO_RACK_ID] = 100 + rank;
    h.a[PROTO_RACK_NSERVERS] = S;
    h.a[PROTO_RACK_NWORKERS] = 2;
    h.a[PROTO_RACK_RANK] = rank;
    proto_hdr_set_str(&h, resume);
    sched_send(f, c, &h, NULL);
}

/* spawn + REGISTER + REGISTER_ACK(servers S, rank, resume step text). 0 or -1. */
static int start_server(fsched_t *f, child_t *c, const char *name, const char *const *extra, int S,
                        int rank, const char *resume) {
    if (spawn_server(c, name, f->ep, extra) != 0 || expect_register(f, c) != 0) return -1;
    ack_register(f, c, S, rank, resume);
    return 0;
}

/* SHUTDOWN, then the exit status (SIGKILL after a timeout). */
static int stop_server(fsched_t *f, child_t *c) {
    sched_simple(f, c, PROTO_SHUTDOWN, 0, "test done");
    int st = testutil_wait_pid(c->pid, WAIT_MS);
    if (st < 0) testutil_kill(c->pid);
    if (st != 0) {
        char *log = testutil_slurp(c->log);
        fprintf(stderr, "--- %s (exit %d) ---\n%s\n", c->log, st, log ? log : "");
        free(log);
    }
    c->pid = 0;
    return st;
}

/* ---- fake workers ---------------------------------------------------------------------- */

typedef struct {
    void *sock;
    int32_t id;
    uint64_t seq;
} fworker_t;

/* A fake worker's connection under id, named as the real one's (token_of(id)); with
 * token 0 it is a stranger's connection claiming that id. */
static void worker_open_as(fworker_t *w, void *ctx, const char *ep, int32_t id, int64_t token) {
    int zero = 0;
    uint8_t ident[PROTO_PEER_IDENT];
    w->sock = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(w->sock, ZMQ_LINGER, &zero, sizeof zero);
    if (token) {
        proto_peer_ident(ident, id, token);
        T_CHECK(zmq_setsockopt(w->sock, ZMQ_ROUTING_ID, ident, sizeof ident) == 0);
    }
    T_CHECK(zmq_connect(w->sock, ep) == 0);
    w->id = id;
}

static void worker_open(fworker_t *w, void *ctx, const char *ep, int32_t id) {
    worker_open_as(w, ctx, ep, id, token_of(id));
}

static int kv_open(kv_t **kv, void *ctx, const char *ep, size_t total, int32_t id) {
    kv_opts_t ko = {.endpoints = ep, .nservers = 1, .total = total, .id = id,
                    .token = token_of(id), .max_payload = MAXPAY};
    return kv_new(kv, ctx, &ko);
}

static void worker_close(fworker_t *w) {
    if (w->sock) zmq_close(w->sock);
    w->sock = NULL;
}

/* A PULL; dtype (the reply's, PULL a[2]) 0: not sent (f32). */
static uint64_t w_pull_dt(fworker_t *w, uint64_t step, size_t lo, size_t hi, int which,
                          int64_t dtype) {
    proto_hdr_t h;
    proto_hdr_init(&h, PROTO_PULL, w->id);
    h.seq = ++w->seq;
    h.step = step;
    h.lo = lo;
    h.hi = hi;
    h.na = dtype ? 3 : 1;
    h.a[PROTO_PULL_WHICH] = which;
    h.a[PROTO_PULL_DTYPE] = dtype;
    T_CHECK(proto_send(w->sock, NULL, 0, &h, NULL, NULL, NULL) == 0);
    return h.seq;
}

static uint64_t w_pull(fworker_t *w, uint64_t step, size_t lo, size_t hi, int which) {
    return w_pull_dt(w, step, lo, hi, which, 0);
}

/* A PUSH of g in dtype (f32, or bf16 rounded as the worker's kv does). */
static uint64_t w_push_dt(fworker_t *w, uint64_t step, size_t lo, size_t hi, int64_t batch,
                          const float *g, proto_dtype_t dtype) {
    proto_hdr_t h;
    proto_hdr_init(&h, PROTO_PUSH, w->id);
    h.seq = ++w->seq;
    h.step = step;
    h.lo = lo;
    h.hi = hi;
    h.dtype = dtype;
    h.nbytes = (hi - lo) * proto_dtype_size(dtype);
    if (batch > 0) {
        h.na = 1;
        h.a[PROTO_PUSH_BATCH] = batch;
    }
    void *copy = malloc((size_t)h.nbytes);
    if (dtype == PROTO_DT_BF16)
        wire_to_bf16(copy, g, hi - lo);
    else
        memcpy(copy, g, (size_t)h.nbytes);
    T_CHECK(proto_send(w->sock, NULL, 0, &h, copy, free_buf, NULL) == 0);
    return h.seq; // cppcheck-suppress memleak ; proto_send owns copy
}

static uint64_t w_push(fworker_t *w, uint64_t step, size_t lo, size_t hi, int64_t batch,
                       const float *g) {
    return w_push_dt(w, step, lo, hi, batch, g, PROTO_DT_F32);
}

/* Receives one message of `type` answering `seq`; 0 or -1 (printed). */
static int w_expect(fworker_t *w, proto_msg_t *m, int type, uint64_t seq) {
    int rc = proto_recv(w->sock, m, MAXPAY, WAIT_MS);
    if (rc) {
        fprintf(stderr, "worker %d: waiting for %s: %s\n", w->id, proto_type_name(type), m->why);
        return -1;
    }
    if ((int)m->hdr.type != type || m->hdr.seq != seq) {
        fprintf(stderr, "worker %d: wanted %s seq %llu, got %s seq %llu (%s)\n", w->id,
                proto_type_name(type), (unsigned long long)seq, proto_type_name(m->hdr.type),
                (unsigned long long)m->hdr.seq, m->hdr.str);
        proto_msg_close(m);
        return -1;
    }
    return 0;
}

/* A PULL_REPLY for seq: checks version and range, copies the values to out. */
static void w_reply(fworker_t *w, uint64_t seq, uint64_t version, size_t lo, size_t hi,
                    float *out) {
    proto_msg_t m;
    if (w_expect(w, &m, PROTO_PULL_REPLY, seq) != 0) {
        T_CHECK(!"PULL_REPLY received");
        return;
    }
    T_CHECK(m.hdr.step == version);
    T_CHECK(m.hdr.lo == lo && m.hdr.hi == hi);
    T_CHECK(proto_msg_size(&m) == (hi - lo) * sizeof(float));
    if (proto_msg_size(&m) == (hi - lo) * sizeof(float))
        memcpy(out, proto_msg_data(&m), (hi - lo) * sizeof(float));
    proto_msg_close(&m);
}

static void w_ack(fworker_t *w, uint64_t seq) {
    proto_msg_t m;
    T_CHECK(w_expect(w, &m, PROTO_PUSH_ACK, seq) == 0);
    proto_msg_close(&m);
}

/* An ERROR answering seq (0 = any) whose reason contains `text`. */
static void w_error(fworker_t *w, uint64_t seq, const char *text) {
    proto_msg_t m;
    int rc = proto_recv(w->sock, &m, MAXPAY, WAIT_MS);
    if (rc || m.hdr.type != PROTO_ERROR)
        fprintf(stderr, "worker %d: wanted ERROR '%s' (seq %" PRIu64 "), got %s: %s\n", w->id, text,
                seq, rc ? "nothing" : proto_type_name(m.hdr.type), rc ? m.why : m.hdr.str);
    T_CHECK(rc == 0 && m.hdr.type == PROTO_ERROR);
    if (rc == 0 && m.hdr.type == PROTO_ERROR) {
        T_CHECK(m.hdr.a[PROTO_ERR_CODE] < 0);
        T_CHECK(seq == 0 || m.hdr.seq == seq);
        if (!strstr(m.hdr.str, text)) fprintf(stderr, "ERROR '%s' lacks '%s'\n", m.hdr.str, text);
        T_CHECK(strstr(m.hdr.str, text) != NULL);
    }
    proto_msg_close(&m);
}

/* 1 when nothing arrives on the worker's socket for QUIET_MS. */
static int w_quiet(fworker_t *w) {
    zmq_pollitem_t it = {w->sock, 0, ZMQ_POLLIN, 0};
    return zmq_poll(&it, 1, QUIET_MS) == 0;
}

/* Sends frames as given (for malformed input the proto API refuses to build). */
static void w_raw(fworker_t *w, const void *hdr, size_t hlen, const void *pay, size_t plen) {
    T_CHECK(zmq_send(w->sock, hdr, hlen, pay ? ZMQ_SNDMORE : 0) == (int)hlen);
    if (pay) T_CHECK(zmq_send(w->sock, pay, plen, 0) == (int)plen);
}

static uint64_t w_qpush(fworker_t *w, const float *rows, int64_t count, int64_t dim) {
    proto_hdr_t h;
    proto_hdr_init(&h, PROTO_QUEUE_PUSH, w->id);
    h.seq = ++w->seq;
    h.na = 2;
    h.a[PROTO_QPUSH_COUNT] = count;
    h.a[PROTO_QPUSH_DIM] = dim;
    h.dtype = PROTO_DT_F32;
    h.nbytes = (uint64_t)(count * dim) * sizeof(float);
    float *copy = malloc((size_t)h.nbytes);
    memcpy(copy, rows, (size_t)h.nbytes);
    T_CHECK(proto_send(w->sock, NULL, 0, &h, copy, free_buf, NULL) == 0);
    return h.seq; // cppcheck-suppress memleak ; proto_send owns copy
}

static uint64_t w_qpull(fworker_t *w, int64_t since) {
    proto_hdr_t h;
    proto_hdr_init(&h, PROTO_QUEUE_PULL, w->id);
    h.seq = ++w->seq;
    h.na = 1;
    h.a[PROTO_QPULL_SINCE] = since;
    T_CHECK(proto_send(w->sock, NULL, 0, &h, NULL, NULL, NULL) == 0);
    return h.seq;
}

/* A QUEUE_REPLY for seq with (version, count, slot); row j must be key `first + j`,
 * whose row is {k, -k} (dim 2). */
static void w_qreply(fworker_t *w, uint64_t seq, int64_t version, int64_t count, int64_t slot,
                     int64_t first) {
    proto_msg_t m;
    if (w_expect(w, &m, PROTO_QUEUE_REPLY, seq) != 0) {
        T_CHECK(!"QUEUE_REPLY received");
        return;
    }
    T_CHECK(m.hdr.a[PROTO_QREP_VERSION] == version && m.hdr.a[PROTO_QREP_COUNT] == count);
    T_CHECK(m.hdr.a[PROTO_QREP_SLOT] == slot && m.hdr.a[PROTO_QREP_CAPACITY] == 4096);
    T_CHECK(proto_msg_size(&m) == (size_t)count * 2 * sizeof(float));
    const float *r = proto_msg_data(&m);
    int ok = 1;
    for (int64_t j = 0; r && j < count; j++)
        ok &= r[2 * j] == (float)(first + j) && r[2 * j + 1] == -(float)(first + j);
    T_CHECK(ok);
    proto_msg_close(&m);
}

/* The negative-key queue on rank 0: versions, wrap-around, a reader far behind. */
static void test_queue(fworker_t *w) {
    const int64_t N1 = 3000, N2 = 2000;
    float *rows = malloc((size_t)(N1 + N2) * 2 * sizeof(float));
    for (int64_t k = 0; k < N1 + N2; k++) {
        rows[2 * k] = (float)k;
        rows[2 * k + 1] = -(float)k;
    }
    w_qreply(w, w_qpull(w, 0), 0, 0, 0, 0); /* empty */
    proto_msg_t m;
    T_CHECK(w_expect(w, &m, PROTO_ACK, w_qpush(w, rows, N1, 2)) == 0);
    proto_msg_close(&m);
    w_qreply(w, w_qpull(w, 1000), N1, N1 - 1000, 1000, 1000);
    T_CHECK(w_expect(w, &m, PROTO_ACK, w_qpush(w, rows + 2 * N1, N2, 2)) == 0); /* wraps */
    proto_msg_close(&m);
    w_qreply(w, w_qpull(w, 0), N1 + N2, 4096, (N1 + N2 - 4096) % 4096, N1 + N2 - 4096);
    w_qreply(w, w_qpull(w, 4500), N1 + N2, 500, 4500 % 4096, 4500);
    w_error(w, w_qpull(w, N1 + N2 + 1), "since");
    w_error(w, w_qpush(w, rows, 4, 3), "dim");
    free(rows);
}

/* ---- the local reference: what the server must compute --------------------------------- */

typedef struct {
    mimic_cfg_t cfg;
    mae_t *model;
    size_t lo, hi, n;
    float *w, *m, *v, *ema;
    long t;
    adamw_cfg_t oc;
    float base_lr;
} mirror_t;

static void mirror_init(mirror_t *r, const char *const *extra, int S, int rank) {
    memset(r, 0, sizeof *r);
    config_defaults(&r->cfg);
    for (int i = 0; i < NBASE; i++)
        MIMIC_CHECK(config_override(&r->cfg, BASE_ARGS[i] + 2) == 0);
    for (int i = 0; extra && extra[i]; i++)
        if (strncmp(extra[i], "--", 2) == 0 && strchr(extra[i], '='))
            MIMIC_CHECK(config_override(&r->cfg, extra[i] + 2) == 0);
    MIMIC_CHECK(mae_new(&r->model, &r->cfg.model) == 0);
    mae_init(r->model, r->cfg.train.seed);
    keyrange_of(r->model->p->total, S, rank, &r->lo, &r->hi);
    r->n = r->hi - r->lo;
    r->w = calloc(r->n, sizeof(float));
    r->m = calloc(r->n, sizeof(float));
    r->v = calloc(r->n, sizeof(float));
    r->ema = calloc(r->n, sizeof(float));
    memcpy(r->w, r->model->p->w + r->lo, r->n * sizeof(float));
    memcpy(r->ema, r->w, r->n * sizeof(float));
    r->oc = (adamw_cfg_t){r->cfg.train.beta1, r->cfg.train.beta2, r->cfg.train.eps,
                          r->cfg.train.weight_decay};
    r->base_lr = config_lr(&r->cfg, r->cfg.train.batch_size * r->cfg.cluster.workers);
}

/* The momentum after the step that makes version t, computed here by hand from the
 * config (MoCo v3: m_t = 1 - 0.5 (1 + cos(pi t / T)) (1 - m0), T = train.steps). */
static float hand_momentum(const mimic_cfg_t *c, long t) {
    double m0 = c->contrastive.momentum, T = (double)c->train.steps;
    if (!c->contrastive.momentum_cosine) return (float)m0;
    return (float)(1.0 - 0.5 * (1.0 + cos(3.14159265358979323846 * (double)t / T)) * (1.0 - m0));
}

/* One step with the batch-weighted mean of k gradients (the server's arithmetic). */
static void mirror_step(mirror_t *r, int k, const float *const *g, const int *batch) {
    float *acc = calloc(r->n, sizeof(float));
    double wsum = 0;
    for (int j = 0; j < k; j++) {
        for (size_t i = 0; i < r->n; i++)
            acc[i] += (float)batch[j] * g[j][i];
        wsum += batch[j];
    }
    const float inv = (float)(1.0 / wsum);
    for (size_t i = 0; i < r->n; i++)
        acc[i] *= inv;
    float lr = adamw_lr(r->t, r->cfg.train.warmup_steps, r->cfg.train.steps, r->base_lr,
                        r->cfg.train.min_lr);
    adamw_update(&r->oc, r->model->p, r->w, acc, 1.0f, r->m, r->v, r->lo, r->hi, lr, ++r->t);
    const float mom = hand_momentum(&r->cfg, r->t);
    for (size_t i = 0; i < r->n; i++)
        r->ema[i] = mom * r->ema[i] + (1.0f - mom) * r->w[i];
    free(acc);
}

static void mirror_free(mirror_t *r) {
    mae_destroy(&r->model);
    free(r->w);
    free(r->m);
    free(r->v);
    free(r->ema);
}

static float *grad(size_t n, unsigned long long seed) {
    float *g = malloc(n * sizeof(float));
    testutil_fill(g, n, -1.0f, 1.0f, &seed);
    return g;
}

/* ---- scenarios -------------------------------------------------------------------------- */

/* BSP on rank 1 of 2, malformed input, then a checkpoint; returns the state at step 3
 * (params and EMA, r->n floats each) for the resume test. */
static void test_bsp(void *ctx, fsched_t *f, const char *ckdir, float *p3, float *e3, mirror_t *r) {
    const char *extra[] = {"--cluster.ema=on", "--contrastive.momentum=0.9", NULL};
    mirror_init(r, extra, 2, 1);
    size_t lo = r->lo, hi = r->hi, n = r->n;
    printf("model %zu floats, server 1 of 2 holds [%zu, %zu)\n", r->model->p->total, lo, hi);
    child_t c;
    if (start_server(f, &c, "bsp", extra, 2, 1, "") != 0) {
        T_CHECK(!"server started");
        testutil_kill(c.pid);
        return;
    }
    fworker_t w1 = {0}, w2 = {0}, spoof = {0}, guess = {0};
    worker_open(&w1, ctx, c.ep, 10);
    worker_open(&w2, ctx, c.ep, 11);
    /* before the scheduler's member list nobody is a worker: NaN gradients (once applied
     * to every parameter) and pulls are refused */
    float *nan = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        nan[i] = NAN;
    w_error(&w1, w_push(&w1, 0, lo, hi, 1, nan), "member list");
    w_error(&w1, w_pull(&w1, 0, lo, hi, PROTO_WHICH_PARAMS), "member list");
    int32_t both[2] = {10, 11}, one[1] = {10};
    sched_membership(f, &c, 1, both, 2);
    float *got = calloc(n, sizeof(float));
    /* a stranger's connection under a live worker's id (no token, a guessed one): its
     * push, pull and queue requests are refused and change nothing */
    worker_open_as(&spoof, ctx, c.ep, 10, 0);
    worker_open_as(&guess, ctx, c.ep, 10, token_of(10) + 1);
    fworker_t *strangers[2] = {&spoof, &guess};
    for (int k = 0; k < 2; k++) {
        w_error(strangers[k], w_push(strangers[k], 0, lo, hi, 1, nan), "another connection");
        w_error(strangers[k], w_pull(strangers[k], 0, lo, hi, PROTO_WHICH_EMA), "another connection");
        worker_close(strangers[k]);
    }
    free(nan);

    /* the initial values are mae_init's, bit for bit, for PARAMS, EMA and a sub-range */
    w_reply(&w1, w_pull(&w1, 0, lo, hi, PROTO_WHICH_PARAMS), 0, lo, hi, got);
    T_CHECK(memcmp(got, r->w, n * sizeof(float)) == 0);
    w_reply(&w1, w_pull(&w1, 0, lo, hi, PROTO_WHICH_EMA), 0, lo, hi, got);
    T_CHECK(memcmp(got, r->w, n * sizeof(float)) == 0);
    w_reply(&w1, w_pull(&w1, 0, lo + 16, lo + 40, PROTO_WHICH_PARAMS), 0, lo + 16, lo + 40, got);
    T_CHECK(memcmp(got, r->w + 16, 24 * sizeof(float)) == 0);

    /* BSP: the pull for version 1 waits for both pushes; weights 3 and 1 */
    float *g1 = grad(n, 1), *g2 = grad(n, 2), *g3 = grad(n, 3), *g4 = grad(n, 4);
    uint64_t held = w_pull(&w1, 1, lo, hi, PROTO_WHICH_PARAMS);
    w_ack(&w1, w_push(&w1, 0, lo, hi, 3, g1));
    T_CHECK(w_quiet(&w1)); /* still held after the first push */
    w_ack(&w2, w_push(&w2, 0, lo, hi, 1, g2));
    w_reply(&w1, held, 1, lo, hi, got);
    const float *gs[2] = {g1, g2};
    int bs[2] = {3, 1};
    mirror_step(r, 2, gs, bs);
    testutil_close("BSP step 1 (weights 3, 1) vs local AdamW", got, r->w, n, 1e-6);
    w_reply(&w2, w_pull(&w2, 1, lo, hi, PROTO_WHICH_EMA), 1, lo, hi, got);
    testutil_close("EMA after step 1", got, r->ema, n, 1e-6);

    /* a push for version 0 is now stale */
    uint64_t s = w_push(&w1, 0, lo, hi, 1, g1);
    w_error(&w1, s, "stale push");

    /* membership shrink: worker 11 leaves, worker 10 already pushed -> step applies;
     * 11's own held pull leaves with it (nobody would read the reply) */
    w_ack(&w1, w_push(&w1, 1, lo, hi, 2, g3));
    held = w_pull(&w1, 2, lo, hi, PROTO_WHICH_PARAMS);
    w_pull(&w2, 2, lo, hi, PROTO_WHICH_PARAMS);
    T_CHECK(w_quiet(&w1) && w_quiet(&w2));
    sched_membership(f, &c, 2, one, 1);
    w_reply(&w1, held, 2, lo, hi, got);
    T_CHECK(w_quiet(&w2));
    mirror_step(r, 1, (const float *const[]){g3}, (const int[]){2});
    testutil_close("BSP step 2 released by a membership shrink", got, r->w, n, 1e-6);

    /* malformed input: each answered with ERROR, the server keeps serving */
    unsigned char junk[37];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(i * 37 + 11);
    w_raw(&w1, junk, sizeof junk, NULL, 0);
    w_error(&w1, 0, "");
    s = w_pull(&w1, 0, lo - 16, hi, PROTO_WHICH_PARAMS);
    w_error(&w1, s, "'lo'");
    s = w_pull(&w1, 0, lo, hi + 16, PROTO_WHICH_PARAMS);
    w_error(&w1, s, "'hi'");
    s = w_push(&w1, 2, lo + 16, hi, 1, g1);
    w_error(&w1, s, "'lo'");
    size_t big = 300000; /* 1.2 MB > cluster.max_msg_mb = 1 */
    float *bigg = calloc(big, sizeof(float));
    s = w_push(&w1, 2, lo, lo + big, 1, bigg);
    w_error(&w1, s, "exceeds the limit");
    free(bigg);
    proto_hdr_t h;
    proto_hdr_init(&h, PROTO_PUSH, w1.id);
    h.seq = 4242;
    h.step = 2;
    h.lo = lo;
    h.hi = hi;
    h.dtype = PROTO_DT_F32;
    h.nbytes = n * sizeof(float);
    unsigned char hb[PROTO_HDR_MAX];
    size_t hl = 0;
    char why[PROTO_WHY_MAX];
    T_CHECK(proto_encode_hdr(&h, hb, sizeof hb, &hl, why, sizeof why) == 0);
    w_raw(&w1, hb, hl, g1, (n - 1) * sizeof(float)); /* one float short of 'n' */
    w_error(&w1, 4242, "'n'");
    proto_hdr_init(&h, PROTO_SHUTDOWN, w1.id); /* control messages come from the scheduler */
    h.seq = 4243;
    T_CHECK(proto_send(w1.sock, NULL, 0, &h, NULL, NULL, NULL) == 0);
    w_error(&w1, 4243, "not accepted");
    s = w_push(&w2, 2, lo, hi, 1, g1); /* worker 11 is no longer live */
    w_error(&w2, s, "member list");
    w_error(&w1, w_qpull(&w1, 0), "rank 0");
    w_reply(&w1, w_pull(&w1, 0, lo, hi, PROTO_WHICH_PARAMS), 2, lo, hi, got);
    testutil_close("still serving after malformed input", got, r->w, n, 1e-6);

    /* checkpoint at step 3: requested ahead, written when the version gets there */
    sched_simple(f, &c, PROTO_CKPT, 3, ckdir);
    T_CHECK(w_quiet(&w1));
    w_ack(&w1, w_push(&w1, 2, lo, hi, 5, g4));
    proto_msg_t m;
    T_CHECK(sched_expect(f, &m, PROTO_CKPT_DONE) == 0);
    T_CHECK(m.hdr.step == 3 && m.hdr.a[PROTO_CKDONE_STATUS] == 0);
    proto_msg_close(&m);
    char path[1300];
    snprintf(path, sizeof path, "%s/server-1-step-3.safetensors", ckdir);
    T_CHECK(access(path, R_OK) == 0);
    mirror_step(r, 1, (const float *const[]){g4}, (const int[]){5});
    w_reply(&w1, w_pull(&w1, 3, lo, hi, PROTO_WHICH_PARAMS), 3, lo, hi, p3);
    testutil_close("BSP step 3", p3, r->w, n, 1e-6);
    w_reply(&w1, w_pull(&w1, 3, lo, hi, PROTO_WHICH_EMA), 3, lo, hi, e3);
    testutil_close("EMA after step 3 (cosine schedule from m0 0.9)", e3, r->ema, n, 1e-6);
    sched_simple(f, &c, PROTO_CKPT, 1, ckdir); /* a step already passed */
    T_CHECK(sched_expect(f, &m, PROTO_CKPT_DONE) == 0);
    T_CHECK(m.hdr.step == 1 && m.hdr.a[PROTO_CKDONE_STATUS] < 0);
    proto_msg_close(&m);
    /* a CKPT naming any other directory is refused: a path from the wire is not written */
    char other[1200];
    snprintf(other, sizeof other, "%.1000s/elsewhere", testutil_tmpdir());
    T_CHECK(mimic_mkdir_p(other) == 0);
    sched_simple(f, &c, PROTO_CKPT, 3, other);
    T_CHECK(sched_expect(f, &m, PROTO_CKPT_DONE) == 0);
    T_CHECK(m.hdr.step == 3 && m.hdr.a[PROTO_CKDONE_STATUS] < 0 &&
            strstr(m.hdr.str, "not this server's checkpoint directory"));
    proto_msg_close(&m);
    snprintf(path, sizeof path, "%s/server-1-step-3.safetensors", other);
    T_CHECK(access(path, F_OK) != 0);
    T_CHECK(f->beats > 0);
    printf("heartbeats seen: %d\n", f->beats);

    T_CHECK(stop_server(f, &c) == 0);
    worker_close(&w1);
    worker_close(&w2);
    free(got);
    free(g1);
    free(g2);
    free(g3);
    free(g4);
}

/* A restarted server told "resume at 3" loads the shard: same values, same moments. */
static void test_resume(void *ctx, fsched_t *f, const char *ckdir, const float *p3, const float *e3,
                        mirror_t *r) {
    char flag[1100];
    snprintf(flag, sizeof flag, "--cluster.ckpt_dir=%s", ckdir);
    const char *extra[] = {flag, "--cluster.ema=on", "--contrastive.momentum=0.9", NULL};
    size_t lo = r->lo, hi = r->hi, n = r->n;
    child_t c;
    if (start_server(f, &c, "resume", extra, 2, 1, "3") != 0) {
        T_CHECK(!"server started");
        testutil_kill(c.pid);
        return;
    }
    fworker_t w1 = {0};
    worker_open(&w1, ctx, c.ep, 10);
    int32_t one[1] = {10};
    sched_membership(f, &c, 1, one, 1);
    float *got = calloc(n, sizeof(float));
    w_reply(&w1, w_pull(&w1, 0, lo, hi, PROTO_WHICH_PARAMS), 3, lo, hi, got);
    T_CHECK(memcmp(got, p3, n * sizeof(float)) == 0);
    w_reply(&w1, w_pull(&w1, 0, lo, hi, PROTO_WHICH_EMA), 3, lo, hi, got);
    T_CHECK(memcmp(got, e3, n * sizeof(float)) == 0);
    float *g5 = grad(n, 5);
    w_ack(&w1, w_push(&w1, 3, lo, hi, 1, g5));
    w_reply(&w1, w_pull(&w1, 4, lo, hi, PROTO_WHICH_PARAMS), 4, lo, hi, got);
    mirror_step(r, 1, (const float *const[]){g5}, (const int[]){1});
    testutil_close("step 4 after resume (moments restored)", got, r->w, n, 1e-6);
    w_reply(&w1, w_pull(&w1, 4, lo, hi, PROTO_WHICH_EMA), 4, lo, hi, got);
    testutil_close("EMA of step 4 after resume", got, r->ema, n, 1e-6);
    T_CHECK(stop_server(f, &c) == 0);
    worker_close(&w1);
    free(got);
    free(g5);
}

/* Resume failures end the process with an error naming the problem. */
static void test_bad_resume(fsched_t *f, const char *ckdir) {
    char flag[1100], src[1100], dst[1100];
    snprintf(flag, sizeof flag, "--cluster.ckpt_dir=%s", ckdir);
    const char *extra[] = {flag, NULL};
    child_t c;
    /* rank 1's shard under rank 0's name: metadata 'rank' differs */
    snprintf(src, sizeof src, "%s/server-1-step-3.safetensors", ckdir);
    snprintf(dst, sizeof dst, "%s/server-0-step-3.safetensors", ckdir);
    char *bytes = testutil_slurp(src);
    FILE *fp = fopen(dst, "wb");
    T_CHECK(bytes && fp);
    if (fp) {
        long sz = 0;
        FILE *in = fopen(src, "rb");
        if (in) {
            fseek(in, 0, SEEK_END);
            sz = ftell(in);
            fclose(in);
        }
        fwrite(bytes, 1, (size_t)sz, fp);
        fclose(fp);
    }
    free(bytes);
    if (start_server(f, &c, "badrank", extra, 2, 0, "3") == 0) {
        int st = testutil_wait_pid(c.pid, WAIT_MS);
        T_CHECK(st > 0 && st < 128);
        if (st < 0) testutil_kill(c.pid);
        char *log = testutil_slurp(c.log);
        T_CHECK(log && strstr(log, "'rank'") && strstr(log, "server-0-step-3"));
        free(log);
    } else {
        testutil_kill(c.pid);
    }
    /* no shard for step 7 */
    if (start_server(f, &c, "nofile", extra, 2, 1, "7") == 0) {
        int st = testutil_wait_pid(c.pid, WAIT_MS);
        T_CHECK(st > 0 && st < 128);
        if (st < 0) testutil_kill(c.pid);
        char *log = testutil_slurp(c.log);
        T_CHECK(log && strstr(log, "server-1-step-7"));
        free(log);
    } else {
        testutil_kill(c.pid);
    }
}

/* A one-server run in the given mode with the mirror and two live fake workers (ids 10
 * and 11): the set-up the ASP and SSP scenarios share. */
typedef struct {
    mirror_t r;
    child_t c;
    fworker_t w1, w2;
} duo_t;

static int duo_open(duo_t *d, void *ctx, fsched_t *f, const char *name, const char *const *extra) {
    memset(d, 0, sizeof *d);
    mirror_init(&d->r, extra, 1, 0);
    if (start_server(f, &d->c, name, extra, 1, 0, "") != 0) {
        T_CHECK(!"server started");
        testutil_kill(d->c.pid);
        mirror_free(&d->r);
        return -1;
    }
    worker_open(&d->w1, ctx, d->c.ep, 10);
    worker_open(&d->w2, ctx, d->c.ep, 11);
    int32_t both[2] = {10, 11};
    sched_membership(f, &d->c, 1, both, 2);
    return 0;
}

static void duo_close(duo_t *d, fsched_t *f) {
    T_CHECK(stop_server(f, &d->c) == 0);
    worker_close(&d->w1);
    worker_close(&d->w2);
    mirror_free(&d->r);
}

/* ASP: every push is its own step, a stale one included. */
static void test_asp(void *ctx, fsched_t *f) {
    const char *extra[] = {"--cluster.consistency=asp", "--contrastive.dim=2", NULL};
    duo_t d;
    if (duo_open(&d, ctx, f, "asp", extra) != 0) return;
    size_t lo = d.r.lo, hi = d.r.hi, n = d.r.n;
    fworker_t *w1 = &d.w1, *w2 = &d.w2;
    float *g1 = grad(n, 11), *g2 = grad(n, 12), *got = calloc(n, sizeof(float));
    proto_msg_t m;
    uint64_t s = w_push(w1, 0, lo, hi, 4, g1);
    T_CHECK(w_expect(w1, &m, PROTO_PUSH_ACK, s) == 0 && m.hdr.step == 1);
    proto_msg_close(&m);
    s = w_push(w2, 0, lo, hi, 4, g2); /* computed on version 0: applied anyway */
    T_CHECK(w_expect(w2, &m, PROTO_PUSH_ACK, s) == 0 && m.hdr.step == 2);
    proto_msg_close(&m);
    w_reply(w1, w_pull(w1, 0, lo, hi, PROTO_WHICH_PARAMS), 2, lo, hi, got);
    mirror_step(&d.r, 1, (const float *const[]){g1}, (const int[]){1});
    mirror_step(&d.r, 1, (const float *const[]){g2}, (const int[]){1});
    testutil_close("ASP: two pushes, two steps", got, d.r.w, n, 1e-6);
    s = w_push(w1, 5, lo, hi, 1, g1);
    w_error(w1, s, "ahead");
    /* the MAE stage does not read the momentum copy: with cluster.ema=auto none is kept */
    w_error(w1, w_pull(w1, 0, lo, hi, PROTO_WHICH_EMA), "keeps no momentum copy");
    test_queue(w1);
    free(g1);
    free(g2);
    free(got);
    duo_close(&d, f);
}

/* cluster.wire=bf16 against a server (ASP: each push its own step): a bf16 push is
 * widened exactly and applied in f32 (the step equals an f32 push of the widened
 * gradient, bit for bit); a bf16 pull gets the f32 master rounded to bf16, an f32 pull
 * of the same version the master itself; a pull asking for another dtype is refused. */
static void test_wire(void *ctx, fsched_t *f) {
    const char *extra[] = {"--cluster.consistency=asp", "--contrastive.dim=2", NULL};
    duo_t d;
    if (duo_open(&d, ctx, f, "wire", extra) != 0) return;
    size_t lo = d.r.lo, hi = d.r.hi, n = d.r.n;
    fworker_t *w1 = &d.w1;
    float *g = grad(n, 21), *g16 = malloc(n * sizeof(float)), *got = calloc(n, sizeof(float));
    uint16_t *b = malloc(n * sizeof(uint16_t)), *want = malloc(n * sizeof(uint16_t));
    wire_to_bf16(b, g, n);
    wire_from_bf16(g16, b, n);
    proto_msg_t m;
    uint64_t s = w_push_dt(w1, 0, lo, hi, 1, g, PROTO_DT_BF16);
    T_CHECK(w_expect(w1, &m, PROTO_PUSH_ACK, s) == 0 && m.hdr.step == 1);
    proto_msg_close(&m);
    mirror_step(&d.r, 1, (const float *const[]){g16}, (const int[]){1});
    w_reply(w1, w_pull(w1, 0, lo, hi, PROTO_WHICH_PARAMS), 1, lo, hi, got);
    T_CHECK(memcmp(got, d.r.w, n * sizeof(float)) == 0);
    testutil_close("wire: bf16 push == f32 push of the widened gradient", got, d.r.w, n, 0);
    s = w_pull_dt(w1, 0, lo, hi, PROTO_WHICH_PARAMS, PROTO_DT_BF16);
    wire_to_bf16(want, d.r.w, n);
    int recvd = w_expect(w1, &m, PROTO_PULL_REPLY, s) == 0;
    int ok = recvd && m.hdr.dtype == PROTO_DT_BF16 && m.hdr.step == 1 && m.hdr.lo == lo &&
             m.hdr.hi == hi && proto_msg_size(&m) == n * 2 &&
             memcmp(proto_msg_data(&m), want, n * 2) == 0;
    if (recvd) proto_msg_close(&m);
    printf("wire: bf16 pull = the master rounded to bf16 (%zu values, half the bytes): %s\n", n,
           ok ? "ok" : "FAIL");
    T_CHECK(ok);
    /* a bf16 PUSH whose frame has the f32 length: refused by the decoder, with a reply */
    proto_hdr_t h;
    proto_make_push(&h, w1->id, ++w1->seq, 1, lo, hi, 1);
    proto_make_wire(&h, PROTO_DT_BF16);
    uint8_t hb[PROTO_HDR_MAX];
    size_t hl = 0;
    char why[PROTO_WHY_MAX];
    T_CHECK(proto_encode_hdr(&h, hb, sizeof hb, &hl, why, sizeof why) == 0);
    w_raw(w1, hb, hl, g, n * sizeof(float));
    w_error(w1, h.seq, "but header says");
    free(g);
    free(g16);
    free(got);
    free(b);
    free(want);
    duo_close(&d, f);
}

/* cluster.push_slices (BSP): two workers push their gradients as pieces of
 * cluster.slice_floats, in opposite orders; the step equals the whole-range one (bit
 * for bit against the local mirror's arithmetic within 1e-6, as test_bsp); a slice
 * complete before the others is applied at once, so a pull of the current version
 * arriving meanwhile waits and gets the new version; a duplicate, a misaligned or a
 * stale piece, and a whole-range push while pieces are summed, are refused. */
static void test_pieces(void *ctx, fsched_t *f) {
    const char *extra[] = {"--cluster.slice_floats=1024", "--contrastive.dim=2", NULL};
    duo_t d;
    if (duo_open(&d, ctx, f, "pieces", extra) != 0) return;
    size_t lo = d.r.lo, hi = d.r.hi, n = d.r.n, S = 1024, K = (n + S - 1) / S;
    fworker_t *w1 = &d.w1, *w2 = &d.w2;
    float *g1 = grad(n, 31), *g2 = grad(n, 32), *got = calloc(n, sizeof(float));
    T_CHECK(K >= 3);
    for (size_t k = 0; k < K; k++) { /* worker 10: every piece, slice 0 first */
        size_t a = lo + k * S, b = a + S < hi ? a + S : hi;
        w_ack(w1, w_push(w1, 0, a, b, 3, g1 + (a - lo)));
    }
    w_error(w1, w_push(w1, 0, lo, lo + S, 3, g1), "duplicate push");
    w_error(w1, w_push(w1, 0, lo + 8, lo + 8 + S, 3, g1), "nor one of its slices");
    w_error(w2, w_push(w2, 0, lo, hi, 1, g2), "pushes in slices");
    /* worker 11: the last slice first, so it is applied alone: w is half way */
    size_t la = lo + (K - 1) * S;
    w_ack(w2, w_push(w2, 0, la, hi, 1, g2 + (la - lo)));
    uint64_t early = w_pull(w1, 0, lo, hi, PROTO_WHICH_PARAMS);
    T_CHECK(w_quiet(w1)); /* not answered from a half-updated range */
    for (size_t k = K - 1; k-- > 0;) {
        size_t a = lo + k * S, b = a + S;
        w_ack(w2, w_push(w2, 0, a, b, 1, g2 + (a - lo)));
    }
    const float *gs[2] = {g1, g2};
    mirror_step(&d.r, 2, gs, (const int[]){3, 1});
    w_reply(w1, early, 1, lo, hi, got); /* answered once complete, with version 1 */
    testutil_close("pieces: BSP step in slices (weights 3, 1) vs local AdamW", got, d.r.w, n, 1e-6);
    w_error(w1, w_push(w1, 0, lo, lo + S, 3, g1), "stale push");
    free(g1);
    free(g2);
    free(got);
    duo_close(&d, f);
}

/* SSP(1): a pull at clock 2 waits until the slowest live worker reached clock 1. */
static void test_ssp(void *ctx, fsched_t *f) {
    const char *extra[] = {
        "--cluster.consistency=ssp",  "--cluster.staleness=1",           "--cluster.ema=on",
        "--contrastive.momentum=0.5", "--contrastive.momentum_cosine=0", NULL};
    duo_t d;
    if (duo_open(&d, ctx, f, "ssp", extra) != 0) return;
    size_t lo = d.r.lo, hi = d.r.hi, n = d.r.n;
    fworker_t *w1 = &d.w1, *w2 = &d.w2;
    float *g = grad(n, 21), *got = calloc(n, sizeof(float));
    w_ack(w1, w_push(w1, 0, lo, hi, 1, g));
    w_reply(w1, w_pull(w1, 1, lo, hi, PROTO_WHICH_PARAMS), 1, lo, hi, got); /* 0 + 1 >= 1 */
    w_ack(w1, w_push(w1, 1, lo, hi, 1, g));
    uint64_t held = w_pull(w1, 2, lo, hi, PROTO_WHICH_PARAMS); /* needs min clock >= 1 */
    T_CHECK(w_quiet(w1));
    w_ack(w2, w_push(w2, 0, lo, hi, 1, g));
    w_reply(w1, held, 3, lo, hi, got);
    for (int k = 0; k < 3; k++)
        mirror_step(&d.r, 1, (const float *const[]){g}, (const int[]){1});
    testutil_close("SSP: three steps", got, d.r.w, n, 1e-6);
    w_reply(w1, w_pull(w1, 0, lo, hi, PROTO_WHICH_EMA), 3, lo, hi, got);
    testutil_close("EMA with a constant momentum 0.5", got, d.r.ema, n, 1e-6);
    free(g);
    free(got);
    duo_close(&d, f);
}

/* Joining: an ERROR answer and a silent scheduler end the process with a message naming
 * the scheduler; a scheduler that restarts before answering gets REGISTER again. */
static void test_join(void *ctx) {
    const char *extra[] = {"--cluster.dead_ms=50", NULL}; /* join timeout 20 x 50 ms */
    fsched_t a = {0}, b = {0};
    child_t c;
    int zero = 0;
    a.router = zmq_socket(ctx, ZMQ_ROUTER);
    zmq_setsockopt(a.router, ZMQ_LINGER, &zero, sizeof zero);
    T_CHECK(zmq_bind(a.router, "tcp://127.0.0.1:*") == 0);
    size_t len = sizeof a.ep;
    zmq_getsockopt(a.router, ZMQ_LAST_ENDPOINT, a.ep, &len);

    /* ERROR instead of REGISTER_ACK */
    if (spawn_server(&c, "refused", a.ep, extra) == 0 && expect_register(&a, &c) == 0) {
        proto_hdr_t h;
        proto_hdr_init(&h, PROTO_ERROR, PROTO_ID_SCHEDULER);
        h.na = 1;
        h.a[PROTO_ERR_CODE] = MIMIC_EPEER;
        proto_hdr_set_str(&h, "no room for another server");
        sched_send(&a, &c, &h, NULL);
        T_CHECK(testutil_wait_pid(c.pid, WAIT_MS) == 1);
        char *log = testutil_slurp(c.log);
        T_CHECK(log && strstr(log, a.ep) && strstr(log, "no room for another server"));
        free(log);
    }
    testutil_kill(c.pid);

    /* nobody answers: a timeout naming the scheduler */
    if (spawn_server(&c, "silent", a.ep, extra) == 0 && expect_register(&a, &c) == 0) {
        T_CHECK(testutil_wait_pid(c.pid, WAIT_MS) == 1);
        char *log = testutil_slurp(c.log);
        T_CHECK(log && strstr(log, "no REGISTER_ACK") && strstr(log, a.ep));
        free(log);
    }
    testutil_kill(c.pid);

    /* the scheduler goes away after REGISTER and comes back on the same port */
    const char *patient[] = {"--cluster.dead_ms=500", NULL};
    if (spawn_server(&c, "retry", a.ep, patient) == 0 && expect_register(&a, &c) == 0) {
        zmq_close(a.router);
        a.router = NULL;
        b.router = zmq_socket(ctx, ZMQ_ROUTER);
        zmq_setsockopt(b.router, ZMQ_LINGER, &zero, sizeof zero);
        snprintf(b.ep, sizeof b.ep, "%s", a.ep);
        int bound = 0;
        for (int i = 0; i < 100 && !bound; i++) {
            bound = zmq_bind(b.router, b.ep) == 0;
            if (!bound) zmq_poll(NULL, 0, 20); /* sleep 20 ms */
        }
        T_CHECK(bound);
        if (bound && expect_register(&b, &c) == 0) {
            ack_register(&b, &c, 1, 0, "");
            T_CHECK(stop_server(&b, &c) == 0);
            char *log = testutil_slurp(c.log);
            T_CHECK(log && strstr(log, "sending REGISTER again") && strstr(log, "registered"));
            free(log);
        }
    }
    testutil_kill(c.pid);
    if (a.router) zmq_close(a.router);
    if (b.router) zmq_close(b.router);
}

/* A held-pull flood from a live worker: it may keep 16 pulls waiting, a pull for a
 * version far ahead is refused at once, another worker's pull is still held, and the
 * flooder's pulls go when it leaves the member list; the other's is answered when the
 * version comes. */
static void mirror_init(mirror_t *r, const char *const *extra, int S, int rank);
static void mirror_free(mirror_t *r);

static void test_pull_flood(void *ctx, fsched_t *f) {
    const char *extra[] = {NULL};
    child_t c;
    if (start_server(f, &c, "flood", extra, 1, 0, "") != 0) {
        T_CHECK(!"server started");
        testutil_kill(c.pid);
        return;
    }
    fworker_t x = {0}, w = {0};
    worker_open(&x, ctx, c.ep, 10); /* the flooder is a live worker */
    worker_open(&w, ctx, c.ep, 11);
    int32_t ids[2] = {10, 11}, rest[1] = {11};
    sched_membership(f, &c, 1, ids, 2);
    uint64_t far = w_pull(&x, 1000000, 0, 8, PROTO_WHICH_PARAMS);
    w_error(&x, far, "ahead of this server's");
    for (int i = 0; i < 16; i++)
        w_pull(&x, 1, 0, 8, PROTO_WHICH_PARAMS);
    T_CHECK(w_quiet(&x)); /* 16 held */
    uint64_t extra_pull = w_pull(&x, 1, 0, 8, PROTO_WHICH_PARAMS);
    w_error(&x, extra_pull, "already wait for later versions (at most 16)");
    uint64_t mine = w_pull(&w, 1, 0, 8, PROTO_WHICH_PARAMS); /* another worker's: held */
    T_CHECK(w_quiet(&w));
    sched_membership(f, &c, 2, rest, 1); /* the flooder is declared dead */
    mirror_t r;
    mirror_init(&r, extra, 1, 0);
    float *g = calloc(r.hi - r.lo, sizeof(float)), got[8];
    w_ack(&w, w_push(&w, 0, r.lo, r.hi, 1, g)); /* version 1 */
    w_reply(&w, mine, 1, 0, 8, got);
    T_CHECK(w_quiet(&x)); /* its 16 pulls left with it */
    free(g);
    mirror_free(&r);
    printf("pull flood: one worker holds at most 16, far-future pulls refused, dropped when "
           "it leaves; another worker's pull answered at version 1\n");
    T_CHECK(stop_server(f, &c) == 0);
    worker_close(&x);
    worker_close(&w);
}

/* A stranger sends one 64 MB frame to a server with cluster.max_msg_mb = 1: the
 * ROUTER's ZMQ_MAXMSGSIZE (max_msg_mb + 1 MB) makes ZeroMQ drop the connection once it
 * has read the frame's size, so the server never buffers it (the issue: a 400 MB frame
 * grew a server to 422 MB before the header-based check ran). Its RSS, sampled until
 * the frame is surely sent, stays within 1 MB + a margin of where it was; it answers
 * the stranger nothing and a member's pull afterwards. */
#define BIGFRAME_MB 64
#define BIGFRAME_MARGIN_KB (16 << 10)

static void test_big_frame(void *ctx, fsched_t *f) {
    const char *extra[] = {NULL}; /* BASE_ARGS: --cluster.max_msg_mb=1 */
    child_t c;
    if (start_server(f, &c, "bigframe", extra, 1, 0, "") != 0) {
        T_CHECK(!"server started");
        testutil_kill(c.pid);
        return;
    }
    fworker_t w = {0}, x = {0};
    worker_open(&w, ctx, c.ep, 10);
    int32_t ids[1] = {10};
    sched_membership(f, &c, 1, ids, 1);
    float got[8];
    w_reply(&w, w_pull(&w, 0, 0, 8, PROTO_WHICH_PARAMS), 0, 0, 8, got); /* up and serving */
    long rss0 = testutil_rss_kb(c.pid), peak = rss0;

    worker_open_as(&x, ctx, c.ep, 10, 0); /* a stranger's connection */
    size_t big = (size_t)BIGFRAME_MB << 20, hlen = 0;
    uint8_t hbuf[PROTO_HDR_MAX];
    char why[256];
    proto_hdr_t h; /* a consistent header: n = 4 x (hi - lo) = 64 MB */
    proto_make_push(&h, 10, 1, 0, 0, big / sizeof(float), 1);
    T_CHECK(proto_encode_hdr(&h, hbuf, sizeof hbuf, &hlen, why, sizeof why) == 0);
    uint8_t *pay = malloc(big);
    T_CHECK(pay != NULL);
    if (pay) memset(pay, 0x5a, big);
    double t0 = mimic_now();
    T_CHECK(zmq_send(x.sock, hbuf, hlen, ZMQ_SNDMORE) == (int)hlen);
    T_CHECK(pay && zmq_send(x.sock, pay, big, 0) == (int)big);
    free(pay); /* zmq_send copied it */
    /* 64 MB cross loopback well within a second; sample for 2 s (bounded by WAIT_MS) */
    int heard = 0;
    while (mimic_now() - t0 < 2.0 && mimic_now() - t0 < WAIT_MS * 1e-3) {
        long kb = testutil_rss_kb(c.pid);
        if (kb > peak) peak = kb;
        zmq_pollitem_t it = {x.sock, 0, ZMQ_POLLIN, 0};
        heard |= zmq_poll(&it, 1, 10) != 0;
    }
    long rss1 = testutil_rss_kb(c.pid);
    printf("64 MB frame from a stranger (max_msg_mb 1): server RSS %ld kB before, peak %ld kB, "
           "%ld kB after (limit %ld kB = before + 1 MB + %d MB)\n",
           rss0, peak, rss1, rss0 + 1024 + BIGFRAME_MARGIN_KB, BIGFRAME_MARGIN_KB >> 10);
    T_CHECK(rss0 > 0 && peak < rss0 + 1024 + BIGFRAME_MARGIN_KB);
    T_CHECK(testutil_wait_pid(c.pid, 0) == -1); /* still running */
    w_reply(&w, w_pull(&w, 0, 0, 8, PROTO_WHICH_PARAMS), 0, 0, 8, got);
    T_CHECK(!heard && w_quiet(&x)); /* the stranger heard nothing */
    T_CHECK(stop_server(f, &c) == 0);
    worker_close(&x);
    worker_close(&w);
}

/* The event loop held up (here: a checkpoint whose temp file is a FIFO nobody reads,
 * so the write blocks in open) must not stop the heartbeats: they come from the
 * member's thread. Then the write goes through, fails on the FIFO, the scheduler hears
 * why, and the pull that waited meanwhile is answered. */
static void test_blocked_loop(void *ctx, fsched_t *f) {
    char dir[1200], path[1400], fifo[1500], flag[1300];
    snprintf(dir, sizeof dir, "%.1100s/blocked-ckpt", testutil_tmpdir());
    snprintf(flag, sizeof flag, "--cluster.ckpt_dir=%s", dir);
    const char *extra[] = {flag, NULL};
    child_t c;
    if (start_server(f, &c, "blocked", extra, 1, 0, "") != 0) {
        T_CHECK(!"server started");
        testutil_kill(c.pid);
        return;
    }
    T_CHECK(mimic_mkdir_p(dir) == 0);
    snprintf(path, sizeof path, "%s/server-0-step-0.safetensors", dir);
    snprintf(fifo, sizeof fifo, "%s.tmp.%d", path, c.pid); /* st_writer_save's temp name */
    T_CHECK(mkfifo(fifo, 0600) == 0);
    fworker_t w = {0};
    worker_open(&w, ctx, c.ep, 10);
    int32_t ids[1] = {10};
    sched_membership(f, &c, 1, ids, 1);
    sched_simple(f, &c, PROTO_CKPT, 0, dir); /* version 0: written at once, and blocks */
    int beats0 = f->beats, other = 0;
    uint64_t pull = 0;
    double t0 = mimic_now();
    while (mimic_now() < t0 + 1.7) {
        /* the pull goes out once the CKPT surely got there (a loop serves its data
         * socket first, so one sent together with the CKPT would be answered) */
        if (!pull && mimic_now() > t0 + 0.5) pull = w_pull(&w, 0, 0, 8, PROTO_WHICH_PARAMS);
        proto_msg_t m;
        if (proto_recv(f->router, &m, MAXPAY, 100) == 0) {
            if (m.hdr.type == PROTO_HEARTBEAT)
                f->beats++;
            else
                other++;
        }
        proto_msg_close(&m);
    }
    int beats = f->beats - beats0;
    printf("server loop blocked 1.7 s in a checkpoint write: %d heartbeats arrived meanwhile\n",
           beats);
    T_CHECK(beats >= 10 && other == 0); /* heartbeat_ms = 50 */
    T_CHECK(w_quiet(&w));               /* and the loop was stuck: the pull is unanswered */
    int fd = open(fifo, O_RDONLY);      /* lets the write go on; it fails at fsync */
    T_CHECK(fd >= 0);
    char buf[65536];
    while (fd >= 0 && read(fd, buf, sizeof buf) > 0) {
    }
    if (fd >= 0) close(fd);
    proto_msg_t m;
    T_CHECK(sched_expect(f, &m, PROTO_CKPT_DONE) == 0 && m.hdr.a[PROTO_CKDONE_STATUS] < 0);
    printf("then: CKPT_DONE status %d: %s\n", (int)m.hdr.a[PROTO_CKDONE_STATUS], m.hdr.str);
    proto_msg_close(&m);
    float got[8];
    w_reply(&w, pull, 0, 0, 8, got);
    unlink(fifo);
    T_CHECK(stop_server(f, &c) == 0);
    worker_close(&w);
}

/* Bad settings stop the server before it joins, with one line naming the key. */
static void test_bad_flags(fsched_t *f) {
    static const char *const cases[][2] = {
        {"--cluster.consistency=bulk", "cluster.consistency"},
        {"--cluster.server_threads=5000", "cluster.server_threads"},
        {"--cluster.server_threads=-1", "cluster.server_threads"},
        {"--cluster.max_msg_mb=0", "cluster.max_msg_mb"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *extra[] = {cases[i][0], NULL};
        child_t c;
        T_CHECK(spawn_server(&c, "badflag", f->ep, extra) == 0);
        int st = testutil_wait_pid(c.pid, WAIT_MS);
        if (st < 0) testutil_kill(c.pid);
        char *log = testutil_slurp(c.log);
        int named = log && strstr(log, cases[i][1]) != NULL;
        printf("%-32s exit %d%s\n", cases[i][0], st, named ? ", the key named" : "");
        T_CHECK(st == 2 && named); /* exit 2: bad flags or settings */
        free(log);
        remove(c.log);
    }
}

/* ---- the contrastive stage's keys through the worker's client (kv.h) -------------------- */

#define QK 64 /* queue keys (contrastive.queue_size) */
#define QD 4  /* key floats (contrastive.dim) */

/* Key `row` of worker slot w (0 or 1) in step v: every float tells where it came from. */
static void make_keys(float *k, int v, int w, int n) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < QD; j++)
            k[i * QD + j] = (float)(v * 1000 + w * 100 + i) + 0.25f * (float)j;
}

/* The single process the queue must equal: each step enqueues worker 10's keys, then
 * worker 11's (worker-id order), into a ring of QK rows. */
typedef struct {
    float ring[QK * QD];
    uint64_t version;
} qref_t;

static void qref_push(qref_t *q, const float *k, int n) {
    for (int i = 0; i < n; i++, q->version++)
        memcpy(q->ring + (q->version % QK) * QD, k + i * QD, QD * sizeof(float));
}

typedef struct {
    kv_t *kv[2];
    float ring[2][QK * QD];
    kv_queue_info_t info[2];
} qworkers_t;

static int qworkers_open(qworkers_t *w, void *ctx, const char *ep, size_t total) {
    memset(w, 0, sizeof *w);
    for (int i = 0; i < 2; i++)
        if (kv_open(&w->kv[i], ctx, ep, total, 10 + i) != 0) return -1;
    return 0;
}

static void qworkers_close(qworkers_t *w) {
    for (int i = 0; i < 2; i++)
        kv_destroy(&w->kv[i]);
}

/* One BSP step v of the queue: both push (the one named `first` first), worker 0's pull
 * for step v+1 waits for the second push; both rings then equal the reference. Returns
 * the bytes of worker 0's delta pull. */
static size_t queue_step(qworkers_t *w, qref_t *ref, int v, const int *n, int first) {
    float keys[2][16 * QD];
    uint64_t qv = 0;
    for (int i = 0; i < 2; i++)
        make_keys(keys[i], v, i, n[i]);
    int a = first, b = 1 - first;
    T_CHECK(kv_wait(w->kv[a], kv_queue_push(w->kv[a], (uint64_t)v, keys[a], (size_t)n[a], QD),
                    WAIT_MS, NULL) == 0);
    int held = kv_queue_pull(w->kv[a], (uint64_t)v + 1, w->ring[a], QK, QD, &w->info[a]);
    T_CHECK(held > 0 && kv_wait(w->kv[a], held, QUIET_MS, NULL) == MIMIC_ETIMEOUT);
    T_CHECK(kv_wait(w->kv[b], kv_queue_push(w->kv[b], (uint64_t)v, keys[b], (size_t)n[b], QD),
                    WAIT_MS, NULL) == 0);
    T_CHECK(kv_wait(w->kv[a], held, WAIT_MS, &qv) == 0);
    T_CHECK(kv_wait(w->kv[b],
                    kv_queue_pull(w->kv[b], (uint64_t)v + 1, w->ring[b], QK, QD, &w->info[b]),
                    WAIT_MS, NULL) == 0);
    qref_push(ref, keys[0], n[0]); /* worker 10, then 11, whoever came first */
    qref_push(ref, keys[1], n[1]);
    size_t rows = ref->version < QK ? (size_t)ref->version : QK;
    for (int i = 0; i < 2; i++) {
        T_CHECK(w->info[i].version == ref->version && w->info[i].step == (uint64_t)v + 1);
        T_CHECK(w->info[i].rows == rows);
        T_CHECK(memcmp(w->ring[i], ref->ring, rows * QD * sizeof(float)) == 0);
    }
    T_CHECK(qv == ref->version);
    return w->info[0].bytes;
}

/* The error a request ended with must contain `text`. */
static void kv_refused(kv_t *kv, int ts, const char *text) {
    int rc = ts > 0 ? kv_wait(kv, ts, WAIT_MS, NULL) : ts;
    const char *why = mimic_last_error();
    if (rc == 0 || !strstr(why, text)) fprintf(stderr, "refusal '%s' lacks '%s'\n", why, text);
    T_CHECK(rc != 0 && strstr(why, text) != NULL);
}

/* Floats in the model of BASE_ARGS + extra (what a worker's kv_new needs). */
static size_t model_total(const char *const *extra) {
    mirror_t r;
    mirror_init(&r, extra, 1, 0);
    size_t total = r.model->p->total;
    mirror_free(&r);
    return total;
}

/* A one-server (rank 0) run with live workers 10 and 11: 0, or -1 (checked) when the
 * server did not start. */
static int start_duo_server(fsched_t *f, child_t *c, const char *name, const char *const *extra) {
    if (start_server(f, c, name, extra, 1, 0, "") != 0) {
        T_CHECK(!"server started");
        testutil_kill(c->pid);
        return -1;
    }
    int32_t both[2] = {10, 11};
    sched_membership(f, c, 1, both, 2);
    return 0;
}

/* BSP queue with two workers: order by worker id whatever the arrival order, delta
 * pulls reconstruct it, refusals, then a checkpoint; the server is SIGKILLed and a new
 * one resumes from the shard: the queue equals the uninterrupted run's. A dead worker
 * releases a held pull. */
static void test_queue_bsp(void *ctx, fsched_t *f, const char *ckdir) {
    char flag[1200];
    snprintf(flag, sizeof flag, "--cluster.ckpt_dir=%s", ckdir);
    const char *extra[] = {"--contrastive.queue_size=64", "--contrastive.dim=4", flag, NULL};
    size_t total = model_total(extra);
    child_t c;
    if (start_duo_server(f, &c, "queue", extra) != 0) return;
    int32_t both[2] = {10, 11};
    qworkers_t w;
    T_CHECK(qworkers_open(&w, ctx, c.ep, total) == 0);
    qref_t ref = {0};
    const int n[2] = {5, 3}; /* rows per step of workers 10 and 11: wraps after 8 steps */
    const int N1 = 6, N2 = 9;
    size_t bytes = 0;
    for (int v = 0; v < N1; v++)
        bytes = queue_step(&w, &ref, v, n, v & 1);
    printf("queue: %d BSP steps of 5 + 3 keys, both workers' delta pulls equal the one-process "
           "queue; a step's delta pull is %zu bytes\n",
           N1, bytes);
    T_CHECK(bytes == (size_t)(n[0] + n[1]) * QD * sizeof(float));

    /* refusals, each with its reason; the queue is unchanged by them */
    float k[4 * 5];
    make_keys(k, 0, 0, 4);
    kv_refused(w.kv[0], kv_queue_push(w.kv[0], 2, k, 4, QD), "complete"); /* an old step */
    kv_refused(w.kv[0], kv_queue_push(w.kv[0], N1, k, 4, 5), "contrastive.dim");
    T_CHECK(kv_wait(w.kv[0], kv_queue_push(w.kv[0], N1, k, 2, QD), WAIT_MS, NULL) == 0);
    kv_refused(w.kv[0], kv_queue_push(w.kv[0], N1, k, 2, QD), "duplicate");
    float *big = calloc((size_t)70000 * QD, sizeof(float)); /* 1.1 MB > cluster.max_msg_mb */
    kv_refused(w.kv[1], kv_queue_push(w.kv[1], N1, big, 70000, QD), "exceeds the limit");
    free(big);
    fworker_t raw = {0};
    worker_open_as(&raw, ctx, c.ep, 10, 0); /* a connection of its own: malformed frames are refused before any id */
    proto_hdr_t h;
    proto_make_queue_push(&h, 10, 777, N1, 2, QD);
    unsigned char hb[PROTO_HDR_MAX];
    size_t hl = 0;
    char why[PROTO_WHY_MAX];
    T_CHECK(proto_encode_hdr(&h, hb, sizeof hb, &hl, why, sizeof why) == 0);
    w_raw(&raw, hb, hl, k, 2 * QD * sizeof(float) - 4); /* a float short of 'n' */
    w_error(&raw, 777, "'n'");
    worker_close(&raw);
    /* finish step N1 (worker 10's 2 rows went in above) */
    float k11[3 * QD];
    make_keys(k11, N1, 1, 3);
    T_CHECK(kv_wait(w.kv[1], kv_queue_push(w.kv[1], N1, k11, 3, QD), WAIT_MS, NULL) == 0);
    qref_push(&ref, k, 2);
    qref_push(&ref, k11, 3);

    /* checkpoint: the server's version is 0, so CKPT(0) is written at once */
    sched_simple(f, &c, PROTO_CKPT, 0, ckdir);
    proto_msg_t m;
    T_CHECK(sched_expect(f, &m, PROTO_CKPT_DONE) == 0 && m.hdr.a[PROTO_CKDONE_STATUS] == 0);
    proto_msg_close(&m);
    qref_t at_ckpt = ref;
    for (int v = N1 + 1; v < N1 + 1 + N2; v++)
        queue_step(&w, &ref, v, n, v % 3 == 0);
    qref_t uninterrupted = ref;
    qworkers_close(&w);
    testutil_kill(c.pid); /* a crash */
    c.pid = 0;

    /* restart from the shard: step N1 + 1 on, the same keys */
    if (start_server(f, &c, "queue-resumed", extra, 1, 0, "0") != 0) {
        T_CHECK(!"server restarted");
        testutil_kill(c.pid);
        return;
    }
    sched_membership(f, &c, 1, both, 2);
    T_CHECK(qworkers_open(&w, ctx, c.ep, total) == 0);
    /* a fresh client's first pull brings the whole ring as of the checkpoint */
    T_CHECK(kv_wait(w.kv[0], kv_queue_pull(w.kv[0], N1 + 1, w.ring[0], QK, QD, &w.info[0]), WAIT_MS,
                    NULL) == 0);
    T_CHECK(w.info[0].version == at_ckpt.version && w.info[0].step == (uint64_t)N1 + 1);
    T_CHECK(memcmp(w.ring[0], at_ckpt.ring, sizeof at_ckpt.ring) == 0);
    T_CHECK(kv_wait(w.kv[1], kv_queue_pull(w.kv[1], N1 + 1, w.ring[1], QK, QD, &w.info[1]), WAIT_MS,
                    NULL) == 0);
    ref = at_ckpt;
    for (int v = N1 + 1; v < N1 + 1 + N2; v++)
        queue_step(&w, &ref, v, n, v % 2 == 0); /* another arrival order than before */
    T_CHECK(ref.version == uninterrupted.version);
    T_CHECK(memcmp(w.ring[0], uninterrupted.ring, sizeof ref.ring) == 0);
    T_CHECK(memcmp(w.ring[1], uninterrupted.ring, sizeof ref.ring) == 0);
    printf("queue: checkpoint after step %d, SIGKILL, resume: after step %d the queue equals "
           "the uninterrupted run's (%llu keys pushed)\n",
           N1, N1 + N2, (unsigned long long)ref.version);

    /* worker 11 dies before pushing step v: worker 10's pull is released by the shrink */
    int v = N1 + 1 + N2;
    float k10[5 * QD];
    make_keys(k10, v, 0, 5);
    T_CHECK(kv_wait(w.kv[0], kv_queue_push(w.kv[0], (uint64_t)v, k10, 5, QD), WAIT_MS, NULL) == 0);
    int held = kv_queue_pull(w.kv[0], (uint64_t)v + 1, w.ring[0], QK, QD, &w.info[0]);
    T_CHECK(kv_wait(w.kv[0], held, QUIET_MS, NULL) == MIMIC_ETIMEOUT);
    int32_t one[1] = {10};
    sched_membership(f, &c, 2, one, 1);
    T_CHECK(kv_wait(w.kv[0], held, WAIT_MS, NULL) == 0);
    qref_push(&ref, k10, 5);
    T_CHECK(w.info[0].version == ref.version && w.info[0].received == 5);
    T_CHECK(memcmp(w.ring[0], ref.ring, sizeof ref.ring) == 0);
    kv_refused(w.kv[1], kv_queue_push(w.kv[1], (uint64_t)v + 1, k10, 1, QD), "member list");
    qworkers_close(&w);
    T_CHECK(stop_server(f, &c) == 0);
}

/* MoCo v3's key exchange with two workers: the same matrix on both, in worker-id order,
 * offsets right; a dead worker releases it; a late worker gets the rows so far. */
static void test_keys_exchange(void *ctx, fsched_t *f) {
    const char *extra[] = {"--contrastive.dim=4", NULL};
    size_t total = model_total(extra);
    child_t c;
    if (start_duo_server(f, &c, "keys", extra) != 0) return;
    int32_t both[2] = {10, 11}, one[1] = {10};
    qworkers_t w;
    T_CHECK(qworkers_open(&w, ctx, c.ep, total) == 0);
    float keys[2][8 * QD], all[2][32 * QD], want[16 * QD];
    kv_keys_info_t ki[2];
    const int n[2] = {3, 2};
    for (int v = 0; v < 2; v++) {
        int a = v & 1, b = 1 - a; /* step 1: worker 11 first */
        for (int i = 0; i < 2; i++)
            make_keys(keys[i], v, i, n[i]);
        int ta =
            kv_keys_exchange(w.kv[a], (uint64_t)v, keys[a], (size_t)n[a], QD, all[a], 32, &ki[a]);
        T_CHECK(ta > 0 && kv_wait(w.kv[a], ta, QUIET_MS, NULL) == MIMIC_ETIMEOUT);
        int tb =
            kv_keys_exchange(w.kv[b], (uint64_t)v, keys[b], (size_t)n[b], QD, all[b], 32, &ki[b]);
        T_CHECK(kv_wait(w.kv[b], tb, WAIT_MS, NULL) == 0);
        T_CHECK(kv_wait(w.kv[a], ta, WAIT_MS, NULL) == 0);
        memcpy(want, keys[0], (size_t)n[0] * QD * sizeof(float));
        memcpy(want + n[0] * QD, keys[1], (size_t)n[1] * QD * sizeof(float));
        for (int i = 0; i < 2; i++) {
            T_CHECK(ki[i].step == (uint64_t)v && ki[i].count == 5 && ki[i].workers == 2);
            T_CHECK(ki[i].offset == (i ? 3u : 0u) && ki[i].mine == (size_t)n[i]);
            T_CHECK(memcmp(all[i], want, 5 * QD * sizeof(float)) == 0);
        }
    }
    printf("key exchange: 2 steps, both workers got the same 5 x %d matrix (offsets 0 and 3)\n",
           QD);

    /* refusals */
    kv_refused(w.kv[0], kv_keys_exchange(w.kv[0], 2, keys[0], 3, 5, all[0], 32, &ki[0]),
               "contrastive.dim");
    kv_refused(w.kv[0], kv_keys_exchange(w.kv[0], 1, keys[0], 3, QD, all[0], 32, &ki[0]),
               "duplicate"); /* step 1 is the released one and 10 is in it */
    kv_refused(w.kv[0], kv_keys_exchange(w.kv[0], 0, keys[0], 3, QD, all[0], 32, &ki[0]),
               "are complete"); /* step 0 is gone */
    float *big = calloc((size_t)70000 * QD, sizeof(float));
    kv_refused(w.kv[1], kv_keys_exchange(w.kv[1], 2, big, 70000, QD, all[1], 32, &ki[1]),
               "exceeds the limit");
    free(big);
    fworker_t raw = {0};
    worker_open_as(&raw, ctx, c.ep, 10, 0); /* a connection of its own: malformed frames are refused before any id */
    proto_hdr_t h;
    proto_make_keys_push(&h, 10, 778, 2, 2, QD);
    h.nbytes -= 4; /* n is not count x dim x 4: the decoder says so */
    unsigned char hb[PROTO_HDR_MAX];
    size_t hl = 0;
    char why[PROTO_WHY_MAX];
    T_CHECK(proto_encode_hdr(&h, hb, sizeof hb, &hl, why, sizeof why) != 0); /* ours refuses */
    h.nbytes += 4;
    T_CHECK(proto_encode_hdr(&h, hb, sizeof hb, &hl, why, sizeof why) == 0);
    w_raw(&raw, hb, hl, keys[0], 2 * QD * sizeof(float) - 4); /* the frame is short */
    w_error(&raw, 778, "'n'");
    worker_close(&raw);

    /* step 2: worker 11 dies before its push; the shrink releases worker 10 */
    make_keys(keys[0], 2, 0, 3);
    int ta = kv_keys_exchange(w.kv[0], 2, keys[0], 3, QD, all[0], 32, &ki[0]);
    T_CHECK(kv_wait(w.kv[0], ta, QUIET_MS, NULL) == MIMIC_ETIMEOUT);
    sched_membership(f, &c, 2, one, 1);
    T_CHECK(kv_wait(w.kv[0], ta, WAIT_MS, NULL) == 0);
    T_CHECK(ki[0].count == 3 && ki[0].workers == 1 && ki[0].offset == 0);
    T_CHECK(memcmp(all[0], keys[0], 3 * QD * sizeof(float)) == 0);
    make_keys(keys[1], 2, 1, 2);
    kv_refused(w.kv[1], kv_keys_exchange(w.kv[1], 2, keys[1], 2, QD, all[1], 32, &ki[1]),
               "member list");
    /* it was a false alarm: back in the live set, its keys of step 2 come late and it
     * gets step 2's rows so far plus its own */
    sched_membership(f, &c, 3, both, 2);
    T_CHECK(kv_wait(w.kv[1], kv_keys_exchange(w.kv[1], 2, keys[1], 2, QD, all[1], 32, &ki[1]),
                    WAIT_MS, NULL) == 0);
    T_CHECK(ki[1].count == 5 && ki[1].offset == 3 && ki[1].mine == 2 && ki[1].workers == 2);
    T_CHECK(memcmp(all[1], keys[0], 3 * QD * sizeof(float)) == 0);
    T_CHECK(memcmp(all[1] + 3 * QD, keys[1], 2 * QD * sizeof(float)) == 0);
    printf("key exchange: a dead worker released the step (1 x 3 rows); a late one got 5\n");
    qworkers_close(&w);
    T_CHECK(stop_server(f, &c) == 0);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Queue sizes of the MoCo v2 recipe: one BSP worker fills a K x D queue (256 keys a
 * step), then a fresh client's full pull and the delta pulls of 20 more steps are timed
 * (loopback; printed for docs/runtime.md). The delta is a step's rows, never the ring. */
static void test_queue_sizes(void *ctx, fsched_t *f) {
    static const int sizes[][2] = {{4096, 128}, {4096, 256}, {65536, 128}, {65536, 256}};
    enum { STEP_KEYS = 256, TIMED = 20 };
    for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++) {
        const int K = sizes[z][0], D = sizes[z][1];
        char qs[64], qd[64];
        snprintf(qs, sizeof qs, "--contrastive.queue_size=%d", K);
        snprintf(qd, sizeof qd, "--contrastive.dim=%d", D);
        const char *extra[] = {qs, qd, "--cluster.max_msg_mb=64", "--cluster.workers=1", NULL};
        size_t total = model_total(extra);
        child_t c;
        if (start_server(f, &c, "queue-size", extra, 1, 0, "") != 0) {
            T_CHECK(!"server started");
            testutil_kill(c.pid);
            return;
        }
        int32_t one[1] = {10}, both[2] = {10, 11}; /* 11 reads the whole ring at the end */
        sched_membership(f, &c, 1, one, 1);
        kv_t *kv = NULL, *fresh = NULL;
        T_CHECK(kv_open(&kv, ctx, c.ep, total, 10) == 0);
        T_CHECK(kv_open(&fresh, ctx, c.ep, total, 11) == 0);
        float *ring = calloc((size_t)K * D, sizeof(float)), *ring2 = calloc((size_t)K * D, 4);
        float *keys = malloc((size_t)STEP_KEYS * D * sizeof(float));
        kv_queue_info_t qi = {0};
        double t_delta[TIMED];
        size_t delta_bytes = 0;
        int steps = K / STEP_KEYS + TIMED, ok = 1;
        for (int v = 0; v < steps && ok; v++) {
            for (int i = 0; i < STEP_KEYS * D; i++)
                keys[i] = (float)(v * STEP_KEYS + i / D) + (float)(i % D) / (float)D;
            ok &= kv_wait(kv, kv_queue_push(kv, (uint64_t)v, keys, STEP_KEYS, (size_t)D), WAIT_MS,
                          NULL) == 0;
            double t0 = mimic_now();
            ok &= kv_wait(kv, kv_queue_pull(kv, (uint64_t)v + 1, ring, (size_t)K, (size_t)D, &qi),
                          WAIT_MS, NULL) == 0;
            if (v >= steps - TIMED) {
                t_delta[v - (steps - TIMED)] = mimic_now() - t0;
                delta_bytes = qi.bytes;
            }
        }
        T_CHECK(ok && delta_bytes == (size_t)STEP_KEYS * D * sizeof(float));
        sched_membership(f, &c, 2, both, 2); /* a reader joins, with nothing of the ring */
        double t0 = mimic_now();
        kv_queue_info_t fi = {0};
        T_CHECK(kv_wait(fresh,
                        kv_queue_pull(fresh, (uint64_t)steps, ring2, (size_t)K, (size_t)D, &fi),
                        WAIT_MS, NULL) == 0);
        double t_full = mimic_now() - t0;
        T_CHECK(fi.bytes == (size_t)K * D * sizeof(float) && fi.version == qi.version);
        T_CHECK(memcmp(ring, ring2, (size_t)K * D * sizeof(float)) == 0);
        qsort(t_delta, TIMED, sizeof t_delta[0], cmp_double);
        printf("queue K=%-5d D=%d (%5.1f MB): step delta pull (%d keys) %7zu bytes, median "
               "%.3f ms; full pull %.1f MB in %.1f ms\n",
               K, D, (double)K * D * 4 / (1 << 20), STEP_KEYS, delta_bytes,
               t_delta[TIMED / 2] * 1e3, (double)fi.bytes / (1 << 20), t_full * 1e3);
        kv_destroy(&kv);
        kv_destroy(&fresh);
        free(ring);
        free(ring2);
        free(keys);
        T_CHECK(stop_server(f, &c) == 0);
    }
}

/* adamw_ema_momentum against values worked out by hand (m0 0.9, T 50). */
static void test_ema_schedule(void) {
    static const struct {
        long t;
        int cosine;
        double m;
    } cases[] = {
        {0, 1, 0.9},         /* cos 0 = 1: m0 */
        {10, 1, 0.90954915}, /* 1 - 0.05 (1 + cos(pi/5) = 1.80901699) */
        {25, 1, 0.95},       /* cos(pi/2) = 0 */
        {50, 1, 1.0},        /* cos(pi) = -1 */
        {80, 1, 1.0},        /* past T: stays at 1 */
        {25, 0, 0.9},        /* no schedule: m0 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float m = adamw_ema_momentum(0.9f, cases[i].cosine, cases[i].t, 50);
        printf("EMA momentum t=%ld cosine=%d: %.8f (by hand %.8f)\n", cases[i].t, cases[i].cosine,
               (double)m, cases[i].m);
        T_CHECK(fabs((double)m - cases[i].m) < 1e-6);
    }
    T_CHECK(adamw_ema_momentum(0.99f, 1, 3, 0) == 0.99f); /* T = 0: constant */
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

int main(void) {
    mimic_set_quiet(1);
    void *ctx = zmq_ctx_new();
    fsched_t f = {0};
    f.router = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(f.router, ZMQ_LINGER, &zero, sizeof zero);
    T_CHECK(zmq_bind(f.router, "tcp://127.0.0.1:*") == 0);
    size_t len = sizeof f.ep;
    zmq_getsockopt(f.router, ZMQ_LAST_ENDPOINT, f.ep, &len);

    char ckdir[1024];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", testutil_tmpdir());
    mirror_t r;
    float *p3 = calloc(1 << 16, sizeof(float)), *e3 = calloc(1 << 16, sizeof(float));
    test_ema_schedule();
    test_bsp(ctx, &f, ckdir, p3, e3, &r);
    test_resume(ctx, &f, ckdir, p3, e3, &r);
    mirror_free(&r);
    test_bad_resume(&f, ckdir);
    test_asp(ctx, &f);
    test_wire(ctx, &f);
    test_pieces(ctx, &f);
    test_ssp(ctx, &f);
    char qdir[1100];
    snprintf(qdir, sizeof qdir, "%s/ckpt-queue", testutil_tmpdir());
    test_queue_bsp(ctx, &f, qdir);
    test_keys_exchange(ctx, &f);
    test_queue_sizes(ctx, &f);
    test_join(ctx);
    test_blocked_loop(ctx, &f);
    test_pull_flood(ctx, &f);
    test_big_frame(ctx, &f);
    test_bad_flags(&f);
    free(p3);
    free(e3);

    zmq_close(f.router);
    zmq_ctx_term(ctx);
    if (testutil_failures == 0) /* keep the logs and shards of a failed run */
        nftw(testutil_tmpdir(), rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else
        printf("logs and checkpoint shards kept in %s\n", testutil_tmpdir());
    return testutil_summary("test_pserver");
}
