// Raw-pointer launchers of the fused hedgehog activation (DESIGN §1 feature maps): from the
// projection r [rows, p] to phi = [softmax(r), softmax(-r)] clamped at 1e-12, [rows, 2p], and
// back. One kernel each way instead of LibTorch's six (negate, two softmaxes, concatenate,
// clamp, and their backward), so phi costs one read of r and one write of phi.
#pragma once

#include <cstdint>

#include "kernels/cuda/hybrid_attention_launch.hpp"

namespace hl::kernels::cuda {

/// Largest projection size p the kernels take.
inline constexpr int kHedgehogMaxProjection = 256;

/// phi [rows, 2p] from r [rows, p], both dense in `dtype`; 0 < p <= kHedgehogMaxProjection.
int launch_hedgehog_forward(const void* r, void* phi, int64_t rows, int p, KernelDType dtype,
                            void* stream);

/// dr [rows, p] from r and dphi [rows, 2p] (softmax and clamp recomputed from r).
int launch_hedgehog_backward(const void* r, const void* dphi, void* dr, int64_t rows, int p,
                             KernelDType dtype, void* stream);

}  // namespace hl::kernels::cuda
