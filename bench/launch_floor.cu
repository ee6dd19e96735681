// The time floor of one decode step (bench/RESULTS.md, "Decode floor"): kernels launched as the
// decode kernel is (B1 H32, clusters of C blocks of 256 threads, launch_chained's programmatic
// stream serialization, a CUDA graph of 32 steps) that do less and less of its work. Built as
// hl_bench_launch_floor wherever nvcc is; run on the GPU machine, no arguments.
#include <cuda_runtime.h>

#include <cstdio>

#include "bench/graph_steps.hpp"
#include "kernels/cuda/hybrid_common.cuh"

namespace {

constexpr int kHeads = 32, kFeatures = 128, kDim = 128, kThreads = 256, kSteps = 32;

// kEmpty: the dependency wait only. kLoadStore: each block reads its F / C rows of its head's
// fp32 state and writes them back changed (one round trip). kBarriers: and three block barriers
// with warp reductions between them, as the decode step has. kCluster: and a cluster barrier.
enum Work { kEmpty, kLoadStore, kBarriers, kCluster };

struct StepParams {
  float* state;  // [heads][F][D]
  float* out;    // one float per block
  int cluster;
};

template <int W>
__global__ void __launch_bounds__(kThreads) step_kernel(StepParams p) {
  hl::kernels::cuda::detail::await_previous_kernel();
  if constexpr (W == kEmpty) {
    if (threadIdx.x == 0) p.out[blockIdx.x] = 1.f;
  } else {
    const int rows = kFeatures / p.cluster;
    const int unit = blockIdx.x / p.cluster, rank = blockIdx.x % p.cluster;
    float4* s = reinterpret_cast<float4*>(
        p.state + (static_cast<size_t>(unit) * kFeatures + rank * rows) * kDim);
    const int count = rows * kDim / 4;
    float4 r[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int i = threadIdx.x + u * kThreads;
      r[u] = i < count ? s[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    float acc = 0.f;
#pragma unroll
    for (int u = 0; u < 8; ++u)
      acc += r[u].x + r[u].y + r[u].z + r[u].w;
    if constexpr (W >= kBarriers) {
      __shared__ float partial[3][kThreads / 32];
      for (int k = 0; k < 3; ++k) {
        for (int o = 16; o > 0; o >>= 1)
          acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (threadIdx.x % 32 == 0) partial[k][threadIdx.x / 32] = acc;
        __syncthreads();
        acc = partial[k][(threadIdx.x / 32 + 1) % (kThreads / 32)];
      }
    }
    if constexpr (W == kCluster) {
      asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
      asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int i = threadIdx.x + u * kThreads;
      r[u].x += 1.f;
      if (i < count) s[i] = r[u];
    }
    if (threadIdx.x == 0) p.out[blockIdx.x] = acc;
  }
}

// Microseconds per step, or negative when a launch fails.
template <int W>
double time_step(const StepParams& p, cudaStream_t stream) {
  auto launch = [&](cudaStream_t on) {
    return hl::kernels::cuda::detail::launch_chained(step_kernel<W>, dim3(kHeads * p.cluster),
                                                     dim3(kThreads), 0, on, p, p.cluster);
  };
  if (launch(stream) != cudaSuccess || cudaStreamSynchronize(stream) != cudaSuccess) return -1.0;
  return hl::bench::graph_step_us(launch, kSteps, stream);
}

}  // namespace

int main() {
  const size_t state_bytes = sizeof(float) * kHeads * kFeatures * kDim;
  StepParams p{};
  cudaStream_t stream;
  if (cudaMalloc(&p.state, state_bytes) != cudaSuccess ||
      cudaMalloc(&p.out, sizeof(float) * kHeads * 8) != cudaSuccess ||
      cudaMemset(p.state, 0, state_bytes) != cudaSuccess ||
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    std::fprintf(stderr, "launch_floor: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  std::printf("decode step floor, B1 H32, graph of %d steps, us per step (median of 21)\n", kSteps);
  for (const int cluster : {1, 4}) {
    p.cluster = cluster;
    std::printf("C=%d empty %.2f  load+store %.2f  +3 barriers %.2f  +cluster barrier %.2f\n",
                cluster, time_step<kEmpty>(p, stream), time_step<kLoadStore>(p, stream),
                time_step<kBarriers>(p, stream), time_step<kCluster>(p, stream));
  }
  const cudaError_t err = cudaGetLastError();
  std::printf("%s\n", cudaGetErrorString(err));
  return err == cudaSuccess ? 0 : 1;
}
