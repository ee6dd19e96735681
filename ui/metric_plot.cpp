#include "ui/metric_plot.hpp"

#include <qcustomplot.h>

#include <QCheckBox>
#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QSlider>
#include <QTimer>
#include <QVBoxLayout>
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "ui/theme.hpp"

namespace hl::ui {
namespace {
// Up to this many runs the smoothed curves are drawn 2 px wide.
constexpr qsizetype kWidePenRuns = 5;
// Room above and below the curves when the axes follow the data, as a fraction of the range.
constexpr double kYMargin = 0.03;
}  // namespace

double EmaSmoother::push(double value) {
  if (std::isnan(value)) return value;
  if (weight_ <= 0.0) return value;
  average_ = weight_ * average_ + (1.0 - weight_) * value;
  correction_ *= weight_;
  return average_ / (1.0 - correction_);
}

double EmaSmoother::push_repeated(double value, int64_t count) {
  if (std::isnan(value) || count <= 0) return std::numeric_limits<double>::quiet_NaN();
  if (weight_ <= 0.0) return value;
  const double decay = std::pow(weight_, static_cast<double>(count));
  average_ = decay * average_ + (1.0 - decay) * value;
  correction_ *= decay;
  return average_ / (1.0 - correction_);
}

void decimate_for_screen(std::span<const double> xs, std::span<const double> ys, double lo,
                         double hi, int columns, QVector<QCPGraphData>* out) {
  out->clear();
  const size_t n = std::min(xs.size(), ys.size());
  if (n == 0) return;
  // The nearest point beyond each end is kept so that lines leave the visible range.
  size_t begin = static_cast<size_t>(std::lower_bound(xs.begin(), xs.begin() + n, lo) - xs.begin());
  size_t end = static_cast<size_t>(std::upper_bound(xs.begin(), xs.begin() + n, hi) - xs.begin());
  if (begin > 0) --begin;
  if (end < n) ++end;
  columns = std::max(columns, 1);
  if (end - begin <= 2 * static_cast<size_t>(columns) || !(hi > lo)) {
    out->reserve(static_cast<qsizetype>(end - begin));
    for (size_t i = begin; i < end; ++i)
      out->append(QCPGraphData(xs[i], ys[i]));
    return;
  }
  out->reserve(3 * columns + 2);
  const double scale = columns / (hi - lo);
  auto emit_bucket = [&](size_t low, size_t high, size_t gap) {
    std::array<size_t, 3> picks{low, high, gap};
    std::sort(picks.begin(), picks.end());
    size_t last = SIZE_MAX;
    for (size_t i : picks)
      if (i != SIZE_MAX && i != last) {
        out->append(QCPGraphData(xs[i], ys[i]));
        last = i;
      }
  };
  int64_t bucket = INT64_MIN;
  size_t low = SIZE_MAX, high = SIZE_MAX, gap = SIZE_MAX;
  for (size_t i = begin; i < end; ++i) {
    // The two outside points fall into buckets of their own (-1 and `columns`).
    const int64_t b =
        xs[i] < lo   ? -1
        : xs[i] > hi ? columns
                     : std::min<int64_t>(static_cast<int64_t>((xs[i] - lo) * scale), columns - 1);
    if (b != bucket) {
      if (bucket != INT64_MIN) emit_bucket(low, high, gap);
      bucket = b;
      low = high = gap = SIZE_MAX;
    }
    const double y = ys[i];
    if (std::isnan(y)) {
      if (gap == SIZE_MAX) gap = i;
      continue;
    }
    if (low == SIZE_MAX || y < ys[low]) low = i;
    if (high == SIZE_MAX || y > ys[high]) high = i;
  }
  emit_bucket(low, high, gap);
  // The first and last points always stay, so that a curve spans its full x range.
  if (out->front().key != xs[begin]) out->prepend(QCPGraphData(xs[begin], ys[begin]));
  if (out->back().key != xs[end - 1]) out->append(QCPGraphData(xs[end - 1], ys[end - 1]));
}

struct MetricPlot::Curve {
  qint64 run = 0;
  SeriesKey key;
  QCPGraph* raw = nullptr;
  QCPGraph* smooth = nullptr;
  size_t shown = 0;          // points of the store's series taken so far
  bool provisional = false;  // shows bucket summaries (SeriesData::spans)
  EmaSmoother ema;
  int64_t wall0 = 0;
  double tokens_per_step = 0.0;
  bool dirty = false;
  bool rebuild = true;
  // The full series as plotted (x per the axis mode); the graphs get a decimated copy.
  std::vector<double> xs, values, smoothed;
  // What the graphs hold: [lo, hi] decimated into `columns` buckets; screen_valid false
  // after the series changed.
  bool screen_valid = false;
  double lo = 0, hi = 0;
  int columns = 0;
};

MetricPlot::MetricPlot(RunStore* store, QWidget* parent)
    : QWidget(parent),
      store_(store),
      plot_(new QCustomPlot(this)),
      redraw_timer_(new QTimer(this)) {
  plot_->setObjectName("metricPlot");
  plot_->setAccessibleName(tr("Metric curves"));
  plot_->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
  plot_->setNoAntialiasingOnDrag(true);
  plot_->legend->setVisible(true);
  plot_->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignRight);
  plot_->xAxis->setLabel(tr("step"));
  plot_->setMouseTracking(true);

