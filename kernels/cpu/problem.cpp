// Input validation, GQA repetition, branch coefficients and statistics shared by all forms.
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "kernels/cpu/attention_internal.hpp"

namespace hl::kernels::detail {

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream out;
  out << '[';
  for (int64_t i = 0; i < t.dim(); ++i)
    out << (i ? ", " : "") << t.size(i);
  out << ']';
  return out.str();
}

namespace {

bool known_mode(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::softmax:
    case AttentionMode::hybrid:
    case AttentionMode::linear_only:
    case AttentionMode::window_only:
    case AttentionMode::sinks_only:
    case AttentionMode::none:
      return true;
  }
  return false;
}

bool known_backend(Backend backend) {
  switch (backend) {
    case Backend::automatic:
    case Backend::reference:
    case Backend::chunked:
    case Backend::cuda:
      return true;
  }
  return false;
}

bool hybrid_family(AttentionMode mode) {
  return mode == AttentionMode::hybrid || mode == AttentionMode::linear_only ||
         mode == AttentionMode::window_only;
}

// Whether the mode reads the feature maps for this call.
bool needs_features(AttentionMode mode, bool has_drop) {
  return mode == AttentionMode::hybrid || mode == AttentionMode::linear_only ||
         (mode == AttentionMode::window_only && has_drop);
}

class Checker {
 public:
  Checker(const std::string& api, AttentionMode mode) {
    prefix_ = api + " (" + (known_mode(mode) ? std::string(to_string(mode)) : "?") + "): ";
  }
  void require(bool condition, const std::string& message) const {
    if (!condition) throw std::invalid_argument(prefix_ + message);
  }

 private:
  std::string prefix_;
};

}  // namespace

