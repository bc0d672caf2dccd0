#define _GNU_SOURCE
#include "scheduler.h"

#include "ckpt.h"
#include "common.h"
#include "httpd.h"
#include "loader.h"
#include "members.h"
#include "metrics.h"
#include "obs.h"
#include "progress.h"
#include "proto.h"
#include "trace.h"
#include "workq.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define SCHED_CHUNKS_HELD_MAX 2 /* chunks a worker may hold not reported done */
/* Member-table entries (~1.5 kB each) at least, and per server or worker of the quorum:
 * room for elastic joins and departed workers, while a flood of REGISTERs from new
 * connections is refused once the table is full (members.h) */
#define SCHED_MEMBERS_MIN 4096
#define SCHED_MEMBERS_PER_PEER 4
#define MEMB_RESENDS_MAX 20  /* MEMBERSHIP resends per version to a server that does not ACK */
#define SCHED_BURST 256      /* messages read per wake-up before the timers run */
#define SCHED_LINGER_MS 2000 /* closing lets the last SHUTDOWNs go out this long */
#define SCHED_OBS_S 0.25     /* the HTTP snapshot is published at most this often */

struct sched {
    mimic_cfg_t cfg;
    void *zctx, *sock;
    curve_t *curve; /* NULL: cluster.curve off */
    char endpoint[512];   /* published address */
    char ckdir[PATH_MAX]; /* absolute checkpoint directory */
    members_t *mb;
    workq_t *q;
    ckpt_t *ck;
    metrics_t mx;
    trace_t tr;
    progress_t pg;
    int S, W0;
    int resumed;
    long resume_step, end_step;
    long unreadable_chunks; /* chunks reported done with no readable sample */
    long refused_full;      /* REGISTERs refused: the member table was full */
    int members_max_test;   /* MIMIC_TEST_MEMBERS_MAX (tests only; 0: unset) */
    /* preemption (docs/runtime.md): the signal, when the grace period ends, the highest
     * version a chunk was asked for (BSP: handed out), and ASP/SSP's draining */
    int preempt_sig, draining;
    double preempt_deadline;
    long max_req;
    int started, finishing, ckpt_failed, over, exit_code;
    double t0, finish_t, dead_s, resend_s, ckpt_resent;
    double idle_since; /* when the last live worker went (0: there are workers) */
    /* stragglers (straggler.h): flagged now, ever flagged, the others' step times */
    int stragglers;
    long stragglers_total;
    double *times;
    int times_cap;
    uint64_t memb_version;
    volatile sig_atomic_t *stop;
    /* metrics.port: the HTTP endpoint and the state it shows (obs.h); the event loop
     * fills `ost` and publishes it every SCHED_OBS_S without ever waiting on a reader */
    obs_t *obs;
    httpd_t *http;
    obs_state_t *ost;
    double obs_t_pub;
    long obs_lines; /* progress lines already in the history */
};

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- output: JSON lines and trace -------------------------------------------------- */

static void jbegin(sched_t *s, const char *event) {
    metrics_begin(&s->mx, event);
    metrics_num(&s->mx, "t", mimic_now() - s->t0);
}

static void mark(sched_t *s, const char *name) {
    double now = mimic_now();
    trace_event(&s->tr, name, now, now);
}

/* ---- sending ----------------------------------------------------------------------- */

static void free_buf(void *data, void *hint) {
    (void)hint;
    free(data);
}

/* Sends to a member; never blocks (ZMQ_SNDTIMEO 0). A failure costs this message only. */
static int send_to(sched_t *s, const members_entry_t *m, const proto_hdr_t *h, const void *payload,
                   proto_free_fn *fn, void *hint) {
    int rc = proto_send(s->sock, m->ident, m->identlen, h, payload, fn, hint);
    if (rc)
        mimic_warn("scheduler: %s to %s id %d dropped", proto_type_name(h->type),
                   members_role_name(m->role), m->id);
    return rc;
}

__attribute__((format(printf, 4, 5))) static void reply_error(sched_t *s, const proto_msg_t *m,
                                                              int code, const char *fmt, ...) {
    char why[PROTO_STR_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (m->idlen) proto_reply_error(s->sock, PROTO_ID_SCHEDULER, m, code, why);
}

static void reply_ack(sched_t *s, const proto_msg_t *m, proto_type_t acked) {
    proto_hdr_t h;
    proto_make_ack(&h, PROTO_ID_SCHEDULER, m->hdr.seq, acked);
    proto_send(s->sock, m->id, m->idlen, &h, NULL, NULL, NULL);
}

static members_entry_t *server_of_rank(sched_t *s, int rank) {
    for (int i = 0; i < members_size(s->mb); i++) {
        members_entry_t *m = members_at(s->mb, i);
        if (m->role == PROTO_ROLE_SERVER && m->rank == rank) return m;
    }
    return NULL;
}

static int servers_registered(sched_t *s) {
    int n = 0;
    for (int i = 0; i < members_size(s->mb); i++)
        n += members_at(s->mb, i)->role == PROTO_ROLE_SERVER;
    return n;
}

/* The server endpoints in rank order, space-separated: malloc'ed, *len bytes; NULL when
 * out of memory. */
static char *server_list(sched_t *s, size_t *len) {
    size_t cap = (size_t)s->S * (PROTO_STR_MAX + CURVE_Z85 + 1) + 1;
    char *eps = malloc(cap);
    if (!eps) return NULL;
    eps[0] = 0;
    *len = 0;
    for (int r = 0; r < s->S; r++) {
        const members_entry_t *srv = server_of_rank(s, r);
        /* with CURVE, each endpoint is followed by the key the server authenticated with */
        *len += (size_t)snprintf(eps + *len, cap - *len, "%s%s%s%s", r ? " " : "",
                                 srv ? srv->endpoint : "", srv && srv->key[0] ? "," : "",
                                 srv ? srv->key : "");
    }
    return eps;
}

static void send_register_ack(sched_t *s, const members_entry_t *m) {
    proto_hdr_t h;
    char step[32] = ""; /* to a server: the step to resume from, "" for a fresh start */
    char *eps = NULL;   /* to a worker: the server endpoints */
    size_t len = 0;
    if (m->role == PROTO_ROLE_SERVER && s->resumed)
        snprintf(step, sizeof step, "%ld", s->resume_step);
    if (m->role != PROTO_ROLE_SERVER && !(eps = server_list(s, &len))) {
        mimic_warn("scheduler: out of memory answering worker id %d", m->id);
        return;
    }
    int in_str = len <= PROTO_STR_MAX;
    const char *text = !eps ? step : in_str ? eps : NULL;
    proto_make_register_ack(&h, PROTO_ID_SCHEDULER, m->reg_seq, m->id, s->S,
                            members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_LIVE), m->rank,
                            s->memb_version, text);
    h.a[PROTO_RACK_NKEYS] = 0; /* unknown here */
    h.a[PROTO_RACK_TOKEN] = m->token;
    h.na = PROTO_RACK_TOKEN + 1;
    if (in_str) {
        free(eps);
        send_to(s, m, &h, NULL, NULL, NULL);
        return;
    }
    /* Too many servers for str: the addresses go in the optional u8 payload, one a line. */
    mimic_warn("scheduler: %d server endpoints exceed %d bytes; sending them as the "
               "REGISTER_ACK payload",
               s->S, PROTO_STR_MAX);
    for (size_t i = 0; i < len; i++)
        if (eps[i] == ' ') eps[i] = '\n';
    proto_hdr_set_payload(&h, PROTO_DT_U8, len);
    send_to(s, m, &h, eps, free_buf, NULL);
}

static void send_membership(sched_t *s, members_entry_t *srv, double now) {
    int n = members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_LIVE);
    int64_t *pairs = n ? malloc((size_t)n * PROTO_MEMB_ENTRY) : NULL;
    if (n && !pairs) {
        mimic_warn("scheduler: out of memory for MEMBERSHIP");
        return;
    }
    int k = members_live_workers(s->mb, pairs, n);
    proto_hdr_t h;
    proto_make_membership(&h, PROTO_ID_SCHEDULER, s->memb_version, s->memb_version, (uint64_t)k);
    send_to(s, srv, &h, pairs, pairs ? free_buf : NULL, NULL);
    srv->memb_sent = now;
}

