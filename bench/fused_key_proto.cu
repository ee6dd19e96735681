// A prototype of the fused key kernel (bench/KERNEL_NOTES.md, "Next"): dk, dv and dphi_k of the
// backward in one kernel, for MHA, the non-overlapping hybrid with w = 64 and D = F = 128, bf16.
// Per (unit, key segment), 64-key blocks from the segment's top down, each as two 32-key halves:
//   scores warpgroup: per half, row chunks c (the block's rows) and c + 1 (the next 64):
//     S = q k_h^T, dP = dy v_h^T for both, Pl = phi_q phi_k_h^T for chunk c + 1 (m64n32), then
//     pw (window weights c_w e / D, plus c_l p / D on chunk c + 1's linear keys), ds = pw (dP -
//     delta) - G at the argmax, du = c_l (dP - delta) / D on the linear keys; pw and du staged
//     in bf16 as [key][row] tiles (stmatrix .trans), ds over k_h (read by then);
//   dv warpgroup (U's rows 0-63): dv^T = c_l U^T phi_k_h^T + dy_c^T pw_c + dy_c1^T pw_c1,
//     dphi_k^T rows 0-63 = c_l (U v_h^T - u) + phi_q^T du;
//   dk warpgroup (U's rows 64-127): dk^T = scale (q_c^T ds_c + q_c1^T ds_c1), dphi_k^T rows
//     64-127;
//   both: outputs staged transposed over the half's v, k and phi_k buffers, sent by a store
//     thread of the producer warpgroup; at the block's end U += (phi_q / D)^T dy of chunk c + 1
//     (its rows below the segment's U start), issued right after the products that read U and
//     published (c_l U in bf16 by stmatrix, c_l u) while the others run.
// U = sum_i phi_q_i (dy_i / D_i)^T and u = sum_i phi_q_i delta_i / D_i run over the rows past
// chunk c + 1, as the linear key kernel's. Checked against float64 on fresh random inputs (one
// to four key segments, N not a multiple of 64; exit 1 on failure), then timed at B1 H32 N 4K
// and 16K (4 key segments) and B8 N 4K, with each role's waits by cause (clock64 of one thread
// per warpgroup). The two kernels it would replace take 215 + 245 us at B1 16K (ncu, session
// 24). Built as hl_bench_fused_key_proto wherever nvcc is; run on the GPU machine (`--check`:
// the checks alone, for compute-sanitizer).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_bench.cuh"
#include "kernels/cuda/hybrid_hopper.cuh"

