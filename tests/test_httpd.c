/* test_httpd — the scheduler's HTTP endpoint in-process (scheduler/obs.h, httpd.h): the
 * Prometheus text format (HELP/TYPE before every family, label values escaped, NaN for
 * a missing checkpoint), the JSON state, the history's decimation, the snapshot's
 * publication, and bad requests over real sockets (unknown path 404, other methods 405,
 * a body 413, oversized headers and a malformed request line refused, a flood of
 * connections bounded), and the refusal of a non-loopback bind without metrics.public,
 * in-process and by the mimic-scheduler binary. */
// TIMEOUT: 60
#define _GNU_SOURCE
#include "common.h"
#include "httpd.h"
#include "obs.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static obs_state_t *sample_state(void) {
    obs_state_t *st = calloc(1, sizeof *st);
    st->step = 42;
    st->total = 100;
    st->loss = 0.625;
    st->lr = 1e-3;
    st->img_s = 250.5;
    st->images = 4096;
    st->workers_live = 2;
    st->servers_live = 1;
    st->ckpt_step = -1;
    snprintf(st->stage, sizeof st->stage, "mae");
    snprintf(st->consistency, sizeof st->consistency, "bsp");
    snprintf(st->out_dir, sizeof st->out_dir, "runs/a \"quoted\" dir\\with\nnewline");
    for (int i = 0; i < 2; i++) {
        obs_worker_t *w = obs_worker(st, 10 + i);
        w->rank = i;
        w->steps = 40;
        for (int p = 0; p < OBS_PHASES; p++)
            w->phase_s[p] = 0.5 * (p + 1) + i;
        w->bytes_out = 1000u * (i + 1);
        w->bytes_in = 2000u * (i + 1);
    }
    st->w[1].flagged = 1;
    return st;
}

/* Every sample line's family has a HELP and a TYPE line before it. */
static void check_families(const char *text) {
    char *copy = strdup(text), *save = NULL;
    int samples = 0, orphans = 0;
    char helped[128][96];
    int nh = 0;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "# HELP ", 7) == 0) {
            char *sp = strchr(line + 7, ' ');
            T_CHECK(sp != NULL && sp[1] != 0); /* a help text follows the name */
            if (sp && nh < 128) snprintf(helped[nh++], 96, "%.*s", (int)(sp - line - 7), line + 7);
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            T_CHECK(nh > 0 && strncmp(line + 7, helped[nh - 1], strlen(helped[nh - 1])) == 0);
            T_CHECK(strstr(line, " gauge") || strstr(line, " counter"));
            continue;
        }
        samples++;
        T_CHECK(strncmp(line, "mimicps_", 8) == 0);
        size_t n = strcspn(line, "{ ");
        int found = 0;
        for (int i = 0; i < nh; i++)
            found |= strlen(helped[i]) == n && strncmp(helped[i], line, n) == 0;
        orphans += !found;
        /* a counter's name ends in _total */
    }
    T_CHECK(samples > 20);
    T_CHECK(orphans == 0);
    free(copy);
}

static void test_prom_text(void) {
    obs_state_t *st = sample_state();
    obs_buf_t b = {0};
    obs_render_prom(&b, st, 1000.0);
    T_CHECK(!b.oom && b.p);
    check_families(b.p);
    /* the label value's backslash, quote and newline are escaped; nothing else changes */
    T_CHECK(strstr(b.p, "out_dir=\"runs/a \\\"quoted\\\" dir\\\\with\\nnewline\"} 1\n") != NULL);
    T_CHECK(strstr(b.p, "# TYPE mimicps_step gauge\nmimicps_step 42\n") != NULL);
    T_CHECK(strstr(b.p, "mimicps_images_per_second 250.5\n") != NULL);
    T_CHECK(strstr(b.p, "# TYPE mimicps_images_total counter\nmimicps_images_total 4096\n") !=
            NULL);
    T_CHECK(strstr(b.p, "mimicps_checkpoint_age_seconds NaN\n") != NULL);
    T_CHECK(strstr(b.p, "mimicps_checkpoint_step -1\n") != NULL);
    T_CHECK(strstr(b.p, "mimicps_worker_phase_seconds_total{worker=\"11\",rank=\"1\","
                        "phase=\"backward\"} 2.5\n") != NULL);
    T_CHECK(strstr(b.p, "mimicps_worker_straggler{worker=\"11\",rank=\"1\"} 1\n") != NULL);
    T_CHECK(strstr(b.p, "mimicps_pushed_bytes_total 3000\n") != NULL);
    T_CHECK(strstr(b.p, "# TYPE mimicps_worker_phase_seconds_total counter\n") != NULL);
    obs_buf_free(&b);
    /* a checkpoint 12.5 s old */
    st->ckpt_step = 40;
    st->ckpt_wall = 987.5;
    obs_render_prom(&b, st, 1000.0);
    T_CHECK(strstr(b.p, "mimicps_checkpoint_age_seconds 12.5\n") != NULL);
    T_CHECK(strstr(b.p, "mimicps_checkpoint_step 40\n") != NULL);
    obs_buf_free(&b);

    obs_buf_label(&b, "a\\b\"c\nd\te");
    T_CHECK(b.p && strcmp(b.p, "a\\\\b\\\"c\\nd\te") == 0); /* only those three */
    obs_buf_free(&b);
    obs_buf_json_str(&b, "q\"\\\x01");
    T_CHECK(b.p && strcmp(b.p, "\"q\\\"\\\\\\u0001\"") == 0);
    obs_buf_free(&b);

    obs_render_json(&b, st, 1000.0);
    T_CHECK(b.p && b.p[0] == '{' && strstr(b.p, "\"step\":42") && strstr(b.p, "\"workers\":[{"));
    T_CHECK(strstr(b.p, "\"loss\":0.625") != NULL);
    obs_buf_free(&b);
    free(st);
}

