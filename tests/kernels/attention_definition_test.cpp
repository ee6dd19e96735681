// Every mode of both parallel backends against the plain-loop definition of DESIGN §1, on
// tiny random float64 problems (outputs, statistics and weights).
#include <gtest/gtest.h>

#include <string>
#include <tuple>

#include "attention_test_support.hpp"

namespace hl::kernels::test {
namespace {

struct ModeCase {
  AttentionMode mode;
  bool overlap;
  bool affine;
};

std::string case_name(const ModeCase& c) {
  return std::string(to_string(c.mode)) + (c.overlap ? "_overlap" : "") +
         (c.affine ? "_affine" : "");
}

class ModeDefinitionTest : public ::testing::TestWithParam<std::tuple<ModeCase, Backend>> {};

TEST_P(ModeDefinitionTest, MatchesPlainLoopDefinition) {
  const auto [mode_case, backend] = GetParam();
  Shape shape;
  shape.batch = 2;
  shape.heads = 4;
  shape.kv_heads = 2;  // GQA
  shape.length = 9;
  for (const uint64_t seed : {1u, 2u}) {
    const RandomProblem problem(shape, seed);
    auto leaves = problem.build(torch::kDouble);
    AttentionOptions options;
    options.mode = mode_case.mode;
    options.overlap = mode_case.overlap;
    options.affine_factors = mode_case.affine;
    options.window = 3;
    options.sinks = 2;
    options.chunk = 4;  // 9 is not a multiple
    options.backend = backend;
    options.want_stats = true;
    const auto out = attention(leaves.inputs, options);
    const auto expected = loop_attention(leaves.inputs, options);
    SCOPED_TRACE(case_name(mode_case) + " seed " + std::to_string(seed));
    EXPECT_EQ(out.backend, backend);
    ASSERT_EQ(out.y.sizes(), expected.y.sizes());
    EXPECT_LT(relative_error(out.y, expected.y), 1e-12);
    EXPECT_LT((out.linear_mass - expected.linear_mass).abs().max().item<double>(), 1e-12);
    EXPECT_LT((out.linear_output_share - expected.linear_output_share).abs().max().item<double>(),
              1e-12);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllModes, ModeDefinitionTest,
    ::testing::Combine(::testing::Values(ModeCase{AttentionMode::softmax, false, false},
                                         ModeCase{AttentionMode::hybrid, false, false},
                                         ModeCase{AttentionMode::hybrid, true, false},
                                         ModeCase{AttentionMode::hybrid, false, true},
                                         ModeCase{AttentionMode::hybrid, true, true},
                                         ModeCase{AttentionMode::linear_only, false, false},
                                         ModeCase{AttentionMode::window_only, false, false},
                                         ModeCase{AttentionMode::sinks_only, false, false},
                                         ModeCase{AttentionMode::none, false, false}),
                       ::testing::Values(Backend::reference, Backend::chunked)),
    [](const auto& info) {
      return case_name(std::get<0>(info.param)) + "_" +
             std::string(to_string(std::get<1>(info.param)));
    });

TEST(AttentionWeights, MatchTheDefinitionAndReproduceTheOutput) {
  Shape shape;
  shape.length = 8;
  const RandomProblem problem(shape, 7);
  for (const auto mode : {AttentionMode::softmax, AttentionMode::hybrid, AttentionMode::linear_only,
                          AttentionMode::window_only, AttentionMode::sinks_only}) {
    auto leaves = problem.build(torch::kDouble);
    AttentionOptions options;
    options.mode = mode;
    options.window = 3;
    options.sinks = 3;
    options.want_weights = true;  // automatic dispatch must pick the reference
    const auto out = attention(leaves.inputs, options);
    const auto expected = loop_attention(leaves.inputs, options);
    SCOPED_TRACE(std::string(to_string(mode)));
    EXPECT_EQ(out.backend, Backend::reference);
    ASSERT_TRUE(out.weights.defined());
    EXPECT_LT(relative_error(out.weights, expected.weights), 1e-12);
    EXPECT_LT(relative_error(torch::matmul(out.weights, repeat_heads(leaves.v, 1)), out.y), 1e-12);
    // Causal: nothing above the diagonal.
    EXPECT_EQ(torch::triu(out.weights, 1).abs().max().item<double>(), 0.0);
    // The weights carry gradients (the Hedgehog cross-entropy trains through them).
    EXPECT_TRUE(out.weights.requires_grad());
  }
}

TEST(AttentionStatistics, LinearMassIsZeroBeforeTheFirstLinearKeyAndPositiveAfter) {
  Shape shape;
  shape.length = 12;
  const RandomProblem problem(shape, 11);
  auto leaves = problem.build(torch::kDouble);
  AttentionOptions options;
  options.window = 4;
  options.want_stats = true;
  options.backend = Backend::chunked;
  options.chunk = 5;
  const auto out = attention(leaves.inputs, options);
  // Non-overlap: positions i < w have no linear keys.
  EXPECT_EQ(out.linear_mass.narrow(2, 0, 4).abs().max().item<double>(), 0.0);
  EXPECT_GT(out.linear_mass.narrow(2, 4, 8).min().item<double>(), 0.0);
  EXPECT_LT(out.linear_mass.max().item<double>(), 1.0);
  EXPECT_FALSE(out.linear_mass.requires_grad());
}

}  // namespace
}  // namespace hl::kernels::test