namespace {

using namespace hl::kernels::cuda::detail;
using namespace hl::bench;

constexpr int D = 128, F = 128, kW = 64;
constexpr int kBlk = kColumnBlockBytes;  // 64 rows of 128 bytes
constexpr int kHalfBlk = 32 * 128;       // 32 rows of 128 bytes
constexpr int kUBlock = F * 128;         // U's copy: F rows of one 64-column block
// Shared memory (from a 1024-aligned base).
constexpr int kKeyBuf = 3 * 2 * kHalfBlk;  // a key half: k, v, phi_k (32 rows x 128 each)
constexpr int kKOff = 0, kVOff = 2 * kHalfBlk, kPkOff = 4 * kHalfBlk;  // within a key buffer
constexpr int kRowOff = 2 * kKeyBuf;  // three row slots: q, dy (64 rows x 128 each)
constexpr int kRowSlot = 4 * kBlk;
constexpr int kDyOff = 2 * kBlk;                  // within a row slot
constexpr int kPqOff = kRowOff + 3 * kRowSlot;    // two phi_q slots
constexpr int kUOff = kPqOff + 2 * 2 * kBlk;      // c_l U in bf16: [D / 64][F][64]
constexpr int kStageOff = kUOff + 2 * kUBlock;    // pw_c, pw_c1, du: [32 keys][64 rows] each
constexpr int kRvOff = kStageOff + 3 * kHalfBlk;  // three slots of row values
constexpr int kRvSlot = kRows * 16 + kRows * 4;   // float4 (mx, x_l, delta, G), argmax
constexpr int kSmallUOff = kRvOff + 3 * kRvSlot;  // c_l u: F floats
constexpr int kBarOff = kSmallUOff + F * 4;
constexpr int kBars = 24;
constexpr int kProfOff = kBarOff + kBars * 8;  // cycle counts: 4 roles x 8 (profile)
constexpr int kSmemBytes = kProfOff + 4 * 8 * 8 + 1024;
static_assert(kSmemBytes <= 227 * 1024, "more shared memory than a Hopper SM has");

struct FkParams {
  CUtensorMap q, dy, phi_q;    // 64-row boxes
  CUtensorMap k, v, phi_k;     // 32-row boxes
  CUtensorMap dk, dv, dphi_k;  // 32-row boxes (stores)
  int N, segments, key_len;
  float scale;
  const float* coef_window;
  const float* coef_linear;
  const float* row_max;
  const float* row_denom;
  const float* row_delta;
  const float* row_gate;
  const int* row_argmax;
  const float* rev_states;      // [unit][segment][F * D + F]: U, u at each segment's top
  unsigned long long* profile;  // per block 4 roles x 8 cycle counts, or null
};

struct FkBarriers {
  uint64_t *key_full, *key_empty;  // [2] key halves
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

// Registers a thread of the scores and of each key-side warpgroup (the producer keeps 24).
constexpr int kScoresRegs = 168, kKeyRegs = 160;
static_assert(regs_fit(512, 24 + kScoresRegs + 2 * kKeyRegs), "more registers than an SM has");

__global__ void __launch_bounds__(512, 1) fused_key_kernel(const __grid_constant__ FkParams p) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + kBarOff);
  const FkBarriers bar{bars,      bars + 2,  bars + 4,  bars + 7, bars + 10,
                       bars + 12, bars + 14, bars + 15, bars + 16};
  const int N = p.N;
  const int unit = blockIdx.x / p.segments;
  const int seg = blockIdx.x - unit * p.segments;
  const int s_begin = seg * p.key_len;
  const int s_end = min(N, s_begin + p.key_len);
  if (s_begin >= s_end) return;
  const int T = (s_end - s_begin + kRows - 1) / kRows;  // 64-key blocks
  const int state_lag = kW - 1;
  const int s_hi_top = s_end + state_lag;  // rows from here on are in U from the start
  if (threadIdx.x == 0) {
    for (int i = 0; i < 2; ++i) {
      mbar_init(bar.key_full + i, 1);
      // Buffer 0: the store thread, once its stores have read it; buffer 1: a key-side thread
      // after the output barrier (the second half's outputs go over the upper row chunk).
      mbar_init(bar.key_empty + i, 1);
      mbar_init(bar.out_full + i, 256);
      mbar_init(bar.pq_full + i, 1);
      mbar_init(bar.pq_empty + i, 384);
    }
    for (int i = 0; i < 3; ++i) {
      mbar_init(bar.row_full + i, 1 + kRows);  // the TMA arrival + the row values' copies
      mbar_init(bar.row_empty + i, 129);  // the scores warpgroup and the store thread
    }
    mbar_init(bar.stage_full, 128);
    mbar_init(bar.stage_empty, 256);
    mbar_init_fence();
  }
  // Cycles one thread of each role spends waiting, by what it waits for (named in time_shape),
  // and in all.
  unsigned long long* prof = reinterpret_cast<unsigned long long*>(smem + kProfOff);
  if (threadIdx.x < 32) prof[threadIdx.x] = 0;
  __syncthreads();
  const long long t_start = clock64();
  const bool profiling = threadIdx.x % 128 == 0 && threadIdx.x < 384 + 128;
  auto timed = [&](int role, int slot, long long t0) {
    if (profiling) prof[8 * role + slot] += clock64() - t0;
  };
  auto finish_profile = [&](int role) {
    if (!profiling) return;
    prof[8 * role + 7] = clock64() - t_start;
    if (p.profile != nullptr) {
      for (int i = 0; i < 8; ++i)
        p.profile[blockIdx.x * 32 + 8 * role + i] = prof[8 * role + i];
    }
  };
  const uint32_t sbase = shared_address(smem);
  const int wg = threadIdx.x / 128, ct = threadIdx.x % 128;
  const int warp = ct / 32, lane = ct % 32, g8 = lane / 4, t4 = lane % 4;
  const float coef_w = p.coef_window[unit], coef_l = p.coef_linear[unit];
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
        const long long t0 = clock64();
        if (fill >= 3) mbar_wait(bar.row_empty + slot, ((fill - 3) / 3) & 1);
        timed(0, 0, t0);
        mbar_expect_bytes(bar.row_full + slot, 4 * kBlk);
        uint8_t* base = smem + kRowOff + slot * kRowSlot;
        for (int b = 0; b < 2; ++b) {
          tma_load_3d(base + b * kBlk, &p.q, 64 * b, chunk_row0(x), unit, bar.row_full + slot);
          tma_load_3d(base + kDyOff + b * kBlk, &p.dy, 64 * b, chunk_row0(x), unit,
                      bar.row_full + slot);
        }
      };
      for (int bi = 0; bi < T; ++bi) {
        const int c = T - 1 - bi;
        if (bi == 0) load_rows(T);
        load_rows(c);
        {
          const int x = c + 1, fill = bi, slot = x % 2;
          const long long t0 = clock64();
          if (fill >= 2) mbar_wait(bar.pq_empty + slot, ((fill - 2) / 2) & 1);
          timed(0, 1, t0);
          mbar_expect_bytes(bar.pq_full + slot, 2 * kBlk);
          for (int b = 0; b < 2; ++b) {
            tma_load_3d(smem + kPqOff + slot * 2 * kBlk + b * kBlk, &p.phi_q, 64 * b, chunk_row0(x),
                        unit, bar.pq_full + slot);
          }
        }
        for (int h = 0; h < 2; ++h) {
          const long long t0 = clock64();
          if (bi >= 1) mbar_wait(bar.key_empty + h, (bi - 1) & 1);
          timed(0, 2, t0);
          mbar_expect_bytes(bar.key_full + h, kKeyBuf);
          uint8_t* base = smem + h * kKeyBuf;
          const int key0 = chunk_row0(c) + 32 * h;
          for (int b = 0; b < 2; ++b) {
            tma_load_3d(base + kKOff + b * kHalfBlk, &p.k, 64 * b, key0, unit, bar.key_full + h);
            tma_load_3d(base + kVOff + b * kHalfBlk, &p.v, 64 * b, key0, unit, bar.key_full + h);
            tma_load_3d(base + kPkOff + b * kHalfBlk, &p.phi_k, 64 * b, key0, unit,
                        bar.key_full + h);
          }
        }
      }
      finish_profile(0);
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
          mbar_arrive(h == 0 ? bar.key_empty : bar.row_empty + row_slot(c + 1));
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
            ok ? p.row_max[at] * 1.4426950408889634f - __log2f(coef_w / p.row_denom[at]) : INFINITY;
        const float xl = ok ? coef_l / p.row_denom[at] : 0.f;
        const float delta = ok ? p.row_delta[at] : 0.f;
        const float gate = ok ? p.row_gate[at] : 0.f;
        const int am = ok ? p.row_argmax[at] : -1;
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
    const float scale_log2 = p.scale * 1.4426950408889634f;
    const int la = 16 * warp + g8;  // this thread's rows la, la + 8 of each chunk
    for (int bi = 0; bi < T; ++bi) {
      const int c = T - 1 - bi;
      const int k0 = chunk_row0(c);
      const int s_hi = min(bi == 0 ? s_hi_top : N, N);
      const uint32_t lo_slot = sbase + kRowOff + row_slot(c) * kRowSlot;
      const uint32_t up_slot = sbase + kRowOff + row_slot(c + 1) * kRowSlot;
      const uint32_t pq = sbase + kPqOff + ((c + 1) % 2) * 2 * kBlk;
      long long t0 = clock64();
      if (bi == 0) mbar_wait(bar.row_full + row_slot(T), 0);
      mbar_wait(bar.row_full + row_slot(c), ((T - c) / 3) & 1);
      mbar_wait(bar.pq_full + (c + 1) % 2, (bi / 2) & 1);
      timed(1, 0, t0);
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
        t0 = clock64();
        mbar_wait(bar.key_full + h, bi & 1);
        timed(1, 1, t0);
        float s1[16], dp1[16], pl[16], s0[16], dp0[16];
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 8; ++ks) {
          wgmma_ss_n32<0, 0>(s1, k_major(up_slot, ks), k_major(kb + kKOff, ks, kHalfBlk), ks > 0);
          wgmma_ss_n32<0, 0>(dp1, k_major(up_slot + kDyOff, ks), k_major(kb + kVOff, ks, kHalfBlk),
                             ks > 0);
          wgmma_ss_n32<0, 0>(pl, k_major(pq, ks), k_major(kb + kPkOff, ks, kHalfBlk), ks > 0);
        }
        wgmma_commit();
