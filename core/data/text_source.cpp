#include "core/data/text_source.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

namespace hl::data {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::size_t kBlockBytes = 1 << 16;

// Largest cut <= limit that does not split a UTF-8 character, preferring just after a
// newline, then after a space.
std::size_t cut_point(const std::string& text, std::size_t limit) {
  if (text.size() <= limit) return text.size();
  auto newline = text.rfind('\n', limit - 1);
  if (newline != std::string::npos && newline > limit / 2) return newline + 1;
  auto space = text.rfind(' ', limit - 1);
  if (space != std::string::npos && space > limit / 2) return space + 1;
  std::size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80)
    --cut;
  return cut > 0 ? cut : limit;
}

Error file_error(const fs::path& file, int line, std::string message, std::string key = {}) {
  return make_error(std::move(message), {file.string(), line, std::move(key)});
}

// ---------------------------------------------------------------------------------------

class PlainTextSource final : public TextSource {
 public:
  PlainTextSource(std::vector<fs::path> files, PlainTextOptions options)
      : files_(std::move(files)), options_(options) {}

  Result<std::optional<Document>> next() override {
    while (true) {
      if (!in_.is_open()) {
        if (file_index_ >= files_.size()) return std::optional<Document>();
        in_.open(files_[file_index_], std::ios::binary);
        if (!in_) {
          return file_error(files_[file_index_], 0,
                            std::string("cannot open text file: ") + std::strerror(errno));
        }
        carry_.clear();
        eof_ = false;
      }
      auto piece = options_.blank_line_separates_documents ? next_paragraph() : next_block();
      if (piece) return piece;
      in_.close();
      ++file_index_;
    }
  }

  Status rewind() override {
    in_.close();
    file_index_ = 0;
    document_ = 0;
    return Status::Ok();
  }

 private:
  void fill(std::size_t want) {
    char block[kBlockBytes];
    while (!eof_ && carry_.size() < want) {
      in_.read(block, sizeof block);
      carry_.append(block, static_cast<std::size_t>(in_.gcount()));
      if (!in_) eof_ = true;
    }
  }

  std::optional<Document> emit(std::string text, bool ends) {
    Document doc{std::move(text), ends, document_};
    if (ends) ++document_;
    return doc;
  }

  // The whole file as one document, in pieces.
  std::optional<Document> next_block() {
    fill(options_.max_piece_bytes + 1);
    if (carry_.empty()) return std::nullopt;
    const std::size_t cut = cut_point(carry_, options_.max_piece_bytes);
    std::string piece = carry_.substr(0, cut);
    carry_.erase(0, cut);
    fill(1);
    return emit(std::move(piece), carry_.empty() && eof_);
  }

  // Paragraphs separated by blank lines; a paragraph longer than the limit is cut.
  std::optional<Document> next_paragraph() {
    std::string paragraph;
    while (true) {
      fill(options_.max_piece_bytes + 1);
      if (carry_.empty()) break;
      auto newline = carry_.find('\n');
      std::size_t line_end = newline == std::string::npos ? carry_.size() : newline + 1;
      std::string_view line(carry_.data(), line_end);
      const bool blank = line.find_first_not_of(" \t\r\n") == std::string_view::npos;
      if (blank) {
        carry_.erase(0, line_end);
        if (!paragraph.empty()) return emit(std::move(paragraph), true);
        continue;
      }
      if (paragraph.size() + line.size() > options_.max_piece_bytes && !paragraph.empty()) {
        return emit(std::move(paragraph), false);
      }
      if (line.size() > options_.max_piece_bytes) {
        const std::size_t cut = cut_point(carry_, options_.max_piece_bytes);
        std::string piece = carry_.substr(0, cut);
        carry_.erase(0, cut);
        return emit(std::move(piece), false);
      }
      paragraph.append(line);
      carry_.erase(0, line_end);
    }
    if (!paragraph.empty()) return emit(std::move(paragraph), true);
    return std::nullopt;
  }

