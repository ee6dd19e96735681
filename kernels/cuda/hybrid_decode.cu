// One decode step of hybrid attention for a batch of sequences, and the host-side helpers of
// all launchers (shape checks, segment plans, workspace sizes).
//
// State convention (kernels/attention.hpp's RecurrentState): S, z hold the keys j <= t - w in
// every mode; the ring holds the last w keys. Step at position t: key t - w (ring slot t % w)
// is folded into S, z; the output combines c_l (phi_q S, phi_q . z) with the ring keys plus the
// new one (softmax terms c_w e_j, and c_l p_j when overlapping or linear-only); then the new
// key, value and phi_k replace slot t % w.
//
// One kernel. A cluster of C blocks serves one (batch, q head): block r owns rows
// [r F / C, (r + 1) F / C) of S and z and every C-th ring key, so that at batch 1 the state
// streams through more SMs. Each block keeps partial sums (the window part relative to its own
// max) and sends each block of the cluster the partials of its D / C output columns with
// st.async, counted by the receiver's mbarrier (no fence, no exit barrier). The kv ring slot is
// rewritten once every block that reads the folded value has: by the cluster's first block
// once its inbox is full when the cluster is the whole kv group,
// else by the last block of the group to take a ticket. Measured (bench/KERNEL_NOTES.md): the
// step is bound by its chain of instructions, loads and barriers, not by the bytes of S, so
// everything that depends on nothing is loaded up front, C is a template argument (no integer
// division) and no barrier waits for the state's stores to reach memory. The step is launched
// with programmatic stream serialization, so that its set-up overlaps the previous kernel.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cuda/hopper.cuh"
#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/hybrid_common.cuh"
#include "kernels/cuda/hybrid_internal.cuh"

namespace hl::kernels::cuda {
namespace detail {
namespace {

namespace cg = cooperative_groups;

constexpr int kDecodeThreads = 256;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kMaxCluster = 8;     // the portable cluster size limit
constexpr int kRowsInFlight = 8;   // S rows a thread loads before using the first
constexpr int kMaxRingKeys = 129;  // w <= 128, plus the new key
// Ring keys per warp (and values per row group) loaded before the first wait. With a cluster,
// all of them up to w = 64, so that no second round trip to memory follows; a lone block keeps
// two, as it must fit two to an SM (128 registers) when the heads outnumber the SMs.
template <int C>
constexpr int kAhead = C == 1 ? 2 : (64 / C + kDecodeWarps - 1) / kDecodeWarps;
// Hands the write of a kv ring slot to the last block of its group to finish reading it. Each
// counter returns to zero after use, so the array needs no per-call reset; two decode launches
// must not run concurrently on one device.
constexpr int kRingTurns = 1 << 16;
__device__ unsigned int g_ring_turns[kRingTurns];

struct DecodeParams {
  Shape s;
  const void* q;
  const void* k;
  const void* v;
  const void* phi_q;
  const void* phi_k;
  const float* coef_window;
  const float* coef_linear;
  const uint8_t* window_drop;
  void* y;
  int position;
  int cluster;
  DecodeState st;
  // Derived on the host, so that the kernel's set-up divides by nothing but the group size.
  int group;       // q heads per kv head
  int slot;        // position % window: the ring slot of key position - window
  int first_slot;  // ring slot of key max(0, position - window + 1)
  // Where set, position, slot and first_slot come from this int instead (DecodeArgs).
  const int32_t* position_device;
};

__device__ inline float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1)
    x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

// The cluster barrier as two halves, so that work can sit between arrive and wait (it only
// orders the inbox barriers' initialisation before the first send).
__device__ inline void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ inline void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// What block r of a cluster hands block p (p itself when C = 1): numerators over p's `Cols`
// output columns, the window part relative to r's own max m, and the scalar sums of r's
// denominator.
template <int Cols>
struct DecodeInbox {
  float4 sums;      // window max m, sum e^(s_j - m), sum c_l p_j, phi_q . z over r's rows
  float win[Cols];  // sum over r's ring keys of c_w e^(s_j - m) v_j
  float lin[Cols];  // c_l (phi_q S) over r's rows + c_l p_j v_j of r's ring keys
};

// The shared-memory address `local` in the cluster's block `rank`.
__device__ inline uint32_t peer_address(uint32_t local, int rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(rank));
  return remote;
}

// Stores into a peer's shared memory that count towards the transaction bytes of its mbarrier
// at `bar` (both cluster addresses): no fence and no cluster barrier needed to publish them.
__device__ inline void send(uint32_t remote, float v, uint32_t bar) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.f32 [%0], %1, [%2];\n" ::"r"(remote),
      "f"(v), "r"(bar)
      : "memory");
}
__device__ inline void send(uint32_t remote, float4 v, uint32_t bar) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, "
      "[%5];\n" ::"r"(remote),
      "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(bar)
      : "memory");
}

