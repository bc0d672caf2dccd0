#include "eval.h"

#include "common.h"
#include "linear.h"
#include "loader.h"
#include "metrics.h"
#include "probe.h"
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>

/* ---- keys: runtime/config.c's [eval] section ---- */

static int bad(const char *key, const char *value, const char *why) {
    return mimic_err(MIMIC_EINVAL, "config eval.%s: '%s' %s", key, value, why);
}

/* Names of the enum values, in enum order (config.c's choices), for the JSON record. */
static const char *const feature_names[] = {"encoder", "random", "pixels"};
static const char *const pool_names[] = {"cls", "avg"};

static int parse_ks(eval_cfg_t *c, const char *key, const char *v) {
    int n = 0;
    const char *s = v;
    while (*s) {
        char *end;
        long k = strtol(s, &end, 10);
        if (end == s || k < 1 || k > KNN_MAX_K || (*end && *end != ','))
            return bad(key, v, "is not a list of k in [1,1024] like 1,10,20");
        if (n == EVAL_MAX_KS) return bad(key, v, "has more than 8 values");
        c->knn_k[n++] = (int)k;
        s = *end ? end + 1 : end;
    }
    if (n == 0) return bad(key, v, "is empty");
    c->knn_nk = n;
    return 0;
}

int eval_cfg_from(eval_cfg_t *c, const mimic_cfg_t *cfg) {
    memset(c, 0, sizeof *c);
    c->features = (eval_features_t)cfg->eval.features;
    c->pool = (encoder_pool_t)cfg->eval.pool;
    snprintf(c->kind, sizeof c->kind, "%s", cfg->eval.kind);
    snprintf(c->train_path, sizeof c->train_path, "%s", cfg->eval.train_path);
    snprintf(c->train_labels, sizeof c->train_labels, "%s", cfg->eval.train_labels);
    snprintf(c->train_usage, sizeof c->train_usage, "%s", cfg->eval.train_usage);
    snprintf(c->test_path, sizeof c->test_path, "%s", cfg->eval.test_path);
    snprintf(c->test_labels, sizeof c->test_labels, "%s", cfg->eval.test_labels);
    snprintf(c->test_usage, sizeof c->test_usage, "%s", cfg->eval.test_usage);
    c->train_limit = cfg->eval.train_limit;
    c->test_limit = cfg->eval.test_limit;
    c->batch_size = cfg->eval.batch_size;
    c->probe_epochs = cfg->eval.probe_epochs;
    c->probe_batch = cfg->eval.probe_batch;
    c->probe_lr = cfg->eval.probe_lr;
    c->probe_momentum = cfg->eval.probe_momentum;
    c->probe_weight_decay = cfg->eval.probe_weight_decay;
    c->knn_temp = cfg->eval.knn_temp;
    if (c->train_limit < 0 || c->test_limit < 0 || c->batch_size < 1 || c->probe_epochs < 0 ||
        c->probe_batch < 1 || !(c->probe_lr >= 0) || !(c->probe_momentum >= 0) ||
        !(c->probe_weight_decay >= 0) || !(c->knn_temp >= 0))
        return mimic_err(MIMIC_EINVAL, "config eval.*: limits, probe and k-NN settings must be "
                                       "non-negative (batch sizes >= 1)");
    return parse_ks(c, "knn_k", cfg->eval.knn_k);
}

/* ---- the model's own classifier ---- */

/* timm's names of a fine-tuned ViT's classifier, which the mimic stage keeps */
#define HEAD_WEIGHT "head.weight"
#define HEAD_BIAS "head.bias"

/* The classifier a model carries: logits = head(cls feature of the final norm), as the
 * mimic stage computes them in training (there on mixed images; here on the images
 * without augmentation). w NULL: the model has none. */
typedef struct {
    const char *name;   /* the model, for errors */
    const float *w, *b; /* (K, D), (K) */
    int K, D;
    float *feat, *logits; /* (B, D) cls features when eval.pool is not cls; (B, K) */
} classifier_t;

