#include "augment.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

int image_u8_reserve(image_u8 *img, int w, int h, int c) {
    MIMIC_CHECK(img != NULL);
    if (w <= 0 || h <= 0 || c <= 0 || c > 4)
        return mimic_err(MIMIC_EINVAL, "image_u8: bad size %dx%dx%d", w, h, c);
    size_t need = (size_t)w * (size_t)h * (size_t)c;
    if (need > img->cap) {
        uint8_t *p = realloc(img->px, need);
        if (!p) return mimic_err(MIMIC_ENOMEM, "image_u8: out of memory for %dx%dx%d", w, h, c);
        img->px = p;
        img->cap = need;
    }
    img->w = w;
    img->h = h;
    img->c = c;
    return 0;
}

void image_u8_free(image_u8 *img) {
    if (!img) return;
    free(img->px);
    memset(img, 0, sizeof *img);
}

/* Resampling weights along one axis: output i reads ntaps[i] source samples from
 * start[i] with weights w[i*maxtaps ..]. Computed once per call so that the pixel loops
 * only multiply and add. */
typedef struct {
    int *start;
    int *ntaps;
    float *w;
    int maxtaps;
} axis_plan;

static int axis_maxtaps(int in_n, int out_n) {
    double scale = (double)in_n / (double)out_n;
    double support = scale > 1.0 ? scale : 1.0;
    return (int)ceil(2.0 * support) + 2;
}

/* PIL's precompute_coeffs for the bilinear (triangle) filter over the source segment
 * [a, a + n) (pixel j covers [j, j + 1); a and n may be fractional, as PIL's resize box):
 * when shrinking, the triangle is stretched by the scale so every source pixel
 * contributes (antialiasing, as torchvision's antialias=True); when enlarging it is plain
 * half-pixel-centred bilinear. Taps stay inside the pixels the segment touches, and
 * start[] counts from pixel `off`. Zero-weight taps are dropped so an identity resize is
 * a single tap of weight exactly 1. */
static void axis_plan_fill(axis_plan *p, double a, double n, int out_n, int off) {
    double scale = n / (double)out_n;
    double support = scale > 1.0 ? scale : 1.0;
    double ss = 1.0 / support;
    const int first_px = (int)floor(a), end_px = (int)ceil(a + n);
    for (int i = 0; i < out_n; i++) {
        double center = a + ((double)i + 0.5) * scale;
        int lo = (int)floor(center - support + 0.5);
        int hi = (int)floor(center + support + 0.5);
        if (lo < first_px) lo = first_px;
        if (hi > end_px) hi = end_px;
        float *w = p->w + (size_t)i * (size_t)p->maxtaps;
        double sum = 0.0;
        int k = 0, first = -1;
        for (int x = lo; x < hi; x++) {
            double d = fabs(((double)x - center + 0.5) * ss);
            double v = d < 1.0 ? 1.0 - d : 0.0;
            if (v <= 0.0 && first < 0) continue; /* leading zero taps */
            if (first < 0) first = x;
            w[k++] = (float)v;
            sum += v;
        }
        while (k > 1 && w[k - 1] <= 0.0f)
            k--; /* trailing zero taps */
        MIMIC_CHECK(k >= 1 && k <= p->maxtaps && sum > 0.0);
        float inv = (float)(1.0 / sum);
        for (int t = 0; t < k; t++)
            w[t] *= inv;
        p->start[i] = first - off;
        p->ntaps[i] = k;
    }
}

/* Gives every output the same tap count (the largest), zero-padding the weights: the tap
 * loop of the horizontal pass then never mispredicts its exit. Reads may run up to
 * ntaps - 1 samples past the segment, so the source row needs that much zeroed tail. */
static void axis_plan_uniform(axis_plan *p, int out_n) {
    int nmax = 1;
    for (int i = 0; i < out_n; i++)
        if (p->ntaps[i] > nmax) nmax = p->ntaps[i];
    for (int i = 0; i < out_n; i++) {
        float *w = p->w + (size_t)i * (size_t)p->maxtaps;
        for (int k = p->ntaps[i]; k < nmax; k++)
            w[k] = 0.0f;
        p->ntaps[i] = nmax;
    }
}

/* tmp (cw, cin): vertical pass of output row y over the crop columns starting at x0.
 * Contiguous along the row, so the compiler vectorises the byte-to-float multiply-add. */
