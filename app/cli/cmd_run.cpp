#include "app/cli/arg_parser.hpp"
#include "app/cli/pending.hpp"

namespace hl::cli {

int cmd_run(const Args& args) {
  ArgParser parser("run", "Run an experiment file: conversion stages, then its [eval] section.");
  parser.positional("EXP.toml", "the experiment file")
      .option("--db", "DB", "runs database (default: $XDG_DATA_HOME/hybridlab/runs.sqlite)")
      .option("--device", "cpu|cuda", "override the experiment's model.device")
      .option("--progress", "json|bar|none", "progress output on stdout", "bar")
      .option("--resume", "RUN", "continue RUN (id, uuid prefix or name) from its checkpoint");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  return not_available_yet("run", "conversion engine, issue 6");
}

}  // namespace hl::cli
