// Incremental decoding and generation: the recurrent / KV-cache form against the parallel
// forward (float64, random weights), constant-size recurrent state, mode none, sampling.
#include "core/model/generate.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "tiny_model.hpp"

namespace hl::model {
namespace {

using kernels::AttentionMode;

io::ModelConfig tiny_config() {
  io::ModelConfig config = testing::tiny_model_config(50);  // GQA: decode must repeat k/v
  config.rms_norm_eps = 1e-5;
  return config;
}

// kind: "softmax", "hybrid", "linear" or "mixed" (layer 0 softmax, layer 1 hybrid).
CausalLM make_model(const std::string& kind, uint64_t seed, int64_t window = 4) {
  CausalLM model(tiny_config());
  if (kind != "softmax") {
    ConversionOptions conversion;
    conversion.kind = kind == "linear" ? AttentionMode::linear_only : AttentionMode::hybrid;
    conversion.window = window;
    conversion.feature_dim = 8;
    conversion.sinks = 3;
    if (kind == "mixed") conversion.softmax_layers = {0};
    model->convert(conversion);
  }
  model->to(torch::kFloat64);
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters())
    p.copy_(torch::randn_like(p) * 0.4);
  model->eval();
  return model;
}

std::vector<int32_t> random_prompt(int64_t length, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor ids = torch::randint(0, 50, {length}, torch::kInt64);
  std::vector<int32_t> prompt;
  for (int64_t i = 0; i < length; ++i)
    prompt.push_back(static_cast<int32_t>(ids[i].item<int64_t>()));
  return prompt;
}

torch::Tensor as_ids(const std::vector<int32_t>& tokens) {
  std::vector<int64_t> wide(tokens.begin(), tokens.end());
  return torch::tensor(wide, torch::kInt64).view({1, -1});
}

class GreedyDecoding : public ::testing::TestWithParam<std::string> {};

// Greedy generation token by token equals the argmax of one parallel forward over the
// prompt plus the generated tokens, at every generated position; the logits of the two
// forms agree to float64 rounding. Prompt 6 > window 4, so keys leave the window during
// both prefill and decode.
TEST_P(GreedyDecoding, EqualsArgmaxOfParallelForward) {
  const std::string kind = GetParam();
  for (uint64_t seed : {3u, 4u}) {
    CausalLM model = make_model(kind, seed);
    const auto prompt = random_prompt(6, seed + 10);
    GenerateOptions options;
    options.max_new_tokens = 24;
    auto generated = generate(model, prompt, options);
    ASSERT_TRUE(generated.ok()) << generated.error().to_string();
    ASSERT_EQ(generated->tokens.size(), 24u);

    std::vector<int32_t> all = prompt;
    all.insert(all.end(), generated->tokens.begin(), generated->tokens.end());
    torch::NoGradGuard no_grad;
    torch::Tensor parallel = model->forward(as_ids(all));  // [1, N, V]
    for (size_t i = 0; i < generated->tokens.size(); ++i) {
      const int64_t position = static_cast<int64_t>(prompt.size() + i) - 1;
      EXPECT_EQ(parallel[0][position].argmax().item<int64_t>(), generated->tokens[i])
          << kind << " seed " << seed << " token " << i;
    }

    // The same sequence through decode: prefill of the prompt, then one token at a time.
    DecodeCache cache;
    std::vector<torch::Tensor> pieces{model->decode(as_ids(prompt), cache)};
    for (size_t i = prompt.size(); i < all.size(); ++i)
      pieces.push_back(model->decode(as_ids({all[i]}), cache));
    torch::Tensor incremental = torch::cat(pieces, 1);
    EXPECT_LT((incremental - parallel).abs().max().item<double>(), 1e-9) << kind;
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, GreedyDecoding,
                         ::testing::Values("softmax", "hybrid", "linear", "mixed"));

// A base model with a sliding window (Mistral) keeps attending to its last w keys only when
// it decodes from the KV cache, as its parallel forward does.
TEST(Decoding, SlidingWindowBaseMatchesTheParallelForward) {
  io::ModelConfig config = tiny_config();
  config.model_type = "mistral";
  config.sliding_window = 5;
  CausalLM model(config);
  model->to(torch::kFloat64);
  torch::manual_seed(21);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters())
    p.copy_(torch::randn_like(p) * 0.4);
  const auto tokens = random_prompt(24, 22);
  torch::Tensor parallel = model->forward(as_ids(tokens));
  DecodeCache cache;
  std::vector<torch::Tensor> pieces{
      model->decode(as_ids({tokens.begin(), tokens.begin() + 7}), cache)};
  pieces.push_back(model->decode(as_ids({tokens[7], tokens[8], tokens[9]}), cache));
  for (size_t i = 10; i < tokens.size(); ++i)
    pieces.push_back(model->decode(as_ids({tokens[i]}), cache));
  EXPECT_LT((torch::cat(pieces, 1) - parallel).abs().max().item<double>(), 1e-9);
}

// Every diagnostic mode and the per-layer ablation decode as the parallel forward does.
TEST(Decoding, DiagnosticModesAndAblationMatchTheParallelForward) {
  CausalLM model = make_model("hybrid", 7);
  const auto tokens = random_prompt(20, 8);
  std::vector<ForwardOptions> cases;
  for (AttentionMode mode :
       {AttentionMode::hybrid, AttentionMode::window_only, AttentionMode::linear_only,
        AttentionMode::sinks_only, AttentionMode::none}) {
    ForwardOptions options;
    options.mode = mode;
    cases.push_back(options);
  }
  ForwardOptions ablated;
  ablated.ablate_layer = 1;
  cases.push_back(ablated);
  torch::NoGradGuard no_grad;
  for (const auto& options : cases) {
    torch::Tensor parallel = model->forward(as_ids(tokens), options);
    DecodeCache cache;
    std::vector<torch::Tensor> pieces{
        model->decode(as_ids({tokens.begin(), tokens.begin() + 5}), cache, options)};
    // Two tokens at once after the prefill, then single tokens.
    pieces.push_back(model->decode(as_ids({tokens[5], tokens[6]}), cache, options));
    for (size_t i = 7; i < tokens.size(); ++i)
      pieces.push_back(model->decode(as_ids({tokens[i]}), cache, options));
    const std::string name =
        options.mode ? std::string(kernels::to_string(*options.mode)) : "ablate layer 1";
    EXPECT_LT((torch::cat(pieces, 1) - parallel).abs().max().item<double>(), 1e-9) << name;
  }
}

// The recurrent state of hybrid / linear layers is allocated once (window, features) and
// never grows; the KV cache of softmax layers grows with the context.
TEST(Decoding, RecurrentStateDoesNotGrowWithLength) {
  for (const std::string kind : {"hybrid", "linear"}) {
    CausalLM model = make_model(kind, 11);
    DecodeCache cache;
    torch::NoGradGuard no_grad;
    (void)model->decode(as_ids(random_prompt(3, 12)), cache);
    std::map<int64_t, int64_t> bytes;
    for (int64_t t = 3; t < 300; ++t) {
      (void)model->decode(as_ids({static_cast<int32_t>(t % 50)}), cache);
      if (t == 10 || t == 100 || t == 299) bytes[t] = cache.bytes();
    }
    EXPECT_GT(bytes[10], 0) << kind;
    EXPECT_EQ(bytes[10], bytes[100]) << kind;
    EXPECT_EQ(bytes[10], bytes[299]) << kind;
    EXPECT_EQ(cache.kv_bytes(), 0) << kind;
    EXPECT_EQ(cache.position, 300);
  }
  CausalLM softmax = make_model("softmax", 11);
  DecodeCache cache;
  torch::NoGradGuard no_grad;
  (void)softmax->decode(as_ids(random_prompt(3, 12)), cache);
  const int64_t early = cache.bytes();
  for (int64_t t = 3; t < 300; ++t)
    (void)softmax->decode(as_ids({1}), cache);
  EXPECT_GT(cache.bytes(), 16 * early);  // 300 positions against 16 allocated at first
  EXPECT_EQ(cache.recurrent_bytes(), 0);
}

// Mode none (DESIGN §1: attention output 0): every converted layer adds o_proj(0) = 0, so
// each position's logits are those of the MLP-only network applied to its own token,
// whatever came before it.
TEST(Decoding, ModeNoneIsTheMlpOnlyNetwork) {
  CausalLM model = make_model("hybrid", 13);
  const auto tokens = random_prompt(12, 14);
  ForwardOptions none;
  none.mode = AttentionMode::none;
  torch::NoGradGuard no_grad;
  torch::Tensor logits = model->forward(as_ids(tokens), none);
  torch::Tensor h = model->model->embed_tokens->forward(as_ids(tokens));
  for (int64_t l = 0; l < model->num_layers(); ++l) {
    auto layer = model->model->layer(l);
    h = h + layer->mlp->forward(layer->post_attention_layernorm->forward(h));
  }
  torch::Tensor expected = model->logits(model->model->norm->forward(h));
  EXPECT_LT((logits - expected).abs().max().item<double>(), 1e-12);
  // A different history leaves the last position's logits unchanged.
  auto other = random_prompt(12, 15);
  other.back() = tokens.back();
  torch::Tensor shifted = model->forward(as_ids(other), none);
  EXPECT_LT((shifted[0][-1] - logits[0][-1]).abs().max().item<double>(), 1e-12);
}

TEST(Sampling, GreedyTopKOneAndTinyTopPAllPickTheArgmax) {
  torch::Tensor logits = torch::tensor({0.1, 2.5, -1.0, 2.4, 0.0}, torch::kFloat64);
  std::mt19937_64 rng(0);
  EXPECT_EQ(sample_token(logits, {}, rng), 1);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(sample_token(logits, {1.0, 1, 1.0, 0}, rng), 1);
    EXPECT_EQ(sample_token(logits, {1.0, 0, 1e-6, 0}, rng), 1);
  }
}

