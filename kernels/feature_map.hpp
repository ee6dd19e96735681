// Learnable feature maps phi of linear attention (DESIGN §1): a per-head projection
// r = x W_h (+ b_h) followed by an activation.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string_view>

namespace hl::kernels {

/// Activation applied after the per-head projection; names as in DESIGN §1.
enum class FeatureMapKind { hedgehog, hedgehog_full, t2r, elu, relu, exp, identity };

/// How the projection weight starts out.
enum class FeatureMapInit {
  identity,         ///< W_h = eye(d, p) (LoLCATs' lk_zero_init), bias zero
  kaiming_uniform,  ///< U(-1/sqrt(d), 1/sqrt(d)) as torch.nn.Linear (a = sqrt(5), fan_in = d)
};

/// "hedgehog", "hedgehog_full", "t2r", "elu", "relu", "exp", "identity".
std::string_view to_string(FeatureMapKind kind);
/// Inverse of to_string; nullopt for an unknown name.
std::optional<FeatureMapKind> parse_feature_map_kind(std::string_view name);
/// "identity", "kaiming_uniform".
std::string_view to_string(FeatureMapInit init);
/// Inverse of to_string; nullopt for an unknown name.
std::optional<FeatureMapInit> parse_feature_map_init(std::string_view name);

/// Shape and behaviour of one feature map (one for q, one for k per layer).
struct FeatureMapOptions {
  FeatureMapKind kind = FeatureMapKind::hedgehog;
  int64_t heads = 1;         ///< one projection per (query) head
  int64_t head_dim = 64;     ///< d, the input size
  int64_t feature_dim = 64;  ///< p, the projection size; ignored by hedgehog_full (p = d)
  bool bias = false;         ///< t2r always has a bias
  FeatureMapInit init = FeatureMapInit::identity;
};

/// phi(x) for x [B, H, N, d] -> [B, H, N, F]; weight [H, d, p], bias [H, p] when present.
class FeatureMapImpl : public torch::nn::Module {
 public:
  explicit FeatureMapImpl(const FeatureMapOptions& options);

  /// x [B, H, N, d] with d = head_dim and H = heads, or a divisor of heads (grouped-query k: x
  /// head g serves maps g heads / H .. (g + 1) heads / H - 1, as if repeated); throws
  /// std::invalid_argument otherwise.
  torch::Tensor forward(const torch::Tensor& x);

  /// F, the number of features forward() returns (2p for hedgehog, hedgehog_full, exp).
  int64_t feature_count() const;
  /// p, the projection size (d for hedgehog_full).
  int64_t projection_dim() const { return projection_dim_; }
  const FeatureMapOptions& options() const { return options_; }

  /// Re-initialises weight (and bias) in place as `init` says.
  void reset_parameters(FeatureMapInit init);

  torch::Tensor weight;  ///< [H, d, p]
  torch::Tensor bias;    ///< [H, p], undefined when the kind has no bias

 private:
  FeatureMapOptions options_;
  int64_t projection_dim_;
};
TORCH_MODULE(FeatureMap);

/// Lower clamp of every feature map but identity (DESIGN §1).
inline constexpr double kFeatureClampMin = 1e-12;

/// The activation of the kinds that double the features, over the last axis of r and clamped
/// at kFeatureClampMin: [softmax(r), softmax(-r)] for hedgehog and hedgehog_full,
/// [exp(r - max r), exp(min r - r)] for exp (std::invalid_argument for other kinds). bf16 and
/// float32 CUDA tensors with p <= 256 take one fused kernel each way when the CUDA kernels are
/// built, unless allow_fused is false; the rest runs LibTorch ops.
torch::Tensor paired_activation(const torch::Tensor& r, FeatureMapKind kind,
                                bool allow_fused = true);

}  // namespace hl::kernels
