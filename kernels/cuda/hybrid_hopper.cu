// Warp-specialised bf16 kernels of hybrid attention for Hopper (DESIGN §1): TMA loads, wgmma,
// the linear state in fp32 registers. The forward comes first, then the chunk-state pass, the
// backward's linear key kernel and its query kernel, each after its own comment. They take D and F
// of 64 or 128 with w = 64 (non-overlap hybrid) or w <= 64 (overlap, linear-only, window-only);
// other shapes keep the mma.sync kernels (hybrid_forward_tc.cu, hybrid_backward_tc.cu).
//
// The forward: a block of three warpgroups owns one segment of one (batch, q head) unit and walks
// it in 64-row tiles. Tile t (rows [t0, t0 + 64)) sees the keys of chunk t - 1 and chunk t (64 keys
// each): every window key (w <= 64) and every linear key that is not yet in the state S. With
// lin_lag = 64 (key j is linear for row i when j <= i - 64) S holds the keys before t0 - 64 and
// the unfolded linear keys lie in chunk t - 1; with lin_lag = 0 S holds the keys before t0 and
// they lie in chunk t. Before the first tile S is what the chunk-state pass gave (keys before
// r_begin - state_lag), so with lin_lag = 64 the first fold takes only the rest of chunk -1.
// - producer (warpgroup 0, one thread): TMA loads of each chunk's k, v, phi_k into a ring of
//   three slots, and of each tile's q and phi_q.
// - consumer (warpgroup 1): q k^T and phi_q phi_k^T over the 128 keys, masks and the window
//   softmax into one weight matrix P held in registers, then y = (P v + c_l phi_q S) / den.
// - state (warpgroup 2): S (F x D) and z in fp32 registers. While the consumer works on tile t
//   it folds the next chunk into S, then writes c_l S (bf16) and c_l z for tile t + 1's query.
// The chunk-state pass gives each segment its start state (and the backward its reverse state).
// Forward only, the hedgehog feature maps can run inside the forward and the chunk-state pass
// (kMap): the state warpgroup computes phi_q (times c_l, S and z then unscaled) and phi_k from
// q, k and the maps' weights instead of the producer loading them, so that the consumer runs
// the products of the unmapped kernel.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "kernels/cuda/hopper.cuh"
#include "kernels/cuda/hybrid_common.cuh"
#include "kernels/cuda/hybrid_forward_tc.cuh"
#include "kernels/cuda/hybrid_internal.cuh"
#include "kernels/cuda/hybrid_tc_common.cuh"

namespace hl::kernels::cuda::detail {
namespace {

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
// softmax(-r)), clamped below at 1e-12 as the unfused map. out may be r.
template <bool kNeg>
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
  for (int i = 0; i < 32; ++i)
    out[i] = fmaxf(out[i] * sum[(i >> 1) & 1], 1e-12f);
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
// one segment. acc[h] holds rows [64 h, 64 h + 64), this thread rows f = 64 h + 16 warp + g8
// (+ 8), and zp[h][0 / 1] the z partial sums of them.
template <int D, int F>
__device__ inline void load_state(float (&acc)[F / 64][D / 2], float (&zp)[F / 64][2],
                                  const float* unit_states, int seg, int segments, bool sums,
                                  bool suffix, int warp, int g8, int t4) {
  const int count = segments == 1 ? 0 : (sums ? (suffix ? segments - 1 - seg : seg) : 1);
  const float* start =
      unit_states + static_cast<size_t>(sums ? (suffix ? seg + 1 : 0) : seg) * (F * D + F);
#pragma unroll
  for (int h = 0; h < F / 64; ++h) {
#pragma unroll
    for (int i = 0; i < D / 2; ++i)
      acc[h][i] = 0.f;
    zp[h][0] = zp[h][1] = 0.f;
  }
  for (int k = 0; k < count; ++k, start += F * D + F) {
#pragma unroll
    for (int h = 0; h < F / 64; ++h) {
      const int fa = 64 * h + 16 * warp + g8;
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
        zp[h][0] += start[F * D + fa];
        zp[h][1] += start[F * D + fa + 8];
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

template <int D, int F, bool kMap>
__device__ void produce(const WgParams& p, const UnitMode& um, uint8_t* smem, const Barriers& bar,
                        int unit, int kv_unit, int r_begin, int tiles) {
  using L = Layout<D, F, kMap>;
  if (kMap && um.use_linear) {
    const int head = unit % p.s.q_heads;
    mbar_expect_bytes(bar.w_full, 2 * D / 64 * kBlock);
    for (int b = 0; b < D / 64; ++b) {
      tma_load_3d(smem + L::kWqOff + b * kBlock, &p.w_q, 0, b * 64, head, bar.w_full);
      tma_load_3d(smem + L::kWkOff + b * kBlock, &p.w_k, 0, b * 64, head, bar.w_full);
    }
  }
  load_chunk<D, F, L, WgParams, kMap>(p, um, smem, bar, unit, kv_unit, r_begin, -1);
  for (int t = 0; t < tiles; ++t) {
    load_chunk<D, F, L, WgParams, kMap>(p, um, smem, bar, unit, kv_unit, r_begin, t);
    // q and phi_q are single buffers, freed as soon as the products that read them are done.
    // With kMap the state warpgroup computes phi_q from q.
    const int row = r_begin + t * kRows;
    if (um.use_window || (kMap && um.use_linear)) {
      if (t > 0) mbar_wait(bar.q_empty, (t - 1) & 1);
      mbar_expect_bytes(bar.q_full, D / 64 * kBlock);
      for (int b = 0; b < D / 64; ++b)
        tma_load_3d(smem + L::kQOff + b * kBlock, &p.q, b * 64, row, unit, bar.q_full);
    }
    if (!kMap && um.use_linear) {
      if (t > 0) mbar_wait(bar.pq_empty, (t - 1) & 1);
      mbar_expect_bytes(bar.pq_full, F / 64 * kBlock);
      for (int b = 0; b < F / 64; ++b)
        tma_load_3d(smem + L::kPqOff + b * kBlock, &p.phi_q, b * 64, row, unit, bar.pq_full);
    }
  }
}

// kWindow / kLinear: the branches of this unit, as template arguments so that every wgmma is
// issued unconditionally within its instantiation (a conditional issue serialises them). kMap:
// phi_q and phi_k come from the state warpgroup (phi_k from its ring).
template <int D, int F, bool kWindow, bool kLinear, bool kMap>
__device__ void consume(const WgParams& p, const UnitMode& um, uint8_t* smem, const Barriers& bar,
                        int unit, int r_begin, int r_end, int tiles) {
  const Shape& s = p.s;
  const int N = s.seq_len;
  const int w = s.window;
  const int ct = threadIdx.x - 128;
  const int warp = ct / 32;
  const int lane = ct % 32;
  const int g8 = lane / 4;
  const int t4 = lane % 4;
  const float coef_w = p.coef_window[unit];
  // kMap's phi_q comes times c_l (and S, z without it), so its linear scores carry c_l already.
  const float coef_l = kMap ? 1.f : p.coef_linear[unit];
  const float scale_log2 = s.scale * 1.4426950408889634f;
  const uint32_t sbase = shared_address(smem);
  using L = Layout<D, F, kMap>;
  const uint32_t q_addr = sbase + L::kQOff, pq_addr = sbase + L::kPqOff;
  // The keys that are linear but not in the state lie in chunk t - 1 when lin_lag = 64 and in
  // chunk t when lin_lag = 0 (the state warpgroup folds one chunk later or earlier).
  const int lin_c = um.lin_lag > 0 ? 0 : 1;

  // Tile t's window scores q k^T over chunks t - 1 and t, one wgmma group: tile 0's before the
  // loop, tile t + 1's at the end of tile t once P v is done, so that they run while tile t's y
  // is staged and stored. After the last tile the group is issued all the same, on whatever the
  // buffers hold, and dropped: a wgmma issued under a condition would serialise the others.
  // kMap issues them at the top of each tile instead: there q is freed only once the state
  // warpgroup has projected it too, and the early issue measured 4% slower (438-447 against
  // 460-465 us at B1 16K, H200).
  constexpr bool kEarly = !kMap;
  float sc[2][32];
  auto issue_scores = [&](int t) {
    if (t < tiles) {
      mbar_wait(bar.chunk_full + slot_of(t - 1), use_of(t - 1) & 1);
      mbar_wait(bar.chunk_full + slot_of(t), use_of(t) & 1);
      mbar_wait(bar.q_full, t & 1);
    }
    // The first k-step overwrites sc: its old values are dead here, not carried round the loop
    // (live through P v and the y store, they spilled).
#pragma unroll
    for (int i = 0; i < 32; ++i)
      asm volatile("" : "=f"(sc[0][i]), "=f"(sc[1][i]));
    wgmma_fence();
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const uint32_t slot = sbase + slot_of(t - 1 + c) * L::kSlotBytes;
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks)
        wgmma_ss_n64<0, 0>(sc[c], k_major(q_addr, ks), k_major(slot, ks), ks > 0);
    }
    wgmma_commit();
  };
  if constexpr (kWindow && kEarly) issue_scores(0);

  for (int t = 0; t < tiles; ++t) {
    const int t0 = r_begin + t * kRows;
    const int kbase = t0 - kRows;                       // first key of chunk t - 1
    const int slots[2] = {slot_of(t - 1), slot_of(t)};  // chunks t - 1 and t
    mbar_wait(bar.chunk_full + slots[0], use_of(t - 1) & 1);
    mbar_wait(bar.chunk_full + slots[1], use_of(t) & 1);

    // Accumulators are never written by ordinary instructions (the first k-step overwrites), so
    // the wgmma groups run without serialising. The scores, issued before this tile, are waited
    // for first (q is then free): the group after them writes o, which tile t - 1's y was read
    // from while they ran. Then phi_q phi_k^T over the chunk with linear keys and the state
    // query c_l phi_q S, c_l phi_q . z (the state warpgroup publishes S and z times c_l, or with
    // kMap phi_q times c_l) run during the window's softmax; after them phi_q and S are free.
    if constexpr (kWindow && !kEarly) issue_scores(t);
    if constexpr (kWindow && kEarly) {
      wgmma_wait<0>();
      mbar_arrive(bar.q_empty);
    }
    // Tile t - 1's y store has been in flight since the end of that tile: once it has read
    // chunk t - 2's slot (where y was staged), the slot goes back to the producer.
    if (kEarly && t > 0 && ct == 0) {
      bulk_wait_read();
      mbar_arrive(bar.chunk_empty + slot_of(t - 2));
    }
    float lin[32], o[D / 2], zd[4];
    if constexpr (kLinear) {
      mbar_wait(bar.pq_full, t & 1);
      uint32_t pk_addr = sbase + (lin_c == 0 ? slots[0] : slots[1]) * L::kSlotBytes + L::kPkOff;
      if constexpr (kMap) {
        // phi_k of the chunk of unfolded linear keys, the state warpgroup's t-th (entry t % 2).
        mbar_wait(bar.pk_ready + (t & 1), (t >> 1) & 1);
        pk_addr = sbase + L::kPkRingOff + (t & 1) * L::kPkBytes;
      }
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < F / 16; ++ks)
        wgmma_ss_n64<0, 0>(lin, k_major(pq_addr, ks), k_major(pk_addr, ks), ks > 0);
      mbar_wait(bar.s_full, t & 1);
#pragma unroll
      for (int ks = 0; ks < F / 16; ++ks) {
        wgmma_ss<D, 0, 1>(o, k_major(pq_addr, ks), n_major(sbase + L::kSOff, ks, L::kSBlock),
                          ks > 0);
        wgmma_ss_n8<0, 0>(zd, k_major(pq_addr, ks),
                          desc_plus(interleaved_desc(sbase + L::kZOff, 128, 256), ks * 256),
                          ks > 0);
      }
      wgmma_commit();
    }
    if constexpr (kWindow && !kEarly) {
      wgmma_wait<kLinear ? 1 : 0>();
      mbar_arrive(bar.q_empty);
    }

    const int ia = t0 + warp * 16 + g8, ib = ia + 8;
    float m_a = 0.f, m_b = 0.f, wsum_a = 0.f, wsum_b = 0.f, lsum_a = 0.f, lsum_b = 0.f;
    int am_a = -1, am_b = -1;
    if constexpr (kWindow) {
      // Row r sees key j iff 0 <= r - j < min(w, r + 1). Element i of chunk c is key
      // j = kbase + 2 t4 + e with e a constant once unrolled, so the test is two compares of
      // constants against per-row registers: before < e <= last, last the offset of key r.
      // Masked scores become -inf (their exponential is 0 and they never equal a finite max);
      // the max is taken on the raw scores (scale > 0), the scale goes into the exponential's fma.
      // In chunk 0, e <= 57 < 58 <= last: only the lower bound is tested.
      const int last_a = ia - kbase - 2 * t4, last_b = last_a + 8;
      const int before_a = last_a - min(w, ia + 1), before_b = last_b - min(w, ib + 1);
      float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
#pragma unroll
        for (int i = 0; i < 32; ++i) {
          const int e = c * 64 + (i / 4) * 8 + (i & 1);
          const bool in = (i & 2) ? (c == 0 || e <= last_b) && e > before_b
                                  : (c == 0 || e <= last_a) && e > before_a;
          const float v = in ? sc[c][i] : -INFINITY;
          sc[c][i] = v;
          if (i & 2)
            mx_b = fmaxf(mx_b, v);
          else
            mx_a = fmaxf(mx_a, v);
        }
      }
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        mx_a = fmaxf(mx_a, __shfl_xor_sync(kFullMask, mx_a, off));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(kFullMask, mx_b, off));
      }
      m_a = mx_a == -INFINITY ? 0.f : mx_a * scale_log2;
      m_b = mx_b == -INFINITY ? 0.f : mx_b * scale_log2;
      // Backwards, so that the argmax is the smallest key of the row with the max score.
      int ea = 1 << 30, eb = 1 << 30;
#pragma unroll
      for (int c = 1; c >= 0; --c) {
#pragma unroll
        for (int i = 31; i >= 0; --i) {
          const int e = c * 64 + (i / 4) * 8 + (i & 1);
          const float ex = fast_exp2(fmaf(sc[c][i], scale_log2, (i & 2) ? -m_b : -m_a));
          if (i & 2) {
            wsum_b += ex;
            eb = sc[c][i] == mx_b ? e : eb;
          } else {
            wsum_a += ex;
            ea = sc[c][i] == mx_a ? e : ea;
          }
          sc[c][i] = coef_w * ex;
        }
      }
      ea += 2 * t4;  // key offsets from kbase, taken to the quad's smallest
      eb += 2 * t4;
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        ea = min(ea, __shfl_xor_sync(kFullMask, ea, off));
        eb = min(eb, __shfl_xor_sync(kFullMask, eb, off));
      }
      am_a = mx_a == -INFINITY ? -1 : kbase + ea;
      am_b = mx_b == -INFINITY ? -1 : kbase + eb;
    }
    if constexpr (!kWindow) {
#pragma unroll
      for (int i = 0; i < 32; ++i)
        sc[0][i] = sc[1][i] = 0.f;
    }
    if constexpr (kLinear) {
      wgmma_wait<0>();
      mbar_arrive(bar.pq_empty);
      mbar_arrive(bar.s_empty);
      // Linear keys outside the state: [s_lo, row - lin_lag].
      const int s_lo = t == 0 ? r_begin - um.state_lag : kbase + kRows * lin_c;
      auto add_linear = [&](float(&pc)[32], int j0) {
        // As the window's test: key j = j0 + 2 t4 + e, e a constant, lies in
        // [max(s_lo, 0), row - lin_lag] iff lo <= e <= hi_a (hi_b).
        const int lo = max(s_lo, 0) - j0 - 2 * t4;
        const int hi_a = ia - um.lin_lag - j0 - 2 * t4, hi_b = hi_a + 8;
#pragma unroll
        for (int i = 0; i < 32; ++i) {
          const int e = (i / 4) * 8 + (i & 1);
          const bool in = e >= lo && e <= ((i & 2) ? hi_b : hi_a);
          const float pv = in ? lin[i] : 0.f;
          if (i & 2)
            lsum_b += pv;
          else
            lsum_a += pv;
          pc[i] = fmaf(coef_l, pv, pc[i]);
        }
      };
      if (lin_c == 0)
        add_linear(sc[0], kbase);
      else
        add_linear(sc[1], kbase + kRows);
    }
    // P as the A fragments of P v: k-step kk of chunk c covers C tiles 2 kk and 2 kk + 1.
    uint32_t pa[2][4][4];
