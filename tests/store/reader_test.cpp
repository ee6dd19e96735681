// RunReader queries: downsampling, incremental fetches, layer matrices, run lists and
// references, parameter diffs and change polling.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "core/store/run_reader.hpp"
#include "core/store/run_writer.hpp"
#include "tests/store/temp_dir.hpp"

namespace hl::store {
namespace {

using testing::TempDir;

RunWriter make_writer(const std::string& path, RunSpec spec) {
  Result<RunWriter> writer = RunWriter::create(path, spec);
  EXPECT_TRUE(writer.ok()) << writer.error().to_string();
  return std::move(writer).value();
}

RunReader make_reader(const std::string& path) {
  Result<RunReader> reader = RunReader::open(path);
  EXPECT_TRUE(reader.ok()) << reader.error().to_string();
  return std::move(reader).value();
}

TEST(RunReader, DownsamplingKeepsEveryBucketsMinAndMax) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  RunWriter writer = make_writer(path, {.name = "series"});
  std::mt19937 rng(1234);
  std::normal_distribution<double> noise(0.0, 1.0);
  std::map<int64_t, double> series;
  int64_t step = 3;
  for (int i = 0; i < 20000; ++i) {
    step += 1 + static_cast<int64_t>(rng() % 3);  // uneven gaps
    const double value = std::sin(step * 1e-3) + 0.1 * noise(rng);
    series[step] = value;
    ASSERT_TRUE(writer.log_scalar("loss", step, value).ok());
  }
  ASSERT_TRUE(writer.close().ok());
  RunReader reader = make_reader(path);

  for (const auto& [x0, x1, max_points] : std::vector<std::tuple<int64_t, int64_t, size_t>>{
           {0, step, 200}, {1000, 9000, 101}, {series.begin()->first, step, 2}}) {
    Result<std::vector<ScalarPoint>> points =
        reader.downsampled(writer.run_id(), "loss", x0, x1, max_points);
    ASSERT_TRUE(points.ok()) << points.error().to_string();
    EXPECT_LE(points->size(), max_points);
    // Reference buckets computed here, independently.
    const int64_t buckets = static_cast<int64_t>(max_points / 2);
    std::map<int64_t, std::pair<double, double>> extremes;  // bucket -> (min, max)
    for (const auto& [s, v] : series) {
      if (s < x0 || s > x1) continue;
      const int64_t bucket = (s - x0) * buckets / (x1 - x0 + 1);
      auto [it, fresh] = extremes.try_emplace(bucket, v, v);
      it->second.first = std::min(it->second.first, v);
      it->second.second = std::max(it->second.second, v);
    }
    std::map<int64_t, std::pair<double, double>> seen;
    int64_t previous = std::numeric_limits<int64_t>::min();
    for (const ScalarPoint& point : *points) {
      EXPECT_GT(point.step, previous) << "points must be ordered by step";
      previous = point.step;
      ASSERT_TRUE(series.count(point.step)) << "invented step " << point.step;
      EXPECT_EQ(series.at(point.step), point.value);
      const int64_t bucket = (point.step - x0) * buckets / (x1 - x0 + 1);
      auto [it, fresh] = seen.try_emplace(bucket, point.value, point.value);
      it->second.first = std::min(it->second.first, point.value);
      it->second.second = std::max(it->second.second, point.value);
    }
    EXPECT_EQ(seen, extremes) << "viewport [" << x0 << ", " << x1 << "], P = " << max_points;
  }

  // A viewport with few points returns them all, unchanged.
  auto few = *reader.downsampled(writer.run_id(), "loss", 100, 160, 1000);
  std::vector<int64_t> expected_steps;
  for (const auto& [s, v] : series)
    if (s >= 100 && s <= 160) expected_steps.push_back(s);
  ASSERT_EQ(few.size(), expected_steps.size());
  for (size_t i = 0; i < few.size(); ++i)
    EXPECT_EQ(few[i].step, expected_steps[i]);

  EXPECT_FALSE(reader.downsampled(writer.run_id(), "loss", 0, 10, 1).ok());
  EXPECT_FALSE(reader.downsampled(writer.run_id(), "loss", 10, 0, 100).ok());
  EXPECT_TRUE(reader.downsampled(writer.run_id(), "never-logged", 0, 10, 100)->empty());
}

TEST(RunReader, DownsamplingKeepsNanOnlyBucketsAsGaps) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  RunWriter writer = make_writer(path, {.name = "nan"});
  for (int step = 0; step < 100; ++step)
    ASSERT_TRUE(writer.log_scalar("loss", step, step >= 50 && step < 60 ? NAN : step).ok());
  ASSERT_TRUE(writer.close().ok());
  RunReader reader = make_reader(path);
  auto points = *reader.downsampled(writer.run_id(), "loss", 0, 99, 20);  // buckets of 10
  ASSERT_LE(points.size(), 20u);
  int nan_points = 0;
  for (const auto& point : points)
    if (std::isnan(point.value)) {
      ++nan_points;
      EXPECT_EQ(point.step, 50);
    }
  EXPECT_EQ(nan_points, 1);
}

