// The backward's query kernel for Hopper (warp-specialised, TMA loads, wgmma); the building blocks
// it shares with the forward and the key kernels are in hybrid_hopper.cuh.

#include "kernels/cuda/hybrid_hopper.cuh"

namespace hl::kernels::cuda::detail {
namespace {

// ---- query kernel of the backward ----------------------------------------------------------
//
// The query side of the backward per (unit, forward segment), walking the rows in 64-row tiles
// as the forward does (notation of hybrid_backward_tc.cu, dl_i = dy_i . y_i):
//   linear: dphi_q_i = c_l / D_i (S dy_i - z dl_i + sum_j du_ij phi_k_j), du_ij = dy_i . v_j - dl_i
//           L1_i = phi_q_i . S dy_i + sum_j p_ij (dy_i . v_j),  P_i = phi_q_i . z + sum_j p_ij
//           (S, z over the keys before the unfolded linear keys, which lie in one 64-key chunk);
//   window: W1_i = sum_j e_ij (dy_i . v_j), E_i = sum_j e_ij over chunks t - 1 and t, and when q
//           needs a gradient dq_i = scale (sum_j c_w e_ij (dy_i . v_j - dl_i) / D_i k_j - G_i k_m);
// then the row values the key side and the coefficient gradients read: delta, G = c_w (W1 -
// delta E) / D and (L1 - delta P) / D. A hybrid unit takes delta = dl (from y, as its own du and
// ds do), so that the consumer needs nothing back from the state warpgroup: the state computes
// (L1 - dl P) / D itself as phi_q . (S dy + du phi_k - dl z) / D from its dphi_q accumulator.
// y's bf16 rounding in dl is harmless in ds, dq and G, but not in dc_w and dc_l, sums of small
// differences where one branch holds nearly all of a row's mass: the consumer also writes E / D,
// from which the sums take the exact terms (CoefSumParams). Linear-only units keep the exact
// delta (c_w W1 + c_l L1) / D from the state's phi_q . S dy.
// Without window gradients (QueryArgs::window_grads false: attention transfer) a hybrid unit
// skips the window part (no q or k loads, no scores): delta is dl from y, and since y is
// homogeneous of degree 0 in (c_w, c_l), c_w (W1 - delta E) + c_l (L1 - delta P) = 0 gives the
// window's row term from the linear one.
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
  QueryArgs a;  // fwd_states: S, z at the start of each forward segment (plan.segments > 1)
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

// u = sum_r phi_q_r dl_r / D_r, the z part of the reverse pass's key-segment sums, so that the
// pass needs nothing from this kernel (run_backward_tc runs it beside): the consumer takes it per
// tile as phi_q^T W (m64n8 per 64 features, both operands in shared memory), W holding each row's
// w = dl / D as two bf16 (hi, lo: ~16 bits of w) in the column pair of its key segment's parity
// (columns 4-7 are whatever lies there, and unused). Key segment j holds rows [j L + lag,
// (j + 1) L + lag), the last to the end, and L >= 64 (query_takes_u), so a tile meets at most two.
// W goes into y's second column block once dl is taken (D = 128): core matrix c (rows 8c..8c+7,
// unswizzled, K-major) in line 8c, which only warp c / 2 has read. Per block
// u_partials[unit][seg][k - k_first][F], zeros for the parts its rows do not reach (k:
// key_segment_of).

// x added to *at without waiting for it (no value comes back).
__device__ inline void red_add(float* at, float x) {
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(at), "f"(x) : "memory");
}

// kWindow / kLinear: the unit's branches; kDq: q needs a gradient. As in the forward's consume,
// template arguments keep every wgmma unconditional within its instantiation.
// rows_from_y: a hybrid unit whose window part is skipped (window_grads false).
template <int D, int F, bool kWindow, bool kLinear, bool kDq, bool kSumU>
__device__ void consume_query(const QueryParams& p, const UnitMode& um, uint8_t* smem,
                              const QueryBarriers& qb, int unit, int r_begin, int r_end, int tiles,
                              bool rows_from_y) {
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
  const float coef_w = p.a.coef_window[unit];
  const float coef_l = p.a.coef_linear[unit];
  const float scale_log2 = s.scale * 1.4426950408889634f;
  const uint32_t sbase = shared_address(smem);
  const uint32_t pq_addr = sbase + L::kPqOff, dy_addr = sbase + L::kDyOff;
  const uint32_t q_addr = sbase + L::kQOff;
  const int lin_c = um.lin_lag > 0 ? 0 : 1;  // the chunk of unfolded linear keys, as consume
  const size_t row0 = static_cast<size_t>(unit) * N;
  // u's partials (the comment above red_add): each (feature, key segment) has one thread,
  // lane t4 = the segment's parity, which zeroes it first and then adds each tile's part (red: no
  // wait), so that the sums keep their order. A tile's rows lie in key segments u_seg and
  // u_seg + 1, whose column pairs lanes t4 = 0 and 1 hold.
  static_assert(!kSumU || D == 128, "W lies in y's second column block");
  constexpr bool sum_u = kLinear && kSumU;
  int u_seg = key_segment_of(p.a.key_plan, um.state_lag, r_begin);
  const int u_first = u_seg;
  float* const u_out = p.a.u_partials +
                       (static_cast<size_t>(unit) * p.a.plan.segments + r_begin / p.a.plan.length) *
                           p.a.u_parts * F +
                       16 * warp + g8;
  if (sum_u && t4 < 2) {
    for (int part = (u_first + t4) & 1; part < p.a.u_parts; part += 2) {
#pragma unroll
      for (int h = 0; h < F / 64; ++h) {
        u_out[part * F + 64 * h] = 0.f;
        u_out[part * F + 64 * h + 8] = 0.f;
      }
    }
  }

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
        row_value = t4 < 2 ? p.a.row_denom[at] : kWindow ? p.a.row_max[at] : 0.f;
        if (kWindow && kDq && t4 < 2) row_argmax = p.a.row_argmax[at];
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
    // state warpgroup adds its terms at the tile's end. Hybrid units do not need them (above).
    float ls_a = 0.f, ls_b = 0.f, ps_a = 0.f, ps_b = 0.f;
    // Scores and dy v^T per window chunk. The linear part's dy v^T goes into dyv[0]: where its
    // chunk is the window's chunk 0 (kLinear and lin_c = 0, the non-overlap hybrid), the window
    // part takes it from there instead of computing it again, and the linear part is the last
    // reader of chunk t - 1's v (give_v_prev below, in one of the two parts). The condition is
    // spelled out where used: a flag for it changed the kernels' register allocation.
    float sc[2][32], dyv[2][32];
    // u's product done (a wait that covers its group): phi_q and W go back, the tile's part is
    // added to its key segments' partials.
    float u[F / 64][4];
    auto finish_u = [&] {
      if (!sum_u) return;
      if (lane == 0) mbar_arrive(bar.pq_empty);
      mbar_arrive(qb.y_empty);  // W is read (the state gives y's buffer back too)
      const int k = (u_seg & 1) == t4 ? u_seg : u_seg + 1;
      if (t4 < 2 && k - u_first < p.a.u_parts) {
#pragma unroll
        for (int h = 0; h < F / 64; ++h) {
          red_add(u_out + (k - u_first) * F + 64 * h, u[h][0] + u[h][1]);
          red_add(u_out + (k - u_first) * F + 64 * h + 8, u[h][2] + u[h][3]);
        }
      }
      const int end = min(r_end, t0 + kRows);
      while (u_seg < p.a.key_plan.segments - 1 &&
             (u_seg + 1) * p.a.key_plan.length + um.state_lag <= end) {
        ++u_seg;
      }
    };
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
      if (!sum_u && lane == 0) mbar_arrive(bar.pq_empty);  // this warp is done with phi_q
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
      if constexpr (sum_u) {  // W: lane t4 writes column t4 of rows la, lb
        const uint32_t w_base = L::kYOff + kBlock + 2 * warp * 1024 + 2 * g8 + 16 * t4;
        const int bound = (u_seg + 1) * p.a.key_plan.length + um.state_lag;  // u_seg + 1's start
        const bool last = u_seg == p.a.key_plan.segments - 1;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int i = r == 0 ? ia : ib;
          const float w = i >= um.state_lag ? (r == 0 ? dl_a * inv_a : dl_b * inv_b) : 0.f;
          const bf16 hi = __float2bfloat16(w);
          const bf16 lo = __float2bfloat16(w - __bfloat162float(hi));
          const bool pair = ((u_seg + (!last && i >= bound ? 1 : 0)) & 1) == t4 / 2;
          *reinterpret_cast<bf16*>(smem + w_base + r * 1024) =
              pair ? (t4 % 2 == 0 ? hi : lo) : __float2bfloat16(0.f);
        }
      }
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
      if constexpr (sum_u) {  // u's product, waited for with the window's first products (finish_u)
        named_barrier(1, 128);  // every warp's rows of W are written
        const uint64_t w_desc = interleaved_desc(sbase + L::kYOff + kBlock, 1024, 128);
        wgmma_fence();
#pragma unroll
        for (int h = 0; h < F / 64; ++h) {
#pragma unroll
          for (int ks = 0; ks < 4; ++ks) {
            wgmma_ss_n8<1, 0>(u[h], n_major(pq_addr + h * kBlock, ks, kBlock),
                              desc_plus(w_desc, ks * 2048), ks > 0);
          }
        }
        wgmma_commit();
        if constexpr (!kWindow) {
          wgmma_wait<0>();
          finish_u();
        }
      }
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
        if constexpr (kLinear) finish_u();
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
        if constexpr (kLinear) finish_u();
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
        if constexpr (kLinear) finish_u();
        if (!(kLinear && lin_c == 0)) give_v_prev();  // here, not in the loop: in it, it spills
      }
      quad_sum(w1_a, w1_b, e_a, e_b);
    }
    if constexpr (!kDqInState) mbar_arrive(qb.dy_empty);
    // Chunk t - 1 stays until dq has read its keys.
    if (!kDq || !kWindow) mbar_arrive(bar.chunk_empty + slots[0]);  // the last tile reading it

    // The row values; dq with its G_i k_m term.
    float l1_a = 0.f, l1_b = 0.f, p_a = 0.f, p_b = 0.f;
    if constexpr (kLinear && !kWindow) {
      mbar_wait(qb.lin_out_full, t & 1);
      const float* rows = reinterpret_cast<const float*>(smem + L::kRowsOff);
      l1_a = rows[2 * kRows + la] + ls_a;
      l1_b = rows[2 * kRows + lb] + ls_b;
      p_a = rows[3 * kRows + la] + ps_a;
      p_b = rows[3 * kRows + lb] + ps_b;
      mbar_arrive(qb.lin_out_empty);
    }
    float delta_a = coef_l * l1_a * inv_a, delta_b = coef_l * l1_b * inv_b;
    if (kWindow || rows_from_y) {
      delta_a = dl_a;
      delta_b = dl_b;
    }
    // A hybrid unit's (L1 - delta P) / D comes from the state warpgroup.
    const float gl_a = kLinear && !kWindow ? (l1_a - delta_a * p_a) * inv_a : 0.f;
    const float gl_b = kLinear && !kWindow ? (l1_b - delta_b * p_b) * inv_b : 0.f;
    float gw_a = (w1_a - delta_a * e_a) * inv_a, gw_b = (w1_b - delta_b * e_b) * inv_b;
    if (!kWindow && rows_from_y) {
      const float ratio = coef_w != 0.f ? -coef_l / coef_w : 0.f;
      gw_a = ratio * gl_a;
      gw_b = ratio * gl_b;
    }
    // No key side reads the gate term without window gradients.
    const float gate_a = kWindow ? coef_w * gw_a : 0.f, gate_b = kWindow ? coef_w * gw_b : 0.f;
    if constexpr (kDqInState) {
      // ds to the state warpgroup, with - G_i added at key m = argmax_i: dq_i = scale (sum_j ds_ij
      // k_j - G_i k_m). The forward's argmax lies in row i's window, so in chunk t - 1 or t. S's
      // buffer is free once the state's S dy has read it (its dy_empty arrival).
      mbar_wait(qb.dy_empty, t & 1);
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
          const bf16* kg =
              static_cast<const bf16*>(p.a.k) + static_cast<size_t>(kv_unit_of(s, unit)) * N * D;
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
    if (!kLinear && p.a.dphi_q != nullptr) {  // a window-only unit among dropped ones
      bf16* dpq = static_cast<bf16*>(p.a.dphi_q) + row0 * F;
      for (int n = 0; n < F / 8; ++n) {
        const int col = 8 * n + 2 * t4;
        if (in_a) *reinterpret_cast<uint32_t*>(dpq + static_cast<size_t>(ia) * F + col) = 0u;
        if (in_b) *reinterpret_cast<uint32_t*>(dpq + static_cast<size_t>(ib) * F + col) = 0u;
      }
    }
    if (t4 == 0) {
      if (in_a) {
        p.a.row_delta[row0 + ia] = delta_a;
        p.a.row_gate_grad[row0 + ia] = gate_a;
        p.a.row_grad_window[row0 + ia] = gw_a;
        p.a.row_window_share[row0 + ia] = kWindow ? e_a * inv_a : 0.f;
        if (!(kWindow && kLinear)) p.a.row_grad_linear[row0 + ia] = gl_a;
      }
      if (in_b) {
        p.a.row_delta[row0 + ib] = delta_b;
        p.a.row_gate_grad[row0 + ib] = gate_b;
        p.a.row_grad_window[row0 + ib] = gw_b;
        p.a.row_window_share[row0 + ib] = kWindow ? e_b * inv_b : 0.f;
        if (!(kWindow && kLinear)) p.a.row_grad_linear[row0 + ib] = gl_b;
      }
    }
  }
}

