// TIMEOUT: 60
/* test_proto — the wire protocol: header roundtrip of every message type, the decoder's
 * refusal (with a reason naming the field) of every kind of malformed header, and real
 * ZeroMQ DEALER->ROUTER exchanges over inproc and tcp loopback: a 4 MB zero-copy
 * payload, malformed multiparts answered with ERROR, and the next valid message still
 * getting through. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "proto.h"
#include "testutil.h"
#include "wire.h"

#include <math.h>
#include <msgpack.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LIMIT (8u << 20) /* max payload accepted by the receivers below */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static uint64_t rnd_below(uint64_t n) {
    return n ? rnd() % n : 0;
}

/* ---- valid headers of every type ----------------------------------------------------- */

static void set_args(proto_hdr_t *h, int n, const int64_t *v) {
    h->na = (uint32_t)n;
    for (int i = 0; i < n; i++)
        h->a[i] = v[i];
}

/* Fills h with a random valid header of `type`. */
static void make_valid(proto_hdr_t *h, proto_type_t type) {
    proto_hdr_init(h, type, (int32_t)rnd_below(1000) - 1);
    h->seq = rnd();
    if (rnd() & 1) h->step = rnd_below(1u << 20);
    uint64_t lo = rnd_below(1u << 24), len = rnd_below(1u << 16);
    switch (type) {
    case PROTO_REGISTER: {
        int server = rnd() & 1;
        int64_t a[] = {server ? PROTO_ROLE_SERVER : PROTO_ROLE_WORKER};
        set_args(h, 1, a);
        h->sender = PROTO_ID_NONE;
        if (server) proto_hdr_set_str(h, "tcp://10.0.0.7:40123");
        break;
    }
    case PROTO_REGISTER_ACK: {
        int64_t a[] = {5, 2, 4, 1, 3, 86000000};
        set_args(h, 4 + (int)rnd_below(3), a);
        proto_hdr_set_str(h, "cfg-digest-0123abcd");
        if (rnd() & 1) {
            h->dtype = PROTO_DT_U8;
            h->nbytes = 41;
        }
        break;
    }
    case PROTO_HEARTBEAT:
    case PROTO_LEAVE:
    case PROTO_SHUTDOWN:
        break;
    case PROTO_MEMBERSHIP: {
        int64_t a[] = {(int64_t)rnd_below(100), (int64_t)rnd_below(64)};
        set_args(h, 2, a);
        h->dtype = PROTO_DT_I64;
        h->nbytes = (uint64_t)a[1] * PROTO_MEMB_ENTRY;
        break;
    }
    case PROTO_CHUNK_REQ:
        if (rnd() & 1) {
            int64_t a[] = {3};
            set_args(h, 1, a);
        }
        break;
    case PROTO_CHUNK: {
        int64_t a[] = {2, 17, 4352, (int64_t)rnd_below(256), PROTO_CHUNK_OK};
        set_args(h, 4 + (int)(rnd() & 1), a);
        h->dtype = (rnd() & 1) ? PROTO_DT_U32 : PROTO_DT_I64;
        h->nbytes = (uint64_t)a[3] * proto_dtype_size(h->dtype);
        break;
    }
    case PROTO_CHUNK_DONE: {
        int64_t a[] = {2, 17, 250};
        set_args(h, 3, a);
        break;
    }
    case PROTO_PUSH:
    case PROTO_PULL_REPLY:
        h->lo = lo;
        h->hi = lo + len;
        h->step = rnd_below(1000);
        h->dtype = (rnd() & 1) ? PROTO_DT_F32 : PROTO_DT_BF16;
        h->nbytes = len * proto_dtype_size(h->dtype);
        if (type == PROTO_PULL_REPLY) {
            int64_t a[] = {(int64_t)(rnd() & 1)};
            set_args(h, 1, a);
        } else if (rnd() & 1) {
            int64_t a[] = {256};
            set_args(h, 1, a);
        }
        break;
    case PROTO_PUSH_ACK:
        h->lo = lo;
        h->hi = lo + len;
        h->step = rnd_below(1000);
        break;
    case PROTO_PULL: {
        int64_t a[] = {(int64_t)(rnd() & 1), (int64_t)rnd_below(50),
                       (rnd() & 1) ? PROTO_DT_F32 : PROTO_DT_BF16};
        h->lo = lo;
        h->hi = lo + len;
        set_args(h, 1 + (int)rnd_below(3), a);
        break;
    }
    case PROTO_QUEUE_PUSH: {
        int64_t a[] = {(int64_t)rnd_below(64), 128};
        set_args(h, 2, a);
        h->dtype = PROTO_DT_F32;
        h->nbytes = (uint64_t)(a[0] * a[1] * 4);
        break;
    }
    case PROTO_QUEUE_PULL: {
        int64_t a[] = {(int64_t)rnd_below(1u << 20)};
        set_args(h, 1, a);
        break;
    }
    case PROTO_QUEUE_REPLY: {
        int64_t a[] = {4096, (int64_t)rnd_below(64), 128, (int64_t)rnd_below(65536), 65536};
        set_args(h, 5, a);
        h->dtype = PROTO_DT_F32;
        h->nbytes = (uint64_t)(a[1] * a[2] * 4);
        break;
    }
    case PROTO_KEYS_PUSH: {
        int64_t a[] = {(int64_t)rnd_below(64), 256};
        set_args(h, 2, a);
        h->dtype = PROTO_DT_F32;
        h->nbytes = (uint64_t)(a[0] * a[1] * 4);
        break;
    }
    case PROTO_KEYS_REPLY: {
        int64_t mine = (int64_t)rnd_below(64), off = (int64_t)rnd_below(128);
        int64_t a[] = {off + mine + (int64_t)rnd_below(64), 256, off, mine, 3};
        set_args(h, 5, a);
        h->dtype = PROTO_DT_F32;
        h->nbytes = (uint64_t)(a[0] * a[1] * 4);
        break;
    }
    case PROTO_CKPT:
        h->step = 5000;
        proto_hdr_set_str(h, "/var/lib/mimic/ckpt/step-5000");
        break;
    case PROTO_CKPT_DONE: {
        int64_t a[] = {(rnd() & 1) ? 0 : MIMIC_EIO};
        set_args(h, 1, a);
        h->step = 5000;
        break;
    }
    case PROTO_METRICS:
        h->nf = 3;
        h->f[0] = (rnd() & 1) ? 6.2831 : NAN;
        h->f[1] = 1234.5;
        h->f[2] = -0.0;
        if (rnd() & 1) /* the optional counters (scheduler /metrics) */
            proto_make_metrics_counters(h, (const double[]){0.5, 1e-9, 0, 1e6, 3.25},
                                        rnd_below(1u << 30), 1ull << 40, rnd_below(7), 12);
        break;
    case PROTO_ERROR: {
        int64_t a[] = {MIMIC_EFORMAT, PROTO_PUSH};
        set_args(h, 2, a);
        proto_hdr_set_str(h, "header field 'n': payload is 1000 bytes but header says 996");
        break;
    }
    case PROTO_ACK: {
        int64_t a[] = {PROTO_LEAVE};
        set_args(h, 1, a);
        break;
    }
    default:
        break;
    }
}

static void test_names(void) {
    for (int t = 1; t < PROTO_TYPE_COUNT; t++) {
        T_CHECK(strcmp(proto_type_name(t), "?") != 0);
        for (int u = 1; u < t; u++)
            T_CHECK(strcmp(proto_type_name(t), proto_type_name(u)) != 0);
    }
    T_CHECK(strcmp(proto_type_name(PROTO_PUSH), "PUSH") == 0);
    T_CHECK(strcmp(proto_type_name(0), "?") == 0);
    T_CHECK(strcmp(proto_type_name(PROTO_TYPE_COUNT), "?") == 0);
    T_CHECK(strcmp(proto_type_name(-3), "?") == 0);
    T_CHECK(proto_dtype_size(PROTO_DT_F32) == 4 && proto_dtype_size(PROTO_DT_I64) == 8);
    T_CHECK(proto_dtype_size(PROTO_DT_U8) == 1 && proto_dtype_size(PROTO_DT_NONE) == 0);
    T_CHECK(proto_dtype_size(99) == 0 && strcmp(proto_dtype_name(99), "?") == 0);
    T_CHECK(strcmp(proto_dtype_name(PROTO_DT_I32), "i32") == 0);
}

