/* proto — the mimicps wire protocol: the only code that builds or parses messages.
 *
 * A message is a ZeroMQ multipart: [identity] + header + [payload]. The identity frame
 * exists only on ROUTER sockets (proto_send/proto_recv detect the socket type). The
 * header is a msgpack map with short string keys (proto_hdr_t); the optional payload is
 * the raw little-endian tensor or index bytes, sent zero-copy and never put into
 * msgpack. Decoding checks every field's type, the per-type required fields and args,
 * and the payload size against the header and a caller limit; a failure returns
 * MIMIC_EFORMAT with a reason naming the field, ready to send back with
 * proto_reply_error. docs/protocol.md is the message catalogue.
 *
 * Usage: proto_make_push(&h, my_id, seq, step, lo, hi, batch); proto_send(...);
 *        proto_recv(sock, &m, limit, timeout_ms); use m.hdr and proto_msg_data(&m);
 *        proto_msg_close(&m). Event loops: proto_router_bind, proto_poll and
 *        proto_recv_burst (below) set up and drain their sockets. */
#ifndef MIMIC_PROTO_H
#define MIMIC_PROTO_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "curve.h"

#define PROTO_VERSION 1u
#define PROTO_HDR_MAX 4096 /* encoded header bytes; larger header frames are refused */
#define PROTO_STR_MAX 1024 /* bytes of "str", excluding the terminating NUL */
#define PROTO_NARGS 8      /* max entries of "a" and of "f" */
#define PROTO_ID_MAX 255   /* ZeroMQ routing ids are 1..255 bytes */
#define PROTO_WHY_MAX 256  /* reason buffer inside proto_msg_t */
#define PROTO_ID_SCHEDULER 0
#define PROTO_ID_NONE (-1) /* sender id before REGISTER_ACK */

/* Message types. Values are the wire encoding of "t": append, never renumber. */
typedef enum {
    PROTO_INVALID = 0, /* never valid on the wire */
    PROTO_REGISTER = 1,
    PROTO_REGISTER_ACK = 2,
    PROTO_HEARTBEAT = 3,
    PROTO_LEAVE = 4,
    PROTO_MEMBERSHIP = 5,
    PROTO_CHUNK_REQ = 6,
    PROTO_CHUNK = 7,
    PROTO_CHUNK_DONE = 8,
    PROTO_PUSH = 9,
    PROTO_PUSH_ACK = 10,
    PROTO_PULL = 11,
    PROTO_PULL_REPLY = 12,
    PROTO_QUEUE_PUSH = 13,
    PROTO_QUEUE_PULL = 14,
    PROTO_QUEUE_REPLY = 15,
    PROTO_CKPT = 16,
    PROTO_CKPT_DONE = 17,
    PROTO_METRICS = 18,
    PROTO_SHUTDOWN = 19,
    PROTO_ERROR = 20,
    PROTO_ACK = 21,
    PROTO_KEYS_PUSH = 22,
    PROTO_KEYS_REPLY = 23,
    PROTO_TYPE_COUNT
} proto_type_t;

/* Payload element types ("dt"). Values are the wire encoding. */
typedef enum {
    PROTO_DT_NONE = 0,
    PROTO_DT_F32 = 1,
    PROTO_DT_I64 = 2,
    PROTO_DT_U8 = 3,
    PROTO_DT_I32 = 4,
    PROTO_DT_U32 = 5,
    PROTO_DT_BF16 = 6, /* bfloat16: the top half of an IEEE f32 (proto/wire.h) */
    PROTO_DT_COUNT
} proto_dtype_t;

/* Named indices into a[] per message type, so that no other module hard-codes the
 * layout. Optional args (marked) may be absent (na smaller); the decoder then reads 0. */
