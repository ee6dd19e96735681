// The compute side of the planned fused key kernel (bench/KERNEL_NOTES.md, "Next"), timed on its
// own before the kernel is built: does one 64-key block's work, done as two 32-key halves by
// three warpgroups, fit the ~5.1 us that the block's 148 KB of DRAM traffic take at 3.8 TB/s
// (132 SMs)? D = F = 128, one block per SM, operands resident in shared memory (values do not
// matter for the timing), per 64-key block:
//   scores warpgroup, per half: S and dP of the two row chunks and the linear chunk's phi_q
//     phi_k^T (five m64n32 products, K = 128), ~10 instructions a score element, the five
//     staged bf16 tiles (pw, ds of both chunks, du) written by stmatrix .trans;
//   dv warpgroup, per half: dv^T = U^T phi_k^T + dy^T pw of both chunks, dphi_k^T rows 0-63 =
//     U_lo v^T (A from its U registers) + phi_q^T du, staged out (stmatrix .trans) and sent by a
//     bulk store; after the block the fold of its U half (ldmatrix .trans of phi_q, m64n128)
//     and its publish in bf16;
//   dk warpgroup, per half: dk^T = q^T ds of both chunks, dphi_k^T rows 64-127, the same;
//   one producer thread: the block's incoming bytes as bulk copies from an L2-resident buffer
//     into scratch shared memory, paced by the halves, so that the tensor cores' operand reads
//     compete with the writes a real kernel's loads make.
// Prints ns per 64-key block (median of launches) for scores in row orientation (the plan) and
// in key orientation, with the fold issued early and the publish by stmatrix, and ablations
// (timing only). Built as hl_bench_fused_key_step wherever nvcc is; run on the GPU machine
// (an argument N: run N alone). bench/fused_key_proto.cu is the kernel itself.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/cuda_bench.cuh"
#include "kernels/cuda/hybrid_hopper.cuh"  // swizzled_offset, load_fold_operand, hopper.cuh

namespace {

using namespace hl::kernels::cuda::detail;
using namespace hl::bench;

constexpr int kBlk = kColumnBlockBytes;  // 64 rows of 128 bytes
constexpr int kUBlock = 128 * 128;       // U's copy: 128 feature rows of one 64-column block
constexpr int kHalfTile = 32 * 128;      // 32 rows of 128 bytes (a staged tile)
// Shared memory (from a 1024-aligned base): the key tile (k, v, phi_k: 64 keys x 128 each),
// q and dy of row chunks b and b + 1, phi_q of chunk b + 1, U's bf16 copy, the five staged
// tiles, the two key-side warpgroups' output staging (dv^T or dk^T: 32 keys x 128, dphi_k^T
// half: 32 keys x 64), the producer's scratch (two 8 KB slots).
constexpr int kK = 0, kV = 2 * kBlk, kPk = 4 * kBlk;
constexpr int kQ0 = 6 * kBlk, kDy0 = 8 * kBlk, kQ1 = 10 * kBlk, kDy1 = 12 * kBlk;
constexpr int kPq = 14 * kBlk;
constexpr int kU = 16 * kBlk;
constexpr int kStage = kU + 2 * kUBlock;  // pw_b, pw_b1, ds_b, ds_b1, du: 32 or 64 keys each
constexpr int kOut = kStage + 5 * kBlk;
constexpr int kOutBytes = 3 * kHalfTile;  // per key-side warpgroup
// The producer's scratch lies over the output staging: both only stand for shared-memory
// traffic here, and a real kernel's loads and stores use buffers the layout has no room for
// beside these.
constexpr int kScratch = kOut;
constexpr int kScratchSlot = 8 * 1024;
constexpr int kRowValues = kOut + 2 * kOutBytes;  // key orientation: (max, delta) per row
constexpr int kBarOff = kRowValues + 2 * kRows * 8;
constexpr int kZOff = kBarOff + 64;  // publish_state's z of each key-side warpgroup
constexpr int kSmemBytes = kZOff + 2 * 256 + 1024;
static_assert(kSmemBytes <= 227 * 1024, "more shared memory than an SM has");
constexpr int kBlocks = 400;  // 64-key blocks a launch walks

struct StepParams {
  const uint8_t* source;  // the producer's bulk copies read from here (L2-resident)
  uint8_t* sink;          // the key-side warpgroups' output stores go here
  float* out;
  int blocks;
  int skip;  // ablations: the parts named by the kSkip bits are left out
};
constexpr int kSkipProducer = 1, kSkipOutputs = 2, kSkipScores = 4, kSkipKeySide = 8,
              kSkipFold = 16;

__device__ inline void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(dst),
      "l"(src), "r"(bytes), "r"(shared_address(bar))
      : "memory");
}