static void test_roundtrip(void) {
    uint8_t buf[PROTO_HDR_MAX];
    char why[PROTO_WHY_MAX];
    int bad = 0;
    for (int t = 1; t < PROTO_TYPE_COUNT; t++) {
        for (int rep = 0; rep < 50; rep++) {
            proto_hdr_t h, g;
            size_t len = 0;
            make_valid(&h, (proto_type_t)t);
            int rc = proto_encode_hdr(&h, buf, sizeof buf, &len, why, sizeof why);
            if (rc) {
                fprintf(stderr, "encode %s: %s\n", proto_type_name(t), why);
                bad++;
                continue;
            }
            rc = proto_decode_hdr(&g, buf, len, why, sizeof why);
            if (rc || !proto_hdr_equal(&h, &g)) {
                fprintf(stderr, "decode %s: rc %d %s\n", proto_type_name(t), rc, why);
                bad++;
            }
            if (proto_validate(&g, (size_t)g.nbytes, LIMIT, why, sizeof why) != 0) bad++;
            if (g.nbytes && proto_validate(&g, (size_t)g.nbytes - 1, LIMIT, why, sizeof why) == 0)
                bad++;
            if (proto_validate(&g, (size_t)g.nbytes + 1, LIMIT, why, sizeof why) == 0) bad++;
        }
    }
    T_CHECK(bad == 0);
    printf("roundtrip of %d types x 50 random headers: %s\n", PROTO_TYPE_COUNT - 1,
           bad ? "FAIL" : "ok");

    /* The largest header we can emit fits PROTO_HDR_MAX. */
    proto_hdr_t h, g;
    char big[PROTO_STR_MAX + 1];
    memset(big, 'x', PROTO_STR_MAX);
    big[PROTO_STR_MAX] = '\0';
    proto_hdr_init(&h, PROTO_CHUNK, INT32_MAX);
    h.seq = h.step = UINT64_MAX;
    h.lo = h.hi = UINT64_MAX;
    h.dtype = PROTO_DT_I64;
    h.na = PROTO_NARGS;
    for (int i = 0; i < PROTO_NARGS; i++)
        h.a[i] = i == 3 ? 0 : INT64_MAX;
    h.a[PROTO_CHUNK_STATUS] = PROTO_CHUNK_END;
    h.nf = PROTO_NARGS;
    for (int i = 0; i < PROTO_NARGS; i++)
        h.f[i] = -1e300;
    proto_hdr_set_str(&h, big);
    T_CHECK(h.str_len == PROTO_STR_MAX);
    size_t len = 0;
    T_CHECK(proto_encode_hdr(&h, buf, sizeof buf, &len, why, sizeof why) == 0);
    T_CHECK(len > 1024 && len < PROTO_HDR_MAX);
    T_CHECK(proto_decode_hdr(&g, buf, len, why, sizeof why) == 0 && proto_hdr_equal(&h, &g));
    /* A buffer too small is refused, not overrun. */
    T_CHECK(proto_encode_hdr(&h, buf, 100, &len, why, sizeof why) == MIMIC_EINVAL);
    /* Truncation of a longer string by proto_hdr_set_str. */
    char longer[PROTO_STR_MAX + 10];
    memset(longer, 'y', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    proto_hdr_set_str(&h, longer);
    T_CHECK(h.str_len == PROTO_STR_MAX && h.str[PROTO_STR_MAX] == '\0');
}

/* ---- typed builders ------------------------------------------------------------------ */

/* A builder's header must equal `want`, the one its call site built field by field
 * before the builders (so the wire did not change), pass proto_validate with exactly
 * its n bytes of payload, and survive encode/decode. */
static void check_made(const char *what, const proto_hdr_t *made, const proto_hdr_t *want) {
    uint8_t buf[PROTO_HDR_MAX], wbuf[PROTO_HDR_MAX];
    char why[PROTO_WHY_MAX] = "";
    size_t len = 0, wlen = 0, n = (size_t)made->nbytes;
    proto_hdr_t g;
    int same = proto_hdr_equal(made, want);
    int ok = same && proto_validate(made, n, LIMIT, why, sizeof why) == 0 &&
             (n == 0 || proto_validate(made, n - 1, LIMIT, NULL, 0) != 0) &&
             proto_encode_hdr(made, buf, sizeof buf, &len, why, sizeof why) == 0 &&
             proto_encode_hdr(want, wbuf, sizeof wbuf, &wlen, why, sizeof why) == 0 &&
             len == wlen && memcmp(buf, wbuf, len) == 0 &&
             proto_decode_hdr(&g, buf, len, why, sizeof why) == 0 && proto_hdr_equal(&g, made);
    if (!ok)
        fprintf(stderr, "  builder of %s: %s\n", what,
                !same ? "differs from the hand-built header" : why);
    T_CHECK(ok);
}

/* The reference: what every builder starts from. */
static proto_hdr_t *ref(proto_hdr_t *w, proto_type_t type, int32_t sender, uint64_t seq,
                        uint64_t step) {
    proto_hdr_init(w, type, sender);
    w->seq = seq;
    w->step = step;
    return w;
}

static void test_builders_control(void) {
    proto_hdr_t h, w;
    proto_make_register(&h, PROTO_ID_NONE, 1, PROTO_ROLE_SERVER, "tcp://10.0.0.7:40123");
    set_args(ref(&w, PROTO_REGISTER, PROTO_ID_NONE, 1, 0), 1, (int64_t[]){PROTO_ROLE_SERVER});
    proto_hdr_set_str(&w, "tcp://10.0.0.7:40123");
    check_made("REGISTER", &h, &w);
    proto_make_register(&h, PROTO_ID_NONE, 2, PROTO_ROLE_WORKER, NULL);
    set_args(ref(&w, PROTO_REGISTER, PROTO_ID_NONE, 2, 0), 1, (int64_t[]){PROTO_ROLE_WORKER});
    check_made("REGISTER (worker)", &h, &w);
    proto_make_register_ack(&h, PROTO_ID_SCHEDULER, 3, 5, 2, 4, 1, 7, "tcp://a:1 tcp://b:2");
    set_args(ref(&w, PROTO_REGISTER_ACK, PROTO_ID_SCHEDULER, 3, 0), 5, (int64_t[]){5, 2, 4, 1, 7});
    proto_hdr_set_str(&w, "tcp://a:1 tcp://b:2");
    check_made("REGISTER_ACK", &h, &w);
    proto_make_register_ack(&h, PROTO_ID_SCHEDULER, 3, 5, 2, 4, 1, 7, "");
    proto_hdr_set_payload(&h, PROTO_DT_U8, 41); /* the server list as a payload */
    set_args(ref(&w, PROTO_REGISTER_ACK, PROTO_ID_SCHEDULER, 3, 0), 5, (int64_t[]){5, 2, 4, 1, 7});
    w.dtype = PROTO_DT_U8;
    w.nbytes = 41;
    check_made("REGISTER_ACK with payload", &h, &w);
    proto_make_heartbeat(&h, 4, 9, 120);
    check_made("HEARTBEAT", &h, ref(&w, PROTO_HEARTBEAT, 4, 9, 120));
    proto_make_leave(&h, 4, 10, 121);
    check_made("LEAVE", &h, ref(&w, PROTO_LEAVE, 4, 10, 121));
    proto_make_membership(&h, PROTO_ID_SCHEDULER, 6, 6, 3);
    set_args(ref(&w, PROTO_MEMBERSHIP, PROTO_ID_SCHEDULER, 6, 0), 2, (int64_t[]){6, 3});
    w.dtype = PROTO_DT_I64;
    w.nbytes = 3 * PROTO_MEMB_ENTRY; /* {id, token} pairs */
    check_made("MEMBERSHIP", &h, &w);
    /* a worker's routing id: tag, id and token little-endian, distinct per token */
    uint8_t pi[PROTO_PEER_IDENT], pj[PROTO_PEER_IDENT];
    proto_peer_ident(pi, 0x01020304, 0x1122334455667788);
    const uint8_t pe[PROTO_PEER_IDENT] = {'w', 4, 3, 2, 1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11};
    T_CHECK(memcmp(pi, pe, sizeof pe) == 0);
    proto_peer_ident(pj, 0x01020304, 0x1122334455667789);
    T_CHECK(memcmp(pi, pj, sizeof pj) != 0);
    proto_make_ckpt(&h, PROTO_ID_SCHEDULER, 0, 5000, "/var/lib/mimic/ckpt");
    ref(&w, PROTO_CKPT, PROTO_ID_SCHEDULER, 0, 5000);
    proto_hdr_set_str(&w, "/var/lib/mimic/ckpt");
    check_made("CKPT", &h, &w);
    proto_make_ckpt_done(&h, 1, 0, 5000, MIMIC_EIO, "disk full");
    set_args(ref(&w, PROTO_CKPT_DONE, 1, 0, 5000), 1, (int64_t[]){MIMIC_EIO});
    proto_hdr_set_str(&w, "disk full");
    check_made("CKPT_DONE", &h, &w);
    proto_make_shutdown(&h, PROTO_ID_SCHEDULER, 0, "training finished at step 60");
    ref(&w, PROTO_SHUTDOWN, PROTO_ID_SCHEDULER, 0, 0);
    proto_hdr_set_str(&w, "training finished at step 60");
    check_made("SHUTDOWN", &h, &w);
    proto_make_error(&h, 1, 11, 12, MIMIC_EFORMAT, PROTO_PUSH, "header field 'n'");
    set_args(ref(&w, PROTO_ERROR, 1, 11, 12), 2, (int64_t[]){MIMIC_EFORMAT, PROTO_PUSH});
    proto_hdr_set_str(&w, "header field 'n'");
    check_made("ERROR", &h, &w);
    proto_make_ack(&h, PROTO_ID_SCHEDULER, 13, PROTO_LEAVE);
    set_args(ref(&w, PROTO_ACK, PROTO_ID_SCHEDULER, 13, 0), 1, (int64_t[]){PROTO_LEAVE});
    check_made("ACK", &h, &w);
}

static void test_builders_data(void) {
    proto_hdr_t h, w;
    proto_make_chunk_req(&h, 4, 20, 3);
    check_made("CHUNK_REQ", &h, ref(&w, PROTO_CHUNK_REQ, 4, 20, 3));
    proto_make_chunk(&h, PROTO_ID_SCHEDULER, 20, 3, 2, 17, 136, 8);
    set_args(ref(&w, PROTO_CHUNK, PROTO_ID_SCHEDULER, 20, 3), 4, (int64_t[]){2, 17, 136, 8});
    w.dtype = PROTO_DT_U32;
    w.nbytes = 8 * sizeof(uint32_t);
    check_made("CHUNK", &h, &w);
    proto_make_chunk_end(&h, PROTO_ID_SCHEDULER, 21, 60);
    set_args(ref(&w, PROTO_CHUNK, PROTO_ID_SCHEDULER, 21, 60), 5,
             (int64_t[]){0, 0, 0, 0, PROTO_CHUNK_END});
    w.dtype = PROTO_DT_U32;
    check_made("CHUNK (end)", &h, &w);
    proto_make_chunk_done(&h, 4, 22, 2, 17, 8, -1);
    set_args(ref(&w, PROTO_CHUNK_DONE, 4, 22, 0), 3, (int64_t[]){2, 17, 8});
    check_made("CHUNK_DONE", &h, &w);
    proto_make_chunk_done(&h, 4, 22, 2, 17, 8, 0.125);
    w.nf = 1;
    w.f[PROTO_CDONE_BUSY_S] = 0.125;
    check_made("CHUNK_DONE (busy)", &h, &w);
    proto_make_push(&h, 4, 23, 3, 1000, 1256, 64);
    set_args(ref(&w, PROTO_PUSH, 4, 23, 3), 1, (int64_t[]){64});
    w.lo = 1000, w.hi = 1256, w.dtype = PROTO_DT_F32, w.nbytes = 256 * sizeof(float);
    check_made("PUSH", &h, &w);
    proto_make_push_ack(&h, 1, 23, 4, 1000, 1256);
    ref(&w, PROTO_PUSH_ACK, 1, 23, 4);
    w.lo = 1000, w.hi = 1256;
    check_made("PUSH_ACK", &h, &w);
    proto_make_pull(&h, 4, 24, 4, 1000, 1256, PROTO_WHICH_EMA);
    set_args(ref(&w, PROTO_PULL, 4, 24, 4), 2, (int64_t[]){PROTO_WHICH_EMA, 4});
    w.lo = 1000, w.hi = 1256;
    check_made("PULL", &h, &w);
    proto_make_pull_reply(&h, 1, 24, 4, 1000, 1256, PROTO_WHICH_EMA);
    set_args(ref(&w, PROTO_PULL_REPLY, 1, 24, 4), 1, (int64_t[]){PROTO_WHICH_EMA});
    w.lo = 1000, w.hi = 1256, w.dtype = PROTO_DT_F32, w.nbytes = 256 * sizeof(float);
    check_made("PULL_REPLY", &h, &w);
    /* cluster.wire=bf16: the payloads are 2 bytes a key; a pull names the dtype wanted */
    proto_make_push(&h, 4, 23, 3, 1000, 1256, 64);
    proto_make_wire(&h, PROTO_DT_BF16);
    set_args(ref(&w, PROTO_PUSH, 4, 23, 3), 1, (int64_t[]){64});
    w.lo = 1000, w.hi = 1256, w.dtype = PROTO_DT_BF16, w.nbytes = 256 * 2;
    check_made("PUSH bf16", &h, &w);
    proto_make_pull(&h, 4, 24, 4, 1000, 1256, PROTO_WHICH_PARAMS);
    proto_make_wire(&h, PROTO_DT_BF16);
    set_args(ref(&w, PROTO_PULL, 4, 24, 4), 3, (int64_t[]){PROTO_WHICH_PARAMS, 4, PROTO_DT_BF16});
    w.lo = 1000, w.hi = 1256;
    check_made("PULL bf16", &h, &w);
    proto_make_pull_reply(&h, 1, 24, 4, 1000, 1256, PROTO_WHICH_PARAMS);
    proto_make_wire(&h, PROTO_DT_BF16);
    set_args(ref(&w, PROTO_PULL_REPLY, 1, 24, 4), 1, (int64_t[]){PROTO_WHICH_PARAMS});
    w.lo = 1000, w.hi = 1256, w.dtype = PROTO_DT_BF16, w.nbytes = 256 * 2;
    check_made("PULL_REPLY bf16", &h, &w);
    proto_make_queue_push(&h, 4, 25, 7, 8, 16);
    set_args(ref(&w, PROTO_QUEUE_PUSH, 4, 25, 7), 2, (int64_t[]){8, 16});
    w.dtype = PROTO_DT_F32, w.nbytes = 8 * 16 * sizeof(float);
    check_made("QUEUE_PUSH", &h, &w);
    proto_make_queue_pull(&h, 4, 26, 8, 100);
    set_args(ref(&w, PROTO_QUEUE_PULL, 4, 26, 8), 1, (int64_t[]){100});
    check_made("QUEUE_PULL", &h, &w);
    proto_make_queue_reply(&h, 1, 26, 8, 108, 8, 16, 100, 4096);
    set_args(ref(&w, PROTO_QUEUE_REPLY, 1, 26, 8), 5, (int64_t[]){108, 8, 16, 100, 4096});
    w.dtype = PROTO_DT_F32, w.nbytes = 8 * 16 * sizeof(float);
    check_made("QUEUE_REPLY", &h, &w);
    proto_make_queue_reply(&h, 1, 27, 0, 0, 0, 1, 0, 4096); /* nothing pushed yet: dim 1 */
    set_args(ref(&w, PROTO_QUEUE_REPLY, 1, 27, 0), 5, (int64_t[]){0, 0, 1, 0, 4096});
    w.dtype = PROTO_DT_F32;
    check_made("QUEUE_REPLY (empty)", &h, &w);
    proto_make_keys_push(&h, 4, 29, 9, 6, 32);
    set_args(ref(&w, PROTO_KEYS_PUSH, 4, 29, 9), 2, (int64_t[]){6, 32});
    w.dtype = PROTO_DT_F32, w.nbytes = 6 * 32 * sizeof(float);
    check_made("KEYS_PUSH", &h, &w);
    proto_make_keys_reply(&h, 1, 29, 9, 12, 32, 6, 6, 2);
    set_args(ref(&w, PROTO_KEYS_REPLY, 1, 29, 9), 5, (int64_t[]){12, 32, 6, 6, 2});
    w.dtype = PROTO_DT_F32, w.nbytes = 12 * 32 * sizeof(float);
    check_made("KEYS_REPLY", &h, &w);
    proto_make_metrics(&h, 4, 28, 60, 0.5, 1234.5, 1e-3);
    ref(&w, PROTO_METRICS, 4, 28, 60);
    w.nf = 3, w.f[PROTO_METRIC_LOSS] = 0.5, w.f[PROTO_METRIC_IMGS] = 1234.5;
    w.f[PROTO_METRIC_LR] = 1e-3;
    check_made("METRICS", &h, &w);
    proto_make_metrics_counters(&h, (const double[]){1, 2, 3, 4, 5}, 1000, 2000, 7, 9);
    w.nf = 8;
    for (int i = 0; i < 5; i++)
        w.f[PROTO_METRIC_DATA_S + i] = i + 1;
    set_args(&w, 4, (int64_t[]){1000, 2000, 7, 9});
    check_made("METRICS with counters", &h, &w);
}

/* The encoder refuses headers that a peer would reject. */
static void test_encode_refuses(void) {
    uint8_t buf[PROTO_HDR_MAX];
    char why[PROTO_WHY_MAX];
    size_t len;
    proto_hdr_t h;
    make_valid(&h, PROTO_PUSH);
    h.nbytes += 4;
    T_CHECK(proto_encode_hdr(&h, buf, sizeof buf, &len, why, sizeof why) == MIMIC_EINVAL);
    T_CHECK(strstr(why, "'n'") != NULL);
    proto_hdr_init(&h, PROTO_ERROR, 0);
    T_CHECK(proto_encode_hdr(&h, buf, sizeof buf, &len, why, sizeof why) == MIMIC_EINVAL);
    T_CHECK(strstr(why, "'a'") != NULL);
    proto_hdr_init(&h, PROTO_INVALID, 0);
    T_CHECK(proto_encode_hdr(&h, buf, sizeof buf, &len, why, sizeof why) == MIMIC_EINVAL);
    T_CHECK(strstr(why, "'t'") != NULL);
    make_valid(&h, PROTO_CKPT);
    h.str_len = 3; /* inconsistent with the text */
    T_CHECK(proto_encode_hdr(&h, buf, sizeof buf, &len, why, sizeof why) == MIMIC_EINVAL);
    T_CHECK(strstr(why, "'str'") != NULL);
    T_CHECK(proto_encode_hdr(NULL, buf, sizeof buf, &len, why, sizeof why) == MIMIC_EINVAL);
}

/* ---- hand-built msgpack headers ------------------------------------------------------- */

enum { V_U, V_I, V_D, V_S, V_NIL, V_BOOL, V_AI, V_AD, V_MAP, V_DEEP, V_RAW };
typedef struct {
    const char *k; /* NULL: an integer key */
    int kind;
    uint64_t u;
    int64_t i;
    double d;
    const char *s;
    size_t n; /* array length, nesting depth, raw or string length (0: strlen) */
} kv_t;

static size_t pack_kvs(uint8_t *out, size_t cap, const kv_t *kv, int nkv) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, (size_t)nkv);
    for (int j = 0; j < nkv; j++) {
        const kv_t *e = &kv[j];
        if (e->k) {
            msgpack_pack_str(&pk, strlen(e->k));
            msgpack_pack_str_body(&pk, e->k, strlen(e->k));
        } else {
            msgpack_pack_int(&pk, 7);
        }
        size_t slen = e->s ? (e->n ? e->n : strlen(e->s)) : 0;
        switch (e->kind) {
        case V_U:
            msgpack_pack_uint64(&pk, e->u);
            break;
        case V_I:
            msgpack_pack_int64(&pk, e->i);
            break;
        case V_D:
            msgpack_pack_double(&pk, e->d);
            break;
        case V_S:
            msgpack_pack_str(&pk, slen);
            msgpack_pack_str_body(&pk, e->s, slen);
            break;
        case V_NIL:
            msgpack_pack_nil(&pk);
            break;
        case V_BOOL:
            msgpack_pack_true(&pk);
            break;
        case V_AI:
            msgpack_pack_array(&pk, e->n);
            for (size_t i = 0; i < e->n; i++) {
                if (e->u)
                    msgpack_pack_uint64(&pk, e->u);
                else
                    msgpack_pack_int64(&pk, e->i);
            }
            break;
        case V_AD:
            msgpack_pack_array(&pk, e->n);
            for (size_t i = 0; i < e->n; i++)
                msgpack_pack_double(&pk, e->d);
            break;
        case V_MAP:
            msgpack_pack_map(&pk, 1);
            msgpack_pack_int(&pk, 1);
            msgpack_pack_int(&pk, 2);
            break;
        case V_DEEP:
            for (size_t i = 0; i < e->n; i++)
                msgpack_pack_array(&pk, 1);
            msgpack_pack_nil(&pk);
            break;
        case V_RAW:
            msgpack_sbuffer_write(&sb, e->s, e->n);
            break;
        }
    }
    size_t len = sb.size < cap ? sb.size : cap;
    memcpy(out, sb.data, len);
    msgpack_sbuffer_destroy(&sb);
    return len;
}

