/* curve — CURVE keys, the allow-list and the ZAP handler thread (curve.h says how to use
 * it; docs/security.md why). Files are parsed strictly: a line that mimic-keys would not
 * have written is refused with the file and line, never guessed at. */
#define _GNU_SOURCE /* explicit_bzero */
#include "curve.h"

#include "common.h"
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define CURVE_KEY_BYTES 32
#define CURVE_Z85_LEN 40
#define CURVE_ZAP_ENDPOINT "inproc://zeromq.zap.01" /* fixed by RFC 27 */
#define CURVE_DOMAIN "mimicps"
#define CURVE_KEYFILE_MAX 4096      /* a key file or scheduler.pub is ~100 bytes */
#define CURVE_ALLOW_MAX (16u << 20) /* 300 000 keys; anything larger is not ours */
#define CURVE_LOG_FIRST 10          /* refusals logged in full, then ... */
#define CURVE_LOG_EVERY 1000        /* ... one in this many (a peer retries every 100 ms) */
#define CURVE_POLL_MS 100           /* how soon the ZAP thread sees curve_close */
#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93 /* libzmq 4.3 draft option; the value is stable */
#endif

typedef struct {
    int role; /* PROTO_ROLE_WORKER or PROTO_ROLE_SERVER */
    char z85[CURVE_Z85];
    uint8_t key[CURVE_KEY_BYTES];
} curve_peer_t;

typedef struct {
    curve_peer_t *peer;
    int n;
    char path[PATH_MAX];
    struct stat st; /* of the file loaded: a new inode, size or mtime means it was rewritten */
} curve_allow_t;

typedef struct {
    unsigned long seen, logged; /* refusals seen; the count at the last one logged */
} curve_limit_t;

struct curve {
    int role;
    char who[32];
    char dir[PATH_MAX];
    char pub[CURVE_Z85], sec[CURVE_Z85], sched_pub[CURVE_Z85];
    curve_allow_t allow; /* scheduler and servers; the ZAP thread owns it once started */
    /* the ZAP thread: it owns zap and mon from pthread_create on and closes them */
    void *zctx, *zap, *mon;
    pthread_t thread;
    int running;
    atomic_int stop;
    atomic_ulong zap_refused, handshake_failed;
    curve_limit_t zap_limit, handshake_limit; /* the ZAP thread's alone */
};

/* ---- keys and files ------------------------------------------------------------------ */

/* z85 holds exactly 40 Z85 characters that decode to a key (into key when not NULL). */
static int curve_z85_ok(const char *z85, uint8_t *key) {
    uint8_t tmp[CURVE_KEY_BYTES];
    if (strlen(z85) != CURVE_Z85_LEN) return 0;
    return zmq_z85_decode(key ? key : tmp, z85) != NULL;
}

/* A line "<prefix><z85>" (s, n without the newline): 0, and the key in z85/key, or -1. */
static int curve_parse_line(const char *s, size_t n, const char *prefix, char z85[CURVE_Z85],
                            uint8_t *key) {
    size_t p = strlen(prefix);
    if (n != p + CURVE_Z85_LEN || memcmp(s, prefix, p) != 0) return -1;
    memcpy(z85, s + p, CURVE_Z85_LEN);
    z85[CURVE_Z85_LEN] = 0;
    return curve_z85_ok(z85, key) ? 0 : -1;
}

typedef struct {
    const char *p, *end;
    int line; /* 1-based number of the line last returned */
} curve_lines_t;

/* The next line of the text (without its '\n'; the last one may lack it): 1, or 0 at the
 * end. */
static int curve_next_line(curve_lines_t *it, const char **s, size_t *n) {
    if (it->p >= it->end) return 0;
    const char *nl = memchr(it->p, '\n', (size_t)(it->end - it->p));
    *s = it->p;
    *n = (size_t)((nl ? nl : it->end) - it->p);
    it->p = nl ? nl + 1 : it->end;
    it->line++;
    return 1;
}

/* Reads a whole file of at most cap bytes: *text (malloc'ed, NUL-terminated), *len and
 * its stat. MIMIC_EIO, or MIMIC_EFORMAT when it is larger than any file of ours. */
