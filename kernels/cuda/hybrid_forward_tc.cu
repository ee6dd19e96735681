// Tensor-core forward of hybrid attention for bf16 (DESIGN §1), mma.sync m16n8k16 with fp32
// accumulation, and the tensor-core chunk-state pass it starts from.
//
// A block of 8 warps owns one segment of one (batch, head) unit and walks it in 128-row tiles;
// each warp owns 16 query rows and keeps their q and phi_q fragments in registers. Per tile the
// keys [t0 - pre, t0 + 128) (pre covers the window and the keys that are linear but not yet in
// the state) sit in shared memory. A warp first queries the state (phi_q S, phi_q . z), then finds
// the window max of its rows (q k^T over the window keys only), then walks its key chunks of 16
// once more: s = q k^T and p = phi_q phi_k^T go through masks into one weight c_w e^(s - m) + c_l
// p, whose C fragment is the A fragment of the weight x v product. After the tile the 128 keys that
// leave the unfolded range are folded into S with phi_k^T v on the tensor cores. The key buffers
// are rings (128 new rows a tile); the state query runs while a tile's rows land, and the next
// tile's keys land during the fold. S lives in shared memory as a bf16 pair (hi + lo, about 16
// significant bits): the fold accumulates hi + lo in fp32 and splits the sum again, the query
// multiplies by hi alone (ldmatrix operands).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/hybrid_common.cuh"
#include "kernels/cuda/hybrid_forward_tc.cuh"
#include "kernels/cuda/hybrid_internal.cuh"
#include "kernels/cuda/hybrid_tc_common.cuh"

