/* Both gradients of a stride-1, "same"-padded depthwise convolution on channels_last maps in one
 * pass over the rows (see pnfs_pipeline/nas/fast_depthwise.py).
 *
 * x, g: (N, H, W, C) input and output gradient, weight (C, k, k) float32, padding p = d (k - 1) / 2:
 *   grad_w[c, i, j]   = sum_{n, y, x} g[n, y, x, c] * x[n, y - p + i d, x - p + j d, c]
 *   grad_x[n, y, x, c] = sum_{i, j} w[c, i, j] * g[n, y + p - i d, x + p - j d, c]
 * Each thread walks a range of rows; the rows it needs (2p + 1 of x and of g around the current
 * one) are converted to float once into zero-padded ring buffers, so that the inner loops have no
 * bounds checks and read every value from the cache. 16 channels at a time, the k*k weight-gradient
 * sums (or weights) stay in vector registers across a row.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "common.h"

#define VLEN 16
#define FLUSH_ROWS 4 /* float weight-gradient sums over a few rows, then double */

typedef float vfloat __attribute__((vector_size(VLEN * sizeof(float))));

static inline vfloat vload(const float *p) {
    vfloat v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void vstore(float *p, vfloat v) { memcpy(p, &v, sizeof v); }

/* Padded float rows of one map, kept in a ring indexed by row: tag n * H + y, or -1 when empty. */
typedef struct {
    float *rows;
    int64_t *tags;
    int64_t slots, stride; /* floats per padded row: (W + 2p) * C */
} ring_t;

#define DEFINE_ROW_FETCH(TYPE, NAME)                                                             \
    static const float *fetch_row_##NAME(ring_t *ring, const TYPE *map, int64_t n, int64_t y,   \
                                         int64_t H, int64_t W, int64_t C, int64_t pad,          \
                                         const float *zeros) {                                  \
        if (y < 0 || y >= H) return zeros;                                                      \
        int64_t tag = n * H + y, slot = y % ring->slots;                                        \
        float *row = ring->rows + slot * ring->stride;                                          \
        if (ring->tags[slot] != tag) {                                                          \
            const TYPE *src = map + tag * W * C;                                                \
            float *dst = row + pad * C; /* the padding columns stay zero */                     \
            for (int64_t e = 0; e < W * C; e++) dst[e] = load_##NAME(src[e]);                   \
            ring->tags[slot] = tag;                                                             \
        }                                                                                       \
        return row;                                                                             \
    }

DEFINE_ROW_FETCH(uint16_t, bf16)
DEFINE_ROW_FETCH(float, f32)

/* One row's weight-gradient sums for channels [c0, c0 + VLEN) with K*K register accumulators.
 * g_row and x_rows[i] are padded rows: output column xo of g is at xo + p, input column
 * xo - p + j d of x at xo + j d. */
#define DEFINE_WEIGHT_ROW(K)                                                                    \
    static inline void weight_row_k##K(const float *g_row, const float *const *x_rows,          \
                                       int64_t W, int64_t C, int64_t c0, int64_t p, int64_t d,   \
                                       float *sums) {                                           \
        vfloat acc[K * K];                                                                      \
        for (int t = 0; t < K * K; t++) acc[t] = (vfloat){0};                                   \
        for (int64_t xo = 0; xo < W; xo++) {                                                    \
            vfloat gv = vload(g_row + (xo + p) * C + c0);                                       \
            for (int i = 0; i < K; i++)                                                         \
                for (int j = 0; j < K; j++)                                                     \
                    acc[i * K + j] += gv * vload(x_rows[i] + (xo + j * d) * C + c0);           \
        }                                                                                       \
        for (int t = 0; t < K * K; t++)                                                         \
            vstore(sums + t * C + c0, vload(sums + t * C + c0) + acc[t]);                       \
    }

/* One row of the input gradient for channels [c0, c0 + VLEN): g_rows[i] is g's row y + p - i d,
 * whose column x + p - j d sits at x + 2p - j d; by_tap holds the weights as (k*k, C). */
