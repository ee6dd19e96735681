// Rotary position embeddings as Hugging Face's Llama/Mistral/Qwen2 compute them,
// including Llama 3's frequency-dependent scaling and linear position scaling.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>

namespace hl::model {

/// Rope scaling of config.json's `rope_scaling`: "llama3" or "linear".
struct RopeScaling {
  std::string type;  // "llama3" | "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

/// Inverse frequencies [head_dim / 2] in float32, after scaling.
torch::Tensor rope_inverse_frequencies(int64_t head_dim, double theta,
                                       const std::optional<RopeScaling>& scaling);

/// cos and sin [N, head_dim] for positions [N] (int64), in float32.
std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor& inverse_frequencies,
                                                     const torch::Tensor& positions);

/// Rotates x [B, H, N, head_dim] by cos/sin [N, head_dim] (rotate-half convention).
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos,
                         const torch::Tensor& sin);

}  // namespace hl::model
