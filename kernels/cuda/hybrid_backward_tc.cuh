// Tensor-core (mma.sync) backward for bf16 (nvcc only).
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/hybrid_common.cuh"

namespace hl::kernels::cuda::detail {

/// Whether the tensor-core backward takes this shape on the current device (`linear`: the
/// problem has feature maps, so the linear kernels run too).
bool backward_tc_fits(const Shape& s, bool linear);

/// The key plan rounded to whole 128-key tiles, as the tensor-core key kernel walks them (never
/// more segments than `plan`, so its reverse-state workspace is large enough).
SegmentPlan backward_tc_key_plan(const SegmentPlan& plan, int seq_len);

/// Whether run_backward_tc runs the reverse chunk-state pass on a second stream beside the Hopper
/// query kernel, which then sums the pass's z part itself (QueryArgs::u_partials).
bool reverse_pass_beside_query(const Shape& s, const SegmentPlan& forward_plan,
                               const SegmentPlan& key_plan, bool linear);

/// Whether run_backward_tc (with key gradients) runs the query kernel, the reverse pass and the
/// fused key kernel as one dataflow in its stream, each key block waiting only for what it reads.
bool key_side_dataflow(const Shape& s, const SegmentPlan& forward_plan,
                       const SegmentPlan& tc_key_plan, const uint8_t* window_drop, bool linear);

/// The key plan of that dataflow from backward_tc_key_plan's: as many segments, the last longer
/// (segment_end).
SegmentPlan dataflow_key_plan(const SegmentPlan& tc_key_plan);

/// The tensor-core backward. `a.dkv_accum` must hold B * Hkv * N * D floats when the problem
/// has feature maps; `tc_key_plan` comes from backward_tc_key_plan. Where it runs a reverse
/// chunk-state pass, that pass also sums `coef` (if given) and *coef_summed is set. Where the
/// Hopper query kernel wrote the row terms, `coef` is set to correct them (window_share).
cudaError_t run_backward_tc(const Shape& s, const BackwardArgs& a, const SegmentPlan& tc_key_plan,
                            CoefSumParams* coef, bool* coef_summed, cudaStream_t stream);

}  // namespace hl::kernels::cuda::detail
