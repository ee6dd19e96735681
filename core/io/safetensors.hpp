// Reading and writing the safetensors format: an 8-byte little-endian header length, a
// JSON header (name -> dtype, shape, data_offsets; optional "__metadata__"), then raw data.
// Files are memory-mapped; tensors are zero-copy views over the mapping where possible.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/util/error.hpp"

namespace hl::io {

/// The element types of safetensors that LibTorch can hold on every supported version.
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

/// The safetensors spelling of a dtype ("F32", "BF16", ...).
std::string_view dtype_name(DType dtype);
/// Bytes per element.
std::size_t dtype_size(DType dtype);
/// The LibTorch scalar type of a dtype.
torch::ScalarType to_scalar_type(DType dtype);
/// The dtype of a LibTorch scalar type, or an error for types safetensors cannot store here.
Result<DType> dtype_from_scalar_type(torch::ScalarType type);
/// Parses a safetensors dtype name; known-but-unsupported names (F8_E4M3, U16, ...) and
/// unknown names both give an error that says which.
Result<DType> parse_dtype(std::string_view name);

/// One tensor's entry in a safetensors header. Offsets are relative to the data section.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;

  /// Number of elements (1 for a scalar).
  int64_t numel() const;
};

/// A memory-mapped, validated safetensors file.
class SafetensorsFile {
 public:
  /// Maps and validates the file: header length, JSON, dtypes, shapes against offsets,
  /// offsets inside the data and not overlapping.
  static Result<SafetensorsFile> open(const std::filesystem::path& path);

  /// Tensor entries in data order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// The entry of a tensor, or nullptr.
  const TensorInfo* find(std::string_view name) const;
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  /// A CPU tensor over the mapping (copy-on-write, so writing into it never touches the
  /// file); copied instead when its data is not aligned for its element type.
  Result<torch::Tensor> get(std::string_view name) const;
  /// Like get(), but throws std::invalid_argument naming the tensor and file when absent.
  torch::Tensor tensor(std::string_view name) const;
  /// The string map of "__metadata__" (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return path_; }
  /// Size of the whole file in bytes.
  uint64_t file_size() const;

 private:
  struct Mapping;
  std::shared_ptr<Mapping> mapping_;
  std::filesystem::path path_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

/// A named tensor to write.
using NamedTensor = std::pair<std::string, torch::Tensor>;

/// Writes tensors (any device, any layout) to a safetensors file atomically (temporary file
/// and rename). Data is ordered by element size, largest first, then by name, so every
/// tensor is aligned; the header is padded with spaces to a multiple of 8 bytes.
Status write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace hl::io
