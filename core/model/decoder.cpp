#include "core/model/decoder.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "core/model/autocast.hpp"
#include "core/model/rope.hpp"

namespace hl::model {

namespace {

using kernels::AttentionMode;

bool needs_features(AttentionMode mode) {
  return mode == AttentionMode::hybrid || mode == AttentionMode::linear_only;
}

// Branch usage of one layer, averaged over the batch and over positions i >= w, where the
// window is full and the linear branch has keys (DESIGN §2).
std::optional<LayerUsage> summarise_usage(int64_t layer, const kernels::AttentionOutput& out,
                                          int64_t window) {
  if (!out.linear_mass.defined()) return std::nullopt;
  const int64_t n = out.linear_mass.size(2);
  const int64_t start = std::min(window, n - 1);
  auto mean = [&](const torch::Tensor& t) {
    return t.narrow(2, start, n - start).to(torch::kFloat32).mean(std::vector<int64_t>{0, 2}).cpu();
  };
  return LayerUsage{layer, mean(out.linear_mass), mean(out.linear_output_share)};
}

// Appends k, v [B, Hkv, n, .] to a layer's key/value cache, doubling its capacity when full.
void append_kv(LayerCache& cache, const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t n = k.size(2);
  const int64_t capacity = cache.keys.defined() ? cache.keys.size(2) : 0;
  if (cache.length + n > capacity) {
    const int64_t grown = std::max({2 * capacity, cache.length + n, int64_t{16}});
    auto grow = [&](const torch::Tensor& old, const torch::Tensor& like) {
      torch::Tensor fresh =
          torch::empty({like.size(0), like.size(1), grown, like.size(3)}, like.options());
      if (cache.length > 0) fresh.narrow(2, 0, cache.length).copy_(old.narrow(2, 0, cache.length));
      return fresh;
    };
    cache.keys = grow(cache.keys, k);
    cache.values = grow(cache.values, v);
  }
  cache.keys.narrow(2, cache.length, n).copy_(k);
  cache.values.narrow(2, cache.length, n).copy_(v);
  cache.length += n;
}

// Causal softmax of q [B, Hq, n, d] (the last n positions) over the whole cache, limited to
// the last `sliding_window` keys when the base model has one (Mistral). The query heads of
// one KV head are stacked as rows (h = kv * groups + g) instead of repeating the cache, and
// the scores are laid out [keys, rows] so both products read the cache contiguously: a
// decode step is a pass over the cache, nothing more.
torch::Tensor cached_softmax(const torch::Tensor& q, const LayerCache& cache,
                             std::optional<int64_t> sliding_window) {
  const int64_t batch = q.size(0), heads = q.size(1), n = q.size(2), d = q.size(3);
  const int64_t kv_heads = cache.keys.size(1), groups = heads / kv_heads, total = cache.length;
  const torch::Tensor keys = cache.keys.narrow(2, 0, total);
  const torch::Tensor values = cache.values.narrow(2, 0, total);
  const torch::Tensor rows = q.reshape({batch, kv_heads, groups * n, d});
  torch::Tensor scores = torch::matmul(keys, rows.transpose(-1, -2))  // [B, Hkv, T, G*n]
                             .mul_(1.0 / std::sqrt(static_cast<double>(d)));
  if (n > 1 || (sliding_window && *sliding_window < total)) {
    const auto index = torch::TensorOptions().dtype(torch::kInt64).device(q.device());
    torch::Tensor query_pos = torch::arange(total - n, total, index).repeat({groups}).unsqueeze(0);
    torch::Tensor key_pos = torch::arange(0, total, index).unsqueeze(1);
    torch::Tensor hidden = key_pos.gt(query_pos);
    if (sliding_window) hidden = hidden.logical_or(key_pos.le(query_pos - *sliding_window));
    scores.masked_fill_(hidden, -std::numeric_limits<double>::infinity());
  }
  torch::Tensor weights = torch::softmax(scores, -2);
  torch::Tensor out = torch::matmul(weights.transpose(-1, -2), values);  // [B, Hkv, G*n, dv]
  return out.reshape({batch, heads, n, values.size(3)});
}

}  // namespace

int64_t LayerCache::bytes() const {
  if (recurrent.key_ring.defined()) return recurrent.bytes();
  int64_t total = 0;
  for (const auto* t : {&keys, &values})
    if (t->defined()) total += t->numel() * static_cast<int64_t>(t->element_size());
  return total;
}

int64_t DecodeCache::bytes() const {
  return recurrent_bytes() + kv_bytes();
}

int64_t DecodeCache::recurrent_bytes() const {
  int64_t total = 0;
  for (const auto& layer : layers)
    if (layer.recurrent.key_ring.defined()) total += layer.bytes();
  return total;
}

int64_t DecodeCache::kv_bytes() const {
  int64_t total = 0;
  for (const auto& layer : layers)
    if (!layer.recurrent.key_ring.defined()) total += layer.bytes();
  return total;
}

AttentionImpl::AttentionImpl(const io::ModelConfig& config, int64_t layer_index)
    : layer_index_(layer_index),
      heads_(config.num_attention_heads),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      sliding_window_(config.sliding_window) {
  const int64_t hidden = config.hidden_size;
  q_proj = register_module("q_proj", AdaptedLinear(hidden, heads_ * head_dim_, config.qkv_bias));
  k_proj = register_module("k_proj", AdaptedLinear(hidden, kv_heads_ * head_dim_, config.qkv_bias));
  v_proj = register_module("v_proj", AdaptedLinear(hidden, kv_heads_ * head_dim_, config.qkv_bias));
  o_proj = register_module("o_proj", AdaptedLinear(heads_ * head_dim_, hidden, config.o_proj_bias));
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> AttentionImpl::project(
    const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t batch = x.size(0), length = x.size(1);
  auto heads_first = [&](const torch::Tensor& t, int64_t heads) {
    return t.view({batch, length, heads, head_dim_}).transpose(1, 2);
  };
  torch::Tensor q = heads_first(q_proj->forward(x), heads_);
  torch::Tensor k = heads_first(k_proj->forward(x), kv_heads_);
  torch::Tensor v = heads_first(v_proj->forward(x), kv_heads_);
  q = apply_rope(q, cos, sin);
  k = apply_rope(k, cos, sin);
  // Under autocast the projections come out in its dtype but RoPE's fp32 tables promote q and
  // k back; the attention kernels take one dtype, the low one being the point of autocast.
  if (const auto low = active_autocast_dtype(x.device())) {
    q = q.to(*low);
    k = k.to(*low);
    v = v.to(*low);
  }
  return {q, k, v};
}

kernels::AttentionInputs AttentionImpl::converted_inputs(const torch::Tensor& q,
                                                         const torch::Tensor& k,
                                                         const torch::Tensor& v) {
  kernels::AttentionInputs inputs{q, k, v};
  inputs.window_factor_logits = window_factors;
  return kernels::with_feature_maps(std::move(inputs), *feature_map_q, *feature_map_k);
}

kernels::AttentionOptions AttentionImpl::base_options(int64_t sequence_length) const {
  kernels::AttentionOptions options;
  if (sliding_window_ && *sliding_window_ < sequence_length) {
    options.mode = AttentionMode::window_only;
    options.window = *sliding_window_;
  } else {
    options.mode = AttentionMode::softmax;
  }
  return options;
}

kernels::AttentionOptions AttentionImpl::converted_options(AttentionMode mode) const {
  kernels::AttentionOptions options;
  options.mode = mode;
  options.window = conversion_.window;
  options.overlap = conversion_.overlap;
  options.affine_factors = conversion_.affine_factors;
  options.sinks = conversion_.sinks;
  return options;
}

torch::Tensor AttentionImpl::output(const torch::Tensor& heads) {
  const int64_t batch = heads.size(0), length = heads.size(2);
  return o_proj->forward(heads.transpose(1, 2).reshape({batch, length, -1}));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin, const ForwardOptions& options) {
  auto [q, k, v] = project(x, cos, sin);
  const int64_t length = x.size(1);
  if (!converted_) {
    kernels::AttentionOptions base = base_options(length);
    base.backend = options.backend;
    return output(kernels::attention({q, k, v}, base).y);
  }

  torch::Tensor drop;
  if (static_cast<size_t>(layer_index_) < options.window_drop.size())
    drop = options.window_drop[layer_index_];

  if (options.transfer) {
    TransferPair pair;
    pair.layer = layer_index_;
    kernels::AttentionOutput teacher;
    {
      torch::NoGradGuard no_grad;
      kernels::AttentionOptions base = base_options(length);
      base.backend = options.backend;
      base.want_weights = options.transfer_weights;
      teacher = kernels::attention({q, k, v}, base);
    }
    kernels::AttentionInputs inputs = converted_inputs(q.detach(), k.detach(), v.detach());
    kernels::AttentionOptions student_options = converted_options(options.transfer_student_mode);
    student_options.backend = options.backend;
    student_options.want_weights = options.transfer_weights;
    student_options.want_stats = options.want_usage;
    if (options.transfer_student_mode == AttentionMode::hybrid) inputs.window_drop = drop;
    kernels::AttentionOutput student = kernels::attention(inputs, student_options);
    pair.student = student.y;
    pair.teacher = teacher.y;
    pair.student_weights = student.weights;
    pair.teacher_weights = teacher.weights;
    options.transfer->push_back(std::move(pair));
    if (options.want_usage && options.usage)
      if (auto usage = summarise_usage(layer_index_, student, conversion_.window))
        options.usage->push_back(std::move(*usage));
    return output(teacher.y);
  }

  AttentionMode mode = options.mode.value_or(conversion_.kind);
  if (options.ablate_layer == layer_index_ && mode == AttentionMode::hybrid)
    mode = AttentionMode::window_only;
  kernels::AttentionOptions attention_options = converted_options(mode);
  attention_options.backend = options.backend;
  attention_options.want_stats = options.want_usage && needs_features(mode);
  kernels::AttentionInputs inputs{q, k, v};
  if (mode == AttentionMode::hybrid) inputs.window_drop = drop;
  kernels::AttentionOutput out;
  if (needs_features(mode)) {
    // Evaluation on a Hopper GPU computes hedgehog maps inside the fused forward.
    inputs.window_factor_logits = window_factors;
    out = kernels::attention_with_feature_maps(inputs, *feature_map_q, *feature_map_k,
                                               attention_options);
  } else {
    out = kernels::attention(inputs, attention_options);
  }
  if (attention_options.want_stats && options.usage)
    if (auto usage = summarise_usage(layer_index_, out, conversion_.window))
      options.usage->push_back(std::move(*usage));
  return output(out.y);
}

torch::Tensor AttentionImpl::decode(const torch::Tensor& x, const torch::Tensor& cos,
                                    const torch::Tensor& sin, const ForwardOptions& options,
                                    LayerCache& cache) {
  torch::NoGradGuard no_grad;
  auto [q, k, v] = project(x, cos, sin);
  const int64_t n = x.size(1);
  if (!converted_) {
    const bool fresh = cache.length == 0;
    append_kv(cache, k, v);
    if (fresh) {  // the prompt: the parallel kernels are faster than the masked product
      kernels::AttentionOptions base = base_options(n);
      base.backend = options.backend;
      return output(kernels::attention({q, k, v}, base).y);
    }
    return output(cached_softmax(q, cache, sliding_window_));
  }

  AttentionMode mode = options.mode.value_or(conversion_.kind);
  if (options.ablate_layer == layer_index_ && mode == AttentionMode::hybrid)
    mode = AttentionMode::window_only;
  kernels::AttentionOptions attention_options = converted_options(mode);
  attention_options.backend = options.backend;
  kernels::AttentionInputs inputs{q, k, v};
  if (needs_features(mode)) inputs = converted_inputs(q, k, v);
  if (!cache.recurrent.key_ring.defined()) {
    kernels::PrefillResult prefilled = kernels::prefill(inputs, attention_options);
    cache.recurrent = std::move(prefilled.state);
    return output(prefilled.output.y);
  }
  std::vector<torch::Tensor> steps;
  steps.reserve(n);
  auto token = [](const torch::Tensor& t, int64_t i) {
    return t.defined() ? t.narrow(2, i, 1) : t;
  };
  for (int64_t i = 0; i < n; ++i) {
    kernels::AttentionInputs step{token(inputs.q, i),     token(inputs.k, i),
                                  token(inputs.v, i),     token(inputs.phi_q, i),
                                  token(inputs.phi_k, i), inputs.window_factor_logits};
    steps.push_back(kernels::decode_step(step, cache.recurrent, attention_options));
  }
  return output(n == 1 ? steps.front() : torch::cat(steps, 2));
}

void AttentionImpl::convert(const ConversionOptions& options) {
  TORCH_CHECK(!converted_, "layer ", layer_index_, " is already converted");
  TORCH_CHECK(options.kind == AttentionMode::hybrid || options.kind == AttentionMode::linear_only,
              "a converted layer is hybrid or linear_only, got ", kernels::to_string(options.kind));
  TORCH_CHECK(options.window_factor_init > 0.0 && options.window_factor_init < 1.0,
              "window_factor_init must be in (0, 1), got ", options.window_factor_init);
  conversion_ = options;
  kernels::FeatureMapOptions map;
  map.kind = options.feature_map;
  map.heads = heads_;
  map.head_dim = head_dim_;
  map.feature_dim = options.feature_dim;
  map.init = options.feature_init;
  const auto device = q_proj->weight.device();
  feature_map_q = register_module("feature_map_q", kernels::FeatureMap(map));
  feature_map_k = register_module("feature_map_k", kernels::FeatureMap(map));
  feature_map_q->to(device);
  feature_map_k->to(device);
  const double logit = std::log(options.window_factor_init / (1.0 - options.window_factor_init));
  window_factors = register_parameter(
      "window_factors",
      torch::full({heads_}, logit, torch::TensorOptions().dtype(torch::kFloat32).device(device)));
  converted_ = true;
}

DecoderLayerImpl::DecoderLayerImpl(const io::ModelConfig& config, int64_t layer_index) {
  self_attn = register_module("self_attn", Attention(config, layer_index));
  mlp =
      register_module("mlp", SwiGLU(config.hidden_size, config.intermediate_size, config.mlp_bias));
  input_layernorm =
      register_module("input_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                        const torch::Tensor& sin, const ForwardOptions& options) {
  torch::Tensor h = x + self_attn->forward(input_layernorm->forward(x), cos, sin, options);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

torch::Tensor DecoderLayerImpl::decode(const torch::Tensor& x, const torch::Tensor& cos,
                                       const torch::Tensor& sin, const ForwardOptions& options,
                                       LayerCache& cache) {
  torch::Tensor h = x + self_attn->decode(input_layernorm->forward(x), cos, sin, options, cache);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

DecoderStackImpl::DecoderStackImpl(const io::ModelConfig& config) {
  embed_tokens =
      register_module("embed_tokens", torch::nn::Embedding(config.vocab_size, config.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i)
    layers->push_back(DecoderLayer(config, i));
  norm = register_module("norm", RMSNorm(config.hidden_size, config.rms_norm_eps));
}

CausalLMImpl::CausalLMImpl(const io::ModelConfig& config) : config_(config) {
  TORCH_CHECK(config.num_attention_heads > 0 && config.num_key_value_heads > 0 &&
                  config.num_attention_heads % config.num_key_value_heads == 0,
              "num_attention_heads (", config.num_attention_heads,
              ") must be a multiple of num_key_value_heads (", config.num_key_value_heads, ")");
  model = register_module("model", DecoderStack(config));
  if (!config.tie_word_embeddings)
    lm_head =
        register_module("lm_head", AdaptedLinear(config.hidden_size, config.vocab_size, false));
  inverse_frequencies_ =
      rope_inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling);
}

std::pair<torch::Tensor, torch::Tensor> CausalLMImpl::rotary(int64_t offset, int64_t length,
                                                             torch::Device device) const {
  // In the model's dtype, the one apply_rope casts q and k's tables to: the same values, and
  // no cast per layer.
  const auto dtype = model->embed_tokens->weight.scalar_type();
  const int64_t needed = offset + length;
  if (!rotary_cos_.defined() || rotary_cos_.device() != device ||
      rotary_cos_.scalar_type() != dtype || rotary_cos_.size(0) < needed) {
    int64_t positions = 1024;
    while (positions < needed)
      positions *= 2;
    torch::Tensor inv = inverse_frequencies_;
    if (config_.rope_scaling && config_.rope_scaling->type == "linear")
      inv = inv / config_.rope_scaling->factor;
    auto [cos, sin] = rope_cos_sin(inv, torch::arange(positions, torch::kInt64));
    rotary_cos_ = cos.to(device, dtype);
    rotary_sin_ = sin.to(device, dtype);
  }
  return {rotary_cos_.narrow(0, offset, length), rotary_sin_.narrow(0, offset, length)};
}

torch::Tensor CausalLMImpl::hidden_states(const torch::Tensor& ids, const ForwardOptions& options,
                                          int64_t position_offset) {
  TORCH_CHECK(ids.dim() == 2, "token ids must be [batch, length], got ", ids.sizes());
  torch::Tensor h = model->embed_tokens->forward(ids);
  auto [cos, sin] = rotary(position_offset, ids.size(1), h.device());
  const int64_t last = options.stop_after_layer.value_or(num_layers() - 1);
  for (int64_t i = 0; i <= last; ++i)
    h = model->layer(i)->forward(h, cos, sin, options);
  return model->norm->forward(h);
}

torch::Tensor CausalLMImpl::logits(const torch::Tensor& hidden) {
  if (lm_head) return lm_head->forward(hidden);
  return torch::matmul(hidden, model->embed_tokens->weight.t());
}

torch::Tensor CausalLMImpl::forward(const torch::Tensor& ids, const ForwardOptions& options,
                                    int64_t position_offset) {
  return logits(hidden_states(ids, options, position_offset));
}

torch::Tensor CausalLMImpl::decode(const torch::Tensor& ids, DecodeCache& cache,
                                   const ForwardOptions& options) {
  TORCH_CHECK(ids.dim() == 2 && ids.size(1) >= 1, "token ids must be [batch, n >= 1], got ",
              ids.sizes());
  auto [cos, sin] = rotary(cache.position, ids.size(1), model->embed_tokens->weight.device());
  torch::Tensor out = decode_layers(ids, cos, sin, cache, options);
  cache.position += ids.size(1);
  return out;
}

torch::Tensor CausalLMImpl::decode_layers(const torch::Tensor& ids, const torch::Tensor& cos,
                                          const torch::Tensor& sin, DecodeCache& cache,
                                          const ForwardOptions& options) {
  torch::NoGradGuard no_grad;
  if (cache.layers.empty()) cache.layers.resize(static_cast<size_t>(num_layers()));
  TORCH_CHECK(static_cast<int64_t>(cache.layers.size()) == num_layers(),
              "the decode cache belongs to a model with ", cache.layers.size(), " layers");
  torch::Tensor h = model->embed_tokens->forward(ids);
  for (int64_t i = 0; i < num_layers(); ++i)
    h = model->layer(i)->decode(h, cos, sin, options, cache.layers[static_cast<size_t>(i)]);
  return logits(model->norm->forward(h));
}

void CausalLMImpl::convert(const ConversionOptions& options) {
  for (int64_t layer : options.softmax_layers)
    TORCH_CHECK(layer >= 0 && layer < num_layers(), "softmax_layers names layer ", layer,
                " but the model has ", num_layers(), " layers");
  for (int64_t i = 0; i < num_layers(); ++i) {
    const auto& keep = options.softmax_layers;
    if (std::find(keep.begin(), keep.end(), i) == keep.end()) attention(i)->convert(options);
  }
}

std::vector<int64_t> CausalLMImpl::converted_layers() const {
  std::vector<int64_t> layers;
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i)
    if (model->layers->ptr<DecoderLayerImpl>(i)->self_attn->converted()) layers.push_back(i);
  return layers;
}

}  // namespace hl::model