static int curve_slurp(const char *path, size_t cap, char **text, size_t *len, struct stat *st) {
    *text = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mimic_err(MIMIC_EIO, "%s: cannot read (%s)", path, strerror(errno));
    int rc = 0;
    char *buf = NULL;
    if (fstat(fd, st) != 0) {
        rc = mimic_err(MIMIC_EIO, "%s: cannot stat (%s)", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st->st_mode) || (size_t)st->st_size > cap) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: not a file of at most %zu bytes", path, cap);
        goto out;
    }
    size_t want = (size_t)st->st_size, got = 0;
    if (!(buf = malloc(want + 1))) {
        rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    while (got < want) {
        ssize_t r = read(fd, buf + got, want - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = mimic_err(MIMIC_EIO, "%s: cannot read (%s)", path, r ? strerror(errno) : "short");
            goto out;
        }
        got += (size_t)r;
    }
    buf[got] = 0;
    *text = buf, *len = got, buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

/* Frees text that held a secret. */
static void curve_free_secret(char *text, size_t len) {
    if (!text) return;
    explicit_bzero(text, len);
    free(text);
}

/* A key file "public <z85>\nsecret <z85>\n" into pub and sec (sec is secret: wipe it).
 * Warns, like ssh, when group or others may read it. */
static int curve_read_keyfile(const char *path, const char *who, char pub[CURVE_Z85],
                              char sec[CURVE_Z85]) {
    char *text;
    size_t len, n = 0;
    struct stat st;
    int rc = curve_slurp(path, CURVE_KEYFILE_MAX, &text, &len, &st);
    if (rc) return rc;
    if (st.st_mode & 077)
        mimic_warn("%s: %s: key file is open to group or others (mode %03o); chmod 600 it", who,
                   path, (unsigned)(st.st_mode & 0777));
    curve_lines_t it = {text, text + len, 0};
    const char *s = NULL;
    char derived[CURVE_Z85];
    if (!curve_next_line(&it, &s, &n) || curve_parse_line(s, n, "public ", pub, NULL)) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: line 1: expected 'public <40 Z85 characters>'", path);
    } else if (!curve_next_line(&it, &s, &n) || curve_parse_line(s, n, "secret ", sec, NULL)) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: line 2: expected 'secret <40 Z85 characters>'", path);
    } else if (curve_next_line(&it, &s, &n)) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: line 3: unexpected; a key file has two lines", path);
    } else if (zmq_curve_public(derived, sec) != 0 || strcmp(derived, pub) != 0) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: line 1: the public key is not the secret key's", path);
    }
    if (rc) explicit_bzero(sec, CURVE_Z85);
    curve_free_secret(text, len);
    return rc;
}

/* scheduler.pub: one line "<z85>". */
static int curve_read_pub(const char *path, char pub[CURVE_Z85]) {
    char *text;
    size_t len, n = 0;
    struct stat st;
    int rc = curve_slurp(path, CURVE_KEYFILE_MAX, &text, &len, &st);
    if (rc) return rc;
    curve_lines_t it = {text, text + len, 0};
    const char *s = NULL;
    if (!curve_next_line(&it, &s, &n) || curve_parse_line(s, n, "", pub, NULL))
        rc =
            mimic_err(MIMIC_EFORMAT, "%s: line 1: expected a public key (40 Z85 characters)", path);
    else if (curve_next_line(&it, &s, &n))
        rc = mimic_err(MIMIC_EFORMAT, "%s: line 2: unexpected; the file holds one key", path);
    free(text);
    return rc;
}

static void curve_allow_free(curve_allow_t *a) {
    free(a->peer);
    a->peer = NULL;
    a->n = 0;
}

static const curve_peer_t *curve_allow_find(const curve_allow_t *a, const uint8_t *key) {
    for (int i = 0; i < a->n; i++)
        if (memcmp(a->peer[i].key, key, CURVE_KEY_BYTES) == 0) return &a->peer[i];
    return NULL;
}

