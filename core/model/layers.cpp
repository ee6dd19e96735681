#include "core/model/layers.hpp"

#include <cmath>

#include "kernels/model_ops.hpp"

namespace hl::model {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  if (torch::Tensor fused = kernels::fused_rms_norm(x, weight, eps_); fused.defined()) return fused;
  auto input_dtype = x.scalar_type();
  torch::Tensor h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * h.to(input_dtype);
}

LoRAAdapterImpl::LoRAAdapterImpl(int64_t in_features, int64_t out_features, int64_t rank,
                                 torch::Device device) {
  auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  lora_a = register_parameter("lora_A", torch::empty({rank, in_features}, options));
  torch::nn::init::kaiming_uniform_(lora_a, std::sqrt(5.0));
  lora_b = register_parameter("lora_B", torch::zeros({out_features, rank}, options));
}

AdaptedLinearImpl::AdaptedLinearImpl(int64_t in_features, int64_t out_features, bool has_bias) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (has_bias) bias = register_parameter("bias", torch::zeros({out_features}));
}

torch::Tensor AdaptedLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = torch::nn::functional::linear(x, weight, bias);
  if (!has_lora()) return y;
  torch::Tensor h = x;
  if (lora_dropout_ > 0.0 && is_training()) h = torch::dropout(h, lora_dropout_, true);
  h = torch::matmul(torch::matmul(h, lora->lora_a.to(h.dtype()).t()),
                    lora->lora_b.to(h.dtype()).t());
  return y + lora_scale_ * h;
}

void AdaptedLinearImpl::attach_lora(int64_t rank, double alpha, double dropout) {
  TORCH_CHECK(rank >= 1, "LoRA rank must be >= 1, got ", rank);
  TORCH_CHECK(!has_lora(), "LoRA adapter attached twice");
  lora =
      register_module("lora", LoRAAdapter(weight.size(1), weight.size(0), rank, weight.device()));
  lora_scale_ = alpha / static_cast<double>(rank);
  lora_dropout_ = dropout;
}

void AdaptedLinearImpl::merge_lora() {
  if (!has_lora()) return;
  {
    torch::NoGradGuard no_grad;
    torch::Tensor delta = torch::matmul(lora->lora_b, lora->lora_a) * lora_scale_;
    weight.add_(delta.to(weight.dtype()));
  }
  unregister_module("lora");
  lora = nullptr;
}

SwiGLUImpl::SwiGLUImpl(int64_t hidden, int64_t intermediate, bool bias) {
  gate_proj = register_module("gate_proj", AdaptedLinear(hidden, intermediate, bias));
  up_proj = register_module("up_proj", AdaptedLinear(hidden, intermediate, bias));
  down_proj = register_module("down_proj", AdaptedLinear(intermediate, hidden, bias));
}

torch::Tensor SwiGLUImpl::forward(const torch::Tensor& x) {
  return down_proj->forward(torch::silu(gate_proj->forward(x)) * up_proj->forward(x));
}

}  // namespace hl::model
