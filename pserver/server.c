/* server.c — the parameter server's event loop and message handlers.
 *
 * The consistency rules (consistency.h) decide what a PUSH does — BSP: summed
 * (batch-weighted) until every live worker pushed for version v, then one AdamW step
 * makes v+1; ASP/SSP: its own step at once — and when a PULL can be answered; pulls
 * that cannot wait in a small table and are looked at again after each step and each
 * MEMBERSHIP. The first push of a BSP step stays in the ZeroMQ message it arrived in,
 * which this file keeps while the store reads it (kvstore_accumulate). Checkpoints are
 * written right after the step that reaches their version, before the next message is
 * read, so a shard is exactly version N. */
#define _DEFAULT_SOURCE /* realpath */
#define _POSIX_C_SOURCE 200809L
#include "server.h"

#include "common.h"
#include "consistency.h"
#include "kvstore.h"
#include "member.h"
#include "negqueue.h"
#include "proto.h"
#include "shardckpt.h"
#include "stage.h"
#include "stepkeys.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define PS_LINGER_MS 1000
#define PS_BURST 64         /* messages read from one socket before looking at the other */
#define PS_PULLS_MAX 4096   /* held pulls; more are refused with ERROR */
#define PS_PULLS_PER_PEER 16 /* held pulls of one connection (a worker holds 1-2) */
#define PS_CKPTS_MAX 16     /* pending CKPT requests */
#define PS_THREADS_MAX 1024 /* cluster.server_threads */
#define PS_PIECE_WORKERS 64 /* workers of one BSP step pushing in slices (a bit each) */

/* A PULL waiting for its version (or, in SSP, for the slowest worker's clock). */
typedef struct {
    uint8_t id[PROTO_ID_MAX];
    size_t idlen;
    int32_t sender;
    uint64_t seq, want, lo, hi;
    int which;
    int dtype;  /* of the reply: PROTO_DT_F32 or PROTO_DT_BF16 (cluster.wire) */
    int sliced; /* answered slice by slice during the step being applied */
    int late;   /* held while a step was half applied: answered whole after it */
} ps_pull_t;

/* BSP, sliced pushes: one slice of the range in the step being summed. */
typedef struct {
    uint64_t mask; /* the step's workers (slot bits) whose piece of it is in */
    int applied;   /* its update ran and its reply slice went out */
    int has_first; /* the first f32 piece's message, borrowed by the store */
    zmq_msg_t first;
} ps_piece_t;

/* A request answered when its step is complete: a QUEUE_PULL (since) or a KEYS_PUSH. */
typedef struct {
    uint8_t id[PROTO_ID_MAX];
    size_t idlen;
    int32_t sender;
    uint64_t seq, step, since;
} ps_wait_t;

typedef struct {
    uint64_t step;
    char dir[PROTO_STR_MAX + 1];
} ps_ckpt_t;

struct server {
    mimic_cfg_t cfg;
    void *zctx, *router;
    curve_t *curve; /* NULL: cluster.curve off */
    member_t *member;
    char endpoint[256];
    int id, rank, servers;
    int ema_on; /* the momentum encoder is kept (cluster.ema, the stage's declaration) */
    kvstore_t *kv;
    negqueue_t *queue;          /* rank 0 only: the contrastive stage's negative keys */
    stepkeys_t *qkeys;          /* rank 0, BSP: the queue's keys of the steps not yet appended */
    stepkeys_t *xkeys;          /* rank 0: MoCo v3's key exchange */
    size_t xdim;                /* floats per exchanged row */
    ps_wait_t *qpulls, *xwaits; /* held QUEUE_PULLs, KEYS_PUSHes waiting for their step */
    int nqpulls, nxwaits;
    cons_t *cons;    /* the consistency rules and the worker table */
    zmq_msg_t first; /* BSP: the step's first push, which kv->sum.held points into */
    int has_first;
    /* BSP sliced pushes (cluster.push_slices): the slices of the step, the workers that
     * pushed pieces of it (slot i = bit i), the slices applied so far (w is between two
     * versions while 0 < applied < npieces) and the new version's snapshot */
    ps_piece_t *pieces;
    int32_t slots[PS_PIECE_WORKERS];
    int nslots;
    size_t applied;
    kvstore_snap_t *psnap;
    size_t slice_floats; /* BSP replies go out in slices of this many floats (0: whole) */
    size_t max_payload;
    ps_pull_t *pulls;
    int npulls;
    ps_ckpt_t ckpts[PS_CKPTS_MAX];
    int nckpts;
    /* the steps written lately (a ring): a CKPT repeated because our CKPT_DONE was lost
     * is answered again, even after the version moved on */
    uint64_t written[PS_CKPTS_MAX];
    int nwritten;
    int drop_ckpt_done; /* test hook (MIMIC_TEST_DROP_CKPT_DONE=n): the first n are lost */
    int done, warned_finished;
    /* the scheduler's member list: live workers' {id, token} pairs, ids ascending; a
     * request is taken only under an id of it, on a connection named by its token */
    int64_t *peers;
    size_t npeers;
    uint64_t refused; /* requests refused for their sender: logged sparsely */
    double sched_seen; /* when the scheduler last sent anything on the main connection */
};

__attribute__((format(printf, 2, 3))) static void ps_log(const server_t *s, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (s->rank >= 0)
        fprintf(stderr, "[pserver %d] %s\n", s->rank, line);
    else
        fprintf(stderr, "[pserver ?] %s\n", line);
}

/* Answers m with ERROR(code, why) and logs it; the server then carries on. */
__attribute__((format(printf, 5, 6))) static void
reply_err(server_t *s, void *sock, const proto_msg_t *m, int code, const char *fmt, ...) {
    char why[PROTO_STR_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    ps_log(s, "refused %s from sender %d: %s", proto_type_name(m->hdr.type), (int)m->hdr.sender,
           why);
    if (proto_reply_error(sock, s->id, m, code, why) != 0)
        ps_log(s, "ERROR reply not sent: %s", mimic_last_error());
}

/* ---- pulls ----------------------------------------------------------------------------- */

static int training_over(const server_t *s) {
    return s->cfg.train.steps > 0 && s->kv->version >= (uint64_t)s->cfg.train.steps;
}

/* A step applied in slices is under way: w and the EMA mix two versions. */
static int mid_step(const server_t *s) {
    return s->applied > 0;
}

static int pull_ready(const server_t *s, uint64_t want) {
    if (mid_step(s)) return 0; /* answered with the new version once it is complete */
    /* once training is over nothing newer will ever exist */
    return training_over(s) || cons_pull_ready(s->cons, want, s->kv->version);
}

static void free_copy(void *data, void *hint) {
    mimic_free(data);
}

/* The pull a PULL message asks for (its header passed pull_check). */
static ps_pull_t pull_of(const proto_msg_t *m) {
    const proto_hdr_t *h = &m->hdr;
    ps_pull_t p = {.idlen = m->idlen,
                   .sender = h->sender,
                   .seq = h->seq,
                   .want = h->step,
                   .lo = h->lo,
                   .hi = h->hi,
                   .which = (int)h->a[PROTO_PULL_WHICH],
                   .dtype = h->na > PROTO_PULL_DTYPE ? (int)h->a[PROTO_PULL_DTYPE] : PROTO_DT_F32};
    memcpy(p.id, m->id, m->idlen);
    return p;
}

static void send_pull_reply(server_t *s, const ps_pull_t *p) {
    kvstore_t *kv = s->kv;
    proto_hdr_t h;
    proto_make_pull_reply(&h, s->id, p->seq, kv->version, p->lo, p->hi, p->which);
    proto_make_wire(&h, (proto_dtype_t)p->dtype);
    size_t off = (size_t)(p->lo - kv->lo);
    kvstore_snap_t *snap = kvstore_snapshot(kv, p->which, p->dtype);
    int rc;
    if (snap) {
        proto_track_hold(&snap->track);
        rc = proto_send(s->router, p->id, p->idlen, &h, kvstore_snap_at(snap, off),
                        proto_track_release, &snap->track);
    } else { /* every snapshot is still held by slow peers: this reply gets its own copy */
        void *copy = mimic_alloc((size_t)h.nbytes);
        if (!copy) {
            ps_log(s, "PULL_REPLY to worker %d dropped: out of memory", (int)p->sender);
            return;
        }
        kvstore_copy_out(kv, p->which, p->dtype, copy, off, (size_t)(p->hi - kv->lo));
        rc = proto_send(s->router, p->id, p->idlen, &h, copy, free_copy, NULL);
    }
    if (rc) ps_log(s, "PULL_REPLY to worker %d dropped: %s", (int)p->sender, mimic_last_error());
}

/* Answers every held pull whose condition now holds (order kept for the rest). */
static void release_pulls(server_t *s) {
    int keep = 0;
    for (int i = 0; i < s->npulls; i++) {
        ps_pull_t *p = &s->pulls[i];
        if (pull_ready(s, p->want))
            send_pull_reply(s, p);
        else if (keep != i)
            s->pulls[keep++] = *p;
        else
            keep++;
    }
    s->npulls = keep;
}

/* Checks a PULL's key range and version; 0, or -1 after answering ERROR. */
static int pull_check(server_t *s, const proto_msg_t *m) {
    const proto_hdr_t *h = &m->hdr;
    const kvstore_t *kv = s->kv;
    if (h->a[PROTO_PULL_WHICH] == PROTO_WHICH_EMA && !kv->ema) {
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "PULL header field 'a[0]' (which): EMA, but this server keeps no momentum "
                  "copy (cluster.ema=%s and stage '%s'%s)",
                  config_enum_name("cluster", "ema", s->cfg.cluster.ema),
                  stage_ops_of(&s->cfg)->name,
                  s->cfg.cluster.ema == EMA_OFF ? "" : " does not read it");
        return -1;
    }
    if (h->lo < kv->lo || h->lo >= kv->hi) {
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "PULL header field 'lo': %" PRIu64 " is outside this server's range [%zu, %zu)",
                  h->lo, kv->lo, kv->hi);
        return -1;
    }
    if (h->hi <= h->lo || h->hi > kv->hi) {
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "PULL header field 'hi': %" PRIu64 " is not in (lo, %zu] of this server's range "
                  "[%zu, %zu)",
                  h->hi, kv->hi, kv->lo, kv->hi);
        return -1;
    }
    return 0;
}

