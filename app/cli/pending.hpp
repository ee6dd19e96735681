// Subcommands whose engine has not landed yet answer with this (exit 1), after parsing
// their arguments for real so that --help and bad flags already behave.
#pragma once

#include <iostream>
#include <string>

#include "app/cli/commands.hpp"

namespace hl::cli {

/// Reports that `command` needs the work tracked in `issue`; returns kExitInternal.
inline int not_available_yet(const std::string& command, const std::string& issue) {
  std::cerr << "hybridlab-cli " << command << ": not available yet (" << issue << ")\n";
  return kExitInternal;
}

}  // namespace hl::cli