/* Sends the REGISTER_ACKs that wait for the servers to know their workers. */
static void release_acks(sched_t *s) {
    uint64_t known = UINT64_MAX; /* the MEMBERSHIP version every live server has */
    for (int i = 0; i < members_size(s->mb); i++) {
        const members_entry_t *m = members_at(s->mb, i);
        if (m->role == PROTO_ROLE_SERVER && m->state == MEMBERS_LIVE && m->memb_acked < known)
            known = m->memb_acked;
    }
    for (int i = 0; i < members_size(s->mb); i++) {
        members_entry_t *m = members_at(s->mb, i);
        if (m->role != PROTO_ROLE_WORKER || m->state != MEMBERS_LIVE || !m->ack_due ||
            m->ack_after > known)
            continue;
        m->ack_due = 0;
        send_register_ack(s, m);
    }
}

/* A worker's REGISTER_ACK goes out once the servers acknowledged the MEMBERSHIP that
 * lists it (membership_changed just sent it). */
static void ack_when_known(sched_t *s, members_entry_t *m) {
    m->ack_due = 1;
    m->ack_after = s->memb_version;
    release_acks(s);
}

static void membership_changed(sched_t *s, double now) {
    if (!s->started) return; /* the first MEMBERSHIP goes out with the quorum */
    s->memb_version++;
    for (int i = 0; i < members_size(s->mb); i++) {
        members_entry_t *m = members_at(s->mb, i);
        if (m->role != PROTO_ROLE_SERVER || m->state != MEMBERS_LIVE) continue;
        m->memb_resends = 0;
        send_membership(s, m, now);
    }
    jbegin(s, "membership");
    metrics_int(&s->mx, "version", (long long)s->memb_version);
    metrics_int(&s->mx, "live_workers", members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_LIVE));
    metrics_end(&s->mx);
    mark(s, "membership");
}

static void request_checkpoints(sched_t *s) {
    long step;
    while (ckpt_next_request(s->ck, &step)) {
        proto_hdr_t h;
        proto_make_ckpt(&h, PROTO_ID_SCHEDULER, 0, (uint64_t)step, s->ckdir);
        for (int i = 0; i < members_size(s->mb); i++) {
            const members_entry_t *m = members_at(s->mb, i);
            if (m->role == PROTO_ROLE_SERVER && m->state == MEMBERS_LIVE)
                send_to(s, m, &h, NULL, NULL, NULL);
        }
    }
}

/* CKPT again to a server whose version passed a requested step it has not answered
 * (the CKPT or its CKPT_DONE was lost; servers answer a repeat from what they wrote),
 * at most every cluster.dead_ms: a large shard takes seconds to write, during which
 * the server's heartbeats already carry the step. */
static void resend_checkpoints(sched_t *s, double now) {
    if (now - s->ckpt_resent < s->dead_s) return;
    s->ckpt_resent = now;
    long steps[CKPT_WINDOW];
    for (int i = 0; i < members_size(s->mb); i++) {
        const members_entry_t *m = members_at(s->mb, i);
        if (m->role != PROTO_ROLE_SERVER || m->state != MEMBERS_LIVE) continue;
        int n = ckpt_overdue(s->ck, m->rank, (long)m->step, steps, CKPT_WINDOW);
        for (int k = 0; k < n; k++) {
            proto_hdr_t h;
            proto_make_ckpt(&h, PROTO_ID_SCHEDULER, 0, (uint64_t)steps[k], s->ckdir);
            send_to(s, m, &h, NULL, NULL, NULL);
            mimic_log("scheduler: server rank %d is at version %llu without answering checkpoint "
                      "%ld; CKPT sent again",
                      m->rank, (unsigned long long)m->step, steps[k]);
        }
    }
}

/* SHUTDOWN to every live or waiting peer, and the loop ends with `code`. */
static void end_run(sched_t *s, int code, const char *why) {
    proto_hdr_t h;
    proto_make_shutdown(&h, PROTO_ID_SCHEDULER, 0, why);
    int sent = 0;
    for (int i = 0; i < members_size(s->mb); i++) {
        const members_entry_t *m = members_at(s->mb, i);
        if (m->state == MEMBERS_LIVE || m->state == MEMBERS_PENDING)
            sent += send_to(s, m, &h, NULL, NULL, NULL) == 0;
    }
    progress_flush(&s->pg, mimic_now(), stderr, &s->mx, s->t0);
    jbegin(s, "end");
    metrics_int(&s->mx, "exit_code", code);
    metrics_int(&s->mx, "stragglers_flagged", s->stragglers_total);
    metrics_str(&s->mx, "reason", why);
    metrics_end(&s->mx);
    mark(s, "shutdown");
    mimic_log("scheduler: %s; SHUTDOWN sent to %d peer(s), exit code %d", why, sent, code);
    s->over = 1;
    s->exit_code = code;
}

/* ---- membership events ------------------------------------------------------------- */

static void maybe_start(sched_t *s, double now) {
    if (s->started || members_count(s->mb, PROTO_ROLE_SERVER, MEMBERS_LIVE) < s->S ||
        members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_PENDING) < s->W0)
        return;
    s->started = 1;
    for (int i = 0; i < members_size(s->mb); i++) {
        members_entry_t *m = members_at(s->mb, i);
        if (m->role == PROTO_ROLE_WORKER && m->state == MEMBERS_PENDING) {
            m->state = MEMBERS_LIVE;
            m->last_seen = now; /* its silence while it waited for us does not count */
            m->chunk_next = (uint64_t)s->resume_step; /* its first chunk: the start step */
        }
    }
    /* Servers learn the members and the checkpoint plan before any worker can push. */
    membership_changed(s, now);
    request_checkpoints(s);
    for (int i = 0; i < members_size(s->mb); i++) {
        members_entry_t *m = members_at(s->mb, i);
        if (m->role == PROTO_ROLE_WORKER && m->state == MEMBERS_LIVE) ack_when_known(s, m);
    }
    progress_init(&s->pg, s->end_step, s->resume_step, now);
    int W = members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_LIVE);
    mimic_log("scheduler: %d server(s) and %d worker(s) registered; training %s step %ld to %ld",
              s->S, W, s->resumed ? "resumes at" : "starts at", s->resume_step, s->end_step);
    jbegin(s, "quorum");
    metrics_int(&s->mx, "servers", s->S);
    metrics_int(&s->mx, "workers", W);
    metrics_end(&s->mx);
    mark(s, "quorum");
}

static void worker_gone(sched_t *s, members_entry_t *m, members_state_t st, double now) {
    m->state = st;
    if (m->strag.flagged) { /* no longer counted: a straggler that is gone */
        m->strag.flagged = 0;
        s->pg.stragglers = --s->stragglers;
    }
    int skipped = 0, r = workq_requeue_worker(s->q, m->id, st == MEMBERS_DEAD, &skipped);
    if (s->ost && r > 0) s->ost->requeued_chunks += (uint64_t)r;
    const char *what = st == MEMBERS_DEAD ? "worker_dead" : "worker_left";
    mimic_log("scheduler: worker rank %d (id %d) %s; %d chunk(s) back at the front of the queue",
              m->rank, m->id, st == MEMBERS_DEAD ? "declared dead (no heartbeat)" : "left", r);
    jbegin(s, what);
    metrics_int(&s->mx, "id", m->id);
    metrics_int(&s->mx, "rank", m->rank);
    metrics_int(&s->mx, "requeued", r);
    metrics_int(&s->mx, "skipped", skipped);
    metrics_end(&s->mx);
    mark(s, what);
    membership_changed(s, now);
}

static void server_failed(sched_t *s, members_entry_t *m, const char *what) {
    char why[256];
    m->state = MEMBERS_DEAD;
    snprintf(why, sizeof why, "server rank %d (id %d) %s; restart from the last checkpoint",
             m->rank, m->id, what);
    end_run(s, SCHED_EXIT_SERVER, why);
}

/* A new entry for the REGISTER's connection, or an ERROR to it (non-zero). */
static int add_member(sched_t *s, const proto_msg_t *msg, int role, double now,
                      members_entry_t **out) {
    int rc = members_add(s->mb, role, msg->id, msg->idlen, now, out);
    if (rc == MIMIC_ENOMEM) reply_error(s, msg, rc, "scheduler out of memory");
    if (rc != MIMIC_EPEER) return rc;
    int max = members_max(s->mb);
    reply_error(s, msg, rc,
                "the scheduler's member table is full (%d members, none departed to forget): "
                "registration refused",
                max);
    /* a flood is logged, not echoed line by line: refusals 1, 10, 100, ... */
    long n = ++s->refused_full, p = 1;
    while (p < n && p <= LONG_MAX / 10)
        p *= 10;
    if (n == p)
        mimic_warn("scheduler: REGISTER as a %s refused: the member table is full (%d entries, "
                   "none departed to forget); %ld refused so far",
                   members_role_name(role), max, n);
    return rc;
}

