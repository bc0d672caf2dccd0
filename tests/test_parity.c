// TIMEOUT: 120
/* test_parity — the C MAE against PyTorch (tests/golden, generated in float64 by
 * gen_golden.py): runs the documented `mimic-worker --dump-grads` command on the golden
 * weights and batch, then compares loss, predictions, mask, encoder output and every
 * parameter gradient (normwise relative error <= 1e-4 per tensor); and one AdamW step
 * from those gradients against torch.optim.AdamW. */
#include "adamw.h"
#include "common.h"
#include "mae.h"
#include "safetensors.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define TOL 1e-4

static const char *meta_or(const st_file_t *f, const char *k) {
    const char *v = st_meta(f, k);
    if (!v) {
        fprintf(stderr, "golden file lacks metadata '%s'\n", k);
        exit(2);
    }
    return v;
}

/* The model config the golden files were generated with. */
static mae_cfg_t golden_cfg(const st_file_t *w) {
    mae_cfg_t c = {
        .img_size = atoi(meta_or(w, "img_size")),
        .in_chans = atoi(meta_or(w, "in_chans")),
        .patch_size = atoi(meta_or(w, "patch_size")),
        .embed_dim = atoi(meta_or(w, "embed_dim")),
        .depth = atoi(meta_or(w, "depth")),
        .num_heads = atoi(meta_or(w, "num_heads")),
        .mlp_ratio = (float)atof(meta_or(w, "mlp_ratio")),
        .decoder_embed_dim = atoi(meta_or(w, "decoder_embed_dim")),
        .decoder_depth = atoi(meta_or(w, "decoder_depth")),
        .decoder_num_heads = atoi(meta_or(w, "decoder_num_heads")),
        .mask_ratio = (float)atof(meta_or(w, "mask_ratio")),
        .norm_pix_loss = atoi(meta_or(w, "norm_pix_loss")),
    };
    return c;
}

static void compare(const st_file_t *got, const st_file_t *want, const char *name, double tol) {
    const st_tensor_t *a = st_find(got, name), *b = st_find(want, name);
    if (!a || !b || a->dtype != ST_F32 || b->dtype != ST_F32 || a->numel != b->numel) {
        printf("%-48s missing or shape mismatch FAIL\n", name);
        testutil_failures++;
        return;
    }
    testutil_close(name, a->data, b->data, (size_t)a->numel, tol);
}

