// TIMEOUT: 120
/* test_eval — frozen-encoder evaluation (eval/): a hand-computed k-NN case (cosine,
 * majority and weighted votes, ties, recall@k), probe and k-NN near 100% on features
 * separable by construction, recall@k >= top-1 and monotone in k, eval_run end to end
 * on a class-dependent IDX set (pixels, random init, an exported MAE encoder from file
 * and from memory, deterministic extraction), a mimic stage's model file whose classifier
 * is set to known values (its accuracy against one computed here), and clear errors for
 * bad input (a classifier of the wrong shape among them). */
#include "checkpoint.h"
#include "common.h"
#include "eval.h"
#include "knn.h"
#include "loader.h"
#include "mae.h"
#include "probe.h"
#include "safetensors.h"
#include "stage.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* train: a (1,0) class 0, b (0.8,0.6)*5 class 1, c (0,1)*0.5 class 1, d (-1,0) class 2;
 * test: q1 (1,0.2) class 1 ranks a .981, b .902, c .196, d -.981; q2 (0,-1) class 2
 * ranks a 0 = d 0 (lower index first), b -.6, c -1. */
static void test_knn_hand(void) {
    const float train[] = {1, 0, 4, 3, 0, 0.5f, -1, 0}, test[] = {1, 0.2f, 0, -1};
    const int ytrain[] = {0, 1, 1, 2}, ytest[] = {1, 2}, ks[] = {1, 2, 3, 4};
    knn_result_t r[4];
    T_CHECK(knn_run(r, ks, 4, 0.0f, train, ytrain, 4, test, ytest, 2, 2, 3) == 0);
    /* majority: k=1 a|a wrong; k=2 tie 0:1 vs 1:1 -> nearest a (0); q2 tie -> a (0);
     * k=3 q1 class 1 right, q2 a,d,b all tied -> a wrong; k=4 q1 class 1 right, q2 a,d,b,c:
     * 1 has two votes -> wrong */
    double top1[] = {0, 0, 0.5, 0.5}, recall[] = {0, 1, 1, 1};
    for (int q = 0; q < 4; q++) {
        T_CHECK(r[q].k == ks[q]);
        T_CHECK(fabs(r[q].top1 - top1[q]) < 1e-12);
        T_CHECK(fabs(r[q].recall - recall[q]) < 1e-12);
    }
    /* weighted (T 0.07): q1 k=3: exp(.981/.07) = 1.2e6 for 0 vs exp(.902/.07) + exp(.196/.07)
     * = 3.9e5 for 1 -> class 0, wrong; q2 k=4: 0 and 2 weigh exp(0) each, class 1
     * exp(-.6/.07) + exp(-1/.07), so the tie 0/2 goes to a -> wrong */
    T_CHECK(knn_run(r, ks, 4, 0.07f, train, ytrain, 4, test, ytest, 2, 2, 3) == 0);
    T_CHECK(r[2].top1 == 0.0 && r[3].top1 == 0.0 && r[2].recall == 1.0);
    /* k out of range and bad labels are named */
    mimic_set_quiet(1);
    const int k5 = 5;
    T_CHECK(knn_run(r, &k5, 1, 0.0f, train, ytrain, 4, test, ytest, 2, 2, 3) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "k = 5") != NULL);
    const int badlab[] = {0, 1, 7, 2};
    T_CHECK(knn_run(r, ks, 1, 0.0f, train, badlab, 4, test, ytest, 2, 2, 3) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "label 7") != NULL);
    mimic_set_quiet(0);
}

/* Class c has centroid 3 * e_c (+ an offset shared by all classes) plus noise N(0, 0.5^2)
 * per coordinate: linearly separable with a margin, and nearest neighbours agree. */
static void make_blobs(float *x, int *y, int n, int D, int K, rng_t *r) {
    for (int i = 0; i < n; i++) {
        y[i] = i % K;
        for (int d = 0; d < D; d++)
            x[(size_t)i * D + d] = (d == y[i] ? 3.0f : 0.0f) + 1.0f + 0.5f * rng_normal(r);
    }
}