static void classifier_free(classifier_t *cl) {
    mimic_free(cl->feat);
    mimic_free(cl->logits);
    cl->feat = cl->logits = NULL;
}

/* The classifier in p (a mimic stage's parameters, or a model file's as eval_run
 * registers them), with buffers for batches of up to B images; none is not an error. */
static int classifier_find(classifier_t *cl, const params_t *p, int D, int B, const char *name) {
    memset(cl, 0, sizeof *cl);
    cl->name = name;
    int iw = params_find(p, HEAD_WEIGHT), ib = params_find(p, HEAD_BIAS);
    if (iw < 0 && ib < 0) return 0;
    const params_tensor_t *w = iw >= 0 ? &p->t[iw] : NULL, *b = ib >= 0 ? &p->t[ib] : NULL;
    if (!w || !b || w->ndim != 2 || w->shape[1] != D || w->shape[0] < 1 || b->ndim != 1 ||
        b->shape[0] != w->shape[0])
        return mimic_err(MIMIC_ESHAPE,
                         "%s: the classifier must be " HEAD_WEIGHT " (K, %d) and " HEAD_BIAS
                         " (K) on the encoder's %d features",
                         name, D, D);
    cl->w = params_w(p, iw);
    cl->b = params_w(p, ib);
    cl->K = (int)w->shape[0];
    cl->D = D;
    cl->feat = mimic_alloc((size_t)B * D * sizeof(float));
    cl->logits = mimic_alloc((size_t)B * cl->K * sizeof(float));
    if (!cl->feat || !cl->logits)
        return mimic_err(MIMIC_ENOMEM, "%s: out of memory for the classifier's logits", name);
    return 0;
}

/* How many of the n images whose encoder output is in a the classifier labels right;
 * feat: their cls features when the caller has them (NULL: taken from a here). A label
 * outside the classifier's classes is an error naming the data set (path). */
static long classifier_right(classifier_t *cl, const encoder_acts_t *a, const float *feat,
                             const int *y, int n, const char *path) {
    if (!feat) {
        encoder_features(cl->feat, a, ENCODER_POOL_CLS);
        feat = cl->feat;
    }
    linear_forward(cl->logits, feat, cl->w, cl->b, n, cl->D, cl->K);
    long right = 0;
    for (int i = 0; i < n; i++) {
        if (y[i] >= cl->K)
            return mimic_err(MIMIC_EINVAL,
                             "%s: label %d is outside the %d classes of " HEAD_WEIGHT " in %s",
                             path, y[i], cl->K, cl->name);
        const float *l = cl->logits + (size_t)i * cl->K;
        int best = 0;
        for (int k = 1; k < cl->K; k++)
            if (l[k] > l[best]) best = k;
        right += best == y[i];
    }
    return right;
}

/* Registers the classifier of the model file f after the encoder in p, with the shape its
 * head.weight claims (K rows of the encoder's D): classifier_read then checks both
 * tensors against it, and the errors name the file and the tensor. */
static int classifier_add(params_t *p, const st_file_t *f, int D, int64_t shape[2]) {
    const st_tensor_t *w = st_find(f, HEAD_WEIGHT), *b = st_find(f, HEAD_BIAS);
    shape[0] = shape[1] = 0;
    if (!w && !b) return 0;
    if (!w || !b)
        return mimic_err(MIMIC_EFORMAT,
                         "%s: no tensor \"%s\" beside \"%s\" (a classifier needs both)", st_path(f),
                         w ? HEAD_BIAS : HEAD_WEIGHT, w ? HEAD_WEIGHT : HEAD_BIAS);
    shape[0] = w->ndim >= 1 ? w->shape[0] : 1;
    shape[1] = D;
    if (shape[0] < 1)
        return mimic_err(MIMIC_ESHAPE, "%s: tensor \"" HEAD_WEIGHT "\" has no rows (classes)",
                         st_path(f));
    int rc = params_add(p, HEAD_WEIGHT, 2, shape);
    if (rc >= 0) rc = params_add(p, HEAD_BIAS, 1, shape);
    return rc < 0 ? rc : 0;
}

