// Every default, checked against the documented literal values (not against the struct's own
// initialisers, which would make the test unable to fail).
#include <gtest/gtest.h>

#include "config_test_support.hpp"
#include "core/config/experiment_file.hpp"

namespace hl {
namespace {

using Strings = std::vector<std::string>;
using Ints = std::vector<int64_t>;

constexpr std::string_view kBothStages = R"(
[model]
base = "models/tiny-base"

[[stage]]
kind = "attention_transfer"

[[stage]]
kind = "lora_finetune"
)";

TEST(Defaults, TopLevelModelDataAttentionEval) {
  const ExperimentSpec spec = test::parse_valid(kBothStages);
  EXPECT_EQ(spec.name, "experiment");
  EXPECT_EQ(spec.seed, 0);
  EXPECT_EQ(spec.description, "");

  EXPECT_EQ(spec.model.base, "models/tiny-base");
  EXPECT_EQ(spec.model.dtype, "float32");
  EXPECT_EQ(spec.model.device, "auto");

  EXPECT_EQ(spec.data.train, Strings{"builtin:fortunes"});
  EXPECT_EQ(spec.data.val, Strings{});
  EXPECT_EQ(spec.data.format, "auto");
  EXPECT_EQ(spec.data.text_field, "text");
  for (const char* placeholder : {"{instruction}", "{input}", "{output}"})
    EXPECT_NE(spec.data.prompt_template.find(placeholder), std::string::npos) << placeholder;
  // The response follows the instruction and input.
  EXPECT_LT(spec.data.prompt_template.find("{input}"), spec.data.prompt_template.find("{output}"));
  EXPECT_EQ(spec.data.seq_len, 256);
  EXPECT_EQ(spec.data.batch_size, 8);
  EXPECT_EQ(spec.data.val_fraction, 0.05);
  EXPECT_EQ(spec.data.passkey_weight, 0.0);
  EXPECT_EQ(spec.data.mqar_weight, 0.0);
  EXPECT_EQ(spec.data.max_train_tokens, 0);

  EXPECT_EQ(spec.attention.kind, "hybrid");
  EXPECT_EQ(spec.attention.window, 64);
  EXPECT_FALSE(spec.attention.overlap);
  EXPECT_EQ(spec.attention.feature_map, "hedgehog");
  EXPECT_EQ(spec.attention.feature_dim, 64);
  EXPECT_EQ(spec.attention.feature_init, "identity");
  EXPECT_EQ(spec.attention.window_factor_init, 0.1);
  EXPECT_FALSE(spec.attention.affine_factors);
  EXPECT_EQ(spec.attention.softmax_layers, Ints{});
  EXPECT_EQ(spec.attention.sinks, 8);

  EXPECT_EQ(spec.eval.tasks, Strings{"ppl"});
  EXPECT_EQ(spec.eval.modes, Strings{"hybrid"});
  EXPECT_EQ(spec.eval.seq_len, 0);
  EXPECT_EQ(spec.eval.max_batches, 16);
  EXPECT_EQ(spec.eval.distances, (Ints{16, 32, 64, 128, 256}));
  EXPECT_FALSE(spec.eval.layer_ablation);
}

void expect_common_stage_defaults(const StageSpec& stage) {
  EXPECT_EQ(stage.steps, 400);
  EXPECT_EQ(stage.weight_decay, 0.0);
  EXPECT_EQ(stage.warmup_steps, 0);
  EXPECT_EQ(stage.plateau_factor, 0.1);
  EXPECT_EQ(stage.plateau_patience, 10);
  EXPECT_EQ(stage.grad_accum, 1);
  EXPECT_EQ(stage.max_grad_norm, 1.0);
  EXPECT_EQ(stage.log_every, 10);
  EXPECT_EQ(stage.usage_every, 50);
  EXPECT_EQ(stage.eval_every, 100);
  EXPECT_EQ(stage.eval_batches, 8);
  EXPECT_EQ(stage.early_stop_patience, 0);
  EXPECT_EQ(stage.checkpoint_every, 100);
  EXPECT_EQ(stage.train_mode, "hybrid");
  EXPECT_FALSE(stage.ssd.has_value());
}

TEST(Defaults, AttentionTransferStage) {
  const ExperimentSpec spec = test::parse_valid(kBothStages);
  ASSERT_EQ(spec.stages.size(), 2u);
  const StageSpec& stage = spec.stages[0];
  EXPECT_EQ(stage.kind, "attention_transfer");
  EXPECT_EQ(stage.name, "attention_transfer");
  EXPECT_EQ(stage.lr, 1e-2);
  EXPECT_EQ(stage.lr_schedule, "plateau");
  expect_common_stage_defaults(stage);
  EXPECT_EQ(stage.transfer.objective, "hybrid_output");
  EXPECT_EQ(stage.transfer.mse_factor, 1000.0);
  EXPECT_EQ(stage.transfer.xent_factor, 0.0);
}

TEST(Defaults, LoraFinetuneStage) {
  const ExperimentSpec spec = test::parse_valid(kBothStages);
  ASSERT_EQ(spec.stages.size(), 2u);
  const StageSpec& stage = spec.stages[1];
  EXPECT_EQ(stage.kind, "lora_finetune");
  EXPECT_EQ(stage.name, "lora_finetune");
  EXPECT_EQ(stage.lr, 1e-4);
  EXPECT_EQ(stage.lr_schedule, "constant");
  expect_common_stage_defaults(stage);
  EXPECT_EQ(stage.lora.rank, 8);
  EXPECT_EQ(stage.lora.alpha, 16.0);
  EXPECT_EQ(stage.lora.dropout, 0.0);
  EXPECT_EQ(stage.lora.targets, (Strings{"q", "k", "v", "o"}));
  EXPECT_EQ(stage.lora.layers, Ints{});
  EXPECT_FALSE(stage.lora.train_feature_maps);
}

TEST(Defaults, AttentionWeightsObjectiveTransfersByCrossEntropyOnly) {
  const ExperimentSpec spec = test::parse_valid(R"(
[model]
base = "m"
[[stage]]
kind = "attention_transfer"
objective = "attention_weights"
)");
  ASSERT_EQ(spec.stages.size(), 1u);
  EXPECT_EQ(spec.stages[0].transfer.xent_factor, 1.0);
  EXPECT_EQ(spec.stages[0].transfer.mse_factor, 0.0);
  EXPECT_EQ(spec.stages[0].train_mode, "linear_only");
}

TEST(Defaults, ExplicitFactorsOverrideTheObjectiveDefaults) {
  const ExperimentSpec spec = test::parse_valid(R"(
[model]
base = "m"
[[stage]]
kind = "attention_transfer"
objective = "attention_weights"
mse_factor = 10
xent_factor = 2.5
)");
  EXPECT_EQ(spec.stages[0].transfer.mse_factor, 10.0);
  EXPECT_EQ(spec.stages[0].transfer.xent_factor, 2.5);
}

TEST(Defaults, LinearOutputObjectiveTrainsALinearOnlyStudent) {
  const ExperimentSpec spec = test::parse_valid(R"(
[model]
base = "m"
[[stage]]
kind = "attention_transfer"
objective = "linear_output"
)");
  EXPECT_EQ(spec.stages[0].train_mode, "linear_only");
  EXPECT_EQ(spec.stages[0].transfer.mse_factor, 1000.0);
  EXPECT_EQ(spec.stages[0].transfer.xent_factor, 0.0);
}

TEST(Defaults, SsdTableWithoutKeysGetsTheDefaultSchedule) {
  const ExperimentSpec spec = test::parse_valid(R"(
[model]
base = "m"
[[stage]]
kind = "attention_transfer"
ssd = {}
)");
  ASSERT_TRUE(spec.stages[0].ssd.has_value());
  const SsdSpec& ssd = *spec.stages[0].ssd;
  EXPECT_EQ(ssd.swa_dropout.values, (std::vector<double>{0.9, 0.75, 0.5}));
  EXPECT_TRUE(ssd.swa_dropout.points.empty());
  EXPECT_FALSE(ssd.window.has_value());
  EXPECT_EQ(ssd.granularity, "layer");
}

TEST(Defaults, StageNameDefaultsToItsKind) {
  const ExperimentSpec spec = test::parse_valid(R"(
[model]
base = "m"
[[stage]]
kind = "lora_finetune"
[[stage]]
kind = "lora_finetune"
name = "second pass"
)");
  EXPECT_EQ(spec.stages[0].name, "lora_finetune");
  EXPECT_EQ(spec.stages[1].name, "second pass");
}

TEST(Defaults, DefaultStageHelperMatchesTheParser) {
  const ExperimentSpec spec = test::parse_valid(kBothStages);
  EXPECT_EQ(spec.stages[0], default_stage("attention_transfer"));
  EXPECT_EQ(spec.stages[1], default_stage("lora_finetune"));
}

TEST(Defaults, DefaultConstructedSpecLacksOnlyBaseAndStages) {
  const std::vector<Error> errors = validate(ExperimentSpec{});
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].where.key, "model.base");
  EXPECT_EQ(errors[1].where.key, "stage");
  EXPECT_EQ(errors[1].message, "at least one [[stage]] is required");
}

}  // namespace
}  // namespace hl