TEST(RunReader, IncrementalFetchReturnsOnlyNewPoints) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  Result<RunWriter> writer =
      RunWriter::create(path, {.name = "live"}, WriterOptions{.batch_rows = 1});
  ASSERT_TRUE(writer.ok());
  RunReader reader = make_reader(path);
  const int64_t run = writer->run_id();
  const int64_t version_before = *reader.data_version();
  for (int step = 0; step < 10; ++step)
    ASSERT_TRUE(writer->log_scalar("loss", step, step).ok());
  EXPECT_NE(*reader.data_version(), version_before);  // another connection committed

  auto first = *reader.scalars_after(run, "loss", -1);
  ASSERT_EQ(first.size(), 10u);
  for (int step = 10; step < 15; ++step)
    ASSERT_TRUE(writer->log_scalar("loss", step, step).ok());
  auto next = *reader.scalars_after(run, "loss", first.back().step);
  ASSERT_EQ(next.size(), 5u);
  EXPECT_EQ(next.front().step, 10);
  EXPECT_EQ(next.back().step, 14);
  EXPECT_EQ(reader.scalars_after(run, "loss", 14)->size(), 0u);
  auto limited = *reader.scalars_after(run, "loss", -1, 3);
  ASSERT_EQ(limited.size(), 3u);
  EXPECT_EQ(limited.back().step, 2);
  const int64_t quiet = *reader.data_version();
  EXPECT_EQ(*reader.data_version(), quiet);  // nothing new: the version stays
}

TEST(RunReader, MemoryMappedReadsSeeTheSameRowsAndLaterCommits) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  RunWriter writer = make_writer(path, {.name = "mapped"});
  std::mt19937 rng(77);
  std::uniform_real_distribution<double> value(-1.0, 1.0);
  std::vector<double> logged;
  for (int step = 0; step < 5000; ++step) {
    logged.push_back(value(rng));
    ASSERT_TRUE(writer.log_scalar("loss", step, logged.back()).ok());
  }
  ASSERT_TRUE(writer.flush().ok());
  RunReader plain = make_reader(path);
  RunReader mapped = make_reader(path);
  Result<int64_t> size = mapped.set_mmap_size(int64_t{256} << 20);
  ASSERT_TRUE(size.ok()) << size.error().to_string();
  EXPECT_GT(*size, 0);
  EXPECT_FALSE(mapped.set_mmap_size(-1).ok());
  auto same = [&](int64_t after) {
    Result<std::vector<ScalarPoint>> a = plain.scalars_after(writer.run_id(), "loss", after);
    Result<std::vector<ScalarPoint>> b = mapped.scalars_after(writer.run_id(), "loss", after);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->size(), b->size());
    for (size_t i = 0; i < a->size(); ++i) {
      EXPECT_EQ((*a)[i].step, (*b)[i].step);
      EXPECT_EQ((*a)[i].value, (*b)[i].value);  // bit-identical: the same stored doubles
      EXPECT_EQ((*b)[i].value, logged[static_cast<size_t>((*b)[i].step)]);
    }
  };
  same(-1);
  // Rows the writer commits after the map was set up are seen too.
  for (int step = 5000; step < 9000; ++step) {
    logged.push_back(value(rng));
    ASSERT_TRUE(writer.log_scalar("loss", step, logged.back()).ok());
  }
  ASSERT_TRUE(writer.close().ok());
  Result<std::vector<ScalarPoint>> tail = mapped.scalars_after(writer.run_id(), "loss", 4999);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(tail->size(), 4000u);
  same(4999);
  // A series within the point budget comes back whole, in step order, on either connection.
  for (RunReader* reader : {&plain, &mapped}) {
    Result<std::vector<ScalarPoint>> whole =
        reader->downsampled(writer.run_id(), "loss", 0, 1 << 20, 20000);
    ASSERT_TRUE(whole.ok()) << whole.error().to_string();
    ASSERT_EQ(whole->size(), logged.size());
    for (size_t i = 0; i < whole->size(); ++i) {
      ASSERT_EQ((*whole)[i].step, static_cast<int64_t>(i));
      ASSERT_EQ((*whole)[i].value, logged[i]);
    }
  }
}

