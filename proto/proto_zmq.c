/* proto_zmq.c — sending and receiving proto messages on ZeroMQ sockets: the identity
 * envelope of ROUTER sockets, zero-copy payload frames, draining of malformed
 * multiparts, ERROR replies and completion tracking of caller-kept buffers. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "proto.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* 1 for a ROUTER socket (messages carry an identity envelope), 0 otherwise, <0 error. */
static int sock_is_router(void *sock) {
    int type = 0;
    size_t sz = sizeof type;
    if (zmq_getsockopt(sock, ZMQ_TYPE, &type, &sz) != 0) return MIMIC_EIO;
    return type == ZMQ_ROUTER;
}

static int send_err(const char *what) {
    int e = zmq_errno();
    if (e == EAGAIN) return mimic_err(MIMIC_ETIMEOUT, "proto_send: %s: send timed out", what);
    if (e == EHOSTUNREACH)
        return mimic_err(MIMIC_EPEER, "proto_send: %s: no peer with that identity", what);
    return mimic_err(MIMIC_EIO, "proto_send: %s: %s", what, zmq_strerror(e));
}

static int send_bytes(void *sock, const void *buf, size_t len, int flags) {
    for (;;) {
        if (zmq_send(sock, buf, len, flags) >= 0) return 0;
        if (zmq_errno() != EINTR) return -1;
    }
}

static int send_msg(void *sock, zmq_msg_t *m, int flags) {
    for (;;) {
        if (zmq_msg_send(m, sock, flags) >= 0) return 0;
        if (zmq_errno() != EINTR) return -1;
    }
}

int proto_send(void *sock, const void *identity, size_t idlen, const proto_hdr_t *h,
               const void *payload, proto_free_fn *free_fn, void *hint) {
    uint8_t hbuf[PROTO_HDR_MAX];
    char why[PROTO_WHY_MAX] = "n exceeds the address space";
    size_t hlen = 0;
    zmq_msg_t pm;
    int pm_live = 0, rc;
    if (!sock || !h) {
        rc = mimic_err(MIMIC_EINVAL, "proto_send: no socket or header");
        goto fail;
    }
    if (h->nbytes > 0 && !payload) {
        rc = mimic_err(MIMIC_EINVAL, "proto_send: %s header says n = %" PRIu64 " but no payload",
                       proto_type_name(h->type), h->nbytes);
        goto fail;
    }
    if (h->nbytes > SIZE_MAX ||
        proto_encode_hdr(h, hbuf, sizeof hbuf, &hlen, why, sizeof why) != 0) {
        rc = mimic_err(MIMIC_EINVAL, "proto_send: refusing to send %s: %s",
                       proto_type_name(h->type), why);
        goto fail;
    }
    int router = sock_is_router(sock);
    if (router < 0) {
        rc = mimic_err(MIMIC_EIO, "proto_send: not a socket: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (router && (!identity || idlen == 0 || idlen > PROTO_ID_MAX)) {
        rc = mimic_err(MIMIC_EINVAL, "proto_send: ROUTER socket needs a 1..%d byte identity",
                       PROTO_ID_MAX);
        goto fail;
    }
    if (h->nbytes > 0) {
        /* From here the zmq_msg_t owns the payload: closing it runs free_fn. */
        if (zmq_msg_init_data(&pm, (void *)payload, (size_t)h->nbytes, free_fn, hint) != 0) {
            rc = mimic_err(MIMIC_ENOMEM, "proto_send: zmq_msg_init_data failed");
            goto fail;
        }
        pm_live = 1;
    }
    /* Only the first frame can block or fail on a full pipe; later parts of a
     * multipart are always accepted, so the message is never left half-sent. */
    if (router && send_bytes(sock, identity, idlen, ZMQ_SNDMORE) != 0) {
        rc = send_err("identity frame");
        goto fail;
    }
    if (send_bytes(sock, hbuf, hlen, pm_live ? ZMQ_SNDMORE : 0) != 0) {
        rc = send_err("header frame");
        goto fail;
    }
    if (pm_live) {
        if (send_msg(sock, &pm, 0) != 0) {
            rc = send_err("payload frame");
            goto fail;
        } /* ZeroMQ owns the payload now */
    } else if (free_fn && payload) {
        free_fn((void *)payload, hint); /* nothing to send, ownership still moved */
    }
    return 0;
fail:
    if (pm_live)
        zmq_msg_close(&pm); /* runs free_fn */
    else if (free_fn && payload)
        free_fn((void *)payload, hint);
    return rc;
}

/* ---- receiving --------------------------------------------------------------------- */

__attribute__((format(printf, 2, 3))) static int recv_fail(proto_msg_t *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->why, sizeof out->why, fmt, ap);
    va_end(ap);
    return MIMIC_EFORMAT;
}

