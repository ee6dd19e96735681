// hybridlab-cli run as a user runs it, for the CLI tests: a real process through the shell.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "test_paths.hpp"

namespace hl::test {

struct CliOutcome {
  int status = -1;
  std::string output;  ///< stdout and stderr together
};

/// Runs `hybridlab-cli ARGUMENTS` (shell words) and waits for it.
inline CliOutcome run_cli(const std::string& arguments) {
  std::string command = kBinaryDir;  // appended piece by piece: GCC 12 at -O1 misreads a + chain
  command.append("/app/hybridlab-cli ").append(arguments).append(" 2>&1");
  CliOutcome outcome;
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  if (!pipe) return outcome;
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    outcome.output.append(buffer.data(), n);
  const int raw = pclose(pipe);
  outcome.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return outcome;
}

}  // namespace hl::test
