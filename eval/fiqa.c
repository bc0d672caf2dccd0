#include "fiqa.h"

#include "common.h"
#include "dataset.h"
#include "loader.h"
#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

double fiqa_wasserstein1(float *a, int n, float *b, int m) {
    MIMIC_CHECK(n >= 1 && m >= 1);
    qsort(a, (size_t)n, sizeof *a, cmp_float);
    qsort(b, (size_t)m, sizeof *b, cmp_float);
    /* walk the merged breakpoints of the two quantile step functions: a_(i) holds on
     * ((i)/n, (i+1)/n], b_(j) on (j/m, (j+1)/m]; compare (i+1) m with (j+1) n in integers
     * so equal breakpoints advance both without rounding */
    double acc = 0.0, t = 0.0;
    int i = 0, j = 0;
    while (i < n && j < m) {
        long long ea = (long long)(i + 1) * m, eb = (long long)(j + 1) * n;
        double next = ea <= eb ? (double)(i + 1) / n : (double)(j + 1) / m;
        acc += (next - t) * fabs((double)a[i] - (double)b[j]);
        t = next;
        if (ea <= eb) i++;
        if (eb <= ea) j++;
    }
    return acc;
}

/* m distinct draws from list (len) into out, none equal to `self`; list holds self at
 * most once. Rejection: m <= len - 1 is checked by the caller. */
static void draw_distinct(int *out, int m, const int *list, int len, int self, rng_t *r) {
    for (int k = 0; k < m; k++) {
        int v, dup;
        do {
            v = list[rng_below(r, (uint64_t)len)];
            dup = v == self;
            for (int q = 0; q < k && !dup; q++)
                dup = out[q] == v;
        } while (dup);
        out[k] = v;
    }
}

/* m distinct images of other classes than y[self]: drawn from all n, rejecting class
 * y[self] (at most m <= n - |class| draws are needed: checked by the caller). */
static void draw_others(int *out, int m, const int *y, int n, int self, rng_t *r) {
    for (int k = 0; k < m; k++) {
        int v, dup;
        do {
            v = (int)rng_below(r, (uint64_t)n);
            dup = y[v] == y[self];
            for (int q = 0; q < k && !dup; q++)
                dup = out[q] == v;
        } while (dup);
        out[k] = v;
    }
}

static double dot(const float *a, const float *b, int D) {
    double s = 0.0;
    for (int d = 0; d < D; d++)
        s += (double)a[d] * b[d];
    return s;
}

/* Class sizes and members (CSR), checked against m; every message one line. */
static int class_lists(int **start, int **members, int *K, const int *y, int n, int m) {
    int nk = 0;
    for (int i = 0; i < n; i++) {
        if (y[i] < 0) return mimic_err(MIMIC_EINVAL, "fiqa: image %d has no label", i);
        if (y[i] + 1 > nk) nk = y[i] + 1;
    }
    int *st = calloc((size_t)nk + 1, sizeof *st), *mb = malloc((size_t)n * sizeof *mb);
    int *fill = calloc((size_t)nk, sizeof *fill);
    int rc = 0, classes = 0;
    if (!st || !mb || !fill) {
        rc = mimic_err(MIMIC_ENOMEM, "fiqa: out of memory for the class lists");
        goto out;
    }
    for (int i = 0; i < n; i++)
        st[y[i] + 1]++;
    for (int c = 0; c < nk; c++)
        classes += st[c + 1] > 0;
    if (classes < 2) {
        rc = mimic_err(MIMIC_EINVAL, "fiqa: the set has %d class; SDD-FIQA needs 2 or more",
                       classes);
        goto out;
    }
    for (int c = 0; c < nk && !rc; c++) {
        int size = st[c + 1];
        if (size == 0) continue;
        if (size < 2)
            rc = mimic_err(MIMIC_EINVAL,
                           "fiqa: class %d has 1 image; SDD-FIQA needs 2 or more per class (a "
                           "same-class partner)",
                           c);
        else if (m > size - 1)
            rc = mimic_err(MIMIC_EINVAL,
                           "config fiqa.m: %d is larger than the %d other images of class %d", m,
                           size - 1, c);
        else if (m > n - size)
            rc = mimic_err(MIMIC_EINVAL,
                           "config fiqa.m: %d is larger than the %d images outside class %d", m,
                           n - size, c);
    }
    if (rc) goto out;
    for (int c = 0; c < nk; c++)
        st[c + 1] += st[c];
    for (int i = 0; i < n; i++)
        mb[st[y[i]] + fill[y[i]]++] = i;
    *start = st;
    *members = mb;
    *K = nk;
    st = mb = NULL;
out:
    free(st);
    free(mb);
    free(fill);
    return rc;
}

