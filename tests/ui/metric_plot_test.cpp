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

}  // namespace
}  // namespace hl::ui
