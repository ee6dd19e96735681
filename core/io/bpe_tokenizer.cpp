// Byte-level BPE as Hugging Face `tokenizers` runs it from tokenizer.json: added tokens are
// cut out first, the rest is split by the pre-tokenizer regex, each piece's bytes are mapped
// to printable characters (GPT-2's byte-to-unicode table) and merged by rank.
#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "core/io/file_util.hpp"
#include "core/io/tokenizer.hpp"
#include "core/io/unicode.hpp"

namespace hl::io {

namespace {

using nlohmann::json;

// GPT-2's reversible map from bytes to printable code points: printable Latin-1 bytes map
// to themselves, the other 68 bytes to U+0100 onwards in byte order.
const std::array<char32_t, 256>& byte_to_char() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

const std::array<std::string, 256>& byte_to_string() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    for (int b = 0; b < 256; ++b)
      append_utf8(t[b], byte_to_char()[b]);
    return t;
  }();
  return table;
}

// Inverse of byte_to_char, for decoding; -1 where a code point is not a byte's character.
int char_to_byte(char32_t c) {
  static const std::unordered_map<char32_t, int> table = [] {
    std::unordered_map<char32_t, int> t;
    for (int b = 0; b < 256; ++b)
      t[byte_to_char()[b]] = b;
    return t;
  }();
  auto it = table.find(c);
  return it == table.end() ? -1 : it->second;
}

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

bool is_word_char(char32_t c) {
  return is_letter(c) || is_number(c) || c == '_';
}

class BpeTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text, bool add_special) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(id_to_token_.size()); }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::optional<std::string> id_to_token(int32_t id) const override;
  std::string_view kind() const override { return "bpe"; }

  static Result<std::unique_ptr<BpeTokenizer>> parse(std::string_view json_text,
                                                     const std::string& source);

 private:
  Status parse_pre_tokenizer(const json& node, const std::string& source);
  Status parse_post_processor(const json& node, const std::string& source);
  void encode_segment(std::string_view segment, std::vector<int32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;  // model vocab and added tokens
  std::vector<std::string> id_to_token_;
  std::vector<bool> special_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // pair -> rank, id
  std::vector<AddedToken> added_;
  std::array<std::vector<std::size_t>, 256> added_by_first_byte_;
  std::vector<SplitPattern> splits_;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_ids_{};  // id of each byte's character, -1 when absent
  std::vector<int32_t> prefix_ids_, suffix_ids_;
};

// ---------------------------------------------------------------------------------------
// Parsing

Status BpeTokenizer::parse_pre_tokenizer(const json& node, const std::string& source) {
  const std::string key = "pre_tokenizer";
  if (node.is_null()) return Status::Ok();
  if (!node.is_object() || !node.contains("type") || !node["type"].is_string()) {
    return make_error("must be an object with a 'type'", {source, 0, key});
  }
  const std::string type = node["type"].get<std::string>();
  if (type == "Sequence") {
    if (!node.contains("pretokenizers") || !node["pretokenizers"].is_array()) {
      return make_error("Sequence needs a 'pretokenizers' list", {source, 0, key});
    }
    for (const auto& child : node["pretokenizers"]) {
      if (auto s = parse_pre_tokenizer(child, source); !s) return s;
    }
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    add_prefix_space_ = node.value("add_prefix_space", false);
    if (node.value("use_regex", true)) splits_.push_back(SplitPattern::kGpt2);
    return Status::Ok();
  }
  if (type == "Split") {
    const json& pattern = node.value("pattern", json());
    if (!pattern.is_object() || !pattern.contains("Regex") || !pattern["Regex"].is_string()) {
      return make_error("Split pre-tokenizer without a 'Regex' pattern is not supported",
                        {source, 0, key});
    }
    const std::string regex = pattern["Regex"].get<std::string>();
    auto known = split_pattern_from_regex(regex);
    if (!known) {
      return make_error(
          "Split regex is not one of the supported patterns (GPT-2, Llama 3, "
          "Qwen2): " +
              regex,
          {source, 0, key});
    }
    if (node.value("behavior", std::string("Isolated")) != "Isolated" ||
        node.value("invert", false)) {
      return make_error("only Split with behavior 'Isolated' and invert false is supported",
                        {source, 0, key});
    }
    splits_.push_back(*known);
    return Status::Ok();
  }
  return make_error("pre-tokenizer type '" + type + "' is not supported", {source, 0, key});
}

