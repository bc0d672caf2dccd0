// TIMEOUT: 120
/* test_augment — RandomResizedCrop / resize: identity, crop windows, the central-crop
 * fallback, flips, determinism, channel conversion, normalisation, and the optimised
 * resampler against a plain per-pixel reference. The contrastive view recipe: each colour
 * op against torchvision's formulas on hand-computed pixels, the blur against a plain 2-D
 * convolution, how often each random op fires, gray-image no-ops, and a warmed-up
 * scratch that never grows. Also prints augment throughput. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "augment.h"
#include "common.h"
#include "rng.h"
#include "testutil.h"

static image_u8 make_image(int w, int h, int c, uint64_t seed) {
    image_u8 img = {0};
    MIMIC_CHECK(image_u8_reserve(&img, w, h, c) == 0);
    rng_t r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < (size_t)w * h * c; i++)
        img.px[i] = (uint8_t)rng_below(&r, 256);
    return img;
}

/* out (c, S, S) vs the window (x0, y0, S, S) of img, as px/255. */
static double window_err(const float *out, const image_u8 *img, int x0, int y0, int S, int flip) {
    double worst = 0.0;
    for (int c = 0; c < img->c; c++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                int sx = x0 + (flip ? S - 1 - x : x);
                double want = img->px[((size_t)(y0 + y) * img->w + sx) * img->c + c] / 255.0;
                double d = fabs(out[((size_t)c * S + y) * S + x] - want);
                if (d > worst) worst = d;
            }
    return worst;
}

static void test_identity(void) {
    for (int c = 1; c <= 3; c += 2) {
        const int S = 32;
        image_u8 img = make_image(S, S, c, 7 + c);
        float *out = malloc(sizeof(float) * c * S * S);
        rng_t r;
        rng_seed(&r, 1);
        T_CHECK(augment_rrc(out, &img, S, 1.0f, 1.0f, 1.0f, 1.0f, 0, NULL, NULL, c, &r) == 0);
        double e = window_err(out, &img, 0, 0, S, 0);
        printf("identity rrc c=%d: max err %.2e\n", c, e);
        T_CHECK(e < 1e-6);
        T_CHECK(augment_resize(out, &img, S, NULL, NULL, c) == 0);
        T_CHECK(window_err(out, &img, 0, 0, S, 0) < 1e-6);
        free(out);
        image_u8_free(&img);
    }
}

/* A 40x30 image cannot hold a square crop of its full area, so all 10 draws fail and
 * torchvision falls back to the central crop clamped to the ratio range: 30x30 at x=5. */
static void test_fallback(void) {
    image_u8 img = make_image(40, 30, 3, 11);
    float out[3 * 30 * 30];
    rng_t r;
    rng_seed(&r, 5);
    T_CHECK(augment_rrc(out, &img, 30, 1.0f, 1.0f, 1.0f, 1.0f, 0, NULL, NULL, 3, &r) == 0);
    T_CHECK(window_err(out, &img, 5, 0, 30, 0) < 1e-6);
    /* a tall 30x40 image with ratio (1, 2): too tall, so w = 30, h = 30/1, at y = 5 */
    image_u8 tall = make_image(30, 40, 1, 12);
    float out2[30 * 30];
    T_CHECK(augment_rrc(out2, &tall, 30, 4.0f, 4.0f, 1.0f, 2.0f, 0, NULL, NULL, 1, &r) == 0);
    T_CHECK(window_err(out2, &tall, 0, 5, 30, 0) < 1e-6);
    image_u8_free(&img);
    image_u8_free(&tall);
}

/* scale 0.25 of a 64x64 image at ratio 1 is an exact 32x32 window: the output must equal
 * one window of the input, at offsets that vary with the seed. */
static void test_crop_window(void) {
    image_u8 img = make_image(64, 64, 3, 21);
    float out[3 * 32 * 32];
    int found = 0, distinct = 0, last_x = -1, last_y = -1;
    for (uint64_t seed = 0; seed < 8; seed++) {
        rng_t r;
        rng_seed(&r, seed);
        T_CHECK(augment_rrc(out, &img, 32, 0.25f, 0.25f, 1.0f, 1.0f, 0, NULL, NULL, 3, &r) == 0);
        int hit = 0;
        for (int y0 = 0; y0 <= 32 && !hit; y0++)
            for (int x0 = 0; x0 <= 32 && !hit; x0++)
                if (window_err(out, &img, x0, y0, 32, 0) < 1e-6) {
                    hit = 1;
                    if (x0 != last_x || y0 != last_y) distinct++;
                    last_x = x0;
                    last_y = y0;
                }
        found += hit;
    }
    printf("crop window: %d/8 outputs are exact windows, %d distinct offsets\n", found, distinct);
    T_CHECK(found == 8);
    T_CHECK(distinct >= 6);
    image_u8_free(&img);
}

