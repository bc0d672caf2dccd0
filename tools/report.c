/* mimic-report — the profiling report of a finished run directory (docs/operations.md,
 * "Profiling report").
 *
 *   mimic-report RUN_DIR [--out DIR] [--lenient]
 *
 * Reads what a run leaves behind: worker-<rank>.jsonl (one "step" record per step of a
 * distributed worker: phase seconds, wall_s, push/pull bytes), scheduler.jsonl
 * ("progress" records: step, loss, images/s) or, for a standalone run, metrics.jsonl.
 * Prints where the time goes per worker and per phase, the slowest worker against the
 * median, and the push/pull bandwidth; writes loss.svg, images_per_s.svg and
 * phases.svg (standalone SVG written here, no plotting library) into DIR (default
 * RUN_DIR/report). A missing directory or a malformed line ends the report with one
 * line naming the file and the line (--lenient skips bad lines with a warning each
 * instead: a run killed mid-write leaves a truncated last line). */
#include "json.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* the phases of a distributed step, in the order of the table and the bars */
enum { PH_DATA, PH_FWD, PH_BWD, PH_PUSH, PH_PULL, PH_OTHER, NPH };
static const char *const ph_name[NPH] = {"data", "forward", "backward", "push", "pull/wait",
                                         "other"};
static const char *const ph_color[NPH] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2",
                                          "#59a14f", "#bab0ac"};

/* A worker slower than this many times the median worker's step time is called a
 * straggler (ours: the scheduler's default cluster.straggler_k is 2; the report is
 * read by a person, who wants to hear of 1.5x too). */
#define STRAGGLER_RATIO 1.5

typedef struct {
    int rank;
    long steps, samples;
    double ph[NPH];  /* seconds summed over steps */
    double wall;     /* seconds summed over steps */
    double push_bytes, pull_bytes;
    int bsp;         /* push_pull_s records: push and pull are one request */
} worker_t;

typedef struct {
    double x, loss, ips; /* step, loss, images/s (NAN: not in the record) */
} point_t;

typedef struct {
    const char *dir, *out;
    int lenient;
    worker_t *w;
    int nw;
    point_t *pt;
    size_t npt, cappt;
    int skipped;
    int straggler; /* index into w of the worker print_table named the straggler, or -1 */
} report_t;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("mimic-report: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* A malformed line: fatal, or (--lenient) a warning and the line is skipped. */
static int bad_line(report_t *r, const char *path, long line, const char *why) {
    if (!r->lenient) die("%s:%ld: %s", path, line, why);
    fprintf(stderr, "mimic-report: warning: %s:%ld: %s (line skipped)\n", path, line, why);
    r->skipped++;
    return -1;
}

/* Number field `key`: 0 and *v; 1 if absent or null (JSON's NaN); -1 if not a number. */
static int num(const json_value_t *o, const char *key, double *v) {
    const json_value_t *x = json_get(o, key);
    if (!x || x->type == JSON_NULL) return 1;
    if (x->type != JSON_NUMBER) return -1;
    *v = x->num;
    return 0;
}

typedef int (*line_fn)(report_t *r, const json_value_t *rec, const char *path, long line,
                       void *ctx);

/* Calls fn on every line of path parsed as one JSON object. 0, or -1 if path is absent. */
static int each_line(report_t *r, const char *path, line_fn fn, void *ctx) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return -1;
        die("%s: cannot open: %s", path, strerror(errno));
    }
    char *buf = NULL;
    size_t cap = 0;
    ssize_t len;
    long line = 0;
    while ((len = getline(&buf, &cap, f)) >= 0) {
        line++;
        int complete = len > 0 && buf[len - 1] == '\n';
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
            buf[--len] = 0;
        if (len == 0) continue;
        json_value_t *rec = NULL;
        char err[200], why[300];
        if (json_parse(&rec, buf, (size_t)len, err, sizeof err) != 0) {
            snprintf(why, sizeof why, "%s JSON: %s", complete ? "malformed" : "truncated (no newline)",
                     err);
            bad_line(r, path, line, why);
            continue;
        }
        if (rec->type != JSON_OBJECT)
            bad_line(r, path, line, "not a JSON object");
        else
            fn(r, rec, path, line, ctx);
        json_destroy(&rec);
    }
    if (ferror(f)) die("%s: read failed: %s", path, strerror(errno));
    free(buf);
    fclose(f);
    return 0;
}

static int is_event(const json_value_t *rec, const char *ev) {
    const json_value_t *e = json_get(rec, "event");
    return e && e->type == JSON_STRING && strcmp(e->str, ev) == 0;
}

