// The batched RunWriter: when rows are committed, upserts on resume, status times,
// and the error paths. Another connection (a RunReader) checks what is really on disk.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "core/store/run_reader.hpp"
#include "core/store/run_writer.hpp"
#include "core/store/schema.hpp"
#include "tests/store/temp_dir.hpp"

namespace hl::store {
namespace {

using namespace std::chrono_literals;
using testing::TempDir;

// Rows of the run committed to disk, seen through a separate connection.
int64_t committed_scalars(const std::string& path, int64_t run) {
  Result<Database> db = open_store(path, Access::read_only);
  EXPECT_TRUE(db.ok()) << db.error().to_string();
  return *db->query_int64("SELECT count(*) FROM scalars WHERE run = " + std::to_string(run));
}

WriterOptions count_only(size_t batch_rows) {
  WriterOptions options;
  options.batch_rows = batch_rows;
  options.flush_interval = std::chrono::hours(1);  // only the count triggers commits
  return options;
}

TEST(RunWriter, CreatesPendingRunWithSpec) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  RunSpec spec{.name = "lolcats-ssd",
               .experiment = "name = \"lolcats-ssd\"\n",
               .base_model = "models/tiny-base",
               .device = "cpu",
               .method = "lolcats+ssd"};
  Result<RunWriter> writer = RunWriter::create(path, spec);
  ASSERT_TRUE(writer.ok()) << writer.error().to_string();
  EXPECT_EQ(writer->uuid().size(), 36u);
  EXPECT_EQ(writer->uuid()[14], '4');  // version 4
  Result<RunReader> reader = RunReader::open(path);
  ASSERT_TRUE(reader.ok()) << reader.error().to_string();
  Result<RunInfo> info = reader->run(writer->run_id());
  ASSERT_TRUE(info.ok()) << info.error().to_string();
  EXPECT_EQ(info->name, "lolcats-ssd");
  EXPECT_EQ(info->status, RunStatus::pending);
  EXPECT_EQ(info->experiment, spec.experiment);
  EXPECT_EQ(info->method, "lolcats+ssd");
  EXPECT_EQ(info->base_model, "models/tiny-base");
  EXPECT_FALSE(info->host.empty());
  EXPECT_EQ(info->started_ms, std::nullopt);

  Result<RunWriter> twin = RunWriter::create(path, RunSpec{.name = "b", .uuid = writer->uuid()});
  ASSERT_FALSE(twin.ok());
  EXPECT_NE(twin.error().message.find("already exists"), std::string::npos);
  Result<RunWriter> orphan = RunWriter::create(path, RunSpec{.name = "c", .parent_run = 999});
  ASSERT_FALSE(orphan.ok());
  EXPECT_NE(orphan.error().message.find("parent run 999 does not exist"), std::string::npos);
}

TEST(RunWriter, CommitsByCount) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  std::vector<CommitInfo> commits;
  WriterOptions options = count_only(10);
  options.on_commit = [&](const CommitInfo& info) { commits.push_back(info); };
  Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "count"}, options);
  ASSERT_TRUE(writer.ok());
  for (int step = 0; step < 25; ++step)
    ASSERT_TRUE(writer->log_scalar("train/loss", step, 1.0 / (step + 1)).ok());
  EXPECT_EQ(committed_scalars(path, writer->run_id()), 20);
  EXPECT_EQ(writer->pending_rows(), 5u);
  ASSERT_EQ(commits.size(), 2u);
  EXPECT_EQ(commits[1].batch, 2u);
  EXPECT_EQ(commits[1].rows, 10u);
  EXPECT_EQ(commits[1].total_rows, 20u);
  ASSERT_TRUE(writer->flush().ok());
  EXPECT_EQ(committed_scalars(path, writer->run_id()), 25);
  EXPECT_EQ(writer->committed_rows(), 25u);
}

TEST(RunWriter, CommitsByTime) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  WriterOptions options;
  options.batch_rows = 1000;
  options.flush_interval = 200ms;
  Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "time"}, options);
  ASSERT_TRUE(writer.ok());
  const auto logged = std::chrono::steady_clock::now();
  for (int step = 0; step < 5; ++step)
    ASSERT_TRUE(writer->log_scalar("lr", step, 1e-3).ok());
  EXPECT_EQ(writer->pending_rows(), 5u);
  // Well below 1000 rows, so only the timer can commit them.
  int64_t seen = 0;
  auto committed_at = logged;
  while (std::chrono::steady_clock::now() - logged < 5s) {
    seen = committed_scalars(path, writer->run_id());
    committed_at = std::chrono::steady_clock::now();
    if (seen == 5) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(seen, 5);
  EXPECT_GE(committed_at - logged, 190ms);  // not before the interval ...
  EXPECT_LT(committed_at - logged, 2s);     // ... and soon after it
  EXPECT_EQ(writer->pending_rows(), 0u);
}

