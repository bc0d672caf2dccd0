// TIMEOUT: 60
/* test_kv — the worker's parameter-server client on its own, against a "server" that
 * accepts TCP connections but never speaks ZMTP: every push stays queued inside
 * ZeroMQ. The client must time out instead of hanging, and kv_destroy must not free
 * the push tracker (or let the caller free the gradient) while ZeroMQ still holds the
 * zero-copy message. The old kv_destroy freed it first; the release that came later
 * from ZeroMQ's I/O thread wrote into freed memory (seen under ASan when a server was
 * SIGKILLed mid-run). The same for the queue and key-exchange channels. */
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include "common.h"
#include "kv.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

/* A listening socket that never accepts: the kernel completes the TCP handshake, and
 * ZeroMQ's greeting goes unanswered forever. Returns the fd; *port gets the port. */
static int mute_server(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4) ||
        getsockname(fd, (struct sockaddr *)&a, &len))
        return -1;
    *port = ntohs(a.sin_port);
    return fd;
}

static void test_destroy_with_push_in_flight(int nservers) {
    int fds[2], port[2];
    char eps[128] = "";
    for (int s = 0; s < nservers; s++) {
        fds[s] = mute_server(&port[s]);
        T_CHECK(fds[s] >= 0);
        size_t k = strlen(eps);
        snprintf(eps + k, sizeof eps - k, "%stcp://127.0.0.1:%d", s ? " " : "", port[s]);
    }
    void *zctx = zmq_ctx_new();
    const size_t n = (size_t)4 << 20; /* 16 MB of gradient */
    float *grad = malloc(n * sizeof *grad);
    T_CHECK(grad != NULL);
    for (size_t i = 0; i < n; i++)
        grad[i] = (float)i;
    kv_t *kv = NULL;
    kv_opts_t ko = {.endpoints = eps, .nservers = nservers, .total = n, .id = 1, .token = 5,
                    .max_payload = 1 << 20};
    T_CHECK(kv_new(&kv, zctx, &ko) == 0);
    int ts = kv_push(kv, 0, 8, grad);
    T_CHECK(ts > 0);
    uint64_t v = 0;
    double t0 = mimic_now();
    int rc = kv_wait(kv, ts, 300, &v);
    double waited = mimic_now() - t0;
    printf("%d mute server(s): kv_wait returned %d after %.2f s\n", nservers, rc, waited);
    T_CHECK(rc == MIMIC_ETIMEOUT);
    T_CHECK(waited < 5.0);
    t0 = mimic_now();
    kv_destroy(&kv);
    double took = mimic_now() - t0;
    printf("%d mute server(s): kv_destroy with the push still queued took %.3f s\n", nservers,
           took);
    T_CHECK(kv == NULL);
    T_CHECK(took < 9.0); /* released by closing the sockets, not by the 10 s wait limit */
    /* The gradient may go now; under ASan a later read or release by ZeroMQ would be a
     * use-after-free caught at zmq_ctx_term. */
    memset(grad, 0xff, n * sizeof *grad);
    free(grad);
    T_CHECK(zmq_ctx_term(zctx) == 0);
    for (int s = 0; s < nservers; s++)
        close(fds[s]);
}

/* The contrastive requests on the same mute server: each channel times out on its own,
 * a wait on a timestamp that is not in flight is refused, and kv_destroy with the keys
 * still queued (zero-copy) does not let ZeroMQ touch freed memory. */
static void test_keys_channels(void) {
    int port = 0, fd = mute_server(&port);
    T_CHECK(fd >= 0);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    void *zctx = zmq_ctx_new();
    kv_t *kv = NULL;
    kv_opts_t ko = {.endpoints = ep, .nservers = 1, .total = 1024, .id = 1, .token = 5,
                    .max_payload = 1 << 20};
    T_CHECK(kv_new(&kv, zctx, &ko) == 0);
    enum { K = 64, D = 8, N = 16 };
    float *keys = calloc(N * D, sizeof(float)), *ring = calloc(K * D, sizeof(float));
    float *all = calloc(4 * N * D, sizeof(float));
    kv_queue_info_t qi;
    kv_keys_info_t ki;
    int tq = kv_queue_push(kv, 3, keys, N, D);
    int tp = kv_queue_pull(kv, 4, ring, K, D, &qi);
    int tk = kv_keys_exchange(kv, 3, keys, N, D, all, 4 * N, &ki);
    T_CHECK(tq > 0 && tp > 0 && tk > 0 && tq != tp && tp != tk && tq != tk);
    T_CHECK(kv_wait(kv, tk, 100, NULL) == MIMIC_ETIMEOUT);
    T_CHECK(kv_wait(kv, tp, 100, NULL) == MIMIC_ETIMEOUT);
    T_CHECK(kv_wait(kv, tq, 100, NULL) == MIMIC_ETIMEOUT);
    mimic_set_quiet(1);
    T_CHECK(kv_wait(kv, tk + 1000, 100, NULL) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "not a request in flight") != NULL);
    T_CHECK(kv_queue_pull(kv, 4, ring, 0, D, &qi) == MIMIC_EINVAL);
    mimic_set_quiet(0);
    kv_destroy(&kv);
    T_CHECK(kv == NULL);
    memset(keys, 0xff, N * D * sizeof(float)); /* ZeroMQ let go of them */
    free(keys);
    free(ring);
    free(all);
    T_CHECK(zmq_ctx_term(zctx) == 0);
    close(fd);
}

int main(void) {
    test_keys_channels();
    test_destroy_with_push_in_flight(1);
    test_destroy_with_push_in_flight(2);
    return testutil_summary("test_kv");
}