/* A valid PUSH header, field by field. */
#define NBASE 12
static void base_push(kv_t kv[NBASE]) {
    const kv_t b[NBASE] = {
        {"v", V_U, PROTO_VERSION, 0, 0, 0, 0},
        {"t", V_U, PROTO_PUSH, 0, 0, 0, 0},
        {"s", V_I, 0, 3, 0, 0, 0},
        {"seq", V_U, 5, 0, 0, 0, 0},
        {"st", V_U, 10, 0, 0, 0, 0},
        {"lo", V_U, 100, 0, 0, 0, 0},
        {"hi", V_U, 200, 0, 0, 0, 0},
        {"dt", V_U, PROTO_DT_F32, 0, 0, 0, 0},
        {"n", V_U, 400, 0, 0, 0, 0},
        {"a", V_AI, 0, 32, 0, 0, 1},
        {"f", V_AD, 0, 0, 0.5, 0, 1},
        {"str", V_S, 0, 0, 0, "note", 0},
    };
    memcpy(kv, b, sizeof b);
}

static int kv_index(const kv_t *kv, int n, const char *key) {
    for (int j = 0; j < n; j++)
        if (kv[j].k && strcmp(kv[j].k, key) == 0) return j;
    return -1;
}

/* Decodes buf, expecting rc (and, when needle is given, a reason containing it). */
static void expect_rc(const char *what, const uint8_t *buf, size_t len, int want,
                      const char *needle) {
    proto_hdr_t h;
    char why[PROTO_WHY_MAX];
    int rc = proto_decode_hdr(&h, buf, len, why, sizeof why);
    int ok = rc == want && (want == 0 || why[0] != '\0') && (!needle || strstr(why, needle));
    if (!ok) fprintf(stderr, "  %s: rc %d (want %d), why \"%s\"\n", what, rc, want, why);
    T_CHECK(ok);
}

