/* loader — turns sample indices into a training batch: decode, augment, masking noise.
 *
 * Every random choice for a sample comes from rng stream (seed, epoch, index) (see
 * order.h), so the batch a worker builds for a set of indices does not depend on which
 * worker builds it, in which order, or on how many threads: loader_new starts
 * data.threads threads (each with its own decoder and augmentation scratch, made once),
 * which split a batch's samples and, through loader_submit / loader_wait, build the next
 * batch while the caller computes the current one:
 *   loader_submit(ld, idx, n, epoch, imgs, noise, L, NULL);  ... forward/backward ...
 *   int got = loader_wait(ld);
 * Corrupt samples are skipped (warned once, counted by the dataset) and the batch comes
 * back shorter, the good samples in their order. A stage that wants V views of every
 * sample (contrastive pairs) calls loader_set_views(ld, V) once: imgs is then
 * (n*V, C, S, S), the views of sample i in rows i*V .. i*V+V-1; evaluation code that
 * extracts features calls loader_set_eval(ld, 1) for the deterministic resize. */
#ifndef MIMIC_LOADER_H
#define MIMIC_LOADER_H

#include "config.h"
#include "dataset.h"

#include <stdint.h>

typedef struct loader loader_t;

/* The most views per sample: data.blur_p and data.solarize_p hold four values. */
#define LOADER_MAX_VIEWS 4

int loader_new(loader_t **out, const mimic_cfg_t *cfg);
/* Waits for a batch still in flight, stops the threads, frees; *ld becomes NULL. */
void loader_destroy(loader_t **ld);
/* Views per sample (default 1). 1: the MAE transform, RandomResizedCrop(data.scale_min,
 * data.scale_max) and flip (data.hflip), drawn exactly as before views existed. 2 or
 * more: view v is the contrastive recipe (augment_view: crop, flip, ColorJitter with
 * data.jitter_p, .brightness, .contrast, .saturation, .hue, grayscale data.gray_p, blur
 * data.blur_p[v], solarize data.solarize_p[v]), each view from its own stream derived
 * from the sample's. No batch may be in flight. Returns 0 or MIMIC_EINVAL. */
int loader_set_views(loader_t *ld, int views);
int loader_views(const loader_t *ld);
/* ContraWarping (ours; after loader_set_views, which resets it to 0): the last `warped` of the
 * views become local warps (data/warp.h; data.warp_regions, .warp_radius,
 * .warp_magnitude) of the first ones: view views-warped+j is view j, augmented as
 * usual, then warped from the stream of its own view slot, so the global views are
 * drawn exactly as without warps. 0 <= warped <= views/2 (each warps a different
 * view); MIMIC_EINVAL otherwise. The evaluation mode ignores it. No batch in flight. */
int loader_set_warp(loader_t *ld, int warped);
/* Evaluation mode on (1) or off (0, the default): every view of a sample is the whole
 * image resized to S x S and normalised (augment_resize), no crop, flip or colour op;
 * the masking noise is still drawn. No batch may be in flight. */
void loader_set_eval(loader_t *ld, int on);
size_t loader_size(const loader_t *ld);
/* Distinct corrupt samples met so far (exact once loader_wait returned). */
size_t loader_bad(const loader_t *ld);
/* Classes of the labelled data set (0 when it has no labels). */
int loader_num_classes(const loader_t *ld);

/* Builds up to n samples from idx[0..n): imgs (n*views,C,S,S), noise (n,L) masking noise
 * (may be NULL), labels (n) (may be NULL). Returns how many samples were filled
 * (corrupt ones are skipped), or a negative error. Synchronous: the caller works along
 * with the loader's threads. No batch may be in flight. */
int loader_fill(loader_t *ld, const uint32_t *idx, int n, uint64_t epoch, float *imgs, float *noise,
                int L, int *labels);
/* Starts building the batch of idx[0..n) (samples of epoch `epoch`) into the caller's
 * buffers on the loader's threads and returns at once; at most one batch in flight.
 * imgs (n*views,C,S,S), noise (n,L) may be NULL, labels (n) may be NULL; the buffers and idx
 * must stay untouched until loader_wait. With data.threads = 0 the work is done here. */
int loader_submit(loader_t *ld, const uint32_t *idx, int n, uint64_t epoch, float *imgs,
                  float *noise, int L, int *labels);
/* Waits for the submitted batch (the caller helps with the samples not yet started):
 * returns how many samples were filled (corrupt ones skipped, compacted in order exactly
 * like loader_fill), or a negative error (that of the first failing sample). */
int loader_wait(loader_t *ld);
/* Without blocking or helping: 1 when every sample of the submitted batch is finished
 * (or one failed hard), so that loader_wait has nothing left to build; else 0. Lets a
 * caller that has other work (or a benchmark timing the threads alone) poll. */
int loader_ready(loader_t *ld);

/* Checks the [data] section of cfg (kind, crop scales, std, threads, the view recipe)
 * and fills o; the strings point into cfg. */
int loader_opts(dataset_opts *o, const mimic_cfg_t *cfg);
/* The number of samples loader_size would report for cfg, without decoding anything or
 * linking the JPEG decoder (dataset_count; for the scheduler): the same config checks
 * as loader_new, the same errors for a missing or malformed data set. */
int loader_count(const mimic_cfg_t *cfg, size_t *n);

#endif