Status BpeTokenizer::parse_post_processor(const json& node, const std::string& source) {
  const std::string key = "post_processor";
  if (node.is_null()) return Status::Ok();
  if (!node.is_object() || !node.contains("type")) {
    return make_error("must be an object with a 'type'", {source, 0, key});
  }
  const std::string type = node["type"].get<std::string>();
  if (type == "ByteLevel") return Status::Ok();  // changes offsets only, not ids
  if (type == "Sequence") {
    for (const auto& child : node.value("processors", json::array())) {
      if (auto s = parse_post_processor(child, source); !s) return s;
    }
    return Status::Ok();
  }
  if (type != "TemplateProcessing") {
    return make_error("post-processor type '" + type + "' is not supported", {source, 0, key});
  }
  const json& single = node.value("single", json::array());
  const json& specials = node.value("special_tokens", json::object());
  bool seen_sequence = false;
  for (const auto& item : single) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    if (!item.contains("SpecialToken")) {
      return make_error("template item is neither Sequence nor SpecialToken", {source, 0, key});
    }
    const std::string name = item["SpecialToken"].value("id", std::string());
    if (!specials.contains(name) || !specials[name].contains("ids")) {
      return make_error(
          "template names special token '" + name + "', which special_tokens does not define",
          {source, 0, key});
    }
    for (const auto& id : specials[name]["ids"]) {
      (seen_sequence ? suffix_ids_ : prefix_ids_).push_back(id.get<int32_t>());
    }
  }
  return Status::Ok();
}

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::parse(std::string_view json_text,
                                                          const std::string& source) {
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::parse_error& e) {
    return make_error(std::string("tokenizer is not valid JSON: ") + e.what(), {source});
  }
  if (!doc.is_object()) return make_error("tokenizer.json must be an object", {source});
  auto tok = std::make_unique<BpeTokenizer>();
  try {
    const json& model = doc.value("model", json());
    if (!model.is_object()) return make_error("missing 'model' object", {source, 0, "model"});
    const std::string type = model.value("type", std::string("BPE"));
    if (type != "BPE") {
      return make_error("model type '" + type + "' is not supported (only BPE)",
                        {source, 0, "model.type"});
    }
    if (!model.contains("vocab") || !model["vocab"].is_object()) {
      return make_error("missing 'vocab' object", {source, 0, "model.vocab"});
    }
    int32_t max_id = -1;
    for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
      if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
          it.value().get<int64_t>() > INT32_MAX) {
        return make_error("vocab id of '" + it.key() + "' is not a non-negative integer",
                          {source, 0, "model.vocab"});
      }
      const int32_t id = it.value().get<int32_t>();
      tok->vocab_[it.key()] = id;
      max_id = std::max(max_id, id);
    }
    const json& added = doc.value("added_tokens", json::array());
    for (const auto& entry : added) {
      AddedToken t;
      t.content = entry.at("content").get<std::string>();
      t.id = entry.at("id").get<int32_t>();
      t.special = entry.value("special", false);
      t.lstrip = entry.value("lstrip", false);
      t.rstrip = entry.value("rstrip", false);
      t.single_word = entry.value("single_word", false);
      if (t.content.empty())
        return make_error("added token with empty content", {source, 0, "added_tokens"});
      tok->vocab_[t.content] = t.id;
      max_id = std::max(max_id, t.id);
      tok->added_.push_back(std::move(t));
    }
    tok->id_to_token_.assign(max_id + 1, std::string());
    tok->special_.assign(max_id + 1, false);
    for (const auto& [token, id] : tok->vocab_)
      tok->id_to_token_[id] = token;
    for (std::size_t i = 0; i < tok->added_.size(); ++i) {
      const auto& t = tok->added_[i];
      tok->id_to_token_[t.id] = t.content;
      tok->special_[t.id] = t.special;
      tok->added_by_first_byte_[static_cast<unsigned char>(t.content[0])].push_back(i);
    }

    const json& merges = model.value("merges", json::array());
    if (!merges.is_array())
      return make_error("'merges' must be a list", {source, 0, "model.merges"});
    int32_t rank = 0;
    for (const auto& merge : merges) {
      std::string left, right;
      if (merge.is_string()) {
        const std::string text = merge.get<std::string>();
        const auto space = text.find(' ', 1);
        if (space == std::string::npos) {
          return make_error("merge '" + text + "' is not two tokens separated by a space",
                            {source, 0, "model.merges"});
        }
        left = text.substr(0, space);
        right = text.substr(space + 1);
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
                 merge[1].is_string()) {
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      } else {
        return make_error("merge " + merge.dump() + " is neither \"a b\" nor [\"a\", \"b\"]",
                          {source, 0, "model.merges"});
      }
      auto a = tok->vocab_.find(left), b = tok->vocab_.find(right),
           ab = tok->vocab_.find(left + right);
      if (a == tok->vocab_.end() || b == tok->vocab_.end()) {
        return make_error("merge " + std::to_string(rank) + " ('" + left + "' '" + right +
                              "') references a token that is not in the vocab",
                          {source, 0, "model.merges"});
      }
      if (ab == tok->vocab_.end()) {
        return make_error("merge " + std::to_string(rank) + " ('" + left + "' '" + right +
                              "') produces '" + left + right + "', which is not in the vocab",
                          {source, 0, "model.merges"});
      }
      tok->merges_.try_emplace(pair_key(a->second, b->second), rank, ab->second);
      ++rank;
    }
    tok->ignore_merges_ = model.value("ignore_merges", false);
    tok->byte_fallback_ = model.value("byte_fallback", false);
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      auto it = tok->vocab_.find(model["unk_token"].get<std::string>());
      if (it != tok->vocab_.end()) tok->unk_id_ = it->second;
    }
    for (const char* unsupported : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(unsupported) && !model[unsupported].is_null() &&
          !(model[unsupported].is_string() && model[unsupported].get<std::string>().empty())) {
        return make_error(std::string(unsupported) + " is not supported",
                          {source, 0, std::string("model.") + unsupported});
      }
    }

    const json& normalizer = doc.value("normalizer", json());
    if (!normalizer.is_null()) {
      // NFC leaves text that is already composed unchanged, which is nearly all text; see
      // the limitation noted in core/io/README.md.
      const std::string ntype = normalizer.value("type", std::string());
      if (ntype != "NFC") {
        return make_error("normalizer '" + ntype +
                              "' is not supported by the byte-level BPE "
                              "reader (null or NFC)",
                          {source, 0, "normalizer"});
      }
    }
    const json& pre = doc.value("pre_tokenizer", json());
    if (auto s = tok->parse_pre_tokenizer(pre, source); !s) return s.error();
    bool byte_level = false;
    auto find_byte_level = [&](const json& node, auto&& self) -> void {
      if (!node.is_object()) return;
      if (node.value("type", std::string()) == "ByteLevel") byte_level = true;
      for (const auto& child : node.value("pretokenizers", json::array()))
        self(child, self);
    };
    find_byte_level(pre, find_byte_level);
    if (!byte_level) {
      return make_error(
          "not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer); "
          "SentencePiece-style tokenizer.json files are read from tokenizer.model",
          {source, 0, "pre_tokenizer"});
    }
    if (auto s = tok->parse_post_processor(doc.value("post_processor", json()), source); !s) {
      return s.error();
    }
  } catch (const json::exception& e) {
    return make_error(std::string("malformed tokenizer.json: ") + e.what(), {source});
  }
  for (int b = 0; b < 256; ++b) {
    auto it = tok->vocab_.find(byte_to_string()[b]);
    tok->byte_ids_[b] = it == tok->vocab_.end() ? -1 : it->second;
  }
  if (!tok->prefix_ids_.empty()) tok->bos_id_ = tok->prefix_ids_.front();
  for (const char* name : {"<|eos|>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"}) {
    if (!tok->eos_id_) tok->eos_id_ = tok->token_to_id(name);
  }
  for (const char* name : {"<|pad|>", "<pad>"}) {
    if (!tok->pad_id_) tok->pad_id_ = tok->token_to_id(name);
  }
  return tok;
}

