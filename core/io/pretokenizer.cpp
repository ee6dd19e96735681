#include "core/io/pretokenizer.hpp"

#include "core/io/unicode.hpp"

namespace hl::io {

namespace {

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

using Text = std::vector<CodePoint>;

bool is_crlf(char32_t c) {
  return c == '\r' || c == '\n';
}
bool is_other(char32_t c) {
  return !is_whitespace(c) && !is_letter(c) && !is_number(c);
}

// Folds the letters of the contraction suffixes for (?i:...); U+017F LONG S folds to 's'.
char32_t fold(char32_t c, bool ignore_case) {
  if (!ignore_case) return c;
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c == 0x017F) return 's';
  return c;
}

// 's|'t|'re|'ve|'m|'ll|'d at i: returns the end, or i when nothing matches.
std::size_t match_contraction(const Text& t, std::size_t i, bool ignore_case) {
  const std::size_t n = t.size();
  if (t[i].value != '\'' || i + 1 >= n) return i;
  const char32_t a = fold(t[i + 1].value, ignore_case);
  if (a == 's' || a == 't') return i + 2;
  if (i + 2 < n) {
    const char32_t b = fold(t[i + 2].value, ignore_case);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e')) return i + 3;
  }
  if (a == 'm') return i + 2;
  if (i + 2 < n && a == 'l' && fold(t[i + 2].value, ignore_case) == 'l') return i + 3;
  if (a == 'd') return i + 2;
  return i;
}

template <class Pred>
std::size_t run(const Text& t, std::size_t i, Pred pred) {
  while (i < t.size() && pred(t[i].value))
    ++i;
  return i;
}

// ` ?X+` for a class X.
template <class Pred>
std::size_t match_space_then_run(const Text& t, std::size_t i, Pred pred) {
  std::size_t start = i;
  if (t[i].value == ' ' && i + 1 < t.size() && pred(t[i + 1].value)) start = i + 1;
  if (!pred(t[start].value)) return i;
  return run(t, start, pred);
}

// \s+(?!\S) then \s+: a whitespace run leaves its last character for the next token
// when a non-space follows, unless the run is a single character.
std::size_t match_whitespace(const Text& t, std::size_t i) {
  const std::size_t end = run(t, i, is_whitespace);
  if (end == i) return i;
  if (end == t.size()) return end;
  if (end - i >= 2) return end - 1;
  return end;  // the plain \s+ alternative
}

std::size_t match_gpt2(const Text& t, std::size_t i) {
  std::size_t end;
  if ((end = match_contraction(t, i, false)) != i) return end;
  if ((end = match_space_then_run(t, i, is_letter)) != i) return end;
  if ((end = match_space_then_run(t, i, is_number)) != i) return end;
  if ((end = match_space_then_run(t, i, is_other)) != i) return end;
  return match_whitespace(t, i);
}

std::size_t match_llama3_like(const Text& t, std::size_t i, std::size_t max_digits) {
  const std::size_t n = t.size();
  std::size_t end;
  if ((end = match_contraction(t, i, true)) != i) return end;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  {
    const char32_t c = t[i].value;
    if (!is_crlf(c) && !is_letter(c) && !is_number(c) && i + 1 < n && is_letter(t[i + 1].value)) {
      return run(t, i + 1, is_letter);
    }
    if (is_letter(c)) return run(t, i, is_letter);
  }
  // \p{N}{1,max}
  if (is_number(t[i].value)) {
    end = i;
    while (end < n && end - i < max_digits && is_number(t[end].value))
      ++end;
    return end;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  if ((end = match_space_then_run(t, i, is_other)) != i) return run(t, end, is_crlf);
  // \s*[\r\n]+ : up to the last CR/LF of the whitespace run
  {
    const std::size_t ws_end = run(t, i, is_whitespace);
    for (std::size_t k = ws_end; k > i; --k) {
      if (is_crlf(t[k - 1].value)) return k;
    }
  }
  return match_whitespace(t, i);
}

}  // namespace

std::string_view split_pattern_regex(SplitPattern pattern) {
  switch (pattern) {
    case SplitPattern::kGpt2:
      return kGpt2Regex;
    case SplitPattern::kLlama3:
      return kLlama3Regex;
    case SplitPattern::kQwen2:
      return kQwen2Regex;
  }
  return kGpt2Regex;
}

std::optional<SplitPattern> split_pattern_from_regex(std::string_view regex) {
  if (regex == kGpt2Regex) return SplitPattern::kGpt2;
  if (regex == kLlama3Regex) return SplitPattern::kLlama3;
  if (regex == kQwen2Regex) return SplitPattern::kQwen2;
  return std::nullopt;
}

std::optional<SplitPattern> split_pattern_from_name(std::string_view name) {
  if (name == "gpt2") return SplitPattern::kGpt2;
  if (name == "llama3") return SplitPattern::kLlama3;
  if (name == "qwen2") return SplitPattern::kQwen2;
  return std::nullopt;
}

std::vector<std::pair<std::size_t, std::size_t>> split_pretokens(std::string_view text,
                                                                 SplitPattern pattern) {
  const Text t = decode_utf8(text);
  std::vector<std::pair<std::size_t, std::size_t>> pieces;
  std::size_t i = 0;
  auto byte_at = [&](std::size_t k) { return k < t.size() ? t[k].offset : text.size(); };
  while (i < t.size()) {
    std::size_t end = i;
    switch (pattern) {
      case SplitPattern::kGpt2:
        end = match_gpt2(t, i);
        break;
      case SplitPattern::kLlama3:
        end = match_llama3_like(t, i, 3);
        break;
      case SplitPattern::kQwen2:
        end = match_llama3_like(t, i, 1);
        break;
    }
    // Every code point falls in one of the classes, so a match always advances; the guard
    // keeps a gap piece in case a future pattern leaves one.
    if (end == i) end = i + 1;
    pieces.emplace_back(byte_at(i), byte_at(end));
    i = end;
  }
  return pieces;
}

}  // namespace hl::io