#pragma unroll
    for (int c = 0; c < 2; ++c) {
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
        for (int r = 0; r < 4; ++r)
          pa[c][kk][r] = pack_bf16(sc[c][8 * kk + 2 * r], sc[c][8 * kk + 2 * r + 1]);
      }
    }
    float z_a = 0.f, z_b = 0.f;
    if constexpr (kLinear) {
      // Column 0 of phi_q z^T is in the lanes with t4 = 0.
      z_a = __shfl_sync(kFullMask, zd[0], lane & ~3);
      z_b = __shfl_sync(kFullMask, zd[2], lane & ~3);
    }

    wgmma_fence();
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const uint32_t v_addr = sbase + slots[c] * L::kSlotBytes + L::kVOff;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        wgmma_rs<D, 1>(o, pa[c][kk], n_major(v_addr, kk, kBlock), kLinear || c > 0 || kk > 0);
      }
    }
    wgmma_commit();

    // The denominators while P v runs.
    quad_sum(wsum_a, wsum_b, lsum_a, lsum_b);
    float den_a, den_b;
    if constexpr (!kWindow) {
      den_a = coef_l * lsum_a + z_a + s.eps;
      den_b = coef_l * lsum_b + z_b + s.eps;
    } else if constexpr (!kLinear) {
      den_a = coef_w * wsum_a;
      den_b = coef_w * wsum_b;
    } else {
      den_a = coef_w * wsum_a + coef_l * lsum_a + z_a;
      den_b = coef_w * wsum_b + coef_l * lsum_b + z_b;
    }
    wgmma_wait<0>();
    if constexpr (kWindow && kEarly) issue_scores(t + 1);

    const float inv_a = 1.f / den_a, inv_b = 1.f / den_b;
    // y goes out through shared memory and one TMA store: the keys of chunk t - 1 (free since
    // this tile's scores) hold it in the swizzled layout of the y tensor map. Segments are whole
    // tiles, so the box never reaches into another block's rows; rows past N are dropped.
    {
      // Rows ra and ra + 8 (ra % 8 = g8), chunk n % 8 of column block n / 8, swizzled by g8.
      uint32_t row_base = sbase + slots[0] * L::kSlotBytes + (warp * 16 + g8) * 128 + 4 * t4;
      asm volatile("" : "+r"(row_base));  // rebuilt per tile, not hoisted into registers
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const uint32_t at = row_base + (n / 8) * kBlock + (((n % 8) ^ g8) * 16);
        st_shared_u32(at, pack_bf16(o[4 * n] * inv_a, o[4 * n + 1] * inv_a));
        st_shared_u32(at + 8 * 128, pack_bf16(o[4 * n + 2] * inv_b, o[4 * n + 3] * inv_b));
      }
      fence_async_shared();
      named_barrier(1, 128);
      if (ct == 0) {
        for (int b = 0; b < D / 64; ++b)
          tma_store_3d(&p.y, smem + slots[0] * L::kSlotBytes + b * kBlock, b * 64, t0, unit);
        bulk_commit();
        // With kEarly the next tile waits for the store to have read the slot.
        if constexpr (!kEarly) {
          bulk_wait_read();
          mbar_arrive(bar.chunk_empty + slots[0]);  // the last tile that reads chunk t - 1
        }
      }
    }
    if (t4 == 0) {
      const float ln2 = 0.6931471805599453f;
      if (ia < r_end) {
        const size_t ri = static_cast<size_t>(unit) * N + ia;
        p.row_max[ri] = kWindow ? m_a * ln2 : 0.f;
        p.row_denom[ri] = den_a;
        p.row_argmax[ri] = kWindow ? am_a : -1;
      }
      if (ib < r_end) {
        const size_t ri = static_cast<size_t>(unit) * N + ib;
        p.row_max[ri] = kWindow ? m_b * ln2 : 0.f;
        p.row_denom[ri] = den_b;
        p.row_argmax[ri] = kWindow ? am_b : -1;
      }
    }
  }
  wgmma_wait<0>();
  if (ct == 0) bulk_wait();  // the last y stores are complete before the block ends
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
template <int D, int F, typename P>
__device__ inline int start_state(const P& p, const UnitMode& um, const Barriers& bar,
                                  float (&acc)[F / 64][D / 2], float (&zp)[F / 64][2], int warp,
                                  int g8, int t4) {
  // With sum_states, `states` holds each segment's own key sum and the state is those before
  // this block's segment; else the scan's result, the state itself.
  const int seg = blockIdx.x % p.segments;
  load_state<D, F>(acc, zp, p.states + static_cast<size_t>(blockIdx.x - seg) * (F * D + F), seg,
                   p.segments, p.sum_states, false, warp, g8, t4);
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

// The forward's state warpgroup. L names the ring slots (kSlotBytes, kVOff,
// kPkOff) and the published state (kSOff, kSBlock, kZOff, kZFloat); P has the segment start states
// (segments, states). S and z are published times `coef` (c_l for the forward's query). kMap:
// phi_q of each tile (times coef instead of S and z) and phi_k of each chunk are computed here
// first (hedgehog(x W) into the phi_q tile and the ring entry the consumer reads too), phi_k
// also for the last tile, whose chunk is not folded.
template <int D, int F, typename L, typename P, bool kMap = false>
__device__ void keep_state(const P& p, const UnitMode& um, uint8_t* smem, const Barriers& bar,
                           int r_begin, int tiles, float coef) {
  constexpr int H = F / 64;  // 64-row halves of S
  const int st = threadIdx.x - 256;
  const int warp = st / 32;
  const int lane = st % 32;
  const int g8 = lane / 4;
  const int t4 = lane % 4;
  const uint32_t sbase = shared_address(smem);
  float acc[H][D / 2], zp[H][2];
  const int lag_chunks = start_state<D, F>(p, um, bar, acc, zp, warp, g8, t4);
  auto publish = [&]() {
    publish_state<D, F, L::kZFloat>(sbase + L::kSOff, L::kSBlock, smem + L::kZOff, acc, zp,
                                    kMap ? 1.f : coef, warp, g8, t4);
    mbar_arrive(bar.s_full);
  };
  publish();
  for (int t = 0; t < tiles; ++t) {
    const int c = t - lag_chunks;
    const int slot = slot_of(c);
    mbar_wait(bar.chunk_full + slot, use_of(c) & 1);
    const bool needed = t + 1 < tiles;
    const int kbase = r_begin + c * kRows;
    const uint8_t* pk = smem + slot * L::kSlotBytes + L::kPkOff;
    if constexpr (kMap) {
      if (t == 0) mbar_wait(bar.w_full, 0);
      // phi_q of tile t into its tile, then phi_k into ring entry t % 2: softmax(x W) in the
      // first 64 columns, softmax(-x W) in the next, as the consumer's wgmma reads them.
      float r[32], pos[32];
      auto stage_map = [&](uint32_t out, uint64_t* ready, float scale) {
        hedgehog_pair(r, pos);
        stage_tile<64>(out, pos, scale, scale, st);
        stage_tile<64>(out + kBlock, r, scale, scale, st);
        fence_async_shared();  // the consumer's wgmma reads the tile
        named_barrier(2, 128);
        if (st == 0) mbar_arrive(ready);
      };
      mbar_wait(bar.q_full, t & 1);
      project_tile<D>(r, sbase + L::kQOff, sbase + L::kWqOff);
      mbar_arrive(bar.q_empty);
      if (t > 0) mbar_wait(bar.pq_empty, (t - 1) & 1);
      stage_map(sbase + L::kPqOff, bar.pq_full, coef);
      project_tile<D>(r, sbase + slot * L::kSlotBytes + L::kKOff, sbase + L::kWkOff);
      pk = smem + L::kPkRingOff + (t & 1) * L::kPkBytes;
      stage_map(shared_address(pk), bar.pk_ready + (t & 1), 1.f);
    }
    // The first fold takes the keys of chunk -1 that the start state does not hold.
    const int lo = c < 0 ? max(r_begin - um.state_lag, 0) : kbase;
    if (needed && lo < kbase + kRows)
      fold_keys<D, H>(acc, zp, pk, sbase + slot * L::kSlotBytes + L::kVOff, kbase, lo, warp, lane);
    mbar_arrive(bar.chunk_empty + slot);
    if (needed) {
      mbar_wait(bar.s_empty, t & 1);
      publish();
    }
  }
}

template <int D, int F, bool kMap>
__global__ void __launch_bounds__(kWgThreads, 1)
    forward_wg_kernel(const __grid_constant__ WgParams p) {
  await_previous_kernel();
  using L = Layout<D, F, kMap>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // The kMap layout has no slack for aligning the base (observed aligned on sm_90).
  if (kMap && (shared_address(smem_raw) & 1023) != 0) __trap();
  uint8_t* smem = smem_raw + ((1024 - (shared_address(smem_raw) & 1023)) & 1023);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBarOff);
  const Barriers bar = ring_barriers(bars);

  const Shape& s = p.s;
  const int unit = blockIdx.x / p.segments;
  const int seg = blockIdx.x - unit * p.segments;
  const int h = unit % s.q_heads;
  const int b = unit / s.q_heads;
  const int kv_unit = b * s.kv_heads + h / (s.q_heads / s.kv_heads);
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const int r_begin = seg * p.segment_len;
  const int r_end = min(s.seq_len, r_begin + p.segment_len);
  const int tiles = (r_end - r_begin + kRows - 1) / kRows;

  if (threadIdx.x == 0) {
    for (int i = 0; i < kSlots; ++i) {
      mbar_init(bar.chunk_full + i, 1);
      // One consumer thread (after its y store has read the chunk's key block) and, when there
      // is a linear branch, every thread of the state warpgroup.
      mbar_init(bar.chunk_empty + i, um.use_linear ? 129 : 1);
    }
    mbar_init(bar.q_full, 1);
    // The consumer's scores and, with kMap, the state warpgroup's projection read q.
    mbar_init(bar.q_empty, (um.use_window || !kMap ? 128 : 0) + (kMap && um.use_linear ? 128 : 0));
    mbar_init(bar.pq_full, 1);
    mbar_init(bar.pq_empty, 128);
    mbar_init(bar.s_full, 128);
    mbar_init(bar.s_empty, 128);
    if constexpr (kMap) {
      mbar_init(bar.w_full, 1);
      mbar_init(bar.pk_ready, 1);
      mbar_init(bar.pk_ready + 1, 1);
    }
    mbar_init_fence();
  }
  // Rows 1-7 of the z operand stay zero.
  for (int i = threadIdx.x; i < L::kZBytes / 16; i += kWgThreads)
    reinterpret_cast<uint4*>(smem + L::kZOff)[i] = make_uint4(0, 0, 0, 0);
  fence_async_shared();
  __syncthreads();

  // kMap: the state warpgroup also holds the projections and their activations, so it gets what
  // the consumer can spare.
  constexpr int kConsumerRegs = kMap ? 240 : 256, kStateRegs = kMap ? 240 : 216;
  static_assert(regs_fit(kWgThreads, 24 + kConsumerRegs + kStateRegs),
                "registers over the launch's");
  const int group = threadIdx.x / 128;
  if (group == 0) {
    regs_shrink<24>();
    if (threadIdx.x == 0) produce<D, F, kMap>(p, um, smem, bar, unit, kv_unit, r_begin, tiles);
  } else if (group == 1) {
    regs_grow<kConsumerRegs>();
    if (!um.use_linear)
      consume<D, F, true, false, kMap>(p, um, smem, bar, unit, r_begin, r_end, tiles);
    else if (!um.use_window)
      consume<D, F, false, true, kMap>(p, um, smem, bar, unit, r_begin, r_end, tiles);
    else
      consume<D, F, true, true, kMap>(p, um, smem, bar, unit, r_begin, r_end, tiles);
  } else {
    regs_grow<kStateRegs>();
    if (um.use_linear) {
      keep_state<D, F, L, WgParams, kMap>(p, um, smem, bar, r_begin, tiles, p.coef_linear[unit]);
    }
  }
}

// ---- chunk-state pass -----------------------------------------------------------------------
//
// One block per (unit, segment): S = sum_r a_r b_r^T and z = sum_r a_r over the segment's rows
// (DESIGN's running state, as run_state_pass_tc). The producer streams 64-row chunks of a (phi)
// and b (v or dy) through a ring of kSpStages slots; F / 64 consumer warpgroups each own 64 rows
// of S in wgmma accumulators and fold every chunk as the forward's state warpgroup does (a^T from
// ldmatrix.trans as the register operand). kScaled: a_r is divided by row_denom[r] and z sums
// a_r row_weight[r] / row_denom[r] (the backward's U and u); two warps of the producer
// warpgroup copy the two factors of each chunk into the stage beside the TMA loads. kMap: the
// stages hold k instead of phi_k, and each consumer warpgroup computes its half of
// phi_k = hedgehog(k W_k) (F = 128) into a scratch block of its own before the fold.

constexpr int kSpStages = 4;

template <int D, int F, bool kMap = false>
struct SpLayout {
  static constexpr int kBOff = (kMap ? D : F) / 64 * kBlock;  // a stage: a, b, the factors
  static constexpr int kFactorOff = kBOff + D / 64 * kBlock;
  static constexpr int kStageBytes = (kFactorOff + 2 * 256 + 1023) / 1024 * 1024;
  static constexpr int kWOff = kSpStages * kStageBytes;                     // kMap: W_k [D][64]
  static constexpr int kScratchOff = kWOff + (kMap ? D / 64 * kBlock : 0);  // [F / 64][2] blocks
  static constexpr int kBarOff = kScratchOff + (kMap ? F / 64 * 2 * kBlock : 0);
  static constexpr int kSmemBytes = kBarOff + (2 * kSpStages + 1) * 8 + 1024;
  static_assert(!kMap || F == 128, "the fused hedgehog map projects to p = 64 (F = 128)");
};

struct SpParams {
  CUtensorMap a, b;    // as the forward's maps
  CUtensorMap w;       // kMap: W_k [Hq][D][64]
  const float* denom;  // kScaled: [units, N]
  const float* weight;
  Shape s;
  const uint8_t* window_drop;
  float* out;  // [units * segments, F * D + F]
  int segments, segment_len, fixed_lag, lag_sign, range_end;
  bool b_per_kv, all_units;
  int skip;             // as run_state_pass_tc's
  int per_block;        // consecutive segments a block sums (each written on its own)
  int blocks_per_unit;  // ceil(segments / per_block)
  int pass_blocks;      // units * blocks_per_unit; blocks after them sum `coef`'s outputs
  CoefSumParams coef;
};

