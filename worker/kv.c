/* kv.c — the worker's requests to the parameter servers, one channel per kind. */
#include "kv.h"

#include "common.h"
#include "keyrange.h"
#include "proto.h"
#include "wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KV_MAX_SERVERS 64
#define KV_KEYS_SERVER 0 /* rank 0 holds the queue and the key exchange */

/* The channels: one request of each may be in flight. */
enum { CH_PARAMS, CH_EMA, CH_QPUSH, CH_QPULL, CH_KEYS, CH_COUNT };
/* What the request in a channel is. */
enum { KV_PULL = 1, KV_PUSH, KV_PUSHPULL, KV_QPUSH, KV_QPULL, KV_KEYS };

typedef struct {
    void *sock;
    char endpoint[256];
    size_t lo, hi;
    /* per channel, for the request in flight */
    int answered[CH_COUNT];
    size_t got[CH_COUNT];  /* values of a pull's reply received so far (it may come in slices) */
    int pushes, push_acks; /* CH_PARAMS: pieces of the push sent, and acknowledged */
    size_t unsent_hi;      /* CH_PARAMS: [lo, unsent_hi) of the push-pull not pushed yet */
    uint64_t version[CH_COUNT];
} kv_server_t;

typedef struct {
    uint64_t seq; /* its timestamp; 0: nothing started */
    int kind;
    int nserv;          /* servers that answer: all (parameters) or the keys server */
    int failed;         /* an ERROR or a bad answer arrived: why says it */
    char why[1024];     /* the message kv_wait returns */
    proto_track_t sent; /* zero-copy buffers of this channel still held by ZeroMQ */
    float *dst;         /* pull: where the values land; queue: the ring; keys: all */
    size_t cap, dim;    /* queue: ring rows; keys: rows of all */
    kv_queue_info_t *qinfo;
    kv_keys_info_t *kinfo;
} kv_req_t;

struct kv {
    kv_server_t srv[KV_MAX_SERVERS];
    int S;
    int32_t id;
    size_t max_payload;
    uint64_t seq; /* last request's sequence number */
    kv_req_t ch[CH_COUNT];
    uint64_t qversion; /* the queue version the local ring holds */
    int wire;          /* PROTO_DT_F32 or PROTO_DT_BF16 */
    size_t slice;      /* pushes in pieces of this many floats (0: whole) */
    struct {           /* the push-pull under way (kv_pushpull_begin .. _end) */
        int open;
        uint64_t version;
        int batch;
        const float *grad;
    } pp;
    uint16_t *g16;                /* bf16 wire: the pushed gradient, rounded (total values) */
    uint64_t bytes_out, bytes_in; /* payload bytes sent and received (kv_bytes) */
};

void kv_bytes(const kv_t *kv, uint64_t *out, uint64_t *in) {
    *out = kv->bytes_out;
    *in = kv->bytes_in;
}

