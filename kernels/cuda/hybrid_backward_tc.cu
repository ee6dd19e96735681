// Tensor-core backward of hybrid attention for bf16 (DESIGN §1), mma.sync m16n8k16 with fp32
// accumulation. Notation as in hybrid_backward.cu: du_ij = (dy_i . v_j - delta_i) / D_i.
//
// Four kernels, each a block of 8 warps on 128-row (or 128-key) tiles, 16 a warp, so that no
// warp holds more than two 16 x D accumulators:
//   linear query  (per q unit and forward segment, walking the state S forward as the forward
//                  does): dphi_q and the exact linear row sums L1 = sum_L p (dy . v), P = sum_L p;
//   window query  (per q unit and tile): dq, the window sums W1 = sum_W e (dy . v), E = sum_W e,
//                  then exact delta = (c_w W1 + c_l L1) / D, the coefficient rows and G_i;
//   linear key    (per kv unit and key segment, walking U = sum phi_q (dy / D)^T backward over
//                  the group's q heads): dphi_k and the linear part of dv (fp32 workspace);
//   window key    (per kv unit and tile, summing the group's q heads in registers): dk, and dv.
// On Hopper the two query kernels (as one) and the linear key kernel run as warp-specialised TMA
// + wgmma kernels where their shapes allow (hybrid_hopper_*.cu); these remain for the other shapes.
// dq and dphi_q use delta~ = dy . y from the stored bf16 y (as flash attention does); the
// coefficient rows, G_i and the key side use the exact delta, because dc_w and dc_l are
// differences that the rounding of y would swamp.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/hybrid_backward_tc.cuh"
#include "kernels/cuda/hybrid_common.cuh"
#include "kernels/cuda/hybrid_forward_tc.cuh"
#include "kernels/cuda/hybrid_internal.cuh"
#include "kernels/cuda/hybrid_tc_common.cuh"

namespace hl::kernels::cuda::detail {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kRowPad = 16;  // extra rows of the linear key kernel's row buffers

struct TcBackwardParams {
  Shape s;
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const bf16* phi_q;
  const bf16* phi_k;
  const float* coef_window;
  const float* coef_linear;
  const uint8_t* window_drop;
  const bf16* y;
  const bf16* dy;
  const float* row_max;
  const float* row_denom;
  const int32_t* row_argmax;
  const float* fwd_states;
  int fwd_segments, fwd_len;
  bf16* dq;
  bf16* dk;
  bf16* dv;
  bf16* dphi_q;
  bf16* dphi_k;
  float* row_grad_window;
  float* row_grad_linear;
  float* row_delta;
  float* row_gate_grad;
  const float* rev_states;
  int key_segments, key_len;
  float* dv_linear;  // [B, Hkv, N, D] fp32: the linear part of dv, summed over the group
  int tiles;         // ceil(N / kTcRows)
  int key_rows;      // rows of the query kernels' key buffers: kTcRows + round16(w - 1)
};

// Zeros rows [r0, r1) of a row-major [*, W] bf16 matrix.
template <int W>
__device__ inline void zero_rows(bf16* m, int r0, int r1, int tid) {
  uint4* p = reinterpret_cast<uint4*>(m + static_cast<size_t>(r0) * W);
  const int n = (r1 - r0) * W / 8;
  for (int i = tid; i < n; i += kTcThreads)
    p[i] = make_uint4(0u, 0u, 0u, 0u);
}

// Per-row dot products dy . y of this lane's rows (g8 and g8 + 8), from the dy fragments
// already in registers and y read in the same layout; reduced over the 4 lanes of a row.
template <int D>
__device__ inline void row_dots(float& a, float& b, const uint32_t (&dyf)[D / 16][4],
                                const bf16* yb, int r0, int rows, int g8, int t4) {
  a = b = 0.f;
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t yf[4];
    load_a_global<D>(yf, yb, r0, rows, ks * 16, g8, t4);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 x = unpack_bf16(dyf[ks][e]), yv = unpack_bf16(yf[e]);
      const float dot = x.x * yv.x + x.y * yv.y;
      if (e % 2 == 0)
        a += dot;
      else
        b += dot;
    }
  }
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    a += __shfl_xor_sync(kFullMask, a, off);
    b += __shfl_xor_sync(kFullMask, b, off);
  }
}

__device__ inline void quad_sum(float& x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  x += __shfl_xor_sync(kFullMask, x, 2);
}

// Stores rows g8 and g8 + 8 of a C-layout 16 x (8 * N8) accumulator times a per-row factor.
template <int N8, int W>
__device__ inline void store_rows(bf16* base, const float (&acc)[N8][4], int ia, float fa, int ib,
                                  float fb, int limit, int t4) {
#pragma unroll
  for (int n = 0; n < N8; ++n) {
    const int col = n * 8 + 2 * t4;
    if (ia < limit) {
      *reinterpret_cast<uint32_t*>(base + static_cast<size_t>(ia) * W + col) =
          pack_bf16(acc[n][0] * fa, acc[n][1] * fa);
    }
    if (ib < limit) {
      *reinterpret_cast<uint32_t*>(base + static_cast<size_t>(ib) * W + col) =
          pack_bf16(acc[n][2] * fb, acc[n][3] * fb);
    }
  }
}

// ---- linear query kernel -------------------------------------------------------------------

