// The decoder's RMSNorm and rotary embedding for inference. Each rounds to T exactly where the
// LibTorch ops they replace round (RMSNorm's normalised x before the weight; the rotary
// embedding's two products and their sum), and keeps products and sums apart (no fused
// multiply-add), so that the rotary embedding matches those ops bit for bit and RMSNorm differs
// only by its sum's order.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/hybrid_common.cuh"
#include "kernels/cuda/model_ops_launch.hpp"

namespace hl::kernels::cuda {
namespace {

constexpr int kNormThreads = 256;
constexpr int kRotaryThreads = 256;

using detail::from_float;
using detail::to_float;
// x rounded to T and back: what storing an op's result in a T tensor does.
template <typename T>
__device__ inline float round_to(float x) {
  return to_float(from_float<T>(x));
}

// One block a row: the sum of squares in float32, then each entry normalised, rounded to T and
// multiplied by its weight (read a second time, from L1 or L2).
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_kernel(const T* x, const T* w, T* y, int cols, float eps) {
  const T* xr = x + static_cast<int64_t>(blockIdx.x) * cols;
  T* yr = y + static_cast<int64_t>(blockIdx.x) * cols;
  float sum = 0.f;
  for (int c = threadIdx.x; c < cols; c += kNormThreads) {
    const float v = to_float(xr[c]);
    sum = __fadd_rn(sum, __fmul_rn(v, v));
  }
  sum = detail::warp_sum(sum);
  __shared__ float warp_sums[kNormThreads / 32];
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kNormThreads / 32; ++i)
    total += warp_sums[i];
  // LibTorch's mean is the sum times 1 / cols, in float32.
  const float inv = rsqrtf(__fadd_rn(__fmul_rn(total, 1.f / static_cast<float>(cols)), eps));
  for (int c = threadIdx.x; c < cols; c += kNormThreads) {
    const float normed = round_to<T>(__fmul_rn(to_float(xr[c]), inv));
    yr[c] = from_float<T>(__fmul_rn(to_float(w[c]), normed));
  }
}

// One thread a pair of entries (i, i + d / 2) of a row (b, h, n).
template <typename T>
__global__ void __launch_bounds__(kRotaryThreads)
    rotary_kernel(const T* x, int64_t sb, int64_t sh, int64_t sn, const T* cos, const T* sin, T* y,
                  int heads, int64_t n, int d, int64_t pairs) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kRotaryThreads + threadIdx.x;
  if (p >= pairs) return;
  const int half = d / 2;
  const int i = static_cast<int>(p % half);
  const int64_t row = p / half;  // (b H + h) N + t
  const int64_t t = row % n;
  const int64_t bh = row / n;
  const int64_t b = bh / heads, h = bh % heads;
  const T* xr = x + b * sb + h * sh + t * sn;
  const float x1 = to_float(xr[i]), x2 = to_float(xr[i + half]);
  const T* cr = cos + t * d;
  const T* sr = sin + t * d;
  // x cos + cat(-x2, x1) sin, each product rounded to T, then the sum.
  const float lo = __fadd_rn(round_to<T>(__fmul_rn(x1, to_float(cr[i]))),
                             round_to<T>(__fmul_rn(-x2, to_float(sr[i]))));
  const float hi = __fadd_rn(round_to<T>(__fmul_rn(x2, to_float(cr[i + half]))),
                             round_to<T>(__fmul_rn(x1, to_float(sr[i + half]))));
  T* yr = y + row * d;
  yr[i] = from_float<T>(lo);
  yr[i + half] = from_float<T>(hi);
}

}  // namespace

int launch_rms_norm(const void* x, const void* w, void* y, int64_t rows, int cols, float eps,
                    KernelDType dtype, void* stream) {
  if (rows < 0 || rows > 0x7fffffff || cols < 1 || cols > kRmsNormMaxCols)
    return static_cast<int>(cudaErrorInvalidValue);
  if (rows == 0) return 0;
  const dim3 grid(static_cast<unsigned>(rows));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == KernelDType::kBFloat16) {
    rms_norm_kernel<<<grid, kNormThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(x),
                                                  static_cast<const __nv_bfloat16*>(w),
                                                  static_cast<__nv_bfloat16*>(y), cols, eps);
  } else {
    rms_norm_kernel<<<grid, kNormThreads, 0, s>>>(static_cast<const float*>(x),
                                                  static_cast<const float*>(w),
                                                  static_cast<float*>(y), cols, eps);
  }
  return static_cast<int>(cudaGetLastError());
}

int launch_rotary_embedding(const void* x, int64_t sb, int64_t sh, int64_t sn, const void* cos,
                            const void* sin, void* y, int batch, int heads, int64_t n, int d,
                            KernelDType dtype, void* stream) {
  if (batch < 0 || heads < 0 || n < 0 || d < 2 || d % 2 != 0 || d > kRotaryMaxHeadDim)
    return static_cast<int>(cudaErrorInvalidValue);
  const int64_t pairs = static_cast<int64_t>(batch) * heads * n * (d / 2);
  if (pairs == 0) return 0;
  const dim3 grid(static_cast<unsigned>((pairs + kRotaryThreads - 1) / kRotaryThreads));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == KernelDType::kBFloat16) {
    using T = __nv_bfloat16;
    rotary_kernel<<<grid, kRotaryThreads, 0, s>>>(
        static_cast<const T*>(x), sb, sh, sn, static_cast<const T*>(cos),
        static_cast<const T*>(sin), static_cast<T*>(y), heads, n, d, pairs);
  } else {
    rotary_kernel<<<grid, kRotaryThreads, 0, s>>>(
        static_cast<const float*>(x), sb, sh, sn, static_cast<const float*>(cos),
        static_cast<const float*>(sin), static_cast<float*>(y), heads, n, d, pairs);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace hl::kernels::cuda