  crosshair_ = new QCPItemStraightLine(plot_);
  crosshair_->setPen(QPen(QColor(128, 128, 128, 160), 1, Qt::DashLine));
  crosshair_->setVisible(false);
  crosshair_->setSelectable(false);
  readout_ = new QCPItemText(plot_);
  readout_->position->setType(QCPItemPosition::ptAxisRectRatio);
  readout_->position->setCoords(0.01, 0.01);
  readout_->setPositionAlignment(Qt::AlignTop | Qt::AlignLeft);
  readout_->setTextAlignment(Qt::AlignLeft);
  readout_->setPadding(QMargins(4, 2, 4, 2));
  readout_->setVisible(false);
  readout_->setClipToAxisRect(true);

  redraw_timer_->setSingleShot(true);
  connect(redraw_timer_, &QTimer::timeout, this, &MetricPlot::flush);
  connect(store_, &RunStore::seriesAppended, this, &MetricPlot::mark_dirty);
  connect(store_, &RunStore::runsChanged, this, [this] {
    // Names and token counts may arrive after the first points.
    bool changed = false;
    for (auto& curve : curves_) {
      const RunRow* run = store_->run(curve->run);
      if (!run) continue;
      const QString name = QString::fromStdString(run->entry.info.name);
      if (curve->smooth->name() != name) {
        curve->smooth->setName(name);
        changed = true;
      }
      if (curve->tokens_per_step != run->tokens_per_step()) {
        curve->tokens_per_step = run->tokens_per_step();
        if (x_axis_ == XAxis::tokens) curve->rebuild = curve->dirty = true;
      }
    }
    if (changed || std::any_of(curves_.begin(), curves_.end(), [](auto& c) { return c->dirty; }))
      schedule_redraw();
  });
  // Every replot (zoom, pan, resize, new points) first checks that the decimated points
  // still match the visible range and the plot's width.
  connect(plot_, &QCustomPlot::beforeReplot, this, [this] { refresh_screen_data(false); });
  connect(plot_, &QCustomPlot::mouseMove, this, &MetricPlot::update_crosshair);
  connect(plot_, &QCustomPlot::mouseWheel, this, [this] { follow_ = false; });
  connect(plot_, &QCustomPlot::mousePress, this, [this] { follow_ = false; });
  connect(plot_, &QCustomPlot::mouseDoubleClick, this, [this] { rescale(); });

  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(0, 0, 0, 0);
  layout->addWidget(plot_);
  style_plot(plot_, palette());
}

MetricPlot::~MetricPlot() {
  for (auto& curve : curves_)
    store_->unwatch(curve->key);
}

void MetricPlot::set_runs(const QList<qint64>& run_ids) {
  if (run_ids == run_ids_) return;
  run_ids_ = run_ids;
  rebuild_curves();
}

void MetricPlot::set_metric(const QString& key) {
  if (key == metric_) return;
  metric_ = key;
  follow_ = true;
  rebuild_curves();
}

void MetricPlot::set_x_axis(XAxis axis) {
  if (axis == x_axis_) return;
  x_axis_ = axis;
  follow_ = true;
  update_axis_labels();
  for (auto& curve : curves_)
    curve->rebuild = curve->dirty = true;
  flush();
}

void MetricPlot::set_smoothing(double weight) {
  smoothing_ = std::clamp(weight, 0.0, 0.999);
  for (auto& curve : curves_)
    curve->rebuild = curve->dirty = true;
  flush();
}