static void on_register(sched_t *s, const proto_msg_t *msg, members_entry_t *known, double now) {
    int role = (int)msg->hdr.a[PROTO_REG_ROLE];
    if (s->curve && curve_user_role(msg->user) != role) { /* a worker's key makes no server */
        reply_error(s, msg, MIMIC_EPEER, "REGISTER as a %s: this CURVE key (%s) is not a %s's in %s/allow",
                    members_role_name(role), msg->user[0] ? msg->user : "none",
                    members_role_name(role), s->cfg.cluster.keys);
        return;
    }
    if (known) {
        if (known->role == role && known->state == MEMBERS_LIVE) {
            known->reg_seq = msg->hdr.seq; /* a retry: answer again, same id */
            if (!known->ack_due) send_register_ack(s, known);
        } else if (known->role == role && known->state == MEMBERS_PENDING) {
            known->reg_seq = msg->hdr.seq; /* still deferred; answered at the quorum */
        } else if (known->role != role) {
            reply_error(s, msg, MIMIC_EPEER, "this connection registered as a %s (id %d)",
                        members_role_name(known->role), known->id);
        } else {
            reply_error(s, msg, MIMIC_EPEER,
                        "not a member: this connection was id %d (%s); reconnect to register",
                        known->id, known->state == MEMBERS_DEAD ? "declared dead" : "left");
        }
        return;
    }
    if (s->finishing) {
        reply_error(s, msg, MIMIC_EPEER, "training is over");
        return;
    }
    if (role == PROTO_ROLE_SERVER) {
        int rank = servers_registered(s);
        if (rank >= s->S) {
            reply_error(s, msg, MIMIC_EPEER,
                        "the cluster already has its %d server(s) "
                        "(cluster.servers)",
                        s->S);
            return;
        }
        if (!msg->hdr.str[0]) {
            reply_error(s, msg, MIMIC_EINVAL, "REGISTER of a server needs its endpoint in str");
            return;
        }
        members_entry_t *m = NULL;
        if (add_member(s, msg, role, now, &m)) return;
        m->rank = rank;
        m->state = MEMBERS_LIVE;
        m->reg_seq = msg->hdr.seq;
        snprintf(m->endpoint, sizeof m->endpoint, "%s", msg->hdr.str);
        const char *key = strchr(msg->user, ' '); /* "server <z85>" */
        if (s->curve && key) snprintf(m->key, sizeof m->key, "%s", key + 1);
        send_register_ack(s, m);
        mimic_log("scheduler: server rank %d (id %d) registered at %s", rank, m->id, m->endpoint);
        jbegin(s, "register");
        metrics_str(&s->mx, "role", "server");
        metrics_int(&s->mx, "id", m->id);
        metrics_int(&s->mx, "rank", rank);
        metrics_str(&s->mx, "endpoint", m->endpoint);
        metrics_end(&s->mx);
        maybe_start(s, now);
        return;
    }
    int rank = members_free_worker_rank(s->mb);
    members_entry_t *m = NULL;
    if (rank < 0) {
        reply_error(s, msg, rank, "scheduler out of memory");
        return;
    }
    if (add_member(s, msg, role, now, &m)) return;
    m->rank = rank;
    m->reg_seq = msg->hdr.seq;
    jbegin(s, "register");
    metrics_str(&s->mx, "role", "worker");
    metrics_int(&s->mx, "id", m->id);
    metrics_int(&s->mx, "rank", rank);
    metrics_int(&s->mx, "deferred", !s->started);
    metrics_end(&s->mx);
    if (s->started) { /* an elastic join: answered at once */
        m->state = MEMBERS_LIVE;
        m->chunk_next = UINT64_MAX; /* holds nobody's next chunk before it has its own */
        mimic_log("scheduler: worker rank %d (id %d) joined", rank, m->id);
        membership_changed(s, now);
        ack_when_known(s, m);
        return;
    }
    mimic_log("scheduler: worker rank %d (id %d) registered; waiting for %d server(s) and %d "
              "worker(s)",
              rank, m->id, s->S - members_count(s->mb, PROTO_ROLE_SERVER, MEMBERS_LIVE),
              s->W0 - members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_PENDING));
    maybe_start(s, now);
}

/* ---- work queue, metrics, checkpoints ---------------------------------------------- */

static uint64_t keep_version(const sched_t *s) {
    long p = ckpt_min_pending(s->ck);
    return p < 0 ? UINT64_MAX : (uint64_t)p;
}

/* BSP: whether every live worker but m was handed a chunk of the step before `step`. */
static int chunk_step_open(sched_t *s, const members_entry_t *m, uint64_t step) {
    if (s->cfg.cluster.consistency != CONS_BSP) return 1;
    for (int i = 0; i < members_size(s->mb); i++) {
        const members_entry_t *w = members_at(s->mb, i);
        if (w != m && w->role == PROTO_ROLE_WORKER && w->state == MEMBERS_LIVE &&
            w->chunk_next < step)
            return 0;
    }
    return 1;
}

static void on_chunk_req(sched_t *s, const proto_msg_t *msg, members_entry_t *m) {
    proto_hdr_t h;
    if (s->draining && (long)msg->hdr.step > s->max_req) s->max_req = (long)msg->hdr.step;
    if (s->finishing || s->draining || msg->hdr.step >= (uint64_t)s->end_step) {
        proto_make_chunk_end(&h, PROTO_ID_SCHEDULER, msg->hdr.seq, msg->hdr.step);
        send_to(s, m, &h, NULL, NULL, NULL);
        return;
    }
    /* a worker takes one chunk a step and reports it before the next: a peer asking for
     * more without reporting any is refused, so it cannot drain the queue or grow the
     * scheduler's memory with chunks nobody will report */
    int held = workq_outstanding(s->q, m->id);
    if (held >= SCHED_CHUNKS_HELD_MAX) {
        reply_error(s, msg, MIMIC_EPEER,
                    "worker id %d holds %d chunk(s) not reported done (at most %d): report "
                    "them first",
                    m->id, held, SCHED_CHUNKS_HELD_MAX);
        return;
    }
    if (!chunk_step_open(s, m, msg->hdr.step)) { /* answered by release_chunk_reqs */
        m->req_held = 1;
        m->req_seq = msg->hdr.seq;
        m->req_step = msg->hdr.step;
        return;
    }
    if ((long)msg->hdr.step > s->max_req) s->max_req = (long)msg->hdr.step;
    workq_chunk_t c;
    /* ASP/SSP: a flagged straggler's chunk is cut to its speed (BSP: flagged only) */
    uint32_t cap = s->cfg.cluster.consistency == CONS_BSP
                       ? 0
                       : straggler_chunk(&m->strag, workq_chunk_size(s->q));
    int rc = workq_next_max(s->q, m->id, msg->hdr.step, cap, &c);
    if (rc) {
        reply_error(s, msg, rc, "work queue: %s", mimic_last_error());
        return;
    }
    m->chunk_next = msg->hdr.step + 1;
    proto_make_chunk(&h, PROTO_ID_SCHEDULER, msg->hdr.seq, msg->hdr.step, c.epoch, c.id, c.start,
                     c.count);
    /* Zero-copy out of the epoch's permutation; the send holds a reference to it. */
    send_to(s, m, &h, c.idx, workq_release, c.hold);
}

/* The median of the other live workers' last step times (0: none has one yet). */
static double others_median(sched_t *s, const members_entry_t *self) {
    int n = 0, W = members_size(s->mb);
    if (W > s->times_cap) {
        double *v = realloc(s->times, (size_t)W * sizeof *v);
        if (!v) return 0; /* out of memory: nothing is compared this step */
        s->times = v;
        s->times_cap = W;
    }
    for (int i = 0; i < W; i++) {
        const members_entry_t *o = members_at(s->mb, i);
        if (o != self && o->role == PROTO_ROLE_WORKER && o->state == MEMBERS_LIVE &&
            o->strag.step_s > 0)
            s->times[n++] = o->strag.step_s;
    }
    return straggler_median(s->times, n);
}

/* One step of worker m took step_s (normalised to a full chunk): flag or recover it
 * (docs/runtime.md, "Stragglers"). */
