// Building blocks shared by the warp-specialised Hopper kernels of hybrid attention (forward and
// chunk-state pass in hybrid_hopper_forward.cu, the backward's query kernel in
// hybrid_hopper_query.cu, its key kernels in hybrid_hopper_keys.cu): the forward's shared-memory
// layout and parameters, tile staging and TMA stores, the chunk ring's barriers and loads, the
// state warpgroups' loads, folds and publishing, and the host side's tensor maps and launches.
// The kernels live in one file each so that they compile in parallel and a change to one
// rebuilds only its file.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "kernels/cuda/block_trace.cuh"
#include "kernels/cuda/hopper.cuh"
#include "kernels/cuda/hybrid_common.cuh"
#include "kernels/cuda/hybrid_forward_tc.cuh"
#include "kernels/cuda/hybrid_internal.cuh"
#include "kernels/cuda/hybrid_tc_common.cuh"

namespace hl::kernels::cuda::detail {

constexpr int kRows = 64;                  // rows of a tile, keys of a chunk
constexpr int kBlock = kColumnBlockBytes;  // one 64 x 64 bf16 column block (8 KB)
constexpr int kSlots = 3;                  // chunk ring: two in use, one landing

// Shared memory of one block for head dim D and F features (offsets from a 1024-byte aligned
// base). A 64-row tile of width W is W / 64 column blocks. kMap (the hedgehog feature maps
// computed in the kernel): no phi_k in the slots but a two-entry ring of it, and the phi_q tile,
// both computed by the state warpgroup from k and q; the maps' weights W_q and W_k ([D][64],
// N-major); no alignment slack (the kernel checks that the base is 1024-aligned), as 1 KB more
// would not fit.
template <int D, int F, bool kMap = false>
struct Layout {
  static constexpr int kKOff = 0;  // in a slot: k, then v, then phi_k (not kMap)
  static constexpr int kVOff = D / 64 * kBlock;
  static constexpr int kPkOff = kVOff + D / 64 * kBlock;
  static constexpr int kPkBytes = F / 64 * kBlock;
  static constexpr int kSlotBytes = kPkOff + (kMap ? 0 : kPkBytes);
  static constexpr int kPkRingOff = kSlots * kSlotBytes;  // kMap: the t-th chunk in entry t % 2
  static constexpr int kQOff = kPkRingOff + (kMap ? 2 * kPkBytes : 0);
  static constexpr int kPqOff = kQOff + D / 64 * kBlock;
  static constexpr int kWqOff = kPqOff + F / 64 * kBlock;  // kMap: W_q, then W_k
  static constexpr int kWkOff = kWqOff + (kMap ? D / 64 * kBlock : 0);
  static constexpr int kSOff = kWkOff + (kMap ? D / 64 * kBlock : 0);  // S in bf16, N-major:
  static constexpr int kSBlock = F * 128;                              // [D / 64][F][64]
  static constexpr int kZOff = kSOff + D / 64 * kSBlock;  // z: row 0 of an 8 x F K-major operand
  static constexpr int kZBytes = F * 16;
  static constexpr bool kZFloat = false;  // z as the bf16 operand above, not F floats
  static constexpr int kBarOff = kZOff + kZBytes;
  static constexpr int kSmemBytes = kBarOff + 16 * 8 + (kMap ? 0 : 1024);  // + slack to align
  static_assert(!kMap || F == 128, "the fused hedgehog maps project to p = 64 (F = 128)");
};
constexpr int kWgThreads = 384;

// setmaxnreg only moves registers between a block's warpgroups: the launch gives each thread
// 65536 / threads of them (168 at 384 threads), and warpgroups whose counts sum to more wait
// forever (a hang: session 9 call 2, session 15 call 5). Each kernel checks its split with this.
constexpr bool regs_fit(int threads, int sum) {
  return sum <= 65536 / threads / 8 * 8 * (threads / 128);
}

// Calls fn(window, linear) with std::bool_constant values of the branches a unit has, so that
// a consumer is compiled once per combination (window only, linear only, both).
template <typename Fn>
__device__ inline void with_branches(const UnitMode& um, Fn&& fn) {
  if (!um.use_linear)
    fn(std::true_type{}, std::false_type{});
  else if (!um.use_window)
    fn(std::false_type{}, std::true_type{});
  else
    fn(std::true_type{}, std::true_type{});
}

struct WgParams {
  CUtensorMap q, k, v, phi_q, phi_k, y;  // (column, row, unit), boxes of 64 x 64
  CUtensorMap w_q, w_k;                  // kMap: the maps' weights [Hq][D][64]
  Shape s;
  const float* coef_window;
  const float* coef_linear;
  const uint8_t* window_drop;
  float* row_max;
  float* row_denom;
  int32_t* row_argmax;
  const float* states;
  bool sum_states;  // see start_state
  int segments, segment_len;
};

// Byte offset of element (row, col) in a tile of 64-column swizzled blocks `block` bytes apart.
__device__ inline uint32_t swizzled_offset(int row, int col, int block) {
  return (col / 64) * block + row * 128 + ((((col % 64) / 8) ^ (row % 8)) * 16) + (col % 8) * 2;
}

// Rows la and la + 8 of a 64-row C-layout accumulator of width W, times fa / fb, in bf16 into a
// tile of 64-column swizzled blocks at shared address `tile` (thread ct of a warpgroup).
template <int W>
__device__ inline void stage_tile(uint32_t tile, const float* acc, float fa, float fb, int ct) {
  const int warp = ct / 32, lane = ct % 32, g8 = lane / 4, t4 = lane % 4;
  uint32_t row_base = tile + (warp * 16 + g8) * 128 + 4 * t4;
  asm volatile("" : "+r"(row_base));  // rebuilt per call, not hoisted into registers
#pragma unroll
  for (int n = 0; n < W / 8; ++n) {
    const uint32_t at = row_base + (n / 8) * kBlock + (((n % 8) ^ g8) * 16);
    st_shared_u32(at, pack_bf16(acc[4 * n] * fa, acc[4 * n + 1] * fa));
    st_shared_u32(at + 8 * 128, pack_bf16(acc[4 * n + 2] * fb, acc[4 * n + 3] * fb));
  }
}

// An m64n32 C fragment (rows 16 warp + g8 (+ 8), 32 columns), times `scale`, in bf16 and
// transposed by stmatrix .trans into a [column][row] tile of 128-byte rows at shared address
// `tile`: fragment row r lands in tile column col0 + r (64-column blocks `block` apart). The
// key side of the fused key kernel stages ds^T, pw^T and its outputs so.
__device__ inline void stage_trans_n32(uint32_t tile, const float (&acc)[16], float scale, int col0,
                                       int warp, int lane, int block) {
#pragma unroll
  for (int pair = 0; pair < 2; ++pair) {
    // Matrices (n, rows 0-7), (n, 8-15), (n + 1, 0-7), (n + 1, 8-15) for n = 2 pair; lane l
    // addresses column 8 n + l % 8 of matrix l / 8, whose 8 rows are 16 contiguous bytes.
    const int m = lane / 8, n = 2 * pair + m / 2, hf = m % 2;
    const int i0 = 8 * pair;
    stsm_x4_trans(tile + swizzled_offset(8 * n + lane % 8, col0 + 16 * warp + 8 * hf, block),
                  pack_bf16(acc[i0] * scale, acc[i0 + 1] * scale),
                  pack_bf16(acc[i0 + 2] * scale, acc[i0 + 3] * scale),
                  pack_bf16(acc[i0 + 4] * scale, acc[i0 + 5] * scale),
                  pack_bf16(acc[i0 + 6] * scale, acc[i0 + 7] * scale));
  }
}

// Rows [16 warp, 16 warp + 16) of an m64n128 C fragment, times `scale`, in bf16 by stmatrix
// into the N-major tile whose row 16 warp is at shared address `rows` (64-column blocks `block`
// apart): eight x4 stores a thread where publish_state makes 64 st.shared.
__device__ inline void publish_rows_stsm(uint32_t rows, const float (&acc)[64], float scale,
                                         int lane, int block) {
  const int m = lane / 8, r = 8 * (m % 2) + lane % 8;  // this lane's row of matrix m
#pragma unroll
  for (int n = 0; n < 16; n += 2) {
    const int col = n + m / 2;  // matrices (n, rows 0-7), (n, 8-15), (n + 1, 0-7), (n + 1, 8-15)
    const uint32_t at = rows + r * 128 + (col / 8) * block + (((col % 8) ^ (r % 8)) * 16);
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(at),
                 "r"(pack_bf16(scale * acc[4 * n], scale * acc[4 * n + 1])),
                 "r"(pack_bf16(scale * acc[4 * n + 2], scale * acc[4 * n + 3])),
                 "r"(pack_bf16(scale * acc[4 * n + 4], scale * acc[4 * n + 5])),
                 "r"(pack_bf16(scale * acc[4 * n + 6], scale * acc[4 * n + 7]))
                 : "memory");
  }
}