/* Keeps a PULL that is not ready in the table (ERROR when the table is full). */
static void hold_pull(server_t *s, const proto_msg_t *m) {
    const proto_hdr_t *h = &m->hdr;
    /* A worker waits for the next version (SSP: up to cluster.staleness further); a pull
     * for one further ahead would be held for nothing but to take room. */
    uint64_t ahead = (uint64_t)(s->cfg.cluster.staleness > 0 ? s->cfg.cluster.staleness : 0) + 2;
    if (h->step > s->kv->version + ahead) {
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "PULL header field 'st': version %" PRIu64 " is more than %" PRIu64
                  " ahead of this server's %" PRIu64,
                  h->step, ahead, s->kv->version);
        return;
    }
    /* and one connection holds only a few: a flood from one peer cannot fill the table */
    int mine = 0;
    for (int i = 0; i < s->npulls; i++)
        mine += s->pulls[i].idlen == m->idlen && memcmp(s->pulls[i].id, m->id, m->idlen) == 0;
    if (mine >= PS_PULLS_PER_PEER) {
        reply_err(s, s->router, m, MIMIC_EPEER,
                  "%d pulls from this connection already wait for later versions (at most %d)",
                  mine, PS_PULLS_PER_PEER);
        return;
    }
    if (s->npulls >= PS_PULLS_MAX) {
        reply_err(s, s->router, m, MIMIC_ENOMEM, "%d pulls already wait for later versions",
                  PS_PULLS_MAX);
        return;
    }
    ps_pull_t *p = &s->pulls[s->npulls++];
    *p = pull_of(m);
    p->late = mid_step(s); /* it missed the slices already sent */
}

static void on_pull(server_t *s, const proto_msg_t *m) {
    if (pull_check(s, m) != 0) return;
    if (pull_ready(s, m->hdr.step)) {
        ps_pull_t p = pull_of(m);
        send_pull_reply(s, &p);
    } else {
        hold_pull(s, m);
    }
}

/* ---- checkpoints ------------------------------------------------------------------------ */

static void send_ckpt_done(server_t *s, uint64_t step, int status, const char *text) {
    if (s->drop_ckpt_done > 0) {
        s->drop_ckpt_done--;
        ps_log(s, "CKPT_DONE for step %" PRIu64 " dropped (test hook MIMIC_TEST_DROP_CKPT_DONE)",
               step);
        return;
    }
    proto_hdr_t h;
    proto_make_ckpt_done(&h, s->id, 0, step, status, text);
    if (proto_send(member_socket(s->member), NULL, 0, &h, NULL, NULL, NULL) != 0)
        ps_log(s, "CKPT_DONE for step %" PRIu64 " not sent: %s", step, mimic_last_error());
}

static void write_ckpt(server_t *s, const char *dir) {
    char path[4096] = "";
    double t0 = mimic_now();
    int rc = shardckpt_save(s->kv, s->queue, dir, s->rank, s->servers, path, sizeof path);
    if (rc) {
        ps_log(s, "checkpoint of step %" PRIu64 " failed: %s", s->kv->version, mimic_last_error());
        send_ckpt_done(s, s->kv->version, rc, mimic_last_error());
        return;
    }
    s->written[s->nwritten++ % PS_CKPTS_MAX] = s->kv->version;
    ps_log(s, "checkpoint step %" PRIu64 " written: %s (%.0f ms)", s->kv->version, path,
           (mimic_now() - t0) * 1e3);
    send_ckpt_done(s, s->kv->version, 0, path);
}

/* Writes the pending checkpoints whose step is the current version; drops (with an
 * error to the scheduler) those that can no longer be written. */
static void check_ckpts(server_t *s) {
    if (mid_step(s)) return; /* w is half way to the next version: nothing to write */
    int keep = 0;
    for (int i = 0; i < s->nckpts; i++) {
        ps_ckpt_t *c = &s->ckpts[i];
        if (c->step == s->kv->version) {
            write_ckpt(s, c->dir);
        } else if (c->step < s->kv->version) {
            char why[256];
            snprintf(why, sizeof why, "server passed step %" PRIu64 " (now %" PRIu64 ")", c->step,
                     s->kv->version);
            ps_log(s, "checkpoint %s", why);
            send_ckpt_done(s, c->step, MIMIC_EINVAL, why);
        } else {
            s->ckpts[keep++] = *c;
        }
    }
    s->nckpts = keep;
}

/* The checkpoint directory of this server's configuration (cluster.ckpt_dir, default
 * train.out_dir/ckpt): the only place it writes shards to or reads them from. */
static void ckpt_root(const server_t *s, char *dir, size_t cap) {
    if (s->cfg.cluster.ckpt_dir[0])
        snprintf(dir, cap, "%s", s->cfg.cluster.ckpt_dir);
    else
        snprintf(dir, cap, "%s/ckpt", s->cfg.train.out_dir);
}

/* Whether CKPT's directory is this server's own (the same directory once resolved): a
 * path from the wire is never written to otherwise. */
static int ckpt_dir_ok(const server_t *s, const char *dir, char *why, size_t whylen) {
    char root[CFG_PATH_MAX + 8], a[PATH_MAX], b[PATH_MAX];
    ckpt_root(s, root, sizeof root);
    if (!realpath(root, a) && (mimic_mkdir_p(root) != 0 || !realpath(root, a))) {
        snprintf(why, whylen, "this server's checkpoint directory %.900s: %s", root,
                 strerror(errno));
        return 0;
    }
    if (!realpath(dir, b) || strcmp(a, b) != 0) {
        snprintf(why, whylen,
                 "CKPT names %.900s, not this server's checkpoint directory %.900s "
                 "(cluster.ckpt_dir): refused",
                 dir, a);
        return 0;
    }
    return 1;
}

