/* The loader's reading of the [data] config section, and loader_count. Kept apart from
 * loader.c (which opens the decoder) so that a program that only counts samples, the
 * scheduler, links neither TurboJPEG nor the loader's threads. */
#include "loader.h"

#include "common.h"
#include "warp.h"

#include <string.h>

#define LOADER_MAX_THREADS 64

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

static int check_prob(const char *key, float p) {
    if (p >= 0.0f && p <= 1.0f) return 0;
    return mimic_err(MIMIC_EINVAL, "config data.%s: %g is not a probability in [0, 1]", key, p);
}

/* The keys of the multi-view recipe (augment_view), checked even when one view is
 * used, so that a bad value is met at start-up and not at the first contrastive stage. */
static int check_views(const mimic_cfg_t *cfg) {
    const struct {
        const char *key;
        float v;
    } s[] = {{"brightness", cfg->data.brightness},
             {"contrast", cfg->data.contrast},
             {"saturation", cfg->data.saturation}};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        if (!(s[i].v >= 0.0f && s[i].v < 1e6f))
            return mimic_err(MIMIC_EINVAL, "config data.%s: %g (need >= 0)", s[i].key, s[i].v);
    if (!(cfg->data.hue >= 0.0f && cfg->data.hue <= 0.5f))
        return mimic_err(MIMIC_EINVAL, "config data.hue: %g (need 0..0.5)", cfg->data.hue);
    int rc = check_prob("jitter_p", cfg->data.jitter_p);
    if (!rc) rc = check_prob("gray_p", cfg->data.gray_p);
    for (int v = 0; v < 4 && !rc; v++) {
        rc = check_prob("blur_p", cfg->data.blur_p[v]);
        if (!rc) rc = check_prob("solarize_p", cfg->data.solarize_p[v]);
    }
    return rc;
}

int loader_opts(dataset_opts *o, const mimic_cfg_t *cfg) {
    memset(o, 0, sizeof *o);
    int rc = parse_kind(cfg->data.kind, &o->kind);
    if (rc) return rc;
    if (!(cfg->data.scale_min > 0 && cfg->data.scale_min <= cfg->data.scale_max &&
          cfg->data.scale_max <= 1))
        return mimic_err(MIMIC_EINVAL, "config data.scale_min/scale_max: need 0 < min <= max <= 1");
    for (int c = 0; c < cfg->model.in_chans; c++)
        if (!(cfg->data.std[c] > 0))
            return mimic_err(MIMIC_EINVAL, "config data.std: must be positive");
    if (cfg->data.threads < 0 || cfg->data.threads > LOADER_MAX_THREADS)
        return mimic_err(MIMIC_EINVAL, "config data.threads: %d (need 0..%d)", cfg->data.threads,
                         LOADER_MAX_THREADS);
    if ((rc = check_views(cfg))) return rc;
    warp_cfg_t wc = {cfg->data.warp_regions, cfg->data.warp_radius, cfg->data.warp_magnitude};
    if ((rc = warp_check(&wc))) return rc; /* checked for every stage, like the view recipe */
    o->path = cfg->data.path;
    o->labels = cfg->data.labels[0] ? cfg->data.labels : NULL;
    o->usage = cfg->data.usage[0] ? cfg->data.usage : NULL;
    o->label_base = cfg->data.label_base;
    return 0;
}

int loader_count(const mimic_cfg_t *cfg, size_t *n) {
    *n = 0;
    dataset_opts o;
    int rc = loader_opts(&o, cfg);
    if (!rc) rc = dataset_count(&o, n);
    if (!rc && *n == 0) rc = mimic_err(MIMIC_EINVAL, "%s: data set is empty", cfg->data.path);
    return rc;
}
