// The time floor of one decode step (bench/RESULTS.md, "Decode floor"): kernels launched as the
// decode kernel is (B1 H32, clusters of C blocks of 256 threads, programmatic stream
// serialization, a CUDA graph of 32 steps) that do less and less of its work. Built as
// hl_bench_launch_floor wherever nvcc is; run on the GPU machine, no arguments.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

namespace {

constexpr int kHeads = 32, kFeatures = 128, kDim = 128, kThreads = 256, kSteps = 32;

// kEmpty: the dependency wait only. kLoadStore: each block reads its F / C rows of its head's
// fp32 state and writes them back changed (one round trip). kBarriers: and three block barriers
// with warp reductions between them, as the decode step has. kCluster: and a cluster barrier.
enum Work { kEmpty, kLoadStore, kBarriers, kCluster };

template <int W>
__global__ void __launch_bounds__(kThreads) step_kernel(float* state, float* out, int cluster) {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  if constexpr (W == kEmpty) {
    if (threadIdx.x == 0) out[blockIdx.x] = 1.f;
  } else {
    const int rows = kFeatures / cluster;
    const int unit = blockIdx.x / cluster, rank = blockIdx.x % cluster;
    float4* s = reinterpret_cast<float4*>(
        state + (static_cast<size_t>(unit) * kFeatures + rank * rows) * kDim);
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
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
  }
}

template <int W>
cudaError_t launch(float* state, float* out, int cluster, cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(kHeads * cluster);
  cfg.blockDim = dim3(kThreads);
  cfg.stream = stream;
  cudaLaunchAttribute attrs[2];
  attrs[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[0].val.programmaticStreamSerializationAllowed = 1;
  attrs[1].id = cudaLaunchAttributeClusterDimension;
  attrs[1].val.clusterDim.x = static_cast<unsigned>(cluster);
  attrs[1].val.clusterDim.y = attrs[1].val.clusterDim.z = 1;
  cfg.attrs = attrs;
  cfg.numAttrs = 2;
  return cudaLaunchKernelEx(&cfg, step_kernel<W>, state, out, cluster);
}

// Median microseconds per step over 21 replays of a graph of kSteps steps, after 200 to warm the
// clocks; negative when a launch fails.
template <int W>
double time_step(float* state, float* out, int cluster, cudaStream_t stream) {
  if (launch<W>(state, out, cluster, stream) != cudaSuccess ||
      cudaStreamSynchronize(stream) != cudaSuccess) {
    return -1.0;
  }
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
  for (int i = 0; i < kSteps; ++i)
    launch<W>(state, out, cluster, stream);
  if (cudaStreamEndCapture(stream, &graph) != cudaSuccess ||
      cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
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
    us.push_back(ms * 1e3 / kSteps);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

}  // namespace

int main() {
  const size_t state_bytes = sizeof(float) * kHeads * kFeatures * kDim;
  float *state = nullptr, *out = nullptr;
  cudaStream_t stream;
  if (cudaMalloc(&state, state_bytes) != cudaSuccess ||
      cudaMalloc(&out, sizeof(float) * kHeads * 8) != cudaSuccess ||
      cudaMemset(state, 0, state_bytes) != cudaSuccess ||
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    std::fprintf(stderr, "launch_floor: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  std::printf("decode step floor, B1 H32, graph of %d steps, us per step (median of 21)\n", kSteps);
  for (const int cluster : {1, 4}) {
    std::printf("C=%d empty %.2f  load+store %.2f  +3 barriers %.2f  +cluster barrier %.2f\n",
                cluster, time_step<kEmpty>(state, out, cluster, stream),
                time_step<kLoadStore>(state, out, cluster, stream),
                time_step<kBarriers>(state, out, cluster, stream),
                time_step<kCluster>(state, out, cluster, stream));
  }
  const cudaError_t err = cudaGetLastError();
  std::printf("%s\n", cudaGetErrorString(err));
  return err == cudaSuccess ? 0 : 1;
}
