#include "kernels/model_ops.hpp"

#ifdef HL_WITH_CUDA_KERNELS
#include "kernels/cuda/cuda_attention.hpp"
#endif

namespace hl::kernels {

#ifdef HL_WITH_CUDA_KERNELS

namespace {
bool gradient_wanted(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad());
}
}  // namespace

torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (gradient_wanted(x, weight) || !cuda::rms_norm_fusable(x, weight)) return {};
  return cuda::rms_norm(x, weight, eps);
}

torch::Tensor fused_rotary_embedding(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin) {
  if (gradient_wanted(x, cos) || sin.requires_grad() ||
      !cuda::rotary_embedding_fusable(x, cos, sin)) {
    return {};
  }
  return cuda::rotary_embedding(x, cos, sin);
}

#else

torch::Tensor fused_rms_norm(const torch::Tensor&, const torch::Tensor&, double) {
  return {};
}

torch::Tensor fused_rotary_embedding(const torch::Tensor&, const torch::Tensor&,
                                     const torch::Tensor&) {
  return {};
}

#endif

}  // namespace hl::kernels
