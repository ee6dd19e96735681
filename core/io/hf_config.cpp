#include "core/io/hf_config.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/io/file_util.hpp"

namespace hl::io {

namespace {

using nlohmann::json;

struct Architecture {
  std::string_view model_type;
  std::string_view class_name;
};
constexpr Architecture kArchitectures[] = {
    {"llama", "LlamaForCausalLM"},
    {"mistral", "MistralForCausalLM"},
    {"qwen2", "Qwen2ForCausalLM"},
};

// 1-based line of a byte offset, for JSON syntax errors.
int line_of(std::string_view text, std::size_t byte) {
  byte = std::min(byte, text.size());
  return 1 + static_cast<int>(std::count(text.begin(), text.begin() + byte, '\n'));
}

// Typed field access that reports the field and the file.
class Fields {
 public:
  Fields(const json& object, const std::string& source) : object_(object), source_(source) {}

  Error error(const std::string& key, const std::string& message) const {
    return make_error(message, {source_, 0, key});
  }
  bool has(const char* key) const {
    auto it = object_.find(key);
    return it != object_.end() && !it->is_null();
  }
  const json& at(const char* key) const { return object_.at(key); }

  std::optional<Error> integer(const char* key, int64_t& out, bool required,
                               int64_t min_value = 0) const {
    if (!has(key)) {
      if (required) return error(key, "required field is missing");
      return std::nullopt;
    }
    const json& v = at(key);
    if (!v.is_number_integer()) {
      return error(key, std::string("must be an integer, got ") + v.type_name());
    }
    const int64_t value = v.get<int64_t>();
    if (value < min_value) {
      return error(
          key, "must be at least " + std::to_string(min_value) + ", got " + std::to_string(value));
    }
    out = value;
    return std::nullopt;
  }
  std::optional<Error> number(const char* key, double& out) const {
    if (!has(key)) return std::nullopt;
    const json& v = at(key);
    if (!v.is_number()) return error(key, std::string("must be a number, got ") + v.type_name());
    out = v.get<double>();
    return std::nullopt;
  }
  std::optional<Error> boolean(const char* key, bool& out) const {
    if (!has(key)) return std::nullopt;
    const json& v = at(key);
    if (!v.is_boolean())
      return error(key, std::string("must be true or false, got ") + v.type_name());
    out = v.get<bool>();
    return std::nullopt;
  }
  std::optional<Error> string(const char* key, std::string& out) const {
    if (!has(key)) return std::nullopt;
    const json& v = at(key);
    if (!v.is_string()) return error(key, std::string("must be a string, got ") + v.type_name());
    out = v.get<std::string>();
    return std::nullopt;
  }
  // An int or a list of ints (bos_token_id / eos_token_id).
  std::optional<Error> id_list(const char* key, std::vector<int64_t>& out) const {
    out.clear();
    if (!has(key)) return std::nullopt;
    const json& v = at(key);
    if (v.is_number_integer()) {
      out.push_back(v.get<int64_t>());
      return std::nullopt;
    }
    if (v.is_array()) {
      for (const auto& item : v) {
        if (!item.is_number_integer()) return error(key, "list entries must be integers");
        out.push_back(item.get<int64_t>());
      }
      return std::nullopt;
    }
    return error(key,
                 std::string("must be an integer or a list of integers, got ") + v.type_name());
  }

 private:
  const json& object_;
  const std::string& source_;
};

std::optional<Error> parse_rope_scaling(const json& value, const std::string& source,
                                        const char* key, std::optional<RopeScalingConfig>& out) {
  out.reset();
  if (value.is_null()) return std::nullopt;
  if (!value.is_object()) {
    return make_error(std::string("must be null or an object, got ") + value.type_name(),
                      {source, 0, key});
  }
  Fields f(value, source);
  std::string type;
  if (auto e = f.string("rope_type", type)) return e;
  if (type.empty()) {
    if (auto e = f.string("type", type)) return e;
  }
  if (type.empty() || type == "default") return std::nullopt;
  if (type != "llama3" && type != "linear") {
    return make_error(
        "rope scaling type '" + type + "' is not supported (supported: llama3, linear, default)",
        {source, 0, key});
  }
  RopeScalingConfig scaling;
  scaling.type = type;
  if (!f.has("factor")) return make_error("'factor' is missing", {source, 0, key});
  if (auto e = f.number("factor", scaling.factor)) return e;
  if (type == "llama3") {
    if (auto e = f.number("low_freq_factor", scaling.low_freq_factor)) return e;
    if (auto e = f.number("high_freq_factor", scaling.high_freq_factor)) return e;
    if (auto e = f.integer("original_max_position_embeddings",
                           scaling.original_max_position_embeddings, false, 1)) {
      return e;
    }
  }
  out = scaling;
  return std::nullopt;
}

}  // namespace

Result<ModelConfig> parse_model_config(std::string_view json_text, const std::string& source) {
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::parse_error& e) {
    return make_error(std::string("config is not valid JSON: ") + e.what(),
                      {source, line_of(json_text, e.byte)});
  }
  if (!doc.is_object()) return make_error("config must be a JSON object", {source});
  Fields f(doc, source);
  ModelConfig c;

