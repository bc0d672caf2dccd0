/* proto_make.c — the typed builders of proto.h: one function per message type, so the
 * a[]/f[] layout, the payload dtype and the length the args imply are written down
 * once, next to the rules in proto.c that check them. A builder never fails; what it
 * makes passes proto_validate with a payload of h->nbytes bytes (tests/test_proto.c). */
#include "proto.h"

#include "common.h"

/* Every builder starts here: a zeroed header of type from sender, answering seq. */
static void begin(proto_hdr_t *h, proto_type_t type, int32_t sender, uint64_t seq) {
    proto_hdr_init(h, type, sender);
    h->seq = seq;
}

/* Keys [lo, hi) at step; with f32, the payload is their values. */
static void range(proto_hdr_t *h, uint64_t step, uint64_t lo, uint64_t hi, int f32) {
    h->step = step;
    h->lo = lo;
    h->hi = hi;
    if (f32) proto_hdr_set_payload(h, PROTO_DT_F32, hi - lo);
}

static void set_str(proto_hdr_t *h, const char *s) {
    if (s && *s) proto_hdr_set_str(h, s);
}

void proto_make_register(proto_hdr_t *h, int32_t sender, uint64_t seq, int role,
                         const char *endpoint) {
    begin(h, PROTO_REGISTER, sender, seq);
    h->na = 1;
    h->a[PROTO_REG_ROLE] = role;
    set_str(h, endpoint);
}

void proto_make_register_ack(proto_hdr_t *h, int32_t sender, uint64_t seq, int32_t id, int nservers,
                             int nworkers, int rank, uint64_t epoch, const char *text) {
    begin(h, PROTO_REGISTER_ACK, sender, seq);
    h->na = 5;
    h->a[PROTO_RACK_ID] = id;
    h->a[PROTO_RACK_NSERVERS] = nservers;
    h->a[PROTO_RACK_NWORKERS] = nworkers;
    h->a[PROTO_RACK_RANK] = rank;
    h->a[PROTO_RACK_EPOCH] = (int64_t)epoch;
    set_str(h, text);
}

void proto_make_heartbeat(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step) {
    begin(h, PROTO_HEARTBEAT, sender, seq);
    h->step = step;
}

void proto_make_leave(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step) {
    begin(h, PROTO_LEAVE, sender, seq);
    h->step = step;
}

void proto_make_membership(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t epoch,
                           uint64_t nlive) {
    begin(h, PROTO_MEMBERSHIP, sender, seq);
    h->na = 2;
    h->a[PROTO_MEMB_EPOCH] = (int64_t)epoch;
    h->a[PROTO_MEMB_LIVE] = (int64_t)nlive;
    proto_hdr_set_payload(h, PROTO_DT_I64, nlive * 2);
}

void proto_peer_ident(uint8_t out[PROTO_PEER_IDENT], int32_t id, int64_t token) {
    uint32_t u = (uint32_t)id;
    uint64_t t = (uint64_t)token;
    out[0] = 'w'; /* a routing id never starts with 0, which ZeroMQ reserves */
    for (int i = 0; i < 4; i++)
        out[1 + i] = (uint8_t)(u >> (8 * i));
    for (int i = 0; i < 8; i++)
        out[5 + i] = (uint8_t)(t >> (8 * i));
}

void proto_make_chunk_req(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step) {
    begin(h, PROTO_CHUNK_REQ, sender, seq);
    h->step = step;
}

void proto_make_chunk(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, uint64_t epoch,
                      uint32_t id, uint32_t start, uint32_t count) {
    begin(h, PROTO_CHUNK, sender, seq);
    h->step = step;
    h->na = 4;
    h->a[PROTO_CHUNK_EPOCH] = (int64_t)epoch;
    h->a[PROTO_CHUNK_ID] = id;
    h->a[PROTO_CHUNK_START] = start;
    h->a[PROTO_CHUNK_COUNT] = count;
    proto_hdr_set_payload(h, PROTO_DT_U32, count);
}

