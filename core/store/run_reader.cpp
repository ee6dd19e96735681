#include "core/store/run_reader.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <type_traits>
#include <unordered_map>

#include "core/store/buckets.hpp"
#include "core/store/schema.hpp"

namespace hl::store {
namespace {

constexpr const char* kRunColumns =
    "r.id, r.uuid, r.name, r.status, r.status_message, r.created_ms, r.started_ms, "
    "r.finished_ms, r.base_model, r.device, r.parent_run, r.method, r.host, r.last_step";
constexpr int kRunColumnCount = 14;

RunInfo read_run_columns(const Statement& stmt) {
  RunInfo info;
  info.id = stmt.column_int64(0);
  info.uuid = stmt.column_text(1);
  info.name = stmt.column_text(2);
  info.status = parse_run_status(stmt.column_text(3)).value_or(RunStatus::failed);
  info.status_message = stmt.column_text(4);
  info.created_ms = stmt.column_int64(5);
  info.started_ms = stmt.column_optional_int64(6);
  info.finished_ms = stmt.column_optional_int64(7);
  info.base_model = stmt.column_text(8);
  info.device = stmt.column_text(9);
  info.parent_run = stmt.column_optional_int64(10);
  info.method = stmt.column_text(11);
  info.host = stmt.column_text(12);
  info.last_step = stmt.column_optional_int64(13);
  return info;
}

std::string placeholders(size_t count) {
  std::string text;
  for (size_t i = 0; i < count; ++i)
    text += i ? ",?" : "?";
  return text;
}

bool all_digits(std::string_view text) {
  return !text.empty() && text.size() < 19 &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool looks_like_uuid_prefix(std::string_view text) {
  return text.size() >= 4 && text.size() <= 36 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == '-';
         });
}

// Min and max of one step bucket, ignoring NaN.
struct Bucket {
  bool any = false;
  bool any_number = false;
  ScalarPoint first;
  ScalarPoint low;
  ScalarPoint high;
};

}  // namespace

// Where the hl_points() aggregate sends each (step, wall_ms, value) row it is given.
struct PointSink {
  void* context = nullptr;
  void (*call)(void* context, const ScalarPoint& point) = nullptr;
};

void points_step(sqlite3_context* ctx, int, sqlite3_value** args) {
  const auto* sink = static_cast<const PointSink*>(sqlite3_user_data(ctx));
  if (!sink->call) return;
  const double value = sqlite3_value_type(args[2]) == SQLITE_NULL
                           ? std::numeric_limits<double>::quiet_NaN()
                           : sqlite3_value_double(args[2]);
  sink->call(sink->context,
             ScalarPoint{sqlite3_value_int64(args[0]), sqlite3_value_int64(args[1]), value});
}

void points_final(sqlite3_context* ctx) {
  sqlite3_result_null(ctx);
}

// Where the hl_buckets() aggregate sends each bucket row (the kBucketColumns) it is given.
struct BucketSink {
  void* context = nullptr;
  void (*call)(void* context, const ScalarBucket& bucket) = nullptr;
};

double value_or_nan(sqlite3_value* value) {
  return sqlite3_value_type(value) == SQLITE_NULL ? std::numeric_limits<double>::quiet_NaN()
                                                  : sqlite3_value_double(value);
}

std::optional<ScalarPoint> point_of(sqlite3_value** args) {
  if (sqlite3_value_type(args[0]) == SQLITE_NULL) return std::nullopt;
  return ScalarPoint{sqlite3_value_int64(args[0]), sqlite3_value_int64(args[1]),
                     value_or_nan(args[2])};
}

// The columns in the order of kBucketColumns, as read_bucket reads them from a statement.
void buckets_step(sqlite3_context* ctx, int, sqlite3_value** args) {
  const auto* sink = static_cast<const BucketSink*>(sqlite3_user_data(ctx));
  if (!sink->call) return;
  ScalarBucket bucket;
  bucket.level = static_cast<int>(sqlite3_value_int64(args[0]));
  bucket.bucket = sqlite3_value_int64(args[1]);
  bucket.count = sqlite3_value_int64(args[2]);
  bucket.numbers = sqlite3_value_int64(args[3]);
  bucket.sum = value_or_nan(args[4]);
  bucket.first = *point_of(args + 5);
  bucket.last = *point_of(args + 8);
  bucket.low = point_of(args + 11);
  bucket.high = point_of(args + 14);
  if (sqlite3_value_type(args[17]) != SQLITE_NULL)
    bucket.first_nan = ScalarPoint{sqlite3_value_int64(args[17]), sqlite3_value_int64(args[18]),
                                   std::numeric_limits<double>::quiet_NaN()};
  sink->call(sink->context, bucket);
}