/* One allow line into p: "server <z85>" or "worker <z85>". */
static int curve_parse_allow_line(const char *s, size_t n, curve_peer_t *p) {
    if (curve_parse_line(s, n, "server ", p->z85, p->key) == 0) {
        p->role = PROTO_ROLE_SERVER;
        return 0;
    }
    if (curve_parse_line(s, n, "worker ", p->z85, p->key) == 0) {
        p->role = PROTO_ROLE_WORKER;
        return 0;
    }
    return -1;
}

/* Loads the allow file at path into a (empty on entry); a is left empty on error. */
static int curve_allow_load(curve_allow_t *a, const char *path) {
    char *text;
    size_t len, n = 0;
    int rc = curve_slurp(path, CURVE_ALLOW_MAX, &text, &len, &a->st);
    if (rc) return rc;
    snprintf(a->path, sizeof a->path, "%s", path);
    curve_lines_t it = {text, text + len, 0};
    const char *s = NULL;
    int cap = 0;
    while (curve_next_line(&it, &s, &n)) {
        if (a->n == cap) {
            cap = cap ? 2 * cap : 64;
            curve_peer_t *grown = realloc(a->peer, (size_t)cap * sizeof *grown);
            if (!grown) {
                rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", path);
                goto out;
            }
            a->peer = grown;
        }
        curve_peer_t *p = &a->peer[a->n];
        if (curve_parse_allow_line(s, n, p)) {
            rc = mimic_err(MIMIC_EFORMAT,
                           "%s: line %d: expected 'server <z85>' or 'worker <z85>' (40 Z85 "
                           "characters)",
                           path, it.line);
            goto out;
        }
        if (curve_allow_find(a, p->key)) {
            rc = mimic_err(MIMIC_EFORMAT, "%s: line %d: key %s is listed twice", path, it.line,
                           p->z85);
            goto out;
        }
        a->n++;
    }
    if (a->n == 0) rc = mimic_err(MIMIC_EFORMAT, "%s: no keys (mimic-keys writes S + W)", path);
out:
    free(text);
    if (rc) curve_allow_free(a);
    return rc;
}

/* dir/name, or MIMIC_EINVAL when it does not fit. */
static int curve_path(char *out, size_t cap, const char *dir, const char *name) {
    if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap)
        return mimic_err(MIMIC_EINVAL, "%s/%s: path too long", dir, name);
    return 0;
}

/* ---- choosing this process's key ------------------------------------------------------ */

static const char *curve_role_name(int role) {
    return role == CURVE_ROLE_SCHEDULER ? "scheduler"
           : role == PROTO_ROLE_SERVER  ? "server"
           : role == PROTO_ROLE_WORKER  ? "worker"
                                        : "unknown role";
}

/* The MPI world rank from the launcher's environment: 0 and *rank, 1 when none is set,
 * MIMIC_EINVAL when the variable is not a rank. */
static int curve_env_rank(int *rank) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (!v) continue;
        char *end;
        errno = 0;
        long r = strtol(v, &end, 10);
        if (end == v || *end || errno || r < 0 || r > INT_MAX)
            return mimic_err(MIMIC_EINVAL, "%s: '%s' is not an MPI rank", vars[i], v);
        *rank = (int)r;
        return 0;
    }
    return 1;
}

