// Bucket summaries of scalar series (scalar_buckets): kept by the writer batch after batch
// (re-logged steps included), equal to a one-shot build, built by the migration of an older
// database, and read back as a plot's overview.
#include "core/store/buckets.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "core/store/run_reader.hpp"
#include "core/store/run_writer.hpp"
#include "core/store/schema.hpp"
#include "tests/store/bucket_check.hpp"
#include "tests/store/temp_dir.hpp"

namespace hl::store {
namespace {

using testing::brute_force_buckets;
using testing::expect_buckets_match_rows;
using testing::TempDir;

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// A random value: often one of a few levels (ties for the lowest and highest), sometimes
// NaN or infinite.
double random_value(std::mt19937_64& rng) {
  const int kind = static_cast<int>(rng() % 1000);
  if (kind < 30) return kNan;
  if (kind < 33) return kind % 2 ? kInf : -kInf;
  if (kind < 500) return 0.5 * static_cast<double>(rng() % 7);
  return std::normal_distribution<double>(1.0, 2.0)(rng);
}

// Logs three series the way a training loop does (interleaved by step), in many small
// batches with flushes at random moments, then resumes the run and re-logs some old steps
// with new values in random order and adds new ones. Returns the run id.
int64_t write_random_run(const std::string& path, uint64_t seed) {
  std::mt19937_64 rng(seed);
  int64_t run = 0;
  std::map<std::string, std::vector<int64_t>> logged;
  {
    Result<RunWriter> writer =
        RunWriter::create(path, RunSpec{.name = "random"},
                          WriterOptions{.batch_rows = 37, .flush_interval = std::chrono::hours(1)});
    EXPECT_TRUE(writer.ok()) << writer.error().to_string();
    run = writer->run_id();
    int64_t dense = 0, wide = -500, sparse = 3;
    for (int i = 0; i < 6000; ++i) {
      dense += 1 + static_cast<int64_t>(rng() % 3);
      EXPECT_TRUE(writer->log_scalar("dense", dense, random_value(rng)).ok());
      logged["dense"].push_back(dense);
      if (i % 3 == 0) {
        wide += rng() % 50 == 0 ? 3000 + static_cast<int64_t>(rng() % 5000)
                                : 1 + static_cast<int64_t>(rng() % 40);
        EXPECT_TRUE(writer->log_scalar("wide", wide, random_value(rng)).ok());
        logged["wide"].push_back(wide);
      }
      if (i % 97 == 0) {
        sparse += 97;
        EXPECT_TRUE(writer->log_scalar("sparse", sparse, rng() % 4 == 0 ? kNan : 1.0 * i).ok());
        logged["sparse"].push_back(sparse);
      }
      if (rng() % 200 == 0) {
        EXPECT_TRUE(writer->flush().ok());
      }
    }
    EXPECT_TRUE(writer->close().ok());
  }
  Result<RunWriter> resumed = RunWriter::resume(
      path, run, WriterOptions{.batch_rows = 29, .flush_interval = std::chrono::hours(1)});
  EXPECT_TRUE(resumed.ok()) << resumed.error().to_string();
  for (auto& [key, steps] : logged) {
    std::vector<int64_t> again;
    for (int64_t step : steps)
      if (rng() % 20 == 0) again.push_back(step);
    std::shuffle(again.begin(), again.end(), rng);
    for (int64_t step : again)
      EXPECT_TRUE(resumed->log_scalar(key, step, random_value(rng)).ok());
    for (int i = 0; i < 100; ++i)  // new steps past the end, out of order
      EXPECT_TRUE(
          resumed->log_scalar(key, steps.back() + 1 + static_cast<int64_t>(rng() % 300), 2.0 * i)
              .ok());
  }
  EXPECT_TRUE(resumed->close().ok());
  return run;
}

RunReader open_reader(const std::string& path, Access access = Access::read_only) {
  Result<RunReader> reader = RunReader::open(path, access);
  EXPECT_TRUE(reader.ok()) << reader.error().to_string();
  return std::move(reader).value();
}

TEST(ScalarBuckets, AgreeWithBruteForceOverRandomSeriesWrittenInManyBatches) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    TempDir dir;
    const std::string path = dir.file("runs.sqlite");
    const int64_t run = write_random_run(path, seed);
    RunReader reader = open_reader(path);
    ASSERT_TRUE(reader.has_buckets());
    for (const char* key : {"dense", "wide", "sparse"})
      expect_buckets_match_rows(reader, run, key);
    // Every level covers every row once.
    const size_t rows = reader.scalars_after(run, "dense", INT64_MIN)->size();
    for (int level = 0; level < 3; ++level) {
      Result<std::vector<ScalarBucket>> buckets =
          reader.scalar_buckets(run, "dense", level, INT64_MIN, INT64_MAX);
      ASSERT_TRUE(buckets.ok());
      int64_t counted = 0;
      for (const ScalarBucket& bucket : *buckets)
        counted += bucket.count;
      EXPECT_EQ(counted, static_cast<int64_t>(rows));
    }
  }
}

