// Compare: the configuration of the selected runs side by side ("differences only" hides
// equal rows) above their metrics overlaid.
#pragma once

#include <QList>
#include <QWidget>

#include "core/store/run_types.hpp"

class QCheckBox;
class QTableWidget;

namespace hl::ui {

class RunStore;
class MetricPlotPanel;

/// Parameter diff and overlaid curves of several runs.
class CompareView : public QWidget {
  Q_OBJECT
 public:
  explicit CompareView(RunStore* store, QWidget* parent = nullptr);

  void set_runs(const QList<qint64>& run_ids);
  void reload();
  void set_differences_only(bool only);

  QTableWidget* table() const { return table_; }
  MetricPlotPanel* plot_panel() const { return plot_; }

 signals:
  void loaded();

 private:
  void show_comparison();

  RunStore* store_;
  QCheckBox* differences_only_;
  QTableWidget* table_;
  MetricPlotPanel* plot_;
  QList<qint64> runs_;
  store::ParamComparison comparison_;
  uint64_t generation_ = 0;
};

}  // namespace hl::ui