/* The key file this process uses (curve.h): cluster.key, else by MPI rank. */
static int curve_key_path(char *out, size_t cap, const curve_opts_t *o) {
    if (o->key_file && *o->key_file) {
        if (snprintf(out, cap, "%s", o->key_file) >= (int)cap)
            return mimic_err(MIMIC_EINVAL, "cluster.key: path too long");
        return 0;
    }
    int rank = -1, rc = curve_env_rank(&rank);
    if (rc < 0) return rc;
    if (rc == 1)
        return mimic_err(MIMIC_EINVAL,
                         "cluster.key: not set, and no MPI rank to pick a key from %s", o->dir);
    if (o->nservers < 1)
        return mimic_err(MIMIC_EINVAL,
                         "cluster.servers: %d; picking a key by MPI rank needs the server count",
                         o->nservers);
    char name[64];
    int role;
    if (rank == 0) {
        role = CURVE_ROLE_SCHEDULER;
        snprintf(name, sizeof name, "scheduler.key");
    } else if (rank <= o->nservers) {
        role = PROTO_ROLE_SERVER;
        snprintf(name, sizeof name, "server-%d.key", rank - 1);
    } else {
        role = PROTO_ROLE_WORKER;
        snprintf(name, sizeof name, "worker-%d.key", rank - 1 - o->nservers);
    }
    if (role != o->role)
        return mimic_err(MIMIC_EINVAL,
                         "cluster.key: not set, and MPI rank %d is a %s in deploy/cluster.sh's "
                         "order (rank 0 scheduler, then %d servers, then workers) but this "
                         "process is a %s; set cluster.key or fix the launch order",
                         rank, curve_role_name(role), o->nservers, curve_role_name(o->role));
    return curve_path(out, cap, o->dir, name);
}

/* ---- open / close ---------------------------------------------------------------------- */

static void curve_free(curve_t *c) {
    curve_allow_free(&c->allow);
    explicit_bzero(c, sizeof *c); /* the secret key */
    free(c);
}

int curve_open(curve_t **out, const curve_opts_t *o) {
    MIMIC_CHECK(out && o);
    *out = NULL;
    if (!o->on) return 0;
    if (!o->dir || !*o->dir)
        return mimic_err(MIMIC_EINVAL, "cluster.keys: not set (cluster.curve=on needs the "
                                       "directory mimic-keys writes)");
    if (o->role != CURVE_ROLE_SCHEDULER && o->role != PROTO_ROLE_SERVER &&
        o->role != PROTO_ROLE_WORKER)
        return mimic_err(MIMIC_EINVAL, "curve: role %d is not scheduler, server or worker",
                         o->role);
    if (!zmq_has("curve"))
        return mimic_err(MIMIC_EINVAL, "cluster.curve: on, but this libzmq has no CURVE");
    curve_t *c = calloc(1, sizeof *c);
    if (!c) return mimic_err(MIMIC_ENOMEM, "curve: out of memory");
    c->role = o->role;
    snprintf(c->who, sizeof c->who, "%s", o->who && *o->who ? o->who : curve_role_name(o->role));
    char path[PATH_MAX];
    int rc;
    if (snprintf(c->dir, sizeof c->dir, "%s", o->dir) >= (int)sizeof c->dir) {
        rc = mimic_err(MIMIC_EINVAL, "cluster.keys: path too long");
        goto fail;
    }
    if ((rc = curve_key_path(path, sizeof path, o))) goto fail;
    if ((rc = curve_read_keyfile(path, c->who, c->pub, c->sec))) goto fail;
    if ((rc = curve_path(path, sizeof path, c->dir, "scheduler.pub"))) goto fail;
    if ((rc = curve_read_pub(path, c->sched_pub))) goto fail;
    if (c->role == CURVE_ROLE_SCHEDULER && strcmp(c->pub, c->sched_pub) != 0) {
        rc = mimic_err(MIMIC_EFORMAT,
                       "%s: not the public key of this scheduler's key file; "
                       "re-run mimic-keys",
                       path);
        goto fail;
    }
    if (c->role != PROTO_ROLE_WORKER) {
        if ((rc = curve_path(path, sizeof path, c->dir, "allow"))) goto fail;
        if ((rc = curve_allow_load(&c->allow, path))) goto fail;
    }
    *out = c;
    return 0;
fail:
    curve_free(c);
    return rc;
}

void curve_close(curve_t **cp) {
    if (!cp || !*cp) return;
    curve_t *c = *cp;
    if (c->running) {
        atomic_store(&c->stop, 1);
        pthread_join(c->thread, NULL); /* the thread closes its sockets on the way out */
    }
    curve_free(c);
    *cp = NULL;
}

const char *curve_public(const curve_t *c) {
    return c ? c->pub : "";
}

int curve_user_role(const char *user) {
    curve_peer_t p;
    if (!user) return -1;
    return curve_parse_allow_line(user, strlen(user), &p) == 0 ? p.role : -1;
}

