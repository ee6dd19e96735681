// Reading and writing experiment TOML files.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/config/experiment_spec.hpp"
#include "core/util/error.hpp"

namespace hl {

/// Outcome of reading an experiment: the spec when there is no error, else every error found
/// (each with file, line when known, dotted key and a one-line message), sorted by line.
struct ExperimentParse {
  std::optional<ExperimentSpec> spec;
  std::vector<Error> errors;

  bool ok() const { return spec.has_value(); }
};

/// Parses experiment TOML; `source_name` is the file name used in error locations.
ExperimentParse parse_experiment(std::string_view toml_text, std::string_view source_name);

/// Reads and parses the experiment file at `path` (unreadable, empty or binary files are
/// errors too).
ExperimentParse load_experiment_file(const std::string& path);

/// The spec as TOML with every field written explicitly, in a fixed order;
/// parse_experiment(to_toml(spec)) gives back `spec` for any valid spec.
std::string to_toml(const ExperimentSpec& spec);

}  // namespace hl