enum { PROTO_REG_ROLE = 0 };
enum { PROTO_ROLE_WORKER = 1, PROTO_ROLE_SERVER = 2 };
enum {
    PROTO_RACK_ID = 0,       /* id assigned to the registering process */
    PROTO_RACK_NSERVERS = 1, /* number of parameter servers */
    PROTO_RACK_NWORKERS = 2, /* live workers at registration time */
    PROTO_RACK_RANK = 3,     /* rank within its role (a server's key-range index) */
    PROTO_RACK_EPOCH = 4,    /* optional: membership epoch */
    PROTO_RACK_NKEYS = 5,    /* optional: total parameter count (float elements) */
    PROTO_RACK_TOKEN = 6,    /* optional: the secret the member's heartbeats carry */
};
/* HEARTBEAT a[]: the REGISTER_ACK token, which binds a heartbeat sent on the member's
 * own connection (not the one it registered on) to the member. */
enum { PROTO_HB_TOKEN = 0 };
/* MEMBERSHIP (scheduler -> servers only). Payload: live x {i64 id, i64 token} in id order;
 * the token (REGISTER_ACK's) is what a worker's connections to the servers are named by
 * (proto_peer_ident), so a server takes a sender id only on its owner's connection. */
enum { PROTO_MEMB_EPOCH = 0, PROTO_MEMB_LIVE = 1 };
#define PROTO_MEMB_ENTRY 16 /* payload bytes per live worker */
enum { PROTO_CREQ_EPOCH = 0 /* optional: the epoch the worker is in */ };
enum {
    PROTO_CHUNK_EPOCH = 0,
    PROTO_CHUNK_ID = 1,
    PROTO_CHUNK_START = 2, /* offset of the chunk in the epoch's permutation */
    PROTO_CHUNK_COUNT = 3, /* number of sample indices in the payload */
    PROTO_CHUNK_STATUS = 4 /* optional: PROTO_CHUNK_OK (default), _WAIT or _END */
};
enum { PROTO_CHUNK_OK = 0, PROTO_CHUNK_WAIT = 1, PROTO_CHUNK_END = 2 };
enum { PROTO_CDONE_EPOCH = 0, PROTO_CDONE_ID = 1, PROTO_CDONE_PROCESSED = 2 };
/* CHUNK_DONE f[] (optional): the seconds the worker was busy with the chunk, from
 * receiving it to handing the gradient over (the scheduler's straggler detector) */
enum { PROTO_CDONE_BUSY_S = 0 };
enum { PROTO_PUSH_BATCH = 0 /* optional: samples behind the gradient */ };
enum {
    PROTO_PULL_WHICH = 0,
    PROTO_PULL_MINSTEP = 1, /* optional: SSP, 0 = any */
    PROTO_PULL_DTYPE = 2    /* optional: the reply's payload dtype, f32 (default) or bf16 */
};
enum { PROTO_WHICH_PARAMS = 0, PROTO_WHICH_EMA = 1 };
enum { PROTO_QPUSH_COUNT = 0, PROTO_QPUSH_DIM = 1 }; /* st: the step the keys belong to */
enum { PROTO_QPULL_SINCE = 0 }; /* st: the queue step wanted (BSP: held until reached) */
enum {
    PROTO_QREP_VERSION = 0,  /* keys ever pushed, after this reply */
    PROTO_QREP_COUNT = 1,    /* rows in the payload */
    PROTO_QREP_DIM = 2,      /* floats per row */
    PROTO_QREP_SLOT = 3,     /* ring slot of the first row */
    PROTO_QREP_CAPACITY = 4, /* ring capacity K */
};
/* MoCo v3's in-batch keys of one step (st) from every live worker. */
enum { PROTO_KPUSH_COUNT = 0, PROTO_KPUSH_DIM = 1 };
enum {
    PROTO_KREP_COUNT = 0,   /* rows M of all workers, in worker-id order */
    PROTO_KREP_DIM = 1,     /* floats per row */
    PROTO_KREP_OFFSET = 2,  /* the requester's first row */
    PROTO_KREP_MINE = 3,    /* the requester's rows */
    PROTO_KREP_WORKERS = 4, /* workers whose keys are in the payload */
};
enum { PROTO_CKDONE_STATUS = 0 /* 0 or a negative MIMIC_E* code */ };
enum { PROTO_METRIC_LOSS = 0, PROTO_METRIC_IMGS = 1, PROTO_METRIC_LR = 2 }; /* f[] */
/* METRICS f[3..7] (optional, all or none): the worker's phase seconds summed since it
 * started (counters, so a lost METRICS loses nothing): data, forward, backward, push
 * (BSP: push+pull), pull+wait. a[] (optional): payload bytes it pushed and pulled since it
 * started, the unreadable images its loader met and the steps it trained. The
 * scheduler's /metrics and live page (docs/operations.md). */
