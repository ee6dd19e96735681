// The decoder's RMSNorm and rotary embedding as one CUDA kernel each where no gradient is wanted
// (decode, evaluation, attention transfer's frozen teacher): at decode a layer's step is ~45
// small kernels, whose count sets its time. core/model keeps LibTorch's ops as the definition
// and for autograd; these round where those ops round (kernels/cuda/model_ops.cu).
#pragma once

#include <torch/torch.h>

namespace hl::kernels {

/// core/model's RMSNorm of x by weight (weight * T(x * rsqrt(mean(x^2) + eps)), float32 inside)
/// as one kernel, or an undefined tensor where that does not apply: a gradient wanted, not CUDA,
/// dtypes other than one bf16 or float32, or built without the CUDA kernels.
torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

/// core/model's apply_rope (x cos + rotate_half(x) sin for x [B, H, N, d], cos / sin [N, d]) as
/// one kernel, or an undefined tensor where that does not apply (as fused_rms_norm; cos and sin
/// must be in x's dtype).
torch::Tensor fused_rotary_embedding(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin);

}  // namespace hl::kernels