TEST(RunReader, LayerMatrixIsDenseWithNanForMissing) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  RunWriter writer = make_writer(path, {.name = "layers"});
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::map<std::pair<int, int64_t>, double> expected;  // (layer, step) -> value, head -1
  for (int64_t step : {0, 50, 100, 150}) {
    for (int layer = 0; layer < 4; ++layer) {
      if (layer == 2 && step == 100) continue;  // a hole
      const double mean = uniform(rng);
      expected[{layer, step}] = mean;
      ASSERT_TRUE(writer.log_layer_scalar("usage/linear_mass", step, layer, -1, mean).ok());
      for (int head = 0; head < 2; ++head)
        ASSERT_TRUE(
            writer.log_layer_scalar("usage/linear_mass", step, layer, head, uniform(rng)).ok());
    }
  }
  ASSERT_TRUE(writer.log_layer_scalar("usage/linear_mass", 200, 6, 1, 0.5).ok());  // head 1 only
  ASSERT_TRUE(writer.close().ok());
  RunReader reader = make_reader(path);

  Result<LayerMatrix> matrix = reader.layer_matrix(writer.run_id(), "usage/linear_mass");
  ASSERT_TRUE(matrix.ok()) << matrix.error().to_string();
  EXPECT_EQ(matrix->layers, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(matrix->steps, (std::vector<int64_t>{0, 50, 100, 150}));
  ASSERT_EQ(matrix->values.size(), 16u);
  for (size_t l = 0; l < 4; ++l)
    for (size_t s = 0; s < 4; ++s) {
      auto it = expected.find({matrix->layers[l], matrix->steps[s]});
      if (it == expected.end())
        EXPECT_TRUE(std::isnan(matrix->at(l, s)));
      else
        EXPECT_EQ(matrix->at(l, s), it->second);
    }
  Result<LayerMatrix> head1 = reader.layer_matrix(writer.run_id(), "usage/linear_mass", 1);
  EXPECT_EQ(head1->layers, (std::vector<int>{0, 1, 2, 3, 6}));
  EXPECT_EQ(head1->steps.back(), 200);
  EXPECT_EQ(head1->at(4, 4), 0.5);
  EXPECT_TRUE(std::isnan(head1->at(4, 0)));
  EXPECT_EQ(*reader.layer_scalar_keys(writer.run_id()),
            std::vector<std::string>{"usage/linear_mass"});
  EXPECT_TRUE(reader.scalar_keys(writer.run_id())->empty());
}

TEST(RunReader, ListsRunsWithSummariesAndFilters) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  std::vector<int64_t> ids;
  for (int i = 0; i < 5; ++i) {
    RunWriter writer = make_writer(
        path, {.name = i % 2 ? "ssd" : "base", .method = i % 2 ? "lolcats+ssd" : "lolcats"});
    ASSERT_TRUE(writer.set_params({{"attention.window", i < 3 ? "64" : "128"}}).ok());
    ASSERT_TRUE(writer.log_scalar("loss", 10 * i, 1.0).ok());
    if (i != 4) {
      ASSERT_TRUE(writer.set_summary("final_loss", 1.0 + i).ok());
    }
    if (i == 1) {
      ASSERT_TRUE(writer.set_summary("ppl", 20.0).ok());
    }
    ASSERT_TRUE(writer.set_status(i == 2 ? RunStatus::failed : RunStatus::completed).ok());
    ids.push_back(writer.run_id());
  }
  RunReader reader = make_reader(path);
  Result<std::vector<RunListEntry>> all = reader.list_runs();
  ASSERT_TRUE(all.ok()) << all.error().to_string();
  ASSERT_EQ(all->size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ((*all)[i].info.id, ids[i]);
    EXPECT_EQ((*all)[i].info.last_step, 10 * static_cast<int64_t>(i));
    EXPECT_TRUE((*all)[i].info.experiment.empty());
  }
  EXPECT_EQ((*all)[1].summary.size(), 2u);
  EXPECT_EQ((*all)[1].summary.at("ppl"), 20.0);
  EXPECT_EQ((*all)[3].summary.at("final_loss"), 4.0);
  EXPECT_TRUE((*all)[4].summary.empty());

  EXPECT_EQ(reader.list_runs({.status = RunStatus::failed})->size(), 1u);
  EXPECT_EQ(reader.list_runs({.name_contains = "ss"})->size(), 2u);
  EXPECT_EQ(reader.list_runs({.method = "lolcats"})->size(), 3u);
  auto wide = *reader.list_runs({.params = {{"attention.window", "128"}}});
  ASSERT_EQ(wide.size(), 2u);
  EXPECT_EQ(wide[0].info.id, ids[3]);
  auto newest = *reader.list_runs({.limit = 2});
  ASSERT_EQ(newest.size(), 2u);
  EXPECT_EQ(newest[0].info.id, ids[3]);
  EXPECT_EQ(newest[1].info.id, ids[4]);
}

