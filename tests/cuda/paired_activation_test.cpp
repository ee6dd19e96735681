// The fused paired activations of the hedgehog and exp feature maps (kernels/cuda/feature_map.cu)
// against the LibTorch formulas in float64 on the CPU: values and gradients, projection sizes
// that do and do not fill whole warps, rows where the 1e-12 clamp holds, and the FeatureMap
// module end to end. Every test skips without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "cuda/gpu_test.hpp"
#include "kernels/feature_map.hpp"

#ifdef HL_WITH_CUDA_KERNELS
#include "kernels/cuda/cuda_attention.hpp"
#endif

namespace {

#ifdef HL_WITH_CUDA_KERNELS  // without them CudaAttention.NeedsCudaKernels reports the skip

namespace hk = hl::kernels;
using torch::Tensor;

struct Result {
  Tensor phi, dr;
};

// phi and dL/dr for L = sum(phi * dphi), through autograd.
Result run(const Tensor& r_in, const Tensor& dphi, hk::FeatureMapKind kind, bool fused) {
  const Tensor r = r_in.detach().requires_grad_(true);
  const Tensor phi = hk::paired_activation(r, kind, fused);
  phi.backward(dphi);
  return {phi.detach(), r.grad()};
}

// Fresh random rows of width p (a few rows stretched so that the clamp holds somewhere); the
// fused kernel in `dtype` on the GPU against the formula in float64 on the CPU, from the same
// (rounded) inputs. Tolerances: relative error below 1e-5 in float32 and 1e-2 in bf16.
void check(hk::FeatureMapKind kind, int64_t p, torch::ScalarType dtype, uint64_t seed) {
  torch::manual_seed(seed);
  const auto gpu = torch::TensorOptions().device(torch::kCUDA).dtype(dtype);
  Tensor r = torch::randn({2, 3, 37, p}, gpu) * 3;
  r.select(2, 5).mul_(40);  // entries far below 1e-12: the clamp holds there
  const Tensor dphi = torch::randn({2, 3, 37, 2 * p}, gpu);
  ASSERT_TRUE(hl::kernels::cuda::paired_activation_fusable(r));
  const Result fused = run(r, dphi, kind, true);
  const Result ref =
      run(r.to(torch::kCPU, torch::kDouble), dphi.to(torch::kCPU, torch::kDouble), kind, false);
  ASSERT_EQ(fused.phi.sizes(), ref.phi.sizes());
  ASSERT_EQ(fused.phi.scalar_type(), dtype);
  ASSERT_EQ(fused.dr.scalar_type(), dtype);
  EXPECT_TRUE(torch::isfinite(fused.phi).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(fused.dr).all().item<bool>());
  const double tol = dtype == torch::kFloat ? 1e-5 : 1e-2;
  const std::string what = std::string(hk::to_string(kind)) + ", p " + std::to_string(p);
  EXPECT_LT(rel_err(fused.phi, ref.phi), tol) << what;
  EXPECT_LT(rel_err(fused.dr, ref.dr), tol) << what;
  // The clamp held in the stretched rows, and the fused kernel clamped at the same value.
  EXPECT_TRUE((ref.phi.select(2, 5) == hk::kFeatureClampMin).any().item<bool>());
  EXPECT_EQ(fused.phi.select(2, 5).min().item<double>(),
            Tensor(torch::tensor(hk::kFeatureClampMin).to(dtype)).item<double>());
}

constexpr hk::FeatureMapKind kPairedKinds[] = {hk::FeatureMapKind::hedgehog,
                                               hk::FeatureMapKind::exp};

TEST(PairedActivation, MatchesFloat64Fp32) {
  HL_REQUIRE_GPU();
  for (const auto kind : kPairedKinds) {
    for (int64_t p : {64, 40, 128, 256, 7})
      check(kind, p, torch::kFloat, 11 + p);
  }
}

// bf16 inputs tie often (8-bit mantissa): the exp map's max / min gradient is shared among
// ties, here as in LibTorch's amax / amin.
TEST(PairedActivation, MatchesFloat64Bf16) {
  HL_REQUIRE_GPU();
  for (const auto kind : kPairedKinds) {
    for (int64_t p : {64, 128, 33})
      check(kind, p, torch::kBFloat16, 23 + p);
  }
}

// Small cases for compute-sanitizer (scripts/gpu-kernels.sh runs *Sanitizer* under memcheck and
// racecheck).
TEST(PairedActivation, SanitizerSmall) {
  HL_REQUIRE_GPU();
  check(hk::FeatureMapKind::hedgehog, 40, torch::kFloat, 3);
  check(hk::FeatureMapKind::exp, 64, torch::kBFloat16, 4);
}

// Rows that start off a 16-byte boundary (a contiguous view into a larger buffer) take the
// one-warp-a-row kernels, whose loads need no alignment, with the same result as aligned ones.
TEST(PairedActivation, UnalignedRowsBf16) {
  HL_REQUIRE_GPU();
  torch::manual_seed(9);
  const auto gpu = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  const int64_t rows = 37, p = 64;
  const Tensor r = (torch::randn({rows * p + 3}, gpu) * 3).narrow(0, 3, rows * p).view({rows, p});
  ASSERT_TRUE(r.is_contiguous());
  ASSERT_NE(reinterpret_cast<uintptr_t>(r.data_ptr()) % 16, 0u);
  const Tensor dphi = torch::randn({rows, 2 * p}, gpu);
  for (const auto kind : kPairedKinds) {
    const Result got = run(r, dphi, kind, true);
    const Result ref =
        run(r.to(torch::kCPU, torch::kDouble), dphi.to(torch::kCPU, torch::kDouble), kind, false);
    EXPECT_LT(rel_err(got.phi, ref.phi), 1e-2) << hk::to_string(kind);
    EXPECT_LT(rel_err(got.dr, ref.dr), 1e-2) << hk::to_string(kind);
  }
}

// Wider projections than the kernel takes run the LibTorch ops, with the same result.
TEST(PairedActivation, WideProjectionFallsBack) {
  HL_REQUIRE_GPU();
  torch::manual_seed(5);
  const Tensor r = torch::randn({4, 300}, torch::TensorOptions().device(torch::kCUDA));
  EXPECT_FALSE(hl::kernels::cuda::paired_activation_fusable(r));
  const Tensor dphi = torch::randn({4, 600}, r.options());
  const auto kind = hk::FeatureMapKind::hedgehog;
  const Result got = run(r, dphi, kind, true);
  const Result ref =
      run(r.to(torch::kCPU, torch::kDouble), dphi.to(torch::kCPU, torch::kDouble), kind, false);
  EXPECT_LT(rel_err(got.phi, ref.phi), 1e-5);
  EXPECT_LT(rel_err(got.dr, ref.dr), 1e-5);
  EXPECT_THROW(
      hl::kernels::cuda::paired_activation(r, hl::kernels::cuda::PairedActivation::kSoftmax),
      std::invalid_argument);
}

// The FeatureMap module on the GPU in bf16 (the projection, then the fused activation: p = 32,
// which the fused map with its projection does not take) against a float64 copy on the CPU:
// features and the gradients of the input and of the projection weight.
TEST(PairedActivation, FeatureMapModuleBf16) {
  HL_REQUIRE_GPU();
  torch::manual_seed(8);
  FeatureMapPair maps = hedgehog_map_pair(4, 64, 32);
  const auto gpu = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  const Tensor x = (torch::randn({2, 4, 50, 64}, gpu) * 2).requires_grad_(true);
  ASSERT_FALSE(hl::kernels::cuda::hedgehog_map_fusable(x, maps.gpu->weight));
  expect_maps_agree(maps, x, torch::randn({2, 4, 50, 64}, gpu), "x");
}

#endif

}  // namespace
