// The decoder against a direct float64 re-statement of the Llama forward pass (written
// here with plain tensor ops, independent of kernels/ and of core/model's modules).
#include "core/model/decoder.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "core/model/rope.hpp"
#include "tiny_model.hpp"

namespace hl::model {
namespace {

io::ModelConfig tiny_config(const std::string& type) {
  io::ModelConfig config = testing::tiny_model_config(50, 2048);
  config.model_type = type;
  config.rms_norm_eps = 1e-5;
  config.rope_theta = 10000.0;
  config.qkv_bias = type == "qwen2";
  return config;
}

void randomise(CausalLM& model, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters())
    p.copy_(torch::randn_like(p) * 0.3);
}

torch::Tensor rms(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return w * (x * torch::rsqrt(x.pow(2).mean(-1, true) + eps));
}

torch::Tensor rotate(const torch::Tensor& x, int64_t offset, double theta) {
  const int64_t n = x.size(2), d = x.size(3);
  auto out = x.clone();
  for (int64_t pos = 0; pos < n; ++pos)
    for (int64_t i = 0; i < d / 2; ++i) {
      // Hugging Face computes the rotary tables in float32 whatever the model dtype, and
      // so does the decoder; the reference follows, so only float32 rounding of pow/cos
      // separates the two.
      float freq = 1.0f / std::pow(float(theta), float(2 * i) / float(d));
      double angle = double(float(pos + offset) * freq);
      auto a = x.select(2, pos).select(-1, i), b = x.select(2, pos).select(-1, i + d / 2);
      out.select(2, pos).select(-1, i).copy_(a * std::cos(angle) - b * std::sin(angle));
      out.select(2, pos).select(-1, i + d / 2).copy_(b * std::cos(angle) + a * std::sin(angle));
    }
  return out;
}

// Reference logits, float64, causal softmax attention with explicit GQA repetition.
torch::Tensor reference_logits(CausalLM& model, const torch::Tensor& ids) {
  const auto& c = model->config();
  auto named = model->named_parameters();
  auto P = [&](const std::string& name) { return named[name].to(torch::kFloat64); };
  torch::Tensor h = P("model.embed_tokens.weight")
                        .index_select(0, ids.flatten())
                        .view({ids.size(0), ids.size(1), c.hidden_size});
  const int64_t B = ids.size(0), N = ids.size(1), H = c.num_attention_heads,
                Hkv = c.num_key_value_heads, d = c.head_dim;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::string pre = "model.layers." + std::to_string(l) + ".";
    auto x = rms(h, P(pre + "input_layernorm.weight"), c.rms_norm_eps);
    auto lin = [&](const std::string& name, const torch::Tensor& in) {
      auto y = torch::matmul(in, P(pre + name + ".weight").t());
      if (named.contains(pre + name + ".bias")) y = y + P(pre + name + ".bias");
      return y;
    };
    auto q = rotate(lin("self_attn.q_proj", x).view({B, N, H, d}).transpose(1, 2), 0, c.rope_theta);
    auto k =
        rotate(lin("self_attn.k_proj", x).view({B, N, Hkv, d}).transpose(1, 2), 0, c.rope_theta);
    auto v = lin("self_attn.v_proj", x).view({B, N, Hkv, d}).transpose(1, 2);
    k = k.repeat_interleave(H / Hkv, 1);
    v = v.repeat_interleave(H / Hkv, 1);
    auto scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(d));
    auto mask = torch::ones({N, N}, torch::kBool).triu(1);
    scores = scores.masked_fill(mask, -INFINITY);
    auto att = torch::matmul(torch::softmax(scores, -1), v).transpose(1, 2).reshape({B, N, H * d});
    h = h + lin("self_attn.o_proj", att);
    auto m = rms(h, P(pre + "post_attention_layernorm.weight"), c.rms_norm_eps);
    h = h + lin("mlp.down_proj", torch::silu(lin("mlp.gate_proj", m)) * lin("mlp.up_proj", m));
  }
  h = rms(h, P("model.norm.weight"), c.rms_norm_eps);
  auto head = c.tie_word_embeddings ? P("model.embed_tokens.weight") : P("lm_head.weight");
  return torch::matmul(h, head.t());
}

