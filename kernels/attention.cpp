// Names of the enums and the backend dispatch of attention().
#include "kernels/attention.hpp"

#include <array>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/cpu/attention_internal.hpp"

#ifdef HL_WITH_CUDA_KERNELS
#include <torch/version.h>

// ---- CUDA backend hook -----------------------------------------------------------------
// The tensor-facing glue in kernels/cuda/*.cpp defines these functions over the raw-pointer
// kernels. `supports` says whether the fused kernels cover a call (mode, dtype, head sizes);
// when it says no, automatic dispatch falls back to the CPU-style paths, which run on the GPU
// through LibTorch ops. The overloads on AttentionInputs read GQA k/v in place.
namespace hl::kernels::cuda {
bool supports(const detail::Problem& problem);
AttentionOutput attention(const detail::Problem& problem);
bool supports(const AttentionInputs& inputs, const AttentionOptions& options, std::string* why);
AttentionOutput attention(const AttentionInputs& inputs, const AttentionOptions& options);
bool supports_hedgehog_maps(const AttentionInputs& inputs, const torch::Tensor& map_q_weight,
                            const torch::Tensor& map_k_weight, const AttentionOptions& options,
                            std::string* why);
AttentionOutput attention_with_hedgehog_maps(const AttentionInputs& inputs,
                                             const torch::Tensor& map_q_weight,
                                             const torch::Tensor& map_k_weight,
                                             const AttentionOptions& options);
}  // namespace hl::kernels::cuda
#endif

namespace hl::kernels {
namespace {

constexpr std::array<std::pair<AttentionMode, std::string_view>, 6> kModeNames{{
    {AttentionMode::softmax, "softmax"},
    {AttentionMode::hybrid, "hybrid"},
    {AttentionMode::linear_only, "linear_only"},
    {AttentionMode::window_only, "window_only"},
    {AttentionMode::sinks_only, "sinks_only"},
    {AttentionMode::none, "none"},
}};

constexpr std::array<std::pair<Backend, std::string_view>, 4> kBackendNames{{
    {Backend::automatic, "automatic"},
    {Backend::reference, "reference"},
    {Backend::chunked, "chunked"},
    {Backend::cuda, "cuda"},
}};

// Up to this length the quadratic form is as cheap as the chunked one (bench/RESULTS.md),
// and it needs no padding to whole chunks.
constexpr int64_t kReferenceMaxLength = 128;

std::string prefix(const AttentionOptions& options) {
  return "attention (" + std::string(to_string(options.mode)) + "): ";
}

Backend choose_backend(const detail::Problem& problem, const AttentionOptions& options) {
  const bool on_gpu = problem.q.is_cuda();
  switch (options.backend) {
    case Backend::cuda:
#ifdef HL_WITH_CUDA_KERNELS
      if (!on_gpu) throw std::invalid_argument(prefix(options) + "backend cuda needs CUDA tensors");
      if (!cuda::supports(problem)) {
        throw std::invalid_argument(prefix(options) +
                                    "the CUDA kernels do not cover this mode/dtype/shape");
      }
      return Backend::cuda;
#else
      throw std::invalid_argument(prefix(options) +
                                  "backend cuda requested but this build has no CUDA kernels "
                                  "(HL_WITH_CUDA_KERNELS is not defined)");
#endif
    case Backend::reference:
      return Backend::reference;
    case Backend::chunked:
      if (options.want_weights) {
        throw std::invalid_argument(prefix(options) +
                                    "want_weights needs the reference backend (the weights "
                                    "are N x N); use Backend::automatic or reference");
      }
      return Backend::chunked;
    case Backend::automatic:
      break;
  }
#ifdef HL_WITH_CUDA_KERNELS
  if (on_gpu && !options.want_weights && cuda::supports(problem)) return Backend::cuda;
#endif
  (void)on_gpu;
  if (options.want_weights || problem.length <= kReferenceMaxLength) return Backend::reference;
  return Backend::chunked;
}

}  // namespace

std::string_view to_string(AttentionMode mode) {
  for (const auto& [value, name] : kModeNames) {
    if (value == mode) return name;
  }
  return "unknown";
}

std::optional<AttentionMode> parse_attention_mode(std::string_view name) {
  for (const auto& [value, known] : kModeNames) {
    if (known == name) return value;
  }
  return std::nullopt;
}

std::string_view to_string(Backend backend) {
  for (const auto& [value, name] : kBackendNames) {
    if (value == backend) return name;
  }
  return "unknown";
}

std::optional<Backend> parse_backend(std::string_view name) {
  for (const auto& [value, known] : kBackendNames) {
    if (known == name) return value;
  }
  return std::nullopt;
}

AttentionOutput attention(const AttentionInputs& inputs, const AttentionOptions& options) {
  detail::validate(inputs, options, "attention");
#if defined(HL_WITH_CUDA_KERNELS) && \
    (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1))
  // Full causal softmax (the transfer teacher, layers kept as softmax) on the GPU: PyTorch's
  // fused attention kernels; the CPU-style paths below are quadratic or chunked by design.
  if (options.mode == AttentionMode::softmax && options.backend == Backend::automatic &&
      inputs.q.is_cuda() && !options.want_weights) {
    const int64_t groups = inputs.q.size(1) / inputs.k.size(1);
    AttentionOutput out;
    out.y = at::scaled_dot_product_attention(inputs.q, detail::repeat_kv(inputs.k, groups),
                                             detail::repeat_kv(inputs.v, groups), {}, 0.0,
                                             /*is_causal=*/true, options.scale);
    out.backend = Backend::cuda;
    return out;
  }
#endif
#ifdef HL_WITH_CUDA_KERNELS
  // Before prepare(): the fused kernels read GQA k/v in place, so the k/v repeated to the
  // query heads are never materialised on this path.
  if ((options.backend == Backend::automatic || options.backend == Backend::cuda) &&
      inputs.q.is_cuda() && !options.want_weights && cuda::supports(inputs, options, nullptr)) {
    AttentionOutput out = cuda::attention(inputs, options);
    out.backend = Backend::cuda;
    return out;
  }
#endif
  const detail::Problem problem = detail::prepare(inputs, options);
  const Backend backend = choose_backend(problem, options);
  AttentionOutput out;
  switch (backend) {
    case Backend::reference:
      out = detail::reference_attention(problem);
      break;
    case Backend::chunked:
      out = detail::chunked_attention(problem);
      break;
    case Backend::cuda:
#ifdef HL_WITH_CUDA_KERNELS
      out = cuda::attention(problem);
      break;
#endif
    case Backend::automatic:
      throw std::logic_error("attention: dispatch left no backend");
  }
  out.backend = backend;
  return out;
}