void proto_make_chunk_end(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step) {
    begin(h, PROTO_CHUNK, sender, seq);
    h->step = step;
    h->na = 5; /* epoch, id, start and count 0: only the status says something */
    h->a[PROTO_CHUNK_STATUS] = PROTO_CHUNK_END;
    h->dtype = PROTO_DT_U32; /* CHUNK requires a dtype even for no indices */
}

void proto_make_chunk_done(proto_hdr_t *h, int32_t sender, uint64_t seq, int64_t epoch, int64_t id,
                           int64_t processed, double busy_s) {
    begin(h, PROTO_CHUNK_DONE, sender, seq);
    h->na = 3;
    h->a[PROTO_CDONE_EPOCH] = epoch;
    h->a[PROTO_CDONE_ID] = id;
    h->a[PROTO_CDONE_PROCESSED] = processed;
    if (busy_s >= 0) {
        h->nf = 1;
        h->f[PROTO_CDONE_BUSY_S] = busy_s;
    }
}

void proto_make_push(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, uint64_t lo,
                     uint64_t hi, int64_t batch) {
    begin(h, PROTO_PUSH, sender, seq);
    range(h, step, lo, hi, 1);
    h->na = 1;
    h->a[PROTO_PUSH_BATCH] = batch;
}

void proto_make_push_ack(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t version,
                         uint64_t lo, uint64_t hi) {
    begin(h, PROTO_PUSH_ACK, sender, seq);
    range(h, version, lo, hi, 0);
}

void proto_make_pull(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t min_version,
                     uint64_t lo, uint64_t hi, int which) {
    begin(h, PROTO_PULL, sender, seq);
    range(h, min_version, lo, hi, 0);
    h->na = 2;
    h->a[PROTO_PULL_WHICH] = which;
    h->a[PROTO_PULL_MINSTEP] = (int64_t)min_version;
}

void proto_make_pull_reply(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t version,
                           uint64_t lo, uint64_t hi, int which) {
    begin(h, PROTO_PULL_REPLY, sender, seq);
    range(h, version, lo, hi, 1);
    h->na = 1;
    h->a[PROTO_PULL_WHICH] = which;
}

void proto_make_wire(proto_hdr_t *h, proto_dtype_t dtype) {
    MIMIC_CHECK(dtype == PROTO_DT_F32 || dtype == PROTO_DT_BF16);
    if (h->type == PROTO_PULL) {
        h->na = 3;
        h->a[PROTO_PULL_DTYPE] = dtype;
    } else {
        MIMIC_CHECK(h->type == PROTO_PUSH || h->type == PROTO_PULL_REPLY);
        proto_hdr_set_payload(h, dtype, h->hi - h->lo);
    }
}

/* QUEUE_PUSH and KEYS_PUSH: a worker's count x dim f32 keys of `step`, a[] = count, dim
 * (PROTO_QPUSH_* and PROTO_KPUSH_* are the same layout). */
static void keys_push(proto_hdr_t *h, proto_type_t type, int32_t sender, uint64_t seq,
                      uint64_t step, uint64_t count, uint64_t dim) {
    begin(h, type, sender, seq);
    h->step = step;
    h->na = 2;
    h->a[PROTO_QPUSH_COUNT] = (int64_t)count;
    h->a[PROTO_QPUSH_DIM] = (int64_t)dim;
    proto_hdr_set_payload(h, PROTO_DT_F32, count * dim);
}

void proto_make_queue_push(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step,
                           uint64_t count, uint64_t dim) {
    keys_push(h, PROTO_QUEUE_PUSH, sender, seq, step, count, dim);
}

void proto_make_queue_pull(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step,
                           uint64_t since) {
    begin(h, PROTO_QUEUE_PULL, sender, seq);
    h->step = step;
    h->na = 1;
    h->a[PROTO_QPULL_SINCE] = (int64_t)since;
}

void proto_make_queue_reply(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step,
                            uint64_t version, uint64_t count, uint64_t dim, uint64_t slot,
                            uint64_t capacity) {
    begin(h, PROTO_QUEUE_REPLY, sender, seq);
    h->step = step;
    h->na = 5;
    h->a[PROTO_QREP_VERSION] = (int64_t)version;
    h->a[PROTO_QREP_COUNT] = (int64_t)count;
    h->a[PROTO_QREP_DIM] = (int64_t)dim;
    h->a[PROTO_QREP_SLOT] = (int64_t)slot;
    h->a[PROTO_QREP_CAPACITY] = (int64_t)capacity;
    proto_hdr_set_payload(h, PROTO_DT_F32, count * dim);
}

