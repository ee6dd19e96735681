// The hedgehog feature map phi = [softmax(x W_h), softmax(-x W_h)] (clamped at 1e-12, p = 64
// projections, F = 128 features) with its projection inside, one Hopper kernel each way, for
// training at long sequences: LibTorch's matmul, the paired activation and their backward
// (matmul for dx, matmul for dW) write and read the projection z and its gradient through
// memory, ~1.07 GB at B1 H32 N16K d128; these move x and phi forward, x, dphi and dx backward
// (0.67 GB). The backward recomputes z and both softmaxes from x, forms dz in registers, takes
// dx = dz W_h^T from them and adds x^T dz into per-block dW partials that a second kernel sums
// in a fixed order (bench/KERNEL_NOTES.md session 28).
//
// A block is a producer warpgroup (one thread's TMA loads: W_h once, then x and, backward, dphi
// tiles through a ring) and two consumer warpgroups that take its tiles in turn, so that one's
// loads and products run under the other's softmax; registers move from the producer to the
// consumers as in the attention kernels. Each block takes a contiguous range of one (batch,
// head)'s 64-row tiles.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/feature_map_launch.hpp"
#include "kernels/cuda/hybrid_hopper.cuh"

namespace hl::kernels::cuda {
namespace {

using namespace detail;

constexpr int kP = kHedgehogMapProjection;  // 64: one column block
constexpr int kConsumers = 2;               // warpgroups
constexpr int kMapThreads = 128 * (1 + kConsumers);
constexpr int kProducerRegs = 24, kConsumerRegs = 240;
static_assert(regs_fit(kMapThreads, kProducerRegs + kConsumers * kConsumerRegs));
constexpr float kClampMin = 1e-12f;

struct MapParams {
  CUtensorMap x;    // [x units][rows][D]: unit b heads + h reads x unit b x_heads + h / group
  CUtensorMap w;    // [heads][D][64]
  CUtensorMap phi;  // [units][rows][128]: the forward's output, the backward's dphi
  CUtensorMap dx;   // backward, [units][rows][D]
  float* partials;  // backward: dW of each consumer, [blocks][kConsumers][D][64]
  int heads, x_heads, splits, tiles;  // tiles: 64-row tiles of a unit
};

// Offsets from the 1024-byte aligned base. A ring stage holds a tile's x (and dphi when
// kBackward); each consumer has its own dz tile (backward) and output staging (phi or dx).
template <int D, bool kBackward>
struct MapLayout {
  static constexpr int kXBlocks = D / 64;
  static constexpr int kStages = 4;
  static constexpr int kStageBytes = (kXBlocks + (kBackward ? 2 : 0)) * kBlock;
  static constexpr int kOutBlocks = kBackward ? kXBlocks : 2;
  static constexpr int kOwnBytes = (kOutBlocks + (kBackward ? 1 : 0)) * kBlock;
  static constexpr int kW = 0;
  static constexpr int kRing = kW + kXBlocks * kBlock;
  static constexpr int kOwn = kRing + kStages * kStageBytes;  // [consumer]: output, then dz
  static constexpr int kBars = kOwn + kConsumers * kOwnBytes;
  static constexpr int kSmemBytes = kBars + (2 * kStages + 1) * 8 + 1024;  // + alignment slack
};

// The block's unit, its head, the x unit it reads and its tiles [t0, t1).
struct BlockTiles {
  int unit, head, x_unit, t0, t1;
};
__device__ inline BlockTiles block_tiles(const MapParams& p) {
  const int unit = blockIdx.x / p.splits, split = blockIdx.x % p.splits;
  const int head = unit % p.heads;
  const int x_unit = (unit / p.heads) * p.x_heads + head / (p.heads / p.x_heads);
  return {unit, head, x_unit, split * p.tiles / p.splits, (split + 1) * p.tiles / p.splits};
}

// A block's shared memory, tiles and barriers and, in a consumer, its warpgroup's place.
struct MapBlock {
  uint8_t* smem;
  BlockTiles bt;
  uint64_t *full, *empty, *w_full;
  int c, ct, barrier;  // consumer warpgroup, its thread, its named barrier
  uint8_t* own;        // the consumer's output staging (then, backward, its dz tile)
};

// The producer's thread: W_h, then each tile's x (and dphi) into the ring.
template <int D, bool kBackward>
__device__ void produce(const MapParams& p, const MapBlock& k) {
  using L = MapLayout<D, kBackward>;
  const BlockTiles& bt = k.bt;
  mbar_expect_bytes(k.w_full, L::kXBlocks * kBlock);
  for (int b = 0; b < L::kXBlocks; ++b)
    tma_load_3d(k.smem + L::kW + b * kBlock, &p.w, 0, 64 * b, bt.head, k.w_full);
  for (int t = bt.t0; t < bt.t1; ++t) {
    const int i = t - bt.t0, s = i % L::kStages, use = i / L::kStages;
    if (use > 0) mbar_wait(k.empty + s, (use - 1) & 1);
    uint8_t* stage = k.smem + L::kRing + s * L::kStageBytes;
    mbar_expect_bytes(k.full + s, L::kStageBytes);
    for (int b = 0; b < L::kXBlocks; ++b)
      tma_load_3d(stage + b * kBlock, &p.x, 64 * b, kRows * t, bt.x_unit, k.full + s);
    if constexpr (kBackward) {
      for (int b = 0; b < 2; ++b)
        tma_load_3d(stage + (L::kXBlocks + b) * kBlock, &p.phi, 64 * b, kRows * t, bt.unit,
                    k.full + s);
    }
  }
}

// What both kernels start with: barriers, then the producer warpgroup's thread 0 streams the
// tiles and the function returns false there; in the consumers' threads it returns true once
// W_h has landed.
template <int D, bool kBackward>
__device__ bool start_block(const MapParams& p, MapBlock& k) {
  using L = MapLayout<D, kBackward>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  k.smem = align_1024(smem_raw);
  k.bt = block_tiles(p);
  uint64_t* bars = reinterpret_cast<uint64_t*>(k.smem + L::kBars);
  k.full = bars;
  k.empty = bars + L::kStages;
  k.w_full = bars + 2 * L::kStages;
  if (threadIdx.x == 0) {
    for (int s = 0; s < L::kStages; ++s) {
      mbar_init(k.full + s, 1);
      mbar_init(k.empty + s, 128);
    }
    mbar_init(k.w_full, 1);
    mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    regs_shrink<kProducerRegs>();
    if (threadIdx.x == 0) produce<D, kBackward>(p, k);
    return false;
  }
  regs_grow<kConsumerRegs>();
  k.c = threadIdx.x / 128 - 1;
  k.ct = threadIdx.x % 128;
  k.barrier = 1 + k.c;
  k.own = k.smem + L::kOwn + k.c * L::kOwnBytes;
  mbar_wait(k.w_full, 0);
  return true;
}

// Consumer c takes the block's tiles c, c + kConsumers, ...: tile t, its ring stage and the
// parity of that stage's fill.
struct TileTurn {
  int t, s;
  uint32_t parity;
};
template <int kStages>
__device__ inline TileTurn turn(const BlockTiles& bt, int i) {
  return {bt.t0 + i, i % kStages, static_cast<uint32_t>(i / kStages) & 1};
}

template <int D>
__global__ void __launch_bounds__(kMapThreads, 1)
    hedgehog_forward_kernel(const __grid_constant__ MapParams p) {
  await_previous_kernel();
  using L = MapLayout<D, false>;
  MapBlock k;
  if (!start_block<D, false>(p, k)) return;
  const int ct = k.ct, barrier = k.barrier;
  const BlockTiles& bt = k.bt;
  uint8_t* const own = k.own;
  const uint32_t w_addr = shared_address(k.smem + L::kW), out = shared_address(own);
  for (int i = k.c; i < bt.t1 - bt.t0; i += kConsumers) {
    const TileTurn tt = turn<L::kStages>(bt, i);
    mbar_wait(k.full + tt.s, tt.parity);
    float r[32], pos[32];
    project_tile<D>(r, shared_address(k.smem + L::kRing + tt.s * L::kStageBytes), w_addr);
    mbar_arrive(k.empty + tt.s);
    hedgehog_pair(r, pos);
    // This consumer's previous store has read the staging tile (issued a tile ago).
    if (ct == 0) bulk_wait_read();
    named_barrier(barrier, 128);
    stage_tile<64>(out, pos, 1.f, 1.f, ct);
    stage_tile<64>(out + kBlock, r, 1.f, 1.f, ct);
    fence_async_shared();
    named_barrier(barrier, 128);
    if (ct == 0) {
      tma_store_3d(&p.phi, own, 0, kRows * tt.t, bt.unit);
      tma_store_3d(&p.phi, own + kBlock, 64, kRows * tt.t, bt.unit);
      bulk_commit();
    }
  }
  if (ct == 0) bulk_wait();
}

// dz of a tile from the projections r (replaced), dphi in the stage's two column blocks at
// `g_addr` and the softmaxes before the clamp: with a = softmax(r), b = softmax(-r) and g, h
// the gradients of their clamped copies (0 where the clamp held),
//   dz = a (g - <g, a>) - b (h - <h, b>)   (kernels/cuda/feature_map.cu's paired_grad).
__device__ inline void hedgehog_grad(float (&r)[32], uint32_t g_addr, int warp, int g8, int t4) {
  float a[32];
  hedgehog_half<false, false>(r, a);
  hedgehog_half<true, false>(r, r);
  // Entry i of the fragment: row 16 warp + g8 (+ 8 for bit 1 of i), column 8 (i / 4) + 2 t4
  // (+ 1 for bit 0); each pair is one 4-byte read of dphi.
  const auto grads = [&](int n, int hf, float(&g)[2], float(&h)[2]) {
    const uint32_t at = g_addr + swizzled_offset(16 * warp + g8 + 8 * hf, 8 * n + 2 * t4, kBlock);
    uint32_t gp, hp;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(gp) : "r"(at));
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(hp) : "r"(at + kBlock));
    const float2 gf = unpack_bf16(gp), hf2 = unpack_bf16(hp);
    const int i = 4 * n + 2 * hf;
    g[0] = a[i] >= kClampMin ? gf.x : 0.f;
    g[1] = a[i + 1] >= kClampMin ? gf.y : 0.f;
    h[0] = r[i] >= kClampMin ? hf2.x : 0.f;
    h[1] = r[i + 1] >= kClampMin ? hf2.y : 0.f;
  };
  float dot_a[2] = {0.f, 0.f}, dot_b[2] = {0.f, 0.f};
#pragma unroll
  for (int n = 0; n < 8; ++n) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float g[2], h[2];
      grads(n, hf, g, h);
      const int i = 4 * n + 2 * hf;
      dot_a[hf] += g[0] * a[i] + g[1] * a[i + 1];
      dot_b[hf] += h[0] * r[i] + h[1] * r[i + 1];
    }
  }
  quad_sum(dot_a[0], dot_a[1], dot_b[0], dot_b[1]);
  // dphi is read a second time rather than held (64 registers more across the sums).