static void test_flip_and_determinism(void) {
    const int S = 24;
    image_u8 img = make_image(S, S, 3, 31);
    float out[3 * 24 * 24], again[3 * 24 * 24];
    int flipped = 0, plain = 0;
    for (uint64_t seed = 0; seed < 200; seed++) {
        rng_t r;
        rng_seed(&r, seed);
        T_CHECK(augment_rrc(out, &img, S, 1.0f, 1.0f, 1.0f, 1.0f, 1, NULL, NULL, 3, &r) == 0);
        if (window_err(out, &img, 0, 0, S, 1) < 1e-6) flipped++;
        if (window_err(out, &img, 0, 0, S, 0) < 1e-6) plain++;
    }
    printf("hflip: %d of 200 mirrored, %d plain\n", flipped, plain);
    T_CHECK(flipped + plain == 200);
    T_CHECK(flipped > 70 && flipped < 130);

    image_u8 big = make_image(97, 61, 3, 32);
    float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    rng_t r1, r2, r3;
    rng_seed(&r1, 42);
    rng_seed(&r2, 42);
    rng_seed(&r3, 43);
    for (int k = 0; k < 5; k++) { /* several draws from one stream stay in step */
        T_CHECK(augment_rrc(out, &big, S, 0.08f, 1.0f, 0.75f, 4.0f / 3.0f, 1, mean, std, 3, &r1) ==
                0);
        T_CHECK(augment_rrc(again, &big, S, 0.08f, 1.0f, 0.75f, 4.0f / 3.0f, 1, mean, std, 3,
                            &r2) == 0);
        T_CHECK(memcmp(out, again, sizeof out) == 0);
    }
    T_CHECK(augment_rrc(again, &big, S, 0.08f, 1.0f, 0.75f, 4.0f / 3.0f, 1, mean, std, 3, &r3) ==
            0);
    T_CHECK(memcmp(out, again, sizeof out) != 0);
    image_u8_free(&img);
    image_u8_free(&big);
}

static void test_channels_and_norm(void) {
    image_u8 rgb = {0};
    T_CHECK(image_u8_reserve(&rgb, 10, 8, 3) == 0);
    for (int i = 0; i < 80; i++) {
        rgb.px[3 * i] = 200;
        rgb.px[3 * i + 1] = 100;
        rgb.px[3 * i + 2] = 50;
    }
    float g[16 * 16];
    T_CHECK(augment_resize(g, &rgb, 16, NULL, NULL, 1) == 0);
    double want = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255.0, worst = 0;
    for (int i = 0; i < 256; i++)
        worst = fmax(worst, fabs(g[i] - want));
    printf("rgb->gray: max err %.2e\n", worst);
    T_CHECK(worst < 1e-5);

    image_u8 gray = {0};
    T_CHECK(image_u8_reserve(&gray, 5, 7, 1) == 0);
    memset(gray.px, 128, 35);
    float o3[3 * 12 * 12];
    float mean[3] = {0.5f, 0.4f, 0.3f}, std[3] = {0.25f, 0.5f, 2.0f};
    T_CHECK(augment_resize(o3, &gray, 12, mean, std, 3) == 0);
    worst = 0;
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 144; i++)
            worst = fmax(worst, fabs(o3[c * 144 + i] - (128 / 255.0 - mean[c]) / std[c]));
    printf("gray->rgb + normalise: max err %.2e\n", worst);
    T_CHECK(worst < 1e-5);

    /* normalising by the image's own statistics gives mean 0, std 1 */
    image_u8 img = make_image(48, 48, 3, 41);
    float m[3], s[3], *out = malloc(sizeof(float) * 3 * 48 * 48);
    for (int c = 0; c < 3; c++) {
        double sum = 0, sq = 0;
        for (int i = 0; i < 48 * 48; i++) {
            double v = img.px[3 * i + c] / 255.0;
            sum += v;
            sq += v * v;
        }
        m[c] = (float)(sum / 2304);
        s[c] = (float)sqrt(sq / 2304 - (sum / 2304) * (sum / 2304));
    }
    T_CHECK(augment_resize(out, &img, 48, m, s, 3) == 0);
    for (int c = 0; c < 3; c++) {
        double sum = 0, sq = 0;
        for (int i = 0; i < 2304; i++) {
            sum += out[c * 2304 + i];
            sq += (double)out[c * 2304 + i] * out[c * 2304 + i];
        }
        double om = sum / 2304, os = sqrt(sq / 2304 - om * om);
        printf("normalised channel %d: mean %.2e std %.6f\n", c, om, os);
        T_CHECK(fabs(om) < 1e-4 && fabs(os - 1.0) < 1e-3);
    }
    free(out);
    image_u8_free(&img);
    image_u8_free(&rgb);
    image_u8_free(&gray);
}