#pragma unroll
        for (int ks = 0; ks < 8; ++ks) {
          wgmma_ss_n32<0, 0>(s0, k_major(lo_slot, ks), k_major(kb + kKOff, ks, kHalfBlk), ks > 0);
          wgmma_ss_n32<0, 0>(dp0, k_major(lo_slot + kDyOff, ks), k_major(kb + kVOff, ks, kHalfBlk),
                             ks > 0);
        }
        wgmma_commit();
        t0 = clock64();
        wgmma_wait<1>();
        timed(1, 2, t0);
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
        t0 = clock64();
        if (hs > 0) mbar_wait(bar.stage_empty, (hs - 1) & 1);
        timed(1, 3, t0);
        const uint32_t st = sbase + kStageOff;
        stage_trans_n32(st, pw0, 1.f, 0, warp, lane, kBlk);
        stage_trans_n32(st + kHalfBlk, pw1, 1.f, 0, warp, lane, kBlk);
        stage_trans_n32(st + 2 * kHalfBlk, du, 1.f, 0, warp, lane, kBlk);
        stage_trans_n32(kb + kKOff, ds0, 1.f, 0, warp, lane, kBlk);
        stage_trans_n32(kb + kKOff + kHalfBlk, ds1, 1.f, 0, warp, lane, kBlk);
        fence_async_shared();
        mbar_arrive(bar.stage_full);
      }
      // Chunk c + 1 and its phi_q: this warpgroup is done with them.
      mbar_arrive(bar.row_empty + row_slot(c + 1));
      mbar_arrive(bar.pq_empty + (c + 1) % 2);
    }
    // The last block's lower chunk (chunk 0) is never an upper chunk: give it back too.
    mbar_arrive(bar.row_empty + row_slot(0));
    finish_profile(1);
    return;
  }

  // ---- key sides: wg 2 + mb holds U's rows 64 mb-64 mb + 63 and rows 64 mb-64 mb + 63 of dv^T,
  // dk^T and dphi_k^T, so that both run the same products ----
  regs_grow<kKeyRegs>();
  const int mb = wg - 2, f0 = 64 * mb;
  float u[1][64], up[1][2];  // U's rows f0 + 16 w + g8 (+ 8) and their u partial sums
  {
    // U, u at the segment's top from the reverse pass (zero for the last segment).
#pragma unroll
    for (int i = 0; i < 64; ++i)
      u[0][i] = 0.f;
    up[0][0] = up[0][1] = 0.f;
    if (p.rev_states != nullptr && seg + 1 < p.segments) {
      const float* st = p.rev_states + (static_cast<size_t>(unit) * p.segments + seg) * (F * D + F);
      const int fa = f0 + 16 * warp + g8;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const float2 va = *reinterpret_cast<const float2*>(st + fa * D + 8 * n + 2 * t4);
        const float2 vb = *reinterpret_cast<const float2*>(st + (fa + 8) * D + 8 * n + 2 * t4);
        u[0][4 * n] = va.x;
        u[0][4 * n + 1] = va.y;
        u[0][4 * n + 2] = vb.x;
        u[0][4 * n + 3] = vb.y;
      }
      if (t4 == 0) {
        up[0][0] = st[F * D + fa];
        up[0][1] = st[F * D + fa + 8];
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
    const uint32_t pq = sbase + kPqOff + ((c + 1) % 2) * 2 * kBlk;
    for (int h = 0; h < 2; ++h) {
      const int hs = 2 * bi + h;
      const uint32_t kb = sbase + h * kKeyBuf;
      // At the block's end U is folded right after the products that read it and published
      // while the others run.
      const bool fold = h == 1 && c > 0;
      // The products that need no staged tile (those that read U, and the fold) go first, once
      // the half's keys have landed, while the scores warpgroup works on the half.
      long long t0 = clock64();
      mbar_wait(bar.key_full + h, bi & 1);
      timed(wg, 5, t0);
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
        load_fold_operand<1>(a, smem + kPqOff + ((c + 1) % 2) * 2 * kBlk + (f0 / 64) * kBlk, warp,
                             lane, [&](uint32_t(&frag)[4], int kk, int) {
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
          wgmma_rs<D, 1>(u[0], a[kk][0], n_major(up_slot + kDyOff, kk, kBlk), true);
        // Waited for inside the branch: with a product in flight where the branches join,
        // ptxas injects a fence on one path and serialises every product of the kernel (C7519,
        // then C7515 or C7520).
        wgmma_commit();
        wgmma_wait<0>();
      }
      // Done with before the staged tiles' products (after a fence of their own, for the same
      // reason), so that the fold's operand need not fit beside their accumulators (C7511).
      wgmma_commit();
      t0 = clock64();
      wgmma_wait<0>();
      timed(wg, 1, t0);
      t0 = clock64();
      mbar_wait(bar.stage_full, hs & 1);
      timed(wg, 0, t0);
      wgmma_fence();
#pragma unroll
      for (int cc = 0; cc < 2; ++cc) {  // dy^T pw and q^T ds of chunk c + cc
        const uint32_t slot = (cc ? up_slot : lo_slot) + mb * kBlk;
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          wgmma_ss_n32<1, 0>(dv, n_major(slot + kDyOff, ks, kBlk), k_major(st + cc * kHalfBlk, ks),
                             true);
          wgmma_ss_n32<1, 0>(dk, n_major(slot, ks, kBlk), k_major(kb + kKOff + cc * kHalfBlk, ks),
                             cc > 0 || ks > 0);
        }
      }
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {  // phi_q[:, f0:f0 + 64]^T du
        wgmma_ss_n32<1, 0>(dpk, n_major(pq + (f0 / 64) * kBlk, ks, kBlk),
                           k_major(st + 2 * kHalfBlk, ks), true);
      }
      wgmma_commit();
      if (fold) {
        t0 = clock64();
        publish();
        timed(wg, 2, t0);
      }
      t0 = clock64();
      wgmma_wait<0>();
      timed(wg, 1, t0);
      mbar_arrive(bar.stage_empty);
      if (h == 1) mbar_arrive(bar.pq_empty + (c + 1) % 2);  // this side is done with phi_q
      // Outputs once both sides' products have read the half's keys and (half 1) the upper
      // chunk: dv^T at v's offset, dk^T at k's, dphi_k^T at phi_k's, each in this side's
      // column block mb.
      t0 = clock64();
      named_barrier(1, 256);
      timed(wg, 3, t0);
      if (h == 1 && threadIdx.x == 256) mbar_arrive(bar.key_empty + 1);
      t0 = clock64();
      const uint32_t out = out_base(sbase, h, c);
      stage_trans_n32(out + kVOff, dv, 1.f, f0, warp, lane, kHalfBlk);
      stage_trans_n32(out + kKOff, dk, p.scale, f0, warp, lane, kHalfBlk);
      stage_trans_n32(out + kPkOff, dpk, 1.f, f0, warp, lane, kHalfBlk);
      fence_async_shared();
      mbar_arrive(bar.out_full + h);  // the store thread sends them
      timed(wg, 4, t0);
    }
  }
  finish_profile(wg);
}

