// Workbench benchmarks against a large real store (200 runs x 20 metrics x 20k steps):
// window open until the runs are listed, 20 runs plotted, and event-loop latency while a
// run writes. The store is built once (RunWriter) and reused:
//   HL_GUI_BENCH_DB     path of the store (default: gui_bench.sqlite in the working dir)
//   HL_GUI_BENCH_STEPS  steps per metric (default 20000); a store of other size is rebuilt,
//                       one of an older schema is migrated (the time it took is printed)
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <time.h>

#include <QApplication>
#include <QElapsedTimer>
#include <QEventLoop>
#include <QFileInfo>
#include <QStandardPaths>
#include <QTimer>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <thread>

#include "core/store/run_reader.hpp"
#include "core/store/run_writer.hpp"
#include "core/store/schema.hpp"
#include "ui/main_window.hpp"
#include "ui/metric_plot.hpp"
#include "ui/process_setup.hpp"
#include "ui/run_store.hpp"
#include "ui/run_table_view.hpp"
#include "ui/runs_model.hpp"

namespace {

// Runs the event loop (sleeping while idle) until `done` or the timeout; true if done.
template <class Done>
bool wait_for(Done done, int timeout_ms) {
  if (done()) return true;
  QEventLoop loop;
  QTimer check;
  check.setInterval(1);
  QObject::connect(&check, &QTimer::timeout, &loop, [&] {
    if (done()) loop.quit();
  });
  QTimer::singleShot(timeout_ms, &loop, &QEventLoop::quit);
  check.start();
  loop.exec();
  return done();
}

// CPU time of the calling thread, in milliseconds.
double thread_cpu_ms() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return now.tv_sec * 1e3 + now.tv_nsec / 1e6;
}

// Minor page faults of the calling thread so far (this VM makes each one expensive).
double thread_faults() {
  rusage usage{};
  getrusage(RUSAGE_THREAD, &usage);
  return static_cast<double>(usage.ru_minflt);
}

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Runs the event loop for `ms` milliseconds.
void spin(int ms) {
  QEventLoop loop;
  QTimer::singleShot(ms, &loop, &QEventLoop::quit);
  loop.exec();
}

constexpr int kRuns = 200;
constexpr int kMetrics = 20;

int steps_per_metric() {
  const QByteArray text = qgetenv("HL_GUI_BENCH_STEPS");
  return text.isEmpty() ? 20000 : text.toInt();
}

std::string bench_db() {
  const QByteArray text = qgetenv("HL_GUI_BENCH_DB");
  return text.isEmpty() ? std::string("gui_bench.sqlite") : text.toStdString();
}

const char* const kMetricNames[kMetrics] = {
    "loss",         "loss/mse",     "loss/xent",    "lr",           "ssd/p",
    "ssd/realised", "window",       "tokens_per_s", "memory_mb",    "val/loss",
    "loss/layer/0", "loss/layer/1", "loss/layer/2", "loss/layer/3", "loss/layer/4",
    "loss/layer/5", "loss/layer/6", "loss/layer/7", "grad_norm",    "eval/ppl"};

// Brings a store of an older schema to the current one, as the first writer would.
void migrate_store(const std::string& path) {
  {
    auto db = hl::store::Database::open(path, hl::store::Access::read_only);
    if (!db.ok()) return;
    auto version = hl::store::schema_version(*db);
    if (!version.ok() || *version == 0 || *version >= hl::store::kSchemaVersion) return;
  }
  std::fprintf(stderr, "migrating %s to schema v%d...\n", path.c_str(), hl::store::kSchemaVersion);
  QElapsedTimer timer;
  timer.start();
  auto migrated = hl::store::open_store(path, hl::store::Access::read_write);
  if (!migrated.ok()) {
    std::fprintf(stderr, "%s\n", migrated.error().to_string().c_str());
    std::exit(1);
  }
  std::fprintf(stderr, "migrated in %.1f s\n", timer.nsecsElapsed() / 1e9);
}

