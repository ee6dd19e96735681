// `hybridlab-cli demo` as a newcomer runs it, on shortened copies of the demo experiments:
// it finds the base model, runs both conversions into the database, and prints the
// per-layer comparison; `--prepare-only` only reports the base model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "cli/cli_process.hpp"
#include "core/store/run_reader.hpp"
#include "core/util/paths.hpp"
#include "test_paths.hpp"

namespace hl {
namespace {

namespace fs = std::filesystem;

using Outcome = hl::test::CliOutcome;

using hl::test::run_cli;

// The shipped demo experiment with fewer steps and a smaller eval, base model relative to
// the experiments folder as a user's copy would have it.
void write_short_copy(const std::string& name, const fs::path& dir) {
  std::ifstream in(fs::path(test::kSourceDir) / "experiments" / name);
  std::string text{std::istreambuf_iterator<char>(in), {}};
  text = std::regex_replace(text, std::regex("steps = [0-9]+"), "steps = 4");
  text = std::regex_replace(text, std::regex("(usage|eval|log)_every = [0-9]+"), "$1_every = 2");
  text = std::regex_replace(text, std::regex("max_batches = [0-9]+"), "max_batches = 1");
  text = std::regex_replace(text, std::regex("batch_size = [0-9]+"), "batch_size = 2");
  text = std::regex_replace(text, std::regex("tasks = \\[.*\\]"), "tasks = [\"ppl\"]");
  text = std::regex_replace(text, std::regex("modes = \\[.*\\]"), "modes = [\"hybrid\"]");
  std::ofstream(dir / name) << text;
}

TEST(DemoCli, RunsBothConversionsAndPrintsTheirUsageSideBySide) {
  const fs::path dir = fs::temp_directory_path() / ("hl_demo_" + std::to_string(::getpid()));
  hl::remove_tree(dir);
  fs::create_directories(dir / "experiments");
  for (const char* name : {"demo.toml", "demo-ssd.toml"})
    write_short_copy(name, dir / "experiments");
  const std::string experiments = (dir / "experiments").string();
  const std::string db = (dir / "runs.sqlite").string();

  // No base model where demo.toml looks (models/tiny-base next to it, or in the data
  // folder, which points into the test folder): --prepare-only would pretrain for minutes,
  // so first put a briefly trained one there.
  Outcome pretrain = run_cli("pretrain --preset tiny --steps 2 --progress none --out " +
                             (dir / "experiments" / "models" / "tiny-base").string());
  ASSERT_EQ(pretrain.status, 0) << pretrain.output;
  Outcome prepare = run_cli("demo --prepare-only --experiments " + experiments);
  EXPECT_EQ(prepare.status, 0) << prepare.output;
  // The path it prints is a model directory (the one in the experiments folder, unless the
  // working directory has a models/tiny-base of its own, which comes first).
  const std::string printed = prepare.output.substr(0, prepare.output.find('\n'));
  EXPECT_TRUE(fs::exists(fs::path(printed) / "config.json")) << prepare.output;

  Outcome demo = run_cli("demo --progress none --experiments " + experiments + " --db " + db);
  ASSERT_EQ(demo.status, 0) << demo.output;
  EXPECT_NE(demo.output.find("linear-branch attention mass per layer"), std::string::npos)
      << demo.output;
  EXPECT_NE(demo.output.find("demo-ssd"), std::string::npos) << demo.output;
  auto reader = store::RunReader::open(db);
  ASSERT_TRUE(reader.ok());
  for (const char* name : {"demo", "demo-ssd"}) {
    auto id = reader->find_run(name);
    ASSERT_TRUE(id.ok()) << name;
    EXPECT_EQ(reader->run(*id)->status, store::RunStatus::completed) << name;
    auto usage = reader->layer_matrix(*id, "usage/linear_mass");
    ASSERT_TRUE(usage.ok());
    EXPECT_EQ(usage->layers.size(), 4u) << name;  // every layer of the tiny model
  }

  Outcome missing = run_cli("demo --experiments " + (dir / "nowhere").string());
  EXPECT_EQ(missing.status, 2) << missing.output;
  EXPECT_NE(missing.output.find("demo.toml"), std::string::npos) << missing.output;
  hl::remove_tree(dir);
}

}  // namespace
}  // namespace hl