/* Plain reference: PIL's antialiased bilinear computed per output pixel over the whole
 * source, in double, with no precomputed tables. */
static double tri(double x) {
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

static void ref_weights(double *w, int in_n, int out_n, int i) {
    double scale = (double)in_n / out_n, support = scale > 1.0 ? scale : 1.0;
    double center = (i + 0.5) * scale, sum = 0.0;
    for (int x = 0; x < in_n; x++)
        sum += (w[x] = tri((x + 0.5 - center) / support));
    for (int x = 0; x < in_n; x++)
        w[x] /= sum;
}

static void ref_resize(float *out, const image_u8 *in, int S) {
    double *wx = malloc(sizeof(double) * in->w), *wy = malloc(sizeof(double) * in->h);
    for (int y = 0; y < S; y++) {
        ref_weights(wy, in->h, S, y);
        for (int x = 0; x < S; x++) {
            ref_weights(wx, in->w, S, x);
            for (int c = 0; c < in->c; c++) {
                double a = 0.0;
                for (int sy = 0; sy < in->h; sy++)
                    for (int sx = 0; sx < in->w; sx++)
                        a += wy[sy] * wx[sx] * in->px[((size_t)sy * in->w + sx) * in->c + c];
                out[((size_t)c * S + y) * S + x] = (float)(a / 255.0);
            }
        }
    }
    free(wx);
    free(wy);
}

static void test_reference(void) {
    struct {
        int w, h, c, S;
    } cases[] = {
        {100, 75, 3, 32}, {20, 13, 1, 57}, {37, 37, 3, 37}, {100, 10, 1, 32}, {333, 250, 3, 64}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        image_u8 img = make_image(cases[k].w, cases[k].h, cases[k].c, 50 + k);
        int S = cases[k].S;
        size_t n = (size_t)cases[k].c * S * S;
        float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
        T_CHECK(augment_resize(a, &img, S, NULL, NULL, cases[k].c) == 0);
        ref_resize(b, &img, S);
        char name[96];
        snprintf(name, sizeof name, "resize %dx%dx%d -> %d vs reference", cases[k].w, cases[k].h,
                 cases[k].c, S);
        testutil_close(name, a, b, n, 2e-6);
        free(a);
        free(b);
        image_u8_free(&img);
    }
    /* upscaling is plain half-pixel bilinear: [0, 255] -> 4 gives 0, 1/4, 3/4, 1 */
    image_u8 two = {0};
    T_CHECK(image_u8_reserve(&two, 2, 1, 1) == 0);
    two.px[0] = 0;
    two.px[1] = 255;
    float o[16], want[4] = {0.0f, 0.25f, 0.75f, 1.0f};
    T_CHECK(augment_resize(o, &two, 4, NULL, NULL, 1) == 0);
    for (int y = 0; y < 4; y++)
        testutil_close("bilinear [0,255] -> 4", o + 4 * y, want, 4, 1e-6);
    image_u8_free(&two);
}

static void test_errors(void) {
    image_u8 img = make_image(8, 8, 3, 61), two = {0};
    float out[3 * 8 * 8];
    float zero_std[3] = {1, 0, 1};
    rng_t r;
    rng_seed(&r, 1);
    mimic_set_quiet(1);
    T_CHECK(augment_resize(out, &img, 0, NULL, NULL, 3) == MIMIC_EINVAL);
    T_CHECK(augment_resize(out, &img, 8, NULL, NULL, 2) == MIMIC_EINVAL);
    T_CHECK(augment_resize(out, &img, 8, NULL, zero_std, 3) == MIMIC_EINVAL);
    T_CHECK(augment_resize(out, &two, 8, NULL, NULL, 3) == MIMIC_EINVAL);
    T_CHECK(augment_rrc(out, &img, 8, 0.5f, 0.1f, 1, 1, 0, NULL, NULL, 3, &r) == MIMIC_EINVAL);
    T_CHECK(augment_rrc(out, &img, 8, 0.1f, 1, 0, 1, 0, NULL, NULL, 3, &r) == MIMIC_EINVAL);
    T_CHECK(image_u8_reserve(&two, 8, 8, 2) == 0);
    T_CHECK(augment_resize(out, &two, 8, NULL, NULL, 3) == MIMIC_EINVAL);
    mimic_set_quiet(0);
    image_u8_free(&img);
    image_u8_free(&two);
    image_u8_free(&two); /* twice is a no-op */
}

/* ---------------------------------------------------------------- the view recipe */

/* A 2x2 RGB image, planar: pixels (0.8,0.4,0.2) (0.1,0.6,0.3) (0.2,0.3,0.9) (0.5,0.5,0.5). */
static const float TINY[12] = {0.8f, 0.1f, 0.2f, 0.5f, 0.4f, 0.6f,
                               0.3f, 0.5f, 0.2f, 0.3f, 0.9f, 0.5f};

static double luma_d(double r, double g, double b) {
    return 0.299 * r + 0.587 * g + 0.114 * b;
}

static double clamp_d(double x) {
    return x < 0 ? 0 : x > 1 ? 1 : x;
}

static void check_op(const char *name, const float *got, const double *want, int n) {
    float w[12];
    for (int i = 0; i < n; i++)
        w[i] = (float)want[i];
    testutil_close(name, got, w, (size_t)n, 2e-6);
}

static void test_colour_ops(void) {
    float img[12];
    double want[12];
    /* brightness 1.5: 1.5 x, clamped */
    memcpy(img, TINY, sizeof img);
    augment_brightness(img, 3, 4, 1.5f);
    for (int i = 0; i < 12; i++)
        want[i] = clamp_d(1.5 * TINY[i]);
    check_op("brightness 1.5", img, want, 12);
    /* contrast 0.5 and 1.8: blend with the mean luma of the whole image */
    double m = 0;
    for (int p = 0; p < 4; p++)
        m += luma_d(TINY[p], TINY[4 + p], TINY[8 + p]) / 4;
    const float cf[2] = {0.5f, 1.8f};
    for (int k = 0; k < 2; k++) {
        memcpy(img, TINY, sizeof img);
        augment_contrast(img, 3, 4, cf[k]);
        for (int i = 0; i < 12; i++)
            want[i] = clamp_d(cf[k] * TINY[i] + (1 - cf[k]) * m);
        check_op(k ? "contrast 1.8" : "contrast 0.5", img, want, 12);
    }
    /* saturation 0 is the luma, 2 pushes away from it */
    const float sf[2] = {0.0f, 2.0f};
    for (int k = 0; k < 2; k++) {
        memcpy(img, TINY, sizeof img);
        augment_saturation(img, 3, 4, sf[k]);
        for (int p = 0; p < 4; p++) {
            double l = luma_d(TINY[p], TINY[4 + p], TINY[8 + p]);
            for (int c = 0; c < 3; c++)
                want[4 * c + p] = clamp_d(sf[k] * TINY[4 * c + p] + (1 - sf[k]) * l);
        }
        check_op(k ? "saturation 2" : "saturation 0", img, want, 12);
    }
    /* hue: Python's colorsys (rgb_to_hsv, h = (h + f) % 1, hsv_to_rgb) gives these */
    const double hue_p01[12] = {0.8, 0.1, 0.52, 0.5, 0.76, 0.6, 0.2, 0.5, 0.2, 0.6, 0.9, 0.5};
    const double hue_m025[12] = {0.7, 0.6, 0.2, 0.5, 0.2, 0.55, 0.9, 0.5, 0.8, 0.1, 0.45, 0.5};
    memcpy(img, TINY, sizeof img);
    augment_hue(img, 3, 4, 0.1f);
    check_op("hue +0.1 vs colorsys", img, hue_p01, 12);
    memcpy(img, TINY, sizeof img);
    augment_hue(img, 3, 4, -0.25f);
    check_op("hue -0.25 vs colorsys", img, hue_m025, 12);
    memcpy(img, TINY, sizeof img);
    augment_hue(img, 3, 4, 0.0f);
    for (int i = 0; i < 12; i++)
        want[i] = TINY[i];
    check_op("hue 0 is the identity", img, want, 12);
    float red[3] = {1, 0, 0};
    augment_hue(red, 3, 1, 1.0f / 3.0f);
    T_CHECK(fabsf(red[0]) < 1e-6f && fabsf(red[1] - 1) < 1e-6f && fabsf(red[2]) < 1e-6f);
    /* grayscale: every channel the ITU-R 601 luma */
    memcpy(img, TINY, sizeof img);
    augment_grayscale(img, 3, 4);
    for (int p = 0; p < 4; p++)
        for (int c = 0; c < 3; c++)
            want[4 * c + p] = luma_d(TINY[p], TINY[4 + p], TINY[8 + p]);
    check_op("grayscale luma", img, want, 12);
    /* solarize at 0.5: x >= 0.5 becomes 1 - x */
    float sol[6] = {0.0f, 0.49f, 0.5f, 0.6f, 1.0f, 0.25f};
    augment_solarize(sol, 1, 6, 0.5f);
    const double sol_want[6] = {0.0, 0.49, 0.5, 0.4, 0.0, 0.25};
    check_op("solarize 0.5", sol, sol_want, 6);

    /* one channel: saturation, hue and grayscale change nothing; brightness, contrast act */
    float g[4] = {0.1f, 0.4f, 0.7f, 0.9f}, g0[4];
    memcpy(g0, g, sizeof g);
    augment_saturation(g, 1, 4, 0.3f);
    augment_hue(g, 1, 4, 0.2f);
    augment_grayscale(g, 1, 4);
    T_CHECK(memcmp(g, g0, sizeof g) == 0);
    augment_contrast(g, 1, 4, 0.5f);
    const double gc[4] = {0.3125, 0.4625, 0.6125, 0.7125}; /* 0.5 x + 0.5 * mean 0.525 */
    check_op("gray contrast 0.5", g, gc, 4);
    augment_brightness(g, 1, 4, 2.0f);
    const double gb[4] = {0.625, 0.925, 1.0, 1.0};
    check_op("gray brightness 2", g, gb, 4);
}

/* Plain reference: 2-D convolution with the outer product of torchvision's kernel,
 * reflect indexing, in double. */
static int reflect_ref(int i, int n) {
    return i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i;
}

static void ref_blur(float *out, const float *in, int S, double sigma, int k) {
    double w[64], sum = 0;
    for (int j = 0; j < k; j++)
        sum += (w[j] = exp(-0.5 * pow((j - k / 2) / sigma, 2)));
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            double a = 0;
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++)
                    a += w[i] / sum * w[j] / sum *
                         in[reflect_ref(y + i - k / 2, S) * S + reflect_ref(x + j - k / 2, S)];
            out[y * S + x] = (float)a;
        }
}

