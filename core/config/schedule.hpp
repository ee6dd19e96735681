// Values that change over a training stage (SSD dropout probability, window size).
#pragma once

#include <cstdint>
#include <vector>

namespace hl {

/// One explicit schedule point: from `step` on (0-based, within the stage) the value is `value`.
struct SchedulePoint {
  int64_t step = 0;
  double value = 0.0;

  bool operator==(const SchedulePoint&) const = default;
};

/// A stage-long schedule in one of two forms: `values` spread over equal parts of the stage
/// (TOML `[0.9, 0.75, 0.5]`), or explicit `points` (TOML `[[0, 0.9], [100, 0.5]]`).
/// Exactly one of the two is non-empty in a valid spec.
struct Schedule {
  std::vector<double> values;
  std::vector<SchedulePoint> points;

  bool operator==(const Schedule&) const = default;
};

/// The schedule's value at 0-based `step` of a stage of `total_steps` steps.
/// List form: value k of K applies to steps in [k*S/K, (k+1)*S/K). Points form: piecewise
/// constant from each point's step. Steps before the start use the first value, steps at or
/// after the end the last one. The schedule must not be empty.
double schedule_value(const Schedule& schedule, int64_t step, int64_t total_steps);

}  // namespace hl