void validate(const AttentionInputs& in, const AttentionOptions& options, const std::string& api,
              bool single_token) {
  const Checker check(api, options.mode);
  check.require(known_mode(options.mode), "unknown attention mode (value " +
                                              std::to_string(static_cast<int>(options.mode)) + ")");
  check.require(
      known_backend(options.backend),
      "unknown backend (value " + std::to_string(static_cast<int>(options.backend)) + ")");
  check.require(options.window >= 1, "window must be >= 1, got " + std::to_string(options.window));
  check.require(options.chunk >= 1, "chunk must be >= 1, got " + std::to_string(options.chunk));
  check.require(options.mode != AttentionMode::sinks_only || options.sinks >= 1,
                "sinks must be >= 1, got " + std::to_string(options.sinks));
  if (options.scale) {
    check.require(std::isfinite(*options.scale) && *options.scale > 0,
                  "scale must be positive and finite, got " + std::to_string(*options.scale));
  }

  for (const auto& [tensor, name] :
       {std::pair{&in.q, "q"}, std::pair{&in.k, "k"}, std::pair{&in.v, "v"}}) {
    check.require(tensor->defined(), std::string(name) + " is missing");
    check.require(tensor->dim() == 4,
                  std::string(name) + " must be [B, H, N, dim], got " + shape_of(*tensor));
    check.require(tensor->is_floating_point(),
                  std::string(name) + " must be a floating-point tensor");
  }
  const auto& q = in.q;
  const auto& k = in.k;
  const auto& v = in.v;
  check.require(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                "q, k and v must share one dtype");
  check.require(k.device() == q.device() && v.device() == q.device(),
                "q, k and v must be on one device");
  check.require(
      k.size(0) == q.size(0) && v.size(0) == q.size(0),
      "batch sizes differ: q " + shape_of(q) + ", k " + shape_of(k) + ", v " + shape_of(v));
  check.require(
      k.size(2) == q.size(2) && v.size(2) == q.size(2),
      "sequence lengths differ: q " + shape_of(q) + ", k " + shape_of(k) + ", v " + shape_of(v));
  check.require(q.size(2) >= 1, "the sequence is empty (N = 0)");
  check.require(!single_token || q.size(2) == 1,
                "a decode step takes one token, got N = " + std::to_string(q.size(2)));
  check.require(k.size(3) == q.size(3), "q has head dim " + std::to_string(q.size(3)) +
                                            " but k has " + std::to_string(k.size(3)));
  check.require(v.size(1) == k.size(1), "k has " + std::to_string(k.size(1)) + " heads but v has " +
                                            std::to_string(v.size(1)));
  check.require(k.size(1) >= 1 && q.size(1) % k.size(1) == 0,
                "query heads (" + std::to_string(q.size(1)) + ") must be a multiple of kv heads (" +
                    std::to_string(k.size(1)) + ")");
  const int64_t batch = q.size(0), heads = q.size(1), length = q.size(2);

  const bool has_drop = in.window_drop.defined();
  if (needs_features(options.mode, has_drop)) {
    for (const auto& [tensor, name] :
         {std::pair{&in.phi_q, "phi_q"}, std::pair{&in.phi_k, "phi_k"}}) {
      check.require(tensor->defined(),
                    std::string(name) + " is missing (the linear branch needs it)");
      check.require(tensor->dim() == 4 && tensor->size(0) == batch && tensor->size(1) == heads &&
                        tensor->size(2) == length,
                    std::string(name) + " must be [B, Hq, N, F] = [" + std::to_string(batch) +
                        ", " + std::to_string(heads) + ", " + std::to_string(length) +
                        ", F], got " + shape_of(*tensor));
      check.require(tensor->scalar_type() == q.scalar_type(),
                    std::string(name) + " must have q's dtype");
      check.require(tensor->device() == q.device(), std::string(name) + " must be on q's device");
    }
    check.require(in.phi_k.size(3) == in.phi_q.size(3),
                  "phi_k has " + std::to_string(in.phi_k.size(3)) + " features but phi_q has " +
                      std::to_string(in.phi_q.size(3)));
    check.require(in.phi_q.size(3) >= 1, "phi_q has no features");
  }
  if (options.mode == AttentionMode::hybrid) {
    const auto& omega = in.window_factor_logits;
    check.require(omega.defined(), "window_factor_logits (omega, [Hq]) is missing");
    check.require(omega.dim() == 1 && omega.size(0) == heads,
                  "window_factor_logits must be [Hq] = [" + std::to_string(heads) + "], got " +
                      shape_of(omega));
    // Under mixed precision the factors stay fp32 while the activations are bf16.
    check.require(omega.scalar_type() == q.scalar_type() || omega.scalar_type() == torch::kFloat,
                  "window_factor_logits must have q's dtype or be float32");
    check.require(omega.device() == q.device(), "window_factor_logits must be on q's device");
  }
  if (has_drop) {
    const auto& drop = in.window_drop;
    check.require(hybrid_family(options.mode),
                  "window_drop applies to hybrid, window_only and linear_only only");
    check.require(drop.dim() == 2 && drop.size(0) == batch && drop.size(1) == heads,
                  "window_drop must be [B, Hq] = [" + std::to_string(batch) + ", " +
                      std::to_string(heads) + "], got " + shape_of(drop));
    check.require(drop.device() == q.device(), "window_drop must be on q's device");
    if (drop.scalar_type() != torch::kBool) {
      const auto as_double = drop.detach().to(torch::kDouble);
      check.require(((as_double == 0) | (as_double == 1)).all().item<bool>(),
                    "window_drop must hold only 0 and 1");
    }
  }
}

torch::Tensor repeat_kv(const torch::Tensor& x, int64_t groups) {
  if (groups == 1) return x;
  const auto sizes = x.sizes();
  return x.unsqueeze(2)
      .expand({sizes[0], sizes[1], groups, sizes[2], sizes[3]})
      .reshape({sizes[0], sizes[1] * groups, sizes[2], sizes[3]});
}