struct RunReader::Impl {
  Database db;
  int version = 0;         // the schema version at open
  PointSink sink;          // the target of hl_points() while it runs
  BucketSink bucket_sink;  // the target of hl_buckets() while it runs
  bool points_registered = false;
  std::unordered_map<std::string, Statement> cache;  // destroyed before db (declared after)

  // Runs `stmt`, a "SELECT hl_points(step, wall_ms, value) FROM (...)" query, handing each
  // row to on_point. SQLite feeds the aggregate inside one step, instead of returning to
  // the caller once per row, which is most of the cost of reading a long series.
  template <class OnPoint>
  Status for_each_point(Statement& stmt, OnPoint&& on_point) {
    sink.context = &on_point;
    sink.call = [](void* context, const ScalarPoint& point) {
      (*static_cast<std::remove_reference_t<OnPoint>*>(context))(point);
    };
    Status status = for_each_row(stmt, [](Statement&) {});
    sink = {};
    return status;
  }

  // As for_each_point, for "SELECT hl_buckets(<kBucketColumns>) FROM (...)" queries.
  template <class OnBucket>
  Status for_each_bucket(Statement& stmt, OnBucket&& on_bucket) {
    bucket_sink.context = &on_bucket;
    bucket_sink.call = [](void* context, const ScalarBucket& bucket) {
      (*static_cast<std::remove_reference_t<OnBucket>*>(context))(bucket);
    };
    Status status = for_each_row(stmt, [](Statement&) {});
    bucket_sink = {};
    return status;
  }

  // Registers hl_points() and hl_buckets() on this connection, once.
  Status register_points() {
    if (points_registered) return Status::Ok();
    int code = sqlite3_create_function_v2(db.handle(), "hl_points", 3, SQLITE_UTF8, &sink, nullptr,
                                          points_step, points_final, nullptr);
    if (code != SQLITE_OK) return db.error("registering hl_points()");
    code = sqlite3_create_function_v2(db.handle(), "hl_buckets", 19, SQLITE_UTF8, &bucket_sink,
                                      nullptr, buckets_step, points_final, nullptr);
    if (code != SQLITE_OK) return db.error("registering hl_buckets()");
    points_registered = true;
    return Status::Ok();
  }

  Result<Statement*> statement(const std::string& sql) {
    if (auto it = cache.find(sql); it != cache.end()) {
      it->second.reset();
      return &it->second;
    }
    Result<Statement> stmt = db.prepare(sql);
    if (!stmt.ok()) return stmt.error();
    return &cache.emplace(sql, std::move(stmt).value()).first->second;
  }

  // The id of a metric key, or nullopt if it was never logged.
  Result<std::optional<int64_t>> key_id(std::string_view key) {
    Result<Statement*> stmt = statement("SELECT id FROM metric_keys WHERE key = ?");
    if (!stmt.ok()) return stmt.error();
    (*stmt)->bind(1, key);
    std::optional<int64_t> id;
    if (Status s = for_each_row(**stmt, [&](Statement& row) { id = row.column_int64(0); }); !s.ok())
      return s.error();
    return id;
  }

  // Keys with rows in `table` for the run: one index probe per known key instead of a
  // scan of the run's rows.
  Result<std::vector<std::string>> keys_present(const char* table, int64_t run_id) {
    Result<Statement*> stmt =
        statement(std::string("SELECT k.key FROM metric_keys k WHERE EXISTS (SELECT 1 FROM ") +
                  table + " t WHERE t.run = ? AND t.key_id = k.id) ORDER BY k.key");
    if (!stmt.ok()) return stmt.error();
    (*stmt)->bind(1, run_id);
    std::vector<std::string> keys;
    if (Status s =
            for_each_row(**stmt, [&](Statement& row) { keys.push_back(row.column_text(0)); });
        !s.ok())
      return s.error();
    return keys;
  }

  Error no_such_run(int64_t run_id) const {
    return make_error("no run with id " + std::to_string(run_id), Location{db.path(), 0, ""});
  }
};

RunReader::RunReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RunReader::RunReader(RunReader&&) noexcept = default;
RunReader& RunReader::operator=(RunReader&&) noexcept = default;
RunReader::~RunReader() = default;

