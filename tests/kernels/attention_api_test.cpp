// The API boundary: names of modes and backends, dispatch, and bad input raising
// std::invalid_argument with a message that names the problem.
#include <gtest/gtest.h>

#include <functional>
#include <stdexcept>
#include <string>

#include "attention_test_support.hpp"

namespace hl::kernels::test {
namespace {

void expect_invalid(const std::function<void()>& call, const std::string& fragment) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected one mentioning '" << fragment << "'";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos)
        << "message: " << error.what();
  }
}

struct ApiFixture : ::testing::Test {
  ApiFixture() : problem(make_shape(), 77) {}
  static Shape make_shape() {
    Shape shape;
    shape.heads = 4;
    shape.kv_heads = 2;
    shape.length = 6;
    return shape;
  }
  AttentionInputs inputs() const { return problem.build(torch::kDouble).inputs; }
  RandomProblem problem;
};

TEST(AttentionNames, RoundTripAndRejectUnknownNames) {
  for (const auto mode :
       {AttentionMode::softmax, AttentionMode::hybrid, AttentionMode::linear_only,
        AttentionMode::window_only, AttentionMode::sinks_only, AttentionMode::none}) {
    EXPECT_EQ(parse_attention_mode(to_string(mode)), mode);
  }
  EXPECT_EQ(to_string(AttentionMode::window_only), "window_only");
  EXPECT_FALSE(parse_attention_mode("Hybrid").has_value());
  EXPECT_FALSE(parse_attention_mode("linear").has_value());
  for (const auto backend :
       {Backend::automatic, Backend::reference, Backend::chunked, Backend::cuda}) {
    EXPECT_EQ(parse_backend(to_string(backend)), backend);
  }
  EXPECT_FALSE(parse_backend("gpu").has_value());
}

TEST_F(ApiFixture, AutomaticDispatchPicksByLengthAndWeights) {
  AttentionOptions options;
  EXPECT_EQ(attention(inputs(), options).backend, Backend::reference);
  Shape shape = make_shape();
  shape.length = 300;
  const RandomProblem long_problem(shape, 1);
  EXPECT_EQ(attention(long_problem.build(torch::kFloat).inputs, options).backend, Backend::chunked);
  options.want_weights = true;
  EXPECT_EQ(attention(long_problem.build(torch::kFloat).inputs, options).backend,
            Backend::reference);
  options.want_weights = false;
  options.backend = Backend::reference;
  EXPECT_EQ(attention(long_problem.build(torch::kFloat).inputs, options).backend,
            Backend::reference);
}

TEST_F(ApiFixture, MismatchedShapesAreRejected) {
  AttentionOptions options;
  auto in = inputs();
  in.k = in.k.narrow(2, 0, 5);
  expect_invalid([&] { attention(in, options); }, "sequence lengths differ");
  in = inputs();
  in.v = torch::randn({1, 4, 6, 3}, torch::kDouble);
  expect_invalid([&] { attention(in, options); }, "k has 2 heads but v has 4");
  in = inputs();
  in.q = torch::randn({1, 4, 6, 5}, torch::kDouble);
  expect_invalid([&] { attention(in, options); }, "q has head dim 5 but k has 4");
  in = inputs();
  in.q = torch::randn({1, 3, 6, 4}, torch::kDouble);
  expect_invalid([&] { attention(in, options); }, "multiple of kv heads");
  in = inputs();
  in.q = in.q[0];
  expect_invalid([&] { attention(in, options); }, "q must be [B, H, N, dim], got [4, 6, 4]");
  in = inputs();
  in.k = in.k.to(torch::kFloat);
  expect_invalid([&] { attention(in, options); }, "one dtype");
  in = inputs();
  in.v = torch::Tensor();
  expect_invalid([&] { attention(in, options); }, "v is missing");
}

TEST_F(ApiFixture, FeatureMismatchesAreRejected) {
  AttentionOptions options;
  auto in = inputs();
  in.phi_k = torch::rand({1, 4, 6, 96}, torch::kDouble);
  in.phi_q = torch::rand({1, 4, 6, 128}, torch::kDouble);
  expect_invalid([&] { attention(in, options); }, "phi_k has 96 features but phi_q has 128");
  in = inputs();
  in.phi_q = torch::Tensor();
  expect_invalid([&] { attention(in, options); }, "phi_q is missing");
  in = inputs();
  in.phi_k = in.phi_k.narrow(1, 0, 2);  // per kv head instead of per query head
  expect_invalid([&] { attention(in, options); }, "phi_k must be [B, Hq, N, F]");
  in = inputs();
  in.window_factor_logits = torch::zeros({2}, torch::kDouble);
  expect_invalid([&] { attention(in, options); }, "window_factor_logits must be [Hq] = [4]");
  in = inputs();
  in.window_factor_logits = torch::zeros({4}, torch::kHalf);
  expect_invalid([&] { attention(in, options); }, "must have q's dtype or be float32");
}

// Mixed precision keeps the window factors in fp32 next to low-precision activations: the
// result is the one with the factors given in the activations' dtype.
TEST_F(ApiFixture, Float32WindowFactorsWithLowerPrecisionInputs) {
  AttentionOptions options;
  auto in = inputs();
  in.window_factor_logits = torch::randn({4}, torch::kFloat);
  for (auto* t : {&in.q, &in.k, &in.v, &in.phi_q, &in.phi_k})
    *t = t->to(torch::kBFloat16);
  const auto mixed = in;
  in.window_factor_logits = in.window_factor_logits.to(torch::kBFloat16);
  const torch::Tensor want = attention(in, options).y;
  const torch::Tensor got = attention(mixed, options).y;
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(got, want));
}