static void resample_col(float *tmp, const image_u8 *in, int x0, int cw, const axis_plan *py,
                         int y) {
    const size_t len = (size_t)cw * (size_t)in->c, stride = (size_t)in->w * (size_t)in->c;
    const float *w = py->w + (size_t)y * (size_t)py->maxtaps;
    const uint8_t *src = in->px + (size_t)py->start[y] * stride + (size_t)x0 * (size_t)in->c;
    const float w0 = w[0];
    for (size_t j = 0; j < len; j++)
        tmp[j] = w0 * (float)src[j];
    for (int k = 1; k < py->ntaps[y]; k++) {
        const float wk = w[k];
        const uint8_t *s = src + (size_t)k * stride;
        for (size_t j = 0; j < len; j++)
            tmp[j] += wk * (float)s[j];
    }
}

typedef float v4f __attribute__((vector_size(16)));

static inline v4f load4(const float *p) {
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* acc (S, cin): horizontal pass of one row; px indexes tmp (crop-relative columns) and
 * has one tap count for all outputs (axis_plan_uniform). RGB: one 4-lane vector per tap
 * holds a pixel's R, G, B (and the next pixel's R, unused), so each tap is one
 * multiply-add instead of three (the per-lane sums are those of the scalar loop, in the
 * same order); tmp and acc have one float of slack for the 4th lane. */
static inline void resample_row(float *acc, const float *tmp, const axis_plan *px, int S, int cin) {
    const int mt = px->maxtaps, n = px->ntaps[0];
    for (int x = 0; x < S; x++) {
        const float *s = tmp + (size_t)px->start[x] * (size_t)cin;
        const float *w = px->w + (size_t)x * (size_t)mt;
        if (cin == 1) {
            float a0 = 0.0f;
            for (int k = 0; k < n; k++)
                a0 += w[k] * s[k];
            acc[x] = a0;
        } else { /* cin == 3 */
            v4f a = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int k = 0; k < n; k++)
                a += w[k] * load4(s + 3 * k);
            memcpy(acc + 3 * x, &a, sizeof a); /* its 4th lane is overwritten next */
        }
    }
}

/* out (cout, S, S) row y from acc (S, cin): channel conversion, normalisation folded into
 * one multiply-add, optional mirror. */
static void emit_row(float *out, const float *acc, int y, int S, int cin, int cout, int flip,
                     const float *a, const float *b) {
    const size_t plane = (size_t)S * (size_t)S;
    const ptrdiff_t step = flip ? -1 : 1;
    for (int oc = 0; oc < cout; oc++) {
        float *o = out + oc * plane + (size_t)y * (size_t)S + (flip ? S - 1 : 0);
        const float ac = a[oc], bc = b[oc];
        if (cin == cout) {
            for (int x = 0; x < S; x++)
                o[x * step] = acc[cin * x + oc] * ac + bc;
        } else if (cin == 3) { /* to gray, ITU-R 601 luma */
            for (int x = 0; x < S; x++)
                o[x * step] =
                    (0.299f * acc[3 * x] + 0.587f * acc[3 * x + 1] + 0.114f * acc[3 * x + 2]) * ac +
                    bc;
        } else { /* gray replicated */
            for (int x = 0; x < S; x++)
                o[x * step] = acc[x] * ac + bc;
        }
    }
}

/* Grows ws to hold nint ints and nflt floats; after the largest crop was seen once,
 * a training loop allocates nothing here. */
static int ws_reserve(augment_ws *ws, size_t nint, size_t nflt) {
    if (nint > ws->icap) {
        int *p = realloc(ws->ibuf, nint * sizeof(int));
        if (!p) return MIMIC_ENOMEM;
        ws->ibuf = p;
        ws->icap = nint;
    }
    if (nflt > ws->fcap) {
        float *p = realloc(ws->fbuf, nflt * sizeof(float));
        if (!p) return MIMIC_ENOMEM;
        ws->fbuf = p;
        ws->fcap = nflt;
    }
    return 0;
}

/* Room for the plans and rows of resample_crop on a cw x ch crop of a cin-channel image;
 * it grows with cw and ch, so the whole image bounds every crop of it. */