int kv_new(kv_t **out, void *zctx, const kv_opts_t *o) {
    *out = NULL;
    if (o->nservers < 1 || o->nservers > KV_MAX_SERVERS)
        return mimic_err(MIMIC_EINVAL, "kv: %d servers, supported 1..%d", o->nservers,
                         KV_MAX_SERVERS);
    kv_t *kv = calloc(1, sizeof *kv);
    if (!kv) return mimic_err(MIMIC_ENOMEM, "kv: out of memory");
    kv->S = o->nservers;
    kv->id = o->id;
    kv->wire = o->wire == PROTO_DT_BF16 ? PROTO_DT_BF16 : PROTO_DT_F32;
    kv->slice = o->slice;
    if (o->wire != 0 && o->wire != PROTO_DT_F32 && o->wire != PROTO_DT_BF16) {
        free(kv);
        return mimic_err(MIMIC_EINVAL, "kv: wire dtype %d is neither f32 nor bf16", o->wire);
    }
    if (kv->wire == PROTO_DT_BF16 && !(kv->g16 = mimic_alloc(o->total * sizeof(uint16_t)))) {
        free(kv);
        return mimic_err(MIMIC_ENOMEM, "kv: out of memory for the bf16 gradient");
    }
    kv->max_payload = o->max_payload;
    uint8_t ident[PROTO_PEER_IDENT];
    proto_peer_ident(ident, o->id, o->token);
    /* no frame beyond the largest reply is buffered (a server is trusted, but a bug or
     * a stranger at its address should not grow us) */
    int64_t max_msg = (int64_t)o->max_payload + (1 << 16);
    const char *p = o->endpoints;
    int rc = 0;
    for (int s = 0; s < o->nservers; s++) {
        kv_server_t *sv = &kv->srv[s];
        char key[CURVE_Z85] = "";
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " "), ep = strcspn(p, " ,");
        if (ep == 0 || ep >= sizeof sv->endpoint || (n > ep && n - ep - 1 >= sizeof key)) {
            rc = mimic_err(MIMIC_EFORMAT, "kv: server list '%s' has no endpoint %d", o->endpoints,
                           s);
            goto fail;
        }
        memcpy(sv->endpoint, p, ep);
        sv->endpoint[ep] = 0;
        if (n > ep) {
            memcpy(key, p + ep + 1, n - ep - 1);
            key[n - ep - 1] = 0;
        }
        p += n;
        keyrange_of(o->total, o->nservers, s, &sv->lo, &sv->hi);
        sv->sock = zmq_socket(zctx, ZMQ_DEALER);
        int linger = 0;
        if (!sv->sock || zmq_setsockopt(sv->sock, ZMQ_LINGER, &linger, sizeof linger) ||
            zmq_setsockopt(sv->sock, ZMQ_ROUTING_ID, ident, sizeof ident) ||
            zmq_setsockopt(sv->sock, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg)) {
            rc = mimic_err(MIMIC_EIO, "kv: socket for server %d: %s", s, zmq_strerror(zmq_errno()));
            goto fail;
        }
        if (o->curve && !key[0]) {
            rc = mimic_err(MIMIC_EFORMAT, "kv: server %d (%s) came without its CURVE key", s,
                           sv->endpoint);
            goto fail;
        }
        if ((rc = curve_client(o->curve, sv->sock, key[0] ? key : NULL))) goto fail;
        if (zmq_connect(sv->sock, sv->endpoint)) {
            rc = mimic_err(MIMIC_EIO, "kv: cannot connect to server %d at %s: %s", s, sv->endpoint,
                           zmq_strerror(zmq_errno()));
            goto fail;
        }
    }
    *out = kv;
    return 0;
fail:
    kv_destroy(&kv);
    return rc;
}

size_t kv_slice_of(const mimic_cfg_t *cfg) {
    const int on = cfg->cluster.push_slices && cfg->cluster.consistency == CONS_BSP;
    return on && cfg->cluster.slice_floats > 0 ? (size_t)cfg->cluster.slice_floats : 0;
}

void kv_set_slice(kv_t *kv, size_t slice) {
    kv->slice = slice;
}

void kv_destroy(kv_t **pkv) {
    if (!pkv || !*pkv) return;
    kv_t *kv = *pkv;
    *pkv = NULL;
    /* Close first: with LINGER 0 ZeroMQ's I/O thread drops what is still queued (a dead
     * server never takes it) and calls proto_track_release for each zero-copy push.
     * Only when all are released may kv (the trackers) and the pushed buffers go. */
    for (int s = 0; s < kv->S; s++)
        if (kv->srv[s].sock) zmq_close(kv->srv[s].sock);
    for (int c = 0; c < CH_COUNT; c++)
        if (proto_track_wait(&kv->ch[c].sent, 10000) != 0) {
            mimic_warn("kv: ZeroMQ still holds %d pushes after closing; leaking their tracker",
                       atomic_load(&kv->ch[c].sent.inflight));
            return; /* freeing it would let the I/O thread write into freed memory */
        }
    mimic_free(kv->g16);
    free(kv);
}

