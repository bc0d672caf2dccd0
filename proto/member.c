/* member.c — REGISTER / REGISTER_ACK, heartbeats and LEAVE on the scheduler DEALER.
 * The socket monitor is used only during the join, to resend REGISTER after a
 * reconnection (see member.h). */
#define _POSIX_C_SOURCE 200809L
#include "member.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MEMBER_EP_MAX 256
#define MEMBER_MAX_PAYLOAD (1u << 20) /* REGISTER_ACK may carry server addresses */
#define MEMBER_LINGER_MS 1000
#define MEMBER_LEAVE_WAIT_MS 1000

struct member {
    void *sock;
    void *zctx;
    const curve_t *curve;
    pthread_t beat_thread; /* member_beat_thread: heartbeats on its own connection */
    int beat_running;
    atomic_int beat_stop;
    _Atomic uint64_t beat_step;
    _Atomic int64_t beat_heard_ms; /* the beat thread's last reply from the scheduler */
    char endpoint[MEMBER_EP_MAX];
    int id, role;
    int period_ms;
    uint64_t step, seq;
    char *servers; /* REGISTER_ACK's server endpoints, from str or the payload */
    int64_t token; /* REGISTER_ACK's heartbeat token (0: none given) */
};

static int set_int(void *sock, int opt, int value) {
    return zmq_setsockopt(sock, opt, &value, sizeof value);
}

/* The reconnection watcher of the join: a PAIR reading the DEALER's monitor events. */
typedef struct {
    void *pair;
    int lost; /* a DISCONNECTED was seen since the last CONNECTED */
} join_mon_t;

static int mon_open(join_mon_t *jm, void *zctx, void *sock) {
    char addr[64];
    snprintf(addr, sizeof addr, "inproc://mimic-member-mon-%p", sock);
    jm->lost = 0;
    jm->pair = NULL;
    if (zmq_socket_monitor(sock, addr, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0)
        return -1;
    jm->pair = zmq_socket(zctx, ZMQ_PAIR);
    if (!jm->pair || zmq_connect(jm->pair, addr) != 0) {
        if (jm->pair) zmq_close(jm->pair);
        jm->pair = NULL;
        zmq_socket_monitor(sock, NULL, 0);
        return -1;
    }
    set_int(jm->pair, ZMQ_LINGER, 0);
    return 0;
}

static void mon_close(join_mon_t *jm, void *sock) {
    if (!jm->pair) return;
    zmq_socket_monitor(sock, NULL, 0);
    zmq_close(jm->pair);
    jm->pair = NULL;
}

/* Reads one monitor event (two frames: 6-byte event id + value, then the address).
 * Returns 1 when the connection came back after a loss (REGISTER must be resent). */
static int mon_read(join_mon_t *jm) {
    zmq_msg_t f;
    uint16_t event = 0;
    int more = 1, back = 0, first = 1;
    while (more) {
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, jm->pair, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f);
            return 0;
        }
        if (first && zmq_msg_size(&f) >= sizeof event)
            memcpy(&event, zmq_msg_data(&f), sizeof event);
        first = 0;
        more = zmq_msg_more(&f);
        zmq_msg_close(&f);
    }
    if (event == ZMQ_EVENT_DISCONNECTED) jm->lost = 1;
    if (event == ZMQ_EVENT_CONNECTED) {
        back = jm->lost;
        jm->lost = 0;
    }
    return back;
}

static int send_register(member_t *m, const char *my_endpoint) {
    proto_hdr_t h;
    proto_make_register(&h, PROTO_ID_NONE, ++m->seq, m->role, my_endpoint);
    int rc = proto_send(m->sock, NULL, 0, &h, NULL, NULL, NULL);
    if (rc)
        return mimic_err(rc, "scheduler %s: sending REGISTER failed: %s", m->endpoint,
                         mimic_last_error());
    return 0;
}

/* Handles one message during the join: 1 = REGISTER_ACK received, 0 = keep waiting,
 * < 0 = error (the scheduler refused us). */
