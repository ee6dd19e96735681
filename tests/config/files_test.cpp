// Experiment files on disk: the bad-file corpus with its expected messages, unreadable paths,
// and good files using the less common TOML forms.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "config_test_support.hpp"
#include "core/config/experiment_file.hpp"
#include "test_paths.hpp"

namespace hl {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() {
  return fs::path(test::kDataDir) / "config";
}

std::vector<std::string> read_lines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

// Each bad/NAME.toml has bad/NAME.expected: one line per error that must be reported (a
// substring of the error's "file:line: key: message" form). Files named many_* must report
// exactly those errors, showing that all errors are collected, not only the first.
TEST(BadFiles, EachReportsItsExpectedErrors) {
  int files = 0;
  for (const auto& entry : fs::directory_iterator(data_dir() / "bad")) {
    const fs::path path = entry.path();
    if (path.extension() != ".toml") continue;
    ++files;
    SCOPED_TRACE(path.filename().string());
    fs::path expected_path = path;
    expected_path.replace_extension(".expected");
    ASSERT_TRUE(fs::exists(expected_path)) << "no sidecar " << expected_path;
    const std::vector<std::string> expected = read_lines(expected_path);
    ASSERT_FALSE(expected.empty());

    const ExperimentParse parse = load_experiment_file(path.string());
    EXPECT_FALSE(parse.ok());
    EXPECT_FALSE(parse.spec.has_value());
    ASSERT_FALSE(parse.errors.empty());
    std::vector<std::string> lines;
    for (const Error& error : parse.errors) {
      lines.push_back(error.to_string());
      EXPECT_EQ(lines.back().find('\n'), std::string::npos) << "error spans lines";
      EXPECT_EQ(error.where.file, path.string());
      EXPECT_FALSE(error.message.empty());
    }
    for (const std::string& want : expected) {
      const bool found = std::any_of(lines.begin(), lines.end(), [&](const std::string& line) {
        return line.find(want) != std::string::npos;
      });
      EXPECT_TRUE(found) << "expected: " << want << "\ngot:\n" << test::error_lines(parse);
    }
    if (path.filename().string().starts_with("many_")) {
      EXPECT_EQ(parse.errors.size(), expected.size()) << test::error_lines(parse);
    }
    // Errors come in file order.
    EXPECT_TRUE(
        std::is_sorted(parse.errors.begin(), parse.errors.end(),
                       [](const Error& a, const Error& b) { return a.where.line < b.where.line; }));
  }
  EXPECT_GE(files, 20);
}

TEST(BadFiles, KeyErrorsCarryALineAndAKey) {
  // Only whole-file problems (empty, unreadable) may lack a line or key.
  for (const auto& entry : fs::directory_iterator(data_dir() / "bad")) {
    if (entry.path().extension() != ".toml") continue;
    const ExperimentParse parse = load_experiment_file(entry.path().string());
    for (const Error& error : parse.errors) {
      if (error.where.key.empty()) continue;
      EXPECT_GT(error.where.line, 0) << error.to_string();
    }
  }
}

TEST(UnreadableFiles, MissingFile) {
  const std::string path = (data_dir() / "no_such_file.toml").string();
  const ExperimentParse parse = load_experiment_file(path);
  ASSERT_EQ(parse.errors.size(), 1u);
  EXPECT_EQ(parse.errors[0].to_string(),
            path + ": cannot read the file: no such file or directory");
}

TEST(UnreadableFiles, Directory) {
  const std::string path = (data_dir() / "good").string();
  const ExperimentParse parse = load_experiment_file(path);
  ASSERT_EQ(parse.errors.size(), 1u);
  EXPECT_EQ(parse.errors[0].to_string(), path + ": is a directory, not an experiment file");
}

TEST(UnreadableFiles, TooLarge) {
  const fs::path path =
      fs::temp_directory_path() / ("hl_config_large_" + std::to_string(::getpid()) + ".toml");
  {
    std::ofstream out(path, std::ios::binary);
    const std::string line = "# padding padding padding padding padding padding padding\n";
    for (size_t written = 0; written <= (17u << 20); written += line.size())
      out << line;
  }
  const ExperimentParse parse = load_experiment_file(path.string());
  fs::remove(path);
  ASSERT_EQ(parse.errors.size(), 1u);
  EXPECT_NE(parse.errors[0].message.find("too large"), std::string::npos)
      << parse.errors[0].to_string();
}

ExperimentSpec load_good(const std::string& name) {
  const ExperimentParse parse = load_experiment_file((data_dir() / "good" / name).string());
  EXPECT_TRUE(parse.ok()) << test::error_lines(parse);
  return parse.spec.value_or(ExperimentSpec{});
}

TEST(GoodFiles, DottedKeysAndInlineTables) {
  const ExperimentSpec spec = load_good("dotted_keys.toml");
  EXPECT_EQ(spec.name, "dotted");
  EXPECT_EQ(spec.model.base, "models/tiny-base");
  EXPECT_EQ(spec.model.dtype, "bfloat16");
  EXPECT_EQ(spec.attention.window, 32);
  EXPECT_EQ(spec.eval.modes, (std::vector<std::string>{"hybrid", "linear_only"}));
  ASSERT_EQ(spec.stages.size(), 1u);
  ASSERT_TRUE(spec.stages[0].ssd.has_value());
  EXPECT_EQ(spec.stages[0].ssd->granularity, "head");
  EXPECT_EQ(spec.stages[0].ssd->swa_dropout.values, std::vector<double>{0.5});
}

TEST(GoodFiles, SsdPointSchedulesInASubTable) {
  const ExperimentSpec spec = load_good("ssd_points_subtable.toml");
  ASSERT_EQ(spec.stages.size(), 2u);
  const SsdSpec& first = spec.stages[0].ssd.value();
  EXPECT_EQ(first.swa_dropout.points,
            (std::vector<SchedulePoint>{{0, 0.9}, {40, 0.75}, {80, 0.5}}));
  EXPECT_TRUE(first.swa_dropout.values.empty());
  ASSERT_TRUE(first.window.has_value());
  EXPECT_EQ(first.window->points, (std::vector<SchedulePoint>{{0, 16}, {50, 32}}));
  EXPECT_EQ(first.granularity, "sequence");
  EXPECT_EQ(schedule_value(first.swa_dropout, 39, 100), 0.9);
  EXPECT_EQ(schedule_value(first.swa_dropout, 40, 100), 0.75);
  EXPECT_EQ(schedule_value(*first.window, 99, 100), 32);

  const StageSpec& lora = spec.stages[1];
  EXPECT_EQ(lora.name, "lora with a window list");
  EXPECT_EQ(lora.ssd->swa_dropout.values, (std::vector<double>{1, 0.5, 0}));
  EXPECT_EQ(lora.ssd->window->values, (std::vector<double>{8, 16}));
  EXPECT_EQ(lora.ssd->granularity, "layer");
}

TEST(GoodFiles, NumbersAndStrings) {
  const ExperimentSpec spec = load_good("numbers_and_strings.toml");
  EXPECT_EQ(spec.name, "literal \"quoted\" name");
  EXPECT_EQ(spec.seed, 1000);
  EXPECT_EQ(spec.description, "two\nlines");
  EXPECT_EQ(spec.model.base, "C:\\models\\tiny");
  EXPECT_EQ(spec.data.val_fraction, 0.0);
  EXPECT_EQ(spec.data.passkey_weight, 1.0);
  EXPECT_EQ(spec.data.mqar_weight, 0.25);
  EXPECT_EQ(spec.data.max_train_tokens, 10'000'000);
  const StageSpec& stage = spec.stages.at(0);
  EXPECT_EQ(stage.lr, 3e-4);
  EXPECT_EQ(stage.lora.alpha, 32.0);
  EXPECT_EQ(stage.lora.dropout, 0.05);
  EXPECT_EQ(stage.lora.layers, (std::vector<int64_t>{3, 1, 2}));
  EXPECT_EQ(stage.lora.targets, (std::vector<std::string>{"gate", "up", "down"}));
}

TEST(GoodFiles, ByteOrderMarkAndCrlf) {
  const ExperimentSpec spec = load_good("bom_crlf.toml");
  EXPECT_EQ(spec.model.base, "models/tiny-base");
  EXPECT_EQ(spec.stages.at(0).steps, 12);
}

TEST(GoodFiles, EveryGoodFileRoundTrips) {
  for (const auto& entry : fs::directory_iterator(data_dir() / "good")) {
    const ExperimentSpec spec = load_good(entry.path().filename().string());
    const ExperimentParse again = parse_experiment(to_toml(spec), "written.toml");
    ASSERT_TRUE(again.ok()) << test::error_lines(again);
    EXPECT_TRUE(*again.spec == spec) << entry.path();
  }
}

}  // namespace
}  // namespace hl
