// Loading and saving whole models as Hugging Face directories. A converted model keeps its
// conversion (attention kind, window, feature maps...) in config.json's "hybridlab"
// section and its feature maps, window factors and any unmerged LoRA adapters as extra
// tensors, so that `--model DIR` gives back exactly the model that was saved.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "core/model/decoder.hpp"
#include "core/util/error.hpp"

namespace hl::model {

/// Where and in which precision a model lives.
struct Placement {
  torch::Dtype dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
};

/// Parses "float32", "bfloat16" or "float16".
Result<torch::Dtype> parse_dtype_name(const std::string& name);
/// Resolves "cpu", "cuda" or "auto" (cuda when available); cuda without a GPU is an error.
Result<torch::Device> resolve_device(const std::string& name);

/// The conversion and LoRA settings as the JSON of config.json's "hybridlab" section.
std::string conversion_json(const CausalLM& model);

/// Loads config.json, the weights and (when the "hybridlab" section is there) the
/// conversion; errors name the missing or mis-shaped tensor and the file.
Result<CausalLM> load_model(const std::filesystem::path& dir, const Placement& placement = {});

/// Writes config.json (with the "hybridlab" section for converted models) and the weights;
/// LoRA adapters are saved apart unless merged beforehand.
Status save_model(CausalLM& model, const std::filesystem::path& dir);

/// Copies the tokenizer files (tokenizer.json / tokenizer.model and their configs) that
/// exist in `from` into `to`.
Status copy_tokenizer_files(const std::filesystem::path& from, const std::filesystem::path& to);

/// True for the weights a conversion adds (feature maps, window factors, LoRA adapters).
bool is_conversion_parameter(const std::string& name);

/// Folds every LoRA adapter into its base weight.
void merge_lora(CausalLM& model);

/// Attaches LoRA adapters to the chosen projections ("q", "k", "v", "o", "gate", "up",
/// "down") of the chosen layers (empty = converted layers, or all when none is converted).
void attach_lora(CausalLM& model, int64_t rank, double alpha, double dropout,
                 const std::vector<std::string>& targets, const std::vector<int64_t>& layers);

/// The adapted linear layer of `target` in `layer`.
AdaptedLinear projection(CausalLM& model, int64_t layer, const std::string& target);

}  // namespace hl::model
