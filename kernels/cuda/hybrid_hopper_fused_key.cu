// The backward's fused key kernel for Hopper: dk, dv and dphi_k in one pass over the rows, where
// hybrid_hopper_keys.cu's window and linear key kernels make two (and dv a round trip between
// them). It takes MHA, the non-overlapping hybrid with w = 64 and D = F = 128 (the benchmarks'
// shape); the dispatch keeps the two kernels for everything else. bench/KERNEL_NOTES.md
// (sessions 24-26) has its plan and measurements.
//
// Per (unit, key segment), 64-key blocks from the segment's top down, each as two 32-key halves,
// with U = sum_i phi_q_i (dy_i / D_i)^T and u = sum_i phi_q_i delta_i / D_i over the rows past
// the block's upper chunk (notation of hybrid_backward_tc.cu):
//   scores warpgroup: per half, row chunks c (the block's rows) and c + 1 (the next 64): S = q
//     k_h^T, dP = dy v_h^T for both, Pl = phi_q phi_k_h^T for chunk c + 1 (m64n32, rows as M),
//     then pw (c_w e / D on the window, plus c_l p / D on chunk c + 1's linear keys), ds = pw (dP
//     - delta) - G at the argmax, du = c_l (dP - delta) / D on the linear keys; pw and du staged
//     in bf16 as [key][row] tiles (stmatrix .trans), ds over k_h (read by then);
//   two key-side warpgroups, side mb holding U's rows 64 mb-64 mb + 63 and computing rows 64 mb-
//     64 mb + 63 of dv^T = c_l U^T phi_k_h^T + dy_c^T pw_c + dy_c1^T pw_c1, dk^T = scale (q_c^T
//     ds_c + q_c1^T ds_c1) and dphi_k^T = c_l (U v_h^T - u) + phi_q^T du (keys as N = 32);
//     outputs staged transposed (half 0 over its key buffer, half 1 over the upper chunk's row
//     slot) and sent by a store thread; after the block each side folds chunk c + 1 into its
//     rows of U and publishes c_l U in bf16 (stmatrix) and c_l u;
//   producer warpgroup: one thread's TMA loads (key halves in two buffers, q and dy of three row
//     chunks, phi_q of two), two warps copying the row values, the store thread.

#include "kernels/cuda/hybrid_hopper.cuh"