static void on_ckpt(server_t *s, const proto_msg_t *m) {
    const proto_hdr_t *h = &m->hdr;
    char why[2048];
    if (!ckpt_dir_ok(s, h->str, why, sizeof why)) {
        ps_log(s, "checkpoint %" PRIu64 ": %s", h->step, why);
        send_ckpt_done(s, h->step, MIMIC_EINVAL, why);
        return;
    }
    int n = s->nwritten < PS_CKPTS_MAX ? s->nwritten : PS_CKPTS_MAX;
    for (int i = 0; i < n; i++)
        if (s->written[i] == h->step) { /* a repeated request: already on disk */
            char path[4096] = "";
            shardckpt_path(path, sizeof path, h->str, s->rank, h->step);
            send_ckpt_done(s, h->step, 0, path);
            return;
        }
    for (int i = 0; i < s->nckpts; i++)
        if (s->ckpts[i].step == h->step) { /* a repeat may name a new directory */
            snprintf(s->ckpts[i].dir, sizeof s->ckpts[i].dir, "%s", h->str);
            return;
        }
    if (s->nckpts == PS_CKPTS_MAX) {
        send_ckpt_done(s, h->step, MIMIC_ENOMEM, "too many pending checkpoint requests");
        return;
    }
    ps_ckpt_t *c = &s->ckpts[s->nckpts++];
    c->step = h->step;
    snprintf(c->dir, sizeof c->dir, "%s", h->str);
    check_ckpts(s);
}

/* ---- pushes and updates ---------------------------------------------------------------- */

/* After the version changed: heartbeat step, checkpoints, then held pulls. */
static void after_step(server_t *s) {
    member_set_step(s->member, s->kv->version);
    check_ckpts(s);
    release_pulls(s);
    if (training_over(s)) ps_log(s, "version %" PRIu64 " reached train.steps", s->kv->version);
}

/* Whether held pull p gets version v slice by slice in dtype: a PARAMS pull of the whole
 * range that v satisfies. */
static int sliceable(const server_t *s, const ps_pull_t *p, uint64_t v, int dtype) {
    return p->which == PROTO_WHICH_PARAMS && p->lo == s->kv->lo && p->hi == s->kv->hi &&
           p->want <= v && p->dtype == dtype && !p->late;
}

/* The sliced step's callback: elements [a, b) of version v are final in snap; send
 * them to every held pull that gets v slice by slice. */
static void send_slice(void *ctx, kvstore_snap_t *snap, size_t a, size_t b, uint64_t v) {
    server_t *s = ctx;
    kvstore_t *kv = s->kv;
    for (int i = 0; i < s->npulls; i++) {
        ps_pull_t *p = &s->pulls[i];
        if (!sliceable(s, p, v, snap->dtype)) continue;
        p->sliced = 1;
        proto_hdr_t h;
        proto_make_pull_reply(&h, s->id, p->seq, v, kv->lo + a, kv->lo + b, PROTO_WHICH_PARAMS);
        proto_make_wire(&h, (proto_dtype_t)snap->dtype);
        proto_track_hold(&snap->track);
        if (proto_send(s->router, p->id, p->idlen, &h, kvstore_snap_at(snap, a),
                       proto_track_release, &snap->track))
            ps_log(s, "PULL_REPLY slice to worker %d dropped: %s", (int)p->sender,
                   mimic_last_error());
    }
}

/* BSP: the store no longer reads the first push once a second was folded in or the
 * step ran. */
static void release_first(server_t *s) {
    if (!s->has_first || kvstore_borrows(s->kv)) return;
    zmq_msg_close(&s->first);
    s->has_first = 0;
}

/* BSP: adds the push to the step's sum; the first one is kept as received (no copy). */
static void sum_push(server_t *s, proto_msg_t *m) {
    int64_t batch = m->hdr.na > PROTO_PUSH_BATCH ? m->hdr.a[PROTO_PUSH_BATCH] : 0;
    const void *g = proto_msg_data(m);
    if (s->kv->sum.count == 0 && m->hdr.dtype == PROTO_DT_F32) {
        MIMIC_CHECK(!s->has_first);
        zmq_msg_init(&s->first);
        zmq_msg_move(&s->first, &m->payload);
        m->has_payload = 0;
        s->has_first = 1;
        g = zmq_msg_data(&s->first); /* a very small message's bytes move with it */
    }
    kvstore_accumulate(s->kv, g, m->hdr.dtype, batch > 0 ? (double)batch : 1.0);
    release_first(s);
}

/* Whether a held pull gets the next version slice by slice, and in which dtype: the
 * slices go out in the dtype of the first such pull; pulls wanting the other one are
 * answered whole after the step. */
static int slice_dtype(const server_t *s, int *dtype) {
    *dtype = PROTO_DT_F32;
    if (s->slice_floats == 0 || s->kv->n <= s->slice_floats) return 0;
    for (int i = 0; i < s->npulls; i++)
        if (sliceable(s, &s->pulls[i], s->kv->version + 1, s->pulls[i].dtype)) {
            *dtype = s->pulls[i].dtype;
            return 1;
        }
    return 0;
}

/* After a step: the pulls answered slice by slice are done. */
static void drop_sliced_pulls(server_t *s) {
    int keep = 0;
    for (int i = 0; i < s->npulls; i++)
        if (!s->pulls[i].sliced) s->pulls[keep++] = s->pulls[i];
    s->npulls = keep;
}

static void apply_pieces(server_t *s);

static void maybe_step_bsp(server_t *s) {
    if (s->nslots > 0) { /* a step pushed in slices */
        apply_pieces(s);
        return;
    }
    if (!cons_step_due(s->cons, s->kv->version)) return;
    /* Held full-range pulls get the new parameters slice by slice, each sent while the
     * next slice is updated: the update overlaps the transfer (docs/runtime.md). */
    int dtype, sliced = slice_dtype(s, &dtype);
    if (!sliced || kvstore_step_mean_sliced(s->kv, s->slice_floats, dtype, send_slice, s) != 0)
        kvstore_step_mean(s->kv);
    release_first(s);
    drop_sliced_pulls(s);
    after_step(s);
}

/* ---- BSP in slices: each worker pushes every slice of the range as a piece, and slice
 * k is applied as soon as every live worker's piece of it is in (its reply slice goes
 * out at once), so the update runs while later pieces still arrive. ----------------- */

/* Piece k's slice is complete: every slot of a worker that counts pushed it. */
static int piece_complete(const server_t *s, size_t k) {
    uint64_t need = 0;
    for (int i = 0; i < s->nslots; i++)
        if (cons_is_live(s->cons, s->slots[i])) need |= 1ull << i;
    return need && (s->pieces[k].mask & need) == need;
}

static void piece_release(ps_piece_t *pc) {
    if (pc->has_first) zmq_msg_close(&pc->first);
    pc->has_first = 0;
}

/* Applies every complete slice; once all are, the step is done. */
static void apply_pieces(server_t *s) {
    kvstore_t *kv = s->kv;
    /* once begun, the step ends with the workers it began with: a worker joining now
     * waits for the new version (its pull is held while w is half way) */
    if (s->nslots == 0 || (s->applied == 0 && !cons_step_due(s->cons, kv->version))) return;
    for (size_t k = 0; k < kv->npieces; k++) {
        ps_piece_t *pc = &s->pieces[k];
        if (pc->applied || !piece_complete(s, k)) continue;
        if (s->applied == 0) { /* NULL when every buffer is busy: replies go out whole */
            int dtype;
            slice_dtype(s, &dtype);
            s->psnap = kvstore_piece_snap(kv, dtype);
        }
        size_t a, b;
        kvstore_piece_range(kv, k, &a, &b);
        kvstore_piece_apply(kv, k, s->psnap);
        piece_release(pc);
        pc->applied = 1;
        s->applied++;
        if (s->psnap) send_slice(s, s->psnap, a, b, kv->version + 1);
    }
    if (s->applied < kv->npieces) return;
    kvstore_piece_finish(kv, s->psnap);
    for (size_t k = 0; k < kv->npieces; k++)
        s->pieces[k] = (ps_piece_t){0};
    s->nslots = 0;
    s->applied = 0;
    s->psnap = NULL;
    drop_sliced_pulls(s);
    after_step(s);
}

/* The slot of the step's worker id, or -1. */
static int piece_slot(const server_t *s, int32_t id) {
    for (int i = 0; i < s->nslots; i++)
        if (s->slots[i] == id) return i;
    return -1;
}

static void send_push_ack(server_t *s, const proto_msg_t *m);
static void push_refused(server_t *s, const proto_msg_t *m, cons_push_t why);

