/* Gradients of a depthwise convolution on channels_last maps, for the strides and dilations whose
 * oneDNN backward kernels are slow on the CPU (see pnfs_pipeline/nas/fast_depthwise.py).
 *
 * x: (N, H, W, C) input, g: (N, Ho, Wo, C) output gradient, weights (C, k, k) in float32:
 *   grad_w[c, i, j] = sum_{n, yo, xo} g[n, yo, xo, c] * x[n, yo*s - p + i*d, xo*s - p + j*d, c]
 *   grad_x[n, yi, xi, c] = sum over taps (i, j) with yi = yo*s - p + i*d, xi = xo*s - p + j*d of
 *                          w[c, i, j] * g[n, yo, xo, c]
 * Every inner loop runs over the channels, which are contiguous.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "common.h"

typedef struct {
    int64_t N, C, H, W, Ho, Wo;
    int kernel, stride, dilation, padding;
} depthwise_t;

#define FLUSH_OUTPUT_ROWS 4 /* float sums over a few output rows, then double */

#define LANES 16

/* The first xo whose tap lands inside [0, W): xo * s - p + j * d >= 0. */
static inline int64_t first_output(int64_t offset, int stride) {
    return offset >= 0 ? 0 : (-offset + stride - 1) / stride;
}

/* One past the last xo with xo * s + offset < W. */
static inline int64_t end_output(int64_t offset, int stride, int64_t W, int64_t Wo) {
    int64_t last = W - 1 - offset;
    if (last < 0) return 0;
    int64_t end = last / stride + 1;
    return end < Wo ? end : Wo;
}

