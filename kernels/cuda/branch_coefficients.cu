// A hybrid call's branch coefficients c_w, c_l [B, Hq] from the window-factor logits omega [Hq]
// and omega's gradient back from theirs, one small launch each way: on a layer step's host these
// replace about ten LibTorch ops and their autograd nodes (bench/KERNEL_NOTES.md session 29 item
// 5). The formulas are branch_coefficients' (kernels/cpu/problem.cpp) for the hybrid mode.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/hybrid_attention_launch.hpp"

namespace hl::kernels::cuda {
namespace {

constexpr int kThreads = 128;

template <typename T>
__device__ float gate_of(const T* omega, int h) {
  return 1.f / (1.f + expf(-static_cast<float>(omega[h])));
}

template <typename T>
__global__ void coefficients_kernel(const T* omega, const uint8_t* drop, float* cw, float* cl,
                                    int batch, int heads, bool affine) {
  const int i = blockIdx.x * kThreads + threadIdx.x;  // b * heads + h
  if (i >= batch * heads) return;
  const float g = gate_of(omega, i % heads);
  const bool dropped = drop != nullptr && drop[i] != 0;
  cw[i] = dropped ? 0.f : g;
  cl[i] = dropped ? 1.f : (affine ? 1.f - g : 1.f);
}

// d omega_h = g (1 - g) sum_b (dc_w - [affine] dc_l) over the batch rows that keep the window,
// summed in batch order.
template <typename T>
__global__ void coefficients_backward_kernel(const T* omega, const uint8_t* drop, const float* dcw,
                                             const float* dcl, T* domega, int batch, int heads,
                                             bool affine) {
  const int h = blockIdx.x * kThreads + threadIdx.x;
  if (h >= heads) return;
  float sum = 0.f;
  for (int b = 0; b < batch; ++b) {
    const int i = b * heads + h;
    if (drop != nullptr && drop[i] != 0) continue;
    sum += affine ? dcw[i] - dcl[i] : dcw[i];
  }
  const float g = gate_of(omega, h);
  domega[h] = static_cast<T>(sum * g * (1.f - g));
}

int blocks_for(int n) {
  return (n + kThreads - 1) / kThreads;
}

}  // namespace

int launch_branch_coefficients(const void* omega, bool omega_bf16, const uint8_t* window_drop,
                               float* coef_window, float* coef_linear, int batch, int heads,
                               bool affine, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int blocks = blocks_for(batch * heads);
  if (omega_bf16) {
    coefficients_kernel<<<blocks, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(omega),
                                                    window_drop, coef_window, coef_linear, batch,
                                                    heads, affine);
  } else {
    coefficients_kernel<<<blocks, kThreads, 0, s>>>(static_cast<const float*>(omega), window_drop,
                                                    coef_window, coef_linear, batch, heads, affine);
  }
  return static_cast<int>(cudaGetLastError());
}

int launch_branch_coefficients_backward(const void* omega, bool omega_bf16,
                                        const uint8_t* window_drop, const float* dcoef_window,
                                        const float* dcoef_linear, void* domega, int batch,
                                        int heads, bool affine, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (omega_bf16) {
    coefficients_backward_kernel<<<blocks_for(heads), kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(omega), window_drop, dcoef_window, dcoef_linear,
        static_cast<__nv_bfloat16*>(domega), batch, heads, affine);
  } else {
    coefficients_backward_kernel<<<blocks_for(heads), kThreads, 0, s>>>(
        static_cast<const float*>(omega), window_drop, dcoef_window, dcoef_linear,
        static_cast<float*>(domega), batch, heads, affine);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace hl::kernels::cuda