Result<RunReader> RunReader::open(const std::string& path, Access access) {
  std::error_code ec;
  if (!path.empty() && !std::filesystem::exists(path, ec))
    return make_error("no such run database file", Location{path, 0, ""});
  Result<Database> db = open_store(path, access);
  if (!db.ok()) return db.error();
  auto impl = std::make_unique<Impl>();
  impl->db = std::move(db).value();
  Result<int> version = schema_version(impl->db);
  if (!version.ok()) return version.error();
  impl->version = *version;
  return RunReader(std::move(impl));
}

const std::string& RunReader::path() const {
  return impl_->db.path();
}

Result<int64_t> RunReader::set_mmap_size(int64_t bytes) {
  if (bytes < 0)
    return make_error("set_mmap_size: bytes must be >= 0, got " + std::to_string(bytes));
  return impl_->db.query_int64("PRAGMA mmap_size=" + std::to_string(bytes));
}

Result<int64_t> RunReader::data_version() {
  return impl_->db.query_int64("PRAGMA data_version");
}

Status RunReader::check_integrity() {
  Result<Statement*> stmt = impl_->statement("PRAGMA integrity_check");
  if (!stmt.ok()) return stmt.error();
  std::string findings;
  if (Status s = for_each_row(**stmt,
                              [&](Statement& row) {
                                std::string line = row.column_text(0);
                                if (line != "ok") findings += (findings.empty() ? "" : "; ") + line;
                              });
      !s.ok())
    return s;
  if (!findings.empty())
    return make_error("integrity check failed: " + findings, Location{path(), 0, ""});
  return Status::Ok();
}

Result<std::vector<RunListEntry>> RunReader::list_runs(const RunFilter& filter) {
  std::string where = "1";
  if (filter.status) where += " AND status = ?";
  if (!filter.name_contains.empty()) where += " AND instr(name, ?) > 0";
  if (!filter.method.empty()) where += " AND method = ?";
  for (size_t i = 0; i < filter.params.size(); ++i)
    where +=
        " AND EXISTS (SELECT 1 FROM params p WHERE p.run = runs.id AND p.key = ? AND p.value = ?)";
  const std::string sql =
      std::string("SELECT ") + kRunColumns + ", s.key, s.value FROM (SELECT * FROM runs WHERE " +
      where +
      " ORDER BY id DESC LIMIT ?) r LEFT JOIN run_summary s ON s.run = r.id ORDER BY r.id, s.key";
  Result<Statement*> stmt = impl_->statement(sql);
  if (!stmt.ok()) return stmt.error();
  Statement& query = **stmt;
  int index = 1;
  if (filter.status) query.bind(index++, to_string(*filter.status));
  if (!filter.name_contains.empty()) query.bind(index++, filter.name_contains);
  if (!filter.method.empty()) query.bind(index++, filter.method);
  for (const auto& [key, value] : filter.params) {
    query.bind(index++, key);
    query.bind(index++, value);
  }
  query.bind(index, filter.limit ? static_cast<int64_t>(filter.limit) : int64_t{-1});

  std::vector<RunListEntry> runs;
  Status status = for_each_row(query, [&](Statement& row) {
    const int64_t id = row.column_int64(0);
    if (runs.empty() || runs.back().info.id != id) runs.push_back({read_run_columns(row), {}});
    if (!row.is_null(kRunColumnCount))
      runs.back().summary[row.column_text(kRunColumnCount)] =
          row.column_double(kRunColumnCount + 1);
  });
  if (!status.ok()) return status.error();
  return runs;
}

Result<int64_t> RunReader::find_run(std::string_view reference) {
  const std::string text(reference);
  if (text.empty()) return make_error("the run reference is empty", Location{path(), 0, ""});
  if (all_digits(text)) {
    Result<Statement*> stmt = impl_->statement("SELECT id FROM runs WHERE id = ?");
    if (!stmt.ok()) return stmt.error();
    (*stmt)->bind(1, static_cast<int64_t>(std::stoll(text)));
    std::optional<int64_t> id;
    if (Status s = for_each_row(**stmt, [&](Statement& row) { id = row.column_int64(0); }); !s.ok())
      return s.error();
    if (id) return *id;
  }
  if (looks_like_uuid_prefix(text)) {
    // GLOB with a literal prefix uses the uuid index; the text holds no GLOB specials.
    Result<Statement*> stmt =
        impl_->statement("SELECT id, uuid FROM runs WHERE uuid GLOB ? ORDER BY id LIMIT 3");
    if (!stmt.ok()) return stmt.error();
    (*stmt)->bind(1, text + "*");
    std::vector<std::pair<int64_t, std::string>> matches;
    if (Status s = for_each_row(
            **stmt,
            [&](Statement& row) { matches.emplace_back(row.column_int64(0), row.column_text(1)); });
        !s.ok())
      return s.error();
    if (matches.size() == 1) return matches.front().first;
    if (matches.size() > 1)
      return make_error("run reference '" + text + "' is ambiguous: it starts the uuids " +
                            matches[0].second + ", " + matches[1].second +
                            (matches.size() > 2 ? ", ..." : "") + "; give more characters",
                        Location{path(), 0, ""});
  }
  Result<Statement*> stmt = impl_->statement(
      "SELECT id FROM runs WHERE name = ? ORDER BY created_ms DESC, id DESC LIMIT 1");
  if (!stmt.ok()) return stmt.error();
  (*stmt)->bind(1, text);
  std::optional<int64_t> id;
  if (Status s = for_each_row(**stmt, [&](Statement& row) { id = row.column_int64(0); }); !s.ok())
    return s.error();
  if (id) return *id;
  return make_error("no run matches '" + text + "' (looked for an id, a uuid prefix and a name)",
                    Location{path(), 0, ""});
}

