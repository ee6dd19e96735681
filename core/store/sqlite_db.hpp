// A thin RAII layer over the SQLite C API: a connection opened with the store's pragmas
// and prepared statements whose failures come back as hl::Status / hl::Result carrying
// the database path and SQLite's own message.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "core/util/error.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace hl::store {

/// How a connection may touch the file.
enum class Access {
  read_write,  ///< creates the file (and its folder) if missing; may migrate the schema
  read_only,   ///< never writes; the file must exist; readable while a writer writes
};

/// One prepared statement. Bind with 1-based indices; columns are 0-based.
class Statement {
 public:
  Statement() = default;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  ~Statement();

  Statement& bind(int index, int64_t value);
  Statement& bind(int index, int value) { return bind(index, static_cast<int64_t>(value)); }
  /// NaN is stored as NULL (SQLite has no NaN); readers map NULL back to NaN.
  Statement& bind(int index, double value);
  /// The text is copied, so temporaries are fine.
  Statement& bind(int index, std::string_view text);
  Statement& bind(int index, const char* text) { return bind(index, std::string_view(text)); }
  Statement& bind(int index, const std::string& text) {
    return bind(index, std::string_view(text));
  }
  Statement& bind_null(int index);
  Statement& bind(int index, std::optional<int64_t> value);

  /// Advances one row: true = a row is ready, false = done.
  Result<bool> step();
  /// Steps to completion, then resets the statement (bindings are kept).
  Status run();
  /// Makes the statement ready to run again and clears its bindings.
  void reset();

  bool is_null(int column) const;
  int64_t column_int64(int column) const;
  /// NULL reads as NaN.
  double column_double(int column) const;
  std::string column_text(int column) const;
  std::optional<int64_t> column_optional_int64(int column) const;

 private:
  friend class Database;
  Statement(sqlite3_stmt* handle, std::shared_ptr<const std::string> db_path);
  Error make_step_error(int code) const;

  sqlite3_stmt* handle_ = nullptr;
  std::shared_ptr<const std::string> db_path_;
};

/// Steps every row of `stmt`, calling on_row(stmt) for each (it may return a Status to stop
/// early), then resets the statement so that no read transaction outlives the call.
template <class OnRow>
Status for_each_row(Statement& stmt, OnRow&& on_row) {
  Status status;
  while (true) {
    Result<bool> row = stmt.step();
    if (!row.ok()) {
      status = row.error();
      break;
    }
    if (!*row) break;
    if constexpr (std::is_void_v<decltype(on_row(stmt))>) {
      on_row(stmt);
    } else if (status = on_row(stmt); !status.ok()) {
      break;
    }
  }
  stmt.reset();
  return status;
}

/// An open SQLite connection. Not thread-safe: callers serialise access.
class Database {
 public:
  /// Opens `path` with busy_timeout (first), then for read_write: journal_mode=WAL,
  /// synchronous=NORMAL, foreign_keys=ON. Rejects directories and non-SQLite files.
  static Result<Database> open(const std::string& path, Access access);

  Database() = default;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  Database(Database&& other) noexcept;
  Database& operator=(Database&& other) noexcept;
  ~Database();

  bool is_open() const { return handle_ != nullptr; }
  const std::string& path() const { return *path_; }
  Access access() const { return access_; }
  sqlite3* handle() const { return handle_; }

  /// Runs one or more statements that return no rows.
  Status exec(std::string_view sql);
  Result<Statement> prepare(std::string_view sql);
  /// Runs a query that returns one integer (e.g. a pragma); `doing` names it in errors.
  Result<int64_t> query_int64(std::string_view sql);

  int64_t last_insert_rowid() const;
  /// An Error that names the file, what was being done and SQLite's last message.
  Error error(std::string_view doing) const;

 private:
  sqlite3* handle_ = nullptr;
  std::shared_ptr<const std::string> path_ = std::make_shared<const std::string>();
  Access access_ = Access::read_only;
};

/// A transaction that rolls back unless committed.
class Transaction {
 public:
  /// BEGIN IMMEDIATE for writers (takes the write lock up front, so busy_timeout applies
  /// instead of a deadlock-prone upgrade), plain BEGIN for readers.
  static Result<Transaction> begin(Database& db, bool immediate = true);
  Transaction(Transaction&& other) noexcept;
  Transaction& operator=(Transaction&&) = delete;
  ~Transaction();
  Status commit();

 private:
  explicit Transaction(Database& db) : db_(&db) {}
  Database* db_ = nullptr;
};

/// Milliseconds since the Unix epoch (wall clock).
int64_t unix_ms_now();

}  // namespace hl::store