// Frequencies of 40000 draws against the tempered, truncated distribution computed here:
// the standard error of each frequency is below 0.0025, the tolerance 0.01 is 4 of them.
TEST(Sampling, FrequenciesFollowTemperatureTopKAndTopP) {
  const std::vector<double> raw{1.0, 0.5, 0.0, -0.5, -3.0};
  torch::Tensor logits = torch::tensor(raw, torch::kFloat64);
  struct Case {
    SamplingOptions options;
    std::vector<double> expected;
  };
  auto softmax = [&](double temperature, size_t keep) {
    std::vector<double> p(raw.size(), 0.0);
    double sum = 0;
    for (size_t i = 0; i < keep; ++i)
      sum += p[i] = std::exp(raw[i] / temperature);
    for (auto& x : p)
      x /= sum;
    return p;
  };
  // With T = 1: p = [.455 .276 .167 .101 .0049]; top_p 0.7 keeps the first two
  // (.455 < .7 <= .731).
  std::vector<Case> cases{{{1.0, 0, 1.0, 1}, softmax(1.0, 5)},
                          {{2.0, 0, 1.0, 2}, softmax(2.0, 5)},
                          {{1.0, 3, 1.0, 3}, softmax(1.0, 3)},
                          {{1.0, 0, 0.7, 4}, softmax(1.0, 2)}};
  for (const auto& c : cases) {
    std::mt19937_64 rng(c.options.seed);
    std::vector<double> counts(raw.size(), 0.0);
    const int draws = 40000;
    for (int i = 0; i < draws; ++i)
      counts[sample_token(logits, c.options, rng)] += 1.0;
    for (size_t i = 0; i < raw.size(); ++i)
      EXPECT_NEAR(counts[i] / draws, c.expected[i], 0.01)
          << "T " << c.options.temperature << " k " << c.options.top_k << " p " << c.options.top_p
          << " token " << i;
  }
}

