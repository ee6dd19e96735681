// The subcommands of hybridlab-cli. Each takes the arguments after its own name and
// returns the process exit code (see kExit*).
#pragma once

#include <string>
#include <vector>

namespace hl::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitInternal = 1;
inline constexpr int kExitBadInput = 2;
inline constexpr int kExitCancelled = 130;

using Args = std::vector<std::string>;

int cmd_validate(const Args& args);
int cmd_run(const Args& args);
int cmd_pretrain(const Args& args);
int cmd_eval(const Args& args);
int cmd_generate(const Args& args);
int cmd_export(const Args& args);
int cmd_runs(const Args& args);
int cmd_bench(const Args& args);
int cmd_demo(const Args& args);

}  // namespace hl::cli