void proto_make_keys_push(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step,
                          uint64_t count, uint64_t dim) {
    _Static_assert((int)PROTO_KPUSH_COUNT == (int)PROTO_QPUSH_COUNT &&
                       (int)PROTO_KPUSH_DIM == (int)PROTO_QPUSH_DIM,
                   "KEYS_PUSH and QUEUE_PUSH share their a[] layout");
    keys_push(h, PROTO_KEYS_PUSH, sender, seq, step, count, dim);
}

void proto_make_keys_reply(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step,
                           uint64_t count, uint64_t dim, uint64_t offset, uint64_t mine,
                           uint64_t workers) {
    begin(h, PROTO_KEYS_REPLY, sender, seq);
    h->step = step;
    h->na = 5;
    h->a[PROTO_KREP_COUNT] = (int64_t)count;
    h->a[PROTO_KREP_DIM] = (int64_t)dim;
    h->a[PROTO_KREP_OFFSET] = (int64_t)offset;
    h->a[PROTO_KREP_MINE] = (int64_t)mine;
    h->a[PROTO_KREP_WORKERS] = (int64_t)workers;
    proto_hdr_set_payload(h, PROTO_DT_F32, count * dim);
}

void proto_make_ckpt(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, const char *dir) {
    begin(h, PROTO_CKPT, sender, seq);
    h->step = step;
    set_str(h, dir);
}

void proto_make_ckpt_done(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, int status,
                          const char *text) {
    begin(h, PROTO_CKPT_DONE, sender, seq);
    h->step = step;
    h->na = 1;
    h->a[PROTO_CKDONE_STATUS] = status;
    set_str(h, text);
}

void proto_make_metrics(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, double loss,
                        double imgs_per_s, double lr) {
    begin(h, PROTO_METRICS, sender, seq);
    h->step = step;
    h->nf = 3;
    h->f[PROTO_METRIC_LOSS] = loss;
    h->f[PROTO_METRIC_IMGS] = imgs_per_s;
    h->f[PROTO_METRIC_LR] = lr;
}

void proto_make_metrics_counters(proto_hdr_t *h, const double phase_s[PROTO_METRIC_PHASES],
                                 uint64_t bytes_out, uint64_t bytes_in, uint64_t bad_images,
                                 uint64_t steps) {
    h->nf = PROTO_METRIC_DATA_S + PROTO_METRIC_PHASES;
    for (int i = 0; i < PROTO_METRIC_PHASES; i++)
        h->f[PROTO_METRIC_DATA_S + i] = phase_s[i];
    h->na = 4;
    h->a[PROTO_METRIC_STEPS] = (int64_t)(steps & INT64_MAX);
    h->a[PROTO_METRIC_BYTES_OUT] = (int64_t)(bytes_out & INT64_MAX);
    h->a[PROTO_METRIC_BYTES_IN] = (int64_t)(bytes_in & INT64_MAX);
    h->a[PROTO_METRIC_BAD] = (int64_t)(bad_images & INT64_MAX);
}

void proto_make_shutdown(proto_hdr_t *h, int32_t sender, uint64_t seq, const char *reason) {
    begin(h, PROTO_SHUTDOWN, sender, seq);
    set_str(h, reason);
}

void proto_make_error(proto_hdr_t *h, int32_t sender, uint64_t seq, uint64_t step, int code,
                      int req_type, const char *reason) {
    begin(h, PROTO_ERROR, sender, seq);
    h->step = step;
    h->na = 2;
    h->a[PROTO_ERR_CODE] = code;
    h->a[PROTO_ERR_REQTYPE] = req_type;
    set_str(h, reason);
}

void proto_make_ack(proto_hdr_t *h, int32_t sender, uint64_t seq, int acked_type) {
    begin(h, PROTO_ACK, sender, seq);
    h->na = 1;
    h->a[PROTO_ACK_TYPE] = acked_type;
}
