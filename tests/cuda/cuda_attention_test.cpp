// Fused CUDA hybrid attention against a float64 reference written from DESIGN §1 (plain torch
// ops on the GPU, autograd for the gradients). Every test skips without a GPU; without the
// CUDA kernels in the build there is only the skip.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "cuda/gpu_test.hpp"

#ifdef HL_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/attention.hpp"
#include "kernels/cuda/cuda_attention.hpp"
#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/feature_map.hpp"
#endif

namespace {

#ifndef HL_WITH_CUDA_KERNELS

TEST(CudaAttention, NeedsCudaKernels) {
  HL_REQUIRE_GPU();
  GTEST_SKIP() << "built without the CUDA kernels (LibTorch has no CUDA)";
}

#else

namespace hk = hl::kernels;
namespace hc = hl::kernels::cuda;
using torch::Tensor;

double max_abs(const Tensor& t) {
  return t.abs().max().to(torch::kDouble).item<double>();
}

bool all_finite(const Tensor& t) {
  return torch::isfinite(t.to(torch::kDouble)).all().item<bool>();
}

// Hands the caching allocator NaN-filled blocks, so that outputs the kernels forget to write
// show up as non-finite.
void poison_allocator() {
  auto junk = torch::full({1 << 24}, std::numeric_limits<float>::quiet_NaN(),
                          torch::TensorOptions().device(torch::kCUDA));
  torch::cuda::synchronize();
}

struct Case {
  int64_t B = 2, Hq = 4, Hkv = 2, N = 301, D = 64, F = 64, w = 32;
  hk::AttentionMode mode = hk::AttentionMode::hybrid;
  bool overlap = false, affine = false, drop = false;
  torch::ScalarType dtype = torch::kFloat;
  double tol() const { return dtype == torch::kFloat ? 1e-5 : 1e-2; }
  std::string name() const {
    return std::string(hk::to_string(mode)) + (overlap ? "/overlap" : "") +
           (affine ? "/affine" : "") + (drop ? "/drop" : "") + " B" + std::to_string(B) + " Hq" +
           std::to_string(Hq) + " Hkv" + std::to_string(Hkv) + " N" + std::to_string(N) + " D" +
           std::to_string(D) + " F" + std::to_string(F) + " w" + std::to_string(w) +
           (dtype == torch::kFloat ? " fp32" : " bf16");
  }
};

// The benchmarks' head shape (bf16, D = F = 128, w = 64) at length N; other fields default.
Case bf16_head_case(int64_t N) {
  Case c;
  c.dtype = torch::kBFloat16;
  c.D = 128;
  c.F = 128;
  c.w = 64;
  c.N = N;
  return c;
}

// The benchmarks' head shape at batch 1 with hq q heads on hkv kv heads, a dropped head among
// them: (2, 1) is the smallest Hopper shape the tests run, (8, 2) the GQA case whose heads add
// into dv in turn in the linear key kernel.
Case dropped_head_case(int64_t N, int64_t hq, int64_t hkv) {
  Case c = bf16_head_case(N);
  c.B = 1;
  c.Hq = hq;
  c.Hkv = hkv;
  c.drop = true;
  return c;
}

struct Data {
  Tensor q, k, v, phi_q, phi_k, omega, drop;
};

// Fresh random inputs; phi is positive as every feature map but identity makes it.
Data make_data(const Case& c, uint64_t seed) {
  torch::manual_seed(seed);
  const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kFloat);
  Data d;
  d.q = torch::randn({c.B, c.Hq, c.N, c.D}, o).to(c.dtype);
  d.k = torch::randn({c.B, c.Hkv, c.N, c.D}, o).to(c.dtype);
  d.v = torch::randn({c.B, c.Hkv, c.N, c.D}, o).to(c.dtype);
  d.phi_q = torch::softmax(torch::randn({c.B, c.Hq, c.N, c.F}, o), -1).to(c.dtype);
  d.phi_k = torch::softmax(torch::randn({c.B, c.Hq, c.N, c.F}, o), -1).to(c.dtype);
  d.omega = (torch::randn({c.Hq}, o) - 1.0).to(c.dtype);
  if (c.drop) {
    d.drop = torch::rand({c.B, c.Hq}, o) < 0.5;
    d.drop.index_put_({0, 0}, true);
    d.drop.index_put_({0, 1}, false);
  }
  return d;
}

struct RefOut {
  Tensor y, linear_mass, linear_share;
};

// DESIGN §1 in float64 with explicit masks. Linear-only rows (mode linear_only, or dropped)
// use b = phi_q . phi_k over j <= i with eps; window_only rows use the window alone.
RefOut reference(const Case& c, const Tensor& q, const Tensor& k, const Tensor& v,
                 const Tensor& phi_q, const Tensor& phi_k, const Tensor& omega,
                 const Tensor& drop) {
  const int64_t groups = c.Hq / c.Hkv;
  auto rep = [&](const Tensor& x) { return x.repeat_interleave(groups, 1); };
  const Tensor kk = rep(k), vv = rep(v);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  const auto io = torch::TensorOptions().device(q.device()).dtype(torch::kLong);
  const Tensor i = torch::arange(c.N, io).unsqueeze(1), j = torch::arange(c.N, io).unsqueeze(0);
  const Tensor win = (j <= i) & (j > i - c.w);
  const Tensor causal = j <= i;
  const Tensor lin = c.overlap ? causal : (j <= i - c.w);
  const Tensor s = torch::matmul(q, kk.transpose(-1, -2)) * scale;
  const Tensor neg_inf = torch::full({}, -std::numeric_limits<double>::infinity(), s.options());
  const Tensor m = torch::where(win, s, neg_inf).amax(-1, true);
  const Tensor e = torch::exp(torch::where(win, s - m, neg_inf));
  const Tensor p = phi_q.defined() ? torch::matmul(phi_q, phi_k.transpose(-1, -2)) : Tensor();
  RefOut out;
  Tensor y_window_rows, y_linear_rows, y_hybrid;
  Tensor mass_h, share_h;
  if (c.mode == hk::AttentionMode::hybrid) {
    const Tensor g = torch::sigmoid(omega).view({1, c.Hq, 1, 1});
    const Tensor l = c.affine ? 1 - g : torch::ones_like(g);
    const Tensor a = g * e;
    const Tensor b = l * p * lin;
    const Tensor wa = torch::matmul(a, vv), lb = torch::matmul(b, vv);
    const Tensor sa = a.sum(-1), sb = b.sum(-1);
    y_hybrid = (wa + lb) / (sa + sb).unsqueeze(-1);
    mass_h = sb / (sa + sb);
    const Tensor nl = lb.norm(2, -1), nw = wa.norm(2, -1);
    share_h = nl / (nl + nw);
  }
  if (c.mode == hk::AttentionMode::window_only) {
    y_window_rows = torch::matmul(e, vv) / e.sum(-1, true);
  }
  if (p.defined()) {
    const Tensor b = p * causal;
    y_linear_rows = torch::matmul(b, vv) / (b.sum(-1, true) + hk::kLinearOnlyEps);
  }
  Tensor base = c.mode == hk::AttentionMode::hybrid        ? y_hybrid
                : c.mode == hk::AttentionMode::window_only ? y_window_rows
                                                           : y_linear_rows;
  if (drop.defined() && c.mode != hk::AttentionMode::linear_only) {
    base = torch::where(drop.view({c.B, c.Hq, 1, 1}), y_linear_rows, base);
  }
  out.y = base;
  if (mass_h.defined()) {
    out.linear_mass = mass_h;
    out.linear_share = share_h;
    if (drop.defined()) {
      out.linear_mass = torch::where(drop.view({c.B, c.Hq, 1}), torch::ones_like(mass_h), mass_h);
      out.linear_share =
          torch::where(drop.view({c.B, c.Hq, 1}), torch::ones_like(share_h), share_h);
    }
  }
  return out;
}

