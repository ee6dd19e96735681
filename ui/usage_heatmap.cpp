#include "ui/usage_heatmap.hpp"

#include <qcustomplot.h>

#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QSpinBox>
#include <QVBoxLayout>
#include <cmath>

#include "ui/async_read.hpp"
#include "ui/run_store.hpp"
#include "ui/theme.hpp"

namespace hl::ui {
namespace {

// What one side needs, read in one go on a pool thread.
struct SideData {
  store::LayerMatrix metric;
  store::LayerMatrix window_factors;
  std::vector<double> heads;
};

size_t nearest_step_index(const std::vector<int64_t>& steps, int64_t step) {
  if (steps.empty()) return 0;
  if (step < 0) return steps.size() - 1;
  auto it = std::lower_bound(steps.begin(), steps.end(), step);
  if (it == steps.end()) return steps.size() - 1;
  if (it != steps.begin() && step - *(it - 1) < *it - step) --it;
  return static_cast<size_t>(it - steps.begin());
}

std::optional<size_t> layer_index(const std::vector<int>& layers, int layer) {
  auto it = std::find(layers.begin(), layers.end(), layer);
  if (it == layers.end()) return std::nullopt;
  return static_cast<size_t>(it - layers.begin());
}

// Heads are logged as 0..H-1; reading stops at the first head without rows.
constexpr int kMaxHeads = 256;

}  // namespace

QStringList UsageHeatmap::default_metrics() {
  return {"usage/linear_mass", "usage/linear_output_share", "usage/window_factor",
          "ablation/loss_delta"};
}

UsageHeatmap::UsageHeatmap(RunStore* store, QWidget* parent) : QWidget(parent), store_(store) {
  metric_ = new QComboBox(this);
  metric_->setEditable(true);
  metric_->setAccessibleName(tr("Per-layer metric"));
  metric_->addItems(default_metrics());
  run_a_ = new QComboBox(this);
  run_a_->setAccessibleName(tr("Left run"));
  run_b_ = new QComboBox(this);
  run_b_->setAccessibleName(tr("Right run"));
  layer_ = new QSpinBox(this);
  layer_->setAccessibleName(tr("Layer for the per-head bars"));
  layer_->setRange(0, 4096);
  selection_label_ = new QLabel(this);
  connect(metric_, &QComboBox::currentTextChanged, this, [this] { reload(); });
  connect(run_a_, &QComboBox::currentIndexChanged, this, [this] { reload(); });
  connect(run_b_, &QComboBox::currentIndexChanged, this, [this] { reload(); });
  connect(layer_, &QSpinBox::valueChanged, this,
          [this](int layer) { set_selection(step_, layer); });

  plot_ = new QCustomPlot(this);
  plot_->setObjectName("usageHeatmap");
  plot_->setAccessibleName(tr("Branch usage heatmap"));
  plot_->plotLayout()->clear();
  scale_ = new QCPColorScale(plot_);
  scale_->setType(QCPAxis::atRight);
  scale_->setDataRange(QCPRange(0, 1));
  // A perceptually ordered dark-blue -> green -> yellow ramp (QCustomPlot 2.1.0 has no
  // viridis preset); readable on light and dark backgrounds.
  QCPColorGradient gradient;
  gradient.clearColorStops();
  gradient.setColorStopAt(0.0, QColor(0x44, 0x01, 0x54));
  gradient.setColorStopAt(0.25, QColor(0x3b, 0x52, 0x8b));
  gradient.setColorStopAt(0.5, QColor(0x21, 0x91, 0x8c));
  gradient.setColorStopAt(0.75, QColor(0x5e, 0xc9, 0x62));
  gradient.setColorStopAt(1.0, QColor(0xfd, 0xe7, 0x25));
  scale_->setGradient(gradient);
  for (size_t i = 0; i < sides_.size(); ++i) {
    Side& side = sides_[i];
    side.rect = new QCPAxisRect(plot_);
    side.rect->axis(QCPAxis::atBottom)->setLabel(tr("step"));
    side.rect->axis(QCPAxis::atLeft)->setLabel(tr("layer"));
    side.rect->setupFullAxesBox(true);
    plot_->plotLayout()->addElement(0, static_cast<int>(i), side.rect);
    side.map =
        new QCPColorMap(side.rect->axis(QCPAxis::atBottom), side.rect->axis(QCPAxis::atLeft));
    side.map->setColorScale(scale_);
    side.map->setInterpolate(false);
    // Each logged (step, layer) is a whole cell centred on it: the first and last layers
    // and steps get full-size cells like the others.
    side.map->setTightBoundary(false);
  }
  plot_->plotLayout()->addElement(0, 2, scale_);
  heads_rect_ = new QCPAxisRect(plot_);
  heads_rect_->axis(QCPAxis::atBottom)->setLabel(tr("head (selected layer and step)"));
  factors_rect_ = new QCPAxisRect(plot_);
  factors_rect_->axis(QCPAxis::atBottom)->setLabel(tr("layer: window factor g at the step"));
  plot_->plotLayout()->addElement(1, 0, heads_rect_);
  plot_->plotLayout()->addElement(1, 1, factors_rect_);
  plot_->plotLayout()->setRowStretchFactor(1, 0.6);
  // The colour scale's margins line up with the heatmaps'.
  auto* margins = new QCPMarginGroup(plot_);
  for (Side& side : sides_)
    side.rect->setMarginGroup(QCP::msTop | QCP::msBottom, margins);
  scale_->setMarginGroup(QCP::msTop | QCP::msBottom, margins);
  connect(plot_, &QCustomPlot::mousePress, this, &UsageHeatmap::on_click);
  style_plot(plot_, palette());

  auto* controls = new QHBoxLayout;
  controls->addWidget(new QLabel(tr("Metric"), this));
  controls->addWidget(metric_, 1);
  controls->addWidget(new QLabel(tr("Left"), this));
  controls->addWidget(run_a_, 1);
  controls->addWidget(new QLabel(tr("Right"), this));
  controls->addWidget(run_b_, 1);
  controls->addWidget(new QLabel(tr("Layer"), this));
  controls->addWidget(layer_);
  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addLayout(controls);
  layout->addWidget(plot_, 1);
  layout->addWidget(selection_label_);
  selection_label_->setText(tr("Click a heatmap to choose the step and layer of the bars."));
}

void UsageHeatmap::set_runs(const QList<qint64>& run_ids) {
  if (run_ids == runs_) return;
  runs_ = run_ids;
  const QSignalBlocker block_a(run_a_);
  const QSignalBlocker block_b(run_b_);
  run_a_->clear();
  run_b_->clear();
  run_b_->addItem(tr("(none)"), QVariant::fromValue<qint64>(0));
  for (qint64 id : run_ids) {
    const RunRow* run = store_->run(id);
    const QString name = run ? QString::fromStdString(run->entry.info.name) : tr("run %1").arg(id);
    run_a_->addItem(QStringLiteral("%1 · %2").arg(id).arg(name), QVariant::fromValue<qint64>(id));
    run_b_->addItem(QStringLiteral("%1 · %2").arg(id).arg(name), QVariant::fromValue<qint64>(id));
  }
  if (run_ids.size() >= 2) run_b_->setCurrentIndex(2);
  reload();
}

void UsageHeatmap::set_metric(const QString& key) {
  metric_->setCurrentText(key);  // reloads through the signal
}

void UsageHeatmap::set_selection(int64_t step, int layer) {
  step_ = step;
  if (layer_->value() != layer) {
    const QSignalBlocker block(layer_);
    layer_->setValue(layer);
  }
  reload();
}

void UsageHeatmap::reload() {
  ++load_generation_;
  pending_ = 0;
  sides_[0].run = run_a_->currentData().toLongLong();
  sides_[1].run = run_b_->currentData().toLongLong();
  for (size_t i = 0; i < sides_.size(); ++i) {
    if (sides_[i].run <= 0 || store_->path().isEmpty()) {
      sides_[i].matrix.reset();
      sides_[i].window_factors.reset();
      sides_[i].head_values.clear();
      fill_map(sides_[i]);
      continue;
    }
    load_side(i);
  }
  if (pending_ == 0) finish_load();
}

void UsageHeatmap::load_side(size_t index) {
  ++pending_;
  const int64_t run = sides_[index].run;
  const std::string metric = metric_->currentText().toStdString();
  const int64_t step = step_;
  const int layer = layer_->value();
  const uint64_t generation = load_generation_;
  read_async<SideData>(
      store_->path(), this,
      [run, metric, step, layer](store::RunReader& reader) -> Result<SideData> {
        SideData data;
        Result<store::LayerMatrix> matrix = reader.layer_matrix(run, metric);
        if (!matrix.ok()) return matrix.error();
        data.metric = std::move(matrix).value();
        Result<store::LayerMatrix> factors = reader.layer_matrix(run, "usage/window_factor");
        if (factors.ok()) data.window_factors = std::move(factors).value();
        for (int head = 0; head < kMaxHeads; ++head) {
          Result<store::LayerMatrix> per_head = reader.layer_matrix(run, metric, head);
          if (!per_head.ok() || per_head->layers.empty()) break;
          const std::optional<size_t> row = layer_index(per_head->layers, layer);
          data.heads.push_back(row ? per_head->at(*row, nearest_step_index(per_head->steps, step))
                                   : std::numeric_limits<double>::quiet_NaN());
        }
        return data;
      },
      [this, index, generation](Result<SideData> result) {
        if (generation != load_generation_) return;
        Side& side = sides_[index];
        if (result.ok()) {
          side.matrix = std::move(result->metric);
          side.window_factors = std::move(result->window_factors);
          side.head_values = std::move(result->heads);
        } else {
          side.matrix.reset();
          side.window_factors.reset();
          side.head_values.clear();
          selection_label_->setText(QString::fromStdString(result.error().to_string()));
        }
        fill_map(side);
        if (--pending_ == 0) finish_load();
      });
}

void UsageHeatmap::fill_map(Side& side) {
  QCPColorMapData* data = side.map->data();
  const RunRow* run = store_->run(side.run);
  side.rect->axis(QCPAxis::atTop)
      ->setLabel(side.run > 0 ? (run ? QString::fromStdString(run->entry.info.name)
                                     : tr("run %1").arg(side.run))
                              : QString());
  side.rect->axis(QCPAxis::atTop)->setLabelColor(side.run > 0 ? run_colour(side.run) : QColor());
  if (!side.matrix || side.matrix->layers.empty() || side.matrix->steps.empty()) {
    data->setSize(1, 1);
    data->setRange(QCPRange(0, 1), QCPRange(0, 1));
    data->setCell(0, 0, std::numeric_limits<double>::quiet_NaN());
    data->setAlpha(0, 0, 0);
    return;
  }
  const store::LayerMatrix& matrix = *side.matrix;
  const int steps = static_cast<int>(matrix.steps.size());
  const int layers = static_cast<int>(matrix.layers.size());
  data->setSize(steps, layers);
  data->setRange(
      QCPRange(static_cast<double>(matrix.steps.front()), static_cast<double>(matrix.steps.back())),
      QCPRange(matrix.layers.front(), matrix.layers.back()));
  for (int l = 0; l < layers; ++l) {
    for (int s = 0; s < steps; ++s) {
      const double value = matrix.at(static_cast<size_t>(l), static_cast<size_t>(s));
      data->setCell(s, l, value);
      // Cells that were never logged stay transparent instead of taking the low colour.
      data->setAlpha(s, l, std::isnan(value) ? 0 : 255);
    }
  }
  const double half_cell =
      steps > 1 ? (data->keyRange().upper - data->keyRange().lower) / (steps - 1) / 2 : 0.5;
  side.rect->axis(QCPAxis::atBottom)
      ->setRange(data->keyRange().lower - half_cell, data->keyRange().upper + half_cell);
  side.rect->axis(QCPAxis::atLeft)
      ->setRange(matrix.layers.front() - 0.5, matrix.layers.back() + 0.5);
}

void UsageHeatmap::finish_load() {
  // One scale for both sides so that colours compare; fractions keep [0, 1].
  QCPRange range;
  bool found = false;
  for (const Side& side : sides_) {
    if (!side.matrix) continue;
    for (double value : side.matrix->values) {
      if (std::isnan(value)) continue;
      range = found ? QCPRange(std::min(range.lower, value), std::max(range.upper, value))
                    : QCPRange(value, value);
      found = true;
    }
  }
  const QString metric = metric_->currentText();
  if (metric.startsWith(QLatin1String("usage/")))
    range = QCPRange(0, 1);
  else if (!found || range.size() <= 0)
    range = QCPRange(found ? range.lower - 0.5 : 0, found ? range.upper + 0.5 : 1);
  scale_->setDataRange(range);
  scale_->axis()->setLabel(metric);
  update_bars();
  plot_->replot();
  emit loaded();
}

void UsageHeatmap::update_bars() {
  for (QCPAxisRect* rect : {heads_rect_, factors_rect_})
    for (QCPAbstractPlottable* plottable : rect->plottables())
      plot_->removePlottable(plottable);
  auto* heads_group = new QCPBarsGroup(plot_);
  auto* factors_group = new QCPBarsGroup(plot_);
  int64_t shown_step = -1;
  double heads_max = 0, heads_count = 0, layers_min = 0, layers_max = 0;
  bool any_layer = false;
  for (Side& side : sides_) {
    if (side.run <= 0) continue;
    const QColor colour = run_colour(side.run);
    auto* heads =
        new QCPBars(heads_rect_->axis(QCPAxis::atBottom), heads_rect_->axis(QCPAxis::atLeft));
    heads->setBarsGroup(heads_group);
    heads->setWidth(0.8 / 2);
    heads->setPen(QPen(colour));
    heads->setBrush(faded(colour, 0.7));
    for (size_t h = 0; h < side.head_values.size(); ++h) {
      if (std::isnan(side.head_values[h])) continue;
      heads->addData(static_cast<double>(h), side.head_values[h]);
      heads_max = std::max(heads_max, side.head_values[h]);
    }
    heads_count = std::max(heads_count, static_cast<double>(side.head_values.size()));
    auto* factors =
        new QCPBars(factors_rect_->axis(QCPAxis::atBottom), factors_rect_->axis(QCPAxis::atLeft));
    factors->setBarsGroup(factors_group);
    factors->setWidth(0.8 / 2);
    factors->setPen(QPen(colour));
    factors->setBrush(faded(colour, 0.7));
    if (side.window_factors && !side.window_factors->steps.empty()) {
      const store::LayerMatrix& matrix = *side.window_factors;
      const size_t s = nearest_step_index(matrix.steps, step_);
      shown_step = matrix.steps[s];
      for (size_t l = 0; l < matrix.layers.size(); ++l) {
        const double value = matrix.at(l, s);
        if (std::isnan(value)) continue;
        factors->addData(matrix.layers[l], value);
        layers_min = any_layer ? std::min(layers_min, double(matrix.layers[l])) : matrix.layers[l];
        layers_max = any_layer ? std::max(layers_max, double(matrix.layers[l])) : matrix.layers[l];
        any_layer = true;
      }
    }
    if (side.matrix && !side.matrix->steps.empty() && shown_step < 0)
      shown_step = side.matrix->steps[nearest_step_index(side.matrix->steps, step_)];
  }
  heads_rect_->axis(QCPAxis::atBottom)->setRange(-0.5, std::max(1.0, heads_count) - 0.5);
  heads_rect_->axis(QCPAxis::atLeft)->setRange(0, heads_max > 0 ? heads_max * 1.1 : 1.0);
  factors_rect_->axis(QCPAxis::atBottom)->setRange(layers_min - 0.5, layers_max + 0.5);
  factors_rect_->axis(QCPAxis::atLeft)->setRange(0, 1);
  selection_label_->setText(
      shown_step >= 0
          ? tr("Bars at step %1, per-head values of layer %2 (%3).")
                .arg(shown_step)
                .arg(layer_->value())
                .arg(metric_->currentText())
          : tr("No per-layer rows of %1 for these runs yet.").arg(metric_->currentText()));
}

void UsageHeatmap::on_click(QMouseEvent* event) {
  for (Side& side : sides_) {
    if (!side.rect->rect().contains(event->pos()) || !side.matrix) continue;
    const double step = side.rect->axis(QCPAxis::atBottom)->pixelToCoord(event->pos().x());
    const double layer = side.rect->axis(QCPAxis::atLeft)->pixelToCoord(event->pos().y());
    set_selection(static_cast<int64_t>(std::llround(step)), static_cast<int>(std::lround(layer)));
    return;
  }
}

void UsageHeatmap::changeEvent(QEvent* event) {
  if (event->type() == QEvent::PaletteChange) {
    style_plot(plot_, palette());
    plot_->replot(QCustomPlot::rpQueuedReplot);
  }
  QWidget::changeEvent(event);
}

}  // namespace hl::ui
