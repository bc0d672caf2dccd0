/* proto.c — header encoding, decoding and validation (socket-free; see proto_zmq.c for
 * the ZeroMQ side). The per-type rules live in one table, specs[], which
 * docs/protocol.md mirrors. */
#define _POSIX_C_SOURCE 200809L
#include "proto.h"
#include "common.h"

#include <inttypes.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define PROTO_DEPTH_MAX 8 /* msgpack nesting accepted inside a header (unknown keys) */
#define PROTO_KEYS_MAX 64 /* map entries accepted in a header */

/* Header keys, in the order the encoder writes them. */
enum { K_V, K_T, K_S, K_SEQ, K_ST, K_LO, K_HI, K_DT, K_N, K_A, K_F, K_STR, K_COUNT };
#define KB(k) (1u << (k))
#define K_ALWAYS (KB(K_V) | KB(K_T) | KB(K_S))
#define K_ALL ((1u << K_COUNT) - 1)
#define DTB(d) (1u << (d))

static const char *const key_names[K_COUNT] = {"v",  "t",  "s", "seq", "st", "lo",
                                               "hi", "dt", "n", "a",   "f",  "str"};

/* What a message type must carry. Keys in req must be present on the wire (v, t, s
 * always are); a payload-bearing type lists its allowed dtypes; a type whose dt is
 * not required may still carry an optional payload of an allowed dtype. */
typedef struct {
    const char *name;
    uint32_t req;                  /* required keys besides K_ALWAYS */
    uint32_t dtypes;               /* DTB() mask of payload dtypes; 0 = no payload */
    int range_payload;             /* n must equal (hi - lo) * sizeof(dt) */
    uint32_t min_a, min_f;         /* required entries of a[] and f[] */
    uint32_t signed_args;          /* bit i: a[i] may be negative */
    const char *args[PROTO_NARGS]; /* names of a[] entries, for reasons and docs */
} spec_t;

#define PAYLOAD (KB(K_DT) | KB(K_N))
#define RANGE (KB(K_LO) | KB(K_HI))
static const spec_t specs[PROTO_TYPE_COUNT] = {
    [PROTO_INVALID] = {.name = "INVALID"},
    [PROTO_REGISTER] = {.name = "REGISTER", .req = KB(K_A), .min_a = 1, .args = {"role"}},
    [PROTO_REGISTER_ACK] = {.name = "REGISTER_ACK",
                            .req = KB(K_A),
                            .dtypes = DTB(PROTO_DT_U8),
                            .min_a = 4,
                            .args = {"id", "servers", "workers", "rank", "epoch", "keys", "token"}},
    [PROTO_HEARTBEAT] = {.name = "HEARTBEAT", .args = {"token"}},
    [PROTO_LEAVE] = {.name = "LEAVE"},
    [PROTO_MEMBERSHIP] = {.name = "MEMBERSHIP",
                          .req = KB(K_A) | PAYLOAD,
                          .dtypes = DTB(PROTO_DT_I64),
                          .min_a = 2,
                          .args = {"epoch", "live workers"}},
    [PROTO_CHUNK_REQ] = {.name = "CHUNK_REQ", .args = {"epoch"}},
    [PROTO_CHUNK] = {.name = "CHUNK",
                     .req = KB(K_A) | PAYLOAD,
                     .dtypes = DTB(PROTO_DT_U32) | DTB(PROTO_DT_I64),
                     .min_a = 4,
                     .args = {"epoch", "chunk id", "start", "count", "status"}},
    [PROTO_CHUNK_DONE] = {.name = "CHUNK_DONE",
                          .req = KB(K_A),
                          .min_a = 3,
                          .args = {"epoch", "chunk id", "processed"}},
    [PROTO_PUSH] = {.name = "PUSH",
                    .req = KB(K_ST) | RANGE | PAYLOAD,
                    .dtypes = DTB(PROTO_DT_F32) | DTB(PROTO_DT_BF16),
                    .range_payload = 1,
                    .args = {"batch"}},
    [PROTO_PUSH_ACK] = {.name = "PUSH_ACK", .req = KB(K_ST) | RANGE},
    [PROTO_PULL] = {.name = "PULL",
                    .req = RANGE | KB(K_A),
                    .min_a = 1,
                    .args = {"which", "min step", "dtype"}},
    [PROTO_PULL_REPLY] = {.name = "PULL_REPLY",
                          .req = KB(K_ST) | RANGE | PAYLOAD | KB(K_A),
                          .dtypes = DTB(PROTO_DT_F32) | DTB(PROTO_DT_BF16),
                          .range_payload = 1,
                          .min_a = 1,
                          .args = {"which"}},
    [PROTO_QUEUE_PUSH] = {.name = "QUEUE_PUSH",
                          .req = KB(K_A) | PAYLOAD,
                          .dtypes = DTB(PROTO_DT_F32),
                          .min_a = 2,
                          .args = {"count", "dim"}},
    [PROTO_QUEUE_PULL] = {.name = "QUEUE_PULL", .req = KB(K_A), .min_a = 1, .args = {"since"}},
    [PROTO_QUEUE_REPLY] = {.name = "QUEUE_REPLY",
                           .req = KB(K_A) | PAYLOAD,
                           .dtypes = DTB(PROTO_DT_F32),
                           .min_a = 5,
                           .args = {"version", "count", "dim", "slot", "capacity"}},
    [PROTO_CKPT] = {.name = "CKPT", .req = KB(K_ST) | KB(K_STR)},
    [PROTO_CKPT_DONE] = {.name = "CKPT_DONE",
                         .req = KB(K_ST) | KB(K_A),
                         .min_a = 1,
                         .signed_args = 1u << 0,
                         .args = {"status"}},
    [PROTO_METRICS] = {.name = "METRICS",
                       .req = KB(K_F),
                       .min_f = 1,
                       .args = {"bytes pushed", "bytes pulled", "bad images", "steps"}},
    [PROTO_SHUTDOWN] = {.name = "SHUTDOWN"},
    [PROTO_ERROR] = {.name = "ERROR",
                     .req = KB(K_A) | KB(K_STR),
                     .min_a = 1,
                     .signed_args = 1u << 0,
                     .args = {"code", "request type"}},
    [PROTO_ACK] = {.name = "ACK", .req = KB(K_A), .min_a = 1, .args = {"type"}},
    [PROTO_KEYS_PUSH] = {.name = "KEYS_PUSH",
                         .req = KB(K_A) | PAYLOAD,
                         .dtypes = DTB(PROTO_DT_F32),
                         .min_a = 2,
                         .args = {"count", "dim"}},
    [PROTO_KEYS_REPLY] = {.name = "KEYS_REPLY",
                          .req = KB(K_A) | PAYLOAD,
                          .dtypes = DTB(PROTO_DT_F32),
                          .min_a = 5,
                          .args = {"count", "dim", "offset", "mine", "workers"}},
};
#undef PAYLOAD
#undef RANGE