__device__ inline void bulk_store(void* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
               "r"(bytes)
               : "memory");
}

// kKeyScores: the scores in key orientation (m64n64 over the 64-key tile, a chunk's rows as N,
// row values per element from shared memory) instead of row orientation per 32-key half.
// kEarlyFold: at a block's end, the fold is issued right after the products that read U (U v^T,
// U^T phi_k^T) and the publish runs while the half's other products do, instead of after them
// all. kStsm: the publish by stmatrix.
template <bool kKeyScores, bool kEarlyFold, bool kStsm = false>
__global__ void __launch_bounds__(512, 1) step_kernel(const StepParams p) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);
  auto* words = reinterpret_cast<uint32_t*>(smem);
  for (int i = threadIdx.x; i < kBarOff / 4; i += blockDim.x)
    words[i] = pack_bf16(0.01f * (i % 7) - 0.03f, 0.01f * (i % 5) - 0.02f);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + kBarOff);
  uint64_t* stage_full = bars;       // the scores warpgroup staged a half's (block's) tiles
  uint64_t* stage_empty = bars + 1;  // both key-side warpgroups are done with them
  uint64_t* copied = bars + 2;       // [2] the producer's scratch slots
  if (threadIdx.x == 0) {
    mbar_init(stage_full, 128);
    mbar_init(stage_empty, 256);
    mbar_init(copied, 1);
    mbar_init(copied + 1, 1);
    mbar_init_fence();
  }
  fence_async_shared();
  __syncthreads();
  const uint32_t sbase = shared_address(smem);
  const int wg = threadIdx.x / 128, ct = threadIdx.x % 128;
  const int warp = ct / 32, lane = ct % 32, t4 = lane % 4;
  const int halves = 2 * p.blocks;
  // Registers: 24 + scores + 2 key sides = 512 (the row orientation's scores need fewer).
  constexpr int kScoresRegs = kKeyScores ? 152 : 136, kKeyRegs = kKeyScores ? 168 : 176;
  // The staged tiles: per half (32 keys) in row orientation, per block (64 keys) in key
  // orientation, where half h reads key rows 32 h on.
  constexpr int kStageTile = kKeyScores ? kBlk : kHalfTile;
  constexpr int kHalvesPerStage = kKeyScores ? 2 : 1;
  float sink = 0.f;

  if (wg == 0) {
    regs_shrink<24>();
    if (threadIdx.x == 0) {
      // 74 KB a half (148 KB a block) in 8 KB copies into two alternating slots.
      int copies = 0;
      for (int h = 0; h < halves; h += kHalvesPerStage) {
        mbar_wait(stage_full, (h / kHalvesPerStage) & 1);
        if (p.skip & kSkipProducer) continue;
        for (int c = 0; c < 9 * kHalvesPerStage; ++c, ++copies) {
          const int slot = copies % 2;
          if (copies >= 2) mbar_wait(copied + slot, ((copies - 2) / 2) & 1);
          mbar_expect_bytes(copied + slot, kScratchSlot);
          bulk_load(sbase + kScratch + slot * kScratchSlot,
                    p.source + (static_cast<size_t>(blockIdx.x % 16) * 64 + copies % 64) * 1024,
                    kScratchSlot, copied + slot);
        }
      }
      for (int c = max(copies - 2, 0); c < copies; ++c)
        mbar_wait(copied + c % 2, (c / 2) & 1);
    }
  } else if (wg == 1) {
    regs_grow<kScoresRegs>();
    const float scale = 0.088f, m = 0.5f, x = 0.25f, delta = 0.125f, gate = 0.01f;
    const int lim = (ct * 7) % 32;
    if constexpr (kKeyScores) {
      const float4* rows = reinterpret_cast<const float4*>(smem + kRowValues);
      const int key_a = 16 * warp + lane / 4, key_b = key_a + 8;
      auto issue = [&](float(&a)[32], uint32_t a_addr, uint32_t b_addr) {
        if (p.skip & kSkipScores) return;
#pragma unroll
        for (int ks = 0; ks < 8; ++ks)
          wgmma_ss_n64<0, 0>(a, k_major(sbase + a_addr, ks), k_major(sbase + b_addr, ks), ks > 0);
      };
      for (int b = 0; b < p.blocks; ++b) {
        float st[32], dpt[32], plt[32];
        uint32_t pw[4][4], ds[4][4], du[4][4];
        wgmma_fence();
        issue(st, kK, kQ1);
        issue(dpt, kV, kDy1);
        issue(plt, kPk, kPq);
        wgmma_commit();
        wgmma_wait<0>();
        // Element (kk, r, e): key key_a (r even) or key_b, row 16 kk + 8 (r / 2) + 2 t4 + e of
        // the chunk, whose (max, delta) pair comes from shared memory once per two rows.
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int il = 16 * kk + 8 * hh + 2 * t4;
            const float4 f = rows[il / 2];
#pragma unroll
            for (int r = 2 * hh; r < 2 * hh + 2; ++r) {
              float a[3][2];
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int i = 8 * kk + 2 * r + e;
                const bool in_w = il + e < ((r & 1) ? key_b : key_a);
                const float mx = e ? f.z : f.x, dl = e ? f.w : f.y;
                const float ex = fast_exp2(fmaf(st[i], scale, -mx));
                const float d = dpt[i] - dl;
                a[0][e] = in_w ? ex : plt[i] * x;
                a[1][e] = in_w ? ex * d : 0.f;
                a[2][e] = in_w ? 0.f : d * x;
              }
              pw[kk][r] = pack_bf16(a[0][0], a[0][1]);
              ds[kk][r] = pack_bf16(a[1][0], a[1][1]);
              du[kk][r] = pack_bf16(a[2][0], a[2][1]);
            }
          }
        }
        if (b > 0) mbar_wait(stage_empty, (b - 1) & 1);
        const uint32_t stage = sbase + kStage;
        stage_operand(stage + kBlk, pw, warp, lane / 4, t4);
        stage_operand(stage + 3 * kBlk, ds, warp, lane / 4, t4);
        stage_operand(stage + 4 * kBlk, du, warp, lane / 4, t4);
        wgmma_fence();
        issue(st, kK, kQ0);
        issue(dpt, kV, kDy0);
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int il = 16 * kk + 8 * hh + 2 * t4;
            const float4 f = rows[kRows / 2 + il / 2];