static int classifier_read(params_t *p, const st_file_t *f, const int64_t shape[2]) {
    if (shape[0] == 0) return 0;
    int rc = st_read_f32(f, HEAD_WEIGHT, params_w(p, params_find(p, HEAD_WEIGHT)), shape, 2);
    if (!rc) rc = st_read_f32(f, HEAD_BIAS, params_w(p, params_find(p, HEAD_BIAS)), shape, 1);
    return rc;
}

/* ---- feature extraction ---- */

typedef struct {
    const char *what; /* "train" / "test" */
    float *x;         /* (n, dim) */
    int *y;           /* (n) */
    uint32_t *ids;    /* (n) the data set index of each row, when want_ids (else NULL) */
    int want_ids;
    int n, dim, classes;
    long head_right; /* samples the model's classifier labels right */
    double secs;
} feats_t;

static void feats_free(feats_t *f) {
    free(f->x);
    free(f->y);
    free(f->ids);
    f->x = NULL;
    f->y = NULL;
    f->ids = NULL;
}

/* The indices of the samples of idx[0..want) that the loader kept (got of them), in
 * order: all of them, or, when some were unreadable, each sample is asked for alone
 * (a rare path: the loader warned once per bad sample already). */
static int kept_ids(uint32_t *out, loader_t *ld, const uint32_t *idx, int want, int got,
                    size_t img_sz) {
    if (got == want) {
        memcpy(out, idx, (size_t)want * sizeof *idx);
        return 0;
    }
    float *one = malloc(img_sz * loader_views(ld) * sizeof(float));
    if (!one) return mimic_err(MIMIC_ENOMEM, "out of memory");
    int k = 0, rc = 0;
    for (int i = 0; i < want && k < got; i++) {
        int label, r = loader_fill(ld, idx + i, 1, 0, one, NULL, 0, &label);
        if (r < 0) {
            rc = r;
            break;
        }
        if (r == 1) out[k++] = idx[i];
    }
    free(one);
    if (!rc && k != got) rc = mimic_err(MIMIC_EIO, "the data set changed while it was read");
    return rc;
}

/* The loader's configuration for one set: no augmentation. With scale_min = scale_max
 * = 1 RandomResizedCrop takes the whole image (a square one; other shapes get the
 * central crop of aspect ratio within [3/4, 4/3]) and resizes it to model.img_size, so
 * every pass gives the same pixels; hflip 0 turns mirroring off. */
static void set_loader_cfg(mimic_cfg_t *lc, const mimic_cfg_t *cfg, const eval_cfg_t *ec,
                           int train) {
    *lc = *cfg;
    const char *path = train ? ec->train_path : ec->test_path;
    const char *labels = train ? ec->train_labels : ec->test_labels;
    const char *usage = train ? ec->train_usage : ec->test_usage;
    if (ec->kind[0]) snprintf(lc->data.kind, sizeof lc->data.kind, "%s", ec->kind);
    if (!train || path[0]) { /* an empty train_path keeps data.path/labels/usage */
        snprintf(lc->data.path, sizeof lc->data.path, "%s", path);
        snprintf(lc->data.labels, sizeof lc->data.labels, "%s", labels);
        snprintf(lc->data.usage, sizeof lc->data.usage, "%s", usage);
    }
    lc->data.scale_min = lc->data.scale_max = 1.0f;
    lc->data.hflip = 0;
}