// True if the store at `path` already has the expected shape.
bool store_ready(const std::string& path, int steps) {
  if (!QFileInfo::exists(QString::fromStdString(path))) return false;
  migrate_store(path);
  auto reader = hl::store::RunReader::open(path);
  if (!reader.ok()) return false;
  // The latency benchmark adds "live" runs; only the bench-* runs make the store's shape.
  auto runs = reader->list_runs({.name_contains = "bench-"});
  return runs.ok() && runs->size() == kRuns && runs->back().info.last_step == steps - 1;
}

void build_store(const std::string& path, int steps) {
  std::remove(path.c_str());
  std::remove((path + "-wal").c_str());
  std::remove((path + "-shm").c_str());
  std::fprintf(stderr, "building %s: %d runs x %d metrics x %d steps...\n", path.c_str(), kRuns,
               kMetrics, steps);
  for (int run = 0; run < kRuns; ++run) {
    hl::store::RunSpec spec;
    spec.name = "bench-" + std::to_string(run);
    spec.method = run % 2 ? "lolcats+ssd" : "lolcats";
    auto writer = hl::store::RunWriter::create(path, spec, {.batch_rows = 200000});
    if (!writer.ok()) {
      std::fprintf(stderr, "%s\n", writer.error().to_string().c_str());
      std::exit(1);
    }
    (void)writer->set_params({{"attention.window", "64"},
                              {"attention.feature_map", "hedgehog"},
                              {"data.batch_size", "8"},
                              {"data.seq_len", "256"}});
    for (int m = 0; m < kMetrics; ++m)
      for (int step = 0; step < steps; ++step)
        (void)writer->log_scalar(kMetricNames[m], step,
                                 std::exp(-step / 4000.0) * (1 + m) + 0.01 * std::sin(step + run));
    (void)writer->set_summary("final_loss", 1.0 + run * 0.001);
    (void)writer->set_status(hl::store::RunStatus::completed);
    if (auto status = writer->close(); !status.ok()) {
      std::fprintf(stderr, "%s\n", status.error().to_string().c_str());
      std::exit(1);
    }
  }
}

const std::string& prepared_store() {
  static const std::string path = [] {
    const std::string db = bench_db();
    const int steps = steps_per_metric();
    if (!store_ready(db, steps)) build_store(db, steps);
    return db;
  }();
  return path;
}

// From construction of the main window to the 200 runs in its table (model rows).
void BM_WindowOpenAndRunsListed(benchmark::State& state) {
  const QString db = QString::fromStdString(prepared_store());
  for (auto _ : state) {
    QElapsedTimer timer;
    timer.start();
    hl::ui::MainWindow::Options options;
    options.db_path = db;
    options.restore_state = false;
    auto* window = new hl::ui::MainWindow(options);
    window->show();
    const bool listed = wait_for([&] { return window->runs_model()->rowCount() >= kRuns; }, 10000);
    state.SetIterationTime(timer.nsecsElapsed() / 1e9);
    if (!listed) state.SkipWithError("runs were not listed within 10 s");
    delete window;
    QCoreApplication::processEvents();
  }
}
BENCHMARK(BM_WindowOpenAndRunsListed)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(5);

