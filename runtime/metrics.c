#include "metrics.h"

#include "common.h"

#include <math.h>
#include <string.h>

int metrics_open(metrics_t *m, const char *path) {
    memset(m, 0, sizeof *m);
    if (!path) return 0;
    m->f = fopen(path, "a");
    if (!m->f) return mimic_err(MIMIC_EIO, "%s: cannot open metrics file", path);
    return 0;
}

void metrics_close(metrics_t *m) {
    if (m->f) fclose(m->f);
    m->f = NULL;
}

static void key(metrics_t *m, const char *k) {
    fprintf(m->f, "%s\"%s\":", m->fields++ ? "," : "", k);
}

void metrics_begin(metrics_t *m, const char *event) {
    if (!m->f) return;
    m->fields = 0;
    fputc('{', m->f);
    metrics_str(m, "event", event);
}

void metrics_num(metrics_t *m, const char *k, double v) {
    if (!m->f) return;
    key(m, k);
    if (isfinite(v))
        fprintf(m->f, "%.6g", v);
    else
        fputs("null", m->f); /* JSON has no NaN */
}

void metrics_int(metrics_t *m, const char *k, long long v) {
    if (!m->f) return;
    key(m, k);
    fprintf(m->f, "%lld", v);
}

void metrics_str(metrics_t *m, const char *k, const char *v) {
    if (!m->f) return;
    key(m, k);
    fputc('"', m->f);
    for (const char *c = v; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(m->f, "\\%c", *c);
        else if ((unsigned char)*c < 0x20)
            fprintf(m->f, "\\u%04x", *c);
        else
            fputc(*c, m->f);
    }
    fputc('"', m->f);
}

void metrics_end(metrics_t *m) {
    if (!m->f) return;
    fputs("}\n", m->f);
    fflush(m->f);
}

void metrics_progress(FILE *f, const char *who, long step, long total, double loss, double lr,
                      double img_per_s, double eta_s) {
    long eta = isfinite(eta_s) && eta_s > 0 ? (long)eta_s : 0;
    fprintf(f, "%s step %ld/%ld | loss %.4f | lr %.2e | %.1f img/s | ETA %ldh%02ldm%02lds\n", who,
            step, total, loss, lr, img_per_s, eta / 3600, (eta / 60) % 60, eta % 60);
    fflush(f);
}