void MetricPlot::set_log_y(bool log) {
  log_y_ = log;
  if (log) {
    plot_->yAxis->setScaleType(QCPAxis::stLogarithmic);
    plot_->yAxis->setTicker(QSharedPointer<QCPAxisTickerLog>(new QCPAxisTickerLog));
  } else {
    plot_->yAxis->setScaleType(QCPAxis::stLinear);
    plot_->yAxis->setTicker(QSharedPointer<QCPAxisTicker>(new QCPAxisTicker));
  }
  follow_ = true;
  for (auto& curve : curves_)
    curve->dirty = true;
  flush();
}

void MetricPlot::set_show_raw(bool show) {
  show_raw_ = show;
  for (auto& curve : curves_)
    curve->raw->setVisible(show && smoothing_ > 0.0);
  plot_->replot();
}

void MetricPlot::set_redraw_interval(int milliseconds) {
  redraw_interval_ = milliseconds;
}

int MetricPlot::drawn_points(qint64 run_id) const {
  for (const auto& curve : curves_)
    if (curve->run == run_id) return static_cast<int>(curve->xs.size());
  return -1;
}

int64_t MetricPlot::last_drawn_step(qint64 run_id) const {
  for (const auto& curve : curves_) {
    if (curve->run != run_id) continue;
    const std::vector<store::ScalarPoint>& points = store_->series(curve->key).points;
    return curve->shown > 0 && curve->shown <= points.size() ? points[curve->shown - 1].step : -1;
  }
  return -1;
}

bool MetricPlot::provisional(qint64 run_id) const {
  for (const auto& curve : curves_)
    if (curve->run == run_id) return curve->provisional;
  return false;
}

int MetricPlot::plotted_points() const {
  int total = 0;
  for (const auto& curve : curves_)
    total += curve->raw->data()->size() + curve->smooth->data()->size();
  return total;
}

void MetricPlot::update_axis_labels() {
  switch (x_axis_) {
    case XAxis::step:
      plot_->xAxis->setLabel(tr("step"));
      break;
    case XAxis::tokens:
      plot_->xAxis->setLabel(tr("tokens"));
      break;
    case XAxis::wall_time:
      plot_->xAxis->setLabel(tr("wall time (s)"));
      break;
  }
  plot_->yAxis->setLabel(metric_);
}

void MetricPlot::rebuild_curves() {
  for (auto& curve : curves_)
    store_->unwatch(curve->key);
  curves_.clear();
  plot_->clearGraphs();
  update_axis_labels();
  for (qint64 run_id : run_ids_) {
    auto curve = std::make_unique<Curve>();
    curve->run = run_id;
    curve->key = SeriesKey{run_id, metric_};
    const QColor colour = run_colour(run_id);
    curve->raw = plot_->addGraph();
    curve->raw->setPen(QPen(faded(colour, 0.25), 1));
    curve->raw->setAntialiased(false);  // faint and thin: aliasing is invisible, and it is cheaper
    curve->raw->removeFromLegend();
    curve->raw->setVisible(show_raw_ && smoothing_ > 0.0);
    curve->smooth = plot_->addGraph();
    // A 2 px line goes through QPainter's stroker, which costs most of the time of drawing
    // many runs; beyond a few runs the curves are told apart by colour at 1 px, drawn fast.
    curve->smooth->setPen(QPen(colour, run_ids_.size() > kWidePenRuns ? 1 : 2));
    const RunRow* run = store_->run(run_id);
    curve->smooth->setName(run ? QString::fromStdString(run->entry.info.name)
                               : tr("run %1").arg(run_id));
    curve->tokens_per_step = run ? run->tokens_per_step() : 0.0;
    curve->dirty = curve->rebuild = true;
    curves_.push_back(std::move(curve));
    // The width lets a long series come first as bucket summaries of about one bucket per
    // pixel column; the widget is at least as wide as its axis rect, so they are no coarser.
    store_->watch(curves_.back()->key, std::max(plot_->width(), 400));
  }
  follow_ = true;
  flush();
}

void MetricPlot::mark_dirty(const SeriesKey& key, int first_new) {
  if (key.key != metric_) return;
  for (auto& curve : curves_) {
    if (curve->key != key) continue;
    curve->dirty = true;
    if (first_new == 0) curve->rebuild = true;
    // A series replaced as a whole (the rows that follow a first view from bucket
    // summaries) is drawn at once; the throttle is for the stream of appended points.
    schedule_redraw(first_new == 0);
  }
}

