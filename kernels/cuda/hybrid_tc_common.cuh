// Tensor-core building blocks shared by the bf16 forward and backward kernels (nvcc only):
// mma.sync m16n8k16 (bf16 in, fp32 accumulate), ldmatrix operand loads, cp.async tile loads and
// the fold of 128 rows into an F x D state kept in shared memory as a bf16 hi + lo pair.
//
// Fragment layout of m16n8k16 (g8 = lane / 4, t4 = lane % 4): an A fragment holds
// A[g8][2t4..+1], A[g8+8][2t4..+1], A[g8][2t4+8..+9], A[g8+8][2t4+8..+9]; a B fragment holds
// B[k = 2t4..+1][n = g8] and B[k = 2t4+8..+9][n = g8]; a C fragment holds C[g8][2t4..+1] and
// C[g8+8][2t4..+1]. Two C n-tiles of one 16 x 16 block, packed to bf16, are the A fragment of
// the next product.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/hybrid_common.cuh"

namespace hl::kernels::cuda::detail {

using bf16 = __nv_bfloat16;

constexpr int kTcWarps = 8;
constexpr int kTcThreads = kTcWarps * 32;
constexpr int kTcRows = kTcWarps * 16;  // rows of one tile: 16 per warp

__device__ inline uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ inline void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ inline void ldsm_x4_t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ inline uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ inline float2 unpack_bf16(uint32_t u) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u));
}

/// The A fragment of a 16 x 16 block held as two C n-tiles.
__device__ inline void c_to_a(uint32_t (&a)[4], const float (&c)[2][4]) {
  a[0] = pack_bf16(c[0][0], c[0][1]);
  a[1] = pack_bf16(c[0][2], c[0][3]);
  a[2] = pack_bf16(c[1][0], c[1][1]);
  a[3] = pack_bf16(c[1][2], c[1][3]);
}

// 16 bytes global -> shared; nothing is read (zeros land) when !valid.
__device__ inline void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}

// 4 bytes global -> shared (zeros when !valid).
__device__ inline void cp_async4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 4 : 0));
}

__device__ inline void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ inline int round16(int x) {
  return (x + 15) & ~15;
}