TEST(RunWriter, CommitsAtCloseAndDestruction) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  int64_t closed_run = 0, destroyed_run = 0;
  {
    Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "close"}, count_only(100));
    ASSERT_TRUE(writer.ok());
    closed_run = writer->run_id();
    for (int step = 0; step < 7; ++step)
      ASSERT_TRUE(writer->log_scalar("x", step, step).ok());
    EXPECT_EQ(committed_scalars(path, closed_run), 0);
    ASSERT_TRUE(writer->close().ok());
    EXPECT_EQ(committed_scalars(path, closed_run), 7);
    Status late = writer->log_scalar("x", 8, 8);
    ASSERT_FALSE(late.ok());
    EXPECT_NE(late.error().message.find("closed"), std::string::npos);
    EXPECT_TRUE(writer->close().ok());  // closing twice is harmless
  }
  {
    Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "dtor"}, count_only(100));
    ASSERT_TRUE(writer.ok());
    destroyed_run = writer->run_id();
    for (int step = 0; step < 3; ++step)
      ASSERT_TRUE(writer->log_scalar("x", step, step).ok());
  }
  EXPECT_EQ(committed_scalars(path, destroyed_run), 3);
}

TEST(RunWriter, ResumedRunReplacesReloggedSteps) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  int64_t run = 0;
  {
    Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "resume"});
    ASSERT_TRUE(writer.ok());
    run = writer->run_id();
    for (int step = 0; step < 10; ++step)
      ASSERT_TRUE(writer->log_scalar("loss", step, 10.0).ok());
    ASSERT_TRUE(writer->log_layer_scalar("usage/linear_mass", 5, 0, -1, 0.1).ok());
    ASSERT_TRUE(writer->set_status(RunStatus::failed, "killed").ok());
  }
  Result<RunWriter> resumed = RunWriter::resume(path, run);
  ASSERT_TRUE(resumed.ok()) << resumed.error().to_string();
  ASSERT_TRUE(resumed->set_status(RunStatus::running).ok());
  for (int step = 5; step < 15; ++step)
    ASSERT_TRUE(resumed->log_scalar("loss", step, 1.0).ok());
  ASSERT_TRUE(resumed->log_layer_scalar("usage/linear_mass", 5, 0, -1, 0.7).ok());
  ASSERT_TRUE(resumed->close().ok());

  Result<RunReader> reader = RunReader::open(path);
  ASSERT_TRUE(reader.ok());
  Result<std::vector<ScalarPoint>> loss = reader->scalars_after(run, "loss", -1);
  ASSERT_TRUE(loss.ok());
  ASSERT_EQ(loss->size(), 15u);
  for (const ScalarPoint& point : *loss)
    EXPECT_EQ(point.value, point.step < 5 ? 10.0 : 1.0);
  EXPECT_DOUBLE_EQ(reader->layer_matrix(run, "usage/linear_mass")->at(0, 0), 0.7);
  EXPECT_EQ(reader->run(run)->last_step, 14);
  EXPECT_FALSE(RunWriter::resume(path, 12345).ok());
}

TEST(RunWriter, RepeatedStepInOneBatchKeepsTheLastValue) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "repeat"}, count_only(1000));
  ASSERT_TRUE(writer.ok());
  // 300 rows over 100 steps in one batch: later rows replace earlier ones.
  for (int pass = 0; pass < 3; ++pass)
    for (int step = 0; step < 100; ++step)
      ASSERT_TRUE(writer->log_scalar("loss", step, pass * 1000.0 + step).ok());
  ASSERT_TRUE(writer->close().ok());
  Result<RunReader> reader = RunReader::open(path);
  ASSERT_TRUE(reader.ok());
  auto loss = *reader->scalars_after(writer->run_id(), "loss", -1);
  ASSERT_EQ(loss.size(), 100u);
  for (const ScalarPoint& point : loss)
    EXPECT_EQ(point.value, 2000.0 + point.step);
}

