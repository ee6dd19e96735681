// The quadratic reference: every mode written with explicit N x N masks, in the input dtype
// (float64 for checks). It is the definition the chunked, recurrent and CUDA forms match.
#include <limits>

#include "kernels/cpu/attention_internal.hpp"

namespace hl::kernels::detail {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Softmax over the keys allowed by `allowed` [N, N]; rows always have at least one key.
AttentionOutput masked_softmax(const Problem& p, const torch::Tensor& allowed) {
  const auto scores =
      torch::matmul(p.q, p.k.transpose(-1, -2)).mul(p.scale).masked_fill(~allowed, kNegInf);
  const auto weights = torch::softmax(scores, -1);
  AttentionOutput out;
  out.y = torch::matmul(weights, p.v);
  if (p.want_weights) out.weights = weights;
  if (p.want_stats) fill_zero_statistics(out, p);
  return out;
}

}  // namespace

AttentionOutput reference_attention(const Problem& p) {
  const auto index_options = torch::TensorOptions().dtype(torch::kLong).device(p.q.device());
  const auto i = torch::arange(p.length, index_options).view({p.length, 1});
  const auto j = torch::arange(p.length, index_options).view({1, p.length});
  const auto causal = j <= i;

  switch (p.mode) {
    case AttentionMode::softmax:
      return masked_softmax(p, causal);
    case AttentionMode::sinks_only:
      return masked_softmax(p, causal & (j < p.sinks));
    case AttentionMode::none: {
      AttentionOutput out;
      out.y = torch::zeros({p.batch, p.heads, p.length, p.value_dim}, p.v.options());
      if (p.want_weights) {
        out.weights = torch::zeros({p.batch, p.heads, p.length, p.length}, p.q.options());
      }
      if (p.want_stats) fill_zero_statistics(out, p);
      return out;
    }
    default:
      break;
  }

  // Hybrid family: y = (c_w sum_W e v + c_l sum_L' p v) / (c_w sum_W e + c_l sum_L' p + eps).
  const auto window = causal & (j > i - p.window);
  const auto beyond_window = j <= i - p.window;
  torch::Tensor window_terms, linear_terms;  // a_ij and b_ij, [B, H, N, N]
  if (p.need_window) {
    const auto scores = torch::matmul(p.q, p.k.transpose(-1, -2)).mul(p.scale);
    const auto window_scores = scores.masked_fill(~window, kNegInf);
    // The max runs over the window keys only and is subtracted from the window terms only.
    const auto window_max = window_scores.amax(-1, /*keepdim=*/true);
    window_terms = p.coef.window * torch::exp(window_scores - window_max);
  }
  if (p.need_linear) {
    const auto dtype = p.q.scalar_type();
    const auto linear_keys = beyond_window.to(dtype) + p.coef.window_keys_linear * window.to(dtype);
    const auto products = torch::matmul(p.phi_q, p.phi_k.transpose(-1, -2));
    linear_terms = p.coef.linear * (products * linear_keys);
  }
  const auto terms = !window_terms.defined()   ? linear_terms
                     : !linear_terms.defined() ? window_terms
                                               : window_terms + linear_terms;
  const auto denominator = terms.sum(-1, /*keepdim=*/true) + p.coef.eps;
  AttentionOutput out;
  out.y = torch::matmul(terms, p.v) / denominator;
  if (p.want_weights) out.weights = terms / denominator;
  if (p.want_stats) {
    torch::NoGradGuard no_grad;
    const auto linear_sum = linear_terms.defined()
                                ? linear_terms.sum(-1)
                                : torch::zeros({p.batch, p.heads, p.length}, p.q.options());
    const auto linear_out =
        linear_terms.defined()
            ? torch::matmul(linear_terms, p.v)
            : torch::zeros({p.batch, p.heads, p.length, p.value_dim}, p.q.options());
    torch::Tensor window_sum, window_out;
    if (window_terms.defined()) {
      window_sum = window_terms.sum(-1);
      window_out = torch::matmul(window_terms, p.v);
    }
    fill_statistics(out, window_sum, linear_sum, window_out, linear_out);
  }
  return out;
}

}  // namespace hl::kernels::detail
