// Editors for stage-long schedules: a table of values (equal parts of the stage) or of
// (step, value) points, and the SSD editor that combines the dropout and window schedules
// with a live plot of both over the stage's steps.
#pragma once

#include <QStringList>
#include <QWidget>
#include <cstdint>

#include "core/config/experiment_spec.hpp"

class QComboBox;
class QTableWidget;
class QCheckBox;
class QCustomPlot;

namespace hl::ui {

/// One Schedule as an editable table.
class ScheduleTable : public QWidget {
  Q_OBJECT
 public:
  explicit ScheduleTable(const QString& value_name, QWidget* parent = nullptr);

  void set_schedule(const Schedule& schedule);
  /// The table as a Schedule; cells that are not numbers are reported in `errors`.
  Schedule schedule(QStringList* errors = nullptr) const;
  QTableWidget* table() const { return table_; }
  /// true: (step, value) points; false: values over equal parts of the stage.
  bool uses_points() const;

 signals:
  void changed();

 private:
  void set_points_mode(bool points);

  QComboBox* mode_;
  QTableWidget* table_;
};

/// The SSD block of a stage: dropout probability schedule, optional window schedule,
/// granularity, and a plot of p and window over the stage's steps.
class ScheduleEditor : public QWidget {
  Q_OBJECT
 public:
  explicit ScheduleEditor(QWidget* parent = nullptr);

  void set_ssd(const SsdSpec& ssd);
  /// The edited spec; cell errors are appended to `errors` as "key: message".
  SsdSpec ssd(QStringList* errors = nullptr) const;
  /// Steps of the stage, for the plot's x range.
  void set_total_steps(int64_t steps);
  /// The window used where no window schedule is set (attention.window).
  void set_default_window(int64_t window);
  QCustomPlot* plot() const { return plot_; }

 signals:
  void changed();

 private:
  void update_plot();

  QComboBox* granularity_;
  ScheduleTable* dropout_;
  QCheckBox* window_enabled_;
  ScheduleTable* window_;
  QCustomPlot* plot_;
  int64_t total_steps_ = 400;
  int64_t default_window_ = 64;
};

}  // namespace hl::ui
