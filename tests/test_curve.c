// TIMEOUT: 60
/* test_curve — CURVE keys and the ZAP handler (proto/curve.h): mimic-keys' directory
 * (modes, kept keys, the allow-list), the key chosen by MPI rank and the refusal of a
 * rank of another role, malformed key files and allow lines refused with file and line,
 * and a CURVE ROUTER on tcp loopback that admits an allowed worker (User-Id) and refuses
 * a stranger's key, a plain socket and a wrong server key, then admits a worker added by
 * re-running the key generation without a restart. */
#define _GNU_SOURCE
#include "common.h"
#include "curve.h"
#include "proto.h"
#include "testutil.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <zmq.h>

#define WAIT_MS 3000 /* bound on anything that should happen */
#define QUIET_MS 500 /* how long "nothing arrives" is watched */

static const char *path_in(char *buf, const char *dir, const char *name) {
    MIMIC_CHECK(snprintf(buf, PATH_MAX, "%s/%s", dir, name) < PATH_MAX);
    return buf;
}

static int file_mode(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (int)(st.st_mode & 0777);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    MIMIC_CHECK(f != NULL);
    fputs(text, f);
    MIMIC_CHECK(fclose(f) == 0);
}

static int count_prefix(const char *text, const char *prefix) {
    int n = 0;
    for (const char *s = text; s && *s; s = strchr(s, '\n') ? strchr(s, '\n') + 1 : NULL)
        n += strncmp(s, prefix, strlen(prefix)) == 0;
    return n;
}

/* The 40 characters after "public " in a key file, or "" */
static void file_public(const char *path, char out[CURVE_Z85]) {
    char *t = testutil_slurp(path);
    out[0] = 0;
    if (t && strncmp(t, "public ", 7) == 0) snprintf(out, CURVE_Z85, "%.40s", t + 7);
    free(t);
}

