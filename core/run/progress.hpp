// Progress of a long command (run, pretrain, eval) for a terminal or a parent process.
// `json` mode is the protocol the workbench reads from hybridlab-cli's stdout: one JSON
// object a line, with "type" one of "run", "progress", "event", "status".
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <ostream>
#include <string>

#include "core/util/error.hpp"

namespace hl {

enum class ProgressMode { json, bar, none };

/// Parses "json", "bar" or "none".
Result<ProgressMode> parse_progress_mode(const std::string& text);

/// Writes progress lines in one of the three modes; not thread-safe (one per run).
class ProgressReporter {
 public:
  ProgressReporter(ProgressMode mode, std::ostream& out);

  /// Announces the run record the command writes to.
  void run_started(int64_t run_id, const std::string& uuid, const std::string& db_path);
  /// Starts a phase of `total_steps` steps (e.g. a training stage); resets the ETA clock.
  void begin_phase(const std::string& name, int index, int count, int64_t total_steps);
  /// Reports the step just finished and its latest metrics.
  void step(int64_t step, const std::map<std::string, double>& metrics, double tokens_per_s);
  /// A notable event (checkpoint written, early stop, evaluation result...).
  void event(const std::string& level, const std::string& kind, const std::string& message);
  /// The final status: completed, failed or cancelled.
  void finished(const std::string& status, const std::string& message);

 private:
  double elapsed_s() const;

  ProgressMode mode_;
  std::ostream& out_;
  std::string phase_;
  int phase_index_ = 0, phase_count_ = 1;
  int64_t total_ = 0;
  std::chrono::steady_clock::time_point phase_start_;
  bool bar_open_ = false;
};

}  // namespace hl