static int ts_of(uint64_t seq) {
    return (int)(seq & 0x7fffffff);
}

/* A new request of `kind` on channel c, answered by every server (all) or the keys
 * server; returns its timestamp. */
static int start(kv_t *kv, int c, int kind, int all) {
    kv_req_t *r = &kv->ch[c];
    r->seq = ++kv->seq;
    if (ts_of(r->seq) == 0) r->seq = ++kv->seq; /* 0 is no timestamp */
    r->kind = kind;
    r->nserv = all ? kv->S : 1;
    r->failed = 0;
    r->why[0] = 0;
    if (c == CH_PARAMS) kv->pp.open = 0; /* a push-pull under way is abandoned */
    for (int s = 0; s < kv->S; s++) {
        kv->srv[s].answered[c] = !all && s != KV_KEYS_SERVER;
        kv->srv[s].got[c] = 0;
        if (c == CH_PARAMS) kv->srv[s].pushes = kv->srv[s].push_acks = 0;
    }
    return ts_of(r->seq);
}

static int send_pull(kv_t *kv, kv_server_t *sv, uint64_t seq, int which, uint64_t min_version) {
    proto_hdr_t h;
    proto_make_pull(&h, kv->id, seq, min_version, sv->lo, sv->hi, which);
    if (kv->wire != PROTO_DT_F32) proto_make_wire(&h, (proto_dtype_t)kv->wire);
    return proto_send(sv->sock, NULL, 0, &h, NULL, NULL, NULL);
}

/* Pushes grad's [lo, hi) (a server's range or a slice of it) zero-copy. */
static int send_piece(kv_t *kv, kv_server_t *sv, uint64_t version, int batch, const float *grad,
                      size_t lo, size_t hi) {
    proto_hdr_t h;
    kv_req_t *r = &kv->ch[CH_PARAMS];
    proto_make_push(&h, kv->id, r->seq, version, lo, hi, batch);
    const void *data = grad + lo;
    if (kv->wire == PROTO_DT_BF16) { /* this part is rounded while the last one is sent */
        wire_to_bf16(kv->g16 + lo, grad + lo, hi - lo);
        proto_make_wire(&h, PROTO_DT_BF16);
        data = kv->g16 + lo;
    }
    proto_track_hold(&r->sent);
    sv->pushes++;
    kv->bytes_out += h.nbytes;
    return proto_send(sv->sock, NULL, 0, &h, data, proto_track_release, &r->sent);
}

static int send_push(kv_t *kv, kv_server_t *sv, uint64_t version, int batch, const float *grad) {
    return send_piece(kv, sv, version, batch, grad, sv->lo, sv->hi);
}

/* Pushes the pieces of server sv's range that lie in [from, hi) and were not pushed
 * yet, last first: pieces of kv->slice floats (the servers' slices of the range), or the
 * whole range as one. */
static int send_pieces_from(kv_t *kv, kv_server_t *sv, size_t from) {
    int whole = kv->slice == 0 || sv->hi - sv->lo <= kv->slice;
    while (sv->unsent_hi > sv->lo) {
        size_t a = whole ? sv->lo : sv->lo + (sv->unsent_hi - sv->lo - 1) / kv->slice * kv->slice;
        if (a < from) return 0;
        int rc = send_piece(kv, sv, kv->pp.version, kv->pp.batch, kv->pp.grad, a, sv->unsent_hi);
        if (rc) return rc;
        sv->unsent_hi = a;
    }
    return 0;
}

int kv_pushpull_begin(kv_t *kv, uint64_t version, int batch, const float *grad, float *dst) {
    int ts = start(kv, CH_PARAMS, KV_PUSHPULL, 1);
    kv->ch[CH_PARAMS].dst = dst;
    kv->pp.open = 1;
    kv->pp.version = version;
    kv->pp.batch = batch;
    kv->pp.grad = grad;
    for (int s = 0; s < kv->S; s++) {
        /* the pull first: it is held, so the step the push completes finds it waiting and
         * streams the new parameters to it slice by slice as they are computed */
        kv->srv[s].unsent_hi = kv->srv[s].hi;
        int rc = send_pull(kv, &kv->srv[s], kv->ch[CH_PARAMS].seq, PROTO_WHICH_PARAMS, version + 1);
        if (rc) return rc;
    }
    return ts;
}

