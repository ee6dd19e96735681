#include <iostream>

#include "app/cli/arg_parser.hpp"
#include "app/cli/commands.hpp"
#include "core/config/experiment_file.hpp"

namespace hl::cli {

int cmd_validate(const Args& args) {
  ArgParser parser("validate",
                   "Check an experiment file. Prints the resolved experiment (every field, "
                   "defaults filled in) or every error as FILE:LINE: KEY: MESSAGE.");
  parser.positional("EXP.toml", "the experiment file")
      .flag("--quiet", "print nothing when the file is valid");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);

  ExperimentParse parsed = load_experiment_file(parser.get("EXP.toml"));
  if (!parsed.ok()) {
    for (const auto& error : parsed.errors) std::cerr << "error: " << error.to_string() << "\n";
    return kExitBadInput;
  }
  if (!parser.flag_set("--quiet")) std::cout << to_toml(*parsed.spec);
  return kExitOk;
}

}  // namespace hl::cli
