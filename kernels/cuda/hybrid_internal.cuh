// Passes shared by the forward, backward and prefill launchers (nvcc only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/hybrid_common.cuh"

namespace hl::kernels::cuda::detail {

/// Per segment of every (batch, q head) unit: S = sum_r a_r (bm_r / denom_r)^T and
/// z = sum_r a_r (delta_r / denom_r, or 1), over rows [seg * L + sign * lag, (seg + 1) * L +
/// sign * lag) clipped to [0, range_end); the last segment runs to range_end.
cudaError_t run_state_pass(const Shape& s, KernelDType dtype, const void* a, const void* bm,
                           bool bm_per_kv, const float* row_denom, const float* row_delta,
                           const uint8_t* window_drop, float* out, const SegmentPlan& plan,
                           int fixed_lag, int lag_sign, int range_end, bool all_units,
                           cudaStream_t stream);

/// Over the segments' sums of each unit: 0 = exclusive prefix into `states`, 1 = exclusive
/// suffix into `states` (which may be `sums`), 2 = total written to total_S [units, F * D] and
/// total_z [units, F].
cudaError_t run_scan(const Shape& s, const uint8_t* window_drop, const float* sums, float* states,
                     int units, int segments, int direction, float* total_S, float* total_z,
                     bool all_units, cudaStream_t stream);

/// dc_w and dc_l into p.out by the sum kernel (hybrid_backward.cu), deterministic.
cudaError_t run_coef_sum(const CoefSumParams& p, cudaStream_t stream);

/// Floats of one segment's state: S [F][D], then z [F].
inline int segment_state_floats(const Shape& s) {
  return s.features * s.head_dim + s.features;
}

/// A chunk-state workspace (state_workspace_floats) holds the states each segment starts with,
/// then the segments' own sums, which the chunk-state passes write and the scans read: this
/// returns the second half.
inline float* segment_sums(float* workspace, const Shape& s, int units, int segments) {
  return workspace + static_cast<size_t>(units) * segments * segment_state_floats(s);
}

/// Up to this many segments, the Hopper kernels add the segment sums before (forward, query) or
/// after (linear key) their own themselves instead of reading a scan's result: the scan kernel
/// and the wait for it cost ~7 us at B1 16K, the few loads from L2 at a block's start less
/// (bench/KERNEL_NOTES.md session 21).
constexpr int kMaxSummedSegments = 4;

/// Whether a Hopper kernel over a plan of `segments` adds the segment sums itself (the forward
/// and the backward decide by this one rule, so that the backward knows what the forward left).
inline bool sums_in_kernel(int segments) {
  return segments > 1 && segments <= kMaxSummedSegments;
}

}  // namespace hl::kernels::cuda::detail