class DecoderVsReference : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(DecoderVsReference, LogitsMatchInFloat64) {
  auto [type, tied] = GetParam();
  auto config = tiny_config(type);
  config.tie_word_embeddings = tied;
  CausalLM model(config);
  model->to(torch::kFloat64);
  for (uint64_t seed : {1u, 2u}) {
    randomise(model, seed);
    torch::Tensor ids = torch::randint(0, config.vocab_size, {2, 11}, torch::kInt64);
    torch::NoGradGuard no_grad;
    torch::Tensor ours = model->forward(ids);
    torch::Tensor ref = reference_logits(model, ids);
    // Everything but the float32 rotary tables is float64: 1e-6 absolute on logits of
    // magnitude ~10 bounds the float32 rounding of the tables.
    EXPECT_LT((ours - ref).abs().max().item<double>(), 1e-6) << type << " seed " << seed;
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, DecoderVsReference,
                         ::testing::Combine(::testing::Values("llama", "qwen2"),
                                            ::testing::Bool()));

TEST(Decoder, ParameterNamesFollowHuggingFace) {
  auto config = tiny_config("qwen2");
  CausalLM model(config);
  auto named = model->named_parameters();
  for (const char* name :
       {"model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.q_proj.bias", "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight", "lm_head.weight"})
    EXPECT_TRUE(named.contains(name)) << name;
  EXPECT_FALSE(named.contains("model.layers.0.self_attn.o_proj.bias"));
}

TEST(Decoder, Llama3RopeScalingKeepsHighFrequenciesAndSlowsLowOnes) {
  io::RopeScalingConfig scaling{"llama3", 8.0, 1.0, 4.0, 8192};
  auto plain = rope_inverse_frequencies(128, 500000.0, std::nullopt);
  auto scaled = rope_inverse_frequencies(128, 500000.0, scaling);
  EXPECT_FLOAT_EQ(scaled[0].item<float>(), plain[0].item<float>());  // wavelength 2 pi
  EXPECT_FLOAT_EQ(scaled[63].item<float>(), plain[63].item<float>() / 8.0f);
  // In the band between, the result lies between the two.
  for (int64_t i = 0; i < 64; ++i) {
    float s = scaled[i].item<float>(), p = plain[i].item<float>();
    EXPECT_LE(s, p * 1.000001f);
    EXPECT_GE(s, p / 8.0f * 0.999999f);
  }
}

TEST(Decoder, RotaryTablesEqualTheDirectOnesAtAnyOffsetAsTheyGrowAndChangeDtype) {
  auto config = tiny_config("llama");
  CausalLM model(config);
  const auto inverse = rope_inverse_frequencies(config.head_dim, config.rope_theta, std::nullopt);
  auto expect_direct = [&](int64_t offset, int64_t length, torch::Dtype dtype) {
    auto [cos, sin] = model->rotary(offset, length, torch::kCPU);
    auto [want_cos, want_sin] =
        rope_cos_sin(inverse, torch::arange(offset, offset + length, torch::kInt64));
    ASSERT_EQ(cos.scalar_type(), dtype);
    ASSERT_EQ(cos.sizes(), want_cos.sizes());
    // Bit-equal: the same float32 ops per position, then one rounding to the model's dtype.
    EXPECT_TRUE(torch::equal(cos, want_cos.to(dtype))) << offset << " + " << length;
    EXPECT_TRUE(torch::equal(sin, want_sin.to(dtype))) << offset << " + " << length;
  };
  expect_direct(0, 17, torch::kFloat32);
  expect_direct(1000, 24, torch::kFloat32);  // the first tables' end
  expect_direct(3001, 9, torch::kFloat32);   // past it: the tables grow
  expect_direct(5, 3, torch::kFloat32);      // and still serve the start
  model->to(torch::kFloat64);
  expect_direct(7, 11, torch::kFloat64);
}

TEST(Decoder, ConvertedModelInWindowOnlyModeEqualsSlidingWindowBase) {
  // A converted model in window_only mode computes sliding-window softmax: the same as a
  // Mistral-style base with sliding_window = w.
  auto config = tiny_config("llama");
  CausalLM converted(config);
  converted->to(torch::kFloat64);
  randomise(converted, 5);
  auto mistral_config = config;
  mistral_config.sliding_window = 4;
  CausalLM mistral(mistral_config);
  mistral->to(torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    auto src = converted->named_parameters();
    for (auto& p : mistral->named_parameters())
      p.value().copy_(src[p.key()]);
  }
  ConversionOptions conversion;
  conversion.window = 4;
  conversion.feature_dim = 4;
  converted->convert(conversion);
  converted->to(torch::kFloat64);
  ForwardOptions window_only;
  window_only.mode = kernels::AttentionMode::window_only;
  torch::Tensor ids = torch::randint(0, config.vocab_size, {1, 13}, torch::kInt64);
  torch::NoGradGuard no_grad;
  EXPECT_LT(
      (converted->forward(ids, window_only) - mistral->forward(ids)).abs().max().item<double>(),
      1e-10);
}

}  // namespace
}  // namespace hl::model
