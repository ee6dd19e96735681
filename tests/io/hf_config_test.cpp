#include "core/io/hf_config.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace {

using hl::io::parse_model_config;

constexpr const char* kLlama3 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 2048,
  "intermediate_size": 8192, "max_position_embeddings": 131072, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": true,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "torch_dtype": "bfloat16", "vocab_size": 128256, "head_dim": 64
})";

TEST(HfConfig, ParsesLlama3) {
  auto c = parse_model_config(kLlama3, "config.json");
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  ASSERT_TRUE(c->rope_scaling.has_value());
  EXPECT_EQ(c->rope_scaling->type, "llama3");
  EXPECT_DOUBLE_EQ(c->rope_scaling->factor, 32.0);
  EXPECT_EQ(c->rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_ids, std::vector<int64_t>{128000});
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_FALSE(c->qkv_bias);
}

TEST(HfConfig, DefaultsAndArchitectureRules) {
  auto mistral = parse_model_config(R"({"model_type": "mistral", "vocab_size": 10,
      "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
      "num_attention_heads": 8, "sliding_window": 4096, "head_dim": null})",
                                    "m.json");
  ASSERT_TRUE(mistral.ok()) << mistral.error().to_string();
  EXPECT_EQ(mistral->num_key_value_heads, 8);  // defaults to heads
  EXPECT_EQ(mistral->head_dim, 8);             // hidden / heads
  EXPECT_EQ(mistral->sliding_window, 4096);
  EXPECT_EQ(mistral->architectures, std::vector<std::string>{"MistralForCausalLM"});

  auto qwen = parse_model_config(R"({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 10,
      "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 131072,
      "use_sliding_window": false, "max_window_layers": 21})",
                                 "q.json");
  ASSERT_TRUE(qwen.ok()) << qwen.error().to_string();
  EXPECT_EQ(qwen->model_type, "qwen2");  // inferred from architectures
  EXPECT_TRUE(qwen->qkv_bias);
  EXPECT_FALSE(qwen->o_proj_bias);
  EXPECT_FALSE(qwen->sliding_window.has_value());

  auto llama_bias = parse_model_config(R"({"model_type": "llama", "vocab_size": 10,
      "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
      "num_attention_heads": 4, "attention_bias": true, "rope_scaling": null})",
                                       "l.json");
  ASSERT_TRUE(llama_bias.ok());
  EXPECT_TRUE(llama_bias->qkv_bias && llama_bias->o_proj_bias);
  EXPECT_FALSE(llama_bias->rope_scaling.has_value());
}

TEST(HfConfig, ToJsonRoundTrips) {
  auto c = parse_model_config(kLlama3, "config.json");
  ASSERT_TRUE(c.ok());
  c->hybridlab_json = R"({"kind":"hybrid","window":64})";
  const std::string text = c->to_json();
  auto doc = nlohmann::json::parse(text);
  EXPECT_EQ(doc["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(doc["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(doc["eos_token_id"].size(), 3u);
  EXPECT_EQ(doc["bos_token_id"], 128000);
  EXPECT_EQ(doc["hybridlab"]["window"], 64);
  auto again = parse_model_config(text, "again.json");
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_EQ(again->to_json(), text);
  EXPECT_EQ(again->hybridlab_json, c->hybridlab_json);

  hl::io::ModelConfig qwen = *again;
  qwen.model_type = "qwen2";
  qwen.architectures = {"Qwen2ForCausalLM"};
  qwen.qkv_bias = true;
  qwen.sliding_window = 256;
  auto qwen_again = parse_model_config(qwen.to_json(), "qwen.json");
  ASSERT_TRUE(qwen_again.ok()) << qwen_again.error().to_string();
  EXPECT_EQ(qwen_again->sliding_window, 256);
  EXPECT_TRUE(qwen_again->qkv_bias);
}

TEST(HfConfig, ErrorsNameFieldAndFile) {
  auto bad = parse_model_config(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 64,
      "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4,
      "rms_norm_eps": "small"})",
                                "dir/config.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().where.file, "dir/config.json");
  EXPECT_EQ(bad.error().where.key, "rms_norm_eps");
  EXPECT_NE(bad.error().message.find("must be a number, got string"), std::string::npos);

  auto no_arch = parse_model_config(R"({"vocab_size": 10})", "c.json");
  ASSERT_FALSE(no_arch.ok());
  EXPECT_EQ(no_arch.error().where.key, "model_type");

  auto gemma = parse_model_config(R"({"architectures": ["GemmaForCausalLM"]})", "c.json");
  ASSERT_FALSE(gemma.ok());
  EXPECT_NE(gemma.error().message.find("unsupported architecture 'GemmaForCausalLM'"),
            std::string::npos);
}

}  // namespace