  // model_type decides; architectures is the fallback transformers itself would use.
  std::string model_type;
  if (auto e = f.string("model_type", model_type)) return *e;
  if (f.has("architectures")) {
    const json& archs = f.at("architectures");
    if (!archs.is_array()) return f.error("architectures", "must be a list of strings");
    for (const auto& a : archs) {
      if (!a.is_string()) return f.error("architectures", "must be a list of strings");
      c.architectures.push_back(a.get<std::string>());
    }
  }
  if (model_type.empty()) {
    for (const auto& arch : kArchitectures) {
      if (!c.architectures.empty() && c.architectures.front() == arch.class_name) {
        model_type = arch.model_type;
      }
    }
    if (model_type.empty()) {
      return f.error("model_type",
                     c.architectures.empty()
                         ? "missing, and no known 'architectures' entry to infer it from"
                         : "unsupported architecture '" + c.architectures.front() +
                               "' (supported: LlamaForCausalLM, MistralForCausalLM, "
                               "Qwen2ForCausalLM)");
    }
  }
  const Architecture* arch = nullptr;
  for (const auto& a : kArchitectures) {
    if (a.model_type == model_type) arch = &a;
  }
  if (!arch) {
    return f.error("model_type", "unsupported architecture '" + model_type +
                                     "' (supported: llama, mistral, qwen2)");
  }
  c.model_type = model_type;
  if (c.architectures.empty()) c.architectures.emplace_back(arch->class_name);

  if (auto e = f.integer("vocab_size", c.vocab_size, true, 1)) return *e;
  if (auto e = f.integer("hidden_size", c.hidden_size, true, 1)) return *e;
  if (auto e = f.integer("intermediate_size", c.intermediate_size, true, 1)) return *e;
  if (auto e = f.integer("num_hidden_layers", c.num_hidden_layers, true, 1)) return *e;
  if (auto e = f.integer("num_attention_heads", c.num_attention_heads, true, 1)) return *e;
  c.num_key_value_heads = c.num_attention_heads;
  if (auto e = f.integer("num_key_value_heads", c.num_key_value_heads, false, 1)) return *e;
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return f.error("num_key_value_heads", "must divide num_attention_heads (" +
                                              std::to_string(c.num_attention_heads) + "), got " +
                                              std::to_string(c.num_key_value_heads));
  }
  if (f.has("head_dim")) {
    if (auto e = f.integer("head_dim", c.head_dim, true, 1)) return *e;
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return f.error("head_dim",
                     "missing, and hidden_size is not divisible by "
                     "num_attention_heads");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (model_type == "mistral") c.max_position_embeddings = 4096 * 32;
  if (model_type == "qwen2") c.max_position_embeddings = 32768;
  if (auto e = f.integer("max_position_embeddings", c.max_position_embeddings, false, 1)) {
    return *e;
  }
  if (auto e = f.number("rms_norm_eps", c.rms_norm_eps)) return *e;
  if (auto e = f.number("rope_theta", c.rope_theta)) return *e;
  if (f.has("rope_scaling")) {
    if (auto e = parse_rope_scaling(f.at("rope_scaling"), source, "rope_scaling", c.rope_scaling)) {
      return *e;
    }
  }
  // transformers 5 moves theta and scaling into one "rope_parameters" object.
  if (f.has("rope_parameters")) {
    const json& params = f.at("rope_parameters");
    if (!params.is_object()) return f.error("rope_parameters", "must be an object");
    Fields p(params, source);
    if (auto e = p.number("rope_theta", c.rope_theta)) return *e;
    if (auto e = parse_rope_scaling(params, source, "rope_parameters", c.rope_scaling)) {
      return *e;
    }
  }
  if (auto e = f.boolean("tie_word_embeddings", c.tie_word_embeddings)) return *e;
  bool attention_bias = false;
  if (auto e = f.boolean("attention_bias", attention_bias)) return *e;
  if (model_type == "llama") {
    c.qkv_bias = c.o_proj_bias = attention_bias;
    if (auto e = f.boolean("mlp_bias", c.mlp_bias)) return *e;
  } else if (model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
  }
  if (auto e = f.string("hidden_act", c.hidden_act)) return *e;
  if (c.hidden_act != "silu") {
    return f.error("hidden_act", "only 'silu' is supported, got '" + c.hidden_act + "'");
  }

  if (model_type == "mistral" || model_type == "qwen2") {
    int64_t window = 0;
    if (auto e = f.integer("sliding_window", window, false, 1)) return *e;
    bool use_window = model_type == "mistral";
    if (auto e = f.boolean("use_sliding_window", use_window)) return *e;
    if (model_type == "qwen2" && use_window) {
      // Qwen2 windows only layers >= max_window_layers; one window for all or none is
      // what the decoder models.
      int64_t first_windowed = 28;  // transformers' default
      if (auto e = f.integer("max_window_layers", first_windowed, false, 0)) return *e;
      if (first_windowed >= c.num_hidden_layers) {
        use_window = false;
      } else if (first_windowed > 0) {
        return f.error("max_window_layers",
                       "a sliding window on only some layers is not supported (got " +
                           std::to_string(first_windowed) + " of " +
                           std::to_string(c.num_hidden_layers) + " layers unwindowed)");
      }
    }
    if (use_window && window > 0) c.sliding_window = window;
  }
  if (auto e = f.id_list("bos_token_id", c.bos_token_ids)) return *e;
  if (auto e = f.id_list("eos_token_id", c.eos_token_ids)) return *e;
  if (f.has("pad_token_id")) {
    int64_t pad = 0;
    if (auto e = f.integer("pad_token_id", pad, true, 0)) return *e;
    c.pad_token_id = pad;
  }
  if (f.has("torch_dtype")) {
    if (auto e = f.string("torch_dtype", c.torch_dtype)) return *e;
  } else if (auto e = f.string("dtype", c.torch_dtype)) {
    return *e;
  }
  if (c.torch_dtype != "float32" && c.torch_dtype != "bfloat16" && c.torch_dtype != "float16") {
    return f.error(
        f.has("torch_dtype") ? "torch_dtype" : "dtype",
        "unsupported dtype '" + c.torch_dtype + "' (supported: float32, bfloat16, float16)");
  }
  if (f.has("hybridlab")) {
    if (!f.at("hybridlab").is_object()) return f.error("hybridlab", "must be an object");
    c.hybridlab_json = f.at("hybridlab").dump();
  }
  return c;
}

