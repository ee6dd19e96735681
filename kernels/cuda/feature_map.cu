// The fused paired activations, fp32 throughout; the backward recomputes the halves from r rather
// than reading phi back. Where p is a multiple of 8, L lanes share a row, eight contiguous values
// each: one 16-byte load a lane (bf16), log2(L) shuffles a reduction and 32 / L rows a warp, so
// that many rows are in flight on an SM; elsewhere one warp a row, its p values spread over the
// lanes (E per lane), max, min, both halves and their sums in registers and warp shuffles.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/feature_map_launch.hpp"
#include "kernels/cuda/hybrid_common.cuh"

namespace hl::kernels::cuda {
namespace {

constexpr int kRowsPerBlock = 8;
constexpr float kClampMin = 1e-12f;  // kernels/feature_map.hpp's kFeatureClampMin
constexpr unsigned kAllLanes = 0xffffffffu;

using detail::from_float;
using detail::to_float;

// op over the L lanes that share a row (L = 32: the warp).
template <int L, typename Op>
__device__ inline float group_reduce(float x, Op op) {
#pragma unroll
  for (int offset = L / 2; offset > 0; offset >>= 1)
    x = op(x, __shfl_xor_sync(kAllLanes, x, offset));
  return x;
}

// The pair f(r), f(-r) before the clamp (0 where not in(i)) from this lane's values x of a row
// that L lanes share; hi and lo hold this lane's max and min on entry, the row's on return. Every
// lane of the warp calls it: the shuffles take the whole warp.
template <bool kSoftmax, int L, int N, typename In>
__device__ inline void paired_values(const float (&x)[N], In in, float& hi, float& lo,
                                     float (&plus)[N], float (&minus)[N]) {
  hi = group_reduce<L>(hi, [](float a, float b) { return fmaxf(a, b); });
  lo = group_reduce<L>(lo, [](float a, float b) { return fminf(a, b); });
  float sum_plus = 0.f, sum_minus = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    plus[i] = in(i) ? expf(x[i] - hi) : 0.f;
    minus[i] = in(i) ? expf(lo - x[i]) : 0.f;
    sum_plus += plus[i];
    sum_minus += minus[i];
  }
  if constexpr (kSoftmax) {
    const auto add = [](float a, float b) { return a + b; };
    sum_plus = group_reduce<L>(sum_plus, add);
    sum_minus = group_reduce<L>(sum_minus, add);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      plus[i] /= sum_plus;
      minus[i] /= sum_minus;
    }
  }
}

// The backward's sums over a row's L lanes: <g, a>, <h, b> and (exp) how many entries attain the
// max and the min, from this lane's parts.
struct PairedSums {
  float dot_a, dot_b, at_hi, at_lo;
};
template <bool kSoftmax, int L>
__device__ inline PairedSums reduce_sums(PairedSums s) {
  const auto add = [](float u, float v) { return u + v; };
  s.dot_a = group_reduce<L>(s.dot_a, add);
  s.dot_b = group_reduce<L>(s.dot_b, add);
  if constexpr (!kSoftmax) {
    s.at_hi = group_reduce<L>(s.at_hi, add);
    s.at_lo = group_reduce<L>(s.at_lo, add);
  }
  return s;
}

// dr of one entry. With a = f(r), b = f(-r) and g, h the gradients of their clamped copies (zero
// where the clamp held the value):
//   softmax: dr = a (g - <g, a>) - b (h - <h, b>)
//   exp:     dr = g a - [x = max] <g, a> / #max - h b + [x = min] <h, b> / #min
template <bool kSoftmax>
__device__ inline float paired_grad(float x, float a, float b, float g, float h, float hi, float lo,
                                    const PairedSums& s) {
  if constexpr (kSoftmax) {
    return a * (g - s.dot_a) - b * (h - s.dot_b);
  } else {
    float d = g * a - h * b;
    if (x == hi) d -= s.dot_a / s.at_hi;
    if (x == lo) d += s.dot_b / s.at_lo;
    return d;
  }
}

// One row at this lane's elements lane + 32 i: its values x (0 past p), max hi and min lo, and
// the pair f(r), f(-r) before the clamp (0 past p).
template <bool kSoftmax, typename T, int E>
__device__ inline void paired_row(const T* r, int p, int lane, float (&x)[E], float& hi, float& lo,
                                  float (&plus)[E], float (&minus)[E]) {
  hi = -INFINITY;
  lo = INFINITY;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int e = lane + 32 * i;
    x[i] = e < p ? to_float(r[e]) : 0.f;
    if (e < p) {
      hi = fmaxf(hi, x[i]);
      lo = fminf(lo, x[i]);
    }
  }
  paired_values<kSoftmax, 32>(
      x, [&](int i) { return lane + 32 * i < p; }, hi, lo, plus, minus);
}