// ---------------------------------------------------------------------------------------
// Encoding

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    std::string word;
    for (unsigned char b : piece)
      word += byte_to_string()[b];
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<int32_t> symbols;
  symbols.reserve(piece.size());
  for (unsigned char b : piece) {
    if (byte_ids_[b] >= 0) {
      symbols.push_back(byte_ids_[b]);
      continue;
    }
    // A byte whose character is missing from the vocab.
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto fallback = byte_fallback_ ? vocab_.find(name) : vocab_.end();
    if (fallback != vocab_.end()) {
      out.insert(out.end(), symbols.begin(), symbols.end());
      symbols.clear();
      out.push_back(fallback->second);
    } else if (unk_id_) {
      symbols.push_back(*unk_id_);
    }
  }
  // Lowest rank first, leftmost among equals: the order of tokenizers' priority queue.
  while (symbols.size() > 1) {
    int32_t best_rank = INT32_MAX, best_id = -1;
    std::size_t best_pos = 0;
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merges_.find(pair_key(symbols[i], symbols[i + 1]));
      if (it != merges_.end() && it->second.first < best_rank) {
        best_rank = it->second.first;
        best_id = it->second.second;
        best_pos = i;
      }
    }
    if (best_id < 0) break;
    symbols[best_pos] = best_id;
    symbols.erase(symbols.begin() + best_pos + 1);
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
}

