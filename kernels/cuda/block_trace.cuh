// Per-block timeline of the step's Hopper kernels, compiled in with -DHL_BLOCK_TRACE=ON (cmake):
// each traced block records its SM, when it became resident, when it passed
// start_kernel and when its last warp left. The device has no nsys and ncu serialises
// kernels, so this is how the kernels' overlap within a step is seen (scripts/gpu-trace.sh).
// Without the option HL_TRACED_START is start_kernel (HL_TRACED_AWAIT: await_previous_kernel),
// and its kernel argument (of namespace block_trace, which is not declared then) is not compiled.
#pragma once

#include "kernels/cuda/hybrid_common.cuh"

#ifdef HL_BLOCK_TRACE
#include <cstdint>
#include <cstdio>

namespace hl::kernels::cuda::detail::block_trace {

/// The traced kernels; a block's record sits at [kernel][blockIdx.x % kMaxBlocks].
enum Kernel : int {
  kStatePass,        // the chunk-state pass, unscaled (the forward's)
  kScaledStatePass,  // the chunk-state pass, scaled (the backward's reverse pass)
  kForward,
  kQuery,
  kUCombine,
  kFusedKey,
  kKernels
};
constexpr int kMaxBlocks = 4096;

// One buffer per translation unit (no relocatable device code): each writes its own kernels'.
static __device__ uint64_t g_records[kKernels * kMaxBlocks * 4];

__device__ inline uint64_t now() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

/// Stamps one block of kernel kKernel: resident and start times when made, the end when the
/// block's warps leave its scope.
template <int kKernel>
struct Block {
  __device__ static uint64_t* record() {
    return g_records + (kKernel * kMaxBlocks + blockIdx.x % kMaxBlocks) * 4;
  }
  __device__ explicit Block(uint64_t resident) {
    if (threadIdx.x == 0) {
      uint32_t sm;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
      record()[0] = resident;
      record()[1] = now();
      record()[3] = sm;
    }
  }
  // Every warp, at whichever return it takes; the records of earlier launches hold older
  // times, so the maximum is this launch's.
  __device__ ~Block() {
    if (threadIdx.x % 32 == 0)
      atomicMax(reinterpret_cast<unsigned long long*>(record() + 2), now());
  }
};

/// Writes this translation unit's records, one line a block: unit kernel block resident_ns
/// start_ns end_ns sm (the last launch of each kernel).
inline void write(const char* unit, FILE* out) {
  static uint64_t host[kKernels * kMaxBlocks * 4];
  if (cudaMemcpyFromSymbol(host, g_records, sizeof(host)) != cudaSuccess) return;
  for (int k = 0; k < kKernels; ++k) {
    for (int b = 0; b < kMaxBlocks; ++b) {
      const uint64_t* r = host + (k * kMaxBlocks + b) * 4;
      if (r[1] == 0) continue;
      std::fprintf(out, "%s %d %d %llu %llu %llu %llu\n", unit, k, b,
                   static_cast<unsigned long long>(r[0]), static_cast<unsigned long long>(r[1]),
                   static_cast<unsigned long long>(r[2]), static_cast<unsigned long long>(r[3]));
    }
  }
}

}  // namespace hl::kernels::cuda::detail::block_trace

#define HL_TRACED_START(kernel, wait)                                                 \
  const uint64_t hl_block_resident = ::hl::kernels::cuda::detail::block_trace::now(); \
  start_kernel(wait);                                                                 \
  const ::hl::kernels::cuda::detail::block_trace::Block<(kernel)> hl_block_trace(hl_block_resident)
#else
#define HL_TRACED_START(kernel, wait) start_kernel(wait)
#endif
#define HL_TRACED_AWAIT(kernel) HL_TRACED_START(kernel, true)
