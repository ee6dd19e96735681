// What the GPU test files share: the skip without a CUDA device, the relative error, and a
// feature map on the GPU beside its float64 copy with the check that the two agree.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/feature_map.hpp"

/// Skips the current test where no CUDA device is present.
#define HL_REQUIRE_GPU()                                                \
  do {                                                                  \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

/// ||a - b|| / ||b|| in float64, on b's device.
inline double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor a64 = a.to(b.device(), torch::kDouble), b64 = b.to(torch::kDouble);
  return ((a64 - b64).norm() / b64.norm()).item<double>();
}

/// A Hedgehog FeatureMap in bf16 on the GPU and a float64 copy on the CPU with the same
/// (bf16-rounded) weight, Kaiming-initialised.
struct FeatureMapPair {
  hl::kernels::FeatureMap gpu, cpu;
};
inline FeatureMapPair hedgehog_map_pair(int64_t heads, int64_t head_dim, int64_t feature_dim) {
  hl::kernels::FeatureMapOptions options;
  options.kind = hl::kernels::FeatureMapKind::hedgehog;
  options.heads = heads;
  options.head_dim = head_dim;
  options.feature_dim = feature_dim;
  options.init = hl::kernels::FeatureMapInit::kaiming_uniform;
  FeatureMapPair maps{hl::kernels::FeatureMap(options), hl::kernels::FeatureMap(options)};
  maps.gpu->to(torch::kCUDA, torch::kBFloat16);
  maps.cpu->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  maps.cpu->weight.copy_(maps.gpu->weight.to(torch::kCPU, torch::kDouble));
  return maps;
}

/// Runs both maps forward and backward on x (on the GPU, requiring its gradient) with the feature
/// gradient dphi, and expects the features and the gradients of x and of the weight within 1e-2
/// of the float64 copy's. Clears both weights' gradients first.
inline void expect_maps_agree(FeatureMapPair& maps, const torch::Tensor& x,
                              const torch::Tensor& dphi, const char* what) {
  maps.gpu->weight.mutable_grad() = torch::Tensor();
  maps.cpu->weight.mutable_grad() = torch::Tensor();
  const torch::Tensor x64 = x.detach().to(torch::kCPU, torch::kDouble).requires_grad_(true);
  const torch::Tensor phi = maps.gpu->forward(x);
  phi.backward(dphi);
  const torch::Tensor phi64 = maps.cpu->forward(x64);
  phi64.backward(dphi.to(torch::kCPU, torch::kDouble));
  EXPECT_LT(rel_err(phi, phi64), 1e-2) << what << ": features";
  EXPECT_LT(rel_err(x.grad(), x64.grad()), 1e-2) << what << ": input gradient";
  EXPECT_LT(rel_err(maps.gpu->weight.grad(), maps.cpu->weight.grad()), 1e-2)
      << what << ": weight gradient";
}
