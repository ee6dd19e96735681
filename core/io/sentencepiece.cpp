// SentencePiece tokenizer.model, read without libsentencepiece (whose bundled protobuf
// clashes with LibTorch's): a minimal protobuf reader for ModelProto, the normaliser's
// precompiled character map (a Darts-clone double-array trie), and the unigram (Viterbi)
// and BPE (highest-score merge) segmentations.
#include <array>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <queue>
#include <unordered_map>

#include "core/io/file_util.hpp"
#include "core/io/tokenizer.hpp"
#include "core/io/unicode.hpp"

namespace hl::io {

namespace {

// ModelProto field numbers (sentencepiece_model.proto).
enum PieceType {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};
enum ModelType { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

std::size_t char_count(std::string_view text) {
  std::size_t n = 0;
  for (unsigned char c : text)
    n += (c & 0xC0) != 0x80;
  return n;
}

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

// A bounds-checked protobuf wire-format reader.
class ProtoReader {
 public:
  explicit ProtoReader(std::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }
  bool failed() const { return failed_; }

  bool varint(uint64_t& out) {
    out = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return fail();
      const auto byte = static_cast<unsigned char>(data_[pos_++]);
      out |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return true;
    }
    return fail();
  }
  // Reads a tag; wire type in `wire`, field in `field`.
  bool tag(uint32_t& field, uint32_t& wire) {
    uint64_t v;
    if (!varint(v)) return false;
    field = static_cast<uint32_t>(v >> 3);
    wire = static_cast<uint32_t>(v & 7);
    return true;
  }
  bool bytes(std::string_view& out) {
    uint64_t length;
    if (!varint(length)) return false;
    if (length > data_.size() - pos_) return fail();
    out = data_.substr(pos_, length);
    pos_ += length;
    return true;
  }
  bool fixed32(uint32_t& out) {
    if (data_.size() - pos_ < 4) return fail();
    std::memcpy(&out, data_.data() + pos_, 4);
    pos_ += 4;
    return true;
  }
  bool skip(uint32_t wire) {
    uint64_t v;
    std::string_view s;
    uint32_t f;
    switch (wire) {
      case 0:
        return varint(v);
      case 1:
        if (data_.size() - pos_ < 8) return fail();
        pos_ += 8;
        return true;
      case 2:
        return bytes(s);
      case 5:
        return fixed32(f);
      default:
        return fail();
    }
  }

 private:
  bool fail() {
    failed_ = true;
    return false;
  }
  std::string_view data_;
  std::size_t pos_ = 0;
  bool failed_ = false;
};

struct Piece {
  std::string text;
  float score = 0;
  int type = kNormal;
};

struct ModelSpec {
  std::vector<Piece> pieces;
  int model_type = kUnigram;
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string unk_surface = " \xE2\x81\x87 ";
  std::string normalizer_name;
  std::string charsmap;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

int32_t as_id(uint64_t v) {
  return static_cast<int32_t>(static_cast<int64_t>(v));
}

bool parse_piece(std::string_view data, Piece& piece) {
  ProtoReader r(data);
  while (!r.done()) {
    uint32_t field, wire;
    if (!r.tag(field, wire)) return false;
    if (field == 1 && wire == 2) {
      std::string_view s;
      if (!r.bytes(s)) return false;
      piece.text = s;
    } else if (field == 2 && wire == 5) {
      uint32_t bits;
      if (!r.fixed32(bits)) return false;
      std::memcpy(&piece.score, &bits, 4);
    } else if (field == 3 && wire == 0) {
      uint64_t v;
      if (!r.varint(v)) return false;
      piece.type = static_cast<int>(v);
    } else if (!r.skip(wire)) {
      return false;
    }
  }
  return true;
}

bool parse_trainer_spec(std::string_view data, ModelSpec& spec) {
  ProtoReader r(data);
  while (!r.done()) {
    uint32_t field, wire;
    if (!r.tag(field, wire)) return false;
    if (wire == 0) {
      uint64_t v;
      if (!r.varint(v)) return false;
      switch (field) {
        case 3:
          spec.model_type = static_cast<int>(v);
          break;
        case 24:
          spec.treat_whitespace_as_suffix = v != 0;
          break;
        case 35:
          spec.byte_fallback = v != 0;
          break;
        case 40:
          spec.unk_id = as_id(v);
          break;
        case 41:
          spec.bos_id = as_id(v);
          break;
        case 42:
          spec.eos_id = as_id(v);
          break;
        case 43:
          spec.pad_id = as_id(v);
          break;
        default:
          break;
      }
    } else if (field == 44 && wire == 2) {
      std::string_view s;
      if (!r.bytes(s)) return false;
      spec.unk_surface = s;
    } else if (!r.skip(wire)) {
      return false;
    }
  }
  return true;
}

bool parse_normalizer_spec(std::string_view data, ModelSpec& spec) {
  ProtoReader r(data);
  while (!r.done()) {
    uint32_t field, wire;
    if (!r.tag(field, wire)) return false;
    if (wire == 2 && (field == 1 || field == 2)) {
      std::string_view s;
      if (!r.bytes(s)) return false;
      (field == 1 ? spec.normalizer_name : spec.charsmap) = s;
    } else if (wire == 0 && field >= 3 && field <= 5) {
      uint64_t v;
      if (!r.varint(v)) return false;
      if (field == 3) spec.add_dummy_prefix = v != 0;
      if (field == 4) spec.remove_extra_whitespaces = v != 0;
      if (field == 5) spec.escape_whitespaces = v != 0;
    } else if (!r.skip(wire)) {
      return false;
    }
  }
  return true;
}

// The precompiled character map: [uint32 trie size][Darts-clone units][normalised strings].
class CharsMap {
 public:
  bool load(std::string_view blob) {
    if (blob.empty()) return true;
    if (blob.size() < 4) return false;
    uint32_t trie_size;
    std::memcpy(&trie_size, blob.data(), 4);
    if (trie_size % 4 != 0 || trie_size > blob.size() - 4) return false;
    units_.resize(trie_size / 4);
    std::memcpy(units_.data(), blob.data() + 4, trie_size);
    strings_ = blob.substr(4 + trie_size);
    return !units_.empty();
  }
  bool empty() const { return units_.empty(); }