hk::AttentionOptions options_of(const Case& c) {
  hk::AttentionOptions o;
  o.mode = c.mode;
  o.window = c.w;
  o.overlap = c.overlap;
  o.affine_factors = c.affine;
  return o;
}

bool needs_phi(const Case& c) {
  return c.mode != hk::AttentionMode::window_only || c.drop;
}

// Forward and backward of the fused path (through `entry`) against the reference.
// qkv_grads false: q, k, v need no gradient (attention transfer); the backward must still
// give every other gradient and none for them.
template <class Entry>
void check_forward_backward(const Case& c, uint64_t seed, Entry entry, bool qkv_grads = true) {
  SCOPED_TRACE(c.name() + (qkv_grads ? "" : " frozen q, k, v"));
  const Data d = make_data(c, seed);
  auto leaf = [](const Tensor& t) { return t.detach().clone().requires_grad_(true); };
  const bool phi = needs_phi(c);
  const bool gate = c.mode == hk::AttentionMode::hybrid;
  Tensor q = qkv_grads ? leaf(d.q) : d.q, k = qkv_grads ? leaf(d.k) : d.k;
  Tensor v = qkv_grads ? leaf(d.v) : d.v;
  Tensor pq = phi ? leaf(d.phi_q) : Tensor(), pk = phi ? leaf(d.phi_k) : Tensor();
  Tensor om = gate ? leaf(d.omega) : Tensor();
  hk::AttentionInputs in{q, k, v, pq, pk, om, d.drop};
  poison_allocator();
  const hk::AttentionOutput out = entry(in, options_of(c));
  ASSERT_TRUE(all_finite(out.y)) << "unwritten or non-finite output";
  const Tensor dy = torch::randn_like(out.y.to(torch::kFloat)).to(c.dtype);
  poison_allocator();
  out.y.backward(dy);

  auto leaf64 = [](const Tensor& t) { return t.detach().to(torch::kDouble).requires_grad_(true); };
  Tensor q64 = leaf64(d.q), k64 = leaf64(d.k), v64 = leaf64(d.v);
  Tensor pq64 = phi ? leaf64(d.phi_q) : Tensor(), pk64 = phi ? leaf64(d.phi_k) : Tensor();
  Tensor om64 = gate ? leaf64(d.omega) : Tensor();
  const RefOut ref = reference(c, q64, k64, v64, pq64, pk64, om64, d.drop);
  ref.y.backward(dy.to(torch::kDouble));

  EXPECT_LT(rel_err(out.y, ref.y), c.tol()) << "y";
  const std::vector<std::tuple<std::string, Tensor, Tensor>> grads = {
      {"dq", q, q64},       {"dk", k, k64},       {"dv", v, v64},
      {"dphi_q", pq, pq64}, {"dphi_k", pk, pk64}, {"domega", om, om64}};
  for (const auto& [name, mine, theirs] : grads) {
    if (!theirs.defined()) continue;
    if (!mine.requires_grad()) {
      EXPECT_FALSE(mine.grad().defined()) << name << " needs no gradient";
      continue;
    }
    ASSERT_TRUE(mine.grad().defined()) << name << " has no gradient";
    ASSERT_TRUE(all_finite(mine.grad())) << name << " not fully written";
    const Tensor want = theirs.grad().defined() ? theirs.grad() : torch::zeros_like(theirs);
    if (max_abs(want) < 1e-12) {
      // The output does not depend on this input here (e.g. q in linear_only, phi when N < w):
      // a relative error is undefined, so the gradient must be zero to the tolerance, with
      // inputs and dy of order one.
      EXPECT_LT(max_abs(mine.grad()), c.tol()) << name << " should be zero";
    } else {
      EXPECT_LT(rel_err(mine.grad(), want), c.tol()) << name;
    }
  }
}

hk::AttentionOutput via_inputs(const hk::AttentionInputs& in, const hk::AttentionOptions& o) {
  return hc::attention(in, o);
}

// The public dispatch with Backend::cuda (kernels/attention.cpp calls the Problem hook).
hk::AttentionOutput via_dispatch(const hk::AttentionInputs& in, hk::AttentionOptions o) {
  o.backend = hk::Backend::cuda;
  return hk::attention(in, o);
}

TEST(CudaAttention, HybridFp32Gqa) {
  HL_REQUIRE_GPU();
  Case c;
  check_forward_backward(c, 1, via_inputs);
}

TEST(CudaAttention, HybridOverlapAffineDropFp32) {
  HL_REQUIRE_GPU();
  Case c;
  c.D = 128;
  c.F = 128;
  c.w = 64;
  c.N = 257;
  c.Hkv = 4;
  c.overlap = true;
  c.affine = true;
  c.drop = true;
  check_forward_backward(c, 2, via_inputs);
}

TEST(CudaAttention, HybridAffineDropNonOverlapFp32) {
  HL_REQUIRE_GPU();
  Case c;
  c.affine = true;
  c.drop = true;
  c.w = 16;
  c.F = 96;
  c.N = 190;
  check_forward_backward(c, 3, via_inputs);
}

TEST(CudaAttention, LinearOnlyFp32) {
  HL_REQUIRE_GPU();
  Case c;
  c.mode = hk::AttentionMode::linear_only;
  c.N = 97;
  c.F = 160;
  check_forward_backward(c, 4, via_inputs);
}

TEST(CudaAttention, WindowOnlyFp32) {
  HL_REQUIRE_GPU();
  Case c;
  c.mode = hk::AttentionMode::window_only;
  c.w = 128;
  c.N = 333;
  check_forward_backward(c, 5, via_inputs);
  c.drop = true;
  c.w = 7;
  check_forward_backward(c, 6, via_inputs);
}

TEST(CudaAttention, ShorterThanWindowFp32) {
  HL_REQUIRE_GPU();
  Case c;
  c.N = 20;
  c.w = 64;
  check_forward_backward(c, 7, via_inputs);
  c.N = 1;
  check_forward_backward(c, 8, via_inputs);
}

TEST(CudaAttention, ThroughDispatchFp32) {
  HL_REQUIRE_GPU();
  Case c;
  c.Hkv = 1;
  c.drop = true;
  c.affine = true;
  check_forward_backward(c, 9, via_dispatch);
}

TEST(CudaAttention, HybridBf16) {
  HL_REQUIRE_GPU();
  Case c = bf16_head_case(300);
  c.Hkv = 1;
  check_forward_backward(c, 10, via_inputs);
  c.F = 256;
  c.w = 128;
  c.overlap = true;
  c.drop = true;
  check_forward_backward(c, 11, via_inputs);
}

TEST(CudaAttention, LinearAndWindowOnlyBf16) {
  HL_REQUIRE_GPU();
  Case c;
  c.dtype = torch::kBFloat16;
  c.mode = hk::AttentionMode::linear_only;
  check_forward_backward(c, 12, via_inputs);
  c.mode = hk::AttentionMode::window_only;
  check_forward_backward(c, 13, via_inputs);
}

