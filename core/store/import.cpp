#include "core/store/import.hpp"

#include <filesystem>
#include <vector>

#include "core/store/buckets.hpp"
#include "core/store/schema.hpp"
#include "core/store/sqlite_db.hpp"

namespace hl::store {
namespace {

// Reads the source's schema version without migrating it (the source is only read).
Result<int> source_version(const std::string& path) {
  Result<Database> db = Database::open(path, Access::read_only);
  if (!db.ok()) return db.error();
  Result<int> version = schema_version(*db);
  if (!version.ok()) return version.error();
  if (*version == 0)
    return make_error("is not a HybridLab run database (no schema version)", Location{path, 0, ""});
  if (*version > kSchemaVersion)
    return make_error("was written by a newer HybridLab (schema v" + std::to_string(*version) +
                          "); update this build to import it",
                      Location{path, 0, ""});
  return *version;
}

// Per-run copies; ?1 = the new run id, ?2 = the run id in the source.
std::vector<std::string> child_copies(int version) {
  std::vector<std::string> sql = {
      "INSERT INTO main.params(run, key, value) SELECT ?1, key, value FROM src.params "
      "WHERE run = ?2",
      "INSERT INTO main.scalars(run, key_id, step, wall_ms, value) "
      "SELECT ?1, mk.id, s.step, s.wall_ms, s.value FROM src.scalars s "
      "JOIN src.metric_keys sk ON sk.id = s.key_id JOIN main.metric_keys mk ON mk.key = sk.key "
      "WHERE s.run = ?2",
      "INSERT INTO main.layer_scalars(run, key_id, step, layer, head, value) "
      "SELECT ?1, mk.id, s.step, s.layer, s.head, s.value FROM src.layer_scalars s "
      "JOIN src.metric_keys sk ON sk.id = s.key_id JOIN main.metric_keys mk ON mk.key = sk.key "
      "WHERE s.run = ?2",
      "INSERT INTO main.evals(run, task, mode, metric, value, n, created_ms) "
      "SELECT ?1, task, mode, metric, value, n, created_ms FROM src.evals WHERE run = ?2 "
      "ORDER BY id",
      "INSERT INTO main.events(run, wall_ms, level, kind, message, payload) "
      "SELECT ?1, wall_ms, level, kind, message, payload FROM src.events WHERE run = ?2 "
      "ORDER BY id",
  };
  if (version >= 2) {
    sql.push_back(
        "INSERT INTO main.run_summary(run, key, value) SELECT ?1, key, value "
        "FROM src.run_summary WHERE run = ?2");
    sql.push_back(
        "INSERT INTO main.artifacts(run, kind, path, meta, created_ms) "
        "SELECT ?1, kind, path, meta, created_ms FROM src.artifacts WHERE run = ?2 ORDER BY id");
  }
  if (version >= 3) {
    // The source's bucket summaries agree with its rows, which are copied unchanged; older
    // sources have none, and copy_runs builds them from the copied rows instead.
    const std::string columns(kBucketColumns);
    sql.push_back("INSERT INTO main.scalar_buckets(run, key_id, " + columns +
                  ") SELECT ?1, mk.id, " + columns +
                  " FROM src.scalar_buckets b JOIN src.metric_keys sk ON sk.id = b.key_id "
                  "JOIN main.metric_keys mk ON mk.key = sk.key WHERE b.run = ?2");
  }
  return sql;
}

Result<int> copy_runs(Database& target, int version) {
  Result<Transaction> txn = Transaction::begin(target);
  if (!txn.ok()) return txn.error();
  if (Status s = target.exec(
          "INSERT OR IGNORE INTO main.metric_keys(key) SELECT key FROM src.metric_keys");
      !s.ok())
    return s.error();

  Result<Statement> missing = target.prepare(
      "SELECT id FROM src.runs WHERE uuid NOT IN (SELECT uuid FROM main.runs) ORDER BY id");
  if (!missing.ok()) return missing.error();
  std::vector<int64_t> source_ids;
  while (true) {
    Result<bool> row = missing->step();
    if (!row.ok()) return row.error();
    if (!*row) break;
    source_ids.push_back(missing->column_int64(0));
  }

  // Parents come before children (smaller ids), so mapping parents by uuid finds the
  // runs imported earlier in this same transaction.
  const std::string last_step =
      version >= 2 ? "s.last_step"
                   : "(SELECT max(step) FROM (SELECT max(step) AS step FROM src.scalars "
                     "WHERE run = s.id UNION ALL SELECT max(step) FROM src.layer_scalars "
                     "WHERE run = s.id))";
  Result<Statement> insert_run = target.prepare(
      "INSERT INTO main.runs(uuid, name, status, status_message, created_ms, started_ms, "
      "finished_ms, experiment, base_model, device, parent_run, method, host, last_step) "
      "SELECT s.uuid, s.name, s.status, s.status_message, s.created_ms, s.started_ms, "
      "s.finished_ms, s.experiment, s.base_model, s.device, "
      "(SELECT m.id FROM main.runs m JOIN src.runs p ON p.uuid = m.uuid "
      "WHERE p.id = s.parent_run), s.method, s.host, " +
      last_step + " FROM src.runs s WHERE s.id = ?");
  if (!insert_run.ok()) return insert_run.error();
  std::vector<Statement> children;
  for (const std::string& sql : child_copies(version)) {
    Result<Statement> stmt = target.prepare(sql);
    if (!stmt.ok()) return stmt.error();
    children.push_back(std::move(stmt).value());
  }

  for (int64_t source_id : source_ids) {
    insert_run->bind(1, source_id);
    if (Status s = insert_run->run(); !s.ok()) return s.error();
    const int64_t new_id = target.last_insert_rowid();
    for (Statement& child : children) {
      child.bind(1, new_id).bind(2, source_id);
      if (Status s = child.run(); !s.ok()) return s.error();
    }
    if (version < 3) {
      if (Status s = rebuild_buckets(target, new_id); !s.ok()) return s.error();
    }
  }
  if (Status s = txn->commit(); !s.ok()) return s.error();
  return static_cast<int>(source_ids.size());
}

}  // namespace

Result<int> import_runs(const std::string& source_db_path, const std::string& target_db_path) {
  std::error_code ec;
  if (!std::filesystem::exists(source_db_path, ec))
    return make_error("no such run database file to import", Location{source_db_path, 0, ""});
  if (std::filesystem::exists(target_db_path, ec) &&
      std::filesystem::equivalent(source_db_path, target_db_path, ec))
    return make_error("cannot import a run database into itself", Location{source_db_path, 0, ""});
  Result<int> version = source_version(source_db_path);
  if (!version.ok()) return version.error();
  Result<Database> target = open_store(target_db_path, Access::read_write);
  if (!target.ok()) return target.error();

  Result<Statement> attach = target->prepare("ATTACH DATABASE ? AS src");
  if (!attach.ok()) return attach.error();
  attach->bind(1, source_db_path);
  if (Status s = attach->run(); !s.ok()) return s.error();
  attach = Statement();  // a live statement would keep the attachment busy

  Result<int> imported = copy_runs(*target, *version);
  Status detached = target->exec("DETACH DATABASE src");
  if (!imported.ok()) return imported.error();
  if (!detached.ok()) return detached.error();
  return imported;
}

}  // namespace hl::store
