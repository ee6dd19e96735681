#include "core/io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "core/io/file_util.hpp"

namespace hl::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts are not supported");

namespace {

// The spec caps the header at 100 MB; anything larger is a corrupt length field.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;

struct DTypeRow {
  DType dtype;
  std::string_view name;
  std::size_t size;
  torch::ScalarType scalar;
};

constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8, torch::kFloat64}, {DType::F32, "F32", 4, torch::kFloat32},
    {DType::F16, "F16", 2, torch::kFloat16}, {DType::BF16, "BF16", 2, torch::kBFloat16},
    {DType::I64, "I64", 8, torch::kInt64},   {DType::I32, "I32", 4, torch::kInt32},
    {DType::I16, "I16", 2, torch::kInt16},   {DType::I8, "I8", 1, torch::kInt8},
    {DType::U8, "U8", 1, torch::kUInt8},     {DType::BOOL, "BOOL", 1, torch::kBool},
};

// Names the format defines that LibTorch 1.13 has no scalar type for.
constexpr std::string_view kKnownUnsupported[] = {
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "U16", "U32", "U64", "C64"};

const DTypeRow& row_of(DType dtype) {
  for (const auto& row : kDTypes) {
    if (row.dtype == dtype) return row;
  }
  assert(false && "every DType has a row");
  return kDTypes[0];
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

}  // namespace

std::string_view dtype_name(DType dtype) {
  return row_of(dtype).name;
}
std::size_t dtype_size(DType dtype) {
  return row_of(dtype).size;
}
torch::ScalarType to_scalar_type(DType dtype) {
  return row_of(dtype).scalar;
}

Result<DType> dtype_from_scalar_type(torch::ScalarType type) {
  for (const auto& row : kDTypes) {
    if (row.scalar == type) return row.dtype;
  }
  return make_error(std::string("tensor type ") + c10::toString(type) +
                    " cannot be stored in safetensors by this build");
}

Result<DType> parse_dtype(std::string_view name) {
  for (const auto& row : kDTypes) {
    if (row.name == name) return row.dtype;
  }
  for (auto known : kKnownUnsupported) {
    if (known == name) {
      return make_error("dtype " + std::string(name) +
                        " is not supported (LibTorch here has no such tensor type); convert "
                        "the checkpoint to BF16, F16 or F32");
    }
  }
  return make_error("unknown dtype '" + std::string(name) + "'");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape)
    n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------
// Mapping

struct SafetensorsFile::Mapping {
  void* data = nullptr;
  std::size_t size = 0;
  ~Mapping() {
    if (data) ::munmap(data, size);
  }
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(data); }
};