int main(void) {
    char weights[4096], batch[4096], expect[4096], adamw[4096], out[4200], cmd[20000];
    snprintf(weights, sizeof weights, "%s",
             testutil_src_path("tests/golden/mae_tiny_weights.safetensors"));
    snprintf(batch, sizeof batch, "%s",
             testutil_src_path("tests/golden/mae_tiny_batch.safetensors"));
    snprintf(expect, sizeof expect, "%s",
             testutil_src_path("tests/golden/mae_tiny_expect.safetensors"));
    snprintf(adamw, sizeof adamw, "%s", testutil_src_path("tests/golden/adamw_expect.safetensors"));
    snprintf(out, sizeof out, "%s/grads.safetensors", testutil_tmpdir());

    st_file_t *w = NULL, *e = NULL, *g = NULL, *ad = NULL;
    if (st_open(&w, weights) || st_open(&e, expect) || st_open(&ad, adamw)) {
        fprintf(stderr, "cannot open the golden files\n");
        return 1;
    }
    T_CHECK(strcmp(meta_or(w, "format"), "mimicps-golden") == 0);
    T_CHECK(strcmp(meta_or(w, "version"), "1") == 0);
    mae_cfg_t c = golden_cfg(w);

    const char *build = getenv("MIMIC_BUILD_DIR");
    snprintf(cmd, sizeof cmd,
             "%s/worker/mimic-worker --dump-grads --train.precision=fp32 "
             "--weights %s --batch %s --out %s "
             "--model.img_size=%d --model.in_chans=%d --model.patch_size=%d "
             "--model.embed_dim=%d --model.depth=%d --model.num_heads=%d --model.mlp_ratio=%g "
             "--mae.decoder_embed_dim=%d --mae.decoder_depth=%d --mae.decoder_num_heads=%d "
             "--mae.mask_ratio=%g --mae.norm_pix_loss=%d",
             build ? build : ".", weights, batch, out, c.img_size, c.in_chans, c.patch_size,
             c.embed_dim, c.depth, c.num_heads, c.mlp_ratio, c.decoder_embed_dim, c.decoder_depth,
             c.decoder_num_heads, c.mask_ratio, c.norm_pix_loss);
    int rc = system(cmd);
    T_CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
    if (st_open(&g, out)) return testutil_summary("test_parity");

    compare(g, e, "loss", TOL);
    compare(g, e, "pred", TOL);
    compare(g, e, "mask", 0.0);
    compare(g, e, "latent", TOL);
    mae_t *m = NULL;
    T_CHECK(mae_new(&m, &c) == 0);
    char name[PARAMS_NAME_MAX + 16];
    for (int i = 0; i < m->p->n; i++) {
        snprintf(name, sizeof name, "grad.%s", m->p->t[i].name);
        compare(g, e, name, TOL);
    }

    /* AdamW: one step from the golden weights with the golden gradients */
    for (int i = 0; i < m->p->n; i++) {
        const params_tensor_t *t = &m->p->t[i];
        snprintf(name, sizeof name, "grad.%s", t->name);
        T_CHECK(st_read_f32(w, t->name, params_w(m->p, i), t->shape, t->ndim) == 0);
        T_CHECK(st_read_f32(e, name, params_g(m->p, i), t->shape, t->ndim) == 0);
    }
    float *mo = calloc(m->p->total, sizeof(float)), *ve = calloc(m->p->total, sizeof(float));
    float *before = malloc(m->p->total * sizeof(float));
    memcpy(before, m->p->w, m->p->total * sizeof(float));
    adamw_cfg_t oc = {
        (float)atof(meta_or(ad, "adamw_beta1")), (float)atof(meta_or(ad, "adamw_beta2")),
        (float)atof(meta_or(ad, "adamw_eps")), (float)atof(meta_or(ad, "adamw_weight_decay"))};
    adamw_update(&oc, m->p, m->p->w, m->p->g, 1.0f, mo, ve, 0, m->p->total,
                 (float)atof(meta_or(ad, "adamw_lr")), 1);
    float *want = malloc(m->p->total * sizeof(float));
    for (int i = 0; i < m->p->n; i++) {
        const params_tensor_t *t = &m->p->t[i];
        snprintf(name, sizeof name, "param.%s", t->name);
        T_CHECK(st_read_f32(ad, name, want + t->offset, t->shape, t->ndim) == 0);
    }
    testutil_close("adamw step (all parameters)", m->p->w, want, m->p->total, TOL);
    /* the update itself (~1e-3 of a weight) must match too, or a wrongly decayed bias
     * would hide under the parameters' magnitude; float32 subtraction costs ~6e-5 */
    float *delta = malloc(m->p->total * sizeof(float));
    for (int i = 0; i < m->p->n; i++) {
        const params_tensor_t *t = &m->p->t[i];
        snprintf(name, sizeof name, "delta.%s", t->name);
        T_CHECK(st_read_f32(ad, name, want + t->offset, t->shape, t->ndim) == 0);
    }
    for (size_t i = 0; i < m->p->total; i++)
        delta[i] = m->p->w[i] - before[i];
    testutil_close("adamw update (new - old, all parameters)", delta, want, m->p->total, 3e-4);
    free(delta);
    free(before);
    free(want);
    free(mo);
    free(ve);
    mae_destroy(&m);
    st_close(&w);
    st_close(&e);
    st_close(&g);
    st_close(&ad);
    return testutil_summary("test_parity");
}
