// The branch-usage heatmap filled from a real store: every cell is the logged layer mean,
// per-head bars and window factors come from the chosen step, two runs side by side.
#include "ui/usage_heatmap.hpp"

#include <qcustomplot.h>

#include <random>

#include "ui/run_store.hpp"
#include "ui_test_util.hpp"

namespace hl::ui {
namespace {

using test::TempStore;
using test::wait_until;

constexpr int kLayers = 4, kHeads = 3, kSteps = 5;

// value[step][layer][head], random in (0, 1).
using Usage = std::vector<std::vector<std::vector<double>>>;

Usage write_usage(store::RunWriter& writer, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> uniform(0.05, 0.95);
  Usage usage(kSteps, std::vector<std::vector<double>>(kLayers, std::vector<double>(kHeads)));
  for (int s = 0; s < kSteps; ++s) {
    for (int l = 0; l < kLayers; ++l) {
      double mean = 0;
      for (int h = 0; h < kHeads; ++h) {
        usage[s][l][h] = uniform(rng);
        mean += usage[s][l][h] / kHeads;
        EXPECT_TRUE(
            writer.log_layer_scalar("usage/linear_mass", s * 10, l, h, usage[s][l][h]).ok());
      }
      EXPECT_TRUE(writer.log_layer_scalar("usage/linear_mass", s * 10, l, -1, mean).ok());
      EXPECT_TRUE(
          writer.log_layer_scalar("usage/window_factor", s * 10, l, -1, 0.1 + 0.01 * l + s).ok());
    }
  }
  return usage;
}

TEST(UsageHeatmapTest, FillsCellsFromTheStore) {
  TempStore temp;
  store::RunWriter a = temp.create("lolcats");
  store::RunWriter b = temp.create("lolcats+ssd");
  const Usage usage_a = write_usage(a, 1);
  const Usage usage_b = write_usage(b, 2);
  HL_ASSERT_OK(a.close());
  HL_ASSERT_OK(b.close());

  RunStore runs;
  runs.open(temp.qpath());
  ASSERT_TRUE(wait_until([&] { return runs.runs().size() == 2; }));
  UsageHeatmap heatmap(&runs);
  heatmap.resize(900, 600);
  bool loaded = false;
  QObject::connect(&heatmap, &UsageHeatmap::loaded, [&] { loaded = true; });
  heatmap.set_runs({a.run_id(), b.run_id()});
  ASSERT_TRUE(wait_until([&] { return loaded && heatmap.pending_loads() == 0; }));

  for (int side = 0; side < 2; ++side) {
    const Usage& usage = side == 0 ? usage_a : usage_b;
    QCPColorMapData* data = heatmap.color_map(side)->data();
    ASSERT_EQ(data->keySize(), kSteps);
    ASSERT_EQ(data->valueSize(), kLayers);
    EXPECT_DOUBLE_EQ(data->keyRange().lower, 0);
    EXPECT_DOUBLE_EQ(data->keyRange().upper, (kSteps - 1) * 10);
    for (int s = 0; s < kSteps; ++s) {
      for (int l = 0; l < kLayers; ++l) {
        double mean = 0;
        for (int h = 0; h < kHeads; ++h)
          mean += usage[s][l][h] / kHeads;
        // Stored as REAL: exact double round trip.
        EXPECT_DOUBLE_EQ(data->cell(s, l), mean)
            << "side " << side << " step " << s << " layer " << l;
      }
    }
  }

  // Per-head bars at step 20, layer 2; window factors per layer at that step.
  loaded = false;
  heatmap.set_selection(21, 2);  // nearest logged step is 20
  ASSERT_TRUE(wait_until([&] { return loaded && heatmap.pending_loads() == 0; }));
  QList<QCPBars*> bars;
  for (int i = 0; i < heatmap.plot()->plottableCount(); ++i)
    if (auto* one = qobject_cast<QCPBars*>(heatmap.plot()->plottable(i))) bars << one;
  ASSERT_EQ(bars.size(), 4);  // heads and factors, for each side
  QCPBars* heads_a = bars[0];
  ASSERT_EQ(heads_a->data()->size(), kHeads);
  for (int h = 0; h < kHeads; ++h)
    EXPECT_DOUBLE_EQ(heads_a->data()->at(h)->value, usage_a[2][2][h]);
  QCPBars* factors_a = bars[1];
  ASSERT_EQ(factors_a->data()->size(), kLayers);
  for (int l = 0; l < kLayers; ++l)
    EXPECT_DOUBLE_EQ(factors_a->data()->at(l)->value, 0.1 + 0.01 * l + 2);
}

TEST(UsageHeatmapTest, ARunWithoutUsageRowsShowsAnEmptyMap) {
  TempStore temp;
  store::RunWriter a = temp.create("no usage yet");
  HL_ASSERT_OK(a.log_scalar("loss", 0, 1.0));
  HL_ASSERT_OK(a.close());
  RunStore runs;
  runs.open(temp.qpath());
  ASSERT_TRUE(wait_until([&] { return runs.runs().size() == 1; }));
  UsageHeatmap heatmap(&runs);
  bool loaded = false;
  QObject::connect(&heatmap, &UsageHeatmap::loaded, [&] { loaded = true; });
  heatmap.set_runs({a.run_id()});
  ASSERT_TRUE(wait_until([&] { return loaded && heatmap.pending_loads() == 0; }));
  ASSERT_TRUE(heatmap.matrix(0).has_value());
  EXPECT_TRUE(heatmap.matrix(0)->layers.empty());
  EXPECT_EQ(heatmap.color_map(0)->data()->keySize(), 1);
}

}  // namespace
}  // namespace hl::ui