static void straggler_report(sched_t *s, members_entry_t *m, double step_s) {
    const mimic_cfg_t *c = &s->cfg;
    int ev = straggler_step(&m->strag, step_s, others_median(s, m), c->cluster.straggler_k,
                            c->cluster.straggler_n);
    if (ev == STRAGGLER_SAME) return;
    const straggler_t *g = &m->strag;
    int bsp = c->cluster.consistency == CONS_BSP;
    uint32_t cs = workq_chunk_size(s->q), cap = bsp ? 0 : straggler_chunk(g, cs);
    if (ev == STRAGGLER_FLAGGED) {
        s->stragglers++;
        s->stragglers_total++;
        char what[96];
        if (bsp)
            snprintf(what, sizeof what, "flagged only (BSP: every step waits for it)");
        else
            snprintf(what, sizeof what, "its chunks shrink to %u of %u samples", cap ? cap : cs,
                     cs);
        mimic_log("scheduler: worker rank %d (id %d) straggles: step %.3f s, median of the "
                  "others %.3f s, %.1fx > cluster.straggler_k %.1f for %d steps; %s",
                  m->rank, m->id, g->step_s, g->median_s, g->ratio, c->cluster.straggler_k, g->slow,
                  what);
    } else {
        s->stragglers--;
        mimic_log("scheduler: worker rank %d (id %d) recovered: step %.3f s, median of the "
                  "others %.3f s (%.1fx)",
                  m->rank, m->id, g->step_s, g->median_s, g->ratio);
    }
    s->pg.stragglers = s->stragglers;
    jbegin(s, ev == STRAGGLER_FLAGGED ? "straggler" : "straggler_recovered");
    metrics_int(&s->mx, "id", m->id);
    metrics_int(&s->mx, "rank", m->rank);
    metrics_num(&s->mx, "step_s", g->step_s);
    metrics_num(&s->mx, "median_s", g->median_s);
    metrics_num(&s->mx, "ratio", g->ratio);
    metrics_int(&s->mx, "chunk", cap ? cap : cs);
    metrics_int(&s->mx, "stragglers", s->stragglers);
    metrics_int(&s->mx, "flagged_total", s->stragglers_total);
    metrics_end(&s->mx);
    mark(s, ev == STRAGGLER_FLAGGED ? "straggler" : "straggler_recovered");
}

/* Answers the held CHUNK_REQs whose step is open now (after hand-outs, departures,
 * the end of the run); a departed worker's is dropped. */
static void release_chunk_reqs(sched_t *s) {
    for (int i = 0; i < members_size(s->mb); i++) {
        members_entry_t *m = members_at(s->mb, i);
        if (!m->req_held) continue;
        if (m->state != MEMBERS_LIVE) {
            m->req_held = 0;
            continue;
        }
        if (!chunk_step_open(s, m, m->req_step) && !s->finishing && !s->draining &&
            m->req_step < (uint64_t)s->end_step)
            continue;
        proto_msg_t req = {.idlen = m->identlen};
        memcpy(req.id, m->ident, m->identlen);
        proto_make_chunk_req(&req.hdr, m->id, m->req_seq, m->req_step);
        m->req_held = 0;
        on_chunk_req(s, &req, m);
        i = -1; /* a hand-out may open another worker's step */
    }
}

static void on_chunk_done(sched_t *s, const proto_msg_t *msg, members_entry_t *m) {
    const int64_t *a = msg->hdr.a;
    if (a[PROTO_CDONE_ID] > UINT32_MAX) {
        reply_error(s, msg, MIMIC_EINVAL, "CHUNK_DONE: chunk id %" PRId64 " out of range",
                    a[PROTO_CDONE_ID]);
        return;
    }
    workq_epoch_stats_t st;
    int finished = 0;
    char why[256];
    int rc = workq_done(s->q, m->id, (uint64_t)a[PROTO_CDONE_EPOCH], (uint32_t)a[PROTO_CDONE_ID],
                        &st, &finished, why, sizeof why);
    if (rc < 0) {
        reply_error(s, msg, rc, "CHUNK_DONE: %s", why);
        return;
    }
    reply_ack(s, msg, PROTO_CHUNK_DONE);
    progress_samples(&s->pg, (uint64_t)a[PROTO_CDONE_PROCESSED]);
    if (s->ost) s->ost->images += (uint64_t)a[PROTO_CDONE_PROCESSED];
    if (rc == WORKQ_DONE && a[PROTO_CDONE_PROCESSED] > 0 && msg->hdr.nf > PROTO_CDONE_BUSY_S)
        straggler_report(s, m,
                         msg->hdr.f[PROTO_CDONE_BUSY_S] * workq_chunk_size(s->q) /
                             (double)a[PROTO_CDONE_PROCESSED]);
    if (a[PROTO_CDONE_PROCESSED] == 0 && rc != WORKQ_DUPLICATE) {
        /* a poison chunk: done (never requeued, so no worker meets it again), accounted */
        s->unreadable_chunks++;
        if (s->ost) s->ost->unreadable_chunks = s->unreadable_chunks;
        mimic_warn("scheduler: chunk %" PRId64 "/%" PRId64 " had no readable sample (worker id "
                   "%d); skipped, %ld such chunk(s) so far",
                   a[PROTO_CDONE_EPOCH], a[PROTO_CDONE_ID], m->id, s->unreadable_chunks);
        jbegin(s, "chunk_unreadable");
        metrics_int(&s->mx, "epoch", a[PROTO_CDONE_EPOCH]);
        metrics_int(&s->mx, "chunk", a[PROTO_CDONE_ID]);
        metrics_int(&s->mx, "worker", m->id);
        metrics_int(&s->mx, "total", s->unreadable_chunks);
        metrics_end(&s->mx);
    }
    if (rc == WORKQ_DUPLICATE)
        mimic_warn("scheduler: worker id %d reported chunk %" PRId64 "/%" PRId64 " done again",
                   m->id, a[PROTO_CDONE_EPOCH], a[PROTO_CDONE_ID]);
    if (!finished) return;
    metrics_begin(&s->mx, "epoch_done"); /* exactly the fields of docs/runtime.md */
    metrics_int(&s->mx, "epoch", (long long)st.epoch);
    metrics_int(&s->mx, "samples", (long long)st.samples);
    metrics_int(&s->mx, "covered", (long long)st.covered);
    metrics_int(&s->mx, "duplicates", (long long)st.duplicates);
    metrics_int(&s->mx, "requeued_chunks", st.requeued_chunks);
    metrics_int(&s->mx, "skipped", (long long)st.skipped);
    metrics_int(&s->mx, "split_chunks", st.split_chunks);
    metrics_end(&s->mx);
    mark(s, "epoch_done");
    mimic_log("scheduler: epoch %" PRIu64 " done: %" PRIu64 "/%" PRIu64 " samples covered, %" PRIu64
              " duplicates, %u chunk(s) requeued, %u split",
              st.epoch, st.covered, st.samples, st.duplicates, st.requeued_chunks, st.split_chunks);
    workq_prune(s->q, keep_version(s));
}

/* A worker's counters (METRICS f[3..7], a[]) into its row of the HTTP state. */
static void obs_metrics(sched_t *s, const proto_hdr_t *h, const members_entry_t *m) {
    obs_worker_t *w = s->ost ? obs_worker(s->ost, m->id) : NULL;
    if (!w) return;
    w->rank = m->rank;
    w->step = (long)h->step;
    if (h->nf == PROTO_METRIC_DATA_S + PROTO_METRIC_PHASES)
        for (int i = 0; i < PROTO_METRIC_PHASES; i++)
            w->phase_s[i] = h->f[PROTO_METRIC_DATA_S + i];
    if (h->na > PROTO_METRIC_BYTES_IN) {
        w->bytes_out = (uint64_t)h->a[PROTO_METRIC_BYTES_OUT];
        w->bytes_in = (uint64_t)h->a[PROTO_METRIC_BYTES_IN];
    }
    if (h->na > PROTO_METRIC_BAD) w->bad_images = (uint64_t)h->a[PROTO_METRIC_BAD];
    if (h->na > PROTO_METRIC_STEPS) w->steps = (uint64_t)h->a[PROTO_METRIC_STEPS];
}

static void on_metrics(sched_t *s, const proto_msg_t *msg, const members_entry_t *m) {
    const proto_hdr_t *h = &msg->hdr;
    obs_metrics(s, h, m);
    double lr = h->nf > PROTO_METRIC_LR ? h->f[PROTO_METRIC_LR] : 0;
    int live = members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_LIVE);
    progress_metrics(&s->pg, (long)h->step, h->f[PROTO_METRIC_LOSS], lr, live, mimic_now(), stderr,
                     &s->mx, s->t0);
}

static void begin_finish(sched_t *s, double now) {
    s->finishing = 1;
    s->finish_t = now;
    progress_flush(&s->pg, now, stderr, &s->mx, s->t0);
    mimic_log("scheduler: every server wrote step %ld; waiting for the workers to leave",
              s->end_step);
}

