// Recurrent form: prefill + decode_step reproduce the parallel form at every position, and
// the state does not grow with the context.
#include <gtest/gtest.h>

#include <string>

#include "attention_test_support.hpp"

namespace hl::kernels::test {
namespace {

struct ModeCase {
  AttentionMode mode;
  bool overlap, affine, drop;
};

std::string describe(const ModeCase& m) {
  return std::string(to_string(m.mode)) + (m.overlap ? " overlap" : "") +
         (m.affine ? " affine" : "") + (m.drop ? " drop" : "");
}

AttentionInputs slice(const AttentionInputs& in, int64_t start, int64_t length) {
  AttentionInputs out = in;
  out.q = in.q.narrow(2, start, length);
  out.k = in.k.narrow(2, start, length);
  out.v = in.v.narrow(2, start, length);
  if (in.phi_q.defined()) out.phi_q = in.phi_q.narrow(2, start, length);
  if (in.phi_k.defined()) out.phi_k = in.phi_k.narrow(2, start, length);
  return out;
}

class RecurrentVsParallel : public ::testing::TestWithParam<ModeCase> {};

TEST_P(RecurrentVsParallel, EveryPositionMatchesForEveryPromptLength) {
  const ModeCase mode_case = GetParam();
  SCOPED_TRACE(describe(mode_case));
  Shape shape;
  shape.batch = 2;
  shape.heads = 4;
  shape.kv_heads = 2;
  shape.length = 20;
  RandomProblem problem(shape, 31);
  if (mode_case.drop) problem.drop = torch::tensor({{1, 0, 0, 1}, {0, 0, 1, 0}}, torch::kBool);
  auto leaves = problem.build(torch::kDouble);
  AttentionInputs inputs = leaves.inputs;
  if (mode_case.mode == AttentionMode::sinks_only || mode_case.mode == AttentionMode::none) {
    // These modes need no feature maps; the state then has no linear part.
    inputs.phi_q = inputs.phi_k = torch::Tensor();
  }
  AttentionOptions options;
  options.mode = mode_case.mode;
  options.overlap = mode_case.overlap;
  options.affine_factors = mode_case.affine;
  options.window = 5;
  options.sinks = 3;
  options.backend = Backend::reference;
  const auto parallel = attention(inputs, options).y;

  // prompt length 0 = start from an empty state.
  for (const int64_t prompt : {0, 1, 4, 5, 6, 13}) {
    SCOPED_TRACE("prompt " + std::to_string(prompt));
    RecurrentState state;
    if (prompt > 0) {
      auto result = prefill(slice(inputs, 0, prompt), options);
      EXPECT_LT(relative_error(result.output.y, parallel.narrow(2, 0, prompt)), 1e-12);
      state = std::move(result.state);
      EXPECT_EQ(state.position, prompt);
    }
    const int64_t bytes_after_prompt = prompt > 0 ? state.bytes() : -1;
    for (int64_t t = prompt; t < shape.length; ++t) {
      const auto y_t = decode_step(slice(inputs, t, 1), state, options);
      const auto expected = parallel.narrow(2, t, 1);
      if (mode_case.mode == AttentionMode::none) {
        EXPECT_EQ(y_t.abs().max().item<double>(), 0.0);
      } else {
        EXPECT_LT(relative_error(y_t, expected), 1e-12) << "position " << t;
      }
      if (bytes_after_prompt >= 0) {
        EXPECT_EQ(state.bytes(), bytes_after_prompt);
      }
    }
    EXPECT_EQ(state.position, shape.length);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, RecurrentVsParallel,
    ::testing::Values(ModeCase{AttentionMode::hybrid, false, false, false},
                      ModeCase{AttentionMode::hybrid, true, false, false},
                      ModeCase{AttentionMode::hybrid, false, true, false},
                      ModeCase{AttentionMode::hybrid, false, false, true},
                      ModeCase{AttentionMode::linear_only, false, false, false},
                      ModeCase{AttentionMode::window_only, false, false, false},
                      ModeCase{AttentionMode::window_only, false, false, true},
                      ModeCase{AttentionMode::sinks_only, false, false, false},
                      ModeCase{AttentionMode::none, false, false, false}),
    [](const auto& info) {
      std::string name = describe(info.param);
      for (auto& c : name)
        c = c == ' ' ? '_' : c;
      return name;
    });

TEST(RecurrentState, SizeDoesNotDependOnTheContextLength) {
  Shape shape;
  shape.length = 40;
  const RandomProblem problem(shape, 8);
  auto leaves = problem.build(torch::kDouble);
  AttentionOptions options;
  options.window = 4;
  const auto short_state = prefill(slice(leaves.inputs, 0, 6), options).state;
  const auto long_state = prefill(leaves.inputs, options).state;
  EXPECT_EQ(short_state.bytes(), long_state.bytes());
  EXPECT_GT(long_state.bytes(), 0);
  EXPECT_EQ(long_state.key_ring.size(2), 4);
  EXPECT_FALSE(long_state.S.requires_grad());
}

TEST(RecurrentState, Float32DecodeTracksTheFloat64ParallelForm) {
  Shape shape;
  shape.length = 64;
  shape.head_dim = 8;
  shape.value_dim = 8;
  const RandomProblem problem(shape, 12);
  AttentionOptions options;
  options.window = 8;
  options.backend = Backend::reference;
  const auto parallel = attention(problem.build(torch::kDouble).inputs, options).y;
  auto inputs = problem.build(torch::kFloat).inputs;
  RecurrentState state;
  for (int64_t t = 0; t < shape.length; ++t) {
    const auto y_t = decode_step(slice(inputs, t, 1), state, options);
    EXPECT_LT(relative_error(y_t, parallel.narrow(2, t, 1)), 1e-5) << "position " << t;
  }
}

}  // namespace
}  // namespace hl::kernels::test