static void test_separable(void) {
    enum { D = 16, K = 4, NTR = 400, NTE = 200 };
    float *xtr = malloc(sizeof(float) * NTR * D), *xte = malloc(sizeof(float) * NTE * D);
    int ytr[NTR], yte[NTE];
    rng_t r;
    rng_seed(&r, 3);
    make_blobs(xtr, ytr, NTR, D, K, &r);
    make_blobs(xte, yte, NTE, D, K, &r);
    probe_cfg_t pc = {.epochs = 20, .batch = 32, .lr = 0.1f, .momentum = 0.9f, .seed = 1};
    probe_result_t pr;
    T_CHECK(probe_run(&pr, &pc, xtr, ytr, NTR, xte, yte, NTE, D, K) == 0);
    printf("separable: probe top-1 %.3f (train %.3f, loss %.4f)\n", pr.test_top1, pr.train_top1,
           pr.last_loss);
    T_CHECK(pr.test_top1 >= 0.98 && pr.train_top1 >= 0.98);
    const int ks[] = {1, 5, 20, 50};
    knn_result_t kr[4];
    for (int t = 0; t < 2; t++) {
        T_CHECK(knn_run(kr, ks, 4, t ? 0.07f : 0.0f, xtr, ytr, NTR, xte, yte, NTE, D, K) == 0);
        for (int q = 0; q < 4; q++) {
            printf("separable: k-NN k=%d temp %g top-1 %.3f recall %.3f\n", ks[q], t ? 0.07 : 0.0,
                   kr[q].top1, kr[q].recall);
            T_CHECK(kr[q].top1 >= 0.97);
            T_CHECK(kr[q].recall >= kr[q].top1);
            if (q) T_CHECK(kr[q].recall >= kr[q - 1].recall);
        }
        T_CHECK(kr[0].top1 == kr[0].recall); /* k = 1: the vote is the neighbour */
    }
    /* the probe refuses what it cannot train */
    mimic_set_quiet(1);
    pc.batch = 1;
    T_CHECK(probe_run(&pr, &pc, xtr, ytr, NTR, xte, yte, NTE, D, K) == MIMIC_EINVAL);
    pc.batch = 32;
    ytr[5] = K;
    T_CHECK(probe_run(&pr, &pc, xtr, ytr, NTR, xte, yte, NTE, D, K) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "sample 5") != NULL);
    mimic_set_quiet(0);
    free(xtr);
    free(xte);
}

/* ---- end to end on IDX files ---- */

#define SIDE 16

static void be32(FILE *f, uint32_t v) {
    unsigned char b[4] = {v >> 24, v >> 16, v >> 8, v};
    fwrite(b, 1, 4, f);
}

/* n images of class i % 10: a bright 4x4 square (patch c of the 4x4 grid) on a dark
 * background with a little noise (0..3 of 255: an untrained encoder's features vary
 * little between classes, about 0.03 of a unit-variance feature, so stronger noise would
 * hide the classes from it); labels file only when labels != NULL. */
static void write_idx(const char *images, const char *labels, int n, unsigned long long seed) {
    FILE *f = fopen(images, "wb");
    T_CHECK(f != NULL);
    if (!f) return;
    be32(f, 0x803);
    be32(f, (uint32_t)n);
    be32(f, SIDE);
    be32(f, SIDE);
    for (int i = 0; i < n; i++) {
        int c = i % 10, cx = (c % 4) * 4, cy = (c / 4) * 4;
        for (int y = 0; y < SIDE; y++)
            for (int x = 0; x < SIDE; x++) {
                seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
                int v = (int)(seed >> 62); /* 0..3 */
                if (x >= cx && x < cx + 4 && y >= cy && y < cy + 4) v += 160;
                fputc(v, f);
            }
    }
    fclose(f);
    if (!labels) return;
    f = fopen(labels, "wb");
    T_CHECK(f != NULL);
    if (!f) return;
    be32(f, 0x801);
    be32(f, (uint32_t)n);
    for (int i = 0; i < n; i++)
        fputc(i % 10, f);
    fclose(f);
}

static char tr_img[CFG_PATH_MAX], tr_lab[CFG_PATH_MAX], te_img[CFG_PATH_MAX], te_lab[CFG_PATH_MAX],
    enc_path[CFG_PATH_MAX];

