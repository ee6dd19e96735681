// Live curves: points a writer commits arrive in the plot without a reload, smoothing
// matches a double-precision reference, x modes and several runs.
#include "ui/metric_plot.hpp"

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "ui/run_store.hpp"
#include "ui_test_util.hpp"

namespace hl::ui {
namespace {

using test::TempStore;
using test::wait_until;

TEST(EmaSmootherTest, MatchesTheBiasCorrectedRecurrence) {
  std::mt19937 rng(7);
  std::normal_distribution<double> noise(1.0, 0.5);
  for (double weight : {0.0, 0.3, 0.9, 0.99}) {
    EmaSmoother smoother(weight);
    long double average = 0, correction = 1;
    for (int i = 0; i < 500; ++i) {
      const double value = noise(rng);
      const double smoothed = smoother.push(value);
      average = weight * average + (1 - weight) * value;
      correction *= weight;
      const long double expected = weight == 0 ? value : average / (1 - correction);
      // Relative 1e-12: the recurrence in double against long double over 500 steps.
      EXPECT_NEAR(smoothed, static_cast<double>(expected),
                  1e-12 * std::abs(double(expected)) + 1e-15)
          << "weight " << weight << " step " << i;
    }
  }
  // A bucket mean standing for n rows smooths as n pushes of it.
  for (double weight : {0.0, 0.6, 0.99}) {
    EmaSmoother once(weight), repeated(weight);
    for (int i = 0; i < 40; ++i) {
      const double value = noise(rng);
      const int64_t count = 1 + i % 17;
      double pushed = 0;
      for (int64_t k = 0; k < count; ++k)
        pushed = repeated.push(value);
      EXPECT_NEAR(once.push_repeated(value, count), pushed, 1e-12 * std::abs(pushed) + 1e-15)
          << "weight " << weight << " bucket " << i;
    }
    EXPECT_TRUE(std::isnan(once.push_repeated(std::nan(""), 3)));
    EXPECT_TRUE(std::isnan(once.push_repeated(1.0, 0)));
  }
  // The first smoothed value is the first value (bias correction), and NaN passes through
  // without disturbing the average.
  EmaSmoother smoother(0.9);
  EXPECT_DOUBLE_EQ(smoother.push(4.0), 4.0);
  EXPECT_TRUE(std::isnan(smoother.push(std::nan(""))));
  EXPECT_DOUBLE_EQ(smoother.push(4.0), 4.0);
}

TEST(DecimateForScreenTest, KeepsEveryColumnsExtremesAndTheEdges) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> gap(0.01, 2.0), value(-5.0, 5.0), unit(0.0, 1.0);
  for (int round = 0; round < 20; ++round) {
    const size_t n = 5000 + 997 * static_cast<size_t>(round);
    std::vector<double> xs(n), ys(n);
    double x = -100.0 * unit(rng);
    for (size_t i = 0; i < n; ++i) {
      x += gap(rng);
      xs[i] = x;
      ys[i] = unit(rng) < 0.01 ? std::numeric_limits<double>::quiet_NaN() : value(rng);
    }
    const double lo = xs[n / 7] + 0.5 * unit(rng), hi = xs[n - n / 5] - 0.5 * unit(rng);
    const int columns = 50 + 37 * round;
    QVector<QCPGraphData> out;
    decimate_for_screen(xs, ys, lo, hi, columns, &out);
    ASSERT_LE(out.size(), 3 * columns + 2);
    // Every output point is an input point, in x order.
    for (qsizetype i = 0; i < out.size(); ++i) {
      if (i > 0) {
        ASSERT_LT(out[i - 1].key, out[i].key);
      }
      const auto at = std::lower_bound(xs.begin(), xs.end(), out[i].key);
      ASSERT_TRUE(at != xs.end() && *at == out[i].key);
      const double y = ys[static_cast<size_t>(at - xs.begin())];
      ASSERT_TRUE(y == out[i].value || (std::isnan(y) && std::isnan(out[i].value)));
    }
    // The nearest point beyond each end is there, so the line reaches the edges.
    const size_t first_in = std::lower_bound(xs.begin(), xs.end(), lo) - xs.begin();
    const size_t last_in = std::upper_bound(xs.begin(), xs.end(), hi) - xs.begin() - 1;
    EXPECT_EQ(out.front().key, xs[first_in - 1]);
    EXPECT_EQ(out.back().key, xs[last_in + 1]);
    // Per column, brute force over the input: the lowest and highest values and whether a
    // NaN (a gap in the line) occurs must match the output's.
    struct Column {
      double low = INFINITY, high = -INFINITY;
      bool gap = false;
    };
    auto columns_of = [&](auto&& points) {
      std::vector<Column> result(static_cast<size_t>(columns));
      for (auto [px, py] : points) {
        if (px < lo || px > hi) continue;
        const auto c = std::min<size_t>(static_cast<size_t>((px - lo) / (hi - lo) * columns),
                                        static_cast<size_t>(columns - 1));
        if (std::isnan(py)) {
          result[c].gap = true;
          continue;
        }
        result[c].low = std::min(result[c].low, py);
        result[c].high = std::max(result[c].high, py);
      }
      return result;
    };
    std::vector<std::pair<double, double>> input, output;
    for (size_t i = 0; i < n; ++i)
      input.emplace_back(xs[i], ys[i]);
    for (const QCPGraphData& point : out)
      output.emplace_back(point.key, point.value);
    const std::vector<Column> expected = columns_of(input), got = columns_of(output);
    for (int c = 0; c < columns; ++c) {
      EXPECT_EQ(got[size_t(c)].low, expected[size_t(c)].low) << "column " << c;
      EXPECT_EQ(got[size_t(c)].high, expected[size_t(c)].high) << "column " << c;
      EXPECT_EQ(got[size_t(c)].gap, expected[size_t(c)].gap) << "column " << c;
    }
  }
  // Few points: all of them, unchanged.
  const std::vector<double> xs{0, 1, 2, 3}, ys{4, 3, 2, 1};
  QVector<QCPGraphData> out;
  decimate_for_screen(xs, ys, 0.5, 2.5, 100, &out);
  ASSERT_EQ(out.size(), 4);
  EXPECT_EQ(out[3].value, 1.0);
}

class MetricPlotTest : public ::testing::Test {
 protected:
  void SetUp() override { runs.set_poll_interval(20); }
  TempStore temp;
  RunStore runs;
};

TEST_F(MetricPlotTest, PointsArriveWhileARunWrites) {
  store::RunWriter writer = temp.create("live");
  HL_ASSERT_OK(writer.set_status(store::RunStatus::running));
  for (int step = 0; step < 10; ++step)
    HL_ASSERT_OK(writer.log_scalar("loss", step, 10.0 - step));
  HL_ASSERT_OK(writer.flush());

  runs.open(temp.qpath());
  MetricPlot plot(&runs);
  plot.set_redraw_interval(10);
  plot.set_smoothing(0.0);
  ASSERT_TRUE(wait_until([&] { return !runs.runs().empty(); }));
  plot.set_runs({writer.run_id()});
  ASSERT_TRUE(wait_until([&] { return plot.drawn_points(writer.run_id()) == 10; }));

  const uint64_t redraws_before = plot.redraw_count();
  for (int step = 10; step < 25; ++step)
    HL_ASSERT_OK(writer.log_scalar("loss", step, 10.0 - step));
  HL_ASSERT_OK(writer.flush());
  ASSERT_TRUE(wait_until([&] { return plot.drawn_points(writer.run_id()) == 25; }));
  EXPECT_GT(plot.redraw_count(), redraws_before);
  QCPGraph* raw = plot.plot()->graph(0);
  EXPECT_DOUBLE_EQ((raw->data()->constEnd() - 1)->key, 24.0);
  EXPECT_DOUBLE_EQ((raw->data()->constEnd() - 1)->value, -14.0);
  // Only new rows were fetched: the store's copy has each step once.
  const SeriesData& series = runs.series({writer.run_id(), "loss"});
  ASSERT_EQ(series.points.size(), 25u);
  for (size_t i = 0; i < series.points.size(); ++i)
    EXPECT_EQ(series.points[i].step, int64_t(i));
  HL_ASSERT_OK(writer.close());
}

TEST_F(MetricPlotTest, OverlaysRunsAndSwitchesMetricAndXAxis) {
  store::RunWriter a = temp.create("a");
  store::RunWriter b = temp.create("b");
  HL_ASSERT_OK(a.set_params({{"data.batch_size", "2"}, {"data.seq_len", "8"}}));
  for (int step = 0; step < 20; ++step) {
    HL_ASSERT_OK(a.log_scalar("loss", step, 1.0 + step));
    HL_ASSERT_OK(b.log_scalar("loss", step * 2, 2.0 + step));
    HL_ASSERT_OK(a.log_scalar("lr", step, 0.01));
  }
  HL_ASSERT_OK(a.close());
  HL_ASSERT_OK(b.close());
  runs.open(temp.qpath());
  ASSERT_TRUE(wait_until([&] { return runs.runs().size() == 2; }));
  MetricPlot plot(&runs);
  plot.set_redraw_interval(5);
  plot.set_runs({a.run_id(), b.run_id()});
  ASSERT_TRUE(wait_until(
      [&] { return plot.drawn_points(a.run_id()) == 20 && plot.drawn_points(b.run_id()) == 20; }));
  EXPECT_EQ(plot.plot()->graphCount(), 4);  // raw + smoothed per run
  EXPECT_EQ(plot.plot()->legend->itemCount(), 2);

  plot.set_x_axis(XAxis::tokens);  // 2 x 8 = 16 tokens per step for run a
  EXPECT_DOUBLE_EQ((plot.plot()->graph(0)->data()->constEnd() - 1)->key, 19.0 * 16);
  plot.set_x_axis(XAxis::step);
  plot.set_metric("lr");
  ASSERT_TRUE(wait_until([&] { return plot.drawn_points(a.run_id()) == 20; }));
  EXPECT_EQ(plot.drawn_points(b.run_id()), 0);  // b never logged lr
  plot.set_log_y(true);
  EXPECT_EQ(plot.plot()->yAxis->scaleType(), QCPAxis::stLogarithmic);
}

TEST_F(MetricPlotTest, LongSeriesAreDownsampledOnFirstFetch) {
  store::RunWriter writer = temp.create("long", "lolcats", {.batch_rows = 100000});
  for (int step = 0; step < 60000; ++step)
    HL_ASSERT_OK(writer.log_scalar("loss", step, std::sin(step * 0.001)));
  HL_ASSERT_OK(writer.close());
  runs.open(temp.qpath());
  ASSERT_TRUE(wait_until([&] { return !runs.runs().empty(); }));
  MetricPlot plot(&runs);
  plot.set_runs({writer.run_id()});
  ASSERT_TRUE(wait_until([&] { return plot.drawn_points(writer.run_id()) > 0; }, 20000));
  const SeriesData& series = runs.series({writer.run_id(), "loss"});
  EXPECT_TRUE(series.downsampled);
  EXPECT_LE(series.points.size(), 20000u);
  EXPECT_EQ(series.points.back().step, 59999);
  // The extremes of the curve survive downsampling (min/max buckets).
  double high = -2, low = 2;
  for (const auto& point : series.points) {
    high = std::max(high, point.value);
    low = std::min(low, point.value);
  }
  EXPECT_NEAR(high, 1.0, 1e-6);
  EXPECT_NEAR(low, -1.0, 1e-6);
}

TEST_F(MetricPlotTest, LongCurvesReachTheScreenDecimatedAndZoomRefinesThem) {
  store::RunWriter writer = temp.create("long", "lolcats", {.batch_rows = 100000});
  for (int step = 0; step < 20000; ++step)
    HL_ASSERT_OK(writer.log_scalar("loss", step, std::sin(step * 0.01) + (step % 7) * 0.01));
  HL_ASSERT_OK(writer.close());
  runs.open(temp.qpath());
  ASSERT_TRUE(wait_until([&] { return !runs.runs().empty(); }));
  MetricPlot plot(&runs);
  plot.resize(800, 500);
  plot.show();
  plot.set_runs({writer.run_id()});
  ASSERT_TRUE(wait_until([&] { return plot.drawn_points(writer.run_id()) == 20000; }, 20000));
  // Two graphs of at most ~3 points per pixel column, not 2 x 20000 points.
  const int width = plot.plot()->axisRect()->width();
  EXPECT_LE(plot.plotted_points(), 2 * (3 * std::max(width, 400) + 2));
  EXPECT_DOUBLE_EQ(plot.plot()->xAxis->range().upper, 19999.0);
  // The y range holds the true extremes (about -1 and 1.06), with a margin of a few percent.
  const QCPRange y = plot.plot()->yAxis->range();
  EXPECT_GT(y.upper, 1.06 - 1e-3);
  EXPECT_LT(y.upper, 1.06 + 0.05 * y.size());
  EXPECT_LT(y.lower, -1.0 + 1e-3);
  EXPECT_GT(y.lower, -1.0 - 0.05 * y.size());
  // Zoomed to 200 steps, every point in view is drawn.
  plot.plot()->xAxis->setRange(1000, 1200);
  plot.plot()->replot();
  QSharedPointer<QCPGraphDataContainer> raw = plot.plot()->graph(0)->data();
  int in_view = 0;
  for (auto it = raw->constBegin(); it != raw->constEnd(); ++it)
    if (it->key >= 1000 && it->key <= 1200) ++in_view;
  EXPECT_EQ(in_view, 201);
}

TEST_F(MetricPlotTest, APlotAgainComesFromTheCacheAndFetchesOnlyNewRows) {
  store::RunWriter writer = temp.create("live");
  for (int step = 0; step < 100; ++step)
    HL_ASSERT_OK(writer.log_scalar("loss", step, 1.0 / (1 + step)));
  HL_ASSERT_OK(writer.flush());
  runs.open(temp.qpath());
  ASSERT_TRUE(wait_until([&] { return !runs.runs().empty(); }));
  {
    MetricPlot first(&runs);
    first.set_runs({writer.run_id()});
    ASSERT_TRUE(wait_until([&] { return first.drawn_points(writer.run_id()) == 100; }));
  }
  EXPECT_EQ(runs.cached_series(), 1u);
  for (int step = 100; step < 150; ++step)
    HL_ASSERT_OK(writer.log_scalar("loss", step, 1.0 / (1 + step)));
  HL_ASSERT_OK(writer.flush());
  MetricPlot again(&runs);
  again.set_redraw_interval(5);
  again.set_runs({writer.run_id()});
  EXPECT_EQ(again.drawn_points(writer.run_id()), 100);  // at once, before any fetch
  EXPECT_EQ(runs.cached_series(), 0u);
  ASSERT_TRUE(wait_until([&] { return again.drawn_points(writer.run_id()) == 150; }));
  const SeriesData& series = runs.series({writer.run_id(), "loss"});
  ASSERT_EQ(series.points.size(), 150u);
  for (size_t i = 0; i < series.points.size(); ++i)
    EXPECT_EQ(series.points[i].step, int64_t(i));
  // A full cache drops the least recently used series.
  runs.set_cache_capacity(0);
  HL_ASSERT_OK(writer.close());
}

// Lowest and highest value per pixel column of points decimated to `columns` over [lo, hi].
std::vector<std::pair<double, double>> column_extremes(const QVector<QCPGraphData>& points,
                                                       double lo, double hi, int columns) {
  std::vector<std::pair<double, double>> extremes(static_cast<size_t>(columns),
                                                  {INFINITY, -INFINITY});
  for (const QCPGraphData& point : points) {
    if (point.key < lo || point.key > hi || std::isnan(point.value)) continue;
    const auto c = std::min<size_t>(static_cast<size_t>((point.key - lo) / (hi - lo) * columns),
                                    static_cast<size_t>(columns - 1));
    extremes[c].first = std::min(extremes[c].first, point.value);
    extremes[c].second = std::max(extremes[c].second, point.value);
  }
  return extremes;
}

TEST_F(MetricPlotTest, LongSeriesShowBucketSummariesFirstThenTheirRows) {
  store::RunWriter writer = temp.create("long", "lolcats", {.batch_rows = 100000});
  std::mt19937 rng(3);
  std::normal_distribution<double> noise(0.0, 0.3);
  std::vector<double> xs, ys;
  for (int step = 0; step < 20000; ++step) {
    const double value = step % 1500 == 700 ? NAN : std::sin(step * 0.003) + noise(rng);
    HL_ASSERT_OK(writer.log_scalar("loss", step, value));
    xs.push_back(step);
    ys.push_back(value);
  }
  HL_ASSERT_OK(writer.close());
  runs.open(temp.qpath());
  ASSERT_TRUE(wait_until([&] { return !runs.runs().empty(); }));
  MetricPlot plot(&runs);
  plot.resize(800, 500);
  plot.show();
  const int64_t run = writer.run_id();

  // What the store announces, and what the plot draws at the first announcement.
  struct Seen {
    bool summaries;
    size_t points;
    int first_new;
  };
  std::vector<Seen> seen;
  QVector<QCPGraphData> first_raw, first_smooth;
  bool first_provisional = false;
  std::vector<store::ScalarPoint> first_points;
  QObject::connect(&runs, &RunStore::seriesAppended, &plot,
                   [&](const SeriesKey& key, int first_new) {
                     const SeriesData& series = runs.series(key);
                     seen.push_back({!series.spans.empty(), series.points.size(), first_new});
                     if (seen.size() != 1) return;
                     plot.flush();  // draw this state now, before the rows can replace it
                     first_provisional = plot.provisional(run);
                     first_points = series.points;
                     for (auto it = plot.plot()->graph(0)->data()->constBegin();
                          it != plot.plot()->graph(0)->data()->constEnd(); ++it)
                       first_raw.append(*it);
                     for (auto it = plot.plot()->graph(1)->data()->constBegin();
                          it != plot.plot()->graph(1)->data()->constEnd(); ++it)
                       first_smooth.append(*it);
                   });
  plot.set_runs({run});
  ASSERT_TRUE(
      wait_until([&] { return plot.drawn_points(run) == 20000 && !plot.provisional(run); }, 20000));

  // First the bucket summaries (a few points per 16-step bucket), then the 20,000 rows.
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen[0].summaries);
  EXPECT_EQ(seen[0].first_new, 0);
  EXPECT_LT(seen[0].points, 20000u / 16 * 5 + 1);
  EXPECT_FALSE(seen[1].summaries);
  EXPECT_EQ(seen[1].points, 20000u);
  EXPECT_EQ(seen[1].first_new, 0);
  EXPECT_TRUE(first_provisional);
  EXPECT_EQ(first_points.back().step, 19999);