namespace hl::kernels::cuda::detail {
namespace {

// Rows [row0, row0 + rows) of a row-major [*, width] bf16 matrix into shared memory (row stride
// `stride` elements); rows outside [lo, hi) become zeros.
__device__ inline void load_rows_async(bf16* dst, int stride, const bf16* src, int width, int row0,
                                       int rows, int lo, int hi, int tid, int nthreads) {
  const int chunks = width / 8;
  for (int idx = tid; idx < rows * chunks; idx += nthreads) {
    const int r = idx / chunks;
    const int c = idx - r * chunks;
    const int row = row0 + r;
    const bool ok = row >= lo && row < hi;
    const bf16* g = ok ? src + static_cast<size_t>(row) * width + c * 8 : src;
    cp_async16(dst + r * stride + c * 8, g, ok);
  }
}

// Rows [row0, row0 + rows) of a row-major [*, W] bf16 global matrix into a shared ring of
// `ring` rows (stride W + 8), row row0 + r at slot (slot0 + r) mod ring; rows outside
// [0, limit) become zeros.
template <int W>
__device__ inline void load_ring_rows(bf16* dst, const bf16* src, int row0, int rows, int limit,
                                      int slot0, int ring, int tid) {
  constexpr int kChunks = W / 8;
  for (int idx = tid; idx < rows * kChunks; idx += kTcThreads) {
    const int r = idx / kChunks;
    const int c = idx - r * kChunks;
    const int row = row0 + r;
    int slot = slot0 + r;
    if (slot >= ring) slot -= ring;
    const bool ok = row >= 0 && row < limit;
    cp_async16(dst + slot * (W + 8) + c * 8, ok ? src + static_cast<size_t>(row) * W + c * 8 : src,
               ok);
  }
}

struct TcForwardParams {
  Shape s;
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const bf16* phi_q;
  const bf16* phi_k;
  const float* coef_window;
  const float* coef_linear;
  const uint8_t* window_drop;
  bf16* y;
  float* row_max;
  float* row_denom;
  int32_t* row_argmax;
  const float* states;
  int segments, segment_len;
  int key_rows;  // capacity of the key buffers: 64 + round16(w - 1)
};

template <int D, int F>
__global__ void __launch_bounds__(kTcThreads, 1) forward_tc_kernel(TcForwardParams p) {
  extern __shared__ float4 smem4[];
  const Shape& s = p.s;
  const int N = s.seq_len;
  const int w = s.window;
  constexpr int SD = D + 8;  // padded strides: ldmatrix rows fall in distinct banks
  constexpr int SF = F + 8;
  const int KR = p.key_rows;

  bf16* Shi = reinterpret_cast<bf16*>(smem4);
  bf16* Slo = Shi + F * SD;
  bf16* Ks = Slo + F * SD;
  bf16* Vs = Ks + KR * SD;
  bf16* PKs = Vs + KR * SD;
  float* zs = reinterpret_cast<float*>(PKs + KR * SF);

  const int unit = blockIdx.x / p.segments;
  const int seg = blockIdx.x - unit * p.segments;
  const int kv_unit = kv_unit_of(s, unit);
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g8 = lane / 4;  // fragment row
  const int t4 = lane % 4;  // fragment column pair

  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const float cw = p.coef_window[unit];
  const float cl = p.coef_linear[unit];
  const int pre = round16(max(um.use_window ? w - 1 : 0, um.use_linear ? um.state_lag : 0));
  const float scale_log2 = s.scale * 1.4426950408889634f;

  const bf16* qb = p.q + static_cast<size_t>(unit) * N * D;
  const bf16* kb = p.k + static_cast<size_t>(kv_unit) * N * D;
  const bf16* vb = p.v + static_cast<size_t>(kv_unit) * N * D;
  const bf16* pqb = um.use_linear ? p.phi_q + static_cast<size_t>(unit) * N * F : nullptr;
  const bf16* pkb = um.use_linear ? p.phi_k + static_cast<size_t>(unit) * N * F : nullptr;
  bf16* yb = p.y + static_cast<size_t>(unit) * N * D;

  const int r_begin = seg * p.segment_len;
  const int r_end = min(N, r_begin + p.segment_len);

  if (um.use_linear) {
    init_state<D, F, kTcThreads>(
        Shi, Slo, zs,
        p.segments > 1 ? p.states + static_cast<size_t>(blockIdx.x) * (F * D + F) : nullptr, tid);
  }

  // q and phi_q fragments of this warp's rows come straight from global memory into
  // registers; the next tile's are requested as soon as this tile's last product has read them.
  uint32_t qf[D / 16][4];
  uint32_t pf[F / 16][4];
  auto load_fragments = [&](int rows0) {
    if (rows0 >= r_end) return;
    if (um.use_window) {
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks)
        load_a_global<D>(qf[ks], qb, rows0, N, ks * 16, g8, t4);
    }
    if (um.use_linear) {
#pragma unroll
      for (int kf = 0; kf < F / 16; ++kf)
        load_a_global<F>(pf[kf], pqb, rows0, N, kf * 16, g8, t4);
    }
  };
  load_fragments(r_begin + warp * 16);

