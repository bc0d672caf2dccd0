/* shardckpt — one server's part of a cluster checkpoint (docs/runtime.md, "Checkpoints").
 *
 * DIR/server-<rank>-step-<N>.safetensors holds the F32 tensors w, m, v of the server's
 * key range (shape [hi - lo]), ema when the server keeps the momentum copy, and the
 * metadata format=mimicps-shard, version=2, rank, servers, lo, hi, total, step, ema
 * (1 or 0). The server that keeps the negative queue (rank 0) adds the tensor queue
 * [K, D] once its ring exists and the metadata queue_keys (keys ever pushed) and
 * queue_step. Version-1 files (always with ema, never a queue) still load. Writes are atomic
 * (st_writer_save: temp file, fsync, rename), so a crash leaves the previous file or the new one.
 * Loading checks every metadata field and tensor shape against the running server and
 * names the file and field that differ. */
#ifndef MIMIC_SHARDCKPT_H
#define MIMIC_SHARDCKPT_H

#include "kvstore.h"
#include "negqueue.h"

#include <stddef.h>
#include <stdint.h>

#define SHARDCKPT_FORMAT "mimicps-shard"
#define SHARDCKPT_VERSION 2

/* DIR/server-<rank>-step-<step>.safetensors into out (cap bytes); MIMIC_EINVAL if longer. */
int shardckpt_path(char *out, size_t cap, const char *dir, int rank, uint64_t step);
/* Writes the store (and q, the negative queue, when not NULL) at its current version
 * (creating dir if needed); the path written goes to path_out (cap bytes, may be NULL). */
int shardckpt_save(const kvstore_t *kv, const negqueue_t *q, const char *dir, int rank, int servers,
                   char *path_out, size_t cap);
/* Loads the file of (rank, step) from dir into kv (and q when not NULL: its ring, version
 * and step; a file without a queue leaves it empty at step `step`) and sets kv->version
 * = step. On any error kv and q are unchanged. */
int shardckpt_load(kvstore_t *kv, negqueue_t *q, const char *dir, int rank, int servers,
                   uint64_t step);

#endif
