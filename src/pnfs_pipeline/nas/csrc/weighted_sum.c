/* The backward pass of a weighted sum's term on the CPU (see pnfs_pipeline/nas/mixing.py):
 * the term's gradient g * factor and its weight's gradient sum(g * x) in one read of g and x,
 * where PyTorch's separate kernels read g twice and materialise the product g * x. */
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

#include "common.h"

#define LANES 32
#define FLUSH_VALUES 4096

#define DEFINE_SCALE_AND_DOT(TYPE, NAME)                                                         \
    int pnfs_scale_and_dot_##NAME(const TYPE *g, const TYPE *x, int64_t n, float factor,        \
                                  int threads, TYPE *out, double *dot) {                        \
        if (n < 0 || threads < 1) return 1;                                                     \
        /* Each thread's share, added in thread order afterwards: OpenMP's reduction adds them   \
         * in the order threads finish, so with 3+ threads the result varied between runs. */   \
        double *partial = calloc((size_t)threads, sizeof(double));                              \
        if (!partial) return 2;                                                                 \
        _Pragma("omp parallel num_threads(threads)")                                            \
        {                                                                                       \
            int t = omp_get_thread_num(), n_threads = omp_get_num_threads();                    \
            double total = 0.0;                                                                 \
            int64_t i0 = n * t / n_threads, i1 = n * (t + 1) / n_threads;                       \
            float lanes[LANES] = {0};                                                           \
            int64_t i = i0;                                                                     \
            while (i < i1) {                                                                    \
                int64_t end = i + FLUSH_VALUES < i1 ? i + FLUSH_VALUES : i1;                     \
                int64_t whole = i + (end - i) / LANES * LANES;                                  \
                if (out) {                                                                      \
                    for (int64_t k = i; k < end; k++) out[k] = store_##NAME(load_##NAME(g[k]) * factor); \
                }                                                                               \
                if (dot) {                                                                      \
                    for (int64_t k = i; k < whole; k += LANES)                                  \
                        for (int l = 0; l < LANES; l++)                                         \
                            lanes[l] += load_##NAME(g[k + l]) * load_##NAME(x[k + l]);          \
                    for (int64_t k = whole; k < end; k++)                                       \
                        lanes[0] += load_##NAME(g[k]) * load_##NAME(x[k]);                      \
                    for (int l = 0; l < LANES; l++) {                                           \
                        total += lanes[l];                                                      \
                        lanes[l] = 0.f;                                                         \
                    }                                                                           \
                }                                                                               \
                i = end;                                                                        \
            }                                                                                   \
            partial[t] = total;                                                                 \
        }                                                                                       \
        double total = 0.0;                                                                     \
        for (int t = 0; t < threads; t++) total += partial[t];                                  \
        free(partial);                                                                          \
        if (dot) *dot = total;                                                                  \
        return 0;                                                                               \
    }

DEFINE_SCALE_AND_DOT(uint16_t, bf16)
DEFINE_SCALE_AND_DOT(float, f32)

/* out = act(sum_k factors[k] * terms[k]) in one pass, accumulated in float32 (PyTorch's separate
 * additions round to the maps' type after each); act: 0 none, 1 ReLU (NaN passes through). */
#define DEFINE_WEIGHTED_SUM(TYPE, NAME)                                                          \
    int pnfs_weighted_sum_##NAME(const TYPE *const *terms, const float *factors, int count,      \
                                 int64_t n, int act, int threads, TYPE *out) {                   \
        if (count < 1 || n < 0 || threads < 1 || act < 0 || act > 1) return 1;                   \
        _Pragma("omp parallel num_threads(threads)")                                            \
        {                                                                                       \
            float values[FLUSH_VALUES];                                                         \
            _Pragma("omp for schedule(static)")                                                 \
            for (int64_t block = 0; block < (n + FLUSH_VALUES - 1) / FLUSH_VALUES; block++) {    \
                const int64_t i0 = block * FLUSH_VALUES;                                        \
                const int64_t m = n - i0 < FLUSH_VALUES ? n - i0 : FLUSH_VALUES;                 \
                const TYPE *restrict first = terms[0] + i0;                                     \
                const float f0 = factors[0];                                                    \
                for (int64_t i = 0; i < m; i++) values[i] = f0 * load_##NAME(first[i]);         \
                for (int k = 1; k < count; k++) {                                               \
                    const TYPE *restrict term = terms[k] + i0;                                  \
                    const float f = factors[k];                                                 \
                    for (int64_t i = 0; i < m; i++) values[i] += f * load_##NAME(term[i]);      \
                }                                                                               \
                if (act == 1)                                                                   \
                    for (int64_t i = 0; i < m; i++) values[i] = values[i] < 0.f ? 0.f : values[i]; \
                store_row_##NAME(values, out + i0, m);                                          \
            }                                                                                   \
        }                                                                                       \
        return 0;                                                                               \
    }

DEFINE_WEIGHTED_SUM(uint16_t, bf16)
DEFINE_WEIGHTED_SUM(float, f32)