TEST(Generation, SameSeedSameTokensAndStopToken) {
  CausalLM model = make_model("hybrid", 17);
  GenerateOptions options;
  options.max_new_tokens = 30;
  options.sampling = {0.9, 20, 0.95, 5};
  auto a = generate(model, {1, 2, 3}, options);
  auto b = generate(model, {1, 2, 3}, options);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  options.sampling.seed = 6;
  auto c = generate(model, {1, 2, 3}, options);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->tokens, c->tokens);
  options.stop_tokens = {a->tokens[4]};
  options.sampling.seed = 5;
  auto stopped = generate(model, {1, 2, 3}, options);
  ASSERT_TRUE(stopped.ok());
  EXPECT_TRUE(stopped->stopped_at_stop_token);
  EXPECT_LE(stopped->tokens.size(), 5u);
  EXPECT_EQ(stopped->tokens.back(), a->tokens[4]);
}

TEST(Generation, RejectsEmptyOrTooLongPromptsAndBadSampling) {
  CausalLM model = make_model("hybrid", 19);
  GenerateOptions options;
  auto empty = generate(model, {}, options);
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.error().message.find("empty"), std::string::npos);
  auto long_prompt = generate(model, std::vector<int32_t>(513, 1), options);
  ASSERT_FALSE(long_prompt.ok());
  EXPECT_NE(long_prompt.error().message.find("513 tokens"), std::string::npos);
  EXPECT_NE(long_prompt.error().message.find("512"), std::string::npos);
  options.max_new_tokens = 100;
  auto too_far = generate(model, std::vector<int32_t>(450, 1), options);
  ASSERT_FALSE(too_far.ok());
  EXPECT_NE(too_far.error().message.find("exceed"), std::string::npos);
  options.max_new_tokens = 4;
  options.sampling.top_p = 0.0;
  EXPECT_FALSE(generate(model, {1}, options).ok());
  options.sampling = {-1.0, 0, 1.0, 0};
  EXPECT_FALSE(generate(model, {1}, options).ok());
}

}  // namespace
}  // namespace hl::model
