#include "core/store/sqlite_db.hpp"

#include <sqlite3.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

namespace hl::store {
namespace {

constexpr int kBusyTimeoutMs = 10'000;

Error file_error(const std::string& path, std::string message) {
  return make_error(std::move(message), Location{path, 0, ""});
}

// SQLite only notices a foreign file on first read, with a terse message; checking the
// 16-byte header up front lets us say plainly what is wrong.
Status check_existing_file(const std::string& path, Access access) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (fs::is_directory(status)) return file_error(path, "is a directory, not a run database file");
  if (!fs::exists(status)) {
    if (access == Access::read_only) return file_error(path, "no such run database file");
    const fs::path parent = fs::path(path).parent_path();
    if (!parent.empty() && !fs::exists(parent)) {
      fs::create_directories(parent, ec);
      if (ec)
        return file_error(path, "cannot create folder '" + parent.string() + "': " + ec.message());
    }
    return Status::Ok();
  }
  if (!fs::is_regular_file(status)) return file_error(path, "is not a regular file");
  const auto size = fs::file_size(path, ec);
  if (ec || size == 0) return Status::Ok();  // an empty file is a valid empty database
  std::ifstream in(path, std::ios::binary);
  if (!in) return file_error(path, "cannot read the file (permissions?)");
  char header[16] = {};
  in.read(header, sizeof header);
  static constexpr char kMagic[16] = "SQLite format 3";  // includes the trailing NUL
  if (in.gcount() != 16 || !std::equal(header, header + 16, kMagic))
    return file_error(path, "is not an SQLite database (unexpected file header)");
  return Status::Ok();
}

}  // namespace

// ---- Statement ------------------------------------------------------------------------

Statement::Statement(sqlite3_stmt* handle, std::shared_ptr<const std::string> db_path)
    : handle_(handle), db_path_(std::move(db_path)) {}

Statement::Statement(Statement&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)), db_path_(std::move(other.db_path_)) {}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    sqlite3_finalize(handle_);
    handle_ = std::exchange(other.handle_, nullptr);
    db_path_ = std::move(other.db_path_);
  }
  return *this;
}

Statement::~Statement() {
  sqlite3_finalize(handle_);
}

Statement& Statement::bind(int index, int64_t value) {
  assert(handle_);
  sqlite3_bind_int64(handle_, index, value);
  return *this;
}

Statement& Statement::bind(int index, double value) {
  assert(handle_);
  if (std::isnan(value))
    sqlite3_bind_null(handle_, index);
  else
    sqlite3_bind_double(handle_, index, value);
  return *this;
}

Statement& Statement::bind(int index, std::string_view text) {
  assert(handle_);
  // A default string_view has no data pointer, which SQLite would store as NULL.
  sqlite3_bind_text(handle_, index, text.data() ? text.data() : "", static_cast<int>(text.size()),
                    SQLITE_TRANSIENT);
  return *this;
}

Statement& Statement::bind_null(int index) {
  assert(handle_);
  sqlite3_bind_null(handle_, index);
  return *this;
}

Statement& Statement::bind(int index, std::optional<int64_t> value) {
  return value ? bind(index, *value) : bind_null(index);
}

Error Statement::make_step_error(int code) const {
  sqlite3* db = sqlite3_db_handle(handle_);
  std::string message = sqlite3_errmsg(db);
  if (code == SQLITE_BUSY || code == SQLITE_LOCKED)
    message += " (gave up after " + std::to_string(kBusyTimeoutMs / 1000) + " s)";
  const char* sql = sqlite3_sql(handle_);
  std::string what = sql ? std::string(sql).substr(0, 60) : std::string("statement");
  return make_error("SQLite error in '" + what + "': " + message, Location{*db_path_, 0, ""});
}

Result<bool> Statement::step() {
  assert(handle_);
  const int code = sqlite3_step(handle_);
  if (code == SQLITE_ROW) return true;
  if (code == SQLITE_DONE) return false;
  Error error = make_step_error(code);
  sqlite3_reset(handle_);
  return error;
}

Status Statement::run() {
  while (true) {
    Result<bool> row = step();
    if (!row.ok()) return row.error();
    if (!*row) break;
  }
  sqlite3_reset(handle_);
  return Status::Ok();
}

void Statement::reset() {
  sqlite3_reset(handle_);
  sqlite3_clear_bindings(handle_);
}

bool Statement::is_null(int column) const {
  return sqlite3_column_type(handle_, column) == SQLITE_NULL;
}

int64_t Statement::column_int64(int column) const {
  return sqlite3_column_int64(handle_, column);
}

double Statement::column_double(int column) const {
  if (is_null(column)) return std::numeric_limits<double>::quiet_NaN();
  return sqlite3_column_double(handle_, column);
}

std::string Statement::column_text(int column) const {
  const auto* text = sqlite3_column_text(handle_, column);
  if (!text) return {};
  return std::string(reinterpret_cast<const char*>(text),
                     static_cast<size_t>(sqlite3_column_bytes(handle_, column)));
}