// Four consecutive elements, moved as one access.
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T e[4];
};

// The four elements at p where `in`, else zeros, as stored: one predicated load (a branch
// around a load and its bf16 widening made each such load wait for its data before the next
// was issued), widened where used. Volatile, so that the compiler keeps it after
// griddepcontrol.wait (a plain asm without memory operands could be hoisted above it).
__device__ inline Quad<float> quad_if(bool in, const float* p) {
  Quad<float> r;
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n mov.b32 %0, 0;\n mov.b32 %1, 0;\n"
      " mov.b32 %2, 0;\n mov.b32 %3, 0;\n @p ld.global.v4.f32 {%0, %1, %2, %3}, [%4];\n}\n"
      : "=f"(r.e[0]), "=f"(r.e[1]), "=f"(r.e[2]), "=f"(r.e[3])
      : "l"(p), "r"(static_cast<int>(in)));
  return r;
}
__device__ inline Quad<__nv_bfloat16> quad_if(bool in, const __nv_bfloat16* p) {
  uint2 raw;
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n mov.b32 %0, 0;\n mov.b32 %1, 0;\n"
      " @p ld.global.v2.u32 {%0, %1}, [%2];\n}\n"
      : "=r"(raw.x), "=r"(raw.y)
      : "l"(p), "r"(static_cast<int>(in)));
  return *reinterpret_cast<const Quad<__nv_bfloat16>*>(&raw);
}
__device__ inline float4 widen(const Quad<float>& x) {
  return make_float4(x.e[0], x.e[1], x.e[2], x.e[3]);
}
__device__ inline float4 widen(const Quad<__nv_bfloat16>& x) {
  return make_float4(__bfloat162float(x.e[0]), __bfloat162float(x.e[1]), __bfloat162float(x.e[2]),
                     __bfloat162float(x.e[3]));
}

__device__ inline void fma4(float4& acc, float c, float4 x) {
  acc.x = fmaf(c, x.x, acc.x);
  acc.y = fmaf(c, x.y, acc.y);
  acc.z = fmaf(c, x.z, acc.z);
  acc.w = fmaf(c, x.w, acc.w);
}