// stage_tile, then one TMA store per block of rows [row, row + 64); thread ct == 0 waits until
// the stores have read the tile (unless wait_read is false: then the caller's thread 0 calls
// bulk_wait_read before the tile is written again). The caller's named barrier `barrier` (its
// warpgroup's 128 threads) must come after its own last read of the buffer.
template <int W>
__device__ void store_tile(const CUtensorMap* map, uint8_t* tile, const float* acc, float fa,
                           float fb, int row, int unit, int ct, int barrier = 1,
                           bool wait_read = true) {
  stage_tile<W>(shared_address(tile), acc, fa, fb, ct);
  fence_async_shared();
  named_barrier(barrier, 128);
  if (ct == 0) {
    for (int b = 0; b < W / 64; ++b)
      tma_store_3d(map, tile + b * kBlock, b * 64, row, unit);
    bulk_commit();
    if (wait_read) bulk_wait_read();
  }
}

// The empty barrier of a buffer that a store_tile(wait_read = false) is reading: the other
// threads arrive at once, thread 0 only at its next release(), once the read is done. Called
// after the warpgroup has issued its next products, so that warp 0 does not hold them up for the
// time the TMA takes to read the tile.
struct PendingStore {
  uint64_t* empty = nullptr;
  __device__ void hold(uint64_t* bar, int ct) {
    if (ct != 0) {
      mbar_arrive(bar);
      return;
    }
    release();
    empty = bar;
  }
  __device__ void release() {
    if (empty == nullptr) return;
    bulk_wait_read();
    mbar_arrive(empty);
    empty = nullptr;
  }
};