  // The key buffers are rings of `ring` rows: a tile needs its pre keys and its own 128, and
  // the next tile keeps the last pre of them, so only 128 new rows come in per tile. Relative
  // key row r of the tile at ring base rb sits at slot (rb + r) mod ring; rb and every chunk
  // start are multiples of 16, so a 16-row chunk never wraps.
  const int ring = pre + kTcRows;
  auto wrap = [&](int slot) { return slot >= ring ? slot - ring : slot; };
  int rb = 0;
  for (int t0 = r_begin; t0 < r_end; t0 += kTcRows, rb = wrap(rb + kTcRows)) {
    const int kbase = t0 - pre;
    auto chunk = [&](int c) { return wrap(rb + c * 16); };  // slot of chunk c's first row
    __syncthreads();  // the previous tile's fold is done with the buffers and S
    // Two load groups: the keys (window scores; after the first tile they were requested before
    // the fold), then values and phi_k. The state query needs neither and runs while they land.
    if (t0 == r_begin) {
      if (um.use_window) load_rows<D, kTcThreads>(Ks, kb, kbase, ring, N, tid);
      cp_async_commit();
      load_rows<D, kTcThreads>(Vs, vb, kbase, ring, N, tid);
      if (um.use_linear) load_rows<F, kTcThreads>(PKs, pkb, kbase, ring, N, tid);
    } else {
      load_ring_rows<D>(Vs, vb, t0, kTcRows, N, wrap(rb + pre), ring, tid);
      if (um.use_linear) load_ring_rows<F>(PKs, pkb, t0, kTcRows, N, wrap(rb + pre), ring, tid);
    }
    cp_async_commit();

    const int r0 = t0 + warp * 16;  // this warp's first row
    const bool active = r0 < r_end;
    const int ia = r0 + g8, ib = ia + 8;
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float lsum_a = 0.f, lsum_b = 0.f, wsum_a = 0.f, wsum_b = 0.f;

    // Keys already folded into the state: c_l (phi_q S), phi_q . z.
    if (active && um.use_linear) {
#pragma unroll
      for (int kf = 0; kf < F / 16; ++kf) {
        const float2 a0 = unpack_bf16(pf[kf][0]), a1 = unpack_bf16(pf[kf][1]);
        const float2 a2 = unpack_bf16(pf[kf][2]), a3 = unpack_bf16(pf[kf][3]);
        const int f0 = kf * 16 + 2 * t4;
        const float z0 = zs[f0], z1 = zs[f0 + 1], z8 = zs[f0 + 8], z9 = zs[f0 + 9];
        lsum_a += a0.x * z0 + a0.y * z1 + a2.x * z8 + a2.y * z9;
        lsum_b += a1.x * z0 + a1.y * z1 + a3.x * z8 + a3.y * z9;
        // The query reads S rounded to bf16 (the hi half): its relative error 2^-9 is that of
        // the bf16 operands themselves, and the lo half stays in the running sum.
        mma_a_times_rows<D / 8>(o, pf[kf], rows_kn(Shi, SD, kf * 16, lane));
      }
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][0] *= cl;
        o[n][1] *= cl;
        o[n][2] *= cl;
        o[n][3] *= cl;
      }
    }
    cp_async_wait<1>();
    __syncthreads();  // the keys are in

