// The backward's key kernels for Hopper (warp-specialised, TMA loads, wgmma): the linear part
// (dphi_k and the linear part of dv) and the window part (dk, dv); the building blocks they share
// with the forward and the query kernel are in hybrid_hopper.cuh.

#include "kernels/cuda/hybrid_hopper.cuh"

namespace hl::kernels::cuda::detail {
namespace {

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
  // rev_states: U, u at the top of each key segment (key_plan.segments > 1); with sum_states
  // each segment's own sum instead, and the kernel adds those after its segment.
  LinearKeyArgs a;
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
    const UnitMode um = unit_mode(s, p.a.window_drop, unit);
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
  uint8_t* smem = align_1024(smem_raw);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBarOff);
  const KeyBarriers bar{bars,
                        bars + kKeySlots,
                        bars + 2 * kKeySlots,
                        bars + 2 * kKeySlots + 1,
                        bars + 2 * kKeySlots + 2,
                        bars + 2 * kKeySlots + 3};
  const Shape& s = p.s;
  const int N = s.seq_len;
  const int kv_unit = blockIdx.x / p.a.key_plan.segments;
  const int seg = blockIdx.x - kv_unit * p.a.key_plan.segments;
  const int s_begin = seg * p.a.key_plan.length;
  const int s_end = segment_end(p.a.key_plan, seg, N);
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
      if (unit_mode(s, p.a.window_drop, unit).use_linear) {
        ++linear_heads;
        continue;
      }
      for (int i = threadIdx.x; i < (s_end - s_begin) * F; i += kWgThreads)
        static_cast<bf16*>(p.a.dphi_k)[(static_cast<size_t>(unit) * N + s_begin) * F + i] =
            __float2bfloat16_rn(0.f);
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
        const float inv = row < N ? 1.f / p.a.row_denom[at] : 0.f;
        const float delta = row < N ? p.a.row_delta[at] : 0.f;
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
      const float coef_l = p.a.coef_linear[unit];
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
      coef_l = p.a.coef_linear[unit];
      load_state<D, F>(
          acc, up, p.a.rev_states + static_cast<size_t>(unit) * p.a.key_plan.segments * (F * D + F),
          seg, p.a.key_plan.segments, p.a.sum_states, true, warp, g8, t4);
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
  WindowKeyArgs a;  // dv_linear: [kv units, N, D] fp32, or null
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
      if (!unit_mode(s, p.a.window_drop, unit).use_window) continue;
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
  uint8_t* smem = align_1024(smem_raw);
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
  const int kv_unit = blockIdx.x / p.a.key_plan.segments;
  const int seg = blockIdx.x - kv_unit * p.a.key_plan.segments;
  const int s_begin = seg * p.a.key_plan.length;
  const int s_end = segment_end(p.a.key_plan, seg, N);
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
            const float m = ok ? p.a.row_max[at] * 1.4426950408889634f -
                                     __log2f(p.a.coef_window[unit] / p.a.row_denom[at])
                               : INFINITY;
            const float delta = ok ? p.a.row_delta[at] : 0.f;
            const float gate = ok ? p.a.row_gate_grad[at] : 0.f;
            const int am = ok ? p.a.row_argmax[at] : -1;
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
          if (p.a.dv_linear != nullptr) {
            const float* dvl = p.a.dv_linear + static_cast<size_t>(kv_unit) * N * D;
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
  p.a = a;
  return with_sizes(D, F, [&](auto d, auto f) {
    constexpr int kD = decltype(d)::value, kF = decltype(f)::value;
    return launch_smem(
        a.dv != nullptr ? linear_key_wg_kernel<kD, kF, true> : linear_key_wg_kernel<kD, kF, false>,
        kv_units * a.key_plan.segments, kWgThreads, KeyLayout<kD, kF>::kSmemBytes, p, stream);
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
  p.a = a;
  return D == 64 ? launch_smem(window_key_wg_kernel<64>, kv_units * a.key_plan.segments, kWgThreads,
                               WkLayout<64>::kSmemBytes, p, stream)
                 : launch_smem(window_key_wg_kernel<128>, kv_units * a.key_plan.segments,
                               kWgThreads, WkLayout<128>::kSmemBytes, p, stream);
}

}  // namespace hl::kernels::cuda::detail
