// Opening, pragmas, schema versions and migrations, and the errors for bad files.
#include "core/store/schema.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "core/store/run_reader.hpp"
#include "core/store/run_writer.hpp"
#include "tests/store/bucket_check.hpp"
#include "tests/store/temp_dir.hpp"

namespace hl::store {
namespace {

using testing::TempDir;

std::string query_text(Database& db, const std::string& sql) {
  Result<Statement> stmt = db.prepare(sql);
  EXPECT_TRUE(stmt.ok()) << stmt.error().to_string();
  Result<bool> row = stmt->step();
  EXPECT_TRUE(row.ok() && *row) << sql;
  return stmt->column_text(0);
}

TEST(Schema, NewDatabaseGetsCurrentVersionAndPragmas) {
  TempDir dir;
  const std::string path = dir.file("nested/folder/runs.sqlite");  // folders are created
  Result<Database> db = open_store(path, Access::read_write);
  ASSERT_TRUE(db.ok()) << db.error().to_string();
  EXPECT_EQ(*schema_version(*db), kSchemaVersion);
  EXPECT_EQ(query_text(*db, "PRAGMA journal_mode"), "wal");
  EXPECT_EQ(*db->query_int64("PRAGMA synchronous"), 1);  // NORMAL
  EXPECT_EQ(*db->query_int64("PRAGMA foreign_keys"), 1);
  EXPECT_EQ(*db->query_int64("PRAGMA busy_timeout"), 10000);
  for (const char* table : {"runs", "params", "metric_keys", "scalars", "layer_scalars", "evals",
                            "run_summary", "artifacts", "events", "scalar_buckets"}) {
    EXPECT_EQ(*db->query_int64(std::string("SELECT count(*) FROM sqlite_schema WHERE name = '") +
                               table + "'"),
              1)
        << table;
  }
  // The series tables are clustered by their key (WITHOUT ROWID).
  EXPECT_NE(
      query_text(*db, "SELECT sql FROM sqlite_schema WHERE name = 'scalars'").find("WITHOUT ROWID"),
      std::string::npos);
}

TEST(Schema, ReopeningKeepsDataAndVersion) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  {
    Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "a"});
    ASSERT_TRUE(writer.ok()) << writer.error().to_string();
  }
  Result<Database> again = open_store(path, Access::read_write);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again->query_int64("SELECT count(*) FROM runs"), 1);
  EXPECT_EQ(*schema_version(*again), kSchemaVersion);
}

TEST(Schema, MigratesVersionOneDatabaseWithData) {
  TempDir dir;
  const std::string path = dir.file("old.sqlite");
  {
    // Build a v1 database the way the first release did, without the current code.
    Result<Database> raw = Database::open(path, Access::read_write);
    ASSERT_TRUE(raw.ok());
    ASSERT_TRUE(raw->exec(schema_v1_sql()).ok());
    ASSERT_TRUE(raw->exec("PRAGMA user_version = 1").ok());
    ASSERT_TRUE(raw->exec(R"sql(
      INSERT INTO runs(id, uuid, name, status, created_ms, method)
        VALUES (1, 'aaaa1111-0000-4000-8000-000000000001', 'old-run', 'completed', 1000, 'lolcats'),
               (2, 'bbbb2222-0000-4000-8000-000000000002', 'empty-run', 'failed', 2000, '');
      INSERT INTO params VALUES (1, 'attention.window', '64');
      INSERT INTO metric_keys(id, key) VALUES (1, 'train/loss'), (2, 'usage/linear_mass');
      INSERT INTO scalars VALUES (1, 1, 0, 1000, 3.5), (1, 1, 10, 1100, 2.5), (1, 1, 20, 1200, 1.5);
      INSERT INTO layer_scalars VALUES (1, 2, 30, 0, -1, 0.25);
      INSERT INTO evals(run, task, mode, metric, value, n, created_ms)
        VALUES (1, 'ppl', 'hybrid', 'ppl', 12.5, 100, 1300);
      INSERT INTO events(run, wall_ms, level, kind, message) VALUES (1, 1000, 'info', 'start', 'hi');
    )sql")
                    .ok());
    ASSERT_EQ(*schema_version(*raw), 1);
  }
  // A read-only open must not migrate, and says how to fix it.
  Result<RunReader> stale = RunReader::open(path, Access::read_only);
  ASSERT_FALSE(stale.ok());
  EXPECT_NE(stale.error().message.find("older than this build"), std::string::npos)
      << stale.error().to_string();

  Result<RunReader> reader = RunReader::open(path, Access::read_write);
  ASSERT_TRUE(reader.ok()) << reader.error().to_string();
  Result<std::vector<RunListEntry>> runs = reader->list_runs();
  ASSERT_TRUE(runs.ok()) << runs.error().to_string();
  ASSERT_EQ(runs->size(), 2u);
  EXPECT_EQ((*runs)[0].info.name, "old-run");
  EXPECT_EQ((*runs)[0].info.last_step, 30);  // computed from the old rows (layer row is last)
  EXPECT_EQ((*runs)[1].info.last_step, std::nullopt);
  EXPECT_EQ(reader->params(1)->at("attention.window"), "64");
  Result<std::vector<ScalarPoint>> loss = reader->scalars_after(1, "train/loss", -1);
  ASSERT_TRUE(loss.ok());
  ASSERT_EQ(loss->size(), 3u);
  EXPECT_DOUBLE_EQ((*loss)[2].value, 1.5);
  testing::expect_buckets_match_rows(*reader, 1, "train/loss");  // built by the migration
  ASSERT_EQ(reader->evals({1})->size(), 1u);
  ASSERT_EQ(reader->events_after(1, 0)->size(), 1u);

  // The migrated database takes v2 rows, and the read-only open now works.
  {
    Result<RunWriter> writer = RunWriter::resume(path, 1);
    ASSERT_TRUE(writer.ok()) << writer.error().to_string();
    ASSERT_TRUE(writer->set_summary("final_loss", 1.5).ok());
    ASSERT_TRUE(writer->add_artifact("checkpoint", "ckpt/best.safetensors").ok());
    ASSERT_TRUE(writer->close().ok());
  }
  Result<RunReader> now_current = RunReader::open(path, Access::read_only);
  ASSERT_TRUE(now_current.ok()) << now_current.error().to_string();
  EXPECT_DOUBLE_EQ(now_current->summary(1)->at("final_loss"), 1.5);
  EXPECT_EQ(now_current->artifacts(1)->size(), 1u);
  Result<Database> db = open_store(path, Access::read_only);
  ASSERT_TRUE(db.ok());
  EXPECT_EQ(*schema_version(*db), kSchemaVersion);
}

