// spec -> to_toml -> parse gives the same spec: for the defaults, for every preset in
// experiments/, and for many random valid specs.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include "config_test_support.hpp"
#include "core/config/experiment_file.hpp"
#include "test_paths.hpp"

namespace hl {
namespace {

namespace fs = std::filesystem;

void expect_round_trip(const ExperimentSpec& spec, const std::string& label) {
  ASSERT_TRUE(validate(spec).empty()) << label;
  const std::string text = to_toml(spec);
  const ExperimentParse parse = parse_experiment(text, label);
  ASSERT_TRUE(parse.ok()) << label << "\n" << test::error_lines(parse) << text;
  EXPECT_TRUE(*parse.spec == spec) << label << " changed in the round trip:\n" << text;
  // Writing is stable: the re-read spec writes the same text.
  EXPECT_EQ(to_toml(*parse.spec), text) << label;
}

TEST(RoundTrip, Defaults) {
  ExperimentSpec spec;
  spec.model.base = "models/tiny-base";
  spec.stages.push_back(default_stage("attention_transfer"));
  spec.stages.push_back(default_stage("lora_finetune"));
  expect_round_trip(spec, "defaults");
  // The same defaults as a file that names only the required keys.
  EXPECT_EQ(test::parse_valid(R"(
[model]
base = "models/tiny-base"
[[stage]]
kind = "attention_transfer"
[[stage]]
kind = "lora_finetune"
)"),
            spec);
}

TEST(RoundTrip, WrittenFileListsEveryFieldInSectionOrder) {
  ExperimentSpec spec;
  spec.model.base = "m";
  spec.stages.push_back(default_stage("attention_transfer"));
  spec.stages.back().ssd = SsdSpec{};
  spec.stages.push_back(default_stage("lora_finetune"));
  const std::string text = to_toml(spec);
  size_t last = 0;
  for (const char* marker : {"name = ",
                             "seed = ",
                             "description = ",
                             "[model]",
                             "base = ",
                             "dtype = ",
                             "device = ",
                             "[data]",
                             "train = ",
                             "val = ",
                             "format = ",
                             "text_field = ",
                             "prompt_template = ",
                             "seq_len = ",
                             "batch_size = ",
                             "val_fraction = ",
                             "passkey_weight = ",
                             "mqar_weight = ",
                             "max_train_tokens = ",
                             "[attention]",
                             "kind = ",
                             "window = ",
                             "overlap = ",
                             "feature_map = ",
                             "feature_dim = ",
                             "feature_init = ",
                             "window_factor_init = ",
                             "affine_factors = ",
                             "softmax_layers = ",
                             "sinks = ",
                             "[[stage]]",
                             "kind = \"attention_transfer\"",
                             "steps = ",
                             "lr = ",
                             "weight_decay = ",
                             "lr_schedule = ",
                             "warmup_steps = ",
                             "plateau_factor = ",
                             "plateau_patience = ",
                             "grad_accum = ",
                             "max_grad_norm = ",
                             "log_every = ",
                             "usage_every = ",
                             "eval_every = ",
                             "eval_batches = ",
                             "early_stop_patience = ",
                             "checkpoint_every = ",
                             "train_mode = ",
                             "objective = ",
                             "mse_factor = ",
                             "xent_factor = ",
                             "[stage.ssd]",
                             "swa_dropout = ",
                             "granularity = ",
                             "[[stage]]",
                             "kind = \"lora_finetune\"",
                             "rank = ",
                             "alpha = ",
                             "dropout = ",
                             "targets = ",
                             "layers = ",
                             "train_feature_maps = ",
                             "[eval]",
                             "tasks = ",
                             "modes = ",
                             "max_batches = ",
                             "distances = ",
                             "layer_ablation = "}) {
    const size_t at = text.find(marker, last);
    ASSERT_NE(at, std::string::npos) << marker << " missing or out of order in:\n" << text;
    last = at;
  }
  EXPECT_NE(text.find("swa_dropout = [0.9, 0.75, 0.5]"), std::string::npos) << text;
  EXPECT_NE(text.find("mse_factor = 1000.0"), std::string::npos) << text;
}

TEST(RoundTrip, EveryPresetIsValidAndRoundTrips) {
  const fs::path dir = fs::path(test::kSourceDir) / "experiments";
  int presets = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".toml") continue;
    ++presets;
    const ExperimentParse parse = load_experiment_file(entry.path().string());
    ASSERT_TRUE(parse.ok()) << test::error_lines(parse);
    expect_round_trip(*parse.spec, entry.path().filename().string());
  }
  EXPECT_GE(presets, 8);
}