static int open_as(curve_t **c, const char *dir, int role, const char *key_file, int nservers) {
    curve_opts_t o = {.on = 1,
                      .dir = dir,
                      .key_file = key_file,
                      .role = role,
                      .nservers = nservers,
                      .who = "test"};
    return curve_open(c, &o);
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- key directory ----------------------------------------------------------------- */

static void test_keygen(const char *dir) {
    char p[PATH_MAX], pub[CURVE_Z85];
    T_CHECK(curve_keygen(dir, 2, 3) == 0);
    T_CHECK(file_mode(dir) == 0700);
    const char *keys[] = {"scheduler.key", "server-0.key", "server-1.key",
                          "worker-0.key",  "worker-1.key", "worker-2.key"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        T_CHECK(file_mode(path_in(p, dir, keys[i])) == 0600);
    T_CHECK(file_mode(path_in(p, dir, "worker-3.key")) == -1);
    char *allow = testutil_slurp(path_in(p, dir, "allow"));
    T_CHECK(allow && count_prefix(allow, "server ") == 2 && count_prefix(allow, "worker ") == 3);
    T_CHECK(allow && strlen(allow) == 5 * 48);
    file_public(path_in(p, dir, "worker-1.key"), pub);
    T_CHECK(allow && strlen(pub) == 40 && strstr(allow, pub) != NULL);
    char *w1 = testutil_slurp(path_in(p, dir, "worker-1.key"));
    char *spub = testutil_slurp(path_in(p, dir, "scheduler.pub"));
    file_public(path_in(p, dir, "scheduler.key"), pub);
    T_CHECK(spub && strlen(spub) == 41 && strncmp(spub, pub, 40) == 0);

    /* a second run keeps every key: same files, same allow */
    T_CHECK(curve_keygen(dir, 2, 3) == 0);
    char *w1b = testutil_slurp(path_in(p, dir, "worker-1.key"));
    char *allowb = testutil_slurp(path_in(p, dir, "allow"));
    T_CHECK(w1 && w1b && strcmp(w1, w1b) == 0);
    T_CHECK(allow && allowb && strcmp(allow, allowb) == 0);

    mimic_set_quiet(1);
    T_CHECK(curve_keygen(dir, 0, 3) == MIMIC_EINVAL);
    T_CHECK(curve_keygen(dir, 2, 0) == MIMIC_EINVAL);
    mimic_set_quiet(0);
    free(allow), free(allowb), free(w1), free(w1b), free(spub);
}

/* mimic-keys as a command: its summary line, exit 0; a bad flag: exit 2. */
static void test_command(const char *dir) {
    char bin[PATH_MAX], kdir[PATH_MAX], log[PATH_MAX];
    const char *build = getenv("MIMIC_BUILD_DIR");
    if (!build) {
        printf("test_command: MIMIC_BUILD_DIR not set, skipped\n");
        return;
    }
    snprintf(bin, sizeof bin, "%s/proto/mimic-keys", build);
    path_in(kdir, dir, "cmd/keys");
    path_in(log, dir, "cmd.log");
    char *ok[] = {bin, kdir, "--servers", "2", "--workers", "4", NULL};
    T_CHECK(testutil_wait_pid(testutil_spawn(ok, log), WAIT_MS) == 0);
    char *out = testutil_slurp(log);
    T_CHECK(out && strstr(out, "scheduler, 2 server and 4 worker key pairs; allow lists 6 "
                               "public keys") != NULL);
    free(out);
    char *bad[] = {bin, kdir, "--servers", "two", "--workers", "4", NULL};
    T_CHECK(testutil_wait_pid(testutil_spawn(bad, log), WAIT_MS) == 2);
    char *unknown[] = {bin, kdir, "--server", "2", NULL};
    T_CHECK(testutil_wait_pid(testutil_spawn(unknown, log), WAIT_MS) == 2);
    char *help[] = {bin, "--help", NULL};
    T_CHECK(testutil_wait_pid(testutil_spawn(help, log), WAIT_MS) == 0);
}

/* ---- choosing the key by rank -------------------------------------------------------- */

static void check_rank(const char *dir, const char *rank, int role, const char *file) {
    char p[PATH_MAX], want[CURVE_Z85];
    curve_t *c = NULL;
    setenv("OMPI_COMM_WORLD_RANK", rank, 1);
    file_public(path_in(p, dir, file), want);
    int rc = open_as(&c, dir, role, NULL, 2);
    T_CHECK(rc == 0 && c && strcmp(curve_public(c), want) == 0);
    if (rc) printf("rank %s: %s\n", rank, mimic_last_error());
    curve_close(&c);
    T_CHECK(c == NULL);
}

static void test_rank(const char *dir) {
    char p[PATH_MAX], want[CURVE_Z85];
    curve_t *c = NULL;
    unsetenv("PMI_RANK");
    check_rank(dir, "0", CURVE_ROLE_SCHEDULER, "scheduler.key");
    check_rank(dir, "1", PROTO_ROLE_SERVER, "server-0.key");
    check_rank(dir, "2", PROTO_ROLE_SERVER, "server-1.key");
    check_rank(dir, "3", PROTO_ROLE_WORKER, "worker-0.key");
    check_rank(dir, "5", PROTO_ROLE_WORKER, "worker-2.key");

    mimic_set_quiet(1);
    setenv("OMPI_COMM_WORLD_RANK", "0", 1); /* the scheduler's rank, started as a worker */
    T_CHECK(open_as(&c, dir, PROTO_ROLE_WORKER, NULL, 2) == MIMIC_EINVAL && !c);
    T_CHECK(strstr(mimic_last_error(), "rank 0 is a scheduler") != NULL);
    setenv("OMPI_COMM_WORLD_RANK", "3", 1); /* a worker's rank, started as a server */
    T_CHECK(open_as(&c, dir, PROTO_ROLE_SERVER, NULL, 2) == MIMIC_EINVAL && !c);
    T_CHECK(strstr(mimic_last_error(), "this process is a server") != NULL);
    setenv("OMPI_COMM_WORLD_RANK", "x1", 1);
    T_CHECK(open_as(&c, dir, PROTO_ROLE_WORKER, NULL, 2) == MIMIC_EINVAL && !c);
    T_CHECK(strstr(mimic_last_error(), "OMPI_COMM_WORLD_RANK") != NULL);
    setenv("OMPI_COMM_WORLD_RANK", "9", 1); /* worker-6.key does not exist */
    T_CHECK(open_as(&c, dir, PROTO_ROLE_WORKER, NULL, 2) == MIMIC_EIO && !c);
    T_CHECK(strstr(mimic_last_error(), "worker-6.key") != NULL);
    unsetenv("OMPI_COMM_WORLD_RANK");
    T_CHECK(open_as(&c, dir, PROTO_ROLE_WORKER, NULL, 2) == MIMIC_EINVAL && !c);
    T_CHECK(strstr(mimic_last_error(), "cluster.key: not set, and no MPI rank") != NULL);
    T_CHECK(open_as(&c, dir, PROTO_ROLE_WORKER, "", 2) == MIMIC_EINVAL && !c);
    mimic_set_quiet(0);

    /* PMI_RANK (MPICH, Intel MPI) when Open MPI's is absent */
    setenv("PMI_RANK", "4", 1);
    file_public(path_in(p, dir, "worker-1.key"), want);
    T_CHECK(open_as(&c, dir, PROTO_ROLE_WORKER, NULL, 2) == 0 && c &&
            strcmp(curve_public(c), want) == 0);
    curve_close(&c);
    unsetenv("PMI_RANK");

    /* cluster.key wins over the rank */
    setenv("OMPI_COMM_WORLD_RANK", "0", 1);
    file_public(path_in(p, dir, "worker-2.key"), want);
    T_CHECK(open_as(&c, dir, PROTO_ROLE_WORKER, path_in(p, dir, "worker-2.key"), 2) == 0 && c &&
            strcmp(curve_public(c), want) == 0);
    curve_close(&c);
    unsetenv("OMPI_COMM_WORLD_RANK");

    /* off: NULL, and every function accepts it */
    curve_opts_t off = {.on = 0};
    c = (curve_t *)&off; /* must be overwritten */
    T_CHECK(curve_open(&c, &off) == 0 && c == NULL);
    c = NULL;
    T_CHECK(strcmp(curve_public(NULL), "") == 0);
    T_CHECK(curve_serve(NULL, NULL, NULL) == 0 && curve_client(NULL, NULL, NULL) == 0);
    curve_close(&c);
    curve_close(NULL);
    curve_stats_t st = {1, 1};
    curve_stats(NULL, &st);
    T_CHECK(st.zap_refused == 0 && st.handshake_failed == 0);

    /* User-Ids */
    char user[CURVE_USER_MAX];
    snprintf(user, sizeof user, "worker %s", want);
    T_CHECK(curve_user_role(user) == PROTO_ROLE_WORKER);
    memcpy(user, "server", 6);
    T_CHECK(curve_user_role(user) == PROTO_ROLE_SERVER);
    T_CHECK(curve_user_role("") == -1 && curve_user_role(NULL) == -1);
    T_CHECK(curve_user_role("worker abc") == -1);
    user[10] = '~'; /* not a Z85 character */
    T_CHECK(curve_user_role(user) == -1);
}

/* ---- malformed files ----------------------------------------------------------------- */

/* curve_open with key_file fails with code, and the message names file and `where`. */
static void expect_refused(const char *dir, int role, const char *key_file, int code,
                           const char *file, const char *where) {
    curve_t *c = NULL;
    mimic_set_quiet(1);
    int rc = open_as(&c, dir, role, key_file, 1);
    mimic_set_quiet(0);
    T_CHECK(rc == code && c == NULL);
    T_CHECK(strstr(mimic_last_error(), file) != NULL && strstr(mimic_last_error(), where));
    if (rc != code || !strstr(mimic_last_error(), where))
        printf("expected %s %s, got %d: %s\n", file, where, rc, mimic_last_error());
    curve_close(&c);
}

static void test_malformed(const char *dir) {
    char p[PATH_MAX], key[PATH_MAX], pub[CURVE_Z85], pub2[CURVE_Z85], text[256];
    T_CHECK(curve_keygen(dir, 1, 2) == 0);
    path_in(key, dir, "worker-0.key");
    char *good = testutil_slurp(key);
    MIMIC_CHECK(good != NULL);
    file_public(key, pub);
    file_public(path_in(p, dir, "worker-1.key"), pub2);
    const char *secret = strstr(good, "secret ");
    MIMIC_CHECK(secret != NULL);

    write_text(key, "public abc\nsecret def\n");
    expect_refused(dir, PROTO_ROLE_WORKER, key, MIMIC_EFORMAT, key, "line 1");
    snprintf(text, sizeof text, "public %s\nsecret %.39s\n", pub, secret + 7);
    write_text(key, text);
    expect_refused(dir, PROTO_ROLE_WORKER, key, MIMIC_EFORMAT, key, "line 2");
    snprintf(text, sizeof text, "%sextra\n", good);
    write_text(key, text);
    expect_refused(dir, PROTO_ROLE_WORKER, key, MIMIC_EFORMAT, key, "line 3");
    snprintf(text, sizeof text, "public %s\n%s", pub2, secret); /* another pair's public */
    write_text(key, text);
    expect_refused(dir, PROTO_ROLE_WORKER, key, MIMIC_EFORMAT, key, "not the secret key's");
    snprintf(text, sizeof text, "secret %.40s\npublic %s\n", secret + 7, pub); /* swapped */
    write_text(key, text);
    expect_refused(dir, PROTO_ROLE_WORKER, key, MIMIC_EFORMAT, key, "line 1");
    expect_refused(dir, PROTO_ROLE_WORKER, path_in(p, dir, "nope.key"), MIMIC_EIO, "nope.key",
                   "cannot read");

    /* a good key file open to others is used, with a warning */
    write_text(key, good);
    chmod(key, 0644);
    curve_t *c = NULL;
    mimic_set_quiet(1);
    T_CHECK(open_as(&c, dir, PROTO_ROLE_WORKER, key, 1) == 0 && c);
    mimic_set_quiet(0);
    curve_close(&c);

    /* allow: a role that is not server/worker, a bad Z85 character, a blank line */
    char *allow = testutil_slurp(path_in(p, dir, "allow"));
    MIMIC_CHECK(allow != NULL);
    const char *server_key = path_in(key, dir, "server-0.key");
    snprintf(text, sizeof text, "%sadmin %s\n", allow, pub);
    write_text(p, text);
    expect_refused(dir, PROTO_ROLE_SERVER, server_key, MIMIC_EFORMAT, "allow", "line 4");
    snprintf(text, sizeof text, "%sworker %.39s~\n", allow, pub);
    write_text(p, text);
    expect_refused(dir, PROTO_ROLE_SERVER, server_key, MIMIC_EFORMAT, "allow", "line 4");
    snprintf(text, sizeof text, "\n%s", allow);
    write_text(p, text);
    expect_refused(dir, PROTO_ROLE_SERVER, server_key, MIMIC_EFORMAT, "allow", "line 1");
    snprintf(text, sizeof text, "%sserver %s\n", allow, pub); /* listed twice */
    write_text(p, text);
    expect_refused(dir, PROTO_ROLE_SERVER, server_key, MIMIC_EFORMAT, "allow", "line 4");
    write_text(p, allow);
    /* a worker does not read allow */
    write_text(p, "garbage\n");
    T_CHECK(open_as(&c, dir, PROTO_ROLE_WORKER, path_in(key, dir, "worker-1.key"), 1) == 0);
    curve_close(&c);
    write_text(p, allow);

    /* scheduler.pub */
    path_in(p, dir, "scheduler.pub");
    char *spub = testutil_slurp(p);
    write_text(p, "tooshort\n");
    expect_refused(dir, PROTO_ROLE_WORKER, path_in(key, dir, "worker-1.key"), MIMIC_EFORMAT,
                   "scheduler.pub", "line 1");
    snprintf(text, sizeof text, "%s%s", spub, spub);
    write_text(p, text);
    expect_refused(dir, PROTO_ROLE_WORKER, path_in(key, dir, "worker-1.key"), MIMIC_EFORMAT,
                   "scheduler.pub", "line 2");
    write_text(p, spub);
    free(spub), free(allow), free(good);
}

/* ---- a CURVE ROUTER on loopback ------------------------------------------------------ */

static void *dealer_to(void *zctx, const curve_t *c, const char *server_key, const char *ep) {
    void *d = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    MIMIC_CHECK(d != NULL);
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    T_CHECK(curve_client(c, d, server_key) == 0);
    T_CHECK(zmq_connect(d, ep) == 0);
    T_CHECK(zmq_send(d, "hello", 5, 0) == 5);
    return d;
}

/* Receives [identity][payload] within WAIT_MS; 1 when the payload is "hello" and the
 * frame's User-Id is `user`. */
static int received_from(void *router, const char *user) {
    zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, WAIT_MS) != 1) return 0;
    zmq_msg_t id, body;
    zmq_msg_init(&id), zmq_msg_init(&body);
    int ok = zmq_msg_recv(&id, router, 0) >= 0 && zmq_msg_more(&id) &&
             zmq_msg_recv(&body, router, 0) == 5 && !memcmp(zmq_msg_data(&body), "hello", 5);
    const char *got = ok ? zmq_msg_gets(&body, "User-Id") : NULL;
    ok = ok && got && strcmp(got, user) == 0;
    if (!ok) printf("received_from: User-Id '%s', wanted '%s'\n", got ? got : "(none)", user);
    zmq_msg_close(&id), zmq_msg_close(&body);
    return ok;
}

