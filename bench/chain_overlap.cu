// How far the chains of several consumer warpgroups overlap on one SM (bench/KERNEL_NOTES.md,
// session 19): the question behind giving a backward kernel a second consumer. Each warpgroup
// loops over a step shaped like the window part of the backward's consumers, from shared memory
// only (no loads, so only issue, latency and the tensor cores count): two 64 x 64 products over
// K = 128 (q k^T and dy v^T), a wait, per score element the exponential, a window test, the two
// row sums and ds = e (dP x - dl x) packed to bf16 (kWork > 1: the exponential kWork - 1 more
// times, for heavier elementwise work), then ds k into a 64 x 128 accumulator with ds as the
// register operand, left in flight into the next step. One block per SM with 1, 2 or 3 such
// warpgroups (at 3 the compiler has 168 registers a thread and serialises the products, as a
// third heavy warpgroup in a real kernel would be). Built as hl_bench_chain_overlap wherever nvcc
// is; run on the GPU machine, no arguments.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "bench/cuda_bench.cuh"
#include "kernels/cuda/hopper.cuh"
#include "kernels/cuda/hybrid_tc_common.cuh"

namespace {

using namespace hl::kernels::cuda::detail;
using namespace hl::bench;

constexpr int kTile = 2 * kColumnBlockBytes;   // 64 rows x 128 columns
constexpr int kOperandBytes = 5 * kTile;       // q, k, dy, v (K-major), k again (N-major)
constexpr int kSmemBytes = 200 * 1024 + 1024;  // more than half an SM's: one block per SM
constexpr int kSteps = 2000, kLaunches = 5;

struct ChainParams {
  float* out;
  int steps;
  float scale, m, x, dlx;  // exponent scale and max, ds factors
  int lo, hi;              // the window's bounds in a row
};

template <int kGroups, int kWork>
__global__ void __launch_bounds__(128 * kGroups, 1) chain_kernel(const ChainParams p) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);
  // Small values: the timing does not depend on them, but the sum written at the end should be
  // finite so that a broken product shows.
  auto* words = reinterpret_cast<uint32_t*>(smem);
  for (int i = threadIdx.x; i < kOperandBytes / 4; i += blockDim.x)
    words[i] = pack_bf16(0.01f * (i % 7) - 0.03f, 0.01f * (i % 5) - 0.02f);
  fence_async_shared();  // the generic writes before the tensor cores read them
  __syncthreads();

  const int ct = threadIdx.x % 128;
  const uint32_t q = shared_address(smem), k = q + kTile, dy = q + 2 * kTile, v = q + 3 * kTile;
  const uint32_t k_rows = q + 4 * kTile;
  float s[32], dp[32], acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i)
    acc[i] = 0.f;
  float e_sum = 0.f, w_sum = 0.f;
  for (int step = 0; step < p.steps; ++step) {
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 8; ++ks)
      wgmma_ss_n64<0, 0>(s, k_major(q, ks), k_major(k, ks), ks > 0);
#pragma unroll
    for (int ks = 0; ks < 8; ++ks)
      wgmma_ss_n64<0, 0>(dp, k_major(dy, ks), k_major(v, ks), ks > 0);
    wgmma_commit();
    wgmma_wait<0>();  // also the previous step's ds k, which read `ds` below
    uint32_t ds[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        float pair[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int i = 8 * kk + 2 * r + e;
          const int off = (i / 4) * 8 + (i & 1) + 2 * (ct % 4);
          float ex = fast_exp2(fmaf(s[i], p.scale, -p.m));
#pragma unroll
          for (int extra = 1; extra < kWork; ++extra)  // heavier steps: the exponential again
            ex = fast_exp2(fmaf(ex, p.scale, fmaf(dp[i], p.x, -p.m)));
          ex = off > p.lo && off <= p.hi ? ex : 0.f;
          e_sum += ex;
          w_sum += ex * dp[i];
          pair[e] = ex * fmaf(dp[i], p.x, -p.dlx);
        }
        ds[kk][r] = pack_bf16(pair[0], pair[1]);
      }
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_rs<128, 1>(acc, ds[kk], n_major(k_rows, kk, kColumnBlockBytes), true);
    wgmma_commit();
  }
  wgmma_wait<0>();
  float sum = e_sum + w_sum;
#pragma unroll
  for (int i = 0; i < 64; ++i)
    sum += acc[i];
  p.out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

// Median microseconds of one launch over every SM, or a negative value when CUDA fails.
template <int kGroups, int kWork>
double launch_us(const ChainParams& p, int sms) {
  auto kernel = chain_kernel<kGroups, kWork>;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes) !=
      cudaSuccess) {
    return -1.0;
  }
  return median_launch_us(
      [&] {
        kernel<<<sms, 128 * kGroups, kSmemBytes>>>(p);
        return true;
      },
      kLaunches);
}

template <int kGroups, int kWork>
bool report(const ChainParams& p, int sms, double* one_group_us) {
  const double us = launch_us<kGroups, kWork>(p, sms);
  if (us < 0) {
    std::printf("%d warpgroups: CUDA error %s\n", kGroups, cudaGetErrorString(cudaGetLastError()));
    return false;
  }
  if (kGroups == 1) *one_group_us = us;
  // Steps an SM completes per microsecond, against one warpgroup's.
  const double rate = kGroups * p.steps / us, one = p.steps / *one_group_us;
  std::printf("work %d, %d warpgroups  %9.1f us  %6.1f ns a step a warpgroup  %5.2fx one's rate\n",
              kWork, kGroups, us, 1e3 * us / p.steps, rate / one);
  return true;
}

}  // namespace

int main() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess || prop.major < 9) {
    std::printf("chain_overlap: needs an sm_90 GPU\n");
    return 0;
  }
  sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs, %d steps a warpgroup, median of %d launches\n", prop.name, sms, kSteps,
              kLaunches);
  float* out = nullptr;
  if (cudaMalloc(&out, sizeof(float) * sms * 384) != cudaSuccess) return 1;
  const ChainParams p{out, kSteps, 0.125f, 0.5f, 0.25f, 0.0625f, 8, 40};
  double one = 0.0;
  const bool ok = report<1, 1>(p, sms, &one) && report<2, 1>(p, sms, &one) &&
                  report<3, 1>(p, sms, &one) && report<1, 2>(p, sms, &one) &&
                  report<2, 2>(p, sms, &one) && report<1, 4>(p, sms, &one) &&
                  report<2, 4>(p, sms, &one);
  std::vector<float> host(static_cast<size_t>(sms) * 384);
  cudaMemcpy(host.data(), out, sizeof(float) * host.size(), cudaMemcpyDeviceToHost);
  std::printf("check: first block's sum %g\n", host[0]);
  cudaFree(out);
  return ok ? 0 : 1;
}
