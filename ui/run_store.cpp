#include "ui/run_store.hpp"

#include <QThread>
#include <QTimer>
#include <algorithm>
#include <limits>
#include <optional>
#include <set>
#include <thread>

#include "core/store/run_reader.hpp"

namespace hl::ui {

std::string RunRow::param(const std::string& key) const {
  auto found = params.find(key);
  return found == params.end() ? std::string() : found->second;
}

double RunRow::tokens_per_step() const {
  auto number = [&](const std::string& key) {
    try {
      std::string text = param(key);
      return text.empty() ? 0.0 : std::stod(text);
    } catch (const std::exception&) {
      return 0.0;
    }
  };
  double tokens = number("data.batch_size") * number("data.seq_len");
  // grad_accum is per stage; the first stage's value is the best single guess.
  double accum = number("stage.0.grad_accum");
  if (accum <= 0) accum = number("stage[0].grad_accum");
  return tokens * (accum > 0 ? accum : 1.0);
}

namespace {
// How much of the database file a reader maps (SQLite caps it at its build's maximum).
constexpr int64_t kMmapBytes = int64_t{4} << 30;
}  // namespace

// Owns the SQLite connection on the worker thread. Every member runs on that thread;
// results travel to the RunStore as queued calls tagged with the open generation, so
// results of a database that was since replaced are dropped.
class StoreWorker : public QObject {
 public:
  StoreWorker(RunStore* store) : store_(store) {}

  void start(int interval_ms) {
    timer_ = new QTimer(this);
    timer_->setInterval(interval_ms);
    QObject::connect(timer_, &QTimer::timeout, this, [this] { poll(false); });
    timer_->start();
  }

  void set_interval(int interval_ms) {
    if (timer_) timer_->setInterval(interval_ms);
  }

  void open(uint64_t generation, const std::string& path) {
    generation_ = generation;
    reader_.reset();
    helper_reader_.reset();
    last_version_.reset();
    last_steps_.clear();
    for (auto it = fetched_through_.begin(); it != fetched_through_.end(); ++it)
      it.value().reset();
    params_cache_.clear();
    Result<store::RunReader> reader = store::RunReader::open(path, store::Access::read_only);
    if (!reader.ok()) {
      post_open(false, QString::fromStdString(reader.error().to_string()));
      return;
    }
    reader_.emplace(std::move(reader).value());
    path_ = path;
    // Mapped reads scan long series about twice as fast; a failure only costs that speed.
    (void)reader_->set_mmap_size(kMmapBytes);
    post_open(true, {});
    poll(true);
  }

  // Each series with the step it was read through before, if the RunStore had it cached.
  void watch(const std::vector<RunStore::WatchRequest>& requests) {
    std::vector<SeriesKey> keys;
    keys.reserve(requests.size());
    for (const RunStore::WatchRequest& request : requests) {
      fetched_through_.insert(request.key, request.through);
      if (request.columns > 0)
        columns_.insert(request.key, request.columns);
      else
        columns_.remove(request.key);
      keys.push_back(request.key);
    }
    if (reader_) fetch_series(keys);
  }

  void unwatch(const SeriesKey& series) {
    fetched_through_.remove(series);
    columns_.remove(series);
  }

  void poll(bool force) {
    if (!reader_) return;
    Result<int64_t> version = reader_->data_version();
    if (version.ok() && !force && last_version_ == *version) {
      post_poll_done();
      return;
    }
    if (version.ok()) last_version_ = *version;
    fetch_runs();
    std::vector<SeriesKey> all;
    all.reserve(fetched_through_.size());
    for (auto it = fetched_through_.cbegin(); it != fetched_through_.cend(); ++it)
      all.push_back(it.key());
    fetch_series(all);
    post_poll_done();
  }

 private:
  void fetch_runs() {
    Result<std::vector<store::RunListEntry>> listed = reader_->list_runs();
    if (!listed.ok()) return;
    std::vector<RunRow> rows;
    rows.reserve(listed->size());
    for (store::RunListEntry& entry : *listed) {
      RunRow row;
      const int64_t id = entry.info.id;
      // Finished runs do not change their parameters, so they are read once.
      auto cached = params_cache_.find(id);
      if (cached != params_cache_.end() && cached->second.first) {
        row.params = cached->second.second;
      } else {
        Result<std::map<std::string, std::string>> params = reader_->params(id);
        if (params.ok()) row.params = *params;
        params_cache_[id] = {store::is_terminal(entry.info.status), row.params};
      }
      last_steps_[id] = entry.info.last_step.value_or(-1);
      row.entry = std::move(entry);
      rows.push_back(std::move(row));
    }
    QMetaObject::invokeMethod(
        store_,
        [store = store_, generation = generation_, rows = std::move(rows)]() mutable {
          store->apply_runs(generation, std::move(rows));
        },
        Qt::QueuedConnection);
  }

