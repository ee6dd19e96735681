#include "core/io/tokenizer.hpp"

#include <nlohmann/json.hpp>

#include "core/io/file_util.hpp"

namespace hl::io {

namespace fs = std::filesystem;

void Tokenizer::set_special_ids(std::optional<int32_t> bos, std::optional<int32_t> eos,
                                std::optional<int32_t> pad) {
  bos_id_ = bos;
  eos_id_ = eos;
  pad_id_ = pad;
}

namespace {

// tokenizer_config.json names BOS/EOS/PAD as a string or as {"content": ...}.
Status apply_tokenizer_config(const fs::path& file, Tokenizer& tok) {
  auto text = read_text_file(file);
  if (!text) return text.error();
  auto doc = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return make_error("tokenizer_config.json is not a JSON object", {file.string()});
  }
  auto lookup = [&](const char* key,
                    std::optional<int32_t> current) -> Result<std::optional<int32_t>> {
    auto it = doc.find(key);
    if (it == doc.end() || it->is_null()) return current;
    std::string name;
    if (it->is_string()) {
      name = it->get<std::string>();
    } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
      name = (*it)["content"].get<std::string>();
    } else {
      return make_error("must be a token string or {\"content\": ...}", {file.string(), 0, key});
    }
    auto id = tok.token_to_id(name);
    if (!id) {
      return make_error("token '" + name + "' is not in the vocabulary", {file.string(), 0, key});
    }
    return std::optional<int32_t>(*id);
  };
  auto bos = lookup("bos_token", tok.bos_id());
  if (!bos) return bos.error();
  auto eos = lookup("eos_token", tok.eos_id());
  if (!eos) return eos.error();
  auto pad = lookup("pad_token", tok.pad_id());
  if (!pad) return pad.error();
  tok.set_special_ids(*bos, *eos, *pad);
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> load_tokenizer(const fs::path& path) {
  std::error_code ec;
  fs::path dir = path, json_file, model_file;
  if (fs::is_directory(path, ec)) {
    json_file = path / "tokenizer.json";
    model_file = path / "tokenizer.model";
  } else if (path.extension() == ".model") {
    model_file = path;
    dir = path.parent_path();
  } else {
    json_file = path;
    dir = path.parent_path();
  }

  Result<std::unique_ptr<Tokenizer>> loaded =
      make_error("no tokenizer.json or tokenizer.model", {path.string()});
  if (!json_file.empty() && fs::exists(json_file, ec)) {
    auto text = read_text_file(json_file);
    if (!text) return text.error();
    loaded = parse_bpe_tokenizer(*text, json_file.string());
    // SentencePiece-style tokenizer.json files come with tokenizer.model; use that instead.
    if (!loaded && !model_file.empty() && fs::exists(model_file, ec)) {
      loaded = load_sentencepiece_tokenizer(model_file);
    }
  } else if (!model_file.empty() && fs::exists(model_file, ec)) {
    loaded = load_sentencepiece_tokenizer(model_file);
  }
  if (!loaded) return loaded;
  const fs::path config = dir / "tokenizer_config.json";
  if (fs::exists(config, ec)) {
    if (auto s = apply_tokenizer_config(config, **loaded); !s) return s.error();
  }
  return loaded;
}

}  // namespace hl::io