static const char *const dtype_names[PROTO_DT_COUNT] = {"none", "f32", "i64", "u8",
                                                        "i32",  "u32", "bf16"};
static const size_t dtype_sizes[PROTO_DT_COUNT] = {0, 4, 8, 1, 4, 4, 2};

const char *proto_type_name(int type) {
    if (type <= PROTO_INVALID || type >= PROTO_TYPE_COUNT) return "?";
    return specs[type].name;
}

const char *proto_dtype_name(int dtype) {
    if (dtype < 0 || dtype >= PROTO_DT_COUNT) return "?";
    return dtype_names[dtype];
}

size_t proto_dtype_size(int dtype) {
    if (dtype < 0 || dtype >= PROTO_DT_COUNT) return 0;
    return dtype_sizes[dtype];
}

void proto_hdr_init(proto_hdr_t *h, proto_type_t type, int32_t sender) {
    memset(h, 0, sizeof *h);
    h->version = PROTO_VERSION;
    h->type = type;
    h->sender = sender;
    h->dtype = PROTO_DT_NONE;
}

void proto_hdr_set_str(proto_hdr_t *h, const char *s) {
    size_t n = s ? strnlen(s, PROTO_STR_MAX) : 0;
    if (n) memcpy(h->str, s, n);
    h->str[n] = '\0';
    h->str_len = (uint32_t)n;
}

void proto_hdr_set_payload(proto_hdr_t *h, proto_dtype_t dtype, uint64_t count) {
    h->dtype = dtype;
    h->nbytes = count * proto_dtype_size(dtype);
}

int proto_hdr_equal(const proto_hdr_t *x, const proto_hdr_t *y) {
    if (x->version != y->version || x->type != y->type || x->sender != y->sender ||
        x->step != y->step || x->lo != y->lo || x->hi != y->hi || x->dtype != y->dtype ||
        x->nbytes != y->nbytes || x->seq != y->seq || x->na != y->na || x->nf != y->nf ||
        x->str_len != y->str_len)
        return 0;
    if (x->na > PROTO_NARGS || x->nf > PROTO_NARGS || x->str_len > PROTO_STR_MAX) return 0;
    if (x->na && memcmp(x->a, y->a, x->na * sizeof x->a[0]) != 0) return 0;
    if (x->nf && memcmp(x->f, y->f, x->nf * sizeof x->f[0]) != 0) return 0;
    return memcmp(x->str, y->str, x->str_len) == 0;
}

/* ---- reasons ---------------------------------------------------------------------- */

static int failv(int code, char *why, size_t whylen, const char *fmt, va_list ap) {
    if (why && whylen) vsnprintf(why, whylen, fmt, ap);
    return code;
}

/* Writes a reason (when why is given) and returns code. */
__attribute__((format(printf, 4, 5))) static int failc(int code, char *why, size_t whylen,
                                                       const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = failv(code, why, whylen, fmt, ap);
    va_end(ap);
    return rc;
}

/* failc for malformed input, the common case. */
__attribute__((format(printf, 3, 4))) static int fail(char *why, size_t whylen, const char *fmt,
                                                      ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = failv(MIMIC_EFORMAT, why, whylen, fmt, ap);
    va_end(ap);
    return rc;
}

static void dtypes_str(uint32_t mask, char *buf, size_t len) {
    size_t used = 0;
    buf[0] = '\0';
    for (int d = 1; d < PROTO_DT_COUNT; d++) {
        if (!(mask & DTB(d))) continue;
        int w = snprintf(buf + used, len - used, "%s%s", used ? " or " : "", dtype_names[d]);
        if (w < 0 || (size_t)w >= len - used) break;
        used += (size_t)w;
    }
}

/* ---- semantic checks (shared by decode, validate and encode) ---------------------- */

static const char *arg_name(const spec_t *sp, uint32_t i) {
    return (i < PROTO_NARGS && sp->args[i]) ? sp->args[i] : "arg";
}

