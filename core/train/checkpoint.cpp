#include "core/train/checkpoint.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/io/file_util.hpp"
#include "core/io/safetensors.hpp"
#include "core/model/model_io.hpp"
#include "core/util/paths.hpp"

namespace hl::train {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kLatest = "LATEST";

std::vector<io::NamedTensor> conversion_tensors(model::CausalLM& model) {
  std::vector<io::NamedTensor> tensors;
  for (const auto& item : model->named_parameters())
    if (model::is_conversion_parameter(item.key()))
      tensors.emplace_back(item.key(), item.value().detach().to(torch::kCPU).contiguous());
  return tensors;
}

Status load_conversion_tensors(model::CausalLM& model, const fs::path& file) {
  auto weights = io::SafetensorsFile::open(file);
  if (!weights.ok()) return weights.error();
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) {
    if (!model::is_conversion_parameter(item.key())) continue;
    auto tensor = weights->get(item.key());
    if (!tensor.ok())
      return make_error("checkpoint lacks tensor '" + item.key() + "'", {file.string()});
    if (tensor->sizes() != item.value().sizes())
      return make_error("checkpoint tensor '" + item.key() + "' has another shape",
                        {file.string()});
    item.value().copy_(*tensor);
  }
  return Status::Ok();
}

json to_json(const TrainingState& s) {
  return json{{"stage", s.stage},
              {"step", s.step},
              {"global_step", s.global_step},
              {"batches_consumed", s.batches_consumed},
              {"lr",
               {{"plateau_lr", s.lr.plateau_lr},
                {"best", std::isfinite(s.lr.best) ? json(s.lr.best) : json(nullptr)},
                {"bad_evals", s.lr.bad_evals},
                {"reductions", s.lr.reductions}}},
              {"ssd_rng", s.ssd_rng},
              {"torch_rng", s.torch_rng},
              {"best_val", std::isfinite(s.best_val) ? json(s.best_val) : json(nullptr)},
              {"evals_without_improvement", s.evals_without_improvement},
              {"ssd_dropped", s.ssd_dropped},
              {"ssd_units", s.ssd_units}};
}

TrainingState from_json(const json& j) {
  auto number_or_inf = [](const json& v) {
    return v.is_null() ? std::numeric_limits<double>::infinity() : v.get<double>();
  };
  TrainingState s;
  s.stage = j.at("stage");
  s.step = j.at("step");
  s.global_step = j.at("global_step");
  s.batches_consumed = j.at("batches_consumed");
  s.lr.plateau_lr = j.at("lr").at("plateau_lr");
  s.lr.best = number_or_inf(j.at("lr").at("best"));
  s.lr.bad_evals = j.at("lr").at("bad_evals");
  s.lr.reductions = j.at("lr").at("reductions");
  s.ssd_rng = j.at("ssd_rng");
  s.torch_rng = j.at("torch_rng");
  s.best_val = number_or_inf(j.at("best_val"));
  s.evals_without_improvement = j.at("evals_without_improvement");
  s.ssd_dropped = j.at("ssd_dropped");
  s.ssd_units = j.at("ssd_units");
  return s;
}

Result<std::optional<fs::path>> latest_dir(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir / kLatest, ec)) return std::optional<fs::path>{};
  auto name = io::read_text_file(dir / kLatest);
  if (!name.ok()) return name.error();
  std::string folder = *name;
  while (!folder.empty() && (folder.back() == '\n' || folder.back() == ' '))
    folder.pop_back();
  if (folder.empty() || !fs::is_directory(dir / folder, ec))
    return make_error("LATEST names a missing checkpoint '" + folder + "'", {dir.string()});
  return std::optional<fs::path>{dir / folder};
}

}  // namespace

std::string save_torch_rng() {
  auto generator = at::detail::getDefaultCPUGenerator();
  torch::Tensor state;
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    state = generator.get_state();
  }
  const auto* bytes = state.data_ptr<uint8_t>();
  static const char* kHex = "0123456789abcdef";
  std::string hex;
  hex.reserve(size_t(state.numel()) * 2);
  for (int64_t i = 0; i < state.numel(); ++i) {
    hex.push_back(kHex[bytes[i] >> 4]);
    hex.push_back(kHex[bytes[i] & 15]);
  }
  return hex;
}

Status restore_torch_rng(const std::string& hex) {
  if (hex.size() % 2) return make_error("random generator state has odd length");
  torch::Tensor state = torch::empty({int64_t(hex.size() / 2)}, torch::kUInt8);
  auto* bytes = state.data_ptr<uint8_t>();
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i < hex.size() / 2; ++i)
    bytes[i] = uint8_t(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
  return Status::Ok();
}

