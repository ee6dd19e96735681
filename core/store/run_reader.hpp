// RunReader: queries over the run store for the GUI and the CLI. Open it read-only while
// a writer (another process) is writing; poll data_version() to learn about new rows.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/store/run_types.hpp"
#include "core/store/sqlite_db.hpp"
#include "core/util/error.hpp"

namespace hl::store {

/// Which runs list_runs returns; empty fields do not filter.
struct RunFilter {
  std::optional<RunStatus> status = {};
  std::string name_contains = {};
  std::string method = {};
  std::map<std::string, std::string> params = {};  ///< every key must have exactly this value
  size_t limit = 0;                                ///< keep only the newest N runs; 0 = all
};

/// Read access to a run database. Not thread-safe: use one reader per thread.
class RunReader {
 public:
  /// Opens an existing database. read_only never writes (and fails on an old schema);
  /// read_write migrates an old schema first. Neither creates a missing file.
  static Result<RunReader> open(const std::string& path, Access access = Access::read_only);

  RunReader(RunReader&&) noexcept;
  RunReader& operator=(RunReader&&) noexcept;
  ~RunReader();

  const std::string& path() const;

  /// Lets this connection read up to `bytes` of the database file through a memory map
  /// instead of read() calls, which roughly halves the time to scan long series (the GUI's
  /// plots); 0 turns it off. Returns the size SQLite accepted (it caps it at its build's
  /// maximum). A writer in another process keeps working as before (WAL is not mapped).
  Result<int64_t> set_mmap_size(int64_t bytes);
  /// Changes whenever another connection commits; poll it to decide whether to refetch.
  Result<int64_t> data_version();
  /// PRAGMA integrity_check; an error carries SQLite's findings.
  Status check_integrity();

  /// Runs (oldest first) with their summary values, in one query.
  Result<std::vector<RunListEntry>> list_runs(const RunFilter& filter = {});
  /// Resolves a run reference: an id, a uuid prefix, or a name (its newest run).
  Result<int64_t> find_run(std::string_view reference);
  /// One run, including its experiment text.
  Result<RunInfo> run(int64_t run_id);
  /// A run with params, summary, latest scalars, evals and artifacts.
  Result<RunDetails> details(int64_t run_id);

  Result<std::map<std::string, std::string>> params(int64_t run_id);
  /// Parameters of several runs side by side, differences marked.
  Result<ParamComparison> compare_params(const std::vector<int64_t>& run_ids);
  Result<std::map<std::string, double>> summary(int64_t run_id);

  /// Keys with at least one scalar row in the run, sorted.
  Result<std::vector<std::string>> scalar_keys(int64_t run_id);
  /// Keys with at least one per-layer row in the run, sorted.
  Result<std::vector<std::string>> layer_scalar_keys(int64_t run_id);

  /// Points with step > after_step, ascending (for live plots); limit 0 = all.
  Result<std::vector<ScalarPoint>> scalars_after(int64_t run_id, std::string_view key,
                                                 int64_t after_step, size_t limit = 0);
  /// The series within steps [x0, x1] with at most max_points points (>= 2): all points
  /// if they fit, else the minimum and maximum of each of max_points/2 equal step buckets.
  Result<std::vector<ScalarPoint>> downsampled(int64_t run_id, std::string_view key, int64_t x0,
                                               int64_t x1, size_t max_points);
  /// Whether the database keeps bucket summaries of its scalar series (schema v3; a v2
  /// database opened read-only has none, and overview() gives nullopt).
  bool has_buckets() const;
  /// The stored summaries of level `level` (0 = the finest, see kBucketWidths) with bucket
  /// index in [first, last], ascending.
  Result<std::vector<ScalarBucket>> scalar_buckets(int64_t run_id, std::string_view key, int level,
                                                   int64_t first, int64_t last);
  /// The series within steps [x0, x1] for a plot `columns` pixels wide, from the bucket
  /// summaries of the coarsest level whose buckets are no wider than a pixel column (steps
  /// per column, counted over the steps the series spans in the range): each bucket's first
  /// and last rows, lowest and highest values and first NaN, with its mean; the buckets
  /// that reach beyond [x0, x1] give their rows in range instead. About 4 points per
  /// bucket, so a few per column, instead of every row. nullopt where no level is fine
  /// enough (a short series: read its rows) or the database keeps no summaries.
  Result<std::optional<SeriesOverview>> overview(int64_t run_id, std::string_view key, int64_t x0,
                                                 int64_t x1, size_t columns);
  /// A per-layer metric as layers x steps (head = -1: the mean over heads).
  Result<LayerMatrix> layer_matrix(int64_t run_id, std::string_view key, int head = -1);

  /// Evaluation rows of the given runs, by run, task, mode, metric, time.
  Result<std::vector<EvalRow>> evals(const std::vector<int64_t>& run_ids);
  /// Events of a run with id > after_id, ascending; limit 0 = all.
  Result<std::vector<EventRow>> events_after(int64_t run_id, int64_t after_id, size_t limit = 0);
  Result<std::vector<ArtifactRow>> artifacts(int64_t run_id);

 private:
  struct Impl;
  explicit RunReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hl::store
