// validate() on specs built in code, as the GUI editor does: keys are dotted paths and the
// sentences match what the parser reports for the same problem in a file.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "config_test_support.hpp"
#include "core/config/experiment_file.hpp"

namespace hl {
namespace {

ExperimentSpec valid_spec() {
  ExperimentSpec spec;
  spec.model.base = "models/tiny-base";
  spec.stages.push_back(default_stage("attention_transfer"));
  spec.stages.push_back(default_stage("lora_finetune"));
  return spec;
}

std::vector<std::string> keys_of(const std::vector<Error>& errors) {
  std::vector<std::string> keys;
  for (const Error& error : errors)
    keys.push_back(error.where.key);
  return keys;
}

TEST(Validate, ValidSpecHasNoErrors) {
  EXPECT_TRUE(validate(valid_spec()).empty());
}

TEST(Validate, ErrorsHaveDottedKeysAndNoFile) {
  ExperimentSpec spec = valid_spec();
  spec.stages[1].ssd = SsdSpec{};
  spec.stages[1].ssd->granularity = "token";
  spec.attention.softmax_layers = {2, -1};
  const std::vector<Error> errors = validate(spec);
  EXPECT_EQ(keys_of(errors),
            (std::vector<std::string>{"attention.softmax_layers[1]", "stage[1].ssd.granularity"}));
  for (const Error& error : errors) {
    EXPECT_TRUE(error.where.file.empty());
    EXPECT_EQ(error.where.line, 0);
  }
}

TEST(Validate, OptionsOfTheOtherStageKindMustStayAtTheirDefaults) {
  ExperimentSpec spec = valid_spec();
  spec.stages[0].lora.rank = 4;
  spec.stages[1].transfer.objective = "linear_output";
  const std::vector<Error> errors = validate(spec);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].to_string(), "stage[0].rank: `rank` is only valid in a lora_finetune stage");
  EXPECT_EQ(errors[1].to_string(),
            "stage[1].objective: `objective` is only valid in an attention_transfer stage");
}

TEST(Validate, SchedulesWithBothFormsOrEmptyAreRejected) {
  ExperimentSpec spec = valid_spec();
  SsdSpec ssd;
  ssd.swa_dropout.points = {{0, 0.5}};  // values are also set by default
  ssd.window = Schedule{};
  spec.stages[0].ssd = ssd;
  const std::vector<Error> errors = validate(spec);
  EXPECT_EQ(keys_of(errors),
            (std::vector<std::string>{"stage[0].ssd.swa_dropout", "stage[0].ssd.window"}));
}

TEST(Validate, AutocastNeedsCudaAndFloat32Weights) {
  ExperimentSpec spec = valid_spec();
  spec.model.autocast = "bfloat16";
  EXPECT_TRUE(validate(spec).empty());  // device auto: checked when the run picks its device
  spec.model.device = "cpu";
  spec.model.dtype = "bfloat16";
  std::vector<Error> errors = validate(spec);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].to_string(),
            "model.autocast: runs on CUDA only, but model.device is \"cpu\"");
  EXPECT_EQ(errors[1].to_string(),
            "model.autocast: needs model.dtype = \"float32\" (the fp32 master weights), but it "
            "is \"bfloat16\"");
  spec.model.autocast = "fp8";
  EXPECT_EQ(keys_of(validate(spec)), (std::vector<std::string>{"model.autocast"}));
}

TEST(Validate, NonFiniteNumbersAreRejected) {
  ExperimentSpec spec = valid_spec();
  spec.stages[0].lr = std::numeric_limits<double>::infinity();
  spec.data.passkey_weight = std::nan("");
  EXPECT_EQ(keys_of(validate(spec)),
            (std::vector<std::string>{"data.passkey_weight", "stage[0].lr"}));
}

TEST(Validate, InvalidUtf8InStringsIsRejected) {
  ExperimentSpec spec = valid_spec();
  spec.description = "caf\xe9";
  const std::vector<Error> errors = validate(spec);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].to_string(), "description: is not valid UTF-8 (bad byte at offset 3)");
}

TEST(Validate, ParserAndValidatorGiveTheSameSentence) {
  ExperimentSpec spec = valid_spec();
  spec.attention.window = 0;
  const std::vector<Error> direct = validate(spec);
  ASSERT_EQ(direct.size(), 1u);

  const ExperimentParse parse = parse_experiment(
      "[model]\nbase = \"m\"\n[attention]\nwindow = 0\n[[stage]]\nkind = \"lora_finetune\"\n",
      "exp.toml");
  ASSERT_EQ(parse.errors.size(), 1u);
  EXPECT_EQ(parse.errors[0].message, direct[0].message);
  EXPECT_EQ(parse.errors[0].to_string(), "exp.toml:4: attention.window: " + direct[0].message);
}

TEST(Validate, MissingKeysPointAtTheirEnclosingTable) {
  // A combination error sits on the line of the key it names (mse_factor, line 6)...
  const ExperimentParse parse = parse_experiment(
      "[model]\nbase = \"m\"\n\n[[stage]]\nkind = \"attention_transfer\"\n"
      "mse_factor = 0\nxent_factor = 0\n",
      "exp.toml");
  ASSERT_EQ(parse.errors.size(), 1u);
  EXPECT_EQ(parse.errors[0].where.line, 6);

  // ...and an error about a key the file lacks sits on its enclosing table's header.
  const ExperimentParse missing =
      parse_experiment("name = \"x\"\n\n[model]\n\n[[stage]]\nkind = \"lora_finetune\"\n", "e");
  ASSERT_EQ(missing.errors.size(), 1u);
  EXPECT_EQ(missing.errors[0].where.key, "model.base");
  EXPECT_EQ(missing.errors[0].where.line, 3);  // the [model] header
}

TEST(Validate, ChoiceListsMatchTheContract) {
  EXPECT_EQ(choices::kFeatureMaps.size(), 7u);
  EXPECT_EQ(choices::kEvalModes.back(), "none");
  EXPECT_EQ(choices::kLoraTargets[4], "gate");
}

}  // namespace
}  // namespace hl
