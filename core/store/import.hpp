// Bringing runs recorded elsewhere (e.g. on a GPU server) into a local run database.
#pragma once

#include <string>

#include "core/util/error.hpp"

namespace hl::store {

/// Copies every run of the database at `source_db_path` whose uuid is not yet in the
/// database at `target_db_path` (created or migrated as needed), with all its rows, in one
/// transaction. Parent links are kept when the parent is (or becomes) present by uuid.
/// Returns how many runs were imported.
Result<int> import_runs(const std::string& source_db_path, const std::string& target_db_path);

}  // namespace hl::store