uint64_t SafetensorsFile::file_size() const {
  return mapping_ ? mapping_->size : 0;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string where = path.string();
  auto fail = [&](std::string message) { return make_error(std::move(message), {where}); };

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(std::string("cannot open safetensors file: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return fail(std::string("cannot stat file: ") + std::strerror(errno));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return fail("file is empty, not a safetensors file");
  }
  if (size < 8) {
    ::close(fd);
    return fail("file is " + std::to_string(size) +
                " bytes, too short for the 8-byte safetensors header length");
  }
  // MAP_PRIVATE + PROT_WRITE gives copy-on-write pages: a caller that writes into a
  // returned tensor changes only its own copy, never the file, and never faults.
  void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (data == MAP_FAILED) return fail(std::string("cannot map file: ") + std::strerror(errno));

  SafetensorsFile file;
  file.path_ = path;
  file.mapping_ = std::make_shared<Mapping>();
  file.mapping_->data = data;
  file.mapping_->size = size;
  const uint8_t* bytes = file.mapping_->bytes();

  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > size - 8) {
    return fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
                std::to_string(size) + " bytes); the file is truncated or not safetensors");
  }
  if (header_len > kMaxHeaderBytes) {
    return fail("header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
  }
  if (header_len < 2) return fail("header is too short to be a JSON object");
  file.data_start_ = 8 + header_len;
  const uint64_t data_size = size - file.data_start_;

  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  nlohmann::json header = nlohmann::json::parse(header_begin, header_begin + header_len, nullptr,
                                                /*allow_exceptions=*/false);
  if (header.is_discarded()) return fail("header is not valid JSON");
  if (!header.is_object()) return fail("header JSON is not an object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& entry = it.value();
    auto bad = [&](const std::string& message) { return make_error(message, {where, 0, name}); };
    if (name == "__metadata__") {
      if (!entry.is_object()) return bad("__metadata__ must be an object of strings");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) {
          return bad("__metadata__ value of '" + m.key() + "' is not a string");
        }
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) return bad("tensor entry is not an object");
    auto dtype_it = entry.find("dtype");
    auto shape_it = entry.find("shape");
    auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return bad("missing or non-string 'dtype'");
    }
    if (shape_it == entry.end() || !shape_it->is_array()) return bad("missing 'shape' array");
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
      return bad("'data_offsets' must be an array [begin, end]");
    }
    auto dtype = parse_dtype(dtype_it->get<std::string>());
    if (!dtype) return bad(dtype.error().message);

    TensorInfo info;
    info.name = name;
    info.dtype = *dtype;
    // Multiply with an overflow guard: a corrupt shape must not wrap around to a small size.
    uint64_t expected_bytes = dtype_size(info.dtype);
    bool overflow = false;
    for (const auto& dim : *shape_it) {
      if (!dim.is_number_unsigned()) return bad("shape entries must be non-negative integers");
      const uint64_t d = dim.get<uint64_t>();
      if (d > static_cast<uint64_t>(INT64_MAX)) overflow = true;
      if (d != 0 && expected_bytes > UINT64_MAX / d) overflow = true;
      expected_bytes *= d;
      info.shape.push_back(static_cast<int64_t>(d));
    }
    for (const auto& off : *offsets_it) {
      if (!off.is_number_unsigned()) return bad("data_offsets must be non-negative integers");
    }
    info.begin = (*offsets_it)[0].get<uint64_t>();
    info.end = (*offsets_it)[1].get<uint64_t>();
    if (info.end < info.begin) {
      return bad("data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                 "] end before they begin");
    }
    if (info.end > data_size) {
      return bad("data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                 "] run past the end of the data (" + std::to_string(data_size) +
                 " bytes); the file is truncated or corrupt");
    }
    if (overflow || info.end - info.begin != expected_bytes) {
      return bad(
          "data_offsets span " + std::to_string(info.end - info.begin) + " bytes but shape " +
          shape_string(info.shape) + " of " + std::string(dtype_name(info.dtype)) + " needs " +
          (overflow ? std::string("more than 2^64") : std::to_string(expected_bytes)) + " bytes");
    }
    file.tensors_.push_back(std::move(info));
  }

  std::sort(file.tensors_.begin(), file.tensors_.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 1; i < file.tensors_.size(); ++i) {
    const auto& prev = file.tensors_[i - 1];
    const auto& cur = file.tensors_[i];
    if (cur.begin < prev.end) {
      return make_error(
          "tensors '" + prev.name + "' and '" + cur.name + "' have overlapping data_offsets",
          {where, 0, cur.name});
    }
  }
  for (std::size_t i = 0; i < file.tensors_.size(); ++i) {
    file.index_.emplace(file.tensors_[i].name, i);
  }
  return file;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Result<torch::Tensor> SafetensorsFile::get(std::string_view name) const {
  const TensorInfo* info = find(name);
  if (!info) {
    return make_error("no tensor named '" + std::string(name) + "'",
                      {path_.string(), 0, std::string(name)});
  }
  auto options = torch::TensorOptions().dtype(to_scalar_type(info->dtype));
  if (info->numel() == 0) return torch::empty(info->shape, options);
  uint8_t* ptr = static_cast<uint8_t*>(mapping_->data) + data_start_ + info->begin;
  // The deleter holds the mapping, so a tensor outlives the SafetensorsFile it came from.
  auto keep_alive = mapping_;
  torch::Tensor view = torch::from_blob(
      ptr, info->shape, [keep_alive](void*) {}, options);
  if (reinterpret_cast<uintptr_t>(ptr) % dtype_size(info->dtype) != 0) {
    // Vectorised kernels assume element alignment; files from other writers may lack it.
    return view.clone();
  }
  return view;
}

torch::Tensor SafetensorsFile::tensor(std::string_view name) const {
  auto result = get(name);
  if (!result) throw std::invalid_argument(result.error().to_string());
  return std::move(result).value();
}

// ---------------------------------------------------------------------------------------
// Writer

Status write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  const std::string where = path.string();
  struct Item {
    const std::string* name;
    torch::Tensor data;  // contiguous, CPU
    DType dtype;
  };
  std::vector<Item> items;
  items.reserve(tensors.size());
  std::map<std::string_view, int> seen;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty() || name == "__metadata__") {
      return make_error("invalid tensor name '" + name + "'", {where});
    }
    if (seen[name]++) return make_error("duplicate tensor name", {where, 0, name});
    if (!tensor.defined()) return make_error("tensor is undefined", {where, 0, name});
    auto dtype = dtype_from_scalar_type(tensor.scalar_type());
    if (!dtype) return make_error(dtype.error().message, {where, 0, name});
    items.push_back({&name, tensor.detach().to(torch::kCPU).contiguous(), *dtype});
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    const auto sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    return sa != sb ? sa > sb : *a.name < *b.name;
  });

  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& item : items) {
    const uint64_t bytes = static_cast<uint64_t>(item.data.numel()) * dtype_size(item.dtype);
    header[*item.name] = {{"dtype", std::string(dtype_name(item.dtype))},
                          {"shape", item.data.sizes().vec()},
                          {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_len = header_text.size();

  return write_file_atomically(path, [&](std::ostream& out) {
    out.write(reinterpret_cast<const char*>(&header_len), 8);
    out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
    for (const auto& item : items) {
      const auto bytes = static_cast<std::streamsize>(item.data.numel() * dtype_size(item.dtype));
      if (bytes) out.write(static_cast<const char*>(item.data.data_ptr()), bytes);
    }
  });
}

}  // namespace hl::io