static int worker_line(report_t *r, const json_value_t *rec, const char *path, long line,
                       void *ctx) {
    worker_t *w = ctx;
    if (!is_event(rec, "step")) return 0;
    static const struct {
        const char *key;
        int ph; /* -1: not a phase */
        int required;
    } fields[] = {{"data_s", PH_DATA, 1},      {"forward_s", PH_FWD, 1},
                  {"backward_s", PH_BWD, 1},   {"push_s", PH_PUSH, 0},
                  {"push_pull_s", PH_PUSH, 0}, {"pull_wait_s", PH_PULL, 0},
                  {"chunk_done_s", PH_OTHER, 0}, {"queue_s", PH_OTHER, 0}};
    double v[8], sum = 0, wall = 0, samples = 0, pb = 0, lb = 0;
    char why[200];
    for (size_t k = 0; k < sizeof fields / sizeof *fields; k++) {
        int rc = num(rec, fields[k].key, &v[k]);
        if (rc < 0 || (rc > 0 && fields[k].required) || (rc == 0 && (v[k] < 0 || !isfinite(v[k])))) {
            snprintf(why, sizeof why, "step record: \"%s\" %s", fields[k].key,
                     rc > 0 ? "is missing" : "is not a non-negative number");
            return bad_line(r, path, line, why);
        }
        if (rc > 0) v[k] = 0;
    }
    if (num(rec, "samples", &samples) < 0 || num(rec, "wall_s", &wall) < 0 ||
        num(rec, "push_bytes", &pb) < 0 || num(rec, "pull_bytes", &lb) < 0 || samples < 0 ||
        wall < 0 || pb < 0 || lb < 0)
        return bad_line(r, path, line,
                        "step record: samples, wall_s, push_bytes or pull_bytes is not a "
                        "non-negative number");
    double ph[NPH] = {0};
    for (size_t k = 0; k < sizeof fields / sizeof *fields; k++) {
        ph[fields[k].ph] += v[k];
        sum += v[k];
    }
    if (json_get(rec, "push_pull_s")) w->bsp = 1;
    /* wall_s (since the step before) holds what no phase names: chunk waits, scheduler
     * calls, a slowed worker's sleep; older records without it count the phases only */
    if (wall > sum) ph[PH_OTHER] += wall - sum;
    for (int p = 0; p < NPH; p++)
        w->ph[p] += ph[p];
    w->wall += wall > sum ? wall : sum;
    w->steps++;
    w->samples += (long)samples;
    w->push_bytes += pb;
    w->pull_bytes += lb;
    return 0;
}

static void add_point(report_t *r, double x, double loss, double ips) {
    if (r->npt == r->cappt) {
        r->cappt = r->cappt ? 2 * r->cappt : 256;
        r->pt = realloc(r->pt, r->cappt * sizeof *r->pt);
        if (!r->pt) die("out of memory");
    }
    r->pt[r->npt++] = (point_t){x, loss, ips};
}

/* scheduler.jsonl "progress" (step, loss, img_per_s) or metrics.jsonl "step" (step,
 * loss, images_per_s). */
static int progress_line(report_t *r, const json_value_t *rec, const char *path, long line,
                         void *ctx) {
    const char *ev = ctx, *ipskey = strcmp(ev, "progress") == 0 ? "img_per_s" : "images_per_s";
    if (!is_event(rec, ev)) return 0;
    double step = NAN, loss = NAN, ips = NAN;
    if (num(rec, "step", &step) != 0 || num(rec, "loss", &loss) < 0 || num(rec, ipskey, &ips) < 0) {
        char why[160];
        snprintf(why, sizeof why, "%s record: \"step\", \"loss\" or \"%s\" missing or not a number",
                 ev, ipskey);
        return bad_line(r, path, line, why);
    }
    add_point(r, step, loss, ips);
    return 0;
}

static int cmp_rank(const void *a, const void *b) {
    return ((const worker_t *)a)->rank - ((const worker_t *)b)->rank;
}

