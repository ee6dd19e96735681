// Tokenizers of Hugging Face model directories: byte-level BPE from tokenizer.json,
// SentencePiece from tokenizer.model, and HybridLab's built-in byte-level tokenizer.
//
// The built-in byte tokenizer is itself a byte-level BPE tokenizer.json with no merges
// (ids 0..255 are the bytes, then <|bos|>, <|eos|>, <|pad|>), so one code path serves it
// and transformers' AutoTokenizer reads the same file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/io/pretokenizer.hpp"
#include "core/util/error.hpp"

namespace hl::io {

/// Text <-> token ids.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  /// Token ids of `text`; with add_special, the BOS/EOS the tokenizer's template adds.
  /// Special tokens written in the text (e.g. "<|eos|>") are recognised either way.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special = false) const = 0;
  /// Text of `ids` (invalid UTF-8 from partial byte tokens becomes U+FFFD).
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;
  /// One past the largest id.
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::optional<std::string> id_to_token(int32_t id) const = 0;
  /// "bpe" or "sentencepiece".
  virtual std::string_view kind() const = 0;

  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  std::optional<int32_t> pad_id() const { return pad_id_; }
  /// Overrides the special ids (e.g. from tokenizer_config.json).
  void set_special_ids(std::optional<int32_t> bos, std::optional<int32_t> eos,
                       std::optional<int32_t> pad);

 protected:
  std::optional<int32_t> bos_id_, eos_id_, pad_id_;
};

/// Loads the tokenizer of a model directory: tokenizer.json when it is byte-level BPE,
/// otherwise tokenizer.model (SentencePiece); BOS/EOS/PAD come from tokenizer_config.json
/// when present. A path to a tokenizer.json or tokenizer.model file also works.
Result<std::unique_ptr<Tokenizer>> load_tokenizer(const std::filesystem::path& path);

/// Parses a byte-level BPE tokenizer.json (`source` names it in errors).
Result<std::unique_ptr<Tokenizer>> parse_bpe_tokenizer(std::string_view json_text,
                                                       const std::string& source);

/// Reads a SentencePiece tokenizer.model (unigram or BPE model, identity normaliser).
Result<std::unique_ptr<Tokenizer>> load_sentencepiece_tokenizer(const std::filesystem::path& file);

/// Options of the small BPE trainer.
struct BpeTrainOptions {
  int32_t vocab_size = 512;  // bytes + specials + merges
  SplitPattern pattern = SplitPattern::kLlama3;
  /// Added as special tokens after the 256 bytes; the first three are BOS, EOS, PAD.
  std::vector<std::string> special_tokens = {"<|bos|>", "<|eos|>", "<|pad|>"};
  /// Whether encode(text, add_special = true) prepends BOS (a TemplateProcessing).
  bool add_bos = true;
  /// Pairs seen fewer times than this are not merged (training stops early).
  int64_t min_pair_count = 2;
};

/// Trains byte-level BPE on `corpus` and returns tokenizer.json text. Ids 0..255 are the
/// bytes (so any text encodes), then the special tokens, then one token per merge.
Result<std::string> train_bpe(std::string_view corpus, const BpeTrainOptions& options = {});

/// tokenizer.json of the built-in byte-level tokenizer (259 tokens, no merges).
std::string byte_tokenizer_json();
/// The built-in byte-level tokenizer.
std::unique_ptr<Tokenizer> make_byte_tokenizer();

/// Writes tokenizer.json and a tokenizer_config.json naming BOS/EOS/PAD, so that both
/// load_tokenizer and transformers' AutoTokenizer read the directory.
Status save_tokenizer(const std::filesystem::path& dir, std::string_view tokenizer_json,
                      const std::string& bos_token = "<|bos|>",
                      const std::string& eos_token = "<|eos|>",
                      const std::string& pad_token = "<|pad|>");

}  // namespace hl::io