double MetricPlot::x_value(const Curve& curve, const store::ScalarPoint& point) const {
  switch (x_axis_) {
    case XAxis::step:
      return static_cast<double>(point.step);
    case XAxis::tokens:
      return static_cast<double>(point.step) *
             (curve.tokens_per_step > 0 ? curve.tokens_per_step : 1.0);
    case XAxis::wall_time:
      return static_cast<double>(point.wall_ms - curve.wall0) / 1000.0;
  }
  return 0.0;
}

void MetricPlot::append_points(Curve& curve, bool rebuild) {
  const SeriesData& series = store_->series(curve.key);
  const std::vector<store::ScalarPoint>& points = series.points;
  if (rebuild) {
    curve.xs.clear();
    curve.values.clear();
    curve.smoothed.clear();
    curve.shown = 0;
    curve.ema = EmaSmoother(smoothing_);
    curve.wall0 = points.empty() ? 0 : points.front().wall_ms;
    curve.raw->setVisible(show_raw_ && smoothing_ > 0.0);
    curve.screen_valid = false;
  }
  if (curve.shown >= points.size()) return;
  const size_t count = points.size() - curve.shown;
  // Bucket summaries are followed by the rows they stand for (downsampled if long): room
  // for those at once, so that the rows reuse this memory (touched only when written)
  // instead of reallocating.
  size_t rows = points.size();
  if (!series.spans.empty()) {
    rows = points.size() - series.spans.back().end;
    for (const store::SeriesOverview::Span& span : series.spans)
      rows += static_cast<size_t>(span.numbers);
    rows = std::min(rows, kFirstFetchMaxPoints);
  }
  curve.xs.reserve(std::max(rows, points.size()));
  curve.values.reserve(std::max(rows, points.size()));
  curve.smoothed.reserve(std::max(rows, points.size()));
  size_t i = curve.shown;
  if (rebuild) {
    curve.provisional = !series.spans.empty();
    // Bucket summaries: the EMA over the bucket means, each standing for its rows (exact
    // with smoothing off, where the smoothed curve is the raw one).
    for (const store::SeriesOverview::Span& span : series.spans) {
      const double smoothed = curve.ema.push_repeated(span.mean, span.numbers);
      for (; i < std::min(span.end, points.size()); ++i) {
        const double value = points[i].value;
        curve.xs.push_back(x_value(curve, points[i]));
        curve.values.push_back(value);
        curve.smoothed.push_back(smoothing_ <= 0.0 || std::isnan(value) ? value : smoothed);
      }
    }
  }
  for (; i < points.size(); ++i) {
    curve.xs.push_back(x_value(curve, points[i]));
    curve.values.push_back(points[i].value);
    curve.smoothed.push_back(curve.ema.push(points[i].value));
  }
  curve.shown += count;
  curve.screen_valid = false;
}

void MetricPlot::decimate(Curve& curve, double lo, double hi, int columns) {
  QVector<QCPGraphData> data;
  decimate_for_screen(curve.xs, curve.values, lo, hi, columns, &data);
  curve.raw->data()->set(data, true);
  decimate_for_screen(curve.xs, curve.smoothed, lo, hi, columns, &data);
  curve.smooth->data()->set(data, true);
  curve.lo = lo;
  curve.hi = hi;
  curve.columns = columns;
  curve.screen_valid = true;
}

void MetricPlot::refresh_screen_data(bool force) {
  const QCPRange range = plot_->xAxis->range();
  // One bucket per pixel column; a plot not laid out yet gets a sensible width.
  const int pixels = std::max(plot_->axisRect()->width(), 400);
  const double span = range.size();
  for (auto& curve : curves_) {
    if (curve->xs.empty()) {
      if (!curve->raw->data()->isEmpty()) curve->raw->data()->clear();
      if (!curve->smooth->data()->isEmpty()) curve->smooth->data()->clear();
      continue;
    }
    // Decimated over the visible range and half a range beyond each side, so that panning a
    // little or zooming out a little needs no new decimation; the buckets must stay within a
    // factor 1.5 of a pixel column wherever the curve is in view.
    const double bucket = curve->columns > 0 ? (curve->hi - curve->lo) / curve->columns : 0.0;
    const double wanted = span / pixels;
    const double need_lo = std::max(range.lower, curve->xs.front());
    const double need_hi = std::min(range.upper, curve->xs.back());
    const bool whole = curve->raw->data()->size() == static_cast<int>(curve->xs.size());
    const bool fits = curve->screen_valid && (whole || need_hi < need_lo ||
                                              (curve->lo <= need_lo && curve->hi >= need_hi &&
                                               bucket <= 1.5 * wanted && bucket >= wanted / 1.5));
    if (fits && !force) continue;
    // Clipped to the series: while the axes follow a run that is the whole series.
    const double lo = std::max(range.lower - span / 2, curve->xs.front());
    const double hi = std::min(range.upper + span / 2, curve->xs.back());
    if (!(span > 0) || hi <= lo) {
      decimate(*curve, curve->xs.front(), curve->xs.back(), pixels);
      continue;
    }
    decimate(*curve, lo, hi, std::max(1, static_cast<int>(std::lround((hi - lo) / wanted))));
  }
}