template <int D, int F, bool kScaled, bool kMap>
__global__ void __launch_bounds__(128 * (1 + F / 64), 1)
    state_pass_wg_kernel(const __grid_constant__ SpParams p) {
  static_assert(!kMap || regs_fit(128 * (1 + F / 64), 24 + 240 * (F / 64)),
                "registers over the launch's");
  await_previous_kernel();
  if constexpr (!kMap) {
    if (static_cast<int>(blockIdx.x) >= p.pass_blocks) {  // dc_w, dc_l beside the pass
      const int o = blockIdx.x - p.pass_blocks;
      const double t = coef_rows_sum(p.coef, o, 0, p.coef.n);
      if (threadIdx.x == 0) p.coef.out[o] = static_cast<float>(t);
      return;
    }
  }
  using L = SpLayout<D, F, kMap>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (shared_address(smem_raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBarOff);
  uint64_t* empty = full + kSpStages;
  uint64_t* w_full = empty + kSpStages;

  const Shape& s = p.s;
  const int N = s.seq_len;
  const int unit = blockIdx.x / p.blocks_per_unit;
  const int seg_first = (blockIdx.x - unit * p.blocks_per_unit) * p.per_block;
  const int seg_stop = min(p.segments, seg_first + p.per_block);
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  if (!p.all_units && !um.use_linear) return;
  const int b_unit =
      p.b_per_kv ? (unit / s.q_heads) * s.kv_heads + (unit % s.q_heads) / (s.q_heads / s.kv_heads)
                 : unit;
  const int lag = p.fixed_lag >= 0 ? p.fixed_lag : um.state_lag;
  const int shift = p.lag_sign * lag;
  // The block's segments in order: visit(seg, begin, end, chunks, ring), rows [begin, end) in
  // `chunks` chunks whose first takes the ring's stage `ring` (the block's chunks before it), so
  // that every role streams all of the block's chunks through one ring.
  auto for_each_segment = [&](auto visit) {
    int ring = 0;
    for (int seg = seg_first; seg < seg_stop; ++seg) {
      if (seg == p.skip) continue;
      const int begin = max(0, seg * p.segment_len + shift);
      const int end =
          seg == p.segments - 1 ? p.range_end : min(p.range_end, (seg + 1) * p.segment_len + shift);
      const int chunks = end > begin ? (end - begin + kRows - 1) / kRows : 0;
      visit(seg, begin, end, chunks, ring);
      ring += chunks;
    }
  };

  if (threadIdx.x == 0) {
    for (int i = 0; i < kSpStages; ++i) {
      mbar_init(full + i, kScaled ? 1 + kRows : 1);  // + the factor copies
      mbar_init(empty + i, F / 64 * 128);
    }
    mbar_init(w_full, 1);
    mbar_init_fence();
  }
  __syncthreads();

  const int group = threadIdx.x / 128;
  if (group == 0) {
    if constexpr (kMap) regs_shrink<24>();  // the projections' two accumulators need the rest
    if (kScaled && threadIdx.x >= 64) {
      // Warps 2-3: row r of each chunk's denom and weight factors (plain loads).
      const int r = threadIdx.x - 64;
      const float* denom = p.denom + static_cast<size_t>(unit) * N;
      const float* weight = p.weight + static_cast<size_t>(unit) * N;
      for_each_segment([&](int, int begin, int, int chunks, int ring) {
        for (int c = 0; c < chunks; ++c) {
          const int stage = (ring + c) % kSpStages;
          const uint32_t use = (ring + c) / kSpStages;
          const int row = begin + c * kRows + r;
          const float d = row < N ? denom[row] : 0.f;
          const float w = row < N ? weight[row] : 0.f;
          if (use > 0) mbar_wait(empty + stage, (use - 1) & 1);
          float* fac = reinterpret_cast<float*>(smem + stage * L::kStageBytes + L::kFactorOff);
          fac[r] = d;
          fac[kRows + r] = w;
          mbar_arrive(full + stage);
        }
      });
      return;
    }
    if (threadIdx.x != 0) return;
    constexpr int a_blocks = (kMap ? D : F) / 64;
    constexpr uint32_t bytes = (a_blocks + D / 64) * kBlock;
    for_each_segment([&](int, int begin, int, int chunks, int ring) {
      if (kMap && ring == 0 && chunks > 0) {  // no copy may still be landing when the block ends
        mbar_expect_bytes(w_full, D / 64 * kBlock);
        for (int b = 0; b < D / 64; ++b)
          tma_load_3d(smem + L::kWOff + b * kBlock, &p.w, 0, b * 64, unit % s.q_heads, w_full);
      }
      for (int c = 0; c < chunks; ++c) {
        const int stage = (ring + c) % kSpStages;
        const uint32_t use = (ring + c) / kSpStages;
        if (use > 0) mbar_wait(empty + stage, (use - 1) & 1);
        uint8_t* base = smem + stage * L::kStageBytes;
        const int row = begin + c * kRows;
        mbar_expect_bytes(full + stage, bytes);
        for (int b = 0; b < a_blocks; ++b)
          tma_load_3d(base + b * kBlock, &p.a, b * 64, row, kMap ? b_unit : unit, full + stage);
        for (int b = 0; b < D / 64; ++b)
          tma_load_3d(base + L::kBOff + b * kBlock, &p.b, b * 64, row, b_unit, full + stage);
      }
    });
    return;
  }

  if constexpr (kMap) regs_grow<240>();
  const int h = group - 1;  // rows [64 h, 64 h + 64) of S
  const int ct = threadIdx.x - 128 * group;
  const int warp = ct / 32;
  const int lane = ct % 32;
  const int g8 = lane / 4;
  const int t4 = lane % 4;
  const uint32_t sbase = shared_address(smem);
  float acc[D / 2], zp[2];
  // acc += a^T b over chunk c of rows [begin, end) (the block's chunk g, so the ring's stage
  // g % kSpStages), with column block h of a at `a_block`; chunk 0 starts the sum. Waits for every
  // wgmma in flight, then gives the stage back.
  auto fold = [&](int g, int c, int begin, int end, const uint8_t* a_block) {
    const int stage = g % kSpStages;
    const uint8_t* base = smem + stage * L::kStageBytes;
    const int row0 = begin + c * kRows;
    uint32_t a[4][4];  // a^T: k-step kk (16 rows)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const int key = 16 * kk + (lane % 8) + (lane / 16) * 8;
      const int f = 16 * warp + ((lane / 8) % 2) * 8;
      ldsm_x4_t(a[kk], reinterpret_cast<const bf16*>(a_block + swizzled_offset(key, f, kBlock)));
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        // Elements (row j, f) and (row j + 1, f) of this register; rows past `end` drop out.
        const int jl = 16 * kk + 2 * t4 + (r / 2) * 8;
        const int j = row0 + jl;
        float2 x = unpack_bf16(a[kk][r]);
        float w0 = 1.f, w1 = 1.f;
        if constexpr (kScaled) {
          const float* fac = reinterpret_cast<const float*>(base + L::kFactorOff);
          const float d0 = fac[jl], d1 = fac[jl + 1];
          const float i0 = j < end && d0 != 0.f ? fast_rcp(d0) : 0.f;
          const float i1 = j + 1 < end && d1 != 0.f ? fast_rcp(d1) : 0.f;
          x.x *= i0;
          x.y *= i1;
          w0 = fac[64 + jl];
          w1 = fac[64 + jl + 1];
          a[kk][r] = pack_bf16(x.x, x.y);
        } else {
          if (j >= end) x.x = 0.f;
          if (j + 1 >= end) x.y = 0.f;
          if (j + 1 >= end) a[kk][r] = pack_bf16(x.x, x.y);
        }
        zp[r % 2] += x.x * w0 + x.y * w1;
      }
    }
    const uint32_t b_addr = sbase + stage * L::kStageBytes + L::kBOff;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_rs<D, 1>(acc, a[kk], n_major(b_addr, kk, kBlock), c > 0 || kk > 0);
    wgmma_commit();
    wgmma_wait<0>();
    mbar_arrive(empty + stage);
  };
  for_each_segment([&](int seg, int begin, int end, int chunks, int ring) {
    zp[0] = zp[1] = 0.f;
    if constexpr (kMap) {
      // One segment a block (run_state_pass_wg), so ring = 0. This warpgroup's half of
      // hedgehog(k W_k) into one of two scratch blocks (a block is rewritten only after every
      // thread has passed the next chunk's barrier, so after its reads of this one). The
      // projection of chunk c + 1 runs while chunk c's activation does: two accumulators, the
      // loop unrolled by two so that each stays in registers.
      auto project = [&](float(&r)[32], int c) {
        const int stage = c % kSpStages;
        mbar_wait(full + stage, (c / kSpStages) & 1);
        issue_projection<D>(r, sbase + stage * L::kStageBytes, sbase + L::kWOff);
      };
      // The activation writes registers of its own: ordinary instructions that wrote an
      // accumulator would serialise the wgmma in flight.
      auto step = [&](const float(&r)[32], float(&r_next)[32], int c) {
        if (c + 1 < chunks) project(r_next, c + 1);
        float phi[32];
        if (h == 0)
          hedgehog_half<false>(r, phi);
        else
          hedgehog_half<true>(r, phi);
        const uint8_t* a_block = smem + L::kScratchOff + (2 * h + (c & 1)) * kBlock;
        stage_tile<64>(shared_address(a_block), phi, 1.f, 1.f, ct);
        named_barrier(1 + h, 128);
        fold(c, c, begin, end, a_block);  // also waits for chunk c + 1's projection
      };
      float ra[32], rb[32];
      if (chunks > 0) {
        mbar_wait(w_full, 0);
        project(ra, 0);
        wgmma_wait<0>();
      }
      for (int c = 0; c < chunks; c += 2) {
        step(ra, rb, c);
        if (c + 1 < chunks) step(rb, ra, c + 1);
      }
    } else {
      for (int c = 0; c < chunks; ++c) {
        const int stage = (ring + c) % kSpStages;
        mbar_wait(full + stage, ((ring + c) / kSpStages) & 1);
        fold(ring + c, c, begin, end, smem + stage * L::kStageBytes + h * kBlock);
      }
    }
    if (chunks == 0) {
#pragma unroll
      for (int i = 0; i < D / 2; ++i)
        acc[i] = 0.f;
    }
    float* out = p.out + (static_cast<size_t>(unit) * p.segments + seg) * (F * D + F);
    const int fa = 64 * h + 16 * warp + g8;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int col = 8 * n + 2 * t4;
      *reinterpret_cast<float2*>(out + fa * D + col) = make_float2(acc[4 * n], acc[4 * n + 1]);
      *reinterpret_cast<float2*>(out + (fa + 8) * D + col) =
          make_float2(acc[4 * n + 2], acc[4 * n + 3]);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float z = zp[r];
      z += __shfl_xor_sync(kFullMask, z, 1);
      z += __shfl_xor_sync(kFullMask, z, 2);
      if (t4 == 0) out[F * D + fa + 8 * r] = z;
    }
  });
}

// ---- linear key kernel of the backward -----------------------------------------------------
//
// dphi_k and the linear part of dv (DESIGN §1, notation of hybrid_backward_tc.cu): per (kv
// unit, key segment), the group's q heads in turn, 64-key tiles from the top of the segment
// down. With U = sum_i phi_q_i (dy_i / D_i)^T and u = sum_i phi_q_i delta_i / D_i over the rows
// already folded, for key j:
//   dphi_k_j = c_l (U v_j - u) + c_l sum_i du_ij phi_q_i,   du_ij = (dy_i . v_j - delta_i) / D_i
//   dv_j    += c_l U^T phi_k_j + c_l sum_i (p_ij / D_i) dy_i
// where the sums run over the one 64-row chunk that sees the tile outside U (chunk c + 1 with
// lin_lag = 64, chunk c with lin_lag = 0), masked to i >= j + lin_lag. Roles as in the forward:
// the producer loads v, phi_k (key tile) and phi_q, dy (row chunk) into two ring slots, two of
// its warps copy 1 / D and delta of the row chunk; the consumer runs v dy^T, p^T and phi_k U for
// dv and hands du to the state warpgroup, which runs dphi_k's two products and its store, folds
// the row chunk into U after the tile and publishes c_l U (bf16, one buffer read K-major for
// v U^T and N-major for phi_k U) and c_l u (fp32).

constexpr int kKeySlots = 2;

template <int D, int F>
struct KeyLayout {
  // In a slot: v, phi_k, phi_q, dy, the window part of dv (when this step adds into dv), factors.
  static constexpr int kPkOff = D / 64 * kBlock;
  static constexpr int kPqOff = kPkOff + F / 64 * kBlock;
  static constexpr int kDyOff = kPqOff + F / 64 * kBlock;
  static constexpr int kDvOff = kDyOff + D / 64 * kBlock;
  static constexpr int kFactorOff = kDvOff + D / 64 * kBlock;
  static constexpr int kSlotBytes = (kFactorOff + 2 * 256 + 1023) / 1024 * 1024;
  static constexpr int kUOff = kKeySlots * kSlotBytes;  // c_l U: [D / 64][F rows][64]
  static constexpr int kUBlock = F * 128;
  static constexpr int kSmallUOff = kUOff + D / 64 * kUBlock;               // c_l u, F floats
  static constexpr int kDuOff = (kSmallUOff + F * 4 + 1023) / 1024 * 1024;  // du: 64 keys x 64 rows
  static constexpr int kBarOff = kDuOff + kBlock;
  static constexpr int kSmemBytes = kBarOff + 8 * 8 + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "KeyLayout: more shared memory than a Hopper SM has");
};

struct KeyParams {
  // dv: the window part and the earlier heads' linear parts where loaded, the sum where stored.
  CUtensorMap v, phi_k, phi_q, dy, dphi_k_out, dv;
  Shape s;
  const float* coef_linear;
  const uint8_t* window_drop;
  const float* row_denom;
  const float* row_delta;
  // U, u at the top of each key segment (key_segments > 1); with sum_states each segment's own
  // sum instead, and the kernel adds those after its segment.
  const float* rev_states;
  bool sum_states;
  int key_segments, key_len;
  bf16* dphi_k;
};

struct KeyBarriers {
  uint64_t* full;   // [kKeySlots]
  uint64_t* empty;  // [kKeySlots]
  uint64_t* u_full;
  uint64_t* u_empty;
  uint64_t* du_full;  // the step's du is written (consumer to state warpgroup)
  uint64_t* du_free;  // the state warpgroup's du phi_q has read it
};

// The steps every role walks: the group's q heads with a linear branch, each over the key
// tiles from the top down. `visit(step, unit, um, c, first_tile)` is called per step.
template <typename Visit>
__device__ void for_each_step(const KeyParams& p, int kv_unit, int tiles, Visit visit) {
  const Shape& s = p.s;
  const int group = s.q_heads / s.kv_heads;
  const int b = kv_unit / s.kv_heads, hk = kv_unit % s.kv_heads;
  int step = 0;
  for (int gi = 0; gi < group; ++gi) {
    const int unit = b * s.q_heads + hk * group + gi;
    const UnitMode um = unit_mode(s, p.window_drop, unit);
    if (!um.use_linear) continue;
    for (int c = tiles - 1; c >= 0; --c, ++step)
      visit(step, unit, um, c, c == tiles - 1);
  }
}