int fiqa_score(float *q, float *raw, const float *x, const int *y, int n, int D,
               const fiqa_cfg_t *c) {
    if (c->m < 1) return mimic_err(MIMIC_EINVAL, "config fiqa.m: %d, must be >= 1", c->m);
    if (c->repeats < 1)
        return mimic_err(MIMIC_EINVAL, "config fiqa.repeats: %d, must be >= 1", c->repeats);
    if (n < 3 || D < 1) return mimic_err(MIMIC_EINVAL, "fiqa: %d images of %d features", n, D);
    int *start = NULL, *members = NULL, K = 0, rc;
    float *xn = malloc((size_t)n * D * sizeof *xn);
    double *dist = malloc((size_t)n * sizeof *dist);
    if (!xn || !dist) {
        rc = mimic_err(MIMIC_ENOMEM, "fiqa: out of memory for %d features", n);
        goto out;
    }
    if ((rc = class_lists(&start, &members, &K, y, n, c->m))) goto out;
    /* cosine similarity = dot product of the normalised features */
    for (int i = 0; i < n; i++) {
        double nr = sqrt(dot(x + (size_t)i * D, x + (size_t)i * D, D));
        float inv = nr > 1e-12 ? (float)(1.0 / nr) : 0.0f;
        for (int d = 0; d < D; d++)
            xn[(size_t)i * D + d] = x[(size_t)i * D + d] * inv;
    }
    const int m = c->m;
#pragma omp parallel
    {
        int *pi = malloc((size_t)m * sizeof *pi), *ni = malloc((size_t)m * sizeof *ni);
        float *sp = malloc((size_t)m * sizeof *sp), *sn = malloc((size_t)m * sizeof *sn);
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            if (!pi || !ni || !sp || !sn) {
                dist[i] = NAN;
                continue;
            }
            rng_t r;
            rng_split(&r, c->seed, (uint64_t)i);
            const int *cls = members + start[y[i]];
            int len = start[y[i] + 1] - start[y[i]];
            double acc = 0.0;
            for (int k = 0; k < c->repeats; k++) {
                draw_distinct(pi, m, cls, len, i, &r);
                draw_others(ni, m, y, n, i, &r);
                for (int j = 0; j < m; j++) {
                    sp[j] = (float)dot(xn + (size_t)i * D, xn + (size_t)pi[j] * D, D);
                    sn[j] = (float)dot(xn + (size_t)i * D, xn + (size_t)ni[j] * D, D);
                }
                acc += fiqa_wasserstein1(sp, m, sn, m);
            }
            dist[i] = acc / c->repeats;
        }
        free(pi);
        free(ni);
        free(sp);
        free(sn);
    }
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (!isfinite(dist[i])) {
            rc = mimic_err(MIMIC_ENOMEM, "fiqa: out of memory in a scoring thread");
            goto out;
        }
        lo = fmin(lo, dist[i]);
        hi = fmax(hi, dist[i]);
    }
    /* (ours) every image equally separated: all score 100 (nothing to tell apart) */
    for (int i = 0; i < n; i++) {
        q[i] = hi > lo ? (float)(100.0 * (dist[i] - lo) / (hi - lo)) : 100.0f;
        if (raw) raw[i] = (float)dist[i];
    }
out:
    free(xn);
    free(dist);
    free(start);
    free(members);
    return rc;
}

/* ---- the regression head ---- */

static double pearson(const double *a, const float *b, const uint8_t *sel, int want, int n) {
    double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (sel[i] != want) continue;
        sa += a[i], sb += b[i], saa += a[i] * a[i], sbb += (double)b[i] * b[i];
        sab += a[i] * b[i];
        k++;
    }
    if (k < 2) return NAN;
    double va = saa - sa * sa / k, vb = sbb - sb * sb / k;
    return va > 0 && vb > 0 ? (sab - sa * sb / k) / sqrt(va * vb) : 0.0;
}