// Shapes the bf16 tensor-core backward takes (F <= 128): several 128-row tiles and segments,
// GQA, SSD drops, overlap, a window that is not a multiple of 16, window-only with drops.
TEST(CudaAttention, TensorCoreBackwardBf16) {
  HL_REQUIRE_GPU();
  Case c = bf16_head_case(1000);
  c.drop = true;
  c.affine = true;
  check_forward_backward(c, 14, via_inputs);
  c.D = 64;
  c.F = 96;
  c.w = 100;
  c.N = 777;
  c.overlap = true;
  check_forward_backward(c, 15, via_inputs);
  c.mode = hk::AttentionMode::window_only;
  c.overlap = false;
  c.w = 16;
  check_forward_backward(c, 16, via_inputs);
}

// Attention transfer: q, k, v come from frozen projections, so the backward skips dq, dk, dv
// (the tensor-core kernels for bf16, the autograd plumbing for fp32) and the feature-map and
// window-factor gradients must not change. On Hopper the query kernel then skips the window's
// scores of hybrid units (their row values from y and the linear branch): non-overlapping with
// dropped heads, overlapping, affine factors and several segments a unit.
TEST(CudaAttention, FrozenQkvGradients) {
  HL_REQUIRE_GPU();
  Case c = bf16_head_case(700);
  c.drop = true;
  check_forward_backward(c, 17, via_inputs, /*qkv_grads=*/false);
  c.mode = hk::AttentionMode::linear_only;
  check_forward_backward(c, 18, via_inputs, /*qkv_grads=*/false);
  c = bf16_head_case(700);
  c.overlap = true;
  c.affine = true;
  check_forward_backward(c, 20, via_inputs, /*qkv_grads=*/false);
  c = dropped_head_case(4000, 2, 1);  // the forward splits each unit into segments
  check_forward_backward(c, 21, via_inputs, /*qkv_grads=*/false);
  c = Case{};
  c.overlap = true;
  check_forward_backward(c, 19, via_inputs, /*qkv_grads=*/false);
}

// The kernels' shape of a case.
hc::ProblemShape shape_of(const Case& c) {
  hc::ProblemShape s;
  s.batch = static_cast<int>(c.B);
  s.q_heads = static_cast<int>(c.Hq);
  s.kv_heads = static_cast<int>(c.Hkv);
  s.seq_len = static_cast<int>(c.N);
  s.head_dim = static_cast<int>(c.D);
  s.features = static_cast<int>(c.F);
  s.window = static_cast<int>(c.w);
  s.mode = c.mode == hk::AttentionMode::linear_only   ? hc::KernelMode::kLinearOnly
           : c.mode == hk::AttentionMode::window_only ? hc::KernelMode::kWindowOnly
                                                      : hc::KernelMode::kHybrid;
  s.overlap = c.overlap;
  s.dtype = hc::KernelDType::kBFloat16;
  return s;
}

// Whether the backward runs the reverse pass beside the Hopper query kernel for a case, with the
// plans the fused path makes on this GPU.
bool pass_beside_query(const Case& c) {
  const hc::ProblemShape s = shape_of(c);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return hc::backward_runs_pass_beside_query(
      s, hc::plan_segments(s.batch * s.q_heads, s.seq_len, sms),
      hc::plan_segments(s.batch * s.kv_heads, s.seq_len, sms));
}

// Shapes the warp-specialised Hopper forward takes (bf16, D and F of 64 or 128): overlap with SSD
// drops and GQA, window-only with a short window, linear-only, a sequence shorter than the
// window, the benchmark shape split into segments; on an sm_90 GPU the dispatch must pick it (the
// backward's Hopper query kernel follows the same predicate), and the Hopper linear key kernel
// wherever there is a linear branch.
TEST(CudaAttention, HopperForwardBf16) {
  HL_REQUIRE_GPU();
  const auto* props = at::cuda::getCurrentDeviceProperties();
  auto takes = [&](const Case& c) {
    const hc::ProblemShape s = shape_of(c);
    return hc::forward_uses_hopper_kernel(
        s, hc::plan_segments(s.batch * s.q_heads, s.seq_len, props->multiProcessorCount));
  };
  auto key_kernel_takes = [&](const Case& c) {
    const hc::ProblemShape s = shape_of(c);
    return hc::backward_uses_hopper_key_kernel(
        s, hc::plan_segments(s.batch * s.kv_heads, s.seq_len, props->multiProcessorCount));
  };
  auto accum_floats = [&](const Case& c) {
    const hc::ProblemShape s = shape_of(c);
    return hc::backward_accum_floats(
        s, hc::plan_segments(s.batch * s.kv_heads, s.seq_len, props->multiProcessorCount), true);
  };
  auto window_key_kernel_takes = [&](const Case& c) {
    const hc::ProblemShape s = shape_of(c);
    return hc::backward_uses_hopper_window_key_kernel(
        s, hc::plan_segments(s.batch * s.kv_heads, s.seq_len, props->multiProcessorCount));
  };
  auto check = [&](const Case& c, uint64_t seed) {
    if (props->major == 9) {
      EXPECT_TRUE(takes(c)) << c.name();
      EXPECT_TRUE(window_key_kernel_takes(c)) << c.name();
      if (c.mode != hk::AttentionMode::window_only) {
        EXPECT_TRUE(key_kernel_takes(c)) << c.name();
        // The Hopper key kernel adds the linear part into dv: no fp32 workspace for it.
        EXPECT_EQ(accum_floats(c), 0u) << c.name();
      }
    }
    check_forward_backward(c, seed, via_inputs);
  };
  Case c = bf16_head_case(517);
  c.overlap = true;
  c.drop = true;
  check(c, 80);
  c = bf16_head_case(200);
  c.mode = hk::AttentionMode::window_only;
  c.w = 37;
  check(c, 81);
  c = bf16_head_case(130);
  c.mode = hk::AttentionMode::linear_only;
  c.Hkv = c.Hq;
  check(c, 82);
  c = bf16_head_case(40);
  c.B = 1;
  check(c, 83);
  c = bf16_head_case(2048);
  c.B = 1;
  c.Hq = c.Hkv = 8;  // 8 heads on a GPU of 132 SMs: 16 segments of 128 rows
  c.affine = true;
  if (props->major == 9) EXPECT_TRUE(pass_beside_query(c)) << "the query kernel sums u";
  check(c, 84);
  c.w = 48;  // non-overlap hybrid with w < 64 stays on the mma.sync forward
  EXPECT_FALSE(takes(c));
  // Head dim and features of 64 (one column block) in each combination.
  c = bf16_head_case(300);
  c.D = 64;
  c.F = 64;
  c.drop = true;
  check(c, 85);
  c = bf16_head_case(257);
  c.D = 64;
  c.overlap = true;
  check(c, 86);
  c = bf16_head_case(190);
  c.F = 64;
  c.mode = hk::AttentionMode::linear_only;
  check(c, 87);
  // Four q heads per kv head: in the linear key kernel each head adds its part into dv in turn
  // (the next head reloads a tile two steps after it was stored: key segments of two tiles).
  c = dropped_head_case(1100, 8, 2);
  if (props->major == 9) EXPECT_TRUE(pass_beside_query(c)) << "the query kernel sums u";
  check(c, 88);
}

