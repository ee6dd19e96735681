// Branch usage: a layer x step heatmap (linear mass, output share, window factor...) for
// one or two runs side by side with a shared colour scale, per-head bars at a chosen step
// and layer, and the window factors per layer at that step.
#pragma once

#include <QList>
#include <QWidget>
#include <array>
#include <cstdint>
#include <optional>

#include "core/store/run_types.hpp"

class QComboBox;
class QSpinBox;
class QLabel;
class QCustomPlot;
class QCPColorMap;
class QCPColorScale;
class QCPAxisRect;
class QCPBarsGroup;
class QMouseEvent;

namespace hl::ui {

class RunStore;

/// The branch-usage view.
class UsageHeatmap : public QWidget {
  Q_OBJECT
 public:
  explicit UsageHeatmap(RunStore* store, QWidget* parent = nullptr);

  /// Offers these runs; the first two are shown side by side.
  void set_runs(const QList<qint64>& run_ids);
  /// The per-layer metric shown (default usage/linear_mass).
  void set_metric(const QString& key);
  /// The step for the bars (nearest logged step is used) and the layer for the head bars.
  void set_selection(int64_t step, int layer);
  /// Re-reads the store (called when new rows arrived).
  void reload();

  QCustomPlot* plot() const { return plot_; }
  /// The colour map of side 0 (left) or 1 (right).
  QCPColorMap* color_map(int side) const { return sides_[static_cast<size_t>(side)].map; }
  /// The matrix shown on a side, if loaded.
  const std::optional<store::LayerMatrix>& matrix(int side) const {
    return sides_[static_cast<size_t>(side)].matrix;
  }
  /// Loads in flight; 0 when the view shows the store's state.
  int pending_loads() const { return pending_; }

  /// The per-layer metrics the engine logs.
  static QStringList default_metrics();

 signals:
  /// All loads of the last reload() (or selection change) have arrived.
  void loaded();

 protected:
  void changeEvent(QEvent* event) override;

 private:
  struct Side {
    qint64 run = 0;
    QCPAxisRect* rect = nullptr;
    QCPColorMap* map = nullptr;
    std::optional<store::LayerMatrix> matrix;
    std::optional<store::LayerMatrix> window_factors;
    std::vector<double> head_values;  // per head at the selected step and layer
  };
  void load_side(size_t side);
  void fill_map(Side& side);
  void update_bars();
  void finish_load();
  void on_click(QMouseEvent* event);

  RunStore* store_;
  QComboBox* metric_;
  QComboBox* run_a_;
  QComboBox* run_b_;
  QSpinBox* layer_;
  QLabel* selection_label_;
  QCustomPlot* plot_;
  QCPColorScale* scale_;
  QCPAxisRect* heads_rect_;
  QCPAxisRect* factors_rect_;
  std::array<Side, 2> sides_;
  QList<qint64> runs_;
  int64_t step_ = -1;  // -1 = the last logged step
  int pending_ = 0;
  uint64_t load_generation_ = 0;
};

}  // namespace hl::ui