static void base_cfg(mimic_cfg_t *c, eval_cfg_t *ec) {
    config_defaults(c);
    c->model = (mae_cfg_t){.img_size = SIDE,
                           .in_chans = 1,
                           .patch_size = 4,
                           .embed_dim = 16,
                           .depth = 1,
                           .num_heads = 2,
                           .mlp_ratio = 2,
                           .decoder_embed_dim = 8,
                           .decoder_depth = 1,
                           .decoder_num_heads = 2,
                           .mask_ratio = 0.75f,
                           .norm_pix_loss = 1};
    snprintf(c->data.kind, sizeof c->data.kind, "idx");
    snprintf(c->data.path, sizeof c->data.path, "%s", tr_img);
    snprintf(c->data.labels, sizeof c->data.labels, "%s", tr_lab);
    c->data.mean[0] = 0.3f;
    c->data.std[0] = 0.3f;
    snprintf(c->eval.test_path, sizeof c->eval.test_path, "%s", te_img);
    snprintf(c->eval.test_labels, sizeof c->eval.test_labels, "%s", te_lab);
    c->eval.batch_size = 32;
    c->eval.probe_batch = 32;
    T_CHECK(config_override(c, "eval.knn_k=1,5,20") == 0);
    T_CHECK(eval_cfg_from(ec, c) == 0);
}

static int same_result(const eval_result_t *a, const eval_result_t *b) {
    int same = a->n_train == b->n_train && a->n_test == b->n_test && a->dim == b->dim &&
               a->probe_test_top1 == b->probe_test_top1 && a->probe_loss == b->probe_loss &&
               a->knn_nk == b->knn_nk;
    for (int q = 0; same && q < a->knn_nk; q++)
        same = a->knn[q].top1 == b->knn[q].top1 && a->knn[q].recall == b->knn[q].recall;
    return same;
}

static void test_end_to_end(void) {
    const char *dir = testutil_tmpdir();
    snprintf(tr_img, sizeof tr_img, "%s/train-img.idx", dir);
    snprintf(tr_lab, sizeof tr_lab, "%s/train-lab.idx", dir);
    snprintf(te_img, sizeof te_img, "%s/test-img.idx", dir);
    snprintf(te_lab, sizeof te_lab, "%s/test-lab.idx", dir);
    snprintf(enc_path, sizeof enc_path, "%s/encoder.safetensors", dir);
    write_idx(tr_img, tr_lab, 300, 1);
    write_idx(te_img, te_lab, 100, 2);
    mimic_cfg_t *c = malloc(sizeof *c);
    eval_cfg_t ec;
    eval_result_t r, r2;
    char json[4200];
    snprintf(json, sizeof json, "%s/eval.jsonl", dir);

    base_cfg(c, &ec);
    ec.features = EVAL_FEATURES_PIXELS;
    T_CHECK(eval_run(c, &ec, NULL, json, &r) == 0);
    eval_print(stdout, &r);
    T_CHECK(r.n_train == 300 && r.n_test == 100 && r.dim == SIDE * SIDE && r.classes == 10);
    T_CHECK(r.probe_test_top1 >= 0.98 && r.knn[0].top1 >= 0.98);
    for (int q = 0; q < r.knn_nk; q++)
        T_CHECK(r.knn[q].recall >= r.knn[q].top1);
    char *s = testutil_slurp(json);
    T_CHECK(s && strstr(s, "\"event\":\"eval\"") && strstr(s, "\"features\":\"pixels\"") &&
            strstr(s, "\"knn20_recall\":") && strstr(s, "\"probe_top1\":"));
    free(s);

    /* an MAE's exported encoder: from the file (its metadata overrides model.*, here a
     * wrong embed_dim) equals the same weights in memory, and extraction is
     * deterministic (no augmentation) */
    mae_t *m = NULL;
    T_CHECK(mae_new(&m, &c->model) == 0);
    mae_init(m, 9);
    T_CHECK(checkpoint_export_encoder(enc_path, m) == 0);
    ec.features = EVAL_FEATURES_ENCODER;
    T_CHECK(eval_run_model(c, &ec, &m->enc, m->p, "memory", NULL, &r) == 0);
    eval_print(stdout, &r);
    T_CHECK(r.dim == 16 && r.n_train == 300 && r.probe_test_top1 >= 0.9 && r.knn[0].top1 >= 0.9);
    c->model.embed_dim = 32;
    T_CHECK(eval_run(c, &ec, enc_path, json, &r2) == 0);
    T_CHECK(same_result(&r, &r2));
    c->model.embed_dim = 16;
    ec.pool = ENCODER_POOL_AVG;
    T_CHECK(eval_run(c, &ec, enc_path, NULL, &r2) == 0);
    eval_print(stdout, &r2);
    T_CHECK(r2.dim == 16 && r2.probe_test_top1 >= 0.9 && r2.knn[0].top1 >= 0.9);
    ec.pool = ENCODER_POOL_CLS;
    ec.features = EVAL_FEATURES_RANDOM;
    ec.train_limit = 100;
    ec.test_limit = 50;
    T_CHECK(eval_run(c, &ec, NULL, NULL, &r) == 0);
    T_CHECK(eval_run(c, &ec, NULL, NULL, &r2) == 0);
    T_CHECK(r.n_train == 100 && r.n_test == 50 && same_result(&r, &r2));
    mae_destroy(&m);
    free(c);
}