/* Keeps the newest cluster.keep_ckpts complete steps on disk, deleting older ones. */
static void prune_checkpoints(sched_t *s) {
    int keep = s->cfg.cluster.keep_ckpts;
    if (keep <= 0) return;
    long steps[1024];
    int n = ckpt_steps_on_disk(s->ckdir, steps, 1024);
    for (int i = keep; i < n; i++) {
        ckpt_remove_step(s->ckdir, steps[i], s->S);
        mimic_log("scheduler: checkpoint %ld deleted (cluster.keep_ckpts %d)", steps[i], keep);
    }
}

static void on_ckpt_done(sched_t *s, const proto_msg_t *msg, const members_entry_t *m, double now) {
    long step = (long)msg->hdr.step;
    /* any non-zero status is a failure, whatever an int cast would make of it */
    int64_t st64 = msg->hdr.a[PROTO_CKDONE_STATUS];
    int status = st64 == 0 ? 0 : st64 < 0 && st64 >= INT_MIN ? (int)st64 : MIMIC_EPEER;
    int complete, failed;
    char why[256];
    int rc = ckpt_server_done(s->ck, step, m->rank, status, &complete, &failed, why, sizeof why);
    if (rc == 1) return; /* a second answer, to a CKPT resent because one was lost */
    if (rc) {
        reply_error(s, msg, MIMIC_EINVAL, "CKPT_DONE: %s", why);
        return;
    }
    if (status < 0)
        mimic_warn("scheduler: server rank %d could not write checkpoint %ld: %s (%s)", m->rank,
                   step, mimic_strerror(status), msg->hdr.str);
    if (!complete) return;
    rc = failed ? MIMIC_EPEER : ckpt_commit(s->ck, step, s->q);
    if (rc) {
        s->ckpt_failed++;
        jbegin(s, "checkpoint_failed");
        metrics_int(&s->mx, "step", step);
        metrics_int(&s->mx, "servers_failed", failed);
        metrics_end(&s->mx);
        mimic_warn("scheduler: checkpoint %ld incomplete; %s/latest not updated", step, s->ckdir);
    } else {
        jbegin(s, "checkpoint");
        metrics_int(&s->mx, "step", step);
        metrics_str(&s->mx, "dir", s->ckdir);
        metrics_end(&s->mx);
        mimic_log("scheduler: checkpoint of step %ld complete in %s", step, s->ckdir);
        if (s->ost) {
            s->ost->ckpt_step = step;
            s->ost->ckpt_wall = wall_now();
        }
        prune_checkpoints(s);
    }
    mark(s, "checkpoint");
    request_checkpoints(s);
    workq_prune(s->q, keep_version(s));
    if (step == s->end_step && !s->finishing) begin_finish(s, now);
}

static void on_ack(sched_t *s, const proto_msg_t *msg, members_entry_t *m) {
    if (msg->hdr.a[PROTO_ACK_TYPE] == PROTO_MEMBERSHIP && m->role == PROTO_ROLE_SERVER &&
        msg->hdr.seq > m->memb_acked && msg->hdr.seq <= s->memb_version) {
        m->memb_acked = msg->hdr.seq;
        release_acks(s);
    }
}

/* ---- dispatch ---------------------------------------------------------------------- */

static int only(sched_t *s, const proto_msg_t *msg, const members_entry_t *m, int role) {
    if (m->role == role) return 1;
    reply_error(s, msg, MIMIC_EPEER, "only %ss send %s", members_role_name(role),
                proto_type_name(msg->hdr.type));
    return 0;
}

static void handle_member(sched_t *s, const proto_msg_t *msg, members_entry_t *m, double now) {
    proto_type_t t = msg->hdr.type;
    if (m->state == MEMBERS_DEAD || m->state == MEMBERS_LEFT) {
        reply_error(s, msg, MIMIC_EPEER, "not a member: id %d %s", m->id,
                    m->state == MEMBERS_DEAD ? "was declared dead" : "has left");
        return;
    }
    members_touch(m, now);
    if (m->state == MEMBERS_PENDING) {
        if (t == PROTO_LEAVE) {
            m->state = MEMBERS_LEFT;
            reply_ack(s, msg, PROTO_LEAVE);
        } else if (t != PROTO_HEARTBEAT) {
            reply_error(s, msg, MIMIC_EPEER,
                        "not a member yet: REGISTER_ACK follows when the "
                        "cluster is complete");
        }
        return;
    }
    /* A heartbeat may still carry "no id" if it crossed our REGISTER_ACK on the wire. */
    if (msg->hdr.sender != m->id && !(t == PROTO_HEARTBEAT && msg->hdr.sender == PROTO_ID_NONE)) {
        reply_error(s, msg, MIMIC_EPEER, "sender id %d does not match this connection's id %d",
                    msg->hdr.sender, m->id);
        return;
    }
    switch (t) {
    case PROTO_HEARTBEAT:
        m->step = msg->hdr.step;
        /* members may hear nothing else from us for long stretches: the ACK tells
         * them the scheduler is alive (they end after 5 x dead_ms of silence) */
        reply_ack(s, msg, PROTO_HEARTBEAT);
        break;
    case PROTO_LEAVE:
        reply_ack(s, msg, PROTO_LEAVE);
        if (m->role == PROTO_ROLE_WORKER)
            worker_gone(s, m, MEMBERS_LEFT, now);
        else if (s->finishing)
            m->state = MEMBERS_LEFT;
        else
            server_failed(s, m, "left during training");
        break;
    case PROTO_CHUNK_REQ:
        if (only(s, msg, m, PROTO_ROLE_WORKER)) on_chunk_req(s, msg, m);
        break;
    case PROTO_CHUNK_DONE:
        if (only(s, msg, m, PROTO_ROLE_WORKER)) on_chunk_done(s, msg, m);
        break;
    case PROTO_METRICS:
        if (only(s, msg, m, PROTO_ROLE_WORKER)) on_metrics(s, msg, m);
        break;
    case PROTO_CKPT_DONE:
        if (only(s, msg, m, PROTO_ROLE_SERVER)) on_ckpt_done(s, msg, m, now);
        break;
    case PROTO_ACK:
        on_ack(s, msg, m);
        break;
    case PROTO_ERROR:
        mimic_warn("scheduler: %s id %d refused %s: %s", members_role_name(m->role), m->id,
                   proto_type_name((int)msg->hdr.a[PROTO_ERR_REQTYPE]), msg->hdr.str);
        break;
    default:
        reply_error(s, msg, MIMIC_EPEER, "the scheduler does not handle %s", proto_type_name(t));
    }
}

static void handle(sched_t *s, const proto_msg_t *msg, int rc, double now) {
    if (rc == MIMIC_EFORMAT) {
        reply_error(s, msg, rc, "%s", msg->why);
        return;
    }
    if (rc) {
        mimic_warn("scheduler: receive failed: %s", msg->why);
        return;
    }
    members_entry_t *m = members_by_ident(s->mb, msg->id, msg->idlen);
    /* A member's heartbeat thread has its own connection (ZeroMQ sockets are not
     * thread-safe), so a HEARTBEAT is matched by its sender id, not its connection:
     * a long forward/backward pass must not make a busy worker look dead. */
    if (!m && msg->hdr.type == PROTO_HEARTBEAT && msg->hdr.sender >= 0) {
        members_entry_t *owner = members_by_id(s->mb, msg->hdr.sender);
        /* ... and by the token of its REGISTER_ACK: an id alone (anyone can count) would
         * let an outsider keep a dead member alive */
        int bound = owner && msg->hdr.na > PROTO_HB_TOKEN &&
                    msg->hdr.a[PROTO_HB_TOKEN] == owner->token;
        if (owner && !bound && !owner->warned_token) {
            owner->warned_token = 1;
            mimic_warn("scheduler: a HEARTBEAT for id %d from another connection without its "
                       "token: ignored",
                       owner->id);
        }
        if (bound && (owner->state == MEMBERS_LIVE || owner->state == MEMBERS_PENDING)) {
            members_touch(owner, now);
            owner->step = msg->hdr.step; /* a server's version: overdue checkpoints */
            reply_ack(s, msg, PROTO_HEARTBEAT); /* the member's sign that we are alive */
        }
        trace_event(&s->tr, "HEARTBEAT", now, mimic_now());
        return;
    }
    if (msg->hdr.type == PROTO_REGISTER)
        on_register(s, msg, m, now);
    else if (!m)
        reply_error(s, msg, MIMIC_EPEER,
                    "not a member: %s from an unregistered peer (REGISTER "
                    "first)",
                    proto_type_name(msg->hdr.type));
    else
        handle_member(s, msg, m, now);
    trace_event(&s->tr, proto_type_name(msg->hdr.type), now, mimic_now());
}