  // The first fetch of a series: everything up to the run's last step, downsampled if long.
  static std::optional<RunStore::Fetched> fetch_initial(store::RunReader& reader,
                                                        const SeriesKey& series, int64_t through) {
    Result<std::vector<store::ScalarPoint>> points =
        reader.downsampled(series.run, series.key.toStdString(), 0, through, kFirstFetchMaxPoints);
    if (!points.ok()) return std::nullopt;
    const bool reduced = points->size() >= kFirstFetchMaxPoints - 1;
    int64_t fetched = points->empty() ? std::numeric_limits<int64_t>::min() : points->back().step;
    if (reduced) fetched = std::max(fetched, through);
    return RunStore::Fetched{series, std::move(points).value(), fetched, reduced, true, {}};
  }

  // The first view of a long series from the store's bucket summaries (a few rows per pixel
  // column instead of every row); nullopt where the series is too short for them, or the
  // database keeps none. It is `downsampled` unless it holds every row.
  static std::optional<RunStore::Fetched> fetch_overview(store::RunReader& reader,
                                                         const SeriesKey& series, int64_t through,
                                                         int columns) {
    Result<std::optional<store::SeriesOverview>> overview = reader.overview(
        series.run, series.key.toStdString(), 0, through, static_cast<size_t>(columns));
    if (!overview.ok() || !overview->has_value()) return std::nullopt;
    store::SeriesOverview& found = **overview;
    const int64_t fetched =
        found.points.empty() ? std::numeric_limits<int64_t>::min() : found.points.back().step;
    RunStore::Fetched result{series, std::move(found.points), fetched, !found.every_row, true, {}};
    if (!found.every_row) result.spans = std::move(found.spans);
    return result;
  }

  // Runs fetch(reader, i) for i < count, the second half on a second connection when there
  // are several: scanning long series is most of the time until a plot of many runs
  // appears, and the UI thread waits idle meanwhile.
  template <class Fetch>
  void in_parallel(size_t count, Fetch&& fetch) {
    const size_t split = count >= 4 ? count / 2 : count;
    std::thread helper;
    if (split < count && open_helper())
      helper = std::thread([&] {
        for (size_t i = split; i < count; ++i)
          fetch(*helper_reader_, i);
      });
    const size_t mine = helper.joinable() ? split : count;
    for (size_t i = 0; i < mine; ++i)
      fetch(*reader_, i);
    if (helper.joinable()) helper.join();
  }

  // Records what a first fetch read through; false if the series was unwatched meanwhile.
  bool record_through(const RunStore::Fetched& fetched) {
    auto state = fetched_through_.find(fetched.key);
    if (state == fetched_through_.end()) return false;
    state.value() = fetched.through;
    return true;
  }

  void fetch_series(const std::vector<SeriesKey>& keys) {
    std::vector<RunStore::Fetched> fresh, initial;
    std::vector<std::pair<SeriesKey, int64_t>> first_time;  // with the step to read through
    for (const SeriesKey& series : keys) {
      auto state = fetched_through_.find(series);
      if (state == fetched_through_.end()) continue;
      if (!state.value()) {
        auto last = last_steps_.find(series.run);
        first_time.emplace_back(series, last == last_steps_.end() || last->second < 0
                                            ? std::numeric_limits<int64_t>::max() / 2
                                            : last->second);
        continue;
      }
      Result<std::vector<store::ScalarPoint>> points =
          reader_->scalars_after(series.run, series.key.toStdString(), *state.value());
      if (!points.ok() || points->empty()) continue;
      const int64_t through = points->back().step;
      state.value() = through;
      fresh.push_back({series, std::move(points).value(), through, false});
    }
    // First the series that a plot asked for by width: their bucket summaries, drawn at once;
    // those whose summaries leave rows out (the long ones) are read in full right after.
    std::vector<std::optional<RunStore::Fetched>> overviews(first_time.size());
    std::vector<std::pair<size_t, int>> by_width;  // (index into first_time, columns)
    if (reader_->has_buckets())
      for (size_t i = 0; i < first_time.size(); ++i)
        if (int columns = columns_.value(first_time[i].first, 0); columns > 0)
          by_width.emplace_back(i, columns);
    in_parallel(by_width.size(), [&](store::RunReader& reader, size_t j) {
      const auto [i, columns] = by_width[j];
      overviews[i] = fetch_overview(reader, first_time[i].first, first_time[i].second, columns);
    });
    std::vector<size_t> to_read;  // indices into first_time still to be read row by row
    for (size_t i = 0; i < first_time.size(); ++i) {
      if (!overviews[i] || overviews[i]->downsampled) to_read.push_back(i);
      if (overviews[i] && record_through(*overviews[i]))
        initial.push_back(std::move(*overviews[i]));
    }
    post_points(std::move(initial));
    post_points(std::move(fresh));

    std::vector<std::optional<RunStore::Fetched>> results(to_read.size());
    in_parallel(to_read.size(), [&](store::RunReader& reader, size_t i) {
      results[i] =
          fetch_initial(reader, first_time[to_read[i]].first, first_time[to_read[i]].second);
    });
    std::vector<RunStore::Fetched> read;
    for (auto& result : results)
      if (result && record_through(*result)) read.push_back(std::move(*result));
    post_points(std::move(read));
  }