#pragma unroll
            for (int r = 2 * hh; r < 2 * hh + 2; ++r) {
              float a[2][2];
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int i = 8 * kk + 2 * r + e;
                const int key = (r & 1) ? key_b : key_a;
                const bool in = il + e >= key;
                const float mx = e ? f.z : f.x, dl = e ? f.w : f.y;
                const float ex = in ? fast_exp2(fmaf(st[i], scale, -mx)) : 0.f;
                a[0][e] = ex;
                a[1][e] = fmaf(ex, dpt[i] - dl, il + e == key + lim ? -gate : 0.f);
              }
              pw[kk][r] = pack_bf16(a[0][0], a[0][1]);
              ds[kk][r] = pack_bf16(a[1][0], a[1][1]);
            }
          }
        }
        stage_operand(stage, pw, warp, lane / 4, t4);
        stage_operand(stage + 2 * kBlk, ds, warp, lane / 4, t4);
        fence_async_shared();
        mbar_arrive(stage_full);
      }
    } else {
      for (int h = 0; h < halves; ++h) {
        const uint32_t half = (h & 1) * 32 * 128;
        float s1[16], dp1[16], pl[16], s0[16], dp0[16];
        wgmma_fence();
        const bool products = !(p.skip & kSkipScores);
        if (products) {
#pragma unroll
          for (int ks = 0; ks < 8; ++ks) {
            wgmma_ss_n32<0, 0>(s1, k_major(sbase + kQ1, ks), k_major(sbase + kK + half, ks),
                               ks > 0);
            wgmma_ss_n32<0, 0>(dp1, k_major(sbase + kDy1, ks), k_major(sbase + kV + half, ks),
                               ks > 0);
            wgmma_ss_n32<0, 0>(pl, k_major(sbase + kPq, ks), k_major(sbase + kPk + half, ks),
                               ks > 0);
          }
        }
        wgmma_commit();
        if (products) {
#pragma unroll
          for (int ks = 0; ks < 8; ++ks) {
            wgmma_ss_n32<0, 0>(s0, k_major(sbase + kQ0, ks), k_major(sbase + kK + half, ks),
                               ks > 0);
            wgmma_ss_n32<0, 0>(dp0, k_major(sbase + kDy0, ks), k_major(sbase + kV + half, ks),
                               ks > 0);
          }
        }
        wgmma_commit();
        wgmma_wait<1>();
        // Chunk b + 1: the window's weights where the key is in the window, the linear part's
        // p / D elsewhere (the masks are complementary), ds on the window, du on the linear part.
        float pw1[16], ds1[16], du[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          const int off = (i / 4) * 8 + (i & 1) + 2 * t4;
          const bool in_w = off < lim;
          const float ex = fast_exp2(fmaf(s1[i], scale, -m));
          const float d = dp1[i] - delta;
          pw1[i] = in_w ? ex : pl[i] * x;
          ds1[i] = in_w ? ex * d : 0.f;
          du[i] = in_w ? 0.f : d * x;
        }
        wgmma_wait<0>();
        float pw0[16], ds0[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          const int off = (i / 4) * 8 + (i & 1) + 2 * t4;
          const bool in = off >= lim;
          const float ex = in ? fast_exp2(fmaf(s0[i], scale, -m)) : 0.f;
          pw0[i] = ex;
          ds0[i] = fmaf(ex, dp0[i] - delta, off == lim ? -gate : 0.f);
        }
        if (h > 0) mbar_wait(stage_empty, (h - 1) & 1);
        const uint32_t st = sbase + kStage;
        stage_trans_n32(st, pw0, 1.f, 0, warp, lane, kBlk);
        stage_trans_n32(st + kHalfTile, pw1, 1.f, 0, warp, lane, kBlk);
        stage_trans_n32(st + 2 * kHalfTile, ds0, 1.f, 0, warp, lane, kBlk);
        stage_trans_n32(st + 3 * kHalfTile, ds1, 1.f, 0, warp, lane, kBlk);
        stage_trans_n32(st + 4 * kHalfTile, du, 1.f, 0, warp, lane, kBlk);
        fence_async_shared();
        mbar_arrive(stage_full);
      }
    }
  } else {
    // Key side: wg 2 holds U rows 0-63 and dv^T, wg 3 U rows 64-127 and dk^T; each half of
    // dphi_k^T's rows.
    regs_grow<kKeyRegs>();
    const bool dv_side = wg == 2;
    const int f0 = dv_side ? 0 : 64;
    float u[1][64];  // this side's U half as publish_state takes it
#pragma unroll
    for (int i = 0; i < 64; ++i)
      u[0][i] = 0.001f * ((i + ct) % 13);
    const uint32_t st = sbase + kStage;
    const uint32_t out = sbase + kOut + (dv_side ? 0 : kOutBytes);
    uint8_t* sink_at = p.sink + (static_cast<size_t>(blockIdx.x) * 2 + (wg - 2)) * kOutBytes;
    // The block's end: fold chunk b + 1 into this U half (A = (phi_q / D)^T by ldmatrix .trans,
    // B = dy N-major; issue only), and publish U once both sides' products that read its copy
    // are done.
    auto fold_u = [&] {
      uint32_t fa[4][1][4];
      load_fold_operand<1>(fa, smem + kPq + (f0 / 64) * kBlk, warp, lane,
                           [&](uint32_t(&frag)[4], int, int) {
#pragma unroll
                             for (int r = 0; r < 4; ++r)
                               frag[r] ^= 0x00010001u;  // stands in for the 1 / D scaling
                           });
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma_rs<128, 1>(u[0], fa[kk][0], n_major(sbase + kDy1, kk, kBlk), true);
    };
    auto publish_u = [&] {
      named_barrier(1, 256);  // both sides' reads of U's copy are done
      float zero[1][2] = {{0.f, 0.f}};
      if (kStsm && !(p.skip & kSkipFold)) {
        publish_rows_stsm(sbase + kU + (f0 + 16 * warp) * 128, u[0], 1.f, lane, kUBlock);
        fence_async_shared();
      } else if (!(p.skip & kSkipFold)) {
        publish_state<128, 64, true>(sbase + kU + f0 * 128, kUBlock, smem + kZOff + (wg - 2) * 256,
                                     u, zero, 1.f, warp, lane / 4, t4);
      }
      named_barrier(1, 256);  // U's copy is whole again
    };
    for (int h = 0; h < halves; ++h) {
      const uint32_t half = (h & 1) * 32 * 128;
      float acc[2][16], dpk[16];
      if (h % kHalvesPerStage == 0) mbar_wait(stage_full, (h / kHalvesPerStage) & 1);
      const uint32_t st_half = st + (kKeyScores ? half : 0);
      wgmma_fence();
      // U_half v^T, A from the U registers: all of it packed before the first product, as
      // ptxas otherwise waits for each product before the next k-step's packing (C7517: it takes
      // U, which the fold's products write, for a product's result).
      uint32_t ua[8][4];
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
#pragma unroll
        for (int r = 0; r < 4; ++r)
          ua[kk][r] = pack_bf16(u[0][8 * kk + 2 * r], u[0][8 * kk + 2 * r + 1]);
      }
      const bool products = !(p.skip & kSkipKeySide);
      const bool block_end = (h & 1) != 0, fold = !(p.skip & kSkipFold);
      if (products) {
#pragma unroll
        for (int kk = 0; kk < 8; ++kk)
          wgmma_rs_n32<0>(dpk, ua[kk], k_major(sbase + kV + half, kk), kk > 0);
        if (dv_side) {
#pragma unroll
          for (int mb = 0; mb < 2; ++mb) {
#pragma unroll
            for (int ks = 0; ks < 8; ++ks) {  // U^T phi_k^T, K = F
              wgmma_ss_n32<1, 0>(acc[mb], n_major(sbase + kU + mb * kUBlock, ks, kUBlock),
                                 k_major(sbase + kPk + half, ks), ks > 0);
            }
          }
        }
      }
      if (kEarlyFold && block_end && fold) fold_u();
      wgmma_commit();
      if (products) {
#pragma unroll
        for (int mb = 0; mb < 2; ++mb) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {  // dy_c^T pw_c (dv) or q_c^T ds_c (dk), K = 64 rows
            const uint32_t a = sbase + (dv_side ? (c ? kDy1 : kDy0) : (c ? kQ1 : kQ0));
            const uint32_t b = st_half + (dv_side ? c : 2 + c) * kStageTile;
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
              wgmma_ss_n32<1, 0>(acc[mb], n_major(a + mb * kBlk, ks, kBlk), k_major(b, ks),
                                 dv_side || c > 0 || ks > 0);
            }
          }
        }
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {  // phi_q[:, f0:f0 + 64]^T du
          wgmma_ss_n32<1, 0>(dpk, n_major(sbase + kPq + (f0 / 64) * kBlk, ks, kBlk),
                             k_major(st_half + 4 * kStageTile, ks), true);
        }
      }
      if (kEarlyFold && block_end) {
        wgmma_commit();
        wgmma_wait<1>();  // the fold and the products that read U's copy are done
        publish_u();
      }
      wgmma_commit();
      wgmma_wait<0>();
      if (h % kHalvesPerStage == kHalvesPerStage - 1) mbar_arrive(stage_empty);
      // Out: the half's dv^T or dk^T (32 keys x 128) and its dphi_k^T rows (32 keys x 64).
      if (!(p.skip & kSkipOutputs)) {
        if (ct == 0) bulk_wait_read();
        named_barrier(2 + (wg - 2), 128);  // the previous half's stores have read the staging
#pragma unroll
        for (int mb = 0; mb < 2; ++mb)
          stage_trans_n32(out, acc[mb], 1.f, 64 * mb, warp, lane, kHalfTile);
        stage_trans_n32(out + 2 * kHalfTile, dpk, 1.f, 0, warp, lane, kHalfTile);
        fence_async_shared();
        named_barrier(2 + (wg - 2), 128);
        if (ct == 0) {
          bulk_store(sink_at, out, kOutBytes);
          bulk_commit();
        }
      }
      if (kEarlyFold || !block_end) continue;
      if (fold) {
        fold_u();
        wgmma_commit();
        wgmma_wait<0>();
      }
      publish_u();
    }
    if (ct == 0) bulk_wait();