/* ---- timers ------------------------------------------------------------------------ */

/* A cluster that never forms, or one left without workers, ends with a reason rather
 * than waiting forever (cluster.quorum_ms, cluster.idle_ms; 0: wait). */
static void check_waits(sched_t *s, double now) {
    const mimic_cfg_t *c = &s->cfg;
    char why[PATH_MAX + 200];
    if (!s->started) {
        if (c->cluster.quorum_ms > 0 && now - s->t0 > c->cluster.quorum_ms * 1e-3) {
            snprintf(why, sizeof why,
                     "no quorum after %.0f s (cluster.quorum_ms): %d of %d server(s) and %d of "
                     "%d worker(s) registered",
                     now - s->t0, members_count(s->mb, PROTO_ROLE_SERVER, MEMBERS_LIVE), s->S,
                     members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_PENDING), s->W0);
            end_run(s, SCHED_EXIT_FAIL, why);
        }
        return;
    }
    if (s->finishing || s->preempt_sig ||
        members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_LIVE) > 0) {
        s->idle_since = 0;
        return;
    }
    if (s->idle_since == 0) s->idle_since = now;
    if (c->cluster.idle_ms > 0 && now - s->idle_since > c->cluster.idle_ms * 1e-3) {
        snprintf(why, sizeof why,
                 "no worker for %.0f s (cluster.idle_ms); resume with --train.resume=auto from "
                 "%s/latest",
                 now - s->idle_since, s->ckdir);
        end_run(s, SCHED_EXIT_FAIL, why);
    }
}

/* The HTTP state from the members and the progress lines, published every SCHED_OBS_S
 * (obs_publish never waits: when a reader holds the snapshot, the next tick publishes). */
static void obs_tick(sched_t *s, double now) {
    obs_state_t *o = s->ost;
    if (!o || now - s->obs_t_pub < SCHED_OBS_S) return;
    o->t = now - s->t0;
    o->wall = wall_now();
    o->step = s->pg.lines ? s->pg.last_step : s->resume_step;
    o->total = s->end_step;
    o->loss = s->pg.lines ? s->pg.last_loss : NAN;
    o->lr = s->pg.lines ? s->pg.last_lr : NAN;
    o->img_s = s->pg.lines ? s->pg.last_img_s : 0;
    o->workers_live = members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_LIVE);
    o->servers_live = members_count(s->mb, PROTO_ROLE_SERVER, MEMBERS_LIVE);
    o->stragglers = s->stragglers;
    o->stragglers_total = s->stragglers_total;
    o->bad_images = 0;
    for (int i = 0; i < o->nworkers; i++) {
        const members_entry_t *m = members_by_id(s->mb, o->w[i].id);
        o->w[i].live = m && m->state == MEMBERS_LIVE;
        o->w[i].flagged = m ? m->strag.flagged : 0;
        o->w[i].ratio = m ? m->strag.ratio : 0;
        o->bad_images += o->w[i].bad_images;
    }
    for (int i = 0; i < members_size(s->mb); i++) { /* live workers that have not reported */
        const members_entry_t *m = members_at(s->mb, i);
        if (m->role == PROTO_ROLE_WORKER && m->state == MEMBERS_LIVE) {
            obs_worker_t *w = obs_worker(o, m->id);
            if (w) w->rank = m->rank;
        }
    }
    /* a point per progress line, and one when membership changed (a departure shows
     * even while no step completes) */
    const obs_point_t *last = o->nhist ? &o->hist[o->nhist - 1] : NULL;
    int moved = last && (last->workers != o->workers_live || last->servers != o->servers_live);
    if (s->pg.lines != s->obs_lines || moved) {
        s->obs_lines = s->pg.lines;
        obs_point_t p = {.t = moved ? now - s->t0 : s->pg.last_t - s->t0,
                         .step = s->pg.last_step,
                         .loss = s->pg.last_loss,
                         .img_s = s->pg.last_img_s,
                         .workers = o->workers_live,
                         .servers = o->servers_live};
        obs_history_add(o, &p);
    }
    if (obs_publish(s->obs, o)) s->obs_t_pub = now;
}

static void tick(sched_t *s, double now) {
    members_entry_t *m;
    while (!s->over && (m = members_expired(s->mb, now, s->dead_s))) {
        if (m->role == PROTO_ROLE_SERVER)
            server_failed(s, m, "stopped sending heartbeats");
        else
            worker_gone(s, m, MEMBERS_DEAD, now);
    }
    if (!s->over) check_waits(s, now);
    if (s->over) return;
    release_chunk_reqs(s);
    for (int i = 0; s->started && i < members_size(s->mb); i++) {
        m = members_at(s->mb, i);
        if (m->role == PROTO_ROLE_SERVER && m->state == MEMBERS_LIVE &&
            m->memb_acked < s->memb_version && now - m->memb_sent > s->resend_s &&
            m->memb_resends < MEMB_RESENDS_MAX) {
            m->memb_resends++;
            send_membership(s, m, now);
        }
    }
    if (s->started) resend_checkpoints(s, now);
    progress_tick(&s->pg, now, stderr, &s->mx, s->t0);
    obs_tick(s, now);
    if (s->finishing && (members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_LIVE) == 0 ||
                         now - s->finish_t > 2 * s->dead_s)) {
        char why[128];
        if (s->preempt_sig) {
            snprintf(why, sizeof why, "preempted by signal %d: stopped at step %ld, checkpointed",
                     s->preempt_sig, s->end_step);
            end_run(s, s->ckpt_failed ? SCHED_EXIT_FAIL : SCHED_EXIT_SIGNAL + s->preempt_sig, why);
        } else {
            snprintf(why, sizeof why, "training finished at step %ld", s->end_step);
            end_run(s, s->ckpt_failed ? SCHED_EXIT_FAIL : SCHED_EXIT_OK, why);
        }
    }
}

/* The stop step P of a preemption: checkpoint P is requested (the plan ends there),
 * training ends at P, and the run exits 128 + signal once it is written. */
static void preempt_at(sched_t *s, long P, double now) {
    s->end_step = P;
    ckpt_stop_at(s->ck, P);
    request_checkpoints(s);
    jbegin(s, "preempt");
    metrics_int(&s->mx, "signal", s->preempt_sig);
    metrics_int(&s->mx, "stop_step", P);
    metrics_end(&s->mx);
    mimic_log("scheduler: signal %d: training stops at step %ld and checkpoints it (grace "
              "%.1f s; a second signal ends at once)",
              s->preempt_sig, P, s->preempt_deadline - now);
}

/* SIGTERM/SIGINT/SIGUSR1 (what a cloud scheduler sends before it preempts; a launcher
 * forwards SIGUSR1 through mpirun): the cluster checkpoints the current step within
 * cluster.grace_ms, then ends. Under BSP the stop step is the one after the newest
 * version a chunk was handed out for, so every worker completes exactly the steps
 * the uninterrupted run makes (the checkpoint equals its state there); under ASP/SSP
 * every chunk request is answered END (draining), and once no worker is left the
 * servers' last version is checkpointed. Before the quorum, while finishing, with
 * grace_ms 0 or on a second signal the run ends at once. */
static void on_stop_signal(sched_t *s, int sig, double now) {
    char why[96];
    if (s->preempt_sig || !s->started || s->finishing || s->cfg.cluster.grace_ms <= 0) {
        snprintf(why, sizeof why, "scheduler stopped by signal %d", sig);
        end_run(s, SCHED_EXIT_SIGNAL + sig, why);
        return;
    }
    s->preempt_sig = sig;
    s->preempt_deadline = now + s->cfg.cluster.grace_ms * 1e-3;
    if (s->cfg.cluster.consistency != CONS_BSP) {
        s->draining = 1;
        mimic_log("scheduler: signal %d: draining (no new chunks) before the checkpoint", sig);
        return;
    }
    long P = s->max_req + 1;
    if (P <= s->resume_step) {
        snprintf(why, sizeof why, "stopped by signal %d before any step", sig);
        end_run(s, SCHED_EXIT_SIGNAL + sig, why);
        return;
    }
    if (P < s->end_step) {
        preempt_at(s, P, now);
    } else { /* the last step is under way: the run ends as planned */
        mimic_log("scheduler: signal %d during the last step; finishing at step %ld", sig,
                  s->end_step);
        s->preempt_sig = 0;
    }
}