void MetricPlot::schedule_redraw(bool now) {
  if (now) {
    if (!redraw_timer_->isActive() || redraw_timer_->remainingTime() > 0) redraw_timer_->start(0);
    return;
  }
  if (redraw_timer_->isActive()) return;
  // A throttle, not a debounce: the first change after a quiet period draws at once, later
  // ones wait until `redraw_interval_` has passed since the last redraw.
  const qint64 since = since_redraw_.isValid() ? since_redraw_.elapsed() : redraw_interval_;
  redraw_timer_->start(static_cast<int>(std::max<qint64>(0, redraw_interval_ - since)));
}

void MetricPlot::flush() {
  redraw_timer_->stop();
  size_t drawn_before = 0, drawn_after = 0;
  for (auto& curve : curves_) {
    drawn_before += curve->shown;
    if (curve->dirty) append_points(*curve, curve->rebuild);
    curve->dirty = curve->rebuild = false;
    drawn_after += curve->shown;
  }
  // Only redraws that showed new points count for the throttle, so that the first points
  // after an empty redraw (a new plot) appear at once.
  if (drawn_after != drawn_before) since_redraw_.start();
  if (follow_) {
    // The x range comes from the full series; decimating over it keeps each curve's first,
    // last, lowest and highest points, so the y rescale below sees the true extremes.
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const auto& curve : curves_)
      if (!curve->xs.empty()) {
        lo = std::min(lo, curve->xs.front());
        hi = std::max(hi, curve->xs.back());
      }
    if (lo <= hi) {
      plot_->xAxis->setRange(lo, hi > lo ? hi : lo + 1.0);
      refresh_screen_data(false);
      plot_->rescaleAxes(true);
    }
    // A little room above and below, so that extremes do not run along the axis box (and a
    // flat curve does not get a zero-height range).
    const QCPRange y = plot_->yAxis->range();
    if (log_y_ && y.lower > 0)
      plot_->yAxis->setRange(y.lower / 1.1, y.upper * 1.1);
    else if (!log_y_)
      plot_->yAxis->setRange(
          y.size() > 0 ? QCPRange(y.lower - kYMargin * y.size(), y.upper + kYMargin * y.size())
                       : QCPRange(y.lower - 0.5, y.upper + 0.5));
  }
  plot_->replot();
  ++redraws_;
  emit redrawn();
}

void MetricPlot::rescale() {
  follow_ = true;
  flush();
}

void MetricPlot::update_crosshair(QMouseEvent* event) {
  if (curves_.empty() || !plot_->axisRect()->rect().contains(event->pos())) {
    if (crosshair_->visible()) {
      crosshair_->setVisible(false);
      readout_->setVisible(false);
      plot_->replot(QCustomPlot::rpQueuedReplot);
    }
    return;
  }
  const double x = plot_->xAxis->pixelToCoord(event->pos().x());
  crosshair_->point1->setCoords(x, 0);
  crosshair_->point2->setCoords(x, 1);
  crosshair_->setVisible(true);
  QStringList lines;
  double nearest_x = x;
  for (const auto& curve : curves_) {
    // Read from the full series: the graphs may hold only a decimated copy.
    const std::vector<double>& xs = curve->xs;
    if (xs.empty()) continue;
    auto it = std::lower_bound(xs.begin(), xs.end(), x);
    if (it == xs.end()) --it;
    if (it != xs.begin() && std::abs(*(it - 1) - x) < std::abs(*it - x)) --it;
    const size_t index = static_cast<size_t>(it - xs.begin());
    nearest_x = *it;
    lines << QStringLiteral("%1: %2")
                 .arg(curve->smooth->name())
                 .arg(curve->smoothed[index], 0, 'g', 5);
  }
  lines.prepend(QStringLiteral("%1 = %2").arg(plot_->xAxis->label()).arg(nearest_x, 0, 'g', 7));
  readout_->setText(lines.join('\n'));
  readout_->setColor(palette().color(QPalette::Text));
  readout_->setBrush(QBrush(faded(palette().color(QPalette::Base), 0.85)));
  readout_->setVisible(true);
  plot_->replot(QCustomPlot::rpQueuedReplot);
}