// Whether the backward runs the query kernel, the reverse pass and the fused key kernel as one
// dataflow for a case, with the plans the fused path makes on this GPU.
bool key_dataflow(const Case& c) {
  const hc::ProblemShape s = shape_of(c);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return hc::backward_runs_key_dataflow(s, hc::plan_segments(s.batch * s.q_heads, s.seq_len, sms),
                                        hc::plan_segments(s.batch * s.kv_heads, s.seq_len, sms));
}

// One shape of BackwardReplaysAsACudaGraphBf16 (below).
void check_graph_replay(const Case& c) {
  SCOPED_TRACE(c.name());
  auto leaf = [](const Tensor& t) { return t.detach().clone().requires_grad_(true); };
  auto step = [&](const std::vector<Tensor>& x, const Tensor& dy) {
    for (const Tensor& t : x)
      t.mutable_grad() = Tensor();  // so that the backward makes them (in the graph's pool)
    hk::AttentionInputs in{x[0], x[1], x[2], x[3], x[4], x[5], Tensor()};
    hc::attention(in, options_of(c)).y.backward(dy);
  };
  auto grads_of = [](const std::vector<Tensor>& x) {
    std::vector<Tensor> g;
    for (const Tensor& t : x)
      g.push_back(t.grad().clone());
    return g;
  };
  const Data first = make_data(c, 96), second = make_data(c, 97);
  const auto o = first.q.options();
  const std::vector<Tensor> inputs = {leaf(first.q),     leaf(first.k),     leaf(first.v),
                                      leaf(first.phi_q), leaf(first.phi_k), leaf(first.omega)};
  const Tensor dy = torch::randn({c.B, c.Hq, c.N, c.D}, o);

  at::cuda::CUDAGraph graph;
  const c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  {
    const c10::cuda::CUDAStreamGuard guard(stream);
    step(inputs, dy);
    const std::vector<Tensor> eager_first = grads_of(inputs);
    graph.capture_begin({0, 0}, cudaStreamCaptureModeRelaxed);
    step(inputs, dy);
    graph.capture_end();
    graph.replay();
    const std::vector<Tensor> replayed_first = grads_of(inputs);
    {
      const torch::NoGradGuard no_grad;
      const std::vector<Tensor> fresh = {second.q,     second.k,     second.v,
                                         second.phi_q, second.phi_k, second.omega};
      for (size_t i = 0; i < inputs.size(); ++i)
        inputs[i].copy_(fresh[i]);
    }
    graph.replay();
    stream.synchronize();
    const char* names[] = {"dq", "dk", "dv", "dphi_q", "dphi_k", "domega"};
    for (size_t i = 0; i < inputs.size(); ++i)
      EXPECT_LT(rel_err(replayed_first[i], eager_first[i]), 1e-5) << names[i] << ", first inputs";
    const std::vector<Tensor> replayed = grads_of(inputs);
    std::vector<Tensor> fresh = {leaf(second.q),     leaf(second.k),     leaf(second.v),
                                 leaf(second.phi_q), leaf(second.phi_k), leaf(second.omega)};
    step(fresh, dy);
    for (size_t i = 0; i < inputs.size(); ++i) {
      ASSERT_TRUE(all_finite(replayed[i])) << names[i];
      EXPECT_LT(rel_err(replayed[i], fresh[i].grad()), 1e-5) << names[i] << ", second inputs";
      EXPECT_GT(rel_err(replayed[i], eager_first[i]), 1e-2) << names[i] << " did not change";
    }
  }
}

// A training step as `run` replays it: the forward and backward captured once as a CUDA graph
// (relaxed capture on a stream of its own, after an eager step, as model::StepGraph does) and
// replayed on new inputs gives the eager gradients. The first shape runs the reverse pass on a
// second stream beside the query kernel, which the capture must take in; the second the query
// kernel, the pass and the key kernel as one dataflow (its counters zeroed by a memset node).
TEST(CudaAttention, BackwardReplaysAsACudaGraphBf16) {
  HL_REQUIRE_GPU();
  if (at::cuda::getCurrentDeviceProperties()->major != 9) GTEST_SKIP() << "needs an sm_90 GPU";
  Case side = bf16_head_case(2048);
  side.B = 1;
  side.Hq = side.Hkv = 8;
  side.affine = true;
  ASSERT_TRUE(pass_beside_query(side));
  ASSERT_FALSE(key_dataflow(side)) << "16 key segments";
  Case dataflow = side;
  dataflow.N = 1024;
  dataflow.Hq = dataflow.Hkv = 32;
  ASSERT_TRUE(key_dataflow(dataflow));
  for (const Case& c : {side, dataflow})
    check_graph_replay(c);
}

// The softmax teacher on CUDA tensors goes to PyTorch's fused attention through the dispatch;
// output and dq against the float64 reference backend.
TEST(CudaAttention, SoftmaxThroughDispatch) {
  HL_REQUIRE_GPU();
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    Case c;
    c.dtype = dtype;
    c.N = 300;
    const Data d = make_data(c, 60);
    hk::AttentionOptions o;
    o.mode = hk::AttentionMode::softmax;
    const Tensor q = d.q.detach().clone().requires_grad_(true);
    const hk::AttentionOutput out = hk::attention({q, d.k, d.v}, o);
    EXPECT_EQ(out.backend, hk::Backend::cuda);
    const Tensor dy = torch::randn_like(out.y);
    out.y.backward(dy);
    const Tensor q64 = d.q.detach().to(torch::kDouble).requires_grad_(true);
    o.backend = hk::Backend::reference;
    const Tensor ref = hk::attention({q64, d.k.to(torch::kDouble), d.v.to(torch::kDouble)}, o).y;
    ref.backward(dy.to(torch::kDouble));
    EXPECT_LT(rel_err(out.y, ref), c.tol()) << c.name();
    EXPECT_LT(rel_err(q.grad(), q64.grad()), c.tol()) << c.name();
  }
}

// The raw kernels' inputs: the data, its drops and the window factors c_w, c_l per (batch, head).
hc::RawInputs raw_inputs(const Data& d, const Tensor& coef_window, const Tensor& coef_linear) {
  hc::RawInputs in;
  in.q = d.q;
  in.k = d.k;
  in.v = d.v;
  in.phi_q = d.phi_q;
  in.phi_k = d.phi_k;
  in.coef_window = coef_window;
  in.coef_linear = coef_linear;
  if (d.drop.defined()) in.window_drop = d.drop.to(torch::kUInt8);
  return in;
}