#pragma unroll
    for (int i = 0; i < 64; ++i)
      sink += u[0][i];
  }
  p.out[blockIdx.x * blockDim.x + threadIdx.x] = sink;
}

// Median ns per 64-key block of one launch on every SM; false when CUDA fails.
bool report(void (*kernel)(StepParams), const char* name, const StepParams& p, int sms) {
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  const double us = median_launch_us(
      [&] {
        kernel<<<sms, 512, kSmemBytes>>>(p);
        return true;
      },
      5);
  if (us < 0) {
    std::printf("%s: CUDA error %s\n", name, cudaGetErrorString(cudaGetLastError()));
    return false;
  }
  // Per 64-key block: 16.8 MFLOP of products (the fold's 2.1 included).
  std::printf("%-45s %d blocks an SM in %.1f us: %.0f ns a block, %.0f TFLOP/s\n", name, p.blocks,
              us, 1e3 * us / p.blocks, 16.8e6 * p.blocks * sms / us * 1e-6);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);  // each line out before a later run can hang
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess || prop.major < 9) {
    std::printf("fused_key_step: needs an sm_90 GPU\n");
    return 0;
  }
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs\n", prop.name, sms);
  uint8_t *source = nullptr, *sink = nullptr;
  float* out = nullptr;
  cudaMalloc(&source, 16 * 64 * 1024 + 64 * 1024);
  cudaMemset(source, 0, 16 * 64 * 1024 + 64 * 1024);
  cudaMalloc(&sink, static_cast<size_t>(sms) * 2 * kOutBytes);
  cudaMalloc(&out, sizeof(float) * sms * 512);
  // The plan's variant, with each part left out in turn, then the others. (Leaving out every
  // product lets the producer fall two halves behind the scores, whose barrier it follows by
  // parity: it would wait forever.)
  using Kernel = void (*)(StepParams);
  const struct {
    Kernel kernel;
    int skip;
    const char* name;
  } runs[] = {{step_kernel<false, false>, 0, "scores per 32-key half (m64n32)"},
              {step_kernel<false, false>, kSkipProducer, "  without the producer's copies"},
              {step_kernel<false, false>, kSkipOutputs, "  without the output staging and stores"},
              {step_kernel<false, false>, kSkipScores, "  without the scores' products"},
              {step_kernel<false, false>, kSkipKeySide, "  without the key side's products"},
              {step_kernel<false, false>, kSkipFold, "  without the fold and publish"},
              {step_kernel<true, false>, 0, "scores per 64-key block (m64n64, key rows)"},
              {step_kernel<false, true>, 0, "32-key halves, the fold early"},
              {step_kernel<false, true>, kSkipKeySide, "  without the key side's products"},
              {step_kernel<false, true>, kSkipFold, "  without the fold and publish"},
              {step_kernel<true, true>, 0, "64-key scores, the fold early"},
              {step_kernel<false, true, true>, 0, "32-key halves, fold early, publish by stsm"}};
  // With an argument: that run alone.
  const int only = argc > 1 ? std::atoi(argv[1]) : -1;
  bool ok = true;
  for (int i = 0; i < static_cast<int>(sizeof(runs) / sizeof(runs[0])); ++i) {
    if (only >= 0 && i != only) continue;
    const auto& run = runs[i];
    const StepParams p{source, sink, out, kBlocks, run.skip};
    ok = ok && report(run.kernel, run.name, p, sms);
  }
  cudaFree(source);
  cudaFree(sink);
  cudaFree(out);
  return ok ? 0 : 1;
}