// The query kernel's state warpgroup: S and z (unscaled, z in fp32) as keep_state keeps them, and
// dphi_q of each tile, so that the consumer holds no F-wide accumulator. Per tile: the fold of
// the tile's linear chunk into S's registers (for the next tile), S dy from the published S, in
// linear-only units the row values phi_q . S dy and P_state = phi_q . z for the consumer; once
// the consumer has handed over du, dl and 1 / D: + du phi_k - dl z, in hybrid units the row term
// (L1 - dl P) / D = phi_q . dphi_q / D, and the store; with kDqInState, dq from the staged ds; then
// the next S.
template <int D, int F, bool kDq>
__device__ void keep_query_state(const QueryParams& p, const UnitMode& um, uint8_t* smem,
                                 const QueryBarriers& qb, int unit, int r_begin, int r_end,
                                 int tiles) {
  using L = QueryLayout<D, F>;
  constexpr int H = F / 64;              // 64-row halves of S
  const bool rows_here = um.use_window;  // a hybrid unit: the consumer takes delta = dl
  const Barriers& bar = qb.base;
  const int st = threadIdx.x - 256;
  const int warp = st / 32;
  const int lane = st % 32;
  const int g8 = lane / 4;
  const int t4 = lane % 4;
  const int la = warp * 16 + g8, lb = la + 8;
  const uint32_t sbase = shared_address(smem);
  const uint32_t dy_addr = sbase + L::kDyOff;
  const float coef_l = p.a.coef_linear[unit];
  float* rows = reinterpret_cast<float*>(smem + L::kRowsOff);
  const float* z = reinterpret_cast<const float*>(smem + L::kZOff);
  float acc[H][D / 2], zp[H][2];
  // The tile's linear chunk is the one folded after it (chunk t - lag_chunks).
  const int lag_chunks = start_state<D, F>(p.a.fwd_states, p.a.plan.segments, p.a.sum_states, um,
                                           bar, acc, zp, warp, g8, t4);
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

    // phi_q . x and phi_q . z of rows la, lb, x in dpq's layout; phi_q's row addresses from an
    // opaque base: hoisted out of the tile loop they would hold registers that S and dphi_q need.
    auto phi_q_dots = [&](float& x_a, float& x_b, float& z_a, float& z_b) {
      mbar_wait(bar.pq_full, t & 1);
      uint32_t row_off = L::kPqOff + la * 128 + 4 * t4;
      asm volatile("" : "+r"(row_off));
      const uint8_t* pq_a = smem + row_off;
#pragma unroll
      for (int n = 0; n < F / 8; ++n) {
        const float2 zf = *reinterpret_cast<const float2*>(z + 8 * n + 2 * t4);
        const uint8_t* at = pq_a + (n / 8) * kBlock + (((n % 8) ^ g8) * 16);  // swizzled_offset
        const float2 qa = unpack_bf16(*reinterpret_cast<const uint32_t*>(at));
        const float2 qv = unpack_bf16(*reinterpret_cast<const uint32_t*>(at + 8 * 128));
        z_a += qa.x * zf.x + qa.y * zf.y;
        z_b += qv.x * zf.x + qv.y * zf.y;
        x_a += qa.x * dpq[4 * n] + qa.y * dpq[4 * n + 1];
        x_b += qv.x * dpq[4 * n + 2] + qv.y * dpq[4 * n + 3];
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(bar.pq_empty);  // this warp is done with phi_q
      quad_sum(x_a, x_b, z_a, z_b);
    };
    // Linear-only units: the row values phi_q . S dy and P_state = phi_q . z for the consumer;
    // dpq is only read between its two products (rewriting it there costs ptxas copies of the
    // accumulator).
    if (!rows_here) {
      float a1_a = 0.f, a1_b = 0.f, p_a = 0.f, p_b = 0.f;
      phi_q_dots(a1_a, a1_b, p_a, p_b);
      if (t > 0) mbar_wait(qb.lin_out_empty, (t - 1) & 1);
      if (t4 == 0) {
        rows[2 * kRows + la] = a1_a;
        rows[2 * kRows + lb] = a1_b;
        rows[3 * kRows + la] = p_a;
        rows[3 * kRows + lb] = p_b;
      }
      mbar_arrive(qb.lin_out_full);
    }

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
    if (rows_here) {  // (L1 - dl P) / D = phi_q . (S dy + du phi_k - dl z) / D
      float g_a = 0.f, g_b = 0.f, unused_a = 0.f, unused_b = 0.f;
      phi_q_dots(g_a, g_b, unused_a, unused_b);
      const int ia = r_begin + t * kRows + la, ib = ia + 8;
      float* out = p.a.row_grad_linear + static_cast<size_t>(unit) * p.s.seq_len;
      if (t4 == 0 && ia < r_end) out[ia] = g_a * inv_a;
      if (t4 == 0 && ib < r_end) out[ib] = g_b * inv_b;
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

// kSumU: the consumer sums u (QueryArgs::u_partials, D = 128); an instantiation of its own, so
// that the kernel without it keeps its registers.
template <int D, int F, bool kDq, bool kSumU>
__global__ void __launch_bounds__(kWgThreads, 1)
    query_wg_kernel(const __grid_constant__ QueryParams p) {
  HL_TRACED_AWAIT(block_trace::kQuery);
  using L = QueryLayout<D, F>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBarOff);
  const Barriers bar = ring_barriers(bars);
  uint64_t* const qbars = bars + 2 * kSlots + 6;
  const QueryBarriers qb{bar,       qbars,     qbars + 1, qbars + 2, qbars + 3,
                         qbars + 4, qbars + 5, qbars + 6, qbars + 7, qbars + 7 + L::kVSlots,
                         bar.s_full};  // S's barriers are free here
  const Shape& s = p.s;
  const int unit = blockIdx.x / p.a.plan.segments;
  const int seg = blockIdx.x - unit * p.a.plan.segments;
  UnitMode um = unit_mode(s, p.a.window_drop, unit);
  const bool rows_from_y = um.use_window && um.use_linear && !p.a.window_grads;
  if (rows_from_y) um.use_window = false;  // lin_lag stays the hybrid's
  const int r_begin = seg * p.a.plan.length;
  const int r_end = min(s.seq_len, r_begin + p.a.plan.length);
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
    // the state (+ the consumer's u product, which reads W there: query_takes_u)
    mbar_init(qb.y_empty, kSumU && um.use_linear ? 256 : 128);
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
    with_branches(um, [&](auto window, auto linear) {
      consume_query<D, F, window, linear, kDq, kSumU>(p, um, smem, qb, unit, r_begin, r_end, tiles,
                                                      rows_from_y);
    });
    if (p.a.written != nullptr) signal_written(p.a.written + blockIdx.x);
  } else {
    regs_grow<kStateRegs>();
    if (um.use_linear) keep_query_state<D, F, kDq>(p, um, smem, qb, unit, r_begin, r_end, tiles);
    if (p.a.written != nullptr) {
      bulk_wait();  // dq and dphi_q written, then ordered before the generic release
      asm volatile("fence.proxy.async.global;\n" ::: "memory");
      signal_written(p.a.written + blockIdx.x);
    }
  }
}

struct UCombineParams {
  const float* partials;
  float* sums;
  Shape s;
  const uint8_t* window_drop;
  SegmentPlan plan, key_plan;
  int parts, skip;
};

// z of each key segment's sum (F * D + F floats a segment, z after S) from the query kernel's u
// partials, summed over the forward segments in order: block (unit, j), a thread a feature.
__global__ void u_combine_kernel(UCombineParams p) {
  HL_TRACED_AWAIT(block_trace::kUCombine);
  const int unit = blockIdx.x / p.key_plan.segments;
  const int j = blockIdx.x - unit * p.key_plan.segments;
  const UnitMode um = unit_mode(p.s, p.window_drop, unit);
  const int F = p.s.features, f = threadIdx.x;
  if (j == p.skip || !um.use_linear || f >= F) return;
  float z = 0.f;
  for (int i = 0; i < p.plan.segments; ++i) {
    const int part = j - key_segment_of(p.key_plan, um.state_lag, i * p.plan.length);
    if (part < 0 || part >= p.parts) continue;
    z += p.partials[((static_cast<size_t>(unit) * p.plan.segments + i) * p.parts + part) * F + f];
  }
  p.sums[(static_cast<size_t>(unit) * p.key_plan.segments + j) * (F * p.s.head_dim + F) +
         F * p.s.head_dim + f] = z;
}

template <int D, int F>
auto pick_query_kernel(bool dq, bool sum_u) {
  if constexpr (D == 128) {
    if (sum_u) return dq ? query_wg_kernel<D, F, true, true> : query_wg_kernel<D, F, false, true>;
  }
  return dq ? query_wg_kernel<D, F, true, false> : query_wg_kernel<D, F, false, false>;
}

}  // namespace

