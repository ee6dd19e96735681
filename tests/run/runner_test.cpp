// End-to-end runs of tiny experiments: a real base model on disk, real training steps, a
// real SQLite store, read back through the store's reader.
#include "core/run/runner.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/eval/model_source.hpp"
#include "core/io/tokenizer.hpp"
#include "core/model/model_io.hpp"
#include "core/store/run_reader.hpp"
#include "core/util/paths.hpp"
#include "tiny_model.hpp"

namespace hl {
namespace {

namespace fs = std::filesystem;

class RunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("hl_runner_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    remove_tree(dir_);
    fs::create_directories(dir_);
    // A tiny random base model with the byte tokenizer.
    io::ModelConfig config =
        testing::tiny_model_config(io::make_byte_tokenizer()->vocab_size(), 2048);
    config.architectures = {"LlamaForCausalLM"};
    config.intermediate_size = 64;
    config.tie_word_embeddings = true;
    torch::manual_seed(3);
    model::CausalLM base(config);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : base->parameters())
        p.normal_(0.0, 0.1);
    }
    ASSERT_TRUE(model::save_model(base, dir_ / "base").ok());
    ASSERT_TRUE(io::save_tokenizer(dir_ / "base", io::byte_tokenizer_json()).ok());
    std::ofstream corpus(dir_ / "corpus.txt"), val(dir_ / "val.txt");
    for (int i = 0; i < 400; ++i)
      (i % 5 ? corpus : val) << "Line " << i << ": the quick brown fox jumps over the lazy dog "
                             << i * 7 << " times.\n\n";
  }
  void TearDown() override { remove_tree(dir_); }

  std::string experiment(const std::string& stages, const std::string& extra = "") {
    std::string text = "name = \"t\"\nseed = 1\n[model]\nbase = \"" + (dir_ / "base").string() +
                       "\"\n[data]\ntrain = [\"" + (dir_ / "corpus.txt").string() +
                       "\"]\nval = [\"" + (dir_ / "val.txt").string() +
                       "\"]\nseq_len = 32\nbatch_size = 2\n"
                       "[attention]\nwindow = 8\nfeature_dim = 8\n" +
                       extra + stages +
                       "[eval]\ntasks = [\"ppl\"]\nmodes = [\"hybrid\", \"window_only\"]\n"
                       "max_batches = 1\n";
    const fs::path path = dir_ / ("exp" + std::to_string(counter_++) + ".toml");
    std::ofstream(path) << text;
    return path.string();
  }

  RunOutcome run(const std::string& exp, const std::string& resume = "", int64_t max_steps = 0) {
    RunRequest request;
    request.experiment_path = exp;
    request.db_path = (dir_ / "runs.sqlite").string();
    request.resume = resume;
    request.max_steps = max_steps;
    ProgressReporter progress(ProgressMode::none, std::cout);
    std::atomic<bool> cancel{false};
    return run_experiment(request, progress, cancel);
  }

  store::RunReader reader() {
    auto opened = store::RunReader::open((dir_ / "runs.sqlite").string());
    EXPECT_TRUE(opened.ok());
    return std::move(*opened);
  }

  std::vector<double> losses(int64_t run_id) {
    auto reading = reader();
    auto points = reading.scalars_after(run_id, "loss", -1);
    EXPECT_TRUE(points.ok());
    std::vector<double> values;
    for (const auto& p : *points)
      values.push_back(p.value);
    return values;
  }

  fs::path dir_;
  int counter_ = 0;
};

constexpr const char* kTwoStages = R"(
[[stage]]
kind = "attention_transfer"
steps = 6
log_every = 1
usage_every = 2
eval_every = 3
eval_batches = 1
checkpoint_every = 3
ssd = { swa_dropout = [0.9, 0.5], granularity = "head" }

[[stage]]
kind = "lora_finetune"
steps = 4
log_every = 1
usage_every = 2
eval_every = 2
eval_batches = 1
)";

