// The fused hedgehog map with its projection (kernels/cuda/hedgehog_map.cu) against the LibTorch
// formulas in float64 on the CPU: phi, dx and dW from the launchers with their outputs poisoned
// (NaN) before each run, shapes whose blocks take several tiles (the ring wraps) and lengths
// that are not whole tiles, rows where the 1e-12 clamp holds; then the FeatureMap module end to
// end and the cases that keep the unfused path. Every test skips without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <thread>

#include "cuda/gpu_test.hpp"
#include "kernels/feature_map.hpp"

#ifdef HL_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/cuda_attention.hpp"
#endif

namespace {

#ifdef HL_WITH_CUDA_KERNELS  // without them CudaAttention.NeedsCudaKernels reports the skip

namespace hk = hl::kernels;
namespace hc = hl::kernels::cuda;
using torch::Tensor;

bool all_finite(const Tensor& t) {
  return torch::isfinite(t).all().item<bool>();
}

void* stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

struct Grads {
  Tensor phi, dx, dw;
};

// phi and the gradients of L = sum(phi * dphi) by LibTorch's ops in float64 on the CPU; x with
// fewer heads than w serves each group of maps (repeated). dx: per map head.
Grads reference(const Tensor& x, const Tensor& w, const Tensor& dphi) {
  const Tensor x64 = x.to(torch::kCPU, torch::kDouble)
                         .repeat_interleave(w.size(0) / x.size(1), 1)
                         .requires_grad_(true);
  const Tensor w64 = w.to(torch::kCPU, torch::kDouble).requires_grad_(true);
  const Tensor phi =
      hk::paired_activation(torch::matmul(x64, w64), hk::FeatureMapKind::hedgehog, false);
  phi.backward(dphi.to(torch::kCPU, torch::kDouble));
  return {phi.detach(), x64.grad(), w64.grad()};
}

// Fresh random x [B, Hx, N, d] (row 3 of every head stretched so that the clamp holds there),
// w [H, d, 64] and dphi; the launchers into NaN-filled outputs against reference(). dx comes
// per map head. Tolerance: relative error below 1e-2 (bf16 inputs and outputs, fp32 inside).
void check(int64_t B, int64_t H, int64_t N, int64_t d, uint64_t seed, int64_t Hx = 0) {
  torch::manual_seed(seed);
  if (Hx == 0) Hx = H;
  const auto bf16 = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  Tensor x = torch::randn({B, Hx, N, d}, bf16);
  x.select(2, 3).mul_(60);
  const Tensor w = torch::randn({H, d, hc::kHedgehogMapProjection}, bf16) / std::sqrt(double(d));
  const Tensor dphi = torch::randn({B, H, N, 2 * hc::kHedgehogMapProjection}, bf16);
  ASSERT_TRUE(hc::hedgehog_map_fusable(x, w));
  const int units = static_cast<int>(B * H), heads = static_cast<int>(H), dim = static_cast<int>(d);
  const int x_heads = static_cast<int>(Hx);
  const double nan = std::nan("");
  Tensor phi = torch::full({B, H, N, 2 * hc::kHedgehogMapProjection}, nan, bf16);
  Tensor dx = torch::full({B, H, N, d}, nan, bf16), dw = torch::full_like(w, nan);
  const Tensor workspace = torch::full({hc::hedgehog_map_workspace_floats(units, N, dim)}, nan,
                                       bf16.dtype(torch::kFloat));
  ASSERT_EQ(hc::launch_hedgehog_map_forward(x.data_ptr(), w.data_ptr(), phi.data_ptr(), units,
                                            heads, x_heads, N, dim, stream()),
            0);
  ASSERT_EQ(hc::launch_hedgehog_map_backward(
                x.data_ptr(), w.data_ptr(), dphi.data_ptr(), dx.data_ptr(), dw.data_ptr(),
                workspace.data_ptr<float>(), units, heads, x_heads, N, dim, stream()),
            0);
  const std::string what = "B " + std::to_string(B) + " H " + std::to_string(H) + " N " +
                           std::to_string(N) + " d " + std::to_string(d) + " Hx " +
                           std::to_string(Hx);
  ASSERT_TRUE(all_finite(phi)) << what;
  ASSERT_TRUE(all_finite(dx)) << what;
  ASSERT_TRUE(all_finite(dw)) << what;
  const Grads ref = reference(x, w, dphi);
  EXPECT_LT(rel_err(phi, ref.phi), 1e-2) << what;
  EXPECT_LT(rel_err(dx, ref.dx), 1e-2) << what;
  EXPECT_LT(rel_err(dw, ref.dw), 1e-2) << what;
  // The clamp held in the stretched rows, at the same value as the unfused map's.
  EXPECT_TRUE((ref.phi.select(2, 3) == hk::kFeatureClampMin).any().item<bool>()) << what;
  EXPECT_EQ(phi.select(2, 3).min().item<double>(),
            Tensor(torch::tensor(hk::kFeatureClampMin).to(torch::kBFloat16)).item<double>());

  // Without dx: dW alone, the same.
  Tensor dw_only = torch::full_like(w, nan);
  ASSERT_EQ(hc::launch_hedgehog_map_backward(x.data_ptr(), w.data_ptr(), dphi.data_ptr(), nullptr,
                                             dw_only.data_ptr(), workspace.data_ptr<float>(), units,
                                             heads, x_heads, N, dim, stream()),
            0);
  EXPECT_TRUE(torch::equal(dw_only, dw)) << what;
}

TEST(HedgehogMap, MatchesFloat64D128) {
  HL_REQUIRE_GPU();
  if (!hc::hedgehog_map_supported(128)) GTEST_SKIP() << "needs an sm_90 GPU";
  check(2, 8, 4200, 128, 1);  // 16 units over the SMs: several tiles a block, partial last tile
  check(1, 3, 37, 128, 2);    // one partial tile a unit
}

// Grouped-query k: 8 maps on 2 kv heads (Llama's 4 q heads a kv head), 3 maps on one.
TEST(HedgehogMap, GroupedQueryInput) {
  HL_REQUIRE_GPU();
  if (!hc::hedgehog_map_supported(128)) GTEST_SKIP() << "needs an sm_90 GPU";
  check(2, 8, 1000, 128, 7, /*Hx=*/2);
  check(1, 3, 130, 64, 8, /*Hx=*/1);
}

TEST(HedgehogMap, MatchesFloat64D64) {
  HL_REQUIRE_GPU();
  if (!hc::hedgehog_map_supported(64)) GTEST_SKIP() << "needs an sm_90 GPU";
  check(3, 2, 200, 64, 3);
  check(1, 1, 6000, 64, 4);  // one unit: a block per tile or two
}

// Small cases for compute-sanitizer (scripts/gpu-kernels.sh runs *Sanitizer* under memcheck and
// racecheck).
TEST(HedgehogMap, SanitizerSmall) {
  HL_REQUIRE_GPU();
  if (!hc::hedgehog_map_supported(128)) GTEST_SKIP() << "needs an sm_90 GPU";
  check(1, 2, 130, 128, 5);
  check(1, 1, 70, 64, 6);
}

// A thread that has made no CUDA call yet has no current context, as autograd's backward
// thread may not when the allocator serves every buffer from its cache: the launchers still
// encode their tensor maps there (they failed with CUDA_ERROR_INVALID_CONTEXT before).
TEST(HedgehogMap, LaunchesFromAFreshThread) {
  HL_REQUIRE_GPU();
  if (!hc::hedgehog_map_supported(128)) GTEST_SKIP() << "needs an sm_90 GPU";
  torch::manual_seed(9);
  const auto bf16 = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  const Tensor x = torch::randn({1, 2, 100, 128}, bf16);
  const Tensor w = torch::randn({2, 128, 64}, bf16) / std::sqrt(128.0);
  const Tensor dphi = torch::randn({1, 2, 100, 128}, bf16);
  Tensor phi = torch::empty_like(dphi), dx = torch::empty_like(x), dw = torch::empty_like(w);
  const Tensor workspace =
      torch::empty({hc::hedgehog_map_workspace_floats(2, 100, 128)}, bf16.dtype(torch::kFloat));
  void* const s = stream();
  torch::cuda::synchronize();
  int forward = -1, backward = -1;
  std::thread([&] {
    forward = hc::launch_hedgehog_map_forward(x.data_ptr(), w.data_ptr(), phi.data_ptr(), 2, 2, 2,
                                              100, 128, s);
    backward = hc::launch_hedgehog_map_backward(x.data_ptr(), w.data_ptr(), dphi.data_ptr(),
                                                dx.data_ptr(), dw.data_ptr(),
                                                workspace.data_ptr<float>(), 2, 2, 2, 100, 128, s);
  }).join();
  EXPECT_EQ(forward, 0);
  EXPECT_EQ(backward, 0);
  const Grads ref = reference(x, w, dphi);
  EXPECT_LT(rel_err(phi, ref.phi), 1e-2);
  EXPECT_LT(rel_err(dx, ref.dx), 1e-2);
  EXPECT_LT(rel_err(dw, ref.dw), 1e-2);
}

// The FeatureMap module in bf16 on the GPU (the fused map) against a float64 copy on the CPU:
// features and the gradients of the input and of the projection weight, through autograd; with
// the input's gradient not wanted, only the weight's.
TEST(HedgehogMap, FeatureMapModuleBf16) {
  HL_REQUIRE_GPU();
  if (!hc::hedgehog_map_supported(128)) GTEST_SKIP() << "needs an sm_90 GPU";
  torch::manual_seed(7);
  FeatureMapPair maps = hedgehog_map_pair(4, 128, 64);
  const auto gpu = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  // A transposed view, as a model's q is: the map makes it dense.
  const Tensor x = (torch::randn({2, 300, 4, 128}, gpu) * 2).transpose(1, 2).requires_grad_(true);
  ASSERT_TRUE(hc::hedgehog_map_fusable(x, maps.gpu->weight));
  const Tensor dphi = torch::randn({2, 4, 300, 128}, gpu);
  expect_maps_agree(maps, x, dphi, "q");

  // The input's gradient not wanted: the float64 copy's weight gradient is still x's.
  maps.gpu->weight.mutable_grad() = Tensor();
  maps.gpu->forward(x.detach()).backward(dphi);
  EXPECT_LT(rel_err(maps.gpu->weight.grad(), maps.cpu->weight.grad()), 1e-2);

  // Grouped-query k: two kv heads for the four maps; the gradient sums each group's.
  const Tensor k = (torch::randn({2, 2, 300, 128}, gpu) * 2).requires_grad_(true);
  ASSERT_TRUE(hc::hedgehog_map_fusable(k, maps.gpu->weight));
  expect_maps_agree(maps, k, dphi, "grouped k");
}

// What the fused map does not take runs the projection and the paired activation apart: fp32,
// d = 96, a bias, p other than 64.
TEST(HedgehogMap, OtherShapesTakeTheUnfusedPath) {
  HL_REQUIRE_GPU();
  const auto gpu = torch::TensorOptions().device(torch::kCUDA);
  const Tensor x = torch::randn({1, 2, 10, 64}, gpu.dtype(torch::kBFloat16));
  const Tensor w = torch::randn({2, 64, 64}, gpu.dtype(torch::kBFloat16));
  EXPECT_FALSE(hc::hedgehog_map_fusable(x.to(torch::kFloat), w.to(torch::kFloat)));
  EXPECT_FALSE(hc::hedgehog_map_fusable(x, w.narrow(2, 0, 32)));
  EXPECT_FALSE(hc::hedgehog_map_fusable(torch::randn({1, 2, 10, 96}, x.options()),
                                        torch::randn({2, 96, 64}, x.options())));
  EXPECT_THROW(hc::hedgehog_map(x.to(torch::kFloat), w.to(torch::kFloat)), std::invalid_argument);

  hk::FeatureMapOptions options;
  options.kind = hk::FeatureMapKind::hedgehog;
  options.heads = 2;
  options.head_dim = 64;
  options.feature_dim = 64;
  options.bias = true;
  options.init = hk::FeatureMapInit::kaiming_uniform;
  hk::FeatureMap with_bias(options);
  with_bias->to(torch::kCUDA, torch::kBFloat16);
  const Tensor phi = with_bias->forward(x);
  const Tensor r = torch::matmul(x, with_bias->weight) + with_bias->bias.view({1, 2, 1, 64});
  EXPECT_LT(rel_err(phi, hk::paired_activation(r, hk::FeatureMapKind::hedgehog, false)), 1e-2);
}

#endif

}  // namespace