/* A PUSH of slice k alone (push_check checked its range and size). */
static void on_piece(server_t *s, proto_msg_t *m, size_t k) {
    kvstore_t *kv = s->kv;
    const proto_hdr_t *h = &m->hdr;
    int slot = piece_slot(s, h->sender);
    if (slot < 0) { /* the worker's first piece of the step: the rules decide */
        if (kv->sum.count > 0 || s->nslots == PS_PIECE_WORKERS) {
            reply_err(s, s->router, m, MIMIC_EINVAL, "PUSH of [%" PRIu64 ", %" PRIu64 "): %s",
                      h->lo, h->hi,
                      kv->sum.count ? "whole-range pushes of this version are being summed "
                                      "(every worker must use cluster.push_slices alike)"
                                    : "more than 64 workers push in slices");
            return;
        }
        cons_push_t what = cons_push(s->cons, h->sender, h->step, kv->version);
        if (what != CONS_SUM) {
            push_refused(s, m, what);
            return;
        }
        slot = s->nslots++;
        s->slots[slot] = h->sender;
    } else if (h->step != kv->version) {
        push_refused(s, m, CONS_STALE);
        return;
    } else if (s->pieces[k].mask & (1ull << slot)) {
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "duplicate push: worker %d already pushed [%" PRIu64 ", %" PRIu64
                  ") for version %" PRIu64,
                  (int)h->sender, h->lo, h->hi, kv->version);
        return;
    }
    ps_piece_t *pc = &s->pieces[k];
    int64_t batch = h->na > PROTO_PUSH_BATCH ? h->a[PROTO_PUSH_BATCH] : 0;
    const void *g = proto_msg_data(m);
    if (kv->pieces[k].count == 0 && h->dtype == PROTO_DT_F32) { /* borrowed: keep it */
        zmq_msg_init(&pc->first);
        zmq_msg_move(&pc->first, &m->payload);
        m->has_payload = 0;
        pc->has_first = 1;
        g = zmq_msg_data(&pc->first);
    }
    kvstore_piece_accumulate(kv, k, g, h->dtype, batch > 0 ? (double)batch : 1.0);
    if (!kv->pieces[k].held) piece_release(pc);
    pc->mask |= 1ull << slot;
    send_push_ack(s, m);
    apply_pieces(s);
}

static void send_push_ack(server_t *s, const proto_msg_t *m) {
    proto_hdr_t h;
    proto_make_push_ack(&h, s->id, m->hdr.seq, s->kv->version, m->hdr.lo, m->hdr.hi);
    if (proto_send(s->router, m->id, m->idlen, &h, NULL, NULL, NULL) != 0)
        ps_log(s, "PUSH_ACK to worker %d dropped: %s", (int)m->hdr.sender, mimic_last_error());
}

/* Slice k of the range when [lo, hi) is exactly one (BSP with cluster.slice_floats), else
 * -1. */
static long piece_of(server_t *s, uint64_t lo, uint64_t hi) {
    kvstore_t *kv = s->kv;
    size_t S = s->slice_floats;
    if (S == 0 || kv->n <= S || s->cfg.cluster.consistency != CONS_BSP || lo < kv->lo ||
        (lo - kv->lo) % S != 0 || lo >= kv->hi)
        return -1;
    size_t k = (size_t)(lo - kv->lo) / S, a, b;
    if (!s->pieces) { /* the first piece: the slices' state, once */
        if (kvstore_piece_setup(kv, S) != 0) return -1;
        if (!(s->pieces = calloc(kv->npieces, sizeof *s->pieces))) return -1;
    }
    kvstore_piece_range(kv, k, &a, &b);
    return hi == kv->lo + b ? (long)k : -1;
}

/* Checks a PUSH against this server's range (the whole of it, or one slice: *piece gets
 * its index, else -1); 0, or -1 after answering ERROR. */
static int push_check(server_t *s, const proto_msg_t *m, long *piece) {
    const proto_hdr_t *h = &m->hdr;
    const kvstore_t *kv = s->kv; /* the sender is a live member's (peer_bound) */
    *piece = h->lo == kv->lo && h->hi == kv->hi ? -1 : piece_of(s, h->lo, h->hi);
    if (*piece < 0 && (h->lo != kv->lo || h->hi != kv->hi)) {
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "PUSH header field '%s': range [%" PRIu64 ", %" PRIu64
                  ") is not this server's range [%zu, %zu) nor one of its slices",
                  h->lo != kv->lo ? "lo" : "hi", h->lo, h->hi, kv->lo, kv->hi);
        return -1;
    }
    size_t n = (size_t)(h->hi - h->lo);
    if ((h->dtype != PROTO_DT_F32 && h->dtype != PROTO_DT_BF16) ||
        proto_msg_size(m) != n * proto_dtype_size(h->dtype)) {
        reply_err(s, s->router, m, MIMIC_EFORMAT,
                  "PUSH header field 'n': need %zu bytes of f32 or %zu of bf16, got %zu of %s",
                  n * sizeof(float), n * 2, proto_msg_size(m), proto_dtype_name(h->dtype));
        return -1;
    }
    return 0;
}

/* Answers ERROR for a PUSH the consistency rules refused. */
static void push_refused(server_t *s, const proto_msg_t *m, cons_push_t why) {
    const proto_hdr_t *h = &m->hdr;
    uint64_t v = s->kv->version;
    switch (why) {
    case CONS_STALE:
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "stale push: header field 'st' is %" PRIu64
                  " but the server is at version %" PRIu64,
                  h->step, v);
        break;
    case CONS_AHEAD:
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "PUSH header field 'st': %" PRIu64 " is ahead of the server's version %" PRIu64,
                  h->step, v);
        break;
    case CONS_NOT_LIVE:
        reply_err(s, s->router, m, MIMIC_EPEER,
                  "PUSH from worker %d, which is not in the live set (membership epoch %" PRId64
                  ")",
                  (int)h->sender, cons_epoch(s->cons));
        break;
    case CONS_DUPLICATE:
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "duplicate push: worker %d already pushed for version %" PRIu64, (int)h->sender,
                  v);
        break;
    default:
        MIMIC_CHECK(!"a refusal");
    }
}

static void on_push(server_t *s, proto_msg_t *m) {
    if (training_over(s)) { /* late pushes of the last step: the ACK's st tells it is over */
        if (!s->warned_finished)
            ps_log(s, "ignoring pushes: version %" PRIu64 " reached train.steps", s->kv->version);
        s->warned_finished = 1;
        send_push_ack(s, m);
        return;
    }
    long piece;
    if (push_check(s, m, &piece) != 0) return;
    if (piece >= 0) {
        on_piece(s, m, (size_t)piece);
        return;
    }
    if (s->nslots > 0) {
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "PUSH of the whole range while pushes in slices of this version are being "
                  "summed (every worker must use cluster.push_slices alike)");
        return;
    }
    cons_push_t what = cons_push(s->cons, m->hdr.sender, m->hdr.step, s->kv->version);
    if (what == CONS_SUM) {
        sum_push(s, m);
        send_push_ack(s, m);
        maybe_step_bsp(s);
    } else if (what == CONS_APPLY) {
        kvstore_step(s->kv, proto_msg_data(m), m->hdr.dtype);
        send_push_ack(s, m);
        after_step(s);
    } else {
        push_refused(s, m, what);
    }
}

/* ---- the contrastive stage's keys (rank 0): negative queue and key exchange ------------
 * The queue: under BSP a step's keys go through stepkeys (appended in worker-id order
 * once every live worker's keys of that step are in), and a QUEUE_PULL asking for
 * queue step t waits until the keys of every step < t are in. Under ASP/SSP keys are
 * appended as they arrive and pulls are answered at once. The key exchange (MoCo v3)
 * gathers a step's keys from every live worker and answers each KEYS_PUSH with all of
 * them, in any consistency mode. docs/runtime.md, "Contrastive stage". */

static int keys_here(server_t *s, const proto_msg_t *m) {
    if (s->queue) return 1;
    reply_err(s, s->router, m, MIMIC_EINVAL,
              "%s: the negative queue and the key exchange live on server rank 0, this is rank %d",
              proto_type_name(m->hdr.type), s->rank);
    return 0;
}

/* A push of keys: from a live worker, rows of `want` floats (the queue's: contrastive.dim;
 * the exchange's: that times the stage's key views). 0, or -1 after answering ERROR. */