TEST_F(RunnerTest, TwoStagesWithSsdLeaveCurvesUsageAndEvals) {
  RunOutcome outcome = run(experiment(kTwoStages));
  ASSERT_EQ(outcome.exit_code, 0) << outcome.message;
  auto reading = reader();
  auto info = reading.run(outcome.run_id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->status, store::RunStatus::completed);
  EXPECT_EQ(info->method, "lolcats+ssd");
  EXPECT_EQ(losses(outcome.run_id).size(), 10u);  // 6 + 4 steps, logged every step
  auto matrix = reading.layer_matrix(outcome.run_id, "usage/linear_mass");
  ASSERT_TRUE(matrix.ok());
  EXPECT_EQ(matrix->layers, (std::vector<int>{0, 1}));
  EXPECT_GE(matrix->steps.size(), 4u);
  for (double v : matrix->values)
    if (!std::isnan(v)) {
      EXPECT_GE(v, 0.0);
      EXPECT_LE(v, 1.0);
    }
  auto realised = reading.scalars_after(outcome.run_id, "ssd/realised", -1);
  ASSERT_TRUE(realised.ok());
  EXPECT_FALSE(realised->empty());
  auto evals = reading.evals({outcome.run_id});
  ASSERT_TRUE(evals.ok());
  int ppl_rows = 0;
  for (const auto& row : *evals)
    ppl_rows += row.task == "ppl" && row.metric == "ppl";
  EXPECT_EQ(ppl_rows, 2);  // ppl in two modes (besides its split by position and % of base)
  EXPECT_TRUE(fs::exists(checkpoint_dir_for((dir_ / "runs.sqlite").string(), info->uuid) +
                         "/model/config.json"));
}

