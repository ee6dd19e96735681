// Small text helpers shared by the experiment reader, writer and validator.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace hl {

/// `text` as a TOML basic string, quoted and escaped, always on one line.
std::string toml_quote(std::string_view text);

/// `value` as a TOML float that reads back to the same double ("1000.0", "0.01", "inf").
std::string toml_float(double value);

/// Byte offset of the first invalid UTF-8 sequence in `text`, or nullopt if it is valid.
std::optional<std::size_t> find_invalid_utf8(std::string_view text);

}  // namespace hl