// ---- host side ----------------------------------------------------------------------------

struct Problem {
  int units, N;
  std::vector<float> q, k, v, dy, phi_q, phi_k;  // [unit][N][128], bf16-exact
  std::vector<float> row_max, row_denom, row_delta, row_gate;
  std::vector<int> row_argmax;
  std::vector<float> coef_w, coef_l;
};

Problem make_problem(int units, int N, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> sym(-1.f, 1.f), pos(0.05f, 1.f);
  Problem pr{units, N};
  auto fill = [&](std::vector<float>& x, bool positive) {
    x.resize(static_cast<size_t>(units) * N * 128);
    for (float& e : x)
      e = bf16_round(positive ? pos(gen) : sym(gen));
  };
  fill(pr.q, false);
  fill(pr.k, false);
  fill(pr.v, false);
  fill(pr.dy, false);
  fill(pr.phi_q, true);
  fill(pr.phi_k, true);
  const size_t rows = static_cast<size_t>(units) * N;
  pr.row_max.resize(rows);
  pr.row_denom.resize(rows);
  pr.row_delta.resize(rows);
  pr.row_gate.resize(rows);
  pr.row_argmax.resize(rows);
  for (size_t r = 0; r < rows; ++r) {
    const int i = static_cast<int>(r % N);
    pr.row_max[r] = 2.f + sym(gen);
    pr.row_denom[r] = 8.f + 4.f * pos(gen);
    pr.row_delta[r] = 0.2f * sym(gen);
    pr.row_gate[r] = 0.1f * sym(gen);
    const int lo = std::max(0, i - kW + 1);
    pr.row_argmax[r] = lo + static_cast<int>(gen() % (i - lo + 1));
  }
  for (int u = 0; u < units; ++u) {
    pr.coef_w.push_back(0.4f + 0.5f * pos(gen));
    pr.coef_l.push_back(0.3f + 0.5f * pos(gen));
  }
  return pr;
}

