// Tensor-core (mma.sync) forward and chunk-state pass for bf16 (nvcc only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/hybrid_common.cuh"

namespace hl::kernels::cuda::detail {

/// Pointers of one tensor-core forward launch (bf16 activations, fp32 statistics).
struct TcForwardArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* phi_q;
  const void* phi_k;
  const float* coef_window;
  const float* coef_linear;
  const uint8_t* window_drop;
  void* y;
  float* row_max;
  float* row_denom;
  int32_t* row_argmax;
  const float* states;  ///< start state of each segment (segments > 1)
  int segments, segment_len;
  /// Hedgehog maps' weights [Hq, D, 64] (F = 128), or null: given, run_forward_wg computes
  /// phi_q and phi_k itself and phi_q, phi_k above are not read.
  const void* w_q = nullptr;
  const void* w_k = nullptr;
  /// run_forward_wg only: `states` holds each segment's own sum, and the kernel adds those
  /// before its segment itself (at most kMaxSummedSegments segments).
  bool sum_states = false;
};

/// Whether the tensor-core forward's shared memory fits this shape on the current device.
bool forward_tc_fits(const Shape& s);

/// The tensor-core forward (bf16, no branch statistics).
cudaError_t run_forward_tc(const Shape& s, const TcForwardArgs& a, cudaStream_t stream);

/// Whether the warp-specialised Hopper forward (hybrid_hopper_forward.cu) takes this shape and
/// split: D and F of 64 or 128, w = 64 (w <= 64 unless non-overlap hybrid), segments of whole
/// 64-row tiles, an sm_90 device.
bool forward_wg_takes(const Shape& s, const SegmentPlan& plan);

/// The Hopper forward (bf16, no branch statistics); same arguments as run_forward_tc;
/// cudaErrorNotSupported when a TMA descriptor cannot describe the inputs (the caller then runs
/// run_forward_tc).
cudaError_t run_forward_wg(const Shape& s, const TcForwardArgs& a, cudaStream_t stream);

/// Whether the Hopper chunk-state pass (hybrid_hopper_forward.cu) takes this shape: D and F of 64
/// or 128 on an sm_90 device. run_state_pass_tc hands such shapes to it.
bool state_pass_wg_takes(const Shape& s);

/// run_state_pass_tc on Hopper: TMA loads and wgmma, one block per segment;
/// cudaErrorNotSupported when a TMA descriptor cannot describe the inputs. With k_map_weight
/// (a hedgehog map's weight [Hq, D, 64]; F = 128, unscaled, bm per kv head) `a` is k, read per
/// kv head, and phi_k = hedgehog(k W_k) is computed on the way. Scaled without row_weight, z is
/// left 0 (the backward's query kernel sums it). With `written` (counters [units][segments],
/// zero before the launch; one segment a block) it runs beside the kernel before it in the
/// stream, needing nothing from it, its last segments first, and each of a segment's
/// kPassWriters warps adds one to the segment's counter when its sum is written.
cudaError_t run_state_pass_wg(const Shape& s, const void* a, const void* bm, const float* row_denom,
                              const float* row_weight, bool bm_per_kv, const uint8_t* window_drop,
                              float* out, const SegmentPlan& plan, int fixed_lag, int lag_sign,
                              int range_end, bool all_units, int skip, cudaStream_t stream,
                              const void* k_map_weight = nullptr,
                              const CoefSumParams* coef = nullptr, unsigned* written = nullptr);

/// Warps of a chunk-state pass block that signal its `written` counter (F = 128).
constexpr unsigned kPassWriters = 8;

