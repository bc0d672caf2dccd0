/* httpd — the scheduler's HTTP endpoint (docs/operations.md): GET /metrics (Prometheus
 * text format), GET /api/state (JSON) and GET / (the live cluster page, embedded at build
 * time from scheduler/page/index.html), served by libmicrohttpd on its own thread from
 * the snapshot obs_publish leaves (obs.h), so a slow or hostile client never reaches the
 * scheduler's event loop.
 *
 * Bounded: a few connections (HTTPD_CONN_MAX, HTTPD_CONN_PER_IP), each closed after
 * HTTPD_TIMEOUT_S idle, request headers within HTTPD_MEM_LIMIT bytes, GET and HEAD of
 * the known paths only, no request body. A non-loopback bind address needs
 * metrics.public = 1: the pages reveal the job.
 *   if (httpd_start(&h, "127.0.0.1", 9464, 0, obs)) ...;  httpd_port(h);  httpd_stop(&h); */
#ifndef MIMIC_HTTPD_H
#define MIMIC_HTTPD_H

#include "obs.h"

#define HTTPD_CONN_MAX 32
#define HTTPD_CONN_PER_IP 8
#define HTTPD_TIMEOUT_S 10
#define HTTPD_MEM_LIMIT (32u << 10) /* per connection: request line and headers */

typedef struct httpd httpd_t;

/* 1 when bind is a numeric loopback address (127.0.0.0/8, ::1) or "localhost". */
int httpd_is_loopback(const char *bind);
/* Checks bind/port/allow_public without binding: 0, or MIMIC_EINVAL with one line
 * naming the metrics.* key. */
int httpd_check(const char *bind, int port, int allow_public);
/* Serves on bind:port (port 0: an ephemeral one, see httpd_port). */
int httpd_start(httpd_t **out, const char *bind, int port, int allow_public, obs_t *obs);
int httpd_port(const httpd_t *h);
void httpd_stop(httpd_t **h);

/* The live page (page_html.c, generated at build time). */
extern const unsigned char sched_page_html[];
extern const unsigned long sched_page_html_len;

#endif