static int join_handle(member_t *m, proto_hdr_t *ack_out) {
    proto_msg_t msg;
    int rc = proto_recv(m->sock, &msg, MEMBER_MAX_PAYLOAD, 0);
    int result = 0;
    if (rc == MIMIC_EFORMAT) {
        mimic_warn("scheduler %s: malformed message during REGISTER: %s", m->endpoint, msg.why);
        proto_reply_error(m->sock, PROTO_ID_NONE, &msg, rc, msg.why);
    } else if (rc == MIMIC_EIO) {
        result = mimic_err(MIMIC_EIO, "scheduler %s: receive failed: %s", m->endpoint, msg.why);
    } else if (rc == 0 && msg.hdr.type == PROTO_REGISTER_ACK) {
        m->id = (int)msg.hdr.a[PROTO_RACK_ID];
        m->token = msg.hdr.na > PROTO_RACK_TOKEN ? msg.hdr.a[PROTO_RACK_TOKEN] : 0;
        if (ack_out) *ack_out = msg.hdr;
        /* the endpoints travel in str, or, when longer than PROTO_STR_MAX (many servers),
         * as the u8 payload one a line */
        int in_payload = msg.hdr.dtype == PROTO_DT_U8 && msg.hdr.nbytes > 0;
        size_t len = in_payload ? msg.hdr.nbytes : strlen(msg.hdr.str);
        free(m->servers);
        if (!(m->servers = malloc(len + 1))) {
            result = mimic_err(MIMIC_ENOMEM, "out of memory for the server list");
        } else {
            memcpy(m->servers, in_payload ? proto_msg_data(&msg) : msg.hdr.str, len);
            m->servers[len] = 0;
            for (size_t i = 0; i < len; i++)
                if (m->servers[i] == '\n' || m->servers[i] == 0) m->servers[i] = ' ';
            result = 1;
        }
    } else if (rc == 0 && msg.hdr.type == PROTO_ERROR) {
        result =
            mimic_err(MIMIC_EPEER, "scheduler %s refused REGISTER: %s", m->endpoint, msg.hdr.str);
    } else if (rc == 0) {
        mimic_warn("scheduler %s: ignoring %s before REGISTER_ACK", m->endpoint,
                   proto_type_name(msg.hdr.type));
    }
    proto_msg_close(&msg);
    return result;
}

static int join_wait(member_t *m, join_mon_t *jm, const char *my_endpoint, int timeout_ms,
                     proto_hdr_t *ack_out) {
    double deadline = mimic_now() + (timeout_ms > 0 ? timeout_ms : 0) * 1e-3;
    for (;;) {
        long left = -1;
        if (timeout_ms >= 0) {
            double rest = deadline - mimic_now();
            if (rest <= 0) break;
            left = (long)(rest * 1e3) + 1;
        }
        zmq_pollitem_t items[2] = {{m->sock, 0, ZMQ_POLLIN, 0}, {jm->pair, 0, ZMQ_POLLIN, 0}};
        if (proto_poll(items, jm->pair ? 2 : 1, left) < 0) /* 0 after a signal: go round */
            return mimic_err(MIMIC_EIO, "scheduler %s: zmq_poll: %s", m->endpoint,
                             zmq_strerror(zmq_errno()));
        if (jm->pair && (items[1].revents & ZMQ_POLLIN) && mon_read(jm)) {
            mimic_warn("scheduler %s: reconnected, sending REGISTER again", m->endpoint);
            int rc = send_register(m, my_endpoint);
            if (rc) return rc;
        }
        if (items[0].revents & ZMQ_POLLIN) {
            int rc = join_handle(m, ack_out);
            if (rc) return rc < 0 ? rc : 0;
        }
    }
    return mimic_err(MIMIC_ETIMEOUT,
                     "no REGISTER_ACK from scheduler %s within %d ms (is it running "
                     "and reachable?)",
                     m->endpoint, timeout_ms);
}