/// Inputs of the backward's fused key pass on Hopper: dk, dv and dphi_k in one kernel.
struct FusedKeyArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* dy;
  const void* phi_q;
  const void* phi_k;
  const float* coef_window;
  const float* coef_linear;
  const float* row_max;
  const float* row_denom;
  const float* row_delta;
  const float* row_gate_grad;
  const int32_t* row_argmax;
  const float* rev_states;
  bool sum_states;  ///< rev_states holds each segment's own sum (see TcForwardArgs)
  SegmentPlan key_plan;
  void* dk;
  void* dv;
  void* dphi_k;
  /// Where given, the kernel follows the query kernel (QueryArgs::written, u_partials) and the
  /// reverse pass (run_state_pass_wg's `written`, sums with z = 0) in the stream and waits only
  /// for the counters of what each block reads: the query blocks from its segment's first row
  /// on and the pass's segments after its own. It adds u from the partials itself, takes its
  /// last segments first, and sums dc_w and dc_l (`coef`, if its `out` is set) in blocks after
  /// the key blocks.
  const unsigned* query_written = nullptr;
  const unsigned* pass_written = nullptr;
  const float* u_partials = nullptr;
  SegmentPlan query_plan{};
  int u_parts = 0;
  CoefSumParams coef{};
};

/// Whether the Hopper fused key kernel takes this shape: MHA, the non-overlapping hybrid with
/// w = 64 and no dropped window, D = F = 128, key segments of whole 64-row tiles, sm_90.
bool fused_key_wg_takes(const Shape& s, const SegmentPlan& key_plan, const uint8_t* window_drop);

/// dk, dv and dphi_k on Hopper in one kernel; cudaErrorNotSupported when a TMA descriptor cannot
/// describe the tensors or the shared memory does not fit.
cudaError_t run_fused_key_wg(const Shape& s, const FusedKeyArgs& a, cudaStream_t stream);

/// Inputs of the backward's linear key pass on Hopper (see hybrid_backward_tc.cu for the terms).
struct LinearKeyArgs {
  const void* v;
  const void* phi_k;
  const void* phi_q;
  const void* dy;
  const float* coef_linear;
  const uint8_t* window_drop;
  const float* row_denom;
  const float* row_delta;
  const float* rev_states;
  bool sum_states;  ///< rev_states holds each segment's own sum (see TcForwardArgs)
  SegmentPlan key_plan;
  void* dphi_k;
  void* dv;  ///< null: no dv wanted; else dv holds the window part and each head adds its part
};

/// Inputs of the backward's query pass on Hopper (dq, dphi_q and the row values the window
/// query and linear query kernels of hybrid_backward_tc.cu make); it takes the shapes and splits
/// that forward_wg_takes accepts.
struct QueryArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* phi_q;  ///< null without a linear branch
  const void* phi_k;
  const void* dy;
  const void* y;
  const float* coef_window;
  const float* coef_linear;
  const uint8_t* window_drop;
  const float* row_max;
  const float* row_denom;
  const int32_t* row_argmax;
  const float* fwd_states;
  bool sum_states;  ///< fwd_states holds each segment's own sum (see TcForwardArgs)
  SegmentPlan plan;
  void* dq;  ///< null: q needs no gradient
  void* dphi_q;
  float* row_grad_window;
  float* row_grad_linear;
  float* row_delta;
  float* row_gate_grad;
  float* row_window_share;  ///< E / D where a unit took delta = dl, else 0 (CoefSumParams)
  /// false: neither q nor k needs a gradient (attention transfer), so hybrid units skip the
  /// window's scores: dphi_q and every row value follow from the linear branch, y and D.
  bool window_grads = true;
  /// Where given: the z part of the reverse pass's segment sums, u = sum phi_q dl / D over the
  /// rows of each key segment (key_plan, rows shifted by the unit's state lag), as each block's
  /// partials [units][plan.segments][u_parts][F] (run_u_combine sums them); see query_takes_u.
  float* u_partials = nullptr;
  SegmentPlan key_plan{};
  int u_parts = 0;
  /// Where given: counters [units][plan.segments] to which each of a block's 8 consumer and state
  /// warps adds one when its writes are done (signal_written), zero before the launch.
  unsigned* written = nullptr;
};