/* Waits until sock is readable: 0, MIMIC_ETIMEOUT or MIMIC_EIO. */
static int wait_readable(void *sock, int timeout_ms, proto_msg_t *out) {
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    double deadline = mimic_now() + (timeout_ms > 0 ? timeout_ms : 0) * 1e-3;
    for (;;) {
        long left = -1;
        if (timeout_ms >= 0) {
            double rest = deadline - mimic_now();
            left = rest > 0 ? (long)(rest * 1e3 + 0.5) : 0;
        }
        int rc = zmq_poll(&item, 1, left);
        if (rc > 0) return 0;
        if (rc == 0) {
            snprintf(out->why, sizeof out->why, "no message within %d ms", timeout_ms);
            return MIMIC_ETIMEOUT;
        }
        if (zmq_errno() != EINTR) {
            snprintf(out->why, sizeof out->why, "zmq_poll: %s", zmq_strerror(zmq_errno()));
            return MIMIC_EIO;
        }
    }
}

/* Receives the next frame into m (initialised here); -1 on a socket error. */
static int recv_frame(void *sock, zmq_msg_t *m, int flags) {
    zmq_msg_init(m);
    for (;;) {
        if (zmq_msg_recv(m, sock, flags) >= 0) return 0;
        if (zmq_errno() != EINTR) {
            zmq_msg_close(m);
            return -1;
        }
    }
}

/* Discards the remaining frames of the current multipart. ZeroMQ delivers multiparts
 * atomically, so every remaining frame is already here and this never blocks. */
static void drain(void *sock) {
    int more = 1;
    size_t more_sz = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &more_sz) == 0 && more) {
        zmq_msg_t m;
        if (recv_frame(sock, &m, 0) != 0) return;
        zmq_msg_close(&m);
    }
}

static void free_copy(void *data, void *hint) {
    mimic_free(data);
}

/* ZeroMQ may hand over a small frame at any offset inside its receive buffer; typed
 * payloads are re-homed (a copy of a small frame) so that casts to float* are legal. */
static int align_payload(proto_msg_t *m) {
    size_t es = proto_dtype_size(m->hdr.dtype), n = zmq_msg_size(&m->payload);
    const void *d = zmq_msg_data(&m->payload);
    if (es <= 1 || (uintptr_t)d % es == 0) return 0;
    void *copy = mimic_alloc(n);
    if (!copy) {
        snprintf(m->why, sizeof m->why, "out of memory aligning a %zu byte payload", n);
        return MIMIC_ENOMEM;
    }
    memcpy(copy, d, n);
    zmq_msg_close(&m->payload);
    if (zmq_msg_init_data(&m->payload, copy, n, free_copy, NULL) != 0) {
        mimic_free(copy);
        m->has_payload = 0;
        snprintf(m->why, sizeof m->why, "zmq_msg_init_data failed");
        return MIMIC_ENOMEM;
    }
    return 0;
}

static void msg_reset(proto_msg_t *m) {
    proto_hdr_init(&m->hdr, PROTO_INVALID, PROTO_ID_NONE);
    m->hdr.version = 0;
    m->idlen = 0;
    m->user[0] = '\0';
    m->has_payload = 0;
    m->why[0] = '\0';
}

/* The authenticated peer of a frame: the ZAP User-Id CURVE gave its connection. */
static void peer_user(zmq_msg_t *f, proto_msg_t *out) {
    const char *u = zmq_msg_gets(f, "User-Id");
    if (u) snprintf(out->user, sizeof out->user, "%s", u);
}

/* Reads identity (ROUTER only) and header frames; returns 0, MIMIC_EFORMAT (rest of the
 * multipart still pending) or MIMIC_EIO. *more says whether frames follow. */