    float m_a = 0.f, m_b = 0.f;  // window max in log2 units of the scaled score
    int am_a = -1, am_b = -1;
    const int win_lo = max(r0 - w + 1, 0);
    const int win_hi = min(r0 + 15, N - 1);
    if (active && um.use_window) {
      // Window max (and the first key that attains it) of rows ia, ib.
      float mx_a = -INFINITY, mx_b = -INFINITY;
      for (int c = (win_lo - kbase) >> 4; c <= (win_hi - kbase) >> 4; ++c) {
        float sc[2][4];
        scores16<D / 16>(sc, qf, rows_nk(Ks, SD, chunk(c), lane));
        const int j0 = kbase + c * 16;
        const bool full = j0 >= 0 && j0 >= r0 + 15 - w + 1 && j0 + 15 <= r0;
        if (full) {
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int j = j0 + nt * 8 + 2 * t4 + (e & 1);
              const float v = sc[nt][e] * scale_log2;
              if (e < 2) {
                if (v > mx_a) {
                  mx_a = v;
                  am_a = j;
                }
              } else if (v > mx_b) {
                mx_b = v;
                am_b = j;
              }
            }
          }
        } else {
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int row = e < 2 ? ia : ib;
              const int j = j0 + nt * 8 + 2 * t4 + (e & 1);
              const float v = sc[nt][e] * scale_log2;
              const bool in = j <= row && j > row - w && j >= 0;
              if (e < 2) {
                if (in && v > mx_a) {
                  mx_a = v;
                  am_a = j;
                }
              } else if (in && v > mx_b) {
                mx_b = v;
                am_b = j;
              }
            }
          }
        }
      }
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        const float oa = __shfl_xor_sync(kFullMask, mx_a, off);
        const int ja = __shfl_xor_sync(kFullMask, am_a, off);
        if (oa > mx_a || (oa == mx_a && ja >= 0 && (am_a < 0 || ja < am_a))) {
          mx_a = oa;
          am_a = ja;
        }
        const float ob = __shfl_xor_sync(kFullMask, mx_b, off);
        const int jb = __shfl_xor_sync(kFullMask, am_b, off);
        if (ob > mx_b || (ob == mx_b && jb >= 0 && (am_b < 0 || jb < am_b))) {
          mx_b = ob;
          am_b = jb;
        }
      }
      // Rows past the sequence have no window keys; keep their weights finite.
      m_a = mx_a == -INFINITY ? 0.f : mx_a;
      m_b = mx_b == -INFINITY ? 0.f : mx_b;
    }
    cp_async_wait<0>();
    __syncthreads();  // values and phi_k are in

    if (active) {
      // Every key this warp's rows see outside the state: window and unfolded linear keys.
      const int k_state = t0 - um.state_lag;  // first key not in the state
      int lo = N, hi = -1;
      if (um.use_window) {
        lo = win_lo;
        hi = win_hi;
      }
      if (um.use_linear) {
        lo = min(lo, max(k_state, 0));
        hi = max(hi, min(r0 + 15 - um.lin_lag, N - 1));
      }
      if (lo <= hi) {
        for (int c = (lo - kbase) >> 4; c <= (hi - kbase) >> 4; ++c) {
          const int j0 = kbase + c * 16;
          const bool need_w = um.use_window && j0 + 15 >= r0 - w + 1 && j0 <= r0 + 15;
          const bool full_w = need_w && j0 >= 0 && j0 >= r0 + 15 - w + 1 && j0 + 15 <= r0;
          const bool need_l = um.use_linear && j0 + 15 >= k_state && j0 <= r0 + 15 - um.lin_lag;
          const bool full_l = need_l && j0 >= 0 && j0 >= k_state && j0 + 15 <= r0 - um.lin_lag;
          float wt[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
          if (need_w) {
            float sc[2][4];
            scores16<D / 16>(sc, qf, rows_nk(Ks, SD, chunk(c), lane));
            if (full_w) {
#pragma unroll
              for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                  const float ex = fast_exp2(sc[nt][e] * scale_log2 - (e < 2 ? m_a : m_b));
                  if (e < 2)
                    wsum_a += ex;
                  else
                    wsum_b += ex;
                  wt[nt][e] = cw * ex;
                }
              }
            } else {
#pragma unroll
              for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                  const int row = e < 2 ? ia : ib;
                  const int j = j0 + nt * 8 + 2 * t4 + (e & 1);
                  const bool in = j <= row && j > row - w && j >= 0;
                  const float ex =
                      in ? fast_exp2(sc[nt][e] * scale_log2 - (e < 2 ? m_a : m_b)) : 0.f;
                  if (e < 2)
                    wsum_a += ex;
                  else
                    wsum_b += ex;
                  wt[nt][e] = cw * ex;
                }
              }
            }
          }
          if (need_l) {
            float pl[2][4];
            scores16<F / 16>(pl, pf, rows_nk(PKs, SF, chunk(c), lane));
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                float pv = pl[nt][e];
                if (!full_l) {
                  const int row = e < 2 ? ia : ib;
                  const int j = j0 + nt * 8 + 2 * t4 + (e & 1);
                  if (!(j >= k_state && j <= row - um.lin_lag && j >= 0)) pv = 0.f;
                }
                if (e < 2)
                  lsum_a += pv;
                else
                  lsum_b += pv;
                wt[nt][e] = fmaf(cl, pv, wt[nt][e]);
              }
            }
          }
          uint32_t a[4];
          c_to_a(a, wt);
          mma_a_times_rows<D / 8>(o, a, rows_kn(Vs, SD, chunk(c), lane));
        }
      }

      load_fragments(r0 + kTcRows);

