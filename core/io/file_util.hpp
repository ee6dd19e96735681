// Small file helpers shared by the checkpoint, config and tokenizer writers.
#pragma once

#include <filesystem>
#include <functional>
#include <ostream>
#include <string>

#include "core/util/error.hpp"

namespace hl::io {

/// Writes a file atomically: `write` fills a temporary file next to `path`, which is then
/// renamed over it, so readers never see a half-written file.
Status write_file_atomically(const std::filesystem::path& path,
                             const std::function<void(std::ostream&)>& write);

/// Reads a whole (small) file, e.g. config.json or tokenizer.json.
Result<std::string> read_text_file(const std::filesystem::path& path);

}  // namespace hl::io
