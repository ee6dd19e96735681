// One-off store queries off the UI thread: each runs on the global thread pool with its own
// read-only connection, and its result comes back on the UI thread.
#pragma once

#include <QCoreApplication>
#include <QPointer>
#include <QString>
#include <QThreadPool>
#include <functional>
#include <memory>

#include "core/store/run_reader.hpp"
#include "core/util/error.hpp"

namespace hl::ui {

/// Runs `work` with a reader of `db_path` on a pool thread, then `done(result)` on the UI
/// thread, unless `context` was destroyed meanwhile.
template <class T>
void read_async(const QString& db_path, QObject* context,
                std::function<Result<T>(store::RunReader&)> work,
                std::function<void(Result<T>)> done) {
  QPointer<QObject> guard(context);
  const std::string path = db_path.toStdString();
  QThreadPool::globalInstance()->start(
      [path, guard, work = std::move(work), done = std::move(done)]() mutable {
        auto result = std::make_shared<Result<T>>(make_error("not run"));
        Result<store::RunReader> reader = store::RunReader::open(path, store::Access::read_only);
        if (reader.ok())
          *result = work(*reader);
        else
          *result = reader.error();
        // qApp lives on the UI thread for the whole program, so it can always take the call;
        // the guard is checked there, where the context is destroyed.
        QMetaObject::invokeMethod(
            QCoreApplication::instance(),
            [guard, result, done = std::move(done)] {
              if (guard) done(std::move(*result));
            },
            Qt::QueuedConnection);
      });
}

}  // namespace hl::ui