  // Longest prefix of `text` in the trie: its length and replacement, or length 0.
  std::size_t longest_match(std::string_view text, std::string_view& replacement) const {
    std::size_t best_length = 0;
    uint32_t node = offset(units_[0]);
    for (std::size_t i = 0; i < text.size(); ++i) {
      const auto label = static_cast<unsigned char>(text[i]);
      if (label == 0) break;
      node ^= label;
      if (node >= units_.size()) break;
      const uint32_t unit = units_[node];
      if ((unit & ((1u << 31) | 0xFF)) != label) break;
      node ^= offset(unit);
      if (node >= units_.size()) break;
      if ((unit >> 8) & 1) {
        const uint32_t value = units_[node] & ((1u << 31) - 1);
        if (value >= strings_.size()) break;
        const std::size_t end = strings_.find('\0', value);
        replacement =
            strings_.substr(value, (end == std::string_view::npos ? strings_.size() : end) - value);
        best_length = i + 1;
      }
    }
    return best_length;
  }

 private:
  static uint32_t offset(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }
  std::vector<uint32_t> units_;
  std::string_view strings_;
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  static Result<std::unique_ptr<SentencePieceTokenizer>> load(const std::filesystem::path& file);

  std::vector<int32_t> encode(std::string_view text, bool add_special) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(spec_.pieces.size()); }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    auto it = index_.find(std::string(token));
    if (it == index_.end()) return std::nullopt;
    return it->second;
  }
  std::optional<std::string> id_to_token(int32_t id) const override {
    if (id < 0 || id >= vocab_size()) return std::nullopt;
    return spec_.pieces[id].text;
  }
  std::string_view kind() const override { return "sentencepiece"; }

