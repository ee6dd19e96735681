// Runs an experiment end to end: checks its inputs, records the run in the store, converts
// the base model, trains each stage (with checkpoints, cancellation and resume), evaluates,
// and leaves the converted model next to the checkpoints.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <string>

#include "core/run/progress.hpp"
#include "core/util/error.hpp"

namespace hl {

/// What `hybridlab-cli run` was asked to do.
struct RunRequest {
  std::string experiment_path;
  std::string db_path;          ///< empty = the default database
  std::string device_override;  ///< empty = the experiment's model.device
  std::string resume;           ///< run to resume (id, uuid prefix or name); empty = new run
  /// Stop after this many optimiser steps in total (tests of crash and resume); 0 = no limit.
  int64_t max_steps = 0;
};

/// How a run ended.
struct RunOutcome {
  int exit_code = 0;  ///< 0 completed, 1 internal error, 2 bad input, 130 cancelled
  int64_t run_id = 0;
  std::string message;
};

/// Executes the request; never throws. Problems found before training starts (bad base
/// path, missing data, CUDA without a GPU, unknown run to resume) end with exit code 2 and
/// leave no run row, or a `failed` row with the reason when resuming.
RunOutcome run_experiment(const RunRequest& request, ProgressReporter& progress,
                          const std::atomic<bool>& cancel);

/// Writes a run's final model as an HF directory with its tokenizer, LoRA merged into the
/// weights or (merge_lora = false) kept as separate adapters.
Status export_run_model(const std::string& db_path, const std::string& run_reference,
                        const std::filesystem::path& out_dir, bool merge_lora);

/// Where a run's checkpoints and final model live: <db folder>/checkpoints/<uuid>.
std::string checkpoint_dir_for(const std::string& db_path, const std::string& run_uuid);

}  // namespace hl