std::optional<int64_t> Statement::column_optional_int64(int column) const {
  if (is_null(column)) return std::nullopt;
  return column_int64(column);
}

// ---- Database -------------------------------------------------------------------------

Result<Database> Database::open(const std::string& path, Access access) {
  if (path.empty()) return make_error("the run database path is empty");
  if (Status checked = check_existing_file(path, access); !checked.ok()) return checked.error();

  Database db;
  db.path_ = std::make_shared<const std::string>(path);
  db.access_ = access;
  const int flags = (access == Access::read_only ? SQLITE_OPEN_READONLY
                                                 : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
                    SQLITE_OPEN_NOMUTEX;
  const int code = sqlite3_open_v2(path.c_str(), &db.handle_, flags, nullptr);
  if (code != SQLITE_OK) {
    std::string message = db.handle_ ? sqlite3_errmsg(db.handle_) : sqlite3_errstr(code);
    return file_error(path, "cannot open the run database: " + message);
  }
  sqlite3_extended_result_codes(db.handle_, 1);
  // busy_timeout must come first: even the journal_mode switch can meet a busy lock.
  sqlite3_busy_timeout(db.handle_, kBusyTimeoutMs);

  // Reading the schema makes SQLite validate the file before anything else.
  if (Result<int64_t> tables = db.query_int64("SELECT count(*) FROM sqlite_schema"); !tables.ok())
    return tables.error();

  if (access == Access::read_write) {
    Result<Statement> mode = db.prepare("PRAGMA journal_mode=WAL");
    if (!mode.ok()) return mode.error();
    Result<bool> row = mode->step();
    if (!row.ok()) return row.error();
    const std::string journal = *row ? mode->column_text(0) : std::string();
    if (journal != "wal" && journal != "memory")
      return file_error(path, "cannot switch the database to WAL mode (got '" + journal +
                                  "'); is it on a network filesystem?");
    if (Status s = db.exec("PRAGMA synchronous=NORMAL"); !s.ok()) return s.error();
  }
  if (Status s = db.exec("PRAGMA foreign_keys=ON"); !s.ok()) return s.error();
  // Readers (the GUI) rescan long series when the viewport moves; a 32 MiB page cache
  // (allocated only as used) keeps a whole 100k-step series in memory between scans.
  if (access == Access::read_only)
    if (Status s = db.exec("PRAGMA cache_size=-32768"); !s.ok()) return s.error();
  return db;
}

Database::Database(Database&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)),
      path_(std::move(other.path_)),
      access_(other.access_) {
  other.path_ = std::make_shared<const std::string>();
}

Database& Database::operator=(Database&& other) noexcept {
  if (this != &other) {
    sqlite3_close_v2(handle_);
    handle_ = std::exchange(other.handle_, nullptr);
    path_ = std::move(other.path_);
    access_ = other.access_;
    other.path_ = std::make_shared<const std::string>();
  }
  return *this;
}

Database::~Database() {
  sqlite3_close_v2(handle_);
}

Error Database::error(std::string_view doing) const {
  std::string message = handle_ ? sqlite3_errmsg(handle_) : "the database is not open";
  return make_error(std::string(doing) + ": " + message, Location{*path_, 0, ""});
}

Status Database::exec(std::string_view sql) {
  assert(handle_);
  char* message = nullptr;
  const std::string text(sql);
  if (sqlite3_exec(handle_, text.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
    std::string what = message ? message : sqlite3_errmsg(handle_);
    sqlite3_free(message);
    return make_error("SQLite error in '" + text.substr(0, 60) + "': " + what,
                      Location{*path_, 0, ""});
  }
  return Status::Ok();
}

Result<Statement> Database::prepare(std::string_view sql) {
  assert(handle_);
  sqlite3_stmt* stmt = nullptr;
  const int code = sqlite3_prepare_v3(handle_, sql.data(), static_cast<int>(sql.size()),
                                      SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (code != SQLITE_OK) return error("cannot prepare '" + std::string(sql.substr(0, 60)) + "'");
  return Statement(stmt, path_);
}

Result<int64_t> Database::query_int64(std::string_view sql) {
  Result<Statement> stmt = prepare(sql);
  if (!stmt.ok()) return stmt.error();
  Result<bool> row = stmt->step();
  if (!row.ok()) return row.error();
  if (!*row) return error("'" + std::string(sql) + "' returned no row");
  return stmt->column_int64(0);
}

int64_t Database::last_insert_rowid() const {
  return sqlite3_last_insert_rowid(handle_);
}

// ---- Transaction ----------------------------------------------------------------------

Result<Transaction> Transaction::begin(Database& db, bool immediate) {
  if (Status s = db.exec(immediate ? "BEGIN IMMEDIATE" : "BEGIN"); !s.ok()) return s.error();
  return Transaction(db);
}

Transaction::Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}

Transaction::~Transaction() {
  if (db_ && db_->is_open()) (void)db_->exec("ROLLBACK");
}

Status Transaction::commit() {
  assert(db_);
  Status status = db_->exec("COMMIT");
  if (status.ok()) db_ = nullptr;
  return status;
}

int64_t unix_ms_now() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

}  // namespace hl::store
