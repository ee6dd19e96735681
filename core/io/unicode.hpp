// The small amount of Unicode the tokenizers need: UTF-8 decoding and encoding, general
// category tests for letters and numbers, the White_Space property, and lossy repair of
// invalid UTF-8.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hl::io {

/// A decoded code point and where its bytes are in the source string.
struct CodePoint {
  char32_t value;
  uint32_t offset;  // byte offset in the source
  uint32_t length;  // 1..4 bytes (1 for an invalid byte, decoded as U+FFFD)
};

/// Decodes UTF-8; each invalid byte becomes one U+FFFD of length 1, so offsets always
/// cover the input exactly.
std::vector<CodePoint> decode_utf8(std::string_view text);
/// Appends the UTF-8 encoding of a code point.
void append_utf8(std::string& out, char32_t cp);
/// Length of a valid UTF-8 sequence starting with this lead byte, or 0 if invalid.
int utf8_sequence_length(unsigned char lead);
/// Replaces invalid UTF-8 with U+FFFD, one per maximal invalid subpart (as Rust's
/// String::from_utf8_lossy, which the Hugging Face decoders use).
std::string utf8_lossy(std::string_view bytes);

/// Unicode general category L (Lu, Ll, Lt, Lm, Lo).
bool is_letter(char32_t cp);
/// Unicode general category N (Nd, Nl, No).
bool is_number(char32_t cp);
/// The White_Space property (what \s means in Unicode-aware regex engines).
bool is_whitespace(char32_t cp);

namespace unicode_detail {
struct CodePointRange {
  char32_t first;
  char32_t last;
};
extern const CodePointRange kLetterRanges[];
extern const std::size_t kLetterRangesCount;
extern const CodePointRange kNumberRanges[];
extern const std::size_t kNumberRangesCount;
}  // namespace unicode_detail

}  // namespace hl::io
