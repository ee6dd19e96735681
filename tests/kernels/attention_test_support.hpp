// Helpers of the attention tests: random problems, relative errors and the plain-loop
// definition of every mode (DESIGN §1), written independently of the kernels.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/attention.hpp"
#include "kernels/feature_map.hpp"

namespace hl::kernels::test {

/// ||a - b|| / ||b|| in float64 (||a|| when b is 0).
inline double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  const auto a64 = a.detach().to(torch::kDouble), b64 = b.detach().to(torch::kDouble);
  const double denominator = b64.norm().item<double>();
  const double difference = (a64 - b64).norm().item<double>();
  return denominator > 0 ? difference / denominator : difference;
}

/// k/v repeated to the query heads, head h reading kv head h / groups.
inline torch::Tensor repeat_heads(const torch::Tensor& x, int64_t groups) {
  return x.repeat_interleave(groups, 1);
}

struct Shape {
  int64_t batch = 1, heads = 2, kv_heads = 2, length = 7, head_dim = 4, value_dim = 3;
  int64_t feature_dim = 3;  // p of the hedgehog maps: F = 2p
};

/// Master copies (float64) of one random problem; `build` makes fresh leaves in any dtype.
struct RandomProblem {
  Shape shape;
  torch::Tensor q, k, v, omega, drop, weight_q, weight_k, output_grad;

  RandomProblem(const Shape& s, uint64_t seed, double score_scale = 1.0) : shape(s) {
    torch::manual_seed(seed);
    const auto f64 = torch::TensorOptions().dtype(torch::kDouble);
    q = torch::randn({s.batch, s.heads, s.length, s.head_dim}, f64) * score_scale;
    k = torch::randn({s.batch, s.kv_heads, s.length, s.head_dim}, f64) * score_scale;
    v = torch::randn({s.batch, s.kv_heads, s.length, s.value_dim}, f64);
    omega = torch::randn({s.heads}, f64) - 1.0;
    // Projection weights away from identity so that the maps are not trivial.
    weight_q = torch::randn({s.heads, s.head_dim, s.feature_dim}, f64) * 0.5;
    weight_k = torch::randn({s.heads, s.head_dim, s.feature_dim}, f64) * 0.5;
    output_grad = torch::randn({s.batch, s.heads, s.length, s.value_dim}, f64);
  }

  /// Leaves of one run; phi_q, phi_k come from real hedgehog feature maps.
  struct Leaves {
    torch::Tensor q, k, v, omega;
    FeatureMap map_q{nullptr}, map_k{nullptr};
    AttentionInputs inputs;
    std::vector<torch::Tensor> parameters() const {
      return {q, k, v, omega, map_q->weight, map_k->weight};
    }
  };

  Leaves build(torch::ScalarType dtype) const {
    Leaves leaves;
    leaves.q = q.to(dtype).requires_grad_(true);
    leaves.k = k.to(dtype).requires_grad_(true);
    leaves.v = v.to(dtype).requires_grad_(true);
    leaves.omega = omega.to(dtype).requires_grad_(true);
    FeatureMapOptions options;
    options.kind = FeatureMapKind::hedgehog;
    options.heads = shape.heads;
    options.head_dim = shape.head_dim;
    options.feature_dim = shape.feature_dim;
    leaves.map_q = FeatureMap(options);
    leaves.map_k = FeatureMap(options);
    leaves.map_q->to(dtype);
    leaves.map_k->to(dtype);
    {
      torch::NoGradGuard no_grad;
      leaves.map_q->weight.copy_(weight_q);
      leaves.map_k->weight.copy_(weight_k);
    }
    const int64_t groups = shape.heads / shape.kv_heads;
    leaves.inputs.q = leaves.q;
    leaves.inputs.k = leaves.k;
    leaves.inputs.v = leaves.v;
    leaves.inputs.phi_q = leaves.map_q->forward(leaves.q);
    leaves.inputs.phi_k = leaves.map_k->forward(repeat_heads(leaves.k, groups));
    leaves.inputs.window_factor_logits = leaves.omega;
    if (drop.defined()) leaves.inputs.window_drop = drop;
    return leaves;
  }
};

/// Output and the gradients of sum(y * output_grad) w.r.t. q, k, v, omega, W_q, W_k
/// (undefined where the output does not depend on a tensor).
struct RunResult {
  AttentionOutput output;
  std::vector<torch::Tensor> grads;
};