Result<RunInfo> RunReader::run(int64_t run_id) {
  Result<Statement*> stmt = impl_->statement(std::string("SELECT ") + kRunColumns +
                                             ", r.experiment FROM runs r WHERE r.id = ?");
  if (!stmt.ok()) return stmt.error();
  (*stmt)->bind(1, run_id);
  std::optional<RunInfo> info;
  if (Status s = for_each_row(**stmt,
                              [&](Statement& row) {
                                info = read_run_columns(row);
                                info->experiment = row.column_text(kRunColumnCount);
                              });
      !s.ok())
    return s.error();
  if (!info) return impl_->no_such_run(run_id);
  return *info;
}

Result<std::map<std::string, std::string>> RunReader::params(int64_t run_id) {
  Result<Statement*> stmt = impl_->statement("SELECT key, value FROM params WHERE run = ?");
  if (!stmt.ok()) return stmt.error();
  (*stmt)->bind(1, run_id);
  std::map<std::string, std::string> params;
  if (Status s = for_each_row(
          **stmt, [&](Statement& row) { params[row.column_text(0)] = row.column_text(1); });
      !s.ok())
    return s.error();
  return params;
}

Result<ParamComparison> RunReader::compare_params(const std::vector<int64_t>& run_ids) {
  std::vector<std::map<std::string, std::string>> all;
  for (int64_t run_id : run_ids) {
    Result<std::map<std::string, std::string>> one = params(run_id);
    if (!one.ok()) return one.error();
    all.push_back(std::move(one).value());
  }
  return hl::store::compare_params(all);
}

Result<std::map<std::string, double>> RunReader::summary(int64_t run_id) {
  Result<Statement*> stmt = impl_->statement("SELECT key, value FROM run_summary WHERE run = ?");
  if (!stmt.ok()) return stmt.error();
  (*stmt)->bind(1, run_id);
  std::map<std::string, double> summary;
  if (Status s = for_each_row(
          **stmt, [&](Statement& row) { summary[row.column_text(0)] = row.column_double(1); });
      !s.ok())
    return s.error();
  return summary;
}

Result<RunDetails> RunReader::details(int64_t run_id) {
  RunDetails details;
  Result<RunInfo> info = run(run_id);
  if (!info.ok()) return info.error();
  details.info = std::move(info).value();
  Result<std::map<std::string, std::string>> run_params = params(run_id);
  if (!run_params.ok()) return run_params.error();
  details.params = std::move(run_params).value();
  Result<std::map<std::string, double>> run_summary = summary(run_id);
  if (!run_summary.ok()) return run_summary.error();
  details.summary = std::move(run_summary).value();

  // The inner max() is answered from the (run, key_id, step) key, one probe per key.
  Result<Statement*> last = impl_->statement(
      "SELECT k.key, s.step, s.value FROM metric_keys k JOIN scalars s "
      "ON s.run = ?1 AND s.key_id = k.id "
      "AND s.step = (SELECT max(step) FROM scalars WHERE run = ?1 AND key_id = k.id) "
      "ORDER BY k.key");
  if (!last.ok()) return last.error();
  (*last)->bind(1, run_id);
  if (Status s =
          for_each_row(**last,
                       [&](Statement& row) {
                         details.last_scalars.push_back(
                             {row.column_text(0), row.column_int64(1), row.column_double(2)});
                       });
      !s.ok())
    return s.error();

  Result<std::vector<EvalRow>> run_evals = evals({run_id});
  if (!run_evals.ok()) return run_evals.error();
  details.evals = std::move(run_evals).value();
  Result<std::vector<ArtifactRow>> run_artifacts = artifacts(run_id);
  if (!run_artifacts.ok()) return run_artifacts.error();
  details.artifacts = std::move(run_artifacts).value();
  return details;
}