static void expect_kvs(const char *what, const kv_t *kv, int n, int want, const char *needle) {
    uint8_t buf[3 * PROTO_HDR_MAX];
    size_t len = pack_kvs(buf, sizeof buf, kv, n);
    expect_rc(what, buf, len, want, needle);
}

/* Base PUSH with entry `key` replaced by `v`. */
static void expect_field(const char *key, kv_t v, int want, const char *needle) {
    kv_t kv[NBASE];
    base_push(kv);
    int j = kv_index(kv, NBASE, key);
    MIMIC_CHECK(j >= 0);
    v.k = key;
    kv[j] = v;
    char what[64];
    snprintf(what, sizeof what, "field %s kind %d", key, v.kind);
    expect_kvs(what, kv, NBASE, want, needle);
}

static void test_field_types(void) {
    kv_t kv[NBASE];
    base_push(kv);
    expect_kvs("base PUSH", kv, NBASE, 0, NULL);

    /* Wrong types for every field. */
    const char *unsigned_keys[] = {"v", "t", "seq", "st", "lo", "hi", "dt", "n"};
    for (size_t i = 0; i < sizeof unsigned_keys / sizeof *unsigned_keys; i++) {
        const char *k = unsigned_keys[i];
        char needle[16];
        snprintf(needle, sizeof needle, "'%s'", k);
        expect_field(k, (kv_t){0, V_S, 0, 0, 0, "1", 0}, MIMIC_EFORMAT, needle);
        expect_field(k, (kv_t){0, V_D, 0, 0, 1.0, 0, 0}, MIMIC_EFORMAT, needle);
        expect_field(k, (kv_t){0, V_I, 0, -1, 0, 0, 0}, MIMIC_EFORMAT, needle);
        expect_field(k, (kv_t){0, V_NIL, 0, 0, 0, 0, 0}, MIMIC_EFORMAT, needle);
        expect_field(k, (kv_t){0, V_BOOL, 0, 0, 0, 0, 0}, MIMIC_EFORMAT, needle);
        expect_field(k, (kv_t){0, V_AI, 0, 1, 0, 0, 1}, MIMIC_EFORMAT, needle);
        expect_field(k, (kv_t){0, V_MAP, 0, 0, 0, 0, 0}, MIMIC_EFORMAT, needle);
    }
    expect_field("s", (kv_t){0, V_S, 0, 0, 0, "3", 0}, MIMIC_EFORMAT, "'s'");
    expect_field("s", (kv_t){0, V_D, 0, 0, 3.0, 0, 0}, MIMIC_EFORMAT, "'s'");
    expect_field("s", (kv_t){0, V_U, 1ull << 40, 0, 0, 0, 0}, MIMIC_EFORMAT, "'s'");
    expect_field("s", (kv_t){0, V_I, 0, -5, 0, 0, 0}, MIMIC_EFORMAT, "'s'");
    expect_field("s", (kv_t){0, V_I, 0, -1, 0, 0, 0}, 0, NULL);
    expect_field("a", (kv_t){0, V_U, 3, 0, 0, 0, 0}, MIMIC_EFORMAT, "'a'");
    expect_field("a", (kv_t){0, V_S, 0, 0, 0, "x", 0}, MIMIC_EFORMAT, "'a'");
    expect_field("a", (kv_t){0, V_AD, 0, 0, 1.5, 0, 2}, MIMIC_EFORMAT, "'a[0]'");
    expect_field("a", (kv_t){0, V_AI, 1ull << 63, 0, 0, 0, 1}, MIMIC_EFORMAT, "'a[0]'");
    expect_field("a", (kv_t){0, V_AI, 0, 1, 0, 0, 9}, MIMIC_EFORMAT, "'a': 9 entries");
    expect_field("a", (kv_t){0, V_AI, 0, 1, 0, 0, 8}, 0, NULL);
    expect_field("f", (kv_t){0, V_D, 0, 0, 1.0, 0, 0}, MIMIC_EFORMAT, "'f'");
    expect_field("f", (kv_t){0, V_AI, 0, 1, 0, 0, 2}, MIMIC_EFORMAT, "'f[0]'");
    expect_field("f", (kv_t){0, V_AD, 0, 0, 1.0, 0, 9}, MIMIC_EFORMAT, "'f': 9 entries");
    expect_field("f", (kv_t){0, V_AD, 0, 0, 1.0, 0, 8}, 0, NULL);
    expect_field("str", (kv_t){0, V_U, 3, 0, 0, 0, 0}, MIMIC_EFORMAT, "'str'");
    expect_field("str", (kv_t){0, V_AI, 0, 1, 0, 0, 1}, MIMIC_EFORMAT, "'str'");
    expect_field("str", (kv_t){0, V_S, 0, 0, 0, "a\0b", 3}, MIMIC_EFORMAT, "NUL");

    static char longstr[PROTO_STR_MAX + 2];
    memset(longstr, 'z', PROTO_STR_MAX + 1);
    expect_field("str", (kv_t){0, V_S, 0, 0, 0, longstr, PROTO_STR_MAX + 1}, MIMIC_EFORMAT,
                 "'str': 1025 bytes");
    expect_field("str", (kv_t){0, V_S, 0, 0, 0, longstr, PROTO_STR_MAX}, 0, NULL);

    /* Semantics. */
    expect_field("v", (kv_t){0, V_U, 2, 0, 0, 0, 0}, MIMIC_EFORMAT, "'v': protocol version 2");
    expect_field("v", (kv_t){0, V_U, 1ull << 40, 0, 0, 0, 0}, MIMIC_EFORMAT, "'v'");
    expect_field("t", (kv_t){0, V_U, 0, 0, 0, 0, 0}, MIMIC_EFORMAT, "'t': unknown");
    expect_field("t", (kv_t){0, V_U, 99, 0, 0, 0, 0}, MIMIC_EFORMAT, "'t': unknown");
    expect_field("dt", (kv_t){0, V_U, 9, 0, 0, 0, 0}, MIMIC_EFORMAT, "'dt': unknown");
    expect_field("dt", (kv_t){0, V_U, PROTO_DT_I64, 0, 0, 0, 0}, MIMIC_EFORMAT,
                 "'dt': PUSH payload must be f32 or bf16, got i64");
    /* bf16 (cluster.wire): 2 bytes a key, so the f32 length of the range is wrong */
    expect_field("dt", (kv_t){0, V_U, PROTO_DT_BF16, 0, 0, 0, 0}, MIMIC_EFORMAT,
                 "needs 200 bytes, header says 400");
    expect_field("dt", (kv_t){0, V_U, PROTO_DT_NONE, 0, 0, 0, 0}, MIMIC_EFORMAT, "'dt'");
    expect_field("lo", (kv_t){0, V_U, 300, 0, 0, 0, 0}, MIMIC_EFORMAT, "'lo'");
    expect_field("n", (kv_t){0, V_U, 396, 0, 0, 0, 0}, MIMIC_EFORMAT, "'n'");
    expect_field("n", (kv_t){0, V_U, 402, 0, 0, 0, 0}, MIMIC_EFORMAT, "whole number");
    /* A key range so wide that its byte length overflows 64 bits. */
    kv_t wide[NBASE];
    base_push(wide);
    wide[kv_index(wide, NBASE, "lo")].u = 0;
    wide[kv_index(wide, NBASE, "hi")].u = UINT64_MAX;
    wide[kv_index(wide, NBASE, "n")].u = UINT64_MAX - 3;
    expect_kvs("overflowing range", wide, NBASE, MIMIC_EFORMAT, "overflows");
    /* A negative batch in a[0] (named arg, must be >= 0). */
    expect_field("a", (kv_t){0, V_AI, 0, -3, 0, 0, 1}, MIMIC_EFORMAT, "'a[0]' (batch)");

    /* Forward compatibility: unknown keys are skipped, whatever they hold. */
    kv_t ext[NBASE + 2];
    base_push(ext);
    ext[NBASE] = (kv_t){"zz", V_MAP, 0, 0, 0, 0, 0};
    ext[NBASE + 1] = (kv_t){"future_field", V_DEEP, 0, 0, 0, 0, 5};
    expect_kvs("unknown keys", ext, NBASE + 2, 0, NULL);

    /* Structural problems. */
    base_push(ext);
    ext[NBASE] = (kv_t){"lo", V_U, 100, 0, 0, 0, 0};
    expect_kvs("duplicate key", ext, NBASE + 1, MIMIC_EFORMAT, "'lo' appears twice");
    ext[NBASE] = (kv_t){NULL, V_U, 1, 0, 0, 0, 0};
    expect_kvs("integer key", ext, NBASE + 1, MIMIC_EFORMAT, "not a string");
    ext[NBASE] = (kv_t){"zz", V_DEEP, 0, 0, 0, 0, 200};
    expect_kvs("deep nesting", ext, NBASE + 1, MIMIC_EFORMAT, "deeper");
    static const char huge_arr[] = "\xdd\xff\xff\xff\xff";
    ext[NBASE] = (kv_t){"zz", V_RAW, 0, 0, 0, huge_arr, 5};
    expect_kvs("array declaring 2^32 entries", ext, NBASE + 1, MIMIC_EFORMAT, "declares");
    static const char huge_map[] = "\xdf\x7f\xff\xff\xff\x00";
    ext[NBASE] = (kv_t){"zz", V_RAW, 0, 0, 0, huge_map, 6};
    expect_kvs("map declaring 2^31 entries", ext, NBASE + 1, MIMIC_EFORMAT, "declares");
    static const char huge_str[] = "\xdb\xff\xff\xff\xf0xx";
    ext[NBASE] = (kv_t){"zz", V_RAW, 0, 0, 0, huge_str, 7};
    expect_kvs("string declaring 4 GB", ext, NBASE + 1, MIMIC_EFORMAT, "truncated");
    static const char never_used[] = "\xc1";
    ext[NBASE] = (kv_t){"zz", V_RAW, 0, 0, 0, never_used, 1};
    expect_kvs("byte 0xc1", ext, NBASE + 1, MIMIC_EFORMAT, "0xc1");
    static char big[5000];
    memset(big, 'q', sizeof big);
    ext[NBASE] = (kv_t){"zz", V_S, 0, 0, 0, big, sizeof big};
    expect_kvs("header too large", ext, NBASE + 1, MIMIC_EFORMAT, "limit 4096");
}

