#include "core/model/model_io.hpp"

#include <nlohmann/json.hpp>

#include "core/io/checkpoint.hpp"

namespace hl::model {

namespace {

using nlohmann::json;

const char* kLoraNames[] = {"q", "k", "v", "o", "gate", "up", "down"};

Result<ConversionOptions> parse_conversion(const json& attention, const std::string& source) {
  auto fail = [&](const std::string& what) {
    return make_error(what, {source, 0, "hybridlab.attention"});
  };
  try {
    ConversionOptions options;
    auto kind = kernels::parse_attention_mode(attention.at("kind").get<std::string>());
    if (!kind ||
        (*kind != kernels::AttentionMode::hybrid && *kind != kernels::AttentionMode::linear_only))
      return fail("kind must be hybrid or linear_only");
    options.kind = *kind;
    options.window = attention.at("window").get<int64_t>();
    options.overlap = attention.at("overlap").get<bool>();
    auto map = kernels::parse_feature_map_kind(attention.at("feature_map").get<std::string>());
    if (!map)
      return fail("unknown feature_map '" + attention.at("feature_map").get<std::string>() + "'");
    options.feature_map = *map;
    options.feature_dim = attention.at("feature_dim").get<int64_t>();
    options.affine_factors = attention.at("affine_factors").get<bool>();
    options.sinks = attention.at("sinks").get<int64_t>();
    options.softmax_layers = attention.at("softmax_layers").get<std::vector<int64_t>>();
    if (options.window < 1) return fail("window must be >= 1");
    return options;
  } catch (const json::exception& error) {
    return fail(std::string("malformed section: ") + error.what());
  }
}

}  // namespace

bool is_conversion_parameter(const std::string& name) {
  return name.find(".feature_map_") != std::string::npos ||
         name.find("window_factors") != std::string::npos ||
         name.find(".lora.") != std::string::npos;
}

Result<torch::Dtype> parse_dtype_name(const std::string& name) {
  if (name == "float32") return torch::kFloat32;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kFloat16;
  return make_error("dtype must be float32, bfloat16 or float16, got '" + name + "'");
}

Result<torch::Device> resolve_device(const std::string& name) {
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name == "cuda" || name == "auto") {
    if (torch::cuda::is_available()) return torch::Device(torch::kCUDA);
    if (name == "auto") return torch::Device(torch::kCPU);
    return make_error("device cuda asked for, but no CUDA GPU is available");
  }
  return make_error("device must be auto, cpu or cuda, got '" + name + "'");
}

AdaptedLinear projection(CausalLM& model, int64_t layer, const std::string& target) {
  auto decoder_layer = model->model->layer(layer);
  auto attention = decoder_layer->self_attn;
  if (target == "q") return attention->q_proj;
  if (target == "k") return attention->k_proj;
  if (target == "v") return attention->v_proj;
  if (target == "o") return attention->o_proj;
  if (target == "gate") return decoder_layer->mlp->gate_proj;
  if (target == "up") return decoder_layer->mlp->up_proj;
  if (target == "down") return decoder_layer->mlp->down_proj;
  TORCH_CHECK(false, "unknown LoRA target '", target, "'");
}

void attach_lora(CausalLM& model, int64_t rank, double alpha, double dropout,
                 const std::vector<std::string>& targets, const std::vector<int64_t>& layers) {
  std::vector<int64_t> chosen = layers;
  if (chosen.empty()) chosen = model->converted_layers();
  if (chosen.empty())
    for (int64_t i = 0; i < model->num_layers(); ++i)
      chosen.push_back(i);
  for (int64_t layer : chosen) {
    TORCH_CHECK(layer >= 0 && layer < model->num_layers(), "LoRA layer ", layer,
                " does not exist (the model has ", model->num_layers(), " layers)");
    for (const auto& target : targets)
      projection(model, layer, target)->attach_lora(rank, alpha, dropout);
  }
}

void merge_lora(CausalLM& model) {
  for (int64_t layer = 0; layer < model->num_layers(); ++layer)
    for (const char* target : kLoraNames)
      projection(model, layer, target)->merge_lora();
}

