#include "core/io/unicode.hpp"

#include <algorithm>

namespace hl::io {

namespace {

bool in_ranges(char32_t cp, const unicode_detail::CodePointRange* ranges, std::size_t count) {
  const auto* end = ranges + count;
  const auto* it = std::upper_bound(
      ranges, end, cp, [](char32_t value, const auto& range) { return value < range.first; });
  return it != ranges && cp <= (it - 1)->last;
}

// Decodes one valid sequence at `p`; returns its length, or 0 when the bytes there are not
// a well-formed UTF-8 sequence (overlong, surrogate, out of range or cut short).
int decode_one(const unsigned char* p, std::size_t available, char32_t& out) {
  const unsigned char lead = p[0];
  if (lead < 0x80) {
    out = lead;
    return 1;
  }
  const int length = utf8_sequence_length(lead);
  if (length == 0 || static_cast<std::size_t>(length) > available) return 0;
  char32_t cp = lead & (0x7F >> length);
  for (int i = 1; i < length; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  static constexpr char32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMinimum[length] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  out = cp;
  return length;
}

// Length of the maximal prefix of an invalid sequence that could start a valid one
// (Unicode's "maximal subpart"), at least 1.
int invalid_subpart_length(const unsigned char* p, std::size_t available) {
  const unsigned char lead = p[0];
  const int length = utf8_sequence_length(lead);
  if (length == 0) return 1;
  int consumed = 1;
  for (int i = 1; i < length && static_cast<std::size_t>(i) < available; ++i) {
    unsigned char lo = 0x80, hi = 0xBF;
    if (i == 1) {
      if (lead == 0xE0) lo = 0xA0;
      if (lead == 0xED) hi = 0x9F;
      if (lead == 0xF0) lo = 0x90;
      if (lead == 0xF4) hi = 0x8F;
    }
    if (p[i] < lo || p[i] > hi) break;
    ++consumed;
  }
  return consumed;
}

}  // namespace

int utf8_sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

std::vector<CodePoint> decode_utf8(std::string_view text) {
  std::vector<CodePoint> out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t i = 0;
  while (i < text.size()) {
    char32_t cp = 0;
    int length = decode_one(p + i, text.size() - i, cp);
    if (length == 0) {
      cp = 0xFFFD;
      length = 1;
    }
    out.push_back({cp, static_cast<uint32_t>(i), static_cast<uint32_t>(length)});
    i += length;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t i = 0;
  while (i < bytes.size()) {
    char32_t cp = 0;
    const int length = decode_one(p + i, bytes.size() - i, cp);
    if (length > 0) {
      out.append(bytes.data() + i, length);
      i += length;
    } else {
      append_utf8(out, 0xFFFD);
      i += invalid_subpart_length(p + i, bytes.size() - i);
    }
  }
  return out;
}

bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(cp, unicode_detail::kLetterRanges, unicode_detail::kLetterRangesCount);
}

bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(cp, unicode_detail::kNumberRanges, unicode_detail::kNumberRangesCount);
}

bool is_whitespace(char32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

}  // namespace hl::io
