#include "core/io/checkpoint.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using hl::io::ModelConfig;

ModelConfig tiny_config() {
  ModelConfig c;
  c.model_type = "llama";
  c.architectures = {"LlamaForCausalLM"};
  c.vocab_size = 37;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.bos_token_ids = {1};
  c.eos_token_ids = {2};
  return c;
}

std::vector<hl::io::NamedTensor> random_weights(const ModelConfig& c) {
  std::vector<hl::io::NamedTensor> out;
  for (const auto& [name, shape] : hl::io::expected_tensors(c)) {
    out.emplace_back(name, torch::randn(shape));
  }
  return out;
}

TEST(Checkpoint, ExpectedTensorsFollowHuggingFaceNames) {
  auto c = tiny_config();
  auto names = hl::io::expected_tensors(c);
  // embed + 2 layers * 9 + norm + lm_head
  EXPECT_EQ(names.size(), 1u + 2 * 9 + 1 + 1);
  EXPECT_EQ(names[2].first, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(names[2].second, (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(names[3].second, (std::vector<int64_t>{8, 16}));  // k: 2 kv heads * 4
  c.model_type = "qwen2";
  c.qkv_bias = true;
  c.tie_word_embeddings = true;
  names = hl::io::expected_tensors(c);
  EXPECT_EQ(names.size(), 1u + 2 * 12 + 1);
  EXPECT_EQ(names.back().first, "model.norm.weight");
}

TEST(Checkpoint, SingleFileDirectoryLoadsBack) {
  hl::test::TempDir dir("ckpt_single");
  torch::manual_seed(1);
  const auto config = tiny_config();
  const auto weights = random_weights(config);
  ASSERT_TRUE(hl::io::save_hf_directory(dir.path(), config, weights).ok());
  EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));

  auto loaded = hl::io::load_hf_directory(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.error().to_string();
  EXPECT_EQ(loaded->config.num_key_value_heads, 2);
  for (const auto& [name, tensor] : weights) {
    EXPECT_TRUE(torch::equal(loaded->weights.tensor(name), tensor)) << name;
  }
  auto file = hl::io::SafetensorsFile::open(dir / "model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->metadata().at("format"), "pt");  // transformers requires it
}

TEST(Checkpoint, ShardedSaveWritesIndexAndLoadsBack) {
  hl::test::TempDir dir("ckpt_sharded");
  torch::manual_seed(2);
  const auto config = tiny_config();
  const auto weights = random_weights(config);
  hl::io::SaveOptions options;
  options.max_shard_bytes = 4000;  // forces several shards
  ASSERT_TRUE(hl::io::save_hf_directory(dir.path(), config, weights, options).ok());
  ASSERT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));

  std::ifstream in(dir / "model.safetensors.index.json");
  auto index = nlohmann::json::parse(in);
  std::set<std::string> shards;
  for (auto& [name, shard] : index["weight_map"].items())
    shards.insert(shard.get<std::string>());
  EXPECT_GE(shards.size(), 3u);
  const std::string last = *shards.rbegin();
  char expected_last[64];
  std::snprintf(expected_last, sizeof expected_last, "model-%05zu-of-%05zu.safetensors",
                shards.size(), shards.size());
  EXPECT_EQ(last, expected_last);
  int64_t total = 0;
  for (const auto& [name, tensor] : weights)
    total += tensor.nbytes();
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);

  auto reader = hl::io::CheckpointReader::open(dir.path());
  ASSERT_TRUE(reader.ok()) << reader.error().to_string();
  EXPECT_EQ(reader->files().size(), shards.size());
  for (const auto& [name, tensor] : weights) {
    EXPECT_TRUE(torch::equal(reader->tensor(name), tensor)) << name;
  }

  // Saving again unsharded removes the stale shards and index.
  ASSERT_TRUE(hl::io::save_checkpoint(dir.path(), weights).ok());
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / last));
  EXPECT_TRUE(hl::io::CheckpointReader::open(dir.path()).ok());
}

TEST(Checkpoint, MissingTensorAndShapeMismatchAreNamed) {
  hl::test::TempDir dir("ckpt_check");
  torch::manual_seed(3);
  const auto config = tiny_config();
  auto weights = random_weights(config);
  auto without_norm = weights;
  std::erase_if(without_norm,
                [](const auto& t) { return t.first == "model.layers.1.mlp.up_proj.weight"; });
  ASSERT_TRUE(hl::io::save_hf_directory(dir.path(), config, without_norm).ok());
  auto missing = hl::io::load_hf_directory(dir.path());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().to_string().find(
                "checkpoint is missing tensor 'model.layers.1.mlp.up_proj.weight'"),
            std::string::npos)
      << missing.error().to_string();

  for (auto& [name, tensor] : weights) {
    if (name == "model.layers.0.self_attn.k_proj.weight") tensor = torch::randn({16, 16});
  }
  ASSERT_TRUE(hl::io::save_hf_directory(dir.path(), config, weights).ok());
  auto mismatch = hl::io::load_hf_directory(dir.path());
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.error().to_string().find(
                "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [16, 16] but "
                "config.json implies [8, 16]"),
            std::string::npos)
      << mismatch.error().to_string();
}

TEST(Checkpoint, MissingDirectoryAndWeightsAreReported) {
  hl::test::TempDir dir("ckpt_empty");
  auto none = hl::io::CheckpointReader::open(dir.path());
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().to_string().find("no model.safetensors"), std::string::npos);
  auto absent = hl::io::CheckpointReader::open(dir / "does-not-exist");
  ASSERT_FALSE(absent.ok());
  EXPECT_NE(absent.error().to_string().find("model directory does not exist"), std::string::npos);
}

}  // namespace