// dk, dv, dphi_k in float64 from the same inputs and row values (notation of the kernel).
void reference(const Problem& pr, float scale, std::vector<double>& dk, std::vector<double>& dv,
               std::vector<double>& dpk) {
  const int N = pr.N;
  dk.assign(pr.q.size(), 0.0);
  dv.assign(pr.q.size(), 0.0);
  dpk.assign(pr.q.size(), 0.0);
  for (int u = 0; u < pr.units; ++u) {
    const size_t base = static_cast<size_t>(u) * N;
    auto at = [&](const std::vector<float>& x, int row, int col) {
      return static_cast<double>(x[(base + row) * 128 + col]);
    };
    for (int j = 0; j < N; ++j) {
      for (int i = j; i < N; ++i) {
        const size_t r = base + i;
        double dp = 0, s = 0, pl = 0;
        for (int d = 0; d < 128; ++d) {
          dp += at(pr.dy, i, d) * at(pr.v, j, d);
          s += at(pr.q, i, d) * at(pr.k, j, d);
          pl += at(pr.phi_q, i, d) * at(pr.phi_k, j, d);
        }
        const double inv = 1.0 / pr.row_denom[r];
        if (i < j + kW) {  // window
          const double pw = pr.coef_w[u] * std::exp(scale * s - pr.row_max[r]) * inv;
          const double ds =
              pw * (dp - pr.row_delta[r]) - (pr.row_argmax[r] == j ? pr.row_gate[r] : 0.0);
          for (int d = 0; d < 128; ++d) {
            dk[(base + j) * 128 + d] += scale * ds * at(pr.q, i, d);
            dv[(base + j) * 128 + d] += pw * at(pr.dy, i, d);
          }
        } else {  // linear
          const double cl = pr.coef_l[u];
          for (int d = 0; d < 128; ++d) {
            dv[(base + j) * 128 + d] += cl * pl * inv * at(pr.dy, i, d);
            dpk[(base + j) * 128 + d] += cl * (dp - pr.row_delta[r]) * inv * at(pr.phi_q, i, d);
          }
        }
      }
    }
  }
}

