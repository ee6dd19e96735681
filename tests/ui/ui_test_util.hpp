// Helpers for the workbench tests: real run stores written with RunWriter, and waiting on
// the event loop.
#pragma once

#include <gtest/gtest.h>

#include <QTemporaryDir>
#include <QTest>
#include <functional>
#include <string>

#include "core/store/run_writer.hpp"

namespace hl::ui::test {

/// Runs the event loop until `done` or `timeout_ms`; true if done.
inline bool wait_until(const std::function<bool()>& done, int timeout_ms = 5000) {
  return QTest::qWaitFor(done, timeout_ms);
}

/// A fresh database path inside a temporary directory that lives as long as this object.
class TempStore {
 public:
  TempStore() { EXPECT_TRUE(dir_.isValid()); }
  std::string path() const { return dir_.filePath("runs.sqlite").toStdString(); }
  QString qpath() const { return dir_.filePath("runs.sqlite"); }
  QString file(const QString& name) const { return dir_.filePath(name); }

  /// Creates a run; fails the test on error.
  store::RunWriter create(const std::string& name, const std::string& method = "lolcats",
                          store::WriterOptions options = {}) {
    store::RunSpec spec;
    spec.name = name;
    spec.method = method;
    spec.base_model = "models/tiny-base";
    Result<store::RunWriter> writer = store::RunWriter::create(path(), spec, std::move(options));
    if (!writer.ok()) ADD_FAILURE() << writer.error().to_string();
    return std::move(writer).value();
  }

 private:
  QTemporaryDir dir_;
};

/// Asserts a Status is ok, printing its error otherwise.
#define HL_ASSERT_OK(expr)                                          \
  do {                                                              \
    auto hl_status_ = (expr);                                       \
    ASSERT_TRUE(hl_status_.ok()) << hl_status_.error().to_string(); \
  } while (0)

}  // namespace hl::ui::test