  std::vector<fs::path> files_;
  PlainTextOptions options_;
  std::size_t file_index_ = 0;
  std::ifstream in_;
  std::string carry_;
  bool eof_ = false;
  uint64_t document_ = 0;
};

// ---------------------------------------------------------------------------------------

// JSON records from JSONL, or from one top-level array scanned element by element so the
// array is never held whole.
class JsonRecordReader {
 public:
  Status open(const fs::path& file) {
    file_ = file;
    in_ = std::ifstream(file, std::ios::binary);
    if (!in_)
      return file_error(file, 0, std::string("cannot open JSON file: ") + std::strerror(errno));
    line_ = 1;
    array_mode_ = false;
    finished_ = false;
    int c;
    while ((c = in_.peek()) != EOF && std::isspace(c)) {
      if (c == '\n') ++line_;
      in_.get();
    }
    if (c == '[') {
      array_mode_ = true;
      in_.get();
    }
    return Status::Ok();
  }

  // The next record and the line it starts on.
  Result<std::optional<std::pair<json, int>>> next() {
    return array_mode_ ? next_array_element() : next_line();
  }

 private:
  Result<std::optional<std::pair<json, int>>> parse(const std::string& text, int line) {
    json record = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded()) return file_error(file_, line, "record is not valid JSON");
    if (!record.is_object()) return file_error(file_, line, "record is not a JSON object");
    return std::optional<std::pair<json, int>>({std::move(record), line});
  }

  Result<std::optional<std::pair<json, int>>> next_line() {
    std::string text;
    while (std::getline(in_, text)) {
      const int line = line_++;
      if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
      return parse(text, line);
    }
    return std::optional<std::pair<json, int>>();
  }

  Result<std::optional<std::pair<json, int>>> next_array_element() {
    if (finished_) return std::optional<std::pair<json, int>>();
    int c;
    // Skip separators up to the next element or the closing bracket.
    while ((c = in_.get()) != EOF) {
      if (c == '\n') ++line_;
      if (std::isspace(c) || c == ',') continue;
      break;
    }
    if (c == EOF) return file_error(file_, line_, "JSON array is not closed (file truncated?)");
    if (c == ']') {
      finished_ = true;
      return std::optional<std::pair<json, int>>();
    }
    if (c != '{') return file_error(file_, line_, "array element is not a JSON object");
    const int start_line = line_;
    std::string text(1, '{');
    int depth = 1;
    bool in_string = false, escaped = false;
    while (depth > 0 && (c = in_.get()) != EOF) {
      text += static_cast<char>(c);
      if (c == '\n') ++line_;
      if (in_string) {
        if (escaped) {
          escaped = false;
        } else if (c == '\\') {
          escaped = true;
        } else if (c == '"') {
          in_string = false;
        }
      } else if (c == '"') {
        in_string = true;
      } else if (c == '{' || c == '[') {
        ++depth;
      } else if (c == '}' || c == ']') {
        --depth;
      }
    }
    if (depth > 0) return file_error(file_, start_line, "record is not closed (file truncated?)");
    return parse(text, start_line);
  }

  fs::path file_;
  std::ifstream in_;
  int line_ = 1;
  bool array_mode_ = false;
  bool finished_ = false;
};

// Records of several files, turned into text by `render`.
class JsonSource final : public TextSource {
 public:
  using Render = std::function<Result<std::string>(const json&, const fs::path&, int)>;
  JsonSource(std::vector<fs::path> files, Render render)
      : files_(std::move(files)), render_(std::move(render)) {}

  Result<std::optional<Document>> next() override {
    while (true) {
      if (!open_) {
        if (file_index_ >= files_.size()) return std::optional<Document>();
        if (auto s = reader_.open(files_[file_index_]); !s) return s.error();
        open_ = true;
      }
      auto record = reader_.next();
      if (!record) return record.error();
      if (!record->has_value()) {
        open_ = false;
        ++file_index_;
        continue;
      }
      auto text = render_((*record)->first, files_[file_index_], (*record)->second);
      if (!text) return text.error();
      return std::optional<Document>(Document{std::move(text).value(), true, document_++});
    }
  }