// U, u at each key segment's top: the rows from s_end + w - 1 on (the reverse pass's states).
std::vector<float> segment_states(const Problem& pr, int segments, int key_len) {
  std::vector<float> out(static_cast<size_t>(pr.units) * segments * (F * D + F), 0.f);
  for (int u = 0; u < pr.units; ++u) {
    for (int sg = 0; sg < segments; ++sg) {
      float* st = out.data() + (static_cast<size_t>(u) * segments + sg) * (F * D + F);
      const int from = std::min(pr.N, (sg + 1) * key_len) + kW - 1;
      for (int i = from; i < pr.N; ++i) {
        const size_t r = static_cast<size_t>(u) * pr.N + i;
        const double inv = 1.0 / pr.row_denom[r];
        for (int f = 0; f < F; ++f) {
          const double pq = pr.phi_q[r * 128 + f] * inv;
          for (int d = 0; d < D; ++d)
            st[f * D + d] += static_cast<float>(pq * pr.dy[r * 128 + d]);
          st[F * D + f] += static_cast<float>(pq * pr.row_delta[r]);
        }
      }
    }
  }
  return out;
}

struct Device {
  bf16 *q, *k, *v, *dy, *phi_q, *phi_k, *dk, *dv, *dpk;
  float *row_max, *row_denom, *row_delta, *row_gate, *coef_w, *coef_l, *states;
  int* row_argmax;
};