/* Writes the first n tensors of p by name, with no metadata (as a timm state_dict
 * saved with safetensors would be), leaving out `drop`. */
static void write_plain(const char *out, const params_t *p, int n, const char *drop) {
    st_writer_t *w = st_writer_new();
    for (int i = 0; i < n; i++)
        if (!drop || strcmp(p->t[i].name, drop) != 0)
            T_CHECK(st_writer_add(w, p->t[i].name, "F32", p->t[i].shape, p->t[i].ndim,
                                  params_w(p, i)) == 0);
    T_CHECK(st_writer_save(w, out) == 0);
    st_writer_destroy(&w);
}

/* ---- the model's own classifier (a fine-tuned head) ---- */

enum { NCLS = 10 };

/* The cls features (n, D) of the first n images of a set, computed here: the loader in its
 * evaluation mode (whole image, no augmentation), the encoder, the cls row. */
static float *cls_features(const mimic_cfg_t *c, const char *img, const char *lab, int n,
                           const encoder_t *e, const params_t *p, int *y) {
    mimic_cfg_t *lc = malloc(sizeof *lc);
    *lc = *c;
    snprintf(lc->data.path, sizeof lc->data.path, "%s", img);
    snprintf(lc->data.labels, sizeof lc->data.labels, "%s", lab);
    loader_t *ld = NULL;
    T_CHECK(loader_new(&ld, lc) == 0);
    loader_set_eval(ld, 1);
    float *imgs = malloc(sizeof(float) * (size_t)n * SIDE * SIDE), *f = NULL;
    uint32_t *idx = malloc(sizeof *idx * (size_t)n);
    for (int i = 0; i < n; i++)
        idx[i] = (uint32_t)i;
    T_CHECK(loader_fill(ld, idx, n, 0, imgs, NULL, 0, y) == n);
    encoder_acts_t a;
    T_CHECK(encoder_acts_alloc(&a, e, n, e->L) == 0);
    encoder_forward(e, p, &a, imgs, NULL, e->L);
    f = malloc(sizeof(float) * (size_t)n * e->dim);
    encoder_features(f, &a, ENCODER_POOL_CLS);
    encoder_acts_free(&a);
    loader_destroy(&ld);
    free(imgs);
    free(idx);
    free(lc);
    return f;
}

/* Correct argmax_k (w_k . x + b_k) over n rows, in double. */
static long head_right(const float *w, const float *b, const float *x, const int *y, int n, int D) {
    long right = 0;
    for (int i = 0; i < n; i++) {
        int best = 0;
        double lbest = -INFINITY;
        for (int k = 0; k < NCLS; k++) {
            double l = b[k];
            for (int d = 0; d < D; d++)
                l += (double)w[k * D + d] * x[(size_t)i * D + d];
            if (l > lbest) lbest = l, best = k;
        }
        right += best == y[i];
    }
    return right;
}

/* A model file: the encoder of p (its first ne tensors) and the given head tensors
 * (a NULL one left out). */
static void write_head(const char *out, const params_t *p, int ne, const float *w,
                       const int64_t *wshape, int wndim, const float *b, int64_t bK) {
    st_writer_t *wr = st_writer_new();
    for (int i = 0; i < ne; i++)
        T_CHECK(st_writer_add(wr, p->t[i].name, "F32", p->t[i].shape, p->t[i].ndim,
                              params_w(p, i)) == 0);
    if (w) T_CHECK(st_writer_add(wr, "head.weight", "F32", wshape, wndim, w) == 0);
    if (b) T_CHECK(st_writer_add(wr, "head.bias", "F32", &bK, 1, b) == 0);
    T_CHECK(st_writer_save(wr, out) == 0);
    st_writer_destroy(&wr);
}

