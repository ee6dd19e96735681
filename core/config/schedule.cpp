#include "core/config/schedule.hpp"

#include <cassert>
#include <cstddef>

namespace hl {

double schedule_value(const Schedule& schedule, int64_t step, int64_t total_steps) {
  assert(!schedule.values.empty() || !schedule.points.empty());
  if (!schedule.points.empty()) {
    double value = schedule.points.front().value;
    for (const SchedulePoint& point : schedule.points) {
      if (point.step > step) break;
      value = point.value;
    }
    return value;
  }
  if (schedule.values.empty()) return 0.0;
  const auto parts = static_cast<int64_t>(schedule.values.size());
  if (step <= 0 || total_steps <= 0) return schedule.values.front();
  if (step >= total_steps) return schedule.values.back();
  // step is in part k exactly when k*S <= step*K < (k+1)*S; 128-bit so huge step counts
  // cannot overflow the product.
  const auto part = static_cast<int64_t>(static_cast<__int128>(step) * parts / total_steps);
  return schedule.values[static_cast<std::size_t>(part)];
}

}  // namespace hl