Result<std::vector<std::string>> RunReader::scalar_keys(int64_t run_id) {
  return impl_->keys_present("scalars", run_id);
}

Result<std::vector<std::string>> RunReader::layer_scalar_keys(int64_t run_id) {
  return impl_->keys_present("layer_scalars", run_id);
}

Result<std::vector<ScalarPoint>> RunReader::scalars_after(int64_t run_id, std::string_view key,
                                                          int64_t after_step, size_t limit) {
  Result<std::optional<int64_t>> id = impl_->key_id(key);
  if (!id.ok()) return id.error();
  std::vector<ScalarPoint> points;
  if (!*id) return points;
  Result<Statement*> stmt = impl_->statement(
      "SELECT step, wall_ms, value FROM scalars WHERE run = ? AND key_id = ? AND step > ? "
      "ORDER BY step LIMIT ?");
  if (!stmt.ok()) return stmt.error();
  (*stmt)->bind(1, run_id).bind(2, **id).bind(3, after_step);
  (*stmt)->bind(4, limit ? static_cast<int64_t>(limit) : int64_t{-1});
  if (Status s = for_each_row(
          **stmt,
          [&](Statement& row) {
            points.push_back({row.column_int64(0), row.column_int64(1), row.column_double(2)});
          });
      !s.ok())
    return s.error();
  return points;
}

Result<std::vector<ScalarPoint>> RunReader::downsampled(int64_t run_id, std::string_view key,
                                                        int64_t x0, int64_t x1, size_t max_points) {
  if (max_points < 2)
    return make_error("downsampled: max_points must be >= 2, got " + std::to_string(max_points));
  if (x1 < x0)
    return make_error("downsampled: the viewport [" + std::to_string(x0) + ", " +
                      std::to_string(x1) + "] is empty");
  Result<std::optional<int64_t>> id = impl_->key_id(key);
  if (!id.ok()) return id.error();
  std::vector<ScalarPoint> raw;
  if (!*id) return raw;
  if (Status registered = impl_->register_points(); !registered.ok()) return registered.error();
  // An aggregate over an ordered subquery sees the rows in step order (SQLite does not
  // flatten a subquery with ORDER BY into an aggregate).
  Result<Statement*> stmt = impl_->statement(
      "SELECT hl_points(step, wall_ms, value) FROM (SELECT step, wall_ms, value FROM scalars "
      "WHERE run = ? AND key_id = ? AND step BETWEEN ? AND ? ORDER BY step)");
  if (!stmt.ok()) return stmt.error();
  (*stmt)->bind(1, run_id).bind(2, **id).bind(3, x0).bind(4, x1);

  // One pass over the rows (ordered by the primary key): keep them raw while they fit; only
  // a series that turns out longer is bucketed (the raw rows so far first), so that the
  // common short series pays neither the buckets' memory nor the per-row bucket index.
  const size_t bucket_count = max_points / 2;
  // Exact integer bucketing: bucket = floor((step - x0) * buckets / (x1 - x0 + 1)).
  const __int128 span = static_cast<__int128>(x1) - x0 + 1;
  std::vector<Bucket> buckets;
  auto add = [&](const ScalarPoint& point) {
    const auto index = static_cast<size_t>((static_cast<__int128>(point.step) - x0) *
                                           static_cast<__int128>(bucket_count) / span);
    Bucket& bucket = buckets[std::min(index, bucket_count - 1)];
    if (!bucket.any) {
      bucket.any = true;
      bucket.first = point;
    }
    if (std::isnan(point.value)) return;
    if (!bucket.any_number) {
      bucket.any_number = true;
      bucket.low = bucket.high = point;
      return;
    }
    if (point.value < bucket.low.value) bucket.low = point;
    if (point.value > bucket.high.value) bucket.high = point;
  };
  raw.reserve(max_points + 1);
  size_t rows = 0;
  Status status = impl_->for_each_point(**stmt, [&](const ScalarPoint& point) {
    if (++rows <= max_points) {
      raw.push_back(point);
      return;
    }
    if (buckets.empty()) {
      buckets.resize(bucket_count);
      for (const ScalarPoint& earlier : raw)
        add(earlier);
    }
    add(point);
  });
  if (!status.ok()) return status.error();
  if (rows <= max_points) return raw;

  std::vector<ScalarPoint> points;
  points.reserve(max_points);
  for (const Bucket& bucket : buckets) {
    if (!bucket.any) continue;
    if (!bucket.any_number) {  // only NaN here: keep one, so that plots show the gap
      points.push_back(bucket.first);
      continue;
    }
    const ScalarPoint& early = bucket.low.step <= bucket.high.step ? bucket.low : bucket.high;
    const ScalarPoint& late = bucket.low.step <= bucket.high.step ? bucket.high : bucket.low;
    points.push_back(early);
    if (late.step != early.step) points.push_back(late);
  }
  return points;
}

