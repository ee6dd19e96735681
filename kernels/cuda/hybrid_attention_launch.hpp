// Raw-pointer launchers of the fused hybrid-attention CUDA kernels (DESIGN §1).
//
// No CUDA or torch headers here: the glue in cuda_attention.cpp and the benchmark include it,
// and the kernels compile with nvcc alone. Every tensor is a contiguous row-major array:
//   q, y, dq            [B, Hq, N, D]     k, v, dk, dv        [B, Hkv, N, D]
//   phi_q, phi_k, d...  [B, Hq, N, F]     window_drop [B, Hq] uint8 or null
//   coef_window, coef_linear [B, Hq] fp32: c_w, c_l of y = (c_w sum_W e v + c_l sum_L p v) /
//       (c_w sum_W e + c_l sum_L p + eps) with e = exp(s - m), p = phi_q . phi_k; the caller
//       derives them from omega (g_h, l_h) so that autograd reaches omega through them.
//   row statistics      [B, Hq, N] fp32 (argmax int32)
// q/k/v/phi/y/gradients share one dtype (fp32 or bf16); all accumulation is fp32.
// Launchers return 0 or a cudaError_t value; error_string() turns it into text.
#pragma once

#include <cstddef>
#include <cstdint>
#ifdef HL_BLOCK_TRACE
#include <cstdio>
#endif