int fiqa_head_fit(float *w, float *b, fiqa_head_result_t *r, const float *x, const float *q, int n,
                  int D, const fiqa_head_cfg_t *c) {
    memset(r, 0, sizeof *r);
    if (c->epochs < 1 || !(c->lr > 0.0f) || !(c->beta > 0.0f))
        return mimic_err(MIMIC_EINVAL,
                         "config fiqa.head_epochs/head_lr/head_beta: need >= 1, "
                         "> 0 and > 0 (got %d, %g, %g)",
                         c->epochs, c->lr, c->beta);
    double *mu = calloc((size_t)D, sizeof *mu), *sd = calloc((size_t)D, sizeof *sd);
    double *ww = calloc((size_t)D, sizeof *ww), *vw = calloc((size_t)D, sizeof *vw);
    double *pred = malloc((size_t)n * sizeof *pred);
    uint8_t *held = malloc((size_t)n);
    uint32_t *order = malloc((size_t)n * sizeof *order);
    int rc = 0;
    if (!mu || !sd || !ww || !vw || !pred || !held || !order) {
        rc = mimic_err(MIMIC_ENOMEM, "fiqa: out of memory for the regression head");
        goto out;
    }
    int nf = 0;
    for (int i = 0; i < n; i++) { /* (ours) every 10th image held out to measure the fit */
        held[i] = i % 10 == 9;
        if (!held[i]) order[nf++] = (uint32_t)i;
    }
    r->n_fit = nf;
    r->n_held = n - nf;
    if (nf < 2) {
        rc = mimic_err(MIMIC_EINVAL, "fiqa: %d images are too few for the regression head", n);
        goto out;
    }
    for (int k = 0; k < nf; k++)
        for (int d = 0; d < D; d++)
            mu[d] += x[(size_t)order[k] * D + d];
    for (int d = 0; d < D; d++)
        mu[d] /= nf;
    for (int k = 0; k < nf; k++)
        for (int d = 0; d < D; d++) {
            double v = x[(size_t)order[k] * D + d] - mu[d];
            sd[d] += v * v;
        }
    double qmean = 0;
    for (int k = 0; k < nf; k++)
        qmean += q[order[k]] / 100.0;
    qmean /= nf;
    /* standardised and divided by sqrt(D), so a row has norm ~1 and one SGD step moves a
     * prediction by ~lr whatever the width (ours) */
    for (int d = 0; d < D; d++)
        sd[d] = (sqrt(sd[d] / nf) + 1e-6) * sqrt((double)D);
    /* SGD with momentum 0.9 on mini-batches of 64, lr half-cosine to 0; the bias starts at
     * the mean target (the head then learns only the deviations) */
    double bb = qmean, vb = 0.0, loss = 0.0;
    const int bs = nf < 64 ? nf : 64, steps_per = nf / bs;
    const long total = (long)c->epochs * steps_per;
    long step = 0;
    rng_t rg;
    rng_seed(&rg, c->seed);
    double *gw = calloc((size_t)D, sizeof *gw);
    if (!gw) {
        rc = mimic_err(MIMIC_ENOMEM, "fiqa: out of memory for the regression head");
        goto out;
    }
    for (int e = 0; e < c->epochs; e++) {
        rng_shuffle_u32(&rg, order, (uint64_t)nf);
        loss = 0.0;
        for (int s = 0; s < steps_per; s++, step++) {
            double lr = 0.5 * c->lr * (1.0 + cos(M_PI * (double)step / (double)total)), gb = 0;
            memset(gw, 0, (size_t)D * sizeof *gw);
            for (int k = 0; k < bs; k++) {
                const float *xi = x + (size_t)order[s * bs + k] * D;
                double p = bb;
                for (int d = 0; d < D; d++)
                    p += ww[d] * (xi[d] - mu[d]) / sd[d];
                double diff = p - q[order[s * bs + k]] / 100.0, ad = fabs(diff);
                loss += ad < c->beta ? 0.5 * diff * diff / c->beta : ad - 0.5 * c->beta;
                double g = (ad < c->beta ? diff / c->beta : (diff > 0 ? 1.0 : -1.0)) / bs;
                gb += g;
                for (int d = 0; d < D; d++)
                    gw[d] += g * (xi[d] - mu[d]) / sd[d];
            }
            for (int d = 0; d < D; d++) {
                vw[d] = 0.9 * vw[d] + gw[d];
                ww[d] -= lr * vw[d];
            }
            vb = 0.9 * vb + gb;
            bb -= lr * vb;
        }
        loss /= (double)steps_per * bs;
    }
    free(gw);
    /* fold the standardisation into a head on raw features, in score units */
    double bias = bb;
    for (int d = 0; d < D; d++) {
        w[d] = (float)(100.0 * ww[d] / sd[d]);
        bias -= ww[d] * mu[d] / sd[d];
    }
    *b = (float)(100.0 * bias);
    double ae[2] = {0, 0};
    for (int i = 0; i < n; i++) {
        double p = *b;
        for (int d = 0; d < D; d++)
            p += (double)w[d] * x[(size_t)i * D + d];
        pred[i] = p;
        ae[held[i]] += fabs(p - q[i]);
    }
    r->loss = loss;
    r->mae_fit = ae[0] / r->n_fit;
    r->mae_held = r->n_held ? ae[1] / r->n_held : NAN;
    r->r_fit = pearson(pred, q, held, 0, n);
    r->r_held = pearson(pred, q, held, 1, n);
out:
    free(mu);
    free(sd);
    free(ww);
    free(vw);
    free(pred);
    free(held);
    free(order);
    return rc;
}

