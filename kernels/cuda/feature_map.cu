// The fused hedgehog activation: one warp per row of r, the row's p values spread over the
// lanes (E per lane), both softmaxes and their sums in registers and warp shuffles, fp32
// throughout. The backward recomputes the softmaxes from r rather than reading phi back.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/cuda/feature_map_launch.hpp"

namespace hl::kernels::cuda {
namespace {

constexpr int kRowsPerBlock = 8;
constexpr float kClampMin = 1e-12f;  // kernels/feature_map.hpp's kFeatureClampMin
constexpr unsigned kAllLanes = 0xffffffffu;

__device__ inline float to_float(float x) {
  return x;
}
__device__ inline float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T>
__device__ inline T from_float(float x);
template <>
__device__ inline float from_float<float>(float x) {
  return x;
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename Op>
__device__ inline float warp_reduce(float x, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1)
    x = op(x, __shfl_xor_sync(kAllLanes, x, offset));
  return x;
}

// softmax(r) and softmax(-r) of one row at this lane's elements lane + 32 i (0 past p).
template <typename T, int E>
__device__ inline void row_softmaxes(const T* r, int p, int lane, float (&plus)[E],
                                     float (&minus)[E]) {
  float x[E];
  float hi = -INFINITY, lo = INFINITY;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int e = lane + 32 * i;
    x[i] = e < p ? to_float(r[e]) : 0.f;
    if (e < p) {
      hi = fmaxf(hi, x[i]);
      lo = fminf(lo, x[i]);
    }
  }
  hi = warp_reduce(hi, [](float a, float b) { return fmaxf(a, b); });
  lo = warp_reduce(lo, [](float a, float b) { return fminf(a, b); });
  float sum_plus = 0.f, sum_minus = 0.f;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const bool in = lane + 32 * i < p;
    plus[i] = in ? expf(x[i] - hi) : 0.f;
    minus[i] = in ? expf(lo - x[i]) : 0.f;
    sum_plus += plus[i];
    sum_minus += minus[i];
  }
  const auto add = [](float a, float b) { return a + b; };
  sum_plus = warp_reduce(sum_plus, add);
  sum_minus = warp_reduce(sum_minus, add);
#pragma unroll
  for (int i = 0; i < E; ++i) {
    plus[i] /= sum_plus;
    minus[i] /= sum_minus;
  }
}

template <typename T, int E>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    hedgehog_forward_kernel(const T* r, T* phi, int64_t rows, int p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  float plus[E], minus[E];
  row_softmaxes<T, E>(r + row * p, p, lane, plus, minus);
  T* out = phi + row * 2 * p;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int e = lane + 32 * i;
    if (e < p) {
      out[e] = from_float<T>(fmaxf(plus[i], kClampMin));
      out[p + e] = from_float<T>(fmaxf(minus[i], kClampMin));
    }
  }
}

// With s = softmax(r), t = softmax(-r) and g, h the gradients of their clamped copies (zero
// where the clamp held the value): dr = s (g - <g, s>) - t (h - <h, t>).
template <typename T, int E>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    hedgehog_backward_kernel(const T* r, const T* dphi, T* dr, int64_t rows, int p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  float plus[E], minus[E];
  row_softmaxes<T, E>(r + row * p, p, lane, plus, minus);
  const T* g = dphi + row * 2 * p;
  float g_plus[E], g_minus[E];
  float dot_plus = 0.f, dot_minus = 0.f;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int e = lane + 32 * i;
    g_plus[i] = e < p && plus[i] >= kClampMin ? to_float(g[e]) : 0.f;
    g_minus[i] = e < p && minus[i] >= kClampMin ? to_float(g[p + e]) : 0.f;
    dot_plus += g_plus[i] * plus[i];
    dot_minus += g_minus[i] * minus[i];
  }
  const auto add = [](float a, float b) { return a + b; };
  dot_plus = warp_reduce(dot_plus, add);
  dot_minus = warp_reduce(dot_minus, add);
  T* out = dr + row * p;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int e = lane + 32 * i;
    if (e < p) {
      out[e] =
          from_float<T>(plus[i] * (g_plus[i] - dot_plus) - minus[i] * (g_minus[i] - dot_minus));
    }
  }
}

struct HedgehogArgs {
  const void* r;
  const void* dphi;  // backward only
  void* out;         // phi (forward) or dr (backward)
  int64_t rows;
  int p;
  cudaStream_t stream;
};

template <typename T, int E>
cudaError_t launch_typed(const HedgehogArgs& a, bool backward) {
  const dim3 grid(static_cast<unsigned>((a.rows + kRowsPerBlock - 1) / kRowsPerBlock));
  const dim3 block(32 * kRowsPerBlock);
  const T* r = static_cast<const T*>(a.r);
  T* out = static_cast<T*>(a.out);
  if (backward) {
    hedgehog_backward_kernel<T, E>
        <<<grid, block, 0, a.stream>>>(r, static_cast<const T*>(a.dphi), out, a.rows, a.p);
  } else {
    hedgehog_forward_kernel<T, E><<<grid, block, 0, a.stream>>>(r, out, a.rows, a.p);
  }
  return cudaGetLastError();
}

// E = p / 32 rounded up to a power of two.
template <typename T>
cudaError_t launch_sized(const HedgehogArgs& a, bool backward) {
  if (a.p <= 32) return launch_typed<T, 1>(a, backward);
  if (a.p <= 64) return launch_typed<T, 2>(a, backward);
  if (a.p <= 128) return launch_typed<T, 4>(a, backward);
  return launch_typed<T, 8>(a, backward);
}

int launch_hedgehog(const HedgehogArgs& a, KernelDType dtype, bool backward) {
  if (a.p < 1 || a.p > kHedgehogMaxProjection || a.rows < 0) return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  return static_cast<int>(dtype == KernelDType::kBFloat16 ? launch_sized<__nv_bfloat16>(a, backward)
                                                          : launch_sized<float>(a, backward));
}

}  // namespace

int launch_hedgehog_forward(const void* r, void* phi, int64_t rows, int p, KernelDType dtype,
                            void* stream) {
  return launch_hedgehog({r, nullptr, phi, rows, p, static_cast<cudaStream_t>(stream)}, dtype,
                         false);
}

int launch_hedgehog_backward(const void* r, const void* dphi, void* dr, int64_t rows, int p,
                             KernelDType dtype, void* stream) {
  return launch_hedgehog({r, dphi, dr, rows, p, static_cast<cudaStream_t>(stream)}, dtype, true);
}

}  // namespace hl::kernels::cuda
