// import_runs: copying runs between database files, as when results come back from a
// GPU server.
#include "core/store/import.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/store/run_reader.hpp"
#include "core/store/run_writer.hpp"
#include "core/store/schema.hpp"
#include "tests/store/bucket_check.hpp"
#include "tests/store/temp_dir.hpp"

namespace hl::store {
namespace {

using testing::TempDir;

// A run with one row of every kind; returns its uuid.
std::string record_run(const std::string& path, const std::string& name,
                       std::optional<int64_t> parent = std::nullopt, int64_t* id = nullptr) {
  Result<RunWriter> writer =
      RunWriter::create(path, RunSpec{.name = name, .method = "lolcats", .parent_run = parent});
  EXPECT_TRUE(writer.ok()) << writer.error().to_string();
  EXPECT_TRUE(writer->set_params({{"seed", name}}).ok());
  for (int step = 0; step < 50; ++step)
    EXPECT_TRUE(writer->log_scalar("train/loss", step, 4.0 - step * 0.01).ok());
  EXPECT_TRUE(writer->log_scalar("remote/only", 3, 1.0).ok());
  EXPECT_TRUE(writer->log_layer_scalar("usage/linear_mass", 49, 1, -1, 0.3).ok());
  EXPECT_TRUE(writer->log_eval("passkey", "hybrid", "acc", 0.875, 32).ok());
  EXPECT_TRUE(writer->log_event("info", "done", name).ok());
  EXPECT_TRUE(writer->add_artifact("checkpoint", name + "/best").ok());
  EXPECT_TRUE(writer->set_summary("final_loss", 3.51).ok());
  EXPECT_TRUE(writer->set_status(RunStatus::completed).ok());
  if (id) *id = writer->run_id();
  return writer->uuid();
}

TEST(ImportRuns, CopiesNewRunsWithAllRowsAndSkipsKnownOnes) {
  TempDir dir;
  const std::string server = dir.file("server.sqlite");
  const std::string local = dir.file("local.sqlite");
  int64_t parent_id = 0;
  const std::string parent_uuid = record_run(server, "parent", std::nullopt, &parent_id);
  const std::string child_uuid = record_run(server, "child", parent_id);
  record_run(local, "local-only");  // occupies id 1 locally, so ids must be remapped
  {
    // The local database already knows other keys, so key ids differ between the files.
    Result<RunWriter> writer = RunWriter::create(local, RunSpec{.name = "keys"});
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->log_scalar("aaa/first", 0, 0).ok());
  }

  Result<int> imported = import_runs(server, local);
  ASSERT_TRUE(imported.ok()) << imported.error().to_string();
  EXPECT_EQ(*imported, 2);

  Result<RunReader> reader = RunReader::open(local);
  ASSERT_TRUE(reader.ok());
  auto runs = *reader->list_runs();
  ASSERT_EQ(runs.size(), 4u);
  const int64_t new_parent = *reader->find_run(parent_uuid);
  const int64_t new_child = *reader->find_run(child_uuid);
  EXPECT_NE(new_parent, parent_id);
  EXPECT_EQ(reader->run(new_child)->parent_run, new_parent);
  EXPECT_EQ(reader->run(new_child)->status, RunStatus::completed);
  EXPECT_EQ(reader->run(new_child)->last_step, 49);
  auto loss = *reader->scalars_after(new_child, "train/loss", -1);
  ASSERT_EQ(loss.size(), 50u);
  EXPECT_DOUBLE_EQ(loss[10].value, 3.9);
  EXPECT_EQ(reader->scalars_after(new_child, "remote/only", -1)->size(), 1u);
  EXPECT_DOUBLE_EQ(reader->layer_matrix(new_child, "usage/linear_mass")->at(0, 0), 0.3);
  EXPECT_EQ(reader->params(new_child)->at("seed"), "child");
  EXPECT_EQ(reader->evals({new_child})->size(), 1u);
  EXPECT_EQ(reader->events_after(new_child, 0)->front().message, "child");
  EXPECT_EQ(reader->artifacts(new_child)->front().path, "child/best");
  EXPECT_DOUBLE_EQ(reader->summary(new_child)->at("final_loss"), 3.51);