void BpeTokenizer::encode_segment(std::string_view segment, std::vector<int32_t>& out) const {
  if (segment.empty()) return;
  std::string prefixed;
  if (add_prefix_space_ && segment.front() != ' ') {
    prefixed = " " + std::string(segment);
    segment = prefixed;
  }
  std::vector<std::pair<std::size_t, std::size_t>> pieces = {{0, segment.size()}};
  for (SplitPattern pattern : splits_) {
    std::vector<std::pair<std::size_t, std::size_t>> next;
    for (auto [begin, end] : pieces) {
      for (auto [b, e] : split_pretokens(segment.substr(begin, end - begin), pattern)) {
        next.emplace_back(begin + b, begin + e);
      }
    }
    pieces = std::move(next);
  }
  for (auto [begin, end] : pieces)
    encode_piece(segment.substr(begin, end - begin), out);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> out;
  if (add_special) out = prefix_ids_;
  // Cut out added tokens: leftmost match, longest among those starting there.
  std::size_t segment_start = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* best = nullptr;
    for (std::size_t index : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const AddedToken& t = added_[index];
      if (text.compare(i, t.content.size(), t.content) == 0 &&
          (!best || t.content.size() > best->content.size())) {
        if (t.single_word) {
          auto before = i > 0 ? decode_utf8(text.substr(0, i)).back().value : U' ';
          auto after_pos = i + t.content.size();
          auto after =
              after_pos < text.size() ? decode_utf8(text.substr(after_pos, 4)).front().value : U' ';
          if (is_word_char(before) || is_word_char(after)) continue;
        }
        best = &t;
      }
    }
    if (!best) {
      ++i;
      continue;
    }
    std::size_t match_begin = i, match_end = i + best->content.size();
    if (best->lstrip) {
      while (match_begin > segment_start &&
             is_whitespace(static_cast<unsigned char>(text[match_begin - 1]))) {
        --match_begin;
      }
    }
    if (best->rstrip) {
      while (match_end < text.size() &&
             is_whitespace(static_cast<unsigned char>(text[match_end]))) {
        ++match_end;
      }
    }
    encode_segment(text.substr(segment_start, match_begin - segment_start), out);
    out.push_back(best->id);
    segment_start = i = match_end;
  }
  encode_segment(text.substr(segment_start), out);
  if (add_special) out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
  return out;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || id_to_token_[id].empty()) continue;
    if (skip_special && special_[id]) continue;
    const std::string& token = id_to_token_[id];
    // The ByteLevel decoder maps every character back to its byte; a token with a character
    // outside the table (an added token, say) is kept as its UTF-8 text.
    std::string mapped;
    bool all_bytes = true;
    for (const auto& cp : decode_utf8(token)) {
      const int b = char_to_byte(cp.value);
      if (b < 0) {
        all_bytes = false;
        break;
      }
      mapped += static_cast<char>(b);
    }
    bytes += all_bytes ? mapped : token;
  }
  return utf8_lossy(bytes);
}