static void test_blur(void) {
    T_CHECK(augment_blur_ksize(224) == 23 && augment_blur_ksize(32) == 3 &&
            augment_blur_ksize(16) == 3 && augment_blur_ksize(64) == 7);
    enum { S = 21, K = 9 };
    augment_ws ws = {0};
    float d[S * S] = {0};
    d[10 * S + 10] = 1.0f; /* a delta in the middle: the output is the 2-D kernel */
    T_CHECK(augment_blur(d, 1, S, 1.5f, K, &ws) == 0);
    double sum = 0, worst_sym = 0, worst_k = 0, w1[K], s1 = 0;
    for (int j = 0; j < K; j++)
        s1 += (w1[j] = exp(-0.5 * pow((j - K / 2) / 1.5, 2)));
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            float v = d[y * S + x];
            sum += v;
            worst_sym = fmax(worst_sym, fabs(v - d[x * S + y]));
            worst_sym = fmax(worst_sym, fabs(v - d[y * S + (S - 1 - x)]));
            int in = abs(y - 10) <= K / 2 && abs(x - 10) <= K / 2;
            double want = in ? w1[y - 10 + K / 2] / s1 * w1[x - 10 + K / 2] / s1 : 0.0;
            worst_k = fmax(worst_k, fabs(v - want));
        }
    printf("blur of a delta: sum %.7f, asymmetry %.1e, vs kernel %.1e, centre %.5f\n", sum,
           worst_sym, worst_k, d[10 * S + 10]);
    T_CHECK(fabs(sum - 1.0) < 1e-5 && worst_sym < 1e-7 && worst_k < 1e-7);

    /* a constant stays constant (reflect padding), a random image matches the reference */
    float c[3 * S * S], r[3 * S * S], ref[S * S];
    for (int i = 0; i < 3 * S * S; i++)
        c[i] = 0.375f;
    T_CHECK(augment_blur(c, 3, S, 2.0f, K, &ws) == 0);
    double worst = 0;
    for (int i = 0; i < 3 * S * S; i++)
        worst = fmax(worst, fabs(c[i] - 0.375));
    T_CHECK(worst < 1e-6);
    unsigned long long seed = 5;
    testutil_fill(r, 3 * S * S, 0.0f, 1.0f, &seed);
    float r0[3 * S * S];
    memcpy(r0, r, sizeof r);
    T_CHECK(augment_blur(r, 3, S, 0.7f, K, &ws) == 0);
    for (int ch = 0; ch < 3; ch++) {
        ref_blur(ref, r0 + ch * S * S, S, 0.7, K);
        testutil_close("blur vs 2-D reference", r + ch * S * S, ref, S * S, 1e-5);
    }
    /* the mean is kept away from the borders: a blurred delta field sums to the same */
    float field[S * S] = {0};
    field[6 * S + 7] = 0.5f, field[12 * S + 9] = 0.25f, field[9 * S + 14] = 1.0f;
    T_CHECK(augment_blur(field, 1, S, 1.0f, 7, &ws) == 0);
    sum = 0;
    for (int i = 0; i < S * S; i++)
        sum += field[i];
    T_CHECK(fabs(sum - 1.75) < 1e-5);
    augment_ws_free(&ws);
}