namespace hl::kernels::cuda::detail {
namespace {

constexpr int D = 128, F = 128, kW = 64;  // the one shape it takes (fused_key_wg_takes)
constexpr int kHalfBlk = 32 * 128;        // 32 rows of 128 bytes
constexpr int kUBlock = F * 128;          // U's copy: F rows of one 64-column block
// Shared memory (from a 1024-aligned base).
constexpr int kKeyBuf = 3 * 2 * kHalfBlk;  // a key half: k, v, phi_k (32 rows x 128 each)
constexpr int kKOff = 0, kVOff = 2 * kHalfBlk, kPkOff = 4 * kHalfBlk;  // within a key buffer
constexpr int kRowOff = 2 * kKeyBuf;  // three row slots: q, dy (64 rows x 128 each)
constexpr int kRowSlot = 4 * kBlock;
constexpr int kDyOff = 2 * kBlock;                // within a row slot
constexpr int kPqOff = kRowOff + 3 * kRowSlot;    // two phi_q slots
constexpr int kUOff = kPqOff + 2 * 2 * kBlock;    // c_l U in bf16: [D / 64][F][64]
constexpr int kStageOff = kUOff + 2 * kUBlock;    // pw_c, pw_c1, du: [32 keys][64 rows] each
constexpr int kRvOff = kStageOff + 3 * kHalfBlk;  // three slots of row values
constexpr int kRvSlot = kRows * 16 + kRows * 4;   // float4 (mx, x_l, delta, G), argmax
constexpr int kSmallUOff = kRvOff + 3 * kRvSlot;  // c_l u: F floats
constexpr int kBarOff = kSmallUOff + F * 4;
constexpr int kBars = 22;
constexpr int kSmemBytes = kBarOff + kBars * 8 + 1024;  // + slack to align
static_assert(kSmemBytes <= 227 * 1024, "more shared memory than a Hopper SM has");

struct FkParams {
  CUtensorMap q, dy, phi_q;    // 64-row boxes
  CUtensorMap k, v, phi_k;     // 32-row boxes
  CUtensorMap dk, dv, dphi_k;  // 32-row boxes (stores)
  Shape s;
  FusedKeyArgs a;  // rev_states: [unit][segment][F * D + F] (load_state, suffix)
};

struct FkBarriers {
  // [2] key halves, k apart from v and phi_k: half 1's v and phi_k go back after the U products
  // and the scores' products, its k (ds' place) only at the output barrier.
  uint64_t *key_full, *key_empty, *vp_full, *vp_empty;
  uint64_t *row_full, *row_empty;  // [3] row slots (q, dy, row values)
  uint64_t *pq_full, *pq_empty;    // [2] phi_q slots
  uint64_t *stage_full, *stage_empty;
  uint64_t* out_full;  // [2] both key sides' outputs of half h staged (out_base)
};

// Chunk x (of 64 rows from the segment's start; the top block's upper chunk is T) sits in row
// slot x % 3 and phi_q slot x % 2.
__device__ inline int row_slot(int x) {
  return x % 3;
}

// Where half h of the block whose lower chunk is c stages its outputs (dk, dv, dphi_k at the key
// buffer's k, v, phi_k offsets): half 0 over its key buffer, half 1 over the upper chunk's row
// slot, which nothing reads after that half's products and fold, so that key buffer 1 goes back
// to the producer before the stores rather than after.
__device__ inline uint32_t out_base(uint32_t sbase, int h, int c) {
  return sbase + (h == 0 ? 0 : kRowOff + row_slot(c + 1) * kRowSlot);
}

constexpr int kFkThreads = 512;

// Registers a thread of the scores and of each key-side warpgroup (the producer keeps 24).
constexpr int kScoresRegs = 168, kKeyRegs = 160;
static_assert(regs_fit(kFkThreads, 24 + kScoresRegs + 2 * kKeyRegs),
              "more registers than an SM has");

// dc_w and dc_l of `unit` (FusedKeyArgs::coef) once its query blocks are done. Not inlined, so
// that its registers do not weigh on the key kernel's allocation.
__device__ __noinline__ void sum_coef_grads(const FusedKeyArgs& a, int unit) {
  const int q_segments = a.query_plan.segments;
  if (threadIdx.x == 0) {
    for (int i = 0; i < q_segments; ++i)
      await_written(a.query_written + unit * q_segments + i, kQueryWriters);
  }
  __syncthreads();
  double dw, dl;
  coef_unit_sums(a.coef, unit, dw, dl);
  if (threadIdx.x == 0) {
    a.coef.out[unit] = static_cast<float>(dw);
    a.coef.out[a.coef.units + unit] = static_cast<float>(dl);
  }
}

__global__ void __launch_bounds__(kFkThreads, 1)
    fused_key_wg_kernel(const __grid_constant__ FkParams p) {
  const bool dataflow = p.a.query_written != nullptr;  // FusedKeyArgs::query_written
  HL_TRACED_START(block_trace::kFusedKey, !dataflow);
  const int units = p.s.batch * p.s.q_heads, segments = p.a.key_plan.segments;
  const int q_segments = p.a.query_plan.segments;
  const unsigned* const query_written = p.a.query_written;
  if (dataflow && static_cast<int>(blockIdx.x) >= units * segments) {
    sum_coef_grads(p.a, blockIdx.x - units * segments);
    return;
  }
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + kBarOff);
  const FkBarriers bar{bars,      bars + 2,  bars + 4,  bars + 6,  bars + 8, bars + 11,
                       bars + 14, bars + 16, bars + 18, bars + 19, bars + 20};
  const int N = p.s.seq_len;
  // In dataflow the last segments' blocks come first: they wait for the fewest pass sums.
  const int unit = dataflow ? blockIdx.x % units : blockIdx.x / segments;
  const int seg =
      dataflow ? segments - 1 - static_cast<int>(blockIdx.x) / units : blockIdx.x - unit * segments;
  const int s_begin = seg * p.a.key_plan.length;
  const int s_end = segment_end(p.a.key_plan, seg, N);
  if (s_begin >= s_end) return;
  const int T = (s_end - s_begin + kRows - 1) / kRows;  // 64-key blocks
  const int state_lag = kW - 1;
  const int s_hi_top = s_end + state_lag;  // rows from here on are in U from the start
  if (dataflow && threadIdx.x == 0) {
    // The row values of rows [s_begin, s_end + 64) and u of the rows after the segment come
    // from the query blocks from s_begin's on, U from the pass's later segments.
    for (int i = s_begin / p.a.query_plan.length; i < q_segments; ++i)
      await_written(query_written + unit * q_segments + i, kQueryWriters);
    for (int j = seg + 1; j < segments; ++j)
      await_written(p.a.pass_written + unit * segments + j, kPassWriters);
  }
  if (threadIdx.x == 0) {
    for (int i = 0; i < 2; ++i) {
      mbar_init(bar.key_full + i, 1);
      mbar_init(bar.vp_full + i, 1);
      // Buffer 0: the store thread, once its stores have read it; buffer 1: k by a key-side
      // thread after the output barrier (the second half's outputs go over the upper row chunk),
      // v and phi_k by both key sides once their U products and the scores' products are done.
      mbar_init(bar.key_empty + i, 1);
      mbar_init(bar.vp_empty + i, i == 0 ? 1 : 256);
      mbar_init(bar.out_full + i, 256);
      mbar_init(bar.pq_full + i, 1);
      mbar_init(bar.pq_empty + i, 384);
    }
    for (int i = 0; i < 3; ++i) {
      mbar_init(bar.row_full + i, 1 + kRows);  // the TMA arrival + the row values' copies
      mbar_init(bar.row_empty + i, 129);       // the scores warpgroup and the store thread
    }
    mbar_init(bar.stage_full, 128);
    mbar_init(bar.stage_empty, 256);
    mbar_init_fence();
  }
  __syncthreads();
  const uint32_t sbase = shared_address(smem);
  const int wg = threadIdx.x / 128, ct = threadIdx.x % 128;
  const int warp = ct / 32, lane = ct % 32, g8 = lane / 4, t4 = lane % 4;
  const float coef_w = p.a.coef_window[unit], coef_l = p.a.coef_linear[unit];
  // The chunk x a fill of a row slot brings: block bi (c = T - 1 - bi) needs chunk c (and, for
  // bi = 0, chunk T too). Fills in order: T, T - 1, T - 2, ..., 0; fill f is chunk T - f.
  auto chunk_row0 = [&](int x) { return s_begin + x * kRows; };