enum {
    PROTO_METRIC_DATA_S = 3,
    PROTO_METRIC_FWD_S = 4,
    PROTO_METRIC_BWD_S = 5,
    PROTO_METRIC_PUSH_S = 6,
    PROTO_METRIC_PULL_S = 7,
};
#define PROTO_METRIC_PHASES 5
enum { /* a[] */
    PROTO_METRIC_BYTES_OUT = 0,
    PROTO_METRIC_BYTES_IN = 1,
    PROTO_METRIC_BAD = 2,
    PROTO_METRIC_STEPS = 3 /* steps this worker trained since it started */
};
enum { PROTO_ERR_CODE = 0, PROTO_ERR_REQTYPE = 1 /* optional: the refused type */ };
enum { PROTO_ACK_TYPE = 0 /* the acknowledged message type */ };

/* Every header field. Absent optional fields decode as 0 ("" for str). */
typedef struct {
    uint32_t version;    /* "v": must be PROTO_VERSION */
    proto_type_t type;   /* "t" */
    int32_t sender;      /* "s": sender id, PROTO_ID_NONE before registration */
    uint64_t step;       /* "st" */
    uint64_t lo, hi;     /* "lo","hi": key range [lo, hi) in float elements */
    proto_dtype_t dtype; /* "dt": payload element type */
    uint64_t nbytes;     /* "n": payload bytes */
    uint64_t seq;        /* "seq": request number, echoed by replies */
    uint32_t na, nf;     /* entries used in a[] and f[] */
    int64_t a[PROTO_NARGS];
    double f[PROTO_NARGS];
    uint32_t str_len;
    char str[PROTO_STR_MAX + 1]; /* NUL-terminated, no embedded NUL */
} proto_hdr_t;

/* A received message. The payload stays in ZeroMQ's buffer (no copy) and is aligned for
 * its dtype; it lives until proto_msg_close. */
typedef struct {
    proto_hdr_t hdr;
    uint8_t id[PROTO_ID_MAX]; /* ROUTER identity of the sender (idlen 0 otherwise) */
    size_t idlen;
    char user[CURVE_USER_MAX]; /* the CURVE peer ("worker <z85>"; "" without CURVE) */
    zmq_msg_t payload;
    int has_payload;
    char why[PROTO_WHY_MAX]; /* reason when proto_recv failed, "" otherwise */
} proto_msg_t;

typedef void(proto_free_fn)(void *data, void *hint);

const char *proto_type_name(int type);   /* "PUSH"; "?" when out of range */
const char *proto_dtype_name(int dtype); /* "f32"; "?" when out of range */
size_t proto_dtype_size(int dtype);      /* bytes per element; 0 for none/unknown */

/* Zeroes h and sets version, type, sender (dtype none, str ""). */
void proto_hdr_init(proto_hdr_t *h, proto_type_t type, int32_t sender);
/* Sets str (truncated to PROTO_STR_MAX bytes). */
void proto_hdr_set_str(proto_hdr_t *h, const char *s);
/* Sets dtype and n = count elements of dtype: for an optional payload whose length the
 * args do not imply (REGISTER_ACK's u8 server list). */
void proto_hdr_set_payload(proto_hdr_t *h, proto_dtype_t dtype, uint64_t count);
/* 1 when every field is equal (floats compared bitwise), else 0. */
int proto_hdr_equal(const proto_hdr_t *x, const proto_hdr_t *y);

/* ---- typed builders (proto_make.c) --------------------------------------------------
 * One per message type a process sends; these are the headers on the wire (callers do
 * not count args by hand). Each zeroes h, then sets type, sender, seq and the fields
 * the type carries: a[] and f[] by their PROTO_* names, dtype and n when the arguments
 * imply the payload length, str where the type gives it a meaning (NULL or "": none).
 * seq 0 and step 0 are not written on the wire. The few optional extras a caller may
 * add afterwards are named at the builder. */
