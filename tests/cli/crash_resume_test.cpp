// A run killed with SIGKILL in the middle of training (no chance to clean up) leaves a
// consistent database and a checkpoint, and `run --resume` finishes it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>

#include "core/store/run_reader.hpp"
#include "core/util/paths.hpp"
#include "test_paths.hpp"

namespace hl {
namespace {

namespace fs = std::filesystem;

const std::string kCli = std::string(test::kBinaryDir) + "/app/hybridlab-cli";

// Runs the CLI with stdout and stderr into `log`; returns the child's pid.
pid_t spawn(const std::vector<std::string>& arguments, const fs::path& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    FILE* out = std::freopen(log.c_str(), "w", stdout);
    if (out) dup2(fileno(stdout), fileno(stderr));
    std::vector<char*> argv{const_cast<char*>(kCli.c_str())};
    for (const auto& a : arguments)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(kCli.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

int wait_exit_code(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

TEST(CrashResume, KillNineMidRunThenResumeCompletes) {
  const fs::path dir = fs::temp_directory_path() / ("hl_crash_" + std::to_string(::getpid()));
  hl::remove_tree(dir);
  fs::create_directories(dir);
  // A real (briefly) pretrained base model with its tokenizer.
  const pid_t pretrain = spawn({"pretrain", "--preset", "tiny", "--steps", "2", "--out",
                                (dir / "base").string(), "--progress", "none"},
                               dir / "pretrain.log");
  ASSERT_EQ(wait_exit_code(pretrain), 0) << read_file(dir / "pretrain.log");

  std::ofstream(dir / "exp.toml") << "name = \"crash\"\n[model]\nbase = \""
                                  << (dir / "base").string()
                                  << "\"\n[data]\nseq_len = 48\nbatch_size = 2\n"
                                     "[attention]\nwindow = 8\nfeature_dim = 16\n"
                                     "[[stage]]\nkind = \"attention_transfer\"\nsteps = 100\n"
                                     "log_every = 1\ncheckpoint_every = 5\neval_every = 1000\n"
                                     "[eval]\ntasks = [\"ppl\"]\nmodes = [\"hybrid\"]\n"
                                     "max_batches = 1\n";
  const std::string db = (dir / "runs.sqlite").string();
  const pid_t run = spawn({"run", (dir / "exp.toml").string(), "--db", db, "--progress", "json"},
                          dir / "run.log");
  // Kill it without warning once a few checkpoints exist, in the middle of training.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  bool checkpointed = false;
  while (!checkpointed && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    checkpointed = read_file(dir / "run.log").find("\"step\":20,") != std::string::npos;
  }
  ASSERT_TRUE(checkpointed) << read_file(dir / "run.log");
  kill(run, SIGKILL);
  ASSERT_EQ(wait_exit_code(run), -SIGKILL) << "the run ended before it could be killed";

  {
    auto reader = store::RunReader::open(db);
    ASSERT_TRUE(reader.ok()) << reader.error().to_string();
    EXPECT_TRUE(reader->check_integrity().ok());
    auto runs = reader->list_runs();
    ASSERT_TRUE(runs.ok());
    ASSERT_EQ(runs->size(), 1u);
    EXPECT_EQ(runs->front().info.status, store::RunStatus::running);  // it never got to say more
  }

  const pid_t resumed =
      spawn({"run", "--resume", "crash", "--db", db, "--progress", "none"}, dir / "resume.log");
  ASSERT_EQ(wait_exit_code(resumed), 0) << read_file(dir / "resume.log");
  auto reader = store::RunReader::open(db);
  ASSERT_TRUE(reader.ok());
  auto runs = reader->list_runs();
  ASSERT_TRUE(runs.ok());
  int named_crash = 0;
  for (const auto& entry : *runs)
    named_crash += entry.info.name == "crash";
  EXPECT_EQ(named_crash, 1);  // the same run continued; no second one was started
  auto id = reader->find_run("crash");
  ASSERT_TRUE(id.ok()) << id.error().to_string();
  EXPECT_EQ(reader->run(*id)->status, store::RunStatus::completed);
  auto losses = reader->scalars_after(*id, "loss", -1);
  ASSERT_TRUE(losses.ok());
  std::set<int64_t> steps;
  for (const auto& point : *losses)
    steps.insert(point.step);
  EXPECT_EQ(steps.size(), 100u);  // every step logged once, the replayed ones replaced
  EXPECT_EQ(*steps.begin(), 0);
  EXPECT_EQ(*steps.rbegin(), 99);
  hl::remove_tree(dir);
}

}  // namespace
}  // namespace hl