  // The second connection for parallel first fetches, opened on first use.
  bool open_helper() {
    if (helper_reader_) return true;
    Result<store::RunReader> reader = store::RunReader::open(path_, store::Access::read_only);
    if (!reader.ok()) return false;
    helper_reader_.emplace(std::move(reader).value());
    (void)helper_reader_->set_mmap_size(kMmapBytes);
    return true;
  }

  void post_points(std::vector<RunStore::Fetched> batches) {
    if (batches.empty()) return;
    QMetaObject::invokeMethod(
        store_,
        [store = store_, generation = generation_, batches = std::move(batches)]() mutable {
          store->apply_points(generation, std::move(batches));
        },
        Qt::QueuedConnection);
  }

  void post_open(bool ok, const QString& message) {
    QMetaObject::invokeMethod(
        store_,
        [store = store_, generation = generation_, ok, message] {
          store->apply_open(generation, ok, message);
        },
        Qt::QueuedConnection);
  }

  void post_poll_done() {
    QMetaObject::invokeMethod(
        store_, [store = store_, generation = generation_] { store->apply_poll_done(generation); },
        Qt::QueuedConnection);
  }

  RunStore* store_;
  QTimer* timer_ = nullptr;
  uint64_t generation_ = 0;
  std::optional<store::RunReader> reader_;
  std::optional<store::RunReader> helper_reader_;
  std::string path_;
  std::optional<int64_t> last_version_;
  QHash<SeriesKey, std::optional<int64_t>> fetched_through_;
  QHash<SeriesKey, int> columns_;  // the plot width a series was watched for, if any
  std::map<int64_t, int64_t> last_steps_;
  std::map<int64_t, std::pair<bool, std::map<std::string, std::string>>> params_cache_;
};

RunStore::RunStore(QObject* parent) : QObject(parent) {
  thread_ = new QThread(this);
  thread_->setObjectName("hl-run-store");
  worker_ = new StoreWorker(this);
  worker_->moveToThread(thread_);
  connect(thread_, &QThread::finished, worker_, &QObject::deleteLater);
  thread_->start();
  QMetaObject::invokeMethod(
      worker_, [worker = worker_] { worker->start(200); }, Qt::QueuedConnection);
}

RunStore::~RunStore() {
  thread_->quit();
  thread_->wait();
}

void RunStore::open(const QString& path) {
  path_ = path;
  open_ = false;
  ++generation_;
  runs_.clear();
  series_.clear();
  cache_.clear();
  cache_points_ = 0;
  emit runsChanged();
  const std::string file = path.toStdString();
  QMetaObject::invokeMethod(
      worker_,
      [worker = worker_, generation = generation_, file] { worker->open(generation, file); },
      Qt::QueuedConnection);
  // The watches survive a switch of database: the worker fetches the same (run, key) anew.
  for (auto it = watch_counts_.cbegin(); it != watch_counts_.cend(); ++it)
    series_.insert(it.key(), SeriesData{});
}

const RunRow* RunStore::run(int64_t run_id) const {
  auto found = std::lower_bound(runs_.begin(), runs_.end(), run_id,
                                [](const RunRow& row, int64_t id) { return row.id() < id; });
  if (found != runs_.end() && found->id() == run_id) return &*found;
  for (const RunRow& row : runs_)  // ids are ascending in practice; this is the fallback
    if (row.id() == run_id) return &row;
  return nullptr;
}

void RunStore::watch(const SeriesKey& series, int columns) {
  if (watch_counts_[series]++ > 0) return;
  std::optional<int64_t> through;
  auto cached = std::find_if(cache_.begin(), cache_.end(),
                             [&](const auto& entry) { return entry.first == series; });
  if (cached != cache_.end()) {
    cache_points_ -= cached->second.points.size();
    through = cached->second.fetched_through;
    series_.insert(series, std::move(cached->second));
    cache_.erase(cached);
  } else {
    series_.insert(series, SeriesData{});
  }
  // Watches made in one go (a plot of 20 runs) reach the worker as one request, so their
  // first points arrive together and are drawn in one redraw.
  if (pending_watches_.empty())
    QTimer::singleShot(0, this, [this] {
      std::vector<WatchRequest> batch;
      batch.swap(pending_watches_);
      if (batch.empty()) return;
      QMetaObject::invokeMethod(
          worker_, [worker = worker_, batch = std::move(batch)] { worker->watch(batch); },
          Qt::QueuedConnection);
    });
  pending_watches_.push_back({series, through, columns});
}

void RunStore::unwatch(const SeriesKey& series) {
  auto found = watch_counts_.find(series);
  if (found == watch_counts_.end()) return;
  if (--found.value() > 0) return;
  watch_counts_.erase(found);
  auto data = series_.find(series);
  if (data != series_.end()) {
    // Only a series the worker has read can continue from where it stopped, and bucket
    // summaries still waiting for their rows are not kept.
    if (data->fetched_through && !data->points.empty() && data->spans.empty()) {
      cache_points_ += data->points.size();
      cache_.emplace_front(series, std::move(data.value()));
    }
    series_.erase(data);
    trim_cache();
  }
  std::erase_if(pending_watches_, [&](const WatchRequest& entry) { return entry.key == series; });
  QMetaObject::invokeMethod(
      worker_, [worker = worker_, series] { worker->unwatch(series); }, Qt::QueuedConnection);
}

void RunStore::set_cache_capacity(size_t points) {
  cache_capacity_ = points;
  trim_cache();
}

void RunStore::trim_cache() {
  while (cache_points_ > cache_capacity_ && !cache_.empty()) {
    cache_points_ -= cache_.back().second.points.size();
    cache_.pop_back();
  }
}

const SeriesData& RunStore::series(const SeriesKey& series) const {
  static const SeriesData kEmpty;
  auto found = series_.constFind(series);
  return found == series_.cend() ? kEmpty : found.value();
}

void RunStore::set_poll_interval(int milliseconds) {
  QMetaObject::invokeMethod(
      worker_, [worker = worker_, milliseconds] { worker->set_interval(milliseconds); },
      Qt::QueuedConnection);
}

void RunStore::poll_now() {
  QMetaObject::invokeMethod(
      worker_, [worker = worker_] { worker->poll(false); }, Qt::QueuedConnection);
}

void RunStore::apply_open(uint64_t generation, bool ok, const QString& message) {
  if (generation != generation_) return;
  open_ = ok;
  if (ok)
    emit opened(path_);
  else
    emit failed(message);
}

void RunStore::apply_runs(uint64_t generation, std::vector<RunRow> runs) {
  if (generation != generation_) return;
  runs_ = std::move(runs);
  emit runsChanged();
}

void RunStore::apply_points(uint64_t generation, std::vector<Fetched> batches) {
  if (generation != generation_) return;
  for (Fetched& fetched : batches) {
    auto found = series_.find(fetched.key);
    if (found == series_.end()) continue;  // unwatched meanwhile
    SeriesData& data = found.value();
    std::vector<store::ScalarPoint>& points = fetched.points;
    if (fetched.replace) {
      // A first fetch: the bucket summaries of a long series, or its rows, which replace
      // the summaries.
      data.points = std::move(points);
      data.spans = std::move(fetched.spans);
      data.downsampled = fetched.downsampled;
      data.fetched_through = fetched.through;
      emit seriesAppended(fetched.key, 0);
      continue;
    }
    data.fetched_through =
        std::max(data.fetched_through.value_or(fetched.through), fetched.through);
    const int first_new = static_cast<int>(data.points.size());
    // A point at or before the last one replaces history (a resumed run re-logs steps).
    if (!data.points.empty() && !points.empty() && points.front().step <= data.points.back().step) {
      const int64_t from = points.front().step;
      auto keep =
          std::lower_bound(data.points.begin(), data.points.end(), from,
                           [](const store::ScalarPoint& p, int64_t s) { return p.step < s; });
      // Bucket summaries cut there no longer describe what follows: keep those before.
      const auto kept = static_cast<size_t>(keep - data.points.begin());
      while (!data.spans.empty() && data.spans.back().end > kept)
        data.spans.pop_back();
      data.points.erase(keep, data.points.end());
      data.points.insert(data.points.end(), points.begin(), points.end());
      emit seriesAppended(fetched.key, 0);
      continue;
    }
    if (data.points.empty())
      data.points = std::move(points);  // no copy
    else
      data.points.insert(data.points.end(), points.begin(), points.end());
    data.downsampled = data.downsampled || fetched.downsampled;
    emit seriesAppended(fetched.key, first_new);
  }
}

void RunStore::apply_poll_done(uint64_t generation) {
  if (generation != generation_) return;
  ++poll_count_;
  emit polled();
}

}  // namespace hl::ui