static void test_history(void) {
    obs_state_t *st = calloc(1, sizeof *st);
    for (int i = 0; i < 3 * OBS_HIST; i++) {
        obs_point_t p = {.t = i * 0.5, .step = i, .loss = 1.0 / (i + 1)};
        obs_history_add(st, &p);
    }
    T_CHECK(st->nhist > OBS_HIST / 4 && st->nhist <= OBS_HIST);
    T_CHECK(st->hist[0].step == 0);                            /* the start stays */
    T_CHECK(st->hist[st->nhist - 1].step == 3 * OBS_HIST - 1); /* the newest is in */
    int sorted = 1;
    for (int i = 1; i < st->nhist; i++)
        sorted &= st->hist[i].t > st->hist[i - 1].t;
    T_CHECK(sorted);
    /* a full worker table forgets a departed worker but keeps its bytes in the totals */
    for (int i = 0; i < OBS_WORKERS_MAX; i++)
        obs_worker(st, i)->bytes_out = 7;
    T_CHECK(obs_worker(st, 999) == NULL); /* all live: no room */
    st->w[3].live = 0;
    obs_worker_t *w = obs_worker(st, 999);
    T_CHECK(w && w->id == 999 && st->nworkers == OBS_WORKERS_MAX);
    T_CHECK(st->departed_bytes_out == 7);
    free(st);

    obs_t *o = obs_new();
    obs_state_t *a = sample_state(), *b = calloc(1, sizeof *b);
    T_CHECK(obs_publish(o, a) == 1);
    obs_read(o, b);
    T_CHECK(memcmp(a, b, sizeof *a) == 0);
    obs_destroy(&o);
    T_CHECK(o == NULL);
    free(a);
    free(b);
}

/* ---- over sockets ---------------------------------------------------------------------- */

/* Sends req (len bytes) to 127.0.0.1:port and reads the answer into buf; the HTTP
 * status, 0 when the server closed without one. */
static int exchange(int port, const char *req, size_t len, char *buf, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    buf[0] = 0;
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (n <= 0) break; /* the server may close early on a bad request */
        off += (size_t)n;
    }
    shutdown(fd, SHUT_WR);
    size_t got = 0;
    struct pollfd p = {fd, POLLIN, 0};
    while (got + 1 < cap && poll(&p, 1, 5000) > 0) {
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
    }
    buf[got] = 0;
    close(fd);
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) status = 0;
    return status;
}

static int get(int port, const char *req, char *buf, size_t cap) {
    return exchange(port, req, strlen(req), buf, cap);
}