/* A preemption's timers: ASP/SSP's checkpoint once drained, and the grace period. */
static void preempt_tick(sched_t *s, double now) {
    char why[PATH_MAX + 200];
    if (s->draining && members_count(s->mb, PROTO_ROLE_WORKER, MEMBERS_LIVE) == 0) {
        s->draining = 0;
        if (s->max_req <= s->resume_step || s->max_req >= s->end_step) {
            snprintf(why, sizeof why, "stopped by signal %d with nothing new to checkpoint",
                     s->preempt_sig);
            end_run(s, SCHED_EXIT_SIGNAL + s->preempt_sig, why);
            return;
        }
        preempt_at(s, s->max_req, now);
    }
    if (now > s->preempt_deadline) {
        snprintf(why, sizeof why,
                 "signal %d: the grace period (cluster.grace_ms) ended before checkpoint %ld "
                 "was complete; resume starts from %s/latest",
                 s->preempt_sig, s->end_step, s->ckdir);
        end_run(s, SCHED_EXIT_SIGNAL + s->preempt_sig, why);
    }
}

/* proto_recv_burst's callback: one message; the burst ends with the run. */
static int on_message(void *ctx, void *sock, proto_msg_t *msg, int rc) {
    sched_t *s = ctx;
    handle(s, msg, rc, mimic_now());
    return s->over;
}

int sched_run(sched_t *s) {
    while (!s->over) {
        if (s->stop && *s->stop) {
            int sig = *s->stop;
            *s->stop = 0; /* consumed: the next signal is a second one */
            on_stop_signal(s, sig, mimic_now());
            if (s->over) break;
        }
        if (s->preempt_sig && !s->over) preempt_tick(s, mimic_now());
        if (s->over) break;
        zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
        int ready = proto_poll(&it, 1, SCHED_TICK_MS); /* 0 after a signal too */
        if (ready < 0) {
            mimic_err(MIMIC_EIO, "scheduler: zmq_poll: %s", zmq_strerror(zmq_errno()));
            end_run(s, SCHED_EXIT_FAIL, "scheduler socket failed");
            break;
        }
        /* A bounded batch, so that heartbeats are checked even under a flood. */
        if (ready > 0) proto_recv_burst(s->sock, SCHED_BURST, SCHED_MAX_PAYLOAD, on_message, s);
        if (!s->over) tick(s, mimic_now());
    }
    return s->exit_code;
}

/* ---- set-up ------------------------------------------------------------------------ */

/* metrics.port > 0: the HTTP endpoint (httpd.h) and its state. */
static int open_http(sched_t *s) {
    const mimic_cfg_t *c = &s->cfg;
    if (c->metrics.port == 0) return 0; /* off (the keys were checked by check_cfg) */
    if (!(s->obs = obs_new()) || !(s->ost = calloc(1, sizeof *s->ost)))
        return mimic_err(MIMIC_ENOMEM, "metrics: out of memory");
    obs_state_t *o = s->ost;
    o->ckpt_step = s->resumed ? s->resume_step : -1;
    snprintf(o->stage, sizeof o->stage, "%s", config_enum_name("train", "stage", c->train.stage));
    snprintf(o->consistency, sizeof o->consistency, "%s",
             config_enum_name("cluster", "consistency", c->cluster.consistency));
    snprintf(o->out_dir, sizeof o->out_dir, "%s", c->train.out_dir);
    int rc = httpd_start(&s->http, c->metrics.bind, c->metrics.port, c->metrics.public_ok, s->obs);
    if (rc) return rc;
    mimic_log("scheduler: metrics on http://%s%s%s:%d/metrics, live page on /",
              strchr(c->metrics.bind, ':') ? "[" : "", c->metrics.bind,
              strchr(c->metrics.bind, ':') ? "]" : "", httpd_port(s->http));
    return 0;
}

static int check_cfg(const mimic_cfg_t *c) {
    if (c->cluster.servers < 1)
        return mimic_err(MIMIC_EINVAL, "config cluster.servers: %d (need >= 1)",
                         c->cluster.servers);
    if (c->cluster.workers < 0)
        return mimic_err(MIMIC_EINVAL, "config cluster.workers: %d (need >= 0)",
                         c->cluster.workers);
    if (c->cluster.heartbeat_ms <= 0 || c->cluster.dead_ms <= c->cluster.heartbeat_ms)
        return mimic_err(MIMIC_EINVAL,
                         "config cluster.heartbeat_ms/dead_ms: %d/%d (need 0 < "
                         "heartbeat_ms < dead_ms)",
                         c->cluster.heartbeat_ms, c->cluster.dead_ms);
    if (c->cluster.chunk_size < 0 || (c->cluster.chunk_size == 0 && c->train.batch_size <= 0))
        return mimic_err(MIMIC_EINVAL,
                         "config cluster.chunk_size: %d (0 = train.batch_size, "
                         "which is %d)",
                         c->cluster.chunk_size, c->train.batch_size);
    if (c->train.steps < 0)
        return mimic_err(MIMIC_EINVAL, "config train.steps: %ld", c->train.steps);
    float k = c->cluster.straggler_k;
    if (!(k == 0 || (k > 1 && k <= 1000)))
        return mimic_err(MIMIC_EINVAL,
                         "config cluster.straggler_k: %g (0 = off, else a factor in (1, 1000])",
                         (double)k);
    if (c->cluster.straggler_n < 1 || c->cluster.straggler_n > 1000000)
        return mimic_err(MIMIC_EINVAL, "config cluster.straggler_n: %d (need 1 .. 1000000 steps)",
                         c->cluster.straggler_n);
    /* before anything is read or bound: a public bind without metrics.public is refused */
    return httpd_check(c->metrics.bind, c->metrics.port, c->metrics.public_ok);
}

/* Number of samples: the data set is opened once, as the workers will open it. */
static int count_samples(const mimic_cfg_t *cfg, uint32_t *n) {
    size_t size = 0; /* counted from headers and listings: no image is decoded */
    int rc = loader_count(cfg, &size);
    if (rc) return rc;
    if (size > UINT32_MAX)
        return mimic_err(MIMIC_EINVAL, "%s: %zu samples; the work queue indexes at most 2^32-1",
                         cfg->data.path, size);
    *n = (uint32_t)size;
    return 0;
}

static int open_dirs(sched_t *s) {
    const mimic_cfg_t *c = &s->cfg;
    char dir[PATH_MAX];
    int rc = mimic_mkdir_p(c->train.out_dir);
    if (rc) return rc;
    if (c->cluster.ckpt_dir[0])
        snprintf(dir, sizeof dir, "%s", c->cluster.ckpt_dir);
    else
        snprintf(dir, sizeof dir, "%s/ckpt", c->train.out_dir);
    if ((rc = mimic_mkdir_p(dir))) return rc;
    /* Absolute, so servers started elsewhere write where the scheduler reads. */
    if (!realpath(dir, s->ckdir))
        return mimic_err(MIMIC_EIO, "%s: cannot resolve (%s)", dir, strerror(errno));
    return 0;
}

/* The step to resume from: *step (latest) when every server's shard of it is intact
 * (CRC-32 of every tensor) and its queue snapshot is there, else the newest earlier
 * step that is, with a warning, and `latest` rewritten to name it (so the next
 * restart does not trip over the damaged one again). */
static int intact_step(sched_t *s, long *step) {
    char why[1024];
    if (ckpt_verify(s->ckdir, *step, s->S, why, sizeof why) == 0) return 0;
    mimic_warn("scheduler: checkpoint %ld is damaged: %s", *step, why);
    long steps[256];
    int n = ckpt_steps_on_disk(s->ckdir, steps, 256);
    if (n < 0) return n;
    for (int i = 0; i < n; i++) {
        if (steps[i] >= *step) continue;
        if (ckpt_verify(s->ckdir, steps[i], s->S, why, sizeof why) != 0) {
            mimic_warn("scheduler: checkpoint %ld is damaged too: %s", steps[i], why);
            continue;
        }
        char path[PATH_MAX + 16], line[32];
        int len = snprintf(line, sizeof line, "%ld\n", steps[i]);
        snprintf(path, sizeof path, "%s/latest", s->ckdir);
        int rc = ckpt_write_atomic(path, line, (size_t)len);
        if (rc) return rc;
        mimic_warn("scheduler: resuming from checkpoint %ld instead of %ld (%s/latest now "
                   "names it)",
                   steps[i], *step, s->ckdir);
        jbegin(s, "checkpoint_fallback");
        metrics_int(&s->mx, "damaged", *step);
        metrics_int(&s->mx, "step", steps[i]);
        metrics_end(&s->mx);
        *step = steps[i];
        return 0;
    }
    return mimic_err(MIMIC_EFORMAT, "%s: no intact checkpoint to resume from (step %ld is "
                                    "damaged and no earlier one is whole)",
                     s->ckdir, *step);
}