static void load(report_t *r) {
    DIR *d = opendir(r->dir);
    if (!d) die("%s: cannot open the run directory: %s", r->dir, strerror(errno));
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        int rank, end = 0;
        if (sscanf(e->d_name, "worker-%d.jsonl%n", &rank, &end) != 1 || e->d_name[end] || rank < 0)
            continue;
        r->w = realloc(r->w, (size_t)(r->nw + 1) * sizeof *r->w);
        if (!r->w) die("out of memory");
        r->w[r->nw] = (worker_t){.rank = rank};
        snprintf(path, sizeof path, "%s/%s", r->dir, e->d_name);
        each_line(r, path, worker_line, &r->w[r->nw]);
        r->nw++;
    }
    closedir(d);
    if (r->nw > 1) qsort(r->w, (size_t)r->nw, sizeof *r->w, cmp_rank);
    snprintf(path, sizeof path, "%s/scheduler.jsonl", r->dir);
    int have = each_line(r, path, progress_line, "progress") == 0;
    if (!have) {
        snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
        have = each_line(r, path, progress_line, "step") == 0;
    }
    if (!have && r->nw == 0)
        die("%s: no scheduler.jsonl, metrics.jsonl or worker-<rank>.jsonl: not a run directory",
            r->dir);
}

/* ------------------------------------------------------------------ the table */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double step_ms(const worker_t *w) {
    return w->steps ? 1e3 * w->wall / (double)w->steps : 0;
}

/* Mean ms per step outside push and pull/wait: what the worker itself takes. Under BSP
 * every worker's wall time is the slowest one's (the others wait for it inside their
 * push-pull), so the straggler is the one with the most time of its own. */
static double own_ms(const worker_t *w) {
    return w->steps ? 1e3 * (w->wall - w->ph[PH_PUSH] - w->ph[PH_PULL]) / (double)w->steps : 0;
}

static void print_bw(const char *what, double bytes, double secs) {
    if (bytes <= 0 || secs <= 0)
        printf("  %-10s no traffic recorded\n", what);
    else
        printf("  %-10s %10.1f MB in %8.2f s: %8.1f MB/s\n", what, bytes / 1e6, secs,
               bytes / 1e6 / secs);
}

static void print_table(report_t *r) {
    printf("run %s: %d worker(s), %zu progress record(s)\n", r->dir, r->nw, r->npt);
    if (r->skipped) printf("(%d malformed line(s) skipped, --lenient)\n", r->skipped);
    if (r->nw == 0) {
        printf("no worker-<rank>.jsonl: a standalone run; no per-worker table\n");
        return;
    }
    int bsp = 0;
    for (int i = 0; i < r->nw; i++)
        bsp |= r->w[i].bsp;
    printf("\nwhere the time goes: mean ms per step (share of the worker's wall time); own ms: "
           "outside push and pull/wait%s\n",
           bsp ? "\nBSP: push and pull are one request, counted under push" : "");
    printf("%-7s %6s %8s", "worker", "steps", "img/s");
    for (int p = 0; p < NPH; p++)
        printf(" %15s", ph_name[p]);
    printf(" %9s %9s\n", "step ms", "own ms");
    worker_t all = {.rank = -1};
    for (int i = 0; i <= r->nw; i++) {
        const worker_t *w = i < r->nw ? &r->w[i] : &all;
        if (i < r->nw) {
            all.steps += w->steps, all.samples += w->samples, all.wall += w->wall;
            for (int p = 0; p < NPH; p++)
                all.ph[p] += w->ph[p];
        }
        char name[16];
        snprintf(name, sizeof name, i < r->nw ? "%d" : "all", w->rank);
        printf("%-7s %6ld %8.1f", name, w->steps,
               w->wall > 0 ? (double)w->samples / w->wall : 0.0);
        for (int p = 0; p < NPH; p++) {
            char cell[32];
            snprintf(cell, sizeof cell, "%.2f (%.0f%%)",
                     w->steps ? 1e3 * w->ph[p] / (double)w->steps : 0.0,
                     w->wall > 0 ? 100 * w->ph[p] / w->wall : 0.0);
            printf(" %15s", cell);
        }
        printf(" %9.2f %9.2f\n", step_ms(w), own_ms(w));
    }
    /* the slowest worker against the median of the others (own_ms), as the scheduler
     * judges stragglers (cluster.straggler_k): with two workers, the other one */
    double *t = malloc((size_t)(r->nw > 0 ? r->nw : 1) * sizeof *t);
    if (!t) die("out of memory");
    int slow = -1, n = 0;
    for (int i = 0; i < r->nw; i++) {
        if (!r->w[i].steps) continue;
        t[n++] = own_ms(&r->w[i]);
        if (slow < 0 || own_ms(&r->w[i]) > own_ms(&r->w[slow])) slow = i;
    }
    if (n) {
        qsort(t, (size_t)n, sizeof *t, cmp_double);
        int m = n > 1 ? n - 1 : 1; /* t[0..m): the others, the slowest being t[n - 1] */
        double med = m % 2 ? t[m / 2] : 0.5 * (t[m / 2 - 1] + t[m / 2]);
        double ratio = med > 0 ? own_ms(&r->w[slow]) / med : 1;
        const worker_t *w = &r->w[slow];
        int worst = PH_DATA; /* its largest phase of its own (not push or pull/wait) */
        printf("\n");
        if (n > 1 && ratio >= STRAGGLER_RATIO) r->straggler = slow;
        if (n > 1 && ratio >= STRAGGLER_RATIO)
            printf("straggler: worker rank %d (worker-%d.jsonl): %.2f ms per step outside "
                   "push and pull, %.2fx the median of the others, %.2f ms; ",
                   w->rank, w->rank, own_ms(w), ratio, med);
        else
            printf("slowest worker: rank %d: %.2f ms per step outside push and pull, %.2fx the "
                   "median of the others, %.2f ms (no straggler: under %.1fx); ",
                   w->rank, own_ms(w), ratio, med, STRAGGLER_RATIO);
        for (int p = 1; p < NPH; p++)
            if (p != PH_PUSH && p != PH_PULL && w->ph[p] > w->ph[worst]) worst = p;
        printf("its largest phase is %s (%.2f ms per step)\n", ph_name[worst],
               1e3 * w->ph[worst] / (double)w->steps);
    }
    free(t);
    printf("\nbandwidth (payload bytes over the time of the request)\n");
    double pb = 0, lb = 0, ps = 0, ls = 0;
    for (int i = 0; i < r->nw; i++)
        pb += r->w[i].push_bytes, lb += r->w[i].pull_bytes, ps += r->w[i].ph[PH_PUSH],
            ls += r->w[i].ph[PH_PULL];
    if (bsp)
        print_bw("push+pull", pb + lb, ps);
    else {
        print_bw("push", pb, ps);
        print_bw("pull", lb, ls);
    }
}

