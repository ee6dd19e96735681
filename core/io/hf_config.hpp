// Hugging Face config.json for the Llama family (llama, mistral, qwen2): parsing with errors
// that name the field and file, and writing a config.json that transformers loads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/util/error.hpp"

namespace hl::io {

/// config.json's `rope_scaling`: "llama3" (frequency-dependent) or "linear".
struct RopeScalingConfig {
  std::string type;  // "llama3" | "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

/// The architecture description of a Llama-family decoder.
struct ModelConfig {
  std::string model_type = "llama";        // "llama" | "mistral" | "qwen2"
  std::vector<std::string> architectures;  // e.g. {"LlamaForCausalLM"}
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScalingConfig> rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;     // llama: attention_bias; qwen2: always true
  bool o_proj_bias = false;  // llama: attention_bias; qwen2 and mistral: false
  bool mlp_bias = false;     // llama only
  std::string hidden_act = "silu";
  std::optional<int64_t> sliding_window;  // in effect (qwen2: only with use_sliding_window)
  std::vector<int64_t> bos_token_ids;     // config.json holds an int or a list
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  std::string torch_dtype = "float32";  // "float32" | "bfloat16" | "float16"
  /// The optional "hybridlab" section (attention conversion settings), as raw JSON text;
  /// empty when absent. The conversion engine parses it.
  std::string hybridlab_json;

  /// A config.json document that transformers loads (model_type, architectures, all fields).
  std::string to_json() const;
};

/// Parses config.json text; `source` names the file in errors.
Result<ModelConfig> parse_model_config(std::string_view json_text, const std::string& source);
/// Reads `path`, or `path`/config.json when `path` is a directory.
Result<ModelConfig> load_model_config(const std::filesystem::path& path);
/// Writes config.json atomically.
Status save_model_config(const std::filesystem::path& path, const ModelConfig& config);

}  // namespace hl::io
