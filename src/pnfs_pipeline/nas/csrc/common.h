/* Shared by the CPU training kernels: bfloat16 <-> float32 conversions matching PyTorch's. */
#ifndef PNFS_COMMON_H
#define PNFS_COMMON_H

#include <stdint.h>
#include <string.h>
#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

static inline float load_bf16(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest even, as torch's float -> bfloat16 conversion; NaN stays NaN. */
static inline uint16_t store_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    uint32_t nan = (bits >> 16) | 0x40u;
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

static inline float load_f32(float v) { return v; }
static inline float store_f32(float f) { return f; }

/* n floats stored as bfloat16 / float32. Where the CPU converts (AVX512-BF16), one instruction
 * rounds 16 values to nearest even as store_bf16 does (it reads denormal inputs as zero). */
static inline void store_row_bf16(const float *restrict in, uint16_t *restrict out, int64_t n) {
    int64_t i = 0;
#ifdef __AVX512BF16__
    for (; i + 16 <= n; i += 16) {
        __m256bh packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(in + i));
        _mm256_storeu_si256((__m256i *)(out + i), (__m256i)packed);
    }
#endif
    for (; i < n; i++) out[i] = store_bf16(in[i]);
}

static inline void store_row_f32(const float *restrict in, float *restrict out, int64_t n) {
    memcpy(out, in, (size_t)n * sizeof(float));
}

/* Adds float partial sums into their double totals and clears them (a float sum over a few rows
 * keeps its precision; over a whole map it would not). */
static inline void flush_sums(float *restrict sums, double *restrict total, int64_t n) {
    for (int64_t e = 0; e < n; e++) {
        total[e] += sums[e];
        sums[e] = 0.f;
    }
}

/* A depthwise weight gradient (C, taps) from the threads' double partial sums (thread, tap, C). */
static inline void sum_weight_partials(const double *partial, int threads, int taps, int64_t C, float *grad_w) {
    for (int64_t c = 0; c < C; c++)
        for (int tap = 0; tap < taps; tap++) {
            double sum = 0.0;
            for (int t = 0; t < threads; t++) sum += partial[((size_t)t * taps + tap) * C + c];
            grad_w[c * taps + tap] = (float)sum;
        }
}

#endif
