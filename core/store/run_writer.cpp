#include "core/store/run_writer.hpp"

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/store/buckets.hpp"
#include "core/store/schema.hpp"
#include "core/store/sqlite_db.hpp"

namespace hl::store {
namespace {

using Clock = std::chrono::steady_clock;

std::string random_uuid() {
  std::random_device device;
  std::mt19937_64 engine((static_cast<uint64_t>(device()) << 32) ^ device() ^
                         static_cast<uint64_t>(Clock::now().time_since_epoch().count()));
  uint64_t high = engine(), low = engine();
  high = (high & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;  // version 4
  low = (low & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;    // RFC 4122 variant
  char text[37];
  std::snprintf(text, sizeof text, "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(high >> 32),
                static_cast<unsigned>((high >> 16) & 0xffff), static_cast<unsigned>(high & 0xffff),
                static_cast<unsigned>(low >> 48),
                static_cast<unsigned long long>(low & 0xffffffffffffULL));
  return text;
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return {};
  return name;
}

Status check_json(std::string_view text, std::string_view what) {
  if (text.empty() || nlohmann::json::accept(text)) return Status::Ok();
  return make_error(std::string(what) + " is not valid JSON: '" + std::string(text.substr(0, 80)) +
                    "'");
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
};

struct ScalarRow {
  uint32_t key;
  int64_t step;
  int64_t wall_ms;
  double value;
};

struct LayerRow {
  uint32_t key;
  int64_t step;
  int32_t layer;
  int32_t head;
  double value;
};

}  // namespace

struct RunWriter::Impl {
  Database db;
  std::string db_path;  // kept apart: the connection is released on close
  int64_t run_id = 0;
  std::string uuid;
  WriterOptions options;

  // Everything below is guarded by `mutex`, the connection included.
  mutable std::mutex mutex;
  std::condition_variable wake;
  std::thread flusher;
  bool stopping = false;
  bool closed = false;

  Statement insert_scalar, insert_layer, insert_eval, insert_event, insert_artifact, upsert_summary,
      intern_key, select_key, update_last_step;
  std::optional<BucketMaintainer> buckets;  // the scalar series' bucket summaries

  // Metric keys are interned locally on log and mapped to database ids at commit time,
  // inside the batch's transaction.
  std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>> key_index;
  std::vector<std::string> key_names;
  std::vector<int64_t> key_db_ids;  // -1 = not yet in the database

  std::vector<ScalarRow> scalars;
  std::vector<LayerRow> layer_rows;
  std::vector<EvalRow> evals;
  std::vector<EventRow> events;
  std::vector<ArtifactRow> artifacts;
  std::vector<std::pair<std::string, double>> summary;
  size_t pending = 0;
  Clock::time_point oldest_pending;
  Clock::time_point retry_after;  // after a failed commit, count-triggered commits wait

  std::optional<Error> deferred_error;  // from the background thread, reported once
  uint64_t batches = 0;
  uint64_t total_rows = 0;

  Status prepare_statements();
  uint32_t intern(std::string_view key);
  void added_rows(size_t rows);  // after appending to a buffer, lock held
  Status maybe_flush_by_count();
  Status flush_locked();
  Status write_batch(std::vector<uint32_t>& resolved_now);
  Status take_deferred_error();
  Status check_open() const;
  void run_flusher();
  void start() {
    flusher = std::thread([this] { run_flusher(); });
  }
  Status stop_and_flush();
};

Status RunWriter::Impl::prepare_statements() {
  struct Item {
    Statement* target;
    const char* sql;
  };
  const Item items[] = {
      {&insert_scalar,
       "INSERT OR REPLACE INTO scalars(run, key_id, step, wall_ms, value) VALUES (?,?,?,?,?)"},
      {&insert_layer,
       "INSERT OR REPLACE INTO layer_scalars(run, key_id, step, layer, head, value) "
       "VALUES (?,?,?,?,?,?)"},
      {&insert_eval,
       "INSERT INTO evals(run, task, mode, metric, value, n, created_ms) VALUES (?,?,?,?,?,?,?)"},
      {&insert_event,
       "INSERT INTO events(run, wall_ms, level, kind, message, payload) VALUES (?,?,?,?,?,?)"},
      {&insert_artifact,
       "INSERT INTO artifacts(run, kind, path, meta, created_ms) VALUES (?,?,?,?,?)"},
      {&upsert_summary, "INSERT OR REPLACE INTO run_summary(run, key, value) VALUES (?,?,?)"},
      {&intern_key, "INSERT OR IGNORE INTO metric_keys(key) VALUES (?)"},
      {&select_key, "SELECT id FROM metric_keys WHERE key = ?"},
      {&update_last_step,
       "UPDATE runs SET last_step = max(coalesce(last_step, ?2), ?2) WHERE id = ?1"},
  };
  for (const Item& item : items) {
    Result<Statement> stmt = db.prepare(item.sql);
    if (!stmt.ok()) return stmt.error();
    *item.target = std::move(stmt).value();
  }
  Result<BucketMaintainer> maintainer = BucketMaintainer::prepare(db);
  if (!maintainer.ok()) return maintainer.error();
  buckets.emplace(std::move(maintainer).value());
  return Status::Ok();
}

uint32_t RunWriter::Impl::intern(std::string_view key) {
  if (auto it = key_index.find(key); it != key_index.end()) return it->second;
  const auto index = static_cast<uint32_t>(key_names.size());
  key_names.emplace_back(key);
  key_db_ids.push_back(-1);
  key_index.emplace(key_names.back(), index);
  return index;
}

Status RunWriter::Impl::check_open() const {
  if (closed)
    return make_error("the writer of run " + std::to_string(run_id) + " is closed",
                      Location{db_path, 0, ""});
  return Status::Ok();
}

Status RunWriter::Impl::take_deferred_error() {
  if (!deferred_error) return Status::Ok();
  Error error = std::move(*deferred_error);
  deferred_error.reset();
  return error;
}

void RunWriter::Impl::added_rows(size_t rows) {
  if (pending == 0) {
    oldest_pending = Clock::now();
    wake.notify_one();
  }
  pending += rows;
}

Status RunWriter::Impl::maybe_flush_by_count() {
  if (Status deferred = take_deferred_error(); !deferred.ok()) return deferred;
  if (pending < options.batch_rows || Clock::now() < retry_after) return Status::Ok();
  return flush_locked();
}

Status RunWriter::Impl::write_batch(std::vector<uint32_t>& resolved_now) {
  for (uint32_t index = 0; index < key_db_ids.size(); ++index) {
    if (key_db_ids[index] >= 0) continue;
    intern_key.bind(1, key_names[index]);
    if (Status s = intern_key.run(); !s.ok()) return s;
    select_key.bind(1, key_names[index]);
    Result<bool> row = select_key.step();
    if (!row.ok()) return row.error();
    if (!*row) return db.error("metric key '" + key_names[index] + "' vanished");
    key_db_ids[index] = select_key.column_int64(0);
    select_key.reset();
    resolved_now.push_back(index);
  }
  int64_t last_step = -1;
  for (const ScalarRow& row : scalars) {
    insert_scalar.bind(1, run_id).bind(2, key_db_ids[row.key]).bind(3, row.step);
    insert_scalar.bind(4, row.wall_ms).bind(5, row.value);
    if (Status s = insert_scalar.run(); !s.ok()) return s;
    last_step = std::max(last_step, row.step);
  }
  // The bucket summaries of the series this batch touched, brought up to date in the same
  // transaction, so that they always agree with the rows (re-logged steps too).
  if (!scalars.empty()) {
    std::vector<uint32_t> order(scalars.size());
    for (uint32_t i = 0; i < order.size(); ++i)
      order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return scalars[a].key < scalars[b].key; });
    std::vector<ScalarPoint> rows;
    for (size_t i = 0; i < order.size();) {
      const uint32_t key = scalars[order[i]].key;
      rows.clear();
      for (; i < order.size() && scalars[order[i]].key == key; ++i) {
        const ScalarRow& row = scalars[order[i]];
        rows.push_back({row.step, row.wall_ms, row.value});
      }
      if (Status s = buckets->update(run_id, key_db_ids[key], rows); !s.ok()) return s;
    }
  }
  for (const LayerRow& row : layer_rows) {
    insert_layer.bind(1, run_id).bind(2, key_db_ids[row.key]).bind(3, row.step);
    insert_layer.bind(4, row.layer).bind(5, row.head).bind(6, row.value);
    if (Status s = insert_layer.run(); !s.ok()) return s;
    last_step = std::max(last_step, row.step);
  }
  for (const EvalRow& row : evals) {
    insert_eval.bind(1, run_id).bind(2, row.task).bind(3, row.mode).bind(4, row.metric);
    insert_eval.bind(5, row.value).bind(6, row.n).bind(7, row.created_ms);
    if (Status s = insert_eval.run(); !s.ok()) return s;
  }
  for (const EventRow& row : events) {
    insert_event.bind(1, run_id).bind(2, row.wall_ms).bind(3, row.level).bind(4, row.kind);
    insert_event.bind(5, row.message).bind(6, row.payload);
    if (Status s = insert_event.run(); !s.ok()) return s;
  }
  for (const ArtifactRow& row : artifacts) {
    insert_artifact.bind(1, run_id).bind(2, row.kind).bind(3, row.path).bind(4, row.meta);
    insert_artifact.bind(5, row.created_ms);
    if (Status s = insert_artifact.run(); !s.ok()) return s;
  }
  for (const auto& [key, value] : summary) {
    upsert_summary.bind(1, run_id).bind(2, key).bind(3, value);
    if (Status s = upsert_summary.run(); !s.ok()) return s;
  }
  if (last_step >= 0) {
    update_last_step.bind(1, run_id).bind(2, last_step);
    if (Status s = update_last_step.run(); !s.ok()) return s;
  }
  return Status::Ok();
}

Status RunWriter::Impl::flush_locked() {
  if (pending == 0) return Status::Ok();
  if (!db.is_open()) return check_open();
  std::vector<uint32_t> resolved_now;
  Status status = [&]() -> Status {
    Result<Transaction> txn = Transaction::begin(db);
    if (!txn.ok()) return txn.error();
    if (Status s = write_batch(resolved_now); !s.ok()) return s;
    return txn->commit();
  }();
  if (!status.ok()) {
    // The rows stay buffered for the next attempt; key ids from the rolled-back
    // transaction are not valid.
    for (uint32_t index : resolved_now)
      key_db_ids[index] = -1;
    retry_after =
        Clock::now() + std::max<Clock::duration>(options.flush_interval, std::chrono::seconds(1));
    return status;
  }
  const size_t rows = pending;
  scalars.clear();
  layer_rows.clear();
  evals.clear();
  events.clear();
  artifacts.clear();
  summary.clear();
  pending = 0;
  retry_after = {};
  ++batches;
  total_rows += rows;
  if (options.on_commit) options.on_commit(CommitInfo{batches, rows, total_rows});
  return Status::Ok();
}

void RunWriter::Impl::run_flusher() {
  std::unique_lock lock(mutex);
  while (!stopping) {
    if (pending == 0) {
      wake.wait(lock, [&] { return stopping || pending > 0; });
      continue;
    }
    const auto deadline = std::max(oldest_pending + options.flush_interval, retry_after);
    if (Clock::now() < deadline) {
      wake.wait_until(lock, deadline);
      continue;
    }
    if (Status s = flush_locked(); !s.ok() && !deferred_error) deferred_error = s.error();
  }
}

Status RunWriter::Impl::stop_and_flush() {
  {
    std::lock_guard lock(mutex);
    if (closed) return Status::Ok();
    stopping = true;
  }
  wake.notify_all();
  if (flusher.joinable()) flusher.join();
  std::lock_guard lock(mutex);
  closed = true;
  Status deferred = take_deferred_error();
  Status flushed = flush_locked();
  // Releasing the connection lets SQLite checkpoint the WAL when it is the last one.
  for (Statement* stmt :
       {&insert_scalar, &insert_layer, &insert_eval, &insert_event, &insert_artifact,
        &upsert_summary, &intern_key, &select_key, &update_last_step})
    *stmt = Statement();
  buckets.reset();
  db = Database();
  if (!flushed.ok()) return flushed;
  return deferred;
}

// ---- RunWriter ------------------------------------------------------------------------

RunWriter::RunWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RunWriter::RunWriter(RunWriter&&) noexcept = default;

RunWriter& RunWriter::operator=(RunWriter&& other) noexcept {
  if (this != &other) {
    if (impl_) (void)impl_->stop_and_flush();
    impl_ = std::move(other.impl_);
  }
  return *this;
}

RunWriter::~RunWriter() {
  if (!impl_) return;
  if (Status s = impl_->stop_and_flush(); !s.ok())
    std::cerr << "hybridlab: rows of run " << impl_->run_id
              << " could not be saved: " << s.error().to_string() << "\n";
}

Result<RunWriter> RunWriter::create(const std::string& db_path, const RunSpec& spec,
                                    WriterOptions options) {
  if (spec.name.empty()) return make_error("a run needs a name", Location{db_path, 0, ""});
  if (options.batch_rows == 0) options.batch_rows = 1;
  Result<Database> db = open_store(db_path, Access::read_write);
  if (!db.ok()) return db.error();
  auto impl = std::make_unique<Impl>();
  impl->db = std::move(db).value();
  impl->db_path = db_path;
  impl->options = std::move(options);
  impl->uuid = spec.uuid.empty() ? random_uuid() : spec.uuid;

  if (spec.parent_run) {
    Result<Statement> find = impl->db.prepare("SELECT 1 FROM runs WHERE id = ?");
    if (!find.ok()) return find.error();
    find->bind(1, *spec.parent_run);
    Result<bool> found = find->step();
    if (!found.ok()) return found.error();
    if (!*found)
      return make_error("parent run " + std::to_string(*spec.parent_run) + " does not exist",
                        Location{db_path, 0, ""});
  }
  Result<Statement> insert = impl->db.prepare(
      "INSERT INTO runs(uuid, name, status, created_ms, experiment, base_model, device, "
      "parent_run, method, host) VALUES (?,?,'pending',?,?,?,?,?,?,?)");
  if (!insert.ok()) return insert.error();
  insert->bind(1, impl->uuid).bind(2, spec.name).bind(3, unix_ms_now());
  insert->bind(4, spec.experiment).bind(5, spec.base_model).bind(6, spec.device);
  insert->bind(7, spec.parent_run).bind(8, spec.method);
  insert->bind(9, spec.host.empty() ? host_name() : spec.host);
  if (Status s = insert->run(); !s.ok()) {
    if (s.error().message.find("UNIQUE") != std::string::npos)
      return make_error("a run with uuid " + impl->uuid + " already exists",
                        Location{db_path, 0, ""});
    return s.error();
  }
  impl->run_id = impl->db.last_insert_rowid();
  if (Status s = impl->prepare_statements(); !s.ok()) return s.error();
  impl->start();
  return RunWriter(std::move(impl));
}

Result<RunWriter> RunWriter::resume(const std::string& db_path, int64_t run_id,
                                    WriterOptions options) {
  if (options.batch_rows == 0) options.batch_rows = 1;
  Result<Database> db = open_store(db_path, Access::read_write);
  if (!db.ok()) return db.error();
  auto impl = std::make_unique<Impl>();
  impl->db = std::move(db).value();
  impl->db_path = db_path;
  impl->options = std::move(options);
  Result<Statement> find = impl->db.prepare("SELECT uuid FROM runs WHERE id = ?");
  if (!find.ok()) return find.error();
  find->bind(1, run_id);
  Result<bool> found = find->step();
  if (!found.ok()) return found.error();
  if (!*found)
    return make_error("no run with id " + std::to_string(run_id) + " to resume",
                      Location{db_path, 0, ""});
  impl->uuid = find->column_text(0);
  impl->run_id = run_id;
  if (Status s = impl->prepare_statements(); !s.ok()) return s.error();
  impl->start();
  return RunWriter(std::move(impl));
}

int64_t RunWriter::run_id() const {
  return impl_->run_id;
}
const std::string& RunWriter::uuid() const {
  return impl_->uuid;
}
const std::string& RunWriter::db_path() const {
  return impl_->db_path;
}

Status RunWriter::log_scalar(std::string_view key, int64_t step, double value) {
  if (key.empty()) return make_error("log_scalar: the metric key is empty");
  const int64_t wall_ms = unix_ms_now();
  std::lock_guard lock(impl_->mutex);
  if (Status s = impl_->check_open(); !s.ok()) return s;
  impl_->scalars.push_back({impl_->intern(key), step, wall_ms, value});
  impl_->added_rows(1);
  return impl_->maybe_flush_by_count();
}

Status RunWriter::log_layer_scalar(std::string_view key, int64_t step, int layer, int head,
                                   double value) {
  if (key.empty()) return make_error("log_layer_scalar: the metric key is empty");
  if (layer < 0 || head < -1)
    return make_error("log_layer_scalar '" + std::string(key) + "': layer must be >= 0 and " +
                      "head >= -1 (-1 = mean over heads), got layer " + std::to_string(layer) +
                      ", head " + std::to_string(head));
  std::lock_guard lock(impl_->mutex);
  if (Status s = impl_->check_open(); !s.ok()) return s;
  impl_->layer_rows.push_back({impl_->intern(key), step, layer, head, value});
  impl_->added_rows(1);
  return impl_->maybe_flush_by_count();
}

Status RunWriter::log_eval(std::string_view task, std::string_view mode, std::string_view metric,
                           double value, int64_t n) {
  if (task.empty() || metric.empty())
    return make_error("log_eval: task and metric must not be empty");
  std::lock_guard lock(impl_->mutex);
  if (Status s = impl_->check_open(); !s.ok()) return s;
  impl_->evals.push_back({impl_->run_id, std::string(task), std::string(mode), std::string(metric),
                          value, n, unix_ms_now()});
  impl_->added_rows(1);
  return impl_->maybe_flush_by_count();
}

Status RunWriter::log_event(std::string_view level, std::string_view kind, std::string_view message,
                            std::string_view payload_json) {
  if (Status s = check_json(payload_json, "the payload of event '" + std::string(kind) + "'");
      !s.ok())
    return s;
  std::lock_guard lock(impl_->mutex);
  if (Status s = impl_->check_open(); !s.ok()) return s;
  impl_->events.push_back({0, impl_->run_id, unix_ms_now(), std::string(level), std::string(kind),
                           std::string(message),
                           payload_json.empty() ? "{}" : std::string(payload_json)});
  impl_->added_rows(1);
  return impl_->maybe_flush_by_count();
}

Status RunWriter::add_artifact(std::string_view kind, std::string_view path,
                               std::string_view meta_json) {
  if (path.empty()) return make_error("add_artifact: the path is empty");
  if (Status s = check_json(meta_json, "the meta of artifact '" + std::string(path) + "'"); !s.ok())
    return s;
  std::lock_guard lock(impl_->mutex);
  if (Status s = impl_->check_open(); !s.ok()) return s;
  impl_->artifacts.push_back({impl_->run_id, std::string(kind), std::string(path),
                              meta_json.empty() ? "{}" : std::string(meta_json), unix_ms_now()});
  impl_->added_rows(1);
  return impl_->maybe_flush_by_count();
}

Status RunWriter::set_summary(std::string_view key, double value) {
  if (key.empty()) return make_error("set_summary: the key is empty");
  std::lock_guard lock(impl_->mutex);
  if (Status s = impl_->check_open(); !s.ok()) return s;
  impl_->summary.emplace_back(std::string(key), value);
  impl_->added_rows(1);
  return impl_->maybe_flush_by_count();
}

Status RunWriter::set_params(const std::map<std::string, std::string>& params) {
  std::lock_guard lock(impl_->mutex);
  if (Status s = impl_->check_open(); !s.ok()) return s;
  Database& db = impl_->db;
  Result<Transaction> txn = Transaction::begin(db);
  if (!txn.ok()) return txn.error();
  Result<Statement> upsert =
      db.prepare("INSERT OR REPLACE INTO params(run, key, value) VALUES (?,?,?)");
  if (!upsert.ok()) return upsert.error();
  for (const auto& [key, value] : params) {
    upsert->bind(1, impl_->run_id).bind(2, key).bind(3, value);
    if (Status s = upsert->run(); !s.ok()) return s;
  }
  return txn->commit();
}

Status RunWriter::set_status(RunStatus status, std::string_view message) {
  std::lock_guard lock(impl_->mutex);
  if (Status s = impl_->check_open(); !s.ok()) return s;
  // Rows logged before the status change land before it, so a reader that sees
  // "completed" sees all of the run's data.
  if (Status s = impl_->flush_locked(); !s.ok()) return s;
  Result<Statement> update = impl_->db.prepare(
      "UPDATE runs SET status = ?2, status_message = ?3, "
      "started_ms = CASE WHEN ?2 = 'running' THEN coalesce(started_ms, ?4) ELSE started_ms END, "
      "finished_ms = CASE WHEN ?5 THEN ?4 ELSE NULL END WHERE id = ?1");
  if (!update.ok()) return update.error();
  update->bind(1, impl_->run_id).bind(2, to_string(status)).bind(3, message);
  update->bind(4, unix_ms_now()).bind(5, static_cast<int64_t>(is_terminal(status)));
  return update->run();
}

Status RunWriter::flush() {
  std::lock_guard lock(impl_->mutex);
  if (Status deferred = impl_->take_deferred_error(); !deferred.ok()) {
    (void)impl_->flush_locked();  // still try to save the rows
    return deferred;
  }
  return impl_->flush_locked();
}

Status RunWriter::close() {
  return impl_->stop_and_flush();
}

size_t RunWriter::pending_rows() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->pending;
}

uint64_t RunWriter::committed_rows() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->total_rows;
}

}  // namespace hl::store
