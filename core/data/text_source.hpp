// Streaming text sources: plain text, JSONL / JSON-array records with a text field,
// Alpaca-style instruction records through a prompt template, and the fortunes files of
// Debian's `fortunes` packages. Files are read in blocks, never whole.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/util/error.hpp"

namespace hl::data {

/// A piece of text. A long document arrives in several pieces; only the last has
/// ends_document set (the packer puts EOS there).
struct Document {
  std::string text;
  bool ends_document = true;
  uint64_t index = 0;  // ordinal of the document in its source, shared by its pieces
};

/// A stream of documents; next() returns nullopt at the end, an Error on bad input (with
/// file and line).
class TextSource {
 public:
  virtual ~TextSource() = default;
  virtual Result<std::optional<Document>> next() = 0;
  /// Starts again from the first document (for multi-epoch training).
  virtual Status rewind() = 0;
};

/// How plain-text files become documents.
struct PlainTextOptions {
  /// Each file is one document unless blank lines separate documents.
  bool blank_line_separates_documents = false;
  /// Pieces of a long document are at most this many bytes, cut after a newline or space
  /// where possible (never inside a UTF-8 character).
  std::size_t max_piece_bytes = 1 << 20;
};

/// Prompt template of instruction records; {instruction}, {input}, {output} are replaced.
struct PromptTemplate {
  std::string with_input =
      "Below is a task with some context. Write a response that completes it.\n\n"
      "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}";
  std::string without_input =
      "Below is a task. Write a response that completes it.\n\n"
      "### Instruction:\n{instruction}\n\n### Response:\n{output}";
};

/// Plain UTF-8 text files, in order.
std::unique_ptr<TextSource> make_plain_text_source(std::vector<std::filesystem::path> files,
                                                   PlainTextOptions options = {});
/// JSON records, one per line (JSONL) or as one top-level array, with a string field.
std::unique_ptr<TextSource> make_json_text_source(std::vector<std::filesystem::path> files,
                                                  std::string text_field = "text");
/// Alpaca-style records (instruction, optional input, output) rendered through a template.
std::unique_ptr<TextSource> make_instruction_source(std::vector<std::filesystem::path> files,
                                                    PromptTemplate prompt = {});
/// The fortunes of Debian's fortunes / fortunes-min packages, one document per fortune
/// (builtin:fortunes reads $HL_FORTUNES_DIR instead of the default folder when it is set).
Result<std::unique_ptr<TextSource>> make_fortunes_source(
    const std::filesystem::path& dir = "/usr/share/games/fortunes");

/// Source kinds for open_text_source.
enum class TextFormat { kAuto, kPlain, kJson, kInstruction };

/// Opens "builtin:fortunes" or a file: .jsonl/.json are JSON records (instruction records
/// when the first one has an "instruction" field under kAuto), anything else plain text.
Result<std::unique_ptr<TextSource>> open_text_source(const std::string& spec,
                                                     TextFormat format = TextFormat::kAuto,
                                                     const std::string& text_field = "text");

/// Which side of the train/validation split to keep.
enum class SplitSide { kTrain, kValidation };

/// True when document `index` belongs to validation: a hash of (seed, index) below
/// `fraction`. Deterministic across runs and machines.
bool is_validation_document(uint64_t index, double fraction, uint64_t seed);

/// Keeps the documents of one side of the split.
std::unique_ptr<TextSource> make_split_source(std::unique_ptr<TextSource> source, SplitSide side,
                                              double validation_fraction, uint64_t seed);

}  // namespace hl::data
