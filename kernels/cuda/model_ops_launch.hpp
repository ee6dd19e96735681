// Raw-pointer launchers of the decoder's RMSNorm and rotary embedding for inference, one kernel
// each instead of LibTorch's eight and five: at decode a layer's step is ~45 small kernels, so
// their count sets the time (bench/RESULTS.md, Decode). Both round where LibTorch's ops round.
#pragma once

#include <cstdint>

#include "kernels/cuda/hybrid_attention_launch.hpp"

namespace hl::kernels::cuda {

/// Largest row length rms_norm takes, and largest head size rotary_embedding takes.
inline constexpr int kRmsNormMaxCols = 1 << 16;
inline constexpr int kRotaryMaxHeadDim = 512;

/// y [rows, cols] = w * T(x * rsqrt(mean(x^2) + eps)) with the sum in float32, all dense in
/// `dtype` (T), w [cols].
int launch_rms_norm(const void* x, const void* w, void* y, int64_t rows, int cols, float eps,
                    KernelDType dtype, void* stream);

/// y [B, H, N, d] (dense) = T(T(x cos) + T(rotate_half(x) sin)) for x [B, H, N, d] with strides
/// (in elements) sb, sh, sn and a dense last axis, cos / sin [N, d] dense, all in `dtype`; d even.
int launch_rotary_embedding(const void* x, int64_t sb, int64_t sh, int64_t sn, const void* cos,
                            const void* sin, void* y, int batch, int heads, int64_t n, int d,
                            KernelDType dtype, void* stream);

}  // namespace hl::kernels::cuda