static int keys_check(server_t *s, const proto_msg_t *m, size_t dim, size_t want) {
    const proto_hdr_t *h = &m->hdr;
    if (!keys_here(s, m)) return -1; /* the sender is a live member's (peer_bound) */
    if (dim != want) {
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "%s header field 'a[1]' (dim): %zu, but keys are %zu floats (contrastive.dim "
                  "x the stage's key views)",
                  proto_type_name(h->type), dim, want);
        return -1;
    }
    return 0;
}

/* Holds m in table t (n entries, at most max); ERROR when full. */
static void hold_wait(server_t *s, const proto_msg_t *m, ps_wait_t *t, int *n, int max,
                      uint64_t since) {
    if (*n >= max) {
        reply_err(s, s->router, m, MIMIC_ENOMEM, "%d %s requests already wait", max,
                  proto_type_name(m->hdr.type));
        return;
    }
    ps_wait_t *w = &t[(*n)++];
    memcpy(w->id, m->id, m->idlen);
    w->idlen = m->idlen;
    w->sender = m->hdr.sender;
    w->seq = m->hdr.seq;
    w->step = m->hdr.step;
    w->since = since;
}

/* QUEUE_REPLY: the rows a reader at `since` lacks, copied (a later push overwrites
 * ring slots at once, and a wrapped span is not contiguous anyway). */
static void send_queue_reply(server_t *s, const uint8_t *id, size_t idlen, uint64_t seq,
                             uint64_t since) {
    const negqueue_t *q = s->queue;
    size_t slot = 0, count = 0;
    if (negqueue_span(q, since, &slot, &count) != 0) { /* checked on receipt: never */
        ps_log(s, "QUEUE_REPLY dropped: %s", mimic_last_error());
        return;
    }
    proto_hdr_t h;
    proto_make_queue_reply(&h, s->id, seq, q->step, q->version, count, q->dim, slot, q->cap);
    float *rows = NULL;
    if (count) {
        if (!(rows = mimic_alloc((size_t)h.nbytes))) {
            ps_log(s, "QUEUE_REPLY dropped: out of memory");
            return;
        }
        negqueue_copy(q, slot, count, rows);
    }
    if (proto_send(s->router, id, idlen, &h, rows, rows ? free_copy : NULL, NULL) != 0)
        ps_log(s, "QUEUE_REPLY dropped: %s", mimic_last_error());
}

/* Answers the held QUEUE_PULLs whose queue step was reached. */
static void release_queue_pulls(server_t *s) {
    int keep = 0;
    for (int i = 0; i < s->nqpulls; i++) {
        ps_wait_t *w = &s->qpulls[i];
        if (s->queue->step >= w->step || training_over(s))
            send_queue_reply(s, w->id, w->idlen, w->seq, w->since);
        else
            s->qpulls[keep++] = *w;
    }
    s->nqpulls = keep;
}

/* Appends n rows to the ring; a failure is logged (the check at push time makes it
 * out of memory only). */
static void queue_append(server_t *s, const float *rows, size_t n) {
    char why[PROTO_STR_MAX + 1];
    if (n && negqueue_push(s->queue, rows, n, s->queue->dim, s->max_payload, why, sizeof why))
        ps_log(s, "queue: %zu keys lost: %s", n, why);
}

/* BSP: appends every complete step's keys, in worker-id order, then answers pulls. */
static void queue_commit(server_t *s) {
    int rc;
    while ((rc = stepkeys_release(s->qkeys, s->cons)) == 1) {
        stepkeys_view_t v = stepkeys_released(s->qkeys);
        queue_append(s, v.rows, v.count);
        s->queue->step = v.step + 1;
    }
    if (rc < 0) ps_log(s, "queue: out of memory releasing a step's keys");
    release_queue_pulls(s);
}

static void send_queue_ack(server_t *s, const proto_msg_t *m) {
    proto_hdr_t h;
    proto_make_ack(&h, s->id, m->hdr.seq, PROTO_QUEUE_PUSH);
    h.step = s->queue->version; /* the queue's version after this push (BSP: so far) */
    if (proto_send(s->router, m->id, m->idlen, &h, NULL, NULL, NULL) != 0)
        ps_log(s, "ACK of QUEUE_PUSH dropped: %s", mimic_last_error());
}

static void on_queue_push(server_t *s, const proto_msg_t *m) {
    char why[PROTO_STR_MAX + 1];
    size_t count = (size_t)m->hdr.a[PROTO_QPUSH_COUNT], dim = (size_t)m->hdr.a[PROTO_QPUSH_DIM];
    if (keys_check(s, m, dim, s->queue->dim) != 0) return;
    negqueue_t *q = s->queue;
    int rc;
    if (!q->rows && (rc = negqueue_alloc(q, s->max_payload))) { /* refuse before gathering */
        reply_err(s, s->router, m, rc, "QUEUE_PUSH: %s", mimic_last_error());
        return;
    }
    if (s->cfg.cluster.consistency != CONS_BSP) {
        rc = negqueue_push(q, proto_msg_data(m), count, dim, s->max_payload, why, sizeof why);
    } else {
        rc = stepkeys_add(s->qkeys, m->hdr.sender, m->hdr.step, proto_msg_data(m), count, why,
                          sizeof why);
        if (rc == STEPKEYS_LATE) { /* a worker step m->hdr.step did not wait for */
            ps_log(s, "queue: %zu keys of worker %d for step %" PRIu64 " came after the step's",
                   count, (int)m->hdr.sender, m->hdr.step);
            queue_append(s, proto_msg_data(m), count);
            rc = 0;
        }
    }
    if (rc) {
        reply_err(s, s->router, m, rc, "%s", why);
        return;
    }
    send_queue_ack(s, m);
    if (s->cfg.cluster.consistency == CONS_BSP) queue_commit(s);
}

static void on_queue_pull(server_t *s, const proto_msg_t *m) {
    if (!keys_here(s, m)) return;
    uint64_t since = (uint64_t)m->hdr.a[PROTO_QPULL_SINCE];
    if (since > s->queue->version) {
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "QUEUE_PULL header field 'a[0]' (since): %" PRIu64
                  " is ahead of the queue's version %" PRIu64,
                  since, s->queue->version);
        return;
    }
    if (s->cfg.cluster.consistency == CONS_BSP && m->hdr.sender >= 0) {
        /* a worker that wants the queue as of step t pushes nothing for steps < t: a
         * joiner is then not waited for on those steps */
        if (stepkeys_floor(s->qkeys, m->hdr.sender, m->hdr.step) != 0) {
            reply_err(s, s->router, m, MIMIC_ENOMEM, "out of memory for the worker table");
            return;
        }
        queue_commit(s);
        if (s->queue->step < m->hdr.step && !training_over(s)) {
            hold_wait(s, m, s->qpulls, &s->nqpulls, PS_PULLS_MAX, since);
            return;
        }
    }
    send_queue_reply(s, m->id, m->idlen, m->hdr.seq, since);
}

/* KEYS_REPLY to a worker of the released step: all rows, and where its own are. */
static void send_keys_reply(server_t *s, const uint8_t *id, size_t idlen, int32_t sender,
                            uint64_t seq) {
    stepkeys_view_t v = stepkeys_released(s->xkeys);
    size_t off = 0, mine = 0;
    if (stepkeys_rows_of(s->xkeys, sender, &off, &mine) != 0) off = mine = 0;
    proto_hdr_t h;
    proto_make_keys_reply(&h, s->id, seq, v.step, v.count, v.dim, off, mine, (uint64_t)v.workers);
    float *rows = NULL; /* copied: a late push may grow (move) the matrix */
    if (v.count) {
        if (!(rows = mimic_alloc((size_t)h.nbytes))) {
            ps_log(s, "KEYS_REPLY to worker %d dropped: out of memory", (int)sender);
            return;
        }
        memcpy(rows, v.rows, (size_t)h.nbytes);
    }
    if (proto_send(s->router, id, idlen, &h, rows, rows ? free_copy : NULL, NULL) != 0)
        ps_log(s, "KEYS_REPLY to worker %d dropped: %s", (int)sender, mimic_last_error());
}