std::optional<int32_t> BpeTokenizer::token_to_id(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> BpeTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size() || id_to_token_[id].empty()) return std::nullopt;
  return id_to_token_[id];
}

// ---------------------------------------------------------------------------------------
// Training

json tokenizer_document(const std::vector<std::string>& id_to_token,
                        const std::vector<std::pair<int32_t, int32_t>>& merges,
                        const BpeTrainOptions& options) {
  json added = json::array();
  for (std::size_t i = 0; i < options.special_tokens.size(); ++i) {
    added.push_back({{"id", 256 + static_cast<int32_t>(i)},
                     {"content", options.special_tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  json vocab = json::object();
  for (std::size_t id = 0; id < id_to_token.size(); ++id)
    vocab[id_to_token[id]] = id;
  json merge_list = json::array();
  for (auto [a, b] : merges)
    merge_list.push_back({id_to_token[a], id_to_token[b]});

  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", false}};
  json pre = {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"},
                 {"pattern", {{"Regex", std::string(split_pattern_regex(options.pattern))}}},
                 {"behavior", "Isolated"},
                 {"invert", false}},
                byte_level}}};
  json post = {{"type", "ByteLevel"},
               {"add_prefix_space", true},
               {"trim_offsets", false},
               {"use_regex", true}};
  if (options.add_bos && !options.special_tokens.empty()) {
    const std::string& bos = options.special_tokens.front();
    post = {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair",
             {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
              {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens", {{bos, {{"id", bos}, {"ids", {256}}, {"tokens", {bos}}}}}}};
  }
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre},
          {"post_processor", post},
          {"decoder",
           {{"type", "ByteLevel"},
            {"add_prefix_space", true},
            {"trim_offsets", true},
            {"use_regex", true}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", merge_list}}}};
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> parse_bpe_tokenizer(std::string_view json_text,
                                                       const std::string& source) {
  auto tok = BpeTokenizer::parse(json_text, source);
  if (!tok) return tok.error();
  return std::unique_ptr<Tokenizer>(std::move(tok).value());
}

Result<std::string> train_bpe(std::string_view corpus, const BpeTrainOptions& options) {
  const int32_t first_merge_id = 256 + static_cast<int32_t>(options.special_tokens.size());
  if (options.vocab_size < first_merge_id) {
    return make_error("vocab_size " + std::to_string(options.vocab_size) +
                      " is smaller than the 256 bytes plus " +
                      std::to_string(options.special_tokens.size()) + " special tokens");
  }
  std::vector<std::string> id_to_token(256);
  for (int b = 0; b < 256; ++b)
    id_to_token[b] = byte_to_string()[b];
  std::unordered_map<std::string, int32_t> vocab;
  for (int b = 0; b < 256; ++b)
    vocab[id_to_token[b]] = b;
  for (const auto& special : options.special_tokens) {
    if (vocab.count(special)) return make_error("special token '" + special + "' is repeated");
    vocab[special] = static_cast<int32_t>(id_to_token.size());
    id_to_token.push_back(special);
  }

  // Unique pre-tokenized words with their counts.
  std::unordered_map<std::string, int64_t> word_counts;
  for (auto [begin, end] : split_pretokens(corpus, options.pattern)) {
    ++word_counts[std::string(corpus.substr(begin, end - begin))];
  }
  std::vector<std::string> sorted_words;
  sorted_words.reserve(word_counts.size());
  for (const auto& [word, count] : word_counts)
    sorted_words.push_back(word);
  std::sort(sorted_words.begin(), sorted_words.end());  // determinism across runs
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> counts;
  for (const auto& word : sorted_words) {
    words.emplace_back(word.begin(), word.end());
    for (auto& s : words.back())
      s = static_cast<unsigned char>(s);
    counts.push_back(word_counts[word]);
  }

  // Pair counts, updated incrementally, with a lazy max-heap (count, then smaller pair).
  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::unordered_set<uint32_t>> words_with_pair;
  using Entry = std::pair<int64_t, uint64_t>;
  auto heap_order = [](const Entry& x, const Entry& y) {
    return x.first != y.first ? x.first < y.first : x.second > y.second;
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(heap_order)> heap(heap_order);
  auto add_pairs = [&](uint32_t w, int64_t sign) {
    const auto& s = words[w];
    for (std::size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t key = pair_key(s[i], s[i + 1]);
      pair_counts[key] += sign * counts[w];
      if (sign > 0) words_with_pair[key].insert(w);
    }
  };
  for (uint32_t w = 0; w < words.size(); ++w)
    add_pairs(w, +1);
  for (const auto& [key, count] : pair_counts)
    heap.push({count, key});

  std::vector<std::pair<int32_t, int32_t>> merges;
  while (static_cast<int32_t>(id_to_token.size()) < options.vocab_size && !heap.empty()) {
    auto [count, key] = heap.top();
    heap.pop();
    auto current = pair_counts.find(key);
    if (current == pair_counts.end() || current->second != count) continue;  // stale
    if (count < options.min_pair_count) break;
    const int32_t a = static_cast<int32_t>(key >> 32), b = static_cast<int32_t>(key & 0xFFFFFFFF);
    const std::string merged = id_to_token[a] + id_to_token[b];
    int32_t id;
    if (auto it = vocab.find(merged); it != vocab.end()) {
      id = it->second;
    } else {
      id = static_cast<int32_t>(id_to_token.size());
      vocab[merged] = id;
      id_to_token.push_back(merged);
    }
    merges.emplace_back(a, b);
    std::unordered_set<uint64_t> touched;
    const auto holders = words_with_pair[key];
    for (uint32_t w : holders) {
      auto& s = words[w];
      for (std::size_t i = 0; i + 1 < s.size(); ++i)
        touched.insert(pair_key(s[i], s[i + 1]));
      add_pairs(w, -1);
      std::vector<int32_t> next;
      next.reserve(s.size());
      for (std::size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          next.push_back(id);
          ++i;
        } else {
          next.push_back(s[i]);
        }
      }
      s = std::move(next);
      add_pairs(w, +1);
      for (std::size_t i = 0; i + 1 < s.size(); ++i)
        touched.insert(pair_key(s[i], s[i + 1]));
    }
    pair_counts.erase(key);
    words_with_pair.erase(key);
    for (uint64_t t : touched) {
      auto it = pair_counts.find(t);
      if (it == pair_counts.end()) continue;
      if (it->second <= 0) {
        pair_counts.erase(it);
      } else {
        heap.push({it->second, t});
      }
    }
  }
  return tokenizer_document(id_to_token, merges, options).dump();
}

std::string byte_tokenizer_json() {
  BpeTrainOptions options;
  options.vocab_size = 259;
  auto text = train_bpe("", options);
  assert(text.ok());
  return std::move(text).value();
}

std::unique_ptr<Tokenizer> make_byte_tokenizer() {
  auto tok = parse_bpe_tokenizer(byte_tokenizer_json(), "<built-in byte tokenizer>");
  assert(tok.ok());
  return std::move(tok).value();
}

Status save_tokenizer(const std::filesystem::path& dir, std::string_view tokenizer_json,
                      const std::string& bos_token, const std::string& eos_token,
                      const std::string& pad_token) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error("cannot create directory: " + ec.message(), {dir.string()});
  if (auto s = write_file_atomically(dir / "tokenizer.json",
                                     [&](std::ostream& out) { out << tokenizer_json; });
      !s) {
    return s;
  }
  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                 {"clean_up_tokenization_spaces", false},
                 {"model_max_length", 1000000000}};
  if (!bos_token.empty()) config["bos_token"] = bos_token;
  if (!eos_token.empty()) config["eos_token"] = eos_token;
  if (!pad_token.empty()) config["pad_token"] = pad_token;
  const std::string text = config.dump(2) + "\n";
  return write_file_atomically(dir / "tokenizer_config.json",
                               [&](std::ostream& out) { out << text; });
}

}  // namespace hl::io
