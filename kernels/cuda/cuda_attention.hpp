// LibTorch face of the fused CUDA kernels: hybrid attention and the feature maps' paired
// activation (built only when LibTorch has CUDA, where HL_WITH_CUDA_KERNELS is defined). The
// dispatch in kernels/attention.cpp calls supports()/attention() on a prepared problem; the
// overloads on AttentionInputs read GQA k/v in place (no repetition) and are the ones to prefer
// where the caller still has the inputs.
#pragma once

#include <torch/torch.h>

#include "kernels/attention.hpp"
#include "kernels/cpu/attention_internal.hpp"
#include "kernels/cuda/feature_map_launch.hpp"
#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/model_ops_launch.hpp"

namespace hl::kernels::cuda {

/// Whether the kernels cover this prepared problem (mode, dtype, sizes, device).
bool supports(const detail::Problem& problem);
/// Fused forward with autograd through the fused backward; k/v arrive repeated to Hq heads.
AttentionOutput attention(const detail::Problem& problem);

/// Whether the kernels cover this call; `why` (optional) receives the reason when not.
bool supports(const AttentionInputs& inputs, const AttentionOptions& options,
              std::string* why = nullptr);
/// Fused forward with autograd from un-repeated inputs (GQA k/v read in place). Throws
/// std::invalid_argument naming what is wrong when supports() says no.
AttentionOutput attention(const AttentionInputs& inputs, const AttentionOptions& options);

/// Whether attention_with_hedgehog_maps() takes these inputs: bf16 CUDA tensors of the Hopper
/// forward's shapes (D of 64 or 128, w = 64, or w <= 64 with overlap, linear-only or
/// window-only), maps' weights [Hq, D, 64], no statistics or weights wanted, an sm_90 GPU;
/// `why` (optional) receives the reason when not.
bool supports_hedgehog_maps(const AttentionInputs& inputs, const torch::Tensor& map_q_weight,
                            const torch::Tensor& map_k_weight, const AttentionOptions& options,
                            std::string* why = nullptr);
/// Forward only, without autograd: attention() with phi_q = hedgehog(q W_q) and
/// phi_k = hedgehog(k W_k) (kernels/feature_map.hpp, no bias, one weight per q head) computed
/// inside the kernels instead of read from memory; inputs.phi_q and phi_k are not read. Throws
/// std::invalid_argument naming what is wrong when supports_hedgehog_maps() says no.
AttentionOutput attention_with_hedgehog_maps(const AttentionInputs& inputs,
                                             const torch::Tensor& map_q_weight,
                                             const torch::Tensor& map_k_weight,
                                             const AttentionOptions& options);

/// Parallel output of the prompt plus the decode state that continues it. S and z of the
/// returned state are fp32 (only decode_step below reads them).
PrefillResult prefill(const AttentionInputs& inputs, const AttentionOptions& options);
/// One token for the whole batch ([B, H, 1, .] inputs); advances `state` in place and returns
/// y_t [B, Hq, 1, D]. No autograd.
torch::Tensor decode_step(const AttentionInputs& step, RecurrentState& state,
                          const AttentionOptions& options);

/// Whether paired_activation takes `r`: a bf16 or fp32 CUDA tensor whose last axis has at
/// most kPairedActivationMaxProjection entries.
bool paired_activation_fusable(const torch::Tensor& r);
/// [f(r), f(-r)] over the last axis, clamped at kFeatureClampMin: one kernel each way, with
/// autograd (the backward recomputes f from r instead of keeping phi's halves).
torch::Tensor paired_activation(const torch::Tensor& r, PairedActivation f);

/// Whether hedgehog_map takes x and w: bf16 tensors on one sm_90 GPU, x [B, Hx, N, d] with d 64
/// or 128 and w [H, d, 64] (kHedgehogMapProjection), Hx dividing H.
bool hedgehog_map_fusable(const torch::Tensor& x, const torch::Tensor& w);
/// The hedgehog feature map [softmax(x w), softmax(-x w)] clamped at kFeatureClampMin, with
/// its projection, one kernel each way, with autograd (the backward recomputes x w). With Hx < H
/// (grouped-query k), x head g serves maps g H / Hx .. (g + 1) H / Hx - 1, as FeatureMap.
torch::Tensor hedgehog_map(const torch::Tensor& x, const torch::Tensor& w);

/// Whether rms_norm takes x and weight: bf16 or fp32 CUDA tensors of one dtype and device,
/// weight [cols] with cols = x's last axis (at most kRmsNormMaxCols).
bool rms_norm_fusable(const torch::Tensor& x, const torch::Tensor& weight);
/// weight * (x * rsqrt(mean(x^2, -1) + eps)).to(x's dtype), the mean in float32, as Hugging
/// Face's Llama computes it; one kernel, no autograd, a new dense tensor.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

/// Whether rotary_embedding takes x, cos and sin: bf16 or fp32 CUDA tensors of one dtype and
/// device, x [B, H, N, d] with d even (at most kRotaryMaxHeadDim) and cos / sin [N, d].
bool rotary_embedding_fusable(const torch::Tensor& x, const torch::Tensor& cos,
                              const torch::Tensor& sin);
/// x cos + rotate_half(x) sin, rounded as LibTorch's ops round; one kernel, no autograd, a new
/// dense tensor [B, H, N, d].
torch::Tensor rotary_embedding(const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin);

/// Raw access for tests and benchmarks: per-unit coefficients instead of omega.
struct RawInputs {
  torch::Tensor q, k, v;       ///< [B, Hq, N, D], [B, Hkv, N, D] x 2
  torch::Tensor phi_q, phi_k;  ///< [B, Hq, N, F] or undefined (window_only, no drop)
  torch::Tensor coef_window;   ///< c_w [B, Hq] fp32
  torch::Tensor coef_linear;   ///< c_l [B, Hq] fp32
  torch::Tensor window_drop;   ///< [B, Hq] uint8 or undefined
  /// Hedgehog maps' weights [Hq, D, 64] bf16, or undefined: given (with phi_q, phi_k
  /// undefined), forward_raw computes phi in its kernels (F = 128); no backward_raw then.
  torch::Tensor map_q, map_k;
};

struct RawOptions {
  KernelMode mode = KernelMode::kHybrid;
  int64_t window = 64;
  bool overlap = false;
  double scale = 0;  ///< 0: 1 / sqrt(D)
  bool want_stats = false;
  int forward_segments = 0;  ///< 0: fill the chip
  int key_segments = 0;      ///< 0: fill the chip
  bool key_grads = true;     ///< false: dk, dv are not wanted (may come back unwritten)
  bool query_grads = true;   ///< false: dq is not wanted (may come back unwritten)
};

/// What forward leaves for backward.
struct RawForward {
  torch::Tensor y, row_max, row_denom, row_argmax, stats, states;
  SegmentPlan plan;
};

struct RawGrads {
  torch::Tensor dq, dk, dv, dphi_q, dphi_k, dcoef_window, dcoef_linear;
};

/// Forward; writes into `y_out` when it is defined (tests poison it first).
RawForward forward_raw(const RawInputs& in, const RawOptions& options,
                       torch::Tensor y_out = torch::Tensor());
/// Backward; writes into the defined tensors of `out` when given.
RawGrads backward_raw(const RawInputs& in, const RawOptions& options, const RawForward& fwd,
                      const torch::Tensor& dy, const RawGrads* out = nullptr);

}  // namespace hl::kernels::cuda
