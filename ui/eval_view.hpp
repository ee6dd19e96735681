// The evaluation view: the paper's Table 1 for the selected runs (modes x tasks, % of base),
// long-range accuracy by distance, and per-layer ablation bars.
#pragma once

#include <QList>
#include <QWidget>
#include <vector>

#include "core/store/run_types.hpp"

class QComboBox;
class QTableWidget;
class QCustomPlot;

namespace hl::ui {

class RunStore;

/// Shows the evals and ablation rows of the selected runs.
class EvalView : public QWidget {
  Q_OBJECT
 public:
  explicit EvalView(RunStore* store, QWidget* parent = nullptr);

  void set_runs(const QList<qint64>& run_ids);
  void reload();

  QTableWidget* table() const { return table_; }
  QCustomPlot* distance_plot() const { return distance_plot_; }
  QCustomPlot* ablation_plot() const { return ablation_plot_; }
  bool loading() const { return loading_; }

  /// The value a Table 1 cell shows for a task: ppl for "ppl*", else acc_norm, else acc.
  static std::optional<double> headline(const std::vector<store::EvalRow>& rows, qint64 run,
                                        const std::string& task, const std::string& mode);

 signals:
  void loaded();

 private:
  struct Loaded;
  void show(const Loaded& data);
  void update_distance_plot();

  RunStore* store_;
  QTableWidget* table_;
  QComboBox* distance_task_;
  QComboBox* distance_mode_;
  QCustomPlot* distance_plot_;
  QCustomPlot* ablation_plot_;
  QList<qint64> runs_;
  std::vector<store::EvalRow> evals_;
  bool loading_ = false;
  uint64_t generation_ = 0;
};

}  // namespace hl::ui