int query_u_parts(const SegmentPlan& plan, const SegmentPlan& key_plan) {
  return (plan.length + key_plan.length - 1) / key_plan.length + 1;
}

size_t query_u_floats(const Shape& s, const SegmentPlan& plan, const SegmentPlan& key_plan) {
  return static_cast<size_t>(s.batch) * s.q_heads * plan.segments * query_u_parts(plan, key_plan) *
         s.features;
}

bool query_takes_u(const Shape& s, const SegmentPlan& key_plan) {
  return s.head_dim == 128 && key_plan.length >= kRows;
}

cudaError_t run_u_combine(const Shape& s, const QueryArgs& a, float* key_sums, int skip,
                          cudaStream_t stream) {
  const UCombineParams p{a.u_partials, key_sums,   s,         a.window_drop,
                         a.plan,       a.key_plan, a.u_parts, skip};
  return launch_chained(u_combine_kernel, dim3(s.batch * s.q_heads * a.key_plan.segments),
                        dim3(s.features), 0, stream, p);
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
  p.a = a;
  return with_sizes(D, F, [&](auto d, auto f) {
    constexpr int kD = decltype(d)::value, kF = decltype(f)::value;
    return launch_smem(pick_query_kernel<kD, kF>(a.dq != nullptr, a.u_partials != nullptr),
                       units * a.plan.segments, kWgThreads, QueryLayout<kD, kF>::kSmemBytes, p,
                       stream);
  });
}

#ifdef HL_BLOCK_TRACE
void write_block_trace_query(FILE* out) {
  block_trace::write("query", out);
}
#endif

}  // namespace hl::kernels::cuda::detail

#ifdef HL_BLOCK_TRACE
namespace hl::kernels::cuda {
namespace detail {
void write_block_trace_forward(FILE* out);
void write_block_trace_fused_key(FILE* out);
}  // namespace detail

void write_block_trace(FILE* out) {
  detail::write_block_trace_forward(out);
  detail::write_block_trace_query(out);
  detail::write_block_trace_fused_key(out);
}
}  // namespace hl::kernels::cuda
#endif