// Launches the kernel once; false with a message when CUDA fails.
bool launch(const Problem& pr, const Device& dev, int segments, int key_len, float scale,
            unsigned long long* profile = nullptr) {
  FkParams p{};
  const int N = pr.N, units = pr.units;
  bool ok = make_map(&p.q, dev.q, 128, N, units) && make_map(&p.dy, dev.dy, 128, N, units) &&
            make_map(&p.phi_q, dev.phi_q, 128, N, units) &&
            make_map(&p.k, dev.k, 128, N, units, 32) && make_map(&p.v, dev.v, 128, N, units, 32) &&
            make_map(&p.phi_k, dev.phi_k, 128, N, units, 32) &&
            make_map(&p.dk, dev.dk, 128, N, units, 32) &&
            make_map(&p.dv, dev.dv, 128, N, units, 32) &&
            make_map(&p.dphi_k, dev.dpk, 128, N, units, 32);
  if (!ok) {
    std::printf("fused_key_proto: a tensor map failed\n");
    return false;
  }
  p.N = N;
  p.segments = segments;
  p.key_len = key_len;
  p.scale = scale;
  p.coef_window = dev.coef_w;
  p.coef_linear = dev.coef_l;
  p.row_max = dev.row_max;
  p.row_denom = dev.row_denom;
  p.row_delta = dev.row_delta;
  p.row_gate = dev.row_gate;
  p.row_argmax = dev.row_argmax;
  p.rev_states = dev.states;
  p.profile = profile;
  cudaFuncSetAttribute(fused_key_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  fused_key_kernel<<<units * segments, 512, kSmemBytes>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    std::printf("fused_key_proto: launch: %s\n", cudaGetErrorString(err));
    return false;
  }
  return true;
}

Device upload_problem(const Problem& pr, const std::vector<float>& states) {
  Device dev{};
  dev.q = to_device_bf16(pr.q);
  dev.k = to_device_bf16(pr.k);
  dev.v = to_device_bf16(pr.v);
  dev.dy = to_device_bf16(pr.dy);
  dev.phi_q = to_device_bf16(pr.phi_q);
  dev.phi_k = to_device_bf16(pr.phi_k);
  const size_t n = pr.q.size() * sizeof(bf16);
  cudaMalloc(&dev.dk, n);
  cudaMalloc(&dev.dv, n);
  cudaMalloc(&dev.dpk, n);
  cudaMemset(dev.dk, 0xFF, n);  // NaN: rows left unwritten show
  cudaMemset(dev.dv, 0xFF, n);
  cudaMemset(dev.dpk, 0xFF, n);
  dev.row_max = to_device(pr.row_max);
  dev.row_denom = to_device(pr.row_denom);
  dev.row_delta = to_device(pr.row_delta);
  dev.row_gate = to_device(pr.row_gate);
  dev.row_argmax = to_device(pr.row_argmax);
  dev.coef_w = to_device(pr.coef_w);
  dev.coef_l = to_device(pr.coef_l);
  dev.states = states.empty() ? nullptr : to_device(states);
  return dev;
}

void free_device(Device& dev) {
  for (void* x :
       {static_cast<void*>(dev.q), static_cast<void*>(dev.k), static_cast<void*>(dev.v),
        static_cast<void*>(dev.dy), static_cast<void*>(dev.phi_q), static_cast<void*>(dev.phi_k),
        static_cast<void*>(dev.dk), static_cast<void*>(dev.dv), static_cast<void*>(dev.dpk),
        static_cast<void*>(dev.row_max), static_cast<void*>(dev.row_denom),
        static_cast<void*>(dev.row_delta), static_cast<void*>(dev.row_gate),
        static_cast<void*>(dev.coef_w), static_cast<void*>(dev.coef_l),
        static_cast<void*>(dev.states), static_cast<void*>(dev.row_argmax)}) {
    cudaFree(x);
  }
}

bool check(int units, int N, int segments, int key_len, uint32_t seed) {
  const Problem pr = make_problem(units, N, seed);
  const float scale = 1.f / std::sqrt(128.f);
  const std::vector<float> states =
      segments > 1 ? segment_states(pr, segments, key_len) : std::vector<float>{};
  Device dev = upload_problem(pr, states);
  bool ok = launch(pr, dev, segments, key_len, scale);
  if (ok && cudaDeviceSynchronize() != cudaSuccess) {
    std::printf("fused_key_proto: %s\n", cudaGetErrorString(cudaGetLastError()));
    ok = false;
  }
  if (ok) {
    std::vector<double> dk, dv, dpk;
    reference(pr, scale, dk, dv, dpk);
    std::vector<bf16> out(pr.q.size());
    const char* names[3] = {"dk", "dv", "dphi_k"};
    bf16* outs[3] = {dev.dk, dev.dv, dev.dpk};
    const std::vector<double>* refs[3] = {&dk, &dv, &dpk};
    for (int t = 0; t < 3; ++t) {
      cudaMemcpy(out.data(), outs[t], out.size() * sizeof(bf16), cudaMemcpyDeviceToHost);
      const double err = rel_error(out, *refs[t]);
      const bool pass = err < 1e-2;  // bf16 operands and outputs, fp32 accumulation
      ok = ok && pass;
      std::printf("check units %d N %d segments %d: %-6s rel. error %.2e %s\n", units, N, segments,
                  names[t], err, pass ? "ok" : "FAILED");
    }
  }
  free_device(dev);
  return ok;
}