int member_join(member_t **out, void *zctx, const curve_t *curve, const char *sched_endpoint,
                int role, const char *my_endpoint, int timeout_ms, proto_hdr_t *ack_out) {
    int rc;
    join_mon_t jm = {0};
    if (!out) return mimic_err(MIMIC_EINVAL, "member_join: no output pointer");
    *out = NULL;
    if (!zctx || !sched_endpoint || !*sched_endpoint)
        return mimic_err(MIMIC_EINVAL, "member_join: no ZeroMQ context or scheduler endpoint");
    if (role != PROTO_ROLE_WORKER && role != PROTO_ROLE_SERVER)
        return mimic_err(MIMIC_EINVAL, "member_join: unknown role %d", role);
    if (role == PROTO_ROLE_SERVER && (!my_endpoint || !*my_endpoint))
        return mimic_err(MIMIC_EINVAL, "member_join: a server must give its bound endpoint");
    if (strlen(sched_endpoint) >= MEMBER_EP_MAX)
        return mimic_err(MIMIC_EINVAL, "member_join: scheduler endpoint '%.64s...' too long",
                         sched_endpoint);
    member_t *m = calloc(1, sizeof *m);
    if (!m) return mimic_err(MIMIC_ENOMEM, "member_join: out of memory");
    snprintf(m->endpoint, sizeof m->endpoint, "%s", sched_endpoint);
    m->role = role;
    m->zctx = zctx;
    m->curve = curve;
    m->id = PROTO_ID_NONE;
    m->period_ms = MEMBER_HEARTBEAT_MS;
    m->sock = zmq_socket(zctx, ZMQ_DEALER);
    if (!m->sock) {
        rc = mimic_err(MIMIC_EIO, "member_join: zmq_socket: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    /* Never block on the scheduler: a full pipe means it stopped reading anyway. */
    set_int(m->sock, ZMQ_SNDTIMEO, 0);
    set_int(m->sock, ZMQ_LINGER, MEMBER_LINGER_MS);
    int64_t max_msg = MEMBER_MAX_PAYLOAD + PROTO_HDR_MAX + 1024;
    zmq_setsockopt(m->sock, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg);
    if ((rc = curve_client(curve, m->sock, NULL))) goto fail;
    if (mon_open(&jm, zctx, m->sock) != 0)
        mimic_warn("scheduler %s: no socket monitor; REGISTER will not be resent on reconnect",
                   m->endpoint);
    if (zmq_connect(m->sock, sched_endpoint) != 0) {
        rc = mimic_err(MIMIC_EINVAL, "scheduler endpoint '%s': %s", sched_endpoint,
                       zmq_strerror(zmq_errno()));
        goto fail;
    }
    if ((rc = send_register(m, my_endpoint))) goto fail;
    if ((rc = join_wait(m, &jm, my_endpoint, timeout_ms, ack_out))) goto fail;
    mon_close(&jm, m->sock);
    *out = m;
    return 0;
fail:
    mon_close(&jm, m->sock);
    if (m->sock) {
        set_int(m->sock, ZMQ_LINGER, 0);
        zmq_close(m->sock);
    }
    free(m);
    return rc;
}

void *member_socket(member_t *m) {
    return m ? m->sock : NULL;
}
int member_id(const member_t *m) {
    return m ? m->id : PROTO_ID_NONE;
}
const char *member_endpoint(const member_t *m) {
    return m ? m->endpoint : "";
}
int64_t member_token(const member_t *m) {
    return m ? m->token : 0;
}

void member_set_heartbeat(member_t *m, int period_ms) {
    if (!m || period_ms <= 0) return;
    m->period_ms = period_ms;
}

void member_set_step(member_t *m, uint64_t step) {
    if (!m) return;
    m->step = step;
    atomic_store(&m->beat_step, step);
}

/* The heartbeat thread: its own DEALER (sockets are not shared across threads), a
 * HEARTBEAT carrying this member's id and REGISTER_ACK's token every period; the
 * scheduler takes it for the member only when both match. */
static void *beat_main(void *arg) {
    member_t *m = arg;
    void *sock = zmq_socket(m->zctx, ZMQ_DEALER);
    if (!sock) return NULL;
    set_int(sock, ZMQ_SNDTIMEO, 0);
    set_int(sock, ZMQ_LINGER, 0);
    int64_t max_msg = PROTO_HDR_MAX + 1024; /* only ACKs come back here */
    zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg);
    if (curve_client(m->curve, sock, NULL) != 0 || zmq_connect(sock, m->endpoint) != 0) {
        zmq_close(sock);
        return NULL;
    }
    uint64_t seq = 0;
    while (!atomic_load(&m->beat_stop)) {
        proto_hdr_t h;
        proto_make_heartbeat(&h, m->id, ++seq, atomic_load(&m->beat_step));
        h.na = PROTO_HB_TOKEN + 1; /* what binds this connection's beats to us */
        h.a[PROTO_HB_TOKEN] = m->token;
        proto_send(sock, NULL, 0, &h, NULL, NULL, NULL); /* a dropped beat is the signal */
        /* the scheduler ACKs every heartbeat: hearing them is how the member knows the
         * scheduler is alive while it waits on something else (member_sched_silence_s) */
        for (int slept = 0; slept < m->period_ms && !atomic_load(&m->beat_stop); slept += 10) {
            zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
            if (proto_poll(&it, 1, 10) <= 0 || !(it.revents & ZMQ_POLLIN)) continue;
            proto_msg_t r;
            if (proto_recv(sock, &r, MEMBER_MAX_PAYLOAD, 0) == 0)
                atomic_store(&m->beat_heard_ms, (int64_t)(mimic_now() * 1e3));
            proto_msg_close(&r);
        }
    }
    zmq_close(sock);
    return NULL;
}

int member_beat_thread(member_t *m) {
    if (!m || m->id < 0) return mimic_err(MIMIC_EINVAL, "member_beat_thread: not joined");
    if (m->beat_running) return 0;
    atomic_store(&m->beat_stop, 0);
    atomic_store(&m->beat_heard_ms, (int64_t)(mimic_now() * 1e3));
    if (pthread_create(&m->beat_thread, NULL, beat_main, m) != 0)
        return mimic_err(MIMIC_EIO, "scheduler %s: cannot start the heartbeat thread", m->endpoint);
    m->beat_running = 1;
    return 0;
}

double member_sched_silence_s(const member_t *m) {
    if (!m || !m->beat_running) return -1.0;
    return mimic_now() - (double)atomic_load(&m->beat_heard_ms) * 1e-3;
}

int member_leave(member_t *m) {
    if (!m) return MIMIC_EINVAL;
    proto_hdr_t h;
    proto_make_leave(&h, m->id, ++m->seq, m->step);
    uint64_t seq = h.seq;
    int rc = proto_send(m->sock, NULL, 0, &h, NULL, NULL, NULL);
    if (rc) return mimic_err(rc, "scheduler %s: sending LEAVE failed", m->endpoint);
    double deadline = mimic_now() + MEMBER_LEAVE_WAIT_MS * 1e-3;
    for (;;) {
        double rest = deadline - mimic_now();
        if (rest <= 0) break;
        proto_msg_t msg;
        rc = proto_recv(m->sock, &msg, MEMBER_MAX_PAYLOAD, (int)(rest * 1e3) + 1);
        int done = rc == 0 && msg.hdr.seq == seq &&
                   ((msg.hdr.type == PROTO_ACK && msg.hdr.a[PROTO_ACK_TYPE] == PROTO_LEAVE) ||
                    msg.hdr.type == PROTO_ERROR);
        proto_msg_close(&msg);
        if (done) return 0;
        if (rc == MIMIC_ETIMEOUT) break;
        if (rc == MIMIC_EIO) return mimic_err(rc, "scheduler %s: receive failed", m->endpoint);
    }
    return mimic_err(MIMIC_ETIMEOUT, "scheduler %s did not acknowledge LEAVE within %d ms",
                     m->endpoint, MEMBER_LEAVE_WAIT_MS);
}

void member_destroy(member_t **mp) {
    if (!mp || !*mp) return;
    member_t *m = *mp;
    if (m->beat_running) {
        atomic_store(&m->beat_stop, 1);
        pthread_join(m->beat_thread, NULL);
    }
    if (m->sock) zmq_close(m->sock);
    free(m->servers);
    free(m);
    *mp = NULL;
}

const char *member_servers(const member_t *m) {
    return m->servers ? m->servers : "";
}