// Forced segment splits must give the same function (the chunk-state passes and scans): outputs
// poisoned before the run, fully written, and every gradient against the float64 reference.
void check_forced_splits(const Case& c, int forward_segments, int key_segments, bool want_stats,
                         uint64_t seed) {
  SCOPED_TRACE(c.name() + " segments " + std::to_string(forward_segments) + " / " +
               std::to_string(key_segments));
  ASSERT_TRUE(c.affine) << "the coefficients below are the affine mixture's";
  const Data d = make_data(c, seed);
  const Tensor g = torch::sigmoid(d.omega.to(torch::kFloat)).view({1, c.Hq}).expand({c.B, c.Hq});
  const Tensor dropped = d.drop.defined() ? d.drop.to(torch::kFloat) : torch::zeros_like(g);
  const hc::RawInputs in = raw_inputs(d, (g * (1 - dropped)).contiguous(),
                                      ((1 - g) * (1 - dropped) + dropped).contiguous());
  hc::RawOptions o;
  o.window = c.w;
  o.forward_segments = forward_segments;
  o.key_segments = key_segments;
  o.want_stats = want_stats;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor y = torch::full_like(d.q, nan);
  const hc::RawForward f = hc::forward_raw(in, o, y);
  EXPECT_EQ(f.plan.segments,
            hc::make_segment_plan(static_cast<int>(c.N), forward_segments).segments);
  if (forward_segments > 1) {
    EXPECT_GT(f.plan.segments, 1);
  }
  ASSERT_TRUE(all_finite(y));
  if (want_stats) ASSERT_TRUE(all_finite(f.stats));
  const Tensor dy = torch::randn_like(d.q);
  hc::RawGrads out;
  out.dq = torch::full_like(d.q, nan);
  out.dk = torch::full_like(d.k, nan);
  out.dv = torch::full_like(d.v, nan);
  out.dphi_q = torch::full_like(d.phi_q, nan);
  out.dphi_k = torch::full_like(d.phi_k, nan);
  const hc::RawGrads grads = hc::backward_raw(in, o, f, dy, &out);
  for (const auto& t : {out.dq, out.dk, out.dv, out.dphi_q, out.dphi_k})
    ASSERT_TRUE(all_finite(t));

  auto leaf64 = [](const Tensor& t) { return t.detach().to(torch::kDouble).requires_grad_(true); };
  Tensor q64 = leaf64(d.q), k64 = leaf64(d.k), v64 = leaf64(d.v), pq64 = leaf64(d.phi_q),
         pk64 = leaf64(d.phi_k), om64 = leaf64(d.omega);
  const RefOut ref = reference(c, q64, k64, v64, pq64, pk64, om64, d.drop);
  ref.y.backward(dy.to(torch::kDouble));
  const double tol = c.tol();
  // Each error also goes into the test's XML record (--gtest_output=xml), for the margins.
  const std::string tag =
      "_" + std::to_string(forward_segments) + "_" + std::to_string(key_segments);
  auto expect_close = [&](const char* name, const Tensor& got, const Tensor& want) {
    const double err = rel_err(got, want);
    char text[32];
    std::snprintf(text, sizeof text, "%.3e", err);
    ::testing::Test::RecordProperty(std::string("rel_err_") + name + tag, text);
    EXPECT_LT(err, tol) << name;
  };
  expect_close("y", y, ref.y);
  expect_close("dq", out.dq, q64.grad());
  expect_close("dk", out.dk, k64.grad());
  expect_close("dv", out.dv, v64.grad());
  expect_close("dphi_q", out.dphi_q, pq64.grad());
  expect_close("dphi_k", out.dphi_k, pk64.grad());
  if (want_stats) {
    const Tensor stats = f.stats.view({c.B, c.Hq, c.N, 2});
    EXPECT_LT(rel_err(stats.select(3, 0), ref.linear_mass), tol) << "linear mass";
    EXPECT_LT(rel_err(stats.select(3, 1), ref.linear_share), tol) << "linear output share";
  }
  // d omega through the coefficients: dc_w dg/domega (1 - drop) - dc_l dg/domega (1 - drop).
  const Tensor gg = torch::sigmoid(d.omega.to(torch::kDouble));
  const Tensor kept = 1 - dropped.to(torch::kDouble);
  const Tensor domega =
      ((grads.dcoef_window.to(torch::kDouble) - grads.dcoef_linear.to(torch::kDouble)) * kept * gg *
       (1 - gg))
          .sum(0);
  EXPECT_LT(rel_err(domega, om64.grad()), tol) << "domega";
}

TEST(CudaAttention, SegmentSplitsRawPoisoned) {
  HL_REQUIRE_GPU();
  for (const int segments : {1, 3, 7}) {
    Case c;
    c.N = 333;
    c.w = 40;
    c.affine = true;
    c.drop = true;
    check_forced_splits(c, segments, segments + 1, /*want_stats=*/true, 20 + segments);
  }
}

// More segments than the GPU has SMs for one block each: the Hopper chunk-state passes sum
// several consecutive segments a block (the forward's and the reverse one), the last block's
// last segment short.
TEST(CudaAttention, SegmentsSeveralToAPassBlockBf16) {
  HL_REQUIRE_GPU();
  Case c = bf16_head_case(4000);
  c.drop = true;
  c.affine = true;
  check_forced_splits(c, 63, 63, /*want_stats=*/false, 27);
}

// Four q heads per kv head over key segments of 6 and 18 tiles: each head of the group adds its
// part of dv into dv in turn, reloading tiles that the head before stored (segments of one and
// two tiles are in the tests above).
TEST(CudaAttention, GqaHeadsAddIntoDvInTurnBf16) {
  HL_REQUIRE_GPU();
  Case c = dropped_head_case(1100, 8, 2);
  c.affine = true;
  check_forced_splits(c, 4, 3, /*want_stats=*/false, 28);
  check_forced_splits(c, 4, 1, /*want_stats=*/false, 29);
}

// The fused Hopper key kernel (dk, dv and dphi_k in one pass) takes MHA, the non-overlapping
// hybrid with w = 64, D = F = 128 and no dropped window: against the float64 reference at a
// length under w, an odd length and one key segment, and key segments of 1 to 16 tiles (the
// states after each segment summed in the kernel or scanned); then against the window and linear
// key kernels, which the same inputs take with a window-drop mask of zeros.
TEST(CudaAttention, FusedKeyKernelBf16) {
  HL_REQUIRE_GPU();
  const auto* props = at::cuda::getCurrentDeviceProperties();
  Case c = bf16_head_case(40);
  c.Hkv = c.Hq;
  c.affine = true;
  if (props->major == 9) {
    hc::ProblemShape s;
    s.batch = static_cast<int>(c.B);
    s.q_heads = s.kv_heads = static_cast<int>(c.Hq);
    s.seq_len = 2048;
    s.head_dim = s.features = 128;
    s.window = 64;
    s.dtype = hc::KernelDType::kBFloat16;
    const hc::SegmentPlan plan =
        hc::plan_segments(s.batch * s.kv_heads, s.seq_len, props->multiProcessorCount);
    EXPECT_TRUE(hc::backward_uses_hopper_fused_key_kernel(s, plan));
    s.kv_heads = s.q_heads / 2;  // GQA stays on the two kernels
    EXPECT_FALSE(hc::backward_uses_hopper_fused_key_kernel(s, plan));
  }
  check_forward_backward(c, 90, via_inputs);
  c.N = 453;
  check_forced_splits(c, 1, 1, /*want_stats=*/false, 91);
  c.N = 2048;
  check_forced_splits(c, 4, 2, /*want_stats=*/false, 92);
  check_forced_splits(c, 4, 16, /*want_stats=*/false, 93);

  // The same gradients through both key paths.
  c.N = 777;
  const Data d = make_data(c, 94);
  auto grads = [&](const Tensor& drop) {
    auto leaf = [](const Tensor& t) { return t.detach().clone().requires_grad_(true); };
    Tensor k = leaf(d.k), v = leaf(d.v), pk = leaf(d.phi_k);
    hk::AttentionInputs in{d.q, k, v, d.phi_q, pk, d.omega, drop};
    const hk::AttentionOutput out = hc::attention(in, options_of(c));
    torch::manual_seed(95);
    out.y.backward(torch::randn_like(out.y));
    return std::vector<Tensor>{k.grad(), v.grad(), pk.grad()};
  };
  const std::vector<Tensor> fused = grads(Tensor());
  const std::vector<Tensor> two =
      grads(torch::zeros({c.B, c.Hq}, d.q.options().dtype(torch::kBool)));
  const char* names[] = {"dk", "dv", "dphi_k"};
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(all_finite(fused[i])) << names[i];
    EXPECT_LT(rel_err(fused[i], two[i]), c.tol()) << names[i];
  }
}

