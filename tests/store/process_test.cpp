// Acceptance tests with real processes: a writer killed with SIGKILL mid-batch, and a
// reader in another process reading while the writer writes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>

#include "core/store/run_reader.hpp"
#include "core/store/run_writer.hpp"
#include "core/store/schema.hpp"
#include "tests/store/bucket_check.hpp"
#include "tests/store/temp_dir.hpp"

namespace hl::store {
namespace {

using namespace std::chrono_literals;
using testing::TempDir;

void write_all(int fd, const void* data, size_t size) {
  const char* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd, bytes, size);
    if (written <= 0) _exit(3);
    bytes += written;
    size -= static_cast<size_t>(written);
  }
}

// Reads one uint64 from the pipe; false at end of file.
bool read_u64(int fd, uint64_t& value) {
  char* bytes = reinterpret_cast<char*>(&value);
  size_t got = 0;
  while (got < sizeof value) {
    const ssize_t n = ::read(fd, bytes + got, sizeof value - got);
    if (n == 0) return false;
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    got += static_cast<size_t>(n);
  }
  return true;
}

constexpr size_t kBatch = 100;

// The child: logs forever, reporting each committed batch's running total.
[[noreturn]] void write_until_killed(const std::string& path, int report_fd) {
  WriterOptions options;
  options.batch_rows = kBatch;
  options.flush_interval = std::chrono::hours(1);  // every commit is exactly one full batch
  options.on_commit = [report_fd](const CommitInfo& info) {
    write_all(report_fd, &info.total_rows, sizeof info.total_rows);
  };
  Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "doomed"}, options);
  if (!writer.ok()) _exit(2);
  if (!writer->set_status(RunStatus::running).ok()) _exit(2);
  for (int64_t step = 0;; ++step) {
    // Alternate tables inside a batch, so a torn batch would show as a mismatch.
    Status status = step % 4 == 3 ? writer->log_layer_scalar("usage/linear_mass", step, 0, -1, 0.5)
                                  : writer->log_scalar("train/loss", step, 1.0 / (1.0 + step));
    if (!status.ok()) _exit(4);
  }
}

TEST(Processes, WriterKilledMidBatchLeavesConsistentDatabase) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(fds[0]);
    write_until_killed(path, fds[1]);
  }
  close(fds[1]);
  uint64_t reported = 0, total = 0;
  while (reported < 300 * kBatch && read_u64(fds[0], total))
    reported = total;
  // Kill at a moment unrelated to batch boundaries: the child is logging continuously.
  std::this_thread::sleep_for(std::chrono::microseconds(1000 + getpid() % 1000));
  ASSERT_EQ(kill(child, SIGKILL), 0);
  int wait_status = 0;
  ASSERT_EQ(waitpid(child, &wait_status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wait_status))
      << "the writer exited by itself: " << WEXITSTATUS(wait_status);
  EXPECT_EQ(WTERMSIG(wait_status), SIGKILL);
  while (read_u64(fds[0], total))
    reported = total;  // commits reported before death
  close(fds[0]);
  ASSERT_GE(reported, 300 * kBatch);

  // The GUI's way in first: read-only, with the killed writer's WAL still there.
  {
    Result<RunReader> reader = RunReader::open(path, Access::read_only);
    ASSERT_TRUE(reader.ok()) << reader.error().to_string();
    Status integrity = reader->check_integrity();
    EXPECT_TRUE(integrity.ok()) << integrity.error().to_string();
    Result<std::vector<RunListEntry>> runs = reader->list_runs();
    ASSERT_TRUE(runs.ok());
    ASSERT_EQ(runs->size(), 1u);
    EXPECT_EQ(runs->front().info.status, RunStatus::running);  // it never got to say more
    // The bucket summaries were committed with their rows: they agree with what is there.
    testing::expect_buckets_match_rows(*reader, runs->front().info.id, "train/loss");
  }
  Result<Database> db = open_store(path, Access::read_write);
  ASSERT_TRUE(db.ok()) << db.error().to_string();
  const int64_t scalars = *db->query_int64("SELECT count(*) FROM scalars");
  const int64_t layer_rows = *db->query_int64("SELECT count(*) FROM layer_scalars");
  const uint64_t on_disk = static_cast<uint64_t>(scalars + layer_rows);
  EXPECT_GE(on_disk, reported) << "a batch reported as committed is missing";
  EXPECT_EQ(on_disk % kBatch, 0u) << "a partial batch was committed";
  EXPECT_LE(on_disk, reported + kBatch) << "at most one commit can follow the last report";
  // Whole batches from step 0 without holes: the steps are exactly 0 .. on_disk-1.
  EXPECT_EQ(*db->query_int64("SELECT max(step) FROM (SELECT step FROM scalars UNION ALL "
                             "SELECT step FROM layer_scalars)"),
            static_cast<int64_t>(on_disk) - 1);
  EXPECT_EQ(*db->query_int64("SELECT count(DISTINCT step) FROM (SELECT step FROM scalars "
                             "UNION ALL SELECT step FROM layer_scalars)"),
            static_cast<int64_t>(on_disk));
  EXPECT_EQ(*db->query_int64("SELECT last_step FROM runs"), static_cast<int64_t>(on_disk) - 1);

  // The run can be marked failed afterwards, as a resuming runner would.
  Result<RunWriter> resumed = RunWriter::resume(path, 1);
  ASSERT_TRUE(resumed.ok()) << resumed.error().to_string();
  EXPECT_TRUE(resumed->set_status(RunStatus::failed, "writer was killed").ok());
}