#pragma unroll
  for (int n = 0; n < 8; ++n) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float g[2], h[2];
      grads(n, hf, g, h);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int i = 4 * n + 2 * hf + e;
        r[i] = a[i] * (g[e] - dot_a[hf]) - r[i] * (h[e] - dot_b[hf]);
      }
    }
  }
}

template <int D, bool kDx>
__global__ void __launch_bounds__(kMapThreads, 1)
    hedgehog_backward_kernel(const __grid_constant__ MapParams p) {
  await_previous_kernel();
  using L = MapLayout<D, true>;
  MapBlock k;
  if (!start_block<D, true>(p, k)) return;
  const int ct = k.ct, barrier = k.barrier;
  const int warp = ct / 32, lane = ct % 32, g8 = lane / 4, t4 = lane % 4;
  const BlockTiles& bt = k.bt;
  uint8_t* const own = k.own;
  const uint32_t w_addr = shared_address(k.smem + L::kW);
  const uint32_t dz_tile = shared_address(own + L::kOutBlocks * kBlock);
  float dw[L::kXBlocks][32] = {};  // rows 64 b + ... of dW: x^T dz over this consumer's tiles
  for (int i = k.c; i < bt.t1 - bt.t0; i += kConsumers) {
    const TileTurn tt = turn<L::kStages>(bt, i);
    const uint32_t stage = shared_address(k.smem + L::kRing + tt.s * L::kStageBytes);
    mbar_wait(k.full + tt.s, tt.parity);
    float r[32];
    project_tile<D>(r, stage, w_addr);
    hedgehog_grad(r, stage + L::kXBlocks * kBlock, warp, g8, t4);
    uint32_t a[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        a[kk][j] = pack_bf16(r[8 * kk + 2 * j], r[8 * kk + 2 * j + 1]);
    }
    // Every warp's products of the previous tile have read dz, and its dx store has read the
    // staging tile.
    if (kDx && ct == 0) bulk_wait_read();
    named_barrier(barrier, 128);
    stage_operand(dz_tile, a, warp, g8, t4);
    fence_async_shared();
    named_barrier(barrier, 128);
    float dx[D / 2];
    wgmma_fence();
    if constexpr (kDx) {
      // dx = dz W_h^T: W_h [D][64] read K-major (its rows are dx's columns).
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma_rs<D, 0>(dx, a[kk], k_major(w_addr, kk), kk > 0);
    }
    // dW rows 64 b.. += x^T dz: x's column block b read M-major, dz N-major, K = the 64 rows.
#pragma unroll
    for (int b = 0; b < L::kXBlocks; ++b) {
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        wgmma_ss<64, 1, 1>(dw[b], n_major(stage + b * kBlock, ks, kBlock),
                           n_major(dz_tile, ks, kBlock), true);
    }
    wgmma_commit();
    wgmma_wait<0>();
    mbar_arrive(k.empty + tt.s);
    if constexpr (kDx) {
      store_tile<D>(&p.dx, own, dx, 1.f, 1.f, kRows * tt.t, bt.unit, ct, barrier,
                    /*wait_read=*/false);
    }
  }
  if (kDx && ct == 0) bulk_wait();
  // This consumer's dW: rows 64 b + 16 warp + g8 (+ 8), columns 8 n + 2 t4 (+ 1).
  float* out = p.partials + (static_cast<int64_t>(blockIdx.x) * kConsumers + k.c) * D * kP;
#pragma unroll
  for (int b = 0; b < L::kXBlocks; ++b) {
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int row = 64 * b + 16 * warp + g8 + 8 * hf, col = 8 * n + 2 * t4;
        *reinterpret_cast<float2*>(out + row * kP + col) =
            make_float2(dw[b][4 * n + 2 * hf], dw[b][4 * n + 2 * hf + 1]);
      }
    }
  }
}