// The query kernel, the reverse pass and the fused key kernel as one dataflow: each key block
// waits only for the query blocks and the pass sums that it reads, takes u from the query
// kernel's partials itself, the last segments' blocks come first, and blocks of its own sum dc_w
// and dc_l. Against the float64 reference: the benchmarks' plan (four segments a head, so on a
// GPU of 132 SMs 32 heads) at odd lengths, where the last key segment is shorter (1000 rows:
// four of 256) or longer (8000: the dataflow's plan of 1984, 1984, 1984 and 2048) than the
// others; and forced splits whose forward segments start inside key segments (u partials over
// segment boundaries).
TEST(CudaAttention, KeyDataflowBf16) {
  HL_REQUIRE_GPU();
  const auto* props = at::cuda::getCurrentDeviceProperties();
  Case c = bf16_head_case(1000);
  c.B = 1;
  c.Hq = c.Hkv = 32;
  c.affine = true;
  for (const int64_t n : {1000, 8000}) {
    c.N = n;
    if (props->major == 9 && props->multiProcessorCount == 132) EXPECT_TRUE(key_dataflow(c));
    check_forward_backward(c, 94 + n, via_inputs);
  }
  c.Hq = c.Hkv = 2;
  c.N = 2048;
  check_forced_splits(c, 3, 4, /*want_stats=*/false, 95);
  check_forced_splits(c, 2, 3, /*want_stats=*/false, 96);
  c.N = 8000;
  check_forced_splits(c, 4, 4, /*want_stats=*/false, 97);
}

TEST(CudaAttention, UnsupportedShapesSayWhy) {
  HL_REQUIRE_GPU();
  const auto o = torch::TensorOptions().device(torch::kCUDA);
  hk::AttentionInputs in;
  in.q = torch::randn({1, 2, 8, 96}, o);
  in.k = torch::randn({1, 2, 8, 96}, o);
  in.v = torch::randn({1, 2, 8, 96}, o);
  in.phi_q = torch::rand({1, 2, 8, 64}, o);
  in.phi_k = torch::rand({1, 2, 8, 64}, o);
  in.window_factor_logits = torch::zeros({2}, o);
  std::string why;
  EXPECT_FALSE(hc::supports(in, hk::AttentionOptions{}, &why));
  EXPECT_NE(why.find("head_dim"), std::string::npos) << why;
  EXPECT_THROW(hc::attention(in, hk::AttentionOptions{}), std::invalid_argument);
  in.q = torch::randn({1, 2, 8, 64}, o);
  in.k = torch::randn({1, 2, 8, 64}, o);
  in.v = torch::randn({1, 2, 8, 64}, o);
  in.phi_q = torch::rand({1, 2, 8, 40}, o);
  in.phi_k = torch::rand({1, 2, 8, 40}, o);
  EXPECT_FALSE(hc::supports(in, hk::AttentionOptions{}, &why));
  EXPECT_NE(why.find("features"), std::string::npos) << why;
}

// Prefill N0 tokens, then decode the rest one by one; every step must match the parallel
// reference at its position, and the state must not grow. `dispatch`: through the public
// kernels::prefill / decode_step, which must route CUDA tensors to the fused kernels.
void check_decode(const Case& c, int64_t prompt, uint64_t seed, bool dispatch = false) {
  SCOPED_TRACE(c.name() + " prompt " + std::to_string(prompt));
  const Data d = make_data(c, seed);
  const bool phi = needs_phi(c);
  const Tensor omega = c.mode == hk::AttentionMode::hybrid ? d.omega : Tensor();
  const Tensor drop = c.drop ? d.drop : Tensor();
  const RefOut ref = reference(c, d.q.to(torch::kDouble), d.k.to(torch::kDouble),
                               d.v.to(torch::kDouble), phi ? d.phi_q.to(torch::kDouble) : Tensor(),
                               phi ? d.phi_k.to(torch::kDouble) : Tensor(),
                               omega.defined() ? omega.to(torch::kDouble) : Tensor(), drop);
  auto part = [&](const Tensor& t, int64_t start, int64_t len) {
    return t.defined() ? t.narrow(2, start, len) : t;
  };
  hk::AttentionInputs prompt_in{part(d.q, 0, prompt),
                                part(d.k, 0, prompt),
                                part(d.v, 0, prompt),
                                phi ? part(d.phi_q, 0, prompt) : Tensor(),
                                phi ? part(d.phi_k, 0, prompt) : Tensor(),
                                omega,
                                drop};
  hk::PrefillResult pre =
      dispatch ? hk::prefill(prompt_in, options_of(c)) : hc::prefill(prompt_in, options_of(c));
  if (dispatch && phi) {  // only the fused path keeps S in fp32 for bf16 inputs
    EXPECT_EQ(pre.state.S.scalar_type(), torch::kFloat) << "prefill did not take the fused path";
  }
  EXPECT_LT(rel_err(pre.output.y, ref.y.narrow(2, 0, prompt)), c.tol()) << "prefill output";
  const int64_t bytes = pre.state.bytes();
  double worst = 0;
  for (int64_t t = prompt; t < c.N; ++t) {
    hk::AttentionInputs step{part(d.q, t, 1),
                             part(d.k, t, 1),
                             part(d.v, t, 1),
                             phi ? part(d.phi_q, t, 1) : Tensor(),
                             phi ? part(d.phi_k, t, 1) : Tensor(),
                             omega,
                             drop};
    const Tensor y = dispatch ? hk::decode_step(step, pre.state, options_of(c))
                              : hc::decode_step(step, pre.state, options_of(c));
    ASSERT_TRUE(all_finite(y)) << "step " << t;
    worst = std::max(worst, rel_err(y, ref.y.narrow(2, t, 1)));
  }
  EXPECT_LT(worst, c.tol()) << "worst decode step";
  EXPECT_EQ(pre.state.bytes(), bytes);
  EXPECT_EQ(pre.state.position, c.N);
}

TEST(CudaAttention, DecodeMatchesParallelFp32) {
  HL_REQUIRE_GPU();
  Case c;
  c.N = 200;
  c.w = 64;
  check_decode(c, 150, 30);
  check_decode(c, 40, 31);  // prompt shorter than the window
  c.overlap = true;
  c.affine = true;
  c.D = 128;
  c.F = 128;
  check_decode(c, 100, 32);
  c.mode = hk::AttentionMode::linear_only;
  check_decode(c, 70, 33);
  c.mode = hk::AttentionMode::window_only;
  c.w = 16;
  check_decode(c, 90, 34);
  // SSD drops: the dropped heads run linear-only, whichever mode the rest run.
  c.drop = true;
  check_decode(c, 60, 42);
  c.mode = hk::AttentionMode::hybrid;
  c.overlap = false;
  check_decode(c, 80, 43);
}