static int ws_reserve_crop(augment_ws *ws, int cw, int ch, int cin, int S) {
    size_t mx = (size_t)axis_maxtaps(cw, S), my = (size_t)axis_maxtaps(ch, S);
    size_t tmp_len = ((size_t)cw + mx) * (size_t)cin + 1; /* + 1: resample_row's 4th lane */
    return ws_reserve(ws, 4 * (size_t)S,
                      (size_t)S * (mx + my) + tmp_len + (size_t)S * (size_t)cin + 1);
}

/* Floats augment_blur needs: one S x S plane, one padded row, the kernel. */
static size_t blur_floats(int S, int k) {
    return (size_t)S * (size_t)S + (size_t)S + 2 * (size_t)k;
}

int augment_ws_reserve(augment_ws *ws, int w, int h, int c, int S) {
    if (w <= 0 || h <= 0 || (c != 1 && c != 3) || S <= 0 || S > 1 << 15)
        return mimic_err(MIMIC_EINVAL, "augment: bad workspace size %dx%dx%d -> %d", w, h, c, S);
    /* the blur runs after the resampling, in the same floats */
    if (ws_reserve_crop(ws, w, h, c, S) || ws_reserve(ws, 0, blur_floats(S, augment_blur_ksize(S))))
        return mimic_err(MIMIC_ENOMEM, "augment: out of memory for %dx%d images", w, h);
    return 0;
}

void augment_ws_free(augment_ws *ws) {
    free(ws->ibuf);
    free(ws->fbuf);
    memset(ws, 0, sizeof *ws);
}

/* out (cout, S, S) from the crop box (pixel units, may be fractional) of in: per output
 * row, a vertical pass into one float row over the columns the box touches, then a
 * horizontal pass and the normalised write. */
static int resample_crop(float *out, const image_u8 *in, const augment_box *box, int S, int flip,
                         const float *mean, const float *std, int cout, augment_ws *ws) {
    const int cin = in->c;
    const int x0 = (int)floor(box->x), cw = (int)ceil(box->x + box->w) - x0;
    const int ch = (int)ceil(box->y + box->h) - (int)floor(box->y);
    float a[3], b[3];
    for (int c = 0; c < cout; c++) {
        float m = mean ? mean[c] : 0.0f, s = std ? std[c] : 1.0f;
        if (!(s > 0.0f) || !isfinite(m) || !isfinite(s))
            return mimic_err(MIMIC_EINVAL, "augment: bad normalisation mean %g std %g", m, s);
        a[c] = 1.0f / (255.0f * s);
        b[c] = -m / s;
    }
    axis_plan px = {.maxtaps = axis_maxtaps(cw, S)}, py = {.maxtaps = axis_maxtaps(ch, S)};
    /* a zeroed tail of maxtaps pixels and one float (resample_row's 4th lane) */
    const size_t tmp_len = (size_t)(cw + px.maxtaps) * (size_t)cin + 1;
    if (ws_reserve_crop(ws, cw, ch, cin, S))
        return mimic_err(MIMIC_ENOMEM, "augment: out of memory for a %dx%d crop", cw, ch);
    int *ibuf = ws->ibuf;
    float *fbuf = ws->fbuf;
    px.start = ibuf;
    px.ntaps = ibuf + S;
    py.start = ibuf + 2 * S;
    py.ntaps = ibuf + 3 * S;
    px.w = fbuf;
    py.w = px.w + (size_t)S * (size_t)px.maxtaps;
    float *tmp = py.w + (size_t)S * (size_t)py.maxtaps;
    float *acc = tmp + tmp_len;
    memset(tmp + (size_t)cw * (size_t)cin, 0, (tmp_len - (size_t)cw * (size_t)cin) * sizeof(float));
    axis_plan_fill(&px, box->x, box->w, S, x0); /* columns index tmp, which starts at x0 */
    axis_plan_uniform(&px, S);
    axis_plan_fill(&py, box->y, box->h, S, 0);

    for (int y = 0; y < S; y++) {
        resample_col(tmp, in, x0, cw, &py, y);
        if (cin == 1)
            resample_row(acc, tmp, &px, S, 1);
        else
            resample_row(acc, tmp, &px, S, 3);
        emit_row(out, acc, y, S, cin, cout, flip, a, b);
    }
    return 0;
}

