// hybridlab: the Qt workbench. Reads runs from the store and starts them through hybridlab-cli.
#include <QApplication>
#include <QCommandLineParser>
#include <QTimer>

#include "ui/experiment_editor.hpp"
#include "ui/launcher.hpp"
#include "ui/main_window.hpp"
#include "ui/metric_plot.hpp"
#include "ui/process_setup.hpp"
#include "ui/run_store.hpp"
#include "ui/run_table_view.hpp"

int main(int argc, char** argv) {
  hl::ui::keep_freed_memory();
  QApplication app(argc, argv);
  QApplication::setApplicationName(QStringLiteral("HybridLab"));
  QApplication::setOrganizationName(QStringLiteral("HybridLab"));
  QApplication::setOrganizationDomain(QStringLiteral("hybridlab.io"));
  QApplication::setApplicationVersion(QStringLiteral("0.1.0"));
  QApplication::setDesktopFileName(QStringLiteral("io.hybridlab.HybridLab"));

  QCommandLineParser parser;
  parser.setApplicationDescription(
      QStringLiteral("Workbench for converting transformers to hybrid attention."));
  parser.addHelpOption();
  parser.addVersionOption();
  QCommandLineOption db({QStringLiteral("db")}, QStringLiteral("Runs database to open."),
                        QStringLiteral("DB"));
  QCommandLineOption demo(
      {QStringLiteral("demo")},
      QStringLiteral("Queue the demo runs (into --db, else the open database)."));
  QCommandLineOption tab({QStringLiteral("tab")},
                         QStringLiteral("View to show first: curves, usage, eval, compare, "
                                        "experiment or launch."),
                         QStringLiteral("VIEW"));
  QCommandLineOption select({QStringLiteral("select")},
                            QStringLiteral("Comma-separated run ids to select."),
                            QStringLiteral("IDS"));
  QCommandLineOption screenshot({QStringLiteral("screenshot")},
                                QStringLiteral("Render the window to a PNG file after the data "
                                               "has loaded, then quit (for docs)."),
                                QStringLiteral("PNG"));
  QCommandLineOption size({QStringLiteral("size")},
                          QStringLiteral("Window size WxH (default 1400x860)."),
                          QStringLiteral("WxH"));
  QCommandLineOption no_state({QStringLiteral("no-restore")},
                              QStringLiteral("Ignore the saved window layout."));
  QCommandLineOption experiment({QStringLiteral("experiment")},
                                QStringLiteral("Experiment file to open in the editor."),
                                QStringLiteral("TOML"));
  QCommandLineOption snapshot(
      {QStringLiteral("snapshot")},
      QStringLiteral("Render the window to a PNG file SECONDS after the start, showing VIEW, and "
                     "go on (repeatable; for docs of a live demo)."),
      QStringLiteral("VIEW:SECONDS:PNG"));
  QCommandLineOption quit_when_idle(
      {QStringLiteral("quit-when-idle")},
      QStringLiteral("Quit once the queued jobs (e.g. the demo's) have all ended."));
  QCommandLineOption log_y({QStringLiteral("log-y")},
                           QStringLiteral("Start the curves with a logarithmic y axis."));
  parser.addOptions({db, demo, tab, select, screenshot, size, no_state, experiment, snapshot, log_y,
                     quit_when_idle});
  parser.process(app);

  hl::ui::MainWindow::Options options;
  options.db_path = parser.value(db);  // empty: the default database (the demo's too)
  options.restore_state = !parser.isSet(no_state);
  hl::ui::MainWindow window(options);
  const QStringList views{"curves", "usage", "eval", "compare", "experiment", "launch"};
  if (parser.isSet(tab)) {
    const qsizetype index = views.indexOf(parser.value(tab));
    if (index >= 0) window.tabs()->setCurrentIndex(static_cast<int>(index));
  }
  if (parser.isSet(experiment)) window.editor()->load_file(parser.value(experiment));
  if (parser.isSet(log_y)) window.curves()->set_log_y(true);
  for (const QString& request : parser.values(snapshot)) {
    const QStringList parts = request.split(':');
    const qsizetype view = parts.size() >= 3 ? views.indexOf(parts[0]) : -1;
    bool ok = false;
    const double seconds = parts.size() >= 3 ? parts[1].toDouble(&ok) : 0.0;
    if (view < 0 || !ok) {
      qWarning("--snapshot wants VIEW:SECONDS:PNG, got '%s'", qPrintable(request));
      return 2;
    }
    const QString path = parts.mid(2).join(':');
    QTimer::singleShot(static_cast<int>(seconds * 1000), &window, [&window, view, path] {
      window.tabs()->setCurrentIndex(static_cast<int>(view));
      // Let the view lay out and draw before it is grabbed.
      QTimer::singleShot(500, &window, [&window, path] {
        if (!window.grab().save(path)) qWarning("could not write %s", qPrintable(path));
      });
    });
  }
  if (parser.isSet(size)) {
    const QStringList parts = parser.value(size).split('x');
    if (parts.size() == 2) window.resize(parts[0].toInt(), parts[1].toInt());
  } else if (parser.isSet(screenshot)) {
    window.resize(1400, 860);
  }
  window.show();
  if (parser.isSet(select) || parser.isSet(screenshot)) {
    QList<qint64> ids;
    for (const QString& id : parser.value(select).split(',', Qt::SkipEmptyParts))
      ids << id.toLongLong();
    // The runs arrive from the store's first poll; without ids the newest two conversions
    // are shown (the base-model evaluations that runs record for "% of base" are left out).
    QObject::connect(window.store(), &hl::ui::RunStore::runsChanged, &window, [&window, ids] {
      if (!window.run_table()->selected_runs().isEmpty()) return;
      QList<qint64> chosen = ids;
      const auto& runs = window.store()->runs();
      if (chosen.isEmpty())
        for (size_t i = runs.size(); i > 0 && chosen.size() < 2; --i)
          if (runs[i - 1].entry.info.method != "base-eval") chosen.prepend(runs[i - 1].id());
      window.run_table()->select_runs(chosen);
    });
  }
  if (parser.isSet(screenshot)) {
    // Views load asynchronously; a few seconds covers the first poll and their reads.
    const QString path = parser.value(screenshot);
    QTimer::singleShot(3000, &window, [&window, path] {
      const bool saved = window.grab().save(path);
      if (!saved) qWarning("could not write %s", qPrintable(path));
      QApplication::exit(saved ? 0 : 1);
    });
    return app.exec();
  }
  if (parser.isSet(quit_when_idle))
    QObject::connect(window.launcher(), &hl::ui::Launcher::queueEmpty, &app, [] {
      // A moment for the last rows to be polled and drawn (and late snapshots to be taken).
      QTimer::singleShot(3000, qApp, &QApplication::quit);
    });
  if (parser.isSet(demo))
    QTimer::singleShot(0, &window, [&window] { window.start_demo(); });
  else
    QTimer::singleShot(0, &window, [&window] { window.offer_demo_on_first_start(); });
  return app.exec();
}