template <bool kSoftmax, typename T, int E>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    paired_forward_kernel(const T* r, T* phi, int64_t rows, int p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  float x[E], hi, lo, plus[E], minus[E];
  paired_row<kSoftmax, T, E>(r + row * p, p, lane, x, hi, lo, plus, minus);
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

// dr of one row, a warp a row (paired_grad).
template <bool kSoftmax, typename T, int E>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    paired_backward_kernel(const T* r, const T* dphi, T* dr, int64_t rows, int p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  float x[E], hi, lo, a[E], b[E];
  paired_row<kSoftmax, T, E>(r + row * p, p, lane, x, hi, lo, a, b);
  const T* grad = dphi + row * 2 * p;
  float g[E], h[E];
  PairedSums sums{0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int e = lane + 32 * i;
    g[i] = e < p && a[i] >= kClampMin ? to_float(grad[e]) : 0.f;
    h[i] = e < p && b[i] >= kClampMin ? to_float(grad[p + e]) : 0.f;
    sums.dot_a += g[i] * a[i];
    sums.dot_b += h[i] * b[i];
    sums.at_hi += e < p && x[i] == hi ? 1.f : 0.f;
    sums.at_lo += e < p && x[i] == lo ? 1.f : 0.f;
  }
  sums = reduce_sums<kSoftmax, 32>(sums);
  T* out = dr + row * p;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int e = lane + 32 * i;
    if (e < p)
      out[e] = from_float<T>(paired_grad<kSoftmax>(x[i], a[i], b[i], g[i], h[i], hi, lo, sums));
  }
}

// ---- eight values a lane, L lanes a row (p a multiple of 8) ----

__device__ inline void load8(const __nv_bfloat16* src, float (&x)[8]) {
  const uint4 v = *reinterpret_cast<const uint4*>(src);
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
    x[2 * i] = f.x;
    x[2 * i + 1] = f.y;
  }
}
__device__ inline void load8(const float* src, float (&x)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(src);
  const float4 b = *reinterpret_cast<const float4*>(src + 4);
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}
__device__ inline void store8(__nv_bfloat16* dst, const float (&x)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
    w[i] = *reinterpret_cast<const uint32_t*>(&v);
  }
  *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ inline void store8(float* dst, const float (&x)[8]) {
  *reinterpret_cast<float4*>(dst) = make_float4(x[0], x[1], x[2], x[3]);
  *reinterpret_cast<float4*>(dst + 4) = make_float4(x[4], x[5], x[6], x[7]);
}

// The row's values x at this lane's eight elements (in: they belong to a row that exists), its
// max hi and min lo, and the pair f(r), f(-r) before the clamp (0 where not in).
template <bool kSoftmax, typename T, int L>
__device__ inline void paired_row8(const T* r, bool in, float (&x)[8], float& hi, float& lo,
                                   float (&plus)[8], float (&minus)[8]) {
  hi = -INFINITY;
  lo = INFINITY;
  if (in) {
    load8(r, x);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      hi = fmaxf(hi, x[i]);
      lo = fminf(lo, x[i]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
      x[i] = 0.f;
  }
  paired_values<kSoftmax, L>(
      x, [in](int) { return in; }, hi, lo, plus, minus);
}

// This thread's row and its lane's first element; in: both exist.
template <int L>
__device__ inline bool row_part(int64_t rows, int p, int64_t& row, int& e0) {
  row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / L) + threadIdx.x / L;
  e0 = 8 * (threadIdx.x % L);
  return row < rows && e0 < p;
}

template <bool kSoftmax, typename T, int L>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    paired_forward8_kernel(const T* r, T* phi, int64_t rows, int p) {
  int64_t row;
  int e0;
  const bool in = row_part<L>(rows, p, row, e0);
  float x[8], hi, lo, plus[8], minus[8];
  paired_row8<kSoftmax, T, L>(r + row * p + e0, in, x, hi, lo, plus, minus);
  if (!in) return;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    plus[i] = fmaxf(plus[i], kClampMin);
    minus[i] = fmaxf(minus[i], kClampMin);
  }
  store8(phi + row * 2 * p + e0, plus);
  store8(phi + row * 2 * p + p + e0, minus);
}