TEST(ScalarBuckets, BatchAfterBatchEqualsAOneShotBuild) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  write_random_run(path, 42);
  write_random_run(path, 43);  // a second run in the same file
  const std::string copy = dir.file("rebuilt.sqlite");
  std::filesystem::copy_file(path, copy);  // the writers are closed: no WAL is left
  Result<Database> db = open_store(copy, Access::read_write);
  ASSERT_TRUE(db.ok()) << db.error().to_string();
  {
    Result<Transaction> txn = Transaction::begin(*db);
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(rebuild_buckets(*db).ok());
    ASSERT_TRUE(txn->commit().ok());
  }
  Result<Statement> attach = db->prepare("ATTACH DATABASE ? AS incremental");
  ASSERT_TRUE(attach.ok());
  attach->bind(1, path);
  ASSERT_TRUE(attach->run().ok());
  attach = Statement();
  const int64_t rows = *db->query_int64("SELECT count(*) FROM main.scalar_buckets");
  EXPECT_GT(rows, 1000);
  EXPECT_EQ(*db->query_int64("SELECT count(*) FROM incremental.scalar_buckets"), rows);
  // Row for row the same in every column but the sum, which batch after batch adds up in
  // another order (rows onto a stored sum, instead of the sums of the level below).
  const std::string columns =
      "run, key_id, level, bucket, count, numbers, first_step, first_wall, first_value, "
      "last_step, last_wall, last_value, low_step, low_wall, low_value, high_step, high_wall, "
      "high_value, nan_step, nan_wall";
  EXPECT_EQ(*db->query_int64("SELECT count(*) FROM (SELECT " + columns +
                             " FROM main.scalar_buckets EXCEPT SELECT " + columns +
                             " FROM incremental.scalar_buckets)"),
            0);
  EXPECT_EQ(*db->query_int64("SELECT count(*) FROM (SELECT " + columns +
                             " FROM incremental.scalar_buckets EXCEPT SELECT " + columns +
                             " FROM main.scalar_buckets)"),
            0);
  EXPECT_EQ(*db->query_int64(
                "SELECT count(*) FROM main.scalar_buckets a JOIN incremental.scalar_buckets b "
                "USING (run, key_id, level, bucket) WHERE NOT coalesce(a.sum IS b.sum OR "
                "abs(a.sum - b.sum) <= 1e-9 * (1 + abs(a.sum)), 0)"),
            0);
}

TEST(ScalarBuckets, MigrationBuildsThemForAVersionTwoDatabase) {
  TempDir dir;
  const std::string path = dir.file("v2.sqlite");
  const int64_t run = write_random_run(path, 7);
  {
    // What a v2 database is: this schema without the summaries.
    Result<Database> db = open_store(path, Access::read_write);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE(db->exec("DROP TABLE scalar_buckets; PRAGMA user_version = 2").ok());
  }
  {
    // Read-only, a v2 database still opens; plots read its rows instead of summaries.
    RunReader old = open_reader(path);
    EXPECT_FALSE(old.has_buckets());
    Result<std::optional<SeriesOverview>> overview = old.overview(run, "dense", 0, 1 << 20, 100);
    ASSERT_TRUE(overview.ok()) << overview.error().to_string();
    EXPECT_FALSE(overview->has_value());
    EXPECT_FALSE(old.scalar_buckets(run, "dense", 0, 0, 100).ok());
    EXPECT_GT(old.scalars_after(run, "dense", -1)->size(), 6000u);
  }
  RunReader migrated = open_reader(path, Access::read_write);
  ASSERT_TRUE(migrated.has_buckets());
  Result<Database> db = open_store(path, Access::read_only);
  EXPECT_EQ(*schema_version(*db), kSchemaVersion);
  for (const char* key : {"dense", "wide", "sparse"})
    expect_buckets_match_rows(migrated, run, key);
  // The writer keeps them from there on.
  {
    Result<RunWriter> writer = RunWriter::resume(path, run);
    ASSERT_TRUE(writer.ok());
    for (int step = 0; step < 50; ++step)
      ASSERT_TRUE(writer->log_scalar("dense", step * 7, -step).ok());
    ASSERT_TRUE(writer->close().ok());
  }
  expect_buckets_match_rows(migrated, run, "dense");
}

TEST(ScalarBuckets, DeletingARunDeletesItsBuckets) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  const int64_t run = write_random_run(path, 9);
  Result<Database> db = open_store(path, Access::read_write);
  ASSERT_TRUE(db.ok());
  EXPECT_GT(*db->query_int64("SELECT count(*) FROM scalar_buckets"), 0);
  ASSERT_TRUE(db->exec("DELETE FROM runs WHERE id = " + std::to_string(run)).ok());
  EXPECT_EQ(*db->query_int64("SELECT count(*) FROM scalar_buckets"), 0);
}

