/* kv — the worker's data-plane client: the flat parameter vector as key ranges on S
 * parameter servers, with ps-lite's small surface.
 *
 * kv_pull and kv_push send one request to every server at once and return a
 * timestamp; kv_wait(ts) blocks until every server answered it, so a caller can
 * overlap communication with other work. Server s owns keyrange_of(total, S, s).
 * Pushed gradients are sent zero-copy: the buffer must stay unchanged until kv_wait
 * returns for that push. */
#ifndef MIMIC_KV_H
#define MIMIC_KV_H

#include <stddef.h>
#include <stdint.h>

typedef struct kv kv_t;

/* endpoints: the S server endpoints separated by spaces (REGISTER_ACK.str). */
int kv_new(kv_t **out, void *zctx, const char *endpoints, int nservers, size_t total, int32_t my_id,
           size_t max_payload);
void kv_destroy(kv_t **kv);
/* Pulls the whole vector into dst (which = PROTO_WHICH_PARAMS or _EMA); a server holds
 * its answer until its version >= min_version. Returns a timestamp (> 0) or an error. */
int kv_pull(kv_t *kv, int which, uint64_t min_version, float *dst);
/* Pushes the mean gradient over `batch` samples computed on parameters `version`. */
int kv_push(kv_t *kv, uint64_t version, int batch, const float *grad);
/* BSP's step in one request (ps-lite's PushPull): a pull of version+1 into dst, then
 * the push of the gradient computed on `version`. The held pull lets the servers send
 * the new parameters slice by slice while they compute them. */
int kv_pushpull(kv_t *kv, uint64_t version, int batch, const float *grad, float *dst);
/* Waits for every server's answer to ts (timeout_ms < 0: forever). For a pull,
 * *version is the lowest version the servers answered with. 0 or an error naming the
 * server; MIMIC_ETIMEOUT when the time ran out. */
int kv_wait(kv_t *kv, int ts, int timeout_ms, uint64_t *version);

#endif
