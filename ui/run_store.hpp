// RunStore: the workbench's read-only view of a run database. A worker thread owns the
// SQLite connection, polls PRAGMA data_version and fetches only new rows; the results
// arrive on the UI thread as signals, so the GUI never waits while a run writes.
#pragma once

#include <QHash>
#include <QObject>
#include <QString>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/store/run_types.hpp"

class QThread;

namespace hl::ui {

/// One plotted series: a scalar metric of one run.
struct SeriesKey {
  int64_t run = 0;
  QString key;
  bool operator==(const SeriesKey&) const = default;
};
inline size_t qHash(const SeriesKey& series, size_t seed = 0) {
  return ::qHash(series.key, seed) ^ ::qHash(static_cast<qint64>(series.run), seed);
}

/// A run as the runs table shows it: the list entry (info + summary) and its parameters.
struct RunRow {
  store::RunListEntry entry;
  std::map<std::string, std::string> params;

  int64_t id() const { return entry.info.id; }
  /// A parameter by key, or empty.
  std::string param(const std::string& key) const;
  /// Tokens per optimiser step from data.batch_size x data.seq_len (x grad_accum), or 0.
  double tokens_per_step() const;
};

/// A series longer than this is downsampled (min/max buckets) on its first read of rows;
/// later points are appended as they come.
inline constexpr size_t kFirstFetchMaxPoints = 20000;

/// Points of one series fetched so far (possibly downsampled at its start for long runs).
struct SeriesData {
  std::vector<store::ScalarPoint> points;
  bool downsampled = false;
  /// While `points` are the store's bucket summaries (the first view of a long series,
  /// until its rows arrive and replace them): which points each bucket gave and the mean of
  /// the rows it stands for. Empty once the points are the rows (or a downsampled read).
  std::vector<store::SeriesOverview::Span> spans;
  /// The step through which the store has been read (a downsampled fetch reads past its
  /// last kept point); none before the first fetch.
  std::optional<int64_t> fetched_through;
};

class StoreWorker;

/// Read-only access to one run database for the GUI. Lives on the UI thread.
class RunStore : public QObject {
  Q_OBJECT
 public:
  explicit RunStore(QObject* parent = nullptr);
  ~RunStore() override;

  /// Opens (or switches to) a database; the result arrives as opened() or failed().
  void open(const QString& path);
  const QString& path() const { return path_; }
  bool is_open() const { return open_; }

  /// The runs of the last poll, oldest first.
  const std::vector<RunRow>& runs() const { return runs_; }
  /// The run with this id, or nullptr.
  const RunRow* run(int64_t run_id) const;

  /// Starts fetching a series (reference counted); its points arrive via seriesAppended.
  /// A series watched before and still in the cache is available at once, and only its
  /// rows written since are fetched. With `columns` (the width in pixels of the plot that
  /// shows it), a long series first comes as the store's bucket summaries at about one
  /// bucket per pixel column (a few points each), and its rows follow and replace them.
  void watch(const SeriesKey& series, int columns = 0);
  /// Stops fetching a series; its points stay in a bounded cache (least recently used
  /// series go first) for the next watch.
  void unwatch(const SeriesKey& series);
  /// Points kept for unwatched series (default 4M, about 100 MB).
  void set_cache_capacity(size_t points);
  /// Unwatched series in the cache.
  size_t cached_series() const { return cache_.size(); }
  /// Points fetched so far; empty for an unwatched series. A first fetch replaces what was
  /// there and is announced with first_new = 0.
  const SeriesData& series(const SeriesKey& series) const;

  /// How often the worker checks data_version (default 200 ms).
  void set_poll_interval(int milliseconds);
  /// Asks the worker to poll now instead of at its next tick.
  void poll_now();
  /// Completed polls since open; tests and benchmarks wait on it.
  uint64_t poll_count() const { return poll_count_; }

 signals:
  void opened(const QString& path);
  void failed(const QString& message);
  /// The runs list (or a run's status, summary or params) changed.
  void runsChanged();
  /// New points were appended to `series` starting at index `first_new`.
  void seriesAppended(const hl::ui::SeriesKey& series, int first_new);
  void polled();

 private:
  friend class StoreWorker;
  void apply_runs(uint64_t generation, std::vector<RunRow> runs);
  struct Fetched {
    SeriesKey key;
    std::vector<store::ScalarPoint> points;
    int64_t through = 0;  // the step read through
    bool downsampled = false;
    bool replace = false;                            // a first fetch: replaces the points
    std::vector<store::SeriesOverview::Span> spans;  // bucket summaries, see SeriesData
  };
  struct WatchRequest {
    SeriesKey key;
    std::optional<int64_t> through;  // read through this step before (from the cache)
    int columns = 0;
  };
  void apply_points(uint64_t generation, std::vector<Fetched> batches);
  void trim_cache();
  void apply_poll_done(uint64_t generation);
  void apply_open(uint64_t generation, bool ok, const QString& message);

  QThread* thread_ = nullptr;
  StoreWorker* worker_ = nullptr;
  QString path_;
  bool open_ = false;
  uint64_t generation_ = 0;
  uint64_t poll_count_ = 0;
  std::vector<RunRow> runs_;
  QHash<SeriesKey, int> watch_counts_;
  std::vector<WatchRequest> pending_watches_;
  QHash<SeriesKey, SeriesData> series_;
  // Unwatched series, most recently used first, and their total points.
  std::list<std::pair<SeriesKey, SeriesData>> cache_;
  size_t cache_points_ = 0;
  size_t cache_capacity_ = 4'000'000;
};

}  // namespace hl::ui
