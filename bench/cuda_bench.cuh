// Host helpers shared by the raw CUDA microbenchmarks of bench/: launch timing, uploads.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace hl::bench {

/// Milliseconds of each of `runs` calls of launch() after one warm-up call, sorted, by CUDA
/// events on the default stream; empty when launch() returns false or CUDA fails.
template <typename Launch>
std::vector<float> launch_times_ms(Launch&& launch, int runs) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms;
  for (int i = 0; i <= runs; ++i) {
    cudaEventRecord(start);
    if (!launch()) {
      ms.clear();
      break;
    }
    cudaEventRecord(stop);
    if (cudaEventSynchronize(stop) != cudaSuccess) {
      ms.clear();
      break;
    }
    float t = 0.f;
    cudaEventElapsedTime(&t, start, stop);
    if (i > 0) ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms;
}

/// The median of launch_times_ms in microseconds, or -1 when it is empty.
template <typename Launch>
double median_launch_us(Launch&& launch, int runs) {
  const std::vector<float> ms = launch_times_ms(launch, runs);
  return ms.empty() ? -1.0 : 1e3 * ms[ms.size() / 2];
}

/// x rounded to the nearest bf16 value (test inputs exact in bf16).
inline float bf16_round(float x) {
  return __bfloat162float(__float2bfloat16_rn(x));
}

/// A device copy of `host` (cudaMalloc'd; the caller frees it).
template <typename T>
T* to_device(const std::vector<T>& host) {
  T* dev = nullptr;
  cudaMalloc(&dev, host.size() * sizeof(T));
  cudaMemcpy(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return dev;
}

/// A device copy of `host` in bf16.
inline __nv_bfloat16* to_device_bf16(const std::vector<float>& host) {
  std::vector<__nv_bfloat16> y(host.size());
  for (size_t i = 0; i < host.size(); ++i)
    y[i] = __float2bfloat16_rn(host[i]);
  return to_device(y);
}

/// ||out - ref|| / ||ref||; NaN when an entry of out is NaN (e.g. left unwritten).
inline double rel_error(const std::vector<float>& out, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double o = out[i];
    num += (o - ref[i]) * (o - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

}  // namespace hl::bench
