// The workbench window: the runs table on the left, the views as tabs (curves, branch usage,
// evaluation, compare, experiment, launch), menus with shortcuts, settings kept in QSettings.
#pragma once

#include <QList>
#include <QMainWindow>
#include <QString>

class QTabWidget;
class QDockWidget;
class QTimer;
class QLabel;

namespace hl::ui {

class RunStore;
class RunsModel;
class RunTableView;
class MetricPlotPanel;
class UsageHeatmap;
class EvalView;
class CompareView;
class ExperimentEditor;
class Launcher;
class LaunchPanel;

/// The main window. All views share one RunStore and one run colour per run.
class MainWindow : public QMainWindow {
  Q_OBJECT
 public:
  struct Options {
    QString db_path;          ///< empty = the default database
    QString experiments_dir;  ///< empty = found next to the program or in the source tree
    bool restore_state = true;
  };
  enum Tab { kCurves, kUsage, kEval, kCompare, kExperiment, kLaunch };

  explicit MainWindow(const Options& options, QWidget* parent = nullptr);
  ~MainWindow() override;

  /// Switches to another runs database (read-only; created empty if it is the default one).
  void open_database(const QString& path);
  /// Copies the runs of another database into the open one, in the background.
  void import_database(const QString& path);
  /// Queues the demo: the tiny base model if missing, then demo.toml and demo-ssd.toml side
  /// by side; once both runs are listed the branch-usage view shows them. Returns the
  /// number of jobs queued (0 and a message box if the presets are missing).
  int start_demo();
  /// Asks once, on the first start, whether to run the demo.
  void offer_demo_on_first_start();

  RunStore* store() const { return store_; }
  RunsModel* runs_model() const { return runs_model_; }
  RunTableView* run_table() const { return run_table_; }
  MetricPlotPanel* curves() const { return curves_; }
  UsageHeatmap* usage() const { return usage_; }
  EvalView* evals() const { return evals_; }
  CompareView* compare() const { return compare_; }
  ExperimentEditor* editor() const { return editor_; }
  Launcher* launcher() const { return launcher_; }
  LaunchPanel* launch_panel() const { return launch_panel_; }
  QTabWidget* tabs() const { return tabs_; }

  /// experiments/ beside the program (installed or build tree) or in the working directory.
  static QString find_experiments_directory();

 protected:
  void closeEvent(QCloseEvent* event) override;

 private:
  void build_menus();
  void on_selection_changed(const QList<qint64>& run_ids);
  void update_plotted_runs();
  void export_csv();
  void export_plot();
  void refresh_metric_keys(const QList<qint64>& run_ids);
  void show_demo_when_listed();

  Options options_;
  RunStore* store_;
  RunsModel* runs_model_;
  RunTableView* run_table_;
  QTabWidget* tabs_;
  MetricPlotPanel* curves_;
  UsageHeatmap* usage_;
  EvalView* evals_;
  CompareView* compare_;
  ExperimentEditor* editor_;
  Launcher* launcher_;
  LaunchPanel* launch_panel_;
  QDockWidget* runs_dock_;
  QTimer* reload_timer_;
  QLabel* db_label_;
  QList<qint64> selected_;
  QList<int> demo_jobs_;     // the demo's two run jobs
  QList<qint64> demo_runs_;  // their run ids, 0 until announced
  bool demo_shown_ = false;
};

}  // namespace hl::ui