/* Required keys: for every type, dropping a required key is refused by name. */
static const char *const required[PROTO_TYPE_COUNT] = {
    [PROTO_REGISTER] = "a",
    [PROTO_REGISTER_ACK] = "a",
    [PROTO_HEARTBEAT] = "",
    [PROTO_LEAVE] = "",
    [PROTO_MEMBERSHIP] = "a dt n",
    [PROTO_CHUNK_REQ] = "",
    [PROTO_CHUNK] = "a dt n",
    [PROTO_CHUNK_DONE] = "a",
    [PROTO_PUSH] = "st lo hi dt n",
    [PROTO_PUSH_ACK] = "st lo hi",
    [PROTO_PULL] = "lo hi a",
    [PROTO_PULL_REPLY] = "st lo hi dt n a",
    [PROTO_QUEUE_PUSH] = "a dt n",
    [PROTO_QUEUE_PULL] = "a",
    [PROTO_QUEUE_REPLY] = "a dt n",
    [PROTO_CKPT] = "st str",
    [PROTO_CKPT_DONE] = "st a",
    [PROTO_METRICS] = "f",
    [PROTO_SHUTDOWN] = "",
    [PROTO_ERROR] = "a str",
    [PROTO_ACK] = "a",
    [PROTO_KEYS_PUSH] = "a dt n",
    [PROTO_KEYS_REPLY] = "a dt n",
};

/* Re-packs the map in buf without key `drop`. */
static size_t repack_without(uint8_t *out, size_t cap, const uint8_t *buf, size_t len,
                             const char *drop) {
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0, outlen = 0;
    if (msgpack_unpack_next(&u, (const char *)buf, len, &off) == MSGPACK_UNPACK_SUCCESS) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        const msgpack_object_map *m = &u.data.via.map;
        uint32_t keep = 0;
        for (uint32_t i = 0; i < m->size; i++)
            keep += !(m->ptr[i].key.via.str.size == strlen(drop) &&
                      memcmp(m->ptr[i].key.via.str.ptr, drop, strlen(drop)) == 0);
        msgpack_pack_map(&pk, keep);
        for (uint32_t i = 0; i < m->size; i++) {
            if (m->ptr[i].key.via.str.size == strlen(drop) &&
                memcmp(m->ptr[i].key.via.str.ptr, drop, strlen(drop)) == 0)
                continue;
            msgpack_pack_object(&pk, m->ptr[i].key);
            msgpack_pack_object(&pk, m->ptr[i].val);
        }
        outlen = sb.size < cap ? sb.size : cap;
        memcpy(out, sb.data, outlen);
        msgpack_sbuffer_destroy(&sb);
    }
    msgpack_unpacked_destroy(&u);
    return outlen;
}

static void test_required(void) {
    uint8_t buf[PROTO_HDR_MAX], cut[PROTO_HDR_MAX];
    char why[PROTO_WHY_MAX];
    for (int t = 1; t < PROTO_TYPE_COUNT; t++) {
        proto_hdr_t h;
        size_t len = 0;
        make_valid(&h, (proto_type_t)t);
        T_CHECK(proto_encode_hdr(&h, buf, sizeof buf, &len, why, sizeof why) == 0);
        char keys[64];
        snprintf(keys, sizeof keys, "v t s %s", required[t]);
        for (char *save = NULL, *k = strtok_r(keys, " ", &save); k;
             k = strtok_r(NULL, " ", &save)) {
            size_t clen = repack_without(cut, sizeof cut, buf, len, k);
            char needle[32], what[64];
            snprintf(needle, sizeof needle, "'%s' missing", k);
            snprintf(what, sizeof what, "%s without %s", proto_type_name(t), k);
            T_CHECK(clen > 0 && clen < len);
            expect_rc(what, cut, clen, MIMIC_EFORMAT, needle);
        }
    }
}

/* Type-specific rules beyond field types. */
static void expect_hdr(const char *what, const proto_hdr_t *h, const char *needle) {
    char why[PROTO_WHY_MAX];
    int rc = proto_validate(h, (size_t)h->nbytes, LIMIT, why, sizeof why);
    int ok = needle ? (rc == MIMIC_EFORMAT && strstr(why, needle) != NULL) : rc == 0;
    if (!ok) fprintf(stderr, "  %s: rc %d why \"%s\"\n", what, rc, why);
    T_CHECK(ok);
}

static void test_semantics(void) {
    proto_hdr_t h;
    make_valid(&h, PROTO_REGISTER);
    h.a[0] = 7;
    expect_hdr("register role 7", &h, "'a[0]' (role)");
    h.a[0] = PROTO_ROLE_SERVER;
    proto_hdr_set_str(&h, "");
    expect_hdr("server without address", &h, "bind address");
    make_valid(&h, PROTO_MEMBERSHIP);
    h.nbytes += 4;
    expect_hdr("membership n", &h, "'n'");
    make_valid(&h, PROTO_MEMBERSHIP);
    h.dtype = PROTO_DT_F32;
    expect_hdr("membership dtype", &h, "'dt'");
    make_valid(&h, PROTO_MEMBERSHIP); /* bare i32 ids (before tokens) are refused */
    h.dtype = PROTO_DT_I32;
    expect_hdr("membership of i32 ids", &h, "'dt'");
    make_valid(&h, PROTO_CHUNK);
    h.dtype = PROTO_DT_U8;
    expect_hdr("chunk dtype", &h, "must be i64 or u32, got u8");
    make_valid(&h, PROTO_CHUNK);
    h.na = 5;
    h.a[4] = 9;
    expect_hdr("chunk status", &h, "'a[4]' (status)");
    make_valid(&h, PROTO_CHUNK);
    h.a[PROTO_CHUNK_COUNT] = -1;
    expect_hdr("chunk negative count", &h, "'a[3]' (count)");
    make_valid(&h, PROTO_PULL);
    h.a[0] = 2;
    expect_hdr("pull which", &h, "'a[0]' (which)");
    make_valid(&h, PROTO_PULL);
    h.dtype = PROTO_DT_F32;
    h.nbytes = 4;
    expect_hdr("pull with payload", &h, "carries no payload");
    /* cluster.wire: the reply dtype a pull asks for is f32 or bf16, and a bf16 payload's
     * length is 2 bytes a key */
    make_valid(&h, PROTO_PULL);
    h.na = 3;
    h.a[PROTO_PULL_DTYPE] = PROTO_DT_I64;
    expect_hdr("pull dtype i64", &h, "'a[2]' (dtype)");
    h.a[PROTO_PULL_DTYPE] = 99;
    expect_hdr("pull dtype unknown", &h, "'a[2]' (dtype)");
    make_valid(&h, PROTO_PULL_REPLY);
    h.lo = 0, h.hi = 100, h.dtype = PROTO_DT_BF16, h.nbytes = 400;
    expect_hdr("bf16 reply with f32 length", &h, "needs 200 bytes");
    h.nbytes = 201;
    expect_hdr("bf16 reply odd length", &h, "whole number of bf16");
    make_valid(&h, PROTO_PUSH);
    h.lo = 0, h.hi = 100, h.dtype = PROTO_DT_F32, h.nbytes = 200;
    expect_hdr("f32 push with bf16 length", &h, "needs 400 bytes");
    make_valid(&h, PROTO_QUEUE_PUSH);
    h.a[1] = 0;
    expect_hdr("queue dim 0", &h, "'a[1]' (dim)");
    make_valid(&h, PROTO_QUEUE_PUSH);
    h.a[0] = 1;
    h.a[1] = INT64_MAX;
    h.nbytes = 0;
    expect_hdr("queue dim overflow", &h, "(dim)");
    make_valid(&h, PROTO_QUEUE_REPLY);
    h.a[PROTO_QREP_SLOT] = h.a[PROTO_QREP_CAPACITY];
    expect_hdr("queue slot", &h, "'a[3]' (slot)");
    make_valid(&h, PROTO_QUEUE_REPLY);
    h.a[PROTO_QREP_CAPACITY] = 0;
    h.a[PROTO_QREP_COUNT] = 1;
    h.nbytes = 512;
    expect_hdr("queue count > capacity", &h, "'a[1]' (count)");
    make_valid(&h, PROTO_KEYS_PUSH);
    h.a[PROTO_KPUSH_DIM] = 0;
    expect_hdr("keys dim 0", &h, "'a[1]' (dim)");
    make_valid(&h, PROTO_KEYS_PUSH);
    h.a[PROTO_KPUSH_COUNT] = 4;
    h.nbytes = 4 * 256 * 4 - 4; /* a row one float short */
    expect_hdr("keys n short", &h, "needs 4096 bytes");
    make_valid(&h, PROTO_KEYS_PUSH);
    h.a[PROTO_KPUSH_COUNT] = INT64_MAX / 2; /* count x dim x 4 overflows */
    expect_hdr("keys count overflow", &h, "overflows");
    make_valid(&h, PROTO_KEYS_PUSH);
    h.a[PROTO_KPUSH_COUNT] = -1;
    expect_hdr("keys negative count", &h, "'a[0]' (count)");
    make_valid(&h, PROTO_KEYS_PUSH);
    h.na = 1;
    expect_hdr("keys push without dim", &h, "'a'");
    make_valid(&h, PROTO_KEYS_PUSH);
    h.dtype = PROTO_DT_I64;
    expect_hdr("keys dtype", &h, "must be f32");
    make_valid(&h, PROTO_KEYS_REPLY);
    h.a[PROTO_KREP_OFFSET] = h.a[PROTO_KREP_COUNT];
    h.a[PROTO_KREP_MINE] = 1;
    expect_hdr("keys reply rows outside", &h, "'a[3]' (mine)");
    make_valid(&h, PROTO_KEYS_REPLY);
    h.a[PROTO_KREP_OFFSET] = INT64_MAX;
    h.a[PROTO_KREP_MINE] = INT64_MAX;
    expect_hdr("keys reply offset + mine overflow", &h, "'a[3]' (mine)");
    make_valid(&h, PROTO_QUEUE_PUSH);
    h.a[PROTO_QPUSH_COUNT] = 3;
    h.nbytes = 3 * 128 * 4 + 4; /* one float too many */
    expect_hdr("queue push n long", &h, "needs 1536 bytes");
    make_valid(&h, PROTO_ERROR);
    h.a[0] = 3;
    expect_hdr("error code positive", &h, "'a[0]' (code)");
    make_valid(&h, PROTO_ERROR);
    proto_hdr_set_str(&h, "");
    expect_hdr("error without reason", &h, "'str'");
    make_valid(&h, PROTO_CKPT);
    proto_hdr_set_str(&h, "");
    expect_hdr("ckpt without directory", &h, "'str'");
    make_valid(&h, PROTO_CKPT_DONE);
    h.a[0] = 1;
    expect_hdr("ckpt_done status", &h, "'a[0]' (status)");
    /* CHUNK_DONE's step time: absent or in [0, 1 day]; negative, NaN, inf refused */
    const double busy_bad[] = {-0.5, NAN, INFINITY, 1e9};
    for (int i = 0; i < 4; i++) {
        proto_make_chunk_done(&h, 4, 22, 2, 17, 8, 0.25);
        expect_hdr("chunk_done busy 0.25", &h, NULL);
        h.f[PROTO_CDONE_BUSY_S] = busy_bad[i];
        expect_hdr("chunk_done busy out of range", &h, "'f[0]' (busy seconds)");
    }
    proto_make_chunk_done(&h, 4, 22, 2, 17, 8, -1);
    T_CHECK(h.nf == 0);
    expect_hdr("chunk_done without busy", &h, NULL);
    make_valid(&h, PROTO_ACK);
    h.a[0] = 0;
    expect_hdr("ack of nothing", &h, "'a[0]' (type)");
    make_valid(&h, PROTO_METRICS);
    h.nf = 0;
    expect_hdr("metrics without values", &h, "'f'");
    /* the phase counters: all five or none; finite, >= 0; the byte counts >= 0 */
    proto_make_metrics(&h, 4, 28, 60, 0.5, 100, 1e-3);
    proto_make_metrics_counters(&h, (const double[]){1, 2, 3, 4, 5}, 10, 20, 0, 3);
    expect_hdr("metrics with counters", &h, NULL);
    h.nf = 5;
    expect_hdr("metrics with 2 of 5 phases", &h, "'f': METRICS carries 3 or 8");
    const double phase_bad[] = {-1, NAN, INFINITY, 1e13};
    for (int i = 0; i < 4; i++) {
        proto_make_metrics_counters(&h, (const double[]){1, 2, 3, 4, 5}, 10, 20, 0, 3);
        h.f[PROTO_METRIC_BWD_S] = phase_bad[i];
        expect_hdr("metrics phase out of range", &h, "'f[5]' (phase seconds)");
    }
    proto_make_metrics_counters(&h, (const double[]){1, 2, 3, 4, 5}, 10, 20, 0, 3);
    h.a[PROTO_METRIC_BYTES_IN] = -1;
    expect_hdr("metrics negative bytes pulled", &h, "'a[1]' (bytes pulled)");
    make_valid(&h, PROTO_HEARTBEAT);
    h.sender = -2;
    expect_hdr("sender -2", &h, "'s'");
    make_valid(&h, PROTO_HEARTBEAT);
    h.nbytes = 4;
    expect_hdr("heartbeat with n", &h, "'n'");
    make_valid(&h, PROTO_REGISTER_ACK);
    h.dtype = PROTO_DT_NONE;
    h.nbytes = 10;
    expect_hdr("dtype none with n", &h, "'n'");
    make_valid(&h, PROTO_PUSH_ACK);
    h.lo = h.hi + 1;
    expect_hdr("lo > hi", &h, "'lo'");

    /* proto_validate: payload length and limit. */
    char why[PROTO_WHY_MAX];
    make_valid(&h, PROTO_PUSH);
    h.lo = 0;
    h.hi = 249;
    h.dtype = PROTO_DT_F32;
    h.nbytes = 996;
    T_CHECK(proto_validate(&h, 1000, LIMIT, why, sizeof why) == MIMIC_EFORMAT);
    T_CHECK(strcmp(why, "header field 'n': payload is 1000 bytes but header says 996") == 0);
    T_CHECK(proto_validate(&h, 996, 512, why, sizeof why) == MIMIC_EFORMAT);
    T_CHECK(strstr(why, "exceeds the limit of 512") != NULL);
    T_CHECK(proto_validate(&h, 996, 996, why, sizeof why) == 0);
    T_CHECK(proto_validate(&h, 996, 996, NULL, 0) == 0);
    T_CHECK(proto_validate(&h, 0, 996, NULL, 0) == MIMIC_EFORMAT); /* no why buffer: fine */
}

