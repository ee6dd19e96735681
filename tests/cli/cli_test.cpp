// hybridlab-cli as a user runs it: a real process, its exit status and its messages.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "cli/cli_process.hpp"
#include "core/util/paths.hpp"
#include "test_paths.hpp"

namespace {

namespace fs = std::filesystem;

using Outcome = hl::test::CliOutcome;

using hl::test::run_cli;

std::string source(const std::string& relative) {
  return (fs::path(hl::test::kSourceDir) / relative).string();
}

TEST(Cli, HelpListsEveryCommandAndEachCommandHasHelp) {
  Outcome help = run_cli("--help");
  EXPECT_EQ(help.status, 0);
  for (const char* command :
       {"validate", "run", "pretrain", "eval", "generate", "export", "runs", "bench", "demo"}) {
    EXPECT_NE(help.output.find(command), std::string::npos) << command;
    Outcome sub = run_cli(std::string(command) + " --help");
    EXPECT_EQ(sub.status, 0) << command << ": " << sub.output;
    EXPECT_NE(sub.output.find("usage: hybridlab-cli " + std::string(command)), std::string::npos);
  }
}

TEST(Cli, UnknownCommandsAndOptionsExitTwoNamingTheWord) {
  Outcome unknown = run_cli("frobnicate");
  EXPECT_EQ(unknown.status, 2);
  EXPECT_NE(unknown.output.find("'frobnicate'"), std::string::npos);
  Outcome option = run_cli("validate x.toml --frob");
  EXPECT_EQ(option.status, 2);
  EXPECT_NE(option.output.find("'--frob'"), std::string::npos);
}

TEST(Cli, ValidatePrintsEveryPresetResolved) {
  for (const auto& entry : fs::directory_iterator(source("experiments"))) {
    if (entry.path().extension() != ".toml") continue;
    Outcome outcome = run_cli("validate " + entry.path().string());
    EXPECT_EQ(outcome.status, 0) << entry.path() << "\n" << outcome.output;
    EXPECT_NE(outcome.output.find("[attention]"), std::string::npos);
  }
}

TEST(Cli, ValidateRejectsBadFilesWithTheirPlace) {
  const fs::path dir = fs::temp_directory_path() / ("hl_cli_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name, std::ios::binary) << text;
    return (dir / name).string();
  };
  struct Case {
    std::string file, expected;
  } cases[] = {
      {write("empty.toml", ""), "empty.toml"},
      {write("binary.toml", std::string("name = \"a\"\0\x01\x02", 13)), "binary.toml"},
      {write("not_toml.toml", "this is [ not toml"), "not_toml.toml:1"},
      {write("wrong_type.toml",
             "[model]\nbase = \"m\"\n[attention]\nwindow = \"big\"\n"
             "[[stage]]\nkind = \"attention_transfer\"\n"),
       "wrong_type.toml:4: attention.window"},
      {write("unknown_key.toml",
             "[model]\nbase = \"m\"\nbsae = 1\n[[stage]]\n"
             "kind = \"attention_transfer\"\n"),
       "unknown_key.toml:3: model.bsae"},
      {(dir / "missing.toml").string(), "missing.toml"},
  };
  for (const auto& c : cases) {
    Outcome outcome = run_cli("validate " + c.file);
    EXPECT_EQ(outcome.status, 2) << c.file << "\n" << outcome.output;
    EXPECT_NE(outcome.output.find(c.expected), std::string::npos) << outcome.output;
    EXPECT_EQ(outcome.output.rfind("error: ", 0), 0u) << outcome.output;
  }
  hl::remove_tree(dir);
}

TEST(Cli, RunRejectsAMissingBaseModelBeforeRecordingAnything) {
  const fs::path dir = fs::temp_directory_path() / ("hl_cli_run_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "exp.toml") << "[model]\nbase = \"" << (dir / "absent").string()
                                  << "\"\n[[stage]]\nkind = \"attention_transfer\"\n";
  Outcome outcome = run_cli("run " + (dir / "exp.toml").string() + " --db " +
                            (dir / "runs.sqlite").string() + " --progress none");
  EXPECT_EQ(outcome.status, 2) << outcome.output;
  EXPECT_NE(outcome.output.find("model.base"), std::string::npos) << outcome.output;
  Outcome list = run_cli("runs list --db " + (dir / "runs.sqlite").string());
  EXPECT_EQ(list.status, 2) << list.output;  // no database was created
  hl::remove_tree(dir);
}

TEST(Cli, BenchAttentionTimesEachCpuBackendWithPhiGivenAndWithMaps) {
  Outcome bench = run_cli("bench attention --seq 96 --repeats 1");
  ASSERT_EQ(bench.status, 0) << bench.output;
  for (const char* backend : {"reference", "chunked"}) {
    for (const char* phi : {"given", "hedgehog"}) {
      const std::string row = "      96  " + std::string(backend);
      size_t at = bench.output.find(row);
      bool found = false;
      for (; at != std::string::npos && !found; at = bench.output.find(row, at + 1)) {
        const std::string line = bench.output.substr(at, bench.output.find('\n', at) - at);
        char name[32], kind[32];
        double forward = 0, both = 0;
        found =
            std::sscanf(line.c_str(), " 96 %31s %31s %lf %lf", name, kind, &forward, &both) == 4 &&
            std::string(kind) == phi && forward > 0 && both > 0;
      }
      EXPECT_TRUE(found) << backend << " " << phi << "\n" << bench.output;
    }
  }
  Outcome bad = run_cli("bench attention --seq 0");
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.output.find("--seq"), std::string::npos) << bad.output;
}

}  // namespace
