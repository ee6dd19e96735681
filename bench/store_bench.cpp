// Run store throughput and latency: batched inserts through RunWriter, a downsampled
// 100k-step series, and the run list the GUI shows. Results: bench/RESULTS.md, "Store".
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>

#include "core/store/run_reader.hpp"
#include "core/store/run_writer.hpp"
#include "core/store/schema.hpp"
#include "core/util/paths.hpp"

namespace {

using namespace hl::store;

// A scratch folder for the benchmark's databases, removed at exit.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "hl_store_bench_XXXXXX").string();
    if (!mkdtemp(pattern.data())) std::abort();
    path_ = pattern;
  }
  ~ScratchDir() { hl::remove_tree(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

ScratchDir& scratch() {
  static ScratchDir dir;
  return dir;
}

void check(const hl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "store bench: %s\n", status.error().to_string().c_str());
    std::abort();
  }
}

template <class T>
T take(hl::Result<T> result) {
  if (!result.ok()) check(result.error());
  return std::move(result).value();
}

// Rows through RunWriter, as a training loop logs them: a few keys per step. Each
// iteration is a fresh run; close() (the last commit) is inside the timing.
void BM_WriterInsertScalars(benchmark::State& state) {
  const std::string path = scratch().file("insert.sqlite");
  const int64_t steps = state.range(0);
  const char* keys[] = {"train/loss", "train/lr", "train/grad_norm", "ssd/drop_rate"};
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> value(0.0, 1.0);
  for (auto _ : state) {
    RunWriter writer = take(RunWriter::create(path, RunSpec{.name = "bench"}));
    for (int64_t step = 0; step < steps; ++step)
      for (const char* key : keys)
        check(writer.log_scalar(key, step, value(rng)));
    check(writer.close());
  }
  state.SetItemsProcessed(state.iterations() * steps * 4);
}
BENCHMARK(BM_WriterInsertScalars)->Arg(50'000)->UseRealTime()->Unit(benchmark::kMillisecond);

// One run with a 100k-step loss series, shared by the read benchmarks.
struct SeriesDb {
  std::string path = scratch().file("series.sqlite");
  int64_t run = 0;
  SeriesDb() {
    RunWriter writer = take(RunWriter::create(path, RunSpec{.name = "series"}));
    std::mt19937 rng(2);
    std::normal_distribution<double> noise(0.0, 0.05);
    for (int64_t step = 0; step < 100'000; ++step) {
      check(writer.log_scalar("train/loss", step, 3.0 * std::exp(-step / 2e4) + noise(rng)));
      if (step % 100 == 0)
        for (int layer = 0; layer < 32; ++layer)
          check(writer.log_layer_scalar("usage/linear_mass", step, layer, -1, 0.01 * layer));
    }
    run = writer.run_id();
    check(writer.close());
  }
};

SeriesDb& series_db() {
  static SeriesDb db;
  return db;
}

void BM_DownsampleSeries(benchmark::State& state) {
  SeriesDb& db = series_db();
  RunReader reader = take(RunReader::open(db.path));
  const auto max_points = static_cast<size_t>(state.range(0));
  size_t points = 0;
  for (auto _ : state) {
    std::vector<ScalarPoint> series =
        take(reader.downsampled(db.run, "train/loss", 0, 99'999, max_points));
    points = series.size();
    benchmark::DoNotOptimize(series.data());
  }
  state.counters["points"] = static_cast<double>(points);
}
BENCHMARK(BM_DownsampleSeries)->Arg(2000)->Unit(benchmark::kMillisecond);

// A plot's first view of 20 runs of 20,000 steps, 1,000 pixels wide, as the workbench reads it:
// overview() (bucket summaries, one per pixel column at most) against every row in range
// (what the view read before the summaries). The 20 series are 20 windows of the one series.
void BM_FirstView20Series(benchmark::State& state) {
  SeriesDb& db = series_db();
  RunReader reader = take(RunReader::open(db.path));
  const bool summaries = state.range(0) != 0;
  size_t points = 0;
  for (auto _ : state) {
    points = 0;
    for (int64_t i = 0; i < 20; ++i) {
      const int64_t x0 = i * 4000, x1 = x0 + 19'999;
      if (summaries) {
        std::optional<SeriesOverview> view =
            take(reader.overview(db.run, "train/loss", x0, x1, 1000));
        if (!view) std::abort();  // the series is long enough for the 16-step level
        points += view->points.size();
      } else {
        points += take(reader.downsampled(db.run, "train/loss", x0, x1, 20'000)).size();
      }
    }
    benchmark::DoNotOptimize(points);
  }
  state.counters["points"] = static_cast<double>(points);
  state.SetLabel(summaries ? "overview (bucket summaries)" : "every row");
}
BENCHMARK(BM_FirstView20Series)->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond);

// The same buckets computed by SQL GROUP BY (min and max, SQLite's bare-column rule),
// for comparison with the one-pass C++ bucketing that downsampled() uses.
void BM_DownsampleSeriesSqlGroupBy(benchmark::State& state) {
  SeriesDb& db = series_db();
  Database conn = take(open_store(db.path, Access::read_only));
  Statement stmt = take(conn.prepare(
      "WITH p AS (SELECT step, value, (step - ?3) * ?5 / (?4 - ?3 + 1) AS b FROM scalars "
      "WHERE run = ?1 AND key_id = (SELECT id FROM metric_keys WHERE key = ?2) "
      "AND step BETWEEN ?3 AND ?4) "
      "SELECT b, step, min(value) FROM p GROUP BY b UNION ALL "
      "SELECT b, step, max(value) FROM p GROUP BY b"));
  size_t rows = 0;
  for (auto _ : state) {
    stmt.bind(1, db.run).bind(2, "train/loss").bind(3, int64_t{0}).bind(4, int64_t{99'999});
    stmt.bind(5, state.range(0) / 2);
    rows = 0;
    while (take(stmt.step()))
      ++rows;
    stmt.reset();
  }
  state.counters["points"] = static_cast<double>(rows);
}
BENCHMARK(BM_DownsampleSeriesSqlGroupBy)->Arg(2000)->Unit(benchmark::kMillisecond);

void BM_FetchNewPoints(benchmark::State& state) {
  SeriesDb& db = series_db();
  RunReader reader = take(RunReader::open(db.path));
  for (auto _ : state) {
    std::vector<ScalarPoint> fresh = take(reader.scalars_after(db.run, "train/loss", 99'899));
    benchmark::DoNotOptimize(fresh.data());
  }
}
BENCHMARK(BM_FetchNewPoints)->Unit(benchmark::kMicrosecond);

void BM_LayerMatrix(benchmark::State& state) {
  SeriesDb& db = series_db();
  RunReader reader = take(RunReader::open(db.path));
  for (auto _ : state) {
    LayerMatrix matrix = take(reader.layer_matrix(db.run, "usage/linear_mass"));
    benchmark::DoNotOptimize(matrix.values.data());
  }
  state.counters["cells"] = 32 * 1000;
}
BENCHMARK(BM_LayerMatrix)->Unit(benchmark::kMillisecond);

// 1,000 runs with params, summaries and some scalars, like a busy user's database.
struct ManyRunsDb {
  std::string path = scratch().file("many.sqlite");
  ManyRunsDb() {
    for (int i = 0; i < 1000; ++i) {
      RunWriter writer =
          take(RunWriter::create(path, RunSpec{.name = "run-" + std::to_string(i % 50),
                                               .method = i % 2 ? "lolcats+ssd" : "lolcats"}));
      check(writer.set_params({{"attention.window", std::to_string(32 << (i % 3))},
                               {"seed", std::to_string(i)},
                               {"stage.0.lr", "0.01"}}));
      for (int64_t step = 0; step < 200; ++step)
        check(writer.log_scalar("train/loss", step, 3.0 - step * 0.01));
      check(writer.set_summary("final_loss", 1.0 + i * 1e-3));
      check(writer.set_summary("ppl", 10.0 + i * 1e-2));
      check(writer.set_summary("pct_of_base", 90.0));
      check(writer.set_summary("passkey_acc", 0.5));
      check(writer.set_summary("mqar_acc", 0.25));
      check(writer.set_status(RunStatus::completed));
    }
  }
};

void BM_ListRunsWithSummaries(benchmark::State& state) {
  static ManyRunsDb db;
  RunReader reader = take(RunReader::open(db.path));
  size_t runs = 0;
  for (auto _ : state) {
    std::vector<RunListEntry> list = take(reader.list_runs());
    runs = list.size();
    benchmark::DoNotOptimize(list.data());
  }
  state.counters["runs"] = static_cast<double>(runs);
}
BENCHMARK(BM_ListRunsWithSummaries)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