// dW[h] = the partials of head h's consumers (batch-major, then split, then consumer), summed in
// that order.
struct SumParams {
  const float* partials;
  __nv_bfloat16* dw;
  int batch, heads, parts, per_block;  // parts: partials a unit (splits x consumers)
};
__global__ void sum_partials_kernel(const SumParams p) {
  await_previous_kernel();
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= p.heads * p.per_block) return;
  const int h = e / p.per_block, at = e % p.per_block;
  float sum = 0.f;
  for (int b = 0; b < p.batch; ++b) {
    const float* unit = p.partials + static_cast<int64_t>(b * p.heads + h) * p.parts * p.per_block;
    for (int s = 0; s < p.parts; ++s)
      sum += unit[s * p.per_block + at];
  }
  p.dw[e] = __float2bfloat16_rn(sum);
}

// Blocks per unit: as many as fill the chip's SMs in one wave, at most one per tile.
int splits_of(int units, int64_t rows) {
  const int tiles = static_cast<int>((rows + kRows - 1) / kRows);
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  return std::clamp(sms / std::max(units, 1), 1, std::max(tiles, 1));
}

template <int D, bool kBackward>
cudaError_t run(MapParams& p, const void* x, const void* w, const void* phi, void* dx, int units,
                int64_t rows, bool want_dx, cudaStream_t stream) {
  using L = MapLayout<D, kBackward>;
  const int n = static_cast<int>(rows);
  if (!make_map(&p.x, x, D, n, units / p.heads * p.x_heads) || !make_map(&p.w, w, kP, D, p.heads) ||
      !make_map(&p.phi, phi, 2 * kP, n, units) || !make_map(&p.dx, dx, D, n, units)) {
    return cudaErrorInvalidValue;
  }
  const int blocks = units * p.splits;
  if constexpr (!kBackward)
    return launch_smem(hedgehog_forward_kernel<D>, blocks, kMapThreads, L::kSmemBytes, p, stream);
  return want_dx ? launch_smem(hedgehog_backward_kernel<D, true>, blocks, kMapThreads,
                               L::kSmemBytes, p, stream)
                 : launch_smem(hedgehog_backward_kernel<D, false>, blocks, kMapThreads,
                               L::kSmemBytes, p, stream);
}