/* Releases every complete exchange step and answers its waiting workers. */
static void keys_commit(server_t *s) {
    int rc;
    while ((rc = stepkeys_release(s->xkeys, s->cons)) == 1) {
        uint64_t step = stepkeys_released(s->xkeys).step;
        int keep = 0;
        for (int i = 0; i < s->nxwaits; i++) {
            ps_wait_t *w = &s->xwaits[i];
            if (w->step == step)
                send_keys_reply(s, w->id, w->idlen, w->sender, w->seq);
            else
                s->xwaits[keep++] = *w;
        }
        s->nxwaits = keep;
    }
    if (rc < 0) ps_log(s, "key exchange: out of memory releasing a step's keys");
}

static void on_keys_push(server_t *s, const proto_msg_t *m) {
    char why[PROTO_STR_MAX + 1];
    size_t count = (size_t)m->hdr.a[PROTO_KPUSH_COUNT], dim = (size_t)m->hdr.a[PROTO_KPUSH_DIM];
    if (keys_check(s, m, dim, s->xdim) != 0) return;
    int rc = stepkeys_add(s->xkeys, m->hdr.sender, m->hdr.step, proto_msg_data(m), count, why,
                          sizeof why);
    if (rc == STEPKEYS_LATE) { /* its step was answered without it: it gets the rows so far */
        ps_log(s, "key exchange: worker %d's keys for step %" PRIu64 " came after the step's",
               (int)m->hdr.sender, m->hdr.step);
        send_keys_reply(s, m->id, m->idlen, m->hdr.sender, m->hdr.seq);
        return;
    }
    if (rc) {
        reply_err(s, s->router, m, rc, "%s", why);
        return;
    }
    hold_wait(s, m, s->xwaits, &s->nxwaits, PS_PULLS_MAX, 0);
    keys_commit(s);
}

/* ---- scheduler messages ----------------------------------------------------------------- */

static void send_ack(server_t *s, const proto_msg_t *m) {
    proto_hdr_t h;
    proto_make_ack(&h, s->id, m->hdr.seq, m->hdr.type);
    if (proto_send(member_socket(s->member), NULL, 0, &h, NULL, NULL, NULL) != 0)
        ps_log(s, "ACK of %s not sent: %s", proto_type_name(m->hdr.type), mimic_last_error());
}

/* The token of live worker `id` in the member list, or 0 when it is not in it. */
static int64_t peer_token(const server_t *s, int32_t id) {
    size_t lo = 0, hi = s->npeers;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->peers[2 * mid] == id) return s->peers[2 * mid + 1];
        if (s->peers[2 * mid] < id) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

/* Drops the waiting requests of workers no longer in the member list: nobody would
 * read their replies, and they would hold room in the tables. */
static void drop_departed(server_t *s) {
    int k = 0;
    for (int i = 0; i < s->npulls; i++)
        if (peer_token(s, s->pulls[i].sender)) s->pulls[k++] = s->pulls[i];
    s->npulls = k;
    ps_wait_t *tabs[2] = {s->qpulls, s->xwaits};
    int *ns[2] = {&s->nqpulls, &s->nxwaits};
    for (int t = 0; t < 2; t++) {
        k = 0;
        for (int i = 0; tabs[t] && i < *ns[t]; i++)
            if (peer_token(s, tabs[t][i].sender)) tabs[t][k++] = tabs[t][i];
        *ns[t] = k;
    }
}

static void on_membership(server_t *s, const proto_msg_t *m) {
    const proto_hdr_t *h = &m->hdr;
    int64_t epoch = h->a[PROTO_MEMB_EPOCH], live = h->a[PROTO_MEMB_LIVE];
    const int64_t *pairs = proto_msg_data(m);
    if (cons_membership_outdated(s->cons, epoch)) {
        ps_log(s, "ignoring MEMBERSHIP epoch %" PRId64 " older than %" PRId64, epoch,
               cons_epoch(s->cons));
        send_ack(s, m);
        return;
    }
    if (live > 0 && (!pairs || proto_msg_size(m) != (size_t)live * PROTO_MEMB_ENTRY)) {
        reply_err(s, member_socket(s->member), m, MIMIC_EFORMAT,
                  "MEMBERSHIP header field 'n' does not hold %" PRId64 " {id, token} pairs", live);
        return;
    }
    if (live > CONS_WORKERS_MAX) {
        reply_err(s, member_socket(s->member), m, MIMIC_ENOMEM, "MEMBERSHIP: more than %d workers",
                  CONS_WORKERS_MAX);
        return;
    }
    size_t n = live > 0 ? (size_t)live : 0;
    for (size_t i = 0; i < n; i++) {
        int64_t id = pairs[2 * i];
        if (id < 1 || id > INT32_MAX || pairs[2 * i + 1] == 0 || (i && id <= pairs[2 * i - 2])) {
            reply_err(s, member_socket(s->member), m, MIMIC_EFORMAT,
                      "MEMBERSHIP payload entry %zu: id %" PRId64 " token %" PRId64
                      " (ids must ascend from 1, tokens be non-zero)",
                      i, id, pairs[2 * i + 1]);
            return;
        }
    }
    int32_t *ids = n ? malloc(n * sizeof *ids) : NULL;
    int64_t *copy = n ? malloc(n * PROTO_MEMB_ENTRY) : NULL;
    int rc = n && (!ids || !copy) ? MIMIC_ENOMEM : 0;
    for (size_t i = 0; !rc && i < n; i++)
        ids[i] = (int32_t)pairs[2 * i];
    if (!rc) rc = cons_membership(s->cons, epoch, ids, n);
    free(ids);
    if (rc != 0) {
        free(copy);
        reply_err(s, member_socket(s->member), m, MIMIC_ENOMEM,
                  "MEMBERSHIP: out of memory, or more than %d workers", CONS_WORKERS_MAX);
        return;
    }
    if (n) memcpy(copy, pairs, n * PROTO_MEMB_ENTRY);
    free(s->peers);
    s->peers = copy;
    s->npeers = n;
    ps_log(s, "membership epoch %" PRId64 ": %" PRId64 " live workers", epoch, live);
    drop_departed(s);
    send_ack(s, m);
    maybe_step_bsp(s); /* a shrink may leave only workers that already pushed */
    release_pulls(s);  /* SSP: the slowest worker may have left */
    if (s->queue) {    /* and the same for a step's keys */
        if (s->qkeys) queue_commit(s);
        keys_commit(s);
    }
}

static void on_sched(server_t *s, const proto_msg_t *m) {
    switch (m->hdr.type) {
    case PROTO_MEMBERSHIP:
        on_membership(s, m);
        break;
    case PROTO_CKPT:
        on_ckpt(s, m);
        break;
    case PROTO_SHUTDOWN:
        ps_log(s, "shutdown at version %" PRIu64 "%s%s", s->kv->version, m->hdr.str[0] ? ": " : "",
               m->hdr.str);
        s->done = 1;
        break;
    case PROTO_ERROR:
        ps_log(s, "scheduler reports an error: %s", m->hdr.str);
        break;
    case PROTO_ACK:
    case PROTO_REGISTER_ACK:
        break;
    default:
        reply_err(s, member_socket(s->member), m, MIMIC_EINVAL,
                  "%s is not a message a server accepts from the scheduler",
                  proto_type_name(m->hdr.type));
    }
}

/* Whether m's sender id is a live worker's and m came on a connection of that worker
 * (its routing id proves the REGISTER_ACK token); otherwise answers ERROR. A flood of
 * refusals is logged sparsely: the first 10, then every 1000th. */
static int peer_bound(server_t *s, const proto_msg_t *m) {
    int64_t token = peer_token(s, m->hdr.sender);
    uint8_t want[PROTO_PEER_IDENT];
    const char *why = NULL;
    if (!token) {
        why = "is not a live worker in the scheduler's member list";
    } else {
        proto_peer_ident(want, m->hdr.sender, token);
        if (m->idlen != sizeof want || memcmp(m->id, want, sizeof want) != 0)
            why = "belongs to another connection (a worker's id is valid only on its own)";
    }
    if (!why) return 1;
    char line[PROTO_STR_MAX + 1];
    snprintf(line, sizeof line, "%s header field 's': sender %d %s (membership epoch %" PRId64 ")",
             proto_type_name(m->hdr.type), (int)m->hdr.sender, why, cons_epoch(s->cons));
    if (++s->refused <= 10 || s->refused % 1000 == 0)
        ps_log(s, "refused %s (%" PRIu64 " refused so far)", line, s->refused);
    proto_reply_error(s->router, s->id, m, MIMIC_EPEER, line);
    return 0;
}

