#include "core/store/schema.hpp"

#include <cstdlib>
#include <vector>

#include "core/store/buckets.hpp"
#include "core/util/paths.hpp"

namespace hl::store {
namespace {

// Version 1. Never edit: databases in the field were created from it. Changes go into a
// new migration below.
constexpr std::string_view kSchemaV1 = R"sql(
CREATE TABLE runs (
  id INTEGER PRIMARY KEY,
  uuid TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  status TEXT NOT NULL
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
  status_message TEXT NOT NULL DEFAULT '',
  created_ms INTEGER NOT NULL,
  started_ms INTEGER,
  finished_ms INTEGER,
  experiment TEXT NOT NULL DEFAULT '',
  base_model TEXT NOT NULL DEFAULT '',
  device TEXT NOT NULL DEFAULT '',
  parent_run INTEGER REFERENCES runs(id) ON DELETE SET NULL,
  method TEXT NOT NULL DEFAULT '',
  host TEXT NOT NULL DEFAULT ''
);
CREATE TABLE params (
  run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (run, key)
) WITHOUT ROWID;
CREATE TABLE metric_keys (
  id INTEGER PRIMARY KEY,
  key TEXT NOT NULL UNIQUE
);
CREATE TABLE scalars (
  run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  key_id INTEGER NOT NULL REFERENCES metric_keys(id),
  step INTEGER NOT NULL,
  wall_ms INTEGER NOT NULL,
  value REAL,
  PRIMARY KEY (run, key_id, step)
) WITHOUT ROWID;
CREATE TABLE layer_scalars (
  run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  key_id INTEGER NOT NULL REFERENCES metric_keys(id),
  step INTEGER NOT NULL,
  layer INTEGER NOT NULL,
  head INTEGER NOT NULL,
  value REAL,
  PRIMARY KEY (run, key_id, step, layer, head)
) WITHOUT ROWID;
CREATE TABLE evals (
  id INTEGER PRIMARY KEY,
  run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  task TEXT NOT NULL,
  mode TEXT NOT NULL,
  metric TEXT NOT NULL,
  value REAL,
  n INTEGER NOT NULL DEFAULT 0,
  created_ms INTEGER NOT NULL
);
CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  wall_ms INTEGER NOT NULL,
  level TEXT NOT NULL,
  kind TEXT NOT NULL,
  message TEXT NOT NULL DEFAULT '',
  payload TEXT NOT NULL DEFAULT '{}'
);
)sql";

// Version 2: per-run summary values and artifacts, runs.last_step (so listing runs need
// not scan their scalars), and indexes for the per-run lookups of evals and events.
constexpr std::string_view kMigrationV1ToV2 = R"sql(
ALTER TABLE runs ADD COLUMN last_step INTEGER;
UPDATE runs SET last_step = (
  SELECT max(step) FROM (
    SELECT max(step) AS step FROM scalars WHERE scalars.run = runs.id
    UNION ALL
    SELECT max(step) FROM layer_scalars WHERE layer_scalars.run = runs.id));
CREATE TABLE run_summary (
  run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  key TEXT NOT NULL,
  value REAL,
  PRIMARY KEY (run, key)
) WITHOUT ROWID;
CREATE TABLE artifacts (
  id INTEGER PRIMARY KEY,
  run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  kind TEXT NOT NULL,
  path TEXT NOT NULL,
  meta TEXT NOT NULL DEFAULT '{}',
  created_ms INTEGER NOT NULL
);
CREATE INDEX artifacts_by_run ON artifacts(run);
CREATE INDEX runs_by_name ON runs(name, created_ms);
CREATE INDEX evals_by_run ON evals(run);
CREATE INDEX events_by_run ON events(run, id);
)sql";

// Version 3: per-bucket summaries of every scalar series at the step widths of
// kBucketWidths (first, last, lowest and highest row, first NaN, count and sum), so that a
// plot of a long series reads a few rows per pixel column instead of every row. The writer
// keeps them in the transaction of each batch; the migration builds them from the rows.
constexpr std::string_view kMigrationV2ToV3 = R"sql(
CREATE TABLE scalar_buckets (
  run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  key_id INTEGER NOT NULL REFERENCES metric_keys(id),
  level INTEGER NOT NULL,
  bucket INTEGER NOT NULL,
  count INTEGER NOT NULL,
  numbers INTEGER NOT NULL,
  sum REAL,
  first_step INTEGER NOT NULL,
  first_wall INTEGER NOT NULL,
  first_value REAL,
  last_step INTEGER NOT NULL,
  last_wall INTEGER NOT NULL,
  last_value REAL,
  low_step INTEGER,
  low_wall INTEGER,
  low_value REAL,
  high_step INTEGER,
  high_wall INTEGER,
  high_value REAL,
  nan_step INTEGER,
  nan_wall INTEGER,
  PRIMARY KEY (run, key_id, level, bucket)
) WITHOUT ROWID;
)sql";

