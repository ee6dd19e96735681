// Rotary position embeddings as Hugging Face's Llama/Mistral/Qwen2 compute them,
// including Llama 3's frequency-dependent scaling and linear position scaling.
#pragma once

#include <torch/torch.h>

#include <optional>

#include "core/io/hf_config.hpp"

namespace hl::model {

/// Inverse frequencies [head_dim / 2] in float32, after scaling.
torch::Tensor rope_inverse_frequencies(int64_t head_dim, double theta,
                                       const std::optional<io::RopeScalingConfig>& scaling);

/// cos and sin [N, head_dim] for positions [N] (int64), in float32.
std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor& inverse_frequencies,
                                                     const torch::Tensor& positions);

/// Rotates x [B, H, N, head_dim] by cos/sin [N, head_dim] (rotate-half convention).
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos,
                         const torch::Tensor& sin);

}  // namespace hl::model
