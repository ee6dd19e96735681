// What the GPU test files share: the skip without a CUDA device, the relative error, and a
// feature map on the GPU beside its float64 copy.
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

/// A FeatureMap in bf16 on the GPU and a float64 copy on the CPU with the same (bf16-rounded)
/// weight, Kaiming-initialised.
struct FeatureMapPair {
  hl::kernels::FeatureMap gpu, cpu;
};
inline FeatureMapPair feature_map_pair(hl::kernels::FeatureMapOptions options) {
  options.init = hl::kernels::FeatureMapInit::kaiming_uniform;
  FeatureMapPair maps{hl::kernels::FeatureMap(options), hl::kernels::FeatureMap(options)};
  maps.gpu->to(torch::kCUDA, torch::kBFloat16);
  maps.cpu->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  maps.cpu->weight.copy_(maps.gpu->weight.to(torch::kCPU, torch::kDouble));
  return maps;
}