static int extract(feats_t *f, const mimic_cfg_t *cfg, const eval_cfg_t *ec, const encoder_t *e,
                   const params_t *p, classifier_t *cl, int train) {
    mimic_cfg_t *lc = malloc(sizeof *lc);
    loader_t *ld = NULL;
    float *imgs = NULL;
    uint32_t *idx = NULL;
    encoder_acts_t a;
    memset(&a, 0, sizeof a);
    int rc = MIMIC_ENOMEM;
    if (!lc) goto out;
    set_loader_cfg(lc, cfg, ec, train);
    const char *path = lc->data.path;
    if (!path[0]) {
        rc = mimic_err(MIMIC_EINVAL, "config eval.%s_path: no %s set given", f->what, f->what);
        goto out;
    }
    if ((rc = loader_new(&ld, lc))) goto out;
    f->classes = loader_num_classes(ld);
    if (f->classes <= 0) {
        rc = mimic_err(MIMIC_EINVAL,
                       "%s: the data set has no labels; evaluation needs them (eval.%s_labels or "
                       "data.labels)",
                       path, f->what);
        goto out;
    }
    if (cl && cl->w && cl->K < f->classes) {
        /* a classifier for other labels (CRS-CONT's coarse groups): the frozen-encoder
         * probe and k-NN still run; its own accuracy has no meaning here */
        mimic_log("eval: %s of %s has %d classes, the labels of %s %d: its accuracy is not "
                  "reported",
                  HEAD_WEIGHT, cl->name, cl->K, path, f->classes);
        cl->w = NULL;
    }
    long limit = train ? ec->train_limit : ec->test_limit;
    size_t total = loader_size(ld);
    if (limit > 0 && (size_t)limit < total) total = (size_t)limit;
    if (total > (1u << 30)) {
        rc = mimic_err(MIMIC_EINVAL, "%s: %zu samples is too many to cache", path, total);
        goto out;
    }
    int C = cfg->model.in_chans, S = cfg->model.img_size;
    int B = (size_t)ec->batch_size < total ? ec->batch_size : (int)total;
    size_t img_sz = (size_t)C * S * S;
    int pixels = ec->features == EVAL_FEATURES_PIXELS;
    f->dim = pixels ? (int)img_sz : e->dim;
    f->x = malloc(total * (size_t)f->dim * sizeof(float));
    f->y = malloc(total * sizeof(int));
    if (f->want_ids && !(f->ids = malloc(total * sizeof *f->ids))) {
        rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory for %zu sample indices", path, total);
        goto out;
    }
    imgs = malloc((size_t)B * img_sz * sizeof(float));
    idx = malloc((size_t)B * sizeof *idx);
    if (!f->x || !f->y || !imgs || !idx) {
        rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory for %zu features of %d floats", path, total,
                       f->dim);
        goto out;
    }
    if (!pixels && (rc = encoder_acts_alloc(&a, e, B, e->L))) goto out;
    double t0 = mimic_now(), next_log = t0 + 30.0;
    f->n = 0;
    for (size_t i0 = 0; i0 < total; i0 += (size_t)B) {
        int want = total - i0 < (size_t)B ? (int)(total - i0) : B;
        for (int i = 0; i < want; i++)
            idx[i] = (uint32_t)(i0 + (size_t)i);
        int got = loader_fill(ld, idx, want, 0, imgs, NULL, 0, f->y + f->n);
        if (got < 0) {
            rc = got;
            goto out;
        }
        if (got == 0) continue; /* every sample of the batch was corrupt (warned) */
        if (f->ids && (rc = kept_ids(f->ids + f->n, ld, idx, want, got, img_sz))) goto out;
        for (int i = 0; i < got; i++)
            if (f->y[f->n + i] < 0) {
                rc = mimic_err(MIMIC_EINVAL, "%s: sample without a label; evaluation needs labels",
                               path);
                goto out;
            }
        float *dst = f->x + (size_t)f->n * f->dim;
        if (pixels) {
            memcpy(dst, imgs, (size_t)got * img_sz * sizeof(float));
        } else {
            encoder_acts_resize(&a, got);
            encoder_forward(e, p, &a, imgs, NULL, e->L);
            encoder_features(dst, &a, ec->pool);
            long right = 0;
            if (cl->w &&
                (right = classifier_right(cl, &a, ec->pool == ENCODER_POOL_CLS ? dst : NULL,
                                          f->y + f->n, got, path)) < 0) {
                rc = (int)right;
                goto out;
            }
            f->head_right += right;
        }
        f->n += got;
        if (mimic_now() > next_log) {
            double dt = mimic_now() - t0;
            mimic_log("[eval] %s features %d/%zu (%.0f img/s)", f->what, f->n, total, f->n / dt);
            next_log += 30.0;
        }
    }
    f->secs = mimic_now() - t0;
    if (f->n == 0) rc = mimic_err(MIMIC_EINVAL, "%s: no readable sample", path);
