// `eval` and `generate` as a user runs them: exit status and messages on bad input, and a
// real evaluation recorded in a real store.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/io/tokenizer.hpp"
#include "core/model/model_io.hpp"
#include "core/store/run_reader.hpp"
#include "core/util/paths.hpp"
#include "test_paths.hpp"
#include "tiny_model.hpp"

namespace {

namespace fs = std::filesystem;

struct Outcome {
  int status = -1;
  std::string out, err;
};

Outcome run_cli(const std::string& arguments, const fs::path& dir) {
  const std::string err_file = (dir / "stderr.txt").string();
  const std::string command =
      std::string(hl::test::kBinaryDir) + "/app/hybridlab-cli " + arguments + " 2>" + err_file;
  Outcome outcome;
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    outcome.out.append(buffer.data(), n);
  const int raw = pclose(pipe);
  outcome.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream in(err_file);
  outcome.err.assign(std::istreambuf_iterator<char>(in), {});
  return outcome;
}

class EvalGenerateCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hl_cli_eval_" + std::to_string(::getpid()));
    hl::remove_tree(dir_);
    fs::create_directories(dir_);
    hl::io::ModelConfig config = hl::testing::tiny_model_config(259, 128);
    config.tie_word_embeddings = true;
    config.eos_token_ids = {257};
    torch::manual_seed(0);
    hl::model::CausalLM model(config);
    model->convert({});
    ASSERT_TRUE(hl::model::save_model(model, dir_ / "model").ok());
    ASSERT_TRUE(hl::io::save_tokenizer(dir_ / "model", hl::io::byte_tokenizer_json()).ok());
    model_ = (dir_ / "model").string();
    db_ = (dir_ / "runs.sqlite").string();
  }
  void TearDown() override { hl::remove_tree(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
    return (dir_ / name).string();
  }
  Outcome eval(const std::string& arguments) {
    return run_cli("eval --model " + model_ + " --db " + db_ + " --progress none " + arguments,
                   dir_);
  }

  fs::path dir_;
  std::string model_, db_;
};

TEST_F(EvalGenerateCli, BadTaskInputExitsTwoWithAClearMessage) {
  Outcome empty = eval("--tasks mc:" + write("empty.jsonl", ""));
  EXPECT_EQ(empty.status, 2) << empty.err;
  EXPECT_NE(empty.err.find("empty.jsonl"), std::string::npos) << empty.err;
  EXPECT_NE(empty.err.find("the task file is empty"), std::string::npos) << empty.err;

  Outcome unknown = eval("--tasks ppl,lambada");
  EXPECT_EQ(unknown.status, 2);
  EXPECT_NE(unknown.err.find("unknown task 'lambada'"), std::string::npos) << unknown.err;

  const std::string bad =
      write("bad.jsonl",
            "{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"gold\": 0}\n"
            "{\"context\": \"a\", \"choices\": \n"
            "{\"context\": \"x\", \"choices\": [\" y\", \" z\"], \"gold\": 1}\n");
  Outcome fatal = eval("--tasks mc:" + bad);
  EXPECT_EQ(fatal.status, 2);
  EXPECT_NE(fatal.err.find("bad.jsonl:2:"), std::string::npos) << fatal.err;
  Outcome skipped = eval("--tasks mc:" + bad + " --skip-malformed --json --no-base");
  EXPECT_EQ(skipped.status, 0) << skipped.err;
  EXPECT_NE(skipped.err.find("bad.jsonl:2:"), std::string::npos) << skipped.err;
  auto doc = nlohmann::json::parse(skipped.out);
  bool found = false;
  for (const auto& row : doc["results"])
    if (row["task"] == "bad" && row["metric"] == "acc") found = row["n"] == 2;
  EXPECT_TRUE(found) << skipped.out;
}

TEST_F(EvalGenerateCli, EvalRecordsAnEvalOnlyRunAndCapsDistances) {
  Outcome outcome = eval(
      "--tasks passkey --modes hybrid,none --distances 16,4096 --samples 2 "
      "--seq-len 32 --json");
  // 4096 does not fit the 128-token context; 16 does.
  ASSERT_EQ(outcome.status, 0) << outcome.err;
  EXPECT_NE(outcome.err.find("distance 4096 skipped"), std::string::npos) << outcome.err;
  auto doc = nlohmann::json::parse(outcome.out);
  auto reader = hl::store::RunReader::open(db_);
  ASSERT_TRUE(reader.ok());
  auto evals = reader->evals({doc["run"].get<int64_t>()});
  ASSERT_TRUE(evals.ok());
  int rows = 0;
  for (const auto& row : *evals)
    if (row.task == "passkey" && row.metric == "acc@16") ++rows;
  EXPECT_EQ(rows, 2);  // hybrid and none
  auto info = reader->run(doc["run"].get<int64_t>());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->status, hl::store::RunStatus::completed);
}

TEST_F(EvalGenerateCli, GenerateChecksThePromptAndDecodes) {
  Outcome too_long = run_cli(
      "generate --model " + model_ + " --prompt " + std::string(140, 'a') + " --max-new 4", dir_);
  EXPECT_EQ(too_long.status, 2);
  EXPECT_NE(too_long.err.find("more than the model's context of 128"), std::string::npos)
      << too_long.err;
  Outcome both = run_cli("generate --prompt hi", dir_);
  EXPECT_EQ(both.status, 2);
  Outcome ok = run_cli("generate --model " + model_ + " --prompt hello --max-new 8 --stats", dir_);
  EXPECT_EQ(ok.status, 0) << ok.err;
  EXPECT_NE(ok.err.find("decode state"), std::string::npos) << ok.err;
}

}  // namespace
