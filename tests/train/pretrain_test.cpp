// A few real steps of the tiny pretrain preset: the loss goes down, and the directory it
// writes is a model with its tokenizer that loads back.
#include "core/train/pretrain.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/io/tokenizer.hpp"
#include "core/model/model_io.hpp"
#include "core/util/paths.hpp"

namespace hl::train {
namespace {

namespace fs = std::filesystem;

TEST(Pretrain, TinyPresetStepsLowerTheLossAndWriteALoadableModel) {
  const fs::path out = fs::temp_directory_path() / ("hl_pretrain_" + std::to_string(::getpid()));
  hl::remove_tree(out);
  auto preset = pretrain_preset("tiny");
  ASSERT_TRUE(preset.ok());
  preset->steps = 12;
  PretrainRequest request;
  request.preset = *preset;
  request.out_dir = out;
  std::ostringstream lines;
  ProgressReporter progress(ProgressMode::json, lines);
  auto report = pretrain(request, progress);
  ASSERT_TRUE(report.ok()) << report.error().to_string();
  EXPECT_EQ(report->steps, 12);
  EXPECT_GT(report->parameters, 500000);

  std::vector<double> losses;
  std::istringstream in(lines.str());
  for (std::string line; std::getline(in, line);) {
    auto json = nlohmann::json::parse(line, nullptr, false);
    if (json.is_object() && json.value("type", "") == "progress")
      losses.push_back(json["metrics"]["loss"].get<double>());
  }
  ASSERT_GE(losses.size(), 2u);  // steps 1, 11 and 12 are reported
  EXPECT_LT(losses.back(), losses.front() - 1.0);

  for (const char* name :
       {"config.json", "model.safetensors", "tokenizer.json", "pretrain_report.json"})
    EXPECT_TRUE(fs::exists(out / name)) << name;
  auto model = model::load_model(out);
  ASSERT_TRUE(model.ok()) << model.error().to_string();
  auto tokenizer = io::load_tokenizer(out);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().to_string();
  const auto ids = (*tokenizer)->encode("The pass key is #12345.", false);
  torch::NoGradGuard no_grad;
  const auto logits =
      (*model)->forward(torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  EXPECT_TRUE(std::isfinite(report->val_loss));
  EXPECT_LT(report->val_loss, std::log(259.0));  // already better than uniform over bytes
  hl::remove_tree(out);
}

TEST(Pretrain, UnknownPresetIsAnError) {
  auto preset = pretrain_preset("huge");
  ASSERT_FALSE(preset.ok());
  EXPECT_NE(preset.error().message.find("tiny, small"), std::string::npos);
}

}  // namespace
}  // namespace hl::train