static int check_args(const float *out, const image_u8 *in, int S, int cout) {
    if (!out || !in || !in->px || in->w <= 0 || in->h <= 0)
        return mimic_err(MIMIC_EINVAL, "augment: empty input image");
    if (S <= 0 || S > 1 << 15) return mimic_err(MIMIC_EINVAL, "augment: bad output size %d", S);
    if (in->c != 1 && in->c != 3)
        return mimic_err(MIMIC_EINVAL, "augment: input has %d channels, need 1 or 3", in->c);
    if (cout != 1 && cout != 3)
        return mimic_err(MIMIC_EINVAL, "augment: out_channels %d, need 1 or 3", cout);
    return 0;
}

/* torchvision RandomResizedCrop.get_params, including its rounding (Python round is
 * half-to-even, as nearbyint in the default rounding mode) and draw order. */
static void rrc_box(int W, int H, float slo, float shi, float rlo, float rhi, rng_t *rng, int *x0,
                    int *y0, int *cw, int *ch) {
    const double area = (double)W * (double)H;
    const double lrlo = log((double)rlo), lrhi = log((double)rhi);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target = area * ((double)slo + (double)(shi - slo) * rng_uniform(rng));
        double ar = exp(lrlo + (lrhi - lrlo) * rng_uniform(rng));
        double w = nearbyint(sqrt(target * ar)), h = nearbyint(sqrt(target / ar));
        if (w > 0.0 && w <= W && h > 0.0 && h <= H) {
            *cw = (int)w;
            *ch = (int)h;
            *y0 = (int)rng_below(rng, (uint64_t)(H - *ch + 1));
            *x0 = (int)rng_below(rng, (uint64_t)(W - *cw + 1));
            return;
        }
    }
    double in_ratio = (double)W / (double)H;
    int w = W, h = H;
    if (in_ratio < rlo)
        h = (int)nearbyint(W / (double)rlo);
    else if (in_ratio > rhi)
        w = (int)nearbyint(H * (double)rhi);
    if (w < 1) w = 1;
    if (h < 1) h = 1;
    if (w > W) w = W;
    if (h > H) h = H;
    *cw = w;
    *ch = h;
    *y0 = (H - h) / 2;
    *x0 = (W - w) / 2;
}

int augment_rrc(float *out, const image_u8 *in, int S, float scale_lo, float scale_hi,
                float ratio_lo, float ratio_hi, int hflip, const float *mean, const float *std,
                int out_channels, rng_t *rng) {
    augment_ws ws = {0};
    int rc = augment_rrc_ws(out, in, S, scale_lo, scale_hi, ratio_lo, ratio_hi, hflip, mean, std,
                            out_channels, rng, &ws);
    augment_ws_free(&ws);
    return rc;
}

static int check_ranges(float scale_lo, float scale_hi, float ratio_lo, float ratio_hi) {
    if (!(scale_lo > 0.0f && scale_lo <= scale_hi && isfinite(scale_hi)))
        return mimic_err(MIMIC_EINVAL, "augment_rrc: bad scale range (%g, %g)", scale_lo, scale_hi);
    if (!(ratio_lo > 0.0f && ratio_lo <= ratio_hi && isfinite(ratio_hi)))
        return mimic_err(MIMIC_EINVAL, "augment_rrc: bad ratio range (%g, %g)", ratio_lo, ratio_hi);
    return 0;
}

int augment_rrc_draw(augment_box *box, int *flip, int W, int H, float scale_lo, float scale_hi,
                     float ratio_lo, float ratio_hi, int hflip, rng_t *rng) {
    MIMIC_CHECK(box != NULL && flip != NULL && rng != NULL);
    if (W <= 0 || H <= 0) return mimic_err(MIMIC_EINVAL, "augment_rrc: empty %dx%d image", W, H);
    int rc = check_ranges(scale_lo, scale_hi, ratio_lo, ratio_hi);
    if (rc) return rc;
    int x0, y0, cw, ch;
    rrc_box(W, H, scale_lo, scale_hi, ratio_lo, ratio_hi, rng, &x0, &y0, &cw, &ch);
    *box = (augment_box){x0, y0, cw, ch};
    *flip = hflip && rng_uniform(rng) < 0.5f;
    return 0;
}

int augment_crop_ws(float *out, const image_u8 *in, const augment_box *box, int S, int flip,
                    const float *mean, const float *std, int out_channels, augment_ws *ws) {
    int rc = check_args(out, in, S, out_channels);
    if (rc) return rc;
    if (!(box->w > 0.0 && box->h > 0.0 && box->x >= 0.0 && box->y >= 0.0 &&
          box->x + box->w <= in->w && box->y + box->h <= in->h))
        return mimic_err(MIMIC_EINVAL, "augment: crop (%g, %g) %gx%g outside the %dx%d image",
                         box->x, box->y, box->w, box->h, in->w, in->h);
    return resample_crop(out, in, box, S, flip, mean, std, out_channels, ws);
}