// kDv: also adds the linear part into dv; attention transfer (v frozen) goes without.
template <int D, int F, bool kDv>
__global__ void __launch_bounds__(kWgThreads, 1)
    linear_key_wg_kernel(const __grid_constant__ KeyParams p) {
  await_previous_kernel();
  using L = KeyLayout<D, F>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (shared_address(smem_raw) & 1023)) & 1023);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBarOff);
  const KeyBarriers bar{bars,
                        bars + kKeySlots,
                        bars + 2 * kKeySlots,
                        bars + 2 * kKeySlots + 1,
                        bars + 2 * kKeySlots + 2,
                        bars + 2 * kKeySlots + 3};
  const Shape& s = p.s;
  const int N = s.seq_len;
  const int kv_unit = blockIdx.x / p.key_segments;
  const int seg = blockIdx.x - kv_unit * p.key_segments;
  const int s_begin = seg * p.key_len;
  const int s_end = min(N, s_begin + p.key_len);
  if (s_begin >= s_end) return;
  const int tiles = (s_end - s_begin + kRows - 1) / kRows;
  const int group = s.q_heads / s.kv_heads;

  if (threadIdx.x == 0) {
    for (int i = 0; i < kKeySlots; ++i) {
      mbar_init(bar.full + i, 1 + kRows);  // the TMA arrival + the factor copies
      mbar_init(bar.empty + i, 256);       // consumer and state (after its store) warpgroups
    }
    mbar_init(bar.u_full, 128);
    mbar_init(bar.u_empty, 128);
    mbar_init(bar.du_full, 128);
    mbar_init(bar.du_free, 128);
    mbar_init_fence();
  }
  __syncthreads();

  // Heads without a linear branch get zeros (and no dv part) and no steps.
  int linear_heads = 0;
  {
    const int b = kv_unit / s.kv_heads, hk = kv_unit % s.kv_heads;
    for (int gi = 0; gi < group; ++gi) {
      const int unit = b * s.q_heads + hk * group + gi;
      if (unit_mode(s, p.window_drop, unit).use_linear) {
        ++linear_heads;
        continue;
      }
      for (int i = threadIdx.x; i < (s_end - s_begin) * F; i += kWgThreads)
        p.dphi_k[(static_cast<size_t>(unit) * N + s_begin) * F + i] = __float2bfloat16_rn(0.f);
    }
    if (linear_heads == 0) return;
  }

  // Each linear head adds its part into dv in turn (bf16 in memory between heads, as dv), which
  // holds the window part by now: the producer loads the step's dv tile into its slot. With
  // several heads, the next reloads a tile `tiles` steps after storing it, so the store must be
  // complete by then, not only have read the slot: the consumer's thread 0 completes its stores
  // before each new one, and the producer, which waits for step s - 2 to give its slot back,
  // then finds those up to step s - 3 complete. Shorter segments complete each store before the
  // slot goes back, and with one tile the producer also waits for the step before.
  const bool reloads = kDv && linear_heads > 1;
  // The state warpgroup holds U and dphi_k, the consumer dv.
  constexpr int kProducerRegs = 40, kConsumerRegs = 216, kStateRegs = 248;
  static_assert(regs_fit(kWgThreads, kProducerRegs + kConsumerRegs + kStateRegs),
                "registers over the launch's");
  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    regs_shrink<kProducerRegs>();
    if (threadIdx.x == 0) {
      constexpr uint32_t bytes = 2 * (D / 64 + F / 64) * kBlock;
      for_each_step(p, kv_unit, tiles, [&](int step, int unit, const UnitMode& um, int c, bool) {
        const int slot = step % kKeySlots;
        const uint32_t use = step / kKeySlots;
        if (use > 0) mbar_wait(bar.empty + slot, (use - 1) & 1);
        uint8_t* base = smem + slot * L::kSlotBytes;
        const int k0 = s_begin + c * kRows;
        const int r0 = k0 + (um.lin_lag > 0 ? kRows : 0);
        if (reloads && tiles == 1 && step > 0)
          mbar_wait(bar.empty + (step - 1) % kKeySlots, ((step - 1) / kKeySlots) & 1);
        mbar_expect_bytes(bar.full + slot, bytes + (kDv ? D / 64 * kBlock : 0));
        for (int b = 0; b < D / 64; ++b) {
          tma_load_3d(base + b * kBlock, &p.v, b * 64, k0, kv_unit, bar.full + slot);
          tma_load_3d(base + L::kDyOff + b * kBlock, &p.dy, b * 64, r0, unit, bar.full + slot);
          if (kDv) {
            tma_load_3d(base + L::kDvOff + b * kBlock, &p.dv, b * 64, k0, kv_unit, bar.full + slot);
          }
        }
        for (int b = 0; b < F / 64; ++b) {
          tma_load_3d(base + L::kPkOff + b * kBlock, &p.phi_k, b * 64, k0, unit, bar.full + slot);
          tma_load_3d(base + L::kPqOff + b * kBlock, &p.phi_q, b * 64, r0, unit, bar.full + slot);
        }
      });
    } else if (threadIdx.x >= 64) {
      const int r = threadIdx.x - 64;
      for_each_step(p, kv_unit, tiles, [&](int step, int unit, const UnitMode& um, int c, bool) {
        const int slot = step % kKeySlots;
        const uint32_t use = step / kKeySlots;
        const int row = s_begin + c * kRows + (um.lin_lag > 0 ? kRows : 0) + r;
        const size_t at = static_cast<size_t>(unit) * N + row;
        const float inv = row < N ? 1.f / p.row_denom[at] : 0.f;
        const float delta = row < N ? p.row_delta[at] : 0.f;
        if (use > 0) mbar_wait(bar.empty + slot, (use - 1) & 1);
        // (1 / D, delta) of a row side by side: a pair of rows is one 16-byte load.
        reinterpret_cast<float2*>(smem + slot * L::kSlotBytes + L::kFactorOff)[r] =
            make_float2(inv, delta);
        mbar_arrive(bar.full + slot);
      });
    }
    return;
  }

  const int ct = threadIdx.x % 128;
  const int warp = ct / 32;
  const int lane = ct % 32;
  const int g8 = lane / 4;
  const int t4 = lane % 4;
  const uint32_t sbase = shared_address(smem);
  const uint32_t u_addr = sbase + L::kUOff;
  const float* small_u = reinterpret_cast<const float*>(smem + L::kSmallUOff);

  if (wg == 1) {
    regs_grow<kConsumerRegs>();
    for_each_step(p, kv_unit, tiles, [&](int step, int unit, const UnitMode& um, int c, bool top) {
      const int slot = step % kKeySlots;
      const float coef_l = p.coef_linear[unit];
      const int k0 = s_begin + c * kRows;
      const int r0 = k0 + (um.lin_lag > 0 ? kRows : 0);
      // Rows already in U at the top tile: those from s_end + state_lag on.
      const int s_hi = top ? s_end + um.state_lag : N;
      const uint32_t base = sbase + slot * L::kSlotBytes;
      mbar_wait(bar.full + slot, (step / kKeySlots) & 1);
      mbar_wait(bar.u_full, step & 1);
      float dvs[32], pt[32], av[kDv ? D / 2 : 1];
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks)
        wgmma_ss_n64<0, 0>(dvs, k_major(base, ks), k_major(base + L::kDyOff, ks), ks > 0);
#pragma unroll
      for (int ks = 0; ks < F / 16; ++ks) {
        if constexpr (kDv) {  // p_ij and phi_k U only feed dv
          wgmma_ss_n64<0, 0>(pt, k_major(base + L::kPkOff, ks), k_major(base + L::kPqOff, ks),
                             ks > 0);
          wgmma_ss<D, 0, 1>(av, k_major(base + L::kPkOff, ks), n_major(u_addr, ks, L::kUBlock),
                            ks > 0);
        }
      }
      wgmma_commit();
      wgmma_wait<0>();
      mbar_arrive(bar.u_empty);

      // du and p / D of key rows ja, ja + 8 (this thread's accumulator rows) and rows i of the
      // chunk: element i is row r0 + il, il = 8 (i / 4) + 2 t4 + (i & 1), which sees key j iff j +
      // lin_lag <= row < min(s_hi, N); each pair of rows' (1 / D, delta) is loaded once.
      const float4* fac =
          reinterpret_cast<const float4*>(smem + slot * L::kSlotBytes + L::kFactorOff);
      const int ja = k0 + warp * 16 + g8;
      const int lo_a = ja + um.lin_lag - r0 - 2 * t4, lo_b = lo_a + 8;
      const int hi = min(s_hi, N) - r0 - 2 * t4;
      uint32_t adu[4][4], apw[4][4];
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int pair = 2 * kk + h;
          const float4 f = fac[4 * pair + t4];  // rows 8 pair + 2 t4 and the next
          const float x[2] = {coef_l * f.x, coef_l * f.z}, delta[2] = {f.y, f.w};
#pragma unroll
          for (int r = 2 * h; r < 2 * h + 2; ++r) {
            float du[2], pw[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int i = 8 * kk + 2 * r + e, off = 8 * pair + e;
              const bool in = off >= ((r & 1) ? lo_b : lo_a) && off < hi;
              du[e] = in ? (dvs[i] - delta[e]) * x[e] : 0.f;
              pw[e] = kDv && in ? pt[i] * x[e] : 0.f;
            }
            adu[kk][r] = pack_bf16(du[0], du[1]);
            if constexpr (kDv) apw[kk][r] = pack_bf16(pw[0], pw[1]);
          }
        }
      }
      // du (the A operand of du phi_q, K-major) to the state warpgroup, which accumulates dphi_k.
      if (step > 0) mbar_wait(bar.du_free, (step - 1) & 1);
      stage_operand(sbase + L::kDuOff, adu, warp, g8, t4);
      fence_async_shared();
      mbar_arrive(bar.du_full);
      if constexpr (kDv) {
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          wgmma_rs<D, 1>(av, apw[kk], n_major(base + L::kDyOff, kk, kBlock), true);
        wgmma_commit();
        wgmma_wait<0>();
      }
      if constexpr (!kDv) {
        mbar_arrive(bar.empty + slot);
        return;
      }
      // dv = what dv holds (the window part, and the group's earlier heads' linear parts) + this
      // head's linear part, written over the slot's copy (each thread rewrites the entries it
      // read) and out through a TMA store: stores of row pieces from registers cost far more
      // (bench/KERNEL_NOTES.md session 16 item 4). Key segments are whole tiles, so the box stays
      // within this block's rows.
      uint8_t* dv_tile = smem + slot * L::kSlotBytes + L::kDvOff;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const int col = 8 * n + 2 * t4;
        const float2 wa = unpack_bf16(*reinterpret_cast<const uint32_t*>(
            dv_tile + swizzled_offset(warp * 16 + g8, col, kBlock)));
        const float2 wb = unpack_bf16(*reinterpret_cast<const uint32_t*>(
            dv_tile + swizzled_offset(warp * 16 + g8 + 8, col, kBlock)));
        av[4 * n] += wa.x;
        av[4 * n + 1] += wa.y;
        av[4 * n + 2] += wb.x;
        av[4 * n + 3] += wb.y;
      }
      if (reloads && ct == 0) bulk_wait();
      store_tile<D>(&p.dv, dv_tile, av, 1.f, 1.f, k0, kv_unit, ct);
      if (reloads && tiles < 3 && ct == 0) bulk_wait();
      mbar_arrive(bar.empty + slot);  // thread 0 only after the store has read the tile
    });
    return;
  }

  // State warpgroup: U (F x D) and u in fp32 accumulators, as the forward's S, and dphi_k of each
  // step (so that the consumer holds no F-wide accumulator).
  regs_grow<kStateRegs>();
  constexpr int H = F / 64;
  float acc[H][D / 2], up[H][2];
  float coef_l = 0.f;
  int prev_unit = -1;
  PendingStore pk_store;
  auto publish = [&]() {
    publish_state<D, F, true>(u_addr, L::kUBlock, smem + L::kSmallUOff, acc, up, coef_l, warp, g8,
                              t4);
    mbar_arrive(bar.u_full);
  };
  for_each_step(p, kv_unit, tiles, [&](int step, int unit, const UnitMode& um, int c, bool top) {
    const int slot = step % kKeySlots;
    if (unit != prev_unit) {
      // A new head: U and u from the reverse pass (rows from s_end + state_lag on), or zero.
      prev_unit = unit;
      coef_l = p.coef_linear[unit];
      load_state<D, F>(acc, up,
                       p.rev_states + static_cast<size_t>(unit) * p.key_segments * (F * D + F), seg,
                       p.key_segments, p.sum_states, true, warp, g8, t4);
      if (step > 0) mbar_wait(bar.u_empty, (step - 1) & 1);
      publish();
    }
    mbar_wait(bar.full + slot, (step / kKeySlots) & 1);
    const bool needed = c > 0;  // the fold feeds the next (lower) tile of this head
    if (needed) {
      const int r0 = s_begin + c * kRows + (um.lin_lag > 0 ? kRows : 0);
      const int s_hi = top ? s_end + um.state_lag : N;  // rows from here on are in U already
      const uint8_t* pq = smem + slot * L::kSlotBytes + L::kPqOff;
      const float2* fac =
          reinterpret_cast<const float2*>(smem + slot * L::kSlotBytes + L::kFactorOff);
      uint32_t a[4][H][4];  // A = (phi_q / D)^T
      load_fold_operand<H>(a, pq, warp, lane, [&](uint32_t(&frag)[4], int kk, int h) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int il = 16 * kk + 2 * t4 + (r / 2) * 8;
          const int row = r0 + il;
          float2 x = unpack_bf16(frag[r]);
          const float4 f = *reinterpret_cast<const float4*>(fac + il);  // rows il, il + 1
          x.x *= row < s_hi ? f.x : 0.f;
          x.y *= row + 1 < s_hi ? f.z : 0.f;
          up[h][r % 2] += x.x * f.y + x.y * f.w;
          frag[r] = pack_bf16(x.x, x.y);
        }
      });
      fold_chunk<D, H>(acc, a, sbase + slot * L::kSlotBytes + L::kDyOff);
    }
    // dphi_k = - c_l u + v (c_l U)^T + du phi_q from the published U (the fold above changed only
    // this warpgroup's registers). The U terms first, then the next step's U is published (once
    // the consumer has read this one), and only then du phi_q, which waits for the consumer's
    // du: publishing after it kept the consumer waiting for U in ~a third of its samples
    // (bench/KERNEL_NOTES.md session 17).
    const uint32_t base = sbase + slot * L::kSlotBytes;
    // The previous step's dphi_k store has had the fold's time to read its block.
    pk_store.release();
    mbar_wait(bar.u_full, step & 1);  // every warp of this warpgroup has published U and u
    float apk[F / 2];
#pragma unroll
    for (int n = 0; n < F / 8; ++n) {
      const int col = 8 * n + 2 * t4;
      apk[4 * n] = apk[4 * n + 2] = -small_u[col];
      apk[4 * n + 1] = apk[4 * n + 3] = -small_u[col + 1];
    }
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)
      wgmma_ss<F, 0, 0>(apk, k_major(base, ks), k_major(u_addr, ks, L::kUBlock), true);
    wgmma_commit();
    wgmma_wait<0>();
    if (needed) {
      mbar_wait(bar.u_empty, step & 1);
      named_barrier(2, 128);  // every warp has read u (apk's start) before it is rewritten
      publish();
    }
    mbar_wait(bar.du_full, step & 1);
    wgmma_from_tile<F>(apk, sbase + L::kDuOff, base + L::kPqOff);
    wgmma_commit();
    wgmma_wait<0>();
    mbar_arrive(bar.du_free);
    // dphi_k through the slot's phi_k block (the consumer's products reading it were done before
    // it handed over du) and a TMA store; key segments are whole tiles, so the box stays within
    // this block's rows.
    store_tile<F>(&p.dphi_k_out, smem + slot * L::kSlotBytes + L::kPkOff, apk, 1.f, 1.f,
                  s_begin + c * kRows, unit, ct, 2, false);
    pk_store.hold(bar.empty + slot, ct);
    // With one tile and reloads the producer waits for this slot before loading the next step's.
    if (reloads && tiles == 1) pk_store.release();
  });
  if (ct == 0) bulk_wait();
}

// ---- query kernel of the backward ----------------------------------------------------------
//
// The query side of the backward per (unit, forward segment), walking the rows in 64-row tiles
// as the forward does (notation of hybrid_backward_tc.cu, dl_i = dy_i . y_i):
//   linear: dphi_q_i = c_l / D_i (S dy_i - z dl_i + sum_j du_ij phi_k_j), du_ij = dy_i . v_j - dl_i
//           L1_i = phi_q_i . S dy_i + sum_j p_ij (dy_i . v_j),  P_i = phi_q_i . z + sum_j p_ij
//           (S, z over the keys before the unfolded linear keys, which lie in one 64-key chunk);
//   window: W1_i = sum_j e_ij (dy_i . v_j), E_i = sum_j e_ij over chunks t - 1 and t, and when q
//           needs a gradient dq_i = scale (sum_j c_w e_ij (dy_i . v_j - dl_i) / D_i k_j - G_i k_m);
// then the row values the key side and the coefficient gradients read: the exact delta
// (c_w W1 + c_l L1) / D, G = c_w (W1 - delta E) / D and (L1 - delta P) / D.
// Roles as in the forward. The producer loads each chunk's k and phi_k into the ring, its v into
// a two-slot ring of its own, and each tile's dy, y, phi_q and q, a tile ahead; the consumer runs
// the linear chunk's products and du, hands du to the state warpgroup, runs the window's products
// and weights; the state warpgroup keeps S and z (unscaled, z in fp32) and accumulates and stores
// dphi_q (keep_query_state), so that the consumer's chain per tile is shorter by the S dy and du
// phi_k products and their waits. du goes to the state warpgroup through y's buffer. dq: where
// S's buffer has room for ds (D = F = 128), the consumer stages ds with the G_i k_m term folded in
// and the state warpgroup runs ds k and the store (kDqInState); elsewhere the consumer does,
// storing through q's buffer.

__device__ inline float dot_bf16x2(uint32_t a, uint32_t b) {
  const float2 x = unpack_bf16(a), y = unpack_bf16(b);
  return x.x * y.x + x.y * y.y;
}

template <int D, int F>
struct QueryLayout {
  // The chunk ring holds k and phi_k; v has a ring of its own with two slots, as a tile gives
  // chunk t - 1's v back early (after the linear part or the window's first chunk), and the
  // 16 KB this saves give y a buffer of its own.
  static constexpr int kKOff = 0;  // in a slot: k, phi_k
  static constexpr int kPkOff = D / 64 * kBlock;
  static constexpr int kSlotBytes = kPkOff + F / 64 * kBlock;
  static constexpr int kVSlots = 2;
  static constexpr int kVRingOff = kSlots * kSlotBytes;
  static constexpr int kVSlotBytes = D / 64 * kBlock;
  static constexpr int kPqOff = kVRingOff + kVSlots * kVSlotBytes;
  static constexpr int kDyOff = kPqOff + F / 64 * kBlock;
  static constexpr int kYOff = kDyOff + D / 64 * kBlock;
  static constexpr int kQOff = kYOff + D / 64 * kBlock;  // q, then dq on its way out
  static constexpr int kSOff = kQOff + D / 64 * kBlock;  // S in bf16, as the forward's
  static constexpr int kSBlock = F * 128;
  // du (64 rows x 64 keys) in y's buffer once dl is taken, so that the consumer never waits for
  // the state warpgroup's S dy; y's next load waits for du phi_k instead.
  static constexpr int kDuOff = kYOff;
  // S's buffer between S dy and the next publish: dphi_q (64 rows x F) on its way out, so that
  // phi_q's buffer goes back once read; behind it ds (64 rows x 128 keys) for the state
  // warpgroup's dq, then dq on its way out, where there is room (D = F = 128), else the consumer
  // keeps dq.
  static constexpr int kPqStageOff = kSOff;
  static constexpr int kDsOff = kSOff + F / 64 * kBlock;
  static constexpr bool kDqInState = kDsOff + 2 * kBlock <= kSOff + D / 64 * kSBlock;
  static constexpr int kZOff = kSOff + D / 64 * kSBlock;  // z: F floats
  static constexpr bool kZFloat = true;
  static constexpr int kRowsOff = kZOff + F * 4;  // per row: dl, 1 / D, phi_q . S dy, P_state
  static constexpr int kBarOff = kRowsOff + 4 * kRows * 4;
  // The ring's barriers, the six of q, phi_q and S (S's full one as ds_full), QueryBarriers'
  // seven and the v ring's four.
  static constexpr int kSmemBytes = kBarOff + (2 * kSlots + 6 + 7 + 2 * kVSlots) * 8 + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "QueryLayout: more shared memory than a Hopper SM has");
};

struct QueryParams {
  CUtensorMap q, k, v, phi_k, phi_q, dy, y, dq, dphi_q;  // dq, dphi_q: stores
  Shape s;
  const float* coef_window;
  const float* coef_linear;
  const uint8_t* window_drop;
  const float* row_max;
  const float* row_denom;
  const int32_t* row_argmax;
  const bf16* k_rows;   // k as a plain pointer, for the G_i k_m term of dq
  const float* states;  // S, z at the start of each forward segment (segments > 1)
  bool sum_states;      // states holds the segments' own sums (see start_state)
  int segments, segment_len;
  bf16* dphi_q_rows;  // dphi_q as a plain pointer, for the zeros of window-only units
  float* row_grad_window;
  float* row_grad_linear;
  float* row_delta;
  float* row_gate_grad;
};