#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        wsum_a += __shfl_xor_sync(kFullMask, wsum_a, off);
        wsum_b += __shfl_xor_sync(kFullMask, wsum_b, off);
        lsum_a += __shfl_xor_sync(kFullMask, lsum_a, off);
        lsum_b += __shfl_xor_sync(kFullMask, lsum_b, off);
      }
      float den_a, den_b;
      if (!um.use_window) {
        den_a = cl * lsum_a + s.eps;
        den_b = cl * lsum_b + s.eps;
      } else if (!um.use_linear) {
        den_a = cw * wsum_a;
        den_b = cw * wsum_b;
      } else {
        den_a = cw * wsum_a + cl * lsum_a;
        den_b = cw * wsum_b + cl * lsum_b;
      }
      const float inv_a = 1.f / den_a, inv_b = 1.f / den_b;
      bf16* ya = yb + static_cast<size_t>(ia) * D + 2 * t4;
      bf16* yb8 = yb + static_cast<size_t>(ib) * D + 2 * t4;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        if (ia < r_end)
          *reinterpret_cast<uint32_t*>(ya + n * 8) = pack_bf16(o[n][0] * inv_a, o[n][1] * inv_a);
        if (ib < r_end)
          *reinterpret_cast<uint32_t*>(yb8 + n * 8) = pack_bf16(o[n][2] * inv_b, o[n][3] * inv_b);
      }
      if (t4 == 0) {
        const float ln2 = 0.6931471805599453f;
        if (ia < r_end) {
          const size_t ri = static_cast<size_t>(unit) * N + ia;
          p.row_max[ri] = um.use_window ? m_a * ln2 : 0.f;
          p.row_denom[ri] = den_a;
          p.row_argmax[ri] = um.use_window ? am_a : -1;
        }
        if (ib < r_end) {
          const size_t ri = static_cast<size_t>(unit) * N + ib;
          p.row_max[ri] = um.use_window ? m_b * ln2 : 0.f;
          p.row_denom[ri] = den_b;
          p.row_argmax[ri] = um.use_window ? am_b : -1;
        }
      }
    }

    if (t0 + kTcRows < r_end) {
      __syncthreads();  // every warp has finished with the keys and with S
      // The next tile's keys land while the fold runs (it reads only values and phi_k).
      if (um.use_window) {
        load_ring_rows<D>(Ks, kb, t0 + kTcRows, kTcRows, N, wrap(wrap(rb + kTcRows) + pre), ring,
                          tid);
      }
      cp_async_commit();
      // Fold the keys [t0 - state_lag, t0 - state_lag + kTcRows) into S and z.
      if (um.use_linear) {
        fold_state<D, F, kTcRows, kTcWarps>(Shi, Slo, zs, PKs, Vs, pre - um.state_lag, nullptr,
                                            nullptr, warp, lane, rb, ring);
      }
    }
  }
}

// ---- chunk-state pass on the tensor cores ------------------------------------------------

constexpr int kSpWarps = 8;
constexpr int kSpThreads = kSpWarps * 32;
constexpr int kSpRows = 64;   // rows per pipeline stage
constexpr int kSpStages = 4;  // stages in flight: the pass only streams two inputs

struct TcStateParams {
  Shape s;
  const bf16* a;            // [units, N, F] (phi_k, or phi_q for the backward's reverse pass)
  const bf16* b;            // [kv units, N, D] (v), or [units, N, D] (dy) when !b_per_kv
  const float* row_denom;   // nullable: row r of a is divided by row_denom[r]
  const float* row_weight;  // nullable: z sums row_weight[r] a_r / row_denom[r] instead of a_r
  bool b_per_kv;
  const uint8_t* window_drop;
  float* out;  // [units, segments, F * D + F]
  int segments, segment_len;
  int fixed_lag, lag_sign, range_end;
  bool all_units;
  int skip;  // a segment whose sum no scan reads, or -1
};