/* n must equal count * elem bytes (count from a[]); overflow counts as a mismatch. */
static int expect_n(const proto_hdr_t *h, const spec_t *sp, uint64_t count, uint64_t elem,
                    const char *what, char *why, size_t whylen) {
    uint64_t want;
    if (__builtin_mul_overflow(count, elem, &want))
        return fail(why, whylen,
                    "header field 'n': %s of %" PRIu64 " x %" PRIu64 " bytes in %s overflows", what,
                    count, elem, sp->name);
    if (h->nbytes != want)
        return fail(why, whylen,
                    "header field 'n': %s of %" PRIu64 " x %" PRIu64 " bytes in %s needs %" PRIu64
                    " bytes, header says %" PRIu64,
                    what, count, elem, sp->name, want, h->nbytes);
    return 0;
}

static int check_payload(const proto_hdr_t *h, const spec_t *sp, char *why, size_t whylen) {
    char allowed[64];
    if (sp->dtypes == 0) {
        if (h->dtype != PROTO_DT_NONE)
            return fail(why, whylen, "header field 'dt': %s carries no payload, got dtype %s",
                        sp->name, proto_dtype_name(h->dtype));
        if (h->nbytes)
            return fail(why, whylen, "header field 'n': %s carries no payload, got n = %" PRIu64,
                        sp->name, h->nbytes);
        return 0;
    }
    dtypes_str(sp->dtypes, allowed, sizeof allowed);
    if (h->dtype == PROTO_DT_NONE) {
        if (sp->req & KB(K_DT))
            return fail(why, whylen, "header field 'dt': %s payload must be %s, got none", sp->name,
                        allowed);
        if (h->nbytes)
            return fail(why, whylen, "header field 'n': dtype none but n = %" PRIu64, h->nbytes);
        return 0;
    }
    if (!(sp->dtypes & DTB(h->dtype)))
        return fail(why, whylen, "header field 'dt': %s payload must be %s, got %s", sp->name,
                    allowed, proto_dtype_name(h->dtype));
    uint64_t es = dtype_sizes[h->dtype];
    if (h->nbytes % es)
        return fail(why, whylen,
                    "header field 'n': %" PRIu64 " bytes is not a whole number of %s elements",
                    h->nbytes, dtype_names[h->dtype]);
    if (sp->range_payload) return expect_n(h, sp, h->hi - h->lo, es, "key range", why, whylen);
    return 0;
}

/* QUEUE_PUSH, QUEUE_REPLY, KEYS_PUSH, KEYS_REPLY: count rows of dim >= 1 f32 keys, and
 * the reply's placement (ring slot and capacity; the requester's rows in the matrix). */
static int check_rows(const proto_hdr_t *h, const spec_t *sp, char *why, size_t whylen) {
    const int64_t *a = h->a;
    /* count and dim are a[0], a[1] in the pushes and the key reply; a[1], a[2] in the
     * queue reply */
    int ic = h->type == PROTO_QUEUE_REPLY ? PROTO_QREP_COUNT : 0;
    int id = h->type == PROTO_QUEUE_REPLY ? PROTO_QREP_DIM : 1;
    uint64_t count = (uint64_t)a[ic], dim = (uint64_t)a[id], row;
    if (dim == 0) return fail(why, whylen, "header field 'a[%d]' (dim): must be >= 1", id);
    if (h->type == PROTO_QUEUE_REPLY) {
        uint64_t cap = (uint64_t)a[PROTO_QREP_CAPACITY];
        uint64_t slot = (uint64_t)a[PROTO_QREP_SLOT];
        if (count > cap)
            return fail(why, whylen,
                        "header field 'a[1]' (count): %" PRIu64
                        " rows exceed the ring capacity %" PRIu64,
                        count, cap);
        if (slot >= cap && !(cap == 0 && slot == 0))
            return fail(why, whylen,
                        "header field 'a[3]' (slot): slot %" PRIu64 " outside a ring of %" PRIu64,
                        slot, cap);
    }
    if (h->type == PROTO_KEYS_REPLY) {
        uint64_t off = (uint64_t)a[PROTO_KREP_OFFSET], mine = (uint64_t)a[PROTO_KREP_MINE];
        if (off > count || mine > count - off)
            return fail(why, whylen,
                        "header field 'a[3]' (mine): rows [%" PRIu64 ", %" PRIu64
                        ") outside the %" PRIu64 " rows of the reply",
                        off, off + mine, count);
    }
    if (__builtin_mul_overflow(dim, (uint64_t)4, &row))
        return fail(why, whylen, "header field 'a[%d]' (dim): %" PRIu64 " is too large", id, dim);
    return expect_n(h, sp, count, row, "key rows", why, whylen);
}