/* MoCo v3's second view: crop (0.08, 1), flip, jitter (0.4, 0.4, 0.2, 0.1) p 0.8,
 * grayscale p 0.2, blur p 0.1, solarize p 0.2. */
static augment_view moco_view(void) {
    return (augment_view){.scale_lo = 0.08f,
                          .scale_hi = 1,
                          .ratio_lo = 0.75f,
                          .ratio_hi = 4 / 3.0f,
                          .hflip = 1,
                          .jitter_p = 0.8f,
                          .brightness = 0.4f,
                          .contrast = 0.4f,
                          .saturation = 0.2f,
                          .hue = 0.1f,
                          .gray_p = 0.2f,
                          .blur_p = 0.1f,
                          .solarize_p = 0.2f};
}

static augment_view view_off(void) {
    return (augment_view){.scale_lo = 1, .scale_hi = 1, .ratio_lo = 1, .ratio_hi = 1};
}

/* How often an op fires over n draws of one stream; `fired` tells from the output. */
static int count_fired(const augment_view *v, const image_u8 *img, int S, int n,
                       int (*fired)(const float *, const float *, int), augment_ws *ws) {
    float *base = malloc(sizeof(float) * 3 * S * S), *out = malloc(sizeof(float) * 3 * S * S);
    augment_view off = view_off();
    rng_t r;
    rng_seed(&r, 1);
    MIMIC_CHECK(augment_view_ws(base, img, S, &off, NULL, NULL, 3, &r, ws) == 0);
    int hits = 0;
    for (int i = 0; i < n; i++) {
        MIMIC_CHECK(augment_view_ws(out, img, S, v, NULL, NULL, 3, &r, ws) == 0);
        hits += fired(out, base, S);
    }
    free(base);
    free(out);
    return hits;
}