// S = sum_r a_r b_r^T (F x kSpCols, kSpCols = D) and z = sum_r a_r over one segment's rows;
// each warp owns the F-row tiles mt = warp, warp + 8 and keeps them in registers.
// kScaled: rows are divided by row_denom and z weighs them by row_weight (the backward's U, u).
template <bool kScaled, int kSpCols>
__global__ void __launch_bounds__(kSpThreads) state_pass_tc_kernel(TcStateParams p) {
  extern __shared__ float4 smem4[];
  const Shape& s = p.s;
  const int F = s.features;
  const int D = s.head_dim;
  const int N = s.seq_len;
  const int SF = F + 8;
  constexpr int SB = kSpCols + 8;
  bf16* As = reinterpret_cast<bf16*>(smem4);                            // [kSpStages][kSpRows][SF]
  bf16* Bs = As + kSpStages * kSpRows * SF;                             // [kSpStages][kSpRows][SB]
  float* Ds = reinterpret_cast<float*>(Bs + kSpStages * kSpRows * SB);  // [kSpStages][kSpRows]
  float* Ws = Ds + kSpStages * kSpRows;                                 // [kSpStages][kSpRows]

  const int unit = blockIdx.x / p.segments;
  const int seg = blockIdx.x - unit * p.segments;
  if (seg == p.skip) return;
  const int kv_unit = kv_unit_of(s, unit);
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  if (!p.all_units && !um.use_linear) return;
  const int lag = p.fixed_lag >= 0 ? p.fixed_lag : um.state_lag;
  const int shift = p.lag_sign * lag;
  const int begin = max(0, seg * p.segment_len + shift);
  const int end =
      seg == p.segments - 1 ? p.range_end : min(p.range_end, (seg + 1) * p.segment_len + shift);
  const bf16* ab = p.a + static_cast<size_t>(unit) * N * F;
  const bf16* bb = p.b + static_cast<size_t>(p.b_per_kv ? kv_unit : unit) * N * D;
  const float* denom = kScaled ? p.row_denom + static_cast<size_t>(unit) * N : nullptr;
  const float* weight = kScaled ? p.row_weight + static_cast<size_t>(unit) * N : nullptr;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g8 = lane / 4;
  const int t4 = lane % 4;

  float acc[2][kSpCols / 8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int n = 0; n < kSpCols / 8; ++n)
      acc[i][n][0] = acc[i][n][1] = acc[i][n][2] = acc[i][n][3] = 0.f;
  // z = a^T times a ones operand: every column of zc holds the row sums.
  constexpr uint32_t kOnes = 0x3f803f80u;  // bf16 pair (1, 1)
  float zc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};

  auto load_stage = [&](int stage, int r0) {
    load_rows_async(As + stage * kSpRows * SF, SF, ab, F, r0, kSpRows, begin, end, tid, kSpThreads);
    constexpr int chunks = kSpCols / 8;
    bf16* dst = Bs + stage * kSpRows * SB;
    for (int idx = tid; idx < kSpRows * chunks; idx += kSpThreads) {
      const int r = idx / chunks;
      const int c = idx - r * chunks;
      const int row = r0 + r;
      const bool ok = row >= begin && row < end;
      cp_async16(dst + r * SB + c * 8, ok ? bb + static_cast<size_t>(row) * D + c * 8 : bb, ok);
    }
    if (kScaled && tid < 2 * kSpRows) {
      const int r = tid % kSpRows;
      const int row = r0 + r;
      const bool ok = row >= begin && row < end;
      const float* src = tid < kSpRows ? denom : weight;
      cp_async4((tid < kSpRows ? Ds : Ws) + stage * kSpRows + r, ok ? src + row : src, ok);
    }
  };

  // One commit group per chunk (empty past the end), so that wait_group counts chunks.
  const int chunks = end > begin ? (end - begin + kSpRows - 1) / kSpRows : 0;
  for (int c = 0; c < kSpStages - 1; ++c) {
    if (c < chunks) load_stage(c, begin + c * kSpRows);
    cp_async_commit();
  }
  for (int c = 0; c < chunks; ++c) {
    const int ahead = c + kSpStages - 1;
    if (ahead < chunks) load_stage(ahead % kSpStages, begin + ahead * kSpRows);
    cp_async_commit();
    cp_async_wait<kSpStages - 1>();
    __syncthreads();
    const bf16* A = As + (c % kSpStages) * kSpRows * SF;
    const bf16* B = Bs + (c % kSpStages) * kSpRows * SB;
    // Per-row factors of this lane's k indices (rows 2t4, 2t4 + 1, 2t4 + 8, 2t4 + 9 of each
    // 16-row step): 1 / denom scales the A fragments, the weight replaces the ones of z.
    float inv[kSpRows / 16][4], wt[kSpRows / 16][4];
    if constexpr (kScaled) {
      const float* sd = Ds + (c % kSpStages) * kSpRows;
      const float* sw = Ws + (c % kSpStages) * kSpRows;
#pragma unroll
      for (int ks = 0; ks < kSpRows / 16; ++ks) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = ks * 16 + 2 * t4 + (e & 1) + (e / 2) * 8;
          const float d = sd[r];
          inv[ks][e] = d != 0.f ? fast_rcp(d) : 0.f;  // rows outside the segment read 0
          wt[ks][e] = sw[r];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int mt = warp + i * kSpWarps;
      if (mt < F / 16) {
#pragma unroll
        for (int ks = 0; ks < kSpRows / 16; ++ks) {
          uint32_t af[4];
          ldsm_x4_t(af, A + (ks * 16 + (lane % 8) + (lane / 16) * 8) * SF + mt * 16 +
                            ((lane / 8) % 2) * 8);
          uint32_t z0 = kOnes, z1 = kOnes;
          if constexpr (kScaled) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float2 x = unpack_bf16(af[e]);
              af[e] = e < 2 ? pack_bf16(x.x * inv[ks][0], x.y * inv[ks][1])
                            : pack_bf16(x.x * inv[ks][2], x.y * inv[ks][3]);
            }
            z0 = pack_bf16(wt[ks][0], wt[ks][1]);
            z1 = pack_bf16(wt[ks][2], wt[ks][3]);
          }
          mma_bf16(zc[i], af, z0, z1);
#pragma unroll
          for (int np = 0; np < kSpCols / 16; ++np) {
            uint32_t bf[4];
            ldsm_x4_t(bf, B + (ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * SB + np * 16 +
                              (lane / 16) * 8);
            mma_bf16(acc[i][2 * np], af, bf[0], bf[1]);
            mma_bf16(acc[i][2 * np + 1], af, bf[2], bf[3]);
          }
        }
      }
    }
    __syncthreads();  // the stage is read before it is loaded again
  }

  float* out = p.out + static_cast<size_t>(blockIdx.x) * (F * D + F);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int mt = warp + i * kSpWarps;
    if (mt < F / 16) {
      const int fa = mt * 16 + g8;
#pragma unroll
      for (int n = 0; n < kSpCols / 8; ++n) {
        const int col = n * 8 + 2 * t4;
        *reinterpret_cast<float2*>(out + fa * D + col) = make_float2(acc[i][n][0], acc[i][n][1]);
        *reinterpret_cast<float2*>(out + (fa + 8) * D + col) =
            make_float2(acc[i][n][2], acc[i][n][3]);
      }
      if (t4 == 0) {
        out[F * D + fa] = zc[i][0];
        out[F * D + fa + 8] = zc[i][2];
      }
    }
  }
}