static void on_data(server_t *s, proto_msg_t *m) {
    if (!peer_bound(s, m)) return;
    switch (m->hdr.type) {
    case PROTO_PULL:
        on_pull(s, m);
        break;
    case PROTO_PUSH:
        on_push(s, m);
        break;
    case PROTO_QUEUE_PUSH:
        on_queue_push(s, m);
        break;
    case PROTO_QUEUE_PULL:
        on_queue_pull(s, m);
        break;
    case PROTO_KEYS_PUSH:
        on_keys_push(s, m);
        break;
    default:
        reply_err(s, s->router, m, MIMIC_EINVAL,
                  "%s is not accepted on a parameter server's data socket",
                  proto_type_name(m->hdr.type));
    }
}

/* Handles one message of a burst (proto_recv_burst); non-zero ends the burst. */
static int serve_msg(void *ctx, void *sock, proto_msg_t *m, int rc) {
    server_t *s = ctx;
    if (rc == 0) {
        if (sock == s->router) {
            on_data(s, m);
        } else {
            s->sched_seen = mimic_now();
            on_sched(s, m);
        }
    } else if (rc == MIMIC_EFORMAT) {
        reply_err(s, sock, m, rc, "%s", m->why);
    } else if (rc == MIMIC_EIO) {
        ps_log(s, "receive failed: %s", m->why);
    }
    return s->done;
}

int server_run(server_t *s, const volatile sig_atomic_t *stop) {
    zmq_pollitem_t items[2] = {{s->router, 0, ZMQ_POLLIN, 0},
                               {member_socket(s->member), 0, ZMQ_POLLIN, 0}};
    /* Heartbeats go out from the member's own thread, so a long update or checkpoint
     * write here never looks like death; the scheduler ACKs each one on that thread's
     * connection. Silence on both connections this long means the scheduler is gone
     * (in an elastic launch nobody else would stop this server). */
    const double sched_limit = member_sched_timeout_s(s->cfg.cluster.dead_ms);
    const int tick_ms = s->cfg.cluster.heartbeat_ms > 0 ? s->cfg.cluster.heartbeat_ms : 100;
    s->sched_seen = mimic_now();
    while (!s->done) {
        if (stop && *stop) {
            ps_log(s, "stopping on a signal at version %" PRIu64, s->kv->version);
            break;
        }
        int n = proto_poll(items, 2, tick_ms);
        if (n < 0) return mimic_err(MIMIC_EIO, "pserver: zmq_poll: %s", zmq_strerror(zmq_errno()));
        if (n == 0 && stop && *stop) continue; /* a signal: checked at the top */
        /* Bounded bursts per socket: a flood of pulls cannot starve the scheduler. */
        if (items[0].revents & ZMQ_POLLIN)
            proto_recv_burst(s->router, PS_BURST, s->max_payload, serve_msg, s);
        if (!s->done && (items[1].revents & ZMQ_POLLIN))
            proto_recv_burst(items[1].socket, PS_BURST, s->max_payload, serve_msg, s);
        double silent = mimic_now() - s->sched_seen, beat = member_sched_silence_s(s->member);
        if (beat >= 0 && beat < silent) silent = beat;
        if (silent > sched_limit)
            return mimic_err(MIMIC_EPEER,
                             "pserver %d: the scheduler has been silent for %.1f s (5 x "
                             "cluster.dead_ms) at version %" PRIu64
                             ": ending; restart the cluster from the last checkpoint",
                             s->rank, silent, s->kv->version);
    }
    return 0;
}

/* ---- setup ------------------------------------------------------------------------------ */

/* Whether the servers keep the momentum encoder: cluster.ema=on, or auto and the running
 * stage reads it (an MAE run does not pay for the EMA pass). */
static int ema_wanted(const mimic_cfg_t *cfg) {
    if (cfg->cluster.ema == EMA_ON) return 1;
    if (cfg->cluster.ema == EMA_OFF) return 0;
    return (stage_ops_of(cfg)->reads & STAGE_READ_EMA) != 0;
}

/* Checks the cluster settings the server uses and builds its consistency rules. */
static int read_settings(server_t *s) {
    const mimic_cfg_t *cfg = &s->cfg;
    s->ema_on = ema_wanted(cfg);
    if (s->ema_on && !(cfg->contrastive.momentum >= 0.0f && cfg->contrastive.momentum <= 1.0f))
        return mimic_err(MIMIC_EINVAL, "contrastive.momentum: %g is not in [0, 1]",
                         (double)cfg->contrastive.momentum);
    int rc =
        cons_new(&s->cons, cfg->cluster.consistency, cfg->cluster.staleness, cfg->cluster.workers);
    if (rc) return rc;
    s->slice_floats = cfg->cluster.slice_floats > 0 ? (size_t)cfg->cluster.slice_floats : 0;
    if (cfg->cluster.max_msg_mb <= 0 || cfg->cluster.max_msg_mb > (1L << 20))
        return mimic_err(MIMIC_EINVAL, "cluster.max_msg_mb: %ld is not in 1..%ld",
                         cfg->cluster.max_msg_mb, 1L << 20);
    s->max_payload = (size_t)cfg->cluster.max_msg_mb << 20;
    const char *drop = getenv("MIMIC_TEST_DROP_CKPT_DONE"); /* tests only: a lost message */
    s->drop_ckpt_done = drop ? atoi(drop) : 0;
    if (cfg->cluster.server_threads < 0 || cfg->cluster.server_threads > PS_THREADS_MAX)
        return mimic_err(MIMIC_EINVAL, "cluster.server_threads: %d is not in 0..%d",
                         cfg->cluster.server_threads, PS_THREADS_MAX);
    return 0;
}

/* Replies to vanished peers fail (EPEER) instead of vanishing; a full pipe to a stuck
 * peer fails at once (the reply is dropped) instead of blocking the loop; a frame more
 * than 1 MB beyond cluster.max_msg_mb makes ZeroMQ drop the peer as soon as the frame's
 * size is read, before anything of it is buffered. Slightly oversized ones still reach
 * proto_recv, which answers ERROR. (proto_router_bind sets exactly that.) */
static int bind_router(server_t *s) {
    proto_router_opts_t o = {.host = s->cfg.cluster.bind_host,
                             .linger_ms = PS_LINGER_MS,
                             .max_msg = (int64_t)s->max_payload + (1 << 20),
                             .who = "pserver"};
    int rc = curve_open_cfg(&s->curve, &s->cfg, PROTO_ROLE_SERVER, "pserver");
    if (rc) return rc;
    o.curve = s->curve;
    return proto_router_bind(&s->router, s->zctx, &o, s->endpoint, sizeof s->endpoint);
}

/* Resumes from the shard of step `text` (REGISTER_ACK.str). */
static int resume(server_t *s, const char *text) {
    char dir[CFG_PATH_MAX + 8], *end;
    ckpt_root(s, dir, sizeof dir);
    errno = 0;
    unsigned long long step = strtoull(text, &end, 10);
    if (end == text || *end || errno || text[0] == '-')
        return mimic_err(MIMIC_EFORMAT,
                         "scheduler %s: REGISTER_ACK field 'str': resume step '%s' is not a number",
                         member_endpoint(s->member), text);
    int rc = shardckpt_load(s->kv, s->queue, dir, s->rank, s->servers, step);
    if (rc) return rc;
    if (s->queue) {
        if (s->qkeys) stepkeys_reset(s->qkeys, s->queue->step);
        stepkeys_reset(s->xkeys, step);
        ps_log(s, "queue restored: %" PRIu64 " keys pushed, step %" PRIu64, s->queue->version,
               s->queue->step);
    }
    member_set_step(s->member, s->kv->version);
    ps_log(s, "resumed from %s/server-%d-step-%llu.safetensors", dir, s->rank, step);
    return 0;
}