static int differs(const float *o, const float *b, int S) {
    return memcmp(o, b, sizeof(float) * 3 * S * S) != 0;
}

static int is_gray(const float *o, const float *b, int S) {
    (void)b;
    return memcmp(o, o + S * S, sizeof(float) * S * S) == 0 &&
           memcmp(o, o + 2 * S * S, sizeof(float) * S * S) == 0;
}

static void test_view_probabilities(void) {
    const int S = 12, n = 4000;
    image_u8 img = make_image(S, S, 3, 81);
    augment_ws ws = {0};
    struct {
        const char *name;
        float p;
        int (*fired)(const float *, const float *, int);
    } ops[] = {{"jitter", 0.8f, differs},
               {"grayscale", 0.2f, is_gray},
               {"blur", 0.1f, differs},
               {"solarize", 0.2f, differs}};
    for (int k = 0; k < 4; k++) {
        augment_view v = view_off();
        if (k == 0) v.jitter_p = ops[k].p, v.brightness = 0.4f;
        if (k == 1) v.gray_p = ops[k].p;
        if (k == 2) v.blur_p = ops[k].p;
        if (k == 3) v.solarize_p = ops[k].p;
        int hits = count_fired(&v, &img, S, n, ops[k].fired, &ws);
        double want = ops[k].p * n, sd = sqrt(n * ops[k].p * (1 - ops[k].p));
        printf("%s p %.1f: %d of %d (expect %.0f +- %.0f)\n", ops[k].name, ops[k].p, hits, n, want,
               sd);
        T_CHECK(fabs(hits - want) < 4 * sd);
    }
    /* p 0 never, p 1 always */
    augment_view v = view_off();
    T_CHECK(count_fired(&v, &img, S, 200, differs, &ws) == 0);
    v.solarize_p = 1.0f;
    T_CHECK(count_fired(&v, &img, S, 200, differs, &ws) == 200);
    image_u8_free(&img);
    augment_ws_free(&ws);
}

