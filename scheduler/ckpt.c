#define _GNU_SOURCE
#include "ckpt.h"

#include "common.h"
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    long step;
    int answered, failed;
    unsigned char *done; /* per server rank */
} ckpt_req_t;

struct ckpt {
    char *dir;
    long every, end;
    long planned;  /* last step taken from the plan */
    int plan_over; /* the end was taken */
    int nservers;
    ckpt_req_t win[CKPT_WINDOW];
    int nwin;
    long latest;
    long completed; /* newest step every server answered, -1 if none */
};

int ckpt_new(ckpt_t **out, const char *dir, long every, long resume, long end, int nservers) {
    *out = NULL;
    ckpt_t *c = calloc(1, sizeof *c);
    if (!c || !(c->dir = strdup(dir))) {
        free(c);
        return mimic_err(MIMIC_ENOMEM, "out of memory for the checkpoint plan");
    }
    c->every = every;
    c->end = end;
    c->planned = resume;
    c->nservers = nservers;
    c->latest = -1;
    c->completed = -1;
    *out = c;
    return 0;
}

void ckpt_destroy(ckpt_t **pc) {
    if (!pc || !*pc) return;
    for (int i = 0; i < (*pc)->nwin; i++)
        free((*pc)->win[i].done);
    free((*pc)->dir);
    free(*pc);
    *pc = NULL;
}

const char *ckpt_dir(const ckpt_t *c) {
    return c->dir;
}

/* The plan's next step after c->planned, without taking it; -1 when over. */
static long plan_peek(const ckpt_t *c) {
    if (c->plan_over) return -1;
    long cand = c->every > 0 ? (c->planned / c->every + 1) * c->every : LONG_MAX;
    return cand >= c->end || cand <= c->planned ? c->end : cand;
}

int ckpt_next_request(ckpt_t *c, long *step) {
    long s = plan_peek(c);
    if (s < 0 || c->nwin == CKPT_WINDOW) return 0;
    unsigned char *done = calloc((size_t)c->nservers + 1, 1);
    if (!done) {
        mimic_warn("out of memory planning checkpoint %ld; retrying later", s);
        return 0;
    }
    c->plan_over = s == c->end;
    c->planned = s;
    c->win[c->nwin++] = (ckpt_req_t){.step = s, .done = done};
    *step = s;
    return 1;
}

int ckpt_server_done(ckpt_t *c, long step, int rank, int status, int *complete, int *failed,
                     char *why, size_t whylen) {
    *complete = *failed = 0;
    int i = 0;
    while (i < c->nwin && c->win[i].step != step)
        i++;
    if (rank < 0 || rank >= c->nservers) {
        snprintf(why, whylen, "no server rank %d", rank);
        return MIMIC_EINVAL;
    }
    if (i == c->nwin) {
        if (step <= c->completed) return 1; /* complete already: a resent CKPT's answer */
        snprintf(why, whylen, "no checkpoint of step %ld was requested", step);
        return MIMIC_EINVAL;
    }
    ckpt_req_t *r = &c->win[i];
    if (r->done[rank]) return 1;
    r->done[rank] = 1;
    r->answered++;
    r->failed += status < 0;
    if (r->answered < c->nservers) return 0;
    *complete = 1;
    *failed = r->failed;
    if (step > c->completed) c->completed = step;
    free(r->done);
    memmove(&c->win[i], &c->win[i + 1], (size_t)(c->nwin - i - 1) * sizeof c->win[0]);
    c->nwin--;
    return 0;
}

int ckpt_overdue(const ckpt_t *c, int rank, long version, long *steps, int cap) {
    int n = 0;
    for (int i = 0; i < c->nwin && n < cap; i++)
        if (c->win[i].step <= version && rank >= 0 && rank < c->nservers &&
            !c->win[i].done[rank])
            steps[n++] = c->win[i].step;
    return n;
}

void ckpt_stop_at(ckpt_t *c, long step) {
    int keep = 0, have = 0;
    for (int i = 0; i < c->nwin; i++) {
        if (c->win[i].step > step) {
            free(c->win[i].done);
            continue;
        }
        have |= c->win[i].step == step;
        c->win[keep++] = c->win[i];
    }
    c->nwin = keep;
    c->end = step;
    c->plan_over = have;
    if (!have && c->planned >= step) c->planned = step - 1;
}

long ckpt_min_pending(const ckpt_t *c) {
    long m = plan_peek(c);
    for (int i = 0; i < c->nwin; i++)
        if (m < 0 || c->win[i].step < m) m = c->win[i].step;
    return m;
}

long ckpt_latest(const ckpt_t *c) {
    return c->latest;
}