#define DEFINE_DEPTHWISE(TYPE, NAME)                                                             \
    int pnfs_depthwise_weight_grad_##NAME(const TYPE *g, const TYPE *x, int64_t N, int64_t C,    \
                                          int64_t H, int64_t W, int64_t Ho, int64_t Wo,          \
                                          int kernel, int stride, int dilation, int padding,     \
                                          int threads, float *grad_w) {                          \
        if (N < 1 || C < 1 || kernel < 1 || stride < 1 || dilation < 1 || threads < 1) return 1; \
        const int taps = kernel * kernel;                                                       \
        const int64_t rows = N * Ho;                                                            \
        double *partial = calloc((size_t)threads * taps * C, sizeof(double));                   \
        if (!partial) return 2;                                                                 \
        int failed = 0;                                                                         \
        _Pragma("omp parallel num_threads(threads) reduction(|| : failed)")                     \
        {                                                                                       \
            int t = omp_get_thread_num(), n_threads = omp_get_num_threads();                    \
            int64_t r0 = rows * t / n_threads, r1 = rows * (t + 1) / n_threads;                 \
            /* Per output row: its gradient in float, and per-tap sums over a few rows. */     \
            float *buffer = malloc(((size_t)Wo * C + (size_t)taps * C) * sizeof(float));        \
            if (!buffer) {                                                                      \
                failed = 1;                                                                     \
            } else {                                                                            \
                float *restrict grad_row = buffer, *restrict sums = buffer + (size_t)Wo * C;    \
                double *restrict total = partial + (size_t)t * taps * C;                        \
                memset(sums, 0, (size_t)taps * C * sizeof(float));                              \
                for (int64_t r = r0; r < r1; r++) {                                             \
                    int64_t n = r / Ho, yo = r % Ho;                                            \
                    const TYPE *restrict gp = g + (n * Ho + yo) * Wo * C;                       \
                    for (int64_t e = 0; e < Wo * C; e++) grad_row[e] = load_##NAME(gp[e]);      \
                    for (int i = 0; i < kernel; i++) {                                          \
                        int64_t yi = yo * stride - padding + (int64_t)i * dilation;             \
                        if (yi < 0 || yi >= H) continue;                                        \
                        const TYPE *restrict x_row = x + (n * H + yi) * W * C;                  \
                        for (int j = 0; j < kernel; j++) {                                      \
                            int64_t offset = (int64_t)j * dilation - padding;                   \
                            int64_t xo0 = first_output(offset, stride);                         \
                            int64_t xo1 = end_output(offset, stride, W, Wo);                    \
                            float *restrict tap_sums = sums + (size_t)(i * kernel + j) * C;     \
                            int64_t c0 = 0;                                                     \
                            /* 16 channels at a time in four independent register accumulators:     \
                             * one would wait on the previous multiply-add at every position. */    \
                            for (; c0 + LANES <= C; c0 += LANES) {                                  \
                                float acc0[LANES] = {0}, acc1[LANES] = {0}, acc2[LANES] = {0},      \
                                      acc3[LANES] = {0};                                            \
                                const float *restrict gv = grad_row + c0;                           \
                                const TYPE *restrict xv = x_row + offset * C + c0;                  \
                                const int64_t xs = stride * C;                                      \
                                int64_t xo = xo0;                                                   \
                                for (; xo + 4 <= xo1; xo += 4)                                      \
                                    for (int l = 0; l < LANES; l++) {                               \
                                        acc0[l] += gv[xo * C + l] * load_##NAME(xv[xo * xs + l]);   \
                                        acc1[l] += gv[(xo + 1) * C + l] * load_##NAME(xv[(xo + 1) * xs + l]);\
                                        acc2[l] += gv[(xo + 2) * C + l] * load_##NAME(xv[(xo + 2) * xs + l]);\
                                        acc3[l] += gv[(xo + 3) * C + l] * load_##NAME(xv[(xo + 3) * xs + l]);\
                                    }                                                               \
                                for (; xo < xo1; xo++)                                              \
                                    for (int l = 0; l < LANES; l++)                                 \
                                        acc0[l] += gv[xo * C + l] * load_##NAME(xv[xo * xs + l]);   \
                                for (int l = 0; l < LANES; l++)                                     \
                                    tap_sums[c0 + l] += (acc0[l] + acc1[l]) + (acc2[l] + acc3[l]);  \
                            }                                                                       \
                            for (int64_t c = c0; c < C; c++) {                                  \
                                float acc = 0.f;                                                \
                                for (int64_t xo = xo0; xo < xo1; xo++)                          \
                                    acc += grad_row[xo * C + c] * load_##NAME(x_row[(xo * stride + offset) * C + c]); \
                                tap_sums[c] += acc;                                             \
                            }                                                                   \
                        }                                                                       \
                    }                                                                           \
                    if ((r - r0) % FLUSH_OUTPUT_ROWS == FLUSH_OUTPUT_ROWS - 1 || r == r1 - 1)    \
                        flush_sums(sums, total, (int64_t)taps * C);                             \
                }                                                                               \
                free(buffer);                                                                   \
            }                                                                                   \
        }                                                                                       \
        if (!failed) sum_weight_partials(partial, threads, taps, C, grad_w);                    \
        free(partial);                                                                          \
        return failed ? 2 : 0;                                                                  \
    }                                                                                           \
                                                                                                \
    int pnfs_depthwise_input_grad_##NAME(const TYPE *g, const float *weight, int64_t N,         \
                                         int64_t C, int64_t H, int64_t W, int64_t Ho,           \
                                         int64_t Wo, int kernel, int stride, int dilation,      \
                                         int padding, int threads, TYPE *grad_x) {              \
        if (N < 1 || C < 1 || kernel < 1 || stride < 1 || dilation < 1 || threads < 1) return 1; \
        const int taps = kernel * kernel;                                                       \
        float *by_tap = malloc((size_t)taps * C * sizeof(float));                               \
        if (!by_tap) return 2;                                                                  \
        for (int64_t c = 0; c < C; c++)                                                         \
            for (int tap = 0; tap < taps; tap++) by_tap[(size_t)tap * C + c] = weight[c * taps + tap]; \
        int failed = 0;                                                                         \
        _Pragma("omp parallel num_threads(threads) reduction(|| : failed)")                     \
        {                                                                                       \
            float *restrict acc = malloc((size_t)C * sizeof(float));                            \
            if (!acc) failed = 1;                                                               \
            _Pragma("omp for schedule(static)")                                                 \
            for (int64_t r = 0; r < N * H; r++) {                                               \
                if (!acc) continue;                                                             \
                int64_t n = r / H, yi = r % H;                                                  \
                for (int64_t xi = 0; xi < W; xi++) {                                            \
                    for (int64_t c = 0; c < C; c++) acc[c] = 0.f;                               \
                    for (int i = 0; i < kernel; i++) {                                          \
                        int64_t ty = yi + padding - (int64_t)i * dilation;                      \
                        if (ty < 0 || ty % stride) continue;                                    \
                        int64_t yo = ty / stride;                                               \
                        if (yo >= Ho) continue;                                                 \
                        for (int j = 0; j < kernel; j++) {                                      \
                            int64_t tx = xi + padding - (int64_t)j * dilation;                  \
                            if (tx < 0 || tx % stride) continue;                                \
                            int64_t xo = tx / stride;                                           \
                            if (xo >= Wo) continue;                                             \
                            const TYPE *restrict gp = g + ((n * Ho + yo) * Wo + xo) * C;        \
                            const float *restrict wt = by_tap + (size_t)(i * kernel + j) * C;   \
                            for (int64_t c = 0; c < C; c++) acc[c] += wt[c] * load_##NAME(gp[c]); \
                        }                                                                       \
                    }                                                                           \
                    TYPE *restrict out = grad_x + ((n * H + yi) * W + xi) * C;                  \
                    store_row_##NAME(acc, out, C);                                              \
                }                                                                               \
            }                                                                                   \
            free(acc);                                                                          \
        }                                                                                       \
        free(by_tap);                                                                           \
        return failed ? 2 : 0;                                                                  \
    }

DEFINE_DEPTHWISE(uint16_t, bf16)
DEFINE_DEPTHWISE(float, f32)
