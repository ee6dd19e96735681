// Implementation detail of kernels/attention.hpp: the validated problem that the reference,
// chunked and recurrent forms share. Not for use outside kernels/ (tests may include it).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "kernels/attention.hpp"

namespace hl::kernels::detail {

/// Per (sequence, head) coefficients of the hybrid family (hybrid, window_only, linear_only),
/// each [B, H, 1, 1]. They encode the mode and the SSD drop mask so that every row is
///   y = (c_w sum_W e v + c_l sum_L' p v) / (c_w sum_W e + c_l sum_L' p + eps)
/// with e = exp(s - m), p = phi_q . phi_k and L' = {j <= i-w} plus the window keys where
/// window_keys_linear is 1 (overlap, or a row computing linear_only).
struct BranchCoefficients {
  torch::Tensor window;              ///< c_w: g_h, 1 (window_only) or 0 (dropped/linear)
  torch::Tensor linear;              ///< c_l: l_h, 0 (window_only) or 1 (linear-only rows)
  torch::Tensor window_keys_linear;  ///< 1 where the linear terms also cover the window keys
  torch::Tensor eps;                 ///< kLinearOnlyEps on linear-only rows, else 0
};

/// A validated attention call with k and v repeated to the query heads.
struct Problem {
  AttentionMode mode = AttentionMode::hybrid;
  torch::Tensor q, k, v;                    ///< [B, H, N, d|dv], H = query heads
  torch::Tensor phi_q, phi_k;               ///< [B, H, N, F] or undefined when not needed
  BranchCoefficients coef;                  ///< hybrid family only
  bool need_window = false;                 ///< some row has window terms
  bool need_linear = false;                 ///< some row has linear terms
  bool rowwise_window_keys_linear = false;  ///< window_keys_linear differs between rows
  bool all_window_keys_linear = false;      ///< when uniform: its value
  int64_t window = 1, sinks = 8, chunk = 64;
  double scale = 1.0;
  bool want_stats = false, want_weights = false;
  int64_t batch = 0, heads = 0, kv_heads = 0, length = 0, head_dim = 0, value_dim = 0;
};

/// Throws std::invalid_argument with "<api> (<mode>): <what is wrong>" unless the call is
/// well formed. `single_token` additionally requires N == 1 (decode).
void validate(const AttentionInputs& inputs, const AttentionOptions& options,
              const std::string& api, bool single_token = false);

/// "[d0, d1, ...]", a tensor's sizes for error messages.
std::string shape_of(const torch::Tensor& t);

/// k/v of [B, Hkv, N, .] repeated to [B, Hkv * groups, N, .] (head h reads h / groups).
torch::Tensor repeat_kv(const torch::Tensor& x, int64_t groups);

/// The coefficients of `mode` for a batch of `batch` sequences (drop may be undefined).
BranchCoefficients branch_coefficients(AttentionMode mode, const AttentionOptions& options,
                                       const torch::Tensor& window_factor_logits,
                                       const torch::Tensor& window_drop, int64_t batch,
                                       int64_t heads, const torch::TensorOptions& tensor_options);

/// Builds the problem from validated inputs.
Problem prepare(const AttentionInputs& inputs, const AttentionOptions& options);

/// DESIGN §2 statistics from the branch sums: window_sum/linear_sum [..., N] and the
/// branch outputs window_out/linear_out [..., N, dv] (window parts may be undefined = 0).
void fill_statistics(AttentionOutput& out, const torch::Tensor& window_sum,
                     const torch::Tensor& linear_sum, const torch::Tensor& window_out,
                     const torch::Tensor& linear_out);

/// Zero statistics of shape [B, H, N] for modes without a linear branch.
void fill_zero_statistics(AttentionOutput& out, const Problem& problem);

/// Quadratic form with explicit N x N masks.
AttentionOutput reference_attention(const Problem& problem);

/// Chunked form: local window block plus running linear state.
AttentionOutput chunked_attention(const Problem& problem);

}  // namespace hl::kernels::detail
