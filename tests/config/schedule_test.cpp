#include "core/config/schedule.hpp"

#include <gtest/gtest.h>

#include <random>

namespace hl {
namespace {

TEST(ScheduleValue, ListFormSplitsTheStageIntoEqualParts) {
  const Schedule schedule{{0.9, 0.75, 0.5}, {}};
  // 100 steps in thirds: [0, 33.3) -> 0.9, [33.3, 66.7) -> 0.75, [66.7, 100) -> 0.5.
  EXPECT_EQ(schedule_value(schedule, 0, 100), 0.9);
  EXPECT_EQ(schedule_value(schedule, 33, 100), 0.9);
  EXPECT_EQ(schedule_value(schedule, 34, 100), 0.75);
  EXPECT_EQ(schedule_value(schedule, 66, 100), 0.75);
  EXPECT_EQ(schedule_value(schedule, 67, 100), 0.5);
  EXPECT_EQ(schedule_value(schedule, 99, 100), 0.5);
  // Exact boundaries: 90 steps in thirds switch at 30 and 60.
  EXPECT_EQ(schedule_value(schedule, 29, 90), 0.9);
  EXPECT_EQ(schedule_value(schedule, 30, 90), 0.75);
  EXPECT_EQ(schedule_value(schedule, 59, 90), 0.75);
  EXPECT_EQ(schedule_value(schedule, 60, 90), 0.5);
}

TEST(ScheduleValue, ListFormMatchesTheIntervalDefinitionOnRandomStages) {
  std::mt19937_64 rng(20251);
  for (int trial = 0; trial < 2000; ++trial) {
    const int64_t parts = std::uniform_int_distribution<int64_t>(1, 9)(rng);
    const int64_t total = std::uniform_int_distribution<int64_t>(1, 5000)(rng);
    const int64_t step = std::uniform_int_distribution<int64_t>(0, total - 1)(rng);
    Schedule schedule;
    for (int64_t k = 0; k < parts; ++k)
      schedule.values.push_back(double(k));
    const auto k = static_cast<int64_t>(schedule_value(schedule, step, total));
    // value k applies to steps in [k*S/K, (k+1)*S/K), compared without division.
    EXPECT_LE(k * total, step * parts) << step << "/" << total << " in " << parts;
    EXPECT_LT(step * parts, (k + 1) * total) << step << "/" << total << " in " << parts;
  }
}

TEST(ScheduleValue, ListFormWithMorePartsThanStepsStillCoversEveryStep) {
  const Schedule schedule{{1, 2, 3, 4, 5}, {}};
  EXPECT_EQ(schedule_value(schedule, 0, 2), 1);
  EXPECT_EQ(schedule_value(schedule, 1, 2), 3);  // 1*5/2 = 2.5 -> part 2
}

TEST(ScheduleValue, OutsideTheStageUsesTheEndValues) {
  const Schedule schedule{{0.9, 0.5}, {}};
  EXPECT_EQ(schedule_value(schedule, -5, 10), 0.9);
  EXPECT_EQ(schedule_value(schedule, 10, 10), 0.5);
  EXPECT_EQ(schedule_value(schedule, 1000, 10), 0.5);
}

TEST(ScheduleValue, HugeStepCountsDoNotOverflow) {
  const Schedule schedule{{1, 2, 3}, {}};
  const int64_t total = int64_t{3} << 60;
  EXPECT_EQ(schedule_value(schedule, (int64_t{1} << 60) - 1, total), 1);
  EXPECT_EQ(schedule_value(schedule, int64_t{1} << 60, total), 2);
  EXPECT_EQ(schedule_value(schedule, total - 1, total), 3);
}

TEST(ScheduleValue, PointsFormIsPiecewiseConstantFromEachPoint) {
  const Schedule schedule{{}, {{0, 0.9}, {10, 0.75}, {25, 0.5}}};
  EXPECT_EQ(schedule_value(schedule, 0, 100), 0.9);
  EXPECT_EQ(schedule_value(schedule, 9, 100), 0.9);
  EXPECT_EQ(schedule_value(schedule, 10, 100), 0.75);
  EXPECT_EQ(schedule_value(schedule, 24, 100), 0.75);
  EXPECT_EQ(schedule_value(schedule, 25, 100), 0.5);
  EXPECT_EQ(schedule_value(schedule, 99, 100), 0.5);
  EXPECT_EQ(schedule_value(schedule, 500, 100), 0.5);
  EXPECT_EQ(schedule_value(schedule, -1, 100), 0.9);
}

TEST(ScheduleValue, SingleValueIsConstant) {
  const Schedule list{{0.3}, {}};
  const Schedule point{{}, {{0, 0.3}}};
  for (int64_t step : {0, 1, 50, 99}) {
    EXPECT_EQ(schedule_value(list, step, 100), 0.3);
    EXPECT_EQ(schedule_value(point, step, 100), 0.3);
  }
}

}  // namespace
}  // namespace hl