void proto_make_register(proto_hdr_t *h, int32_t sender, uint64_t seq, int role,
                         const char *endpoint); /* endpoint: a server's bound ROUTER */
/* text: to a worker the server endpoints (space-separated; proto_hdr_set_payload for a
 * u8 list that does not fit), to a server the step to resume from ("" fresh). */
void proto_make_register_ack(proto_hdr_t *h, int32_t sender, uint64_t seq, int32_t id, int nservers,
                             int nworkers, int rank, uint64_t epoch, const char *text);
void proto_make_heartbeat(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step);
void proto_make_leave(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step);
/* Payload: nlive x {i64 id, i64 token} (PROTO_MEMB_ENTRY bytes each). */
void proto_make_membership(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t epoch,
                           uint64_t nlive);
void proto_make_chunk_req(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step);
/* Payload: count u32 sample indices. */
void proto_make_chunk(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, uint64_t epoch,
                      uint32_t id, uint32_t start, uint32_t count);
/* A CHUNK without indices, status PROTO_CHUNK_END: training is over. */
void proto_make_chunk_end(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step);
/* busy_s: f[PROTO_CDONE_BUSY_S], the step time; < 0: not sent (no step used the chunk). */
void proto_make_chunk_done(proto_hdr_t *h, int32_t sender, uint64_t seq, int64_t epoch, int64_t id,
                           int64_t processed, double busy_s);
/* step: the version the gradient was computed on. Payload: f32 gradient of [lo, hi). */
void proto_make_push(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, uint64_t lo,
                     uint64_t hi, int64_t batch);
void proto_make_push_ack(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t version,
                         uint64_t lo, uint64_t hi);
/* min_version goes in st (what servers use) and in a[PROTO_PULL_MINSTEP]. */
void proto_make_pull(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t min_version,
                     uint64_t lo, uint64_t hi, int which);
/* Payload: f32 values of [lo, hi) at version. */
void proto_make_pull_reply(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t version,
                           uint64_t lo, uint64_t hi, int which);
/* cluster.wire on a PUSH or PULL_REPLY built above (its payload becomes the range in
 * dtype, PROTO_DT_F32 or PROTO_DT_BF16) or on a PULL (the dtype its reply must have). */
void proto_make_wire(proto_hdr_t *h, proto_dtype_t dtype);
/* step: the training step whose keys these are (BSP appends a step's keys in worker-id
 * order once every live worker's are in). Payload: count x dim f32 keys. */
void proto_make_queue_push(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step,
                           uint64_t count, uint64_t dim);
/* since: the queue version the requester holds; step: the queue step wanted (BSP: the
 * reply waits until the keys of every step < step are in; 0 = now). */
void proto_make_queue_pull(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step,
                           uint64_t since);
/* step: the queue's step. Payload: count x dim f32 rows for ring slots slot, slot+1, ...
 * (mod capacity). */
void proto_make_queue_reply(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step,
                            uint64_t version, uint64_t count, uint64_t dim, uint64_t slot,
                            uint64_t capacity);
/* The requester's keys of `step`. Payload: count x dim f32. Answered by KEYS_REPLY once
 * every live worker's keys of that step are in. */
void proto_make_keys_push(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step,
                          uint64_t count, uint64_t dim);
/* All workers' keys of `step`, count x dim f32 in worker-id order; the requester's `mine`
 * rows start at row `offset`. */
void proto_make_keys_reply(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step,
                           uint64_t count, uint64_t dim, uint64_t offset, uint64_t mine,
                           uint64_t workers);
void proto_make_ckpt(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, const char *dir);
/* status: 0 or a negative MIMIC_E* code; text: the path written, or why not. */
void proto_make_ckpt_done(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, int status,
                          const char *text);
void proto_make_metrics(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, double loss,
                        double imgs_per_s, double lr);