out:
    encoder_acts_free(&a);
    loader_destroy(&ld);
    free(imgs);
    free(idx);
    free(lc);
    return rc;
}

/* ---- the evaluation ---- */

static int check_model(const mimic_cfg_t *cfg, const encoder_t *e) {
    const mae_cfg_t *m = &cfg->model;
    if (m->img_size != e->img_size || m->in_chans != e->in_chans)
        return mimic_err(
            MIMIC_EINVAL,
            "eval: model.img_size/in_chans (%d, %d) differ from the encoder's (%d, %d)",
            m->img_size, m->in_chans, e->img_size, e->in_chans);
    return 0;
}

static void write_json(const char *out_json, const char *name, const eval_cfg_t *ec,
                       const eval_result_t *r) {
    metrics_t m;
    if (metrics_open(&m, out_json)) {
        mimic_warn("eval: cannot open %s; results only printed", out_json);
        return;
    }
    metrics_begin(&m, "eval");
    metrics_str(&m, "name", name);
    metrics_str(&m, "features", feature_names[ec->features]);
    metrics_str(&m, "pool", pool_names[ec->pool]);
    metrics_int(&m, "dim", r->dim);
    metrics_int(&m, "classes", r->classes);
    metrics_int(&m, "n_train", r->n_train);
    metrics_int(&m, "n_test", r->n_test);
    metrics_num(&m, "probe_top1", r->probe_test_top1);
    metrics_num(&m, "probe_train_top1", r->probe_train_top1);
    metrics_num(&m, "probe_loss", r->probe_loss);
    metrics_int(&m, "probe_epochs", ec->probe_epochs);
    metrics_num(&m, "probe_lr", ec->probe_lr);
    metrics_num(&m, "knn_temp", ec->knn_temp);
    char key[64];
    for (int q = 0; q < r->knn_nk; q++) {
        snprintf(key, sizeof key, "knn%d_top1", r->knn[q].k);
        metrics_num(&m, key, r->knn[q].top1);
        snprintf(key, sizeof key, "knn%d_recall", r->knn[q].k);
        metrics_num(&m, key, r->knn[q].recall);
    }
    if (r->finetune) {
        metrics_num(&m, "finetune_top1", r->finetune_top1);
        metrics_num(&m, "finetune_train_top1", r->finetune_train_top1);
        metrics_int(&m, "finetune_classes", r->finetune_classes);
    }
    metrics_num(&m, "t_extract_train", r->t_extract_train);
    metrics_num(&m, "t_extract_test", r->t_extract_test);
    metrics_num(&m, "t_probe", r->t_probe);
    metrics_num(&m, "t_knn", r->t_knn);
    metrics_end(&m);
    metrics_close(&m);
}