// Sums each of xs over the quad of lanes that holds a row of a C fragment, the shuffles of all
// of them issued together at each step.
template <typename... T>
__device__ inline void quad_sum(T&... xs) {
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1)
    ((xs += __shfl_xor_sync(kFullMask, xs, off)), ...);
}

// A warpgroup's wgmma A operand in registers (k-step kk, register r: row 16 warp + g8, + 8 for
// odd r, columns 16 kk + 8 (r / 2) + 2 t4 and the next) into the 64 x 64 bf16 K-major swizzled
// tile at shared address `tile`, where another warpgroup's wgmma_from_tile reads it.
__device__ inline void stage_operand(uint32_t tile, const uint32_t (&a)[4][4], int warp, int g8,
                                     int t4) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int col = 16 * kk + 8 * (r / 2) + 2 * t4;
      st_shared_u32(tile + swizzled_offset(16 * warp + g8 + 8 * (r & 1), col, kBlock), a[kk][r]);
    }
  }
}

// acc (+)= A B over K = 64: A the tile stage_operand wrote, B N-major at `b_addr` (issue only).
template <int N>
__device__ inline void wgmma_from_tile(float (&acc)[N / 2], uint32_t tile, uint32_t b_addr,
                                       bool accumulate = true) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    wgmma_ss<N, 0, 1>(acc, k_major(tile, kk), n_major(b_addr, kk, kBlock), accumulate || kk > 0);
}