  if (wg == 0) {
    regs_shrink<24>();
    if (threadIdx.x == 0) {
      // Loads in the order the blocks need them: rows (chunk c; the top block also chunk T),
      // phi_q of chunk c + 1, key halves 0 and 1 of block c.
      auto load_rows = [&](int x) {
        const int fill = T - x, slot = row_slot(x);
        if (fill >= 3) mbar_wait(bar.row_empty + slot, ((fill - 3) / 3) & 1);
        mbar_expect_bytes(bar.row_full + slot, 4 * kBlock);
        uint8_t* base = smem + kRowOff + slot * kRowSlot;
        for (int b = 0; b < 2; ++b) {
          tma_load_3d(base + b * kBlock, &p.q, 64 * b, chunk_row0(x), unit, bar.row_full + slot);
          tma_load_3d(base + kDyOff + b * kBlock, &p.dy, 64 * b, chunk_row0(x), unit,
                      bar.row_full + slot);
        }
      };
      for (int bi = 0; bi < T; ++bi) {
        const int c = T - 1 - bi;
        if (bi == 0) load_rows(T);
        load_rows(c);
        {
          const int x = c + 1, fill = bi, slot = x % 2;
          if (fill >= 2) mbar_wait(bar.pq_empty + slot, ((fill - 2) / 2) & 1);
          mbar_expect_bytes(bar.pq_full + slot, 2 * kBlock);
          for (int b = 0; b < 2; ++b) {
            tma_load_3d(smem + kPqOff + slot * 2 * kBlock + b * kBlock, &p.phi_q, 64 * b,
                        chunk_row0(x), unit, bar.pq_full + slot);
          }
        }
        for (int h = 0; h < 2; ++h) {
          uint8_t* base = smem + h * kKeyBuf;
          const int key0 = chunk_row0(c) + 32 * h;
          if (bi >= 1) mbar_wait(bar.vp_empty + h, (bi - 1) & 1);
          mbar_expect_bytes(bar.vp_full + h, 2 * kBlock);
          for (int b = 0; b < 2; ++b) {
            tma_load_3d(base + kVOff + b * kHalfBlk, &p.v, 64 * b, key0, unit, bar.vp_full + h);
            tma_load_3d(base + kPkOff + b * kHalfBlk, &p.phi_k, 64 * b, key0, unit,
                        bar.vp_full + h);
          }
          if (bi >= 1) mbar_wait(bar.key_empty + h, (bi - 1) & 1);
          mbar_expect_bytes(bar.key_full + h, kBlock);
          for (int b = 0; b < 2; ++b)
            tma_load_3d(base + kKOff + b * kHalfBlk, &p.k, 64 * b, key0, unit, bar.key_full + h);
        }
      }
      if (dataflow) {
        // The grid ends after every query block of its units, as if it had waited for the
        // whole query kernel: a kernel chained after it, which waits for this grid, may read dq.
        for (int i = 0; i < s_begin / p.a.query_plan.length; ++i)
          await_written(query_written + unit * q_segments + i, kQueryWriters);
      }
    } else if (threadIdx.x == 32) {
      // The store thread: each half's outputs, once both key sides have staged them, by TMA;
      // their place (key buffer 0 or the upper row slot) goes back as soon as the stores have
      // read it. The key sides never wait for a store (a thread waits only for its own bulk
      // stores).
      for (int bi = 0; bi < T; ++bi) {
        const int c = T - 1 - bi;
        for (int h = 0; h < 2; ++h) {
          mbar_wait(bar.out_full + h, bi & 1);
          const int key0 = chunk_row0(c) + 32 * h;
          uint8_t* base = smem + (out_base(sbase, h, c) - sbase);
          for (int b = 0; b < 2; ++b) {
            tma_store_3d(&p.dk, base + kKOff + b * kHalfBlk, 64 * b, key0, unit);
            tma_store_3d(&p.dv, base + kVOff + b * kHalfBlk, 64 * b, key0, unit);
            tma_store_3d(&p.dphi_k, base + kPkOff + b * kHalfBlk, 64 * b, key0, unit);
          }
          bulk_commit();
          bulk_wait_read();
          if (h == 0) {
            mbar_arrive(bar.key_empty);
            mbar_arrive(bar.vp_empty);
          } else {
            mbar_arrive(bar.row_empty + row_slot(c + 1));
          }
        }
      }
      mbar_arrive(bar.row_empty + row_slot(0));
      bulk_wait();
    } else if (threadIdx.x >= 64) {
      // Warps 2-3: row r of each chunk's values (mx = the max in log2 units less log2(c_w /
      // D), so that exp2(s scale log2 e - mx) = c_w e / D; x_l = c_l / D; delta; G) and its
      // argmax, in the chunk's row-value slot. Rows past N: no weight, no linear factor.
      const int r = threadIdx.x - 64;
      for (int fill = 0; fill <= T; ++fill) {
        const int x = T - fill, slot = row_slot(x);
        const int row = chunk_row0(x) + r;
        const size_t at = static_cast<size_t>(unit) * N + row;
        const bool ok = row < N;
        const float mx =
            ok ? p.a.row_max[at] * 1.4426950408889634f - __log2f(coef_w / p.a.row_denom[at])
               : INFINITY;
        const float xl = ok ? coef_l / p.a.row_denom[at] : 0.f;
        const float delta = ok ? p.a.row_delta[at] : 0.f;
        const float gate = ok ? p.a.row_gate_grad[at] : 0.f;
        const int am = ok ? p.a.row_argmax[at] : -1;
        if (fill >= 3) mbar_wait(bar.row_empty + slot, ((fill - 3) / 3) & 1);
        uint8_t* rv = smem + kRvOff + slot * kRvSlot;
        reinterpret_cast<float4*>(rv)[r] = make_float4(mx, xl, delta, gate);
        reinterpret_cast<int*>(rv + kRows * 16)[r] = am;
        mbar_arrive(bar.row_full + slot);
      }
    }
    return;
  }

