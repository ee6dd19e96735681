// The regex splits of byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2), written out as
// hand-coded matchers because std::regex has no Unicode classes (\p{L}, \p{N}).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hl::io {

/// A known pre-tokenizer split pattern.
enum class SplitPattern {
  kGpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,  // case-insensitive contractions, [^\r\n\p{L}\p{N}]?\p{L}+, \p{N}{1,3}, ...
  kQwen2,   // as Llama 3 with single digits (\p{N})
};

/// The exact regex text of a pattern as it appears in tokenizer.json.
std::string_view split_pattern_regex(SplitPattern pattern);
/// Recognises a tokenizer.json regex (also the \p{L} vs \p{Letter} spellings are not
/// normalised: the text must be one of the three patterns exactly).
std::optional<SplitPattern> split_pattern_from_regex(std::string_view regex);
/// A pattern by name: "gpt2", "llama3", "qwen2".
std::optional<SplitPattern> split_pattern_from_name(std::string_view name);

/// Splits text into pieces exactly as the regex's find-all would, with the gaps between
/// matches kept as pieces ("Isolated"). Returns byte ranges [begin, end) into `text`.
std::vector<std::pair<std::size_t, std::size_t>> split_pretokens(std::string_view text,
                                                                 SplitPattern pattern);

}  // namespace hl::io
