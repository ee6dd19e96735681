// Building blocks of the Llama-family decoder: RMSNorm, a linear layer that can carry a
// LoRA adapter, and the SwiGLU MLP.
#pragma once

#include <torch/torch.h>

namespace hl::model {

/// Root-mean-square layer norm, computed in float32 as Hugging Face does.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

/// The low-rank pair of a LoRA adapter (Hugging Face PEFT names: lora_A, lora_B).
class LoRAAdapterImpl : public torch::nn::Module {
 public:
  LoRAAdapterImpl(int64_t in_features, int64_t out_features, int64_t rank,
                  torch::Device device);
  torch::Tensor lora_a, lora_b;
};
TORCH_MODULE(LoRAAdapter);

/// y = x W^T (+ b) (+ (alpha / r) * dropout(x) A^T B^T once a LoRA adapter is attached).
class AdaptedLinearImpl : public torch::nn::Module {
 public:
  AdaptedLinearImpl(int64_t in_features, int64_t out_features, bool bias);
  torch::Tensor forward(const torch::Tensor& x);

  /// Attaches a LoRA adapter: A Kaiming-uniform, B zero, so the output is unchanged at first.
  void attach_lora(int64_t rank, double alpha, double dropout);
  /// Folds the adapter into the base weight and removes it.
  void merge_lora();
  bool has_lora() const { return !lora.is_empty(); }
  double lora_scale() const { return lora_scale_; }

  torch::Tensor weight, bias;
  LoRAAdapter lora{nullptr};

 private:
  double lora_scale_ = 0.0;
  double lora_dropout_ = 0.0;
};
TORCH_MODULE(AdaptedLinear);

/// down(silu(gate(x)) * up(x)).
class SwiGLUImpl : public torch::nn::Module {
 public:
  SwiGLUImpl(int64_t hidden, int64_t intermediate, bool bias);
  torch::Tensor forward(const torch::Tensor& x);

  AdaptedLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(SwiGLU);

}  // namespace hl::model