/* Type-specific meaning of a[]: signs, enums, and the payload size the counts imply. */
static int check_args(const proto_hdr_t *h, const spec_t *sp, char *why, size_t whylen) {
    const int64_t *a = h->a;
    uint32_t named = 0;
    while (named < PROTO_NARGS && sp->args[named])
        named++;
    for (uint32_t i = 0; i < h->na && i < named; i++)
        if (a[i] < 0 && !(sp->signed_args & (1u << i)))
            return fail(why, whylen, "header field 'a[%u]' (%s): must be >= 0, got %" PRId64, i,
                        arg_name(sp, i), a[i]);
    switch (h->type) {
    case PROTO_REGISTER:
        if (a[PROTO_REG_ROLE] != PROTO_ROLE_WORKER && a[PROTO_REG_ROLE] != PROTO_ROLE_SERVER)
            return fail(why, whylen, "header field 'a[0]' (role): unknown role %" PRId64,
                        a[PROTO_REG_ROLE]);
        if (a[PROTO_REG_ROLE] == PROTO_ROLE_SERVER && h->str_len == 0)
            return fail(why, whylen,
                        "header field 'str': a server's REGISTER must carry its bind address");
        return 0;
    case PROTO_MEMBERSHIP:
        return expect_n(h, sp, (uint64_t)a[PROTO_MEMB_LIVE], PROTO_MEMB_ENTRY, "live workers' ids and tokens",
                        why, whylen);
    case PROTO_CHUNK:
        if (h->na > PROTO_CHUNK_STATUS && a[PROTO_CHUNK_STATUS] > PROTO_CHUNK_END)
            return fail(why, whylen, "header field 'a[4]' (status): unknown chunk status %" PRId64,
                        a[PROTO_CHUNK_STATUS]);
        return expect_n(h, sp, (uint64_t)a[PROTO_CHUNK_COUNT], dtype_sizes[h->dtype],
                        "sample indices", why, whylen);
    case PROTO_PULL:
    case PROTO_PULL_REPLY:
        if (a[PROTO_PULL_WHICH] != PROTO_WHICH_PARAMS && a[PROTO_PULL_WHICH] != PROTO_WHICH_EMA)
            return fail(why, whylen,
                        "header field 'a[0]' (which): unknown parameter version %" PRId64,
                        a[PROTO_PULL_WHICH]);
        if (h->type == PROTO_PULL && h->na > PROTO_PULL_DTYPE &&
            a[PROTO_PULL_DTYPE] != PROTO_DT_F32 && a[PROTO_PULL_DTYPE] != PROTO_DT_BF16)
            return fail(why, whylen,
                        "header field 'a[2]' (dtype): a pull's reply is f32 (%d) or "
                        "bf16 (%d), got %" PRId64,
                        PROTO_DT_F32, PROTO_DT_BF16, a[PROTO_PULL_DTYPE]);
        return 0;
    case PROTO_QUEUE_PUSH:
    case PROTO_QUEUE_REPLY:
    case PROTO_KEYS_PUSH:
    case PROTO_KEYS_REPLY:
        return check_rows(h, sp, why, whylen);
    case PROTO_CHUNK_DONE: /* a day is far beyond any step; NaN fails the comparison */
        if (h->nf > PROTO_CDONE_BUSY_S &&
            !(h->f[PROTO_CDONE_BUSY_S] >= 0 && h->f[PROTO_CDONE_BUSY_S] <= 86400))
            return fail(why, whylen,
                        "header field 'f[0]' (busy seconds): must be in [0, 86400], got %g",
                        h->f[PROTO_CDONE_BUSY_S]);
        return 0;
    case PROTO_METRICS: /* the phase counters: all five or none, finite and >= 0 */
        if (h->nf > PROTO_METRIC_DATA_S && h->nf != PROTO_METRIC_DATA_S + PROTO_METRIC_PHASES)
            return fail(why, whylen,
                        "header field 'f': METRICS carries 3 or %d values, got %" PRIu32,
                        PROTO_METRIC_DATA_S + PROTO_METRIC_PHASES, h->nf);
        for (uint32_t i = PROTO_METRIC_DATA_S; i < h->nf; i++)
            if (!(h->f[i] >= 0 && h->f[i] <= 1e12)) /* NaN fails the comparison */
                return fail(why, whylen,
                            "header field 'f[%u]' (phase seconds): must be in [0, 1e12], got %g", i,
                            h->f[i]);
        return 0;
    case PROTO_CKPT_DONE:
        if (a[PROTO_CKDONE_STATUS] > 0)
            return fail(why, whylen,
                        "header field 'a[0]' (status): must be 0 or a negative error code, "
                        "got %" PRId64,
                        a[PROTO_CKDONE_STATUS]);
        return 0;
    case PROTO_ERROR:
        if (a[PROTO_ERR_CODE] >= 0)
            return fail(why, whylen,
                        "header field 'a[0]' (code): must be a negative error code, got %" PRId64,
                        a[PROTO_ERR_CODE]);
        return 0;
    case PROTO_ACK:
        if (a[PROTO_ACK_TYPE] <= PROTO_INVALID || a[PROTO_ACK_TYPE] >= PROTO_TYPE_COUNT)
            return fail(why, whylen, "header field 'a[0]' (type): unknown message type %" PRId64,
                        a[PROTO_ACK_TYPE]);
        return 0;
    default:
        return 0;
    }
}

/* Everything checkable without the payload. `present` is the mask of keys read from the
 * wire (K_ALL for a header built in memory). */