// Rows of one series within [x0, x1], from the store.
std::vector<ScalarPoint> rows_in(RunReader& reader, int64_t run, const std::string& key, int64_t x0,
                                 int64_t x1) {
  Result<std::vector<ScalarPoint>> after = reader.scalars_after(run, key, x0 - 1);
  EXPECT_TRUE(after.ok());
  std::vector<ScalarPoint> rows;
  for (const ScalarPoint& point : *after)
    if (point.step <= x1) rows.push_back(point);
  return rows;
}

TEST(RunReaderOverview, KeepsEveryBucketsExtremesAndTheRowsAtTheEdges) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  const int64_t run = write_random_run(path, 11);
  RunReader reader = open_reader(path);
  const int64_t last = reader.scalars_after(run, "dense", -1)->back().step;
  struct Case {
    int64_t x0, x1;
    size_t columns;
  };
  for (const Case& c : {Case{0, last, 400}, Case{-1000, last + 1000, 700}, Case{1234, 9876, 300},
                        Case{333, last - 77, 50}, Case{5, 4000, 10}}) {
    SCOPED_TRACE("[" + std::to_string(c.x0) + ", " + std::to_string(c.x1) + "] in " +
                 std::to_string(c.columns) + " columns");
    Result<std::optional<SeriesOverview>> result =
        reader.overview(run, "dense", c.x0, c.x1, c.columns);
    ASSERT_TRUE(result.ok()) << result.error().to_string();
    ASSERT_TRUE(result->has_value());
    const SeriesOverview& overview = **result;
    const std::vector<ScalarPoint> rows = rows_in(reader, run, "dense", c.x0, c.x1);
    // The coarsest level whose buckets fit a pixel column of the steps the series spans.
    const int64_t span = rows.back().step - rows.front().step + 1;
    ASSERT_GT(overview.bucket_width, 0);
    EXPECT_LE(overview.bucket_width * static_cast<int64_t>(c.columns), span);
    if (overview.bucket_width < kBucketWidths.back()) {
      EXPECT_GT(overview.bucket_width * 16 * static_cast<int64_t>(c.columns), span);
    }
    EXPECT_FALSE(overview.every_row);
    EXPECT_LT(overview.points.size(), rows.size());
    EXPECT_LE(overview.points.size(), 5 * overview.spans.size());

    // Every point is a row in range, in step order.
    std::map<int64_t, ScalarPoint> by_step;
    for (const ScalarPoint& row : rows)
      by_step[row.step] = row;
    for (size_t i = 0; i < overview.points.size(); ++i) {
      const ScalarPoint& point = overview.points[i];
      if (i > 0) {
        ASSERT_LT(overview.points[i - 1].step, point.step);
      }
      ASSERT_TRUE(by_step.count(point.step)) << "step " << point.step;
      EXPECT_TRUE(testing::same_point(point, by_step[point.step]));
    }
    // Per bucket of the chosen width (brute force over the rows in range): a bucket wholly
    // in range keeps its first, last, lowest, highest and first NaN rows; one cut by the
    // range keeps all its rows in range.
    std::set<int64_t> kept;
    for (const ScalarPoint& point : overview.points)
      kept.insert(point.step);
    const int level = static_cast<int>(
        std::find(kBucketWidths.begin(), kBucketWidths.end(), overview.bucket_width) -
        kBucketWidths.begin());
    const std::vector<ScalarPoint> all =
        rows_in(reader, run, "dense", INT64_MIN / 2, INT64_MAX / 2);
    std::map<int64_t, ScalarBucket> whole;
    for (const ScalarBucket& bucket : brute_force_buckets(all, level))
      whole[bucket.bucket] = bucket;
    int64_t numbers = 0;
    for (const ScalarPoint& row : rows) {
      numbers += std::isnan(row.value) ? 0 : 1;
      const ScalarBucket& bucket = whole[testing::floor_div(row.step, overview.bucket_width)];
      const bool cut = bucket.first.step < c.x0 || bucket.last.step > c.x1;
      if (cut) {
        EXPECT_TRUE(kept.count(row.step)) << "row " << row.step << " of a cut bucket";
        continue;
      }
      for (const std::optional<ScalarPoint>& must :
           {std::optional<ScalarPoint>(bucket.first), std::optional<ScalarPoint>(bucket.last),
            bucket.low, bucket.high, bucket.first_nan})
        if (must) {
          EXPECT_TRUE(kept.count(must->step)) << "bucket " << bucket.bucket;
        }
    }
    // The spans cover the points and stand for every row that is not NaN.
    ASSERT_FALSE(overview.spans.empty());
    EXPECT_EQ(overview.spans.back().end, overview.points.size());
    int64_t spanned = 0;
    for (size_t i = 0; i < overview.spans.size(); ++i) {
      if (i > 0) {
        EXPECT_LT(overview.spans[i - 1].end, overview.spans[i].end);
      }
      spanned += overview.spans[i].numbers;
    }
    EXPECT_EQ(spanned, numbers);
    // So the lowest and highest values in range are those of the rows.
    auto lowest = [](const std::vector<ScalarPoint>& points) {
      double low = kInf;
      for (const ScalarPoint& point : points)
        if (!std::isnan(point.value)) low = std::min(low, point.value);
      return low;
    };
    EXPECT_EQ(lowest(overview.points), lowest(rows));
  }
}

