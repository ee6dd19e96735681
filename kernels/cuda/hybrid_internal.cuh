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

/// Over the segments of each unit: 0 = exclusive prefix in place, 1 = exclusive suffix in
/// place, 2 = total written to total_S [units, F * D] and total_z [units, F].
cudaError_t run_scan(const Shape& s, const uint8_t* window_drop, float* states, int units,
                     int segments, int direction, float* total_S, float* total_z, bool all_units,
                     cudaStream_t stream);

}  // namespace hl::kernels::cuda::detail