int augment_rrc_ws(float *out, const image_u8 *in, int S, float scale_lo, float scale_hi,
                   float ratio_lo, float ratio_hi, int hflip, const float *mean, const float *std,
                   int out_channels, rng_t *rng, augment_ws *ws) {
    int rc = check_args(out, in, S, out_channels);
    if (rc) return rc;
    augment_box box;
    int flip;
    rc = augment_rrc_draw(&box, &flip, in->w, in->h, scale_lo, scale_hi, ratio_lo, ratio_hi, hflip,
                          rng);
    return rc ? rc : resample_crop(out, in, &box, S, flip, mean, std, out_channels, ws);
}

int augment_resize(float *out, const image_u8 *in, int S, const float *mean, const float *std,
                   int out_channels) {
    augment_ws ws = {0};
    int rc = augment_resize_ws(out, in, S, mean, std, out_channels, &ws);
    augment_ws_free(&ws);
    return rc;
}

int augment_resize_ws(float *out, const image_u8 *in, int S, const float *mean, const float *std,
                      int out_channels, augment_ws *ws) {
    int rc = check_args(out, in, S, out_channels);
    if (rc) return rc;
    const augment_box whole = {0.0, 0.0, in->w, in->h};
    return resample_crop(out, in, &whole, S, 0, mean, std, out_channels, ws);
}

/* ------------------------------------------------------------------ colour and blur */

static inline float clamp01(float x) {
    return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x;
}

static inline float luma(float r, float g, float b) {
    return 0.299f * r + 0.587f * g + 0.114f * b;
}

void augment_brightness(float *img, int c, size_t npx, float f) {
    for (size_t i = 0; i < (size_t)c * npx; i++)
        img[i] = clamp01(f * img[i]);
}

void augment_contrast(float *img, int c, size_t npx, float f) {
    const float *r = img, *g = img + npx, *b = img + 2 * npx;
    double sum = 0.0;
    for (size_t i = 0; i < npx; i++)
        sum += c == 3 ? luma(r[i], g[i], b[i]) : img[i];
    const float m = (float)(sum / (double)npx), add = (1.0f - f) * m;
    for (size_t i = 0; i < (size_t)c * npx; i++)
        img[i] = clamp01(f * img[i] + add);
}

void augment_saturation(float *img, int c, size_t npx, float f) {
    if (c != 3) return;
    float *r = img, *g = img + npx, *b = img + 2 * npx;
    for (size_t i = 0; i < npx; i++) {
        const float l = (1.0f - f) * luma(r[i], g[i], b[i]);
        r[i] = clamp01(f * r[i] + l);
        g[i] = clamp01(f * g[i] + l);
        b[i] = clamp01(f * b[i] + l);
    }
}

/* torchvision's _rgb2hsv, the hue shift of adjust_hue, and _hsv2rgb, per pixel. */
static void hue_pixel(float *r, float *g, float *b, float shift) {
    const float maxc = fmaxf(*r, fmaxf(*g, *b)), minc = fminf(*r, fminf(*g, *b));
    if (maxc == minc) return; /* gray: hue undefined, s = 0, the pixel stays */
    const float cr = maxc - minc, s = cr / maxc, v = maxc, inv = 1.0f / cr;
    const float rc = (maxc - *r) * inv, gc = (maxc - *g) * inv, bc = (maxc - *b) * inv;
    float h;
    if (maxc == *r)
        h = bc - gc;
    else if (maxc == *g)
        h = 2.0f + rc - bc;
    else
        h = 4.0f + gc - rc;
    h = h / 6.0f + 1.0f; /* in [5/6, 2): fmod(h, 1) is exact as below */
    h = (h >= 1.0f ? h - 1.0f : h) + shift;
    h -= floorf(h); /* Python's % 1.0 */
    const float h6 = h * 6.0f, i = floorf(h6), fr = h6 - i;
    const float p = clamp01(v * (1.0f - s)), q = clamp01(v * (1.0f - s * fr)),
                t = clamp01(v * (1.0f - s * (1.0f - fr)));
    /* torchvision's a1, a2, a3 stacks: the (r, g, b) of each sextant */
    const float rgb[6][3] = {{v, t, p}, {q, v, p}, {p, v, t}, {p, q, v}, {t, p, v}, {v, p, q}};
    const float *o = rgb[(int)i % 6];
    *r = o[0];
    *g = o[1];
    *b = o[2];
}