static int recv_head(void *sock, int router, proto_msg_t *out, size_t max_payload, int *more) {
    zmq_msg_t f;
    if (router) {
        if (recv_frame(sock, &f, ZMQ_DONTWAIT) != 0) goto io;
        size_t n = zmq_msg_size(&f);
        out->idlen = n < PROTO_ID_MAX ? n : PROTO_ID_MAX;
        memcpy(out->id, zmq_msg_data(&f), out->idlen);
        *more = zmq_msg_more(&f);
        zmq_msg_close(&f);
        if (!*more) return recv_fail(out, "message has an identity frame but no header frame");
    }
    if (recv_frame(sock, &f, router ? 0 : ZMQ_DONTWAIT) != 0) goto io;
    peer_user(&f, out); /* a ROUTER's own identity frame carries no metadata */
    *more = zmq_msg_more(&f);
    size_t hlen = zmq_msg_size(&f);
    int rc;
    if (hlen > PROTO_HDR_MAX)
        rc = recv_fail(out, "header frame is %zu bytes, limit %d", hlen, PROTO_HDR_MAX);
    else
        rc = proto_decode_hdr(&out->hdr, zmq_msg_data(&f), hlen, out->why, sizeof out->why);
    zmq_msg_close(&f);
    if (rc) return rc;
    /* Refuse an oversized payload from the header alone, before touching its frame. */
    if (out->hdr.nbytes > max_payload)
        return recv_fail(out,
                         "header field 'n': payload of %" PRIu64 " bytes exceeds the limit of %zu",
                         out->hdr.nbytes, max_payload);
    return 0;
io:;
    int e = zmq_errno();
    snprintf(out->why, sizeof out->why, "zmq_msg_recv: %s", zmq_strerror(e));
    return e == EAGAIN ? MIMIC_ETIMEOUT : MIMIC_EIO;
}

int proto_recv(void *sock, proto_msg_t *out, size_t max_payload, int timeout_ms) {
    if (!out) return MIMIC_EINVAL;
    msg_reset(out);
    if (!sock) return MIMIC_EINVAL;
    int router = sock_is_router(sock);
    if (router < 0) {
        snprintf(out->why, sizeof out->why, "not a socket: %s", zmq_strerror(zmq_errno()));
        return MIMIC_EIO;
    }
    int rc = wait_readable(sock, timeout_ms, out);
    if (rc) return rc;
    int more = 0;
    rc = recv_head(sock, router, out, max_payload, &more);
    if (rc == MIMIC_EIO || rc == MIMIC_ETIMEOUT) return rc;
    if (rc) {
        drain(sock);
        return rc;
    }
    size_t plen = 0;
    if (more) {
        if (recv_frame(sock, &out->payload, 0) != 0) {
            snprintf(out->why, sizeof out->why, "zmq_msg_recv: %s", zmq_strerror(zmq_errno()));
            return MIMIC_EIO;
        }
        out->has_payload = 1;
        plen = zmq_msg_size(&out->payload);
        if (zmq_msg_more(&out->payload)) {
            drain(sock);
            proto_msg_close(out);
            return recv_fail(out, "message has more than %d frames", router ? 3 : 2);
        }
    }
    rc = proto_validate(&out->hdr, plen, max_payload, out->why, sizeof out->why);
    if (rc == 0 && plen == 0) proto_msg_close(out); /* an empty payload frame is no payload */
    if (rc == 0 && out->has_payload) rc = align_payload(out);
    if (rc) proto_msg_close(out);
    return rc;
}

const void *proto_msg_data(const proto_msg_t *m) {
    if (!m || !m->has_payload) return NULL;
    return zmq_msg_data((zmq_msg_t *)&m->payload);
}

size_t proto_msg_size(const proto_msg_t *m) {
    if (!m || !m->has_payload) return 0;
    return zmq_msg_size((zmq_msg_t *)&m->payload);
}

void proto_msg_close(proto_msg_t *m) {
    if (!m || !m->has_payload) return;
    zmq_msg_close(&m->payload);
    m->has_payload = 0;
}

int proto_reply_error(void *sock, int32_t self, const proto_msg_t *req, int code, const char *why) {
    proto_hdr_t h;
    if (!req) return mimic_err(MIMIC_EINVAL, "proto_reply_error: no request");
    int type = req->hdr.type;
    proto_make_error(&h, self, req->hdr.seq, req->hdr.step, code < 0 ? code : MIMIC_EPEER,
                     (type > PROTO_INVALID && type < PROTO_TYPE_COUNT) ? type : 0,
                     why && *why ? why : mimic_strerror(code));
    return proto_send(sock, req->idlen ? req->id : NULL, req->idlen, &h, NULL, NULL, NULL);
}

/* ---- event-loop sockets ------------------------------------------------------------- */

static int router_options(void *sock, const proto_router_opts_t *o) {
    int one = 1, zero = 0, linger = o->linger_ms;
    int64_t max_msg = o->max_msg;
    return zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
           zmq_setsockopt(sock, ZMQ_SNDTIMEO, &zero, sizeof zero) ||
           zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) ||
           zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg);
}