TEST(RunWriter, StatusChangesCommitAtOnceWithTimes) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "status"}, count_only(1000));
  ASSERT_TRUE(writer.ok());
  Result<RunReader> reader = RunReader::open(path);
  ASSERT_TRUE(reader.ok());
  const int64_t run = writer->run_id();

  ASSERT_TRUE(writer->set_status(RunStatus::running).ok());
  Result<RunInfo> running = reader->run(run);
  EXPECT_EQ(running->status, RunStatus::running);
  ASSERT_TRUE(running->started_ms.has_value());
  EXPECT_EQ(running->finished_ms, std::nullopt);

  ASSERT_TRUE(writer->log_scalar("loss", 1, 0.5).ok());  // buffered ...
  ASSERT_TRUE(writer->set_status(RunStatus::completed, "done").ok());
  EXPECT_EQ(committed_scalars(path, run), 1);  // ... and committed before the status
  Result<RunInfo> done = reader->run(run);
  EXPECT_EQ(done->status, RunStatus::completed);
  EXPECT_EQ(done->status_message, "done");
  EXPECT_EQ(done->started_ms, running->started_ms);
  ASSERT_TRUE(done->finished_ms.has_value());
  EXPECT_GE(*done->finished_ms, *done->started_ms);
}

TEST(RunWriter, AllRowKindsRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "kinds"});
  ASSERT_TRUE(writer.ok());
  const int64_t run = writer->run_id();
  ASSERT_TRUE(writer->set_params({{"attention.window", "64"}, {"seed", "0"}}).ok());
  ASSERT_TRUE(writer->set_params({{"seed", "1"}}).ok());  // upsert
  ASSERT_TRUE(writer->log_scalar("loss", 0, std::nan("")).ok());
  ASSERT_TRUE(writer->log_scalar("loss", 1, INFINITY).ok());
  ASSERT_TRUE(writer->log_eval("ppl", "hybrid", "ppl", 12.25, 512).ok());
  ASSERT_TRUE(writer->log_event("info", "checkpoint", "saved", R"({"step": 1})").ok());
  ASSERT_TRUE(writer->log_event("warning", "nan", "loss is NaN").ok());
  ASSERT_TRUE(writer->add_artifact("checkpoint", "ckpt/step1", R"({"bytes": 10})").ok());
  ASSERT_TRUE(writer->set_summary("final_loss", 0.75).ok());
  ASSERT_TRUE(writer->set_summary("final_loss", 0.5).ok());  // the later value wins

  Status bad_json = writer->log_event("info", "broken", "x", "{not json");
  ASSERT_FALSE(bad_json.ok());
  EXPECT_NE(bad_json.error().message.find("payload of event 'broken' is not valid JSON"),
            std::string::npos);
  EXPECT_FALSE(writer->add_artifact("model", "", "{}").ok());
  Status bad_head = writer->log_layer_scalar("usage", 0, 0, -2, 0.0);
  ASSERT_FALSE(bad_head.ok());
  EXPECT_NE(bad_head.error().message.find("head >= -1"), std::string::npos);
  EXPECT_FALSE(writer->log_scalar("", 0, 0.0).ok());
  ASSERT_TRUE(writer->close().ok());

  Result<RunReader> reader = RunReader::open(path);
  ASSERT_TRUE(reader.ok());
  auto params = *reader->params(run);
  EXPECT_EQ(params.at("attention.window"), "64");
  EXPECT_EQ(params.at("seed"), "1");
  auto loss = *reader->scalars_after(run, "loss", -1);
  ASSERT_EQ(loss.size(), 2u);
  EXPECT_TRUE(std::isnan(loss[0].value));
  EXPECT_TRUE(std::isinf(loss[1].value));
  auto evals = *reader->evals({run});
  ASSERT_EQ(evals.size(), 1u);
  EXPECT_EQ(evals[0].task, "ppl");
  EXPECT_EQ(evals[0].n, 512);
  EXPECT_DOUBLE_EQ(evals[0].value, 12.25);
  auto events = *reader->events_after(run, 0);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].payload, R"({"step": 1})");
  EXPECT_EQ(events[1].payload, "{}");
  EXPECT_EQ(reader->events_after(run, events[0].id)->size(), 1u);
  EXPECT_EQ(reader->events_after(run, 0, 1)->size(), 1u);
  auto artifacts = *reader->artifacts(run);
  ASSERT_EQ(artifacts.size(), 1u);
  EXPECT_EQ(artifacts[0].path, "ckpt/step1");
  EXPECT_DOUBLE_EQ(reader->summary(run)->at("final_loss"), 0.5);
}

TEST(RunWriter, LogsFromSeveralThreads) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  WriterOptions options;
  options.batch_rows = 64;
  options.flush_interval = 5ms;
  Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "threads"}, options);
  ASSERT_TRUE(writer.ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int step = 0; step < 2000; ++step)
        EXPECT_TRUE(writer->log_scalar("thread" + std::to_string(t), step, step * 0.5).ok());
    });
  for (auto& thread : threads)
    thread.join();
  ASSERT_TRUE(writer->close().ok());
  EXPECT_EQ(committed_scalars(path, writer->run_id()), 8000);
}

}  // namespace
}  // namespace hl::store
