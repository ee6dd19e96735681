// The runs table widget: a filter box over a sortable, multi-select table of runs.
#pragma once

#include <QList>
#include <QWidget>

class QLineEdit;
class QTableView;

namespace hl::ui {

class RunsModel;
class RunsFilterModel;

/// Shows a RunsModel; selection (several runs) drives the charts and the other views.
class RunTableView : public QWidget {
  Q_OBJECT
 public:
  explicit RunTableView(RunsModel* model, QWidget* parent = nullptr);

  /// Selected run ids in table order.
  QList<qint64> selected_runs() const;
  /// Selects exactly these runs (those present).
  void select_runs(const QList<qint64>& run_ids);
  QTableView* table() const { return table_; }
  QLineEdit* filter_edit() const { return filter_; }
  RunsFilterModel* proxy() const { return proxy_; }

 signals:
  void selectionChanged(const QList<qint64>& run_ids);

 private:
  void show_context_menu(const QPoint& position);

  RunsModel* model_;
  RunsFilterModel* proxy_;
  QLineEdit* filter_;
  QTableView* table_;
};

}  // namespace hl::ui