/* Brightness alone: the output is f x with f in [0.6, 1.4] (torchvision's range for 0.4),
 * every factor drawn anew; hue alone keeps the luma roughly and never the image. */
static void test_jitter_ranges(void) {
    const int S = 8;
    image_u8 img = make_image(S, S, 3, 91);
    augment_ws ws = {0};
    augment_view v = view_off();
    v.jitter_p = 1.0f;
    v.brightness = 0.4f;
    float out[3 * 8 * 8], base[3 * 8 * 8];
    augment_view off = view_off();
    rng_t r;
    rng_seed(&r, 3);
    T_CHECK(augment_view_ws(base, &img, S, &off, NULL, NULL, 3, &r, &ws) == 0);
    double fmin = 9, fmax_ = 0;
    int ok = 1;
    for (int t = 0; t < 500; t++) {
        T_CHECK(augment_view_ws(out, &img, S, &v, NULL, NULL, 3, &r, &ws) == 0);
        double f = -1;
        for (int i = 0; i < 3 * S * S; i++) {
            if (base[i] < 0.05f || out[i] >= 1.0f) continue; /* clamped or too dark */
            double fi = out[i] / base[i];
            if (f < 0) f = fi;
            ok &= fabs(fi - f) < 1e-4;
        }
        fmin = fmin < f ? fmin : f;
        fmax_ = fmax_ > f ? fmax_ : f;
    }
    printf("brightness 0.4: one factor per image, in [%.3f, %.3f]\n", fmin, fmax_);
    T_CHECK(ok && fmin >= 0.6 - 1e-4 && fmax_ <= 1.4 + 1e-4 && fmin < 0.65 && fmax_ > 1.35);
    image_u8_free(&img);
    augment_ws_free(&ws);
}

/* The whole recipe: deterministic per stream, normalised, gray images unaffected by the
 * colour-only ops, and a scratch reserved up front that never grows (no allocation). */
