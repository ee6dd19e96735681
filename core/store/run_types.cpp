#include "core/store/run_types.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <set>

namespace hl::store {

std::string_view to_string(RunStatus status) {
  switch (status) {
    case RunStatus::pending:
      return "pending";
    case RunStatus::running:
      return "running";
    case RunStatus::completed:
      return "completed";
    case RunStatus::failed:
      return "failed";
    case RunStatus::cancelled:
      return "cancelled";
  }
  return "unknown";
}

std::optional<RunStatus> parse_run_status(std::string_view text) {
  for (RunStatus status : {RunStatus::pending, RunStatus::running, RunStatus::completed,
                           RunStatus::failed, RunStatus::cancelled})
    if (to_string(status) == text) return status;
  return std::nullopt;
}

bool is_terminal(RunStatus status) {
  return status == RunStatus::completed || status == RunStatus::failed ||
         status == RunStatus::cancelled;
}

double ScalarBucket::mean() const {
  return numbers > 0 ? sum / static_cast<double>(numbers)
                     : std::numeric_limits<double>::quiet_NaN();
}

void ScalarBucket::add(const ScalarPoint& point) {
  if (count++ == 0) first = point;
  last = point;
  if (std::isnan(point.value)) {
    if (!first_nan) first_nan = point;
    return;
  }
  ++numbers;
  sum += point.value;
  if (!low || point.value < low->value) low = point;
  if (!high || point.value > high->value) high = point;
}

void ScalarBucket::merge(const ScalarBucket& later) {
  if (later.count == 0) return;
  if (count == 0) {
    const int keep_level = level;
    const int64_t keep_bucket = bucket;
    *this = later;
    level = keep_level;
    bucket = keep_bucket;
    return;
  }
  count += later.count;
  last = later.last;
  if (!first_nan) first_nan = later.first_nan;
  if (later.numbers == 0) return;
  numbers += later.numbers;
  sum += later.sum;
  if (!low || later.low->value < low->value) low = later.low;
  if (!high || later.high->value > high->value) high = later.high;
}

void ScalarBucket::append_points(std::vector<ScalarPoint>& out) const {
  if (count == 0) return;
  std::array<ScalarPoint, 5> kept;
  size_t n = 0;
  kept[n++] = first;
  for (const std::optional<ScalarPoint>& point : {low, high, first_nan})
    if (point) kept[n++] = *point;
  kept[n++] = last;
  for (size_t i = 1; i < n; ++i)  // insertion sort by step: five at most
    for (size_t j = i; j > 0 && kept[j].step < kept[j - 1].step; --j)
      std::swap(kept[j], kept[j - 1]);
  for (size_t i = 0; i < n; ++i)
    if (i == 0 || kept[i].step != kept[i - 1].step) out.push_back(kept[i]);
}

std::vector<std::string> ParamComparison::differing_keys() const {
  std::vector<std::string> keys;
  for (const Row& row : rows)
    if (row.differs) keys.push_back(row.key);
  return keys;
}

ParamComparison compare_params(const std::vector<std::map<std::string, std::string>>& runs) {
  std::set<std::string> keys;
  for (const auto& params : runs)
    for (const auto& [key, value] : params)
      keys.insert(key);
  ParamComparison comparison;
  for (const std::string& key : keys) {
    ParamComparison::Row row{key, {}, false};
    for (const auto& params : runs) {
      auto it = params.find(key);
      row.values.push_back(it == params.end() ? std::nullopt
                                              : std::optional<std::string>(it->second));
    }
    for (const auto& value : row.values)
      if (value != row.values.front()) row.differs = true;
    comparison.rows.push_back(std::move(row));
  }
  return comparison;
}

}  // namespace hl::store