void curve_stats(const curve_t *c, curve_stats_t *out) {
    MIMIC_CHECK(out);
    memset(out, 0, sizeof *out);
    if (!c) return;
    out->zap_refused = atomic_load(&((curve_t *)c)->zap_refused);
    out->handshake_failed = atomic_load(&((curve_t *)c)->handshake_failed);
}

/* ---- the ZAP handler thread (RFC 27) ------------------------------------------------------ */

/* Counts a refusal; returns how many went unlogged since the last logged one, or -1 when
 * this one is not to be logged either (the first CURVE_LOG_FIRST, then one in
 * CURVE_LOG_EVERY). */
static long curve_limit_pass(curve_limit_t *l) {
    l->seen++;
    if (l->seen > CURVE_LOG_FIRST && l->seen % CURVE_LOG_EVERY) return -1;
    long skipped = (long)(l->seen - l->logged - 1);
    l->logged = l->seen;
    return skipped;
}

/* " (N more not logged)" or "". */
static const char *curve_skipped_text(char *buf, size_t cap, long skipped) {
    if (skipped <= 0) return "";
    snprintf(buf, cap, " (%ld more like it not logged)", skipped);
    return buf;
}

static int curve_frame_is(zmq_msg_t *m, const char *s) {
    size_t n = strlen(s);
    return zmq_msg_size(m) == n && memcmp(zmq_msg_data(m), s, n) == 0;
}

/* The allow entry of key; an unknown key first re-reads allow if it was rewritten since
 * it was loaded (a cluster grows by re-running mimic-keys). */
static const curve_peer_t *curve_admit(curve_t *c, const uint8_t *key) {
    const curve_peer_t *p = curve_allow_find(&c->allow, key);
    struct stat st;
    if (p || stat(c->allow.path, &st) != 0) return p;
    const struct stat *old = &c->allow.st;
    if (st.st_ino == old->st_ino && st.st_size == old->st_size &&
        st.st_mtim.tv_sec == old->st_mtim.tv_sec && st.st_mtim.tv_nsec == old->st_mtim.tv_nsec)
        return NULL;
    curve_allow_t fresh = {0};
    if (curve_allow_load(&fresh, c->allow.path) != 0) {
        mimic_warn("%s: kept the previous allow-list (%d keys): %s", c->who, c->allow.n,
                   mimic_last_error());
        c->allow.st = st; /* not re-read at every handshake until it changes again */
        return NULL;
    }
    curve_allow_free(&c->allow);
    c->allow = fresh;
    mimic_log("%s: reloaded %s: %d keys", c->who, c->allow.path, c->allow.n);
    return curve_allow_find(&c->allow, key);
}

#define CURVE_ZAP_FRAMES 7 /* version, id, domain, address, identity, mechanism, key */

