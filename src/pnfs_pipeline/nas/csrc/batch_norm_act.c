/* Training-mode BatchNorm fused with the activation that follows it, for channels_last maps.
 *
 * A channels_last (N, C, H, W) map is a (rows = N*H*W) x C matrix. The forward pass reads the map
 * twice (statistics, then normalise + activate + write) where BatchNorm and ReLU run separately
 * read it three times and write it twice; the backward pass recomputes the activation's mask from
 * the input instead of reading a saved output, and produces the input gradient in two reads.
 * Built by pnfs_pipeline/nas/fused_batch_norm.py with the machine's C compiler; the arithmetic
 * follows torch.nn.functional.batch_norm (biased variance for normalising, unbiased for the
 * running variance) followed by relu / relu6, in float32.
 *
 * Rows are processed in groups of k so that a group (k * C values) is a whole number of 16-float
 * vectors: per-channel parameters are tiled k times and every inner loop runs over a group without
 * a remainder, which keeps channel counts like 24 or 96 vectorised.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "common.h"

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_RELU6 = 2 };

/* Written so that NaN passes through, as torch.relu / relu6 let it: a diverging run shows NaN. */
#define ACTIVATE_0(z) (z)
#define ACTIVATE_1(z) ((z) < 0.f ? 0.f : (z))
#define ACTIVATE_2(z) ((z) < 0.f ? 0.f : ((z) > 6.f ? 6.f : (z)))
/* ReLU6 passes the gradient where its input, as stored, is above 0 and below 6: PyTorch's
 * hardtanh_backward sees the BatchNorm output rounded to the map's type. In bfloat16 every value
 * from 6 - 1/64 up rounds to 6 (the tie goes to 6's even mantissa) and every value up to 2^-134
 * rounds to 0, so comparing the float against these bounds gives the rounded value's mask
 * without rounding each value (the ReLU6 backward ~10% faster at 8x144x64x48 on 2 cores). */
#define RELU6_LOW_bf16 0x1p-134f
#define RELU6_HIGH_bf16 5.984375f
#define RELU6_LOW_f32 0.f
#define RELU6_HIGH_f32 6.f
#define PASSES_0(NAME, z) ((void)(z), 1.f)
#define PASSES_1(NAME, z) ((z) > 0.f ? 1.f : 0.f)
#define PASSES_2(NAME, z) (((z) > RELU6_LOW_##NAME) & ((z) < RELU6_HIGH_##NAME) ? 1.f : 0.f)

#define FLUSH_ROWS 64 /* float partial sums over about 64 rows, then double */

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

typedef struct {
    int64_t rows, C, k, L, groups; /* L = k * C values per group of k rows */
} layout_t;

static layout_t layout_of(int64_t rows, int64_t C) {
    layout_t s;
    s.rows = rows;
    s.C = C;
    int64_t k = 16 / gcd64(C, 16);
    /* Long enough inner loops to amortise their set-up: at least ~512 values a group. */
    s.k = k * ((512 + k * C - 1) / (k * C));
    s.L = s.k * C;
    s.groups = rows / s.k;
    return s;
}

/* Room for `vectors` per-channel vectors with their tiled copies, and 2 x C double sums. */
static int scratch(layout_t s, int vectors, float **work, double **sums) {
    *work = malloc((size_t)vectors * (s.C + s.L) * sizeof(float));
    *sums = malloc((size_t)2 * s.C * sizeof(double));
    if (*work && *sums) return 0;
    free(*work);
    free(*sums);
    return 2;
}

/* Per-channel vector v (C values) tiled k times into out (L values). */
static void tile(const float *v, layout_t s, float *out) {
    for (int64_t j = 0; j < s.k; j++) memcpy(out + j * s.C, v, (size_t)s.C * sizeof(float));
}

/* Sums over rows of two per-value quantities, in float within a few groups and in double across
 * them and across threads. TERMS defines `first` and `second` from xv (= x[e]), gv (= g[e]) and
 * index e into the tiled parameters. Rows past the last whole group go through the same TERMS. */