// Two blocks fit an SM (at most 128 registers a thread), so that the launcher's clusters of four
// all start at once (at 150 registers they took two waves on an H200: 9.9 against 5.9 us) and a
// lone block's heads may outnumber the SMs; C = 2 spills 200 bytes at 128 and runs one per SM.
// kF: the feature count when fixed at compile time (0: p.s.features), so that each thread holds
// only the S rows it owns and the loads for F > 128 drop out: fewer registers, so that every
// up-front load is in flight at once under the 128-register cap.
template <typename T, int C, int D, int kF>
__global__ void __launch_bounds__(kDecodeThreads, C == 2 ? 1 : 2) decode_kernel(DecodeParams p) {
  __shared__ float ssc[kMaxRingKeys];  // scores of this block's ring keys
  __shared__ float spl[kMaxRingKeys];  // c_l p_j of this block's ring keys
  __shared__ float4 sacc[2][16][32];   // per row-group partial numerators (window, linear)
  __shared__ float sdz[kDecodeWarps];
  __shared__ DecodeInbox<D / C> inbox[C];  // what each block of the cluster sent
  __shared__ uint64_t inbox_full;

  const cg::cluster_group cluster = cg::this_cluster();
  const Shape& s = p.s;
  const int F = kF > 0 ? kF : s.features, w = s.window;
  const int rank = C == 1 ? 0 : static_cast<int>(cluster.block_rank());
  const int unit = blockIdx.x / C;
  const int group = p.group;
  const int kv_unit = unit / group;  // units are (batch, q head) with each kv head's group adjacent
  const bool has_state = p.st.S != nullptr;
  // A graph's step reads its position before griddepcontrol.wait: the host copies it in before
  // the graph starts, and no kernel of the graph writes it.
  const int t = p.position_device != nullptr ? *p.position_device : p.position;
  const int slot = p.position_device != nullptr ? t % w : p.slot;
  const int first_slot0 = p.position_device != nullptr ? max(0, t - w + 1) % w : p.first_slot;
  const bool fold = has_state && t >= w;
  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int f_begin = rank * (F / C), f_end = f_begin + F / C;

  const T* q_new = static_cast<const T*>(p.q) + static_cast<size_t>(unit) * D;
  const T* k_new = static_cast<const T*>(p.k) + static_cast<size_t>(kv_unit) * D;
  const T* v_new = static_cast<const T*>(p.v) + static_cast<size_t>(kv_unit) * D;
  T* k_ring = static_cast<T*>(p.st.k_ring) + static_cast<size_t>(kv_unit) * w * D;
  T* v_ring = static_cast<T*>(p.st.v_ring) + static_cast<size_t>(kv_unit) * w * D;
  const T* pq_new =
      has_state ? static_cast<const T*>(p.phi_q) + static_cast<size_t>(unit) * F : nullptr;
  const T* pk_new =
      has_state ? static_cast<const T*>(p.phi_k) + static_cast<size_t>(unit) * F : nullptr;
  T* pk_ring =
      has_state ? static_cast<T*>(p.st.phik_ring) + static_cast<size_t>(unit) * w * F : nullptr;

  // Thread layout over [rows, D]: column quad c4, row group rg (8 groups at D = 128, 16 at 64).
  constexpr int quads = D / 4;
  constexpr int groups = kDecodeThreads / quads;
  const int e4 = (tid % quads) * 4;
  const int rg = tid / quads;
  // S rows a thread loads before using the first: all of its rows when F is fixed (up to 8).
  constexpr int rows_in_flight =
      kF > 0 ? std::clamp(kF / C / groups, 1, kRowsInFlight) : kRowsInFlight;

  // The step is launched with programmatic stream serialization: the next kernel may start its
  // set-up now, and everything above overlapped the previous kernel's end. From here on the
  // kernel reads what earlier kernels wrote (this layer's state, q, k, v, phi).
  if constexpr (C > 1) {
    // The inbox barrier completes when all C blocks' partials have landed. Its initialisation
    // reaches the cluster before any block sends (the cluster barrier is waited on then).
    if (tid == 0) {
      mbar_init(&inbox_full, 1);
      mbar_init_fence();
    }
    cluster_arrive_relaxed();
  }
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  // The unit's mode is known only once its drop flag has loaded: the loads below depend on what
  // the mode may be, not on what it is, so that none of them waits for that flag.
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const float cw = p.coef_window[unit];
  const float cl = p.coef_linear[unit];
  const bool may_window = s.mode != static_cast<int>(KernelMode::kLinearOnly);
  const bool may_ring_linear = p.window_drop != nullptr ||
                               s.mode == static_cast<int>(KernelMode::kLinearOnly) ||
                               (s.overlap && s.mode != static_cast<int>(KernelMode::kWindowOnly));

  const float4 zero4 = make_float4(0.f, 0.f, 0.f, 0.f);
  // Every global load that depends on nothing is issued first, so that the block waits for
  // memory about once: its S rows, z entries, ring keys and values (the first kAhead of each).
  float* S = has_state ? p.st.S + static_cast<size_t>(unit) * F * D : nullptr;
  float* z = has_state ? p.st.z + static_cast<size_t>(unit) * F : nullptr;
  // Each thread reads what it uses straight from memory (no staging through shared memory and
  // a barrier): its S rows with their phi_q and folded phi_k entries.
  float4 rows[rows_in_flight];
  float pq_of[rows_in_flight], pk_of[rows_in_flight];
  auto load_state_rows = [&](int f0) {
#pragma unroll
    for (int u = 0; u < rows_in_flight; ++u) {
      const int f = f0 + u * groups;
      const bool in = f < f_end;
      rows[u] = in ? load4(S + static_cast<size_t>(f) * D + e4) : zero4;
      pq_of[u] = in ? to_float(pq_new[f]) : 0.f;
      pk_of[u] = in && fold ? to_float(pk_ring[static_cast<size_t>(slot) * F + f]) : 0.f;
    }
  };
  if (has_state) load_state_rows(f_begin + rg);
  // Thread tid < F / C updates z entry f_begin + tid and takes its part of phi_q . z.
  const bool z_lane = has_state && tid < f_end - f_begin;
  const float z_old = z_lane ? z[f_begin + tid] : 0.f;
  const float z_pq = z_lane ? to_float(pq_new[f_begin + tid]) : 0.f;
  const float z_pk =
      z_lane && fold ? to_float(pk_ring[static_cast<size_t>(slot) * F + f_begin + tid]) : 0.f;
  // The folded key's value (this thread's columns) and q (lane's columns, for the scores).
  const float4 fv = widen(quad_if(fold, v_ring + static_cast<size_t>(slot) * D + e4));
  const float4 q4 = lane * 4 < D ? load4(q_new + lane * 4) : zero4;
  // What the ring slot receives at the end, loaded now: the new key and value (warp 0, four
  // columns a lane) and this block's phi_k rows.
  const bool ring_lane = warp == 0 && lane * 4 < D;
  const Quad<T> k_in = ring_lane ? *reinterpret_cast<const Quad<T>*>(k_new + lane * 4) : Quad<T>{};
  const Quad<T> v_in = ring_lane ? *reinterpret_cast<const Quad<T>*>(v_new + lane * 4) : Quad<T>{};
  const T pk_in = has_state && tid < f_end - f_begin ? pk_new[f_begin + tid] : T(0.f);

  // Ring keys j0..t (the new key at j = t); this block takes jj = rank, rank + C, ...
  const bool ring_linear = um.use_linear && um.lin_lag == 0;
  const int j0 = max(0, t - w + 1);
  const int nk = t - j0 + 1;
  const int nk_mine = nk > rank ? (nk - rank + C - 1) / C : 0;
  int first_slot = first_slot0 + rank;  // slot of this block's first ring key
  while (first_slot >= w)
    first_slot -= w;
  auto ring_row = [&](const T* fresh, const T* ring, int jj, int width) {
    int slot_jj = first_slot + jj * C;  // < 2w where jj is one of this block's keys
    slot_jj -= slot_jj >= w ? w : 0;
    return j0 + rank + jj * C == t ? fresh : ring + slot_jj * width;
  };
  // Scores: warp `warp` takes keys warp, warp + 8, ...; lane holds 4 columns of k (D <= 128)
  // and 8 of phi_k (F <= 256).
  auto key_piece = [&](int jj) {
    return quad_if(may_window && jj < nk_mine && lane * 4 < D,
                   ring_row(k_new, k_ring, jj, D) + lane * 4);
  };
  auto phik_piece = [&](int jj, int half) {
    const int f = lane * 4 + half * 128;
    return quad_if(may_ring_linear && jj < nk_mine && f < F, ring_row(pk_new, pk_ring, jj, F) + f);
  };
  // Weighted values: row group rg takes keys rg, rg + groups, ...
  auto value_piece = [&](int jj) {
    return quad_if(jj < nk_mine, ring_row(v_new, v_ring, jj, D) + e4);
  };
  constexpr int ahead = kAhead<C>;
  Quad<T> k_ahead[ahead], pk_ahead[ahead][2], v_ahead[ahead];
#pragma unroll
  for (int u = 0; u < ahead; ++u) {
    k_ahead[u] = key_piece(warp + u * kDecodeWarps);
    pk_ahead[u][0] = phik_piece(warp + u * kDecodeWarps, 0);
    pk_ahead[u][1] = phik_piece(warp + u * kDecodeWarps, 1);
    v_ahead[u] = value_piece(rg + u * groups);
  }

  // The ring linear scores' phi_q (lane's columns), only in the modes that have them.
  const bool pq_lane = has_state && may_ring_linear;
  const float4 pq4[2] = {widen(quad_if(pq_lane && lane * 4 < F, pq_new + lane * 4)),
                         widen(quad_if(pq_lane && lane * 4 + 128 < F, pq_new + lane * 4 + 128))};
  // With the kv group spread over several clusters, take a ticket once this block has read kv
  // ring slot `slot` (the fold's value, fv) and look at it at the end: the last of the group's
  // readers rewrites the slot.
  unsigned int ticket = 0;
  if (group > 1) {
    // The barrier's predicate reads fv, so every thread's load of the slot has returned.
    __syncthreads_or(fv.x + fv.y + fv.z + fv.w != 0.f);
    if (tid == 0) ticket = atomicAdd(g_ring_turns + kv_unit % kRingTurns, 1u);
  }

  // State rows: fold key t - w, then c_l phi_q S (numerator) and phi_q . z (denominator).
  float4 lin = zero4;
  if (has_state) {
    for (int f0 = f_begin + rg; f0 < f_end; f0 += rows_in_flight * groups) {
      if (f0 != f_begin + rg) load_state_rows(f0);
#pragma unroll
      for (int u = 0; u < rows_in_flight; ++u) {
        const int f = f0 + u * groups;
        if (f >= f_end) break;
        if (fold) {
          // Stored now, so that the stores drain while the step goes on (each thread owns its
          // rows: nothing else reads them).
          fma4(rows[u], pk_of[u], fv);
          *reinterpret_cast<float4*>(S + static_cast<size_t>(f) * D + e4) = rows[u];
        }
        fma4(lin, pq_of[u], rows[u]);
      }
    }
    const float lin_coef = um.use_linear ? cl : 0.f;
    lin.x *= lin_coef;
    lin.y *= lin_coef;
    lin.z *= lin_coef;
    lin.w *= lin_coef;
    float dz = 0.f;
    if (z_lane) {
      const float z_new = z_old + z_pk;  // z_pk is 0 when nothing is folded
      if (fold) z[f_begin + tid] = z_new;
      dz = z_pq * z_new;
    }
    dz = warp_sum(dz);
    if (lane == 0) sdz[warp] = dz;
  }

  // Scores of this block's ring keys, one warp per key: the first kAhead keys of each warp
  // from the early loads (constant indices keep them in registers), the rest (only when
  // w > 64) loaded here. Lanes past D or F hold zeros in q4, pq4 and the pieces.
  auto dot4 = [](float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; };
  auto score = [&](int jj, float4 k4, float4 p4a, float4 p4b) {
    const float acc = warp_sum(dot4(q4, k4)) * s.scale;
    // ring_linear is the same for the whole block: a uniform branch.
    const float pacc = ring_linear ? warp_sum(dot4(pq4[0], p4a) + dot4(pq4[1], p4b)) : 0.f;
    if (lane == 0) {
      ssc[jj] = acc;
      spl[jj] = ring_linear ? cl * pacc : 0.f;
    }
  };
#pragma unroll
  for (int u = 0; u < ahead; ++u) {
    const int jj = warp + u * kDecodeWarps;
    if (jj < nk_mine) score(jj, widen(k_ahead[u]), widen(pk_ahead[u][0]), widen(pk_ahead[u][1]));
  }
  for (int jj = warp + ahead * kDecodeWarps; jj < nk_mine; jj += kDecodeWarps)
    score(jj, widen(key_piece(jj)), widen(phik_piece(jj, 0)), widen(phik_piece(jj, 1)));
  __syncthreads();
  // Every thread of the block has folded its rows, so the phi_k rows of the folded key (slot
  // t % w) are read: the new key's take their place.
  if (has_state && tid < f_end - f_begin)
    pk_ring[static_cast<size_t>(slot) * F + f_begin + tid] = pk_in;

  // Every warp derives this block's window max and sums from the scores (warp reductions:
  // cheaper than another barrier).
  float m = -INFINITY;  // stays -inf when this block has no ring key
  float ew = 0.f, lw = 0.f;
  if (um.use_window) {
    for (int jj = lane; jj < nk_mine; jj += 32)
      m = fmaxf(m, ssc[jj]);
    m = warp_max(m);
    for (int jj = lane; jj < nk_mine; jj += 32)
      ew += __expf(ssc[jj] - m);
    ew = warp_sum(ew);
  }
  if (ring_linear) {
    for (int jj = lane; jj < nk_mine; jj += 32)
      lw += spl[jj];
    lw = warp_sum(lw);
  }
  // Weighted values: row group rg takes keys rg, rg + groups, ...
  float4 win = zero4;
  auto weigh = [&](int jj, float4 v4) {
    fma4(win, um.use_window ? cw * __expf(ssc[jj] - m) : 0.f, v4);
    fma4(lin, spl[jj], v4);
  };
#pragma unroll
  for (int u = 0; u < ahead; ++u) {
    const int jj = rg + u * groups;
    if (jj < nk_mine) weigh(jj, widen(v_ahead[u]));
  }
  for (int jj = rg + ahead * groups; jj < nk_mine; jj += groups)
    weigh(jj, widen(value_piece(jj)));
  sacc[0][rg][e4 / 4] = win;
  sacc[1][rg][e4 / 4] = lin;
  float dz_block = 0.f;
  if (has_state && tid == 0) {
    for (int i = 0; i < kDecodeWarps; ++i)
      dz_block += sdz[i];
  }
  __syncthreads();
  constexpr int cols = D / C;
  if constexpr (C > 1) cluster_wait();  // every block's inbox barrier is initialised
  if (tid < 2 * D) {
    const int which = tid / D, d = tid % D;
    float acc = 0.f;
    for (int r = 0; r < groups; ++r)
      acc += reinterpret_cast<const float*>(&sacc[which][r][0])[d];
    // Column d belongs to block d / cols: it goes there, into this block's inbox slot.
    float* at = (which == 0 ? inbox[rank].win : inbox[rank].lin) + d % cols;
    if constexpr (C == 1) {
      *at = acc;
    } else {
      const int owner = d / cols;
      send(peer_address(shared_address(at), owner), acc,
           peer_address(shared_address(&inbox_full), owner));
    }
  }
  const float4 sums_mine = make_float4(m, ew, lw, dz_block);
  if constexpr (C == 1) {
    if (tid == 0) inbox[0].sums = sums_mine;
    __syncthreads();
  } else {
    if (tid == 0) {
      // The expected bytes may be announced after peers' bytes have landed: the transaction
      // count goes negative meanwhile, and the phase completes only with this arrival.
      mbar_expect_bytes(&inbox_full, C * (2 * cols * 4 + 16));
#pragma unroll
      for (int r = 0; r < C; ++r)
        send(peer_address(shared_address(&inbox[rank].sums), r), sums_mine,
             peer_address(shared_address(&inbox_full), r));
    }
  }

  // Merge the cluster's partials: block `rank` writes outputs [rank D / C, (rank + 1) D / C).
  // Warp 0 waits as well: with one q head per kv head it rewrites the kv ring slot below, once
  // every block of the cluster has sent its partials (so has read the folded value).
  if (C > 1 && (tid < cols || warp == 0)) mbar_wait(&inbox_full, 0);
  if (tid < cols) {
    const int d = rank * cols + tid;
    float4 sums[C];
#pragma unroll
    for (int r = 0; r < C; ++r)
      sums[r] = inbox[r].sums;
    float m = -INFINITY;
#pragma unroll
    for (int r = 0; r < C; ++r)
      m = fmaxf(m, sums[r].x);
    float num = 0.f, ew = 0.f, lw = 0.f, dzs = 0.f;
#pragma unroll
    for (int r = 0; r < C; ++r) {
      const float scale = um.use_window && sums[r].x != -INFINITY ? expf(sums[r].x - m) : 0.f;
      num += inbox[r].win[tid] * scale + inbox[r].lin[tid];
      ew += sums[r].y * scale;
      lw += sums[r].z;
      dzs += sums[r].w;
    }
    float den =
        (um.use_window ? cw * ew : 0.f) + lw + (has_state && um.use_linear ? cl * dzs : 0.f);
    if (um.linear_only) den += s.eps;
    static_cast<T*>(p.y)[static_cast<size_t>(unit) * D + d] = static_cast<T>(num / den);
  }

  // The new key enters slot t % w (read above only as the folded key, t - w).
  if (warp == 0) {
    bool writer = rank == 0;  // group 1: every reader is in this cluster and past the merge
    if (group > 1) {
      writer = __shfl_sync(kFullMask, ticket, 0) == static_cast<unsigned int>(group * C - 1);
      if (writer && lane == 0) g_ring_turns[kv_unit % kRingTurns] = 0u;
    }
    if (writer && ring_lane) {
      *reinterpret_cast<Quad<T>*>(k_ring + static_cast<size_t>(slot) * D + lane * 4) = k_in;
      *reinterpret_cast<Quad<T>*>(v_ring + static_cast<size_t>(slot) * D + lane * 4) = v_in;
    }
  }
}

