#include "kernels/feature_map.hpp"

#include <array>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/cpu/attention_internal.hpp"  // shape_of

#ifdef HL_WITH_CUDA_KERNELS
#include "kernels/cuda/cuda_attention.hpp"
#endif

namespace hl::kernels {
namespace {

constexpr std::array<std::pair<FeatureMapKind, std::string_view>, 7> kKindNames{{
    {FeatureMapKind::hedgehog, "hedgehog"},
    {FeatureMapKind::hedgehog_full, "hedgehog_full"},
    {FeatureMapKind::t2r, "t2r"},
    {FeatureMapKind::elu, "elu"},
    {FeatureMapKind::relu, "relu"},
    {FeatureMapKind::exp, "exp"},
    {FeatureMapKind::identity, "identity"},
}};

constexpr std::array<std::pair<FeatureMapInit, std::string_view>, 2> kInitNames{{
    {FeatureMapInit::identity, "identity"},
    {FeatureMapInit::kaiming_uniform, "kaiming_uniform"},
}};

// Kinds whose activation doubles the projection: [f(r), f(-r)].
bool doubles_features(FeatureMapKind kind) {
  return kind == FeatureMapKind::hedgehog || kind == FeatureMapKind::hedgehog_full ||
         kind == FeatureMapKind::exp;
}

bool known_kind(FeatureMapKind kind) {
  for (const auto& [value, name] : kKindNames) {
    if (value == kind) return true;
  }
  return false;
}

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument("feature map: " + message);
}

}  // namespace

std::string_view to_string(FeatureMapKind kind) {
  for (const auto& [value, name] : kKindNames) {
    if (value == kind) return name;
  }
  return "unknown";
}

std::optional<FeatureMapKind> parse_feature_map_kind(std::string_view name) {
  for (const auto& [value, known] : kKindNames) {
    if (known == name) return value;
  }
  return std::nullopt;
}

std::string_view to_string(FeatureMapInit init) {
  for (const auto& [value, name] : kInitNames) {
    if (value == init) return name;
  }
  return "unknown";
}

std::optional<FeatureMapInit> parse_feature_map_init(std::string_view name) {
  for (const auto& [value, known] : kInitNames) {
    if (known == name) return value;
  }
  return std::nullopt;
}

FeatureMapImpl::FeatureMapImpl(const FeatureMapOptions& options) : options_(options) {
  require(known_kind(options.kind),
          "unknown kind (value " + std::to_string(static_cast<int>(options.kind)) + ")");
  require(options.heads >= 1, "heads must be >= 1, got " + std::to_string(options.heads));
  require(options.head_dim >= 1, "head_dim must be >= 1, got " + std::to_string(options.head_dim));
  projection_dim_ =
      options.kind == FeatureMapKind::hedgehog_full ? options.head_dim : options.feature_dim;
  require(projection_dim_ >= 1,
          "feature_dim must be >= 1, got " + std::to_string(options.feature_dim));
  weight = register_parameter("weight",
                              torch::empty({options.heads, options.head_dim, projection_dim_}));
  if (options.bias || options.kind == FeatureMapKind::t2r) {
    bias = register_parameter("bias", torch::empty({options.heads, projection_dim_}));
  }
  reset_parameters(options.init);
}

void FeatureMapImpl::reset_parameters(FeatureMapInit init) {
  torch::NoGradGuard no_grad;
  const int64_t d = options_.head_dim;
  if (init == FeatureMapInit::identity) {
    weight.copy_(torch::eye(d, projection_dim_, weight.options()).expand_as(weight));
    if (bias.defined()) bias.zero_();
    return;
  }
  // nn.Linear's default: Kaiming-uniform with a = sqrt(5) gives bound 1 / sqrt(fan_in).
  const double bound = 1.0 / std::sqrt(static_cast<double>(d));
  weight.uniform_(-bound, bound);
  if (bias.defined()) bias.uniform_(-bound, bound);
}

int64_t FeatureMapImpl::feature_count() const {
  return doubles_features(options_.kind) ? 2 * projection_dim_ : projection_dim_;
}

torch::Tensor FeatureMapImpl::forward(const torch::Tensor& x) {
  require(
      x.defined() && x.dim() == 4 && x.size(1) >= 1 && options_.heads % x.size(1) == 0 &&
          x.size(3) == options_.head_dim,
      "input must be [B, H, N, d] with H = " + std::to_string(options_.heads) +
          " (or a divisor of it: grouped-query k) and d = " + std::to_string(options_.head_dim) +
          ", got " + (x.defined() ? detail::shape_of(x) : std::string("an undefined tensor")));
  require(x.scalar_type() == weight.scalar_type(),
          std::string("input dtype ") + c10::toString(x.scalar_type()) +
              " differs from the weight's " + c10::toString(weight.scalar_type()));
#ifdef HL_WITH_CUDA_KERNELS
  // The projection inside the activation's kernels, each way (bf16 on Hopper, p = 64).
  const bool hedgehog =
      options_.kind == FeatureMapKind::hedgehog || options_.kind == FeatureMapKind::hedgehog_full;
  if (hedgehog && !bias.defined() && cuda::hedgehog_map_fusable(x, weight))
    return cuda::hedgehog_map(x, weight);
#endif
  const int64_t group = options_.heads / x.size(1);
  // [B, H, N, d] x [H, d, p] -> [B, H, N, p]; repeat_kv has no host synchronisation, which
  // repeat_interleave with a count has in LibTorch 1.13.
  auto r = torch::matmul(detail::repeat_kv(x, group), weight);
  if (bias.defined()) r = r + bias.view({1, options_.heads, 1, projection_dim_});
  switch (options_.kind) {
    case FeatureMapKind::hedgehog:
    case FeatureMapKind::hedgehog_full:
    case FeatureMapKind::exp:
      return paired_activation(r, options_.kind);
    case FeatureMapKind::t2r:
    case FeatureMapKind::relu:
      return torch::relu(r).clamp_min(kFeatureClampMin);
    case FeatureMapKind::elu:
      return (1 + torch::elu(r)).clamp_min(kFeatureClampMin);
    case FeatureMapKind::identity:
      return r;
  }
  return r;
}

torch::Tensor paired_activation(const torch::Tensor& r, FeatureMapKind kind,
                                [[maybe_unused]] bool allow_fused) {
  require(doubles_features(kind), "paired_activation: kind " + std::string(to_string(kind)) +
                                      " does not pair f(r) with f(-r)");
  const bool softmax = kind != FeatureMapKind::exp;
#ifdef HL_WITH_CUDA_KERNELS
  if (allow_fused && cuda::paired_activation_fusable(r)) {
    return cuda::paired_activation(
        r, softmax ? cuda::PairedActivation::kSoftmax : cuda::PairedActivation::kExp);
  }
#endif
  const torch::Tensor plus = softmax ? torch::softmax(r, -1) : torch::exp(r - r.amax(-1, true));
  const torch::Tensor minus = softmax ? torch::softmax(-r, -1) : torch::exp(r.amin(-1, true) - r);
  return torch::cat({plus, minus}, -1).clamp_min(kFeatureClampMin);
}

}  // namespace hl::kernels