size_t forward_tc_smem(int D, int F, int window) {
  const size_t SD = D + 8, SF = F + 8;
  const size_t key_rows = kTcRows + ((window - 1 + 15) & ~15);
  return sizeof(bf16) * (2 * F * SD + key_rows * (2 * SD + SF)) + sizeof(float) * F;
}

template <int D>
void (*pick_forward_kernel(int F))(TcForwardParams) {
  switch (F) {
    case 32:
      return forward_tc_kernel<D, 32>;
    case 64:
      return forward_tc_kernel<D, 64>;
    case 96:
      return forward_tc_kernel<D, 96>;
    case 128:
      return forward_tc_kernel<D, 128>;
    case 160:
      return forward_tc_kernel<D, 160>;
    case 192:
      return forward_tc_kernel<D, 192>;
    case 224:
      return forward_tc_kernel<D, 224>;
    default:
      return forward_tc_kernel<D, 256>;
  }
}

}  // namespace

int device_attribute(cudaDeviceAttr attr) {
  int device = 0, value = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&value, attr, device) != cudaSuccess) {
    return 0;
  }
  return value;
}

int max_dynamic_smem() {
  return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
}

bool forward_tc_fits(const Shape& s) {
  return forward_tc_smem(s.head_dim, s.features, s.window) <=
         static_cast<size_t>(max_dynamic_smem());
}

