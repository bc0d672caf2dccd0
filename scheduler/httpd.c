#define _GNU_SOURCE
#include "httpd.h"

#include "common.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

struct httpd {
    struct MHD_Daemon *d;
    obs_t *obs;
    int port;
};

/* A numeric address (or "localhost") into ss; 0, or -1 when it is not one. */
static int parse_addr(const char *bind, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    if (strcmp(bind, "localhost") == 0) bind = "127.0.0.1";
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, bind, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, bind, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 0;
    }
    return -1;
}

int httpd_is_loopback(const char *bind) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (parse_addr(bind, 0, &ss, &len)) return 0;
    if (ss.ss_family == AF_INET)
        return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    return IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr);
}

int httpd_check(const char *bind, int port, int allow_public) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (port < 0 || port > 65535)
        return mimic_err(MIMIC_EINVAL, "config metrics.port: %d is not a port (0 = off, 1..65535)",
                         port);
    if (parse_addr(bind, port, &ss, &len))
        return mimic_err(MIMIC_EINVAL,
                         "config metrics.bind: '%s' is not a numeric IPv4/IPv6 address or "
                         "localhost",
                         bind);
    if (!httpd_is_loopback(bind) && !allow_public)
        return mimic_err(MIMIC_EINVAL,
                         "config metrics.bind: '%s' is not a loopback address; the metrics and "
                         "the live page reveal the job, so serving them there needs "
                         "metrics.public=1",
                         bind);
    return 0;
}

/* ---- requests ------------------------------------------------------------------------ */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             void *body, size_t len, enum MHD_ResponseMemoryMode mode) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    /* the page runs only its own inline script and talks only to this server */
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'none'; script-src 'unsafe-inline'; "
                            "style-src 'unsafe-inline'; connect-src 'self'");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, "Allow", "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text) {
    return reply(c, status, "text/plain; charset=utf-8", (void *)text, strlen(text),
                 MHD_RESPMEM_PERSISTENT);
}

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* /metrics or /api/state, rendered from a copy of the published state. */
static enum MHD_Result reply_state(struct MHD_Connection *c, httpd_t *h, int prom) {
    obs_state_t *st = malloc(sizeof *st); /* ~60 kB: off the MHD thread's stack */
    if (!st) return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    obs_read(h->obs, st);
    obs_buf_t b = {0};
    if (prom)
        obs_render_prom(&b, st, wall_now());
    else
        obs_render_json(&b, st, wall_now());
    free(st);
    if (b.oom || !b.p) {
        obs_buf_free(&b);
        return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    }
    return reply(c, MHD_HTTP_OK,
                 prom ? "text/plain; version=0.0.4; charset=utf-8" : "application/json", b.p, b.len,
                 MHD_RESPMEM_MUST_FREE);
}

static int has_body(struct MHD_Connection *c) {
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    const char *te = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Transfer-Encoding");
    return te || (cl && strcmp(cl, "0") != 0);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    (void)version;
    (void)upload_data;
    httpd_t *h = cls;
    /* Everything is decided on the first call, before any body is read: a request with
     * a body is refused, so nothing a client sends is ever buffered here. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    if (has_body(c) || *upload_data_size)
        return reply_text(c, MHD_HTTP_CONTENT_TOO_LARGE, "a GET carries no body\n");
    (void)con_cls;
    if (strcmp(url, "/metrics") == 0) return reply_state(c, h, 1);
    if (strcmp(url, "/api/state") == 0) return reply_state(c, h, 0);
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0)
        return reply(c, MHD_HTTP_OK, "text/html; charset=utf-8", (void *)sched_page_html,
                     sched_page_html_len, MHD_RESPMEM_PERSISTENT);
    return reply_text(c, MHD_HTTP_NOT_FOUND, "not found: try /, /metrics or /api/state\n");
}

/* ---- life ---------------------------------------------------------------------------- */

int httpd_start(httpd_t **out, const char *bind, int port, int allow_public, obs_t *obs) {
    *out = NULL;
    int rc = httpd_check(bind, port, allow_public);
    if (rc) return rc;
    struct sockaddr_storage ss;
    socklen_t len;
    parse_addr(bind, port, &ss, &len);
    httpd_t *h = calloc(1, sizeof *h);
    if (!h) return mimic_err(MIMIC_ENOMEM, "metrics: out of memory");
    h->obs = obs;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)HTTPD_CONN_MAX, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                            (unsigned)HTTPD_CONN_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)HTTPD_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                            (size_t)HTTPD_MEM_LIMIT, MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return mimic_err(MIMIC_EIO, "metrics: cannot serve HTTP on %s port %d (in use?)", bind,
                         port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : port;
    *out = h;
    return 0;
}

int httpd_port(const httpd_t *h) {
    return h->port;
}

void httpd_stop(httpd_t **ph) {
    if (!ph || !*ph) return;
    MHD_stop_daemon((*ph)->d);
    free(*ph);
    *ph = NULL;
}