// From set_runs of 20 runs (one metric, 20k steps each) to the first view of all of them
// drawn: the curves span every step, from the store's bucket summaries (the raw curves with
// each 16-step bucket's first, last, lowest and highest rows; the smoothed ones over bucket
// means). full_ms: on to every row drawn (exact EMA), as before the summaries.
void BM_Plot20Runs(benchmark::State& state) {
  const QString db = QString::fromStdString(prepared_store());
  const int steps = steps_per_metric();
  hl::ui::RunStore store;
  store.open(db);
  wait_for([&] { return store.runs().size() >= kRuns; }, 10000);
  int round = 0;
  std::vector<double> full_ms, ui_cpu_ms, ui_faults, summaries_ms, rows_ms;
  QElapsedTimer timer;
  double summaries_at = 0, rows_at = 0;  // when the last series' summaries / rows arrived
  QObject::connect(&store, &hl::ui::RunStore::seriesAppended,
                   [&](const hl::ui::SeriesKey& key, int first_new) {
                     if (first_new != 0) return;
                     const double now = timer.nsecsElapsed() / 1e6;
                     (store.series(key).spans.empty() ? rows_at : summaries_at) = now;
                   });
  for (auto _ : state) {
    // Another metric each round, so no round reuses the previous one's fetched series.
    const QString metric = QString::fromLatin1(kMetricNames[round++ % kMetrics]);
    auto* plot = new hl::ui::MetricPlot(&store);
    plot->resize(1000, 600);
    plot->show();
    plot->set_metric(metric);
    QList<qint64> runs;
    for (int i = 0; i < 20; ++i)
      runs << store.runs()[static_cast<size_t>(i * 10)].id();
    const double cpu0 = thread_cpu_ms(), faults0 = thread_faults();
    summaries_at = rows_at = 0;
    timer.start();
    plot->set_runs(runs);
    const bool shown = wait_for(
        [&] {
          return std::all_of(runs.begin(), runs.end(),
                             [&](qint64 id) { return plot->last_drawn_step(id) == steps - 1; });
        },
        20000);
    state.SetIterationTime(timer.nsecsElapsed() / 1e9);
    ui_cpu_ms.push_back(thread_cpu_ms() - cpu0);
    ui_faults.push_back(thread_faults() - faults0);
    if (!shown) state.SkipWithError("the first view did not arrive within 20 s");
    state.counters["plotted_points"] = plot->plotted_points();
    state.counters["provisional"] = static_cast<double>(
        std::count_if(runs.begin(), runs.end(), [&](qint64 id) { return plot->provisional(id); }));
    const bool drawn = wait_for(
        [&] {
          return std::all_of(runs.begin(), runs.end(), [&](qint64 id) {
            return plot->drawn_points(id) == steps && !plot->provisional(id);
          });
        },
        20000);
    full_ms.push_back(timer.nsecsElapsed() / 1e6);
    summaries_ms.push_back(summaries_at);
    rows_ms.push_back(rows_at);
    if (!drawn) state.SkipWithError("points did not arrive within 20 s");
    delete plot;
  }
  // Medians over the iterations: until every row is drawn, and the UI thread's CPU time and
  // page faults until the first view.
  state.counters["full_ms"] = median(full_ms);
  state.counters["ui_cpu_ms"] = median(ui_cpu_ms);
  state.counters["ui_faults"] = median(ui_faults);
  state.counters["summaries_ms"] = median(summaries_ms);  // arrived in the UI thread
  state.counters["rows_ms"] = median(rows_ms);
}
BENCHMARK(BM_Plot20Runs)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(10);

// The same 20 runs plotted again (another selection in between): the series come from the
// store's cache and only rows written since are read.
void BM_Plot20RunsAgain(benchmark::State& state) {
  const QString db = QString::fromStdString(prepared_store());
  const int steps = steps_per_metric();
  hl::ui::RunStore store;
  store.open(db);
  wait_for([&] { return store.runs().size() >= kRuns; }, 10000);
  QList<qint64> runs;
  for (int i = 0; i < 20; ++i)
    runs << store.runs()[static_cast<size_t>(i * 10 + 1)].id();
  auto drawn_all = [&](hl::ui::MetricPlot* plot) {
    return std::all_of(runs.begin(), runs.end(),
                       [&](qint64 id) { return plot->drawn_points(id) == steps; });
  };
  {
    hl::ui::MetricPlot first(&store);
    first.set_metric("loss");
    first.set_runs(runs);
    if (!wait_for([&] { return drawn_all(&first); }, 20000))
      state.SkipWithError("points did not arrive within 20 s");
  }
  std::vector<double> ui_faults;
  for (auto _ : state) {
    auto* plot = new hl::ui::MetricPlot(&store);
    plot->resize(1000, 600);
    plot->show();
    plot->set_metric("loss");
    QElapsedTimer timer;
    const double faults0 = thread_faults();
    timer.start();
    plot->set_runs(runs);
    const bool drawn = wait_for([&] { return drawn_all(plot); }, 20000);
    state.SetIterationTime(timer.nsecsElapsed() / 1e9);
    ui_faults.push_back(thread_faults() - faults0);
    if (!drawn) state.SkipWithError("points did not arrive within 20 s");
    delete plot;
  }
  state.counters["ui_faults"] = median(ui_faults);
}
BENCHMARK(BM_Plot20RunsAgain)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(10);