/* Adds the optional counters to a METRICS built by proto_make_metrics: phase_s[i] is
 * f[PROTO_METRIC_DATA_S + i]. */
void proto_make_metrics_counters(proto_hdr_t *h, const double phase_s[PROTO_METRIC_PHASES],
                                 uint64_t bytes_out, uint64_t bytes_in, uint64_t bad_images,
                                 uint64_t steps);
void proto_make_shutdown(proto_hdr_t *h, int32_t sender, uint64_t seq, const char *reason);
/* code: a negative MIMIC_E* code; req_type: the refused type (0: unknown). seq and step
 * echo the request (proto_reply_error does all of it). */
void proto_make_error(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, int code,
                      int req_type, const char *reason);
/* An ACK carries no st; set h->step afterwards where it reports a version (the queue
 * version in the ACK of QUEUE_PUSH). */
void proto_make_ack(proto_hdr_t *h, int32_t sender, uint64_t seq, int acked_type);

/* Encodes h into buf (cap bytes; PROTO_HDR_MAX always suffices), *len = bytes used.
 * Refuses (MIMIC_EINVAL, reason in why) a header that peers would reject. */
int proto_encode_hdr(const proto_hdr_t *h, void *buf, size_t cap, size_t *len, char *why,
                     size_t whylen);
/* Decodes one header frame: syntax, field types, required fields and args of the type,
 * enums, ranges, n against range/dtype/counts. Socket-free and allocation-bounded.
 * Returns 0 or MIMIC_EFORMAT with a reason in why. On failure out holds the fields read
 * before the error (sender and seq come first in our encoding, for the ERROR reply). */
int proto_decode_hdr(proto_hdr_t *out, const void *buf, size_t len, char *why, size_t whylen);
/* The semantic checks of proto_decode_hdr on a filled header, plus the payload:
 * payload_len must equal h->nbytes and be <= max_payload. 0 or MIMIC_EFORMAT. */
int proto_validate(const proto_hdr_t *h, size_t payload_len, size_t max_payload, char *why,
                   size_t whylen);

/* Sends [identity] + header + [payload of h->nbytes bytes]. identity is required on a
 * ROUTER socket and ignored on others. The payload is never copied:
 *  - free_fn != NULL: ownership of payload moves here; free_fn(payload, hint) runs
 *    exactly once when ZeroMQ is done with it — possibly on a ZeroMQ I/O thread, and
 *    also when proto_send fails.
 *  - free_fn == NULL: the caller keeps the buffer and promises it stays valid and
 *    unmodified until ZeroMQ is done with it (for inproc: until the receiver closes
 *    the message). To learn when that is, pass proto_track_release (below).
 * Returns 0, MIMIC_EINVAL (bad header or arguments), MIMIC_ETIMEOUT (ZMQ_SNDTIMEO
 * expired), MIMIC_EPEER (unknown identity on a ROUTER with ZMQ_ROUTER_MANDATORY) or
 * MIMIC_EIO; the reason is recorded with mimic_err. */
int proto_send(void *sock, const void *identity, size_t idlen, const proto_hdr_t *h,
               const void *payload, proto_free_fn *free_fn, void *hint);

/* Receives one message: waits up to timeout_ms (-1 forever, 0 poll), reads every frame
 * of the multipart (the rest is drained on any error, so the socket stays usable),
 * decodes the header, refuses n > max_payload before touching the payload frame, then
 * checks the payload frame length against n. Returns 0, MIMIC_ETIMEOUT, MIMIC_EFORMAT
 * (out->why says why; out->id and what was decoded of out->hdr are filled so that
 * proto_reply_error can answer) or MIMIC_EIO. Always proto_msg_close(out) afterwards. */
int proto_recv(void *sock, proto_msg_t *out, size_t max_payload, int timeout_ms);
const void *proto_msg_data(const proto_msg_t *m); /* NULL when there is no payload */
size_t proto_msg_size(const proto_msg_t *m);
void proto_msg_close(proto_msg_t *m); /* releases the payload; safe to call twice */