// Half of the hedgehog feature map's activation (kernels/feature_map.hpp) on a 64 x 64 C-layout
// accumulator of projections r, a quad of lanes per row: out = softmax(r) along each row (kNeg:
// softmax(-r)), clamped below at 1e-12 as the unfused map (unless !kClamp: the backward needs
// the values before the clamp). out may be r.
template <bool kNeg, bool kClamp = true>
__device__ inline void hedgehog_half(const float (&r)[32], float (&out)[32]) {
  constexpr float kScale = kNeg ? -1.4426950408889634f : 1.4426950408889634f;  // base 2
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int h = (i >> 1) & 1;  // row la or la + 8
    mx[h] = fmaxf(mx[h], r[i] * kScale);
  }
  float sum[2] = {0.f, 0.f};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(kFullMask, mx[h], 1));
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(kFullMask, mx[h], 2));
  }
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int h = (i >> 1) & 1;
    out[i] = fast_exp2(fmaf(r[i], kScale, -mx[h]));
    sum[h] += out[i];
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    sum[h] += __shfl_xor_sync(kFullMask, sum[h], 1);
    sum[h] = 1.f / (sum[h] + __shfl_xor_sync(kFullMask, sum[h], 2));
  }
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    out[i] *= sum[(i >> 1) & 1];
    if constexpr (kClamp) out[i] = fmaxf(out[i], 1e-12f);
  }
}

// Both halves: pos = softmax(r), r = softmax(-r).
__device__ inline void hedgehog_pair(float (&r)[32], float (&pos)[32]) {
  hedgehog_half<false>(r, pos);
  hedgehog_half<true>(r, r);
}

// Issues r = x W over a 64-row tile: x K-major at shared address `x_addr` (D / 64 column
// blocks), W the map's [D][64] weight N-major at `w_addr`; one wgmma group.
template <int D>
__device__ inline void issue_projection(float (&r)[32], uint32_t x_addr, uint32_t w_addr) {
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks)
    wgmma_ss_n64<0, 1>(r, k_major(x_addr, ks), n_major(w_addr, ks, kBlock), ks > 0);
  wgmma_commit();
}

// The same, waiting for the product.
template <int D>
__device__ inline void project_tile(float (&r)[32], uint32_t x_addr, uint32_t w_addr) {
  issue_projection<D>(r, x_addr, w_addr);
  wgmma_wait<0>();
}

struct Barriers {
  uint64_t* chunk_full;   // [kSlots] chunk landed
  uint64_t* chunk_empty;  // [kSlots] consumer and state are done with the chunk
  uint64_t* q_full;       // q of the tile
  uint64_t* q_empty;
  uint64_t* pq_full;  // phi_q of the tile
  uint64_t* pq_empty;
  uint64_t* s_full;    // S and z written for the next query
  uint64_t* s_empty;   // the query has read them
  uint64_t* w_full;    // kMap: W_q and W_k landed
  uint64_t* pk_ready;  // kMap: [2] the t-th chunk's phi_k is in ring entry t % 2
};

// Chunk c (-1, 0, 1, ...) of a segment sits in slot (c + 1) % kRing of its ring (the chunk
// ring's kSlots, or the query kernel's v ring); `use` counts the slot's fills, so waits on its
// barriers take parity use & 1.
template <int kRing = kSlots>
__device__ inline int slot_of(int c) {
  return (c + 1) % kRing;
}
template <int kRing = kSlots>
__device__ inline uint32_t use_of(int c) {
  return static_cast<uint32_t>((c + 1) / kRing);
}

// The forward's barriers laid out from `bars`.
__device__ inline Barriers ring_barriers(uint64_t* bars) {
  return Barriers{bars,
                  bars + kSlots,
                  bars + 2 * kSlots,
                  bars + 2 * kSlots + 1,
                  bars + 2 * kSlots + 2,
                  bars + 2 * kSlots + 3,
                  bars + 2 * kSlots + 4,
                  bars + 2 * kSlots + 5,
                  bars + 2 * kSlots + 6,
                  bars + 2 * kSlots + 7};
}