int kv_push_final(kv_t *kv, size_t from) {
    if (!kv->pp.open) return mimic_err(MIMIC_EINVAL, "kv_push_final: no push-pull under way");
    for (int s = kv->S - 1; s >= 0; s--) { /* backward finishes the vector from its end */
        int rc = send_pieces_from(kv, &kv->srv[s], from);
        if (rc) return rc;
    }
    return 0;
}

int kv_pushpull_end(kv_t *kv) {
    int rc = kv_push_final(kv, 0);
    kv->pp.open = 0;
    return rc ? rc : ts_of(kv->ch[CH_PARAMS].seq);
}

int kv_pull(kv_t *kv, int which, uint64_t min_version, float *dst) {
    int c = which == PROTO_WHICH_EMA ? CH_EMA : CH_PARAMS;
    int ts = start(kv, c, KV_PULL, 1);
    kv->ch[c].dst = dst;
    for (int s = 0; s < kv->S; s++) {
        int rc = send_pull(kv, &kv->srv[s], kv->ch[c].seq, which, min_version);
        if (rc) return rc;
    }
    return ts;
}

int kv_push(kv_t *kv, uint64_t version, int batch, const float *grad) {
    int ts = start(kv, CH_PARAMS, KV_PUSH, 1);
    for (int s = 0; s < kv->S; s++) {
        int rc = send_push(kv, &kv->srv[s], version, batch, grad);
        if (rc) return rc;
    }
    return ts;
}

int kv_pushpull(kv_t *kv, uint64_t version, int batch, const float *grad, float *dst) {
    int ts = kv_pushpull_begin(kv, version, batch, grad, dst);
    return ts < 0 ? ts : kv_pushpull_end(kv);
}

/* Sends n x dim keys zero-copy on channel c (QUEUE_PUSH or KEYS_PUSH). */
static int send_keys(kv_t *kv, int c, uint64_t step, const float *keys, size_t n, size_t dim) {
    proto_hdr_t h;
    kv_req_t *r = &kv->ch[c];
    if (c == CH_QPUSH)
        proto_make_queue_push(&h, kv->id, r->seq, step, n, dim);
    else
        proto_make_keys_push(&h, kv->id, r->seq, step, n, dim);
    if (n == 0) return proto_send(kv->srv[KV_KEYS_SERVER].sock, NULL, 0, &h, NULL, NULL, NULL);
    proto_track_hold(&r->sent);
    kv->bytes_out += h.nbytes;
    return proto_send(kv->srv[KV_KEYS_SERVER].sock, NULL, 0, &h, keys, proto_track_release,
                      &r->sent);
}

int kv_queue_push(kv_t *kv, uint64_t step, const float *keys, size_t n, size_t dim) {
    if (dim == 0) return mimic_err(MIMIC_EINVAL, "kv_queue_push: keys of 0 floats");
    int ts = start(kv, CH_QPUSH, KV_QPUSH, 0);
    int rc = send_keys(kv, CH_QPUSH, step, keys, n, dim);
    return rc ? rc : ts;
}

/* A request on channel c (answered by the keys server) whose reply lands as rows of dim
 * floats in dst (at most cap rows); *ts gets its timestamp. */
static kv_req_t *start_rows(kv_t *kv, int c, int kind, float *dst, size_t cap, size_t dim,
                            int *ts) {
    *ts = start(kv, c, kind, 0);
    kv_req_t *r = &kv->ch[c];
    r->dst = dst;
    r->cap = cap;
    r->dim = dim;
    return r;
}