static int nothing_arrives(void *router, int ms) {
    zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
    return zmq_poll(&it, 1, ms) == 0;
}

/* Waits until the handler has counted more refusals of the kind than `before`. */
static int refused_more(const curve_t *c, int handshake, unsigned long before) {
    for (int t = 0; t < WAIT_MS; t += 10) {
        curve_stats_t st;
        curve_stats(c, &st);
        if ((handshake ? st.handshake_failed : st.zap_refused) > before) return 1;
        sleep_ms(10);
    }
    return 0;
}

/* One RFC 27 request straight to the ZAP handler: its status code and User-Id. */
static void zap_ask(void *req, const char *domain, const char *mechanism, const void *cred,
                    size_t credn, char status[4], char user[CURVE_USER_MAX]) {
    const char *head[] = {"1.0", "req-7", domain, "192.0.2.1", "", mechanism};
    for (int i = 0; i < 6; i++)
        zmq_send(req, head[i], strlen(head[i]), ZMQ_SNDMORE);
    zmq_send(req, cred, credn, 0);
    char frame[6][CURVE_USER_MAX];
    int more = 1, n = 0;
    memset(frame, 0, sizeof frame);
    zmq_pollitem_t it = {req, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, WAIT_MS) != 1) more = 0;
    for (; more && n < 6; n++) {
        int got = zmq_recv(req, frame[n], CURVE_USER_MAX - 1, 0);
        size_t len = sizeof more;
        zmq_getsockopt(req, ZMQ_RCVMORE, &more, &len);
        if (got < 0) break;
    }
    T_CHECK(n == 6 && !more && strcmp(frame[0], "1.0") == 0 && strcmp(frame[1], "req-7") == 0);
    snprintf(status, 4, "%.3s", frame[2]);
    snprintf(user, CURVE_USER_MAX, "%s", frame[4]);
}