// The producer's load of chunk c (k where the unit has a window, v unless kWithV is false, phi_k
// where it has a linear branch; with kMap k for either branch and no phi_k) into its ring slot,
// once the slot's previous chunk is given back. L names the slot layout (kSlotBytes, kKOff, kVOff,
// kPkOff); P has the tensor maps k, v, phi_k.
template <int D, int F, typename L, typename P, bool kMap = false, bool kWithV = true>
__device__ void load_chunk(const P& p, const UnitMode& um, uint8_t* smem, const Barriers& bar,
                           int unit, int kv_unit, int r_begin, int c) {
  const int slot = slot_of(c);
  const uint32_t use = use_of(c);
  if (use > 0) mbar_wait(bar.chunk_empty + slot, (use - 1) & 1);
  uint8_t* base = smem + slot * L::kSlotBytes;
  uint64_t* full = bar.chunk_full + slot;
  const int row = r_begin + c * kRows;
  const bool k_wanted = um.use_window || (kMap && um.use_linear);
  const bool pk_wanted = !kMap && um.use_linear;
  mbar_expect_bytes(full, kBlock * ((kWithV + k_wanted) * (D / 64) + (pk_wanted ? F / 64 : 0)));
  for (int b = 0; b < D / 64; ++b) {
    if (k_wanted) tma_load_3d(base + L::kKOff + b * kBlock, &p.k, b * 64, row, kv_unit, full);
    if constexpr (kWithV)
      tma_load_3d(base + L::kVOff + b * kBlock, &p.v, b * 64, row, kv_unit, full);
  }
  if (pk_wanted) {
    for (int b = 0; b < F / 64; ++b)
      tma_load_3d(base + L::kPkOff + b * kBlock, &p.phi_k, b * 64, row, unit, full);
  }
}

// The running state (S or U, F x D, and z or u) that segment `seg` of a unit starts with, into
// the state warpgroup's accumulators, from the unit's `segments` entries at `unit_states` (each
// [F][D] then [F], fp32): the scan's entry of the segment itself, or with `sums` (each entry a
// segment's own sum) the sum of the entries before it (or after it, for a `suffix`); zero with
// one segment. acc[h] holds rows [f0 + 64 h, f0 + 64 h + 64), this thread rows f = f0 + 64 h +
// 16 warp + g8 (+ 8), and zp[h][0 / 1] the z partial sums of them. A warpgroup that holds F rows
// of a larger state passes that state's row count as kStateF and its first row as f0.
template <int D, int F, int kStateF = F>
__device__ inline void load_state(float (&acc)[F / 64][D / 2], float (&zp)[F / 64][2],
                                  const float* unit_states, int seg, int segments, bool sums,
                                  bool suffix, int warp, int g8, int t4, int f0 = 0) {
  constexpr int kStride = kStateF * D + kStateF;
  const int count = segments == 1 ? 0 : (sums ? (suffix ? segments - 1 - seg : seg) : 1);
  const float* start =
      unit_states + static_cast<size_t>(sums ? (suffix ? seg + 1 : 0) : seg) * kStride;
#pragma unroll
  for (int h = 0; h < F / 64; ++h) {
#pragma unroll
    for (int i = 0; i < D / 2; ++i)
      acc[h][i] = 0.f;
    zp[h][0] = zp[h][1] = 0.f;
  }
  for (int k = 0; k < count; ++k, start += kStride) {
#pragma unroll
    for (int h = 0; h < F / 64; ++h) {
      const int fa = f0 + 64 * h + 16 * warp + g8;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const float2 va = *reinterpret_cast<const float2*>(start + fa * D + 8 * n + 2 * t4);
        const float2 vb = *reinterpret_cast<const float2*>(start + (fa + 8) * D + 8 * n + 2 * t4);
        acc[h][4 * n] += va.x;
        acc[h][4 * n + 1] += va.y;
        acc[h][4 * n + 2] += vb.x;
        acc[h][4 * n + 3] += vb.y;
      }
      if (t4 == 0) {
        zp[h][0] += start[kStateF * D + fa];
        zp[h][1] += start[kStateF * D + fa + 8];
      }
    }
  }
}