/* Empty, truncated, non-map and random inputs. */
static void test_garbage(void) {
    uint8_t buf[PROTO_HDR_MAX] = {0};
    char why[PROTO_WHY_MAX];
    proto_hdr_t h;
    size_t len = 0;
    expect_rc("empty", buf, 0, MIMIC_EFORMAT, "empty");
    expect_rc("NULL", NULL, 0, MIMIC_EFORMAT, "empty");
    T_CHECK(proto_decode_hdr(&h, NULL, 10, why, sizeof why) == MIMIC_EFORMAT);

    /* Every truncation of a full header fails. */
    make_valid(&h, PROTO_METRICS);
    h.na = 3;
    h.a[0] = h.a[1] = h.a[2] = 123456789; /* METRICS' counters: >= 0 */
    proto_hdr_set_str(&h, "loss went up");
    T_CHECK(proto_encode_hdr(&h, buf, sizeof buf, &len, why, sizeof why) == 0);
    int bad = 0;
    for (size_t cut = 0; cut < len; cut++) {
        proto_hdr_t g;
        if (proto_decode_hdr(&g, buf, cut, why, sizeof why) != MIMIC_EFORMAT || !why[0]) bad++;
    }
    T_CHECK(bad == 0);
    printf("every truncation of a %zu byte header refused: %s\n", len, bad ? "FAIL" : "ok");
    /* Trailing bytes after the map. */
    buf[len] = 0x00;
    expect_rc("trailing byte", buf, len + 1, MIMIC_EFORMAT, "trailing");

    /* Not a map. */
    static const uint8_t arr[] = {0x92, 0x01, 0x02}, num[] = {0x05}, str[] = {0xa1, 'v'},
                         nil[] = {0xc0}, dbl[] = {0xcb, 0, 0, 0, 0, 0, 0, 0, 0};
    expect_rc("array", arr, sizeof arr, MIMIC_EFORMAT, "not a msgpack map (got array)");
    expect_rc("int", num, sizeof num, MIMIC_EFORMAT, "not a msgpack map");
    expect_rc("string", str, sizeof str, MIMIC_EFORMAT, "not a msgpack map (got string)");
    expect_rc("nil", nil, sizeof nil, MIMIC_EFORMAT, "not a msgpack map (got nil)");
    expect_rc("double", dbl, sizeof dbl, MIMIC_EFORMAT, "not a msgpack map (got float)");
    static const uint8_t empty_map[] = {0x80}, only_v[] = {0x81, 0xa1, 'v', 0x01};
    expect_rc("empty map", empty_map, sizeof empty_map, MIMIC_EFORMAT, "'v' missing");
    expect_rc("map with v only", only_v, sizeof only_v, MIMIC_EFORMAT, "'t' missing");

    /* Random bytes, and random bytes behind a map header so the decoder gets further. */
    int unexpected = 0, accepted = 0;
    for (int i = 0; i < 50000; i++) {
        size_t n = rnd_below(80);
        for (size_t j = 0; j < n; j++)
            buf[j] = (uint8_t)rnd();
        if (n && (i & 1)) buf[0] = (uint8_t)(0x80 | rnd_below(16));
        proto_hdr_t g;
        why[0] = '\0';
        int rc = proto_decode_hdr(&g, buf, n, why, sizeof why);
        if (rc == 0)
            accepted++;
        else if (rc != MIMIC_EFORMAT || !why[0])
            unexpected++;
    }
    T_CHECK(unexpected == 0);
    printf("50000 random inputs: %d accepted, none crashed, %d unexpected codes\n", accepted,
           unexpected);

    /* Random mutations of valid headers: still never anything but 0 or EFORMAT. */
    unexpected = 0;
    for (int i = 0; i < 20000; i++) {
        proto_hdr_t g;
        make_valid(&g, (proto_type_t)(1 + rnd_below(PROTO_TYPE_COUNT - 1)));
        T_CHECK(proto_encode_hdr(&g, buf, sizeof buf, &len, why, sizeof why) == 0);
        int flips = 1 + (int)rnd_below(4);
        for (int f = 0; f < flips; f++)
            buf[rnd_below(len)] ^= (uint8_t)(1u << rnd_below(8));
        int rc = proto_decode_hdr(&g, buf, len, why, sizeof why);
        if (rc != 0 && (rc != MIMIC_EFORMAT || !why[0])) unexpected++;
    }
    T_CHECK(unexpected == 0);
}

/* ---- ZeroMQ ---------------------------------------------------------------------------- */

typedef struct {
    atomic_int freed;
} free_flag_t;

static void free_and_flag(void *data, void *hint) {
    free(data);
    atomic_fetch_add(&((free_flag_t *)hint)->freed, 1);
}

static float pattern(size_t i) {
    return (float)(i % 1000) * 0.25f - 17.0f;
}

static void *new_socket(void *ctx, int type) {
    void *s = zmq_socket(ctx, type);
    MIMIC_CHECK(s != NULL);
    int zero = 0, tmo = 2000;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &tmo, sizeof tmo);
    return s;
}

static int wait_flag(atomic_int *v, int want, int timeout_ms) {
    double end = mimic_now() + timeout_ms * 1e-3;
    while (atomic_load(v) < want && mimic_now() < end) {
        struct timespec nap = {0, 1000000};
        nanosleep(&nap, NULL);
    }
    return atomic_load(v) >= want;
}

/* Router receives one message expecting failure whose reason contains needle, answers
 * ERROR, and the dealer sees the reason; then a valid HEARTBEAT still gets through. */
static void expect_refused(void *router, void *dealer, const char *what, size_t limit,
                           const char *needle, uint64_t *seq) {
    proto_msg_t m, r;
    int rc = proto_recv(router, &m, limit, 2000);
    int ok = rc == MIMIC_EFORMAT && strstr(m.why, needle) != NULL && m.idlen > 0;
    printf("  %-34s -> %s\n", what, m.why);
    if (!ok) fprintf(stderr, "  %s: rc %d why \"%s\" (want \"%s\")\n", what, rc, m.why, needle);
    T_CHECK(ok);
    T_CHECK(m.has_payload == 0 && proto_msg_data(&m) == NULL);
    T_CHECK(proto_reply_error(router, PROTO_ID_SCHEDULER, &m, rc, m.why) == 0);
    T_CHECK(proto_recv(dealer, &r, LIMIT, 2000) == 0);
    T_CHECK(r.hdr.type == PROTO_ERROR && r.hdr.a[PROTO_ERR_CODE] == MIMIC_EFORMAT);
    T_CHECK(r.hdr.sender == PROTO_ID_SCHEDULER && strcmp(r.hdr.str, m.why) == 0);
    proto_msg_close(&m);
    proto_msg_close(&r);

    proto_hdr_t h;
    proto_make_heartbeat(&h, 4, ++*seq, 0);
    T_CHECK(proto_send(dealer, NULL, 0, &h, NULL, NULL, NULL) == 0);
    rc = proto_recv(router, &m, limit, 2000);
    T_CHECK(rc == 0 && m.hdr.type == PROTO_HEARTBEAT && m.hdr.seq == *seq);
    proto_msg_close(&m);
}