static int check_hdr(const proto_hdr_t *h, uint32_t present, char *why, size_t whylen) {
    if (!(present & KB(K_V))) return fail(why, whylen, "header field 'v' missing");
    if (h->version != PROTO_VERSION)
        return fail(why, whylen, "header field 'v': protocol version %" PRIu32 ", expected %u",
                    h->version, PROTO_VERSION);
    if (!(present & KB(K_T))) return fail(why, whylen, "header field 't' missing");
    if ((int)h->type <= PROTO_INVALID || (int)h->type >= PROTO_TYPE_COUNT)
        return fail(why, whylen, "header field 't': unknown message type %d", (int)h->type);
    const spec_t *sp = &specs[h->type];
    uint32_t missing = (sp->req | K_ALWAYS) & ~present;
    for (int k = 0; k < K_COUNT; k++)
        if (missing & KB(k))
            return fail(why, whylen, "header field '%s' missing (required by %s)", key_names[k],
                        sp->name);
    if (h->sender < PROTO_ID_NONE)
        return fail(why, whylen, "header field 's': sender id %" PRId32 " (must be >= -1)",
                    h->sender);
    if ((unsigned)h->dtype >= PROTO_DT_COUNT)
        return fail(why, whylen, "header field 'dt': unknown dtype %d", (int)h->dtype);
    if (h->lo > h->hi)
        return fail(why, whylen,
                    "header field 'lo': key range [%" PRIu64 ", %" PRIu64 ") has lo > hi", h->lo,
                    h->hi);
    if (h->na > PROTO_NARGS || h->nf > PROTO_NARGS)
        return fail(why, whylen, "header field '%s': %" PRIu32 " entries, limit %d",
                    h->na > PROTO_NARGS ? "a" : "f", h->na > PROTO_NARGS ? h->na : h->nf,
                    PROTO_NARGS);
    if (h->str_len > PROTO_STR_MAX || strnlen(h->str, h->str_len + 1) != h->str_len)
        return fail(why, whylen,
                    "header field 'str': str_len %" PRIu32 " does not match the text (limit %d)",
                    h->str_len, PROTO_STR_MAX);
    if (h->na < sp->min_a)
        return fail(why, whylen, "header field 'a': %s needs %" PRIu32 " args, got %" PRIu32,
                    sp->name, sp->min_a, h->na);
    if (h->nf < sp->min_f)
        return fail(why, whylen, "header field 'f': %s needs %" PRIu32 " values, got %" PRIu32,
                    sp->name, sp->min_f, h->nf);
    if ((sp->req & KB(K_STR)) && h->str_len == 0)
        return fail(why, whylen, "header field 'str': %s needs a non-empty str", sp->name);
    int rc = check_payload(h, sp, why, whylen);
    if (rc) return rc;
    return check_args(h, sp, why, whylen);
}

int proto_validate(const proto_hdr_t *h, size_t payload_len, size_t max_payload, char *why,
                   size_t whylen) {
    if (!h) return fail(why, whylen, "no header");
    int rc = check_hdr(h, K_ALL, why, whylen);
    if (rc) return rc;
    if (h->nbytes > max_payload)
        return fail(why, whylen,
                    "header field 'n': payload of %" PRIu64 " bytes exceeds the limit of %zu",
                    h->nbytes, max_payload);
    if (h->nbytes != payload_len)
        return fail(why, whylen, "header field 'n': payload is %zu bytes but header says %" PRIu64,
                    payload_len, h->nbytes);
    return 0;
}

/* ---- bounded msgpack pre-scan ------------------------------------------------------ */