Status CheckpointStore::save(const TrainingState& state, model::CausalLM& model,
                             torch::optim::Optimizer* optimizer) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return make_error("cannot create checkpoint folder: " + ec.message(), {dir_.string()});
  char name[64];
  std::snprintf(name, sizeof name, "stage%lld-step%08lld", (long long)state.stage,
                (long long)state.step);
  const fs::path final_dir = dir_ / name;
  const fs::path temp_dir = dir_ / (std::string(name) + ".tmp");
  remove_tree(temp_dir);
  fs::create_directories(temp_dir, ec);
  if (ec)
    return make_error("cannot create checkpoint folder: " + ec.message(), {temp_dir.string()});

  if (auto s = io::write_safetensors(temp_dir / "trainable.safetensors", conversion_tensors(model));
      !s.ok())
    return s;
  if (optimizer) {
    try {
      torch::save(*optimizer, (temp_dir / "optimizer.pt").string());
    } catch (const c10::Error& error) {
      return make_error(std::string("cannot save optimiser: ") + error.what_without_backtrace(),
                        {temp_dir.string()});
    }
  }
  if (auto s = io::write_file_atomically(temp_dir / "state.json",
                                         [&](std::ostream& out) { out << to_json(state).dump(2); });
      !s.ok())
    return s;
  remove_tree(final_dir);
  fs::rename(temp_dir, final_dir, ec);
  if (ec)
    return make_error("cannot move checkpoint into place: " + ec.message(), {final_dir.string()});

  auto previous = latest_dir(dir_);
  if (auto s = io::write_file_atomically(dir_ / kLatest,
                                         [&](std::ostream& out) { out << name << "\n"; });
      !s.ok())
    return s;
  // Keep the newest two complete checkpoints; drop older ones and stale temporaries.
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string entry_name = entry.path().filename().string();
    if (entry_name.rfind("stage", 0) != 0 || entry.path() == final_dir) continue;
    if (previous.ok() && previous->has_value() && entry.path() == **previous) continue;
    remove_tree(entry.path());
  }
  return Status::Ok();
}

Result<std::optional<TrainingState>> CheckpointStore::latest_state() const {
  auto folder = latest_dir(dir_);
  if (!folder.ok()) return folder.error();
  if (!folder->has_value()) return std::optional<TrainingState>{};
  auto text = io::read_text_file(**folder / "state.json");
  if (!text.ok()) return text.error();
  json parsed = json::parse(*text, nullptr, false);
  if (parsed.is_discarded())
    return make_error("checkpoint state is not valid JSON", {(**folder / "state.json").string()});
  try {
    return std::optional<TrainingState>{from_json(parsed)};
  } catch (const json::exception& error) {
    return make_error(std::string("checkpoint state is incomplete: ") + error.what(),
                      {(**folder / "state.json").string()});
  }
}

Status CheckpointStore::restore(model::CausalLM& model, torch::optim::Optimizer* optimizer) const {
  auto folder = latest_dir(dir_);
  if (!folder.ok()) return folder.error();
  if (!folder->has_value()) return make_error("no checkpoint to resume from", {dir_.string()});
  if (auto s = load_conversion_tensors(model, **folder / "trainable.safetensors"); !s.ok())
    return s;
  if (optimizer && fs::exists(**folder / "optimizer.pt")) {
    try {
      torch::load(*optimizer, (**folder / "optimizer.pt").string());
    } catch (const c10::Error& error) {
      return make_error(std::string("cannot load optimiser: ") + error.what_without_backtrace(),
                        {(**folder / "optimizer.pt").string()});
    }
  }
  return Status::Ok();
}

namespace {
fs::path best_file(const fs::path& dir, int64_t stage) {
  return dir / ("best-stage" + std::to_string(stage) + ".safetensors");
}
}  // namespace

Status CheckpointStore::save_best(model::CausalLM& model, int64_t stage) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  return io::write_safetensors(best_file(dir_, stage), conversion_tensors(model));
}

Result<bool> CheckpointStore::restore_best(model::CausalLM& model, int64_t stage) const {
  const fs::path file = best_file(dir_, stage);
  if (!fs::exists(file)) return false;
  if (auto s = load_conversion_tensors(model, file); !s.ok()) return s.error();
  return true;
}

}  // namespace hl::train