template <int D, int F>
__global__ void __launch_bounds__(kTcThreads, 1) linear_query_kernel(TcBackwardParams p) {
  extern __shared__ float4 smem4[];
  const Shape& s = p.s;
  const int N = s.seq_len;
  constexpr int SD = D + 8, SF = F + 8;
  bf16* Shi = reinterpret_cast<bf16*>(smem4);
  bf16* Slo = Shi + F * SD;
  bf16* Vs = Slo + F * SD;
  bf16* PKs = Vs + p.key_rows * SD;
  float* zs = reinterpret_cast<float*>(PKs + p.key_rows * SF);

  const int unit = blockIdx.x / p.fwd_segments;
  const int seg = blockIdx.x - unit * p.fwd_segments;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g8 = lane / 4, t4 = lane % 4;
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const int r_begin = seg * p.fwd_len;
  const int r_end = min(N, r_begin + p.fwd_len);
  const size_t row0 = static_cast<size_t>(unit) * N;
  if (!um.use_linear) {  // a window-only unit among dropped ones: no linear gradient
    zero_rows<F>(p.dphi_q + row0 * F, r_begin, r_end, tid);
    for (int r = r_begin + tid; r < r_end; r += kTcThreads)
      p.row_grad_linear[row0 + r] = p.row_delta[row0 + r] = 0.f;
    return;
  }
  const float cl = p.coef_linear[unit];
  const int pre = round16(um.state_lag);
  const bf16* vb = p.v + static_cast<size_t>(kv_unit_of(s, unit)) * N * D;
  const bf16* pkb = p.phi_k + row0 * F;
  const bf16* pqb = p.phi_q + row0 * F;
  const bf16* dyb = p.dy + row0 * D;
  const bf16* yb = p.y + row0 * D;

  init_state<D, F, kTcThreads>(
      Shi, Slo, zs,
      p.fwd_segments > 1 ? p.fwd_states + static_cast<size_t>(blockIdx.x) * (F * D + F) : nullptr,
      tid);

  for (int t0 = r_begin; t0 < r_end; t0 += kTcRows) {
    const int kbase = t0 - pre;
    __syncthreads();  // the previous fold is done with the buffers and S
    load_rows<D, kTcThreads>(Vs, vb, kbase, pre + kTcRows, N, tid);
    load_rows<F, kTcThreads>(PKs, pkb, kbase, pre + kTcRows, N, tid);
    cp_async_commit();

    const int r0 = t0 + warp * 16;
    const bool active = r0 < r_end;
    const int ia = r0 + g8, ib = ia + 8;
    uint32_t pf[F / 16][4], dyf[D / 16][4];
    float dl_a = 0.f, dl_b = 0.f, inv_a = 0.f, inv_b = 0.f;
    if (active) {
#pragma unroll
      for (int kf = 0; kf < F / 16; ++kf)
        load_a_global<F>(pf[kf], pqb, r0, r_end, kf * 16, g8, t4);
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks)
        load_a_global<D>(dyf[ks], dyb, r0, r_end, ks * 16, g8, t4);
      row_dots<D>(dl_a, dl_b, dyf, yb, r0, r_end, g8, t4);
      inv_a = ia < r_end ? 1.f / p.row_denom[row0 + ia] : 0.f;
      inv_b = ib < r_end ? 1.f / p.row_denom[row0 + ib] : 0.f;
    }
    cp_async_wait<0>();
    __syncthreads();

    if (active) {
      // Keys in the state: acc = S dy - z delta~ per row, L1 += phi_q . S dy, P += phi_q . z.
      float acc[F / 8][4];
#pragma unroll
      for (int fp = 0; fp < F / 16; ++fp) {
        float c2[2][4];
        scores16<D / 16>(c2, dyf, rows_nk(Shi, SD, fp * 16, lane));
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          acc[2 * fp][e] = c2[0][e];
          acc[2 * fp + 1][e] = c2[1][e];
        }
      }
      float l1_a = 0.f, l1_b = 0.f, p_a = 0.f, p_b = 0.f;
#pragma unroll
      for (int kf = 0; kf < F / 16; ++kf) {
        const float2 a0 = unpack_bf16(pf[kf][0]), a1 = unpack_bf16(pf[kf][1]);
        const float2 a2 = unpack_bf16(pf[kf][2]), a3 = unpack_bf16(pf[kf][3]);
        float(&c0)[4] = acc[2 * kf];
        float(&c1)[4] = acc[2 * kf + 1];
        const int f0 = kf * 16 + 2 * t4;
        const float z0 = zs[f0], z1 = zs[f0 + 1], z8 = zs[f0 + 8], z9 = zs[f0 + 9];
        l1_a += a0.x * c0[0] + a0.y * c0[1] + a2.x * c1[0] + a2.y * c1[1];
        l1_b += a1.x * c0[2] + a1.y * c0[3] + a3.x * c1[2] + a3.y * c1[3];
        p_a += a0.x * z0 + a0.y * z1 + a2.x * z8 + a2.y * z9;
        p_b += a1.x * z0 + a1.y * z1 + a3.x * z8 + a3.y * z9;
        c0[0] -= dl_a * z0;
        c0[1] -= dl_a * z1;
        c0[2] -= dl_b * z0;
        c0[3] -= dl_b * z1;
        c1[0] -= dl_a * z8;
        c1[1] -= dl_a * z9;
        c1[2] -= dl_b * z8;
        c1[3] -= dl_b * z9;
      }

      // Linear keys not yet in the state: k_state <= j <= i - lin_lag.
      const int k_state = t0 - um.state_lag;
      const int lo = max(k_state, 0);
      const int hi = min(r0 + 15 - um.lin_lag, N - 1);
      if (lo <= hi) {
        for (int c = (lo - kbase) >> 4; c <= (hi - kbase) >> 4; ++c) {
          const int j0 = kbase + c * 16;
          const bool full = j0 >= lo && j0 + 15 <= r0 - um.lin_lag && r0 + 15 < r_end;
          float pl[2][4], dv2[2][4], du[2][4];
          scores16<F / 16>(pl, pf, rows_nk(PKs, SF, c * 16, lane));
          scores16<D / 16>(dv2, dyf, rows_nk(Vs, SD, c * 16, lane));
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int row = e < 2 ? ia : ib;
              const int j = j0 + nt * 8 + 2 * t4 + (e & 1);
              const bool in = full || (j >= lo && j <= row - um.lin_lag && row < r_end);
              const float pv = in ? pl[nt][e] : 0.f;
              if (e < 2) {
                l1_a += pv * dv2[nt][e];
                p_a += pv;
              } else {
                l1_b += pv * dv2[nt][e];
                p_b += pv;
              }
              du[nt][e] = in ? dv2[nt][e] - (e < 2 ? dl_a : dl_b) : 0.f;
            }
          }
          uint32_t a[4];
          c_to_a(a, du);
          mma_a_times_rows<F / 8>(acc, a, rows_kn(PKs, SF, c * 16, lane));
        }
      }
      quad_sum(l1_a);
      quad_sum(l1_b);
      quad_sum(p_a);
      quad_sum(p_b);
      store_rows<F / 8, F>(p.dphi_q + row0 * F, acc, ia, cl * inv_a, ib, cl * inv_b, r_end, t4);
      if (t4 == 0) {
        // Handed to the window query kernel, which turns them into the final row values.
        if (ia < r_end) {
          p.row_grad_linear[row0 + ia] = l1_a;
          p.row_delta[row0 + ia] = p_a;
        }
        if (ib < r_end) {
          p.row_grad_linear[row0 + ib] = l1_b;
          p.row_delta[row0 + ib] = p_b;
        }
      }
    }

    if (t0 + kTcRows < r_end) {
      __syncthreads();  // every warp has finished reading S
      fold_state<D, F, kTcRows, kTcWarps>(Shi, Slo, zs, PKs, Vs, pre - um.state_lag, nullptr,
                                          nullptr, warp, lane);
    }
  }
}

// ---- window query kernel -------------------------------------------------------------------