void eval_print(FILE *f, const eval_result_t *r) {
    fprintf(f, "eval: %d train / %d test samples, %d classes, features of %d floats\n", r->n_train,
            r->n_test, r->classes, r->dim);
    fprintf(f, "  %-14s top-1 %6.2f%%  (train %.2f%%, loss %.4f)\n", "linear probe",
            100 * r->probe_test_top1, 100 * r->probe_train_top1, r->probe_loss);
    if (r->finetune)
        fprintf(f, "  %-14s top-1 %6.2f%%  (train %.2f%%, the model's own head, %d classes)\n",
                "fine-tuned", 100 * r->finetune_top1, 100 * r->finetune_train_top1,
                r->finetune_classes);
    for (int q = 0; q < r->knn_nk; q++) {
        char name[32];
        snprintf(name, sizeof name, "k-NN k=%d", r->knn[q].k);
        fprintf(f, "  %-14s top-1 %6.2f%%  recall@%d %6.2f%%\n", name, 100 * r->knn[q].top1,
                r->knn[q].k, 100 * r->knn[q].recall);
    }
    fprintf(f, "  time: features train %.1f s, test %.1f s; probe %.1f s; k-NN %.1f s\n",
            r->t_extract_train, r->t_extract_test, r->t_probe, r->t_knn);
}

int eval_run_model(const mimic_cfg_t *cfg, const eval_cfg_t *ec, const encoder_t *e,
                   const params_t *p, const char *name, const char *out_json, eval_result_t *res) {
    eval_result_t local;
    eval_result_t *r = res ? res : &local;
    memset(r, 0, sizeof *r);
    feats_t tr = {.what = "train"}, te = {.what = "test"};
    classifier_t cl = {0};
    int pixels = ec->features == EVAL_FEATURES_PIXELS, rc;
    if (!pixels && (!e || !p))
        return mimic_err(MIMIC_EINVAL, "eval: encoder features need an encoder");
    if (ec->batch_size < 1) return mimic_err(MIMIC_EINVAL, "config eval.batch_size: must be >= 1");
    if (ec->probe_epochs < 1 || ec->probe_batch < 2 || !(ec->probe_lr > 0))
        return mimic_err(MIMIC_EINVAL,
                         "config eval.probe_epochs/probe_batch/probe_lr: need >= 1, "
                         ">= 2 and > 0 (got %d, %d, %g)",
                         ec->probe_epochs, ec->probe_batch, ec->probe_lr);
    if (!pixels && (rc = check_model(cfg, e))) return rc;
    if (!pixels && (rc = classifier_find(&cl, p, e->dim, ec->batch_size, name ? name : "model")))
        goto out;
    if ((rc = extract(&tr, cfg, ec, e, p, &cl, 1)) || (rc = extract(&te, cfg, ec, e, p, &cl, 0)))
        goto out;
    r->n_train = tr.n;
    r->n_test = te.n;
    r->dim = tr.dim;
    r->classes = tr.classes > te.classes ? tr.classes : te.classes;
    r->t_extract_train = tr.secs;
    r->t_extract_test = te.secs;
    if (cl.w) {
        r->finetune = 1;
        r->finetune_classes = cl.K;
        r->finetune_top1 = (double)te.head_right / te.n;
        r->finetune_train_top1 = (double)tr.head_right / tr.n;
    }

    probe_cfg_t pc = {ec->probe_epochs,       ec->probe_batch < tr.n ? ec->probe_batch : tr.n,
                      ec->probe_lr,           ec->probe_momentum,
                      ec->probe_weight_decay, cfg->train.seed};
    probe_result_t pr;
    double t0 = mimic_now();
    if ((rc = probe_run(&pr, &pc, tr.x, tr.y, tr.n, te.x, te.y, te.n, tr.dim, r->classes)))
        goto out;
    r->t_probe = mimic_now() - t0;
    r->probe_train_top1 = pr.train_top1;
    r->probe_test_top1 = pr.test_top1;
    r->probe_loss = pr.last_loss;

    int ks[EVAL_MAX_KS], nk = 0;
    for (int q = 0; q < ec->knn_nk; q++)
        if (ec->knn_k[q] <= tr.n) ks[nk++] = ec->knn_k[q];
    t0 = mimic_now();
    if (nk && (rc = knn_run(r->knn, ks, nk, ec->knn_temp, tr.x, tr.y, tr.n, te.x, te.y, te.n,
                            tr.dim, r->classes)))
        goto out;
    r->knn_nk = nk;
    r->t_knn = mimic_now() - t0;
    write_json(out_json, name ? name : "", ec, r);
out:
    classifier_free(&cl);
    feats_free(&tr);
    feats_free(&te);
    return rc;
}

