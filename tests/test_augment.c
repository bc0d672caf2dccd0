// TIMEOUT: 120
/* test_augment — RandomResizedCrop / resize: identity, crop windows, the central-crop
 * fallback, flips, determinism, channel conversion, normalisation, and the optimised
 * resampler against a plain per-pixel reference. Also prints augment throughput. */
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
    bench("rrc 28x28x1 -> 32", 28, 28, 1, 32, 20000);
    bench("rrc 500x375x3 -> 224", 500, 375, 3, 224, 300);
    return testutil_summary("test_augment");
}