// dr of one row, L lanes a row (paired_grad).
template <bool kSoftmax, typename T, int L>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    paired_backward8_kernel(const T* r, const T* dphi, T* dr, int64_t rows, int p) {
  int64_t row;
  int e0;
  const bool in = row_part<L>(rows, p, row, e0);
  float x[8], hi, lo, a[8], b[8];
  paired_row8<kSoftmax, T, L>(r + row * p + e0, in, x, hi, lo, a, b);
  float g[8] = {}, h[8] = {};
  if (in) {
    load8(dphi + row * 2 * p + e0, g);
    load8(dphi + row * 2 * p + p + e0, h);
  }
  PairedSums sums{0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    if (a[i] < kClampMin) g[i] = 0.f;  // also where not in (a = 0)
    if (b[i] < kClampMin) h[i] = 0.f;
    sums.dot_a += g[i] * a[i];
    sums.dot_b += h[i] * b[i];
    sums.at_hi += in && x[i] == hi ? 1.f : 0.f;
    sums.at_lo += in && x[i] == lo ? 1.f : 0.f;
  }
  sums = reduce_sums<kSoftmax, L>(sums);
  if (!in) return;
  float d[8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
    d[i] = paired_grad<kSoftmax>(x[i], a[i], b[i], g[i], h[i], hi, lo, sums);
  store8(dr + row * p + e0, d);
}

struct PairedArgs {
  const void* r;
  const void* dphi;  // backward only
  void* out;         // phi (forward) or dr (backward)
  int64_t rows;
  int p;
  cudaStream_t stream;
};

// The forward or the backward kernel of a pair, `rows_per_block` rows to a block of 32 *
// kRowsPerBlock threads.
template <typename T>
cudaError_t launch_pair(void (*forward)(const T*, T*, int64_t, int),
                        void (*backward_kernel)(const T*, const T*, T*, int64_t, int),
                        int rows_per_block, const PairedArgs& a, bool backward) {
  const dim3 grid(static_cast<unsigned>((a.rows + rows_per_block - 1) / rows_per_block));
  const dim3 block(32 * kRowsPerBlock);
  const T* r = static_cast<const T*>(a.r);
  T* out = static_cast<T*>(a.out);
  if (backward) {
    backward_kernel<<<grid, block, 0, a.stream>>>(r, static_cast<const T*>(a.dphi), out, a.rows,
                                                  a.p);
  } else {
    forward<<<grid, block, 0, a.stream>>>(r, out, a.rows, a.p);
  }
  return cudaGetLastError();
}

template <bool kSoftmax, typename T, int E>
cudaError_t launch_typed(const PairedArgs& a, bool backward) {
  return launch_pair<T>(paired_forward_kernel<kSoftmax, T, E>,
                        paired_backward_kernel<kSoftmax, T, E>, kRowsPerBlock, a, backward);
}

template <bool kSoftmax, typename T, int L>
cudaError_t launch_typed8(const PairedArgs& a, bool backward) {
  return launch_pair<T>(paired_forward8_kernel<kSoftmax, T, L>,
                        paired_backward8_kernel<kSoftmax, T, L>, 32 * kRowsPerBlock / L, a,
                        backward);
}

// p a multiple of 8 and every row 16-byte aligned: L = p / 8 rounded up to a power of two (at
// least 2); else E = p / 32 rounded up to a power of two.
template <bool kSoftmax, typename T>
cudaError_t launch_sized(const PairedArgs& a, bool backward) {
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  if (a.p % 8 == 0 && aligned(a.r) && aligned(a.out) && (!backward || aligned(a.dphi))) {
    if (a.p <= 16) return launch_typed8<kSoftmax, T, 2>(a, backward);
    if (a.p <= 32) return launch_typed8<kSoftmax, T, 4>(a, backward);
    if (a.p <= 64) return launch_typed8<kSoftmax, T, 8>(a, backward);
    if (a.p <= 128) return launch_typed8<kSoftmax, T, 16>(a, backward);
    return launch_typed8<kSoftmax, T, 32>(a, backward);
  }
  if (a.p <= 32) return launch_typed<kSoftmax, T, 1>(a, backward);
  if (a.p <= 64) return launch_typed<kSoftmax, T, 2>(a, backward);
  if (a.p <= 128) return launch_typed<kSoftmax, T, 4>(a, backward);
  return launch_typed<kSoftmax, T, 8>(a, backward);
}

template <bool kSoftmax>
cudaError_t launch_kind(const PairedArgs& a, KernelDType dtype, bool backward) {
  return dtype == KernelDType::kBFloat16 ? launch_sized<kSoftmax, __nv_bfloat16>(a, backward)
                                         : launch_sized<kSoftmax, float>(a, backward);
}

int launch_paired(const PairedArgs& a, PairedActivation f, KernelDType dtype, bool backward) {
  if (a.p < 1 || a.p > kPairedActivationMaxProjection || a.rows < 0) return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  return static_cast<int>(f == PairedActivation::kSoftmax ? launch_kind<true>(a, dtype, backward)
                                                          : launch_kind<false>(a, dtype, backward));
}

}  // namespace

int launch_paired_activation_forward(const void* r, void* phi, int64_t rows, int p,
                                     PairedActivation f, KernelDType dtype, void* stream) {
  return launch_paired({r, nullptr, phi, rows, p, static_cast<cudaStream_t>(stream)}, f, dtype,
                       false);
}

int launch_paired_activation_backward(const void* r, const void* dphi, void* dr, int64_t rows,
                                      int p, PairedActivation f, KernelDType dtype, void* stream) {
  return launch_paired({r, dphi, dr, rows, p, static_cast<cudaStream_t>(stream)}, f, dtype, true);
}

}  // namespace hl::kernels::cuda