  // Importing again brings nothing new; a new server run comes alone.
  EXPECT_EQ(*import_runs(server, local), 0);
  record_run(server, "later");
  EXPECT_EQ(*import_runs(server, local), 1);
  EXPECT_EQ(reader->list_runs()->size(), 5u);
}

TEST(ImportRuns, ImportsFromVersionOneDatabase) {
  TempDir dir;
  const std::string old_file = dir.file("v1.sqlite");
  {
    Result<Database> raw = Database::open(old_file, Access::read_write);
    ASSERT_TRUE(raw.ok());
    ASSERT_TRUE(raw->exec(schema_v1_sql()).ok());
    ASSERT_TRUE(raw->exec(R"sql(
      PRAGMA user_version = 1;
      INSERT INTO runs(id, uuid, name, status, created_ms) VALUES (7, 'u-old', 'old', 'completed', 5);
      INSERT INTO metric_keys(id, key) VALUES (3, 'loss');
      INSERT INTO scalars VALUES (7, 3, 0, 5, 2.0), (7, 3, 8, 6, 1.0);
    )sql")
                    .ok());
  }
  const std::string local = dir.file("local.sqlite");
  Result<int> imported = import_runs(old_file, local);  // the target is created
  ASSERT_TRUE(imported.ok()) << imported.error().to_string();
  EXPECT_EQ(*imported, 1);
  Result<RunReader> reader = RunReader::open(local);
  ASSERT_TRUE(reader.ok());
  const int64_t run = *reader->find_run("old");
  EXPECT_EQ(reader->run(run)->last_step, 8);
  EXPECT_EQ(reader->scalars_after(run, "loss", -1)->size(), 2u);
  testing::expect_buckets_match_rows(*reader, run, "loss");  // built from the copied rows
  // The source was only read: still v1.
  Result<Database> source = Database::open(old_file, Access::read_only);
  EXPECT_EQ(*schema_version(*source), 1);
}

TEST(ImportRuns, CarriesBucketSummariesOrBuildsThemForOlderSources) {
  TempDir dir;
  const std::string server = dir.file("server.sqlite");
  int64_t server_run = 0;
  {
    Result<RunWriter> writer = RunWriter::create(server, RunSpec{.name = "long"});
    ASSERT_TRUE(writer.ok());
    server_run = writer->run_id();
    for (int step = 0; step < 12000; ++step) {
      ASSERT_TRUE(
          writer->log_scalar("train/loss", step, step % 501 == 0 ? NAN : std::cos(step)).ok());
      if (step % 3 == 0) {
        ASSERT_TRUE(writer->log_scalar("lr", step, 1e-3 * (step % 7)).ok());
      }
    }
    ASSERT_TRUE(writer->close().ok());
  }
  // An older copy of the same server file: v2, without summaries.
  const std::string old_server = dir.file("server-v2.sqlite");
  std::filesystem::copy_file(server, old_server);
  {
    Result<Database> db = open_store(old_server, Access::read_write);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE(db->exec("DROP TABLE scalar_buckets; PRAGMA user_version = 2").ok());
  }
  for (const std::string& source : {server, old_server}) {
    SCOPED_TRACE(source);
    const std::string local = dir.file("local-" + std::filesystem::path(source).stem().string());
    {
      // Other keys first, so that key ids differ between the files.
      Result<RunWriter> writer = RunWriter::create(local, RunSpec{.name = "local"});
      ASSERT_TRUE(writer.ok());
      ASSERT_TRUE(writer->log_scalar("aaa", 0, 1).ok());
      ASSERT_TRUE(writer->log_scalar("lr", 5, 1).ok());
    }
    Result<int> imported = import_runs(source, local);
    ASSERT_TRUE(imported.ok()) << imported.error().to_string();
    ASSERT_EQ(*imported, 1);
    Result<RunReader> reader = RunReader::open(local);
    ASSERT_TRUE(reader.ok());
    const int64_t run = *reader->find_run("long");
    EXPECT_NE(run, server_run);
    testing::expect_buckets_match_rows(*reader, run, "train/loss");
    testing::expect_buckets_match_rows(*reader, run, "lr");
    testing::expect_buckets_match_rows(*reader, *reader->find_run("local"), "lr");
  }
}

TEST(ImportRuns, BadSourcesAreClearErrors) {
  TempDir dir;
  const std::string local = dir.file("local.sqlite");
  Result<int> missing = import_runs(dir.file("nothing.sqlite"), local);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("no such run database"), std::string::npos);
  const std::string text = dir.file("text.sqlite");
  std::ofstream(text) << "hello";
  Result<int> not_sqlite = import_runs(text, local);
  ASSERT_FALSE(not_sqlite.ok());
  EXPECT_EQ(not_sqlite.error().where.file, text);
  Result<int> directory = import_runs(dir.path().string(), local);
  ASSERT_FALSE(directory.ok());
  EXPECT_NE(directory.error().message.find("is a directory"), std::string::npos);
  record_run(local, "x");
  Result<int> itself = import_runs(local, local);
  ASSERT_FALSE(itself.ok());
  EXPECT_NE(itself.error().message.find("into itself"), std::string::npos);
}

}  // namespace
}  // namespace hl::store