template <typename T, int C>
cudaError_t launch_decode_t(const DecodeParams& dp, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(dp.s.batch * dp.s.q_heads * dp.cluster));
  // F = 128 (the hedgehog map's 2 x 64) is fixed at compile time for bf16, the timed case.
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if (dp.s.features == 128) {
      return launch_chained(
          dp.s.head_dim == 64 ? decode_kernel<T, C, 64, 128> : decode_kernel<T, C, 128, 128>, grid,
          dim3(kDecodeThreads), 0, stream, dp, dp.cluster);
    }
  }
  auto kernel = dp.s.head_dim == 64 ? decode_kernel<T, C, 64, 0> : decode_kernel<T, C, 128, 0>;
  return launch_chained(kernel, grid, dim3(kDecodeThreads), 0, stream, dp, dp.cluster);
}

template <typename T>
cudaError_t launch_decode_t(const DecodeParams& dp, cudaStream_t stream) {
  switch (dp.cluster) {
    case 1:
      return launch_decode_t<T, 1>(dp, stream);
    case 2:
      return launch_decode_t<T, 2>(dp, stream);
    case 4:
      return launch_decode_t<T, 4>(dp, stream);
    default:
      return launch_decode_t<T, 8>(dp, stream);
  }
}

}  // namespace
}  // namespace detail