static int apply_ack(server_t *s, const proto_hdr_t *ack) {
    const char *sched = member_endpoint(s->member);
    s->id = member_id(s->member);
    s->servers = (int)ack->a[PROTO_RACK_NSERVERS];
    s->rank = (int)ack->a[PROTO_RACK_RANK];
    if (ack->a[PROTO_RACK_NSERVERS] < 1 || ack->a[PROTO_RACK_NSERVERS] > 65536 ||
        ack->a[PROTO_RACK_RANK] >= ack->a[PROTO_RACK_NSERVERS]) {
        s->rank = -1;
        return mimic_err(MIMIC_EFORMAT,
                         "scheduler %s: REGISTER_ACK gives rank %" PRId64 " of %" PRId64 " servers",
                         sched, ack->a[PROTO_RACK_RANK], ack->a[PROTO_RACK_NSERVERS]);
    }
    if (s->servers != s->cfg.cluster.servers)
        ps_log(s, "the scheduler runs %d servers (cluster.servers here says %d)", s->servers,
               s->cfg.cluster.servers);
    return 0;
}

/* Sets the update's OpenMP threads and returns their number: cluster.server_threads, else
 * $OMP_NUM_THREADS, else one fewer than the cores. The spare core is for ZeroMQ's I/O thread, which
 * streams a step's finished slices while the update computes the next ones: with every core
 * updating, a 2-core server lost a quarter of its push+pull throughput (bench/ps.sh). */
static int update_threads(const mimic_cfg_t *cfg) {
#ifdef _OPENMP
    if (cfg->cluster.server_threads > 0) {
        omp_set_num_threads(cfg->cluster.server_threads);
    } else if (!getenv("OMP_NUM_THREADS")) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        omp_set_num_threads(cores > 2 ? (int)cores - 1 : 1);
    }
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Rank 0's contrastive services (one server holds the whole queue: a step's delta pull
 * is a few hundred rows, and a full pull of K = 65536 x 128 floats, 32 MB, happens once
 * per worker start; docs/runtime.md): the queue (its ring allocated now when the stage uses
 * it, else on the first push), the BSP queue's step keys and the key exchange. A
 * released matrix of keys must fit a reply (cluster.max_msg_mb). */
static int keys_new(server_t *s) {
    const mimic_cfg_t *cfg = &s->cfg;
    if (cfg->contrastive.queue_size <= 0 || cfg->contrastive.dim <= 0)
        return mimic_err(MIMIC_EINVAL, "contrastive.queue_size %d, contrastive.dim %d: need >= 1",
                         cfg->contrastive.queue_size, cfg->contrastive.dim);
    /* a queue row is the stage's keys of one sample (DenseCL: global | pooled dense) */
    size_t dim = stage_queue_dim(cfg), rows = s->max_payload / sizeof(float) / dim;
    int rc = negqueue_new(&s->queue, (size_t)cfg->contrastive.queue_size, dim);
    if (!rc && (stage_ops_of(cfg)->server_state & STAGE_STATE_QUEUE))
        rc = negqueue_alloc(s->queue, s->max_payload);
    if (!rc && cfg->cluster.consistency == CONS_BSP) rc = stepkeys_new(&s->qkeys, dim, rows);
    /* an exchanged row holds every key view of a sample (MoCo v3: both views) */
    size_t views = stage_ops_of(cfg)->key_views > 1 ? (size_t)stage_ops_of(cfg)->key_views : 1;
    s->xdim = (size_t)cfg->contrastive.dim * views;
    if (!rc) rc = stepkeys_new(&s->xkeys, s->xdim, s->max_payload / sizeof(float) / s->xdim);
    if (rc) return rc;
    s->qpulls = calloc(PS_PULLS_MAX, sizeof *s->qpulls);
    s->xwaits = calloc(PS_PULLS_MAX, sizeof *s->xwaits);
    if (!s->qpulls || !s->xwaits) return mimic_err(MIMIC_ENOMEM, "out of memory for held requests");
    return 0;
}

int server_new(server_t **out, const mimic_cfg_t *cfg, const char *sched_endpoint) {
    int rc;
    proto_hdr_t ack;
    *out = NULL;
    server_t *s = calloc(1, sizeof *s);
    if (!s) return mimic_err(MIMIC_ENOMEM, "out of memory for the server");
    s->cfg = *cfg;
    s->rank = -1;
    s->id = PROTO_ID_NONE;
    if ((rc = read_settings(s))) goto fail;
    if (!(s->pulls = calloc(PS_PULLS_MAX, sizeof *s->pulls))) {
        rc = mimic_err(MIMIC_ENOMEM, "out of memory for the pull table");
        goto fail;
    }
    if (!(s->zctx = zmq_ctx_new())) {
        rc = mimic_err(MIMIC_EIO, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if ((rc = bind_router(s))) goto fail;
    /* A scheduler silent for 20 death periods (60 s by default) is not there. */
    int join_ms = cfg->cluster.dead_ms > 50 ? 20 * cfg->cluster.dead_ms : 1000;
    rc = member_join(&s->member, s->zctx, s->curve, sched_endpoint, PROTO_ROLE_SERVER, s->endpoint,
                     join_ms, &ack);
    if (rc) goto fail;
    member_set_heartbeat(s->member, cfg->cluster.heartbeat_ms);
    if ((rc = member_beat_thread(s->member))) goto fail;
    if ((rc = apply_ack(s, &ack))) goto fail;
    if ((rc = kvstore_new(&s->kv, cfg, s->servers, s->rank, s->ema_on))) goto fail;
    if (s->rank == 0 && (rc = keys_new(s))) goto fail;
    if (ack.na > PROTO_RACK_NKEYS && ack.a[PROTO_RACK_NKEYS] > 0 &&
        (uint64_t)ack.a[PROTO_RACK_NKEYS] != s->kv->total) {
        rc = mimic_err(MIMIC_EINVAL,
                       "scheduler %s: REGISTER_ACK says the model has %" PRId64
                       " parameters, this [model] config has %zu",
                       sched_endpoint, ack.a[PROTO_RACK_NKEYS], s->kv->total);
        goto fail;
    }
    int threads = update_threads(cfg);
    ps_log(s,
           "registered with %s as id %d: rank %d of %d, keys [%zu, %zu) of %zu (%.2f MB), "
           "%s, %d update thread(s), momentum encoder %s (m0 %g%s), serving at %s",
           sched_endpoint, s->id, s->rank, s->servers, s->kv->lo, s->kv->hi, s->kv->total,
           (double)s->kv->n * 4.0 / (1 << 20),
           config_enum_name("cluster", "consistency", s->cfg.cluster.consistency), threads,
           s->ema_on ? "on" : "off", (double)cfg->contrastive.momentum,
           cfg->contrastive.momentum_cosine ? ", cosine to 1" : "", s->endpoint);
    if (ack.str[0] && (rc = resume(s, ack.str))) goto fail;
    *out = s;
    return 0;
fail:
    server_destroy(&s);
    return rc;
}

void server_destroy(server_t **sp) {
    if (!sp || !*sp) return;
    server_t *s = *sp;
    kvstore_t *kv = s->kv;
    if (kv && kv->n_update + kv->n_snap > 0)
        ps_log(s,
               "%ld updates (%.3f ms each: AdamW%s over %zu floats), %ld reply snapshots "
               "(%.2f ms each), %ld replies copied because snapshots were busy",
               kv->n_update, kv->n_update ? kv->t_update * 1e3 / (double)kv->n_update : 0.0,
               kv->ema ? " + EMA" : ", no EMA", kv->n, kv->n_snap,
               kv->n_snap ? kv->t_snap * 1e3 / (double)kv->n_snap : 0.0, kv->n_snap_fallback);
    member_destroy(&s->member);
    if (s->router) zmq_close(s->router);
    curve_close(&s->curve);
    /* Terminating the context waits (up to the linger) until ZeroMQ let go of every
     * zero-copy reply, so the snapshots can be freed after it. */
    if (s->zctx) zmq_ctx_term(s->zctx);
    if (s->has_first) zmq_msg_close(&s->first); /* borrowed by the store, freed next */
    for (size_t k = 0; s->pieces && k < s->kv->npieces; k++)
        piece_release(&s->pieces[k]);
    free(s->pieces);
    kvstore_destroy(&s->kv);
    negqueue_destroy(&s->queue);
    stepkeys_destroy(&s->qkeys);
    stepkeys_destroy(&s->xkeys);
    free(s->qpulls);
    free(s->xwaits);
    cons_destroy(&s->cons);
    free(s->pulls);
    free(s->peers);
    free(s);
    *sp = NULL;
}