__device__ inline float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ inline float fast_rcp(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

/// A fragment (m16k16) of rows r0.., columns k0.. of a row-major [*, W] global matrix; rows at
/// or past `rows` read as zeros.
template <int W>
__device__ inline void load_a_global(uint32_t (&a)[4], const bf16* src, int r0, int rows, int k0,
                                     int g8, int t4) {
  const int ra = r0 + g8, rb = ra + 8;
  const bf16* pa = src + static_cast<size_t>(ra) * W + k0 + 2 * t4;
  const bf16* pb = src + static_cast<size_t>(rb) * W + k0 + 2 * t4;
  a[0] = ra < rows ? __ldg(reinterpret_cast<const unsigned int*>(pa)) : 0u;
  a[1] = rb < rows ? __ldg(reinterpret_cast<const unsigned int*>(pb)) : 0u;
  a[2] = ra < rows ? __ldg(reinterpret_cast<const unsigned int*>(pa + 8)) : 0u;
  a[3] = rb < rows ? __ldg(reinterpret_cast<const unsigned int*>(pb + 8)) : 0u;
}

/// Rows [row0, row0 + rows) of a row-major [*, W] bf16 global matrix into shared memory (row
/// stride W + 8); rows outside [0, limit) become zeros.
template <int W, int THREADS>
__device__ inline void load_rows(bf16* dst, const bf16* src, int row0, int rows, int limit,
                                 int tid) {
  constexpr int kChunks = W / 8;
  if constexpr (THREADS % kChunks == 0) {
    // Each thread keeps one 16-byte column piece: no division in the loop.
    constexpr int kStep = THREADS / kChunks;
    const int c = tid % kChunks;
    for (int r = tid / kChunks; r < rows; r += kStep) {
      const int row = row0 + r;
      const bool ok = row >= 0 && row < limit;
      cp_async16(dst + r * (W + 8) + c * 8, ok ? src + static_cast<size_t>(row) * W + c * 8 : src,
                 ok);
    }
  } else {
    for (int idx = tid; idx < rows * kChunks; idx += THREADS) {
      const int r = idx / kChunks;
      const int c = idx - r * kChunks;
      const int row = row0 + r;
      const bool ok = row >= 0 && row < limit;
      cp_async16(dst + r * (W + 8) + c * 8, ok ? src + static_cast<size_t>(row) * W + c * 8 : src,
                 ok);
    }
  }
}

/// ldmatrix row address of this lane for B operands read as n x k from rows of a row-major
/// matrix (the rows are the n index): C = A M^T.
__device__ inline const bf16* rows_nk(const bf16* m, int stride, int row0, int lane) {
  return m + (row0 + (lane % 8) + (lane / 16) * 8) * stride + ((lane / 8) % 2) * 8;
}

/// ldmatrix row address of this lane for B operands read as k x n (the rows are the k index,
/// .trans loads): C = A M.
__device__ inline const bf16* rows_kn(const bf16* m, int stride, int row0, int lane) {
  return m + (row0 + (lane % 8) + ((lane / 8) % 2) * 8) * stride + (lane / 16) * 8;
}

/// ldmatrix row address of this lane for an A fragment of 16 rows (m) x 16 columns (k) of a
/// row-major shared matrix (non-trans load): the same lane pattern as rows_kn.
__device__ inline const bf16* rows_a(const bf16* m, int stride, int row0, int lane) {
  return rows_kn(m, stride, row0, lane);
}

/// C (16 x 16) = A (16 x 16 K16, register fragments) times M^T for the 16 rows of M whose
/// lane address is `rows` (see rows_nk): two n-tiles, accumulated in two independent chains so
/// that consecutive mma.sync do not wait on each other.
template <int K16>
__device__ inline void scores16(float (&sc)[2][4], const uint32_t (&af)[K16][4], const bf16* rows) {
  float part[2][2][4] = {};
#pragma unroll
  for (int ks = 0; ks < K16; ++ks) {
    uint32_t b4[4];
    ldsm_x4(b4, rows + ks * 16);
    mma_bf16(part[ks & 1][0], af[ks], b4[0], b4[1]);
    mma_bf16(part[ks & 1][1], af[ks], b4[2], b4[3]);
  }
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      sc[nt][e] = part[0][nt][e] + part[1][nt][e];
}

/// As scores16 with the A operand read from shared memory (lane address `a_rows`, rows_a).
template <int K16>
__device__ inline void scores16_smem(float (&sc)[2][4], const bf16* a_rows, const bf16* rows) {
  float part[2][2][4] = {};
#pragma unroll
  for (int ks = 0; ks < K16; ++ks) {
    uint32_t a[4], b4[4];
    ldsm_x4(a, a_rows + ks * 16);
    ldsm_x4(b4, rows + ks * 16);
    mma_bf16(part[ks & 1][0], a, b4[0], b4[1]);
    mma_bf16(part[ks & 1][1], a, b4[2], b4[3]);
  }
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      sc[nt][e] = part[0][nt][e] + part[1][nt][e];
}

/// acc (16 x 8 * N8) += A (16 x 16) times the 16 x (8 * N8) block of a row-major matrix whose
/// lane address is `rows` (see rows_kn).
template <int N8>
__device__ inline void mma_a_times_rows(float (&acc)[N8][4], const uint32_t (&a)[4],
                                        const bf16* rows) {
#pragma unroll
  for (int np = 0; np < N8 / 2; ++np) {
    uint32_t b[4];
    ldsm_x4_t(b, rows + np * 16);
    mma_bf16(acc[2 * np], a, b[0], b[1]);
    mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
  }
}

/// Folds ROWS rows into a state kept as hi + lo bf16 [F][D + 8] and a fp32 sum vector zs[F]:
///   S += sum_r scale_r a_r b_r^T,  zs += sum_r scale_r a_r weight_r
/// with a rows from `A` ([*][F + 8]) and b rows from `B` ([*][D + 8]), both from row `first`.
/// scale (nullable: 1) and weight (nullable: 1) are per-row fp32 factors in shared memory,
/// indexed from `first`. Warps own F-row tiles mt = warp, warp + WARPS, ...
/// ring_size > 0: A and B are rings of that many rows and row r sits at (ring_base + r) mod size.
template <int D, int F, int ROWS, int WARPS>
__device__ inline void fold_state(bf16* hi, bf16* lo, float* zs, const bf16* A, const bf16* B,
                                  int first, const float* scale, const float* weight, int warp,
                                  int lane, int ring_base = 0, int ring_size = 0) {
  constexpr int SD = D + 8, SF = F + 8;
  const int g8 = lane / 4, t4 = lane % 4;
  auto slot = [&](int r) {
    if (ring_size == 0) return r;
    r += ring_base;
    return r >= ring_size ? r - ring_size : r;
  };
  for (int mt = warp; mt < F / 16; mt += WARPS) {
    uint32_t af[ROWS / 16][4];
#pragma unroll
    for (int ks = 0; ks < ROWS / 16; ++ks) {
      ldsm_x4_t(af[ks], A + slot(first + ks * 16 + (lane % 8) + (lane / 16) * 8) * SF + mt * 16 +
                            ((lane / 8) % 2) * 8);
      if (scale != nullptr) {
        // k (row) indices of this lane: 2t4, 2t4 + 1 in a[0], a[1]; 2t4 + 8, 2t4 + 9 in a[2], a[3].
        const float* sr = scale + ks * 16 + 2 * t4;
        const float s0 = sr[0], s1 = sr[1], s8 = sr[8], s9 = sr[9];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 x = unpack_bf16(af[ks][e]);
          af[ks][e] = e < 2 ? pack_bf16(x.x * s0, x.y * s1) : pack_bf16(x.x * s8, x.y * s9);
        }
      }
    }
    const int fa = mt * 16 + g8;
    {
      // z rows: A times a B operand whose every column holds the row weights (1 by default).
      float zc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int ks = 0; ks < ROWS / 16; ++ks) {
        uint32_t b0 = 0x3f803f80u, b1 = 0x3f803f80u;  // bf16 pairs (1, 1)
        if (weight != nullptr) {
          const float* wr = weight + ks * 16 + 2 * t4;
          b0 = pack_bf16(wr[0], wr[1]);
          b1 = pack_bf16(wr[8], wr[9]);
        }
        mma_bf16(zc, af[ks], b0, b1);
      }
      if (t4 == 0) {
        zs[fa] += zc[0];
        zs[fa + 8] += zc[2];
      }
    }
#pragma unroll
    for (int np = 0; np < D / 16; ++np) {
      float acc[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int col = np * 16 + nt * 8 + 2 * t4;
        const float2 ha = unpack_bf16(*reinterpret_cast<const uint32_t*>(hi + fa * SD + col));
        const float2 la = unpack_bf16(*reinterpret_cast<const uint32_t*>(lo + fa * SD + col));
        const float2 hb = unpack_bf16(*reinterpret_cast<const uint32_t*>(hi + (fa + 8) * SD + col));
        const float2 lb = unpack_bf16(*reinterpret_cast<const uint32_t*>(lo + (fa + 8) * SD + col));
        acc[nt][0] = ha.x + la.x;
        acc[nt][1] = ha.y + la.y;
        acc[nt][2] = hb.x + lb.x;
        acc[nt][3] = hb.y + lb.y;
      }
#pragma unroll
      for (int ks = 0; ks < ROWS / 16; ++ks) {
        uint32_t vf[4];
        ldsm_x4_t(vf, B + slot(first + ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * SD +
                          (lane / 16) * 8 + np * 16);
        mma_bf16(acc[0], af[ks], vf[0], vf[1]);
        mma_bf16(acc[1], af[ks], vf[2], vf[3]);
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int col = np * 16 + nt * 8 + 2 * t4;
        const uint32_t ha = pack_bf16(acc[nt][0], acc[nt][1]);
        const uint32_t hb = pack_bf16(acc[nt][2], acc[nt][3]);
        const float2 fa2 = unpack_bf16(ha), fb2 = unpack_bf16(hb);
        *reinterpret_cast<uint32_t*>(hi + fa * SD + col) = ha;
        *reinterpret_cast<uint32_t*>(lo + fa * SD + col) =
            pack_bf16(acc[nt][0] - fa2.x, acc[nt][1] - fa2.y);
        *reinterpret_cast<uint32_t*>(hi + (fa + 8) * SD + col) = hb;
        *reinterpret_cast<uint32_t*>(lo + (fa + 8) * SD + col) =
            pack_bf16(acc[nt][2] - fb2.x, acc[nt][3] - fb2.y);
      }
    }
  }
}

/// Fills a hi + lo state and its sum vector from fp32 [F * D + F] (zeros when `init` is null).
template <int D, int F, int THREADS>
__device__ inline void init_state(bf16* hi, bf16* lo, float* zs, const float* init, int tid) {
  constexpr int SD = D + 8;
  for (int idx = tid; idx < F * D; idx += THREADS) {
    const int f = idx / D;
    const int d = idx - f * D;
    const float x = init != nullptr ? init[idx] : 0.f;
    const bf16 h = __float2bfloat16_rn(x);
    hi[f * SD + d] = h;
    lo[f * SD + d] = __float2bfloat16_rn(x - __bfloat162float(h));
  }
  for (int f = tid; f < F; f += THREADS)
    zs[f] = init != nullptr ? init[F * D + f] : 0.f;
}

/// An attribute of the current device (0 if unknown).
int device_attribute(cudaDeviceAttr attr);

/// Largest dynamic shared memory a block may opt into on the current device (0 if unknown).
int max_dynamic_smem();

}  // namespace hl::kernels::cuda::detail