TEST(Schema, RejectsNewerSchema) {
  TempDir dir;
  const std::string path = dir.file("future.sqlite");
  {
    Result<Database> db = open_store(path, Access::read_write);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE(db->exec("PRAGMA user_version = 99").ok());
  }
  Result<Database> again = open_store(path, Access::read_write);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().message.find("newer HybridLab (schema v99"), std::string::npos);
  EXPECT_EQ(again.error().where.file, path);
}

TEST(Schema, RejectsForeignSqliteDatabase) {
  TempDir dir;
  const std::string path = dir.file("other.sqlite");
  {
    Result<Database> db = Database::open(path, Access::read_write);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE(db->exec("CREATE TABLE photos(id INTEGER)").ok());
  }
  Result<Database> opened = open_store(path, Access::read_write);
  ASSERT_FALSE(opened.ok());
  EXPECT_NE(opened.error().message.find("not a HybridLab run database"), std::string::npos)
      << opened.error().to_string();
}

TEST(Schema, DirectoryIsAClearError) {
  TempDir dir;
  for (Access access : {Access::read_write, Access::read_only}) {
    Result<Database> db = open_store(dir.path().string(), access);
    ASSERT_FALSE(db.ok());
    EXPECT_EQ(db.error().where.file, dir.path().string());
    EXPECT_NE(db.error().message.find("is a directory"), std::string::npos)
        << db.error().to_string();
  }
  Result<RunWriter> writer = RunWriter::create(dir.path().string(), RunSpec{.name = "x"});
  ASSERT_FALSE(writer.ok());
  EXPECT_NE(writer.error().message.find("is a directory"), std::string::npos);
}

TEST(Schema, NonSqliteFileIsAClearError) {
  TempDir dir;
  const std::string path = dir.file("notes.txt");
  std::ofstream(path) << "these are not the runs you are looking for\n";
  for (Access access : {Access::read_write, Access::read_only}) {
    Result<Database> db = open_store(path, access);
    ASSERT_FALSE(db.ok());
    EXPECT_EQ(db.error().where.file, path);
    EXPECT_NE(db.error().message.find("not an SQLite database"), std::string::npos)
        << db.error().to_string();
  }
  // The file is left alone.
  std::ifstream in(path);
  std::string first;
  std::getline(in, first);
  EXPECT_EQ(first, "these are not the runs you are looking for");
}

TEST(Schema, MissingFileForReadingIsAClearErrorAndNotCreated) {
  TempDir dir;
  const std::string path = dir.file("absent.sqlite");
  Result<RunReader> reader = RunReader::open(path);
  ASSERT_FALSE(reader.ok());
  EXPECT_NE(reader.error().to_string().find(path + ": no such run database file"),
            std::string::npos)
      << reader.error().to_string();
  Result<RunReader> migrating = RunReader::open(path, Access::read_write);
  ASSERT_FALSE(migrating.ok());
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(Schema, DefaultPathFollowsXdgDataHome) {
  const char* old_xdg = std::getenv("XDG_DATA_HOME");
  const std::string saved_xdg = old_xdg ? old_xdg : "";
  const std::string saved_home = std::getenv("HOME") ? std::getenv("HOME") : "";
  setenv("XDG_DATA_HOME", "/data/xdg", 1);
  EXPECT_EQ(default_db_path(), "/data/xdg/hybridlab/runs.sqlite");
  unsetenv("XDG_DATA_HOME");
  setenv("HOME", "/home/someone", 1);
  EXPECT_EQ(default_db_path(), "/home/someone/.local/share/hybridlab/runs.sqlite");
  setenv("HOME", saved_home.c_str(), 1);
  if (old_xdg) setenv("XDG_DATA_HOME", saved_xdg.c_str(), 1);
}

}  // namespace
}  // namespace hl::store
