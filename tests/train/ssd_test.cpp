#include <gtest/gtest.h>

#include <cmath>

#include "core/train/ssd.hpp"

namespace hl::train {
namespace {

// Over n independent units the realised drop rate lies within 5 standard deviations of p
// (a false failure has probability < 1e-6).
void expect_binomial(int64_t dropped, int64_t units, double p) {
  const double mean = p * double(units);
  const double sd = std::sqrt(double(units) * p * (1 - p));
  EXPECT_NEAR(double(dropped), mean, 5 * sd + 1e-9) << units << " units at p=" << p;
}

TEST(SsdSampler, RealisedRateWithinBinomialBoundsForEveryGranularity) {
  for (auto granularity : {SsdGranularity::step, SsdGranularity::layer, SsdGranularity::head,
                           SsdGranularity::sequence}) {
    for (double p : {0.9, 0.5, 0.25}) {
      SsdSampler sampler(granularity, 1234);
      int64_t dropped = 0, units = 0;
      for (int step = 0; step < 400; ++step) {
        SsdDraw draw = sampler.draw(p, 3, 4, 5);
        dropped += draw.dropped_units;
        units += draw.units;
      }
      expect_binomial(dropped, units, p);
    }
  }
}

TEST(SsdSampler, MasksFollowTheGranularity) {
  SsdSampler by_head(SsdGranularity::head, 7);
  SsdDraw draw = by_head.draw(0.5, 2, 3, 8);
  ASSERT_EQ(draw.masks.size(), 2u);
  for (const auto& mask : draw.masks) {
    ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{3, 8}));
    // Every sequence of the batch shares the head's decision.
    EXPECT_TRUE(torch::equal(mask[0], mask[1]));
    EXPECT_TRUE(torch::equal(mask[0], mask[2]));
  }
  SsdSampler by_sequence(SsdGranularity::sequence, 7);
  for (const auto& mask : by_sequence.draw(0.5, 2, 6, 4).masks)
    for (int64_t b = 0; b < 6; ++b)
      EXPECT_TRUE(mask[b].all().item<bool>() || !mask[b].any().item<bool>());
  SsdSampler by_step(SsdGranularity::step, 7);
  for (int i = 0; i < 20; ++i) {
    SsdDraw whole = by_step.draw(0.5, 3, 2, 2);
    bool first = whole.masks[0].any().item<bool>();
    for (const auto& mask : whole.masks) {
      EXPECT_EQ(mask.all().item<bool>(), first);
      EXPECT_EQ(mask.any().item<bool>(), first);
    }
  }
}

TEST(SsdSampler, ExtremesAndResumeAreExact) {
  SsdSampler sampler(SsdGranularity::layer, 99);
  EXPECT_EQ(sampler.draw(0.0, 4, 1, 1).dropped_units, 0);
  EXPECT_EQ(sampler.draw(1.0, 4, 1, 1).dropped_units, 4);
  std::string saved = sampler.save_state();
  SsdDraw next = sampler.draw(0.5, 16, 1, 1);
  SsdSampler resumed(SsdGranularity::layer, 0);
  ASSERT_TRUE(resumed.restore_state(saved));
  SsdDraw again = resumed.draw(0.5, 16, 1, 1);
  for (size_t i = 0; i < next.masks.size(); ++i)
    EXPECT_TRUE(torch::equal(next.masks[i], again.masks[i]));
}

TEST(SsdSampler, RejectsProbabilityOutsideUnitInterval) {
  SsdSampler sampler(SsdGranularity::layer, 1);
  EXPECT_THROW(sampler.draw(1.5, 1, 1, 1), c10::Error);
}

}  // namespace
}  // namespace hl::train
