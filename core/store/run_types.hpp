// Plain data that the run store reads and writes.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hl::store {

/// Life cycle of a run.
enum class RunStatus { pending, running, completed, failed, cancelled };

/// "pending", "running", ... as stored in the database.
std::string_view to_string(RunStatus status);
/// The inverse of to_string; nullopt for an unknown word.
std::optional<RunStatus> parse_run_status(std::string_view text);
/// completed, failed and cancelled are final.
bool is_terminal(RunStatus status);

/// What a new run is; every field but name is optional.
struct RunSpec {
  std::string name = {};
  std::string experiment = {};  ///< the resolved experiment TOML
  std::string base_model = {};
  std::string device = {};
  std::string method = {};  ///< e.g. "lolcats", "lolcats+ssd"
  std::string host = {};    ///< empty = this machine's host name
  std::optional<int64_t> parent_run = {};
  std::string uuid = {};  ///< empty = a fresh random UUID
};

/// One row of the runs table.
struct RunInfo {
  int64_t id = 0;
  std::string uuid = {};
  std::string name = {};
  RunStatus status = RunStatus::pending;
  std::string status_message = {};
  int64_t created_ms = 0;
  std::optional<int64_t> started_ms = {};
  std::optional<int64_t> finished_ms = {};
  std::string experiment = {};  ///< left empty by list_runs (it can be large)
  std::string base_model = {};
  std::string device = {};
  std::optional<int64_t> parent_run = {};
  std::string method = {};
  std::string host = {};
  std::optional<int64_t> last_step = {};  ///< highest logged step, if any
};

/// A run with its summary values (final loss, ppl, % of base, ...), for run lists.
struct RunListEntry {
  RunInfo info = {};
  std::map<std::string, double> summary = {};
};

/// One point of a scalar series; value is NaN where NaN was logged.
struct ScalarPoint {
  int64_t step = 0;
  int64_t wall_ms = 0;
  double value = 0;
};

/// Step widths of the bucket levels the store keeps for every scalar series (table
/// scalar_buckets), finest first: a bucket of level L holds the series' rows with steps in
/// [bucket * width, (bucket + 1) * width).
inline constexpr std::array<int64_t, 3> kBucketWidths = {16, 256, 4096};

/// The bucket of `step` at a level of this width (floor division, also for negative steps).
inline int64_t bucket_of(int64_t step, int64_t width) {
  const int64_t quotient = step / width;
  return step % width < 0 ? quotient - 1 : quotient;
}

/// The summary of the scalar rows of one step bucket: what a plot of the bucket needs (its
/// first and last rows, its lowest and highest values and where a NaN breaks the line) and
/// the mean of its values. Built from rows in step order (add) or from the buckets of the
/// level below in step order (merge); NaN is skipped by low, high, numbers and sum.
struct ScalarBucket {
  int level = 0;
  int64_t bucket = 0;
  int64_t count = 0;                     ///< rows, NaN included
  int64_t numbers = 0;                   ///< rows whose value is not NaN
  double sum = 0;                        ///< of those values
  ScalarPoint first = {}, last = {};     ///< the rows of lowest and highest step
  std::optional<ScalarPoint> low = {};   ///< the lowest value, the earliest on ties
  std::optional<ScalarPoint> high = {};  ///< the highest value, the earliest on ties
  std::optional<ScalarPoint> first_nan = {};

  /// The mean of the values that are not NaN; NaN if there are none.
  double mean() const;
  /// Adds a row with a higher step than any added before.
  void add(const ScalarPoint& point);
  /// Adds the rows of a bucket whose steps all follow this one's.
  void merge(const ScalarBucket& later);
  /// Appends the distinct rows the bucket keeps (first, low, high, first NaN, last) to
  /// `out`, in step order.
  void append_points(std::vector<ScalarPoint>& out) const;
};

/// A scalar series as a plot of limited width needs it, from the bucket summaries: the
/// rows each bucket keeps (ScalarBucket::append_points), and for each bucket the mean of the rows
/// it stands for, so that a smoothed curve can be approximated until every row is read.
struct SeriesOverview {
  struct Span {
    size_t end = 0;       ///< one past the bucket's last point in `points`
    int64_t numbers = 0;  ///< rows it stands for whose value is not NaN
    double mean = 0;      ///< their mean (NaN if none)
  };
  std::vector<ScalarPoint> points = {};  ///< ascending steps
  std::vector<Span> spans = {};          ///< in step order, together covering `points`
  int64_t bucket_width = 0;              ///< the steps one bucket covers
  bool every_row = false;                ///< no row was left out (a sparse series)
};

/// One evaluation result.
struct EvalRow {
  int64_t run = 0;
  std::string task = {};
  std::string mode = {};
  std::string metric = {};
  double value = 0;
  int64_t n = 0;
  int64_t created_ms = 0;
};

/// One logged event (progress note, warning, checkpoint, ...).
struct EventRow {
  int64_t id = 0;
  int64_t run = 0;
  int64_t wall_ms = 0;
  std::string level = {};
  std::string kind = {};
  std::string message = {};
  std::string payload = {};  ///< JSON
};

/// A file a run produced (checkpoint, exported model, plot...).
struct ArtifactRow {
  int64_t run = 0;
  std::string kind = {};
  std::string path = {};
  std::string meta = {};  ///< JSON
  int64_t created_ms = 0;
};

/// The latest value of one scalar key.
struct LastScalar {
  std::string key = {};
  int64_t step = 0;
  double value = 0;
};

/// Everything `runs show` prints about one run.
struct RunDetails {
  RunInfo info = {};
  std::map<std::string, std::string> params = {};
  std::map<std::string, double> summary = {};
  std::vector<LastScalar> last_scalars = {};
  std::vector<EvalRow> evals = {};
  std::vector<ArtifactRow> artifacts = {};
};

/// A per-layer metric as a dense layers x steps matrix.
struct LayerMatrix {
  std::vector<int> layers = {};     ///< ascending
  std::vector<int64_t> steps = {};  ///< ascending
  std::vector<double> values = {};  ///< row-major [layer][step]; NaN where nothing was logged
  double at(size_t layer_index, size_t step_index) const {
    return values[layer_index * steps.size() + step_index];
  }
};

/// Parameters of several runs side by side.
struct ParamComparison {
  struct Row {
    std::string key = {};
    std::vector<std::optional<std::string>> values = {};  ///< one per run; nullopt = not set
    bool differs = false;
  };
  std::vector<Row> rows = {};  ///< sorted by key

  /// The keys whose values are not the same in every run (missing counts as different).
  std::vector<std::string> differing_keys() const;
};

/// Puts the parameter maps of several runs side by side and marks differences.
ParamComparison compare_params(const std::vector<std::map<std::string, std::string>>& runs);

}  // namespace hl::store