int kv_queue_pull(kv_t *kv, uint64_t step, float *ring, size_t capacity, size_t dim,
                  kv_queue_info_t *info) {
    if (capacity == 0 || dim == 0)
        return mimic_err(MIMIC_EINVAL, "kv_queue_pull: a ring of %zu x %zu", capacity, dim);
    int ts;
    kv_req_t *r = start_rows(kv, CH_QPULL, KV_QPULL, ring, capacity, dim, &ts);
    r->qinfo = info;
    proto_hdr_t h;
    proto_make_queue_pull(&h, kv->id, r->seq, step, kv->qversion);
    int rc = proto_send(kv->srv[KV_KEYS_SERVER].sock, NULL, 0, &h, NULL, NULL, NULL);
    return rc ? rc : ts;
}

int kv_keys_exchange(kv_t *kv, uint64_t step, const float *keys, size_t n, size_t dim, float *all,
                     size_t cap_rows, kv_keys_info_t *info) {
    if (dim == 0) return mimic_err(MIMIC_EINVAL, "kv_keys_exchange: keys of 0 floats");
    int ts;
    kv_req_t *r = start_rows(kv, CH_KEYS, KV_KEYS, all, cap_rows, dim, &ts);
    r->kinfo = info;
    int rc = send_keys(kv, CH_KEYS, step, keys, n, dim);
    return rc ? rc : ts;
}

/* Records why the request on channel c failed (kv_wait returns it). */
__attribute__((format(printf, 3, 4))) static void req_fail(kv_t *kv, int c, const char *fmt, ...) {
    kv_req_t *r = &kv->ch[c];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    r->failed = 1;
    for (int s = 0; s < kv->S; s++)
        kv->srv[s].answered[c] = 1;
}

static const char *kind_name(int kind) {
    static const char *const names[] = {"?",          "PULL",       "PUSH",     "PUSH+PULL",
                                        "QUEUE_PUSH", "QUEUE_PULL", "KEYS_PUSH"};
    return kind >= 0 && kind <= KV_KEYS ? names[kind] : "?";
}

/* A PULL_REPLY (or one slice of it) on channel c from server s. */
static void land_pull(kv_t *kv, int c, int s, const proto_msg_t *m) {
    kv_server_t *sv = &kv->srv[s];
    const proto_hdr_t *h = &m->hdr;
    if ((int)h->dtype != kv->wire) {
        req_fail(kv, c, "server %d (%s): PULL_REPLY of %s values, asked for %s", s, sv->endpoint,
                 proto_dtype_name(h->dtype), proto_dtype_name(kv->wire));
        return;
    }
    size_t count = h->hi - h->lo;
    if (h->lo < sv->lo || h->hi > sv->hi || h->lo >= h->hi ||
        proto_msg_size(m) != count * proto_dtype_size(kv->wire) ||
        sv->got[c] + count > sv->hi - sv->lo || (sv->got[c] && h->step != sv->version[c])) {
        req_fail(kv, c,
                 "server %d (%s): PULL_REPLY range [%llu,%llu) (version %llu) does not fit its "
                 "range [%zu,%zu)",
                 s, sv->endpoint, (unsigned long long)h->lo, (unsigned long long)h->hi,
                 (unsigned long long)h->step, sv->lo, sv->hi);
        return;
    }
    if (kv->wire == PROTO_DT_BF16)
        wire_from_bf16(kv->ch[c].dst + h->lo, proto_msg_data(m), count);
    else
        memcpy(kv->ch[c].dst + h->lo, proto_msg_data(m), proto_msg_size(m));
    sv->got[c] += count;
    sv->version[c] = h->step;
}