TEST(Processes, ReaderReadsWhileAnotherProcessWrites) {
  TempDir dir;
  const std::string path = dir.file("runs.sqlite");
  constexpr int64_t kSteps = 40000;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(fds[0]);
    WriterOptions options;
    options.batch_rows = 250;
    options.flush_interval = 20ms;
    Result<RunWriter> writer = RunWriter::create(path, RunSpec{.name = "live"}, options);
    if (!writer.ok()) _exit(2);
    const uint64_t run = static_cast<uint64_t>(writer->run_id());
    write_all(fds[1], &run, sizeof run);
    for (int64_t step = 0; step < kSteps; ++step) {
      if (!writer->log_scalar("train/loss", step, static_cast<double>(step)).ok()) _exit(4);
      if (step % 50 == 0 && !writer->log_layer_scalar("usage/linear_mass", step, 0, -1, 0.1).ok())
        _exit(4);
      if (step % 500 == 0) {
        if (!writer->log_event("info", "progress", std::to_string(step)).ok()) _exit(4);
        std::this_thread::sleep_for(2ms);  // spread the writes over a while
      }
    }
    if (!writer->set_status(RunStatus::completed).ok()) _exit(5);
    if (!writer->close().ok()) _exit(6);
    _exit(0);
  }
  close(fds[1]);
  uint64_t run_value = 0;
  ASSERT_TRUE(read_u64(fds[0], run_value));
  close(fds[0]);
  const auto run = static_cast<int64_t>(run_value);

  Result<RunReader> opened = RunReader::open(path, Access::read_only);
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  RunReader& reader = *opened;
  int64_t last_step = -1, last_event = 0, versions_seen = 0, reads = 0;
  int64_t version = -1;
  std::string failure;
  int wait_status = 0;
  bool child_done = false;
  auto fail = [&](const Error& error) { failure = error.to_string(); };
  while (failure.empty()) {
    child_done = waitpid(child, &wait_status, WNOHANG) == child;
    Result<int64_t> now = reader.data_version();
    if (!now.ok()) {
      fail(now.error());
      break;
    }
    if (*now != version) {
      version = *now;
      ++versions_seen;
      Result<std::vector<ScalarPoint>> fresh = reader.scalars_after(run, "train/loss", last_step);
      if (!fresh.ok()) {
        fail(fresh.error());
        break;
      }
      for (const ScalarPoint& point : *fresh) {
        if (point.step != last_step + 1) {
          failure = "gap in the live series at step " + std::to_string(point.step);
          break;
        }
        last_step = point.step;
      }
      Result<std::vector<EventRow>> events = reader.events_after(run, last_event);
      if (!events.ok()) {
        fail(events.error());
        break;
      }
      if (!events->empty()) last_event = events->back().id;
      Result<std::vector<ScalarPoint>> view =
          reader.downsampled(run, "train/loss", 0, std::max<int64_t>(last_step, 1), 500);
      if (!view.ok()) {
        fail(view.error());
        break;
      }
      // The plot's first view: bucket summaries and the rows at the edges, one snapshot.
      Result<std::optional<SeriesOverview>> overview =
          reader.overview(run, "train/loss", 0, std::max<int64_t>(last_step, 1), 100);
      if (!overview.ok()) {
        fail(overview.error());
        break;
      }
      if (*overview && !(*overview)->points.empty() &&
          (*overview)->points.back().step > last_step) {
        failure = "the overview reaches past the range it was asked for";
        break;
      }
      Result<LayerMatrix> matrix = reader.layer_matrix(run, "usage/linear_mass");
      if (!matrix.ok()) {
        fail(matrix.error());
        break;
      }
      Result<std::vector<RunListEntry>> runs = reader.list_runs();
      if (!runs.ok()) {
        fail(runs.error());
        break;
      }
      reads += 5;
    }
    if (child_done) break;
    std::this_thread::sleep_for(1ms);
  }
  if (!child_done) waitpid(child, &wait_status, 0);
  ASSERT_TRUE(failure.empty()) << failure;
  ASSERT_TRUE(WIFEXITED(wait_status));
  ASSERT_EQ(WEXITSTATUS(wait_status), 0) << "the writer process failed";
  // A last look after the writer finished catches the final commit.
  auto rest = *reader.scalars_after(run, "train/loss", last_step);
  if (!rest.empty()) last_step = rest.back().step;
  EXPECT_EQ(last_step, kSteps - 1);
  EXPECT_EQ(reader.run(run)->status, RunStatus::completed);
  std::cout << "[ info ] reader saw " << versions_seen << " database versions, made " << reads
            << " queries\n";
  EXPECT_GT(versions_seen, 10) << "the reader never saw the writer's progress";
  EXPECT_GT(reads, 50);
  EXPECT_TRUE(reader.check_integrity().ok());
  testing::expect_buckets_match_rows(reader, run, "train/loss");
}

}  // namespace
}  // namespace hl::store
