#include <iostream>

#include "app/cli/arg_parser.hpp"
#include "app/cli/commands.hpp"
#include "core/run/cancellation.hpp"
#include "core/run/runner.hpp"

namespace hl::cli {

int cmd_run(const Args& args) {
  ArgParser parser("run",
                   "Run an experiment file: conversion stages, then its [eval] section. On CUDA "
                   "a stage's steps replay one captured CUDA graph where they can "
                   "(HL_STEP_GRAPH=0: every step eager).");
  parser.positional("EXP.toml", "the experiment file (not needed with --resume)", false)
      .option("--db", "DB", "runs database (default: $XDG_DATA_HOME/hybridlab/runs.sqlite)")
      .option("--device", "cpu|cuda", "override the experiment's model.device")
      .option("--progress", "json|bar|none", "progress output on stdout", "bar")
      .option("--resume", "RUN", "continue RUN (id, uuid prefix or name) from its checkpoint")
      .option("--max-steps", "N", "stop (as if cancelled) after N optimiser steps", "0");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  auto fail = [](const std::string& message) { return report_bad_input("run", message); };
  if (!parser.has("EXP.toml") && !parser.has("--resume"))
    return fail("give an experiment file, or --resume RUN");
  auto mode = parse_progress_mode(parser.get("--progress"));
  if (!mode.ok()) return fail(mode.error().message);
  auto max_steps = parse_int_arg("--max-steps", parser.get("--max-steps"), 0);
  if (!max_steps.ok()) return fail(max_steps.error().message);

  RunRequest request;
  request.experiment_path = parser.get("EXP.toml");
  request.db_path = parser.get("--db");
  request.device_override = parser.get("--device");
  request.resume = parser.get("--resume");
  request.max_steps = *max_steps;
  install_cancel_handlers();
  ProgressReporter progress(*mode, std::cout);
  RunOutcome outcome = run_experiment(request, progress, cancel_requested());
  if (outcome.exit_code == kExitBadInput) return fail(outcome.message);
  if (outcome.exit_code == kExitInternal)
    std::cerr << "error: run " << outcome.run_id << " failed: " << outcome.message << "\n";
  return outcome.exit_code;
}

}  // namespace hl::cli