const char* unsupported_reason(const ProblemShape& p) {
  if (p.head_dim != 64 && p.head_dim != 128) return "head_dim must be 64 or 128";
  if (p.features < 32 || p.features > 256 || p.features % 32 != 0) {
    return "features (F) must be a multiple of 32 in [32, 256]";
  }
  if (p.window < 1 || p.window > 128) return "window must be in [1, 128]";
  if (p.batch < 1 || p.q_heads < 1 || p.kv_heads < 1 || p.seq_len < 1) {
    return "batch, heads and sequence length must be positive";
  }
  if (p.q_heads % p.kv_heads != 0) return "q_heads must be a multiple of kv_heads";
  const long long elems = static_cast<long long>(p.batch) * p.q_heads * p.seq_len;
  if (elems * std::max(p.head_dim, p.features) >= (1LL << 40)) return "tensors too large";
  if (static_cast<long long>(p.seq_len) * 2 >= (1LL << 31)) return "sequence too long";
  return nullptr;
}

SegmentPlan plan_segments(int units, int seq_len, int sm_count) {
  constexpr int kMinRows = 128;  // shorter segments spend more on their start state than they save
  int segments = units >= sm_count ? 1 : std::max(1, sm_count / std::max(units, 1));
  segments = std::min(segments, std::max(1, (seq_len + kMinRows - 1) / kMinRows));
  return make_segment_plan(seq_len, segments);
}

