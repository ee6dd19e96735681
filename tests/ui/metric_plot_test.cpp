// Live curves: points a writer commits arrive in the plot without a reload, smoothing
// matches a double-precision reference, x modes and several runs.
#include "ui/metric_plot.hpp"

#include <qcustomplot.h>

#include <cmath>
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

}  // namespace
}  // namespace hl::ui