cudaError_t run_forward_tc(const Shape& s, const TcForwardArgs& a, cudaStream_t stream) {
  const size_t smem = forward_tc_smem(s.head_dim, s.features, s.window);
  TcForwardParams fp{s,
                     static_cast<const bf16*>(a.q),
                     static_cast<const bf16*>(a.k),
                     static_cast<const bf16*>(a.v),
                     static_cast<const bf16*>(a.phi_q),
                     static_cast<const bf16*>(a.phi_k),
                     a.coef_window,
                     a.coef_linear,
                     a.window_drop,
                     static_cast<bf16*>(a.y),
                     a.row_max,
                     a.row_denom,
                     a.row_argmax,
                     a.states,
                     a.segments,
                     a.segment_len,
                     kTcRows + ((s.window - 1 + 15) & ~15)};
  auto kernel =
      s.head_dim == 64 ? pick_forward_kernel<64>(s.features) : pick_forward_kernel<128>(s.features);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int units = s.batch * s.q_heads;
  kernel<<<units * a.segments, kTcThreads, smem, stream>>>(fp);
  return cudaGetLastError();
}

cudaError_t run_state_pass_tc(const Shape& s, const void* a, const void* bm, const float* row_denom,
                              const float* row_weight, bool bm_per_kv, const uint8_t* window_drop,
                              float* out, const SegmentPlan& plan, int fixed_lag, int lag_sign,
                              int range_end, bool all_units, int skip, cudaStream_t stream,
                              const CoefSumParams* coef) {
  if (state_pass_wg_takes(s)) {
    const cudaError_t err =
        run_state_pass_wg(s, a, bm, row_denom, row_weight, bm_per_kv, window_drop, out, plan,
                          fixed_lag, lag_sign, range_end, all_units, skip, stream, nullptr, coef);
    if (err != cudaErrorNotSupported) return err;
  }
  TcStateParams sp{s,
                   static_cast<const bf16*>(a),
                   static_cast<const bf16*>(bm),
                   row_denom,
                   row_weight,
                   bm_per_kv,
                   window_drop,
                   out,
                   plan.segments,
                   plan.length,
                   fixed_lag,
                   lag_sign,
                   range_end,
                   all_units,
                   skip};
  // Every value column in one block: each a row is read once (H100, B1 H32 16K: 107 us against
  // 115 us with two 64-column blocks).
  const int cols = s.head_dim;
  const int SF = s.features + 8;
  const size_t smem = sizeof(bf16) * kSpStages * kSpRows * (SF + cols + 8) +
                      sizeof(float) * 2 * kSpStages * kSpRows;
  auto kernel =
      row_denom != nullptr
          ? (cols == 128 ? state_pass_tc_kernel<true, 128> : state_pass_tc_kernel<true, 64>)
          : (cols == 128 ? state_pass_tc_kernel<false, 128> : state_pass_tc_kernel<false, 64>);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int units = s.batch * s.q_heads;
  kernel<<<units * plan.segments, kSpThreads, smem, stream>>>(sp);
  err = cudaGetLastError();
  return err == cudaSuccess && coef != nullptr ? run_coef_sum(*coef, stream) : err;
}

}  // namespace hl::kernels::cuda::detail
