// The chunked backend against the reference: outputs and every gradient (q, k, v, window
// factor logits, feature-map weights), float64 (< 1e-10) and float32 (< 1e-5 against the
// float64 reference), at awkward lengths, with GQA and batches.
#include <gtest/gtest.h>

#include <string>

#include "attention_test_support.hpp"

namespace hl::kernels::test {
namespace {

const char* const kParameterNames[] = {"q", "k", "v", "omega", "W_q", "W_k"};

struct LengthCase {
  const char* name;
  int64_t length, window, chunk;
};

// N not a multiple of the chunk, N < w, N = w, N = w + 1, w > chunk, w = 1, chunk = 1.
const LengthCase kLengthCases[] = {
    {"ragged", 23, 5, 4},          {"shorter_than_window", 6, 9, 4}, {"equal_window", 9, 9, 4},
    {"window_plus_one", 10, 9, 4}, {"wide_window", 30, 11, 4},       {"window_one", 13, 1, 5},
    {"chunk_one", 11, 3, 1},
};

struct ModeCase {
  AttentionMode mode;
  bool overlap, affine, drop;
};

const ModeCase kModeCases[] = {
    {AttentionMode::hybrid, false, false, false},
    {AttentionMode::hybrid, true, false, false},
    {AttentionMode::hybrid, false, true, false},
    {AttentionMode::hybrid, false, true, true},
    {AttentionMode::hybrid, true, false, true},
    {AttentionMode::linear_only, false, false, false},
    {AttentionMode::window_only, false, false, false},
    {AttentionMode::window_only, false, false, true},
};

std::string describe(const ModeCase& m) {
  return std::string(to_string(m.mode)) + (m.overlap ? " overlap" : "") +
         (m.affine ? " affine" : "") + (m.drop ? " drop" : "");
}

void expect_match(const RandomProblem& problem, AttentionOptions options, torch::ScalarType dtype,
                  double tolerance) {
  options.backend = Backend::reference;
  options.want_stats = true;
  const auto expected = run_with_grads(problem, torch::kDouble, options);
  options.backend = Backend::chunked;
  const auto actual = run_with_grads(problem, dtype, options);
  ASSERT_EQ(actual.output.backend, Backend::chunked);
  ASSERT_EQ(actual.output.y.scalar_type(), dtype);
  EXPECT_LT(relative_error(actual.output.y, expected.output.y), tolerance) << "output y";
  EXPECT_LT(relative_error(actual.output.linear_mass, expected.output.linear_mass), tolerance)
      << "linear_mass";
  EXPECT_LT(relative_error(actual.output.linear_output_share, expected.output.linear_output_share),
            tolerance)
      << "linear_output_share";
  ASSERT_EQ(actual.grads.size(), expected.grads.size());
  for (size_t i = 0; i < expected.grads.size(); ++i) {
    ASSERT_EQ(actual.grads[i].defined(), expected.grads[i].defined()) << kParameterNames[i];
    if (!expected.grads[i].defined()) continue;
    EXPECT_TRUE(torch::isfinite(actual.grads[i]).all().item<bool>()) << kParameterNames[i];
    // Where no row has linear keys (N <= w without overlap) g cancels and the gradient of
    // omega is 0 up to rounding: a relative error would compare noise with noise.
    if (expected.grads[i].norm().item<double>() < 1e-12) {
      EXPECT_LT(actual.grads[i].abs().max().item<double>(), tolerance)
          << "gradient of " << kParameterNames[i] << " (zero in exact arithmetic)";
      continue;
    }
    EXPECT_LT(relative_error(actual.grads[i], expected.grads[i]), tolerance)
        << "gradient of " << kParameterNames[i];
  }
}

class ChunkedVsReference : public ::testing::TestWithParam<LengthCase> {};

TEST_P(ChunkedVsReference, ValuesAndGradientsMatchInFloat64AndFloat32) {
  const LengthCase& lengths = GetParam();
  Shape shape;
  shape.batch = 2;
  shape.heads = 4;
  shape.kv_heads = 2;
  shape.length = lengths.length;
  shape.head_dim = 5;
  shape.value_dim = 3;
  shape.feature_dim = 4;
  for (const uint64_t seed : {10u, 20u}) {
    RandomProblem problem(shape, seed + static_cast<uint64_t>(lengths.length));
    // Drop the window of some (sequence, head) pairs, never all of them.
    problem.drop = torch::tensor({{1, 0, 0, 1}, {0, 1, 0, 0}}, torch::kBool);
    for (const auto& mode_case : kModeCases) {
      SCOPED_TRACE(describe(mode_case) + ", seed " + std::to_string(seed));
      RandomProblem this_problem = problem;
      if (!mode_case.drop) this_problem.drop = torch::Tensor();
      AttentionOptions options;
      options.mode = mode_case.mode;
      options.overlap = mode_case.overlap;
      options.affine_factors = mode_case.affine;
      options.window = lengths.window;
      options.chunk = lengths.chunk;
      {
        SCOPED_TRACE("float64");
        expect_match(this_problem, options, torch::kDouble, 1e-10);
      }
      {
        SCOPED_TRACE("float32");
        expect_match(this_problem, options, torch::kFloat, 1e-5);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Lengths, ChunkedVsReference, ::testing::ValuesIn(kLengthCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ChunkedAttention, SoftmaxAndSinksMatchTheReferenceWithGradients) {
  Shape shape;
  shape.batch = 2;
  shape.heads = 4;
  shape.kv_heads = 1;  // multi-query
  shape.length = 300;  // more than one block of the blocked softmax
  const RandomProblem problem(shape, 5);
  for (const auto mode : {AttentionMode::softmax, AttentionMode::sinks_only}) {
    SCOPED_TRACE(std::string(to_string(mode)));
    AttentionOptions options;
    options.mode = mode;
    options.sinks = 4;
    expect_match(problem, options, torch::kDouble, 1e-10);
  }
}

TEST(ChunkedAttention, ModeNoneGivesZerosWithoutAGraph) {
  Shape shape;
  const RandomProblem problem(shape, 3);
  auto leaves = problem.build(torch::kDouble);
  AttentionOptions options;
  options.mode = AttentionMode::none;
  options.backend = Backend::chunked;
  const auto out = attention(leaves.inputs, options);
  EXPECT_EQ(out.y.sizes(), (std::vector<int64_t>{1, 2, 7, 3}));
  EXPECT_EQ(out.y.abs().max().item<double>(), 0.0);
  EXPECT_FALSE(out.y.requires_grad());
}

TEST(ChunkedAttention, LongSequenceMatchesTheReferenceInFloat32) {
  // Many blocks, so the prefix state sums many key blocks.
  Shape shape;
  shape.heads = 2;
  shape.kv_heads = 2;
  shape.length = 1000;
  shape.head_dim = 16;
  shape.value_dim = 16;
  shape.feature_dim = 8;
  const RandomProblem problem(shape, 99);
  AttentionOptions options;
  options.window = 32;
  options.chunk = 16;
  expect_match(problem, options, torch::kFloat, 1e-5);
}

}  // namespace
}  // namespace hl::kernels::test