/* ------------------------------------------------------------------ SVG */

enum { SVG_W = 720, SVG_H = 400, ML = 84, MR = 20, MT = 40, MB = 50 };

static FILE *svg_open(const report_t *r, const char *name, char *path, size_t cap, int h) {
    snprintf(path, cap, "%s/%s", r->out, name);
    FILE *f = fopen(path, "w");
    if (!f) die("%s: cannot write: %s", path, strerror(errno));
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            SVG_W, h, SVG_W, h);
    return f;
}

static void svg_close(FILE *f, const char *path) {
    fputs("</svg>\n", f);
    if (fclose(f) != 0) die("%s: write failed", path);
    printf("wrote %s\n", path);
}

/* Text with &, <, > and " escaped (run directory names end up in titles). */
static void svg_text(FILE *f, double x, double y, const char *anchor, const char *s) {
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\">", x, y, anchor);
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default:
            if ((unsigned char)*s >= 0x20) fputc(*s, f); /* XML 1.0 has no control chars */
        }
    }
    fputs("</text>\n", f);
}

/* A line plot of y against x over the points where y is finite. */
static void svg_line(const report_t *r, const char *name, const char *title, const char *ylabel,
                     int which) {
    char path[4200], buf[256];
    FILE *f = svg_open(r, name, path, sizeof path, SVG_H);
    snprintf(buf, sizeof buf, "%s (%s)", title, r->dir);
    svg_text(f, SVG_W / 2.0, 22, "middle", buf);
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    size_t n = 0;
    for (size_t i = 0; i < r->npt; i++) {
        double y = which ? r->pt[i].ips : r->pt[i].loss;
        if (!isfinite(y) || !isfinite(r->pt[i].x)) continue;
        n++;
        x0 = fmin(x0, r->pt[i].x), x1 = fmax(x1, r->pt[i].x);
        y0 = fmin(y0, y), y1 = fmax(y1, y);
    }
    double pw = SVG_W - ML - MR, ph = SVG_H - MT - MB;
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
               "stroke=\"#888\"/>\n", ML, MT, pw, ph);
    if (!n) {
        svg_text(f, SVG_W / 2.0, SVG_H / 2.0, "middle", "no data in this run");
        svg_close(f, path);
        return;
    }
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y0 -= 0.5, y1 += 0.5;
    for (int k = 0; k <= 4; k++) { /* ticks: 5 on each axis */
        double yv = y0 + (y1 - y0) * k / 4, yy = MT + ph * (1 - k / 4.0);
        double xv = x0 + (x1 - x0) * k / 4, xx = ML + pw * k / 4.0;
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", ML,
                yy, ML + pw, yy);
        snprintf(buf, sizeof buf, "%.4g", yv);
        svg_text(f, ML - 6, yy + 4, "end", buf);
        snprintf(buf, sizeof buf, "%.0f", xv);
        svg_text(f, xx, MT + ph + 18, "middle", buf);
    }
    svg_text(f, ML + pw / 2, SVG_H - 12, "middle", "step");
    fprintf(f, "<text x=\"16\" y=\"%.1f\" transform=\"rotate(-90 16 %.1f)\" "
               "text-anchor=\"middle\">%s</text>\n", MT + ph / 2, MT + ph / 2, ylabel);
    fputs("<polyline fill=\"none\" stroke=\"#4e79a7\" stroke-width=\"1.5\" points=\"", f);
    for (size_t i = 0; i < r->npt; i++) {
        double y = which ? r->pt[i].ips : r->pt[i].loss;
        if (!isfinite(y) || !isfinite(r->pt[i].x)) continue;
        fprintf(f, "%.1f,%.1f ", ML + pw * (r->pt[i].x - x0) / (x1 - x0),
                MT + ph * (1 - (y - y0) / (y1 - y0)));
    }
    fputs("\"/>\n", f);
    svg_close(f, path);
}

