// Expected errors travel as values (Result<T>); programmer errors are assertions.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace hl {

/// Where an error happened: a file and, when known, a line and a key/field path.
struct Location {
  std::string file;
  int line = 0;  // 1-based; 0 = unknown
  std::string key;
};

/// An expected failure with a plain sentence and, when known, the place it refers to.
struct Error {
  std::string message;
  Location where;

  /// "file:line: key: message" with the parts that are known.
  std::string to_string() const;
};

/// Either a value or an Error.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}
  Result(Error error) : state_(std::move(error)) {}

  bool ok() const { return state_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(state_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(state_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(state_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const {
    assert(!ok());
    return std::get<1>(state_);
  }

 private:
  std::variant<T, Error> state_;
};

/// Result of an operation that returns nothing but can fail.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)) {}
  static Status Ok() { return Status(); }

  bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const {
    assert(!ok());
    return *error_;
  }

 private:
  std::optional<Error> error_;
};

/// Shorthand for building an Error.
inline Error make_error(std::string message, Location where = {}) {
  return Error{std::move(message), std::move(where)};
}

}  // namespace hl
