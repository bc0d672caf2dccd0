/* bench_ps — data-plane throughput in one run, two ways on the same bytes:
 *  raw: a ZeroMQ DEALER sends the vector zero-copy to a ROUTER in a child process,
 *       which sends it straight back (what one push + one pull move);
 *  ps:  this process joins a running cluster (scheduler + servers, started by
 *       bench/ps.sh) as its only worker and times kv_pushpull of the vector.
 * The two are timed alternately, one round trip each per iteration, so that both see
 * the same load on this noisy machine; the figures are medians.
 * The server applies AdamW between the two; that time is measured here on the same
 * vector (adamw_update, one thread) and reported so the transport share is visible;
 * pulls alone (no update in between) give the data plane's own throughput.
 * With cluster.curve=on (and cluster.keys, cluster.key as the cluster's other members
 * get them) this process joins as a CURVE client, so push and pull are encrypted; the raw
 * reference then runs twice, plaintext (raw_zmq_gbps, the same figure as with CURVE off)
 * and CURVE on both ends with throwaway keys and no ZAP check (raw_curve_gbps), so the
 * cost of the encryption itself is visible next to the cluster's.
 * With cluster.wire=bf16 the push and the pull carry bf16 (half the bytes); the GB/s
 * figures still count the f32 vector, so they compare the parameters moved per second.
 * Usage: bench_ps CONFIG.ini --scheduler tcp://H:P [--bench.iters N] (config: the
 * same model flags as the cluster, so the vector has the model's size). */
#include "adamw.h"
#include "common.h"
#include "config.h"
#include "curve.h"
#include "kv.h"
#include "mae.h"
#include "member.h"
#include "proto.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#define BENCH_ITERS_MAX 256

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Child: echo every payload back to its sender until the parent closes. server_sec:
 * a CURVE server with this secret key (Z85), or NULL for plaintext. */
static void echo_server(const char *ep_out_path, size_t bytes, const char *server_sec) {
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_ROUTER);
    char ep[256];
    size_t len = sizeof ep;
    int one = 1;
    if (server_sec && (zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof one) ||
                       zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, server_sec, CURVE_Z85 - 1)))
        _exit(1);
    if (zmq_bind(s, "tcp://127.0.0.1:*") || zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, ep, &len))
        _exit(1);
    FILE *f = fopen(ep_out_path, "w");
    fprintf(f, "%s", ep);
    fclose(f);
    for (;;) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&id, s, 0) < 0 || zmq_msg_recv(&body, s, 0) < 0) break;
        if (zmq_msg_size(&body) != bytes) break;
        zmq_msg_send(&id, s, ZMQ_SNDMORE);
        zmq_msg_send(&body, s, 0); /* the received buffer goes back without a copy */
    }
    _exit(0);
}

static void no_free(void *data, void *hint) {
    (void)data;
    (void)hint;
}

/* The raw reference: an echo child and a DEALER connected to it. With CURVE both ends
 * get throwaway key pairs; the child has no ZAP handler, so it admits any CURVE client
 * (the cluster's allow-list check happens once per connection, not per message). */
typedef struct {
    pid_t pid;
    void *ctx, *sock;
    int curve;
    char path[32];
    char server_pub[CURVE_Z85], server_sec[CURVE_Z85];
} raw_t;

/* Forks the echo child. Every child is forked before this process makes a ZeroMQ
 * context, so none inherits a context's threads. */
static int raw_spawn(raw_t *r, size_t bytes, int curve) {
    memset(r, 0, sizeof *r);
    r->pid = -1;
    r->curve = curve;
    if (curve && zmq_curve_keypair(r->server_pub, r->server_sec)) return -1;
    snprintf(r->path, sizeof r->path, "/tmp/bench_ps_XXXXXX");
    int fd = mkstemp(r->path);
    if (fd < 0) return -1;
    close(fd);
    remove(r->path);
    r->pid = fork();
    if (r->pid == 0) echo_server(r->path, bytes, curve ? r->server_sec : NULL);
    return r->pid > 0 ? 0 : -1;
}

/* Waits for the child's endpoint and connects a DEALER to it. */
static int raw_connect(raw_t *r) {
    char ep[256] = {0}, pub[CURVE_Z85], sec[CURVE_Z85];
    for (int i = 0; i < 500 && !ep[0]; i++) {
        FILE *f = fopen(r->path, "r");
        if (f) {
            if (!fgets(ep, sizeof ep, f)) ep[0] = 0;
            fclose(f);
        }
        if (!ep[0]) usleep(10000);
    }
    remove(r->path);
    r->ctx = zmq_ctx_new();
    r->sock = zmq_socket(r->ctx, ZMQ_DEALER);
    if (r->curve && (zmq_curve_keypair(pub, sec) ||
                     zmq_setsockopt(r->sock, ZMQ_CURVE_SERVERKEY, r->server_pub, CURVE_Z85 - 1) ||
                     zmq_setsockopt(r->sock, ZMQ_CURVE_PUBLICKEY, pub, CURVE_Z85 - 1) ||
                     zmq_setsockopt(r->sock, ZMQ_CURVE_SECRETKEY, sec, CURVE_Z85 - 1)))
        return -1;
    return ep[0] && zmq_connect(r->sock, ep) == 0 ? 0 : -1;
}