/* A QUEUE_REPLY: the rows land at their ring slots. */
static void land_queue(kv_t *kv, const proto_msg_t *m) {
    kv_req_t *r = &kv->ch[CH_QPULL];
    const int64_t *a = m->hdr.a;
    size_t count = (size_t)a[PROTO_QREP_COUNT], slot = (size_t)a[PROTO_QREP_SLOT];
    if ((size_t)a[PROTO_QREP_DIM] != r->dim || (size_t)a[PROTO_QREP_CAPACITY] != r->cap) {
        req_fail(kv, CH_QPULL,
                 "server 0 (%s): the queue is %lld x %lld floats, the local ring %zu x %zu",
                 kv->srv[0].endpoint, (long long)a[PROTO_QREP_CAPACITY],
                 (long long)a[PROTO_QREP_DIM], r->cap, r->dim);
        return;
    }
    const float *rows = proto_msg_data(m);
    size_t first = count < r->cap - slot ? count : r->cap - slot;
    if (first) memcpy(r->dst + slot * r->dim, rows, first * r->dim * sizeof(float));
    if (count > first)
        memcpy(r->dst, rows + first * r->dim, (count - first) * r->dim * sizeof(float));
    uint64_t version = (uint64_t)a[PROTO_QREP_VERSION];
    kv->qversion = version;
    kv->srv[KV_KEYS_SERVER].version[CH_QPULL] = version;
    if (r->qinfo)
        *r->qinfo = (kv_queue_info_t){.version = version,
                                      .step = m->hdr.step,
                                      .rows = version < r->cap ? (size_t)version : r->cap,
                                      .received = count,
                                      .bytes = proto_msg_size(m)};
}

/* A KEYS_REPLY: every worker's keys of the step. */
static void land_keys(kv_t *kv, const proto_msg_t *m) {
    kv_req_t *r = &kv->ch[CH_KEYS];
    const int64_t *a = m->hdr.a;
    size_t count = (size_t)a[PROTO_KREP_COUNT];
    if ((size_t)a[PROTO_KREP_DIM] != r->dim || count > r->cap) {
        req_fail(kv, CH_KEYS,
                 "server 0 (%s): KEYS_REPLY of %zu x %lld floats does not fit %zu x %zu",
                 kv->srv[0].endpoint, count, (long long)a[PROTO_KREP_DIM], r->cap, r->dim);
        return;
    }
    if (count) memcpy(r->dst, proto_msg_data(m), proto_msg_size(m));
    kv->srv[KV_KEYS_SERVER].version[CH_KEYS] = m->hdr.step;
    if (r->kinfo)
        *r->kinfo = (kv_keys_info_t){.step = m->hdr.step,
                                     .count = count,
                                     .offset = (size_t)a[PROTO_KREP_OFFSET],
                                     .mine = (size_t)a[PROTO_KREP_MINE],
                                     .workers = (int)a[PROTO_KREP_WORKERS],
                                     .bytes = proto_msg_size(m)};
}

/* One reply from server s: find the request it answers and land it. */
static void take_reply(kv_t *kv, int s, proto_msg_t *m) {
    kv_server_t *sv = &kv->srv[s];
    const proto_hdr_t *h = &m->hdr;
    int c = 0;
    while (c < CH_COUNT && !(kv->ch[c].seq == h->seq && h->seq != 0))
        c++;
    if (c == CH_COUNT || sv->answered[c]) return; /* a late answer to an abandoned request */
    kv_req_t *r = &kv->ch[c];
    if (h->type == PROTO_ERROR) {
        req_fail(kv, c, "server %d (%s) refused %s: %s", s, sv->endpoint, kind_name(r->kind),
                 h->str);
        return;
    }
    int pulls = r->kind == KV_PULL || r->kind == KV_PUSHPULL;
    int pushes = r->kind == KV_PUSH || r->kind == KV_PUSHPULL;
    if (c <= CH_EMA && (h->type == PROTO_PUSH_ACK || h->type == PROTO_ACK) && pushes) {
        sv->push_acks++;
        if (!pulls) sv->version[c] = h->step;
    } else if (c <= CH_EMA && h->type == PROTO_PULL_REPLY && pulls) {
        land_pull(kv, c, s, m);
    } else if (c == CH_QPUSH && h->type == PROTO_ACK) {
        sv->version[c] = h->step;
    } else if (c == CH_QPULL && h->type == PROTO_QUEUE_REPLY) {
        land_queue(kv, m);
    } else if (c == CH_KEYS && h->type == PROTO_KEYS_REPLY) {
        land_keys(kv, m);
    } else {
        req_fail(kv, c, "server %d (%s) answered %s with %s", s, sv->endpoint, kind_name(r->kind),
                 proto_type_name(h->type));
        return;
    }
    if (r->failed) return;
    if (c <= CH_EMA)
        sv->answered[c] =
            (!pushes || sv->push_acks >= sv->pushes) && (!pulls || sv->got[c] == sv->hi - sv->lo);
    else
        sv->answered[c] = 1;
}

