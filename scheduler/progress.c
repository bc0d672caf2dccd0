#include "progress.h"

#include <math.h>

void progress_init(progress_t *p, long total, long start_step, double now) {
    *p = (progress_t){.total = total, .t_last = now, .step_last = start_step};
}

void progress_samples(progress_t *p, uint64_t n) {
    p->samples += n;
}

void progress_flush(progress_t *p, double now, FILE *out, metrics_t *mx, double t0) {
    if (p->n == 0) return;
    double dt = now - p->t_last;
    double loss = p->loss_sum / p->n;
    double img_s = dt > 0 ? (double)p->samples / dt : 0;
    double steps_s = dt > 0 ? (double)(p->step - p->step_last) / dt : 0;
    double eta = steps_s > 0 ? (double)(p->total - p->step) / steps_s : NAN;
    metrics_progress(out, "[cluster]", p->step, p->total, loss, p->lr, img_s, eta);
    metrics_begin(mx, "progress");
    metrics_num(mx, "t", now - t0);
    metrics_int(mx, "step", p->step);
    metrics_int(mx, "total", p->total);
    metrics_num(mx, "loss", loss);
    metrics_num(mx, "lr", p->lr);
    metrics_num(mx, "img_per_s", img_s);
    metrics_num(mx, "eta_s", eta);
    metrics_int(mx, "reports", p->n);
    metrics_int(mx, "stragglers", p->stragglers);
    metrics_end(mx);
    p->lines++;
    p->last_step = p->step;
    p->last_t = now;
    p->last_loss = loss;
    p->last_lr = p->lr;
    p->last_img_s = img_s;
    p->t_last = now;
    p->step_last = p->step;
    p->samples = 0;
    p->n = 0;
    p->loss_sum = 0;
}

void progress_metrics(progress_t *p, long step, double loss, double lr, int live, double now,
                      FILE *out, metrics_t *mx, double t0) {
    if (p->n > 0 && step != p->step) progress_flush(p, now, out, mx, t0);
    if (p->n == 0) p->first_t = now;
    p->step = step;
    p->loss_sum += loss;
    p->lr = lr;
    p->n++;
    if (p->n >= live) progress_flush(p, now, out, mx, t0);
}

void progress_tick(progress_t *p, double now, FILE *out, metrics_t *mx, double t0) {
    if (p->n > 0 && now - p->first_t > PROGRESS_HOLD_S) progress_flush(p, now, out, mx, t0);
}