// The forward's Barriers (q_full / q_empty for q and then dq, pq_* for phi_q), those of dy and y,
// and the v ring's. dy and y have barriers of their own so that the next tile's dy loads while
// this tile's dq is still on its way out, and its products start before y lands.
struct QueryBarriers {
  Barriers base;
  uint64_t* dy_full;        // dy of the tile
  uint64_t* dy_empty;       // the tile's products (consumer's and state's S dy) are done with dy
  uint64_t* y_full;         // y of the tile
  uint64_t* y_empty;        // dl is taken and (linear units) du phi_k has read du from the buffer
  uint64_t* lin_in_full;    // du, dl and 1 / D of the tile are written (consumer to state)
  uint64_t* lin_out_full;   // phi_q . S dy and P_state of the tile (state to consumer)
  uint64_t* lin_out_empty;  // the consumer has read them
  uint64_t* v_full;         // [kVSlots] chunk c's v landed in slot (c + 1) % kVSlots
  uint64_t* v_empty;        // [kVSlots] consumer and state are done with it
  uint64_t* ds_full;        // ds of the tile staged for the state warpgroup's dq (kDqInState)
};

template <int D, int F>
__device__ void produce_query(const QueryParams& p, const UnitMode& um, uint8_t* smem,
                              const QueryBarriers& qb, int unit, int kv_unit, int r_begin,
                              int tiles) {
  using L = QueryLayout<D, F>;
  const Barriers& bar = qb.base;
  auto load_v = [&](int c) {
    const int slot = slot_of<L::kVSlots>(c);
    const uint32_t use = use_of<L::kVSlots>(c);
    if (use > 0) mbar_wait(qb.v_empty + slot, (use - 1) & 1);
    mbar_expect_bytes(qb.v_full + slot, D / 64 * kBlock);
    uint8_t* base = smem + L::kVRingOff + slot * L::kVSlotBytes;
    for (int b = 0; b < D / 64; ++b) {
      tma_load_3d(base + b * kBlock, &p.v, b * 64, r_begin + c * kRows, kv_unit, qb.v_full + slot);
    }
  };
  load_chunk<D, F, L, QueryParams, false, false>(p, um, smem, bar, unit, kv_unit, r_begin, -1);
  load_v(-1);
  // In the order in which tile t - 1 gives the buffers back: the chunk slot (tile t - 2), v
  // (chunk t - 2's last reader), dy (the products and S dy), phi_q (its product and the row
  // values), y (du phi_k, or dl taken) and q (its products, or the dq store).
  for (int t = 0; t < tiles; ++t) {
    load_chunk<D, F, L, QueryParams, false, false>(p, um, smem, bar, unit, kv_unit, r_begin, t);
    const int row = r_begin + t * kRows;
    load_v(t);
    if (t > 0) mbar_wait(qb.dy_empty, (t - 1) & 1);
    mbar_expect_bytes(qb.dy_full, D / 64 * kBlock);
    for (int b = 0; b < D / 64; ++b)
      tma_load_3d(smem + L::kDyOff + b * kBlock, &p.dy, b * 64, row, unit, qb.dy_full);
    if (um.use_linear) {
      if (t > 0) mbar_wait(bar.pq_empty, (t - 1) & 1);
      mbar_expect_bytes(bar.pq_full, F / 64 * kBlock);
      for (int b = 0; b < F / 64; ++b)
        tma_load_3d(smem + L::kPqOff + b * kBlock, &p.phi_q, b * 64, row, unit, bar.pq_full);
    }
    // y's buffer goes back once dl is taken, or (linear units) once du phi_k has read du there.
    if (t > 0) mbar_wait(qb.y_empty, (t - 1) & 1);
    mbar_expect_bytes(qb.y_full, D / 64 * kBlock);
    for (int b = 0; b < D / 64; ++b)
      tma_load_3d(smem + L::kYOff + b * kBlock, &p.y, b * 64, row, unit, qb.y_full);
    if (um.use_window) {
      if (t > 0) mbar_wait(bar.q_empty, (t - 1) & 1);
      mbar_expect_bytes(bar.q_full, D / 64 * kBlock);
      for (int b = 0; b < D / 64; ++b)
        tma_load_3d(smem + L::kQOff + b * kBlock, &p.q, b * 64, row, unit, bar.q_full);
    }
  }
}

// kWindow / kLinear: the unit's branches; kDq: q needs a gradient. As in the forward's consume,
// template arguments keep every wgmma unconditional within its instantiation.
template <int D, int F, bool kWindow, bool kLinear, bool kDq>
__device__ void consume_query(const QueryParams& p, const UnitMode& um, uint8_t* smem,
                              const QueryBarriers& qb, int unit, int r_begin, int r_end,
                              int tiles) {
  using L = QueryLayout<D, F>;
  // dq by the state warpgroup from ds staged in shared memory, the G_i k_m term folded into ds.
  constexpr bool kDqInState = kDq && kWindow && kLinear && L::kDqInState;
  const Barriers& bar = qb.base;
  const Shape& s = p.s;
  const int N = s.seq_len;
  const int ct = threadIdx.x - 128;
  const int warp = ct / 32;
  const int lane = ct % 32;
  const int g8 = lane / 4;
  const int t4 = lane % 4;
  const int la = warp * 16 + g8, lb = la + 8;  // this thread's rows in the tile
  const float coef_w = p.coef_window[unit];
  const float coef_l = p.coef_linear[unit];
  const float scale_log2 = s.scale * 1.4426950408889634f;
  const uint32_t sbase = shared_address(smem);
  const uint32_t pq_addr = sbase + L::kPqOff, dy_addr = sbase + L::kDyOff;
  const uint32_t q_addr = sbase + L::kQOff;
  const int lin_c = um.lin_lag > 0 ? 0 : 1;  // the chunk of unfolded linear keys, as consume
  const size_t row0 = static_cast<size_t>(unit) * N;

  for (int t = 0; t < tiles; ++t) {
    const int t0 = r_begin + t * kRows;
    const int ia = t0 + la, ib = t0 + lb;
    const bool in_a = ia < r_end, in_b = ib < r_end;
    const int kbase = t0 - kRows;
    const int slots[2] = {slot_of(t - 1), slot_of(t)};  // chunks t - 1 and t
    // Chunk c's slot address by a select (a dynamically indexed array lives in local memory).
    auto chunk_slot = [&](int c) { return sbase + (c == 0 ? slots[0] : slots[1]) * L::kSlotBytes; };
    // Chunk t - 1 + c's v: slot (t + c) % 2 of the v ring, slot_of's form with fewer registers.
    auto chunk_v = [&](int c) { return sbase + L::kVRingOff + ((t + c) & 1) * L::kVSlotBytes; };
    auto give_v_prev = [&] { mbar_arrive(qb.v_empty + (t & 1)); };
    static_assert(L::kVSlots == 2, "chunk_v takes slots by parity");
    // The forward's row values, loaded now and taken by shuffles where they are used, so that
    // the tile's products hide the loads' latency (waiting on them took ~10% of the consumer's
    // time, bench/KERNEL_NOTES.md session 11). Two registers: lanes t4 = 0 / 1 of each quad hold
    // D and the argmax of rows la / lb, lanes 2 / 3 their max.
    const int quad = lane & ~3;
    float row_value = 0.f;
    int row_argmax = -1;
    {
      const bool b = (t4 & 1) != 0;
      if (b ? in_b : in_a) {
        const size_t at = row0 + (b ? ib : ia);
        row_value = t4 < 2 ? p.row_denom[at] : kWindow ? p.row_max[at] : 0.f;
        if (kWindow && kDq && t4 < 2) row_argmax = p.row_argmax[at];
      }
    }
    float inv_a = 0.f, inv_b = 0.f;
    auto take_inv = [&] {
      const float den_a = __shfl_sync(kFullMask, row_value, quad);
      const float den_b = __shfl_sync(kFullMask, row_value, quad + 1);
      inv_a = in_a ? 1.f / den_a : 0.f;
      inv_b = in_b ? 1.f / den_b : 0.f;
    };

    // dl = dy . y of rows la, lb (this lane takes the 16-byte column chunks t4, t4 + 4, ...),
    // then y's buffer takes the next tile's y. The linear part runs it while its first products
    // are issued.
    float dl_a = 0.f, dl_b = 0.f;
    auto take_dl = [&] {
      mbar_wait(qb.y_full, t & 1);
#pragma unroll
      for (int c = t4; c < D / 8; c += 4) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const uint32_t off = swizzled_offset(r == 0 ? la : lb, 8 * c, kBlock);
          const uint4 d4 = *reinterpret_cast<const uint4*>(smem + L::kDyOff + off);
          const uint4 y4 = *reinterpret_cast<const uint4*>(smem + L::kYOff + off);
          const float sum = dot_bf16x2(d4.x, y4.x) + dot_bf16x2(d4.y, y4.y) +
                            dot_bf16x2(d4.z, y4.z) + dot_bf16x2(d4.w, y4.w);
          if (r == 0)
            dl_a += sum;
          else
            dl_b += sum;
        }
      }
      quad_sum(dl_a, dl_b);
      if constexpr (!kLinear) mbar_arrive(qb.y_empty);  // else du goes there (kDuOff)
    };
    mbar_wait(qb.dy_full, t & 1);
    if constexpr (!kLinear) take_dl();
    mbar_wait(bar.chunk_full + slots[0], use_of(t - 1) & 1);
    mbar_wait(bar.chunk_full + slots[1], use_of(t) & 1);
    mbar_wait(qb.v_full + (t & 1), use_of<L::kVSlots>(t - 1) & 1);
    mbar_wait(qb.v_full + ((t + 1) & 1), use_of<L::kVSlots>(t) & 1);

    // The linear part's chunk sums of this lane (L1 = phi_q . S dy + ls, P = P_state + ps); the
    // state warpgroup adds its terms at the tile's end.
    float ls_a = 0.f, ls_b = 0.f, ps_a = 0.f, ps_b = 0.f;
    // Scores and dy v^T per window chunk. The linear part's dy v^T goes into dyv[0]: where its
    // chunk is the window's chunk 0 (kLinear and lin_c = 0, the non-overlap hybrid), the window
    // part takes it from there instead of computing it again, and the linear part is the last
    // reader of chunk t - 1's v (give_v_prev below, in one of the two parts). The condition is
    // spelled out where used: a flag for it changed the kernels' register allocation.
    float sc[2][32], dyv[2][32];
    if constexpr (kLinear) {
      const uint32_t lin = chunk_slot(lin_c);
      float pl[32];
      float(&dv)[32] = dyv[0];
      mbar_wait(bar.pq_full, t & 1);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < F / 16; ++ks)
        wgmma_ss_n64<0, 0>(pl, k_major(pq_addr, ks), k_major(lin + L::kPkOff, ks), ks > 0);
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks)
        wgmma_ss_n64<0, 0>(dv, k_major(dy_addr, ks), k_major(chunk_v(lin_c), ks), ks > 0);
      wgmma_commit();
      take_dl();
      take_inv();
      wgmma_wait<0>();
      if (lane == 0) mbar_arrive(bar.pq_empty);  // this warp is done with phi_q
      if (!kWindow || lin_c == 0) give_v_prev();

      // The unfolded linear keys: [s_lo, row - lin_lag] within the chunk.
      const int s_lo = t == 0 ? r_begin - um.state_lag : kbase + kRows * lin_c;
      const int j0 = kbase + kRows * lin_c;
      // The forward's linear test: key j0 + 2 t4 + e in [max(s_lo, 0), row - lin_lag].
      const int lo = max(s_lo, 0) - j0 - 2 * t4;
      const int hi_a = ia - um.lin_lag - j0 - 2 * t4, hi_b = ib - um.lin_lag - j0 - 2 * t4;
      uint32_t adu[4][4];
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          float du[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int i = 8 * kk + 2 * r + e;
            const int off = (i / 4) * 8 + (i & 1);
            const bool top = (i & 2) == 0;
            const bool in = off >= lo && off <= (top ? hi_a : hi_b);
            const float pv = in ? pl[i] : 0.f;
            if (top) {
              ls_a += pv * dv[i];
              ps_a += pv;
            } else {
              ls_b += pv * dv[i];
              ps_b += pv;
            }
            du[e] = in ? dv[i] - (top ? dl_a : dl_b) : 0.f;
          }
          adu[kk][r] = pack_bf16(du[0], du[1]);
        }
      }
      // du (the A operand of du phi_k, K-major), dl and 1 / D to the state warpgroup, which
      // accumulates dphi_q; du goes into y's buffer, whose y take_dl has read.
      __syncwarp();  // the warp's lanes have read y's rows (take_dl) that du goes over
      stage_operand(sbase + L::kDuOff, adu, warp, g8, t4);
      if (t4 == 0) {
        float* rows = reinterpret_cast<float*>(smem + L::kRowsOff);
        rows[la] = dl_a;
        rows[lb] = dl_b;
        rows[kRows + la] = inv_a;
        rows[kRows + lb] = inv_b;
      }
      fence_async_shared();
      mbar_arrive(qb.lin_in_full);
      quad_sum(ls_a, ls_b, ps_a, ps_b);
    }

    float w1_a = 0.f, w1_b = 0.f, e_a = 0.f, e_b = 0.f;
    int am_a = -1, am_b = -1;
    float dq[D / 2];
    uint32_t ads[4][4], ads1[4][4];  // ds of chunks 0 and 1 (ads1: kDqInState)
    if constexpr (kWindow) {
      const int w = s.window;
      if constexpr (!kLinear) take_inv();
      const float m_a = __shfl_sync(kFullMask, row_value, quad + 2) * 1.4426950408889634f;
      const float m_b = __shfl_sync(kFullMask, row_value, quad + 3) * 1.4426950408889634f;
      am_a = __shfl_sync(kFullMask, row_argmax, quad);
      am_b = __shfl_sync(kFullMask, row_argmax, quad + 1);
      // The forward's window test: key kbase + 2 t4 + off is in the window iff
      // before < off <= last (the upper bound holds throughout chunk 0).
      const int last_a = ia - kbase - 2 * t4, last_b = ib - kbase - 2 * t4;
      const int before_a = last_a - min(w, ia + 1), before_b = last_b - min(w, ib + 1);
      mbar_wait(bar.q_full, t & 1);
      // Per chunk c: q k^T and dy v^T (one wgmma group; dy v^T not where the linear part left
      // it in dyv[0]), then the weights e and, for dq, ds = c_w e (dy . v - dl) / D as the
      // register operand of ds k.
      auto scores = [&](float(&s_acc)[32], float(&dv_acc)[32], int c) {
        const bool with_dv = !(kLinear && lin_c == 0 && c == 0);
        const uint32_t k_addr = chunk_slot(c) + L::kKOff, v_addr = chunk_v(c);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks)
          wgmma_ss_n64<0, 0>(s_acc, k_major(q_addr, ks), k_major(k_addr, ks), ks > 0);
        if (with_dv) {
#pragma unroll
          for (int ks = 0; ks < D / 16; ++ks)
            wgmma_ss_n64<0, 0>(dv_acc, k_major(dy_addr, ks), k_major(v_addr, ks), ks > 0);
        }
        wgmma_commit();
      };
      // Chunk c's key at offset off (within the chunk) is in row a's window iff
      // before_a - 64 c < off <= hi_a (last_a - 64 c; no upper bound in chunk 0).
      auto weigh = [&](int c, const float(&s_acc)[32], const float(&dv_acc)[32],
                       uint32_t(&ads)[4][4]) {
        // ds = c_w e (dy . v - dl) / D as e (dy . v x - dl x) with x = c_w / D: a product and an
        // fma.
        const float x_a = coef_w * inv_a, x_b = coef_w * inv_b;
        const float dlx_a = dl_a * x_a, dlx_b = dl_b * x_b;
        const int lo_a = before_a - c * kRows, lo_b = before_b - c * kRows;
        const int hi_a = c == 0 ? kRows : last_a - kRows, hi_b = c == 0 ? kRows : last_b - kRows;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            float ds[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int i = 8 * kk + 2 * r + e;
              const int off = (i / 4) * 8 + (i & 1);
              const bool top = (i & 2) == 0;
              const bool in = top ? off <= hi_a && off > lo_a : off <= hi_b && off > lo_b;
              const float ex = in ? fast_exp2(fmaf(s_acc[i], scale_log2, top ? -m_a : -m_b)) : 0.f;
              if (top) {
                w1_a += ex * dv_acc[i];
                e_a += ex;
              } else {
                w1_b += ex * dv_acc[i];
                e_b += ex;
              }
              ds[e] = ex * fmaf(dv_acc[i], top ? x_a : x_b, top ? -dlx_a : -dlx_b);
            }
            ads[kk][r] = pack_bf16(ds[0], ds[1]);
          }
        }
      };
      if constexpr (kDqInState) {
        // Both chunks' products in flight at once; chunk 0's weights under chunk 1's products.
        scores(sc[0], dyv[0], 0);
        scores(sc[1], dyv[1], 1);
        wgmma_wait<1>();
        weigh(0, sc[0], dyv[0], ads);
        wgmma_wait<0>();
        // The products were dy's last reads here.
        mbar_arrive(qb.dy_empty);
        named_barrier(1, 128);  // every warp's products have read q: the next tile's may load
        if (ct == 0) mbar_arrive(bar.q_empty);
        if (!(kLinear && lin_c == 0)) give_v_prev();
        weigh(1, sc[1], dyv[1], ads1);
      } else if constexpr (!kDq) {  // both chunks' products in flight at once
        scores(sc[0], dyv[0], 0);
        scores(sc[1], dyv[1], 1);
        wgmma_wait<0>();
        if (!(kLinear && lin_c == 0)) give_v_prev();
        weigh(0, sc[0], dyv[0], ads);
        weigh(1, sc[1], dyv[1], ads);
      } else {
        // ds k of chunk 0 runs while chunk 1's scores are issued. One loop body for both chunks
        // (not unrolled): the consumer's loop is fetch-bound (bench/KERNEL_NOTES.md session 16
        // item 5).
#pragma unroll 1
        for (int c = 0; c < 2; ++c) {
          scores(sc[0], dyv[0], c);
          wgmma_wait<0>();
          weigh(c, sc[0], dyv[0], ads);
          const uint32_t k_addr = chunk_slot(c) + L::kKOff;
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk)
            wgmma_rs<D, 1>(dq, ads[kk], n_major(k_addr, kk, kBlock), c > 0 || kk > 0);
          wgmma_commit();
        }
        wgmma_wait<0>();
        if (!(kLinear && lin_c == 0)) give_v_prev();  // here, not in the loop: in it, it spills
      }
      quad_sum(w1_a, w1_b, e_a, e_b);
    }
    if constexpr (!kDqInState) mbar_arrive(qb.dy_empty);
    // Chunk t - 1 stays until dq has read its keys.
    if (!kDq || !kWindow) mbar_arrive(bar.chunk_empty + slots[0]);  // the last tile reading it

    // The row values; dq with its G_i k_m term.
    float l1_a = 0.f, l1_b = 0.f, p_a = 0.f, p_b = 0.f;
    if constexpr (kLinear) {
      mbar_wait(qb.lin_out_full, t & 1);
      const float* rows = reinterpret_cast<const float*>(smem + L::kRowsOff);
      l1_a = rows[2 * kRows + la] + ls_a;
      l1_b = rows[2 * kRows + lb] + ls_b;
      p_a = rows[3 * kRows + la] + ps_a;
      p_b = rows[3 * kRows + lb] + ps_b;
      mbar_arrive(qb.lin_out_empty);
    }
    const float delta_a = (coef_w * w1_a + coef_l * l1_a) * inv_a;
    const float delta_b = (coef_w * w1_b + coef_l * l1_b) * inv_b;
    const float gw_a = (w1_a - delta_a * e_a) * inv_a, gw_b = (w1_b - delta_b * e_b) * inv_b;
    const float gate_a = coef_w * gw_a, gate_b = coef_w * gw_b;
    if constexpr (kDqInState) {
      // ds to the state warpgroup, with - G_i added at key m = argmax_i: dq_i = scale (sum_j ds_ij
      // k_j - G_i k_m). The forward's argmax lies in row i's window, so in chunk t - 1 or t. S's
      // buffer is free: the state's S dy read it before lin_out_full.
      stage_operand(sbase + L::kDsOff, ads, warp, g8, t4);
      stage_operand(sbase + L::kDsOff + kBlock, ads1, warp, g8, t4);
      __syncwarp();  // the quad's lanes wrote the row's keys
      const int am = t4 == 0 ? am_a : am_b;
      if (t4 < 2 && am >= 0 && am - kbase < 2 * kRows) {
        bf16* e = reinterpret_cast<bf16*>(smem + L::kDsOff +
                                          swizzled_offset(t4 == 0 ? la : lb, am - kbase, kBlock));
        *e = __float2bfloat16(__bfloat162float(*e) - (t4 == 0 ? gate_a : gate_b));
      }
      fence_async_shared();
      mbar_arrive(qb.ds_full);
    }
    // dq through q's buffer (q is read by now) and a TMA store; then the buffer goes back.
    if constexpr (!kDqInState) named_barrier(1, 128);
    if constexpr (kDq && !kDqInState) {
      if constexpr (!kWindow) {
#pragma unroll
        for (int n = 0; n < D / 2; ++n)
          dq[n] = 0.f;
      } else {
        // k_m lies in the window, so in chunk t - 1 or t of the ring: its row's 128-byte lines
        // of 64 columns, swizzled by row % 8 (the slots are 1024-aligned). A row without a
        // gradient through its max (am < 0) reads row 0 of chunk t times zero. The global copy
        // is for an argmax outside the ring, which the forward does not write.
        auto ring_row = [&](int am) {
          const int local = am - kbase;
          if (am < 0) return slots[1] * L::kSlotBytes + L::kKOff;
          // A select, not slots[local / kRows]: a dynamically indexed array lives in local
          // memory, whose loads wait on L2 here (bench/KERNEL_NOTES.md session 16 items 2-3).
          const int slot = local >= kRows ? slots[1] : slots[0];
          return local >= 0 && local < 2 * kRows
                     ? slot * L::kSlotBytes + L::kKOff + (local % kRows) * 128
                     : -1;
        };
        const int ring_a = ring_row(am_a), ring_b = ring_row(am_b);
        if (ring_a >= 0 && ring_b >= 0) {
          const float ga = am_a >= 0 ? gate_a : 0.f, gb = am_b >= 0 ? gate_b : 0.f;
          const int sa = (ring_a / 128) % 8, sb = (ring_b / 128) % 8;
#pragma unroll
          for (int n = 0; n < D / 8; ++n) {
            const int col_at = (n / 8) * kBlock + 4 * t4;
            const float2 ka = unpack_bf16(
                *reinterpret_cast<const uint32_t*>(smem + ring_a + col_at + (((n % 8) ^ sa) * 16)));
            const float2 kb = unpack_bf16(
                *reinterpret_cast<const uint32_t*>(smem + ring_b + col_at + (((n % 8) ^ sb) * 16)));
            dq[4 * n] -= ga * ka.x;
            dq[4 * n + 1] -= ga * ka.y;
            dq[4 * n + 2] -= gb * kb.x;
            dq[4 * n + 3] -= gb * kb.y;
          }
        } else {
          const bf16* kg = p.k_rows + static_cast<size_t>(kv_unit_of(s, unit)) * N * D;
#pragma unroll
          for (int n = 0; n < D / 8; ++n) {
            const int col = 8 * n + 2 * t4;
            if (am_a >= 0) {
              const float2 kk = unpack_bf16(__ldg(
                  reinterpret_cast<const unsigned int*>(kg + static_cast<size_t>(am_a) * D + col)));
              dq[4 * n] -= gate_a * kk.x;
              dq[4 * n + 1] -= gate_a * kk.y;
            }
            if (am_b >= 0) {
              const float2 kk = unpack_bf16(__ldg(
                  reinterpret_cast<const unsigned int*>(kg + static_cast<size_t>(am_b) * D + col)));
              dq[4 * n + 2] -= gate_b * kk.x;
              dq[4 * n + 3] -= gate_b * kk.y;
            }
          }
        }
        mbar_arrive(bar.chunk_empty + slots[0]);
      }
      store_tile<D>(&p.dq, smem + L::kQOff, dq, s.scale, s.scale, t0, unit, ct);
    }
    if (!kDqInState && ct == 0) mbar_arrive(bar.q_empty);
    if (!kLinear && p.dphi_q_rows != nullptr) {  // a window-only unit among dropped ones
      bf16* dpq = p.dphi_q_rows + row0 * F;
      for (int n = 0; n < F / 8; ++n) {
        const int col = 8 * n + 2 * t4;
        if (in_a) *reinterpret_cast<uint32_t*>(dpq + static_cast<size_t>(ia) * F + col) = 0u;
        if (in_b) *reinterpret_cast<uint32_t*>(dpq + static_cast<size_t>(ib) * F + col) = 0u;
      }
    }
    if (t4 == 0) {
      if (in_a) {
        p.row_delta[row0 + ia] = delta_a;
        p.row_gate_grad[row0 + ia] = gate_a;
        p.row_grad_window[row0 + ia] = gw_a;
        p.row_grad_linear[row0 + ia] = kLinear ? (l1_a - delta_a * p_a) * inv_a : 0.f;
      }
      if (in_b) {
        p.row_delta[row0 + ib] = delta_b;
        p.row_gate_grad[row0 + ib] = gate_b;
        p.row_grad_window[row0 + ib] = gw_b;
        p.row_grad_linear[row0 + ib] = kLinear ? (l1_b - delta_b * p_b) * inv_b : 0.f;
      }
    }
  }
}

