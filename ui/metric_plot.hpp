// Live metric curves: several runs of one metric overlaid, EMA smoothing with the raw curve
// faint behind, log axes, x as step / tokens / wall time, crosshair readout, zoom and pan.
// New points arrive from the RunStore; redraws are coalesced on a timer. Curves keep their
// full series and hand QCustomPlot only what the screen can show (min/max per pixel column).
#pragma once

#include <QElapsedTimer>
#include <QList>
#include <QPointer>
#include <QWidget>
#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "ui/run_store.hpp"

class QCustomPlot;
class QCPGraph;
class QCPGraphData;
class QCPItemStraightLine;
class QCPItemText;
class QComboBox;
class QSlider;
class QCheckBox;
class QTimer;
class QMouseEvent;

namespace hl::ui {

/// What the x axis shows.
enum class XAxis { step, tokens, wall_time };

/// Exponential moving average with bias correction (as TensorBoard smooths), fed point by
/// point so that appended points extend the smoothed curve without recomputing it.
class EmaSmoother {
 public:
  /// weight in [0, 1): 0 = no smoothing.
  explicit EmaSmoother(double weight = 0.0) : weight_(weight) {}
  /// The smoothed value after `value`; NaN passes through and leaves the state unchanged.
  double push(double value);
  /// The smoothed value after `count` values equal to `value`, as `count` pushes of it (a
  /// bucket's mean standing for its rows); NaN or a count of 0 returns NaN and leaves the
  /// state unchanged.
  double push_repeated(double value, int64_t count);

 private:
  double weight_;
  double average_ = 0.0;
  double correction_ = 1.0;  // weight^n, for the bias correction
};

/// The points of a curve (xs ascending) that a plot `columns` pixels wide needs to draw
/// [lo, hi] as the full series would look: the lowest and highest point of each of `columns`
/// equal parts of [lo, hi] (in x order, plus the first NaN, which breaks the line), the first
/// and last point, and the nearest point beyond each end so that the line runs to the edges. A
/// range holding no more than 2 x `columns` points comes back whole. Replaces `out`.
void decimate_for_screen(std::span<const double> xs, std::span<const double> ys, double lo,
                         double hi, int columns, QVector<QCPGraphData>* out);

/// A plot of one metric for several runs.
class MetricPlot : public QWidget {
  Q_OBJECT
 public:
  explicit MetricPlot(RunStore* store, QWidget* parent = nullptr);
  ~MetricPlot() override;

  /// Runs to draw, in legend order.
  void set_runs(const QList<qint64>& run_ids);
  void set_metric(const QString& key);
  void set_x_axis(XAxis axis);
  /// EMA weight in [0, 1).
  void set_smoothing(double weight);
  void set_log_y(bool log);
  void set_show_raw(bool show);
  /// Redraws happen at most once per this interval (default 100 ms); changes in between
  /// are coalesced into the next one.
  void set_redraw_interval(int milliseconds);

  const QString& metric() const { return metric_; }
  const QList<qint64>& runs() const { return run_ids_; }
  QCustomPlot* plot() const { return plot_; }
  /// Points of the run's series the curve shows (the screen may get fewer, see
  /// decimate_for_screen); -1 if the run is not drawn.
  int drawn_points(qint64 run_id) const;
  /// The step of the last point the run's curve shows; -1 if none.
  int64_t last_drawn_step(qint64 run_id) const;
  /// Whether the run's curve shows the store's bucket summaries of a long series (its first
  /// view, until the rows arrive): the raw curve has each bucket's first, last, lowest and
  /// highest rows, at most one bucket per pixel column, and the smoothed curve runs over the
  /// bucket means (an approximation of the EMA of the rows, replaced when they arrive).
  bool provisional(qint64 run_id) const;
  /// Points handed to QCustomPlot over all curves (raw + smoothed), after decimation.
  int plotted_points() const;
  /// Applies pending points and replots at once.
  void flush();
  /// Number of coalesced redraws so far.
  uint64_t redraw_count() const { return redraws_; }
  /// Fits both axes to the data and follows new points again.
  void rescale();

 signals:
  void redrawn();

 protected:
  void changeEvent(QEvent* event) override;

 private:
  struct Curve;
  void rebuild_curves();
  void mark_dirty(const SeriesKey& key, int first_new);
  void schedule_redraw(bool now = false);
  void append_points(Curve& curve, bool rebuild);
  // Refills the graphs of curves whose decimation no longer fits the axis range or size.
  void refresh_screen_data(bool force);
  void decimate(Curve& curve, double lo, double hi, int columns);
  double x_value(const Curve& curve, const store::ScalarPoint& point) const;
  void update_crosshair(QMouseEvent* event);
  void update_axis_labels();

  QPointer<RunStore> store_;  // may go first when a parent deletes its children
  QCustomPlot* plot_;
  QCPItemStraightLine* crosshair_ = nullptr;
  QCPItemText* readout_ = nullptr;
  QTimer* redraw_timer_;
  QElapsedTimer since_redraw_;
  int redraw_interval_ = 100;
  QList<qint64> run_ids_;
  QString metric_ = QStringLiteral("loss");
  XAxis x_axis_ = XAxis::step;
  double smoothing_ = 0.6;
  bool log_y_ = false;
  bool show_raw_ = true;
  bool follow_ = true;  // autoscale until the user zooms or pans
  uint64_t redraws_ = 0;
  std::vector<std::unique_ptr<Curve>> curves_;
};

/// A MetricPlot with its controls: metric picker, x axis, smoothing, log scale.
class MetricPlotPanel : public QWidget {
  Q_OBJECT
 public:
  explicit MetricPlotPanel(RunStore* store, QWidget* parent = nullptr);

  MetricPlot* plot() const { return plot_; }
  QComboBox* metric_box() const { return metric_; }
  /// Switches the log-y control (and so the plot).
  void set_log_y(bool log);
  /// Offers these metric keys (the defaults stay first); keeps the current choice.
  void set_metric_keys(const QStringList& keys);

  /// Scalar metric names the engine logs, offered before any run is selected.
  static QStringList default_metrics();

 private:
  MetricPlot* plot_;
  QComboBox* metric_;
  QComboBox* x_axis_;
  QSlider* smoothing_;
  QCheckBox* log_y_;
  QCheckBox* raw_;
};

}  // namespace hl::ui