/* The channel whose request has timestamp ts, or -1. */
static int channel_of(const kv_t *kv, int ts) {
    for (int c = 0; c < CH_COUNT; c++)
        if (kv->ch[c].seq && ts_of(kv->ch[c].seq) == ts) return c;
    return -1;
}

int kv_wait(kv_t *kv, int ts, int timeout_ms, uint64_t *version) {
    int c = channel_of(kv, ts);
    if (c < 0)
        return mimic_err(MIMIC_EINVAL, "kv_wait: timestamp %d is not a request in flight", ts);
    kv_req_t *r = &kv->ch[c];
    double deadline = timeout_ms < 0 ? 0 : mimic_now() + timeout_ms / 1000.0;
    zmq_pollitem_t items[KV_MAX_SERVERS];
    for (;;) {
        int pending = 0;
        for (int s = 0; s < kv->S; s++) {
            items[s] = (zmq_pollitem_t){kv->srv[s].sock, 0, ZMQ_POLLIN, 0};
            pending += !kv->srv[s].answered[c];
        }
        if (!pending) break;
        long wait_ms = -1;
        if (timeout_ms >= 0) {
            wait_ms = (long)((deadline - mimic_now()) * 1000.0);
            if (wait_ms <= 0) return MIMIC_ETIMEOUT;
        }
        /* a signal (EINTR) does not fail the wait: the step finishes and the training
         * loop then sees the stop flag, so a SIGTERM leaves the cluster cleanly */
        int n = proto_poll(items, kv->S, wait_ms);
        if (n < 0) return mimic_err(MIMIC_EIO, "kv: poll failed: %s", zmq_strerror(zmq_errno()));
        for (int s = 0; s < kv->S; s++) {
            if (!(items[s].revents & ZMQ_POLLIN)) continue;
            proto_msg_t m;
            int rc = proto_recv(kv->srv[s].sock, &m, kv->max_payload, 0);
            if (rc == 0) {
                kv->bytes_in += m.hdr.nbytes;
                take_reply(kv, s, &m);
            } else if (rc == MIMIC_EFORMAT) { /* which request it answered is unknown */
                rc = mimic_err(MIMIC_EPEER, "server %d (%s): malformed reply: %s", s,
                               kv->srv[s].endpoint, m.why);
                proto_msg_close(&m);
                return rc;
            }
            proto_msg_close(&m);
        }
    }
    if (r->failed) return mimic_err(MIMIC_EPEER, "%s", r->why);
    int pushed =
        r->kind == KV_PUSH || r->kind == KV_PUSHPULL || r->kind == KV_QPUSH || r->kind == KV_KEYS;
    if (pushed && proto_track_wait(&r->sent, timeout_ms < 0 ? 60000 : timeout_ms))
        return mimic_err(MIMIC_ETIMEOUT, "kv: ZeroMQ still holds the pushed %s",
                         r->kind == KV_PUSH || r->kind == KV_PUSHPULL ? "gradient" : "keys");
    if (version) {
        uint64_t v = UINT64_MAX;
        for (int s = 0; s < kv->S; s++)
            if ((c <= CH_EMA || s == KV_KEYS_SERVER) && kv->srv[s].version[c] < v)
                v = kv->srv[s].version[c];
        *version = v;
    }
    return 0;
}