/// Warps of a query block that signal QueryArgs::written.
constexpr unsigned kQueryWriters = 8;

/// The key segment whose U and u row `row` adds to: rows past a key segment's keys by `lag` or
/// more (the unit's state lag) belong to its sums (QueryArgs::u_partials).
__host__ __device__ inline int key_segment_of(const SegmentPlan& key_plan, int lag, int row) {
  return row < lag ? 0 : min((row - lag) / key_plan.length, key_plan.segments - 1);
}

/// The most key segments that one forward segment's rows reach (QueryArgs::u_parts).
int query_u_parts(const SegmentPlan& plan, const SegmentPlan& key_plan);

/// Whether run_query_wg can sum u (QueryArgs::u_partials) for these key segments.
bool query_takes_u(const Shape& s, const SegmentPlan& key_plan);

/// Floats of QueryArgs::u_partials.
size_t query_u_floats(const Shape& s, const SegmentPlan& plan, const SegmentPlan& key_plan);

/// z of the key segments' sums `key_sums` (all but `skip`) from a.u_partials.
cudaError_t run_u_combine(const Shape& s, const QueryArgs& a, float* key_sums, int skip,
                          cudaStream_t stream);

/// The backward's query pass on Hopper; cudaErrorNotSupported when a TMA descriptor cannot
/// describe the inputs or the shared memory does not fit.
cudaError_t run_query_wg(const Shape& s, const QueryArgs& a, cudaStream_t stream);

/// Inputs of the backward's window key pass on Hopper: dk and dv, plus dv_linear where given.
struct WindowKeyArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* dy;
  const float* coef_window;
  const uint8_t* window_drop;
  const float* row_max;
  const float* row_denom;
  const float* row_delta;
  const float* row_gate_grad;
  const int32_t* row_argmax;
  const float* dv_linear;  ///< fp32 linear part of dv to add, or null
  SegmentPlan key_plan;
  void* dk;
  void* dv;
};

/// Whether the Hopper window key kernel takes this shape: D of 64 or 128, w <= 64, key segments
/// of whole 64-row tiles, sm_90.
bool window_key_wg_takes(const Shape& s, const SegmentPlan& key_plan);

/// dk and dv on Hopper; cudaErrorNotSupported when a TMA descriptor cannot describe the tensors
/// or the shared memory does not fit.
cudaError_t run_window_key_wg(const Shape& s, const WindowKeyArgs& a, cudaStream_t stream);

/// Whether the Hopper linear key kernel takes this shape: D and F of 64 or 128, lin_lag 0 or
/// 64, key segments of whole 64-row tiles, sm_90.
bool linear_key_wg_takes(const Shape& s, const SegmentPlan& key_plan);

/// dphi_k and the linear part of dv on Hopper; cudaErrorNotSupported when a TMA descriptor
/// cannot describe the inputs.
cudaError_t run_linear_key_wg(const Shape& s, const LinearKeyArgs& a, cudaStream_t stream);

/// run_state_pass for bf16 on the tensor cores (row_weight is run_state_pass's row_delta and is
/// required when row_denom is given); segment `skip` (or none: -1) is left unwritten, as the
/// scan that follows never reads it (the last for a prefix scan, the first for a suffix scan).
/// With `coef` it also sums dc_w and dc_l: in blocks of the Hopper pass's own launch where the
/// pass leaves SMs idle, else with the sum kernel right after the pass.
cudaError_t run_state_pass_tc(const Shape& s, const void* a, const void* bm, const float* row_denom,
                              const float* row_weight, bool bm_per_kv, const uint8_t* window_drop,
                              float* out, const SegmentPlan& plan, int fixed_lag, int lag_sign,
                              int range_end, bool all_units, int skip, cudaStream_t stream,
                              const CoefSumParams* coef = nullptr);

}  // namespace hl::kernels::cuda::detail
