/* kv — the worker's data-plane client: the flat parameter vector as key ranges on S
 * parameter servers, plus the contrastive stage's state on server rank 0 (the negative
 * queue and the per-step key exchange), with ps-lite's small surface.
 *
 * Every call sends its requests at once and returns a timestamp; kv_wait(ts) blocks
 * until every answer to it arrived, so a caller overlaps communication with other
 * work. Server s owns keyrange_of(total, S, s). Requests run on separate channels —
 * parameters (pull, push, push-pull), EMA pull, queue push, queue pull, key exchange —
 * so one of each may be in flight together; a new request on a channel abandons the
 * one still there (its late answers are ignored). Pushed gradients and keys are sent
 * zero-copy: the buffer must stay unchanged until kv_wait returns for that request;
 * destination buffers are written while kv_wait runs. With cluster.wire=bf16 gradients
 * are rounded into kv's own bf16 buffer before they are sent, and pulled bf16 values
 * are widened into the f32 destination as they arrive.
 *
 * One BSP step v of a contrastive stage (the worker holds weights w and momentum copy
 * ema of version v and, for MoCo v2, a local K x D copy `ring` of the queue as of
 * step v, i.e. every key of steps < v):
 *   forward: q from w, k (n x D, this worker's keys) from ema;
 *     MoCo v3: ts = kv_keys_exchange(kv, v, k, n, D, all, cap, &ki); kv_wait(ts)
 *              -> all (ki.count x D, every live worker's keys in worker-id order, the
 *              same matrix on every worker), this worker's rows at ki.offset;
 *     MoCo v2: the loss reads ring (ki: none);
 *   backward -> grad;
 *   tq = kv_queue_push(kv, v, k, n, D)              MoCo v2; BEFORE the gradient: a
 *                                                   checkpoint of version v+1 then
 *                                                   holds the queue as of step v+1
 *   tg = kv_pushpull(kv, v, n, grad, w)             w <- version v+1
 *   te = kv_pull(kv, PROTO_WHICH_EMA, v + 1, ema)   ema <- version v+1 (held until then)
 *   tp = kv_queue_pull(kv, v + 1, ring, K, D, &qi)  MoCo v2: held until step v's keys
 *                                                   of every live worker are in; brings
 *                                                   only them (qi.bytes for the log)
 *   kv_wait(tq); kv_wait(tg) -> v+1; kv_wait(te); kv_wait(tp).
 * At start: kv_pull(PARAMS, 0, w) -> v, then kv_pull(EMA, v, ema) and
 * kv_queue_pull(kv, v, ring, K, D, &qi) (the first pull brings the whole ring).
 * Under ASP/SSP the same calls apply: the queue appends keys in arrival order and
 * answers pulls at once (step ignored); the key exchange still waits for every live
 * worker's keys of the step it names (the worker's version). docs/runtime.md,
 * "Contrastive stage". */
#ifndef MIMIC_KV_H
#define MIMIC_KV_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "curve.h"

typedef struct kv kv_t;

/* What a queue pull brought, filled when kv_wait returns for it. */
typedef struct {
    uint64_t version; /* keys ever pushed to the queue, as of this pull */
    uint64_t step;    /* the queue's step: under BSP every key of steps < step is in */
    size_t rows;      /* valid rows of the local ring: min(version, K) */
    size_t received;  /* rows this pull brought (written at their ring slots) */
    size_t bytes;     /* payload bytes this pull brought */
} kv_queue_info_t;

/* What a key exchange brought, filled when kv_wait returns for it. */
typedef struct {
    uint64_t step;
    size_t count;  /* M: rows of all workers */
    size_t offset; /* this worker's first row in them */
    size_t mine;   /* this worker's rows (its n) */
    int workers;   /* workers whose keys are in */
    size_t bytes;  /* payload bytes received */
} kv_keys_info_t;