// kDq: q needs a gradient (attention transfer trains feature maps on detached q, k, v, and then
// only the row values are made).
template <int D, bool kDq>
__global__ void __launch_bounds__(kTcThreads, 1) window_query_kernel(TcBackwardParams p) {
  extern __shared__ float4 smem4[];
  const Shape& s = p.s;
  const int N = s.seq_len;
  const int w = s.window;
  constexpr int SD = D + 8;
  bf16* Ks = reinterpret_cast<bf16*>(smem4);
  bf16* Vs = Ks + p.key_rows * SD;

  const int unit = blockIdx.x / p.tiles;
  const int t0 = (blockIdx.x - unit * p.tiles) * kTcRows;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g8 = lane / 4, t4 = lane % 4;
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const float cw = p.coef_window[unit];
  const float cl = p.coef_linear[unit];
  const size_t row0 = static_cast<size_t>(unit) * N;
  const int t_end = min(N, t0 + kTcRows);

  if (!um.use_window) {  // linear-only unit: no dq; the row values from the linear sums alone
    if constexpr (kDq) zero_rows<D>(p.dq + row0 * D, t0, t_end, tid);
    for (int r = t0 + tid; r < t_end; r += kTcThreads) {
      const size_t ri = row0 + r;
      const float inv = 1.f / p.row_denom[ri];
      const float l1 = p.row_grad_linear[ri], pp = p.row_delta[ri];
      const float delta = cl * l1 * inv;
      p.row_delta[ri] = delta;
      p.row_gate_grad[ri] = 0.f;
      p.row_grad_window[ri] = 0.f;
      p.row_grad_linear[ri] = (l1 - delta * pp) * inv;
    }
    return;
  }

  const int pre = round16(w - 1);
  const int kbase = t0 - pre;
  const bf16* kb = p.k + static_cast<size_t>(kv_unit_of(s, unit)) * N * D;
  const bf16* vb = p.v + static_cast<size_t>(kv_unit_of(s, unit)) * N * D;
  load_rows<D, kTcThreads>(Ks, kb, kbase, pre + kTcRows, N, tid);
  load_rows<D, kTcThreads>(Vs, vb, kbase, pre + kTcRows, N, tid);
  cp_async_commit();

  const int r0 = t0 + warp * 16;
  const bool active = r0 < N;
  const int ia = r0 + g8, ib = ia + 8;
  uint32_t qf[D / 16][4], dyf[D / 16][4];
  float dl_a = 0.f, dl_b = 0.f, inv_a = 0.f, inv_b = 0.f, m_a = 0.f, m_b = 0.f;
  int am_a = -1, am_b = -1;
  const bf16* qb = p.q + row0 * D;
  const bf16* dyb = p.dy + row0 * D;
  if (active) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      load_a_global<D>(qf[ks], qb, r0, N, ks * 16, g8, t4);
      load_a_global<D>(dyf[ks], dyb, r0, N, ks * 16, g8, t4);
    }
    row_dots<D>(dl_a, dl_b, dyf, p.y + row0 * D, r0, N, g8, t4);
    if (ia < N) {
      inv_a = 1.f / p.row_denom[row0 + ia];
      m_a = p.row_max[row0 + ia] * kLog2e;
      am_a = p.row_argmax[row0 + ia];
    }
    if (ib < N) {
      inv_b = 1.f / p.row_denom[row0 + ib];
      m_b = p.row_max[row0 + ib] * kLog2e;
      am_b = p.row_argmax[row0 + ib];
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  if (!active) return;

  const float scale_log2 = s.scale * kLog2e;
  float dq[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
    dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;
  float w1_a = 0.f, w1_b = 0.f, e_a = 0.f, e_b = 0.f;
  const int win_lo = max(r0 - w + 1, 0);
  const int win_hi = min(r0 + 15, N - 1);
  for (int c = (win_lo - kbase) >> 4; c <= (win_hi - kbase) >> 4; ++c) {
    const int j0 = kbase + c * 16;
    const bool full = j0 >= 0 && j0 >= r0 + 15 - w + 1 && j0 + 15 <= r0 && r0 + 15 < N;
    float sc[2][4], dv2[2][4], ds[2][4];
    scores16<D / 16>(sc, qf, rows_nk(Ks, SD, c * 16, lane));
    scores16<D / 16>(dv2, dyf, rows_nk(Vs, SD, c * 16, lane));
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool top = e < 2;
        const int row = top ? ia : ib;
        const int j = j0 + nt * 8 + 2 * t4 + (e & 1);
        const bool in = full || (j <= row && j > row - w && j >= 0 && row < N);
        const float ex = in ? fast_exp2(sc[nt][e] * scale_log2 - (top ? m_a : m_b)) : 0.f;
        if (top) {
          w1_a += ex * dv2[nt][e];
          e_a += ex;
        } else {
          w1_b += ex * dv2[nt][e];
          e_b += ex;
        }
        ds[nt][e] = cw * ex * (dv2[nt][e] - (top ? dl_a : dl_b)) * (top ? inv_a : inv_b);
      }
    }
    if constexpr (kDq) {
      uint32_t a[4];
      c_to_a(a, ds);
      mma_a_times_rows<D / 8>(dq, a, rows_kn(Ks, SD, c * 16, lane));
    }
  }
  quad_sum(w1_a);
  quad_sum(w1_b);
  quad_sum(e_a);
  quad_sum(e_b);

  // Exact delta from the fp32 branch sums, the coefficient rows and the share G_i of the max.
  float l1_a = 0.f, l1_b = 0.f, p_a = 0.f, p_b = 0.f;
  if (um.use_linear) {
    if (ia < N) {
      l1_a = p.row_grad_linear[row0 + ia];
      p_a = p.row_delta[row0 + ia];
    }
    if (ib < N) {
      l1_b = p.row_grad_linear[row0 + ib];
      p_b = p.row_delta[row0 + ib];
    }
  }
  __syncwarp();  // every lane has read the linear sums before lane t4 == 0 overwrites them
  const float delta_a = (cw * w1_a + cl * l1_a) * inv_a;
  const float delta_b = (cw * w1_b + cl * l1_b) * inv_b;
  const float gw_a = (w1_a - delta_a * e_a) * inv_a, gw_b = (w1_b - delta_b * e_b) * inv_b;
  const float gate_a = cw * gw_a, gate_b = cw * gw_b;
  if constexpr (kDq) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int col = n * 8 + 2 * t4;
      if (am_a >= 0) {
        const float2 kk = unpack_bf16(
            __ldg(reinterpret_cast<const unsigned int*>(kb + static_cast<size_t>(am_a) * D + col)));
        dq[n][0] -= gate_a * kk.x;
        dq[n][1] -= gate_a * kk.y;
      }
      if (am_b >= 0) {
        const float2 kk = unpack_bf16(
            __ldg(reinterpret_cast<const unsigned int*>(kb + static_cast<size_t>(am_b) * D + col)));
        dq[n][2] -= gate_b * kk.x;
        dq[n][3] -= gate_b * kk.y;
      }
    }
    store_rows<D / 8, D>(p.dq + row0 * D, dq, ia, s.scale, ib, s.scale, N, t4);
  }
  if (t4 == 0) {
    if (ia < N) {
      p.row_delta[row0 + ia] = delta_a;
      p.row_gate_grad[row0 + ia] = gate_a;
      p.row_grad_window[row0 + ia] = gw_a;
      p.row_grad_linear[row0 + ia] = um.use_linear ? (l1_a - delta_a * p_a) * inv_a : 0.f;
    }
    if (ib < N) {
      p.row_delta[row0 + ib] = delta_b;
      p.row_gate_grad[row0 + ib] = gate_b;
      p.row_grad_window[row0 + ib] = gw_b;
      p.row_grad_linear[row0 + ib] = um.use_linear ? (l1_b - delta_b * p_b) * inv_b : 0.f;
    }
  }
}

