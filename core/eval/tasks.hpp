// Multiple-choice tasks in the lm-evaluation-harness style: each item is a few (context,
// continuation) pairs and the index of the gold one. Loaders read JSONL exports of PIQA,
// ARC-Easy/Challenge, HellaSwag, WinoGrande, MMLU and HybridLab's own generic format
// {"context": ..., "choices": [...], "gold": i}; the prompts follow the harness's
// default task definitions.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/util/error.hpp"

namespace hl::eval {

/// One answer option: the model reads `context` and is scored on `continuation`.
struct McChoice {
  std::string context;
  std::string continuation;
  std::string text;  ///< the choice as the dataset writes it (acc_norm divides by its bytes)
};

/// One question.
struct McItem {
  std::vector<McChoice> choices;
  int64_t gold = 0;
  int line = 0;  ///< 1-based line in the task file
};

/// Which JSONL export a task file is.
enum class McFormat { automatic, generic, piqa, arc, hellaswag, winogrande, mmlu };

/// "auto", "generic", "piqa", "arc", "hellaswag", "winogrande", "mmlu".
std::string_view to_string(McFormat format);
/// Inverse of to_string; nullopt for an unknown name.
std::optional<McFormat> parse_mc_format(std::string_view name);

/// How a task file is read.
struct McLoadOptions {
  McFormat format = McFormat::automatic;  ///< automatic: from the first object's fields
  bool skip_malformed = false;  ///< skip bad lines (listed in McTask::skipped) instead of failing
  int64_t mmlu_shots = 5;       ///< few-shot examples in the MMLU prompt
  int64_t limit = 0;            ///< keep at most this many items; 0 = all
};

/// A loaded task.
struct McTask {
  std::string name;  ///< the file's stem
  McFormat format = McFormat::generic;
  std::vector<McItem> items;
  std::vector<Error> skipped;  ///< malformed lines that were skipped, with their line numbers
};

/// Reads a task file. Errors (file:line: message): unreadable file, a malformed line (unless
/// skip_malformed), a file without any item.
Result<McTask> load_mc_task(const std::filesystem::path& path, const McLoadOptions& options = {});

/// Parses one JSON line of a task file (`file`/`line` name it in errors). MMLU items get
/// their few-shot prompt from load_mc_task; here they are zero-shot.
Result<McItem> parse_mc_line(std::string_view json_line, McFormat format, const std::string& file,
                             int line);

/// The format whose fields a JSON object line has; nullopt when none matches.
std::optional<McFormat> detect_mc_format(std::string_view json_line);

/// HellaSwag's text clean-up (the harness's preprocess): " [title]" -> ". ", bracketed
/// tags removed, double spaces collapsed, surrounding space stripped.
std::string hellaswag_preprocess(std::string text);

}  // namespace hl::eval