static const char *model_key_diff(const mae_cfg_t *a, const mae_cfg_t *b) {
    if (a->img_size != b->img_size) return "img_size";
    if (a->in_chans != b->in_chans) return "in_chans";
    if (a->patch_size != b->patch_size) return "patch_size";
    if (a->embed_dim != b->embed_dim) return "embed_dim";
    if (a->depth != b->depth) return "depth";
    if (a->num_heads != b->num_heads) return "num_heads";
    if (a->mlp_ratio != b->mlp_ratio) return "mlp_ratio";
    return NULL;
}

int eval_run(const mimic_cfg_t *cfg, const eval_cfg_t *ec, const char *encoder_path,
             const char *out_json, eval_result_t *res) {
    if (ec->features == EVAL_FEATURES_PIXELS)
        return eval_run_model(cfg, ec, NULL, NULL, "pixels", out_json, res);
    int random = ec->features == EVAL_FEATURES_RANDOM;
    if (!random && (!encoder_path || !encoder_path[0]))
        return mimic_err(MIMIC_EINVAL, "eval: eval.features=encoder needs an encoder file");
    mimic_cfg_t *c = malloc(sizeof *c);
    params_t *p = params_new();
    st_file_t *f = NULL;
    int64_t head[2] = {0, 0};
    encoder_t e;
    memset(&e, 0, sizeof e);
    int rc = MIMIC_ENOMEM;
    if (!c || !p) goto out;
    *c = *cfg;
    if (!random) {
        if ((rc = encoder_cfg_from_file(&c->model, encoder_path))) goto out;
        const char *diff = model_key_diff(&c->model, &cfg->model);
        if (diff)
            mimic_log("[eval] %s: model.%s (and any other [model] key) taken from the file",
                      encoder_path, diff);
    }
    if ((rc = encoder_register(&e, p, &c->model))) goto out;
    /* a fine-tuned model's classifier comes along (a file without one is no error) */
    if (!random && ((rc = st_open(&f, encoder_path)) || (rc = classifier_add(p, f, e.dim, head))))
        goto out;
    if ((rc = params_finalize(p))) goto out;
    if (random) {
        rng_t r;
        rng_seed(&r, cfg->train.seed);
        encoder_init(&e, p, &r);
        encoder_path = "random-init";
    } else if ((rc = encoder_load(&e, p, encoder_path)) || (rc = classifier_read(p, f, head))) {
        goto out;
    }
    st_close(&f);
    rc = eval_run_model(c, ec, &e, p, encoder_path, out_json, res);
out:
    st_close(&f);
    encoder_free(&e);
    params_destroy(&p);
    free(c);
    return rc;
}

int eval_extract(eval_set_t *set, const mimic_cfg_t *cfg, const eval_cfg_t *ec, const encoder_t *e,
                 const params_t *p, int train) {
    feats_t f = {.what = train ? "train" : "test", .want_ids = 1};
    classifier_t none = {0}; /* the model's own classifier is not scored here */
    memset(set, 0, sizeof *set);
    int pixels = ec->features == EVAL_FEATURES_PIXELS, rc;
    if (!pixels && (!e || !p))
        return mimic_err(MIMIC_EINVAL, "eval: encoder features need an encoder");
    if (ec->batch_size < 1) return mimic_err(MIMIC_EINVAL, "config eval.batch_size: must be >= 1");
    if (!pixels && (rc = check_model(cfg, e))) return rc;
    if ((rc = extract(&f, cfg, ec, e, p, &none, train))) {
        feats_free(&f);
        return rc;
    }
    *set = (eval_set_t){f.x, f.y, f.ids, f.n, f.dim, f.classes};
    return 0;
}

void eval_set_free(eval_set_t *set) {
    free(set->x);
    free(set->y);
    free(set->ids);
    memset(set, 0, sizeof *set);
}
