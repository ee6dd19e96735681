#include "core/io/checkpoint.hpp"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "core/io/file_util.hpp"

namespace hl::io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string shard_name(std::size_t index, std::size_t count) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "model-%05zu-of-%05zu.safetensors", index, count);
  return buffer;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

bool is_weight_file_name(const std::string& name) {
  if (name == kSingleFile || name == kIndexFile) return true;
  return name.rfind("model-", 0) == 0 && name.find("-of-") != std::string::npos &&
         name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0;
}

}  // namespace

Result<CheckpointReader> CheckpointReader::open(const fs::path& dir) {
  CheckpointReader reader;
  std::error_code ec;
  auto add_file = [&](const fs::path& path) -> Status {
    auto file = SafetensorsFile::open(path);
    if (!file) return file.error();
    const std::size_t index = reader.files_.size();
    for (const auto& info : file->tensors()) {
      if (!reader.owner_.emplace(info.name, index).second) {
        return make_error("tensor also appears in another shard", {path.string(), 0, info.name});
      }
    }
    reader.files_.push_back(std::move(file).value());
    return Status::Ok();
  };

  if (fs::is_regular_file(dir, ec)) {
    if (auto s = add_file(dir); !s) return s.error();
    return reader;
  }
  if (!fs::is_directory(dir, ec)) {
    return make_error("model directory does not exist", {dir.string()});
  }
  const fs::path index_path = dir / kIndexFile;
  if (fs::exists(index_path, ec)) {
    auto text = read_text_file(index_path);
    if (!text) return text.error();
    json index = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded()) return make_error("index is not valid JSON", {index_path.string()});
    auto map_it = index.find("weight_map");
    if (!index.is_object() || map_it == index.end() || !map_it->is_object()) {
      return make_error("index has no 'weight_map' object", {index_path.string(), 0, "weight_map"});
    }
    std::map<std::string, std::vector<std::string>> tensors_of_shard;
    for (auto it = map_it->begin(); it != map_it->end(); ++it) {
      if (!it.value().is_string()) {
        return make_error("weight_map value is not a file name",
                          {index_path.string(), 0, it.key()});
      }
      const std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard == ".." || shard.empty()) {
        return make_error("weight_map names a file outside the directory: '" + shard + "'",
                          {index_path.string(), 0, it.key()});
      }
      tensors_of_shard[shard].push_back(it.key());
    }
    for (const auto& [shard, names] : tensors_of_shard) {
      const fs::path shard_path = dir / shard;
      if (!fs::exists(shard_path, ec)) {
        return make_error("shard listed in the index is missing: " + shard,
                          {index_path.string(), 0, names.front()});
      }
      if (auto s = add_file(shard_path); !s) return s.error();
      for (const auto& name : names) {
        auto owner = reader.owner_.find(name);
        if (owner == reader.owner_.end() || reader.files_[owner->second].path() != shard_path) {
          return make_error("index maps the tensor to " + shard + ", which does not contain it",
                            {index_path.string(), 0, name});
        }
      }
    }
    return reader;
  }
  const fs::path single = dir / kSingleFile;
  if (!fs::exists(single, ec)) {
    return make_error("no model.safetensors or model.safetensors.index.json in the directory",
                      {dir.string()});
  }
  if (auto s = add_file(single); !s) return s.error();
  return reader;
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  out.reserve(owner_.size());
  for (const auto& [name, index] : owner_)
    out.push_back(name);
  return out;
}

bool CheckpointReader::contains(std::string_view name) const {
  return owner_.find(name) != owner_.end();
}

const TensorInfo* CheckpointReader::info(std::string_view name) const {
  auto it = owner_.find(name);
  return it == owner_.end() ? nullptr : files_[it->second].find(name);
}

Result<torch::Tensor> CheckpointReader::get(std::string_view name) const {
  auto it = owner_.find(name);
  if (it == owner_.end()) {
    std::string where =
        files_.empty() ? std::string() : files_.front().path().parent_path().string();
    return make_error("checkpoint has no tensor '" + std::string(name) + "'",
                      {where, 0, std::string(name)});
  }
  return files_[it->second].get(name);
}