/* ---- filtering and files ---- */

typedef struct {
    float q;
    int i;
} rank_t;

static int cmp_rank(const void *a, const void *b) {
    const rank_t *x = a, *y = b;
    if (x->q != y->q) return x->q < y->q ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

int fiqa_keep(uint8_t *keep, const float *q, const int *y, int n, float drop) {
    if (!(drop >= 0.0f && drop < 1.0f))
        return mimic_err(MIMIC_EINVAL, "config fiqa.drop: %g, must be in [0, 1)", drop);
    rank_t *rk = malloc((size_t)n * sizeof *rk);
    if (!rk) return mimic_err(MIMIC_ENOMEM, "fiqa: out of memory");
    int K = 1, kept = 0;
    for (int i = 0; y && i < n; i++)
        if (y[i] + 1 > K) K = y[i] + 1;
    /* one ranking of the whole set, or one per class (y given): each class then loses
     * floor(drop * its size), so the filtered set keeps the class balance (ours) */
    for (int c = 0; c < K; c++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (!y || y[i] == c) rk[m++] = (rank_t){q[i], i};
        qsort(rk, (size_t)m, sizeof *rk, cmp_rank);
        int ndrop = (int)floor((double)drop * m);
        for (int k = 0; k < m; k++)
            keep[rk[k].i] = k >= ndrop;
        kept += m - ndrop;
    }
    free(rk);
    return kept;
}

int fiqa_write_csv(const char *path, const uint32_t *ids, const int *y, const float *q, int n) {
    FILE *f = fopen(path, "w");
    if (!f) return mimic_err(MIMIC_EIO, "%s: cannot write the scores", path);
    fprintf(f, "index,label,score\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "%u,%d,%.4f\n", ids[i], y[i], q[i]);
    if (fclose(f) != 0) return mimic_err(MIMIC_EIO, "%s: write failed", path);
    return 0;
}

static void be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* The kept pixels and labels of an in-memory set as an IDX pair. */
static int write_idx(dataset_t *ds, const uint32_t *ids, const uint8_t *keep, int n, int kept,
                     const char *prefix) {
    char ip[CFG_PATH_MAX + 32], lp[CFG_PATH_MAX + 32];
    image_u8 img = {0};
    int rc = dataset_get(ds, ids[0], &img, 0);
    if (rc) return rc;
    const int C = img.c;
    snprintf(ip, sizeof ip, "%s-images-idx%d-ubyte", prefix, C == 1 ? 3 : 4);
    snprintf(lp, sizeof lp, "%s-labels-idx1-ubyte", prefix);
    FILE *fi = fopen(ip, "wb"), *fl = fopen(lp, "wb");
    if (!fi || !fl) {
        rc = mimic_err(MIMIC_EIO, "%s: cannot write the filtered set", !fi ? ip : lp);
        goto out;
    }
    uint8_t h[20];
    be32(h, C == 1 ? 0x803u : 0x804u);
    be32(h + 4, (uint32_t)kept);
    be32(h + 8, (uint32_t)img.h);
    be32(h + 12, (uint32_t)img.w);
    be32(h + 16, (uint32_t)C);
    fwrite(h, 1, C == 1 ? 16 : 20, fi);
    be32(h, 0x801u);
    be32(h + 4, (uint32_t)kept);
    fwrite(h, 1, 8, fl);
    for (int i = 0; i < n && !rc; i++) {
        if (!keep[i]) continue;
        int lab = dataset_label(ds, ids[i]);
        if (lab < 0 || lab > 255) {
            rc = mimic_err(MIMIC_EINVAL, "sample %u: label %d does not fit an IDX byte", ids[i],
                           lab);
            break;
        }
        if ((rc = dataset_get(ds, ids[i], &img, 0))) break;
        fwrite(img.px, 1, (size_t)img.w * img.h * img.c, fi);
        fputc(lab, fl);
    }
out:
    if (fi && fclose(fi) != 0 && !rc) rc = mimic_err(MIMIC_EIO, "%s: write failed", ip);
    if (fl && fclose(fl) != 0 && !rc) rc = mimic_err(MIMIC_EIO, "%s: write failed", lp);
    image_u8_free(&img);
    if (!rc)
        mimic_log("fiqa: %d of %d images kept: --data.kind=idx --data.path=%s --data.labels=%s",
                  kept, n, ip, lp);
    return rc;
}

/* The kept files of a JPEG set as a label list relative to data.path. */
static int write_list(dataset_t *ds, const mimic_cfg_t *cfg, const uint32_t *ids,
                      const uint8_t *keep, int n, int kept, const char *prefix) {
    char lp[CFG_PATH_MAX + 32];
    snprintf(lp, sizeof lp, "%s-labels.txt", prefix);
    FILE *f = fopen(lp, "w");
    if (!f) return mimic_err(MIMIC_EIO, "%s: cannot write the filtered list", lp);
    size_t root = strlen(cfg->data.path);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (!keep[i]) continue;
        const char *file = dataset_file(ds, ids[i]);
        if (!file || strncmp(file, cfg->data.path, root) != 0) {
            rc = mimic_err(MIMIC_EINVAL, "sample %u: no file under %s", ids[i], cfg->data.path);
            break;
        }
        const char *rel = file + root;
        while (*rel == '/')
            rel++;
        if (strchr(rel, ' ')) {
            rc = mimic_err(MIMIC_EINVAL, "%s: a name with a blank cannot go in a label list", file);
            break;
        }
        fprintf(f, "%s %d\n", rel, dataset_label(ds, ids[i]) + cfg->data.label_base);
    }
    if (fclose(f) != 0 && !rc) rc = mimic_err(MIMIC_EIO, "%s: write failed", lp);
    if (!rc)
        mimic_log("fiqa: %d of %d images kept: --data.kind=labellist --data.path=%s "
                  "--data.labels=%s --data.label_base=%d --data.usage=",
                  kept, n, cfg->data.path, lp, cfg->data.label_base);
    return rc;
}

int fiqa_write_filtered(const mimic_cfg_t *cfg, const uint32_t *ids, const uint8_t *keep, int n,
                        const char *prefix) {
    dataset_opts o;
    dataset_t *ds = NULL;
    int kept = 0, rc = loader_opts(&o, cfg);
    for (int i = 0; i < n; i++)
        kept += keep[i] != 0;
    if (rc || (rc = dataset_open(&ds, &o))) return rc;
    if (kept == 0) {
        rc = mimic_err(MIMIC_EINVAL, "fiqa: no image left to write");
    } else {
        int w, h;
        rc = dataset_fixed_size(ds, &w, &h) ? write_idx(ds, ids, keep, n, kept, prefix)
                                            : write_list(ds, cfg, ids, keep, n, kept, prefix);
    }
    dataset_destroy(&ds);
    return rc;
}