// A random valid spec: every field drawn from its allowed range, strings with characters that
// need escaping, doubles with full 17-digit precision.
class RandomSpecs {
 public:
  explicit RandomSpecs(uint64_t seed) : rng_(seed) {}

  ExperimentSpec next() {
    ExperimentSpec spec;
    spec.name = text(1, 12);
    spec.seed = integer(0, INT64_MAX);
    spec.description = text(0, 40);
    spec.model.base = text(1, 20);
    spec.model.dtype = pick(choices::kDtypes);
    spec.model.device = pick(choices::kDevices);

    DataSpec& data = spec.data;
    data.train.clear();
    for (int64_t i = integer(1, 3); i > 0; --i)
      data.train.push_back(source());
    for (int64_t i = integer(0, 2); i > 0; --i)
      data.val.push_back(source());
    data.format = pick(choices::kDataFormats);
    data.text_field = text(1, 8);
    data.prompt_template = text(0, 10) + "{instruction}" + text(0, 10) + (coin() ? "{input}" : "") +
                           text(0, 10) + "{output}";
    data.seq_len = integer(8, 1 << 20);
    data.batch_size = integer(1, 4096);
    data.val_fraction = real(0, 1);
    data.passkey_weight = coin() ? 0.0 : real(0, 10);
    data.mqar_weight = coin() ? 0.0 : real(0, 10);
    data.max_train_tokens = integer(0, int64_t{1} << 50);

    AttentionSpec& attention = spec.attention;
    attention.kind = pick(choices::kAttentionKinds);
    attention.window = integer(1, 1 << 16);
    attention.overlap = coin();
    attention.feature_map = pick(choices::kFeatureMaps);
    attention.feature_dim = integer(1, 1024);
    attention.feature_init = pick(choices::kFeatureInits);
    attention.window_factor_init = real_open(0, 1);
    attention.affine_factors = coin();
    attention.softmax_layers = layers();
    attention.sinks = integer(1, 64);

    for (int64_t i = integer(1, 4); i > 0; --i)
      spec.stages.push_back(stage(attention.kind));

    EvalSpec& eval = spec.eval;
    eval.tasks = subset(std::vector<std::string>{"ppl", "passkey", "mqar", "ppl:" + text(1, 10),
                                                 "mc:" + text(1, 10)},
                        0);
    std::vector<std::string> modes(choices::kEvalModes.begin(), choices::kEvalModes.end());
    eval.modes = subset(modes, 1);
    eval.seq_len = integer(0, 1 << 20);
    eval.max_batches = integer(1, 1000);
    eval.distances.clear();
    for (int64_t i = integer(0, 6); i > 0; --i)
      eval.distances.push_back(integer(1, 1 << 20));
    eval.layer_ablation = coin();
    return spec;
  }

