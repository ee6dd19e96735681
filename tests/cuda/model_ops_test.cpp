// The decoder's fused RMSNorm and rotary embedding (kernels/model_ops.hpp) against the LibTorch
// ops core/model defines them by, on the same GPU tensors, and against float64: the rotary
// embedding equal bit for bit, RMSNorm within a unit of the last place (its sum's order differs).
#include "kernels/model_ops.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "gpu_test.hpp"

namespace {

using torch::Tensor;

// core/model's definitions (layers.cpp, rope.cpp), in the inputs' dtype.
Tensor rms_norm_ops(const Tensor& x, const Tensor& weight, double eps) {
  Tensor h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}
Tensor rope_ops(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const Tensor rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.to(x.dtype()) + rotated * sin.to(x.dtype());
}

TEST(ModelOps, RmsNormMatchesTheOps) {
  HL_REQUIRE_GPU();
  torch::NoGradGuard no_grad;
  torch::manual_seed(21);
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const std::vector<int64_t>& shape :
         {std::vector<int64_t>{3, 5, 2048}, {7, 100}, {1, 1, 64}}) {
      const auto gpu = torch::TensorOptions().device(torch::kCUDA).dtype(dtype);
      const Tensor x = torch::randn(shape, gpu) * 3, w = torch::randn({shape.back()}, gpu);
      const Tensor fused = hl::kernels::fused_rms_norm(x, w, 1e-5);
      ASSERT_TRUE(fused.defined());
      const Tensor ops = rms_norm_ops(x, w, 1e-5);
      ASSERT_EQ(fused.sizes(), ops.sizes());
      ASSERT_EQ(fused.scalar_type(), dtype);
      const Tensor ref =
          rms_norm_ops(x.to(torch::kCPU, torch::kDouble), w.to(torch::kCPU, torch::kDouble), 1e-5);
      // Within two units of the last place of the ops' result in bf16 (eight in float32): the
      // order of the sum of squares may move the scale by a few float32 ulps, which the roundings
      // to bf16 turn into at most one ulp each. And as close to float64 as the ops are.
      const double tol = dtype == torch::kFloat ? std::ldexp(1.0, -20) : std::ldexp(1.0, -6);
      const Tensor diff = (fused.to(torch::kDouble) - ops.to(torch::kDouble)).abs();
      EXPECT_TRUE((diff <= ops.to(torch::kDouble).abs() * tol).all().item<bool>())
          << "max diff " << diff.max().item<double>();
      EXPECT_LT(rel_err(fused, ref), dtype == torch::kFloat ? 1e-6 : 1e-2);
    }
  }
}

TEST(ModelOps, RotaryEmbeddingEqualsTheOps) {
  HL_REQUIRE_GPU();
  torch::NoGradGuard no_grad;
  torch::manual_seed(22);
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const int64_t d : {64, 128}) {
      for (const int64_t n : {1, 9}) {
        const auto gpu = torch::TensorOptions().device(torch::kCUDA).dtype(dtype);
        // q as the model makes it: [B, N, H, d] viewed heads-first.
        const Tensor x = torch::randn({2, n, 6, d}, gpu).transpose(1, 2);
        const Tensor angles = torch::rand({n, d}, gpu.dtype(torch::kFloat)) * 50;
        const Tensor cos = angles.cos().to(dtype), sin = angles.sin().to(dtype);
        const Tensor fused = hl::kernels::fused_rotary_embedding(x, cos, sin);
        ASSERT_TRUE(fused.defined());
        EXPECT_TRUE(torch::equal(fused, rope_ops(x, cos, sin)))
            << "dtype " << dtype << ", d " << d << ", n " << n;
      }
    }
  }
}

// Where a gradient is wanted, or the dtypes differ, the ops stay in charge (undefined back).
TEST(ModelOps, LeavesGradientsAndMixedDtypesToTheOps) {
  HL_REQUIRE_GPU();
  const auto gpu = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  const Tensor x = torch::randn({4, 64}, gpu).requires_grad_(true), w = torch::randn({64}, gpu);
  EXPECT_FALSE(hl::kernels::fused_rms_norm(x, w, 1e-5).defined());
  EXPECT_FALSE(hl::kernels::fused_rms_norm(x.detach(), w.to(torch::kFloat), 1e-5).defined());
  const Tensor q = torch::randn({1, 2, 3, 64}, gpu).requires_grad_(true);
  const Tensor cos = torch::rand({3, 64}, gpu), sin = torch::rand({3, 64}, gpu);
  EXPECT_FALSE(hl::kernels::fused_rotary_embedding(q, cos, sin).defined());
  EXPECT_FALSE(
      hl::kernels::fused_rotary_embedding(q.detach(), cos.to(torch::kFloat), sin.to(torch::kFloat))
          .defined());
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(hl::kernels::fused_rms_norm(x, w, 1e-5).defined());
  EXPECT_TRUE(hl::kernels::fused_rotary_embedding(q, cos, sin).defined());
}

}  // namespace