static uint64_t be_read(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Layout of the msgpack type bytes 0xc0..0xdf: fixed bytes that follow, bytes of a
 * big-endian length field, extra bytes after that field (the ext type), and whether the
 * length counts array (1) or map (2) entries instead of bytes. */
typedef struct {
    uint8_t valid, skip, lenbytes, extra, kind;
} mp_fmt_t;
static const mp_fmt_t mp_fmts[32] = {
    {1, 0, 0, 0, 0},  /* c0 nil */
    {0, 0, 0, 0, 0},  /* c1 never used */
    {1, 0, 0, 0, 0},  /* c2 false */
    {1, 0, 0, 0, 0},  /* c3 true */
    {1, 0, 1, 0, 0},  /* c4 bin8 */
    {1, 0, 2, 0, 0},  /* c5 bin16 */
    {1, 0, 4, 0, 0},  /* c6 bin32 */
    {1, 0, 1, 1, 0},  /* c7 ext8 */
    {1, 0, 2, 1, 0},  /* c8 ext16 */
    {1, 0, 4, 1, 0},  /* c9 ext32 */
    {1, 4, 0, 0, 0},  /* ca float32 */
    {1, 8, 0, 0, 0},  /* cb float64 */
    {1, 1, 0, 0, 0},  /* cc uint8 */
    {1, 2, 0, 0, 0},  /* cd uint16 */
    {1, 4, 0, 0, 0},  /* ce uint32 */
    {1, 8, 0, 0, 0},  /* cf uint64 */
    {1, 1, 0, 0, 0},  /* d0 int8 */
    {1, 2, 0, 0, 0},  /* d1 int16 */
    {1, 4, 0, 0, 0},  /* d2 int32 */
    {1, 8, 0, 0, 0},  /* d3 int64 */
    {1, 2, 0, 0, 0},  /* d4 fixext1 */
    {1, 3, 0, 0, 0},  /* d5 fixext2 */
    {1, 5, 0, 0, 0},  /* d6 fixext4 */
    {1, 9, 0, 0, 0},  /* d7 fixext8 */
    {1, 17, 0, 0, 0}, /* d8 fixext16 */
    {1, 0, 1, 0, 0},  /* d9 str8 */
    {1, 0, 2, 0, 0},  /* da str16 */
    {1, 0, 4, 0, 0},  /* db str32 */
    {1, 0, 2, 0, 1},  /* dc array16 */
    {1, 0, 4, 0, 1},  /* dd array32 */
    {1, 0, 2, 0, 2},  /* de map16 */
    {1, 0, 4, 0, 2},  /* df map32 */
};

/* Walks one msgpack object at *pos without building it. msgpack-c reserves
 * count * sizeof(msgpack_object) as soon as it reads an array or map header, so a
 * 5-byte frame declaring 2^32 entries would ask for over 100 GB; refusing every declared
 * length the buffer cannot hold bounds msgpack-c's allocation by the frame size. */
static int mp_skip(const uint8_t *p, size_t len, size_t *pos, int depth, char *why, size_t whylen) {
    if (depth > PROTO_DEPTH_MAX)
        return fail(why, whylen, "header nests deeper than %d levels", PROTO_DEPTH_MAX);
    if (*pos >= len) return fail(why, whylen, "header truncated at byte %zu", *pos);
    size_t at = (*pos)++;
    uint8_t b = p[at];
    uint64_t count = 0, skip = 0;
    int lenbytes = 0, extra = 0, kind = 0; /* kind: 0 scalar, 1 array, 2 map */
    if (b <= 0x7f || b >= 0xe0) return 0;
    if ((b & 0xf0) == 0x80) {
        count = b & 0x0f;
        kind = 2;
    } else if ((b & 0xf0) == 0x90) {
        count = b & 0x0f;
        kind = 1;
    } else if ((b & 0xe0) == 0xa0) {
        skip = b & 0x1f;
    } else {
        const mp_fmt_t *f = &mp_fmts[b - 0xc0];
        if (!f->valid) return fail(why, whylen, "header is not msgpack: byte 0x%02x at %zu", b, at);
        skip = f->skip, lenbytes = f->lenbytes, extra = f->extra, kind = f->kind;
    }
    if (lenbytes) {
        if ((size_t)lenbytes > len - *pos)
            return fail(why, whylen, "header truncated at byte %zu", at);
        uint64_t v = be_read(p + *pos, lenbytes);
        *pos += (size_t)lenbytes;
        if (kind)
            count = v;
        else
            skip = v + (uint64_t)extra;
    }
    if (kind == 0) {
        if (skip > len - *pos)
            return fail(why, whylen,
                        "header truncated: object at byte %zu needs %" PRIu64 " bytes, %zu remain",
                        at, skip, len - *pos);
        *pos += (size_t)skip;
        return 0;
    }
    uint64_t items = kind == 2 ? 2 * count : count;
    if (items > len - *pos)
        return fail(why, whylen,
                    "header %s at byte %zu declares %" PRIu64 " entries but %zu bytes remain",
                    kind == 2 ? "map" : "array", at, count, len - *pos);
    for (uint64_t i = 0; i < items; i++) {
        int rc = mp_skip(p, len, pos, depth + 1, why, whylen);
        if (rc) return rc;
    }
    return 0;
}

/* ---- decoding ---------------------------------------------------------------------- */

/* What a msgpack object starting with byte b is, for "not a map" reasons. */
static const char *mp_byte_kind(uint8_t b) {
    if (b <= 0x7f || b >= 0xe0 || (b >= 0xcc && b <= 0xd3)) return "integer";
    if ((b & 0xf0) == 0x80 || b == 0xde || b == 0xdf) return "map";
    if ((b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd) return "array";
    if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb)) return "string";
    if (b == 0xc0) return "nil";
    if (b == 0xc2 || b == 0xc3) return "boolean";
    if (b >= 0xc4 && b <= 0xc6) return "binary";
    if (b == 0xca || b == 0xcb) return "float";
    return "ext";
}

static const char *mp_type_name(const msgpack_object *o) {
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return "unsigned integer";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "negative integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "string";
    case MSGPACK_OBJECT_BIN:
        return "binary";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    case MSGPACK_OBJECT_EXT:
        return "ext";
    default:
        return "unknown";
    }
}

static int key_id(const msgpack_object *k) {
    if (k->type != MSGPACK_OBJECT_STR) return -1;
    for (int i = 0; i < K_COUNT; i++)
        if (strlen(key_names[i]) == k->via.str.size &&
            memcmp(key_names[i], k->via.str.ptr, k->via.str.size) == 0)
            return i;
    return K_COUNT; /* unknown key: ignored */
}

static int get_u64(const msgpack_object *o, const char *name, uint64_t max, uint64_t *out,
                   char *why, size_t whylen) {
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fail(why, whylen, "header field '%s': expected an unsigned integer, got %s", name,
                    mp_type_name(o));
    if (o->via.u64 > max)
        return fail(why, whylen, "header field '%s': %" PRIu64 " is out of range (max %" PRIu64 ")",
                    name, o->via.u64, max);
    *out = o->via.u64;
    return 0;
}

static int get_i64(const msgpack_object *o, const char *name, int64_t min, int64_t max,
                   int64_t *out, char *why, size_t whylen) {
    int64_t v;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)max)
            return fail(why, whylen,
                        "header field '%s': %" PRIu64 " is out of range (max %" PRId64 ")", name,
                        o->via.u64, max);
        v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        v = o->via.i64;
    } else {
        return fail(why, whylen, "header field '%s': expected an integer, got %s", name,
                    mp_type_name(o));
    }
    if (v < min)
        return fail(why, whylen, "header field '%s': %" PRId64 " is out of range (min %" PRId64 ")",
                    name, v, min);
    *out = v;
    return 0;
}

