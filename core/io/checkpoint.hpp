// Hugging Face model directories: weights in model.safetensors or in shards listed by
// model.safetensors.index.json, next to config.json and a tokenizer.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/io/hf_config.hpp"
#include "core/io/safetensors.hpp"
#include "core/util/error.hpp"

namespace hl::io {

/// All tensors of a model directory, single-file or sharded, memory-mapped.
class CheckpointReader {
 public:
  /// Opens `dir`/model.safetensors, or the shards of `dir`/model.safetensors.index.json;
  /// a path to a single .safetensors file also works.
  static Result<CheckpointReader> open(const std::filesystem::path& dir);

  /// Tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(std::string_view name) const;
  /// The tensor's header entry, or nullptr.
  const TensorInfo* info(std::string_view name) const;
  /// A CPU tensor (zero-copy over the mapping where possible); error names the tensor.
  Result<torch::Tensor> get(std::string_view name) const;
  /// Like get(), but throws std::invalid_argument naming the tensor when absent.
  torch::Tensor tensor(std::string_view name) const;
  /// The safetensors files read, in order.
  std::vector<std::filesystem::path> files() const;

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t, std::less<>> owner_;  // tensor -> index in files_
};

/// How save_checkpoint splits and labels its output.
struct SaveOptions {
  /// Shards are cut when the next tensor would pass this size (HF default "5GB").
  uint64_t max_shard_bytes = 5'000'000'000ull;
  /// "__metadata__" of each file; transformers expects {"format": "pt"}.
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
};

/// Writes `dir`/model.safetensors, or model-0000i-of-0000n.safetensors shards plus
/// model.safetensors.index.json when the tensors exceed max_shard_bytes. Stale weight files
/// of an earlier save are removed after the new ones are in place.
Status save_checkpoint(const std::filesystem::path& dir, const std::vector<NamedTensor>& tensors,
                       const SaveOptions& options = {});

/// The tensors a Llama-family checkpoint must hold, with their shapes, in HF naming
/// ("model.layers.0.self_attn.q_proj.weight", ...).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(
    const ModelConfig& config);

/// Checks that every expected tensor is present with its shape; the error names the first
/// missing or mis-shaped tensor and the file it came from.
Status check_tensors(const CheckpointReader& reader, const ModelConfig& config);

/// A loaded Hugging Face model directory (the tokenizer is loaded separately, see
/// tokenizer.hpp's load_tokenizer).
struct HfModelDirectory {
  std::filesystem::path dir;
  ModelConfig config;
  CheckpointReader weights;
};

/// Reads config.json, opens the weights and checks their names and shapes.
Result<HfModelDirectory> load_hf_directory(const std::filesystem::path& dir);

/// Writes config.json and the weights so that transformers' from_pretrained loads them.
Status save_hf_directory(const std::filesystem::path& dir, const ModelConfig& config,
                         const std::vector<NamedTensor>& tensors, const SaveOptions& options = {});

}  // namespace hl::io
