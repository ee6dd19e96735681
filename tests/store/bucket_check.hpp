// Brute-force bucket summaries for the tests: computed here, independently of the store's
// code, from a series' rows, and compared with what the store keeps.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/store/run_reader.hpp"

namespace hl::store::testing {

inline bool same_value(double a, double b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

inline bool same_point(const std::optional<ScalarPoint>& a, const std::optional<ScalarPoint>& b) {
  if (a.has_value() != b.has_value()) return false;
  return !a || (a->step == b->step && a->wall_ms == b->wall_ms && same_value(a->value, b->value));
}

inline std::string describe(const std::optional<ScalarPoint>& point) {
  if (!point) return "none";
  return "(" + std::to_string(point->step) + ", " + std::to_string(point->wall_ms) + ", " +
         std::to_string(point->value) + ")";
}

// Floor division, written out separately from the store's bucket_of.
inline int64_t floor_div(int64_t step, int64_t width) {
  return static_cast<int64_t>(std::floor(static_cast<long double>(step) / width));
}

/// The buckets of one level over rows in step order, the slow and obvious way.
inline std::vector<ScalarBucket> brute_force_buckets(const std::vector<ScalarPoint>& rows,
                                                     int level) {
  const int64_t width = kBucketWidths[static_cast<size_t>(level)];
  std::map<int64_t, std::vector<ScalarPoint>> groups;
  for (const ScalarPoint& row : rows)
    groups[floor_div(row.step, width)].push_back(row);
  std::vector<ScalarBucket> buckets;
  for (const auto& [index, members] : groups) {
    ScalarBucket bucket;
    bucket.level = level;
    bucket.bucket = index;
    bucket.count = static_cast<int64_t>(members.size());
    bucket.first = members.front();
    bucket.last = members.back();
    std::vector<ScalarPoint> numbers;
    for (const ScalarPoint& row : members) {
      if (std::isnan(row.value)) {
        if (!bucket.first_nan) bucket.first_nan = row;
      } else {
        numbers.push_back(row);
      }
    }
    bucket.numbers = static_cast<int64_t>(numbers.size());
    long double sum = 0;
    for (const ScalarPoint& row : numbers)
      sum += row.value;
    bucket.sum = static_cast<double>(sum);
    auto by_value = [](const ScalarPoint& a, const ScalarPoint& b) { return a.value < b.value; };
    if (!numbers.empty()) {
      // min_element and max_element both return the first of equal extremes.
      bucket.low = *std::min_element(numbers.begin(), numbers.end(), by_value);
      bucket.high = *std::max_element(numbers.begin(), numbers.end(), by_value);
    }
    buckets.push_back(bucket);
  }
  return buckets;
}

/// Expects the store's buckets of every level of one series to be the brute-force ones
/// over its rows (sums to rounding: they are added up in another order).
inline void expect_buckets_match_rows(RunReader& reader, int64_t run, const std::string& key) {
  Result<std::vector<ScalarPoint>> rows =
      reader.scalars_after(run, key, std::numeric_limits<int64_t>::min());
  ASSERT_TRUE(rows.ok()) << rows.error().to_string();
  for (int level = 0; level < static_cast<int>(kBucketWidths.size()); ++level) {
    SCOPED_TRACE("run " + std::to_string(run) + " key " + key + " level " + std::to_string(level));
    Result<std::vector<ScalarBucket>> stored = reader.scalar_buckets(
        run, key, level, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
    ASSERT_TRUE(stored.ok()) << stored.error().to_string();
    const std::vector<ScalarBucket> expected = brute_force_buckets(*rows, level);
    ASSERT_EQ(stored->size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      const ScalarBucket& got = (*stored)[i];
      const ScalarBucket& want = expected[i];
      SCOPED_TRACE("bucket " + std::to_string(want.bucket));
      EXPECT_EQ(got.level, level);
      EXPECT_EQ(got.bucket, want.bucket);
      EXPECT_EQ(got.count, want.count);
      EXPECT_EQ(got.numbers, want.numbers);
      EXPECT_TRUE(same_point(got.first, want.first)) << describe(got.first);
      EXPECT_TRUE(same_point(got.last, want.last)) << describe(got.last);
      EXPECT_TRUE(same_point(got.low, want.low))
          << describe(got.low) << " vs " << describe(want.low);
      EXPECT_TRUE(same_point(got.high, want.high))
          << describe(got.high) << " vs " << describe(want.high);
      EXPECT_TRUE(same_point(got.first_nan, want.first_nan)) << describe(got.first_nan);
      if (std::isfinite(want.sum)) {
        EXPECT_NEAR(got.sum, want.sum, 1e-9 * (1.0 + std::abs(want.sum)));
      } else {
        EXPECT_TRUE(!std::isfinite(got.sum)) << got.sum << " vs " << want.sum;
      }
    }
  }
}

}  // namespace hl::store::testing
