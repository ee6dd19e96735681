// The bucket summaries of scalar series (table scalar_buckets, schema v3): kept by the
// writer in the transaction of each batch, built for older databases by the migration, and
// read by RunReader::overview. Internal to the store.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "core/store/run_types.hpp"
#include "core/store/sqlite_db.hpp"
#include "core/util/error.hpp"

namespace hl::store {

/// The columns of scalar_buckets after (run, key_id), in the order read_bucket reads them.
inline constexpr std::string_view kBucketColumns =
    "level, bucket, count, numbers, sum, first_step, first_wall, first_value, last_step, "
    "last_wall, last_value, low_step, low_wall, low_value, high_step, high_wall, high_value, "
    "nan_step, nan_wall";

/// A bucket from the columns kBucketColumns, starting at `column`.
ScalarBucket read_bucket(const Statement& stmt, int column);

/// Keeps the bucket summaries of scalar series in step with their rows. Holds prepared
/// statements of one connection; callers run it inside their write transaction.
class BucketMaintainer {
 public:
  static Result<BucketMaintainer> prepare(Database& db);

  /// Brings every level's buckets of one series up to date after `rows` (in the order they
  /// were logged; a repeated step keeps the last) were written to its scalars. A bucket
  /// whose new rows all follow its stored rows is extended by them; any other is recomputed
  /// from the series' rows (level 0) or from the buckets of the level below.
  Status update(int64_t run, int64_t key_id, std::vector<ScalarPoint> rows);

  /// Writes one bucket (replacing the old one); an empty bucket deletes it.
  Status write(int64_t run, int64_t key_id, const ScalarBucket& bucket);

 private:
  Statement rows_, children_, upsert_, erase_;
};

/// Rebuilds the buckets of every scalar series of `run` (all runs if none) from the
/// scalars table in one ordered scan, replacing what was there.
Status rebuild_buckets(Database& db, std::optional<int64_t> run = std::nullopt);

}  // namespace hl::store