bool RunReader::has_buckets() const {
  return impl_->version >= 3;
}

Result<std::vector<ScalarBucket>> RunReader::scalar_buckets(int64_t run_id, std::string_view key,
                                                            int level, int64_t first,
                                                            int64_t last) {
  if (level < 0 || level >= static_cast<int>(kBucketWidths.size()))
    return make_error("scalar_buckets: no bucket level " + std::to_string(level));
  if (!has_buckets())
    return make_error("keeps no bucket summaries (schema v" + std::to_string(impl_->version) +
                          "); open it once for writing to migrate it",
                      Location{path(), 0, ""});
  Result<std::optional<int64_t>> id = impl_->key_id(key);
  if (!id.ok()) return id.error();
  std::vector<ScalarBucket> buckets;
  if (!*id) return buckets;
  Result<Statement*> stmt = impl_->statement(
      "SELECT " + std::string(kBucketColumns) +
      " FROM scalar_buckets WHERE run = ? AND key_id = ? AND level = ? AND bucket BETWEEN ? AND ? "
      "ORDER BY bucket");
  if (!stmt.ok()) return stmt.error();
  (*stmt)->bind(1, run_id).bind(2, **id).bind(3, level).bind(4, first).bind(5, last);
  if (Status s =
          for_each_row(**stmt, [&](Statement& row) { buckets.push_back(read_bucket(row, 0)); });
      !s.ok())
    return s.error();
  return buckets;
}

