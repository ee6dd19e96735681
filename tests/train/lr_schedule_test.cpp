#include <gtest/gtest.h>

#include <cmath>

#include "core/train/lr_schedule.hpp"

namespace hl::train {
namespace {

TEST(LrSchedule, ConstantWithWarmupRampsThenHolds) {
  LrSchedule schedule(LrScheduleKind::constant, 1e-3, 100, 4, 0.1, 10);
  EXPECT_DOUBLE_EQ(schedule.lr_at(0), 1e-3 * 1 / 5);
  EXPECT_DOUBLE_EQ(schedule.lr_at(3), 1e-3 * 4 / 5);
  EXPECT_DOUBLE_EQ(schedule.lr_at(4), 1e-3);
  EXPECT_DOUBLE_EQ(schedule.lr_at(99), 1e-3);
}

TEST(LrSchedule, CosineFallsFromBaseToZero) {
  LrSchedule schedule(LrScheduleKind::cosine, 2.0, 110, 10, 0.1, 10);
  EXPECT_DOUBLE_EQ(schedule.lr_at(10), 2.0);
  EXPECT_NEAR(schedule.lr_at(60), 1.0, 1e-12);  // half way: cos(pi/2) = 0
  EXPECT_NEAR(schedule.lr_at(110), 0.0, 1e-12);
  EXPECT_GT(schedule.lr_at(30), schedule.lr_at(31));
}

TEST(LrSchedule, PlateauReducesAfterPatienceBadEvaluations) {
  LrSchedule schedule(LrScheduleKind::plateau, 1e-2, 1000, 0, 0.1, 2);
  EXPECT_FALSE(schedule.report_validation(5.0));
  EXPECT_FALSE(schedule.report_validation(4.0));  // improvement
  EXPECT_FALSE(schedule.report_validation(4.0));  // bad 1
  EXPECT_FALSE(schedule.report_validation(4.1));  // bad 2
  EXPECT_TRUE(schedule.report_validation(4.2));   // bad 3 > patience
  EXPECT_NEAR(schedule.lr_at(500), 1e-3, 1e-15);
  EXPECT_EQ(schedule.state().reductions, 1);

  LrSchedule resumed(LrScheduleKind::plateau, 1e-2, 1000, 0, 0.1, 2);
  resumed.restore(schedule.state());
  EXPECT_DOUBLE_EQ(resumed.lr_at(500), schedule.lr_at(500));
}

TEST(LrSchedule, ParsesKnownNamesOnly) {
  LrScheduleKind kind;
  EXPECT_TRUE(parse_lr_schedule("cosine", &kind));
  EXPECT_EQ(kind, LrScheduleKind::cosine);
  EXPECT_FALSE(parse_lr_schedule("linear", &kind));
}

}  // namespace
}  // namespace hl::train