void augment_hue(float *img, int c, size_t npx, float f) {
    if (c != 3) return;
    float *r = img, *g = img + npx, *b = img + 2 * npx;
    for (size_t i = 0; i < npx; i++)
        hue_pixel(r + i, g + i, b + i, f);
}

void augment_grayscale(float *img, int c, size_t npx) {
    if (c != 3) return;
    float *r = img, *g = img + npx, *b = img + 2 * npx;
    for (size_t i = 0; i < npx; i++)
        r[i] = g[i] = b[i] = luma(r[i], g[i], b[i]);
}

void augment_solarize(float *img, int c, size_t npx, float threshold) {
    for (size_t i = 0; i < (size_t)c * npx; i++)
        if (img[i] >= threshold) img[i] = 1.0f - img[i];
}

int augment_blur_ksize(int S) {
    int k = 2 * (S / 20) + 1;
    return k < 3 ? 3 : k;
}

/* torch's "reflect" padding (the edge is not repeated), folded again for tiny images. */
static int reflect(int i, int n) {
    if (n == 1) return 0;
    while (i < 0 || i >= n)
        i = i < 0 ? -i : 2 * (n - 1) - i;
    return i;
}

int augment_blur(float *img, int c, int S, float sigma, int k, augment_ws *ws) {
    if (S <= 0 || k < 1 || !(k & 1) || !(sigma > 0.0f) || (c != 1 && c != 3))
        return mimic_err(MIMIC_EINVAL, "augment_blur: bad arguments (S %d, k %d, sigma %g)", S, k,
                         sigma);
    if (ws_reserve(ws, 0, blur_floats(S, k)))
        return mimic_err(MIMIC_ENOMEM, "augment_blur: out of memory for %dx%d", S, S);
    const int rad = k / 2;
    float *tmp = ws->fbuf, *row = tmp + (size_t)S * S, *w = row + S + 2 * rad;
    double sum = 0.0;
    for (int j = 0; j < k; j++) {
        double x = (j - rad) / (double)sigma;
        sum += (w[j] = (float)exp(-0.5 * x * x));
    }
    for (int j = 0; j < k; j++)
        w[j] = (float)(w[j] / sum);
    for (int ch = 0; ch < c; ch++) {
        float *pl = img + (size_t)ch * S * S;
        for (int y = 0; y < S; y++) { /* vertical, contiguous along the row */
            float *t = tmp + (size_t)y * S;
            const float *s0 = pl + (size_t)reflect(y - rad, S) * S;
            for (int x = 0; x < S; x++)
                t[x] = w[0] * s0[x];
            for (int j = 1; j < k; j++) {
                const float *sj = pl + (size_t)reflect(y + j - rad, S) * S, wj = w[j];
                for (int x = 0; x < S; x++)
                    t[x] += wj * sj[x];
            }
        }
        for (int y = 0; y < S; y++) { /* horizontal, over a reflect-padded row */
            const float *t = tmp + (size_t)y * S;
            for (int x = -rad; x < S + rad; x++)
                row[x + rad] = t[reflect(x, S)];
            float *o = pl + (size_t)y * S; /* tap-outer: contiguous, vectorised */
            for (int x = 0; x < S; x++)
                o[x] = w[0] * row[x];
            for (int j = 1; j < k; j++) {
                const float wj = w[j], *rj = row + j;
                for (int x = 0; x < S; x++)
                    o[x] += wj * rj[x];
            }
        }
    }
    return 0;
}

/* ColorJitter: torchvision's get_params (a random order of the four ops, then the four
 * factors, each drawn only if its strength is not 0) and the ops in that order. */