void MetricPlot::changeEvent(QEvent* event) {
  if (event->type() == QEvent::PaletteChange) {
    style_plot(plot_, palette());
    plot_->replot(QCustomPlot::rpQueuedReplot);
  }
  QWidget::changeEvent(event);
}

QStringList MetricPlotPanel::default_metrics() {
  return {"loss",  "loss/mse",     "loss/xent", "val/loss",     "lr",
          "ssd/p", "ssd/realised", "window",    "tokens_per_s", "memory_mb"};
}

MetricPlotPanel::MetricPlotPanel(RunStore* store, QWidget* parent)
    : QWidget(parent), plot_(new MetricPlot(store, this)) {
  metric_ = new QComboBox(this);
  metric_->setEditable(true);
  metric_->setAccessibleName(tr("Metric"));
  metric_->addItems(default_metrics());
  metric_->setMinimumContentsLength(14);
  connect(metric_, &QComboBox::currentTextChanged, plot_, [this](const QString& text) {
    if (!text.isEmpty()) plot_->set_metric(text);
  });

  x_axis_ = new QComboBox(this);
  x_axis_->setAccessibleName(tr("X axis"));
  x_axis_->addItem(tr("Step"), static_cast<int>(XAxis::step));
  x_axis_->addItem(tr("Tokens"), static_cast<int>(XAxis::tokens));
  x_axis_->addItem(tr("Wall time"), static_cast<int>(XAxis::wall_time));
  connect(x_axis_, &QComboBox::currentIndexChanged, plot_,
          [this](int) { plot_->set_x_axis(static_cast<XAxis>(x_axis_->currentData().toInt())); });

  smoothing_ = new QSlider(Qt::Horizontal, this);
  smoothing_->setAccessibleName(tr("Smoothing"));
  smoothing_->setRange(0, 99);
  smoothing_->setValue(60);
  smoothing_->setMaximumWidth(140);
  smoothing_->setToolTip(tr("EMA smoothing weight"));
  auto* smoothing_value = new QLabel(QStringLiteral("0.60"), this);
  connect(smoothing_, &QSlider::valueChanged, plot_, [this, smoothing_value](int value) {
    smoothing_value->setText(QString::number(value / 100.0, 'f', 2));
    plot_->set_smoothing(value / 100.0);
  });

  log_y_ = new QCheckBox(tr("Log y"), this);
  connect(log_y_, &QCheckBox::toggled, plot_, &MetricPlot::set_log_y);
  raw_ = new QCheckBox(tr("Raw"), this);
  raw_->setChecked(true);
  raw_->setToolTip(tr("Draw the unsmoothed curve faintly behind the smoothed one"));
  connect(raw_, &QCheckBox::toggled, plot_, &MetricPlot::set_show_raw);
  auto* fit = new QToolButton(this);
  fit->setText(tr("Fit"));
  fit->setToolTip(tr("Fit the axes to the data and follow new points (double-click the plot)"));
  fit->setAccessibleName(tr("Fit axes"));
  connect(fit, &QToolButton::clicked, plot_, &MetricPlot::rescale);

  auto* controls = new QHBoxLayout;
  controls->addWidget(new QLabel(tr("Metric"), this));
  controls->addWidget(metric_, 1);
  controls->addWidget(new QLabel(tr("X"), this));
  controls->addWidget(x_axis_);
  controls->addWidget(new QLabel(tr("Smoothing"), this));
  controls->addWidget(smoothing_);
  controls->addWidget(smoothing_value);
  controls->addWidget(raw_);
  controls->addWidget(log_y_);
  controls->addWidget(fit);
  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addLayout(controls);
  layout->addWidget(plot_, 1);
}

void MetricPlotPanel::set_log_y(bool log) {
  log_y_->setChecked(log);
}

void MetricPlotPanel::set_metric_keys(const QStringList& keys) {
  const QString current = metric_->currentText();
  QStringList all = default_metrics();
  for (const QString& key : keys)
    if (!all.contains(key)) all << key;
  QSignalBlocker blocker(metric_);
  metric_->clear();
  metric_->addItems(all);
  metric_->setCurrentText(current);
}

}  // namespace hl::ui