// ---- linear key kernel ---------------------------------------------------------------------

constexpr int kKeyRows = kTcRows + kRowPad;  // rows of the linear key kernel's row buffers

template <int D, int F>
__global__ void __launch_bounds__(kTcThreads, 1) linear_key_kernel(TcBackwardParams p) {
  extern __shared__ float4 smem4[];
  const Shape& s = p.s;
  const int N = s.seq_len;
  constexpr int SD = D + 8, SF = F + 8;
  bf16* Uhi = reinterpret_cast<bf16*>(smem4);
  bf16* Ulo = Uhi + F * SD;
  bf16* PKt = Ulo + F * SD;         // [kTcRows][SF] phi_k of the key tile
  bf16* Vt = PKt + kTcRows * SF;    // [kTcRows][SD]
  bf16* PQr = Vt + kTcRows * SD;    // [kKeyRows][SF] phi_q of the rows
  bf16* DYr = PQr + kKeyRows * SF;  // [kKeyRows][SD]
  float* us = reinterpret_cast<float*>(DYr + kKeyRows * SD);
  float* r_inv = us + F;
  float* r_delta = r_inv + kKeyRows;

  const int kv_unit = blockIdx.x / p.key_segments;
  const int seg = blockIdx.x - kv_unit * p.key_segments;
  const int b = kv_unit / s.kv_heads;
  const int hk = kv_unit - b * s.kv_heads;
  const int group = s.q_heads / s.kv_heads;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g8 = lane / 4, t4 = lane % 4;
  const int s_begin = seg * p.key_len;
  const int s_end = min(N, s_begin + p.key_len);
  if (s_begin >= s_end) return;
  const int k0_top = s_begin + ((s_end - 1 - s_begin) / kTcRows) * kTcRows;
  const bf16* vb = p.v + static_cast<size_t>(kv_unit) * N * D;
  float* dvl = p.dv_linear + static_cast<size_t>(kv_unit) * N * D;

  for (int gi = 0; gi < group; ++gi) {
    const int unit = b * s.q_heads + hk * group + gi;
    const UnitMode um = unit_mode(s, p.window_drop, unit);
    const size_t row0 = static_cast<size_t>(unit) * N;
    if (!um.use_linear) {  // no linear branch in this head: nothing for dphi_k or dv
      zero_rows<F>(p.dphi_k + row0 * F, s_begin, s_end, tid);
      if (gi == 0) {
        for (int i = tid; i < (s_end - s_begin) * D; i += kTcThreads)
          dvl[static_cast<size_t>(s_begin) * D + i] = 0.f;
      }
      continue;
    }
    const float cl = p.coef_linear[unit];
    const bf16* pqb = p.phi_q + row0 * F;
    const bf16* pkb = p.phi_k + row0 * F;
    const bf16* dyb = p.dy + row0 * D;
    __syncthreads();  // the previous head is done with U
    init_state<D, F, kTcThreads>(
        Uhi, Ulo, us,
        p.key_segments > 1
            ? p.rev_states + (static_cast<size_t>(unit) * p.key_segments + seg) * (F * D + F)
            : nullptr,
        tid);

    for (int k0 = k0_top; k0 >= s_begin; k0 -= kTcRows) {
      const int rbase = k0 + (um.state_lag & ~15);
      const int lin_end = min(k0 + kTcRows + um.state_lag, N);  // rows from here on are in U
      __syncthreads();  // U is initialised or folded; the buffers are free
      load_rows<F, kTcThreads>(PKt, pkb, k0, kTcRows, s_end, tid);
      load_rows<D, kTcThreads>(Vt, vb, k0, kTcRows, s_end, tid);
      load_rows<F, kTcThreads>(PQr, pqb, rbase, kKeyRows, N, tid);
      load_rows<D, kTcThreads>(DYr, dyb, rbase, kKeyRows, N, tid);
      cp_async_commit();
      for (int r = tid; r < kKeyRows; r += kTcThreads) {
        const int row = rbase + r;
        const bool ok = row < N;
        r_inv[r] = ok ? 1.f / p.row_denom[row0 + row] : 0.f;
        r_delta[r] = ok ? p.row_delta[row0 + row] : 0.f;
      }
      cp_async_wait<0>();
      __syncthreads();

      const int j0w = k0 + warp * 16;
      if (j0w < s_end) {
        const int ja = j0w + g8, jb = ja + 8;
        // Rows already in U: dphi_k = U v - u, dv = U^T phi_k (both times c_l below).
        float apk[F / 8][4], av[D / 8][4];
#pragma unroll
        for (int fp = 0; fp < F / 16; ++fp) {
          float c2[2][4];
          scores16_smem<D / 16>(c2, rows_a(Vt, SD, warp * 16, lane),
                                rows_nk(Uhi, SD, fp * 16, lane));
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            apk[2 * fp][e] = c2[0][e];
            apk[2 * fp + 1][e] = c2[1][e];
          }
        }
#pragma unroll
        for (int n = 0; n < F / 8; ++n) {
          const int col = n * 8 + 2 * t4;
          const float u0 = us[col], u1 = us[col + 1];
          apk[n][0] -= u0;
          apk[n][1] -= u1;
          apk[n][2] -= u0;
          apk[n][3] -= u1;
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
          av[n][0] = av[n][1] = av[n][2] = av[n][3] = 0.f;
#pragma unroll
        for (int kf = 0; kf < F / 16; ++kf) {
          uint32_t a[4];
          ldsm_x4(a, rows_a(PKt, SF, warp * 16, lane) + kf * 16);
          mma_a_times_rows<D / 8>(av, a, rows_kn(Uhi, SD, kf * 16, lane));
        }

        // Rows not yet in U that see these keys in their linear set: j + lin_lag <= i < lin_end.
        const int ilo = j0w + um.lin_lag;
        if (ilo < lin_end) {
          for (int c = (ilo - rbase) >> 4; c <= (lin_end - 1 - rbase) >> 4; ++c) {
            float pt[2][4], dyv[2][4], du[2][4], pw[2][4];
            scores16_smem<F / 16>(pt, rows_a(PKt, SF, warp * 16, lane),
                                  rows_nk(PQr, SF, c * 16, lane));
            scores16_smem<D / 16>(dyv, rows_a(Vt, SD, warp * 16, lane),
                                  rows_nk(DYr, SD, c * 16, lane));
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const int j = e < 2 ? ja : jb;
                const int ri = c * 16 + nt * 8 + 2 * t4 + (e & 1);
                const int i = rbase + ri;
                const bool in = i >= j + um.lin_lag && i < lin_end && j < s_end;
                const float inv = r_inv[ri];
                du[nt][e] = in ? (dyv[nt][e] - r_delta[ri]) * inv : 0.f;
                pw[nt][e] = in ? pt[nt][e] * inv : 0.f;
              }
            }
            uint32_t a[4];
            c_to_a(a, du);
            mma_a_times_rows<F / 8>(apk, a, rows_kn(PQr, SF, c * 16, lane));
            c_to_a(a, pw);
            mma_a_times_rows<D / 8>(av, a, rows_kn(DYr, SD, c * 16, lane));
          }
        }

        store_rows<F / 8, F>(p.dphi_k + row0 * F, apk, ja, cl, jb, cl, s_end, t4);
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          const int col = n * 8 + 2 * t4;
          float2 va = make_float2(cl * av[n][0], cl * av[n][1]);
          float2 vb2 = make_float2(cl * av[n][2], cl * av[n][3]);
          float2* pa = reinterpret_cast<float2*>(dvl + static_cast<size_t>(ja) * D + col);
          float2* pb = reinterpret_cast<float2*>(dvl + static_cast<size_t>(jb) * D + col);
          if (gi > 0) {  // the same thread wrote these for the previous head
            if (ja < s_end) {
              va.x += pa->x;
              va.y += pa->y;
            }
            if (jb < s_end) {
              vb2.x += pb->x;
              vb2.y += pb->y;
            }
          }
          if (ja < s_end) *pa = va;
          if (jb < s_end) *pb = vb2;
        }
      }

      if (k0 - kTcRows >= s_begin) {
        // Rows [k0 + state_lag, k0 + state_lag + 128) join U before the next (earlier) tile.
        __syncthreads();
        const int first = k0 + um.state_lag - rbase;
        fold_state<D, F, kTcRows, kTcWarps>(Uhi, Ulo, us, PQr, DYr, first, r_inv + first,
                                            r_delta + first, warp, lane);
      }
    }
  }
}

