// Helpers shared by the experiment-file tests.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "core/config/experiment_file.hpp"

namespace hl::test {

/// The smallest valid experiment: a base model and one attention_transfer stage.
inline constexpr std::string_view kMinimalToml = R"(
[model]
base = "models/tiny-base"

[[stage]]
kind = "attention_transfer"
)";

/// All error lines of a parse, one per line, for failure messages.
inline std::string error_lines(const ExperimentParse& parse) {
  std::string out;
  for (const Error& error : parse.errors)
    out += error.to_string() + "\n";
  return out;
}

/// Parses `text`, failing the test (with every error) unless it is valid.
inline ExperimentSpec parse_valid(std::string_view text, std::string_view name = "test.toml") {
  ExperimentParse parse = parse_experiment(text, name);
  EXPECT_TRUE(parse.ok()) << error_lines(parse) << "in:\n" << text;
  return parse.spec.value_or(ExperimentSpec{});
}

}  // namespace hl::test
