#include "core/config/toml_text.hpp"

#include <gtest/gtest.h>
#include <toml++/toml.h>

#include <cmath>
#include <limits>
#include <random>

namespace hl {
namespace {

TEST(TomlText, QuoteEscapesWhatTomlRequires) {
  EXPECT_EQ(toml_quote("plain"), "\"plain\"");
  EXPECT_EQ(toml_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(toml_quote("x\ny\tz\r"), "\"x\\ny\\tz\\r\"");
  EXPECT_EQ(toml_quote(std::string("\x01\x7f", 2)), "\"\\u0001\\u007F\"");
  EXPECT_EQ(toml_quote("λ😀"), "\"λ😀\"");
}

TEST(TomlText, QuotedStringsReadBackThroughTomlpp) {
  const std::string original = "line1\nline2 \"q\" \\ \x02 \x7f é 中";
  const auto table = toml::parse("v = " + toml_quote(original));
  EXPECT_EQ(table["v"].value<std::string>().value(), original);
}

TEST(TomlText, FloatsAreTomlFloatsThatReadBackExactly) {
  EXPECT_EQ(toml_float(1000.0), "1000.0");
  EXPECT_EQ(toml_float(0.01), "0.01");
  EXPECT_EQ(toml_float(0.0), "0.0");
  EXPECT_EQ(toml_float(1e-4), "1e-4");
  EXPECT_EQ(toml_float(1e20), "1e20");
  EXPECT_EQ(toml_float(-2.5e-300), "-2.5e-300");
  EXPECT_EQ(toml_float(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(toml_float(std::nan("")), "nan");
  std::mt19937_64 rng(99);
  std::uniform_real_distribution<double> exponent(-300, 300);
  for (int i = 0; i < 2000; ++i) {
    const double value = std::pow(10.0, exponent(rng)) * (i % 2 ? -1 : 1);
    const auto table = toml::parse("v = " + toml_float(value));
    const auto* node = table["v"].as_floating_point();
    ASSERT_NE(node, nullptr) << toml_float(value) << " is not a TOML float";
    EXPECT_EQ(node->get(), value) << toml_float(value);
  }
}

TEST(TomlText, FindsInvalidUtf8) {
  EXPECT_EQ(find_invalid_utf8("ascii and é 中 😀"), std::nullopt);
  EXPECT_EQ(find_invalid_utf8("ab\xff"), 2u);
  EXPECT_EQ(find_invalid_utf8("\xc3"), 0u);                // truncated
  EXPECT_EQ(find_invalid_utf8("x\xc0\xaf"), 1u);           // overlong '/'
  EXPECT_EQ(find_invalid_utf8("\xed\xa0\x80"), 0u);        // surrogate
  EXPECT_EQ(find_invalid_utf8("ok\xf4\x90\x80\x80"), 2u);  // above U+10FFFF
  EXPECT_EQ(find_invalid_utf8("\xe2\x82"), 0u);            // truncated 3-byte
}

}  // namespace
}  // namespace hl