// The query kernel's state warpgroup: S and z (unscaled, z in fp32) as keep_state keeps them, and
// dphi_q of each tile, so that the consumer holds no F-wide accumulator. Per tile: the fold of
// the tile's linear chunk into S's registers (for the next tile), S dy from the published S, the
// row values phi_q . S dy and P_state = phi_q . z for the consumer; once the consumer has handed
// over du, dl and 1 / D: + du phi_k - dl z and the store; with kDqInState, dq from the staged ds;
// then the next S.
template <int D, int F, bool kDq>
__device__ void keep_query_state(const QueryParams& p, const UnitMode& um, uint8_t* smem,
                                 const QueryBarriers& qb, int unit, int r_begin, int tiles) {
  using L = QueryLayout<D, F>;
  constexpr int H = F / 64;  // 64-row halves of S
  const Barriers& bar = qb.base;
  const int st = threadIdx.x - 256;
  const int warp = st / 32;
  const int lane = st % 32;
  const int g8 = lane / 4;
  const int t4 = lane % 4;
  const int la = warp * 16 + g8, lb = la + 8;
  const uint32_t sbase = shared_address(smem);
  const uint32_t dy_addr = sbase + L::kDyOff;
  const float coef_l = p.coef_linear[unit];
  float* rows = reinterpret_cast<float*>(smem + L::kRowsOff);
  const float* z = reinterpret_cast<const float*>(smem + L::kZOff);
  float acc[H][D / 2], zp[H][2];
  // The tile's linear chunk is the one folded after it (chunk t - lag_chunks).
  const int lag_chunks = start_state<D, F>(p, um, bar, acc, zp, warp, g8, t4);
  if (lag_chunks == 0) mbar_arrive(qb.v_empty + slot_of<L::kVSlots>(-1));  // as start_state's
  auto publish = [&]() {
    publish_state<D, F, L::kZFloat>(sbase + L::kSOff, L::kSBlock, smem + L::kZOff, acc, zp, 1.f,
                                    warp, g8, t4);
    named_barrier(2, 128);  // all of S is written before this warpgroup's wgmma reads it
  };
  publish();
  for (int t = 0; t < tiles; ++t) {
    const int c = t - lag_chunks;
    const int slot = slot_of(c);
    const uint32_t chunk = sbase + slot * L::kSlotBytes;
    // The fold for the next tile first, while no dphi_q accumulator is live (S's registers only
    // change; the published S stays).
    const int vslot = slot_of<L::kVSlots>(c);
    mbar_wait(bar.chunk_full + slot, use_of(c) & 1);
    mbar_wait(qb.v_full + vslot, use_of<L::kVSlots>(c) & 1);
    const bool needed = t + 1 < tiles;
    const int kbase = r_begin + c * kRows;
    const int lo = c < 0 ? max(r_begin - um.state_lag, 0) : kbase;  // as keep_state's
    if (needed && lo < kbase + kRows) {
      fold_keys<D, H>(acc, zp, smem + slot * L::kSlotBytes + L::kPkOff,
                      sbase + L::kVRingOff + vslot * L::kVSlotBytes, kbase, lo, warp, lane);
    }
    mbar_arrive(qb.v_empty + vslot);
    float dpq[F / 2];
    mbar_wait(qb.dy_full, t & 1);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      wgmma_ss<F, 0, 0>(dpq, k_major(dy_addr, ks), k_major(sbase + L::kSOff, ks, L::kSBlock),
                        ks > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    mbar_arrive(qb.dy_empty);  // the next tile's dy may load (the consumer's products also done)

    // The row values phi_q . S dy and P_state = phi_q . z for the consumer; dpq is only read
    // between its two products (rewriting it there costs ptxas copies of the accumulator).
    mbar_wait(bar.pq_full, t & 1);
    // phi_q's row addresses from an opaque base: hoisted out of the tile loop they would hold
    // registers that S and dphi_q need.
    uint32_t row_off = L::kPqOff + la * 128 + 4 * t4;
    asm volatile("" : "+r"(row_off));
    const uint8_t* pq_a = smem + row_off;
    float a1_a = 0.f, a1_b = 0.f, p_a = 0.f, p_b = 0.f;
#pragma unroll
    for (int n = 0; n < F / 8; ++n) {
      const float2 zf = *reinterpret_cast<const float2*>(z + 8 * n + 2 * t4);
      const uint8_t* at = pq_a + (n / 8) * kBlock + (((n % 8) ^ g8) * 16);  // swizzled_offset
      const float2 qa = unpack_bf16(*reinterpret_cast<const uint32_t*>(at));
      const float2 qv = unpack_bf16(*reinterpret_cast<const uint32_t*>(at + 8 * 128));
      p_a += qa.x * zf.x + qa.y * zf.y;
      p_b += qv.x * zf.x + qv.y * zf.y;
      a1_a += qa.x * dpq[4 * n] + qa.y * dpq[4 * n + 1];
      a1_b += qv.x * dpq[4 * n + 2] + qv.y * dpq[4 * n + 3];
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(bar.pq_empty);  // this warp is done with phi_q
    quad_sum(a1_a, a1_b, p_a, p_b);
    if (t > 0) mbar_wait(qb.lin_out_empty, (t - 1) & 1);
    if (t4 == 0) {
      rows[2 * kRows + la] = a1_a;
      rows[2 * kRows + lb] = a1_b;
      rows[3 * kRows + la] = p_a;
      rows[3 * kRows + lb] = p_b;
    }
    mbar_arrive(qb.lin_out_full);

    mbar_wait(qb.lin_in_full, t & 1);
    wgmma_fence();
    wgmma_from_tile<F>(dpq, sbase + L::kDuOff, chunk + L::kPkOff);
    wgmma_commit();
    wgmma_wait<0>();
    const float dl_a = rows[la], dl_b = rows[lb];
    const float inv_a = rows[kRows + la], inv_b = rows[kRows + lb];
    // du and the tile's dl, 1 / D are read: the next tile's y may load over du, and the consumer,
    // which writes the next dl, 1 / D only once it has taken dl from that y, may overwrite them.
    mbar_arrive(qb.y_empty);
#pragma unroll
    for (int n = 0; n < F / 8; ++n) {
      const float2 zf = *reinterpret_cast<const float2*>(z + 8 * n + 2 * t4);
      dpq[4 * n] = fmaf(-dl_a, zf.x, dpq[4 * n]);
      dpq[4 * n + 1] = fmaf(-dl_a, zf.y, dpq[4 * n + 1]);
      dpq[4 * n + 2] = fmaf(-dl_b, zf.x, dpq[4 * n + 2]);
      dpq[4 * n + 3] = fmaf(-dl_b, zf.y, dpq[4 * n + 3]);
    }
    // dphi_q through S's buffer (S dy has read S) and a TMA store, whose read is waited for only
    // before the next publish: warp 0 does not hold up ds k (a warpgroup-wide product) meanwhile.
    store_tile<F>(&p.dphi_q, smem + L::kPqStageOff, dpq, coef_l * inv_a, coef_l * inv_b,
                  r_begin + t * kRows, unit, st, 2, false);

    if constexpr (kDq && L::kDqInState) {
      if (um.use_window) {  // dq = scale ds k from the consumer's ds (consume_query)
        mbar_wait(qb.ds_full, t & 1);
        float dq[D / 2];
        wgmma_fence();
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int kc = t - 1 + c;
          mbar_wait(bar.chunk_full + slot_of(kc), use_of(kc) & 1);  // k of chunks t - 1 and t
          wgmma_from_tile<D>(dq, sbase + L::kDsOff + c * kBlock,
                             sbase + slot_of(kc) * L::kSlotBytes + L::kKOff, c > 0);
        }
        wgmma_commit();
        wgmma_wait<0>();
        mbar_arrive(bar.chunk_empty + slot_of(t - 1));  // its last reader
        named_barrier(2, 128);  // every warp's products have read ds: dq goes over it
        store_tile<D>(&p.dq, smem + L::kDsOff, dq, p.s.scale, p.s.scale, r_begin + t * kRows, unit,
                      st, 2);
      }
    }
    // The stores have read S's buffer before S goes over it.
    if (st == 0) bulk_wait_read();
    if (needed) named_barrier(2, 128);

    mbar_arrive(bar.chunk_empty + slot);
    if (needed) publish();
  }
}

template <int D, int F, bool kDq>
__global__ void __launch_bounds__(kWgThreads, 1)
    query_wg_kernel(const __grid_constant__ QueryParams p) {
  await_previous_kernel();
  using L = QueryLayout<D, F>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (shared_address(smem_raw) & 1023)) & 1023);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBarOff);
  const Barriers bar = ring_barriers(bars);
  uint64_t* const qbars = bars + 2 * kSlots + 6;
  const QueryBarriers qb{bar,       qbars,     qbars + 1, qbars + 2, qbars + 3,
                         qbars + 4, qbars + 5, qbars + 6, qbars + 7, qbars + 7 + L::kVSlots,
                         bar.s_full};  // S's barriers are free here
  const Shape& s = p.s;
  const int unit = blockIdx.x / p.segments;
  const int seg = blockIdx.x - unit * p.segments;
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const int r_begin = seg * p.segment_len;
  const int r_end = min(s.seq_len, r_begin + p.segment_len);
  const int tiles = (r_end - r_begin + kRows - 1) / kRows;

  if (threadIdx.x == 0) {
    for (int i = 0; i < kSlots; ++i) {
      mbar_init(bar.chunk_full + i, 1);
      mbar_init(bar.chunk_empty + i, um.use_linear ? 256 : 128);  // consumer (+ state)
    }
    for (int i = 0; i < L::kVSlots; ++i) {
      mbar_init(qb.v_full + i, 1);
      mbar_init(qb.v_empty + i, um.use_linear ? 256 : 128);
    }
    mbar_init(bar.q_full, 1);
    mbar_init(bar.q_empty, 1);  // after the dq store has read q's buffer
    mbar_init(bar.pq_full, 1);
    mbar_init(bar.pq_empty, 8);  // lane 0 of each consumer and state warp, once done with it
    mbar_init(qb.dy_full, 1);
    mbar_init(qb.dy_empty, um.use_linear ? 256 : 128);  // consumer (+ state)
    mbar_init(qb.y_full, 1);
    mbar_init(qb.y_empty, 128);
    mbar_init(qb.lin_in_full, 128);
    mbar_init(qb.lin_out_full, 128);
    mbar_init(qb.lin_out_empty, 128);
    mbar_init(qb.ds_full, 128);
    mbar_init_fence();
  }
  __syncthreads();

  constexpr int kConsumerRegs = 240, kStateRegs = 240;  // the state also holds dphi_q
  static_assert(regs_fit(kWgThreads, 24 + kConsumerRegs + kStateRegs),
                "registers over the launch's");
  const int group = threadIdx.x / 128;
  if (group == 0) {
    regs_shrink<24>();
    if (threadIdx.x == 0) {
      produce_query<D, F>(p, um, smem, qb, unit, kv_unit_of(s, unit), r_begin, tiles);
    }
  } else if (group == 1) {
    regs_grow<kConsumerRegs>();
    if (!um.use_linear)
      consume_query<D, F, true, false, kDq>(p, um, smem, qb, unit, r_begin, r_end, tiles);
    else if (!um.use_window)
      consume_query<D, F, false, true, kDq>(p, um, smem, qb, unit, r_begin, r_end, tiles);
    else
      consume_query<D, F, true, true, kDq>(p, um, smem, qb, unit, r_begin, r_end, tiles);
  } else {
    regs_grow<kStateRegs>();
    if (um.use_linear) keep_query_state<D, F, kDq>(p, um, smem, qb, unit, r_begin, tiles);
  }
}