  Status rewind() override {
    open_ = false;
    file_index_ = 0;
    document_ = 0;
    return Status::Ok();
  }

 private:
  std::vector<fs::path> files_;
  Render render_;
  JsonRecordReader reader_;
  bool open_ = false;
  std::size_t file_index_ = 0;
  uint64_t document_ = 0;
};

Result<std::string> string_field(const json& record, const std::string& field, const fs::path& file,
                                 int line, bool required) {
  auto it = record.find(field);
  if (it == record.end() || it->is_null()) {
    if (required) return file_error(file, line, "record has no '" + field + "' field", field);
    return std::string();
  }
  if (!it->is_string()) {
    return file_error(file, line, std::string("field is not a string but ") + it->type_name(),
                      field);
  }
  return it->get<std::string>();
}

void replace_all(std::string& text, const std::string& key, const std::string& value) {
  std::size_t pos = 0;
  while ((pos = text.find(key, pos)) != std::string::npos) {
    text.replace(pos, key.size(), value);
    pos += value.size();
  }
}

// ---------------------------------------------------------------------------------------

class FortunesSource final : public TextSource {
 public:
  explicit FortunesSource(std::vector<fs::path> files) : files_(std::move(files)) {}

  Result<std::optional<Document>> next() override {
    while (true) {
      if (!in_.is_open()) {
        if (file_index_ >= files_.size()) return std::optional<Document>();
        in_.open(files_[file_index_], std::ios::binary);
        if (!in_) return file_error(files_[file_index_], 0, "cannot open fortunes file");
      }
      std::string line, fortune;
      bool got_line = false;
      while (std::getline(in_, line)) {
        got_line = true;
        if (line == "%") {
          if (!fortune.empty()) break;
          continue;
        }
        fortune += line;
        fortune += '\n';
      }
      if (!fortune.empty()) {
        return std::optional<Document>(Document{std::move(fortune), true, document_++});
      }
      if (!got_line || in_.eof()) {
        in_.close();
        ++file_index_;
      }
    }
  }

  Status rewind() override {
    in_.close();
    file_index_ = 0;
    document_ = 0;
    return Status::Ok();
  }

 private:
  std::vector<fs::path> files_;
  std::size_t file_index_ = 0;
  std::ifstream in_;
  uint64_t document_ = 0;
};

// ---------------------------------------------------------------------------------------

// SplitMix64: a fixed, well-mixed hash, identical on every platform.
uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class SplitSource final : public TextSource {
 public:
  SplitSource(std::unique_ptr<TextSource> source, SplitSide side, double fraction, uint64_t seed)
      : source_(std::move(source)), side_(side), fraction_(fraction), seed_(seed) {}

  Result<std::optional<Document>> next() override {
    while (true) {
      auto doc = source_->next();
      if (!doc || !doc->has_value()) return doc;
      const bool validation = is_validation_document((*doc)->index, fraction_, seed_);
      if (validation == (side_ == SplitSide::kValidation)) return doc;
    }
  }
  Status rewind() override { return source_->rewind(); }

 private:
  std::unique_ptr<TextSource> source_;
  SplitSide side_;
  double fraction_;
  uint64_t seed_;
};

}  // namespace

std::unique_ptr<TextSource> make_plain_text_source(std::vector<fs::path> files,
                                                   PlainTextOptions options) {
  options.max_piece_bytes = std::max<std::size_t>(options.max_piece_bytes, 16);
  return std::make_unique<PlainTextSource>(std::move(files), options);
}

std::unique_ptr<TextSource> make_json_text_source(std::vector<fs::path> files,
                                                  std::string text_field) {
  return std::make_unique<JsonSource>(
      std::move(files),
      [field = std::move(text_field)](const json& record, const fs::path& file, int line) {
        return string_field(record, field, file, line, true);
      });
}