 private:
  StageSpec stage(const std::string& attention_kind) {
    StageSpec stage = default_stage(pick(choices::kStageKinds));
    stage.name = text(1, 12);
    stage.steps = integer(1, 1'000'000);
    stage.lr = std::exp(real(-25, 2));
    stage.weight_decay = coin() ? 0.0 : real(0, 1);
    stage.lr_schedule = pick(choices::kLrSchedules);
    stage.warmup_steps = integer(0, stage.steps - 1);
    stage.plateau_factor = real_open(0, 1);
    stage.plateau_patience = integer(1, 100);
    stage.grad_accum = integer(1, 64);
    stage.max_grad_norm = coin() ? 0.0 : real(0, 10);
    stage.log_every = integer(1, 1000);
    stage.usage_every = integer(1, 1000);
    stage.eval_every = integer(1, 1000);
    stage.eval_batches = integer(1, 1000);
    stage.early_stop_patience = integer(0, 50);
    stage.checkpoint_every = integer(1, 1000);
    if (stage.kind == kAttentionTransfer) {
      stage.transfer.objective = pick(choices::kObjectives);
      stage.train_mode = std::string(train_mode_for_objective(stage.transfer.objective));
      stage.transfer.mse_factor = coin() ? 0.0 : real(0, 5000);
      stage.transfer.xent_factor = real_open(0, 10);
    } else {
      stage.train_mode = pick(choices::kTrainModes);
      stage.lora.rank = integer(1, 256);
      stage.lora.alpha = real_open(0, 64);
      stage.lora.dropout = real(0, 1);
      std::vector<std::string> targets(choices::kLoraTargets.begin(), choices::kLoraTargets.end());
      stage.lora.targets = subset(targets, 1);
      stage.lora.layers = layers();
      stage.lora.train_feature_maps = coin();
    }
    if (attention_kind == "hybrid" && stage.train_mode == "hybrid" && coin()) {
      SsdSpec ssd;
      ssd.swa_dropout = schedule(stage.steps, [&] { return real(0, 1); });
      if (coin()) ssd.window = schedule(stage.steps, [&] { return double(integer(1, 4096)); });
      ssd.granularity = pick(choices::kSsdGranularities);
      stage.ssd = ssd;
    }
    return stage;
  }

  template <class Draw>
  Schedule schedule(int64_t steps, Draw draw) {
    Schedule schedule;
    if (coin()) {
      for (int64_t i = integer(1, 6); i > 0; --i)
        schedule.values.push_back(draw());
    } else {
      int64_t step = 0;
      for (int64_t i = integer(1, 6); i > 0 && step < steps; --i) {
        schedule.points.push_back({step, draw()});
        step += integer(1, std::max<int64_t>(1, steps / 3));
      }
    }
    return schedule;
  }

  std::string source() { return coin() ? "builtin:" + text(1, 8) : text(1, 16); }

  std::vector<int64_t> layers() {
    std::vector<int64_t> all(80);
    for (int64_t i = 0; i < 80; ++i)
      all[i] = i;
    std::vector<int64_t> chosen = subset(all, 0);
    chosen.resize(std::min<size_t>(chosen.size(), 6));
    return chosen;
  }

  // A random subset (at least `min_size` items) in random order.
  template <class T>
  std::vector<T> subset(std::vector<T> items, size_t min_size) {
    std::shuffle(items.begin(), items.end(), rng_);
    items.resize(static_cast<size_t>(integer(int64_t(min_size), int64_t(items.size()))));
    return items;
  }

  // Text with characters that TOML must escape, multi-byte UTF-8 and TOML syntax characters.
  std::string text(int64_t min_length, int64_t max_length) {
    static const std::vector<std::string> pieces = {
        "a", "b",  "z",  "Q",  "0",  "9",  " ",    "_",    "-", ".", "/", ":",  "#", "=", "[", "]",
        "'", "\"", "\\", "\n", "\t", "\r", "\x01", "\x7f", "é", "ü", "λ", "中", "😀", "}", "$"};
    std::string out;
    for (int64_t n = integer(min_length, max_length); n > 0; --n)
      out += pick(pieces);
    return out;
  }

  template <class Range>
  std::string pick(const Range& range) {
    const auto index = integer(0, int64_t(std::size(range)) - 1);
    return std::string(*(std::begin(range) + index));
  }

  int64_t integer(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  double real(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng_); }
  double real_open(double lo, double hi) {
    double value = real(lo, hi);
    return value > lo ? value : (lo + hi) / 2;
  }
  bool coin() { return std::bernoulli_distribution(0.5)(rng_); }

  std::mt19937_64 rng_;
};

TEST(RoundTrip, RandomSpecs) {
  RandomSpecs random(7);
  for (int i = 0; i < 300; ++i) {
    const ExperimentSpec spec = random.next();
    const std::vector<Error> errors = validate(spec);
    ASSERT_TRUE(errors.empty()) << "generator made an invalid spec: " << errors[0].to_string()
                                << "\n"
                                << to_toml(spec);
    expect_round_trip(spec, "random spec " + std::to_string(i));
  }
}

}  // namespace
}  // namespace hl