#define DEFINE_INPUT_ROW(K)                                                                     \
    static inline void input_row_k##K(const float *const *g_rows, const float *by_tap,          \
                                      int64_t W, int64_t C, int64_t c0, int64_t p, int64_t d,    \
                                      float *out) {                                             \
        vfloat w[K * K];                                                                        \
        for (int t = 0; t < K * K; t++) w[t] = vload(by_tap + t * C + c0);                      \
        for (int64_t xi = 0; xi < W; xi++) {                                                    \
            vfloat acc = (vfloat){0};                                                           \
            for (int i = 0; i < K; i++)                                                         \
                for (int j = 0; j < K; j++)                                                     \
                    acc += w[i * K + j] * vload(g_rows[i] + (xi + 2 * p - j * d) * C + c0);    \
            vstore(out + xi * VLEN, acc);                                                       \
        }                                                                                       \
    }

DEFINE_WEIGHT_ROW(3)
DEFINE_WEIGHT_ROW(5)
DEFINE_INPUT_ROW(3)
DEFINE_INPUT_ROW(5)

/* Any kernel size, any channel: the same sums one value at a time (remainder channels, k = 7 ...). */
static void weight_row_scalar(const float *g_row, const float *const *x_rows, int k, int64_t W,
                              int64_t C, int64_t c_begin, int64_t p, int64_t d, float *sums) {
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++)
            for (int64_t c = c_begin; c < C; c++) {
                float acc = 0.f;
                for (int64_t xo = 0; xo < W; xo++) acc += g_row[(xo + p) * C + c] * x_rows[i][(xo + j * d) * C + c];
                sums[(i * k + j) * C + c] += acc;
            }
}

static void input_row_scalar(const float *const *g_rows, const float *by_tap, int k, int64_t W,
                             int64_t C, int64_t c_begin, int64_t p, int64_t d, float *out) {
    int64_t width = C - c_begin;
    for (int64_t xi = 0; xi < W; xi++)
        for (int64_t c = c_begin; c < C; c++) {
            float acc = 0.f;
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++)
                    acc += by_tap[(i * k + j) * C + c] * g_rows[i][(xi + 2 * p - j * d) * C + c];
            out[xi * width + (c - c_begin)] = acc;
        }
}