TEST(RunReader, FindsRunsByIdUuidPrefixAndName) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  RunWriter first =
      make_writer(path, {.name = "demo", .uuid = "abc12345-0000-4000-8000-000000000001"});
  RunWriter second =
      make_writer(path, {.name = "demo", .uuid = "abc12399-0000-4000-8000-000000000002"});
  RunWriter other =
      make_writer(path, {.name = "other", .uuid = "fed00000-0000-4000-8000-000000000003"});
  RunReader reader = make_reader(path);
  EXPECT_EQ(*reader.find_run(std::to_string(other.run_id())), other.run_id());
  EXPECT_EQ(*reader.find_run("abc1234"), first.run_id());
  EXPECT_EQ(*reader.find_run("fed0"), other.run_id());
  EXPECT_EQ(*reader.find_run("demo"), second.run_id());  // the newest run of that name
  Result<int64_t> ambiguous = reader.find_run("abc123");
  ASSERT_FALSE(ambiguous.ok());
  EXPECT_NE(ambiguous.error().message.find("ambiguous"), std::string::npos);
  Result<int64_t> unknown = reader.find_run("nope");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().message.find("no run matches 'nope'"), std::string::npos);
  EXPECT_EQ(unknown.error().where.file, path);
  EXPECT_FALSE(reader.find_run("999").ok());
  EXPECT_FALSE(reader.run(999).ok());
}

TEST(RunReader, ComparesParamsAndDetails) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  RunWriter a = make_writer(path, {.name = "a"});
  RunWriter b = make_writer(path, {.name = "b"});
  ASSERT_TRUE(a.set_params({{"attention.window", "64"}, {"seed", "0"}, {"ssd", "off"}}).ok());
  ASSERT_TRUE(b.set_params({{"attention.window", "64"}, {"seed", "1"}}).ok());
  for (int step = 0; step <= 30; step += 10) {
    ASSERT_TRUE(a.log_scalar("train/loss", step, 5.0 - step * 0.1).ok());
    ASSERT_TRUE(a.log_scalar("lr", step, 1e-2).ok());
  }
  ASSERT_TRUE(a.log_eval("ppl", "hybrid", "ppl", 9.5, 64).ok());
  ASSERT_TRUE(a.flush().ok());
  RunReader reader = make_reader(path);
  Result<ParamComparison> diff = reader.compare_params({a.run_id(), b.run_id()});
  ASSERT_TRUE(diff.ok());
  EXPECT_EQ(diff->differing_keys(), (std::vector<std::string>{"seed", "ssd"}));
  ASSERT_EQ(diff->rows.size(), 3u);
  EXPECT_EQ(diff->rows[2].values[1], std::nullopt);

  Result<RunDetails> details = reader.details(a.run_id());
  ASSERT_TRUE(details.ok()) << details.error().to_string();
  ASSERT_EQ(details->last_scalars.size(), 2u);
  EXPECT_EQ(details->last_scalars[1].key, "train/loss");
  EXPECT_EQ(details->last_scalars[1].step, 30);
  EXPECT_DOUBLE_EQ(details->last_scalars[1].value, 2.0);
  EXPECT_EQ(details->evals.size(), 1u);
  EXPECT_EQ(details->params.size(), 3u);
  EXPECT_EQ(*reader.scalar_keys(a.run_id()), (std::vector<std::string>{"lr", "train/loss"}));
  EXPECT_TRUE(reader.scalar_keys(b.run_id())->empty());
}

TEST(CompareParams, MarksMissingAndDifferentValues) {
  ParamComparison same = compare_params({{{"k", "1"}}, {{"k", "1"}}});
  EXPECT_TRUE(same.differing_keys().empty());
  ParamComparison diff =
      compare_params({{{"k", "1"}, {"only_a", "x"}}, {{"k", "2"}}, {{"k", "1"}}});
  EXPECT_EQ(diff.differing_keys(), (std::vector<std::string>{"k", "only_a"}));
}

}  // namespace
}  // namespace hl::store
