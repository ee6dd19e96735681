#include "core/store/buckets.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <string>

namespace hl::store {
namespace {

constexpr size_t kLevels = kBucketWidths.size();

// How many buckets of the level below one bucket of `level` (>= 1) holds.
constexpr int64_t ratio(size_t level) {
  return kBucketWidths[level] / kBucketWidths[level - 1];
}
static_assert(kBucketWidths[1] % kBucketWidths[0] == 0 && kBucketWidths[2] % kBucketWidths[1] == 0,
              "each level's buckets must be whole buckets of the level below");

void bind_point(Statement& stmt, int index, const std::optional<ScalarPoint>& point) {
  if (!point) {
    stmt.bind_null(index).bind_null(index + 1).bind_null(index + 2);
    return;
  }
  stmt.bind(index, point->step).bind(index + 1, point->wall_ms).bind(index + 2, point->value);
}

std::optional<ScalarPoint> read_point(const Statement& stmt, int column) {
  if (stmt.is_null(column)) return std::nullopt;
  return ScalarPoint{stmt.column_int64(column), stmt.column_int64(column + 1),
                     stmt.column_double(column + 2)};
}

}  // namespace

ScalarBucket read_bucket(const Statement& stmt, int column) {
  ScalarBucket bucket;
  bucket.level = static_cast<int>(stmt.column_int64(column));
  bucket.bucket = stmt.column_int64(column + 1);
  bucket.count = stmt.column_int64(column + 2);
  bucket.numbers = stmt.column_int64(column + 3);
  bucket.sum = stmt.column_double(column + 4);
  bucket.first = *read_point(stmt, column + 5);
  bucket.last = *read_point(stmt, column + 8);
  bucket.low = read_point(stmt, column + 11);
  bucket.high = read_point(stmt, column + 14);
  if (!stmt.is_null(column + 17))
    bucket.first_nan = ScalarPoint{stmt.column_int64(column + 17), stmt.column_int64(column + 18),
                                   std::numeric_limits<double>::quiet_NaN()};
  return bucket;
}

Result<BucketMaintainer> BucketMaintainer::prepare(Database& db) {
  BucketMaintainer maintainer;
  const std::string columns(kBucketColumns);
  struct Item {
    Statement* target;
    std::string sql;
  };
  const Item items[] = {
      {&maintainer.rows_,
       "SELECT step, wall_ms, value FROM scalars WHERE run = ?1 AND key_id = ?2 "
       "AND step BETWEEN ?3 AND ?4 ORDER BY step"},
      {&maintainer.children_, "SELECT " + columns +
                                  " FROM scalar_buckets WHERE run = ?1 AND key_id = ?2 "
                                  "AND level = ?3 AND bucket BETWEEN ?4 AND ?5 ORDER BY bucket"},
      {&maintainer.upsert_, "INSERT OR REPLACE INTO scalar_buckets(run, key_id, " + columns +
                                ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"},
      {&maintainer.erase_,
       "DELETE FROM scalar_buckets WHERE run = ? AND key_id = ? AND level = ? AND bucket = ?"},
  };
  for (const Item& item : items) {
    Result<Statement> stmt = db.prepare(item.sql);
    if (!stmt.ok()) return stmt.error();
    *item.target = std::move(stmt).value();
  }
  return maintainer;
}

Status BucketMaintainer::write(int64_t run, int64_t key_id, const ScalarBucket& bucket) {
  if (bucket.count == 0) {
    erase_.bind(1, run).bind(2, key_id).bind(3, bucket.level).bind(4, bucket.bucket);
    return erase_.run();
  }
  upsert_.bind(1, run).bind(2, key_id).bind(3, bucket.level).bind(4, bucket.bucket);
  upsert_.bind(5, bucket.count).bind(6, bucket.numbers).bind(7, bucket.sum);
  bind_point(upsert_, 8, bucket.first);
  bind_point(upsert_, 11, bucket.last);
  bind_point(upsert_, 14, bucket.low);
  bind_point(upsert_, 17, bucket.high);
  upsert_.bind(20,
               bucket.first_nan ? std::optional<int64_t>(bucket.first_nan->step) : std::nullopt);
  upsert_.bind(21,
               bucket.first_nan ? std::optional<int64_t>(bucket.first_nan->wall_ms) : std::nullopt);
  return upsert_.run();
}

Status BucketMaintainer::update(int64_t run, int64_t key_id, std::vector<ScalarPoint> rows) {
  // The rows as the table now holds them: in step order, the last of a repeated step.
  std::stable_sort(rows.begin(), rows.end(),
                   [](const ScalarPoint& a, const ScalarPoint& b) { return a.step < b.step; });
  size_t kept = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (kept > 0 && rows[kept - 1].step == rows[i].step)
      rows[kept - 1] = rows[i];
    else
      rows[kept++] = rows[i];
  }
  rows.resize(kept);
  for (size_t level = 0; level < kLevels; ++level) {
    const int64_t width = kBucketWidths[level];
    for (size_t begin = 0; begin < rows.size();) {
      const int64_t index = bucket_of(rows[begin].step, width);
      size_t end = begin + 1;
      while (end < rows.size() && bucket_of(rows[end].step, width) == index)
        ++end;
      std::optional<ScalarBucket> stored;
      children_.bind(1, run).bind(2, key_id).bind(3, static_cast<int64_t>(level));
      children_.bind(4, index).bind(5, index);
      if (Status s = for_each_row(children_,
                                  [&](Statement& row) {
                                    stored = read_bucket(row, 0);
                                    return Status::Ok();
                                  });
          !s.ok())
        return s;
      ScalarBucket bucket{.level = static_cast<int>(level), .bucket = index};
      if (!stored || rows[begin].step > stored->last.step) {
        // Appended rows (the usual case): the stored summary extended by them.
        if (stored) bucket = *stored;
        for (size_t i = begin; i < end; ++i)
          bucket.add(rows[i]);
      } else if (level == 0) {
        rows_.bind(1, run)
            .bind(2, key_id)
            .bind(3, index * width)
            .bind(4, index * width + width - 1);
        if (Status s = for_each_row(
                rows_,
                [&](Statement& row) {
                  bucket.add({row.column_int64(0), row.column_int64(1), row.column_double(2)});
                  return Status::Ok();
                });
            !s.ok())
          return s;
      } else {
        const int64_t per = ratio(level);
        children_.bind(1, run).bind(2, key_id).bind(3, static_cast<int64_t>(level - 1));
        children_.bind(4, index * per).bind(5, index * per + per - 1);
        if (Status s = for_each_row(children_,
                                    [&](Statement& row) {
                                      bucket.merge(read_bucket(row, 0));
                                      return Status::Ok();
                                    });
            !s.ok())
          return s;
      }
      if (Status s = write(run, key_id, bucket); !s.ok()) return s;
      begin = end;
    }
  }
  return Status::Ok();
}

Status rebuild_buckets(Database& db, std::optional<int64_t> run) {
  Result<Statement> erase =
      db.prepare(run ? "DELETE FROM scalar_buckets WHERE run = ?" : "DELETE FROM scalar_buckets");
  if (!erase.ok()) return erase.error();
  if (run) erase->bind(1, *run);
  if (Status s = erase->run(); !s.ok()) return s;
  Result<BucketMaintainer> maintainer = BucketMaintainer::prepare(db);
  if (!maintainer.ok()) return maintainer.error();
  // The primary key's order: series after series, each in step order.
  Result<Statement> rows =
      db.prepare(run ? "SELECT run, key_id, step, wall_ms, value FROM scalars WHERE run = ? "
                       "ORDER BY run, key_id, step"
                     : "SELECT run, key_id, step, wall_ms, value FROM scalars "
                       "ORDER BY run, key_id, step");
  if (!rows.ok()) return rows.error();
  if (run) rows->bind(1, *run);

  // The open bucket of each level for the current series; closing one writes it and adds
  // it to the open bucket of the level above.
  std::array<std::optional<ScalarBucket>, kLevels> open;
  int64_t series_run = 0, series_key = 0;
  auto close = [&](auto& self, size_t level) -> Status {
    if (!open[level]) return Status::Ok();
    if (Status s = maintainer->write(series_run, series_key, *open[level]); !s.ok()) return s;
    if (level + 1 < kLevels) {
      const int64_t parent = bucket_of(open[level]->bucket, ratio(level + 1));
      if (open[level + 1] && open[level + 1]->bucket != parent) {
        if (Status s = self(self, level + 1); !s.ok()) return s;
      }
      if (!open[level + 1])
        open[level + 1] = ScalarBucket{.level = static_cast<int>(level + 1), .bucket = parent};
      open[level + 1]->merge(*open[level]);
    }
    open[level].reset();
    return Status::Ok();
  };
  auto close_series = [&]() -> Status {
    for (size_t level = 0; level < kLevels; ++level)
      if (Status s = close(close, level); !s.ok()) return s;
    return Status::Ok();
  };
  bool any = false;
  Status status = for_each_row(*rows, [&](Statement& row) -> Status {
    const int64_t row_run = row.column_int64(0), row_key = row.column_int64(1);
    if (!any || row_run != series_run || row_key != series_key) {
      if (any) {
        if (Status s = close_series(); !s.ok()) return s;
      }
      any = true;
      series_run = row_run;
      series_key = row_key;
    }
    const ScalarPoint point{row.column_int64(2), row.column_int64(3), row.column_double(4)};
    const int64_t index = bucket_of(point.step, kBucketWidths[0]);
    if (open[0] && open[0]->bucket != index) {
      if (Status s = close(close, 0); !s.ok()) return s;
    }
    if (!open[0]) open[0] = ScalarBucket{.level = 0, .bucket = index};
    open[0]->add(point);
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return any ? close_series() : Status::Ok();
}

}  // namespace hl::store