/* Sends ERROR (a[0] = code, a[1] = req type, str = why, seq echoed) to req's sender. */
int proto_reply_error(void *sock, int32_t self, const proto_msg_t *req, int code, const char *why);

/* The ZeroMQ routing id a worker gives its connections to the servers: a tag byte, its id
 * and its REGISTER_ACK token, so that the id it sends is only valid on connections that
 * prove the token (the servers learn it from MEMBERSHIP). */
#define PROTO_PEER_IDENT 13
void proto_peer_ident(uint8_t out[PROTO_PEER_IDENT], int32_t id, int64_t token);

/* ---- event-loop sockets (proto_zmq.c) ------------------------------------------------ */

/* How a process binds the ROUTER its peers connect to (the scheduler, each server). */
typedef struct {
    const char *host;       /* cluster.bind_host: an address of this host, 0.0.0.0 = all */
    int port;               /* 0: any free port */
    int linger_ms;          /* ZMQ_LINGER: how long closing lets queued replies go out */
    int64_t max_msg;        /* ZMQ_MAXMSGSIZE in bytes: a larger frame drops that peer */
    int advertise_hostname; /* a wildcard bind advertises gethostname(), else a warning */
    curve_t *curve;         /* CURVE server with ZAP (curve_serve); NULL: off, and a
                               non-loopback bind says so at start */
    const char *who;        /* "scheduler", "server": names the process in that warning */
} proto_router_opts_t;

/* Creates and binds a ROUTER for an event loop that must never block on one peer:
 * ZMQ_ROUTER_MANDATORY (a reply to a vanished peer fails with MIMIC_EPEER instead of
 * vanishing), ZMQ_SNDTIMEO 0 (a full pipe to a stuck peer drops the reply at once),
 * o->linger_ms and o->max_msg; frames between the receiver's payload limit and max_msg
 * still reach proto_recv, which answers ERROR. Binds tcp://host:port (port 0: any)
 * and writes the endpoint peers should connect to into endpoint (cap bytes).
 * Returns 0, MIMIC_EINVAL (empty host, cannot bind: a bad setting) or MIMIC_EIO; on
 * failure *out is NULL. The caller zmq_close()s *out. */
int proto_router_bind(void **out, void *zctx, const proto_router_opts_t *o, char *endpoint,
                      size_t cap);

/* zmq_poll over n items for up to timeout_ms (-1: forever). Returns the number of ready
 * items; 0 when the time ran out or a signal interrupted the wait (EINTR: every revents
 * is then 0), so that a loop goes round and looks at its stop flag; MIMIC_EIO when
 * zmq_poll failed otherwise (nothing is logged; zmq_errno() still says why). */
int proto_poll(zmq_pollitem_t *items, int n, long timeout_ms);

/* Called by proto_recv_burst for each message: rc is 0, MIMIC_EFORMAT (m->why says why;
 * answer with proto_reply_error) or a receive error (MIMIC_EIO, MIMIC_ENOMEM). fn may
 * take m's payload; proto_recv_burst closes m afterwards. Non-zero ends the burst. */
typedef int(proto_burst_fn)(void *ctx, void *sock, proto_msg_t *m, int rc);
/* Reads up to max messages already waiting on sock (never waits) into fn; stops early
 * when none is left, after MIMIC_EIO, or when fn returns non-zero. The bound keeps a
 * flood on one socket from starving the loop's other sockets and timers. Returns how
 * many messages fn was given. */
int proto_recv_burst(void *sock, int max, size_t max_payload, proto_burst_fn *fn, void *ctx);

/* Completion tracking for caller-kept zero-copy buffers: proto_track_hold before each
 * proto_send(..., proto_track_release, &t); proto_track_wait returns 0 once ZeroMQ has
 * released every held send (MIMIC_ETIMEOUT otherwise), after which the buffer may be
 * reused. */
typedef struct {
    atomic_int inflight;
} proto_track_t;
static inline void proto_track_hold(proto_track_t *t) {
    atomic_fetch_add(&t->inflight, 1);
}
void proto_track_release(void *data, void *hint);
int proto_track_wait(proto_track_t *t, int timeout_ms);

#endif