 private:
  std::string normalize(std::string_view text) const;
  void encode_unigram(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
  void emit_unknown(std::string_view surface, std::vector<int32_t>& out) const;

  std::string blob_;  // owns the bytes the charsmap views
  ModelSpec spec_;
  CharsMap charsmap_;
  std::unordered_map<std::string, int32_t> index_;
  std::size_t max_piece_bytes_ = 1;
  float min_score_ = 0;
  float max_score_ = 0;
  std::size_t max_user_defined_bytes_ = 0;
  std::array<int32_t, 256> byte_ids_{};
};

Result<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::load(
    const std::filesystem::path& file) {
  auto data = read_text_file(file);
  if (!data) return data.error();
  auto tok = std::make_unique<SentencePieceTokenizer>();
  tok->blob_ = std::move(data).value();
  const std::string where = file.string();
  if (tok->blob_.empty()) return make_error("tokenizer.model is empty", {where});

  ProtoReader r(tok->blob_);
  auto& spec = tok->spec_;
  while (!r.done()) {
    uint32_t field, wire;
    if (!r.tag(field, wire)) break;
    if (wire == 2 && field >= 1 && field <= 3) {
      std::string_view body;
      if (!r.bytes(body)) break;
      bool ok = true;
      if (field == 1) {
        Piece piece;
        ok = parse_piece(body, piece);
        spec.pieces.push_back(std::move(piece));
      } else if (field == 2) {
        ok = parse_trainer_spec(body, spec);
      } else {
        ok = parse_normalizer_spec(body, spec);
      }
      if (!ok) return make_error("corrupt SentencePiece model (bad protobuf field)", {where});
    } else if (!r.skip(wire)) {
      break;
    }
  }
  if (r.failed()) return make_error("corrupt or truncated SentencePiece model (protobuf)", {where});
  if (spec.pieces.empty()) return make_error("SentencePiece model has no pieces", {where});
  if (spec.model_type != kUnigram && spec.model_type != kBpe) {
    return make_error("SentencePiece model type " + std::to_string(spec.model_type) +
                          " is not supported (unigram or BPE)",
                      {where});
  }
  if (!tok->charsmap_.load(spec.charsmap)) {
    return make_error("corrupt precompiled_charsmap in the normalizer", {where});
  }
  if (tok->charsmap_.empty() && !spec.normalizer_name.empty() &&
      spec.normalizer_name != "identity") {
    return make_error("normalizer '" + spec.normalizer_name +
                          "' has no precompiled character map; only precompiled or identity "
                          "normalisers are supported",
                      {where});
  }
  const int32_t n = static_cast<int32_t>(spec.pieces.size());
  for (int32_t* id : {&spec.unk_id, &spec.bos_id, &spec.eos_id, &spec.pad_id}) {
    if (*id >= n)
      return make_error("special id " + std::to_string(*id) + " is out of range", {where});
  }
  tok->byte_ids_.fill(-1);
  tok->min_score_ = FLT_MAX;
  tok->max_score_ = -FLT_MAX;
  for (int32_t id = 0; id < n; ++id) {
    const Piece& p = spec.pieces[id];
    tok->index_.emplace(p.text, id);
    if (p.type == kNormal || p.type == kUserDefined) {
      tok->max_piece_bytes_ = std::max(tok->max_piece_bytes_, p.text.size());
    }
    if (p.type == kUserDefined) {
      tok->max_user_defined_bytes_ = std::max(tok->max_user_defined_bytes_, p.text.size());
    }
    if (p.type == kNormal) {
      tok->min_score_ = std::min(tok->min_score_, p.score);
      tok->max_score_ = std::max(tok->max_score_, p.score);
    }
    unsigned byte;
    if (p.type == kByte && std::sscanf(p.text.c_str(), "<0x%02X>", &byte) == 1 && byte < 256) {
      tok->byte_ids_[byte] = id;
    }
  }
  auto id_or_none = [](int32_t id) { return id >= 0 ? std::optional<int32_t>(id) : std::nullopt; };
  tok->bos_id_ = id_or_none(spec.bos_id);
  tok->eos_id_ = id_or_none(spec.eos_id);
  tok->pad_id_ = id_or_none(spec.pad_id);
  return tok;
}

std::string SentencePieceTokenizer::normalize(std::string_view text) const {
  // Character map first, then whitespace handling on the normalised characters.
  std::string mapped;
  mapped.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    std::string_view replacement;
    const std::size_t length =
        charsmap_.empty() ? 0 : charsmap_.longest_match(text.substr(i), replacement);
    if (length > 0) {
      mapped.append(replacement);
      i += length;
      continue;
    }
    const int n = utf8_sequence_length(static_cast<unsigned char>(text[i]));
    const std::string_view one = text.substr(i, n > 0 ? n : 1);
    const std::string repaired = utf8_lossy(one);
    if (repaired.size() == one.size() && n > 0) {
      mapped.append(one);
      i += n;
    } else {
      append_utf8(mapped, 0xFFFD);
      i += 1;
    }
  }
  std::string out;
  out.reserve(mapped.size() + 8);
  const bool strip = spec_.remove_extra_whitespaces;
  std::size_t begin = 0, end = mapped.size();
  if (strip) {
    while (begin < end && mapped[begin] == ' ')
      ++begin;
    while (end > begin && mapped[end - 1] == ' ')
      --end;
  }
  if (begin == end) return out;
  const std::string space = spec_.escape_whitespaces ? std::string(kSpace) : " ";
  if (spec_.add_dummy_prefix && !spec_.treat_whitespace_as_suffix) out += space;
  bool previous_space = false;
  for (std::size_t k = begin; k < end; ++k) {
    if (mapped[k] == ' ') {
      if (strip && previous_space) continue;
      out += space;
      previous_space = true;
    } else {
      out += mapped[k];
      previous_space = false;
    }
  }
  if (spec_.add_dummy_prefix && spec_.treat_whitespace_as_suffix) out += space;
  return out;
}

void SentencePieceTokenizer::emit_unknown(std::string_view surface,
                                          std::vector<int32_t>& out) const {
  if (spec_.byte_fallback) {
    for (unsigned char b : surface) {
      if (byte_ids_[b] >= 0) {
        out.push_back(byte_ids_[b]);
      } else {
        out.push_back(spec_.unk_id);
      }
    }
    return;
  }
  // A run of unknown characters is one unknown token, as SentencePiece reports it.
  if (out.empty() || out.back() != spec_.unk_id) out.push_back(spec_.unk_id);
}

void SentencePieceTokenizer::encode_unigram(std::string_view text,
                                            std::vector<int32_t>& out) const {
  // Viterbi over byte positions that start characters. A character no piece covers gets
  // an unknown node scored below every piece, as SentencePiece does.
  constexpr float kUnkPenalty = 10.0f;
  const std::size_t n = text.size();
  std::vector<float> best(n + 1, -INFINITY);
  std::vector<int32_t> best_id(n + 1, -1);
  std::vector<std::size_t> best_start(n + 1, 0);
  best[0] = 0;
  for (std::size_t begin = 0; begin < n; ++begin) {
    if (best[begin] == -INFINITY) continue;
    const int char_len = std::max(1, utf8_sequence_length(static_cast<unsigned char>(text[begin])));
    bool single_char_piece = false;
    for (std::size_t len = 1; len <= max_piece_bytes_ && begin + len <= n; ++len) {
      auto it = index_.find(std::string(text.substr(begin, len)));
      if (it == index_.end()) continue;
      const Piece& p = spec_.pieces[it->second];
      if (p.type != kNormal && p.type != kUserDefined) continue;
      // User-defined symbols get a bonus that beats any segmentation of the same span.
      const float score = p.type == kUserDefined
                              ? static_cast<float>(char_count(p.text)) * max_score_ - 0.1f
                              : p.score;
      const float total = best[begin] + score;
      if (static_cast<int>(len) == char_len) single_char_piece = true;
      if (total > best[begin + len]) {
        best[begin + len] = total;
        best_id[begin + len] = it->second;
        best_start[begin + len] = begin;
      }
    }
    if (!single_char_piece) {
      const std::size_t end = std::min(n, begin + char_len);
      const float total = best[begin] + min_score_ - kUnkPenalty;
      if (total > best[end]) {
        best[end] = total;
        best_id[end] = spec_.unk_id;
        best_start[end] = begin;
      }
    }
  }
  std::vector<std::pair<std::size_t, int32_t>> path;  // (start, id), reversed
  for (std::size_t end = n; end > 0; end = best_start[end])
    path.emplace_back(best_start[end], best_id[end]);
  // Runs of unknown characters become one unknown token (or their bytes).
  std::size_t k = path.size();
  while (k > 0) {
    --k;
    auto [start, id] = path[k];
    std::size_t stop = k > 0 ? path[k - 1].first : n;
    if (id == spec_.unk_id) {
      while (k > 0 && path[k - 1].second == spec_.unk_id) {
        --k;
        stop = k > 0 ? path[k - 1].first : n;
      }
      emit_unknown(text.substr(start, stop - start), out);
    } else {
      out.push_back(id);
    }
  }
}

void SentencePieceTokenizer::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
  // Symbols start as characters (user-defined pieces whole); the adjacent pair whose
  // concatenation is a piece with the highest score is merged first, leftmost on ties.
  struct Symbol {
    std::size_t begin, length;
    int prev, next;
    bool frozen;
  };
  std::vector<Symbol> symbols;
  for (std::size_t i = 0; i < text.size();) {
    std::size_t length = std::max(1, utf8_sequence_length(static_cast<unsigned char>(text[i])));
    bool frozen = false;
    for (std::size_t len = std::min(max_piece_bytes_, text.size() - i); len > length; --len) {
      auto it = index_.find(std::string(text.substr(i, len)));
      if (it != index_.end() && spec_.pieces[it->second].type == kUserDefined) {
        length = len;
        frozen = true;
        break;
      }
    }
    length = std::min(length, text.size() - i);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({i, length, index - 1, index + 1, frozen});
    i += length;
  }
  if (!symbols.empty()) symbols.back().next = -1;