  if (wg == 1) {
    // ---- scores warpgroup ----
    regs_grow<kScoresRegs>();
    const float scale_log2 = p.s.scale * 1.4426950408889634f;
    const int la = 16 * warp + g8;  // this thread's rows la, la + 8 of each chunk
    for (int bi = 0; bi < T; ++bi) {
      const int c = T - 1 - bi;
      const int k0 = chunk_row0(c);
      const int s_hi = min(bi == 0 ? s_hi_top : N, N);
      const uint32_t lo_slot = sbase + kRowOff + row_slot(c) * kRowSlot;
      const uint32_t up_slot = sbase + kRowOff + row_slot(c + 1) * kRowSlot;
      const uint32_t pq = sbase + kPqOff + ((c + 1) % 2) * 2 * kBlock;
      if (bi == 0) mbar_wait(bar.row_full + row_slot(T), 0);
      mbar_wait(bar.row_full + row_slot(c), ((T - c) / 3) & 1);
      mbar_wait(bar.pq_full + (c + 1) % 2, (bi / 2) & 1);
      // This thread's rows' values: chunk c rows la, la + 8 (lower) and chunk c + 1 (upper).
      const uint8_t* rv_lo = smem + kRvOff + row_slot(c) * kRvSlot;
      const uint8_t* rv_up = smem + kRvOff + row_slot(c + 1) * kRvSlot;
      float4 fl[2], fu[2];
      int aml[2], amu[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        fl[r] = reinterpret_cast<const float4*>(rv_lo)[la + 8 * r];
        fu[r] = reinterpret_cast<const float4*>(rv_up)[la + 8 * r];
        aml[r] = reinterpret_cast<const int*>(rv_lo + kRows * 16)[la + 8 * r];
        amu[r] = reinterpret_cast<const int*>(rv_up + kRows * 16)[la + 8 * r];
      }
      for (int h = 0; h < 2; ++h) {
        const int hs = 2 * bi + h;  // the half's sequence number
        const uint32_t kb = sbase + h * kKeyBuf;
        // The products of v and phi_k first: in half 1 they land before k.
        mbar_wait(bar.vp_full + h, bi & 1);
        float s1[16], dp1[16], pl[16], s0[16], dp0[16];
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 8; ++ks) {
          wgmma_ss_n32<0, 0>(dp1, k_major(up_slot + kDyOff, ks), k_major(kb + kVOff, ks, kHalfBlk),
                             ks > 0);
          wgmma_ss_n32<0, 0>(pl, k_major(pq, ks), k_major(kb + kPkOff, ks, kHalfBlk), ks > 0);
          wgmma_ss_n32<0, 0>(dp0, k_major(lo_slot + kDyOff, ks), k_major(kb + kVOff, ks, kHalfBlk),
                             ks > 0);
        }
        wgmma_commit();
        mbar_wait(bar.key_full + h, bi & 1);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 8; ++ks)
          wgmma_ss_n32<0, 0>(s1, k_major(up_slot, ks), k_major(kb + kKOff, ks, kHalfBlk), ks > 0);
        wgmma_commit();
#pragma unroll
        for (int ks = 0; ks < 8; ++ks)
          wgmma_ss_n32<0, 0>(s0, k_major(lo_slot, ks), k_major(kb + kKOff, ks, kHalfBlk), ks > 0);
        wgmma_commit();
        wgmma_wait<1>();
        // Element i: row la + 8 ((i / 2) & 1) of the chunk, key jl = 32 h + 8 (i / 4) + 2 t4 +
        // (i & 1) of the block. Chunk c + 1 (rows k0 + 64 + il): the window iff il < jl, the
        // linear part iff il >= jl and the row is below s_hi.
        float pw1[16], ds1[16], du[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          const int r = (i / 2) & 1, il = la + 8 * r;
          const int jl = 32 * h + 8 * (i / 4) + 2 * t4 + (i & 1);
          const bool in_w = il < jl;
          const bool in_l = !in_w && k0 + kRows + il < s_hi;
          const float4 f = fu[r];
          const float ex = in_w ? fast_exp2(fmaf(s1[i], scale_log2, -f.x)) : 0.f;
          const float d = dp1[i] - f.z;
          const float gate = amu[r] == k0 + jl ? f.w : 0.f;
          pw1[i] = in_w ? ex : (in_l ? pl[i] * f.y : 0.f);
          ds1[i] = in_w ? fmaf(ex, d, -gate) : 0.f;
          du[i] = in_l ? d * f.y : 0.f;
        }
        wgmma_wait<0>();
        // Chunk c (rows k0 + il): the window iff il >= jl.
        float pw0[16], ds0[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          const int r = (i / 2) & 1, il = la + 8 * r;
          const int jl = 32 * h + 8 * (i / 4) + 2 * t4 + (i & 1);
          const float4 f = fl[r];
          const float ex = il >= jl ? fast_exp2(fmaf(s0[i], scale_log2, -f.x)) : 0.f;
          pw0[i] = ex;
          ds0[i] = fmaf(ex, dp0[i] - f.z, aml[r] == k0 + jl ? -f.w : 0.f);
        }
        // The previous half's staged tiles are read; k_h is read by this warpgroup's products
        // (done), so ds goes over it.
        if (hs > 0) mbar_wait(bar.stage_empty, (hs - 1) & 1);
        const uint32_t st = sbase + kStageOff;
        stage_trans_n32(st, pw0, 1.f, 0, warp, lane, kBlock);
        stage_trans_n32(st + kHalfBlk, pw1, 1.f, 0, warp, lane, kBlock);
        stage_trans_n32(st + 2 * kHalfBlk, du, 1.f, 0, warp, lane, kBlock);
        stage_trans_n32(kb + kKOff, ds0, 1.f, 0, warp, lane, kBlock);
        stage_trans_n32(kb + kKOff + kHalfBlk, ds1, 1.f, 0, warp, lane, kBlock);
        fence_async_shared();
        mbar_arrive(bar.stage_full);
      }
      // Chunk c + 1 and its phi_q: this warpgroup is done with them.
      mbar_arrive(bar.row_empty + row_slot(c + 1));
      mbar_arrive(bar.pq_empty + (c + 1) % 2);
    }
    // The last block's lower chunk (chunk 0) is never an upper chunk: give it back too.
    mbar_arrive(bar.row_empty + row_slot(0));
    return;
  }

  // ---- key sides: wg 2 + mb holds U's rows 64 mb-64 mb + 63 and rows 64 mb-64 mb + 63 of dv^T,
  // dk^T and dphi_k^T, so that both run the same products ----
  regs_grow<kKeyRegs>();
  const int mb = wg - 2, f0 = 64 * mb;
  float u[1][64], up[1][2];  // U's rows f0 + 16 w + g8 (+ 8) and their u partial sums
  // U, u at the segment's top: the rows after it (zero for the last segment).
  load_state<D, 64, F>(
      u, up, p.a.rev_states + static_cast<size_t>(unit) * p.a.key_plan.segments * (F * D + F), seg,
      p.a.key_plan.segments, p.a.sum_states, true, warp, g8, t4, f0);
  if (p.a.u_partials != nullptr && t4 == 0) {  // u of later segments from the query's partials
    const int q_segs = p.a.query_plan.segments;
    const float* partials =
        p.a.u_partials + static_cast<size_t>(unit) * q_segs * p.a.u_parts * F + f0 + 16 * warp + g8;
    for (int j = seg + 1; j < p.a.key_plan.segments; ++j) {
      for (int i = 0; i < q_segs; ++i) {
        const int part = j - key_segment_of(p.a.key_plan, state_lag, i * p.a.query_plan.length);
        if (part < 0 || part >= p.a.u_parts) continue;
        const float* at = partials + (static_cast<size_t>(i) * p.a.u_parts + part) * F;
        up[0][0] += at[0];
        up[0][1] += at[8];
      }
    }
  }
  // c_l U into its bf16 copy (this side's rows, by stmatrix: eight x4 stores a thread) and c_l u,
  // between barriers of both key-side warpgroups: the first once both are done with the copy.
  auto publish = [&] {
    named_barrier(1, 256);
    publish_rows_stsm(sbase + kUOff + (f0 + 16 * warp) * 128, u[0], coef_l, lane, kUBlock);
    float za = up[0][0], zb = up[0][1];
    quad_sum(za, zb);
    if (t4 == 0) {
      float* small = reinterpret_cast<float*>(smem + kSmallUOff);
      small[f0 + 16 * warp + g8] = coef_l * za;
      small[f0 + 16 * warp + g8 + 8] = coef_l * zb;
    }
    fence_async_shared();
    named_barrier(1, 256);
  };
  publish();
  const float* small_u = reinterpret_cast<const float*>(smem + kSmallUOff);
  // Out here: a division's slow path is a call, which inside a product's pipeline stage makes
  // ptxas serialise every product of the kernel (C7515).
  const float inv_coef_l = 1.f / coef_l;
  const uint32_t st = sbase + kStageOff;
  for (int bi = 0; bi < T; ++bi) {
    const int c = T - 1 - bi;
    const int k0 = chunk_row0(c);
    const uint32_t lo_slot = sbase + kRowOff + row_slot(c) * kRowSlot;
    const uint32_t up_slot = sbase + kRowOff + row_slot(c + 1) * kRowSlot;
    const uint32_t pq = sbase + kPqOff + ((c + 1) % 2) * 2 * kBlock;
    for (int h = 0; h < 2; ++h) {
      const int hs = 2 * bi + h;
      const uint32_t kb = sbase + h * kKeyBuf;
      // At the block's end U is folded right after the products that read it and published
      // while the others run.
      const bool fold = h == 1 && c > 0;
      // The products that need no staged tile (those that read U, and the fold) go first, once
      // the half's keys have landed, while the scores warpgroup works on the half.
      mbar_wait(bar.vp_full + h, bi & 1);
      mbar_wait(bar.row_full + row_slot(c), ((T - c) / 3) & 1);
      mbar_wait(bar.row_full + row_slot(c + 1), ((T - c - 1) / 3) & 1);
      mbar_wait(bar.pq_full + (c + 1) % 2, (bi / 2) & 1);
      float dv[16], dk[16], dpk[16];
      // dphi_k^T starts at - c_l u of its rows.
      {
        const float ua = -small_u[f0 + 16 * warp + g8], ub = -small_u[f0 + 16 * warp + g8 + 8];
#pragma unroll
        for (int i = 0; i < 16; ++i)
          dpk[i] = ((i / 2) & 1) ? ub : ua;
      }
      // c_l U v^T with A = this side's rows of U's bf16 copy (K-major there): from registers it
      // would hold 32 more a thread through the products, more than the side has.
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        wgmma_ss_n32<0, 0>(dpk, k_major(sbase + kUOff + f0 * 128, kk, kUBlock),
                           k_major(kb + kVOff, kk, kHalfBlk), true);
      }
#pragma unroll
      for (int ks = 0; ks < 8; ++ks) {  // c_l U^T phi_k^T, K = F
        wgmma_ss_n32<1, 0>(dv, n_major(sbase + kUOff + mb * kUBlock, ks, kUBlock),
                           k_major(kb + kPkOff, ks, kHalfBlk), ks > 0);
      }
      if (fold) {
        // Chunk c + 1's rows below s_hi into U (A = (phi_q / D)^T, B = dy), u += phi_q delta /
        // D, for block c - 1.
        const int s_hi = bi == 0 ? s_hi_top : N;
        const int r0 = k0 + kRows;
        const float4* rv =
            reinterpret_cast<const float4*>(smem + kRvOff + row_slot(c + 1) * kRvSlot);
        uint32_t a[4][1][4];
        load_fold_operand<1>(a, smem + kPqOff + ((c + 1) % 2) * 2 * kBlock + (f0 / 64) * kBlock,
                             warp, lane, [&](uint32_t(&frag)[4], int kk, int) {
#pragma unroll
                               for (int r = 0; r < 4; ++r) {
                                 const int il = 16 * kk + 2 * t4 + (r / 2) * 8;
                                 float2 x = unpack_bf16(frag[r]);
                                 const float4 fa = rv[il],
                                              fb = rv[il + 1];  // x_l = c_l / D: c_l divided out
                                 x.x *= r0 + il < s_hi ? fa.y * inv_coef_l : 0.f;
                                 x.y *= r0 + il + 1 < s_hi ? fb.y * inv_coef_l : 0.f;
                                 up[0][r % 2] += x.x * fa.z + x.y * fb.z;
                                 frag[r] = pack_bf16(x.x, x.y);
                               }
                             });
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          wgmma_rs<D, 1>(u[0], a[kk][0], n_major(up_slot + kDyOff, kk, kBlock), true);
        // Waited for inside the branch: with a product in flight where the branches join,
        // ptxas injects a fence on one path and serialises every product of the kernel (C7519,
        // then C7515 or C7520).
        wgmma_commit();
        wgmma_wait<0>();
      }
      // Done with before the staged tiles' products (after a fence of their own, for the same
      // reason), so that the fold's operand need not fit beside their accumulators (C7511).
      wgmma_commit();
      wgmma_wait<0>();
      mbar_wait(bar.stage_full, hs & 1);  // the scores' products are done too
      if (h == 1) mbar_arrive(bar.vp_empty + 1);
      wgmma_fence();
#pragma unroll
      for (int cc = 0; cc < 2; ++cc) {  // dy^T pw and q^T ds of chunk c + cc
        const uint32_t slot = (cc ? up_slot : lo_slot) + mb * kBlock;
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          wgmma_ss_n32<1, 0>(dv, n_major(slot + kDyOff, ks, kBlock),
                             k_major(st + cc * kHalfBlk, ks), true);
          wgmma_ss_n32<1, 0>(dk, n_major(slot, ks, kBlock), k_major(kb + kKOff + cc * kHalfBlk, ks),
                             cc > 0 || ks > 0);
        }
      }
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {  // phi_q[:, f0:f0 + 64]^T du
        wgmma_ss_n32<1, 0>(dpk, n_major(pq + (f0 / 64) * kBlock, ks, kBlock),
                           k_major(st + 2 * kHalfBlk, ks), true);
      }
      wgmma_commit();
      if (fold) {
        publish();
      }
      wgmma_wait<0>();
      mbar_arrive(bar.stage_empty);
      if (h == 1) mbar_arrive(bar.pq_empty + (c + 1) % 2);  // this side is done with phi_q
      // Outputs once both sides' products have read the half's keys and (half 1) the upper
      // chunk: dv^T at v's offset, dk^T at k's, dphi_k^T at phi_k's, each in this side's
      // column block mb.
      named_barrier(1, 256);
      if (h == 1 && threadIdx.x == 256) mbar_arrive(bar.key_empty + 1);
      const uint32_t out = out_base(sbase, h, c);
      stage_trans_n32(out + kVOff, dv, 1.f, f0, warp, lane, kHalfBlk);
      stage_trans_n32(out + kKOff, dk, p.s.scale, f0, warp, lane, kHalfBlk);
      stage_trans_n32(out + kPkOff, dpk, 1.f, f0, warp, lane, kHalfBlk);
      fence_async_shared();
      mbar_arrive(bar.out_full + h);  // the store thread sends them
    }
  }
}

}  // namespace