/* Who this worker is to the servers, and where they are. */
typedef struct {
    const char *endpoints; /* the S server endpoints separated by spaces (REGISTER_ACK);
                              with CURVE each is "endpoint,<server's z85 public key>" */
    int nservers;
    size_t total;       /* parameter floats of the model */
    int32_t id;         /* REGISTER_ACK's id: the sender of every request */
    int64_t token;      /* REGISTER_ACK's token: names the connections (proto_peer_ident) */
    size_t max_payload; /* cluster.max_msg_mb: larger replies are refused */
    const curve_t *curve; /* NULL: CURVE off */
    int wire;     /* cluster.wire: PROTO_DT_F32 (0 means it too) or PROTO_DT_BF16, the dtype of
                     pushed gradients and of parameter/EMA pull replies (queue and keys: f32) */
    size_t slice; /* cluster.push_slices: kv_pushpull pushes each server's range in pieces of
                     this many floats (cluster.slice_floats, the servers' slices); 0: whole */
} kv_opts_t;

int kv_new(kv_t **out, void *zctx, const kv_opts_t *o);
/* opts.slice as the configuration says: cluster.slice_floats under BSP with
 * cluster.push_slices on, else 0. */
size_t kv_slice_of(const mimic_cfg_t *cfg);
/* Changes opts.slice for the next push-pulls (bench_ps times both ways in one run). */
void kv_set_slice(kv_t *kv, size_t slice);
void kv_destroy(kv_t **kv);
/* Pulls the whole vector into dst (which = PROTO_WHICH_PARAMS or _EMA); a server holds
 * its answer until its version >= min_version. Returns a timestamp (> 0) or an error. */
int kv_pull(kv_t *kv, int which, uint64_t min_version, float *dst);
/* Pushes the mean gradient over `batch` samples computed on parameters `version`. */
int kv_push(kv_t *kv, uint64_t version, int batch, const float *grad);
/* BSP's step in one request (ps-lite's PushPull): a pull of version+1 into dst, then
 * the push of the gradient computed on `version`. The held pull lets the servers send
 * the new parameters slice by slice while they compute them. With opts.slice the push
 * goes as one piece per slice of each server's range, so a server applies slice k
 * (every worker's piece of it in) while later pieces still arrive. */
int kv_pushpull(kv_t *kv, uint64_t version, int batch, const float *grad, float *dst);
/* kv_pushpull started before the gradient is complete (cluster.overlap): _begin sends
 * the pulls; kv_push_final(from) pushes at once every piece lying in [from, total) not
 * pushed yet (the caller says grad[from, total) is final: it must not change until
 * kv_wait returns); _end pushes the rest and returns the timestamp. 0 or an error. */
int kv_pushpull_begin(kv_t *kv, uint64_t version, int batch, const float *grad, float *dst);
int kv_push_final(kv_t *kv, size_t from);
int kv_pushpull_end(kv_t *kv);

/* Appends this worker's n keys of dim floats, computed in `step`, to the negative
 * queue (under BSP the queue adds a step's keys in worker-id order once every live
 * worker's are in). */
int kv_queue_push(kv_t *kv, uint64_t step, const float *keys, size_t n, size_t dim);
/* Brings the local copy of the queue, ring (capacity x dim, row r = ring slot r), up to
 * date with the rows added since this kv's last queue pull (the first pull: all of
 * them). Under BSP the answer waits until every key of steps < step is in. *info is
 * filled when kv_wait returns. */
int kv_queue_pull(kv_t *kv, uint64_t step, float *ring, size_t capacity, size_t dim,
                  kv_queue_info_t *info);
/* MoCo v3: sends this worker's n keys of `step` and receives every live worker's keys of
 * that step into all (at most cap_rows x dim), in worker-id order; *info says where
 * this worker's rows are. The answer waits until every live worker pushed (or left). */
int kv_keys_exchange(kv_t *kv, uint64_t step, const float *keys, size_t n, size_t dim, float *all,
                     size_t cap_rows, kv_keys_info_t *info);

/* Waits for every answer to ts (timeout_ms < 0: forever). *version (may be NULL): for a
 * parameter or EMA pull the lowest version the servers answered with; for a queue pull
 * or push the queue's version; for a key exchange its step. 0, an error naming the
 * server and its reason, or MIMIC_ETIMEOUT when the time ran out (the request stays in
 * flight: wait again). */
int kv_wait(kv_t *kv, int ts, int timeout_ms, uint64_t *version);
/* Payload bytes this kv sent (gradients, keys) and received (parameters, queue rows,
 * keys) since kv_new: the scheduler's /metrics (METRICS a[]). */
void kv_bytes(const kv_t *kv, uint64_t *out, uint64_t *in);

#endif