torch::Tensor CheckpointReader::tensor(std::string_view name) const {
  auto result = get(name);
  if (!result) throw std::invalid_argument(result.error().to_string());
  return std::move(result).value();
}

std::vector<fs::path> CheckpointReader::files() const {
  std::vector<fs::path> out;
  for (const auto& f : files_)
    out.push_back(f.path());
  return out;
}

Status save_checkpoint(const fs::path& dir, const std::vector<NamedTensor>& tensors,
                       const SaveOptions& options) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error("cannot create directory: " + ec.message(), {dir.string()});

  // Greedy sharding in the given order, as transformers does.
  std::vector<std::vector<NamedTensor>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& named : tensors) {
    const uint64_t bytes = named.second.defined() ? named.second.nbytes() : 0;
    if (shard_bytes > 0 && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(named);
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  std::set<std::string> written;
  if (shards.size() == 1) {
    if (auto s = write_safetensors(dir / kSingleFile, shards[0], options.metadata); !s) return s;
    written.insert(kSingleFile);
  } else {
    json weight_map = json::object();
    for (std::size_t i = 0; i < shards.size(); ++i) {
      const std::string name = shard_name(i + 1, shards.size());
      if (auto s = write_safetensors(dir / name, shards[i], options.metadata); !s) return s;
      for (const auto& [tensor_name, tensor] : shards[i])
        weight_map[tensor_name] = name;
      written.insert(name);
    }
    json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    const std::string text = index.dump(2) + "\n";
    if (auto s = write_file_atomically(dir / kIndexFile, [&](std::ostream& out) { out << text; });
        !s) {
      return s;
    }
    written.insert(kIndexFile);
  }
  // Leftovers of an earlier save with another shard count would confuse loaders.
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (is_weight_file_name(name) && !written.count(name)) fs::remove(entry.path(), ec);
  }
  return Status::Ok();
}

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim, inter = c.intermediate_size;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, h}});
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    out.push_back({p + "input_layernorm.weight", {h}});
    out.push_back({p + "self_attn.q_proj.weight", {q, h}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.o_proj.weight", {h, q}});
    if (c.qkv_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {q}});
      out.push_back({p + "self_attn.k_proj.bias", {kv}});
      out.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    if (c.o_proj_bias) out.push_back({p + "self_attn.o_proj.bias", {h}});
    out.push_back({p + "post_attention_layernorm.weight", {h}});
    out.push_back({p + "mlp.gate_proj.weight", {inter, h}});
    out.push_back({p + "mlp.up_proj.weight", {inter, h}});
    out.push_back({p + "mlp.down_proj.weight", {h, inter}});
    if (c.mlp_bias) {
      out.push_back({p + "mlp.gate_proj.bias", {inter}});
      out.push_back({p + "mlp.up_proj.bias", {inter}});
      out.push_back({p + "mlp.down_proj.bias", {h}});
    }
  }
  out.push_back({"model.norm.weight", {h}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, h}});
  return out;
}

Status check_tensors(const CheckpointReader& reader, const ModelConfig& config) {
  const auto files = reader.files();
  const std::string where = files.empty() ? std::string() : files.front().parent_path().string();
  for (const auto& [name, shape] : expected_tensors(config)) {
    const TensorInfo* info = reader.info(name);
    if (!info) return make_error("checkpoint is missing tensor '" + name + "'", {where, 0, name});
    if (info->shape != shape) {
      return make_error("tensor '" + name + "' has shape " + shape_string(info->shape) +
                            " but config.json implies " + shape_string(shape),
                        {where, 0, name});
    }
  }
  return Status::Ok();
}

Result<HfModelDirectory> load_hf_directory(const fs::path& dir) {
  auto config = load_model_config(dir / "config.json");
  if (!config) return config.error();
  auto weights = CheckpointReader::open(dir);
  if (!weights) return weights.error();
  if (auto s = check_tensors(*weights, *config); !s) return s.error();
  return HfModelDirectory{dir, std::move(config).value(), std::move(weights).value()};
}

Status save_hf_directory(const fs::path& dir, const ModelConfig& config,
                         const std::vector<NamedTensor>& tensors, const SaveOptions& options) {
  if (auto s = save_checkpoint(dir, tensors, options); !s) return s;
  return save_model_config(dir / "config.json", config);
}

}  // namespace hl::io
