#include "loader.h"

#include "common.h"
#include "rng.h"
#include "order.h"

#include <stdlib.h>
#include <string.h>

struct loader {
    dataset_t *ds;
    image_u8 img;
    augment_ws ws; /* resampling scratch, reused for every sample */
    int S, C;
    float scale_lo, scale_hi;
    int hflip;
    float mean[4], std[4];
    uint64_t seed;
};

static int parse_kind(const char *s, dataset_kind *k) {
    static const struct {
        const char *name;
        dataset_kind kind;
    } kinds[] = {{"idx", DATASET_IDX},
                 {"imagefolder", DATASET_IMAGEFOLDER},
                 {"csv", DATASET_CSV},
                 {"labellist", DATASET_LABELLIST}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(s, kinds[i].name) == 0) {
            *k = kinds[i].kind;
            return 0;
        }
    return mimic_err(MIMIC_EINVAL,
                     "config data.kind: unknown '%s' (idx, imagefolder, csv, labellist)", s);
}

int loader_new(loader_t **out, const mimic_cfg_t *cfg) {
    *out = NULL;
    dataset_opts o = {0};
    int rc = parse_kind(cfg->data.kind, &o.kind);
    if (rc) return rc;
    if (!(cfg->data.scale_min > 0 && cfg->data.scale_min <= cfg->data.scale_max &&
          cfg->data.scale_max <= 1))
        return mimic_err(MIMIC_EINVAL, "config data.scale_min/scale_max: need 0 < min <= max <= 1");
    for (int c = 0; c < cfg->model.in_chans; c++)
        if (!(cfg->data.std[c] > 0))
            return mimic_err(MIMIC_EINVAL, "config data.std: must be positive");
    o.path = cfg->data.path;
    o.labels = cfg->data.labels[0] ? cfg->data.labels : NULL;
    o.usage = cfg->data.usage[0] ? cfg->data.usage : NULL;
    loader_t *ld = calloc(1, sizeof *ld);
    if (!ld) return mimic_err(MIMIC_ENOMEM, "out of memory for the data loader");
    if ((rc = dataset_open(&ld->ds, &o))) {
        free(ld);
        return rc;
    }
    if (dataset_size(ld->ds) == 0) {
        loader_destroy(&ld);
        return mimic_err(MIMIC_EINVAL, "%s: data set is empty", cfg->data.path);
    }
    ld->S = cfg->model.img_size;
    ld->C = cfg->model.in_chans;
    ld->scale_lo = cfg->data.scale_min;
    ld->scale_hi = cfg->data.scale_max;
    ld->hflip = cfg->data.hflip;
    memcpy(ld->mean, cfg->data.mean, sizeof ld->mean);
    memcpy(ld->std, cfg->data.std, sizeof ld->std);
    ld->seed = cfg->train.seed;
    *out = ld;
    return 0;
}

void loader_destroy(loader_t **pl) {
    if (!pl || !*pl) return;
    dataset_destroy(&(*pl)->ds);
    image_u8_free(&(*pl)->img);
    augment_ws_free(&(*pl)->ws);
    free(*pl);
    *pl = NULL;
}

size_t loader_size(const loader_t *ld) {
    return dataset_size(ld->ds);
}
size_t loader_bad(const loader_t *ld) {
    return dataset_bad_count(ld->ds);
}
const dataset_t *loader_dataset(const loader_t *ld) {
    return ld->ds;
}

int loader_fill(loader_t *ld, const uint32_t *idx, int n, uint64_t epoch, float *imgs, float *noise,
                int L, int *labels) {
    size_t img_sz = (size_t)ld->C * ld->S * ld->S;
    int filled = 0;
    for (int i = 0; i < n; i++) {
        int rc = dataset_get(ld->ds, idx[i], &ld->img, ld->S);
        if (rc == MIMIC_EFORMAT) continue; /* warned and counted by the dataset */
        if (rc) return rc;
        rng_t r;
        rng_split(&r, ld->seed, order_sample_stream(epoch, idx[i]));
        rc = augment_rrc_ws(imgs + (size_t)filled * img_sz, &ld->img, ld->S, ld->scale_lo,
                            ld->scale_hi, 3.0f / 4.0f, 4.0f / 3.0f, ld->hflip, ld->mean, ld->std,
                            ld->C, &r, &ld->ws);
        if (rc) return rc;
        if (noise)
            for (int l = 0; l < L; l++)
                noise[(size_t)filled * L + l] = rng_uniform(&r);
        if (labels) labels[filled] = dataset_label(ld->ds, idx[i]);
        filled++;
    }
    return filled;
}