// The decode kernel splits S and the ring over a cluster of 8, 4, 2 or 1 blocks per head,
// by how many heads there are and whether F splits (decode_cluster_size); cover each.
TEST(CudaAttention, DecodeClusterSplits) {
  HL_REQUIRE_GPU();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  auto blocks_per_head = [&](const Case& c) {
    hc::ProblemShape s;
    s.batch = static_cast<int>(c.B);
    s.q_heads = static_cast<int>(c.Hq);
    s.features = static_cast<int>(c.F);
    return hc::decode_cluster_size(s, sms);
  };
  ASSERT_GE(sms, 128) << "the cases below are sized for an H100 / H200";
  Case c;
  c.N = 120;
  c.w = 32;
  c.F = 32;  // 8 heads: F = 32 splits once
  EXPECT_EQ(blocks_per_head(c), 2);
  check_decode(c, 70, 35);
  c.F = 128;
  c.overlap = true;
  EXPECT_EQ(blocks_per_head(c), 8);
  check_decode(c, 50, 36);
  c.Hkv = c.Hq;  // one q head per kv head: the cluster rewrites the kv ring slot alone
  check_decode(c, 60, 39);
  c.Hkv = 2;
  c.B = 8;  // 32 heads: at most one block per SM
  EXPECT_EQ(blocks_per_head(c), 4);
  check_decode(c, 40, 38);
  c.overlap = false;
  c.B = 3;  // 144 heads fill the GPU alone, 4 q heads per kv head
  c.Hq = 48;
  c.Hkv = 12;
  c.F = 64;
  EXPECT_EQ(blocks_per_head(c), 1);
  check_decode(c, 100, 37);
}

TEST(CudaAttention, DecodeMatchesParallelBf16) {
  HL_REQUIRE_GPU();
  Case c = bf16_head_case(160);
  c.Hq = 8;
  c.Hkv = 2;
  check_decode(c, 100, 40);
  check_decode(c, 130, 41, /*dispatch=*/true);
  c.drop = true;
  check_decode(c, 90, 44);
  c.D = 64;  // the other head dim of the kernel with F fixed at 128
  check_decode(c, 70, 45);
}

// phi = [softmax(x W), softmax(-x W)] clamped at 1e-12 (the hedgehog map without bias) in the
// precision of x: x [B, H, N, D], W [H, D, p].
Tensor hedgehog(const Tensor& x, const Tensor& w) {
  const Tensor r = torch::matmul(x, w.unsqueeze(0));
  return torch::cat({torch::softmax(r, -1), torch::softmax(-r, -1)}, -1)
      .clamp_min(hk::kFeatureClampMin);
}

// The forward that computes the hedgehog maps in its kernels (phi never in memory) against the
// float64 reference fed with the maps in float64.
void check_hedgehog_maps(Case c, uint64_t seed) {
  c.F = 128;
  c.dtype = torch::kBFloat16;
  SCOPED_TRACE(c.name());
  const Data d = make_data(c, seed);
  const auto o = d.q.options().dtype(torch::kFloat);
  const double spread = 1.5 / std::sqrt(static_cast<double>(c.D));  // projections of order 1.5
  const Tensor w_q = (torch::randn({c.Hq, c.D, 64}, o) * spread).to(torch::kBFloat16);
  const Tensor w_k = (torch::randn({c.Hq, c.D, 64}, o) * spread).to(torch::kBFloat16);
  const Tensor omega = c.mode == hk::AttentionMode::hybrid ? d.omega : Tensor();
  hk::AttentionInputs in{d.q, d.k, d.v, Tensor(), Tensor(), omega, d.drop};
  std::string why;
  ASSERT_TRUE(hc::supports_hedgehog_maps(in, w_q, w_k, options_of(c), &why)) << why;
  poison_allocator();
  const Tensor y = hc::attention_with_hedgehog_maps(in, w_q, w_k, options_of(c)).y;
  ASSERT_TRUE(all_finite(y)) << "unwritten or non-finite output";

  auto f64 = [](const Tensor& t) { return t.to(torch::kDouble); };
  const Tensor k_per_q = f64(d.k).repeat_interleave(c.Hq / c.Hkv, 1);
  const RefOut ref =
      reference(c, f64(d.q), f64(d.k), f64(d.v), hedgehog(f64(d.q), f64(w_q)),
                hedgehog(k_per_q, f64(w_k)), omega.defined() ? f64(omega) : Tensor(), d.drop);
  EXPECT_LT(rel_err(y, ref.y), c.tol()) << "y";
}

TEST(CudaAttention, ForwardComputesHedgehogMaps) {
  HL_REQUIRE_GPU();
  Case c = bf16_head_case(300);  // GQA (4 q heads on 2 kv heads), non-overlap w = 64
  c.drop = true;
  check_hedgehog_maps(c, 60);
  c.N = 40;  // shorter than the window
  check_hedgehog_maps(c, 61);
  c.B = 1;
  c.N = 1000;  // several segments: the chunk-state pass computes phi_k too
  check_hedgehog_maps(c, 62);
  c.overlap = true;
  c.affine = true;
  c.w = 48;
  check_hedgehog_maps(c, 63);
  c.mode = hk::AttentionMode::linear_only;
  c.drop = false;
  check_hedgehog_maps(c, 64);
  c = bf16_head_case(333);
  c.D = 64;
  c.drop = true;
  check_hedgehog_maps(c, 65);
}

// The dispatch: without a graph to build, hedgehog maps reach the kernels that compute them;
// with one (training), the maps run first so that autograd reaches their weights.
TEST(CudaAttention, AttentionWithFeatureMapsDispatch) {
  HL_REQUIRE_GPU();
  const Case c = bf16_head_case(500);
  const Data d = make_data(c, 67);
  hk::FeatureMapOptions map;
  map.heads = c.Hq;
  map.head_dim = c.D;
  map.feature_dim = 64;
  map.init = hk::FeatureMapInit::kaiming_uniform;
  hk::FeatureMap map_q(map), map_k(map);
  map_q->to(torch::kCUDA);
  map_k->to(torch::kCUDA);
  const hk::AttentionInputs in{d.q, d.k, d.v, Tensor(), Tensor(), d.omega};
  const hk::AttentionOptions o = options_of(c);
  const Tensor want = hk::attention(hk::with_feature_maps(in, *map_q, *map_k), o).y.detach();
  {
    const torch::NoGradGuard no_grad;
    const hk::AttentionOutput fused = hk::attention_with_feature_maps(in, *map_q, *map_k, o);
    EXPECT_EQ(fused.backend, hk::Backend::cuda);
    EXPECT_LT(rel_err(fused.y, want), c.tol());
  }
  const Tensor trained = hk::attention_with_feature_maps(in, *map_q, *map_k, o).y;
  ASSERT_TRUE(trained.requires_grad()) << "the maps' weights must get a gradient";
  trained.to(torch::kFloat).sum().backward();
  EXPECT_TRUE(map_q->weight.grad().defined());
  EXPECT_LT(rel_err(trained, want), 1e-6);  // the same ops as the reference path
}