static void test_finetune(void) {
    enum { NTR = 300, NTE = 100, D = 16 };
    const char *dir = testutil_tmpdir();
    char model[4300], bad[4300];
    snprintf(model, sizeof model, "%s/mimic-model.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad-head.safetensors", dir);
    mimic_cfg_t *c = malloc(sizeof *c);
    eval_cfg_t ec;
    eval_result_t r, r2;
    base_cfg(c, &ec);
    c->train.stage = STAGE_KIND_MIMIC;
    c->mimic.num_classes = NCLS;

    /* a mimic stage's model at its initialisation; its encoder, here, with the head in
     * the same params_t as eval_run keeps it */
    stage_t *s = NULL;
    T_CHECK(stage_new(&s, c, 2) == 0);
    if (!s) return;
    s->ops->init(s, 5);
    params_t *p = params_new();
    encoder_t e;
    const int64_t wshape[2] = {NCLS, D}, bshape[1] = {NCLS};
    T_CHECK(encoder_register(&e, p, &c->model) == 0);
    int iw = params_add(p, "head.weight", 2, wshape), ib = params_add(p, "head.bias", 1, bshape);
    T_CHECK(iw >= 0 && ib >= 0 && params_finalize(p) == 0);
    T_CHECK(s->ops->save(s, model, NULL, NULL, 0, 0, 0, NULL) == 0);
    T_CHECK(encoder_load(&e, p, model) == 0);

    /* the head: nearest class mean of the training features, w_k = mu_k, b_k = -|mu_k|^2/2 */
    int ytr[NTR], yte[NTE], cnt[NCLS] = {0};
    float *ftr = cls_features(c, tr_img, tr_lab, NTR, &e, p, ytr);
    float *fte = cls_features(c, te_img, te_lab, NTE, &e, p, yte);
    float *w = params_w(p, iw), *b = params_w(p, ib);
    memset(w, 0, sizeof(float) * NCLS * D);
    for (int i = 0; i < NTR; i++) {
        cnt[ytr[i]]++;
        for (int d = 0; d < D; d++)
            w[ytr[i] * D + d] += ftr[i * D + d];
    }
    for (int k = 0; k < NCLS; k++) {
        double sq = 0;
        for (int d = 0; d < D; d++) {
            w[k * D + d] /= (float)cnt[k];
            sq += (double)w[k * D + d] * w[k * D + d];
        }
        b[k] = (float)(-0.5 * sq);
    }
    long right = head_right(w, b, fte, yte, NTE, D), right_tr = head_right(w, b, ftr, ytr, NTR, D);
    printf("finetune: nearest-mean head right on %ld/%d test, %ld/%d train\n", right, NTE, right_tr,
           NTR);
    T_CHECK(right >= NTE / 2); /* far above chance (10%): the head means something */
    memcpy(params_w(s->p, params_find(s->p, "head.weight")), w, sizeof(float) * NCLS * D);
    memcpy(params_w(s->p, params_find(s->p, "head.bias")), b, sizeof(float) * NCLS);
    T_CHECK(s->ops->save(s, model, NULL, NULL, 0, 0, 0, NULL) == 0);

    char json[4200];
    snprintf(json, sizeof json, "%s/finetune.jsonl", dir);
    T_CHECK(eval_run(c, &ec, model, json, &r) == 0);
    eval_print(stdout, &r);
    T_CHECK(r.finetune == 1 && r.finetune_classes == NCLS);
    T_CHECK(fabs(r.finetune_top1 - (double)right / NTE) < 1e-12);
    T_CHECK(fabs(r.finetune_train_top1 - (double)right_tr / NTR) < 1e-12);
    char *js = testutil_slurp(json);
    T_CHECK(js && strstr(js, "\"finetune_top1\":") && strstr(js, "\"finetune_classes\":10"));
    free(js);
    /* the head reads the cls feature whatever eval.pool the probe uses; in memory too */
    ec.pool = ENCODER_POOL_AVG;
    T_CHECK(eval_run(c, &ec, model, NULL, &r2) == 0);
    T_CHECK(r2.finetune && r2.finetune_top1 == r.finetune_top1);
    ec.pool = ENCODER_POOL_CLS;
    T_CHECK(eval_run_model(c, &ec, &e, p, "memory", NULL, &r2) == 0);
    T_CHECK(r2.finetune && r2.finetune_top1 == r.finetune_top1 &&
            r2.finetune_train_top1 == r.finetune_train_top1);
    /* rows shifted by one class: the reference drops, and eval with it */
    /* room for D + 1 columns: the wrong-shape cases below write it as (NCLS, D + 1) */
    float *wrot = calloc((size_t)NCLS * (D + 1), sizeof(float)), brot[NCLS];
    for (int k = 0; k < NCLS; k++) {
        memcpy(wrot + k * D, w + ((k + 1) % NCLS) * D, sizeof(float) * D);
        brot[k] = b[(k + 1) % NCLS];
    }
    long right_rot = head_right(wrot, brot, fte, yte, NTE, D);
    write_head(bad, p, e.ntensors, wrot, wshape, 2, brot, NCLS);
    T_CHECK(eval_run(c, &ec, bad, NULL, &r2) == 0);
    printf("finetune: shifted head %ld/%d, eval %.3f\n", right_rot, NTE, r2.finetune_top1);
    T_CHECK(right_rot < right && fabs(r2.finetune_top1 - (double)right_rot / NTE) < 1e-12);
    /* a zero weight and a bias that picks one class: every image is called that class; on
     * the first 4 test images (labels 0..3) class 3 is right once, class 5 never */
    float *zero = calloc(NCLS * D, sizeof(float)), pick[NCLS] = {0};
    ec.test_limit = 4;
    for (int k = 3; k <= 5; k += 2) {
        pick[k] = 1.0f;
        write_head(bad, p, e.ntensors, zero, wshape, 2, pick, NCLS);
        T_CHECK(eval_run(c, &ec, bad, NULL, &r2) == 0);
        T_CHECK(r2.n_test == 4 && r2.finetune_top1 == (k == 3 ? 0.25 : 0.0));
        T_CHECK(r2.finetune_train_top1 == 0.1);
        pick[k] = 0.0f;
    }
    ec.test_limit = 0;
    free(zero);
    /* an encoder without a head: no fine-tune row */
    write_head(bad, p, e.ntensors, NULL, NULL, 0, NULL, 0);
    T_CHECK(eval_run(c, &ec, bad, NULL, &r2) == 0 && r2.finetune == 0);

    /* wrong heads are named, with the file */
    mimic_set_quiet(1);
    const int64_t wide[2] = {NCLS, D + 1}, flat[1] = {NCLS * D}, five[2] = {5, D};
    write_head(bad, p, e.ntensors, wrot, wide, 2, brot, NCLS);
    T_CHECK(eval_run(c, &ec, bad, NULL, &r2) == MIMIC_ESHAPE);
    T_CHECK(strstr(mimic_last_error(), bad) && strstr(mimic_last_error(), "head.weight"));
    write_head(bad, p, e.ntensors, wrot, flat, 1, brot, NCLS);
    T_CHECK(eval_run(c, &ec, bad, NULL, &r2) == MIMIC_ESHAPE);
    T_CHECK(strstr(mimic_last_error(), bad) && strstr(mimic_last_error(), "head.weight"));
    write_head(bad, p, e.ntensors, wrot, wshape, 2, brot, NCLS - 1);
    T_CHECK(eval_run(c, &ec, bad, NULL, &r2) == MIMIC_ESHAPE);
    T_CHECK(strstr(mimic_last_error(), bad) && strstr(mimic_last_error(), "head.bias"));
    write_head(bad, p, e.ntensors, wrot, wshape, 2, NULL, 0);
    T_CHECK(eval_run(c, &ec, bad, NULL, &r2) == MIMIC_EFORMAT);
    T_CHECK(strstr(mimic_last_error(), bad) && strstr(mimic_last_error(), "head.bias"));
    /* a head of 5 classes on labels 0..9 (another label set: CRS-CONT's coarse groups):
     * the encoder is evaluated, the head's accuracy is not reported */
    write_head(bad, p, e.ntensors, wrot, five, 2, brot, 5);
    T_CHECK(eval_run(c, &ec, bad, NULL, &r2) == 0);
    T_CHECK(r2.finetune == 0 && r2.classes == NCLS && r2.probe_test_top1 > 0.2);
    /* in memory: a bias that does not match */
    params_t *q = params_new();
    encoder_t e2;
    const int64_t nine[1] = {NCLS - 1};
    T_CHECK(encoder_register(&e2, q, &c->model) == 0);
    T_CHECK(params_add(q, "head.weight", 2, wshape) >= 0 &&
            params_add(q, "head.bias", 1, nine) >= 0);
    T_CHECK(params_finalize(q) == 0);
    T_CHECK(eval_run_model(c, &ec, &e2, q, "in-memory", NULL, &r2) == MIMIC_ESHAPE);
    T_CHECK(strstr(mimic_last_error(), "in-memory") && strstr(mimic_last_error(), "head.bias"));
    mimic_set_quiet(0);

    encoder_free(&e2);
    params_destroy(&q);
    free(wrot);
    free(ftr);
    free(fte);
    encoder_free(&e);
    params_destroy(&p);
    stage_destroy(&s);
    free(c);
}