Result<ModelConfig> load_model_config(const std::filesystem::path& path) {
  std::filesystem::path file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) file /= "config.json";
  auto text = read_text_file(file);
  if (!text) return text.error();
  return parse_model_config(*text, file.string());
}

std::string ModelConfig::to_json() const {
  json doc = json::object();
  doc["model_type"] = model_type;
  doc["architectures"] = architectures;
  doc["vocab_size"] = vocab_size;
  doc["hidden_size"] = hidden_size;
  doc["intermediate_size"] = intermediate_size;
  doc["num_hidden_layers"] = num_hidden_layers;
  doc["num_attention_heads"] = num_attention_heads;
  doc["num_key_value_heads"] = num_key_value_heads;
  doc["head_dim"] = head_dim;
  doc["max_position_embeddings"] = max_position_embeddings;
  doc["rms_norm_eps"] = rms_norm_eps;
  doc["rope_theta"] = rope_theta;
  if (rope_scaling) {
    json scaling = {{"rope_type", rope_scaling->type}, {"factor", rope_scaling->factor}};
    if (rope_scaling->type == "llama3") {
      scaling["low_freq_factor"] = rope_scaling->low_freq_factor;
      scaling["high_freq_factor"] = rope_scaling->high_freq_factor;
      scaling["original_max_position_embeddings"] = rope_scaling->original_max_position_embeddings;
    }
    doc["rope_scaling"] = scaling;
  } else {
    doc["rope_scaling"] = nullptr;
  }
  doc["tie_word_embeddings"] = tie_word_embeddings;
  doc["hidden_act"] = hidden_act;
  if (model_type == "llama") {
    doc["attention_bias"] = qkv_bias;
    doc["mlp_bias"] = mlp_bias;
  }
  if (model_type == "mistral") {
    doc["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
  }
  if (model_type == "qwen2") {
    doc["use_sliding_window"] = sliding_window.has_value();
    doc["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
    doc["max_window_layers"] = sliding_window ? 0 : num_hidden_layers;
  }
  auto ids = [](const std::vector<int64_t>& v) {
    return v.size() == 1 ? json(v.front()) : json(v);
  };
  if (!bos_token_ids.empty()) doc["bos_token_id"] = ids(bos_token_ids);
  if (!eos_token_ids.empty()) doc["eos_token_id"] = ids(eos_token_ids);
  if (pad_token_id) doc["pad_token_id"] = *pad_token_id;
  doc["torch_dtype"] = torch_dtype;
  doc["use_cache"] = true;
  if (!hybridlab_json.empty()) doc["hybridlab"] = json::parse(hybridlab_json);
  return doc.dump(2) + "\n";
}

Status save_model_config(const std::filesystem::path& path, const ModelConfig& config) {
  const std::string text = config.to_json();
  return write_file_atomically(path, [&](std::ostream& out) { out << text; });
}

}  // namespace hl::io