// coef times the state for the next query: the matrix in bf16 at shared address `s_addr`,
// N-major in blocks of 64 columns `s_block` bytes apart (also K-major for the transposed
// product), and z at `z`: F floats (kZFloat) or row 0 of the forward's 8 x F bf16 operand.
template <int D, int F, bool kZFloat>
__device__ inline void publish_state(uint32_t s_addr, uint32_t s_block, uint8_t* z,
                                     const float (&acc)[F / 64][D / 2],
                                     const float (&zp)[F / 64][2], float coef, int warp, int g8,
                                     int t4) {
  // Store addresses from an opaque base: hoisted out of the tile loop they would hold registers
  // that the state needs.
  uint32_t base = s_addr + (16 * warp + g8) * 128 + 4 * t4;
  asm volatile("" : "+r"(base));
  // With coef = 1 (the query kernel's and kMap's unscaled state) the products fold away.
  auto store = [&](float k) {
#pragma unroll
    for (int h = 0; h < F / 64; ++h) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        // Rows f and f + 8 of the 64-column block n / 8, chunk n % 8 swizzled by f % 8 = g8.
        const uint32_t at = base + h * 64 * 128 + (n / 8) * s_block + (((n % 8) ^ g8) * 16);
        st_shared_u32(at, pack_bf16(k * acc[h][4 * n], k * acc[h][4 * n + 1]));
        st_shared_u32(at + 8 * 128, pack_bf16(k * acc[h][4 * n + 2], k * acc[h][4 * n + 3]));
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float zs = zp[h][r];
        zs += __shfl_xor_sync(kFullMask, zs, 1);
        zs += __shfl_xor_sync(kFullMask, zs, 2);
        const int f = 64 * h + 16 * warp + g8 + 8 * r;
        if (t4 == 0) {
          if constexpr (kZFloat) {
            reinterpret_cast<float*>(z)[f] = k * zs;
          } else {
            *reinterpret_cast<bf16*>(z + (f / 8) * 128 + (f % 8) * 2) = __float2bfloat16_rn(k * zs);
          }
        }
      }
    }
  };
  if (coef == 1.f)
    store(1.f);
  else
    store(coef);
  fence_async_shared();
}

// acc[h] += A[h] B over the chunk's 64 rows, with B the chunk's N-major block of D columns at
// shared address `b_addr` (the fold of a state warpgroup).
template <int D, int H>
__device__ inline void fold_chunk(float (&acc)[H][D / 2], uint32_t (&a)[4][H][4], uint32_t b_addr) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
    for (int h = 0; h < H; ++h)
      wgmma_rs<D, 1>(acc[h], a[kk][h], n_major(b_addr, kk, kBlock), true);
  }
  wgmma_commit();
  wgmma_wait<0>();
}

// A = X^T for a state warpgroup's fold: the chunk's 64-row block of F columns at `src` read
// transposed by ldmatrix into k-step kk (16 rows), half h of the F rows; `adjust(a[kk][h], kk, h)`
// then masks or scales each fragment (its registers hold rows 16 kk + 2 t4 (+ 1) and + 8).
template <int H, typename Adjust>
__device__ inline void load_fold_operand(uint32_t (&a)[4][H][4], const uint8_t* src, int warp,
                                         int lane, Adjust adjust) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
    for (int h = 0; h < H; ++h) {
      const int row = 16 * kk + (lane % 8) + (lane / 16) * 8;
      const int f = 64 * h + 16 * warp + ((lane / 8) % 2) * 8;
      ldsm_x4_t(a[kk][h], reinterpret_cast<const bf16*>(src + swizzled_offset(row, f, kBlock)));
      adjust(a[kk][h], kk, h);
    }
  }
}

// The start of the forward's and the query kernel's state warpgroups: S and z at the
// segment's start (zero for the first segment), and chunk -1's ring slot given back at once where
// no tile folds it (lin_lag = 0). Returns how many chunks the fold lags the tile (1 or 0).
// With sum_states, `states` holds each segment's own key sum and the state is those before this
// block's segment; else the scan's result, the state itself.
template <int D, int F>
__device__ inline int start_state(const float* states, int segments, bool sum_states,
                                  const UnitMode& um, const Barriers& bar,
                                  float (&acc)[F / 64][D / 2], float (&zp)[F / 64][2], int warp,
                                  int g8, int t4) {
  const int seg = blockIdx.x % segments;
  load_state<D, F>(acc, zp, states + static_cast<size_t>(blockIdx.x - seg) * (F * D + F), seg,
                   segments, sum_states, false, warp, g8, t4);
  // Tile t + 1's query needs the keys before t0 (lin_lag = 64: chunk t - 1 folded) or before
  // t0 + 64 (lin_lag = 0: chunk t folded). In the second case chunk -1 is never folded.
  const int lag_chunks = um.lin_lag > 0 ? 1 : 0;
  if (lag_chunks == 0) mbar_arrive(bar.chunk_empty + slot_of(-1));
  return lag_chunks;
}

