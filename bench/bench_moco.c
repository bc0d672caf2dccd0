/* bench_moco — the MoCo v3 training step of this project (stages/mocov3.c: two views,
 * online encoder + projector + predictor, momentum network, symmetric loss, backward,
 * AdamW, the momentum update) on synthetic images, images/s as the median of windows.
 * bench/run.sh --moco runs it beside its PyTorch peer (bench_moco_torch.py).
 *   bench_moco CONFIG.ini [--section.key=value ...] [--bench.batch N]
 *              [--bench.windows N] [--bench.steps N] */
#include "adamw.h"
#include "benchutil.h"
#include "common.h"
#include "config.h"
#include "mm.h"
#include "rng.h"
#include "stage.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    static mimic_cfg_t cfg;
    config_defaults(&cfg);
    int v[3] = {64, 3, 5}, warmup = 2; /* batch, windows, steps */
    const char *const names[3] = {"batch", "windows", "steps"};
    if (bench_args(&cfg, argc, argv, "bench_moco", names, v, 3)) return 2;
    int B = v[0], windows = v[1], steps = v[2];
    if (B < 2 || windows <= 0 || windows > 64 || steps <= 0) {
        fprintf(stderr, "bench_moco: bad --bench.* value\n");
        return 2;
    }
    if (mm_setup(0, config_enum_name("train", "precision", cfg.train.precision),
                 "train.precision"))
        return 2;
    cfg.train.stage = STAGE_KIND_MOCOV3;
    stage_t *s = NULL;
    if (stage_new(&s, &cfg, B)) return 1;
    s->ops->init(s, 0);
    size_t total = s->p->total,
           img = (size_t)cfg.model.in_chans * cfg.model.img_size * cfg.model.img_size;
    float *imgs = mimic_alloc((size_t)B * 2 * img * 4);
    float *mo = mimic_alloc(total * 4), *ve = mimic_alloc(total * 4);
    if (!imgs || !mo || !ve) return 1;
    rng_t r;
    rng_seed(&r, 2);
    for (size_t i = 0; i < (size_t)B * 2 * img; i++)
        imgs[i] = rng_normal(&r);
    stage_input_t in = {imgs, NULL, NULL};
    adamw_cfg_t oc = {0.9f, 0.999f, 1e-8f, 0.1f};
    double ips[64], loss = 0;
    long t = 0;
    for (int w = -1; w < windows; w++) {
        int n = w < 0 ? warmup : steps;
        double t0 = mimic_now();
        for (int k = 0; k < n; k++) {
            loss = stage_compute(s, &in, B, NULL, NULL);
            adamw_update(&oc, s->p, s->p->w, s->p->g, 1.0f, mo, ve, 0, total, 1e-4f, ++t);
            adamw_ema(s->ema, s->p->w, total, 0.99f);
        }
        if (w >= 0) ips[w] = (double)B * n / (mimic_now() - t0);
    }
    double med = bench_median(ips, windows), gf = s->flops_per_image / 1e9;
    printf("threads=%d\n", omp_get_max_threads());
    printf("batch=%d\n", B);
    printf("gflop_per_img=%.4f\n", gf);
    printf("precision=%s\n", mm_precision_name(mm_precision()));
    printf("mimic_img_per_s=%.2f\n", med);
    printf("mimic_model_gflops=%.2f\n", med * gf);
    printf("final_loss=%.4f\n", loss);
    stage_destroy(&s);
    mimic_free(imgs);
    mimic_free(mo);
    mimic_free(ve);
    return 0;
}