Result<std::optional<SeriesOverview>> RunReader::overview(int64_t run_id, std::string_view key,
                                                          int64_t x0, int64_t x1, size_t columns) {
  if (columns == 0) return make_error("overview: columns must be >= 1");
  if (x1 < x0)
    return make_error("overview: the range [" + std::to_string(x0) + ", " + std::to_string(x1) +
                      "] is empty");
  if (!has_buckets()) return std::optional<SeriesOverview>();
  Result<std::optional<int64_t>> id = impl_->key_id(key);
  if (!id.ok()) return id.error();
  SeriesOverview overview;
  overview.every_row = true;
  if (!*id) return std::optional<SeriesOverview>(std::move(overview));

  // Buckets and the rows at the edges come from one snapshot, while a writer may commit.
  Result<Transaction> snapshot = Transaction::begin(impl_->db, false);
  if (!snapshot.ok()) return snapshot.error();

  // The steps the series spans within the range: two probes of the primary key.
  Result<Statement*> extent = impl_->statement(
      "SELECT (SELECT min(step) FROM scalars WHERE run = ?1 AND key_id = ?2 AND step BETWEEN ?3 "
      "AND ?4), (SELECT max(step) FROM scalars WHERE run = ?1 AND key_id = ?2 AND step BETWEEN ?3 "
      "AND ?4)");
  if (!extent.ok()) return extent.error();
  (*extent)->bind(1, run_id).bind(2, **id).bind(3, x0).bind(4, x1);
  std::optional<int64_t> first, last;
  if (Status s = for_each_row(**extent,
                              [&](Statement& row) {
                                first = row.column_optional_int64(0);
                                last = row.column_optional_int64(1);
                              });
      !s.ok())
    return s.error();
  if (!first || !last) return std::optional<SeriesOverview>(std::move(overview));
  constexpr int kTop = static_cast<int>(kBucketWidths.size()) - 1;
  const int64_t lo = *first, hi = *last;
  const __int128 span = static_cast<__int128>(hi) - lo + 1;
  int level = -1;
  for (int candidate = kTop; candidate >= 0 && level < 0; --candidate)
    if (static_cast<__int128>(kBucketWidths[static_cast<size_t>(candidate)]) * columns <= span)
      level = candidate;
  if (level < 0) return std::optional<SeriesOverview>();
  const int64_t width = kBucketWidths[static_cast<size_t>(level)];
  if (Status registered = impl_->register_points(); !registered.ok()) return registered.error();
  // The buckets through an aggregate (one sqlite3_step for all of them, as for rows). A
  // range of the primary key comes in key order; should SQLite ever choose otherwise, the
  // buckets are read again through an ordered subquery (which costs a copy of each row).
  const std::string fields(kBucketColumns);
  const std::string from =
      " FROM scalar_buckets WHERE run = ? AND key_id = ? AND level = ? AND bucket BETWEEN ? AND ?";
  overview.bucket_width = width;
  const auto expected = static_cast<size_t>(span / width) + 2;
  // Buckets reaching beyond the range (only the first and the last can): their rows in range
  // take their place, read once the aggregate is done.
  struct Cut {
    int64_t bucket;
    size_t points, spans;  // where in `overview` the rows go
  };
  std::vector<Cut> cuts;
  std::string aggregate = "SELECT hl_buckets(";
  aggregate.append(fields).append(")");
  std::string in_order = aggregate;
  aggregate.append(from);
  in_order.append(" FROM (SELECT ").append(fields).append(from).append(" ORDER BY bucket)");
  bool ordered = true;
  for (const std::string& sql : {aggregate, in_order}) {
    Result<Statement*> buckets = impl_->statement(sql);
    if (!buckets.ok()) return buckets.error();
    overview.points.clear();
    overview.spans.clear();
    overview.points.reserve(4 * expected);
    overview.spans.reserve(expected);
    overview.every_row = true;
    cuts.clear();
    ordered = true;
    int64_t previous = std::numeric_limits<int64_t>::min();
    (*buckets)->bind(1, run_id).bind(2, **id).bind(3, level);
    (*buckets)->bind(4, bucket_of(lo, width)).bind(5, bucket_of(hi, width));
    Status status = impl_->for_each_bucket(**buckets, [&](const ScalarBucket& bucket) {
      if (bucket.bucket <= previous) ordered = false;
      previous = bucket.bucket;
      if (!ordered) return;
      if (bucket.first.step < x0 || bucket.last.step > x1) {
        cuts.push_back({bucket.bucket, overview.points.size(), overview.spans.size()});
        return;
      }
      const size_t before = overview.points.size();
      bucket.append_points(overview.points);
      if (static_cast<int64_t>(overview.points.size() - before) < bucket.count)
        overview.every_row = false;
      overview.spans.push_back({overview.points.size(), bucket.numbers, bucket.mean()});
    });
    if (!status.ok()) return status.error();
    if (ordered) break;
  }
  if (!ordered) return make_error("overview: bucket summaries came out of order");

  Result<Statement*> rows = impl_->statement(
      "SELECT step, wall_ms, value FROM scalars WHERE run = ? AND key_id = ? "
      "AND step BETWEEN ? AND ? ORDER BY step");
  if (!rows.ok()) return rows.error();
  for (auto cut = cuts.rbegin(); cut != cuts.rend(); ++cut) {  // the last first: stable offsets
    std::vector<ScalarPoint> edge;
    (*rows)->bind(1, run_id).bind(2, **id);
    (*rows)->bind(3, std::max(x0, cut->bucket * width));
    (*rows)->bind(4, std::min(x1, cut->bucket * width + (width - 1)));
    if (Status s = for_each_row(
            **rows,
            [&](Statement& row) {
              edge.push_back({row.column_int64(0), row.column_int64(1), row.column_double(2)});
            });
        !s.ok())
      return s.error();
    // Each row a span of its own; the spans after it move by the rows put before them.
    std::vector<SeriesOverview::Span> spans;
    for (size_t i = 0; i < edge.size(); ++i) {
      const bool nan = std::isnan(edge[i].value);
      spans.push_back({cut->points + i + 1, nan ? 0 : 1, edge[i].value});
    }
    for (size_t i = cut->spans; i < overview.spans.size(); ++i)
      overview.spans[i].end += edge.size();
    overview.points.insert(overview.points.begin() + static_cast<std::ptrdiff_t>(cut->points),
                           edge.begin(), edge.end());
    overview.spans.insert(overview.spans.begin() + static_cast<std::ptrdiff_t>(cut->spans),
                          spans.begin(), spans.end());
  }
  if (Status s = snapshot->commit(); !s.ok()) return s.error();
  return std::optional<SeriesOverview>(std::move(overview));
}