TEST_F(ApiFixture, BadOptionsAreRejected) {
  AttentionOptions options;
  options.window = 0;
  expect_invalid([&] { attention(inputs(), options); }, "window must be >= 1, got 0");
  options = {};
  options.chunk = 0;
  expect_invalid([&] { attention(inputs(), options); }, "chunk must be >= 1");
  options = {};
  options.mode = static_cast<AttentionMode>(42);
  expect_invalid([&] { attention(inputs(), options); }, "unknown attention mode (value 42)");
  options = {};
  options.backend = static_cast<Backend>(9);
  expect_invalid([&] { attention(inputs(), options); }, "unknown backend");
  options = {};
  options.scale = -1.0;
  expect_invalid([&] { attention(inputs(), options); }, "scale must be positive");
  options = {};
  options.backend = Backend::chunked;
  options.want_weights = true;
  expect_invalid([&] { attention(inputs(), options); }, "want_weights needs the reference");
#ifndef HL_WITH_CUDA_KERNELS
  options = {};
  options.backend = Backend::cuda;
  expect_invalid([&] { attention(inputs(), options); }, "no CUDA kernels");
#endif
}

TEST_F(ApiFixture, BadWindowDropMasksAreRejected) {
  AttentionOptions options;
  auto in = inputs();
  in.window_drop = torch::ones({1, 2}, torch::kBool);
  expect_invalid([&] { attention(in, options); }, "window_drop must be [B, Hq] = [1, 4]");
  in.window_drop = torch::full({1, 4}, 2, torch::kLong);
  expect_invalid([&] { attention(in, options); }, "only 0 and 1");
  in.window_drop = torch::ones({1, 4}, torch::kBool);
  options.mode = AttentionMode::softmax;
  expect_invalid([&] { attention(in, options); }, "window_drop applies to");
}

TEST_F(ApiFixture, RecurrentMisuseIsRejected) {
  AttentionOptions options;
  options.window = 3;
  auto in = inputs();
  auto state = prefill(in, options).state;
  expect_invalid([&] { decode_step(in, state, options); }, "one token, got N = 6");
  AttentionInputs step = in;
  step.q = in.q.narrow(2, 0, 1);
  step.k = in.k.narrow(2, 0, 1);
  step.v = in.v.narrow(2, 0, 1);
  step.phi_q = in.phi_q.narrow(2, 0, 1);
  step.phi_k = in.phi_k.narrow(2, 0, 1);
  AttentionOptions other_window = options;
  other_window.window = 4;
  expect_invalid([&] { decode_step(step, state, other_window); }, "built for window 3");
  AttentionOptions softmax = options;
  softmax.mode = AttentionMode::softmax;
  expect_invalid([&] { prefill(in, softmax); }, "KV cache");
  AttentionInputs no_features = step;
  no_features.phi_q = no_features.phi_k = torch::Tensor();
  AttentionOptions window_only = options;
  window_only.mode = AttentionMode::window_only;
  expect_invalid([&] { decode_step(no_features, state, window_only); }, "phi_q and phi_k");
  EXPECT_EQ(state.position, 6);  // failed steps leave the state alone
}

// with_feature_maps applies the q map to q and the k map to k repeated to the query heads
// (GQA: 3 q heads on 1 kv head), in the maps' dtype with phi in q's; attention_with_feature_maps
// is attention() on those inputs.
TEST(AttentionApi, AttentionWithFeatureMapsAppliesThemAfterGqaRepetition) {
  constexpr int64_t kHeads = 3, kDim = 6;
  torch::manual_seed(8);
  FeatureMapOptions map;
  map.heads = kHeads;
  map.head_dim = kDim;
  map.feature_dim = 4;
  map.init = FeatureMapInit::kaiming_uniform;
  FeatureMap map_q(map), map_k(map);  // float32 weights, double activations
  AttentionInputs in;
  in.q = torch::randn({2, kHeads, 40, kDim}, torch::kDouble);
  in.k = torch::randn({2, 1, 40, kDim}, torch::kDouble);
  in.v = torch::randn({2, 1, 40, kDim}, torch::kDouble);
  in.window_factor_logits = torch::randn({kHeads}, torch::kDouble);
  const AttentionInputs mapped = with_feature_maps(in, *map_q, *map_k);
  ASSERT_EQ(mapped.phi_q.scalar_type(), torch::kDouble);
  const torch::Tensor k_rep = in.k.expand({2, kHeads, 40, kDim});
  EXPECT_TRUE(
      torch::allclose(mapped.phi_q, map_q->forward(in.q.to(torch::kFloat)).to(torch::kDouble)));
  EXPECT_TRUE(
      torch::allclose(mapped.phi_k, map_k->forward(k_rep.to(torch::kFloat)).to(torch::kDouble)));
  EXPECT_EQ(mapped.phi_k.size(1), kHeads);

  AttentionOptions options;
  options.mode = AttentionMode::hybrid;
  options.window = 8;
  const torch::Tensor want = attention(mapped, options).y;
  const torch::Tensor got = attention_with_feature_maps(in, *map_q, *map_k, options).y;
  EXPECT_TRUE(torch::allclose(got, want, 1e-12, 1e-12));
  EXPECT_THROW(attention_with_feature_maps(mapped, *map_q, *map_k, options), std::invalid_argument);
}

}  // namespace
}  // namespace hl::kernels::test
