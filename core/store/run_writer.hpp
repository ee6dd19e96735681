// RunWriter: the one writer of one run. Rows are buffered and committed in batches, so a
// training loop can log every step cheaply and a killed process loses at most one batch.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "core/store/run_types.hpp"
#include "core/util/error.hpp"

namespace hl::store {

/// Reported after every committed batch.
struct CommitInfo {
  uint64_t batch = 0;       ///< 1 for the first batch this writer committed
  size_t rows = 0;          ///< rows in this batch
  uint64_t total_rows = 0;  ///< rows committed by this writer so far
};

/// When buffered rows are committed.
struct WriterOptions {
  size_t batch_rows = 1000;                       ///< commit as soon as this many rows wait
  std::chrono::milliseconds flush_interval{200};  ///< ... or when the oldest waited this long
  /// Called after each commit, on the committing thread, with the writer's lock held:
  /// it must not call back into the writer.
  std::function<void(const CommitInfo&)> on_commit = {};
};

/// Writes one run. Log calls are thread-safe and cheap (they only buffer); a background
/// thread commits by time, the logging thread by count. SQLite errors come back as
/// Status, naming the database file; a failed background commit is reported by the next
/// call and its rows are kept for the next attempt.
class RunWriter {
 public:
  /// Creates a new run (status pending) in the database at `db_path`.
  static Result<RunWriter> create(const std::string& db_path, const RunSpec& spec,
                                  WriterOptions options = {});
  /// Reopens an existing run, e.g. to resume it; re-logged steps replace the old rows.
  static Result<RunWriter> resume(const std::string& db_path, int64_t run_id,
                                  WriterOptions options = {});

  RunWriter(RunWriter&&) noexcept;
  RunWriter& operator=(RunWriter&&) noexcept;
  /// Commits what is buffered; an error here can only be printed, so call close() first.
  ~RunWriter();

  int64_t run_id() const;
  const std::string& uuid() const;
  const std::string& db_path() const;

  /// A scalar of the whole model (loss, lr, ...) at a training step. NaN is kept as NaN.
  Status log_scalar(std::string_view key, int64_t step, double value);
  /// A per-layer scalar; head = -1 is the mean over heads.
  Status log_layer_scalar(std::string_view key, int64_t step, int layer, int head, double value);
  /// One evaluation result (task "ppl", mode "hybrid", metric "ppl", ...), over n items.
  Status log_eval(std::string_view task, std::string_view mode, std::string_view metric,
                  double value, int64_t n);
  /// An event; payload must be JSON (empty = {}).
  Status log_event(std::string_view level, std::string_view kind, std::string_view message,
                   std::string_view payload_json = {});
  /// A produced file; meta must be JSON (empty = {}).
  Status add_artifact(std::string_view kind, std::string_view path,
                      std::string_view meta_json = {});
  /// A summary value (final_loss, ppl, pct_of_base, passkey_acc, ...); replaces the old one.
  Status set_summary(std::string_view key, double value);

  /// Flattened configuration (attention.window -> "64"); committed at once, upserted.
  Status set_params(const std::map<std::string, std::string>& params);
  /// Commits buffered rows, then the status (with start/finish times) at once.
  Status set_status(RunStatus status, std::string_view message = {});

  /// Commits everything buffered now.
  Status flush();
  /// Stops the background thread and commits what is left. Later calls fail.
  Status close();

  /// Rows buffered and not yet committed.
  size_t pending_rows() const;
  /// Rows this writer has committed.
  uint64_t committed_rows() const;

 private:
  struct Impl;
  explicit RunWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hl::store
