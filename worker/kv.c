#include "kv.h"

#include "common.h"
#include "keyrange.h"
#include "proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KV_MAX_SERVERS 64

enum { KV_PULL = 1, KV_PUSH, KV_PUSHPULL };

typedef struct {
    void *sock;
    char endpoint[256];
    size_t lo, hi;
    int answered;   /* for the request in flight */
    size_t got;     /* bytes of a pull's reply received so far (it may come in slices) */
    int push_acked; /* the push of the request in flight was acknowledged */
    uint64_t version;
} kv_server_t;

struct kv {
    kv_server_t srv[KV_MAX_SERVERS];
    int S;
    int32_t id;
    size_t max_payload;
    uint64_t seq;       /* last request's sequence number = its timestamp */
    int kind;           /* KV_PULL, KV_PUSH or KV_PUSHPULL: the request in flight */
    float *pull_dst;    /* where a pull's replies land */
    proto_track_t sent; /* zero-copy push buffers still held by ZeroMQ */
};

int kv_new(kv_t **out, void *zctx, const char *endpoints, int nservers, size_t total, int32_t my_id,
           size_t max_payload) {
    *out = NULL;
    if (nservers < 1 || nservers > KV_MAX_SERVERS)
        return mimic_err(MIMIC_EINVAL, "kv: %d servers (1..%d supported)", nservers,
                         KV_MAX_SERVERS);
    kv_t *kv = calloc(1, sizeof *kv);
    if (!kv) return mimic_err(MIMIC_ENOMEM, "kv: out of memory");
    kv->S = nservers;
    kv->id = my_id;
    kv->max_payload = max_payload;
    const char *p = endpoints;
    int rc = 0;
    for (int s = 0; s < nservers; s++) {
        kv_server_t *sv = &kv->srv[s];
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        if (n == 0 || n >= sizeof sv->endpoint) {
            rc = mimic_err(MIMIC_EFORMAT, "kv: server list '%s' has no endpoint %d", endpoints, s);
            goto fail;
        }
        memcpy(sv->endpoint, p, n);
        sv->endpoint[n] = 0;
        p += n;
        keyrange_of(total, nservers, s, &sv->lo, &sv->hi);
        sv->sock = zmq_socket(zctx, ZMQ_DEALER);
        int linger = 0;
        if (!sv->sock || zmq_setsockopt(sv->sock, ZMQ_LINGER, &linger, sizeof linger) ||
            zmq_connect(sv->sock, sv->endpoint)) {
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

void kv_destroy(kv_t **pkv) {
    if (!pkv || !*pkv) return;
    kv_t *kv = *pkv;
    *pkv = NULL;
    /* Close first: with LINGER 0 ZeroMQ's I/O thread drops what is still queued (a dead
     * server never takes it) and calls proto_track_release for each zero-copy push.
     * Only when all are released may kv (the tracker) and the gradient buffers go. */
    for (int s = 0; s < kv->S; s++)
        if (kv->srv[s].sock) zmq_close(kv->srv[s].sock);
    if (proto_track_wait(&kv->sent, 10000) != 0) {
        mimic_warn("kv: ZeroMQ still holds %d pushes after closing; leaking their tracker",
                   atomic_load(&kv->sent.inflight));
        return; /* freeing it would let the I/O thread write into freed memory */
    }
    free(kv);
}

static int start(kv_t *kv, int kind) {
    kv->seq++;
    kv->kind = kind;
    for (int s = 0; s < kv->S; s++) {
        kv->srv[s].answered = 0;
        kv->srv[s].got = 0;
        kv->srv[s].push_acked = 0;
    }
    return (int)(kv->seq & 0x7fffffff);
}

static int send_pull(kv_t *kv, kv_server_t *sv, int which, uint64_t min_version) {
    proto_hdr_t h;
    proto_make_pull(&h, kv->id, kv->seq, min_version, sv->lo, sv->hi, which);
    return proto_send(sv->sock, NULL, 0, &h, NULL, NULL, NULL);
}

static int send_push(kv_t *kv, kv_server_t *sv, uint64_t version, int batch, const float *grad) {
    proto_hdr_t h;
    proto_make_push(&h, kv->id, kv->seq, version, sv->lo, sv->hi, batch);
    proto_track_hold(&kv->sent);
    return proto_send(sv->sock, NULL, 0, &h, grad + sv->lo, proto_track_release, &kv->sent);
}

int kv_pull(kv_t *kv, int which, uint64_t min_version, float *dst) {
    int ts = start(kv, KV_PULL);
    kv->pull_dst = dst;
    for (int s = 0; s < kv->S; s++) {
        int rc = send_pull(kv, &kv->srv[s], which, min_version);
        if (rc) return rc;
    }
    return ts;
}

int kv_push(kv_t *kv, uint64_t version, int batch, const float *grad) {
    int ts = start(kv, KV_PUSH);
    for (int s = 0; s < kv->S; s++) {
        int rc = send_push(kv, &kv->srv[s], version, batch, grad);
        if (rc) return rc;
    }
    return ts;
}

int kv_pushpull(kv_t *kv, uint64_t version, int batch, const float *grad, float *dst) {
    int ts = start(kv, KV_PUSHPULL);
    kv->pull_dst = dst;
    for (int s = 0; s < kv->S; s++) {
        /* the pull first: it is held, so the step the push completes finds it waiting and
         * streams the new parameters to it slice by slice as they are computed */
        int rc = send_pull(kv, &kv->srv[s], PROTO_WHICH_PARAMS, version + 1);
        if (!rc) rc = send_push(kv, &kv->srv[s], version, batch, grad);
        if (rc) return rc;
    }
    return ts;
}

/* One reply from server s: check it answers the request in flight; land a pull (or
 * one slice of it). */
static int take_reply(kv_t *kv, int s, proto_msg_t *m) {
    kv_server_t *sv = &kv->srv[s];
    const proto_hdr_t *h = &m->hdr;
    const char *what = kv->kind == KV_PULL ? "PULL" : kv->kind == KV_PUSH ? "PUSH" : "PUSH+PULL";
    if (h->seq != kv->seq) return 0; /* a late answer to an abandoned request */
    if (h->type == PROTO_ERROR)
        return mimic_err(MIMIC_EPEER, "server %d (%s) refused %s: %s", s, sv->endpoint, what,
                         h->str);
    int pulls = kv->kind != KV_PUSH, pushes = kv->kind != KV_PULL;
    if ((h->type == PROTO_PUSH_ACK || h->type == PROTO_ACK) && pushes) {
        sv->push_acked = 1;
        if (!pulls) sv->version = h->step;
    } else if (h->type == PROTO_PULL_REPLY && pulls) {
        /* the whole range, or one of the slices a server sends while it updates */
        size_t total = (sv->hi - sv->lo) * sizeof(float);
        if (h->lo < sv->lo || h->hi > sv->hi || h->lo >= h->hi || h->dtype != PROTO_DT_F32 ||
            proto_msg_size(m) != (h->hi - h->lo) * sizeof(float) ||
            sv->got + proto_msg_size(m) > total || (sv->got && h->step != sv->version))
            return mimic_err(MIMIC_EPEER,
                             "server %d (%s): PULL_REPLY range [%llu,%llu) (version %llu) does "
                             "not fit its range [%zu,%zu)",
                             s, sv->endpoint, (unsigned long long)h->lo, (unsigned long long)h->hi,
                             (unsigned long long)h->step, sv->lo, sv->hi);
        memcpy(kv->pull_dst + h->lo, proto_msg_data(m), proto_msg_size(m));
        sv->got += proto_msg_size(m);
        sv->version = h->step;
    } else {
        return mimic_err(MIMIC_EPEER, "server %d (%s) answered %s with %s", s, sv->endpoint, what,
                         proto_type_name(h->type));
    }
    sv->answered =
        (!pushes || sv->push_acked) && (!pulls || sv->got == (sv->hi - sv->lo) * sizeof(float));
    return 0;
}

int kv_wait(kv_t *kv, int ts, int timeout_ms, uint64_t *version) {
    if (ts != (int)(kv->seq & 0x7fffffff))
        return mimic_err(MIMIC_EINVAL, "kv_wait: timestamp %d is not the request in flight", ts);
    double deadline = timeout_ms < 0 ? 0 : mimic_now() + timeout_ms / 1000.0;
    zmq_pollitem_t items[KV_MAX_SERVERS];
    for (;;) {
        int pending = 0;
        for (int s = 0; s < kv->S; s++) {
            items[s] = (zmq_pollitem_t){kv->srv[s].sock, 0, ZMQ_POLLIN, 0};
            pending += !kv->srv[s].answered;
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
            if (rc == 0)
                rc = take_reply(kv, s, &m);
            else if (rc == MIMIC_EFORMAT)
                rc = mimic_err(MIMIC_EPEER, "server %d (%s): malformed reply: %s", s,
                               kv->srv[s].endpoint, m.why);
            proto_msg_close(&m);
            if (rc && rc != MIMIC_ETIMEOUT) return rc;
        }
    }
    if (kv->kind != KV_PULL && proto_track_wait(&kv->sent, timeout_ms < 0 ? 60000 : timeout_ms))
        return mimic_err(MIMIC_ETIMEOUT, "kv: ZeroMQ still holds the pushed gradient");
    if (version) {
        uint64_t v = UINT64_MAX;
        for (int s = 0; s < kv->S; s++)
            if (kv->srv[s].version < v) v = kv->srv[s].version;
        *version = v;
    }
    return 0;
}