MapParams params(int heads, int x_heads, int units, int64_t rows, float* partials) {
  MapParams p{};
  p.heads = heads;
  p.x_heads = x_heads;
  p.splits = splits_of(units, rows);
  p.tiles = static_cast<int>((rows + kRows - 1) / kRows);
  p.partials = partials;
  return p;
}

// Whether the kernels take this shape (the device aside).
bool valid_shape(int units, int heads, int x_heads, int64_t rows) {
  return rows >= 1 && rows <= INT32_MAX && heads >= 1 && x_heads >= 1 && units % heads == 0 &&
         heads % x_heads == 0;
}

}  // namespace

// hopper_device() checks for the attention forward's shared memory, which covers the map's.
static_assert(MapLayout<128, true>::kSmemBytes <= Layout<128, 128>::kSmemBytes);

bool hedgehog_map_supported(int head_dim) {
  return (head_dim == 64 || head_dim == 128) && detail::hopper_device();
}

int64_t hedgehog_map_workspace_floats(int units, int64_t rows, int head_dim) {
  return static_cast<int64_t>(units) * splits_of(units, rows) * kConsumers * head_dim * kP;
}

int launch_hedgehog_map_forward(const void* x, const void* w, void* phi, int units, int heads,
                                int x_heads, int64_t rows, int head_dim, void* stream) {
  if (!hedgehog_map_supported(head_dim) || !valid_shape(units, heads, x_heads, rows))
    return cudaErrorInvalidValue;
  MapParams p = params(heads, x_heads, units, rows, nullptr);
  const auto s = static_cast<cudaStream_t>(stream);
  return head_dim == 64 ? run<64, false>(p, x, w, phi, nullptr, units, rows, false, s)
                        : run<128, false>(p, x, w, phi, nullptr, units, rows, false, s);
}

int launch_hedgehog_map_backward(const void* x, const void* w, const void* dphi, void* dx, void* dw,
                                 float* workspace, int units, int heads, int x_heads, int64_t rows,
                                 int head_dim, void* stream) {
  if (!hedgehog_map_supported(head_dim) || !valid_shape(units, heads, x_heads, rows))
    return cudaErrorInvalidValue;
  MapParams p = params(heads, x_heads, units, rows, workspace);
  const auto s = static_cast<cudaStream_t>(stream);
  cudaError_t err = head_dim == 64
                        ? run<64, true>(p, x, w, dphi, dx, units, rows, dx != nullptr, s)
                        : run<128, true>(p, x, w, dphi, dx, units, rows, dx != nullptr, s);
  if (err != cudaSuccess) return err;
  const int per_block = head_dim * kP, total = heads * per_block;
  const SumParams sp{workspace, static_cast<__nv_bfloat16*>(dw), units / heads,
                     heads,     p.splits * kConsumers,           per_block};
  return launch_chained(sum_partials_kernel, dim3((total + 255) / 256), dim3(256), 0, s, sp);
}

}  // namespace hl::kernels::cuda