/* One horizontal bar per worker: its mean step, stacked by phase. */
static void svg_phases(const report_t *r) {
    int bar = 22, gap = 10, h = MT + MB + 30 + r->nw * (bar + gap);
    char path[4200], buf[256];
    FILE *f = svg_open(r, "phases.svg", path, sizeof path, h);
    snprintf(buf, sizeof buf, "mean step time per worker by phase, ms (%s)", r->dir);
    svg_text(f, SVG_W / 2.0, 22, "middle", buf);
    double most = 0, pw = SVG_W - ML - MR - 60;
    for (int i = 0; i < r->nw; i++)
        most = fmax(most, step_ms(&r->w[i]));
    if (most <= 0) most = 1;
    for (int i = 0; i < r->nw; i++) {
        const worker_t *w = &r->w[i];
        double y = MT + i * (bar + gap), x = ML;
        fprintf(f, "<g class=\"worker\" data-rank=\"%d\">\n", w->rank);
        snprintf(buf, sizeof buf, "worker %d", w->rank);
        if (i == r->straggler) { /* named as in the table, in red */
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"#c00\" "
                       "font-weight=\"bold\" class=\"straggler\">straggler</text>\n",
                    ML - 6, y + bar / 2.0 - 6);
        }
        svg_text(f, ML - 6, y + bar / 2.0 + 8 * (i == r->straggler), "end", buf);
        for (int p = 0; p < NPH && w->steps; p++) {
            double ms = 1e3 * w->ph[p] / (double)w->steps, wd = pw * ms / most;
            fprintf(f, "<rect class=\"phase\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%d\" "
                       "fill=\"%s\"><title>worker %d %s: %.2f ms</title></rect>\n",
                    x, y, wd, bar, ph_color[p], w->rank, ph_name[p], ms);
            x += wd;
        }
        snprintf(buf, sizeof buf, "%.1f", step_ms(w));
        svg_text(f, x + 4, y + bar / 2.0 + 4, "start", buf);
        fputs("</g>\n", f);
    }
    double ly = MT + r->nw * (bar + gap) + 16, lx = ML;
    for (int p = 0; p < NPH; p++) { /* the legend */
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%s\"/>\n", lx,
                ly - 10, ph_color[p]);
        svg_text(f, lx + 16, ly, "start", ph_name[p]);
        lx += 100;
    }
    svg_close(f, path);
}

int main(int argc, char **argv) {
    report_t r = {.straggler = -1};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            r.out = argv[++i];
        else if (strcmp(argv[i], "--lenient") == 0)
            r.lenient = 1;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: mimic-report RUN_DIR [--out DIR] [--lenient]\n");
            return 0;
        } else if (argv[i][0] == '-' || r.dir)
            die("unknown or extra argument \"%s\" (usage: mimic-report RUN_DIR [--out DIR] "
                "[--lenient])", argv[i]);
        else
            r.dir = argv[i];
    }
    if (!r.dir) die("usage: mimic-report RUN_DIR [--out DIR] [--lenient]");
    load(&r);
    char outbuf[4200];
    if (!r.out) {
        snprintf(outbuf, sizeof outbuf, "%s/report", r.dir);
        r.out = outbuf;
    }
    if (mkdir(r.out, 0755) != 0 && errno != EEXIST)
        die("%s: cannot create the report directory: %s", r.out, strerror(errno));
    print_table(&r);
    printf("\n");
    svg_line(&r, "loss.svg", "loss", "loss", 0);
    svg_line(&r, "images_per_s.svg", "cluster images/s", "images/s", 1);
    svg_phases(&r);
    free(r.w);
    free(r.pt);
    return 0;
}
