// Parity with Hugging Face transformers and tokenizers, on the files that
// scripts/hf_parity.py writes on the GPU machine (HL_PARITY_DIR). Skipped elsewhere.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/io/safetensors.hpp"
#include "core/io/tokenizer.hpp"
#include "core/model/model_io.hpp"

namespace hl::model {
namespace {

namespace fs = std::filesystem;

fs::path parity_dir() {
  const char* dir = std::getenv("HL_PARITY_DIR");
  return dir ? fs::path(dir) : fs::path();
}

class HfParity : public ::testing::TestWithParam<std::string> {};

TEST_P(HfParity, LogitsMatchTransformers) {
  if (parity_dir().empty()) GTEST_SKIP() << "HL_PARITY_DIR not set (scripts/gpu-parity.sh sets it)";
  const fs::path dir = parity_dir() / GetParam();
  auto expected = io::SafetensorsFile::open(dir / "expected.safetensors");
  ASSERT_TRUE(expected.ok()) << expected.error().to_string();
  torch::Tensor ids = expected->tensor("input_ids").to(torch::kInt64);
  for (auto [dtype, name] : {std::pair{torch::kFloat32, "logits_float32"},
                             std::pair{torch::kBFloat16, "logits_bfloat16"}}) {
    auto model = load_model(dir, {dtype, torch::kCPU});
    ASSERT_TRUE(model.ok()) << model.error().to_string();
    torch::NoGradGuard no_grad;
    torch::Tensor ours = (*model)->forward(ids).to(torch::kFloat32);
    torch::Tensor theirs = expected->tensor(name).to(torch::kFloat32);
    const double max_diff = (ours - theirs).abs().max().item<double>();
    const double argmax_agree = ours.argmax(-1).eq(theirs.argmax(-1)).to(torch::kFloat64).mean().item<double>();
    std::printf("[parity] %s %s: max |diff| %.3g, argmax agreement %.4f\n", GetParam().c_str(), name,
                max_diff, argmax_agree);
    if (dtype == torch::kFloat32) {
      EXPECT_LT(max_diff, 1e-4) << GetParam();
      EXPECT_EQ(argmax_agree, 1.0);
    } else {
      EXPECT_EQ(argmax_agree, 1.0) << GetParam();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfParity,
                         ::testing::Values("llama", "llama3", "mistral", "qwen2"));

TEST(HfParity, TokenizerIdsMatchTokenizers) {
  if (parity_dir().empty()) GTEST_SKIP() << "HL_PARITY_DIR not set";
  const fs::path dir = parity_dir() / "tokenizer";
  auto tokenizer = io::load_tokenizer(dir / "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().to_string();
  std::ifstream in(dir / "expected.json");
  auto cases = nlohmann::json::parse(in);
  for (const auto& c : cases) {
    std::vector<int32_t> expected = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ((*tokenizer)->encode(c["text"].get<std::string>()), expected) << c["text"];
  }
}

}  // namespace
}  // namespace hl::model