/* The endpoint peers connect to: the bound one, unless it is a wildcard address, which
 * nobody can connect to from elsewhere; then this host's name, or a warning. */
static int advertise(const char *bound, const proto_router_opts_t *o, char *endpoint, size_t cap) {
    int wild = strstr(bound, "://0.0.0.0:") || strstr(bound, "://*:");
    int n;
    if (wild && o->advertise_hostname) {
        char host[200];
        if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "127.0.0.1");
        host[sizeof host - 1] = 0;
        n = snprintf(endpoint, cap, "tcp://%s:%s", host, strrchr(bound, ':') + 1);
    } else {
        if (wild)
            mimic_warn("advertising %s, which other hosts cannot connect to; set "
                       "cluster.bind_host to this host's address",
                       bound);
        n = snprintf(endpoint, cap, "%s", bound);
    }
    if (n < 0 || (size_t)n >= cap)
        return mimic_err(MIMIC_EINVAL, "endpoint of %s does not fit in %zu bytes", bound, cap);
    return 0;
}

int proto_router_bind(void **out, void *zctx, const proto_router_opts_t *o, char *endpoint,
                      size_t cap) {
    char addr[300], bound[256];
    size_t len = sizeof bound;
    int rc, zero = 0;
    *out = NULL;
    if (!o->host || !o->host[0]) return mimic_err(MIMIC_EINVAL, "cluster.bind_host is empty");
    void *sock = zmq_socket(zctx, ZMQ_ROUTER);
    if (!sock) return mimic_err(MIMIC_EIO, "zmq_socket: %s", zmq_strerror(zmq_errno()));
    if (router_options(sock, o)) {
        rc = mimic_err(MIMIC_EIO, "ROUTER socket options: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (o->curve && (rc = curve_serve(o->curve, zctx, sock))) goto fail;
    if (!o->curve && strncmp(o->host, "127.", 4) != 0 && strcmp(o->host, "localhost") != 0 &&
        strcmp(o->host, "::1") != 0)
        mimic_warn("%s: cluster.curve is off and %s is not a loopback address: anyone who "
                   "reaches it can join, read and write the model, unencrypted "
                   "(docs/security.md)",
                   o->who ? o->who : "this process", o->host);
    if (o->port)
        snprintf(addr, sizeof addr, "tcp://%s:%d", o->host, o->port);
    else
        snprintf(addr, sizeof addr, "tcp://%s:*", o->host);
    if (zmq_bind(sock, addr) != 0) {
        rc = mimic_err(MIMIC_EINVAL, "cluster.bind_host: cannot bind %s: %s", addr,
                       zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, bound, &len) != 0) {
        rc = mimic_err(MIMIC_EIO, "ZMQ_LAST_ENDPOINT: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if ((rc = advertise(bound, o, endpoint, cap))) goto fail;
    *out = sock;
    return 0;
fail:
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(sock);
    return rc;
}

int proto_poll(zmq_pollitem_t *items, int n, long timeout_ms) {
    int rc = zmq_poll(items, n, timeout_ms);
    if (rc >= 0) return rc;
    if (zmq_errno() != EINTR) return MIMIC_EIO;
    for (int i = 0; i < n; i++) /* zmq_poll leaves them as they were */
        items[i].revents = 0;
    return 0;
}

int proto_recv_burst(void *sock, int max, size_t max_payload, proto_burst_fn *fn, void *ctx) {
    int k = 0;
    while (k < max) {
        proto_msg_t m;
        int rc = proto_recv(sock, &m, max_payload, 0), stop = 0;
        if (rc != MIMIC_ETIMEOUT) {
            k++;
            stop = fn(ctx, sock, &m, rc);
        }
        proto_msg_close(&m);
        if (stop || rc == MIMIC_ETIMEOUT || rc == MIMIC_EIO) break;
    }
    return k;
}

/* ---- completion tracking ------------------------------------------------------------ */

void proto_track_release(void *data, void *hint) {
    proto_track_t *t = hint;
    atomic_fetch_sub(&t->inflight, 1);
}

int proto_track_wait(proto_track_t *t, int timeout_ms) {
    double deadline = mimic_now() + timeout_ms * 1e-3;
    struct timespec nap = {0, 20000}; /* 20 us: releases come from ZeroMQ's I/O thread */
    while (atomic_load(&t->inflight) > 0) {
        if (timeout_ms >= 0 && mimic_now() > deadline)
            return mimic_err(MIMIC_ETIMEOUT, "proto_track_wait: %d sends still in flight",
                             atomic_load(&t->inflight));
        nanosleep(&nap, NULL);
    }
    return 0;
}
