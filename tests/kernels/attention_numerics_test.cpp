// Numerics (large scores, the window-only max of DESIGN §1) and the SSD drop mask.
#include <gtest/gtest.h>

#include <string>

#include "attention_test_support.hpp"

namespace hl::kernels::test {
namespace {

TEST(AttentionNumerics, LargeScoresStayFiniteAndMatchTheReference) {
  Shape shape;
  shape.batch = 2;
  shape.heads = 2;
  shape.kv_heads = 1;
  shape.length = 37;
  shape.head_dim = 8;
  const RandomProblem problem(shape, 21);
  for (const auto mode : {AttentionMode::hybrid, AttentionMode::window_only, AttentionMode::softmax,
                          AttentionMode::sinks_only}) {
    SCOPED_TRACE(std::string(to_string(mode)));
    AttentionOptions options;
    options.mode = mode;
    options.window = 6;
    options.chunk = 8;
    options.scale = 300.0;  // scores in the thousands: exp(s) overflows even in float64
    {
      auto leaves = problem.build(torch::kDouble);
      const auto raw_scores = torch::matmul(leaves.q, repeat_heads(leaves.k, 2).transpose(-1, -2));
      ASSERT_GT((raw_scores * 300.0).abs().max().item<double>(), 1000.0);
      ASSERT_FALSE(torch::isfinite(torch::exp(raw_scores * 300.0)).all().item<bool>());
    }
    options.backend = Backend::reference;
    const auto reference = run_with_grads(problem, torch::kDouble, options);
    const auto expected = loop_attention(problem.build(torch::kDouble).inputs, options);
    EXPECT_LT(relative_error(reference.output.y, expected.y), 1e-12);
    options.backend = Backend::chunked;
    const auto chunked = run_with_grads(problem, torch::kDouble, options);
    EXPECT_LT(relative_error(chunked.output.y, reference.output.y), 1e-10);
    for (size_t i = 0; i < reference.grads.size(); ++i) {
      if (!reference.grads[i].defined()) continue;
      EXPECT_TRUE(torch::isfinite(chunked.grads[i]).all().item<bool>()) << i;
      EXPECT_LT(relative_error(chunked.grads[i], reference.grads[i]), 1e-10) << i;
    }
    // Float32: finite everywhere. Scores of ~1e3 carry absolute rounding of ~1e-4 in
    // float32, which exp turns into relative errors of that size, so compare at 1e-3.
    const auto single = run_with_grads(problem, torch::kFloat, options);
    EXPECT_TRUE(torch::isfinite(single.output.y).all().item<bool>());
    for (const auto& g : single.grads) {
      if (g.defined()) {
        EXPECT_TRUE(torch::isfinite(g).all().item<bool>());
      }
    }
    EXPECT_LT(relative_error(single.output.y, reference.output.y), 1e-3);
  }
}

// One out-of-window key gets a score far above the window's. With the max over the window
// (DESIGN §1) the window terms keep their size; a max over all keys would shrink them by
// exp(-60) and the output would collapse onto the linear part.
TEST(AttentionNumerics, MaxRunsOverTheWindowKeysOnly) {
  Shape shape;
  shape.heads = 1;
  shape.kv_heads = 1;
  shape.length = 10;
  shape.head_dim = 4;
  RandomProblem problem(shape, 4);
  const int64_t window = 3, last = shape.length - 1;
  // Key 0 is aligned with query `last` and scaled so that s_{last,0} ~ 60 + window scores.
  const auto q_last = problem.q[0][0][last];
  problem.k[0][0][0] = q_last * (120.0 / q_last.dot(q_last).item<double>());
  for (const auto backend : {Backend::reference, Backend::chunked}) {
    SCOPED_TRACE(std::string(to_string(backend)));
    auto leaves = problem.build(torch::kDouble);
    AttentionOptions options;
    options.window = window;
    options.chunk = 4;
    options.backend = backend;
    const auto y = attention(leaves.inputs, options).y;
    const auto expected = loop_attention(leaves.inputs, options).y;
    EXPECT_LT(relative_error(y, expected), 1e-12);

    // The same formula with the max over all causal keys.
    torch::NoGradGuard no_grad;
    const double scale = 0.5;  // 1 / sqrt(4)
    const auto scores = torch::matmul(leaves.q, leaves.k.transpose(-1, -2))[0][0][last] * scale;
    ASSERT_GT(
        scores[0].item<double>() - scores.narrow(0, last - window + 1, window).max().item<double>(),
        40.0);
    const double g = torch::sigmoid(leaves.omega[0]).item<double>();
    const auto all_max = scores.max();
    const auto a = g * torch::exp(scores.narrow(0, last - window + 1, window) - all_max);
    const auto b = torch::matmul(leaves.inputs.phi_k[0][0].narrow(0, 0, last - window + 1),
                                 leaves.inputs.phi_q[0][0][last]);
    const auto values = leaves.v[0][0];
    const auto numerator = torch::matmul(a, values.narrow(0, last - window + 1, window)) +
                           torch::matmul(b, values.narrow(0, 0, last - window + 1));
    const auto all_keys_max_y = numerator / (a.sum() + b.sum());
    EXPECT_GT(relative_error(y[0][0][last], all_keys_max_y), 0.05)
        << "the output does not depend on which max is used; the test lost its power";
  }
}

TEST(SsdWindowDrop, DroppedRowsAreExactlyLinearOnlyAndKeptRowsHybrid) {
  Shape shape;
  shape.batch = 3;
  shape.heads = 4;
  shape.kv_heads = 2;
  shape.length = 29;
  for (const uint64_t seed : {40u, 41u}) {
    RandomProblem problem(shape, seed);
    const auto drop = torch::tensor({{1, 0, 1, 0}, {0, 0, 0, 0}, {1, 1, 1, 1}}, torch::kInt64);
    for (const auto backend : {Backend::reference, Backend::chunked}) {
      for (const bool overlap : {false, true}) {
        SCOPED_TRACE(std::string(to_string(backend)) + (overlap ? " overlap" : "") + " seed " +
                     std::to_string(seed));
        AttentionOptions options;
        options.window = 5;
        options.chunk = 8;
        options.overlap = overlap;
        options.affine_factors = true;
        options.backend = backend;
        options.want_stats = true;

        const auto hybrid = attention(problem.build(torch::kDouble).inputs, options);
        AttentionOptions linear_options = options;
        linear_options.mode = AttentionMode::linear_only;
        const auto linear = attention(problem.build(torch::kDouble).inputs, linear_options);
        RandomProblem dropped_problem = problem;
        dropped_problem.drop = drop;
        const auto dropped = run_with_grads(dropped_problem, torch::kDouble, options);

        for (int64_t b = 0; b < shape.batch; ++b) {
          for (int64_t h = 0; h < shape.heads; ++h) {
            const auto row = dropped.output.y[b][h];
            if (drop[b][h].item<int64_t>() == 1) {
              EXPECT_TRUE(torch::equal(row, linear.y[b][h])) << "b " << b << " h " << h;
              EXPECT_TRUE(torch::equal(dropped.output.linear_mass[b][h], linear.linear_mass[b][h]));
            } else {
              EXPECT_LT(relative_error(row, hybrid.y[b][h]), 1e-14) << "b " << b << " h " << h;
            }
          }
        }
        // omega only reaches kept rows: heads 1 and 3 are kept in sequences 0 and 1.
        const auto omega_grad = dropped.grads[3];
        ASSERT_TRUE(omega_grad.defined());
        EXPECT_GT(omega_grad.abs().min().item<double>(), 0.0);
      }
    }
  }
}

TEST(SsdWindowDrop, AWholeDroppedLayerLeavesNoGradientOnTheWindowFactors) {
  Shape shape;
  shape.batch = 2;
  shape.length = 12;
  RandomProblem problem(shape, 50);
  problem.drop = torch::ones({2, 2}, torch::kBool);
  AttentionOptions options;
  options.window = 4;
  options.backend = Backend::chunked;
  options.chunk = 5;
  const auto result = run_with_grads(problem, torch::kDouble, options);
  ASSERT_TRUE(result.grads[3].defined());
  EXPECT_EQ(result.grads[3].abs().max().item<double>(), 0.0);
  AttentionOptions linear_options = options;
  linear_options.mode = AttentionMode::linear_only;
  problem.drop = torch::Tensor();
  const auto linear = attention(problem.build(torch::kDouble).inputs, linear_options);
  EXPECT_TRUE(torch::equal(result.output.y, linear.y));
}

}  // namespace
}  // namespace hl::kernels::test