// Worst delay of a 10 ms UI timer while another thread writes a run (20 metrics per step,
// ~1000 steps/s) that the main window shows live next to 4 long runs.
void BM_EventLoopLatencyWhileWriting(benchmark::State& state) {
  const std::string path = prepared_store();
  for (auto _ : state) {
    hl::ui::MainWindow::Options options;
    options.db_path = QString::fromStdString(path);
    options.restore_state = false;
    hl::ui::MainWindow window(options);
    window.show();
    wait_for([&] { return window.runs_model()->rowCount() >= kRuns; }, 10000);

    std::atomic<bool> stop{false};
    std::atomic<int64_t> live_run{0};
    std::thread writer_thread([&] {
      hl::store::RunSpec spec;
      spec.name = "live";
      auto writer = hl::store::RunWriter::create(path, spec);
      if (!writer.ok()) return;
      live_run = writer->run_id();
      (void)writer->set_status(hl::store::RunStatus::running);
      for (int64_t step = 0; !stop; ++step) {
        for (int m = 0; m < kMetrics; ++m)
          (void)writer->log_scalar(kMetricNames[m], step, 1.0 / (1 + step) + m);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      (void)writer->set_status(hl::store::RunStatus::cancelled, "benchmark");
      (void)writer->close();
    });
    wait_for([&] { return window.runs_model()->row_of(live_run) >= 0; }, 10000);
    QList<qint64> shown{live_run};
    for (int i = 0; i < 4; ++i)
      shown << window.store()->runs()[static_cast<size_t>(i)].id();
    // Select through the table, as a user would: every view follows the selection.
    window.run_table()->select_runs(shown);
    // The initial load of the selection is BM_Plot20Runs' subject; this one measures the
    // steady state while the run writes, so it starts once the long runs are drawn.
    QElapsedTimer selection_clock;
    selection_clock.start();
    wait_for(
        [&] {
          for (qsizetype i = 1; i < shown.size(); ++i)
            if (window.curves()->plot()->drawn_points(shown[i]) != steps_per_metric()) return false;
          return true;
        },
        20000);
    state.counters["selection_drawn_ms"] = selection_clock.nsecsElapsed() / 1e6;

    std::vector<double> delays;
    QElapsedTimer clock;
    clock.start();
    qint64 last = clock.nsecsElapsed();
    QTimer tick;
    tick.setTimerType(Qt::PreciseTimer);
    tick.setInterval(10);
    QObject::connect(&tick, &QTimer::timeout, [&] {
      const qint64 now = clock.nsecsElapsed();
      delays.push_back(std::max(0.0, (now - last) / 1e6 - 10.0));
      last = now;
    });
    tick.start();
    spin(3000);
    tick.stop();
    stop = true;
    writer_thread.join();
    std::sort(delays.begin(), delays.end());
    const double worst = delays.empty() ? 0 : delays.back();
    const double p99 = delays.empty() ? 0 : delays[static_cast<size_t>(0.99 * (delays.size() - 1))];
    state.SetIterationTime(worst / 1000.0);
    state.counters["max_delay_ms"] = worst;
    state.counters["p99_delay_ms"] = p99;
    state.counters["ticks"] = static_cast<double>(delays.size());
    state.counters["live_points"] = window.curves()->plot()->drawn_points(live_run);
  }
}
BENCHMARK(BM_EventLoopLatencyWhileWriting)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(2);

}  // namespace

int main(int argc, char** argv) {
  if (qEnvironmentVariableIsEmpty("QT_QPA_PLATFORM")) qputenv("QT_QPA_PLATFORM", "offscreen");
  QStandardPaths::setTestModeEnabled(true);
  hl::ui::keep_freed_memory();  // as the workbench's main() does
  QApplication app(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  prepared_store();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