static int get_array(const msgpack_object *o, const char *name, char *why, size_t whylen) {
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return fail(why, whylen, "header field '%s': expected an array, got %s", name,
                    mp_type_name(o));
    if (o->via.array.size > PROTO_NARGS)
        return fail(why, whylen, "header field '%s': %" PRIu32 " entries, limit %d", name,
                    o->via.array.size, PROTO_NARGS);
    return 0;
}

static int get_args(const msgpack_object *o, proto_hdr_t *h, char *why, size_t whylen) {
    int rc = get_array(o, "a", why, whylen);
    if (rc) return rc;
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        char name[16];
        snprintf(name, sizeof name, "a[%u]", i);
        rc = get_i64(&o->via.array.ptr[i], name, INT64_MIN, INT64_MAX, &h->a[i], why, whylen);
        if (rc) return rc;
    }
    h->na = o->via.array.size;
    return 0;
}

static int get_floats(const msgpack_object *o, proto_hdr_t *h, char *why, size_t whylen) {
    int rc = get_array(o, "f", why, whylen);
    if (rc) return rc;
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_FLOAT32 && e->type != MSGPACK_OBJECT_FLOAT64)
            return fail(why, whylen, "header field 'f[%u]': expected a float, got %s", i,
                        mp_type_name(e));
        h->f[i] = e->via.f64;
    }
    h->nf = o->via.array.size;
    return 0;
}

static int get_str(const msgpack_object *o, proto_hdr_t *h, char *why, size_t whylen) {
    if (o->type != MSGPACK_OBJECT_STR)
        return fail(why, whylen, "header field 'str': expected a string, got %s", mp_type_name(o));
    if (o->via.str.size > PROTO_STR_MAX)
        return fail(why, whylen, "header field 'str': %" PRIu32 " bytes, limit %d", o->via.str.size,
                    PROTO_STR_MAX);
    if (o->via.str.size && memchr(o->via.str.ptr, '\0', o->via.str.size))
        return fail(why, whylen, "header field 'str': contains a NUL byte");
    if (o->via.str.size) memcpy(h->str, o->via.str.ptr, o->via.str.size);
    h->str[o->via.str.size] = '\0';
    h->str_len = o->via.str.size;
    return 0;
}

static int get_field(int k, const msgpack_object *v, proto_hdr_t *h, char *why, size_t whylen) {
    uint64_t u = 0;
    int64_t i = 0;
    int rc = 0;
    const char *name = key_names[k];
    switch (k) {
    case K_V:
        rc = get_u64(v, name, UINT32_MAX, &u, why, whylen);
        h->version = (uint32_t)u;
        break;
    case K_T:
        rc = get_u64(v, name, UINT32_MAX, &u, why, whylen);
        if (!rc && u >= PROTO_TYPE_COUNT)
            rc = fail(why, whylen, "header field 't': unknown message type %" PRIu64, u);
        if (!rc) h->type = (proto_type_t)u;
        break;
    case K_S:
        rc = get_i64(v, name, INT32_MIN, INT32_MAX, &i, why, whylen);
        if (!rc) h->sender = (int32_t)i;
        break;
    case K_SEQ:
        rc = get_u64(v, name, UINT64_MAX, &h->seq, why, whylen);
        break;
    case K_ST:
        rc = get_u64(v, name, UINT64_MAX, &h->step, why, whylen);
        break;
    case K_LO:
        rc = get_u64(v, name, UINT64_MAX, &h->lo, why, whylen);
        break;
    case K_HI:
        rc = get_u64(v, name, UINT64_MAX, &h->hi, why, whylen);
        break;
    case K_DT:
        rc = get_u64(v, name, UINT32_MAX, &u, why, whylen);
        if (!rc && u >= PROTO_DT_COUNT)
            rc = fail(why, whylen, "header field 'dt': unknown dtype %" PRIu64, u);
        if (!rc) h->dtype = (proto_dtype_t)u;
        break;
    case K_N:
        rc = get_u64(v, name, UINT64_MAX, &h->nbytes, why, whylen);
        break;
    case K_A:
        rc = get_args(v, h, why, whylen);
        break;
    case K_F:
        rc = get_floats(v, h, why, whylen);
        break;
    case K_STR:
        rc = get_str(v, h, why, whylen);
        break;
    default:
        break;
    }
    return rc;
}

/* Reads sender and seq leniently before the strict pass, so that an ERROR reply to a
 * header that fails later can still be matched by the requester. */
static void peek_reply_fields(const msgpack_object_map *m, proto_hdr_t *h) {
    for (uint32_t i = 0; i < m->size; i++) {
        int k = key_id(&m->ptr[i].key);
        const msgpack_object *v = &m->ptr[i].val;
        if (k == K_SEQ && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) h->seq = v->via.u64;
        if (k == K_S && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT32_MAX)
            h->sender = (int32_t)v->via.u64;
    }
}

static int decode_map(proto_hdr_t *out, const msgpack_object *root, char *why, size_t whylen) {
    if (root->type != MSGPACK_OBJECT_MAP)
        return fail(why, whylen, "header is not a msgpack map (got %s)", mp_type_name(root));
    const msgpack_object_map *m = &root->via.map;
    if (m->size > PROTO_KEYS_MAX)
        return fail(why, whylen, "header map has %" PRIu32 " entries, limit %d", m->size,
                    PROTO_KEYS_MAX);
    peek_reply_fields(m, out);
    uint32_t present = 0;
    for (uint32_t i = 0; i < m->size; i++) {
        int k = key_id(&m->ptr[i].key);
        if (k < 0)
            return fail(why, whylen, "header key #%" PRIu32 " is not a string (got %s)", i,
                        mp_type_name(&m->ptr[i].key));
        if (k == K_COUNT) continue; /* unknown key: newer peer, ignore */
        if (present & KB(k))
            return fail(why, whylen, "header field '%s' appears twice", key_names[k]);
        present |= KB(k);
        int rc = get_field(k, &m->ptr[i].val, out, why, whylen);
        if (rc) return rc;
    }
    return check_hdr(out, present, why, whylen);
}