static void send_raw(void *sock, const void *frames[], const size_t lens[], int n) {
    for (int i = 0; i < n; i++)
        T_CHECK(zmq_send(sock, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
}

/* 1. A 4 MB gradient, zero-copy, ownership moved to ZeroMQ, and PUSH_ACK back. */
static void sock_zero_copy(void *router, void *dealer, uint64_t *seq) {
    const size_t nf = (4u << 20) / sizeof(float);
    float *grad = malloc(nf * sizeof(float));
    MIMIC_CHECK(grad != NULL);
    for (size_t i = 0; i < nf; i++)
        grad[i] = pattern(i);
    free_flag_t flag = {0};
    proto_hdr_t h;
    proto_make_push(&h, 3, ++*seq, 42, 1000, 1000 + nf, 64);
    T_CHECK(proto_send(dealer, NULL, 0, &h, grad, free_and_flag, &flag) == 0);
    proto_msg_t m, r;
    int rc = proto_recv(router, &m, LIMIT, 2000);
    T_CHECK(rc == 0);
    T_CHECK(proto_hdr_equal(&m.hdr, &h));
    T_CHECK(m.idlen > 0 && proto_msg_size(&m) == nf * sizeof(float));
    const float *got = proto_msg_data(&m);
    T_CHECK(got != NULL && (uintptr_t)got % sizeof(float) == 0);
    size_t wrong = 0;
    for (size_t i = 0; got && i < nf; i++)
        wrong += got[i] != pattern(i);
    T_CHECK(wrong == 0);
    /* Reply PUSH_ACK to the identity. */
    proto_hdr_t ack;
    proto_make_push_ack(&ack, 1, m.hdr.seq, m.hdr.step + 1, m.hdr.lo, m.hdr.hi);
    T_CHECK(proto_send(router, m.id, m.idlen, &ack, NULL, NULL, NULL) == 0);
    proto_msg_close(&m);
    proto_msg_close(&m); /* twice is harmless */
    T_CHECK(proto_recv(dealer, &r, LIMIT, 2000) == 0);
    T_CHECK(r.hdr.type == PROTO_PUSH_ACK && r.hdr.seq == *seq && r.hdr.step == 43);
    T_CHECK(r.idlen == 0 && proto_msg_data(&r) == NULL && proto_msg_size(&r) == 0);
    proto_msg_close(&r);
    T_CHECK(wait_flag(&flag.freed, 1, 2000)); /* ZeroMQ released the gradient exactly once */
    printf("  4 MB zero-copy PUSH, PUSH_ACK back, buffer released: %s\n",
           atomic_load(&flag.freed) == 1 ? "ok" : "FAIL");
}

/* 2. Malformed multiparts: each refused with a reason, then the next message passes. */
static void sock_malformed(void *router, void *dealer, uint64_t *seq) {
    proto_hdr_t h;
    uint8_t hb[PROTO_HDR_MAX];
    size_t hl = 0;
    char why[PROTO_WHY_MAX];
    {
        const void *f[] = {"junk1", "junk2", "junk3"};
        const size_t l[] = {5, 5, 5};
        send_raw(dealer, f, l, 3);
        expect_refused(router, dealer, "3 junk frames", LIMIT, "not a msgpack map", seq);
    }
    {
        static const uint8_t v2[] = {0x83, 0xa1, 'v', 0x02, 0xa1, 't', 0x03, 0xa1, 's', 0x01};
        const void *f[] = {v2};
        const size_t l[] = {sizeof v2};
        send_raw(dealer, f, l, 1);
        expect_refused(router, dealer, "1 frame, version 2", LIMIT, "'v': protocol version 2", seq);
    }
    {
        const void *f[] = {"\xdd\xff\xff\xff\xff"};
        const size_t l[] = {5};
        send_raw(dealer, f, l, 1);
        expect_refused(router, dealer, "1 frame, 2^32-entry array", LIMIT, "declares", seq);
    }
    {
        static uint8_t big[PROTO_HDR_MAX + 1];
        const void *f[] = {big};
        const size_t l[] = {sizeof big};
        send_raw(dealer, f, l, 1);
        expect_refused(router, dealer, "header frame of 4097 bytes", LIMIT, "limit 4096", seq);
    }
    /* A well-formed PUSH of 1 MB sent to a receiver that accepts 64 KB. */
    size_t big_n = 1u << 20;
    uint8_t *bigp = calloc(1, big_n);
    MIMIC_CHECK(bigp != NULL);
    proto_hdr_init(&h, PROTO_PUSH, 3);
    h.hi = big_n / 4;
    h.dtype = PROTO_DT_F32;
    h.nbytes = big_n;
    T_CHECK(proto_send(dealer, NULL, 0, &h, bigp, NULL, NULL) == 0);
    expect_refused(router, dealer, "1 MB payload, limit 64 KB", 64u << 10,
                   "payload of 1048576 bytes exceeds the limit of 65536", seq);
    /* Header says 400 bytes, payload frame has 10000. */
    proto_hdr_init(&h, PROTO_PUSH, 3);
    h.hi = 100;
    h.dtype = PROTO_DT_F32;
    h.nbytes = 400;
    T_CHECK(proto_encode_hdr(&h, hb, sizeof hb, &hl, why, sizeof why) == 0);
    {
        const void *f[] = {hb, bigp};
        const size_t l[] = {hl, 10000};
        send_raw(dealer, f, l, 2);
        expect_refused(router, dealer, "payload frame larger than n", LIMIT,
                       "payload is 10000 bytes but header says 400", seq);
    }
    {
        const void *f[] = {hb};
        const size_t l[] = {hl};
        send_raw(dealer, f, l, 1);
        expect_refused(router, dealer, "n = 400 but no payload frame", LIMIT,
                       "payload is 0 bytes but header says 400", seq);
    }
    { /* a bf16 push of 100 keys (200 bytes) whose frame has the f32 length */
        proto_hdr_t hb16;
        uint8_t b16[PROTO_HDR_MAX];
        size_t l16 = 0;
        proto_hdr_init(&hb16, PROTO_PUSH, 3);
        hb16.hi = 100;
        hb16.dtype = PROTO_DT_BF16;
        hb16.nbytes = 200;
        T_CHECK(proto_encode_hdr(&hb16, b16, sizeof b16, &l16, why, sizeof why) == 0);
        const void *f[] = {b16, bigp};
        const size_t l[] = {l16, 400};
        send_raw(dealer, f, l, 2);
        expect_refused(router, dealer, "bf16 header, f32-sized frame", LIMIT,
                       "payload is 400 bytes but header says 200", seq);
    }
    {
        const void *f[] = {hb, bigp, "extra", "extra"};
        const size_t l[] = {hl, 400, 5, 5};
        send_raw(dealer, f, l, 4);
        expect_refused(router, dealer, "4 frames after the identity", LIMIT, "more than 3 frames",
                       seq);
    }
    free(bigp);
}

/* 3. Timeouts, 4. small payloads, aligned, router -> dealer from a caller-kept buffer. */
static void sock_small_payloads(void *router, void *dealer) {
    proto_hdr_t h;
    proto_msg_t m, r;
    /* 3. Timeout with nothing pending. */
    double t0 = mimic_now();
    int rc = proto_recv(router, &m, LIMIT, 50);
    double dt = mimic_now() - t0;
    T_CHECK(rc == MIMIC_ETIMEOUT && dt >= 0.04 && dt < 1.0);
    proto_msg_close(&m);

    /* 4. Small typed payloads come out aligned and intact (ZeroMQ may place small frames at
     *    any offset of its receive buffer), router -> dealer with a caller-kept buffer. */
    proto_msg_t id;
    proto_make_chunk_req(&h, 4, 0, 0);
    T_CHECK(proto_send(dealer, NULL, 0, &h, NULL, NULL, NULL) == 0);
    T_CHECK(proto_recv(router, &id, LIMIT, 2000) == 0);
    static float small[64];
    for (int i = 0; i < 64; i++)
        small[i] = pattern((size_t)i * 7);
    proto_track_t track = {0};
    int misaligned = 0, corrupt = 0;
    for (int k = 1; k <= 64; k++) {
        proto_make_pull_reply(&h, 1, 0, (uint64_t)k, 10, 10 + (uint64_t)k,
                              k & 1 ? PROTO_WHICH_EMA : PROTO_WHICH_PARAMS);
        proto_track_hold(&track);
        T_CHECK(proto_send(router, id.id, id.idlen, &h, small, proto_track_release, &track) == 0);
    }
    for (int k = 1; k <= 64; k++) {
        T_CHECK(proto_recv(dealer, &r, LIMIT, 2000) == 0);
        const float *p = proto_msg_data(&r);
        misaligned += p == NULL || (uintptr_t)p % 4 != 0;
        corrupt += r.hdr.step != (uint64_t)k || proto_msg_size(&r) != (size_t)k * 4 ||
                   (p && memcmp(p, small, (size_t)k * 4) != 0);
        proto_msg_close(&r);
    }
    T_CHECK(misaligned == 0 && corrupt == 0);
    T_CHECK(proto_track_wait(&track, 2000) == 0);
    printf("  64 small f32 payloads aligned and intact, caller-kept buffer released: %s\n",
           misaligned || corrupt ? "FAIL" : "ok");
    proto_msg_close(&id);
}

/* 5. Sender-side refusals keep the ownership promise. */
static void sock_refusals(void *router, void *dealer) {
    proto_hdr_t h;
    mimic_set_quiet(1);
    free_flag_t flag2 = {0};
    float *bad = malloc(16);
    proto_hdr_init(&h, PROTO_PUSH, 3);
    h.hi = 3; /* 12 bytes, but n says 16 */
    h.dtype = PROTO_DT_F32;
    h.nbytes = 16;
    T_CHECK(proto_send(dealer, NULL, 0, &h, bad, free_and_flag, &flag2) == MIMIC_EINVAL);
    T_CHECK(atomic_load(&flag2.freed) == 1);
    proto_hdr_init(&h, PROTO_HEARTBEAT, 1);
    T_CHECK(proto_send(router, NULL, 0, &h, NULL, NULL, NULL) == MIMIC_EINVAL); /* no id */
    h.nbytes = 8;
    T_CHECK(proto_send(dealer, NULL, 0, &h, NULL, NULL, NULL) == MIMIC_EINVAL); /* no data */
    h.nbytes = 0;
    int one = 1;
    T_CHECK(zmq_setsockopt(router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) == 0);
    T_CHECK(proto_send(router, "nobody", 6, &h, NULL, NULL, NULL) == MIMIC_EPEER);
    mimic_set_quiet(0);
}

static void test_sockets(void *ctx, const char *endpoint) {
    char ep[256];
    size_t eplen = sizeof ep;
    void *router = new_socket(ctx, ZMQ_ROUTER), *dealer = new_socket(ctx, ZMQ_DEALER);
    T_CHECK(zmq_bind(router, endpoint) == 0);
    T_CHECK(zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &eplen) == 0);
    T_CHECK(zmq_connect(dealer, ep) == 0);
    printf("sockets over %s\n", ep);
    uint64_t seq = 0;
    sock_zero_copy(router, dealer, &seq);
    sock_malformed(router, dealer, &seq);
    sock_small_payloads(router, dealer);
    sock_refusals(router, dealer);
    zmq_close(dealer);
    zmq_close(router);
}

/* ---- event-loop sockets ---------------------------------------------------------------- */

typedef struct {
    int seen, stop_after;
    uint64_t last_seq;
} burst_t;

static int count_msg(void *ctx, void *sock, proto_msg_t *m, int rc) {
    burst_t *b = ctx;
    T_CHECK(rc == 0 && m->hdr.type == PROTO_HEARTBEAT && m->hdr.seq == b->last_seq + 1);
    b->last_seq = m->hdr.seq;
    return ++b->seen == b->stop_after;
}

/* proto_router_bind's options and endpoint, proto_poll, and bursts that stop at their
 * bound, at fn's request and when nothing is left. */
static void test_event_loop(void *ctx) {
    char ep[256];
    void *router = NULL;
    proto_router_opts_t o = {.host = "127.0.0.1", .linger_ms = 0, .max_msg = 1 << 20};
    T_CHECK(proto_router_bind(&router, ctx, &o, ep, sizeof ep) == 0 && router != NULL);
    T_CHECK(strncmp(ep, "tcp://127.0.0.1:", 16) == 0 && atoi(ep + 16) > 0);
    int v = 0;
    int64_t v64 = 0;
    size_t sz = sizeof v;
    T_CHECK(zmq_getsockopt(router, ZMQ_SNDTIMEO, &v, &sz) == 0 && v == 0);
    sz = sizeof v64;
    T_CHECK(zmq_getsockopt(router, ZMQ_MAXMSGSIZE, &v64, &sz) == 0 && v64 == 1 << 20);
    proto_hdr_t h;
    mimic_set_quiet(1);
    proto_make_heartbeat(&h, 1, 1, 0); /* ROUTER_MANDATORY: an unknown peer is refused */
    T_CHECK(proto_send(router, "nobody", 6, &h, NULL, NULL, NULL) == MIMIC_EPEER);
    void *again = NULL;
    o.port = atoi(ep + 16); /* taken: a bad setting, and no socket left behind */
    T_CHECK(proto_router_bind(&again, ctx, &o, ep, sizeof ep) == MIMIC_EINVAL && !again);
    o.host = "";
    T_CHECK(proto_router_bind(&again, ctx, &o, ep, sizeof ep) == MIMIC_EINVAL && !again);
    mimic_set_quiet(0);

    void *dealer = new_socket(ctx, ZMQ_DEALER);
    T_CHECK(zmq_connect(dealer, ep) == 0);
    zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
    T_CHECK(proto_poll(&it, 1, 20) == 0 && it.revents == 0); /* nothing yet: time ran out */
    for (uint64_t seq = 1; seq <= 5; seq++) {
        proto_make_heartbeat(&h, 4, seq, 0);
        T_CHECK(proto_send(dealer, NULL, 0, &h, NULL, NULL, NULL) == 0);
    }
    T_CHECK(proto_poll(&it, 1, 2000) == 1 && (it.revents & ZMQ_POLLIN));
    double t0 = mimic_now();
    burst_t b = {0};
    int calls = 0;
    while (b.seen < 5 && mimic_now() - t0 < 2.0) { /* they may still be arriving */
        int got = proto_recv_burst(router, 3, LIMIT, count_msg, &b);
        T_CHECK(got >= 0 && got <= 3);
        calls += got > 0;
    }
    T_CHECK(b.seen == 5 && calls >= 2 && proto_recv_burst(router, 8, LIMIT, count_msg, &b) == 0);
    for (uint64_t seq = 6; seq <= 7; seq++) {
        proto_make_heartbeat(&h, 4, seq, 0);
        T_CHECK(proto_send(dealer, NULL, 0, &h, NULL, NULL, NULL) == 0);
    }
    b.stop_after = 6; /* fn ends the burst after the first of the two */
    T_CHECK(proto_poll(&it, 1, 2000) == 1);
    T_CHECK(proto_recv_burst(router, 8, LIMIT, count_msg, &b) == 1 && b.seen == 6);
    T_CHECK(proto_poll(&it, 1, 2000) == 1);
    T_CHECK(proto_recv_burst(router, 8, LIMIT, count_msg, &b) == 1 && b.seen == 7);
    printf("event loop: ROUTER set-up, poll and bounded bursts: %s\n", b.seen == 7 ? "ok" : "FAIL");
    zmq_close(dealer);
    zmq_close(router);
}

/* ---- wire: f32 <-> bf16 ---------------------------------------------------------------- */

static float f32_of(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The reference rounding, by distance in double: the nearer of the two bf16 values
 * around x, the even one on a tie (and infinity past the largest finite value). */
static uint16_t bf16_ref(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    double dlo = fabs((double)x - (double)f32_of((uint32_t)lo << 16));
    double dhi = fabs((double)f32_of((uint32_t)hi << 16) - (double)x);
    if ((lo & 0x7fffu) == 0x7f7fu && (u & 0xffffu) >= 0x8000u) return (uint16_t)(lo + 1); /* inf */
    if (dlo < dhi) return lo;
    if (dhi < dlo) return hi;
    return (lo & 1u) ? hi : lo;
}

static void test_wire(void) {
    enum { N = 1 << 16 };
    static float x[N], back[N], acc[N];
    static uint16_t b[N];
    /* ties and edges: 1 + 2^-8 is a tie to 1 (even), 1 + 3*2^-8 a tie up to 1 + 2^-6;
     * the largest float rounds to infinity; NaN stays NaN, both signs */
    const uint32_t edge[] = {0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u,
                             0x7f7fffffu, 0xff7fffffu, 0x7f800000u, 0x00000001u,
                             0x80000000u, 0x7fffffffu, 0xffc00001u, 0x7f800001u};
    const uint16_t want[] = {0x3f80, 0x3f82, 0x3f80, 0x3f81, 0x7f80, 0xff80,
                             0x7f80, 0x0000, 0x8000, 0,      0,      0};
    size_t ne = sizeof edge / sizeof edge[0];
    for (size_t i = 0; i < ne; i++)
        x[i] = f32_of(edge[i]);
    for (size_t i = ne; i < N; i++) { /* random finite values over every exponent */
        uint32_t u;
        do
            u = (uint32_t)rnd();
        while ((u & 0x7f800000u) == 0x7f800000u);
        x[i] = f32_of(u);
    }
    wire_to_bf16(b, x, N);
    wire_from_bf16(back, b, N);
    int bad = 0;
    for (size_t i = 0; i < N; i++) {
        int nan = isnan(x[i]);
        uint16_t w = nan ? 0 : i < ne ? want[i] : bf16_ref(x[i]);
        int ok = nan ? isnan(back[i]) && (b[i] >> 15) == (uint16_t)(signbit(x[i]) ? 1 : 0)
                     : b[i] == w && (i >= ne || want[i] == bf16_ref(x[i]));
        if (!ok && bad++ < 5)
            fprintf(stderr, "  bf16 of %a: 0x%04x, want 0x%04x\n", (double)x[i], (unsigned)b[i],
                    (unsigned)w);
        /* widening is exact: the top half of the f32 */
        uint32_t ub;
        memcpy(&ub, &back[i], sizeof ub);
        bad += (ub >> 16) != b[i] || (ub & 0xffffu) != 0;
    }
    T_CHECK(bad == 0);
    /* the accumulate: overwrite (a = 0, whatever acc held), then a * acc + b * g; on
     * values of moderate size every product is exact, so the sums are the same bits
     * whether or not the compiler fuses them */
    for (size_t i = 0; i < N; i++) {
        x[i] = (float)((double)rnd_below(2000001) * 1e-3 - 1000.0);
        acc[i] = NAN;
    }
    wire_to_bf16(b, x, N);
    wire_from_bf16(back, b, N);
    wire_axpby_bf16(acc, 0.0f, b + ne, 3.0f, N - ne);
    int sum_bad = 0;
    for (size_t i = 0; i < N - ne; i++)
        sum_bad += acc[i] != 3.0f * back[ne + i];
    wire_axpby_bf16(acc, 0.5f, b + ne, 2.0f, N - ne);
    for (size_t i = 0; i < N - ne; i++)
        sum_bad += acc[i] != 0.5f * (3.0f * back[ne + i]) + 2.0f * back[ne + i];
    T_CHECK(sum_bad == 0);
    printf("wire: f32 -> bf16 round to nearest even on %d values, NaN kept, exact widening, "
           "accumulate: %s\n",
           N, bad || sum_bad ? "FAILED" : "ok");
}

int main(void) {
    mimic_set_quiet(1);
    test_wire();
    test_names();
    test_roundtrip();
    test_builders_control();
    test_builders_data();
    test_encode_refuses();
    test_field_types();
    test_required();
    test_semantics();
    test_garbage();
    mimic_set_quiet(0);
    void *ctx = zmq_ctx_new();
    MIMIC_CHECK(ctx != NULL);
    test_sockets(ctx, "inproc://test-proto");
    test_sockets(ctx, "tcp://127.0.0.1:*");
    test_event_loop(ctx);
    zmq_ctx_term(ctx);
    return testutil_summary("test_proto");
}