// ---- window key kernel ---------------------------------------------------------------------

template <int D>
__global__ void __launch_bounds__(kTcThreads, 1) window_key_kernel(TcBackwardParams p) {
  extern __shared__ float4 smem4[];
  const Shape& s = p.s;
  const int N = s.seq_len;
  const int w = s.window;
  constexpr int SD = D + 8;
  const int RW = p.key_rows;  // rows i in [k0, k0 + 128 + w - 1)
  bf16* Kt = reinterpret_cast<bf16*>(smem4);
  bf16* Vt = Kt + kTcRows * SD;
  bf16* Qr = Vt + kTcRows * SD;
  bf16* DYr = Qr + RW * SD;
  float* r_m = reinterpret_cast<float*>(DYr + RW * SD);
  float* r_inv = r_m + RW;
  float* r_delta = r_inv + RW;
  float* r_gate = r_delta + RW;
  int* r_amax = reinterpret_cast<int*>(r_gate + RW);

  const int kv_unit = blockIdx.x / p.tiles;
  const int k0 = (blockIdx.x - kv_unit * p.tiles) * kTcRows;
  const int b = kv_unit / s.kv_heads;
  const int hk = kv_unit - b * s.kv_heads;
  const int group = s.q_heads / s.kv_heads;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g8 = lane / 4, t4 = lane % 4;
  const float scale_log2 = s.scale * kLog2e;
  const size_t kv0 = static_cast<size_t>(kv_unit) * N;
  load_rows<D, kTcThreads>(Kt, p.k + kv0 * D, k0, kTcRows, N, tid);
  load_rows<D, kTcThreads>(Vt, p.v + kv0 * D, k0, kTcRows, N, tid);
  cp_async_commit();

  const int j0w = k0 + warp * 16;
  const int ja = j0w + g8, jb = ja + 8;
  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.f;
    dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.f;
  }

  for (int gi = 0; gi < group; ++gi) {
    const int unit = b * s.q_heads + hk * group + gi;
    const UnitMode um = unit_mode(s, p.window_drop, unit);
    if (!um.use_window) continue;
    const float cw = p.coef_window[unit];
    const size_t row0 = static_cast<size_t>(unit) * N;
    __syncthreads();  // the previous head is done with the row buffers
    load_rows<D, kTcThreads>(Qr, p.q + row0 * D, k0, RW, N, tid);
    load_rows<D, kTcThreads>(DYr, p.dy + row0 * D, k0, RW, N, tid);
    cp_async_commit();
    for (int r = tid; r < RW; r += kTcThreads) {
      const int row = k0 + r;
      const bool ok = row < N;
      const size_t ri = row0 + (ok ? row : 0);
      r_m[r] = ok ? p.row_max[ri] * kLog2e : 0.f;
      r_inv[r] = ok ? 1.f / p.row_denom[ri] : 0.f;
      r_delta[r] = ok ? p.row_delta[ri] : 0.f;
      r_gate[r] = ok ? p.row_gate_grad[ri] : 0.f;
      r_amax[r] = ok ? p.row_argmax[ri] : -1;
    }
    cp_async_wait<0>();
    __syncthreads();
    if (j0w >= N) continue;

    const int ihi = min(j0w + 15 + w - 1, N - 1);
    for (int c = warp; c <= (ihi - k0) >> 4; ++c) {
      float st[2][4], dyv[2][4], ds[2][4], pw[2][4];
      scores16_smem<D / 16>(st, rows_a(Kt, SD, warp * 16, lane), rows_nk(Qr, SD, c * 16, lane));
      scores16_smem<D / 16>(dyv, rows_a(Vt, SD, warp * 16, lane), rows_nk(DYr, SD, c * 16, lane));
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = e < 2 ? ja : jb;
          const int ri = c * 16 + nt * 8 + 2 * t4 + (e & 1);
          const int i = k0 + ri;
          const bool in = i >= j && i < j + w && i < N && j < N;
          const float ex = in ? fast_exp2(st[nt][e] * scale_log2 - r_m[ri]) : 0.f;
          const float inv = r_inv[ri];
          ds[nt][e] = cw * ex * (dyv[nt][e] - r_delta[ri]) * inv -
                      (in && r_amax[ri] == j ? r_gate[ri] : 0.f);
          pw[nt][e] = cw * ex * inv;
        }
      }
      uint32_t a[4];
      c_to_a(a, ds);
      mma_a_times_rows<D / 8>(dk, a, rows_kn(Qr, SD, c * 16, lane));
      c_to_a(a, pw);
      mma_a_times_rows<D / 8>(dv, a, rows_kn(DYr, SD, c * 16, lane));
    }
  }

  if (j0w >= N) return;
  if (p.dv_linear != nullptr) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int col = n * 8 + 2 * t4;
      if (ja < N) {
        const float2 x = *reinterpret_cast<const float2*>(p.dv_linear + (kv0 + ja) * D + col);
        dv[n][0] += x.x;
        dv[n][1] += x.y;
      }
      if (jb < N) {
        const float2 x = *reinterpret_cast<const float2*>(p.dv_linear + (kv0 + jb) * D + col);
        dv[n][2] += x.x;
        dv[n][3] += x.y;
      }
    }
  }
  store_rows<D / 8, D>(p.dk + kv0 * D, dk, ja, s.scale, jb, s.scale, N, t4);
  store_rows<D / 8, D>(p.dv + kv0 * D, dv, ja, 1.f, jb, 1.f, N, t4);
}

// ---- launch --------------------------------------------------------------------------------