// ---- window key kernel of the backward -----------------------------------------------------
//
// dk and dv per (kv unit, key segment) in 64-key tiles (notation of hybrid_backward_tc.cu): for
// key j the rows i in [j, j + w) of the group's q heads with a window, in two 64-row chunks per
// head, e_ij = exp(s_ij - m_i):
//   dk_j = scale sum_i (c_w e_ij (dy_i . v_j - delta_i) / D_i - [j = argmax_i] G_i) q_i
//   dv_j = sum_i c_w e_ij / D_i dy_i + (the linear part, summed by the linear key kernel)
// The producer loads the key tile's k and v (two buffers) and each step's q and dy chunk (a ring
// of three slots), two of its warps copy the chunk's row values; the consumer warpgroup holds
// dk in wgmma accumulators (keys as rows) and runs k q^T, v dy^T, then ds q with ds as a
// register operand, and hands p (bf16, two buffers) to the dv warpgroup, which holds dv and
// runs p dy; the tile leaves through TMA stores from its k and v buffers.

constexpr int kWkSlots = 3;

template <int D>
struct WkLayout {
  static constexpr int kKvBytes = 2 * D / 64 * kBlock;  // k, then v
  static constexpr int kVOff = D / 64 * kBlock;
  static constexpr int kDyOff = D / 64 * kBlock;          // in a slot: q, then dy, then factors
  static constexpr int kFactorOff = 2 * D / 64 * kBlock;  // float4 per row, then the argmaxes
  static constexpr int kArgmaxOff = kFactorOff + kRows * 16;
  static constexpr int kSlotBytes = kArgmaxOff + kRows * 4;
  static constexpr int kSlotsOff = 2 * kKvBytes;
  static constexpr int kSlotStride = (kSlotBytes + 1023) / 1024 * 1024;
  static constexpr int kPwOff = kSlotsOff + kWkSlots * kSlotStride;  // [2] c_w e / D, 64 x 64
  static constexpr int kBarOff = kPwOff + 2 * kBlock;
  static constexpr int kSmemBytes = kBarOff + 16 * 8 + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "WkLayout: more shared memory than a Hopper SM has");
};

struct WkParams {
  CUtensorMap q, k, v, dy, dk, dv;
  Shape s;
  const float* coef_window;
  const uint8_t* window_drop;
  const float* row_max;
  const float* row_denom;
  const float* row_delta;
  const float* row_gate_grad;
  const int32_t* row_argmax;
  const float* dv_linear;  // [kv units, N, D] fp32, or null
  int key_segments, key_len;
};

struct WkBarriers {
  uint64_t* kv_full;   // [2]
  uint64_t* kv_empty;  // [2]: the consumer and the dv warpgroup have stored dk and dv
  uint64_t* full;      // [kWkSlots]
  uint64_t* empty;     // [kWkSlots]: the consumer's ds q and the dv warpgroup's pw dy are done
  uint64_t* pw_full;   // [2]: the step's pw is written (consumer to dv warpgroup)
  uint64_t* pw_free;   // [2]: its pw dy is done
  uint64_t* v_done;    // [2]: the consumer's products of the tile have read v
};

// The steps every role walks: per key tile c, the group's q heads with a window, each over the
// row chunks c and c + 1 of the segment. `visit(step, c, unit, chunk, first)` (first: the
// tile's first step); `tile_done(c, steps)` after each tile with the number of its steps.
template <typename Visit, typename TileDone>
__device__ void for_each_wk_step(const WkParams& p, int kv_unit, int tiles, Visit visit,
                                 TileDone tile_done) {
  const Shape& s = p.s;
  const int group = s.q_heads / s.kv_heads;
  const int b = kv_unit / s.kv_heads, hk = kv_unit % s.kv_heads;
  int step = 0;
  for (int c = 0; c < tiles; ++c) {
    int in_tile = 0;
    for (int gi = 0; gi < group; ++gi) {
      const int unit = b * s.q_heads + hk * group + gi;
      if (!unit_mode(s, p.window_drop, unit).use_window) continue;
      for (int r = 0; r < 2; ++r, ++step, ++in_tile)
        visit(step, c, unit, c + r, in_tile == 0);
    }
    tile_done(c, in_tile);
  }
}