/* Receives one ZAP request and answers it. */
static void curve_zap_answer(curve_t *c) {
    zmq_msg_t f[CURVE_ZAP_FRAMES + 1]; /* the last one takes any extra frames */
    int n = 0, more = 1, extra = 0;
    while (more) {
        zmq_msg_t *m = &f[n < CURVE_ZAP_FRAMES ? n : CURVE_ZAP_FRAMES];
        zmq_msg_init(m);
        int got = zmq_msg_recv(m, c->zap, 0);
        more = got >= 0 && zmq_msg_more(m);
        if (got >= 0 && n < CURVE_ZAP_FRAMES) {
            n++;
            continue;
        }
        zmq_msg_close(m);
        extra = 1;
        if (got < 0) { /* ETERM: no reply is possible; the loop sees it next */
            for (int i = 0; i < n; i++)
                zmq_msg_close(&f[i]);
            return;
        }
    }
    char user[CURVE_USER_MAX] = "", addr[64] = "?", z85[CURVE_Z85] = "";
    const char *status = "400", *text = "not a CURVE client of " CURVE_DOMAIN;
    if (n >= 4) {
        size_t an = zmq_msg_size(&f[3]) < sizeof addr - 1 ? zmq_msg_size(&f[3]) : sizeof addr - 1;
        memcpy(addr, zmq_msg_data(&f[3]), an);
        addr[an] = 0;
    }
    if (n == CURVE_ZAP_FRAMES && !extra && curve_frame_is(&f[0], "1.0") &&
        curve_frame_is(&f[2], CURVE_DOMAIN) && curve_frame_is(&f[5], "CURVE") &&
        zmq_msg_size(&f[6]) == CURVE_KEY_BYTES) {
        const uint8_t *key = zmq_msg_data(&f[6]);
        const curve_peer_t *p = curve_admit(c, key);
        if (p) {
            status = "200", text = "OK";
            snprintf(user, sizeof user, "%s %s", curve_role_name(p->role), p->z85);
        } else {
            text = "key not allowed";
            zmq_z85_encode(z85, key, CURVE_KEY_BYTES);
        }
    }
    if (*status != '2') {
        atomic_fetch_add(&c->zap_refused, 1);
        char buf[64];
        long skipped = curve_limit_pass(&c->zap_limit);
        if (skipped >= 0 && *z85)
            mimic_warn("%s: refused a CURVE peer at %s: key %s is not in %s%s", c->who, addr, z85,
                       c->allow.path, curve_skipped_text(buf, sizeof buf, skipped));
        else if (skipped >= 0)
            mimic_warn("%s: refused a ZAP request from %s: %s%s", c->who, addr, text,
                       curve_skipped_text(buf, sizeof buf, skipped));
    }
    const void *id = n >= 2 ? zmq_msg_data(&f[1]) : "";
    size_t idn = n >= 2 ? zmq_msg_size(&f[1]) : 0;
    zmq_send(c->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(c->zap, id, idn, ZMQ_SNDMORE);
    zmq_send(c->zap, status, 3, ZMQ_SNDMORE);
    zmq_send(c->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(c->zap, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(c->zap, "", 0, 0); /* metadata: none */
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
}

/* Why a handshake failed, from a monitor event. */
static void curve_handshake_reason(char *out, size_t cap, uint16_t event, uint32_t value) {
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        snprintf(out, cap, "%s", zmq_strerror((int)value));
    else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        snprintf(out, cap, "the peer does not use CURVE");
    else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
        snprintf(out, cap, "cryptographic error: the peer has a wrong server key");
    else
        snprintf(out, cap, "protocol error 0x%x", (unsigned)value);
}

/* One event of the router's monitor: [event u16, value u32] + [endpoint]. */
static void curve_monitor_event(curve_t *c) {
    uint16_t event = 0;
    uint32_t value = 0;
    int part = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->mon, 0) < 0) {
            zmq_msg_close(&m);
            return;
        }
        if (part++ == 0 && zmq_msg_size(&m) >= 6) {
            memcpy(&event, zmq_msg_data(&m), 2);
            memcpy(&value, (const char *)zmq_msg_data(&m) + 2, 4);
        }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    if (!(event & (ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)))
        return;
    atomic_fetch_add(&c->handshake_failed, 1);
    long skipped = curve_limit_pass(&c->handshake_limit);
    if (skipped < 0) return;
    char reason[96], buf[64];
    curve_handshake_reason(reason, sizeof reason, event, value);
    mimic_warn("%s: refused a peer: CURVE handshake failed (%s)%s", c->who, reason,
               curve_skipped_text(buf, sizeof buf, skipped));
}

static void *curve_zap_main(void *arg) {
    curve_t *c = arg;
    zmq_pollitem_t items[2] = {{c->zap, 0, ZMQ_POLLIN, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
    while (!atomic_load(&c->stop)) {
        if (zmq_poll(items, 2, CURVE_POLL_MS) < 0) {
            if (zmq_errno() == EINTR) continue;
            break; /* ETERM: the context is ending; closing lets zmq_ctx_term finish */
        }
        if (items[0].revents & ZMQ_POLLIN) curve_zap_answer(c);
        if (items[1].revents & ZMQ_POLLIN) curve_monitor_event(c);
    }
    zmq_close(c->zap); /* LINGER 0: an unanswered peer is refused by its timeout */
    zmq_close(c->mon);
    c->zap = c->mon = NULL;
    return NULL;
}

/* Binds the ZAP endpoint and the router's monitor here, in the caller's thread, so both
 * exist before the router binds; the thread takes the sockets over (pthread_create is
 * the full memory barrier ZeroMQ asks for when a socket changes threads). */
static int curve_start(curve_t *c, void *zctx, void *router) {
    char mon_addr[64];
    const char *step = "creating the ZAP socket";
    int zero = 0, monitoring = 0, e;
    snprintf(mon_addr, sizeof mon_addr, "inproc://mimic-curve-monitor-%p", (void *)c);
    if (!(c->zap = zmq_socket(zctx, ZMQ_REP))) goto fail;
    zmq_setsockopt(c->zap, ZMQ_LINGER, &zero, sizeof zero);
    step = "binding " CURVE_ZAP_ENDPOINT " (one ZAP handler per context)";
    if (zmq_bind(c->zap, CURVE_ZAP_ENDPOINT) != 0) goto fail;
    step = "monitoring the ROUTER";
    /* AUTH failures are the 400s the ZAP handler has just logged with key and address */
    if (zmq_socket_monitor(router, mon_addr,
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0)
        goto fail;
    monitoring = 1;
    if (!(c->mon = zmq_socket(zctx, ZMQ_PAIR))) goto fail;
    zmq_setsockopt(c->mon, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_connect(c->mon, mon_addr) != 0) goto fail;
    c->zctx = zctx;
    step = "starting the ZAP thread";
    if ((e = pthread_create(&c->thread, NULL, curve_zap_main, c)) != 0) {
        errno = e;
        goto fail;
    }
    c->running = 1;
    return 0;
fail:
    e = errno;
    if (monitoring) zmq_socket_monitor(router, NULL, 0);
    if (c->mon) zmq_close(c->mon);
    if (c->zap) zmq_close(c->zap);
    c->zap = c->mon = NULL;
    return mimic_err(MIMIC_EIO, "%s: CURVE: %s: %s", c->who, step, zmq_strerror(e));
}

int curve_serve(curve_t *c, void *zctx, void *router) {
    if (!c) return 0;
    MIMIC_CHECK(zctx && router);
    int one = 1;
    if (zmq_setsockopt(router, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(router, ZMQ_CURVE_SECRETKEY, c->sec, CURVE_Z85_LEN) != 0 ||
        zmq_setsockopt(router, ZMQ_ZAP_DOMAIN, CURVE_DOMAIN, strlen(CURVE_DOMAIN)) != 0)
        return mimic_err(MIMIC_EIO, "%s: cannot make the ROUTER a CURVE server: %s", c->who,
                         zmq_strerror(zmq_errno()));
    /* Without a ZAP handler libzmq 4.3 lets every CURVE client in (RFC 26's "Stonehouse"
     * fallback); enforcing the domain refuses them instead. A libzmq without the draft
     * option refuses it (EINVAL): the handler, bound below before zmq_bind, then is the
     * only guard, and it lives until curve_close. */
    if (zmq_setsockopt(router, ZMQ_ZAP_ENFORCE_DOMAIN, &one, sizeof one) != 0 &&
        zmq_errno() != EINVAL)
        return mimic_err(MIMIC_EIO, "%s: cannot enforce the ZAP domain: %s", c->who,
                         zmq_strerror(zmq_errno()));
    if (!c->running) return curve_start(c, zctx, router);
    if (zctx != c->zctx)
        return mimic_err(MIMIC_EIO, "%s: CURVE: the ZAP handler runs on another ZeroMQ context",
                         c->who);
    return 0; /* the handler answers for this router too; only the first one is monitored */
}

int curve_client(const curve_t *c, void *sock, const char *server_key) {
    if (!c) return 0;
    MIMIC_CHECK(sock);
    const char *sk = server_key ? server_key : c->sched_pub;
    if (!curve_z85_ok(sk, NULL))
        return mimic_err(MIMIC_EFORMAT, "%s: server key '%.48s' is not 40 Z85 characters", c->who,
                         sk);
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, sk, CURVE_Z85_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, c->pub, CURVE_Z85_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, c->sec, CURVE_Z85_LEN) != 0)
        return mimic_err(MIMIC_EIO, "%s: cannot make the socket a CURVE client: %s", c->who,
                         zmq_strerror(zmq_errno()));
    return 0;
}

/* ---- mimic-keys ------------------------------------------------------------------------- */

/* Creates dir 0700 (its missing parents 0755); an existing dir is kept as it is. */
static int curve_keygen_dir(const char *dir) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return mimic_err(MIMIC_EIO, "%s: not a directory", dir);
        return 0;
    }
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        int rc = mimic_mkdir_p(parent);
        if (rc) return rc;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return mimic_err(MIMIC_EIO, "%s: cannot create directory (%s)", dir, strerror(errno));
    return 0;
}

/* dir/name's public key into pub: read from the file when it exists (kept as it is), else
 * from a new key pair written to it with mode 0600. */
static int curve_keygen_pair(const char *dir, const char *name, char pub[CURVE_Z85]) {
    char path[PATH_MAX], sec[CURVE_Z85], text[128];
    struct stat st;
    int rc = curve_path(path, sizeof path, dir, name);
    if (rc) return rc;
    if (lstat(path, &st) == 0) {
        rc = curve_read_keyfile(path, "mimic-keys", pub, sec);
    } else if (errno != ENOENT) {
        rc = mimic_err(MIMIC_EIO, "%s: cannot stat (%s)", path, strerror(errno));
    } else if (zmq_curve_keypair(pub, sec) != 0) {
        rc = mimic_err(MIMIC_EIO, "%s: zmq_curve_keypair: %s", path, zmq_strerror(zmq_errno()));
    } else {
        int n = snprintf(text, sizeof text, "public %s\nsecret %s\n", pub, sec);
        rc = mimic_write_atomic(path, text, (size_t)n, 0600);
    }
    explicit_bzero(sec, sizeof sec);
    explicit_bzero(text, sizeof text);
    return rc;
}

int curve_keygen(const char *dir, int servers, int workers) {
    if (!dir || !*dir) return mimic_err(MIMIC_EINVAL, "mimic-keys: no key directory given");
    if (servers < 1)
        return mimic_err(MIMIC_EINVAL, "--servers: %d; a cluster has at least one", servers);
    if (workers < 1)
        return mimic_err(MIMIC_EINVAL, "--workers: %d; a cluster has at least one", workers);
    if (!zmq_has("curve")) return mimic_err(MIMIC_EINVAL, "mimic-keys: this libzmq has no CURVE");
    const size_t line = 7 + CURVE_Z85_LEN + 1; /* "worker <z85>\n" */
    char pub[CURVE_Z85], name[64], path[PATH_MAX];
    char *allow = malloc(((size_t)servers + (size_t)workers) * line + 1);
    if (!allow) return mimic_err(MIMIC_ENOMEM, "mimic-keys: out of memory");
    size_t len = 0;
    int rc = curve_keygen_dir(dir);
    if (!rc) rc = curve_keygen_pair(dir, "scheduler.key", pub);
    if (!rc) {
        char text[CURVE_Z85 + 1];
        int n = snprintf(text, sizeof text, "%s\n", pub);
        if (!(rc = curve_path(path, sizeof path, dir, "scheduler.pub")))
            rc = mimic_write_atomic(path, text, (size_t)n, 0644);
    }
    for (int i = 0; !rc && i < servers + workers; i++) {
        int server = i < servers;
        snprintf(name, sizeof name, "%s-%d.key", server ? "server" : "worker",
                 server ? i : i - servers);
        if (!(rc = curve_keygen_pair(dir, name, pub)))
            len += (size_t)sprintf(allow + len, "%s %s\n", server ? "server" : "worker", pub);
    }
    if (!rc && !(rc = curve_path(path, sizeof path, dir, "allow")))
        rc = mimic_write_atomic(path, allow, len, 0644);
    free(allow);
    return rc;
}