  struct Candidate {
    float score;
    int left;
    std::size_t length;  // bytes of the merged piece, to detect stale entries
  };
  auto order = [](const Candidate& a, const Candidate& b) {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(order)> agenda(order);
  auto consider = [&](int left) {
    if (left < 0) return;
    const int right = symbols[left].next;
    if (right < 0 || symbols[left].frozen || symbols[right].frozen) return;
    const std::size_t length = symbols[left].length + symbols[right].length;
    auto it = index_.find(std::string(text.substr(symbols[left].begin, length)));
    if (it == index_.end() || spec_.pieces[it->second].type != kNormal) return;
    agenda.push({spec_.pieces[it->second].score, left, length});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i)
    consider(i);
  while (!agenda.empty()) {
    const Candidate top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top.left];
    if (left.length == 0 || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    if (left.length + right.length != top.length) continue;  // stale
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    consider(left.prev);
    consider(top.left);
  }
  for (int i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    const std::string_view piece = text.substr(symbols[i].begin, symbols[i].length);
    auto it = index_.find(std::string(piece));
    if (it != index_.end() && spec_.pieces[it->second].type != kUnused &&
        spec_.pieces[it->second].type != kControl) {
      out.push_back(it->second);
    } else {
      emit_unknown(piece, out);
    }
  }
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> out;
  if (add_special && spec_.bos_id >= 0) out.push_back(spec_.bos_id);
  const std::string normalized = normalize(text);
  auto segment = [&](std::string_view part) {
    if (part.empty()) return;
    if (spec_.model_type == kUnigram) {
      encode_unigram(part, out);
    } else {
      encode_bpe(part, out);
    }
  };
  // User-defined symbols are cut out first (longest match), as spm_encode does; the model
  // segments the text between them.
  const std::string_view view(normalized);
  std::size_t start = 0, i = 0;
  while (i < view.size() && max_user_defined_bytes_ > 0) {
    std::size_t found = 0;
    int32_t found_id = -1;
    for (std::size_t len = std::min(max_user_defined_bytes_, view.size() - i); len > 0; --len) {
      auto it = index_.find(std::string(view.substr(i, len)));
      if (it != index_.end() && spec_.pieces[it->second].type == kUserDefined) {
        found = len;
        found_id = it->second;
        break;
      }
    }
    if (found == 0) {
      i += std::max(1, utf8_sequence_length(static_cast<unsigned char>(view[i])));
      continue;
    }
    segment(view.substr(start, i - start));
    out.push_back(found_id);
    i += found;
    start = i;
  }
  segment(view.substr(std::min(start, view.size())));
  return out;
}

std::string SentencePieceTokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string text, pending_bytes;
  auto flush_bytes = [&] {
    text += utf8_lossy(pending_bytes);
    pending_bytes.clear();
  };
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    const Piece& p = spec_.pieces[id];
    if (p.type == kByte) {
      unsigned byte;
      if (std::sscanf(p.text.c_str(), "<0x%02X>", &byte) == 1)
        pending_bytes += static_cast<char>(byte);
      continue;
    }
    flush_bytes();
    if (p.type == kControl) continue;  // BOS/EOS/PAD decode to nothing
    if (p.type == kUnknown) {
      if (!skip_special) text += spec_.unk_surface;
      continue;
    }
    text += p.text;
  }
  flush_bytes();
  // Visible spaces back to spaces; the dummy prefix is dropped.
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    if (text.compare(i, kSpace.size(), kSpace) == 0) {
      out += ' ';
      i += kSpace.size();
    } else {
      out += text[i++];
    }
  }
  if (spec_.add_dummy_prefix) {
    if (!spec_.treat_whitespace_as_suffix && !out.empty() && out.front() == ' ') out.erase(0, 1);
    if (spec_.treat_whitespace_as_suffix && !out.empty() && out.back() == ' ') out.pop_back();
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> load_sentencepiece_tokenizer(const std::filesystem::path& file) {
  auto tok = SentencePieceTokenizer::load(file);
  if (!tok) return tok.error();
  return std::unique_ptr<Tokenizer>(std::move(tok).value());
}

}  // namespace hl::io
