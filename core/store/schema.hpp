// The run store's schema: versions kept in PRAGMA user_version, forward migrations, and
// the one function that opens a store database ready for use.
#pragma once

#include <string>
#include <string_view>

#include "core/store/sqlite_db.hpp"
#include "core/util/error.hpp"

namespace hl::store {

/// The schema version this build writes (and migrates older databases to).
inline constexpr int kSchemaVersion = 3;
/// The oldest version a read-only open accepts: v2 lacks only the bucket summaries of v3,
/// so readers of a v2 database read rows where they would read summaries.
inline constexpr int kOldestReadableVersion = 2;

/// The SQL of schema version 1, exactly as first released (kept for migration tests).
std::string_view schema_v1_sql();

/// $XDG_DATA_HOME/hybridlab/runs.sqlite, else ~/.local/share/hybridlab/runs.sqlite.
std::string default_db_path();

/// Opens a run database. read_write creates or migrates it to kSchemaVersion;
/// read_only requires an existing database at kOldestReadableVersion or later, up to
/// kSchemaVersion, and never writes.
Result<Database> open_store(const std::string& path, Access access);

/// PRAGMA user_version of an open database.
Result<int> schema_version(Database& db);

}  // namespace hl::store