void ckpt_set_latest(ckpt_t *c, long step) {
    c->latest = step;
}

int ckpt_write_atomic(const char *path, const char *data, size_t len) {
    return mimic_write_atomic(path, data, len, 0644);
}

int ckpt_commit(ckpt_t *c, long step, const workq_t *q) {
    char path[PATH_MAX], line[32];
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return mimic_err(MIMIC_ENOMEM, "out of memory for the queue snapshot");
    int rc = workq_snapshot(q, (uint64_t)step, f);
    if (fclose(f) != 0 && !rc) rc = mimic_err(MIMIC_ENOMEM, "queue snapshot: out of memory");
    if (rc) goto out;
    snprintf(path, sizeof path, "%s/scheduler-step-%ld.json", c->dir, step);
    if ((rc = ckpt_write_atomic(path, text, len))) goto out;
    if (step > c->latest) {
        int n = snprintf(line, sizeof line, "%ld\n", step);
        snprintf(path, sizeof path, "%s/latest", c->dir);
        if ((rc = ckpt_write_atomic(path, line, (size_t)n))) goto out;
        c->latest = step;
    }
out:
    free(text);
    return rc;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = cap ? 2 * cap : 8192;
            char *b = realloc(buf, cap + 1);
            if (!b) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = b;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

int ckpt_read_latest(const char *dir, long *step) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/latest", dir);
    if (access(path, F_OK) != 0) return 1;
    size_t len = 0;
    char *text = slurp(path, &len);
    if (!text) return mimic_err(MIMIC_EIO, "%s: cannot read", path);
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    while (*end == '\n' || *end == '\r' || *end == ' ')
        end++;
    int ok = end != text && *end == 0 && !errno && v >= 0;
    free(text);
    if (!ok) return mimic_err(MIMIC_EFORMAT, "%s: expected a step number and a newline", path);
    *step = v;
    return 0;
}

int ckpt_load_queue(const char *dir, long step, workq_t *q) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/scheduler-step-%ld.json", dir, step);
    size_t len = 0;
    char *text = slurp(path, &len);
    if (!text) return mimic_err(MIMIC_EIO, "%s: cannot read the scheduler's queue snapshot", path);
    int rc = workq_restore(q, text, len, path);
    free(text);
    return rc;
}

static int cmp_desc(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x < y) - (x > y);
}

int ckpt_steps_on_disk(const char *dir, long *steps, int cap) {
    DIR *d = opendir(dir);
    if (!d) return mimic_err(MIMIC_EIO, "%s: cannot list (%s)", dir, strerror(errno));
    long *all = NULL;
    size_t n = 0, room = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long step;
        int end = 0;
        if (sscanf(e->d_name, "scheduler-step-%ld.json%n", &step, &end) != 1 || step < 0 ||
            e->d_name[end] != 0 || end == 0)
            continue;
        if (n == room) {
            long *g = realloc(all, (room = room ? 2 * room : 16) * sizeof *all);
            if (!g) {
                free(all);
                closedir(d);
                return mimic_err(MIMIC_ENOMEM, "%s: out of memory listing checkpoints", dir);
            }
            all = g;
        }
        all[n++] = step;
    }
    closedir(d);
    if (n) qsort(all, n, sizeof *all, cmp_desc);
    int k = (int)(n < (size_t)cap ? n : (size_t)cap);
    if (k) memcpy(steps, all, (size_t)k * sizeof *steps);
    free(all);
    return k;
}

int ckpt_verify(const char *dir, long step, int nservers, char *why, size_t whylen) {
    char path[PATH_MAX];
    for (int r = 0; r < nservers; r++) {
        snprintf(path, sizeof path, "%s/server-%d-step-%ld.safetensors", dir, r, step);
        st_file_t *f = NULL;
        int rc = st_open(&f, path); /* reads it whole and checks every tensor's checksum */
        st_close(&f);
        if (rc) {
            snprintf(why, whylen, "%s", mimic_last_error());
            return rc;
        }
    }
    snprintf(path, sizeof path, "%s/scheduler-step-%ld.json", dir, step);
    if (access(path, R_OK) != 0) {
        snprintf(why, whylen, "%s: missing", path);
        return MIMIC_EIO;
    }
    return 0;
}

void ckpt_remove_step(const char *dir, long step, int nservers) {
    char path[PATH_MAX];
    /* the queue snapshot first: without it the step is not a candidate any more */
    snprintf(path, sizeof path, "%s/scheduler-step-%ld.json", dir, step);
    unlink(path);
    for (int r = 0; r < nservers; r++) {
        snprintf(path, sizeof path, "%s/server-%d-step-%ld.safetensors", dir, r, step);
        unlink(path);
    }
}