TEST(RunReaderOverview, ShortSeriesAreReadAsRowsAndSparseOnesComeWhole) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "short"});
  ASSERT_TRUE(writer.ok());
  for (int step = 0; step < 3000; ++step)
    ASSERT_TRUE(writer->log_scalar("loss", step, std::sin(step)).ok());
  for (int step = 0; step < 100000; step += 500)  // one row per level-0 bucket
    ASSERT_TRUE(writer->log_scalar("val/loss", step, step % 3000 == 0 ? kNan : 1.0 / step).ok());
  ASSERT_TRUE(writer->close().ok());
  RunReader reader = open_reader(path);
  const int64_t run = writer->run_id();
  // 3000 steps on 400 columns: 7.5 steps per column, finer than any level.
  EXPECT_FALSE(reader.overview(run, "loss", 0, 2999, 400)->has_value());
  // ... on 100 columns, level 0 (16 steps) fits.
  EXPECT_EQ((*reader.overview(run, "loss", 0, 2999, 100))->bucket_width, 16);
  // A sparse series keeps every row.
  std::optional<SeriesOverview> sparse = *reader.overview(run, "val/loss", 0, 99999, 1000);
  ASSERT_TRUE(sparse.has_value());
  EXPECT_TRUE(sparse->every_row);
  EXPECT_EQ(sparse->points.size(), 200u);
  // Nothing in range, or no such key: empty, complete.
  EXPECT_TRUE((*reader.overview(run, "loss", 5000, 9000, 10))->points.empty());
  EXPECT_TRUE((*reader.overview(run, "never", 0, 9000, 10))->points.empty());
  EXPECT_FALSE(reader.overview(run, "loss", 10, 0, 10).ok());
  EXPECT_FALSE(reader.overview(run, "loss", 0, 10, 0).ok());
}

TEST(ScalarBucketTest, MergingBucketsEqualsAddingTheirRows) {
  std::mt19937_64 rng(5);
  for (int round = 0; round < 200; ++round) {
    std::vector<ScalarPoint> rows;
    int64_t step = static_cast<int64_t>(rng() % 100) - 50;
    for (int i = 0; i < 1 + static_cast<int>(rng() % 60); ++i) {
      step += 1 + static_cast<int64_t>(rng() % 4);
      rows.push_back({step, 1000 + step, random_value(rng)});
    }
    ScalarBucket whole, merged;
    for (const ScalarPoint& row : rows)
      whole.add(row);
    size_t begin = 0;
    while (begin < rows.size()) {
      const size_t end = std::min(rows.size(), begin + static_cast<size_t>(rng() % 9));
      ScalarBucket part;
      for (size_t i = begin; i < end; ++i)
        part.add(rows[i]);
      merged.merge(part);
      begin = end;
    }
    EXPECT_EQ(merged.count, whole.count);
    EXPECT_EQ(merged.numbers, whole.numbers);
    EXPECT_TRUE(testing::same_point(merged.first, whole.first));
    EXPECT_TRUE(testing::same_point(merged.last, whole.last));
    EXPECT_TRUE(testing::same_point(merged.low, whole.low));
    EXPECT_TRUE(testing::same_point(merged.high, whole.high));
    EXPECT_TRUE(testing::same_point(merged.first_nan, whole.first_nan));
    const ScalarBucket expected = brute_force_buckets(rows, 2).size() == 1
                                      ? brute_force_buckets(rows, 2).front()
                                      : ScalarBucket{};
    if (expected.count) {
      EXPECT_TRUE(testing::same_point(whole.low, expected.low));
    }
  }
  EXPECT_EQ(bucket_of(-1, 16), -1);
  EXPECT_EQ(bucket_of(-16, 16), -1);
  EXPECT_EQ(bucket_of(-17, 16), -2);
  EXPECT_EQ(bucket_of(15, 16), 0);
  EXPECT_EQ(bucket_of(std::numeric_limits<int64_t>::min(), 16),
            std::numeric_limits<int64_t>::min() / 16);
}

}  // namespace
}  // namespace hl::store
