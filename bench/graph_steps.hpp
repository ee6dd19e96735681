// Time per step of a CUDA graph of repeated steps, for the decode benchmarks
// (hl_bench_cuda_attention, hl_bench_launch_floor): replaying a graph keeps the host's launch
// gaps out of the figure.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

namespace hl::bench {

/// Captures `steps` calls of launch(stream) into a graph, replays it 200 times to bring the
/// clocks up, and returns the median over 21 replays of the microseconds per step; negative
/// when the capture or instantiation fails.
template <typename Launch>
double graph_step_us(Launch&& launch, int steps, cudaStream_t stream) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) != cudaSuccess) return -1.0;
  for (int i = 0; i < steps; ++i)
    launch(stream);
  if (cudaStreamEndCapture(stream, &graph) != cudaSuccess) return -1.0;
  if (cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
    cudaGraphDestroy(graph);
    return -1.0;
  }
  for (int i = 0; i < 200; ++i)
    cudaGraphLaunch(exec, stream);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> us;
  for (int r = 0; r < 21; ++r) {
    cudaEventRecord(start, stream);
    cudaGraphLaunch(exec, stream);
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0.f;
    cudaEventElapsedTime(&ms, start, stop);
    us.push_back(ms * 1e3 / steps);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

}  // namespace hl::bench