static void test_router(const char *dir, const char *other) {
    char p[PATH_MAX], ep[256], user[CURVE_USER_MAX];
    size_t eplen = sizeof ep;
    T_CHECK(curve_keygen(dir, 1, 2) == 0);
    T_CHECK(curve_keygen(other, 1, 1) == 0);
    curve_t *sched = NULL, *w0 = NULL, *w1 = NULL, *w2 = NULL, *stranger = NULL, *osched = NULL;
    T_CHECK(open_as(&sched, dir, CURVE_ROLE_SCHEDULER, path_in(p, dir, "scheduler.key"), 1) == 0);
    T_CHECK(open_as(&w0, dir, PROTO_ROLE_WORKER, path_in(p, dir, "worker-0.key"), 1) == 0);
    T_CHECK(open_as(&w1, dir, PROTO_ROLE_WORKER, path_in(p, dir, "worker-1.key"), 1) == 0);
    T_CHECK(open_as(&stranger, other, PROTO_ROLE_WORKER, path_in(p, other, "worker-0.key"), 1) ==
            0);
    T_CHECK(open_as(&osched, other, CURVE_ROLE_SCHEDULER, path_in(p, other, "scheduler.key"), 1) ==
            0);
    if (!sched || !w0 || !w1 || !stranger || !osched) goto out;

    mimic_set_quiet(1); /* the refusals below are expected; set before the ZAP thread runs */
    void *zctx = zmq_ctx_new();
    void *router = zmq_socket(zctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    T_CHECK(curve_serve(sched, zctx, router) == 0);
    T_CHECK(zmq_bind(router, "tcp://127.0.0.1:*") == 0);
    zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &eplen);
    T_CHECK(curve_client(w0, router, "not a key") == MIMIC_EFORMAT);

    /* the ZAP handler itself: an allowed key, a stranger's, another mechanism or domain */
    void *req = zmq_socket(zctx, ZMQ_REQ);
    zmq_setsockopt(req, ZMQ_LINGER, &zero, sizeof zero);
    T_CHECK(zmq_connect(req, "inproc://zeromq.zap.01") == 0);
    uint8_t key[32];
    char status[4], zuser[CURVE_USER_MAX];
    MIMIC_CHECK(zmq_z85_decode(key, curve_public(w1)) != NULL);
    zap_ask(req, "mimicps", "CURVE", key, 32, status, zuser);
    snprintf(user, sizeof user, "worker %s", curve_public(w1));
    T_CHECK(strcmp(status, "200") == 0 && strcmp(zuser, user) == 0);
    zap_ask(req, "other", "CURVE", key, 32, status, zuser);
    T_CHECK(strcmp(status, "400") == 0 && zuser[0] == 0);
    zap_ask(req, "mimicps", "PLAIN", key, 32, status, zuser);
    T_CHECK(strcmp(status, "400") == 0 && zuser[0] == 0);
    zap_ask(req, "mimicps", "CURVE", key, 31, status, zuser);
    T_CHECK(strcmp(status, "400") == 0 && zuser[0] == 0);
    MIMIC_CHECK(zmq_z85_decode(key, curve_public(stranger)) != NULL);
    zap_ask(req, "mimicps", "CURVE", key, 32, status, zuser);
    T_CHECK(strcmp(status, "400") == 0 && zuser[0] == 0);
    zmq_close(req);

    /* (a) an allowed worker: delivered, with its User-Id */
    void *d0 = dealer_to(zctx, w0, NULL, ep);
    snprintf(user, sizeof user, "worker %s", curve_public(w0));
    T_CHECK(received_from(router, user));
    T_CHECK(curve_user_role(user) == PROTO_ROLE_WORKER);

    /* (b) a key pair of another cluster: refused by the ZAP handler */
    curve_stats_t st0;
    curve_stats(sched, &st0);
    void *db = dealer_to(zctx, stranger, curve_public(sched), ep);
    T_CHECK(refused_more(sched, 0, st0.zap_refused));
    T_CHECK(nothing_arrives(router, QUIET_MS));
    zmq_close(db);

    /* (c) no CURVE at all; (d) an allowed key but another server's public key */
    curve_stats(sched, &st0);
    void *dc = dealer_to(zctx, NULL, NULL, ep);
    T_CHECK(refused_more(sched, 1, st0.handshake_failed));
    zmq_close(dc);
    curve_stats(sched, &st0);
    void *dd = dealer_to(zctx, w1, curve_public(osched), ep);
    T_CHECK(refused_more(sched, 1, st0.handshake_failed));
    T_CHECK(nothing_arrives(router, QUIET_MS));
    zmq_close(dd);

    /* (e) the cluster grows: a new worker key is admitted without a restart */
    T_CHECK(curve_keygen(dir, 1, 3) == 0);
    T_CHECK(open_as(&w2, dir, PROTO_ROLE_WORKER, path_in(p, dir, "worker-2.key"), 1) == 0);
    curve_stats(sched, &st0);
    void *de = dealer_to(zctx, w2, NULL, ep);
    snprintf(user, sizeof user, "worker %s", curve_public(w2));
    T_CHECK(w2 && received_from(router, user));
    curve_stats_t st1;
    curve_stats(sched, &st1);
    T_CHECK(st1.zap_refused == st0.zap_refused);
    /* the first worker still gets through */
    T_CHECK(zmq_send(d0, "hello", 5, 0) == 5);
    snprintf(user, sizeof user, "worker %s", curve_public(w0));
    T_CHECK(received_from(router, user));

    zmq_close(de);
    zmq_close(d0);
    zmq_close(router);
    double t0 = mimic_now();
    curve_close(&sched); /* after the sockets, before zmq_ctx_term */
    T_CHECK(sched == NULL && mimic_now() - t0 < 1.0);
    zmq_ctx_term(zctx);
    mimic_set_quiet(0);
out:
    curve_close(&sched), curve_close(&w0), curve_close(&w1), curve_close(&w2);
    curve_close(&stranger), curve_close(&osched);
}

int main(void) {
    char a[PATH_MAX], b[PATH_MAX], c[PATH_MAX], d[PATH_MAX];
    const char *tmp = testutil_tmpdir();
    test_keygen(path_in(a, tmp, "keys/cluster")); /* a missing parent too */
    test_command(tmp);
    test_rank(a);
    test_malformed(path_in(b, tmp, "bad"));
    test_router(path_in(c, tmp, "net"), path_in(d, tmp, "other"));
    return testutil_summary("test_curve");
}