namespace hl::kernels::cuda {

/// Which branches are present (DESIGN §1 inference modes that the kernels implement).
enum class KernelMode : int { kHybrid = 0, kLinearOnly = 1, kWindowOnly = 2 };

/// Element type of the activations and gradients.
enum class KernelDType : int { kFloat32 = 0, kBFloat16 = 1 };

/// Problem sizes and options shared by every launcher.
struct ProblemShape {
  int batch = 1;
  int q_heads = 1;
  int kv_heads = 1;  ///< divides q_heads (GQA); k/v are never repeated in memory
  int seq_len = 1;
  int head_dim = 64;  ///< 64 or 128
  int features = 64;  ///< F, a multiple of 32 in [32, 256]
  int window = 64;    ///< w in [1, 128] (decode ring capacity too)
  KernelMode mode = KernelMode::kHybrid;
  bool overlap = false;  ///< linear set j <= i instead of j <= i - w
  float scale = 0.125f;  ///< 1 / sqrt(D)
  float eps = 1e-12f;    ///< linear-only denominator guard
  KernelDType dtype = KernelDType::kFloat32;
};

/// Why the kernels cannot take a shape, or nullptr when they can.
const char* unsupported_reason(const ProblemShape& shape);

/// Sequence split that fills the chip: `segments` blocks per (batch, head), each `length` rows
/// (a multiple of 64) but the last, which runs to the sequence's end (so it may be longer: the
/// backward's key dataflow). Segments > 1 need a chunk-state workspace (state_workspace_floats).
struct SegmentPlan {
  int segments = 1;
  int length = 0;
};

/// Segments for `units` = B * heads independent sequences on a GPU with `sm_count` SMs.
SegmentPlan plan_segments(int units, int seq_len, int sm_count);

/// At most `segments` segments of equal length (a multiple of 64) covering seq_len rows.
SegmentPlan make_segment_plan(int seq_len, int segments);

/// Floats of one chunk-state workspace: 2 * units * segments * (F * D + F) (the states each
/// segment starts with, and the segments' own sums).
size_t state_workspace_floats(const ProblemShape& shape, int units, const SegmentPlan& plan);

/// Forward pass (training and prefill). Writes y and the row statistics that backward needs.
struct ForwardArgs {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* phi_q = nullptr;
  const void* phi_k = nullptr;
  const float* coef_window = nullptr;    ///< c_w [B, Hq]
  const float* coef_linear = nullptr;    ///< c_l [B, Hq]
  const uint8_t* window_drop = nullptr;  ///< nonzero: that (batch, head) is linear-only
  void* y = nullptr;
  float* row_max = nullptr;         ///< window max m_i (0 where there is no window)
  float* row_denom = nullptr;       ///< D_i = sum a + sum b (+ eps when linear-only)
  int32_t* row_argmax = nullptr;    ///< key index of m_i (-1 where there is no window)
  float* branch_stats = nullptr;    ///< optional [B, Hq, N, 2]: linear mass, linear output share
  float* segment_states = nullptr;  ///< workspace, kept for backward; null when segments == 1
  SegmentPlan plan;
  /// Hedgehog feature maps' weights [Hq, D, 64] bf16 (no bias; F = 128), or null. Given, the
  /// kernels compute phi_q = hedgehog(q W_q) and phi_k = hedgehog(k W_k) themselves and phi_q,
  /// phi_k are not read; only where forward_computes_maps() holds.
  const void* map_q_weight = nullptr;
  const void* map_k_weight = nullptr;
};
int launch_forward(const ProblemShape& shape, const ForwardArgs& args, void* stream);

/// Whether launch_forward can compute the hedgehog maps in its kernels (ForwardArgs'
/// map weights) for this shape and split: the Hopper forward's shapes with F = 128, no branch
/// statistics. The segment states it leaves are not the ones backward reads: forward only.
bool forward_computes_maps(const ProblemShape& shape, const SegmentPlan& plan);

/// Whether launch_forward takes the warp-specialised Hopper forward (TMA, wgmma) for this shape
/// and split on the current device: bf16, D and F of 64 or 128, w = 64 (w <= 64 with overlap,
/// linear-only or window-only), no branch statistics, an sm_90 GPU.
bool forward_uses_hopper_kernel(const ProblemShape& shape, const SegmentPlan& plan);

/// Backward pass: dq, dk, dv, dphi_q, dphi_k, dc_w and dc_l (and their per-row terms).
struct BackwardArgs {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* phi_q = nullptr;
  const void* phi_k = nullptr;
  const float* coef_window = nullptr;
  const float* coef_linear = nullptr;
  const uint8_t* window_drop = nullptr;
  const void* y = nullptr;
  const void* dy = nullptr;
  const float* row_max = nullptr;
  const float* row_denom = nullptr;
  const int32_t* row_argmax = nullptr;
  /// ForwardArgs::segment_states of the same call (the backward may scan its sums again)
  float* forward_states = nullptr;
  SegmentPlan forward_plan;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  void* dphi_q = nullptr;
  void* dphi_k = nullptr;
  float* row_grad_window = nullptr;   ///< workspace [B, Hq, N]: dc_w's terms
  float* row_grad_linear = nullptr;   ///< workspace [B, Hq, N]: dc_l's terms
  float* coef_grads = nullptr;        ///< [2, B, Hq]: dc_w, dc_l (null: not wanted)
  float* row_delta = nullptr;         ///< workspace [B, Hq, N]
  float* row_gate_grad = nullptr;     ///< workspace [B, Hq, N]
  float* row_window_share = nullptr;  ///< workspace [B, Hq, N]
  float* reverse_states = nullptr;    ///< workspace for key_plan (null when segments == 1)
  float* dkv_accum = nullptr;         ///< fp32 workspace of backward_accum_floats (or null if 0)
  SegmentPlan key_plan;               ///< split of the key pass, units = B * Hkv
  bool key_grads = true;    ///< false: dk, dv may be left unwritten (k, v need no gradient)
  bool query_grads = true;  ///< false: dq may be left unwritten (q needs no gradient)
};
int launch_backward(const ProblemShape& shape, const BackwardArgs& args, void* stream);

/// Whether launch_backward (bf16, with its workspace) takes the warp-specialised Hopper kernel
/// for dphi_k and the linear part of dv: D and F of 64 or 128, lin_lag 0 or 64, an sm_90 GPU.
bool backward_uses_hopper_key_kernel(const ProblemShape& shape, const SegmentPlan& key_plan);

/// Floats of BackwardArgs::dkv_accum that launch_backward needs, 0 for none: dk and dv summed
/// over a GQA group on the CUDA cores, or bf16's linear part of dv off the Hopper key kernel.
size_t backward_accum_floats(const ProblemShape& shape, const SegmentPlan& key_plan, bool linear);

/// Whether launch_backward (bf16, key gradients wanted) takes the warp-specialised Hopper kernel
/// for dk and dv: D of 64 or 128, w <= 64, an sm_90 GPU.
bool backward_uses_hopper_window_key_kernel(const ProblemShape& shape, const SegmentPlan& key_plan);

/// Whether launch_backward (bf16, key gradients wanted, no window dropped) takes the fused Hopper
/// kernel for dk, dv and dphi_k in place of the window and linear key kernels: MHA, the
/// non-overlapping hybrid with w = 64, D = F = 128, an sm_90 GPU.
bool backward_uses_hopper_fused_key_kernel(const ProblemShape& shape, const SegmentPlan& key_plan);

/// Whether launch_backward (bf16, with feature maps) runs the reverse chunk-state pass on a
/// second stream beside the Hopper query kernel, which then sums the pass's z part itself: D of
/// 128, more than one key segment, each of 64 rows or more, an sm_90 GPU.
bool backward_runs_pass_beside_query(const ProblemShape& shape, const SegmentPlan& forward_plan,
                                     const SegmentPlan& key_plan);

/// Whether launch_backward (bf16, key gradients wanted) runs the query kernel, that pass and the
/// fused key kernel as one dataflow in its stream instead, each key block starting once the rows
/// and sums it reads are written: backward_uses_hopper_fused_key_kernel's shapes with the pass
/// beside the query kernel and at most four key segments of at most 4096 rows.
bool backward_runs_key_dataflow(const ProblemShape& shape, const SegmentPlan& forward_plan,
                                const SegmentPlan& key_plan);

/// Recurrent state for decode, as kernels/attention.hpp's RecurrentState but with S and z in
/// fp32: per (batch, q head) S [F, D] and z [F] over the keys j <= t - w that left the window
/// (in every mode; overlap and linear-only add the ring keys' linear terms at each step); ring
/// buffers of the last w keys/values (per kv head) and phi_k (per q head), key j in slot j % w.
struct DecodeState {
  float* S = nullptr;         ///< [B, Hq, F, D]; null: the state has no linear part
  float* z = nullptr;         ///< [B, Hq, F]
  void* k_ring = nullptr;     ///< [B, Hkv, w, D]
  void* v_ring = nullptr;     ///< [B, Hkv, w, D]
  void* phik_ring = nullptr;  ///< [B, Hq, w, F]
};

/// Fills S and z of `state` from a prompt of shape.seq_len tokens (keys j < N - w); the ring
/// buffers are filled by the caller. `workspace` holds state_workspace_floats(shape, B * Hq,
/// plan) floats (at least one segment's worth when plan.segments == 1).
int launch_prefill_state(const ProblemShape& shape, const void* phi_k, const void* v,
                         const DecodeState& state, float* workspace, const SegmentPlan& plan,
                         void* stream);

/// One decode step at position `position` (tokens already seen, the same for the batch):
/// inputs q [B, Hq, D], k/v [B, Hkv, D], phi_q/phi_k [B, Hq, F] of the new token; writes
/// y [B, Hq, D], folds key position - w into S, z and stores the new token in ring slot
/// position % w. A cluster of `cluster` blocks serves each (batch, q head), splitting S and the
/// ring between them: 1, 2, 4 or 8 with features % (16 * cluster) == 0 (decode_cluster_size).
struct DecodeArgs {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* phi_q = nullptr;
  const void* phi_k = nullptr;
  const float* coef_window = nullptr;
  const float* coef_linear = nullptr;
  const uint8_t* window_drop = nullptr;
  void* y = nullptr;
  int position = 0;
  /// Where set, t is read from this int in device memory instead of `position`, so that a CUDA
  /// graph can replay one captured step at every position.
  const int32_t* position_device = nullptr;
  int cluster = 1;
};
/// Blocks per (batch, q head) that fill a GPU of `sm_count` SMs (fewer when F does not split).
int decode_cluster_size(const ProblemShape& shape, int sm_count);
int launch_decode(const ProblemShape& shape, const DecodeArgs& args, const DecodeState& state,
                  void* stream);

/// A hybrid call's coef_window, coef_linear [B, Hq] from omega [Hq] (bf16 or fp32): g =
/// sigmoid(omega), c_w = g, c_l = 1 - g (affine) or 1, and c_w = 0, c_l = 1 where window_drop [B,
/// Hq] (or null) is set. One launch where LibTorch's ops took about ten.
int launch_branch_coefficients(const void* omega, bool omega_bf16, const uint8_t* window_drop,
                               float* coef_window, float* coef_linear, int batch, int heads,
                               bool affine, void* stream);
/// omega's gradient [Hq] (omega's dtype) from those of coef_window and coef_linear, summed over the
/// batch in a fixed order.
int launch_branch_coefficients_backward(const void* omega, bool omega_bf16,
                                        const uint8_t* window_drop, const float* dcoef_window,
                                        const float* dcoef_linear, void* domega, int batch,
                                        int heads, bool affine, void* stream);

/// Text of a code returned by a launcher.
const char* error_string(int code);

#ifdef HL_BLOCK_TRACE
/// Writes the per-block records of the traced kernels' last launches, one line a block
/// (kernels/cuda/block_trace.cuh; cmake -DHL_BLOCK_TRACE=ON).
void write_block_trace(FILE* out);
#endif

}  // namespace hl::kernels::cuda
