// Decoding through a CUDA graph (DecodeGraph) against eager decoding of the same model and
// prompt: the same logits token after token, the caches left alike, and generate's tokens.
// Without a GPU (or without the CUDA kernels) the graph refuses and generate decodes eagerly.
#include "core/model/decode_graph.hpp"

#include <gtest/gtest.h>

#include "core/model/generate.hpp"
#include "kernels/attention_test_support.hpp"
#include "tiny_model.hpp"

namespace hl::model {
namespace {

using kernels::test::relative_error;

constexpr int64_t kVocab = 50, kPrompt = 12, kWindow = 8;

// Two hybrid layers of 4 query / 2 kv heads of 64 (GQA) with hedgehog maps of 2 x 16 features,
// shapes the fused decode kernel takes; window 8, so that the ring turns over every 8 tokens.
CausalLM make_model(torch::Device device) {
  io::ModelConfig config = testing::tiny_model_config(kVocab);
  config.head_dim = 64;
  config.hidden_size = 128;
  config.rms_norm_eps = 1e-5;
  CausalLM model(config);
  ConversionOptions conversion;
  conversion.window = kWindow;
  conversion.feature_dim = 16;
  conversion.sinks = 3;
  model->convert(conversion);
  torch::manual_seed(11);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters())
      p.copy_(torch::randn_like(p) * 0.2);
  }
  model->to(device, torch::kFloat);
  model->eval();
  return model;
}

torch::Tensor random_ids(int64_t length, uint64_t seed, torch::Device device) {
  torch::manual_seed(seed);
  return torch::randint(0, kVocab, {1, length}, torch::kInt64).to(device);
}

TEST(DecodeGraph, RefusesWhatItCannotCapture) {
  CausalLM model = make_model(torch::kCPU);
  DecodeCache cache;
  model->decode(random_ids(kPrompt, 1, torch::kCPU), cache);
  const std::string why = decode_graph_unsupported(model, cache);
  EXPECT_FALSE(why.empty());
  EXPECT_THROW(DecodeGraph(model, cache, {}, kPrompt + 4), std::invalid_argument);
  // generate decodes eagerly then, and says so.
  GenerateOptions options;
  options.max_new_tokens = 4;
  auto result = generate(model, {1, 2, 3, 4, 5}, options);
  ASSERT_TRUE(result.ok()) << result.error().message;
  EXPECT_EQ(result.value().tokens.size(), 4u);
  EXPECT_FALSE(result.value().cuda_graph);
}

TEST(DecodeGraph, MatchesEagerDecoding) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device gpu(torch::kCUDA);
  CausalLM model = make_model(gpu);
  const torch::Tensor prompt = random_ids(kPrompt, 2, gpu), tokens = random_ids(30, 3, gpu);
  DecodeCache eager, graphed;
  model->decode(prompt, eager);
  model->decode(prompt, graphed);
  const std::string why = decode_graph_unsupported(model, graphed);
  if (why == "built without the CUDA kernels") GTEST_SKIP() << why;
  ASSERT_EQ(why, "");
  const int64_t steps = tokens.size(1);
  DecodeGraph graph(model, graphed, {}, kPrompt + steps);
  EXPECT_EQ(graphed.position, kPrompt);  // the capture leaves the cache where it was
  // 30 tokens: the ring (8 keys) turns over almost four times.
  for (int64_t i = 0; i < steps; ++i) {
    const torch::Tensor id = tokens.narrow(1, i, 1);
    const torch::Tensor want = model->decode(id, eager);
    const torch::Tensor got = graph.step(id);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LT(relative_error(got, want), 1e-5) << "token " << i;
  }
  EXPECT_EQ(graphed.position, eager.position);
  for (size_t l = 0; l < graphed.layers.size(); ++l) {
    const kernels::RecurrentState &g = graphed.layers[l].recurrent, &e = eager.layers[l].recurrent;
    EXPECT_EQ(g.position, e.position);
    EXPECT_FALSE(g.position_on_device.defined());
    EXPECT_LT(relative_error(g.S, e.S), 1e-5) << "layer " << l;
    EXPECT_TRUE(torch::equal(g.key_ring, e.key_ring)) << "layer " << l;
  }
  // Past the positions it was captured for, the graph refuses; eager steps continue the cache.
  EXPECT_THROW(graph.step(tokens.narrow(1, 0, 1)), std::invalid_argument);
  EXPECT_THROW(graph.step(tokens), std::invalid_argument);  // [1, 30]: not one token
  const torch::Tensor id = tokens.narrow(1, 0, 1);
  EXPECT_LT(relative_error(model->decode(id, graphed), model->decode(id, eager)), 1e-5);
}

TEST(DecodeGraph, GenerateTakesTheGraph) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  CausalLM model = make_model(torch::Device(torch::kCUDA));
  const std::vector<int32_t> prompt = {5, 9, 2, 33, 17, 8, 41, 3, 3, 26};
  GenerateOptions options;
  options.max_new_tokens = 24;
  options.cuda_graph = false;
  auto eager = generate(model, prompt, options);
  options.cuda_graph = true;
  auto graphed = generate(model, prompt, options);
  ASSERT_TRUE(eager.ok() && graphed.ok());
  if (!graphed.value().cuda_graph) GTEST_SKIP() << "built without the CUDA kernels";
  EXPECT_EQ(graphed.value().tokens, eager.value().tokens);
}

}  // namespace
}  // namespace hl::model
