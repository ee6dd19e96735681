// Raw-pointer launchers of the fused paired activations of DESIGN §1's feature maps, the kinds
// that pair f(r) with f(-r): from the projection r [rows, p] to phi [rows, 2p], clamped at
// 1e-12, and back. One kernel each way instead of LibTorch's five or six (negate, softmaxes or
// exponentials, concatenate, clamp, and their backward), so phi costs one read of r and one
// write of phi.
#pragma once

#include <cstdint>

#include "kernels/cuda/hybrid_attention_launch.hpp"

namespace hl::kernels::cuda {

/// f of the pair [f(r), f(-r)].
enum class PairedActivation : int {
  kSoftmax = 0,  ///< hedgehog, hedgehog_full: [softmax(r), softmax(-r)]
  kExp = 1,      ///< exp: [exp(r - max r), exp(min r - r)]
};

/// Largest projection size p the kernels take.
inline constexpr int kPairedActivationMaxProjection = 256;

/// phi [rows, 2p] from r [rows, p], both dense in `dtype`; 0 < p <= 256.
int launch_paired_activation_forward(const void* r, void* phi, int64_t rows, int p,
                                     PairedActivation f, KernelDType dtype, void* stream);

/// dr [rows, p] from r and dphi [rows, 2p] (f and the clamp recomputed from r). For kExp the
/// gradient through max r and min r goes to the entries that attain them, shared equally
/// among ties, as LibTorch's amax / amin do.
int launch_paired_activation_backward(const void* r, const void* dphi, void* dr, int64_t rows,
                                      int p, PairedActivation f, KernelDType dtype, void* stream);

/// Projection size p of the fused hedgehog map kernels (F = 2p = 128 features).
inline constexpr int kHedgehogMapProjection = 64;

/// Whether the current device runs the fused hedgehog map kernels (an sm_90 GPU with their shared
/// memory) for head size `head_dim` (64 or 128).
bool hedgehog_map_supported(int head_dim);

/// Floats of launch_hedgehog_map_backward's workspace (per-block dW partials) for this shape.
int64_t hedgehog_map_workspace_floats(int units, int64_t rows, int head_dim);

/// phi [units, rows, 128] = [softmax(x W_h), softmax(-x W_h)] clamped at 1e-12 for unit
/// b * heads + h, from W [heads, head_dim, 64] and x [units / heads * x_heads, rows, head_dim]
/// (x_heads divides heads: grouped-query k, x head h / (heads / x_heads) serving map h), all
/// dense bf16: the projection and the activation in one kernel.
int launch_hedgehog_map_forward(const void* x, const void* w, void* phi, int units, int heads,
                                int x_heads, int64_t rows, int head_dim, void* stream);

/// The map's backward from x, W and dphi [units, rows, 128]: dW [heads, head_dim, 64] and each
/// unit's gradient of its x rows, dx [units, rows, head_dim] (not computed where null; with
/// x_heads < heads the caller sums each group), all bf16; z and the softmaxes are recomputed from
/// x. `workspace` holds hedgehog_map_workspace_floats() floats.
int launch_hedgehog_map_backward(const void* x, const void* w, const void* dphi, void* dx, void* dw,
                                 float* workspace, int units, int heads, int x_heads, int64_t rows,
                                 int head_dim, void* stream);

}  // namespace hl::kernels::cuda
