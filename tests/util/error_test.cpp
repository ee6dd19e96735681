#include <gtest/gtest.h>

#include "core/util/error.hpp"

namespace hl {
namespace {

TEST(Error, ToStringShowsEveryKnownPart) {
  EXPECT_EQ(make_error("must be >= 1", {"exp.toml", 7, "attention.window"}).to_string(),
            "exp.toml:7: attention.window: must be >= 1");
  EXPECT_EQ(make_error("bad", {"f.toml", 0, ""}).to_string(), "f.toml: bad");
  EXPECT_EQ(make_error("bad").to_string(), "bad");
}

TEST(Result, HoldsValueOrError) {
  Result<int> good = 3;
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 3);
  Result<int> bad = make_error("nope");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message, "nope");
  Status fine;
  EXPECT_TRUE(fine.ok());
  Status failed = make_error("x");
  EXPECT_FALSE(failed.ok());
}

}  // namespace
}  // namespace hl