size_t linear_query_smem(int D, int F, int key_rows) {
  return sizeof(bf16) * (2 * F * (D + 8) + key_rows * (D + 8 + F + 8)) + sizeof(float) * F;
}
size_t window_query_smem(int D, int key_rows) {
  return sizeof(bf16) * 2 * key_rows * (D + 8);
}
size_t linear_key_smem(int D, int F) {
  return sizeof(bf16) * (2 * F * (D + 8) + (kTcRows + kKeyRows) * (D + 8 + F + 8)) +
         sizeof(float) * (F + 2 * kKeyRows);
}
size_t window_key_smem(int D, int row_rows) {
  return sizeof(bf16) * 2 * (kTcRows + row_rows) * (D + 8) + 5 * sizeof(float) * row_rows;
}

int key_rows_of(const Shape& s) {
  return kTcRows + ((s.window - 1 + 15) & ~15);
}

template <typename Kernel>
cudaError_t launch(Kernel kernel, int blocks, size_t smem, const TcBackwardParams& p,
                   cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<blocks, kTcThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <int D, int F>
cudaError_t launch_linear(const TcBackwardParams& p, bool query, cudaStream_t stream) {
  const Shape& s = p.s;
  if (query) {
    return launch(linear_query_kernel<D, F>, s.batch * s.q_heads * p.fwd_segments,
                  linear_query_smem(D, F, p.key_rows), p, stream);
  }
  return launch(linear_key_kernel<D, F>, s.batch * s.kv_heads * p.key_segments,
                linear_key_smem(D, F), p, stream);
}

template <int D>
cudaError_t launch_linear_f(const TcBackwardParams& p, bool query, cudaStream_t stream) {
  switch (p.s.features) {
    case 32:
      return launch_linear<D, 32>(p, query, stream);
    case 64:
      return launch_linear<D, 64>(p, query, stream);
    case 96:
      return launch_linear<D, 96>(p, query, stream);
    default:
      return launch_linear<D, 128>(p, query, stream);
  }
}

// A second stream of the current device for this host thread and the events that fork work onto
// it and join it back; null where CUDA gives none. Kept for the thread's life (CUDA frees them
// with the context).
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr, pass_done = nullptr, query_done = nullptr, done = nullptr;
};

SideStream* side_stream() {
  thread_local std::vector<SideStream> per_device;
  thread_local std::vector<bool> refused;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return nullptr;
  if (per_device.size() <= static_cast<size_t>(device)) {
    per_device.resize(device + 1);
    refused.resize(device + 1, false);
  }
  SideStream& side = per_device[device];
  if (side.stream == nullptr && !refused[device]) {
    bool ok = cudaStreamCreateWithFlags(&side.stream, cudaStreamNonBlocking) == cudaSuccess;
    for (cudaEvent_t* e : {&side.fork, &side.pass_done, &side.query_done, &side.done})
      ok = ok && cudaEventCreateWithFlags(e, cudaEventDisableTiming) == cudaSuccess;
    if (!ok) {
      (void)cudaGetLastError();  // not sticky: the caller runs everything on its own stream
      refused[device] = true;
      side.stream = nullptr;
    }
  }
  return side.stream != nullptr ? &side : nullptr;
}

// Makes `stream` wait for the side stream's last work when it goes out of scope.
struct JoinSide {
  SideStream* side = nullptr;
  cudaStream_t stream;
  ~JoinSide() {
    if (side == nullptr) return;
    cudaEventRecord(side->done, side->stream);
    cudaStreamWaitEvent(stream, side->done, 0);
  }
};

}  // namespace

bool reverse_pass_beside_query(const Shape& s, const SegmentPlan& forward_plan,
                               const SegmentPlan& key_plan, bool linear) {
  // The u partials go into the reverse states' first half (run_backward_tc).
  const size_t states = static_cast<size_t>(s.batch) * s.q_heads * key_plan.segments;
  return linear && key_plan.segments > 1 && forward_wg_takes(s, forward_plan) &&
         query_takes_u(s, key_plan) && state_pass_wg_takes(s) &&
         query_u_floats(s, forward_plan, key_plan) <= states * segment_state_floats(s);
}

SegmentPlan dataflow_key_plan(const SegmentPlan& plan) {
  // Its last segment's blocks wait for no pass sum and start first, as SMs free up after the
  // query kernel; the others start ~40 us later, as the pass's blocks end (session 36's trace).
  // So the last takes 1/32 of each other's rows: at B1 16K 70 tiles of 64, the others 62.
  constexpr int kTile = 64;  // the Hopper kernels' rows a step
  const int fewer = plan.length / (32 * kTile) * kTile;
  return plan.segments < 2 ? plan : SegmentPlan{plan.segments, plan.length - fewer};
}

namespace {

// The key dataflow's counters: [units][query segments] for the query blocks, then [units][key
// segments] for the pass, after the u partials in the reverse states' first half.
size_t dataflow_counters(const Shape& s, const SegmentPlan& forward_plan,
                         const SegmentPlan& key_plan) {
  return static_cast<size_t>(s.batch) * s.q_heads * (forward_plan.segments + key_plan.segments);
}

}  // namespace

bool key_side_dataflow(const Shape& s, const SegmentPlan& forward_plan,
                       const SegmentPlan& tc_key_plan, const uint8_t* window_drop, bool linear) {
  const SegmentPlan key_plan = dataflow_key_plan(tc_key_plan);
  const size_t units = static_cast<size_t>(s.batch) * s.q_heads;
  // Key segments longer than 4096 rows (B1 64K: 16384) ran slower with it (session 36: 3984-4152
  // against 3924-3971 us), for a reason not found yet: they keep the second stream.
  constexpr int kMaxRows = 4096;
  return tc_key_plan.length <= kMaxRows &&
         reverse_pass_beside_query(s, forward_plan, key_plan, linear) && s.features == 128 &&
         sums_in_kernel(key_plan.segments) && linear_key_wg_takes(s, key_plan) &&
         fused_key_wg_takes(s, key_plan, window_drop) &&
         query_u_floats(s, forward_plan, key_plan) + dataflow_counters(s, forward_plan, key_plan) <=
             units * key_plan.segments * segment_state_floats(s);
}

bool backward_tc_fits(const Shape& s, bool linear) {
  if (s.head_dim != 64 && s.head_dim != 128) return false;
  const size_t limit = static_cast<size_t>(max_dynamic_smem());
  const int key_rows = key_rows_of(s);
  if (window_query_smem(s.head_dim, key_rows) > limit ||
      window_key_smem(s.head_dim, key_rows) > limit) {
    return false;
  }
  if (!linear) return true;
  return s.features <= 128 && s.features % 32 == 0 &&
         linear_query_smem(s.head_dim, s.features, key_rows) <= limit &&
         linear_key_smem(s.head_dim, s.features) <= limit;
}

SegmentPlan backward_tc_key_plan(const SegmentPlan& plan, int seq_len) {
  const int length = ((std::max(plan.length, 1) + kTcRows - 1) / kTcRows) * kTcRows;
  return SegmentPlan{(seq_len + length - 1) / length, length};
}