#define ROW_SUMS(TYPE, NAME, TERMS, out_first, out_second)                                       \
    do {                                                                                        \
        const int64_t L = s.L, C = s.C;                                                         \
        double *partial = calloc((size_t)threads * 2 * L, sizeof(double));                      \
        if (!partial) return 2;                                                                 \
        int failed = 0;                                                                         \
        _Pragma("omp parallel num_threads(threads) reduction(|| : failed)")                     \
        {                                                                                       \
            int t = omp_get_thread_num(), n = omp_get_num_threads();                            \
            int64_t g0 = s.groups * t / n, g1 = s.groups * (t + 1) / n;                         \
            float *restrict s1 = calloc((size_t)2 * L, sizeof(float));                          \
            if (!s1) {                                                                          \
                failed = 1;                                                                     \
            } else {                                                                            \
                float *restrict s2 = s1 + L;                                                    \
                double *restrict d1 = partial + (size_t)t * 2 * L, *restrict d2 = d1 + L;       \
                for (int64_t grp = g0; grp < g1; grp++) {                                       \
                    const TYPE *restrict xg = x + grp * L;                                      \
                    const TYPE *restrict gg = g + grp * L;                                      \
                    (void)gg;                                                                   \
                    for (int64_t e = 0; e < L; e++) {                                           \
                        float xv = load_##NAME(xg[e]);                                          \
                        float gv = load_##NAME(gg[e]);                                          \
                        (void)gv;                                                               \
                        TERMS;                                                                  \
                        s1[e] += first;                                                         \
                        s2[e] += second;                                                        \
                    }                                                                           \
                    if (((grp - g0 + 1) * s.k) % FLUSH_ROWS < s.k || grp == g1 - 1) {             \
                        for (int64_t e = 0; e < L; e++) {                                       \
                            d1[e] += s1[e];                                                     \
                            d2[e] += s2[e];                                                     \
                            s1[e] = 0.f;                                                        \
                            s2[e] = 0.f;                                                        \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
                free(s1);                                                                       \
            }                                                                                   \
        }                                                                                       \
        if (failed) {                                                                           \
            free(partial);                                                                      \
            return 2;                                                                           \
        }                                                                                       \
        for (int64_t c = 0; c < C; c++) {                                                       \
            double a = 0.0, b = 0.0;                                                            \
            for (int t = 0; t < threads; t++)                                                   \
                for (int64_t j = 0; j < s.k; j++) {                                             \
                    a += partial[(size_t)t * 2 * L + j * C + c];                                \
                    b += partial[(size_t)t * 2 * L + L + j * C + c];                            \
                }                                                                               \
            for (int64_t r = s.groups * s.k; r < s.rows; r++) {                                 \
                int64_t e = c; /* tiled parameters: the first C values are per channel */       \
                float xv = load_##NAME(x[r * C + c]);                                           \
                float gv = load_##NAME(g[r * C + c]);                                           \
                (void)gv;                                                                       \
                TERMS;                                                                          \
                a += first;                                                                     \
                b += second;                                                                    \
            }                                                                                   \
            out_first[c] = a;                                                                   \
            out_second[c] = b;                                                                  \
        }                                                                                       \
        free(partial);                                                                          \
    } while (0)

#define CHUNK 1024 /* values computed in float, then stored in one conversion pass */

/* out[e] = EXPR over every value, groups in parallel, then the rows past the last group. */
#define ELEMENTWISE(TYPE, NAME, EXPR)                                                            \
    do {                                                                                        \
        const int64_t L = s.L, C = s.C;                                                         \
        _Pragma("omp parallel num_threads(threads)")                                            \
        {                                                                                       \
            float values[CHUNK];                                                                \
            _Pragma("omp for schedule(static)")                                                 \
            for (int64_t grp = 0; grp < s.groups; grp++) {                                      \
                for (int64_t e0 = 0; e0 < L; e0 += CHUNK) {                                     \
                    const int64_t e1 = e0 + CHUNK < L ? e0 + CHUNK : L;                          \
                    const TYPE *restrict xg = x + grp * L;                                      \
                    const TYPE *restrict gg = g + grp * L;                                      \
                    (void)gg;                                                                   \
                    for (int64_t e = e0; e < e1; e++) {                                         \
                        float xv = load_##NAME(xg[e]);                                          \
                        float gv = load_##NAME(gg[e]);                                          \
                        (void)gv;                                                               \
                        values[e - e0] = EXPR;                                                  \
                    }                                                                           \
                    store_row_##NAME(values, out + grp * L + e0, e1 - e0);                      \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        for (int64_t r = s.groups * s.k; r < s.rows; r++)                                       \
            for (int64_t e = 0; e < C; e++) {                                                   \
                float xv = load_##NAME(x[r * C + e]);                                           \
                float gv = load_##NAME(g[r * C + e]);                                           \
                (void)gv;                                                                       \
                out[r * C + e] = store_##NAME(EXPR);                                            \
            }                                                                                   \
    } while (0)

#define DEFINE_ACT(TYPE, NAME, ACT)                                                              \
    static int apply_##NAME##_##ACT(const TYPE *restrict x, layout_t s, const float *restrict scale, \
                                    const float *restrict shift, int threads, TYPE *restrict out) { \
        const TYPE *g = x;                                                                      \
        ELEMENTWISE(TYPE, NAME, ACTIVATE_##ACT(xv * scale[e] + shift[e]));                      \
        return 0;                                                                               \
    }                                                                                           \
    static int grad_sums_##NAME##_##ACT(const TYPE *restrict g, const TYPE *restrict x, layout_t s, \
                                        const float *restrict scale, const float *restrict shift, \
                                        const float *restrict mean, int threads,                \
                                        double *restrict sum_g, double *restrict sum_gx) {      \
        ROW_SUMS(TYPE, NAME,                                                                    \
                 float z = xv * scale[e] + shift[e];                                            \
                 float passed = gv * PASSES_##ACT(NAME, z);                                     \
                 float first = passed; float second = passed * (xv - mean[e]),                  \
                 sum_g, sum_gx);                                                                \
        return 0;                                                                               \
    }                                                                                           \
    static int grad_input_##NAME##_##ACT(const TYPE *restrict g, const TYPE *restrict x, layout_t s, \
                                         const float *restrict scale, const float *restrict shift, \
                                         const float *restrict mean, const float *restrict a,   \
                                         const float *restrict b, const float *restrict d,      \
                                         int threads, TYPE *restrict out) {                     \
        ELEMENTWISE(TYPE, NAME,                                                                 \
                    a[e] * (gv * PASSES_##ACT(NAME, xv * scale[e] + shift[e]))                  \
                        + b[e] * (xv - mean[e]) + d[e]);                                        \
        return 0;                                                                               \
    }

#define DISPATCH(ACT, CALL0, CALL1, CALL2) ((ACT) == ACT_NONE ? (CALL0) : (ACT) == ACT_RELU ? (CALL1) : (CALL2))

#define DEFINE_DTYPE(TYPE, NAME)                                                                 \
    DEFINE_ACT(TYPE, NAME, 0)                                                                   \
    DEFINE_ACT(TYPE, NAME, 1)                                                                   \
    DEFINE_ACT(TYPE, NAME, 2)                                                                   \
                                                                                                \
    static int shifted_sums_##NAME(const TYPE *restrict x, layout_t s, const float *restrict origin, \
                                   int threads, double *restrict sum, double *restrict sum_sq) { \
        const TYPE *g = x;                                                                      \
        ROW_SUMS(TYPE, NAME, float v = xv - origin[e]; float first = v; float second = v * v,  \
                 sum, sum_sq);                                                                  \
        return 0;                                                                               \
    }                                                                                           \
                                                                                                \
    int pnfs_bn_act_forward_##NAME(const TYPE *x, int64_t rows, int64_t C, const float *weight, \
                                   const float *bias, double eps, float *running_mean,          \
                                   float *running_var, double momentum, int act, int threads,   \
                                   TYPE *y, float *save_mean, float *save_invstd) {             \
        if (rows < 1 || C < 1 || threads < 1 || act < 0 || act > 2) return 1;                   \
        layout_t s = layout_of(rows, C);                                                        \
        float *work;                                                                            \
        double *sums;                                                                           \
        if (scratch(s, 3, &work, &sums)) return 2;                                             \
        float *origin = work, *scale = work + C, *shift = work + 2 * C;                         \
        float *origin_t = work + 3 * C, *scale_t = origin_t + s.L, *shift_t = scale_t + s.L;    \
        /* Sums about the first row's values: no cancellation when |mean| >> std. */           \
        for (int64_t c = 0; c < C; c++) origin[c] = load_##NAME(x[c]);                          \
        tile(origin, s, origin_t);                                                              \
        int status = shifted_sums_##NAME(x, s, origin_t, threads, sums, sums + C);              \
        if (status == 0) {                                                                      \
            for (int64_t c = 0; c < C; c++) {                                                   \
                double shifted_mean = sums[c] / (double)rows;                                   \
                double var = sums[C + c] / (double)rows - shifted_mean * shifted_mean;          \
                if (var < 0.0) var = 0.0;                                                       \
                double mean = shifted_mean + (double)origin[c];                                 \
                double invstd = 1.0 / sqrt(var + eps);                                          \
                save_mean[c] = (float)mean;                                                     \
                save_invstd[c] = (float)invstd;                                                 \
                if (running_mean) {                                                             \
                    double unbiased = rows > 1 ? var * (double)rows / (double)(rows - 1) : var; \
                    running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean); \
                    running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased); \
                }                                                                               \
                double w = weight ? (double)weight[c] : 1.0, b = bias ? (double)bias[c] : 0.0;   \
                scale[c] = (float)(w * invstd);                                                 \
                shift[c] = (float)(b - mean * w * invstd);                                      \
            }                                                                                   \
            tile(scale, s, scale_t);                                                            \
            tile(shift, s, shift_t);                                                            \
            status = DISPATCH(act, apply_##NAME##_0(x, s, scale_t, shift_t, threads, y),        \
                              apply_##NAME##_1(x, s, scale_t, shift_t, threads, y),             \
                              apply_##NAME##_2(x, s, scale_t, shift_t, threads, y));            \
        }                                                                                       \
        free(work);                                                                             \
        free(sums);                                                                             \
        return status;                                                                          \
    }                                                                                           \
                                                                                                \
    int pnfs_bn_act_backward_##NAME(const TYPE *g, const TYPE *x, int64_t rows, int64_t C,      \
                                    const float *weight, const float *bias, const float *mean,  \
                                    const float *invstd, int act, int threads, TYPE *gx,        \
                                    float *grad_weight, float *grad_bias) {                     \
        if (rows < 1 || C < 1 || threads < 1 || act < 0 || act > 2) return 1;                   \
        layout_t s = layout_of(rows, C);                                                        \
        float *work;                                                                            \
        double *sums;                                                                           \
        if (scratch(s, 6, &work, &sums)) return 2;                                             \
        float *scale = work, *shift = work + C, *mean_c = work + 2 * C, *a = work + 3 * C,      \
              *b = work + 4 * C, *d = work + 5 * C;                                             \
        float *scale_t = work + 6 * C, *shift_t = scale_t + s.L, *mean_t = shift_t + s.L,       \
              *a_t = mean_t + s.L, *b_t = a_t + s.L, *d_t = b_t + s.L;                          \
        for (int64_t c = 0; c < C; c++) {                                                       \
            double w = weight ? (double)weight[c] : 1.0, bb = bias ? (double)bias[c] : 0.0;      \
            scale[c] = (float)(w * invstd[c]);                                                  \
            shift[c] = (float)(bb - (double)mean[c] * w * invstd[c]);                           \
            mean_c[c] = mean[c];                                                                \
        }                                                                                       \
        tile(scale, s, scale_t);                                                                \
        tile(shift, s, shift_t);                                                                \
        tile(mean_c, s, mean_t);                                                                \
        int status = DISPATCH(                                                                  \
            act, grad_sums_##NAME##_0(g, x, s, scale_t, shift_t, mean_t, threads, sums, sums + C), \
            grad_sums_##NAME##_1(g, x, s, scale_t, shift_t, mean_t, threads, sums, sums + C),   \
            grad_sums_##NAME##_2(g, x, s, scale_t, shift_t, mean_t, threads, sums, sums + C));  \
        if (status == 0) {                                                                      \
            for (int64_t c = 0; c < C; c++) {                                                   \
                double sum_g = sums[c], sum_gx = sums[C + c], is = (double)invstd[c];            \
                if (grad_weight) grad_weight[c] = (float)(sum_gx * is);                         \
                if (grad_bias) grad_bias[c] = (float)sum_g;                                     \
                a[c] = scale[c];                                                                \
                b[c] = (float)(-(double)scale[c] * is * is * sum_gx / (double)rows);            \
                d[c] = (float)(-(double)scale[c] * sum_g / (double)rows);                       \
            }                                                                                   \
            tile(a, s, a_t);                                                                    \
            tile(b, s, b_t);                                                                    \
            tile(d, s, d_t);                                                                    \
            if (gx)                                                                             \
                status = DISPATCH(                                                              \
                    act,                                                                        \
                    grad_input_##NAME##_0(g, x, s, scale_t, shift_t, mean_t, a_t, b_t, d_t, threads, gx), \
                    grad_input_##NAME##_1(g, x, s, scale_t, shift_t, mean_t, a_t, b_t, d_t, threads, gx), \
                    grad_input_##NAME##_2(g, x, s, scale_t, shift_t, mean_t, a_t, b_t, d_t, threads, gx)); \
        }                                                                                       \
        free(work);                                                                             \
        free(sums);                                                                             \
        return status;                                                                          \
    }

DEFINE_DTYPE(uint16_t, bf16)
DEFINE_DTYPE(float, f32)