void time_shape(int units, int N, int segments) {
  Problem pr{units, N};
  const size_t n = static_cast<size_t>(units) * N * 128;
  for (auto* x : {&pr.q, &pr.k, &pr.v, &pr.dy, &pr.phi_q, &pr.phi_k})
    x->assign(n, 0.01f);
  const size_t rows = static_cast<size_t>(units) * N;
  pr.row_max.assign(rows, 1.f);
  pr.row_denom.assign(rows, 8.f);
  pr.row_delta.assign(rows, 0.1f);
  pr.row_gate.assign(rows, 0.01f);
  pr.row_argmax.resize(rows);
  for (size_t r = 0; r < rows; ++r)
    pr.row_argmax[r] = static_cast<int>(r % N);
  pr.coef_w.assign(units, 0.5f);
  pr.coef_l.assign(units, 0.5f);
  const int key_len = (N + segments - 1) / segments;
  std::vector<float> states(static_cast<size_t>(units) * segments * (F * D + F), 0.f);
  Device dev = upload_problem(pr, states);
  const std::vector<float> ms =
      launch_times_ms([&] { return launch(pr, dev, segments, key_len, 0.088f); }, 10);
  if (ms.empty()) {
    std::printf("fused_key_proto: %s\n", cudaGetErrorString(cudaGetLastError()));
  } else {
    std::printf("time units %d N %d segments %d: median %.1f us (min %.1f, max %.1f) over %zu\n",
                units, N, segments, 1e3 * ms[ms.size() / 2], 1e3 * ms.front(), 1e3 * ms.back(),
                ms.size());
  }
  // Where each role's thread waits, averaged over the blocks, per 64-key block.
  const int blocks = units * segments, per_block = (key_len + kRows - 1) / kRows;
  unsigned long long* prof_dev = nullptr;
  cudaMalloc(&prof_dev, sizeof(unsigned long long) * blocks * 32);
  cudaMemset(prof_dev, 0, sizeof(unsigned long long) * blocks * 32);
  if (launch(pr, dev, segments, key_len, 0.088f, prof_dev) &&
      cudaDeviceSynchronize() == cudaSuccess) {
    std::vector<unsigned long long> prof(static_cast<size_t>(blocks) * 32);
    cudaMemcpy(prof.data(), prof_dev, prof.size() * sizeof(prof[0]), cudaMemcpyDeviceToHost);
    const char* names[4][8] = {
        {"row_empty", "pq_empty", "key_empty", "", "", "", "", "total"},
        {"rows+pq full", "key_full", "own products", "stage_empty", "", "", "", "total"},
        {"stage_full", "own products", "publish", "output barrier", "outputs", "key_full", "",
         "total"},
        {"stage_full", "own products", "publish", "output barrier", "outputs", "key_full", "",
         "total"}};
    const char* roles[4] = {"producer", "scores", "dv side", "dk side"};
    for (int r = 0; r < 4; ++r) {
      std::printf("profile %-9s cycles per 64-key block:", roles[r]);
      for (int k = 0; k < 8; ++k) {
        if (names[r][k][0] == 0) continue;
        double sum = 0;
        for (int b = 0; b < blocks; ++b)
          sum += static_cast<double>(prof[b * 32 + 8 * r + k]);
        std::printf(" %s %.0f", names[r][k], sum / blocks / per_block);
      }
      std::printf("\n");
    }
  }
  cudaFree(prof_dev);
  free_device(dev);
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess || prop.major < 9) {
    std::printf("fused_key_proto: needs an sm_90 GPU\n");
    return 0;
  }
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const bool ok = check(1, 256, 1, 256, 1) && check(2, 453, 1, 512, 2) &&
                  check(2, 453, 2, 256, 3) && check(1, 1000, 4, 256, 4);
  if (!ok) return 1;
  if (argc > 1 && std::string(argv[1]) == "--check") return 0;  // e.g. under compute-sanitizer
  time_shape(32, 16384, 4);
  time_shape(32, 4096, 4);
  time_shape(256, 4096, 1);
  return 0;
}