TEST_F(RunnerTest, UsageUnderSsdIsMeasuredWithoutTheDrops) {
  // Every window is dropped in every step; the logged usage must still describe the hybrid
  // (both branches, linear mass < 1), not the linear-only forward the step trained.
  RunOutcome outcome = run(experiment(R"(
[[stage]]
kind = "attention_transfer"
steps = 3
usage_every = 1
eval_every = 3
eval_batches = 1
ssd = { swa_dropout = [1.0], granularity = "layer" }
)"));
  ASSERT_EQ(outcome.exit_code, 0) << outcome.message;
  auto realised = reader().scalars_after(outcome.run_id, "ssd/realised", -1);
  ASSERT_TRUE(realised.ok());
  ASSERT_FALSE(realised->empty());
  EXPECT_EQ(realised->back().value, 1.0);
  auto matrix = reader().layer_matrix(outcome.run_id, "usage/linear_mass");
  ASSERT_TRUE(matrix.ok());
  ASSERT_FALSE(matrix->values.empty());
  for (double v : matrix->values) {
    EXPECT_GT(v, 0.0);
    EXPECT_LT(v, 0.999);
  }
}

TEST_F(RunnerTest, LinearOutputTransferLogsLinearMassOne) {
  RunOutcome outcome = run(experiment(R"(
[[stage]]
kind = "attention_transfer"
objective = "linear_output"
steps = 3
usage_every = 1
eval_every = 3
eval_batches = 1
)"));
  ASSERT_EQ(outcome.exit_code, 0) << outcome.message;
  auto matrix = reader().layer_matrix(outcome.run_id, "usage/linear_mass");
  ASSERT_TRUE(matrix.ok());
  ASSERT_FALSE(matrix->values.empty());
  for (double v : matrix->values)
    EXPECT_NEAR(v, 1.0, 1e-6);
}

TEST_F(RunnerTest, TinyLinearBranchGivesLinearMassNearZero) {
  // A converted base with window factors ~1 (logit 20) and a key feature map with zero
  // weights, whose relu features sit at the 1e-12 clamp: every linear term is ~1e-12
  // against window terms of order 1, so the logged linear mass must be ~0.
  auto base = model::load_model(dir_ / "base");
  ASSERT_TRUE(base.ok());
  model::ConversionOptions conversion;
  conversion.window = 8;
  conversion.feature_map = kernels::FeatureMapKind::relu;
  conversion.feature_dim = 8;
  (*base)->convert(conversion);
  {
    torch::NoGradGuard no_grad;
    for (int64_t layer : (*base)->converted_layers()) {
      auto attention = (*base)->attention(layer);
      attention->feature_map_k->weight.zero_();
      attention->window_factors.fill_(20.0);
    }
  }
  ASSERT_TRUE(model::save_model(*base, dir_ / "converted").ok());
  ASSERT_TRUE(io::save_tokenizer(dir_ / "converted", io::byte_tokenizer_json()).ok());
  std::string exp = experiment(R"(
[[stage]]
kind = "attention_transfer"
steps = 1
lr = 1e-12
usage_every = 1
eval_every = 1
eval_batches = 1
)");
  std::string text;
  {
    std::ifstream in(exp);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string from = (dir_ / "base").string();
  text.replace(text.find(from), from.size(), (dir_ / "converted").string());
  std::ofstream(exp) << text;
  RunOutcome outcome = run(exp);
  ASSERT_EQ(outcome.exit_code, 0) << outcome.message;
  auto matrix = reader().layer_matrix(outcome.run_id, "usage/linear_mass");
  ASSERT_TRUE(matrix.ok());
  ASSERT_FALSE(matrix->values.empty());
  for (double v : matrix->values)
    EXPECT_LT(v, 1e-6);
  auto factors = reader().layer_matrix(outcome.run_id, "usage/window_factor");
  ASSERT_TRUE(factors.ok());
  for (double v : factors->values)
    EXPECT_GT(v, 0.999);
}

TEST_F(RunnerTest, ResumedRunReproducesTheUninterruptedLosses) {
  const std::string exp = experiment(kTwoStages);
  RunOutcome whole = run(exp);
  ASSERT_EQ(whole.exit_code, 0) << whole.message;
  RunOutcome first = run(exp, "", 4);  // stops after 4 of 10 steps, as a cancel would
  ASSERT_EQ(first.exit_code, 130) << first.message;
  EXPECT_EQ(reader().run(first.run_id)->status, store::RunStatus::cancelled);
  RunOutcome second = run("", std::to_string(first.run_id));
  ASSERT_EQ(second.exit_code, 0) << second.message;
  EXPECT_EQ(second.run_id, first.run_id);
  std::vector<double> expected = losses(whole.run_id), got = losses(first.run_id);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_EQ(got[i], expected[i]) << "step " << i;
}

TEST_F(RunnerTest, BadInputsFailBeforeAnyRunIsRecorded) {
  std::string exp = experiment(kTwoStages);
  std::string text;
  {
    std::ifstream in(exp);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto variant = [&](const std::string& from, const std::string& to) {
    std::string changed = text;
    changed.replace(changed.find(from), from.size(), to);
    const fs::path path = dir_ / ("bad" + std::to_string(counter_++) + ".toml");
    std::ofstream(path) << changed;
    return path.string();
  };
  RunOutcome missing_base = run(variant((dir_ / "base").string(), (dir_ / "nope").string()));
  EXPECT_EQ(missing_base.exit_code, 2);
  EXPECT_NE(missing_base.message.find("model.base"), std::string::npos) << missing_base.message;
  RunOutcome missing_data =
      run(variant((dir_ / "corpus.txt").string(), (dir_ / "none.txt").string()));
  EXPECT_EQ(missing_data.exit_code, 2);
  RunOutcome too_long = run(variant("seq_len = 32", "seq_len = 100000"));
  EXPECT_EQ(too_long.exit_code, 2) << too_long.message;
  RunOutcome unknown_resume = run("", "no-such-run");
  EXPECT_EQ(unknown_resume.exit_code, 2);
  RunRequest cuda;
  cuda.experiment_path = exp;
  cuda.db_path = (dir_ / "runs.sqlite").string();
  cuda.device_override = "cuda";
  if (!torch::cuda::is_available()) {
    ProgressReporter progress(ProgressMode::none, std::cout);
    std::atomic<bool> cancel{false};
    EXPECT_EQ(run_experiment(cuda, progress, cancel).exit_code, 2);
  }
  if (fs::exists(dir_ / "runs.sqlite")) {
    auto runs = reader().list_runs();
    ASSERT_TRUE(runs.ok());
    EXPECT_TRUE(runs->empty());
  }
}

// With a GPU: the bf16 autocast run trains the same experiment to nearby losses (not the same
// ones: the products really ran in bf16). Without one the run is refused
// before it starts.
TEST_F(RunnerTest, AutocastBf16TrainsOnCudaNearTheFp32Run) {
  const std::string autocast = experiment(kTwoStages, "");
  std::string text;
  {
    std::ifstream in(autocast);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string marker = "[model]\n";
  const std::string fp32_text =
      std::string(text).replace(text.find(marker), marker.size(), "[model]\ndevice = \"cuda\"\n");
  text.replace(text.find(marker), marker.size(), "[model]\nautocast = \"bfloat16\"\n");
  std::ofstream(autocast) << text;
  if (!torch::cuda::is_available()) {
    RunOutcome refused = run(autocast);
    EXPECT_EQ(refused.exit_code, 2);
    EXPECT_NE(refused.message.find("runs on CUDA only"), std::string::npos) << refused.message;
    return;
  }
  const fs::path fp32 = dir_ / "fp32.toml";
  std::ofstream(fp32) << fp32_text;
  RunOutcome reference = run(fp32.string());
  ASSERT_EQ(reference.exit_code, 0) << reference.message;
  RunOutcome mixed = run(autocast);
  ASSERT_EQ(mixed.exit_code, 0) << mixed.message;
  const std::vector<double> expected = losses(reference.run_id), got = losses(mixed.run_id);
  ASSERT_EQ(got.size(), expected.size());
  ASSERT_GE(got.size(), 4u);
  // Step 0 runs the same weights: only the products' precision differs (bf16 keeps 8 bits).
  EXPECT_NEAR(got[0], expected[0], 0.02 * std::abs(expected[0]));
  // After AdamW steps on slightly different gradients the runs wander apart but end alike (the
  // last steps are the LoRA stage's next-token loss).
  auto tail_mean = [](const std::vector<double>& v) {
    return (v.end()[-1] + v.end()[-2] + v.end()[-3]) / 3;
  };
  EXPECT_NEAR(tail_mean(got), tail_mean(expected), 0.15 * std::abs(tail_mean(expected)));
  bool any_different = false;
  for (size_t i = 0; i < got.size(); ++i)
    any_different = any_different || got[i] != expected[i];
  EXPECT_TRUE(any_different) << "the autocast run gave the fp32 losses bit for bit";
}

// On CUDA, steps that need no usage replay one captured step (model::StepGraph): the losses are
// those of the eager steps (HL_STEP_GRAPH=0), step for step, through evaluations, checkpoints
// and eager usage steps between the replays, in both stage kinds, with SSD's masks and window
// schedule and with two micro-batches a step.
TEST_F(RunnerTest, CudaStepGraphGivesTheEagerLosses) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs CUDA";
  const std::string stages = R"(
[[stage]]
kind = "attention_transfer"
steps = 12
log_every = 1
usage_every = 5
eval_every = 4
eval_batches = 1
checkpoint_every = 6
ssd = { swa_dropout = [0.9, 0.3], window = [8, 4], granularity = "head" }

[[stage]]
kind = "lora_finetune"
steps = 8
grad_accum = 2
log_every = 1
usage_every = 100
eval_every = 4
eval_batches = 1
)";
  const std::string exp = experiment(stages, "");
  std::string text;
  {
    std::ifstream in(exp);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  text.replace(text.find("[model]\n"), 8, "[model]\ndevice = \"cuda\"\n");
  std::ofstream(exp) << text;
  ::setenv("HL_STEP_GRAPH", "0", 1);
  RunOutcome eager = run(exp);
  ::unsetenv("HL_STEP_GRAPH");
  ASSERT_EQ(eager.exit_code, 0) << eager.message;
  RunOutcome graphed = run(exp);
  ASSERT_EQ(graphed.exit_code, 0) << graphed.message;
  auto graph_events = [&](int64_t run_id) {
    std::vector<std::string> messages;
    auto reading = reader();
    const auto events = reading.events_after(run_id, 0);
    EXPECT_TRUE(events.ok());
    for (const auto& e : *events)
      if (e.kind == "graph") messages.push_back(e.level + ": " + e.message);
    return messages;
  };
  const auto events = graph_events(graphed.run_id);
  ASSERT_EQ(events.size(), 3u) << "one capture a stage and one for SSD's second window";
  for (const auto& e : events)
    EXPECT_EQ(e.rfind("info: ", 0), 0u) << e;
  for (const auto& e : graph_events(eager.run_id))
    EXPECT_NE(e.find("HL_STEP_GRAPH=0"), std::string::npos) << e;
  const std::vector<double> expected = losses(eager.run_id), got = losses(graphed.run_id);
  ASSERT_EQ(got.size(), 20u);
  ASSERT_EQ(got.size(), expected.size());
  // The same kernels on the same inputs; atomics in the backward may order sums differently.
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], expected[i], 1e-5 * std::abs(expected[i])) << "step " << i;
  EXPECT_NE(got.front(), got.back()) << "the weights did not train";
}

TEST_F(RunnerTest, FrozenBaseWeightsAreBitForBitUnchanged) {
  RunOutcome outcome = run(experiment(kTwoStages));
  ASSERT_EQ(outcome.exit_code, 0) << outcome.message;
  auto info = reader().run(outcome.run_id);
  auto trained =
      model::load_model(checkpoint_dir_for((dir_ / "runs.sqlite").string(), info->uuid) + "/model");
  ASSERT_TRUE(trained.ok()) << trained.error().to_string();
  auto base = model::load_model(dir_ / "base");
  ASSERT_TRUE(base.ok());
  auto trained_params = (*trained)->named_parameters();
  int compared = 0;
  for (const auto& item : (*base)->named_parameters()) {
    ASSERT_TRUE(trained_params.contains(item.key())) << item.key();
    EXPECT_TRUE(torch::equal(item.value(), trained_params[item.key()])) << item.key();
    ++compared;
  }
  EXPECT_GT(compared, 10);
  // And the conversion did train: window factors moved away from their start.
  auto omega = trained_params["model.layers.0.self_attn.window_factors"];
  EXPECT_FALSE(torch::allclose(omega, torch::full_like(omega, std::log(0.1 / 0.9))));
}

// Logits of a model directory on a fixed batch of token ids.
torch::Tensor logits_of(const fs::path& dir, const torch::Tensor& tokens) {
  auto loaded = model::load_model(dir);
  EXPECT_TRUE(loaded.ok()) << loaded.error().to_string();
  torch::NoGradGuard no_grad;
  return (*loaded)->forward(tokens);
}

TEST_F(RunnerTest, ExportLoadsBackWithIdenticalLogitsAndMergedLoraEqualsUnmerged) {
  RunOutcome outcome = run(experiment(kTwoStages));
  ASSERT_EQ(outcome.exit_code, 0) << outcome.message;
  const std::string db = (dir_ / "runs.sqlite").string();
  auto final_model = eval::find_run_model(db, std::to_string(outcome.run_id));
  ASSERT_TRUE(final_model.ok()) << final_model.error().to_string();
  const fs::path final_dir = final_model->dir;
  ASSERT_TRUE(export_run_model(db, std::to_string(outcome.run_id), dir_ / "apart", false).ok());
  ASSERT_TRUE(export_run_model(db, std::to_string(outcome.run_id), dir_ / "merged", true).ok());
  for (const char* name : {"config.json", "model.safetensors", "tokenizer.json"}) {
    EXPECT_TRUE(fs::exists(dir_ / "apart" / name)) << name;
    EXPECT_TRUE(fs::exists(dir_ / "merged" / name)) << name;
  }
  std::string config;
  {
    std::ifstream in(dir_ / "merged" / "config.json");
    config.assign(std::istreambuf_iterator<char>(in), {});
  }
  EXPECT_NE(config.find("\"hybridlab\""), std::string::npos);
  EXPECT_NE(config.find("\"window\": 8"), std::string::npos) << config;

  torch::manual_seed(11);
  const torch::Tensor tokens = torch::randint(0, 259, {2, 40}, torch::kLong);
  const torch::Tensor reference = logits_of(final_dir, tokens);
  const torch::Tensor apart = logits_of(dir_ / "apart", tokens);
  const torch::Tensor merged = logits_of(dir_ / "merged", tokens);
  EXPECT_TRUE(torch::equal(apart, reference));  // the same weights and the same arithmetic
  // Merging changes the order of float32 operations only: W x + s B A x vs (W + s B A) x.
  const double scale = reference.abs().max().item<double>();
  EXPECT_LT((merged - reference).abs().max().item<double>(), 1e-5 * scale);
  EXPECT_FALSE(torch::equal(merged, reference));  // the merge did change the arithmetic
  auto merged_model = model::load_model(dir_ / "merged");
  ASSERT_TRUE(merged_model.ok());
  for (const auto& item : (*merged_model)->named_parameters())
    EXPECT_EQ(item.key().find(".lora."), std::string::npos) << item.key();
}

TEST_F(RunnerTest, ExportOfARunWithoutFinalModelNamesItsStatus) {
  RunOutcome first = run(experiment(kTwoStages), "", 3);
  ASSERT_EQ(first.exit_code, 130);
  const std::string db = (dir_ / "runs.sqlite").string();
  Status exported = export_run_model(db, std::to_string(first.run_id), dir_ / "out", true);
  ASSERT_FALSE(exported.ok());
  EXPECT_NE(exported.error().message.find("cancelled"), std::string::npos)
      << exported.error().message;
  Status unknown = export_run_model(db, "no-such-run", dir_ / "out", true);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().message.find("no-such-run"), std::string::npos)
      << unknown.error().message;
}

TEST_F(RunnerTest, RelativePathsResolveAgainstTheExperimentFolder) {
  // An experiment file next to its model and data, run from another working directory.
  const fs::path exp = experiment(kTwoStages);
  std::string text;
  {
    std::ifstream in(exp);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  for (const char* name : {"base", "corpus.txt", "val.txt"}) {
    const std::string absolute = (dir_ / name).string();
    text.replace(text.find(absolute), absolute.size(), name);
  }
  std::ofstream(dir_ / "relative.toml") << text;
  const fs::path previous = fs::current_path();
  fs::create_directories(dir_ / "elsewhere");
  fs::current_path(dir_ / "elsewhere");
  RunOutcome outcome = run((dir_ / "relative.toml").string(), "", 2);
  fs::current_path(previous);
  EXPECT_EQ(outcome.exit_code, 130) << outcome.message;
  auto info = reader().run(outcome.run_id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(fs::path(info->base_model), dir_ / "base");  // stored absolute, for --resume
}

}  // namespace
}  // namespace hl