static void test_bad_input(void) {
    const char *dir = testutil_tmpdir();
    char missing[4300], shape[4300], nofile[4300];
    snprintf(missing, sizeof missing, "%s/missing.safetensors", dir);
    snprintf(shape, sizeof shape, "%s/shape.safetensors", dir);
    snprintf(nofile, sizeof nofile, "%s/absent.safetensors", dir);
    mimic_cfg_t *c = malloc(sizeof *c);
    eval_cfg_t ec;
    eval_result_t r;
    base_cfg(c, &ec);
    mae_t *m = NULL;
    T_CHECK(mae_new(&m, &c->model) == 0);
    mae_init(m, 4);
    write_plain(missing, m->p, m->enc.ntensors, "blocks.0.attn.proj.weight");
    write_plain(shape, m->p, m->enc.ntensors, NULL);
    const char *e;
    mimic_set_quiet(1);
    T_CHECK(eval_run(c, &ec, missing, NULL, &r) == MIMIC_EFORMAT);
    e = mimic_last_error();
    T_CHECK(strstr(e, "blocks.0.attn.proj.weight") && strstr(e, missing));
    /* without metadata model.* describes the encoder: a wrong width is a shape error */
    c->model.embed_dim = 24;
    T_CHECK(eval_run(c, &ec, shape, NULL, &r) == MIMIC_ESHAPE);
    e = mimic_last_error();
    T_CHECK(strstr(e, "cls_token") && strstr(e, shape));
    c->model.embed_dim = 16;
    mimic_set_quiet(0);
    T_CHECK(eval_run(c, &ec, shape, NULL, &r) == 0 && r.dim == 16);
    mimic_set_quiet(1);
    T_CHECK(eval_run(c, &ec, nofile, NULL, &r) < 0);
    T_CHECK(strstr(mimic_last_error(), nofile) != NULL);
    T_CHECK(eval_run(c, &ec, NULL, NULL, &r) == MIMIC_EINVAL);
    /* label-less test set, and a missing one */
    ec.test_labels[0] = 0;
    T_CHECK(eval_run(c, &ec, enc_path, NULL, &r) == MIMIC_EINVAL);
    e = mimic_last_error();
    T_CHECK(strstr(e, te_img) && strstr(e, "no labels"));
    ec.test_path[0] = 0;
    T_CHECK(eval_run(c, &ec, enc_path, NULL, &r) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "eval.test_path") != NULL);
    /* keys */
    T_CHECK(config_override(c, "eval.knn_k=5,0") == 0 && eval_cfg_from(&ec, c) == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "eval.knn_k") != NULL);
    T_CHECK(config_override(c, "eval.pool=max") == MIMIC_EINVAL);
    T_CHECK(config_override(c, "eval.probe_lr=fast") == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "eval.probe_lr") != NULL);
    T_CHECK(config_override(c, "eval.bogus=1") == MIMIC_EINVAL);
    T_CHECK(strstr(mimic_last_error(), "eval.bogus") != NULL);
    T_CHECK(config_override(c, "eval.knn_k=3,7") == 0 && eval_cfg_from(&ec, c) == 0 &&
            ec.knn_nk == 2 && ec.knn_k[1] == 7);
    mimic_set_quiet(0);
    mae_destroy(&m);
    free(c);
}

int main(void) {
    test_knn_hand();
    test_separable();
    test_end_to_end();
    test_finetune();
    test_bad_input();
    return testutil_summary("test_eval");
}