/* One round trip of buf: zero-copy out, and what a pull does with the answer (land it
 * in the parameters). Returns seconds. */
static double raw_round_trip(raw_t *r, float *buf, size_t bytes) {
    double t0 = mimic_now();
    zmq_msg_t out, in;
    zmq_msg_init_data(&out, buf, bytes, no_free, NULL);
    zmq_msg_send(&out, r->sock, 0);
    zmq_msg_init(&in);
    zmq_msg_recv(&in, r->sock, 0);
    memcpy(buf, zmq_msg_data(&in), bytes);
    zmq_msg_close(&in);
    return mimic_now() - t0;
}

static void raw_close(raw_t *r) {
    if (r->sock) zmq_close(r->sock);
    if (r->ctx) zmq_ctx_term(r->ctx);
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
    }
    r->sock = r->ctx = NULL;
    r->pid = -1;
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return t[n / 2];
}

int main(int argc, char **argv) {
    mimic_cfg_t cfg;
    config_defaults(&cfg);
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    int nrest = 0, iters = 10;
    const char *sched = NULL;
    if (config_parse_args(&cfg, argc, argv, rest, &nrest)) return 2;
    for (int i = 0; i + 1 < nrest; i += 2) {
        if (strcmp(rest[i], "--scheduler") == 0)
            sched = rest[i + 1];
        else if (strcmp(rest[i], "--bench.iters") == 0)
            iters = atoi(rest[i + 1]);
        else {
            fprintf(stderr, "bench_ps: unknown flag %s\n", rest[i]);
            return 2;
        }
    }
    free(rest);
    if (!sched || iters < 1 || iters > BENCH_ITERS_MAX) {
        fprintf(stderr, "bench_ps: need --scheduler and 1 <= --bench.iters <= %d\n",
                BENCH_ITERS_MAX);
        return 2;
    }
    mae_t *m = NULL;
    if (mae_new(&m, &cfg.model)) return 1;
    mae_init(m, cfg.train.seed);
    size_t n = m->p->total, bytes = n * sizeof(float);
    float *buf = mimic_alloc(bytes), *mo = mimic_alloc(bytes), *ve = mimic_alloc(bytes);
    for (size_t i = 0; i < n; i++)
        buf[i] = 1e-3f * (float)(i % 97);
    /* the raw CURVE reference runs only when the cluster is under CURVE */
    int curve_on = cfg.cluster.curve;
    raw_t raw_ep, raw_cv;
    memset(&raw_cv, 0, sizeof raw_cv);
    raw_cv.pid = -1;
    if (raw_spawn(&raw_ep, bytes, 0) || (curve_on && raw_spawn(&raw_cv, bytes, 1)) ||
        raw_connect(&raw_ep) || (curve_on && raw_connect(&raw_cv))) {
        fprintf(stderr, "bench_ps: the raw echo server did not start\n");
        raw_close(&raw_ep);
        raw_close(&raw_cv);
        return 1;
    }

    /* the optimizer the server runs between a push and the pull that follows */
    adamw_cfg_t oc = {0.9f, 0.95f, 1e-8f, 0.05f};
    double ta[BENCH_ITERS_MAX];
    for (int it = 0; it < iters; it++) {
        double t0 = mimic_now();
        adamw_update(&oc, m->p, m->p->w, buf, 1.0f, mo, ve, 0, n, 1e-4f, it + 1);
        ta[it] = mimic_now() - t0;
    }

    void *ctx = zmq_ctx_new();
    member_t *mb = NULL;
    kv_t *kv = NULL;
    curve_t *curve = NULL; /* NULL: cluster.curve is off */
    proto_hdr_t ack;
    const char *step = "joining the cluster";
    int rc = curve_open_cfg(&curve, &cfg, PROTO_ROLE_WORKER, "bench_ps");
    if (!rc) rc = member_join(&mb, ctx, curve, sched, PROTO_ROLE_WORKER, NULL, 30000, &ack);
    if (!rc) rc = member_beat_thread(mb);
    if (!rc) {
        kv_opts_t ko = {.endpoints = member_servers(mb),
                        .nservers = (int)ack.a[PROTO_RACK_NSERVERS],
                        .total = n,
                        .id = member_id(mb),
                        .token = member_token(mb),
                        .max_payload = bytes + 4096,
                        .curve = curve,
                        .wire = cfg.cluster.wire == WIRE_BF16 ? PROTO_DT_BF16 : PROTO_DT_F32,
                        .slice = kv_slice_of(&cfg)};
        rc = kv_new(&kv, ctx, &ko);
    }
    /* Interleaved: each iteration times one raw round trip (two with CURVE: plaintext and
     * encrypted), one push-pull and one pull, so all see the same state of this noisy
     * machine. */
    double tr[BENCH_ITERS_MAX], tc[BENCH_ITERS_MAX], t[BENCH_ITERS_MAX], tp[BENCH_ITERS_MAX];
    double tw[BENCH_ITERS_MAX], tsl[BENCH_ITERS_MAX]; /* whole push, and in slices */
    size_t slice = (size_t)(cfg.cluster.slice_floats > 0 ? cfg.cluster.slice_floats : 0);
    uint64_t version = 0;
    if (!rc) step = "push/pull";
    for (int it = -2; it < iters && !rc; it++) {
        double r = raw_round_trip(&raw_ep, buf, bytes);
        double rcv = curve_on ? raw_round_trip(&raw_cv, buf, bytes) : 0;
        /* what a BSP worker does: one push-pull (the server streams the new version
         * back in slices while it computes them) */
        double t0 = mimic_now();
        int ts = kv_pushpull(kv, version, 1, buf, m->p->w);
        if ((rc = ts < 0 ? ts : kv_wait(kv, ts, 30000, &version))) break;
        double t1 = mimic_now();
        /* a pull alone: the server answers from its snapshot of the current version, so
         * this is the data plane without any optimizer work in the way */
        ts = kv_pull(kv, PROTO_WHICH_PARAMS, 0, m->p->w);
        if ((rc = ts < 0 ? ts : kv_wait(kv, ts, 30000, NULL))) break;
        double t1p = mimic_now();
        /* cluster.push_slices off and on, one push-pull each, in the same iteration */
        double tws[2];
        for (int k = 0; k < 2 && !rc; k++) {
            kv_set_slice(kv, k ? slice : 0);
            double t2 = mimic_now();
            ts = kv_pushpull(kv, version, 1, buf, m->p->w);
            rc = ts < 0 ? ts : kv_wait(kv, ts, 30000, &version);
            tws[k] = mimic_now() - t2;
        }
        kv_set_slice(kv, kv_slice_of(&cfg));
        if (rc) break;
        if (it >= 0) {
            tw[it] = tws[0];
            tsl[it] = tws[1];
            tr[it] = r;
            tc[it] = rcv;
            t[it] = t1 - t0;
            tp[it] = t1p - t1;
        }
    }
    raw_close(&raw_ep);
    raw_close(&raw_cv);
    if (rc) {
        fprintf(stderr, "bench_ps: %s failed: %s\n", step, mimic_last_error());
    } else {
        double raw = 2.0 * (double)bytes / median(tr, iters) / 1e9;
        double t_adamw = median(ta, iters), t_ps = median(t, iters);
        double ps = 2.0 * (double)bytes / t_ps / 1e9;
        double pull = (double)bytes / median(tp, iters) / 1e9;
        double ps_transport = 2.0 * (double)bytes / (t_ps - t_adamw) / 1e9;
        printf("curve=%s\n", curve_on ? "on" : "off");
        printf("vector_floats=%zu\n", n);
        printf("vector_mb=%.2f\n", (double)bytes / 1e6);
        printf("raw_zmq_gbps=%.3f\n", raw); /* plaintext whatever cluster.curve says */
        printf("ps_push_pull_gbps=%.3f\n", ps); /* f32 bytes of the vector, both ways */
        printf("ps_push_pull_ms=%.3f\n", t_ps * 1e3);
        printf("wire=%s\n", cfg.cluster.wire == WIRE_BF16 ? "bf16" : "fp32");
        printf("wire_mb=%.2f\n", 2.0 * (double)n * (cfg.cluster.wire == WIRE_BF16 ? 2 : 4) / 1e6);
        printf("server_adamw_ms=%.2f\n", t_adamw * 1e3);
        printf("ps_transport_gbps=%.3f\n", ps_transport);
        printf("ratio_ps_raw=%.3f\n", ps / raw);
        printf("ratio_transport_raw=%.3f\n", ps_transport / raw);
        printf("pull_only_gbps=%.3f\n", pull);
        /* whole pushes against pushes in slices applied as they arrive, same iterations */
        double whole = 2.0 * (double)bytes / median(tw, iters) / 1e9;
        double sliced = 2.0 * (double)bytes / median(tsl, iters) / 1e9;
        printf("push_whole_gbps=%.3f\nratio_whole_raw=%.3f\n", whole, whole / raw);
        printf("push_sliced_gbps=%.3f\nratio_sliced_raw=%.3f\n", sliced, sliced / raw);
        printf("ratio_pull_raw=%.3f\n", pull / raw);
        if (curve_on) { /* the same round trip with CURVE on both ends, no cluster */
            double raw_curve = 2.0 * (double)bytes / median(tc, iters) / 1e9;
            printf("raw_curve_gbps=%.3f\n", raw_curve);
            printf("ratio_ps_rawcurve=%.3f\n", ps / raw_curve);
        }
    }
    if (mb) member_leave(mb);
    kv_destroy(&kv);
    member_destroy(&mb);
    curve_close(&curve); /* after the sockets, before zmq_ctx_term */
    zmq_ctx_term(ctx);
    mimic_free(buf);
    mimic_free(mo);
    mimic_free(ve);
    mae_destroy(&m);
    return rc ? 1 : 0;
}