BranchCoefficients branch_coefficients(AttentionMode mode, const AttentionOptions& options,
                                       const torch::Tensor& window_factor_logits,
                                       const torch::Tensor& window_drop, int64_t batch,
                                       int64_t heads, const torch::TensorOptions& tensor_options) {
  const auto full = [&](double value) {
    return torch::full({batch, heads, 1, 1}, value, tensor_options);
  };
  torch::Tensor dropped;  // [B, H, 1, 1] of 0/1, or undefined
  if (window_drop.defined()) {
    dropped = window_drop.to(tensor_options.dtype()).view({batch, heads, 1, 1});
  }
  BranchCoefficients coef;
  switch (mode) {
    case AttentionMode::hybrid: {
      const auto gate =
          torch::sigmoid(window_factor_logits.to(tensor_options.dtype())).view({1, heads, 1, 1});
      const auto linear = options.affine_factors ? 1 - gate : torch::ones_like(gate);
      if (dropped.defined()) {
        const auto kept = 1 - dropped;
        coef.window = gate * kept;
        coef.linear = linear * kept + dropped;
        coef.window_keys_linear = options.overlap ? full(1) : dropped;
        coef.eps = dropped * kLinearOnlyEps;
      } else {
        coef.window = gate.expand({batch, heads, 1, 1});
        coef.linear = linear.expand({batch, heads, 1, 1});
        coef.window_keys_linear = full(options.overlap ? 1 : 0);
        coef.eps = full(0);
      }
      break;
    }
    case AttentionMode::window_only:
      // g_h cancels between numerator and denominator, so the window weight is 1.
      if (dropped.defined()) {
        coef.window = 1 - dropped;
        coef.linear = dropped;
        coef.window_keys_linear = dropped;
        coef.eps = dropped * kLinearOnlyEps;
      } else {
        coef.window = full(1);
        coef.linear = full(0);
        coef.window_keys_linear = full(0);
        coef.eps = full(0);
      }
      break;
    case AttentionMode::linear_only:
      // l_h would cancel too (it only rescales eps), so linear-only rows use b = phi_q . phi_k.
      coef.window = full(0);
      coef.linear = full(1);
      coef.window_keys_linear = full(1);
      coef.eps = full(kLinearOnlyEps);
      break;
    default:
      break;
  }
  return coef;
}

Problem prepare(const AttentionInputs& in, const AttentionOptions& options) {
  Problem p;
  p.mode = options.mode;
  p.batch = in.q.size(0);
  p.heads = in.q.size(1);
  p.kv_heads = in.k.size(1);
  p.length = in.q.size(2);
  p.head_dim = in.q.size(3);
  p.value_dim = in.v.size(3);
  const int64_t groups = p.heads / p.kv_heads;
  p.q = in.q;
  p.k = repeat_kv(in.k, groups);
  p.v = repeat_kv(in.v, groups);
  p.window = options.window;
  p.sinks = options.sinks;
  p.chunk = options.chunk;
  p.scale = options.scale.value_or(1.0 / std::sqrt(static_cast<double>(p.head_dim)));
  p.want_stats = options.want_stats;
  p.want_weights = options.want_weights;
  if (hybrid_family(options.mode)) {
    p.coef = branch_coefficients(options.mode, options, in.window_factor_logits, in.window_drop,
                                 p.batch, p.heads, in.q.options());
    const bool has_drop = in.window_drop.defined();
    p.need_window = options.mode != AttentionMode::linear_only;
    p.need_linear = needs_features(options.mode, has_drop);
    if (p.need_linear) {
      p.phi_q = in.phi_q;
      p.phi_k = in.phi_k;
    }
    p.rowwise_window_keys_linear = has_drop &&
                                   !(options.mode == AttentionMode::hybrid && options.overlap) &&
                                   options.mode != AttentionMode::linear_only;
    p.all_window_keys_linear = options.mode == AttentionMode::linear_only ||
                               (options.mode == AttentionMode::hybrid && options.overlap);
  }
  return p;
}

void fill_statistics(AttentionOutput& out, const torch::Tensor& window_sum,
                     const torch::Tensor& linear_sum, const torch::Tensor& window_out,
                     const torch::Tensor& linear_out) {
  torch::NoGradGuard no_grad;
  const auto zero = torch::zeros({}, linear_sum.options());
  const auto total = window_sum.defined() ? window_sum + linear_sum : linear_sum;
  out.linear_mass = torch::where(total > 0, linear_sum / total, zero);
  const auto linear_norm = linear_out.norm(2, -1);
  const auto window_norm =
      window_out.defined() ? window_out.norm(2, -1) : torch::zeros_like(linear_norm);
  const auto norms = window_norm + linear_norm;
  out.linear_output_share = torch::where(norms > 0, linear_norm / norms, zero);
}

void fill_zero_statistics(AttentionOutput& out, const Problem& p) {
  out.linear_mass = torch::zeros({p.batch, p.heads, p.length}, p.q.options());
  out.linear_output_share = torch::zeros({p.batch, p.heads, p.length}, p.q.options());
}

}  // namespace hl::kernels::detail