static void test_view_recipe(void) {
    const int S = 32;
    augment_view v = moco_view();
    v.blur_p = 0.5f;
    image_u8 img = make_image(61, 47, 3, 101);
    float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    float a[3 * 32 * 32], b[3 * 32 * 32];
    augment_ws ws = {0};
    T_CHECK(augment_ws_reserve(&ws, 61, 47, 3, S) == 0);
    const int *ib = ws.ibuf;
    const float *fb = ws.fbuf;
    size_t icap = ws.icap, fcap = ws.fcap;
    rng_t r1, r2;
    rng_seed(&r1, 9);
    rng_seed(&r2, 9);
    int same = 1, in_range = 1;
    for (int t = 0; t < 300; t++) {
        v.blur_p = t % 2 ? 1.0f : 0.5f; /* every blur, too */
        T_CHECK(augment_view_ws(a, &img, S, &v, mean, std, 3, &r1, &ws) == 0);
        T_CHECK(augment_view_ws(b, &img, S, &v, mean, std, 3, &r2, &ws) == 0);
        same &= memcmp(a, b, sizeof a) == 0;
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < S * S; i++) {
                float x = a[c * S * S + i] * std[c] + mean[c];
                in_range &= x >= -1e-5f && x <= 1 + 1e-5f;
            }
    }
    T_CHECK(same && in_range);
    printf("view recipe: 300 views, deterministic, in range; scratch %s\n",
           ws.ibuf == ib && ws.fbuf == fb && ws.icap == icap && ws.fcap == fcap ? "never grew"
                                                                                : "GREW");
    T_CHECK(ws.ibuf == ib && ws.fbuf == fb && ws.icap == icap && ws.fcap == fcap);

    /* a gray image: saturation, hue and grayscale alone leave it as the plain crop */
    image_u8 gray = make_image(40, 40, 1, 102);
    augment_view colour = view_off();
    colour.jitter_p = 1, colour.saturation = 0.5f, colour.hue = 0.5f, colour.gray_p = 1;
    augment_view off = view_off();
    for (int cout = 1; cout <= 3; cout += 2) {
        rng_t ra, rb;
        rng_seed(&ra, 4);
        rng_seed(&rb, 4);
        T_CHECK(augment_view_ws(a, &gray, S, &colour, NULL, NULL, cout, &ra, &ws) == 0);
        T_CHECK(augment_view_ws(b, &gray, S, &off, NULL, NULL, cout, &rb, &ws) == 0);
        double d = 0;
        for (int i = 0; i < cout * S * S; i++)
            d = fmax(d, fabs(a[i] - b[i]));
        printf("gray input, %d channel(s) out: colour-only ops change it by %.1e\n", cout, d);
        T_CHECK(d < 1e-6);
    }
    /* ... while brightness and contrast do act on it */
    colour.brightness = 0.4f, colour.contrast = 0.4f;
    rng_t rc;
    rng_seed(&rc, 4);
    T_CHECK(augment_view_ws(a, &gray, S, &colour, NULL, NULL, 1, &rc, &ws) == 0);
    T_CHECK(memcmp(a, b, sizeof(float) * S * S) != 0);

    mimic_set_quiet(1);
    augment_view bad = v;
    bad.gray_p = 1.5f;
    T_CHECK(augment_view_ws(a, &img, S, &bad, NULL, NULL, 3, &r1, &ws) == MIMIC_EINVAL);
    bad = v, bad.hue = 0.6f;
    T_CHECK(augment_view_ws(a, &img, S, &bad, NULL, NULL, 3, &r1, &ws) == MIMIC_EINVAL);
    T_CHECK(augment_blur(a, 3, S, 1.0f, 4, &ws) == MIMIC_EINVAL);
    mimic_set_quiet(0);
    image_u8_free(&img);
    image_u8_free(&gray);
    augment_ws_free(&ws);
}

static void bench(const char *name, int w, int h, int c, int S, int iters) {
    image_u8 img = make_image(w, h, c, 71);
    float *out = malloc(sizeof(float) * c * S * S);
    rng_t r;
    rng_seed(&r, 3);
    double t0 = mimic_now();
    for (int i = 0; i < iters; i++)
        augment_rrc(out, &img, S, 0.08f, 1.0f, 0.75f, 4.0f / 3.0f, 1, NULL, NULL, c, &r);
    double dt = mimic_now() - t0;
    printf("bench %s: %.0f images/s (1 thread)\n", name, iters / dt);
    /* the contrastive recipe, every op on (blur included) */
    augment_view v = moco_view();
    v.jitter_p = v.blur_p = v.solarize_p = 1.0f;
    v.gray_p = 0.0f;
    augment_ws ws = {0};
    t0 = mimic_now();
    for (int i = 0; i < iters; i++)
        augment_view_ws(out, &img, S, &v, NULL, NULL, c, &r, &ws);
    dt = mimic_now() - t0;
    printf("bench %s, view with every op: %.0f images/s (1 thread)\n", name, iters / dt);
    augment_ws_free(&ws);
    free(out);
    image_u8_free(&img);
}

int main(void) {
    test_identity();
    test_fallback();
    test_crop_window();
    test_flip_and_determinism();
    test_channels_and_norm();
    test_reference();
    test_errors();
    test_colour_ops();
    test_blur();
    test_view_probabilities();
    test_jitter_ranges();
    test_view_recipe();
    bench("rrc 28x28x1 -> 32", 28, 28, 1, 32, 20000);
    bench("rrc 500x375x3 -> 224", 500, 375, 3, 224, 300);
    return testutil_summary("test_augment");
}