template <int D>
__global__ void __launch_bounds__(kWgThreads, 1)
    window_key_wg_kernel(const __grid_constant__ WkParams p) {
  await_previous_kernel();
  using L = WkLayout<D>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (shared_address(smem_raw) & 1023)) & 1023);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBarOff);
  const WkBarriers bar{bars,
                       bars + 2,
                       bars + 4,
                       bars + 4 + kWkSlots,
                       bars + 4 + 2 * kWkSlots,
                       bars + 6 + 2 * kWkSlots,
                       bars + 8 + 2 * kWkSlots};
  const Shape& s = p.s;
  const int N = s.seq_len;
  const int kv_unit = blockIdx.x / p.key_segments;
  const int seg = blockIdx.x - kv_unit * p.key_segments;
  const int s_begin = seg * p.key_len;
  const int s_end = min(N, s_begin + p.key_len);
  if (s_begin >= s_end) return;
  const int tiles = (s_end - s_begin + kRows - 1) / kRows;

  if (threadIdx.x == 0) {
    for (int i = 0; i < 2; ++i) {
      mbar_init(bar.kv_full + i, 1);
      mbar_init(bar.kv_empty + i, 256);
      mbar_init(bar.pw_full + i, 128);
      mbar_init(bar.pw_free + i, 128);
      mbar_init(bar.v_done + i, 128);
    }
    for (int i = 0; i < kWkSlots; ++i) {
      mbar_init(bar.full + i, 1 + kRows);  // the TMA arrival + the factor copies
      mbar_init(bar.empty + i, 256);
    }
    mbar_init_fence();
  }
  __syncthreads();
  auto slot_base = [&](int step) {
    return smem + L::kSlotsOff + (step % kWkSlots) * L::kSlotStride;
  };
  auto no_tile = [](int, int) {};

  constexpr int kProducerRegs = 40, kConsumerRegs = 240, kDvRegs = 224;
  static_assert(regs_fit(kWgThreads, kProducerRegs + kConsumerRegs + kDvRegs),
                "registers over the launch's");
  if (threadIdx.x < 128) {
    regs_shrink<kProducerRegs>();
    if (threadIdx.x == 0) {
      for (int c = 0; c < tiles; ++c) {
        const int buf = c % 2;
        if (c >= 2) mbar_wait(bar.kv_empty + buf, ((c - 2) / 2) & 1);
        uint8_t* kv = smem + buf * L::kKvBytes;
        mbar_expect_bytes(bar.kv_full + buf, L::kKvBytes);
        for (int b = 0; b < D / 64; ++b) {
          tma_load_3d(kv + b * kBlock, &p.k, b * 64, s_begin + c * kRows, kv_unit,
                      bar.kv_full + buf);
          tma_load_3d(kv + L::kVOff + b * kBlock, &p.v, b * 64, s_begin + c * kRows, kv_unit,
                      bar.kv_full + buf);
        }
      }
    } else if (threadIdx.x == 32) {
      for_each_wk_step(
          p, kv_unit, tiles,
          [&](int step, int, int unit, int chunk, bool) {
            const uint32_t use = step / kWkSlots;
            if (use > 0) mbar_wait(bar.empty + step % kWkSlots, (use - 1) & 1);
            uint8_t* base = slot_base(step);
            uint64_t* full = bar.full + step % kWkSlots;
            const int row = s_begin + chunk * kRows;
            mbar_expect_bytes(full, 2 * D / 64 * kBlock);
            for (int b = 0; b < D / 64; ++b) {
              tma_load_3d(base + b * kBlock, &p.q, b * 64, row, unit, full);
              tma_load_3d(base + L::kDyOff + b * kBlock, &p.dy, b * 64, row, unit, full);
            }
          },
          no_tile);
    } else if (threadIdx.x >= 64) {
      // Warps 2-3: row r of each chunk's values as one float4 (the max in log2 units less
      // log2(c_w / D), so that the exponential is c_w e / D; unused; delta; G), and its argmax.
      // Rows past N get an infinite max: their weights are zero.
      const int r = threadIdx.x - 64;
      for_each_wk_step(
          p, kv_unit, tiles,
          [&](int step, int, int unit, int chunk, bool) {
            const uint32_t use = step / kWkSlots;
            const int row = s_begin + chunk * kRows + r;
            const size_t at = static_cast<size_t>(unit) * N + row;
            const bool ok = row < N;
            const float m = ok ? p.row_max[at] * 1.4426950408889634f -
                                     __log2f(p.coef_window[unit] / p.row_denom[at])
                               : INFINITY;
            const float delta = ok ? p.row_delta[at] : 0.f;
            const float gate = ok ? p.row_gate_grad[at] : 0.f;
            const int am = ok ? p.row_argmax[at] : -1;
            if (use > 0) mbar_wait(bar.empty + step % kWkSlots, (use - 1) & 1);
            uint8_t* base = slot_base(step);
            reinterpret_cast<float4*>(base + L::kFactorOff)[r] = make_float4(m, 0.f, delta, gate);
            reinterpret_cast<int*>(base + L::kArgmaxOff)[r] = am;
            mbar_arrive(bar.full + step % kWkSlots);
          },
          no_tile);
    }
    return;
  }

  const int ct = threadIdx.x % 128;
  const int warp = ct / 32;
  const int lane = ct % 32;
  const int g8 = lane / 4;
  const int t4 = lane % 4;
  if (threadIdx.x >= 256) {
    // The dv warpgroup: dv += pw dy per step, pw (keys x rows, K-major) from the consumer; at the
    // tile's end the linear part when given and the store through the tile's v buffer.
    regs_grow<kDvRegs>();
    float dv[D / 2];
    PendingStore dv_store;
    for_each_wk_step(
        p, kv_unit, tiles,
        [&](int step, int, int, int, bool first) {
          const uint32_t dy_addr = shared_address(slot_base(step)) + L::kDyOff;
          mbar_wait(bar.full + step % kWkSlots, (step / kWkSlots) & 1);
          mbar_wait(bar.pw_full + step % 2, (step / 2) & 1);
          const uint32_t pw_addr = shared_address(smem) + L::kPwOff + (step % 2) * kBlock;
          if (first) {
#pragma unroll
            for (int i = 0; i < D / 2; ++i)
              dv[i] = 0.f;
          }
          wgmma_fence();
          wgmma_from_tile<D>(dv, pw_addr, dy_addr);
          wgmma_commit();
          dv_store.release();
          wgmma_wait<0>();
          mbar_arrive(bar.pw_free + step % 2);
          mbar_arrive(bar.empty + step % kWkSlots);
        },
        [&](int c, int steps) {
          const int buf = c % 2;
          if (steps == 0) {
#pragma unroll
            for (int i = 0; i < D / 2; ++i)
              dv[i] = 0.f;
          }
          const int k0 = s_begin + c * kRows;
          if (p.dv_linear != nullptr) {
            const float* dvl = p.dv_linear + static_cast<size_t>(kv_unit) * N * D;
            const int ja = k0 + warp * 16 + g8, jb = ja + 8;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
              const int col = 8 * n + 2 * t4;
              if (ja < N) {
                const float2 x =
                    *reinterpret_cast<const float2*>(dvl + static_cast<size_t>(ja) * D + col);
                dv[4 * n] += x.x;
                dv[4 * n + 1] += x.y;
              }
              if (jb < N) {
                const float2 x =
                    *reinterpret_cast<const float2*>(dvl + static_cast<size_t>(jb) * D + col);
                dv[4 * n + 2] += x.x;
                dv[4 * n + 3] += x.y;
              }
            }
          }
          // dv through the tile's v buffer once the consumer's products have read it (which
          // also means the buffer landed) and a TMA store.
          mbar_wait(bar.v_done + buf, (c / 2) & 1);
          store_tile<D>(&p.dv, smem + buf * L::kKvBytes + L::kVOff, dv, 1.f, 1.f, k0, kv_unit, ct,
                        2, false);
          dv_store.hold(bar.kv_empty + buf, ct);
        });
    if (ct == 0) bulk_wait();
    return;
  }

  regs_grow<kConsumerRegs>();
  const int w = s.window;
  const float scale_log2 = s.scale * 1.4426950408889634f;
  float dk[D / 2];
  int kv_waited = -1;
  // A step's dk product runs while the next step's scores are issued: its slot goes back once
  // it is done, at the next step or at the tile's end. Its register operand (ads) is rewritten
  // only after the wait that retires it.
  int pending = -1;  // the step whose dk product may still run
  PendingStore dk_store;
  auto give_back = [&] {
    if (pending >= 0) mbar_arrive(bar.empty + pending % kWkSlots);
    pending = -1;
  };
  for_each_wk_step(
      p, kv_unit, tiles,
      [&](int step, int c, int unit, int chunk, bool first) {
        const int buf = c % 2;
        if (kv_waited != c) {
          mbar_wait(bar.kv_full + buf, (c / 2) & 1);
          kv_waited = c;
        }
        uint32_t sbase = shared_address(smem);
        asm volatile("" : "+r"(sbase));
        const uint32_t k_addr = sbase + buf * L::kKvBytes, v_addr = k_addr + L::kVOff;
        const uint32_t q_addr = sbase + L::kSlotsOff + (step % kWkSlots) * L::kSlotStride;
        const uint32_t dy_addr = q_addr + L::kDyOff;
        const float4* fac = reinterpret_cast<const float4*>(slot_base(step) + L::kFactorOff);
        const int* fam = reinterpret_cast<const int*>(slot_base(step) + L::kArgmaxOff);
        mbar_wait(bar.full + step % kWkSlots, (step / kWkSlots) & 1);
        float st[32], dpt[32];
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
          wgmma_ss_n64<0, 0>(st, k_major(k_addr, ks), k_major(q_addr, ks), ks > 0);
          wgmma_ss_n64<0, 0>(dpt, k_major(v_addr, ks), k_major(dy_addr, ks), ks > 0);
        }
        wgmma_commit();
        dk_store.release();
        wgmma_wait<1>();
        give_back();
        wgmma_wait<0>();
        const int k0 = s_begin + c * kRows;
        const int ja = k0 + warp * 16 + g8, jb = ja + 8;
        const int i0 = s_begin + chunk * kRows;
        // Row i0 + 2 t4 + off sees key j iff from <= off < to (j <= i < j + w, both below N).
        const int from_a = ja - i0 - 2 * t4, from_b = from_a + 8;
        const int to_a = ja < N ? min(ja + w, N) - i0 - 2 * t4 : from_a;
        const int to_b = jb < N ? min(jb + w, N) - i0 - 2 * t4 : from_b;
        // Element (kk, r, e) is row il = 8 (2 kk + r / 2) + 2 t4 + e of the chunk and key ja
        // (r even) or jb: each pair of rows' values is loaded once, for both keys.
        uint32_t ads[4][4], apw[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int off0 = (2 * kk + h) * 8, il = off0 + 2 * t4;
            const float4 f[2] = {fac[il], fac[il + 1]};
            const int2 am = *reinterpret_cast<const int2*>(fam + il);
#pragma unroll
            for (int r = 2 * h; r < 2 * h + 2; ++r) {
              const bool b = (r & 1) != 0;
              float ds[2], pw[2];
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int idx = 8 * kk + 2 * r + e, off = off0 + e;
                const bool in = b ? off >= from_b && off < to_b : off >= from_a && off < to_a;
                // c_w e / D; a row's argmax is a key of its window, so at_max implies in.
                pw[e] = in ? fast_exp2(fmaf(st[idx], scale_log2, -f[e].x)) : 0.f;
                const bool at_max = (e == 0 ? am.x : am.y) == (b ? jb : ja);
                ds[e] = fmaf(pw[e], dpt[idx] - f[e].z, at_max ? -f[e].w : 0.f);
              }
              ads[kk][r] = pack_bf16(ds[0], ds[1]);
              apw[kk][r] = pack_bf16(pw[0], pw[1]);
            }
          }
        }
        // pw (the A operand of pw dy, K-major) to the dv warpgroup.
        if (step >= 2) mbar_wait(bar.pw_free + step % 2, (step / 2 - 1) & 1);
        stage_operand(sbase + L::kPwOff + (step % 2) * kBlock, apw, warp, g8, t4);
        fence_async_shared();
        mbar_arrive(bar.pw_full + step % 2);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          wgmma_rs<D, 1>(dk, ads[kk], n_major(q_addr, kk, kBlock), !first || kk > 0);
        wgmma_commit();
        pending = step;
      },
      [&](int c, int steps) {
        const int buf = c % 2;
        wgmma_wait<0>();
        give_back();
        if (steps == 0) {
          mbar_wait(bar.kv_full + buf, (c / 2) & 1);
#pragma unroll
          for (int i = 0; i < D / 2; ++i)
            dk[i] = 0.f;
        }
        mbar_arrive(bar.v_done + buf);  // the tile's products have read k and v
        // dk through the tile's k buffer and a TMA store.
        const int k0 = s_begin + c * kRows;
        named_barrier(1, 128);
        store_tile<D>(&p.dk, smem + buf * L::kKvBytes, dk, s.scale, s.scale, k0, kv_unit, ct, 1,
                      false);
        dk_store.hold(bar.kv_empty + buf, ct);
      });
  if (ct == 0) bulk_wait();
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled encode_tiled() {
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

// A [units, rows, cols] bf16 tensor as 64 x 64 boxes, 128-byte swizzled.
bool make_map(CUtensorMap* map, const void* base, int cols, int rows, int units) {
  if (base == nullptr) return true;  // a branch the launch does not use
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(units)};
  const cuuint64_t strides[2] = {cols * sizeof(bf16),
                                 static_cast<cuuint64_t>(rows) * cols * sizeof(bf16)};
  const cuuint32_t box[3] = {64, kRows, 1};
  const cuuint32_t unit_strides[3] = {1, 1, 1};
  return encode_tiled()(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims,
                        strides, box, unit_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// An sm_90 GPU with the shared memory of the largest layout and the TMA descriptor encoder.
bool hopper_device() {
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

}  // namespace

bool linear_key_wg_takes(const Shape& s, const SegmentPlan& key_plan) {
  const bool lag_ok = s.overlap || s.mode == static_cast<int>(KernelMode::kLinearOnly) ||
                      s.window == kRows;  // lin_lag 0 or 64, as the forward
  return (s.head_dim == 64 || s.head_dim == 128) && (s.features == 64 || s.features == 128) &&
         lag_ok && key_plan.length % kRows == 0 && hopper_device();
}

bool window_key_wg_takes(const Shape& s, const SegmentPlan& key_plan) {
  return (s.head_dim == 64 || s.head_dim == 128) && s.window <= kRows &&
         key_plan.length % kRows == 0 && hopper_device();
}

cudaError_t run_linear_key_wg(const Shape& s, const LinearKeyArgs& a, cudaStream_t stream) {
  KeyParams p{};
  const int units = s.batch * s.q_heads, kv_units = s.batch * s.kv_heads;
  const int D = s.head_dim, F = s.features, N = s.seq_len;
  if (!make_map(&p.v, a.v, D, N, kv_units) || !make_map(&p.phi_k, a.phi_k, F, N, units) ||
      !make_map(&p.phi_q, a.phi_q, F, N, units) || !make_map(&p.dy, a.dy, D, N, units) ||
      !make_map(&p.dphi_k_out, a.dphi_k, F, N, units) || !make_map(&p.dv, a.dv, D, N, kv_units)) {
    return cudaErrorNotSupported;
  }
  p.s = s;
  p.coef_linear = a.coef_linear;
  p.window_drop = a.window_drop;
  p.row_denom = a.row_denom;
  p.row_delta = a.row_delta;
  p.rev_states = a.rev_states;
  p.sum_states = a.sum_states;
  p.key_segments = a.key_plan.segments;
  p.key_len = a.key_plan.length;
  p.dphi_k = static_cast<bf16*>(a.dphi_k);
  return with_sizes(D, F, [&](auto d, auto f) {
    constexpr int kD = decltype(d)::value, kF = decltype(f)::value;
    return launch_smem(
        a.dv != nullptr ? linear_key_wg_kernel<kD, kF, true> : linear_key_wg_kernel<kD, kF, false>,
        kv_units * a.key_plan.segments, kWgThreads, KeyLayout<kD, kF>::kSmemBytes, p, stream);
  });
}

cudaError_t run_query_wg(const Shape& s, const QueryArgs& a, cudaStream_t stream) {
  QueryParams p{};
  const int units = s.batch * s.q_heads, kv_units = s.batch * s.kv_heads;
  const int D = s.head_dim, F = s.features, N = s.seq_len;
  if (!make_map(&p.q, a.q, D, N, units) || !make_map(&p.k, a.k, D, N, kv_units) ||
      !make_map(&p.v, a.v, D, N, kv_units) || !make_map(&p.phi_k, a.phi_k, F, N, units) ||
      !make_map(&p.phi_q, a.phi_q, F, N, units) || !make_map(&p.dy, a.dy, D, N, units) ||
      !make_map(&p.y, a.y, D, N, units) || !make_map(&p.dq, a.dq, D, N, units) ||
      !make_map(&p.dphi_q, a.phi_q != nullptr ? a.dphi_q : nullptr, F, N, units)) {
    return cudaErrorNotSupported;
  }
  p.s = s;
  p.coef_window = a.coef_window;
  p.coef_linear = a.coef_linear;
  p.window_drop = a.window_drop;
  p.row_max = a.row_max;
  p.row_denom = a.row_denom;
  p.row_argmax = a.row_argmax;
  p.k_rows = static_cast<const bf16*>(a.k);
  p.states = a.fwd_states;
  p.sum_states = a.sum_states;
  p.segments = a.plan.segments;
  p.segment_len = a.plan.length;
  p.dphi_q_rows = static_cast<bf16*>(a.dphi_q);
  p.row_grad_window = a.row_grad_window;
  p.row_grad_linear = a.row_grad_linear;
  p.row_delta = a.row_delta;
  p.row_gate_grad = a.row_gate_grad;
  return with_sizes(D, F, [&](auto d, auto f) {
    constexpr int kD = decltype(d)::value, kF = decltype(f)::value;
    return launch_smem(
        a.dq != nullptr ? query_wg_kernel<kD, kF, true> : query_wg_kernel<kD, kF, false>,
        units * a.plan.segments, kWgThreads, QueryLayout<kD, kF>::kSmemBytes, p, stream);
  });
}

cudaError_t run_window_key_wg(const Shape& s, const WindowKeyArgs& a, cudaStream_t stream) {
  WkParams p{};
  const int units = s.batch * s.q_heads, kv_units = s.batch * s.kv_heads;
  const int D = s.head_dim, N = s.seq_len;
  if (!make_map(&p.q, a.q, D, N, units) || !make_map(&p.k, a.k, D, N, kv_units) ||
      !make_map(&p.v, a.v, D, N, kv_units) || !make_map(&p.dy, a.dy, D, N, units) ||
      !make_map(&p.dk, a.dk, D, N, kv_units) || !make_map(&p.dv, a.dv, D, N, kv_units)) {
    return cudaErrorNotSupported;
  }
  p.s = s;
  p.coef_window = a.coef_window;
  p.window_drop = a.window_drop;
  p.row_max = a.row_max;
  p.row_denom = a.row_denom;
  p.row_delta = a.row_delta;
  p.row_gate_grad = a.row_gate_grad;
  p.row_argmax = a.row_argmax;
  p.dv_linear = a.dv_linear;
  p.key_segments = a.key_plan.segments;
  p.key_len = a.key_plan.length;
  return D == 64 ? launch_smem(window_key_wg_kernel<64>, kv_units * a.key_plan.segments, kWgThreads,
                               WkLayout<64>::kSmemBytes, p, stream)
                 : launch_smem(window_key_wg_kernel<128>, kv_units * a.key_plan.segments,
                               kWgThreads, WkLayout<128>::kSmemBytes, p, stream);
}

bool state_pass_wg_takes(const Shape& s) {
  return (s.head_dim == 64 || s.head_dim == 128) && (s.features == 64 || s.features == 128) &&
         hopper_device();
}

cudaError_t run_state_pass_wg(const Shape& s, const void* a, const void* bm, const float* row_denom,
                              const float* row_weight, bool bm_per_kv, const uint8_t* window_drop,
                              float* out, const SegmentPlan& plan, int fixed_lag, int lag_sign,
                              int range_end, bool all_units, int skip, cudaStream_t stream,
                              const void* k_map_weight, const CoefSumParams* coef) {
  SpParams p{};
  const int units = s.batch * s.q_heads, N = s.seq_len;
  const int kv_units = s.batch * s.kv_heads;
  const bool scaled = row_denom != nullptr;
  const bool mapped = k_map_weight != nullptr;
  if (mapped && (scaled || !bm_per_kv || s.features != 128 || coef != nullptr))
    return cudaErrorInvalidValue;
  if (!make_map(&p.a, a, mapped ? s.head_dim : s.features, N, mapped ? kv_units : units) ||
      !make_map(&p.b, bm, s.head_dim, N, bm_per_kv ? kv_units : units) ||
      !make_map(&p.w, k_map_weight, 64, s.head_dim, s.q_heads)) {
    return cudaErrorNotSupported;  // the caller runs the mma.sync pass instead
  }
  p.denom = row_denom;
  p.weight = row_weight;
  p.s = s;
  p.window_drop = window_drop;
  p.out = out;
  p.segments = plan.segments;
  p.segment_len = plan.length;
  p.fixed_lag = fixed_lag;
  p.lag_sign = lag_sign;
  p.range_end = range_end;
  p.b_per_kv = bm_per_kv;
  p.all_units = all_units;
  p.skip = skip;
  // Short segments several to a block, so that the blocks are one wave (GQA's reverse pass: 16
  // key segments of 32 q heads): each block streams its segments' chunks through one ring.
  const int sms = std::max(1, device_attribute(cudaDevAttrMultiProcessorCount));
  p.per_block = mapped ? 1 : std::max(1, (units * plan.segments + sms - 1) / sms);
  p.blocks_per_unit = (plan.segments + p.per_block - 1) / p.per_block;
  p.pass_blocks = units * p.blocks_per_unit;
  // dc_w, dc_l (2 x units outputs) as blocks of this launch where the SMs the pass leaves idle
  // take them in two rounds at most; else the sum kernel after the pass (GQA's fills the chip).
  // A block whose one segment is the skipped one returns at once.
  const bool skips_blocks = p.per_block == 1 && skip >= 0 && skip < plan.segments;
  const int working_blocks = p.pass_blocks - (skips_blocks ? units : 0);
  const bool coef_beside = coef != nullptr && sms - working_blocks >= coef->units;
  const int blocks = p.pass_blocks + (coef_beside ? 2 * coef->units : 0);
  if (coef_beside) p.coef = *coef;
  auto then_coef = [&](cudaError_t err) {
    return err == cudaSuccess && coef != nullptr && !coef_beside ? run_coef_sum(*coef, stream)
                                                                 : err;
  };
  if (mapped) {
    return with_sizes(s.head_dim, 128, [&](auto d, auto) {
      constexpr int kD = decltype(d)::value;
      return launch_smem(state_pass_wg_kernel<kD, 128, false, true>, blocks, 384,
                         SpLayout<kD, 128, true>::kSmemBytes, p, stream);
    });
  }
  return then_coef(with_sizes(s.head_dim, s.features, [&](auto d, auto f) {
    constexpr int kD = decltype(d)::value, kF = decltype(f)::value;
    return launch_smem(scaled ? state_pass_wg_kernel<kD, kF, true, false>
                              : state_pass_wg_kernel<kD, kF, false, false>,
                       blocks, 128 * (1 + kF / 64), SpLayout<kD, kF>::kSmemBytes, p, stream);
  }));
}

bool forward_wg_takes(const Shape& s, const SegmentPlan& plan) {
  const bool sizes = (s.head_dim == 64 || s.head_dim == 128) &&
                     (s.features == 64 || s.features == 128) && s.window <= kRows;
  if (!sizes) return false;
  // The unfolded linear keys must lie in one chunk: lin_lag is 0 or 64 (see consume).
  const bool non_overlap_hybrid = s.mode == static_cast<int>(KernelMode::kHybrid) && !s.overlap;
  if (non_overlap_hybrid && s.window != kRows) return false;
  if (plan.segments > 1 && plan.length % kRows != 0) return false;
  return hopper_device();
}

cudaError_t run_forward_wg(const Shape& s, const TcForwardArgs& a, cudaStream_t stream) {
  WgParams p{};
  const int units = s.batch * s.q_heads, kv_units = s.batch * s.kv_heads;
  const int D = s.head_dim, F = s.features, N = s.seq_len;
  const bool linear = s.mode != static_cast<int>(KernelMode::kWindowOnly) || a.window_drop;
  const bool mapped = a.w_q != nullptr;
  if (mapped && (a.w_k == nullptr || F != 128)) return cudaErrorInvalidValue;
  if (!make_map(&p.q, a.q, D, N, units) || !make_map(&p.k, a.k, D, N, kv_units) ||
      !make_map(&p.v, a.v, D, N, kv_units) || !make_map(&p.y, a.y, D, N, units) ||
      !make_map(&p.phi_q, linear && !mapped ? a.phi_q : nullptr, F, N, units) ||
      !make_map(&p.phi_k, linear && !mapped ? a.phi_k : nullptr, F, N, units) ||
      !make_map(&p.w_q, linear ? a.w_q : nullptr, 64, D, s.q_heads) ||
      !make_map(&p.w_k, linear ? a.w_k : nullptr, 64, D, s.q_heads)) {
    return cudaErrorNotSupported;  // e.g. a view not 16-byte aligned: the caller falls back
  }
  p.s = s;
  p.coef_window = a.coef_window;
  p.coef_linear = a.coef_linear;
  p.window_drop = a.window_drop;
  p.row_max = a.row_max;
  p.row_denom = a.row_denom;
  p.row_argmax = a.row_argmax;
  p.states = a.states;
  p.sum_states = a.sum_states;
  p.segments = a.segments;
  p.segment_len = a.segment_len;
  return with_sizes(D, F, [&](auto d, auto f) {
    constexpr int kD = decltype(d)::value, kF = decltype(f)::value;
    if constexpr (kF == 128) {
      if (mapped) {
        return launch_smem(forward_wg_kernel<kD, kF, true>, units * a.segments, kWgThreads,
                           Layout<kD, kF, true>::kSmemBytes, p, stream);
      }
    }
    return launch_smem(forward_wg_kernel<kD, kF, false>, units * a.segments, kWgThreads,
                       Layout<kD, kF>::kSmemBytes, p, stream);
  });
}

}  // namespace hl::kernels::cuda::detail