std::string conversion_json(const CausalLM& model) {
  auto layers = model->converted_layers();
  if (layers.empty()) return {};
  auto& self = const_cast<CausalLM&>(model);
  const ConversionOptions& c = self->attention(layers.front())->conversion();
  json attention{{"kind", kernels::to_string(c.kind)},
                 {"window", c.window},
                 {"overlap", c.overlap},
                 {"feature_map", kernels::to_string(c.feature_map)},
                 {"feature_dim", c.feature_dim},
                 {"affine_factors", c.affine_factors},
                 {"sinks", c.sinks},
                 {"softmax_layers", c.softmax_layers}};
  json section{{"attention", attention}};
  json lora = json::array();
  for (int64_t layer = 0; layer < model->num_layers(); ++layer)
    for (const char* target : kLoraNames) {
      auto linear = projection(self, layer, target);
      if (linear->has_lora())
        lora.push_back({{"layer", layer},
                        {"target", target},
                        {"rank", linear->lora->lora_a.size(0)},
                        {"scale", linear->lora_scale()}});
    }
  if (!lora.empty()) section["lora"] = lora;
  return section.dump();
}

Result<CausalLM> load_model(const std::filesystem::path& dir, const Placement& placement) {
  auto directory = io::load_hf_directory(dir);
  if (!directory.ok()) return directory.error();
  const io::ModelConfig& config = directory->config;
  const std::string source = (dir / "config.json").string();
  CausalLM model(config);

  if (!config.hybridlab_json.empty()) {
    json section = json::parse(config.hybridlab_json, nullptr, false);
    if (section.is_discarded() || !section.contains("attention"))
      return make_error("the hybridlab section has no attention settings",
                        {source, 0, "hybridlab"});
    auto conversion = parse_conversion(section["attention"], source);
    if (!conversion.ok()) return conversion.error();
    model->convert(*conversion);
    if (section.contains("lora")) {
      for (const auto& entry : section["lora"]) {
        const int64_t rank = entry.at("rank").get<int64_t>();
        const double scale = entry.at("scale").get<double>();
        projection(model, entry.at("layer").get<int64_t>(), entry.at("target").get<std::string>())
            ->attach_lora(rank, scale * double(rank), 0.0);
      }
    }
  }

  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) {
    auto tensor = directory->weights.get(item.key());
    if (!tensor.ok())
      return make_error("missing tensor '" + item.key() + "'", {dir.string(), 0, item.key()});
    if (tensor->sizes() != item.value().sizes()) {
      std::ostringstream shapes;
      shapes << "tensor '" << item.key() << "' has shape " << tensor->sizes() << ", expected "
             << item.value().sizes();
      return make_error(shapes.str(), {dir.string(), 0, item.key()});
    }
    item.value().copy_(*tensor);
  }
  // Conversion weights and adapters train, so they stay in float32; the base weights take
  // the requested dtype.
  for (auto& item : model->named_parameters()) {
    if (!is_conversion_parameter(item.key()))
      item.value().set_data(item.value().to(placement.dtype));
  }
  model->to(placement.device);
  return model;
}

Status save_model(CausalLM& model, const std::filesystem::path& dir) {
  io::ModelConfig config = model->config();
  config.hybridlab_json = conversion_json(model);
  std::vector<io::NamedTensor> tensors;
  for (const auto& item : model->named_parameters())
    tensors.emplace_back(item.key(), item.value().detach().to(torch::kCPU).contiguous());
  return io::save_hf_directory(dir, config, tensors);
}

Status copy_tokenizer_files(const std::filesystem::path& from, const std::filesystem::path& to) {
  for (const char* name :
       {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
    std::error_code ec;
    if (std::filesystem::exists(from / name, ec))
      std::filesystem::copy_file(from / name, to / name,
                                 std::filesystem::copy_options::overwrite_existing, ec);
    if (ec)
      return make_error("cannot copy " + std::string(name) + ": " + ec.message(), {to.string()});
  }
  return Status::Ok();
}

}  // namespace hl::model