// The state warpgroup's fold of the chunk's keys [lo, kbase + 64) (phi_k's block at `pk`, v's at
// shared address `v_addr`): acc += phi_k^T v, zp += the keys' phi_k.
template <int D, int H>
__device__ inline void fold_keys(float (&acc)[H][D / 2], float (&zp)[H][2], const uint8_t* pk,
                                 uint32_t v_addr, int kbase, int lo, int warp, int lane) {
  const int t4 = lane % 4;
  uint32_t a[4][H][4];  // A = phi_k^T
  load_fold_operand<H>(a, pk, warp, lane, [&](uint32_t(&frag)[4], int kk, int h) {
    if (lo > kbase) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int j = kbase + 16 * kk + 2 * t4 + (r / 2) * 8;
        const uint32_t keep = (j >= lo ? 0xFFFFu : 0u) | (j + 1 >= lo ? 0xFFFF0000u : 0u);
        frag[r] &= keep;
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float2 x = unpack_bf16(frag[r]);
      zp[h][r % 2] += x.x + x.y;
    }
  });
  fold_chunk<D, H>(acc, a, v_addr);
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

inline EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return static_cast<EncodeTiled>(nullptr);
    }
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}

// A [units, rows, cols] bf16 tensor as boxes of 64 columns and `box_rows` rows, 128-byte
// swizzled.
inline bool make_map(CUtensorMap* map, const void* base, int cols, int rows, int units,
                     int box_rows = kRows) {
  if (base == nullptr) return true;  // a branch the launch does not use
  // The driver's encoder needs a current context, which the runtime binds to a thread only on
  // some calls (a launch, an allocation): autograd's backward thread may have made none yet
  // (CUDA_ERROR_INVALID_CONTEXT, bench/KERNEL_NOTES.md session 28 item 4).
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) return false;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(units)};
  const cuuint64_t strides[2] = {cols * sizeof(bf16),
                                 static_cast<cuuint64_t>(rows) * cols * sizeof(bf16)};
  const cuuint32_t box[3] = {64, static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t unit_strides[3] = {1, 1, 1};
  return encode_tiled()(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims,
                        strides, box, unit_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// An sm_90 GPU with the shared memory of the largest layout and the TMA descriptor encoder.
inline bool hopper_device() {
  return device_attribute(cudaDevAttrComputeCapabilityMajor) == 9 &&
         max_dynamic_smem() >= Layout<128, 128>::kSmemBytes && encode_tiled() != nullptr;
}

// Launches `kernel` with `smem` bytes of dynamic shared memory; cudaErrorNotSupported where the
// device has less (the callers then run the mma.sync kernels).
template <typename Params>
cudaError_t launch_smem(void (*kernel)(Params), int blocks, int threads, int smem, const Params& p,
                        cudaStream_t stream) {
  if (smem > max_dynamic_smem()) return cudaErrorNotSupported;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  return launch_chained(kernel, dim3(blocks), dim3(threads), smem, stream, p);
}

// Calls fn(d, f) with std::integral_constant values of the head dim and features (64 or 128).
template <typename Fn>
cudaError_t with_sizes(int D, int F, Fn&& fn) {
  using C64 = std::integral_constant<int, 64>;
  using C128 = std::integral_constant<int, 128>;
  if (D == 64) return F == 64 ? fn(C64{}, C64{}) : fn(C64{}, C128{});
  return F == 64 ? fn(C128{}, C64{}) : fn(C128{}, C128{});
}

}  // namespace hl::kernels::cuda::detail