AttentionInputs with_feature_maps(AttentionInputs inputs, FeatureMapImpl& map_q,
                                  FeatureMapImpl& map_k) {
  // With GQA each kv head of k serves its group's maps (FeatureMap takes it unrepeated).
  const auto dtype = inputs.q.scalar_type();
  inputs.phi_q = map_q.forward(inputs.q.to(map_q.weight.scalar_type())).to(dtype);
  inputs.phi_k = map_k.forward(inputs.k.to(map_k.weight.scalar_type())).to(dtype);
  return inputs;
}

#ifdef HL_WITH_CUDA_KERNELS
namespace {

// Whether the fused forward may compute both maps itself (the kernels still check the shape).
bool fused_maps_apply(const AttentionInputs& in, const FeatureMapImpl& map_q,
                      const FeatureMapImpl& map_k, const AttentionOptions& options) {
  for (const FeatureMapImpl* map : {&map_q, &map_k}) {
    if (map->options().kind != FeatureMapKind::hedgehog || map->bias.defined() ||
        map->projection_dim() != 64) {
      return false;
    }
  }
  const bool graph =
      torch::GradMode::is_enabled() &&
      (in.q.requires_grad() || in.k.requires_grad() || in.v.requires_grad() ||
       map_q.weight.requires_grad() || map_k.weight.requires_grad() ||
       (in.window_factor_logits.defined() && in.window_factor_logits.requires_grad()));
  return !graph && in.q.is_cuda() &&
         (options.backend == Backend::automatic || options.backend == Backend::cuda);
}

}  // namespace
#endif

AttentionOutput attention_with_feature_maps(const AttentionInputs& inputs, FeatureMapImpl& map_q,
                                            FeatureMapImpl& map_k,
                                            const AttentionOptions& options) {
  if (inputs.phi_q.defined() || inputs.phi_k.defined()) {
    throw std::invalid_argument(
        "attention_with_feature_maps: phi_q and phi_k come from the maps, pass them undefined");
  }
#ifdef HL_WITH_CUDA_KERNELS
  if (fused_maps_apply(inputs, map_q, map_k, options) &&
      cuda::supports_hedgehog_maps(inputs, map_q.weight, map_k.weight, options, nullptr)) {
    return cuda::attention_with_hedgehog_maps(inputs, map_q.weight, map_k.weight, options);
  }
#endif
  return attention(with_feature_maps(inputs, map_q, map_k), options);
}

}  // namespace hl::kernels