Status fill_scalar_buckets(Database& db) {
  return rebuild_buckets(db);
}

// migrations[v] takes a database from version v to v + 1: its SQL, then its data step.
struct Migration {
  std::string_view sql;
  Status (*fill)(Database& db) = nullptr;
};

const std::vector<Migration>& migrations() {
  static const std::vector<Migration> steps = {
      {kSchemaV1}, {kMigrationV1ToV2}, {kMigrationV2ToV3, fill_scalar_buckets}};
  static_assert(kSchemaVersion == 3, "add the migration to the list above");
  return steps;
}

Error schema_error(const Database& db, std::string message) {
  return make_error(std::move(message), Location{db.path(), 0, ""});
}

Status check_version_known(const Database& db, int version) {
  if (version > kSchemaVersion)
    return schema_error(db, "was written by a newer HybridLab (schema v" + std::to_string(version) +
                                "; this build reads up to v" + std::to_string(kSchemaVersion) +
                                ")");
  return Status::Ok();
}

// Whether a version-0 file is really empty; a foreign SQLite file has tables of its own.
Result<bool> has_tables(Database& db) {
  Result<int64_t> count = db.query_int64("SELECT count(*) FROM sqlite_schema");
  if (!count.ok()) return count.error();
  return *count > 0;
}

Status migrate(Database& db) {
  Result<int> before = schema_version(db);
  if (!before.ok()) return before.error();
  if (*before == kSchemaVersion) return Status::Ok();
  if (Status known = check_version_known(db, *before); !known.ok()) return known;

  // Another process may be migrating the same file: take the write lock, then re-read.
  Result<Transaction> txn = Transaction::begin(db);
  if (!txn.ok()) return txn.error();
  Result<int> version = schema_version(db);
  if (!version.ok()) return version.error();
  if (*version == 0) {
    Result<bool> foreign = has_tables(db);
    if (!foreign.ok()) return foreign.error();
    if (*foreign)
      return schema_error(db,
                          "is an SQLite database but not a HybridLab run database "
                          "(it has tables but no schema version)");
  }
  for (int v = *version; v < kSchemaVersion; ++v) {
    const Migration& step = migrations()[static_cast<size_t>(v)];
    Status s = db.exec(step.sql);
    if (s.ok() && step.fill) s = step.fill(db);
    if (!s.ok())
      return schema_error(db, "migrating the schema from v" + std::to_string(v) + " to v" +
                                  std::to_string(v + 1) + " failed: " + s.error().message);
  }
  if (Status s = db.exec("PRAGMA user_version = " + std::to_string(kSchemaVersion)); !s.ok())
    return s;
  return txn->commit();
}

}  // namespace

std::string_view schema_v1_sql() {
  return kSchemaV1;
}

std::string default_db_path() {
  return (default_data_dir() / "runs.sqlite").string();
}

Result<int> schema_version(Database& db) {
  Result<int64_t> version = db.query_int64("PRAGMA user_version");
  if (!version.ok()) return version.error();
  return static_cast<int>(*version);
}

Result<Database> open_store(const std::string& path, Access access) {
  Result<Database> db = Database::open(path, access);
  if (!db.ok()) return db.error();
  if (access == Access::read_write) {
    if (Status s = migrate(*db); !s.ok()) return s.error();
    return std::move(db).value();
  }
  Result<int> version = schema_version(*db);
  if (!version.ok()) return version.error();
  if (Status known = check_version_known(*db, *version); !known.ok()) return known.error();
  if (*version == 0)
    return schema_error(*db,
                        "is not a HybridLab run database (no schema version; "
                        "nothing has been recorded in it yet?)");
  if (*version < kOldestReadableVersion)
    return schema_error(*db, "has schema v" + std::to_string(*version) +
                                 ", older than this build's v" + std::to_string(kSchemaVersion) +
                                 "; open it once for writing to migrate it");
  return std::move(db).value();
}

}  // namespace hl::store