std::unique_ptr<TextSource> make_instruction_source(std::vector<fs::path> files,
                                                    PromptTemplate prompt) {
  return std::make_unique<JsonSource>(
      std::move(files),
      [prompt = std::move(prompt)](const json& record, const fs::path& file,
                                   int line) -> Result<std::string> {
        auto instruction = string_field(record, "instruction", file, line, true);
        if (!instruction) return instruction.error();
        auto input = string_field(record, "input", file, line, false);
        if (!input) return input.error();
        auto output = string_field(record, "output", file, line, true);
        if (!output) return output.error();
        std::string text = input->empty() ? prompt.without_input : prompt.with_input;
        // Output last, so braces inside the user's fields are never taken as placeholders.
        replace_all(text, "{output}", "\x01OUTPUT\x01");
        replace_all(text, "{input}", "\x01INPUT\x01");
        replace_all(text, "{instruction}", *instruction);
        replace_all(text, "\x01INPUT\x01", *input);
        replace_all(text, "\x01OUTPUT\x01", *output);
        return text;
      });
}

Result<std::unique_ptr<TextSource>> make_fortunes_source(const fs::path& dir) {
  std::error_code ec;
  std::vector<fs::path> files;
  if (fs::is_directory(dir, ec)) {
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      const auto ext = entry.path().extension();
      if (ext == ".dat" || ext == ".u8" || !entry.is_regular_file(ec)) continue;
      files.push_back(entry.path());
    }
  }
  if (files.empty()) {
    return make_error(
        "no fortunes found; install Debian's 'fortunes-min' or 'fortunes' package "
        "(apt-get install fortunes-min)",
        {dir.string()});
  }
  std::sort(files.begin(), files.end());
  return std::unique_ptr<TextSource>(std::make_unique<FortunesSource>(std::move(files)));
}

Result<std::unique_ptr<TextSource>> open_text_source(const std::string& spec, TextFormat format,
                                                     const std::string& text_field) {
  if (spec == "builtin:fortunes") {
    // Where the packages were unpacked into a prefix of their own (the GPU machine).
    const char* dir = std::getenv("HL_FORTUNES_DIR");
    return dir && *dir ? make_fortunes_source(dir) : make_fortunes_source();
  }
  if (spec.rfind("builtin:", 0) == 0) {
    return make_error("unknown built-in source '" + spec + "' (known: builtin:fortunes)");
  }
  const fs::path path(spec);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return make_error("data file does not exist", {spec});
  const auto ext = path.extension();
  if (format == TextFormat::kAuto) {
    format = (ext == ".jsonl" || ext == ".json") ? TextFormat::kJson : TextFormat::kPlain;
    if (format == TextFormat::kJson) {
      JsonRecordReader probe;
      if (auto s = probe.open(path); !s) return s.error();
      auto first = probe.next();
      if (!first) return first.error();
      if (first->has_value() && (*first)->first.contains("instruction")) {
        format = TextFormat::kInstruction;
      }
    }
  }
  switch (format) {
    case TextFormat::kPlain:
      return make_plain_text_source({path});
    case TextFormat::kJson:
      return make_json_text_source({path}, text_field);
    case TextFormat::kInstruction:
      return make_instruction_source({path});
    case TextFormat::kAuto:
      break;
  }
  return make_plain_text_source({path});
}

bool is_validation_document(uint64_t index, double fraction, uint64_t seed) {
  if (fraction <= 0) return false;
  if (fraction >= 1) return true;
  const uint64_t h = mix64(mix64(seed) ^ index);
  return static_cast<double>(h >> 11) * 0x1.0p-53 < fraction;
}

std::unique_ptr<TextSource> make_split_source(std::unique_ptr<TextSource> source, SplitSide side,
                                              double validation_fraction, uint64_t seed) {
  return std::make_unique<SplitSource>(std::move(source), side, validation_fraction, seed);
}

}  // namespace hl::data