int proto_decode_hdr(proto_hdr_t *out, const void *buf, size_t len, char *why, size_t whylen) {
    if (why && whylen) why[0] = '\0';
    proto_hdr_init(out, PROTO_INVALID, PROTO_ID_NONE);
    out->version = 0;
    if (!buf || len == 0) return fail(why, whylen, "header is empty");
    if (len > PROTO_HDR_MAX)
        return fail(why, whylen, "header is %zu bytes, limit %d", len, PROTO_HDR_MAX);
    size_t pos = 0;
    int rc = mp_skip(buf, len, &pos, 1, why, whylen);
    if (rc) return rc;
    const char *kind = mp_byte_kind(((const uint8_t *)buf)[0]);
    if (strcmp(kind, "map") != 0)
        return fail(why, whylen, "header is not a msgpack map (got %s)", kind);
    if (pos != len)
        return fail(why, whylen, "header has %zu trailing bytes after the first object", len - pos);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&u, buf, len, &off);
    if (ur == MSGPACK_UNPACK_SUCCESS && off == len)
        rc = decode_map(out, &u.data, why, whylen);
    else if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
        rc = failc(MIMIC_ENOMEM, why, whylen, "out of memory decoding the header");
    else
        rc = fail(why, whylen, "header is not valid msgpack (msgpack-c code %d)", (int)ur);
    msgpack_unpacked_destroy(&u);
    return rc;
}

/* ---- encoding ---------------------------------------------------------------------- */

typedef struct {
    uint8_t *buf;
    size_t cap, len;
} wbuf_t;

static int wbuf_write(void *data, const char *p, size_t n) {
    wbuf_t *w = data;
    if (n > w->cap - w->len) return -1;
    memcpy(w->buf + w->len, p, n);
    w->len += n;
    return 0;
}

static int pack_key(msgpack_packer *pk, int k) {
    size_t n = strlen(key_names[k]);
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, key_names[k], n);
}

static int pack_u64(msgpack_packer *pk, int k, uint64_t v) {
    return pack_key(pk, k) || msgpack_pack_uint64(pk, v);
}

/* Which keys to write: v, t, s always, the type's required keys, and any other key
 * whose value differs from the decoder's default. */
static uint32_t keys_to_write(const proto_hdr_t *h) {
    uint32_t keys = K_ALWAYS | specs[h->type].req;
    if (h->seq) keys |= KB(K_SEQ);
    if (h->step) keys |= KB(K_ST);
    if (h->lo) keys |= KB(K_LO);
    if (h->hi) keys |= KB(K_HI);
    if (h->dtype) keys |= KB(K_DT);
    if (h->nbytes) keys |= KB(K_N);
    if (h->na) keys |= KB(K_A);
    if (h->nf) keys |= KB(K_F);
    if (h->str_len) keys |= KB(K_STR);
    return keys;
}

int proto_encode_hdr(const proto_hdr_t *h, void *buf, size_t cap, size_t *len, char *why,
                     size_t whylen) {
    if (why && whylen) why[0] = '\0';
    if (!h || !buf || !len) return failc(MIMIC_EINVAL, why, whylen, "no header or buffer");
    if (check_hdr(h, K_ALL, why, whylen)) return MIMIC_EINVAL;
    uint32_t keys = keys_to_write(h);
    wbuf_t w = {buf, cap, 0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w, wbuf_write);
    int err = msgpack_pack_map(&pk, (size_t)__builtin_popcount(keys));
    uint64_t scalar[K_COUNT] = {h->version, (uint64_t)h->type,  0,         h->seq, h->step, h->lo,
                                h->hi,      (uint64_t)h->dtype, h->nbytes, 0,      0,       0};
    for (int k = 0; k < K_COUNT && !err; k++) {
        if (!(keys & KB(k))) continue;
        switch (k) {
        case K_S:
            err = pack_key(&pk, k) || msgpack_pack_int32(&pk, h->sender);
            break;
        case K_A:
            err = pack_key(&pk, k) || msgpack_pack_array(&pk, h->na);
            for (uint32_t i = 0; i < h->na && !err; i++)
                err = msgpack_pack_int64(&pk, h->a[i]);
            break;
        case K_F:
            err = pack_key(&pk, k) || msgpack_pack_array(&pk, h->nf);
            for (uint32_t i = 0; i < h->nf && !err; i++)
                err = msgpack_pack_double(&pk, h->f[i]);
            break;
        case K_STR:
            err = pack_key(&pk, k) || msgpack_pack_str(&pk, h->str_len) ||
                  msgpack_pack_str_body(&pk, h->str, h->str_len);
            break;
        default:
            err = pack_u64(&pk, k, scalar[k]);
            break;
        }
    }
    if (err)
        return failc(MIMIC_EINVAL, why, whylen, "header does not fit the encode buffer (%zu bytes)",
                     cap);
    *len = w.len;
    return 0;
}