  // The first view draws true rows only.
  ASSERT_FALSE(first_raw.isEmpty());
  for (const QCPGraphData& point : first_raw) {
    const auto step = static_cast<size_t>(point.key);
    ASSERT_EQ(point.key, static_cast<double>(step));
    ASSERT_TRUE(point.value == ys[step] || (std::isnan(point.value) && std::isnan(ys[step])));
  }
  // Decimated for the screen, the summaries reach each pixel column's lowest and highest
  // value within one column either side: their buckets are narrower than a column, and each
  // keeps its lowest and highest row.
  const int columns = plot.plot()->axisRect()->width();
  ASSERT_GT(columns, 16);
  ASSERT_LE(16.0 * columns, 20000.0);
  QVector<QCPGraphData> full, summarised;
  decimate_for_screen(xs, ys, 0, 19999, columns, &full);
  std::vector<double> first_xs, first_ys;
  for (const store::ScalarPoint& point : first_points) {
    first_xs.push_back(static_cast<double>(point.step));
    first_ys.push_back(point.value);
  }
  decimate_for_screen(first_xs, first_ys, 0, 19999, columns, &summarised);
  const auto want = column_extremes(full, 0, 19999, columns);
  const auto got = column_extremes(summarised, 0, 19999, columns);
  double low = INFINITY, high = -INFINITY, first_low = INFINITY, first_high = -INFINITY;
  for (int c = 0; c < columns; ++c) {
    const size_t at = static_cast<size_t>(c);
    double near_low = INFINITY, near_high = -INFINITY;
    for (size_t n = at == 0 ? 0 : at - 1; n <= std::min(at + 1, size_t(columns - 1)); ++n) {
      near_low = std::min(near_low, got[n].first);
      near_high = std::max(near_high, got[n].second);
    }
    EXPECT_LE(near_low, want[at].first) << "column " << c;
    EXPECT_GE(near_high, want[at].second) << "column " << c;
    low = std::min(low, want[at].first);
    high = std::max(high, want[at].second);
    first_low = std::min(first_low, got[at].first);
    first_high = std::max(first_high, got[at].second);
  }
  EXPECT_EQ(first_low, low);
  EXPECT_EQ(first_high, high);
  // ... and the plot drew them: its y axis fits the same range.
  double drawn_low = INFINITY, drawn_high = -INFINITY;
  for (const QCPGraphData& point : first_raw)
    if (!std::isnan(point.value)) {
      drawn_low = std::min(drawn_low, point.value);
      drawn_high = std::max(drawn_high, point.value);
    }
  EXPECT_EQ(drawn_low, low);
  EXPECT_EQ(drawn_high, high);
  // The provisional smoothed curve runs over the bucket means: within the data's range.
  ASSERT_FALSE(first_smooth.isEmpty());
  for (const QCPGraphData& point : first_smooth)
    if (!std::isnan(point.value)) {
      EXPECT_GE(point.value, low);
      EXPECT_LE(point.value, high);
    }

  // With the rows, the smoothed curve is the EMA of every row again.
  EmaSmoother exact(0.6);
  std::vector<double> smoothed;
  for (double y : ys)
    smoothed.push_back(exact.push(y));
  QSharedPointer<QCPGraphDataContainer> smooth = plot.plot()->graph(1)->data();
  ASSERT_GT(smooth->size(), 100);
  for (auto it = smooth->constBegin(); it != smooth->constEnd(); ++it) {
    const double expected = smoothed[static_cast<size_t>(it->key)];
    ASSERT_TRUE(it->value == expected || (std::isnan(it->value) && std::isnan(expected)))
        << "step " << it->key;
  }
  EXPECT_EQ(plot.last_drawn_step(run), 19999);
}

}  // namespace
}  // namespace hl::ui