inline RunResult run_with_grads(const RandomProblem& problem, torch::ScalarType dtype,
                                const AttentionOptions& options) {
  auto leaves = problem.build(dtype);
  RunResult result;
  result.output = attention(leaves.inputs, options);
  if (!result.output.y.requires_grad()) return result;
  const auto loss = (result.output.y * problem.output_grad.to(dtype)).sum();
  result.grads = torch::autograd::grad({loss}, leaves.parameters(), {}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
  return result;
}

/// The definition of DESIGN §1 as plain loops over (b, h, i, j), in double.
struct LoopResult {
  torch::Tensor y, linear_mass, linear_output_share, weights;
};

inline LoopResult loop_attention(const AttentionInputs& in, const AttentionOptions& options) {
  const auto q = in.q.detach().to(torch::kDouble).contiguous();
  const auto k = in.k.detach().to(torch::kDouble).contiguous();
  const auto v = in.v.detach().to(torch::kDouble).contiguous();
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), d = q.size(3), dv = v.size(3);
  const int64_t groups = H / k.size(1);
  const double scale = options.scale.value_or(1.0 / std::sqrt(static_cast<double>(d)));
  torch::Tensor phi_q, phi_k, omega, drop;
  if (in.phi_q.defined()) phi_q = in.phi_q.detach().to(torch::kDouble).contiguous();
  if (in.phi_k.defined()) phi_k = in.phi_k.detach().to(torch::kDouble).contiguous();
  if (in.window_factor_logits.defined())
    omega = in.window_factor_logits.detach().to(torch::kDouble);
  if (in.window_drop.defined()) drop = in.window_drop.detach().to(torch::kDouble);
  const int64_t w = options.window;

  LoopResult out;
  out.y = torch::zeros({B, H, N, dv}, torch::kDouble);
  out.linear_mass = torch::zeros({B, H, N}, torch::kDouble);
  out.linear_output_share = torch::zeros({B, H, N}, torch::kDouble);
  out.weights = torch::zeros({B, H, N, N}, torch::kDouble);
  auto qa = q.accessor<double, 4>();
  auto ka = k.accessor<double, 4>();
  auto va = v.accessor<double, 4>();
  auto ya = out.y.accessor<double, 4>();
  auto wa = out.weights.accessor<double, 4>();

  const auto score = [&](int64_t b, int64_t h, int64_t i, int64_t j) {
    double s = 0;
    for (int64_t e = 0; e < d; ++e)
      s += qa[b][h][i][e] * ka[b][h / groups][j][e];
    return s * scale;
  };
  const auto feature_product = [&](int64_t b, int64_t h, int64_t i, int64_t j) {
    double s = 0;
    for (int64_t f = 0; f < phi_q.size(3); ++f) {
      s += phi_q[b][h][i][f].item<double>() * phi_k[b][h][j][f].item<double>();
    }
    return s;
  };

  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const bool dropped = drop.defined() && drop[b][h].item<double>() != 0;
      AttentionMode mode = options.mode;
      if (dropped) mode = AttentionMode::linear_only;
      for (int64_t i = 0; i < N; ++i) {
        std::vector<double> weight(N, 0.0);
        if (mode == AttentionMode::softmax || mode == AttentionMode::sinks_only ||
            mode == AttentionMode::window_only) {
          const auto allowed = [&](int64_t j) {
            if (j > i) return false;
            if (mode == AttentionMode::sinks_only) return j < options.sinks;
            if (mode == AttentionMode::window_only) return j > i - w;
            return true;
          };
          double max_score = -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j < N; ++j) {
            if (allowed(j)) max_score = std::max(max_score, score(b, h, i, j));
          }
          double total = 0;
          for (int64_t j = 0; j < N; ++j) {
            if (allowed(j)) total += weight[j] = std::exp(score(b, h, i, j) - max_score);
          }
          for (auto& x : weight)
            x /= total;
        } else if (mode == AttentionMode::linear_only) {
          double total = 0;
          for (int64_t j = 0; j <= i; ++j)
            total += weight[j] = feature_product(b, h, i, j);
          for (auto& x : weight)
            x /= (total + kLinearOnlyEps);
          out.linear_mass[b][h][i] = total > 0 ? 1.0 : 0.0;
          out.linear_output_share[b][h][i] = 1.0;  // fixed below if the output is 0
        } else if (mode == AttentionMode::hybrid) {
          const double g = 1.0 / (1.0 + std::exp(-omega[h].item<double>()));
          const double l = options.affine_factors ? 1.0 - g : 1.0;
          double max_score = -std::numeric_limits<double>::infinity();
          for (int64_t j = std::max<int64_t>(0, i - w + 1); j <= i; ++j) {
            max_score = std::max(max_score, score(b, h, i, j));
          }
          std::vector<double> a(N, 0.0), bl(N, 0.0);
          double sum_a = 0, sum_b = 0;
          for (int64_t j = 0; j <= i; ++j) {
            const bool in_window = j > i - w;
            const bool in_linear = options.overlap || j <= i - w;
            if (in_window) sum_a += a[j] = g * std::exp(score(b, h, i, j) - max_score);
            if (in_linear) sum_b += bl[j] = l * feature_product(b, h, i, j);
          }
          std::vector<double> out_a(dv, 0.0), out_b(dv, 0.0);
          for (int64_t j = 0; j <= i; ++j) {
            weight[j] = (a[j] + bl[j]) / (sum_a + sum_b);
            for (int64_t e = 0; e < dv; ++e) {
              out_a[e] += a[j] * va[b][h / groups][j][e];
              out_b[e] += bl[j] * va[b][h / groups][j][e];
            }
          }
          double norm_a = 0, norm_b = 0;
          for (int64_t e = 0; e < dv; ++e) {
            norm_a += out_a[e] * out_a[e];
            norm_b += out_b[e] * out_b[e];
          }
          norm_a = std::sqrt(norm_a);
          norm_b = std::sqrt(norm_b);
          out.linear_mass[b][h][i] = sum_b / (sum_a + sum_b);
          out.linear_output_share[b][h][i] = norm_a + norm_b > 0 ? norm_b / (norm_a + norm_b) : 0.0;
        }
        // mode none leaves the weights at 0.
        for (int64_t j = 0; j < N; ++j) {
          wa[b][h][i][j] = weight[j];
          for (int64_t e = 0; e < dv; ++e)
            ya[b][h][i][e] += weight[j] * va[b][h / groups][j][e];
        }
        if (mode == AttentionMode::linear_only) {
          double norm = 0;
          for (int64_t e = 0; e < dv; ++e)
            norm += ya[b][h][i][e] * ya[b][h][i][e];
          if (norm == 0) out.linear_output_share[b][h][i] = 0.0;
        }
      }
    }
  }
  return out;
}

}  // namespace hl::kernels::test