#define DEFINE_DEPTHWISE_BACKWARD(TYPE, NAME)                                                    \
    int pnfs_depthwise_backward_##NAME(const TYPE *g, const TYPE *x, const float *weight,       \
                                       int64_t N, int64_t C, int64_t H, int64_t W, int kernel,   \
                                       int dilation, int threads, TYPE *grad_x, float *grad_w) { \
        if (N < 1 || C < 1 || H < 1 || W < 1 || kernel < 1 || kernel % 2 == 0 || dilation < 1 \
            || threads < 1 || kernel > 15)                                                      \
            return 1;                                                                           \
        const int k = kernel, taps = k * k;                                                     \
        const int64_t p = (int64_t)dilation * (k - 1) / 2, d = dilation;                        \
        const int64_t rows = N * H, stride = (W + 2 * p) * C;                                   \
        const int64_t vector_end = (k == 3 || k == 5) ? C / VLEN * VLEN : 0;                   \
        float *by_tap = malloc((size_t)taps * C * sizeof(float));                               \
        double *partial = grad_w ? calloc((size_t)threads * taps * C, sizeof(double)) : NULL;   \
        if (!by_tap || (grad_w && !partial)) {                                                  \
            free(by_tap);                                                                       \
            free(partial);                                                                      \
            return 2;                                                                           \
        }                                                                                       \
        for (int64_t c = 0; c < C; c++)                                                         \
            for (int t = 0; t < taps; t++) by_tap[(size_t)t * C + c] = weight[c * taps + t];    \
        int failed = 0;                                                                         \
        _Pragma("omp parallel num_threads(threads) reduction(|| : failed)")                     \
        {                                                                                       \
            int t = omp_get_thread_num(), n_threads = omp_get_num_threads();                    \
            int64_t r0 = rows * t / n_threads, r1 = rows * (t + 1) / n_threads;                 \
            int64_t slots = 2 * p + 1;                                                          \
            /* Two rings, a zero row, float sums per tap and one output row. */                \
            size_t floats = (size_t)(2 * slots + 1) * stride + (size_t)taps * C + (size_t)W * C; \
            float *buffer = calloc(floats, sizeof(float));                                      \
            int64_t *tags = malloc((size_t)2 * slots * sizeof(int64_t));                        \
            if (!buffer || !tags) {                                                             \
                failed = 1;                                                                     \
            } else {                                                                            \
                for (int64_t s = 0; s < 2 * slots; s++) tags[s] = -1;                           \
                ring_t g_ring = {buffer, tags, slots, stride};                                  \
                ring_t x_ring = {buffer + slots * stride, tags + slots, slots, stride};         \
                const float *zeros = buffer + 2 * slots * stride;                               \
                float *sums = buffer + (2 * slots + 1) * stride;                                \
                float *out_row = sums + (size_t)taps * C;                                       \
                double *total = grad_w ? partial + (size_t)t * taps * C : NULL;                 \
                const float *near[15];                                                          \
                for (int64_t r = r0; r < r1; r++) {                                             \
                    int64_t n = r / H, y = r % H;                                               \
                    if (grad_w) {                                                               \
                        const float *g_row = fetch_row_##NAME(&g_ring, g, n, y, H, W, C, p, zeros); \
                        for (int i = 0; i < k; i++)                                             \
                            near[i] = fetch_row_##NAME(&x_ring, x, n, y - p + i * d, H, W, C, p, zeros); \
                        int64_t c0 = 0;                                                         \
                        for (; c0 < vector_end; c0 += VLEN) {                                   \
                            if (k == 3) weight_row_k3(g_row, near, W, C, c0, p, d, sums);      \
                            else weight_row_k5(g_row, near, W, C, c0, p, d, sums);              \
                        }                                                                       \
                        if (c0 < C) weight_row_scalar(g_row, near, k, W, C, c0, p, d, sums);   \
                        if ((r - r0) % FLUSH_ROWS == FLUSH_ROWS - 1 || r == r1 - 1)             \
                            flush_sums(sums, total, (int64_t)taps * C);                         \
                    }                                                                           \
                    if (grad_x) {                                                               \
                        for (int i = 0; i < k; i++)                                             \
                            near[i] = fetch_row_##NAME(&g_ring, g, n, y + p - i * d, H, W, C, p, zeros); \
                        TYPE *dst = grad_x + r * W * C;                                         \
                        int64_t c0 = 0;                                                         \
                        for (; c0 < vector_end; c0 += VLEN) {                                   \
                            if (k == 3) input_row_k3(near, by_tap, W, C, c0, p, d, out_row);   \
                            else input_row_k5(near, by_tap, W, C, c0, p, d, out_row);           \
                            for (int64_t xi = 0; xi < W; xi++)                                  \
                                store_row_##NAME(out_row + xi * VLEN, dst + xi * C + c0, VLEN); \
                        }                                                                       \
                        if (c0 < C) {                                                           \
                            input_row_scalar(near, by_tap, k, W, C, c0, p, d, out_row);         \
                            for (int64_t xi = 0; xi < W; xi++)                                  \
                                store_row_##NAME(out_row + xi * (C - c0), dst + xi * C + c0, C - c0); \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
            free(buffer);                                                                       \
            free(tags);                                                                         \
        }                                                                                       \
        if (grad_w && !failed) sum_weight_partials(partial, threads, taps, C, grad_w);          \
        free(by_tap);                                                                           \
        free(partial);                                                                          \
        return failed ? 2 : 0;                                                                  \
    }

DEFINE_DEPTHWISE_BACKWARD(uint16_t, bf16)
DEFINE_DEPTHWISE_BACKWARD(float, f32)