bool fused_key_wg_takes(const Shape& s, const SegmentPlan& key_plan, const uint8_t* window_drop) {
  return s.head_dim == D && s.features == F && s.window == kW && s.q_heads == s.kv_heads &&
         s.mode == static_cast<int>(KernelMode::kHybrid) && !s.overlap && window_drop == nullptr &&
         key_plan.length % kRows == 0 && hopper_device();
}

cudaError_t run_fused_key_wg(const Shape& s, const FusedKeyArgs& a, cudaStream_t stream) {
  FkParams p{};
  const int units = s.batch * s.q_heads, N = s.seq_len;
  if (!make_map(&p.q, a.q, D, N, units) || !make_map(&p.dy, a.dy, D, N, units) ||
      !make_map(&p.phi_q, a.phi_q, F, N, units) || !make_map(&p.k, a.k, D, N, units, 32) ||
      !make_map(&p.v, a.v, D, N, units, 32) || !make_map(&p.phi_k, a.phi_k, F, N, units, 32) ||
      !make_map(&p.dk, a.dk, D, N, units, 32) || !make_map(&p.dv, a.dv, D, N, units, 32) ||
      !make_map(&p.dphi_k, a.dphi_k, F, N, units, 32)) {
    return cudaErrorNotSupported;
  }
  p.s = s;
  p.a = a;
  const bool coef = a.query_written != nullptr && a.coef.out != nullptr;
  return launch_smem(fused_key_wg_kernel, units * a.key_plan.segments + (coef ? units : 0),
                     kFkThreads, kSmemBytes, p, stream);
}

#ifdef HL_BLOCK_TRACE
void write_block_trace_fused_key(FILE* out) {
  block_trace::write("fused_key", out);
}
#endif

}  // namespace hl::kernels::cuda::detail
