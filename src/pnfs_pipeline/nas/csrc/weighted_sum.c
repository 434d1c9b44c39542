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
        double total = 0.0;                                                                     \
        _Pragma("omp parallel num_threads(threads) reduction(+ : total)")                       \
        {                                                                                       \
            int t = omp_get_thread_num(), n_threads = omp_get_num_threads();                    \
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
        }                                                                                       \
        if (dot) *dot = total;                                                                  \
        return 0;                                                                               \
    }

DEFINE_SCALE_AND_DOT(uint16_t, bf16)
DEFINE_SCALE_AND_DOT(float, f32)
