// Launch timing shared by the raw CUDA microbenchmarks of bench/.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
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

}  // namespace hl::bench