TEST(CudaAttention, HedgehogMapsSayWhyNot) {
  HL_REQUIRE_GPU();
  const Case c = bf16_head_case(100);
  const Data d = make_data(c, 66);
  const auto o = d.q.options();
  hk::AttentionInputs in{d.q.to(torch::kFloat), d.k.to(torch::kFloat), d.v.to(torch::kFloat)};
  in.window_factor_logits = d.omega;
  const Tensor w = torch::randn({c.Hq, c.D, 64}, o);
  std::string why;
  EXPECT_FALSE(hc::supports_hedgehog_maps(in, w, w, options_of(c), &why));
  EXPECT_NE(why.find("bf16"), std::string::npos) << why;
  in = hk::AttentionInputs{d.q, d.k, d.v, Tensor(), Tensor(), d.omega};
  const Tensor narrow = torch::randn({c.Hq, c.D, 32}, o);
  EXPECT_FALSE(hc::supports_hedgehog_maps(in, narrow, narrow, options_of(c), &why));
  EXPECT_NE(why.find("[Hq, D, 64]"), std::string::npos) << why;
  EXPECT_THROW(hc::attention_with_hedgehog_maps(in, narrow, narrow, options_of(c)),
               std::invalid_argument);
}

// The raw kernels' inputs for fixed window factors c_w = 0.3, c_l = 0.7.
hc::RawInputs fixed_factor_inputs(const Case& c, const Data& d) {
  const auto f32 = d.q.options().dtype(torch::kFloat);
  return raw_inputs(d, torch::full({c.B, c.Hq}, 0.3, f32), torch::full({c.B, c.Hq}, 0.7, f32));
}

// Outputs handed to the raw entry points are written in place by kernels that need them dense
// and 16-byte aligned: any other view is refused with its name, before any kernel runs.
TEST(CudaAttention, GivenOutputsMustBeDenseAndAligned) {
  HL_REQUIRE_GPU();
  const Case c = dropped_head_case(300, 2, 1);
  const Data d = make_data(c, 31);
  const hc::RawInputs in = fixed_factor_inputs(c, d);
  hc::RawOptions o;
  o.window = c.w;
  // Whether `run` throws std::invalid_argument whose message holds `needle`.
  auto refused = [](auto&& run, const std::string& needle) {
    try {
      run();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what()).find(needle) != std::string::npos;
    }
    return false;
  };
  const Tensor wide_y = torch::empty({c.B, c.Hq, c.N, c.D + 8}, d.q.options());
  EXPECT_TRUE(refused([&] { hc::forward_raw(in, o, wide_y); }, "y_out must be"));
  const hc::RawForward f = hc::forward_raw(in, o);
  hc::RawGrads out;
  // Dense but 4 bytes off 16-byte alignment: the kernels' 16-byte stores there would fault.
  out.dq =
      torch::empty({d.q.numel() + 2}, d.q.options()).narrow(0, 2, d.q.numel()).view(d.q.sizes());
  const Tensor dy = torch::randn_like(d.q);
  EXPECT_TRUE(refused([&] { hc::backward_raw(in, o, f, dy, &out); },
                      "dq must be contiguous and 16-byte aligned"));
  out.dq = torch::empty_like(d.q);
  out.dphi_k = torch::empty_like(d.phi_k).transpose(2, 3).contiguous().transpose(2, 3);
  EXPECT_TRUE(refused([&] { hc::backward_raw(in, o, f, dy, &out); }, "dphi_k must be contiguous"));
  // The refused calls launched nothing: the device is still usable and the defaults still work.
  out.dphi_k = Tensor();
  const hc::RawGrads g = hc::backward_raw(in, o, f, dy, &out);
  EXPECT_TRUE(all_finite(g.dq));
  EXPECT_TRUE(all_finite(g.dphi_k));
}

// Small shapes for compute-sanitizer (scripts/gpu-kernels.sh runs memcheck and racecheck on
// tests named Sanitizer*): every kernel, segment splits, GQA, bf16, a few decode steps.
TEST(CudaAttention, SanitizerSmall) {
  HL_REQUIRE_GPU();
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    Case c;
    c.B = 1;
    c.Hq = 2;
    c.Hkv = 1;
    c.N = dtype == torch::kFloat ? 70 : 300;  // bf16: two 128-key segments in the key pass
    c.w = 16;
    c.drop = true;
    c.dtype = dtype;
    const Data d = make_data(c, 50);
    const hc::RawInputs in = fixed_factor_inputs(c, d);
    hc::RawOptions o;
    o.window = c.w;
    o.forward_segments = 2;
    o.key_segments = 2;
    o.want_stats = true;
    const hc::RawForward f = hc::forward_raw(in, o);
    const hc::RawGrads g = hc::backward_raw(in, o, f, torch::randn_like(d.q));
    EXPECT_TRUE(all_finite(f.y));
    EXPECT_TRUE(all_finite(g.dk));
    c.drop = false;
    check_decode(c, 20, 51);
  }
  // The Hopper kernels (TMA, mbarriers, wgmma): two segments each way, a dropped head.
  const Case c = dropped_head_case(200, 2, 1);
  const Data d = make_data(c, 52);
  const hc::RawInputs in = fixed_factor_inputs(c, d);
  hc::RawOptions o;
  o.window = c.w;
  o.forward_segments = 2;
  o.key_segments = 2;
  const hc::RawForward f = hc::forward_raw(in, o);
  EXPECT_EQ(f.plan.segments, 2);
  EXPECT_TRUE(all_finite(f.y));
  const hc::RawGrads g = hc::backward_raw(in, o, f, torch::randn_like(d.q));
  EXPECT_TRUE(all_finite(g.dk));
  EXPECT_TRUE(all_finite(g.dphi_k));
  // Attention transfer's backward: the query kernel without the window's scores.
  hc::RawOptions frozen = o;
  frozen.key_grads = frozen.query_grads = false;
  const hc::RawGrads gf = hc::backward_raw(in, frozen, f, torch::randn_like(d.q));
  EXPECT_TRUE(all_finite(gf.dphi_q));
  EXPECT_TRUE(all_finite(gf.dphi_k));
  EXPECT_TRUE(all_finite(gf.dcoef_window));
  // The same forward computing the hedgehog maps in its kernels (state pass and forward).
  hc::RawInputs mapped = in;
  mapped.phi_q = mapped.phi_k = Tensor();
  mapped.map_q = torch::randn({c.Hq, c.D, 64}, d.q.options()) / std::sqrt(double(c.D));
  mapped.map_k = torch::randn_like(mapped.map_q);
  const hc::RawForward fm = hc::forward_raw(mapped, o);
  EXPECT_EQ(fm.plan.segments, 2);
  EXPECT_TRUE(all_finite(fm.y));
  // The fused key kernel: MHA, no dropped window, two key segments.
  Case m = bf16_head_case(200);
  m.B = 1;
  m.Hq = m.Hkv = 2;
  const Data dm = make_data(m, 53);
  const hc::RawInputs mi = fixed_factor_inputs(m, dm);
  const hc::RawForward mf = hc::forward_raw(mi, o);
  const hc::RawGrads mg = hc::backward_raw(mi, o, mf, torch::randn_like(dm.q));
  EXPECT_TRUE(all_finite(mg.dk));
  EXPECT_TRUE(all_finite(mg.dv));
  EXPECT_TRUE(all_finite(mg.dphi_k));
}

#endif  // HL_WITH_CUDA_KERNELS

}  // namespace