static void jitter(float *img, int c, size_t npx, const augment_view *v, rng_t *rng) {
    int order[4] = {0, 1, 2, 3};
    for (int i = 3; i > 0; i--) {
        int j = (int)rng_below(rng, (uint64_t)i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    const float strength[4] = {v->brightness, v->contrast, v->saturation, v->hue};
    float f[4];
    for (int op = 0; op < 4; op++) {
        float lo = op == 3 ? -strength[op] : fmaxf(0.0f, 1.0f - strength[op]);
        float hi = op == 3 ? strength[op] : 1.0f + strength[op];
        f[op] = strength[op] > 0.0f ? lo + (hi - lo) * rng_uniform(rng) : 0.0f;
    }
    for (int i = 0; i < 4; i++) {
        int op = order[i];
        if (!(strength[op] > 0.0f)) continue;
        switch (op) {
        case 0:
            augment_brightness(img, c, npx, f[op]);
            break;
        case 1:
            augment_contrast(img, c, npx, f[op]);
            break;
        case 2:
            augment_saturation(img, c, npx, f[op]);
            break;
        default:
            augment_hue(img, c, npx, f[op]);
            break;
        }
    }
}

static int check_view(const augment_view *v) {
    const float p[4] = {v->jitter_p, v->gray_p, v->blur_p, v->solarize_p};
    for (int i = 0; i < 4; i++)
        if (!(p[i] >= 0.0f && p[i] <= 1.0f))
            return mimic_err(MIMIC_EINVAL, "augment_view: probability %g not in [0, 1]", p[i]);
    if (!(v->brightness >= 0.0f && v->contrast >= 0.0f && v->saturation >= 0.0f && v->hue >= 0.0f &&
          v->hue <= 0.5f))
        return mimic_err(MIMIC_EINVAL, "augment_view: bad jitter strengths (%g, %g, %g, %g)",
                         v->brightness, v->contrast, v->saturation, v->hue);
    if (!(v->scale_lo > 0.0f && v->scale_lo <= v->scale_hi && isfinite(v->scale_hi)))
        return mimic_err(MIMIC_EINVAL, "augment_view: bad scale range (%g, %g)", v->scale_lo,
                         v->scale_hi);
    if (!(v->ratio_lo > 0.0f && v->ratio_lo <= v->ratio_hi && isfinite(v->ratio_hi)))
        return mimic_err(MIMIC_EINVAL, "augment_view: bad ratio range (%g, %g)", v->ratio_lo,
                         v->ratio_hi);
    return 0;
}

int augment_view_ws(float *out, const image_u8 *in, int S, const augment_view *v, const float *mean,
                    const float *std, int out_channels, rng_t *rng, augment_ws *ws) {
    int rc = check_args(out, in, S, out_channels);
    if (!rc) rc = check_view(v);
    if (rc) return rc;
    MIMIC_CHECK(rng != NULL);
    float a[3], b[3];
    for (int c = 0; c < out_channels; c++) {
        float m = mean ? mean[c] : 0.0f, s = std ? std[c] : 1.0f;
        if (!(s > 0.0f) || !isfinite(m) || !isfinite(s))
            return mimic_err(MIMIC_EINVAL, "augment: bad normalisation mean %g std %g", m, s);
        a[c] = 1.0f / s;
        b[c] = -m / s;
    }
    augment_box box;
    int flip;
    rc = augment_rrc_draw(&box, &flip, in->w, in->h, v->scale_lo, v->scale_hi, v->ratio_lo,
                          v->ratio_hi, v->hflip, rng);
    /* ToTensor's [0,1] first: the colour ops are defined there */
    if (!rc) rc = resample_crop(out, in, &box, S, flip, NULL, NULL, out_channels, ws);
    if (rc) return rc;
    const size_t npx = (size_t)S * (size_t)S;
    for (size_t i = 0; i < (size_t)out_channels * npx; i++)
        out[i] = clamp01(out[i]); /* the resampling weights may overshoot 1 by an ulp */
    if (rng_uniform(rng) < v->jitter_p) jitter(out, out_channels, npx, v, rng);
    if (rng_uniform(rng) < v->gray_p) augment_grayscale(out, out_channels, npx);
    if (rng_uniform(rng) < v->blur_p) {
        float sigma = 0.1f + 1.9f * rng_uniform(rng);
        if ((rc = augment_blur(out, out_channels, S, sigma, augment_blur_ksize(S), ws))) return rc;
    }
    if (rng_uniform(rng) < v->solarize_p) augment_solarize(out, out_channels, npx, 0.5f);
    for (int c = 0; c < out_channels; c++) {
        float *o = out + (size_t)c * npx;
        for (size_t i = 0; i < npx; i++)
            o[i] = o[i] * a[c] + b[c];
    }
    return 0;
}