Result<LayerMatrix> RunReader::layer_matrix(int64_t run_id, std::string_view key, int head) {
  Result<std::optional<int64_t>> id = impl_->key_id(key);
  if (!id.ok()) return id.error();
  LayerMatrix matrix;
  if (!*id) return matrix;
  Result<Statement*> stmt = impl_->statement(
      "SELECT step, layer, value FROM layer_scalars WHERE run = ? AND key_id = ? AND head = ? "
      "ORDER BY step, layer");
  if (!stmt.ok()) return stmt.error();
  (*stmt)->bind(1, run_id).bind(2, **id).bind(3, head);
  struct Cell {
    int64_t step;
    int layer;
    double value;
  };
  std::vector<Cell> cells;
  if (Status s = for_each_row(**stmt,
                              [&](Statement& row) {
                                cells.push_back({row.column_int64(0),
                                                 static_cast<int>(row.column_int64(1)),
                                                 row.column_double(2)});
                              });
      !s.ok())
    return s.error();
  for (const Cell& cell : cells) {
    if (matrix.steps.empty() || matrix.steps.back() != cell.step)
      matrix.steps.push_back(cell.step);  // rows come ordered by step
    matrix.layers.push_back(cell.layer);
  }
  std::sort(matrix.layers.begin(), matrix.layers.end());
  matrix.layers.erase(std::unique(matrix.layers.begin(), matrix.layers.end()), matrix.layers.end());
  matrix.values.assign(matrix.layers.size() * matrix.steps.size(),
                       std::numeric_limits<double>::quiet_NaN());
  size_t step_index = 0;
  for (const Cell& cell : cells) {
    while (matrix.steps[step_index] != cell.step)
      ++step_index;
    const auto layer_index = static_cast<size_t>(
        std::lower_bound(matrix.layers.begin(), matrix.layers.end(), cell.layer) -
        matrix.layers.begin());
    matrix.values[layer_index * matrix.steps.size() + step_index] = cell.value;
  }
  return matrix;
}

Result<std::vector<EvalRow>> RunReader::evals(const std::vector<int64_t>& run_ids) {
  std::vector<EvalRow> rows;
  if (run_ids.empty()) return rows;
  Result<Statement*> stmt = impl_->statement(
      "SELECT run, task, mode, metric, value, n, created_ms FROM evals WHERE run IN (" +
      placeholders(run_ids.size()) + ") ORDER BY run, task, mode, metric, created_ms, id");
  if (!stmt.ok()) return stmt.error();
  for (size_t i = 0; i < run_ids.size(); ++i)
    (*stmt)->bind(static_cast<int>(i + 1), run_ids[i]);
  if (Status s = for_each_row(**stmt,
                              [&](Statement& row) {
                                rows.push_back({row.column_int64(0), row.column_text(1),
                                                row.column_text(2), row.column_text(3),
                                                row.column_double(4), row.column_int64(5),
                                                row.column_int64(6)});
                              });
      !s.ok())
    return s.error();
  return rows;
}

Result<std::vector<EventRow>> RunReader::events_after(int64_t run_id, int64_t after_id,
                                                      size_t limit) {
  Result<Statement*> stmt = impl_->statement(
      "SELECT id, run, wall_ms, level, kind, message, payload FROM events "
      "WHERE run = ? AND id > ? ORDER BY id LIMIT ?");
  if (!stmt.ok()) return stmt.error();
  (*stmt)->bind(1, run_id).bind(2, after_id);
  (*stmt)->bind(3, limit ? static_cast<int64_t>(limit) : int64_t{-1});
  std::vector<EventRow> rows;
  if (Status s = for_each_row(**stmt,
                              [&](Statement& row) {
                                rows.push_back({row.column_int64(0), row.column_int64(1),
                                                row.column_int64(2), row.column_text(3),
                                                row.column_text(4), row.column_text(5),
                                                row.column_text(6)});
                              });
      !s.ok())
    return s.error();
  return rows;
}

Result<std::vector<ArtifactRow>> RunReader::artifacts(int64_t run_id) {
  Result<Statement*> stmt = impl_->statement(
      "SELECT run, kind, path, meta, created_ms FROM artifacts WHERE run = ? ORDER BY id");
  if (!stmt.ok()) return stmt.error();
  (*stmt)->bind(1, run_id);
  std::vector<ArtifactRow> rows;
  if (Status s = for_each_row(**stmt,
                              [&](Statement& row) {
                                rows.push_back({row.column_int64(0), row.column_text(1),
                                                row.column_text(2), row.column_text(3),
                                                row.column_int64(4)});
                              });
      !s.ok())
    return s.error();
  return rows;
}

}  // namespace hl::store