static int decide_resume(sched_t *s) {
    /* MIMIC_RESUME: what a supervisor sets when it starts the cluster again
     * (deploy/supervise.sh); an explicit train.resume wins */
    const char *env = getenv("MIMIC_RESUME");
    const char *r = s->cfg.train.resume[0] || !env ? s->cfg.train.resume : env;
    long latest = -1;
    int have = ckpt_read_latest(s->ckdir, &latest);
    if (have < 0) return have;
    if (!r[0]) {
        if (have == 0) /* a fresh start would overwrite that run's checkpoints */
            return mimic_err(MIMIC_EINVAL,
                             "%s/latest (step %ld) exists and train.resume is empty: pass "
                             "--train.resume=auto to continue that run, or give a new "
                             "train.out_dir (or cluster.ckpt_dir) to start afresh",
                             s->ckdir, latest);
        return 0;
    }
    if (strcmp(r, "auto") != 0) {
        char real[PATH_MAX];
        if (!realpath(r, real) || strcmp(real, s->ckdir) != 0)
            return mimic_err(MIMIC_EINVAL,
                             "config train.resume: '%s' is neither \"auto\" nor the "
                             "cluster checkpoint directory %s",
                             r, s->ckdir);
        if (have == 1)
            return mimic_err(MIMIC_EINVAL, "config train.resume: no %s/latest to resume from",
                             s->ckdir);
    }
    if (have == 1) {
        mimic_log("scheduler: no checkpoint in %s; starting fresh", s->ckdir);
        return 0;
    }
    int rc = intact_step(s, &latest);
    if (rc) return rc;
    rc = ckpt_load_queue(s->ckdir, latest, s->q);
    if (rc) return rc;
    s->resumed = 1;
    s->resume_step = latest;
    uint64_t e;
    uint32_t k;
    workq_position(s->q, &e, &k);
    mimic_log("scheduler: resuming from checkpoint step %ld in %s (epoch %" PRIu64 ", chunk %u)",
              latest, s->ckdir, e, k);
    return 0;
}

static int open_socket(sched_t *s, int port) {
    s->zctx = zmq_ctx_new();
    if (!s->zctx) return mimic_err(MIMIC_EIO, "cannot create a ZeroMQ context");
    /* Nothing sent to the scheduler carries a payload: 1 MB is far beyond any legal
     * frame; 0.0.0.0 (all interfaces) is advertised by this host's name. */
    proto_router_opts_t o = {.host = s->cfg.cluster.bind_host,
                             .port = port,
                             .linger_ms = SCHED_LINGER_MS,
                             .max_msg = 1 << 20,
                             .advertise_hostname = 1,
                             .who = "scheduler"};
    int rc = curve_open_cfg(&s->curve, &s->cfg, CURVE_ROLE_SCHEDULER, "scheduler");
    if (rc) return rc;
    o.curve = s->curve;
    return proto_router_bind(&s->sock, s->zctx, &o, s->endpoint, sizeof s->endpoint);
}

/* The member table's size for the quorum S + W0 (SCHED_MEMBERS_MIN at least). */
static int table_limit(const sched_t *s) {
    if (s->members_max_test > 0) return s->members_max_test;
    long n = SCHED_MEMBERS_PER_PEER * ((long)s->S + s->W0);
    return n < SCHED_MEMBERS_MIN ? SCHED_MEMBERS_MIN : n > INT_MAX / 2 ? INT_MAX / 2 : (int)n;
}

int sched_new(sched_t **out, const mimic_cfg_t *cfg, const sched_opts_t *o) {
    *out = NULL;
    int rc = check_cfg(cfg);
    if (rc) return rc;
    sched_t *s = calloc(1, sizeof *s);
    if (!s) return mimic_err(MIMIC_ENOMEM, "out of memory for the scheduler");
    s->cfg = *cfg;
    s->t0 = mimic_now();
    s->stop = o ? o->stop : NULL;
    s->S = cfg->cluster.servers;
    s->W0 = cfg->cluster.workers;
    s->dead_s = cfg->cluster.dead_ms * 1e-3;
    s->resend_s = 2 * cfg->cluster.heartbeat_ms * 1e-3;
    uint32_t n = 0;
    uint32_t cs =
        (uint32_t)(cfg->cluster.chunk_size ? cfg->cluster.chunk_size : cfg->train.batch_size);
    char path[PATH_MAX];
    if ((rc = count_samples(cfg, &n)) || (rc = workq_new(&s->q, n, cs, cfg->train.seed)) ||
        (rc = open_dirs(s)) || (rc = decide_resume(s)))
        goto fail;
    workq_set_max_deaths(s->q, cfg->cluster.chunk_retries);
    s->max_req = s->resume_step - 1;
    s->end_step = cfg->train.steps;
    if (cfg->train.stop_after > 0 && s->resume_step + cfg->train.stop_after < s->end_step)
        s->end_step = s->resume_step + cfg->train.stop_after;
    if ((rc = ckpt_new(&s->ck, s->ckdir, cfg->cluster.ckpt_every, s->resume_step, s->end_step,
                       s->S)))
        goto fail;
    if (s->resumed) ckpt_set_latest(s->ck, s->resume_step);
    const char *mmax = getenv("MIMIC_TEST_MEMBERS_MAX"); /* tests only: a small table */
    s->members_max_test = mmax ? atoi(mmax) : 0;
    if (!(s->mb = members_new(table_limit(s)))) {
        rc = MIMIC_ENOMEM;
        goto fail;
    }
    snprintf(path, sizeof path, "%s/scheduler.jsonl", cfg->train.out_dir);
    if ((rc = metrics_open(&s->mx, path))) goto fail;
    snprintf(path, sizeof path, "%s/trace-scheduler.json", cfg->train.out_dir);
    if ((rc = trace_open(&s->tr, cfg->cluster.trace ? path : NULL, 0, "scheduler"))) goto fail;
    if ((rc = open_socket(s, o ? o->port : 0))) goto fail;
    if ((rc = open_http(s))) goto fail;
    progress_init(&s->pg, s->end_step, s->resume_step, s->t0);
    jbegin(s, "start");
    metrics_str(&s->mx, "endpoint", s->endpoint);
    metrics_int(&s->mx, "samples", n);
    metrics_int(&s->mx, "chunk_size", cs);
    metrics_int(&s->mx, "chunks_per_epoch", workq_chunks_per_epoch(s->q));
    metrics_int(&s->mx, "servers", s->S);
    metrics_int(&s->mx, "workers", s->W0);
    metrics_int(&s->mx, "resume_step", s->resumed ? s->resume_step : -1);
    metrics_int(&s->mx, "end_step", s->end_step);
    metrics_end(&s->mx);
    mimic_log("scheduler: %u samples in chunks of %u (%u per epoch); waiting for %d server(s) "
              "and %d worker(s)",
              n, cs, workq_chunks_per_epoch(s->q), s->S, s->W0);
    *out = s;
    return 0;
fail:
    sched_destroy(&s);
    return rc;
}

void sched_set_quorum(sched_t *s, int servers, int workers) {
    if (s->started) return;
    if (servers >= 1 && servers != s->S) {
        ckpt_t *ck = NULL;
        if (ckpt_new(&ck, s->ckdir, s->cfg.cluster.ckpt_every, s->resume_step, s->end_step,
                     servers) == 0) {
            ckpt_set_latest(ck, ckpt_latest(s->ck));
            ckpt_destroy(&s->ck);
            s->ck = ck;
            s->S = servers;
        }
    }
    if (workers >= 0) s->W0 = workers;
    members_set_max(s->mb, table_limit(s));
}

const char *sched_endpoint(const sched_t *s) {
    return s->endpoint;
}

void sched_destroy(sched_t **ps) {
    if (!ps || !*ps) return;
    sched_t *s = *ps;
    httpd_stop(&s->http); /* first: its thread reads s->obs */
    obs_destroy(&s->obs);
    free(s->ost);
    if (s->sock) zmq_close(s->sock); /* LINGER lets the SHUTDOWNs go out */
    curve_close(&s->curve);
    if (s->zctx) zmq_ctx_term(s->zctx);
    trace_close(&s->tr);
    metrics_close(&s->mx);
    members_destroy(&s->mb);
    ckpt_destroy(&s->ck);
    workq_destroy(&s->q);
    free(s->times);
    free(s);
    *ps = NULL;
}
