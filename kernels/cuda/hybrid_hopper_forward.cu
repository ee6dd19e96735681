// Warp-specialised bf16 kernels of hybrid attention for Hopper (DESIGN §1): TMA loads, wgmma,
// the linear state in fp32 registers. This file: the forward, then the chunk-state pass; the
// backward's query kernel and key kernels are in hybrid_hopper_query.cu and hybrid_hopper_keys.cu,
// their shared building blocks in hybrid_hopper.cuh. They take D and F of 64 or 128 with w = 64
// (non-overlap hybrid) or w <= 64 (overlap, linear-only, window-only); other shapes keep the
// mma.sync kernels (hybrid_forward_tc.cu, hybrid_backward_tc.cu).
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

#include "kernels/cuda/hybrid_hopper.cuh"

namespace hl::kernels::cuda::detail {
namespace {

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
      stage_tile<D>(sbase + slots[0] * L::kSlotBytes, o, inv_a, inv_b, ct);
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
  const int lag_chunks =
      start_state<D, F>(p.states, p.segments, p.sum_states, um, bar, acc, zp, warp, g8, t4);
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
  HL_TRACED_AWAIT(block_trace::kForward);
  using L = Layout<D, F, kMap>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // The kMap layout has no slack for aligning the base (observed aligned on sm_90).
  if (kMap && (shared_address(smem_raw) & 1023) != 0) __trap();
  uint8_t* smem = align_1024(smem_raw);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBarOff);
  const Barriers bar = ring_barriers(bars);

  const Shape& s = p.s;
  const int unit = blockIdx.x / p.segments;
  const int seg = blockIdx.x - unit * p.segments;
  const int kv_unit = kv_unit_of(s, unit);
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
    with_branches(um, [&](auto window, auto linear) {
      consume<D, F, window, linear, kMap>(p, um, smem, bar, unit, r_begin, r_end, tiles);
    });
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
  bool backwards;       // each segment's chunks last to first
  int per_block;        // consecutive segments a block sums (each written on its own)
  int blocks_per_unit;  // ceil(segments / per_block)
  int pass_blocks;      // units * blocks_per_unit; blocks after them sum `coef`'s outputs
  CoefSumParams coef;
  unsigned* written;  // run_state_pass_wg's
};

template <int D, int F, bool kScaled, bool kMap>
__global__ void __launch_bounds__(128 * (1 + F / 64), 1)
    state_pass_wg_kernel(const __grid_constant__ SpParams p) {
  static_assert(!kMap || regs_fit(128 * (1 + F / 64), 24 + 240 * (F / 64)),
                "registers over the launch's");
  HL_TRACED_START(kScaled ? block_trace::kScaledStatePass : block_trace::kStatePass,
                  p.written == nullptr);
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
  uint8_t* smem = align_1024(smem_raw);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBarOff);
  uint64_t* empty = full + kSpStages;
  uint64_t* w_full = empty + kSpStages;

  const Shape& s = p.s;
  const int N = s.seq_len;
  // With `written`, the blocks of the last segments come first (their sums are needed first).
  const int units = p.pass_blocks / p.blocks_per_unit;
  const int unit = p.written != nullptr ? blockIdx.x % units : blockIdx.x / p.blocks_per_unit;
  const int seg_first = p.written != nullptr
                            ? p.blocks_per_unit - 1 - static_cast<int>(blockIdx.x) / units
                            : (blockIdx.x - unit * p.blocks_per_unit) * p.per_block;
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
  auto chunk_row = [&](int begin, int chunks, int c) {
    return begin + (p.backwards ? chunks - 1 - c : c) * kRows;
  };
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
      const float* weight =
          p.weight != nullptr ? p.weight + static_cast<size_t>(unit) * N : nullptr;
      for_each_segment([&](int, int begin, int, int chunks, int ring) {
        for (int c = 0; c < chunks; ++c) {
          const int stage = (ring + c) % kSpStages;
          const uint32_t use = (ring + c) / kSpStages;
          const int row = chunk_row(begin, chunks, c) + r;
          const float d = row < N ? denom[row] : 0.f;
          const float w = row < N && weight != nullptr ? weight[row] : 0.f;
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
        const int row = chunk_row(begin, chunks, c);
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
  // acc += a^T b over the chunk of rows [row0, min(row0 + 64, end)) (the block's chunk g, so the
  // ring's stage g % kSpStages), with column block h of a at `a_block`; a segment's chunk c = 0
  // starts the sum. Waits for every wgmma in flight, then gives the stage back.
  auto fold = [&](int g, int c, int row0, int end, const uint8_t* a_block) {
    const int stage = g % kSpStages;
    const uint8_t* base = smem + stage * L::kStageBytes;
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
        fold(c, c, chunk_row(begin, chunks, c), end, a_block);  // waits for c + 1's projection
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
        fold(ring + c, c, chunk_row(begin, chunks, c), end,
             smem + stage * L::kStageBytes + h * kBlock);
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
  if (p.written != nullptr) signal_written(p.written + unit * p.segments + seg_first);
}

}  // namespace

bool state_pass_wg_takes(const Shape& s) {
  return (s.head_dim == 64 || s.head_dim == 128) && (s.features == 64 || s.features == 128) &&
         hopper_device();
}

cudaError_t run_state_pass_wg(const Shape& s, const void* a, const void* bm, const float* row_denom,
                              const float* row_weight, bool bm_per_kv, const uint8_t* window_drop,
                              float* out, const SegmentPlan& plan, int fixed_lag, int lag_sign,
                              int range_end, bool all_units, int skip, cudaStream_t stream,
                              const void* k_map_weight, const CoefSumParams* coef,
                              unsigned* written) {
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
  // The forward's pass ends on its segments' first rows, which the forward kernel reads first:
  // from L2 (bench/KERNEL_NOTES.md session 27; measured for phi given, not with the maps inside).
  p.backwards = !scaled && !mapped;
  // Short segments several to a block, so that the blocks are one wave (GQA's reverse pass: 16
  // key segments of 32 q heads): each block streams its segments' chunks through one ring.
  const int sms = std::max(1, device_attribute(cudaDevAttrMultiProcessorCount));
  p.per_block = mapped ? 1 : std::max(1, (units * plan.segments + sms - 1) / sms);
  p.blocks_per_unit = (plan.segments + p.per_block - 1) / p.per_block;
  p.pass_blocks = units * p.blocks_per_unit;
  if (written != nullptr && (p.per_block != 1 || 4 * (s.features / 64) != kPassWriters || coef))
    return cudaErrorInvalidValue;
  p.written = written;
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

#ifdef HL_BLOCK_TRACE
void write_block_trace_forward(FILE* out) {
  block_trace::write("forward", out);
}
#endif

}  // namespace hl::kernels::cuda::detail