cudaError_t run_backward_tc(const Shape& s, const BackwardArgs& a, const SegmentPlan& tc_key_plan,
                            CoefSumParams* coef, bool* coef_summed, cudaStream_t stream) {
  const bool linear = a.phi_q != nullptr;
  // Where the fused key kernel follows, the query kernel, the pass and the key kernel run as one
  // dataflow in `stream` (bench/KERNEL_NOTES.md session 36): the pass beside the query kernel as
  // before, and each key block starts as soon as the query blocks and pass sums that it reads
  // are written (counters after the u partials in the reverse states' first half), rather than
  // after both kernels and the u combine.
  const bool dataflow =
      a.key_grads && key_side_dataflow(s, a.forward_plan, tc_key_plan, a.window_drop, linear);
  const SegmentPlan key_plan = dataflow ? dataflow_key_plan(tc_key_plan) : tc_key_plan;
  TcBackwardParams p{s,
                     static_cast<const bf16*>(a.q),
                     static_cast<const bf16*>(a.k),
                     static_cast<const bf16*>(a.v),
                     static_cast<const bf16*>(a.phi_q),
                     static_cast<const bf16*>(a.phi_k),
                     a.coef_window,
                     a.coef_linear,
                     a.window_drop,
                     static_cast<const bf16*>(a.y),
                     static_cast<const bf16*>(a.dy),
                     a.row_max,
                     a.row_denom,
                     a.row_argmax,
                     a.forward_states,
                     a.forward_plan.segments,
                     a.forward_plan.length,
                     static_cast<bf16*>(a.dq),
                     static_cast<bf16*>(a.dk),
                     static_cast<bf16*>(a.dv),
                     static_cast<bf16*>(a.dphi_q),
                     static_cast<bf16*>(a.dphi_k),
                     a.row_grad_window,
                     a.row_grad_linear,
                     a.row_delta,
                     a.row_gate_grad,
                     a.reverse_states,
                     key_plan.segments,
                     key_plan.length,
                     linear ? a.dkv_accum : nullptr,
                     (s.seq_len + kTcRows - 1) / kTcRows,
                     key_rows_of(s)};
  const bool d64 = s.head_dim == 64;
  const int units = s.batch * s.q_heads;
  // The forward's segment sums (segment_sums): the Hopper query kernel adds those before its
  // segment itself where there are few, as the Hopper forward does; the other kernels read the
  // scan's states, which the forward may have skipped, so they scan again.
  const int forward_segments = a.forward_plan.segments;
  float* forward_sums =
      forward_segments > 1 ? segment_sums(a.forward_states, s, units, forward_segments) : nullptr;
  const bool sum_forward = sums_in_kernel(forward_segments);
  // U at the start of each key segment = rows after it: segment sums (not the first's, which no
  // suffix reads), then a suffix scan, or, on Hopper with few segments, the linear key kernel
  // adds the sums after its segment itself.
  const int key_segments = key_plan.segments;
  float* key_sums =
      linear && key_segments > 1 ? segment_sums(a.reverse_states, s, units, key_segments) : nullptr;
  const bool hopper_key = linear && linear_key_wg_takes(s, key_plan);
  const bool sum_keys = hopper_key && sums_in_kernel(key_segments);
  auto scan = [&](cudaStream_t on) {
    return run_scan(s, a.window_drop, key_sums, a.reverse_states, units, key_segments, 1, nullptr,
                    nullptr, false, on);
  };
  // The reverse pass beside the Hopper query kernel, on a second stream (bench/KERNEL_NOTES.md
  // session 32): it sums only U = sum phi_q (dy / D)^T, which needs nothing from the query kernel,
  // and its blocks take the SMs the query kernel leaves idle and the bandwidth it leaves; the
  // query kernel sums u = sum phi_q dl / D per key segment itself (QueryArgs::u_partials, kept in
  // the reverse states' first half, which only the scan after them writes), and a small kernel
  // puts those into the sums. dc_w and dc_l follow on that stream, beside the key kernel.
  const bool hopper_query = forward_wg_takes(s, a.forward_plan);
  const bool beside = reverse_pass_beside_query(s, a.forward_plan, key_plan, linear);
  unsigned* const query_written =
      dataflow ? reinterpret_cast<unsigned*>(a.reverse_states +
                                             query_u_floats(s, a.forward_plan, key_plan))
               : nullptr;
  unsigned* const pass_written =
      dataflow ? query_written + static_cast<size_t>(units) * a.forward_plan.segments : nullptr;
  if (dataflow) {
    const size_t bytes = dataflow_counters(s, a.forward_plan, key_plan) * sizeof(unsigned);
    const cudaError_t e = cudaMemsetAsync(query_written, 0, bytes, stream);
    if (e != cudaSuccess) return e;
  }
  SideStream* side = beside && !dataflow ? side_stream() : nullptr;
  const bool query_sums_u = side != nullptr || dataflow;
  JoinSide join{nullptr, stream};
  if (side != nullptr) {
    const cudaError_t e = cudaEventRecord(side->fork, stream);
    if (e != cudaSuccess) return e;
  }
  cudaError_t err = cudaErrorNotSupported;
  std::optional<QueryArgs> u_query;  // the Hopper query kernel that summed u
  if (hopper_query) {
    QueryArgs qa{a.q,
                 a.k,
                 a.v,
                 a.phi_q,
                 a.phi_k,
                 a.dy,
                 a.y,
                 a.coef_window,
                 a.coef_linear,
                 a.window_drop,
                 a.row_max,
                 a.row_denom,
                 a.row_argmax,
                 sum_forward ? forward_sums : a.forward_states,
                 sum_forward,
                 a.forward_plan,
                 a.query_grads ? a.dq : nullptr,
                 a.dphi_q,
                 a.row_grad_window,
                 a.row_grad_linear,
                 a.row_delta,
                 a.row_gate_grad,
                 a.row_window_share,
                 /*window_grads=*/a.query_grads || a.key_grads};
    if (query_sums_u) {
      qa.u_partials = a.reverse_states;
      qa.key_plan = key_plan;
      qa.u_parts = query_u_parts(a.forward_plan, key_plan);
      qa.written = query_written;
    }
    err = run_query_wg(s, qa, stream);
    if (err == cudaSuccess && query_sums_u) u_query = qa;
    if (err == cudaSuccess && coef != nullptr) {  // its hybrid units took delta = dl
      coef->window_share = a.row_window_share;
      coef->coef_window = a.coef_window;
      coef->coef_linear = a.coef_linear;
    }
  }
  if (err == cudaErrorNotSupported) {
    err = cudaSuccess;
    if (forward_segments > 1) {
      err = run_scan(s, a.window_drop, forward_sums, a.forward_states, units, forward_segments, 0,
                     nullptr, nullptr, false, stream);
    }
    if (err != cudaSuccess) return err;
    if (linear)
      err = d64 ? launch_linear_f<64>(p, true, stream) : launch_linear_f<128>(p, true, stream);
    if (err != cudaSuccess) return err;
    const int q_blocks = s.batch * s.q_heads * p.tiles;
    const size_t wq = window_query_smem(s.head_dim, p.key_rows);
    if (a.query_grads) {
      err = d64 ? launch(window_query_kernel<64, true>, q_blocks, wq, p, stream)
                : launch(window_query_kernel<128, true>, q_blocks, wq, p, stream);
    } else {
      err = d64 ? launch(window_query_kernel<64, false>, q_blocks, wq, p, stream)
                : launch(window_query_kernel<128, false>, q_blocks, wq, p, stream);
    }
  }
  if (err != cudaSuccess) return err;
  const FusedKeyArgs fused_args{a.q,           a.k,
                                a.v,           a.dy,
                                a.phi_q,       a.phi_k,
                                a.coef_window, a.coef_linear,
                                a.row_max,     a.row_denom,
                                a.row_delta,   a.row_gate_grad,
                                a.row_argmax,  sum_keys ? key_sums : a.reverse_states,
                                sum_keys,      key_plan,
                                a.dk,          a.dv,
                                a.dphi_k};
  // U only (z is the query kernel's u), beside the query kernel.
  auto reverse_pass = [&](cudaStream_t on, unsigned* written) {
    return run_state_pass_wg(s, a.phi_q, a.dy, a.row_denom, /*row_weight=*/nullptr, false,
                             a.window_drop, key_sums, key_plan, -1, +1, s.seq_len, false,
                             /*skip=*/0, on, nullptr, nullptr, written);
  };
  bool pass_beside = false;
  if (u_query && dataflow) {
    err = reverse_pass(stream, pass_written);
    if (err == cudaSuccess) {
      pass_beside = true;
      FusedKeyArgs fa = fused_args;
      fa.query_written = query_written;
      fa.pass_written = pass_written;
      fa.u_partials = u_query->u_partials;
      fa.query_plan = a.forward_plan;
      fa.u_parts = u_query->u_parts;
      if (coef != nullptr) fa.coef = *coef;
      err = run_fused_key_wg(s, fa, stream);
      if (err == cudaSuccess) {
        *coef_summed = coef != nullptr;
        return err;
      }
      // A TMA descriptor refused: the kernels below, with u put into the sums first.
      if (err == cudaErrorNotSupported) err = run_u_combine(s, *u_query, key_sums, 0, stream);
    } else if (err == cudaErrorNotSupported) {
      err = cudaSuccess;  // the pass after the query side, below
    }
    if (err != cudaSuccess) return err;
  } else if (u_query) {
    // Launched after the query kernel, so that the query kernel's blocks are placed first.
    join.side = side;
    err = cudaStreamWaitEvent(side->stream, side->fork, 0);
    if (err == cudaSuccess) err = reverse_pass(side->stream, nullptr);
    if (err == cudaErrorNotSupported) {
      err = cudaSuccess;  // a TMA descriptor refused: the pass runs after the query side
    } else if (err == cudaSuccess) {
      pass_beside = true;
      err = cudaEventRecord(side->query_done, stream);
      if (err == cudaSuccess) err = cudaStreamWaitEvent(side->stream, side->query_done, 0);
      if (err == cudaSuccess) err = run_u_combine(s, *u_query, key_sums, /*skip=*/0, side->stream);
      if (err == cudaSuccess && !sum_keys) err = scan(side->stream);
      if (err == cudaSuccess) err = cudaEventRecord(side->pass_done, side->stream);
      if (err == cudaSuccess) err = cudaStreamWaitEvent(stream, side->pass_done, 0);
      if (err == cudaSuccess && coef != nullptr) {
        err = run_coef_sum(*coef, side->stream);
        *coef_summed = err == cudaSuccess;
      }
    }
    if (err != cudaSuccess) return err;
  }
  // dk and dv, plus dv_linear (fp32) where it is not null.
  auto window_key = [&](float* dv_linear) {
    if (window_key_wg_takes(s, key_plan)) {
      const WindowKeyArgs wa{a.q,           a.k,       a.v,         a.dy,        a.coef_window,
                             a.window_drop, a.row_max, a.row_denom, a.row_delta, a.row_gate_grad,
                             a.row_argmax,  dv_linear, key_plan,    a.dk,        a.dv};
      const cudaError_t e = run_window_key_wg(s, wa, stream);
      if (e != cudaErrorNotSupported) return e;
    }
    TcBackwardParams wp = p;
    wp.dv_linear = dv_linear;
    const int k_blocks = s.batch * s.kv_heads * p.tiles;
    const size_t wk = window_key_smem(s.head_dim, p.key_rows);
    return d64 ? launch(window_key_kernel<64>, k_blocks, wk, wp, stream)
               : launch(window_key_kernel<128>, k_blocks, wk, wp, stream);
  };
  if (linear) {
    if (key_segments > 1 && !pass_beside) {
      // dc_w, dc_l with the pass (their row terms are the query side's, done by now): beside its
      // blocks where it leaves SMs idle, else right after it (bench/KERNEL_NOTES.md session 22).
      err = run_state_pass_tc(s, a.phi_q, a.dy, a.row_denom, a.row_delta, false, a.window_drop,
                              key_sums, key_plan, -1, +1, s.seq_len, false,
                              /*skip=*/0, stream, coef);
      *coef_summed = coef != nullptr;
      if (err == cudaSuccess && !sum_keys) err = scan(stream);
      if (err != cudaSuccess) return err;
    }
    err = cudaErrorNotSupported;
    if (hopper_key && a.key_grads && fused_key_wg_takes(s, key_plan, a.window_drop)) {
      // dk, dv and dphi_k in one pass (the shapes of the benchmarks).
      err = run_fused_key_wg(s, fused_args, stream);
      if (err != cudaErrorNotSupported) return err;
    }
    if (hopper_key) {
      // With dk and dv wanted, the window key kernel runs first and this one adds the linear
      // part into dv, so that the linear part never makes an fp32 round trip through memory.
      void* dv_sum = nullptr;
      if (a.key_grads) {
        err = window_key(nullptr);
        if (err != cudaSuccess) return err;
        dv_sum = a.dv;
      }
      const LinearKeyArgs la{a.v,         a.phi_k,       a.phi_q,
                             a.dy,        a.coef_linear, a.window_drop,
                             a.row_denom, a.row_delta,   sum_keys ? key_sums : a.reverse_states,
                             sum_keys,    key_plan,      a.dphi_k,
                             dv_sum};
      err = run_linear_key_wg(s, la, stream);
      if (err == cudaSuccess && dv_sum != nullptr) return cudaSuccess;
      if (err == cudaErrorNotSupported && sum_keys) {
        const cudaError_t e = scan(stream);  // the kernels below read the scan's states
        if (e != cudaSuccess) return e;
      }
    }
    if (err == cudaErrorNotSupported) {
      // Its workspace was sized for the Hopper key kernel (backward_accum_floats).
      if (p.dv_linear == nullptr) return cudaErrorNotSupported;
      err = d64 ? launch_linear_f<64>(p, false, stream) : launch_linear_f<128>(p, false, stream);
    }
    if (err != cudaSuccess) return err;
  }
  if (!a.key_grads) return cudaSuccess;  // the window key kernel only makes dk and dv
  return window_key(p.dv_linear);
}

}  // namespace hl::kernels::cuda::detail