static void test_requests(void) {
    obs_t *o = obs_new();
    obs_state_t *st = sample_state();
    obs_publish(o, st);
    httpd_t *h = NULL;
    T_CHECK(httpd_start(&h, "127.0.0.1", 0, 0, o) == 0);
    if (!h) return;
    int port = httpd_port(h);
    T_CHECK(port > 0);
    static char buf[1 << 20];
    T_CHECK(get(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf,
                sizeof buf) == 200);
    T_CHECK(strstr(buf, "text/plain; version=0.0.4") && strstr(buf, "\r\n\r\n# HELP mimicps_"));
    T_CHECK(strstr(buf, "mimicps_step 42\n") != NULL);
    T_CHECK(get(port, "GET /api/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf,
                sizeof buf) == 200);
    T_CHECK(strstr(buf, "application/json") && strstr(buf, "\"step\":42"));
    T_CHECK(get(port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf) ==
            200);
    T_CHECK(strstr(buf, "text/html") && strstr(buf, "id=\"loss-chart\"") &&
            strstr(buf, "id=\"phase-bars\""));
    /* nothing loaded from elsewhere: no src= and no https:// anywhere in the page */
    T_CHECK(strstr(buf, "src=") == NULL && strstr(buf, "https://") == NULL);
    /* a query string is not part of the path */
    T_CHECK(get(port, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf,
                sizeof buf) == 200);

    /* HEAD: the headers of the page, no body */
    T_CHECK(get(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf,
                sizeof buf) == 200);
    T_CHECK(strstr(buf, "# HELP") == NULL);
    T_CHECK(get(port, "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf,
                sizeof buf) == 404);
    T_CHECK(get(port, "GET /metrics/../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                buf, sizeof buf) == 404);
    T_CHECK(get(port,
                "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: "
                "close\r\n\r\n",
                buf, sizeof buf) == 405);
    T_CHECK(strstr(buf, "Allow: GET, HEAD") != NULL);
    T_CHECK(get(port, "DELETE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf,
                sizeof buf) == 405);
    T_CHECK(get(port,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: "
                "close\r\n\r\nhello",
                buf, sizeof buf) == 413);
    /* a malformed request line: a 400 (or the connection closed), never a page */
    int s = get(port, "GARBAGE\r\n\r\n", buf, sizeof buf);
    T_CHECK(s == 400 || s == 0);
    s = get(port, "GET /metrics HTTP/9.9\r\n\r\n", buf, sizeof buf);
    T_CHECK(s != 200);
    /* headers beyond HTTPD_MEM_LIMIT: refused (431/413/400) or closed, never served */
    size_t big = 2 * HTTPD_MEM_LIMIT;
    char *req = malloc(big + 128);
    int n = snprintf(req, big + 128, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(req + n, 'a', big);
    memcpy(req + n + big, "\r\n\r\n", 5);
    s = exchange(port, req, strlen(req), buf, sizeof buf);
    T_CHECK(s != 200);
    T_CHECK(s == 0 || s == 431 || s == 413 || s == 400);
    free(req);

    /* more idle connections than HTTPD_CONN_PER_IP: the extra ones are closed at once
     * and a request on a fresh connection is still answered once they go */
    int fds[HTTPD_CONN_PER_IP + 4], refused = 0;
    for (int i = 0; i < HTTPD_CONN_PER_IP + 4; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        connect(fds[i], (struct sockaddr *)&a, sizeof a);
    }
    usleep(200000);
    for (int i = 0; i < HTTPD_CONN_PER_IP + 4; i++) {
        struct pollfd p = {fds[i], POLLIN, 0};
        char c;
        if (poll(&p, 1, 0) > 0 && recv(fds[i], &c, 1, MSG_DONTWAIT) == 0) refused++;
    }
    T_CHECK(refused >= 4);
    for (int i = 0; i < HTTPD_CONN_PER_IP + 4; i++)
        close(fds[i]);
    usleep(100000);
    T_CHECK(get(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf,
                sizeof buf) == 200);
    httpd_stop(&h);
    T_CHECK(h == NULL);
    /* IPv6 loopback (skipped where the machine has no IPv6) */
    int fd6 = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd6 >= 0) {
        close(fd6);
        T_CHECK(httpd_start(&h, "::1", 0, 0, o) == 0 && h && httpd_port(h) > 0);
        httpd_stop(&h);
    }
    obs_destroy(&o);
    free(st);
}

static void test_bind_rules(void) {
    T_CHECK(httpd_is_loopback("127.0.0.1"));
    T_CHECK(httpd_is_loopback("127.1.2.3"));
    T_CHECK(httpd_is_loopback("::1"));
    T_CHECK(httpd_is_loopback("localhost"));
    T_CHECK(!httpd_is_loopback("0.0.0.0"));
    T_CHECK(!httpd_is_loopback("10.0.0.1"));
    T_CHECK(!httpd_is_loopback("::"));
    T_CHECK(!httpd_is_loopback("example.com"));
    T_CHECK(httpd_check("127.0.0.1", 9464, 0) == 0);
    T_CHECK(httpd_check("0.0.0.0", 9464, 0) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "metrics.public=1") != NULL);
    T_CHECK(strstr(mimic_last_error(), "metrics.bind") != NULL);
    T_CHECK(httpd_check("0.0.0.0", 9464, 1) == 0); /* explicitly enabled */
    T_CHECK(httpd_check("example.com", 9464, 1) == MIMIC_EINVAL);
    T_CHECK(httpd_check("127.0.0.1", 70000, 0) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "metrics.port") != NULL);
    T_CHECK(httpd_check("127.0.0.1", -1, 0) == MIMIC_EINVAL);
    httpd_t *h = NULL;
    T_CHECK(httpd_start(&h, "0.0.0.0", 0, 0, NULL) == MIMIC_EINVAL && h == NULL);

    /* the binary: exit 2 with one line naming the key, before it binds anything */
    char log[1100];
    snprintf(log, sizeof log, "%.1000s/sched-public.txt", testutil_tmpdir());
    char bin[1100];
    snprintf(bin, sizeof bin, "%s/scheduler/mimic-scheduler",
             getenv("MIMIC_BUILD_DIR") ? getenv("MIMIC_BUILD_DIR") : "build");
    char *argv[] = {bin, "--metrics.port=9", "--metrics.bind=0.0.0.0", "--cluster.workers=1", NULL};
    int pid = testutil_spawn(argv, log);
    T_CHECK(pid > 0);
    int rc = testutil_wait_pid(pid, 20000);
    if (rc < 0) testutil_kill(pid);
    T_CHECK(rc == 2);
    char *out = testutil_slurp(log);
    T_CHECK(out && strstr(out, "metrics.bind: '0.0.0.0' is not a loopback address"));
    free(out);
}

int main(void) {
    test_prom_text();
    test_history();
    test_requests();
    test_bind_rules();
    return testutil_summary("test_httpd");
}
