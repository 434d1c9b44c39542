/* Shared by the CPU training kernels: bfloat16 <-> float32 conversions matching PyTorch's. */
#ifndef PNFS_COMMON_H
#define PNFS_COMMON_H

#include <stdint.h>
#include <string.h>

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
static inline float rounded_bf16(float f) { return load_bf16(store_bf16(f)); }
static inline float rounded_f32(float f) { return f; }

#endif
