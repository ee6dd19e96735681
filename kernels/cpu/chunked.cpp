// The chunked form for training on the CPU. Queries go in blocks of C; block c sees
//  - a local key block of C + w - 1 keys (its windows and the linear keys that are not yet
//    in the state), computed exactly as the reference does within the block, and
//  - the running linear state S_c = sum phi_k v^T, z_c = sum phi_k over the keys before
//    the local block, an exclusive prefix sum over key blocks aligned with the local blocks.
// Time O(N (C + w) (d + F) + N F dv), extra memory O(N (C + w) + N F dv / C). Plain LibTorch
// ops, so autograd differentiates it; everything it saves is per block, linear in N.
#include <algorithm>
#include <limits>

#include "kernels/cpu/attention_internal.hpp"

namespace hl::kernels::detail {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Pads dimension 2 (positions) of a [B, H, N, D] tensor with zeros.
torch::Tensor pad_positions(const torch::Tensor& x, int64_t before, int64_t after) {
  if (before == 0 && after == 0) return x;
  return torch::constant_pad_nd(x, {0, 0, before, after}, 0);
}

// Softmax over causal keys, by query blocks so that no N x N score matrix exists at once
// (autograd still keeps each block's scores when gradients are recorded).
AttentionOutput blocked_causal_softmax(const Problem& p) {
  const int64_t block = std::max<int64_t>(p.chunk, 128);
  const auto index_options = torch::TensorOptions().dtype(torch::kLong).device(p.q.device());
  std::vector<torch::Tensor> outputs;
  for (int64_t start = 0; start < p.length; start += block) {
    const int64_t rows = std::min(block, p.length - start);
    const int64_t keys = start + rows;
    const auto scores =
        torch::matmul(p.q.narrow(2, start, rows), p.k.narrow(2, 0, keys).transpose(-1, -2))
            .mul(p.scale);
    const auto i = torch::arange(start, keys, index_options).view({rows, 1});
    const auto j = torch::arange(keys, index_options).view({1, keys});
    const auto weights = torch::softmax(scores.masked_fill(j > i, kNegInf), -1);
    outputs.push_back(torch::matmul(weights, p.v.narrow(2, 0, keys)));
  }
  AttentionOutput out;
  out.y = outputs.size() == 1 ? outputs.front() : torch::cat(outputs, 2);
  if (p.want_stats) fill_zero_statistics(out, p);
  return out;
}

// Softmax over the first `sinks` keys: only those keys take part, so this is O(N * sinks).
AttentionOutput sink_softmax(const Problem& p) {
  const int64_t keys = std::min(p.sinks, p.length);
  const auto index_options = torch::TensorOptions().dtype(torch::kLong).device(p.q.device());
  const auto scores = torch::matmul(p.q, p.k.narrow(2, 0, keys).transpose(-1, -2)).mul(p.scale);
  const auto i = torch::arange(p.length, index_options).view({p.length, 1});
  const auto j = torch::arange(keys, index_options).view({1, keys});
  const auto weights = torch::softmax(scores.masked_fill(j > i, kNegInf), -1);
  AttentionOutput out;
  out.y = torch::matmul(weights, p.v.narrow(2, 0, keys));
  if (p.want_stats) fill_zero_statistics(out, p);
  return out;
}

AttentionOutput chunked_hybrid(const Problem& p) {
  const int64_t B = p.batch, H = p.heads, N = p.length;
  // A window of w >= N keys is the same as one of N keys (all j <= i, no linear keys).
  const int64_t w = std::min(p.window, N);
  const int64_t C = std::min(p.chunk, N);
  const int64_t blocks = (N + C - 1) / C;
  const int64_t padded = blocks * C;
  const int64_t local = C + w - 1;  // keys of block c: positions cC - w + 1 ... cC + C - 1
  const int64_t before = w - 1, after = padded - N;
  const auto dtype = p.q.scalar_type();

  // Masks of the local block, [blocks, C, local]: query i = cC + r, key j = cC - w + 1 + u.
  const auto index_options = torch::TensorOptions().dtype(torch::kLong).device(p.q.device());
  const auto r = torch::arange(C, index_options).view({1, C, 1});
  const auto u = torch::arange(local, index_options).view({1, 1, local});
  const auto c = torch::arange(blocks, index_options).view({blocks, 1, 1});
  const auto key_exists = (c * C - before + u) >= 0;
  const auto window = key_exists & (u >= r) & (u <= r + (w - 1));  // 0 <= i - j < w
  const auto beyond_window = key_exists & (u < r);                 // i - j >= w

  const auto expand5 = [](const torch::Tensor& t) { return t.unsqueeze(-1); };  // [B,H,1,1,1]
  const auto values = pad_positions(p.v, before, after);  // [B, H, before + padded, dv]
  const auto local_values = values.unfold(2, local, C).transpose(-1, -2);  // [B,H,c,local,dv]

  torch::Tensor window_terms, linear_terms, state_out, state_sum;
  if (p.need_window) {
    const auto queries = pad_positions(p.q, 0, after).view({B, H, blocks, C, p.head_dim});
    const auto local_keys = pad_positions(p.k, before, after).unfold(2, local, C);  // [.,d,local]
    const auto scores = torch::matmul(queries, local_keys).mul(p.scale);
    const auto window_scores = scores.masked_fill(~window, kNegInf);
    // Max over the window keys only, as in the reference: exp(.) <= 1 for any score size.
    const auto window_max = window_scores.amax(-1, /*keepdim=*/true);
    window_terms = expand5(p.coef.window) * torch::exp(window_scores - window_max);
  }
  if (p.need_linear) {
    const int64_t F = p.phi_q.size(3);
    const auto phi_queries = pad_positions(p.phi_q, 0, after).view({B, H, blocks, C, F});
    const auto phi_keys = pad_positions(p.phi_k, before, after);  // [B, H, before + padded, F]
    const auto products = torch::matmul(phi_queries, phi_keys.unfold(2, local, C));
    torch::Tensor linear_keys;  // which local keys are linear keys for each query
    if (p.rowwise_window_keys_linear) {
      linear_keys = beyond_window.to(dtype) + expand5(p.coef.window_keys_linear) * window.to(dtype);
    } else {
      linear_keys = (p.all_window_keys_linear ? (beyond_window | window) : beyond_window).to(dtype);
    }
    const auto linear_coef = expand5(p.coef.linear);
    linear_terms = linear_coef * (products * linear_keys);

    if (blocks > 1) {
      // Key block b covers padded positions [bC, bC + C) = keys bC - w + 1 ...; block c's
      // state holds key blocks b < c, i.e. every key j <= cC - w, just before its local block.
      const auto state_keys = phi_keys.narrow(2, 0, padded - C).reshape({B, H, blocks - 1, C, F});
      const auto state_values =
          values.narrow(2, 0, padded - C).reshape({B, H, blocks - 1, C, p.value_dim});
      const auto block_kv = torch::matmul(state_keys.transpose(-1, -2), state_values);
      const auto block_k = state_keys.sum(3);
      const auto kv_prefix = torch::cat(
          {torch::zeros({B, H, 1, F, p.value_dim}, block_kv.options()), block_kv.cumsum(2)}, 2);
      const auto k_prefix =
          torch::cat({torch::zeros({B, H, 1, F}, block_k.options()), block_k.cumsum(2)}, 2);
      state_out = linear_coef * torch::matmul(phi_queries, kv_prefix);
      state_sum = linear_coef * torch::matmul(phi_queries, k_prefix.unsqueeze(-1));
    }
  }

  const auto terms = !window_terms.defined()   ? linear_terms
                     : !linear_terms.defined() ? window_terms
                                               : window_terms + linear_terms;
  auto numerator = torch::matmul(terms, local_values);
  auto denominator = terms.sum(-1, /*keepdim=*/true);
  if (state_out.defined()) {
    numerator = numerator + state_out;
    denominator = denominator + state_sum;
  }
  denominator = denominator + expand5(p.coef.eps);
  const auto unpad = [&](const torch::Tensor& t, int64_t last) {
    return t.reshape({B, H, padded, last}).narrow(2, 0, N);
  };

  AttentionOutput out;
  out.y = unpad(numerator / denominator, p.value_dim);
  if (p.want_stats) {
    torch::NoGradGuard no_grad;
    auto linear_sum = linear_terms.defined() ? linear_terms.sum(-1, true)
                                             : torch::zeros({B, H, blocks, C, 1}, p.q.options());
    auto linear_out = linear_terms.defined()
                          ? torch::matmul(linear_terms, local_values)
                          : torch::zeros({B, H, blocks, C, p.value_dim}, p.q.options());
    if (state_out.defined()) {
      linear_sum = linear_sum + state_sum;
      linear_out = linear_out + state_out;
    }
    torch::Tensor window_sum, window_out;
    if (window_terms.defined()) {
      window_sum = unpad(window_terms.sum(-1, true), 1).squeeze(-1);
      window_out = unpad(torch::matmul(window_terms, local_values), p.value_dim);
    }
    fill_statistics(out, window_sum, unpad(linear_sum, 1).squeeze(-1), window_out,
                    unpad(linear_out, p.value_dim));
  }
  return out;
}

}  // namespace

AttentionOutput chunked_attention(const Problem& p) {
  switch (p.mode) {
    case AttentionMode::softmax:
      return blocked_causal_softmax(p);
    case AttentionMode::sinks_only:
      return sink_softmax(p);
    case AttentionMode::none: {
      AttentionOutput out;
      out.y = torch::zeros({p.batch, p.heads, p.length, p.value_dim}, p.v.options());
      if (p.want_stats) fill_zero_statistics(out, p);
      return out;
    }
    default:
      return chunked_hybrid(p);
  }
}

}  // namespace hl::kernels::detail
