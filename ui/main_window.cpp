#include "ui/main_window.hpp"

#include <qcustomplot.h>

#include <QAction>
#include <QApplication>
#include <QCloseEvent>
#include <QDir>
#include <QDockWidget>
#include <QFileDialog>
#include <QFileInfo>
#include <QKeySequence>
#include <QLabel>
#include <QLineEdit>
#include <QMenuBar>
#include <QMessageBox>
#include <QSettings>
#include <QStatusBar>
#include <QTabWidget>
#include <QThread>
#include <QThreadPool>
#include <QTimer>
#include <filesystem>
#include <optional>

#include "core/config/experiment_file.hpp"
#include "core/store/import.hpp"
#include "core/store/schema.hpp"
#include "core/util/paths.hpp"
#include "ui/async_read.hpp"
#include "ui/compare_view.hpp"
#include "ui/eval_view.hpp"
#include "ui/experiment_editor.hpp"
#include "ui/export.hpp"
#include "ui/launch_panel.hpp"
#include "ui/launcher.hpp"
#include "ui/metric_plot.hpp"
#include "ui/run_store.hpp"
#include "ui/run_table_view.hpp"
#include "ui/runs_model.hpp"
#include "ui/usage_heatmap.hpp"

namespace hl::ui {

QString MainWindow::find_experiments_directory() {
  const auto found = find_experiments_dir(QCoreApplication::applicationDirPath().toStdString());
  return found ? QString::fromStdString(found->string()) : QString();
}

MainWindow::MainWindow(const Options& options, QWidget* parent)
    : QMainWindow(parent), options_(options) {
  setWindowTitle(tr("HybridLab"));
  setWindowIcon(QIcon(QStringLiteral(":/icons/hybridlab.svg")));
  store_ = new RunStore(this);
  runs_model_ = new RunsModel(this);
  launcher_ = new Launcher(this);

  run_table_ = new RunTableView(runs_model_, this);
  runs_dock_ = new QDockWidget(tr("Runs"), this);
  runs_dock_->setObjectName("runsDock");
  runs_dock_->setWidget(run_table_);
  addDockWidget(Qt::LeftDockWidgetArea, runs_dock_);

  tabs_ = new QTabWidget(this);
  tabs_->setDocumentMode(true);
  curves_ = new MetricPlotPanel(store_, tabs_);
  usage_ = new UsageHeatmap(store_, tabs_);
  evals_ = new EvalView(store_, tabs_);
  compare_ = new CompareView(store_, tabs_);
  editor_ = new ExperimentEditor(tabs_);
  launch_panel_ = new LaunchPanel(launcher_, tabs_);
  tabs_->addTab(curves_, tr("&Curves"));
  tabs_->addTab(usage_, tr("Branch &usage"));
  tabs_->addTab(evals_, tr("E&valuation"));
  tabs_->addTab(compare_, tr("Com&pare"));
  tabs_->addTab(editor_, tr("E&xperiment"));
  tabs_->addTab(launch_panel_, tr("&Launch"));
  setCentralWidget(tabs_);

  options_.experiments_dir =
      options.experiments_dir.isEmpty() ? find_experiments_directory() : options.experiments_dir;
  editor_->set_presets_directory(options_.experiments_dir);

  db_label_ = new QLabel(this);
  db_label_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  statusBar()->addPermanentWidget(db_label_);

  // Per-layer and eval views read whole matrices; while a run writes they refresh at most
  // once a second, and only when they are on screen.
  reload_timer_ = new QTimer(this);
  reload_timer_->setSingleShot(true);
  reload_timer_->setInterval(1000);
  connect(reload_timer_, &QTimer::timeout, this, [this] {
    if (tabs_->currentWidget() == usage_) usage_->reload();
    if (tabs_->currentWidget() == evals_) evals_->reload();
  });

  connect(store_, &RunStore::runsChanged, this, [this] {
    runs_model_->set_runs(store_->runs());
    if (!reload_timer_->isActive()) reload_timer_->start();
  });
  connect(store_, &RunStore::opened, this, [this](const QString& path) {
    db_label_->setText(QDir::toNativeSeparators(path));
    statusBar()->showMessage(tr("Opened %1").arg(path), 3000);
  });
  connect(store_, &RunStore::failed, this, [this](const QString& message) {
    db_label_->setText(tr("no database"));
    statusBar()->showMessage(message);
  });
  connect(run_table_, &RunTableView::selectionChanged, this, &MainWindow::on_selection_changed);
  connect(runs_model_, &RunsModel::visibilityChanged, this, [this] { update_plotted_runs(); });
  connect(tabs_, &QTabWidget::currentChanged, this, [this] {
    if (tabs_->currentWidget() == usage_) usage_->reload();
    if (tabs_->currentWidget() == evals_) evals_->reload();
  });
  connect(editor_, &ExperimentEditor::launchRequested, this, [this](const QString& file) {
    launcher_->enqueue_run(file, store_->path());
    tabs_->setCurrentWidget(launch_panel_);
  });
  connect(launcher_, &Launcher::runAnnounced, this,
          [this](int job_id, qint64 run_id, const QString&) {
            // Show the new run as soon as the store lists it.
            store_->poll_now();
            const qsizetype demo_index = demo_jobs_.indexOf(job_id);
            if (demo_index >= 0) {
              demo_runs_[demo_index] = run_id;
              show_demo_when_listed();
              return;
            }
            QList<qint64> runs = selected_;
            if (!runs.contains(run_id)) runs << run_id;
            auto connection = std::make_shared<QMetaObject::Connection>();
            *connection = connect(store_, &RunStore::runsChanged, this, [this, runs, connection] {
              if (runs_model_->row_of(runs.back()) < 0) return;
              run_table_->select_runs(runs);
              disconnect(*connection);
            });
          });

  build_menus();

  QSettings settings;
  if (options.restore_state) {
    restoreGeometry(settings.value("window/geometry").toByteArray());
    restoreState(settings.value("window/state").toByteArray());
    tabs_->setCurrentIndex(settings.value("window/tab", 0).toInt());
  }
  if (geometry().width() < 400) resize(1400, 860);
  if (!options.restore_state || settings.value("window/state").isNull())
    resizeDocks({runs_dock_}, {480}, Qt::Horizontal);
  QString db = options.db_path;
  if (db.isEmpty()) db = settings.value("store/path").toString();
  if (db.isEmpty()) db = QString::fromStdString(store::default_db_path());
  open_database(db);
}

MainWindow::~MainWindow() {
  // The views watch series of the store; they go before it.
  delete tabs_;
}

void MainWindow::build_menus() {
  QMenu* file = menuBar()->addMenu(tr("&File"));
  file->addAction(tr("&Open runs database…"), QKeySequence::Open, this, [this] {
    const QString path = QFileDialog::getOpenFileName(
        this, tr("Open runs database"), QFileInfo(store_->path()).absolutePath(),
        tr("Run databases (*.sqlite *.db);;All files (*)"));
    if (!path.isEmpty()) open_database(path);
  });
  file->addAction(tr("&Import runs from database…"), QKeySequence(Qt::CTRL | Qt::Key_I), this,
                  [this] {
                    const QString path = QFileDialog::getOpenFileName(
                        this, tr("Import runs (e.g. from a GPU server)"), QString(),
                        tr("Run databases (*.sqlite *.db);;All files (*)"));
                    if (!path.isEmpty()) import_database(path);
                  });
  file->addSeparator();
  file->addAction(tr("Export selected runs as &CSV…"), QKeySequence(Qt::CTRL | Qt::Key_E), this,
                  &MainWindow::export_csv);
  file->addAction(tr("Export current &plot…"), QKeySequence(Qt::CTRL | Qt::SHIFT | Qt::Key_E), this,
                  &MainWindow::export_plot);
  file->addSeparator();
  file->addAction(tr("&Quit"), QKeySequence::Quit, this, &QWidget::close);

  QMenu* run = menuBar()->addMenu(tr("&Run"));
  run->addAction(tr("&New experiment"), QKeySequence::New, this,
                 [this] { tabs_->setCurrentWidget(editor_); });
  run->addAction(tr("&Demo (LoLCATs vs LoLCATs+SSD)"), this, [this] { start_demo(); });
  run->addAction(tr("&Cancel running jobs"), QKeySequence(Qt::CTRL | Qt::Key_Period), this, [this] {
    for (int job : launcher_->running_jobs())
      launcher_->cancel(job);
  });

  QMenu* view = menuBar()->addMenu(tr("&View"));
  view->addAction(tr("&Filter runs"), QKeySequence::Find, this, [this] {
    runs_dock_->show();
    run_table_->filter_edit()->setFocus();
    run_table_->filter_edit()->selectAll();
  });
  view->addAction(tr("&Refresh"), QKeySequence::Refresh, this, [this] {
    store_->poll_now();
    usage_->reload();
    evals_->reload();
    compare_->reload();
  });
  view->addAction(runs_dock_->toggleViewAction());
  view->addSeparator();
  for (int i = 0; i < tabs_->count(); ++i) {
    QString name = tabs_->tabText(i);
    name.remove('&');
    view->addAction(name, QKeySequence(Qt::CTRL | (Qt::Key_1 + i)), this,
                    [this, i] { tabs_->setCurrentIndex(i); });
  }

  QMenu* help = menuBar()->addMenu(tr("&Help"));
  help->addAction(tr("&About HybridLab"), this, [this] {
    QMessageBox::about(
        this, tr("About HybridLab"),
        tr("<b>HybridLab</b><br>Convert transformers to hybrid linear / "
           "sliding-window attention and see whether the linear branch is "
           "used.<br><br>Runs database: %1<br>hybridlab-cli: %2")
            .arg(store_->path().toHtmlEscaped(),
                 launcher_->program().isEmpty() ? tr("not found") : launcher_->program()));
  });
}

void MainWindow::open_database(const QString& path) {
  const QString default_path = QString::fromStdString(store::default_db_path());
  if (!QFileInfo::exists(path) && QFileInfo(path) == QFileInfo(default_path)) {
    // The default database is created on first use; any other path must exist.
    Result<store::Database> created =
        store::open_store(path.toStdString(), store::Access::read_write);
    if (!created.ok())
      statusBar()->showMessage(QString::fromStdString(created.error().to_string()));
  }
  selected_.clear();
  on_selection_changed({});
  store_->open(path);
  QSettings().setValue("store/path", path);
  db_label_->setText(QDir::toNativeSeparators(path));
}

void MainWindow::import_database(const QString& path) {
  const std::string source = path.toStdString();
  const std::string target = store_->path().toStdString();
  statusBar()->showMessage(tr("Importing runs from %1…").arg(path));
  QPointer<MainWindow> self(this);
  QThreadPool::globalInstance()->start([self, source, target] {
    Result<int> imported = store::import_runs(source, target);
    QMetaObject::invokeMethod(
        QCoreApplication::instance(),
        [self, imported] {
          if (!self) return;
          if (!imported.ok()) {
            QMessageBox::warning(self, tr("Import failed"),
                                 QString::fromStdString(imported.error().to_string()));
            return;
          }
          self->statusBar()->showMessage(tr("Imported %n run(s)", nullptr, *imported), 5000);
          self->store_->poll_now();
        },
        Qt::QueuedConnection);
  });
}

int MainWindow::start_demo() {
  const QDir experiments(options_.experiments_dir);
  const QString demo = experiments.filePath(QStringLiteral("demo.toml"));
  const QString demo_ssd = experiments.filePath(QStringLiteral("demo-ssd.toml"));
  if (options_.experiments_dir.isEmpty() || !QFileInfo::exists(demo) ||
      !QFileInfo::exists(demo_ssd)) {
    QMessageBox::warning(this, tr("Demo"),
                         tr("The demo experiments (demo.toml, demo-ssd.toml) were not found in "
                            "'%1'. Set HL_EXPERIMENTS_DIR to the experiments folder.")
                             .arg(options_.experiments_dir));
    return 0;
  }
  int queued = 0;
  // The demo converts a tiny base model; train it first if it is not there yet. The base is
  // looked for as the CLI looks for it (working directory, experiments folder, data folder).
  ExperimentParse parsed = load_experiment_file(demo.toStdString());
  const std::string base = parsed.ok() ? parsed.spec->model.base : "models/tiny-base";
  const std::optional<std::filesystem::path> found =
      find_experiment_path(base, experiments.absolutePath().toStdString());
  std::error_code missing;
  Launcher::Schedule schedule;
  if (!found || !std::filesystem::exists(*found / "config.json", missing)) {
    // A relative base goes to the data folder, where every later run finds it.
    const std::filesystem::path out = std::filesystem::path(base).is_absolute()
                                          ? std::filesystem::path(base)
                                          : default_data_dir() / base;
    schedule.after = launcher_->enqueue_command(
        {QStringLiteral("pretrain"), QStringLiteral("--preset"), QStringLiteral("tiny"),
         QStringLiteral("--out"), QString::fromStdString(out.string()),
         QStringLiteral("--progress"), QStringLiteral("json")},
        tr("pretrain tiny base model"));
    ++queued;
  }
  // The two conversions run side by side so that their curves and heatmaps grow together;
  // they share the cores instead of each starting one thread per core.
  schedule.parallel = true;
  schedule.threads = std::max(1, QThread::idealThreadCount() / 2);
  demo_jobs_ = {launcher_->enqueue_run(demo, store_->path(), schedule),
                launcher_->enqueue_run(demo_ssd, store_->path(), schedule)};
  demo_runs_ = {0, 0};
  demo_shown_ = false;
  queued += 2;
  tabs_->setCurrentWidget(launch_panel_);
  return queued;
}

void MainWindow::show_demo_when_listed() {
  if (demo_shown_ || demo_runs_.contains(0)) return;
  auto listed = [this] {
    return std::all_of(demo_runs_.begin(), demo_runs_.end(),
                       [this](qint64 id) { return runs_model_->row_of(id) >= 0; });
  };
  auto show = [this] {
    demo_shown_ = true;
    run_table_->select_runs(demo_runs_);
    // Both runs' per-layer branch usage side by side: the view the demo is about.
    tabs_->setCurrentWidget(usage_);
  };
  if (listed()) {
    show();
    return;
  }
  auto connection = std::make_shared<QMetaObject::Connection>();
  *connection = connect(store_, &RunStore::runsChanged, this, [this, listed, show, connection] {
    if (demo_shown_) {
      disconnect(*connection);
      return;
    }
    if (!listed()) return;
    disconnect(*connection);
    show();
  });
}

void MainWindow::offer_demo_on_first_start() {
  QSettings settings;
  if (settings.value("firstStartDone", false).toBool()) return;
  settings.setValue("firstStartDone", true);
  QMessageBox box(this);
  box.setWindowTitle(tr("Welcome to HybridLab"));
  box.setText(tr("Run the demo?"));
  box.setInformativeText(
      tr("It trains a tiny base model, then converts it twice — LoLCATs and LoLCATs + SSD — "
         "so you can watch the linear branch being used (or not) live. It runs on the CPU in "
         "a few minutes and writes to %1.")
          .arg(store_->path()));
  QPushButton* run = box.addButton(tr("Run the demo"), QMessageBox::AcceptRole);
  box.addButton(tr("Not now"), QMessageBox::RejectRole);
  box.exec();
  if (box.clickedButton() == run) start_demo();
}

void MainWindow::on_selection_changed(const QList<qint64>& run_ids) {
  selected_ = run_ids;
  update_plotted_runs();
  usage_->set_runs(run_ids);
  evals_->set_runs(run_ids);
  compare_->set_runs(run_ids);
  refresh_metric_keys(run_ids);
}

void MainWindow::update_plotted_runs() {
  QList<qint64> shown;
  for (qint64 id : selected_)
    if (runs_model_->is_visible(id)) shown << id;
  curves_->plot()->set_runs(shown);
}

void MainWindow::refresh_metric_keys(const QList<qint64>& run_ids) {
  if (run_ids.isEmpty() || store_->path().isEmpty()) return;
  std::vector<int64_t> ids(run_ids.begin(), run_ids.end());
  read_async<QStringList>(
      store_->path(), this,
      [ids](store::RunReader& reader) -> Result<QStringList> {
        QStringList keys;
        for (int64_t id : ids) {
          Result<std::vector<std::string>> found = reader.scalar_keys(id);
          if (!found.ok()) return found.error();
          for (const std::string& key : *found)
            if (!keys.contains(QString::fromStdString(key))) keys << QString::fromStdString(key);
        }
        keys.sort();
        return keys;
      },
      [this](Result<QStringList> keys) {
        if (!keys.ok()) return;
        curves_->set_metric_keys(*keys);
        compare_->plot_panel()->set_metric_keys(*keys);
      });
}

void MainWindow::export_csv() {
  if (selected_.isEmpty()) {
    statusBar()->showMessage(tr("Select runs to export first"), 3000);
    return;
  }
  const QString path = QFileDialog::getSaveFileName(
      this, tr("Export metrics as CSV"), QStringLiteral("metrics.csv"), tr("CSV files (*.csv)"));
  if (path.isEmpty()) return;
  std::vector<int64_t> ids(selected_.begin(), selected_.end());
  Result<int64_t> rows = write_metrics_csv(store_->path().toStdString(), ids, path);
  if (!rows.ok()) {
    QMessageBox::warning(this, tr("Export failed"),
                         QString::fromStdString(rows.error().to_string()));
    return;
  }
  statusBar()->showMessage(tr("Wrote %1 rows to %2").arg(*rows).arg(path), 5000);
}

void MainWindow::export_plot() {
  QCustomPlot* plot = nullptr;
  QWidget* current = tabs_->currentWidget();
  if (current == curves_) plot = curves_->plot()->plot();
  if (current == usage_) plot = usage_->plot();
  if (current == evals_) plot = evals_->distance_plot();
  if (current == compare_) plot = compare_->plot_panel()->plot()->plot();
  if (!plot) {
    statusBar()->showMessage(tr("This view has no plot to export"), 3000);
    return;
  }
  const QString path = QFileDialog::getSaveFileName(this, tr("Export plot"),
                                                    QStringLiteral("plot.png"), plot_file_filter());
  if (path.isEmpty()) return;
  Status status = save_plot(plot, path);
  if (!status.ok())
    QMessageBox::warning(this, tr("Export failed"),
                         QString::fromStdString(status.error().to_string()));
}

void MainWindow::closeEvent(QCloseEvent* event) {
  if (launcher_->running_job() >= 0) {
    const auto answer = QMessageBox::question(
        this, tr("A run is in progress"),
        tr("Quitting stops the running job (it writes a checkpoint first, so it can be resumed). "
           "Quit anyway?"));
    if (answer != QMessageBox::Yes) {
      event->ignore();
      return;
    }
  }
  QSettings settings;
  settings.setValue("window/geometry", saveGeometry());
  settings.setValue("window/state", saveState());
  settings.setValue("window/tab", tabs_->currentIndex());
  QMainWindow::closeEvent(event);
}

}  // namespace hl::ui