SegmentPlan make_segment_plan(int seq_len, int segments) {
  segments = std::max(1, segments);
  int length = (seq_len + segments - 1) / segments;
  // Whole 64-row tiles, as the Hopper forward walks them (a multiple of every other tile size).
  constexpr int kGrain = 64;
  length = (length + kGrain - 1) / kGrain * kGrain;
  return SegmentPlan{(seq_len + length - 1) / length, length};
}

size_t state_workspace_floats(const ProblemShape& shape, int units, const SegmentPlan& plan) {
  if (plan.segments <= 1) return 0;
  return 2 * static_cast<size_t>(units) * plan.segments *
         detail::segment_state_floats(detail::make_shape(shape));
}

int decode_cluster_size(const ProblemShape& shape, int sm_count) {
  // One block per SM at most: two blocks of a cluster sharing an SM measured slower (H100,
  // B1 H32: 17.8 us at 8 blocks per head against 10.0 us at 4).
  int c = 1;
  while (c < detail::kMaxCluster && shape.batch * shape.q_heads * 2 * c <= sm_count &&
         shape.features % (32 * c) == 0)
    c *= 2;
  return c;
}

int launch_decode(const ProblemShape& shape, const DecodeArgs& a, const DecodeState& state,
                  void* stream_ptr) {
  using namespace detail;
  const int c = a.cluster;
  if (unsupported_reason(shape) != nullptr || c < 1 || c > kMaxCluster || (c & (c - 1)) != 0 ||
      shape.features % (16 * c) != 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const Shape s = make_shape(shape);
  const int t = a.position, w = s.window;
  DecodeParams dp{s,
                  a.q,
                  a.k,
                  a.v,
                  a.phi_q,
                  a.phi_k,
                  a.coef_window,
                  a.coef_linear,
                  a.window_drop,
                  a.y,
                  t,
                  c,
                  state,
                  s.q_heads / s.kv_heads,
                  t % w,
                  std::max(0, t - w + 1) % w,
                  a.position_device};
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const cudaError_t err = shape.dtype == KernelDType::kBFloat16
                              ? launch_decode_t<__nv_bfloat16>(dp, stream)
                              : launch_decode_t<float>(dp, stream);
  return static_cast<int>(err);
}

const char* error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

}  // namespace hl::kernels::cuda
