// Backward pass of hybrid attention (DESIGN §1).
//
// With u_ij the weight of key j in row i (a_ij = c_w e_ij in the window, b_ij = c_l p_ij in
// the linear set), D_i = sum_j u_ij (+ eps) and Delta_i = dy_i . y_i:
//   du_ij = (dy_i . v_j - Delta_i) / D_i,  dv_j = sum_i u_ij dy_i / D_i,
//   window: ds_ij = a_ij du_ij - [j = argmax_i] G_i with G_i = sum_j a_ij du_ij (the max m_i is
//   part of the function because the linear terms are not rescaled by it),
//   dq_i = scale sum_j ds_ij k_j, dk_j = scale sum_i ds_ij q_i,
//   linear: dphi_q_i = c_l sum_j du_ij phi_k_j, dphi_k_j = c_l sum_i du_ij phi_q_i,
//   dc_w = sum_i sum_j e_ij du_ij,  dc_l = sum_i sum_j p_ij du_ij = sum_i phi_q_i . dphi_q_i / c_l.
// The query pass runs forward over rows with the state S = sum phi_k v^T, z = sum phi_k
// (dphi_q_i gets l (S dy_i - z Delta_i) / D_i); the key pass runs backward over keys with
// U = sum phi_q (dy / D)^T, u = sum phi_q Delta / D (dphi_k_j gets l (U v_j - u), dv_j gets
// l U^T phi_k_j). GQA: one key-pass block serves every q head of its kv head in turn and
// sums dk, dv without atomics.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/hybrid_backward_tc.cuh"
#include "kernels/cuda/hybrid_common.cuh"
#include "kernels/cuda/hybrid_forward_tc.cuh"
#include "kernels/cuda/hybrid_internal.cuh"

namespace hl::kernels::cuda {
namespace detail {
namespace {

struct BackwardParams {
  Shape s;
  const void* q;
  const void* k;
  const void* v;
  const void* phi_q;
  const void* phi_k;
  const float* coef_window;
  const float* coef_linear;
  const uint8_t* window_drop;
  const void* y;
  const void* dy;
  const float* row_max;
  const float* row_denom;
  const int32_t* row_argmax;
  const float* fwd_states;
  int fwd_segments, fwd_len;
  void* dq;
  void* dk;
  void* dv;
  void* dphi_q;
  void* dphi_k;
  float* row_grad_window;
  float* row_grad_linear;
  float* row_delta;
  float* row_gate_grad;
  const float* rev_states;
  int key_segments, key_len;
  float* dkv_accum;
};

template <int D, int FMAX, typename T>
__global__ void __launch_bounds__(kThreads, 1) backward_query_kernel(BackwardParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const Shape& s = p.s;
  constexpr int DC = D / 32;
  constexpr int FCM = FMAX / 32;
  constexpr int DP = D + 4;
  const int F = s.features;
  const int FC = F / 32;
  const int FP = F + 4;
  const int N = s.seq_len;

  float* St = smem;  // S transposed: [D][F]
  float* z = St + D * F;
  float* Ks = z + F;
  float* Vs = Ks + kTileRows * D;
  float* PKs = Vs + kTileRows * D;
  float* DYs = PKs + kTileRows * FP;

  const int unit = blockIdx.x / p.fwd_segments;
  const int seg = blockIdx.x - unit * p.fwd_segments;
  const int kv_unit = kv_unit_of(s, unit);
  const int row = threadIdx.x / kLanesPerRow;
  const int lr = threadIdx.x % kLanesPerRow;
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const float g = p.coef_window[unit];
  const float l = p.coef_linear[unit];

  const size_t qo = static_cast<size_t>(unit) * N;
  const T* qb = static_cast<const T*>(p.q) + qo * D;
  const T* kb = static_cast<const T*>(p.k) + static_cast<size_t>(kv_unit) * N * D;
  const T* vb = static_cast<const T*>(p.v) + static_cast<size_t>(kv_unit) * N * D;
  const T* pqb = static_cast<const T*>(p.phi_q) + qo * F;
  const T* pkb = static_cast<const T*>(p.phi_k) + qo * F;
  const T* yb = static_cast<const T*>(p.y) + qo * D;
  const T* dyb = static_cast<const T*>(p.dy) + qo * D;

  const int r_begin = seg * p.fwd_len;
  const int r_end = min(N, r_begin + p.fwd_len);

  if (um.use_linear) {
    const float* init =
        p.fwd_segments > 1 ? p.fwd_states + static_cast<size_t>(blockIdx.x) * (F * D + F) : nullptr;
    for (int idx = threadIdx.x; idx < F * D; idx += kThreads) {
      const int f = idx / D;
      const int e = idx - f * D;
      St[e * F + f] = init != nullptr ? init[idx] : 0.f;
    }
    for (int f = threadIdx.x; f < F; f += kThreads)
      z[f] = init != nullptr ? init[F * D + f] : 0.f;
  }
  __syncthreads();

  for (int t0 = r_begin; t0 < r_end; t0 += kTileRows) {
    const int i = t0 + row;
    const bool valid = i < r_end;
    const size_t ri = qo + (valid ? i : 0);
    float qv[DC * 4], dyr[DC * 4], tmp[DC * 4];
    load_slice<DC>(qv, valid ? qb + static_cast<size_t>(i) * D : nullptr, DC, lr, s.scale);
    load_slice<DC>(dyr, valid ? dyb + static_cast<size_t>(i) * D : nullptr, DC, lr);
    load_slice<DC>(tmp, valid ? yb + static_cast<size_t>(i) * D : nullptr, DC, lr);
    float delta = 0.f;
#pragma unroll
    for (int e = 0; e < DC * 4; ++e)
      delta = fmaf(dyr[e], tmp[e], delta);
    delta = row_sum(delta);
    const float inv_d = valid ? 1.f / p.row_denom[ri] : 0.f;
    const float m_i = valid ? p.row_max[ri] : 0.f;
    const int amax = valid ? p.row_argmax[ri] : -1;
    float pq[FCM * 4];
    load_slice<FCM>(pq, valid && p.phi_q != nullptr ? pqb + static_cast<size_t>(i) * F : nullptr,
                    FC, lr);

    float dq[DC * 4];
#pragma unroll
    for (int e = 0; e < DC * 4; ++e)
      dq[e] = 0.f;
    float tot[FCM * 4];  // sum_j du_ij phi_k_j
#pragma unroll
    for (int e = 0; e < FCM * 4; ++e)
      tot[e] = 0.f;
    // Exact fp32 sums for Delta_i: y is stored in the input dtype, so dy . y from a bf16 y
    // loses the digits that the coefficient gradients need (they are differences).
    float win_e = 0.f, win_edy = 0.f;  // sum_W e, sum_W e (dy . v)
    float lin_p = 0.f, lin_pdy = 0.f;  // sum_L p, sum_L p (dy . v)

    if (um.use_linear) {
      __syncthreads();  // previous fold is done with DYs' neighbours and St
      load_tile(DYs, DP, dyb, D, t0, r_end);
      __syncthreads();
      float sdy[FCM * 4];
#pragma unroll
      for (int e = 0; e < FCM * 4; ++e)
        sdy[e] = 0.f;
      for (int e = 0; e < D; e += 4) {
        const float4 d4 = load4(DYs + row * DP + e);
        slice_axpy<FCM>(sdy, d4.x, St + (e + 0) * F, FC, lr);
        slice_axpy<FCM>(sdy, d4.y, St + (e + 1) * F, FC, lr);
        slice_axpy<FCM>(sdy, d4.z, St + (e + 2) * F, FC, lr);
        slice_axpy<FCM>(sdy, d4.w, St + (e + 3) * F, FC, lr);
      }
      float part_pdy = 0.f, part_p = 0.f;
#pragma unroll
      for (int c = 0; c < FCM; ++c) {
        if (c < FC) {
          const float4 z4 = load4(z + slice_index(c, lr));
          part_pdy += pq[c * 4] * sdy[c * 4] + pq[c * 4 + 1] * sdy[c * 4 + 1] +
                      pq[c * 4 + 2] * sdy[c * 4 + 2] + pq[c * 4 + 3] * sdy[c * 4 + 3];
          part_p +=
              pq[c * 4] * z4.x + pq[c * 4 + 1] * z4.y + pq[c * 4 + 2] * z4.z + pq[c * 4 + 3] * z4.w;
          tot[c * 4 + 0] = (sdy[c * 4 + 0] - z4.x * delta) * inv_d;
          tot[c * 4 + 1] = (sdy[c * 4 + 1] - z4.y * delta) * inv_d;
          tot[c * 4 + 2] = (sdy[c * 4 + 2] - z4.z * delta) * inv_d;
          tot[c * 4 + 3] = (sdy[c * 4 + 3] - z4.w * delta) * inv_d;
        }
      }
      lin_pdy = row_sum(part_pdy);
      lin_p = row_sum(part_p);
    }

    int kstart = t0;
    if (um.use_window) kstart = min(kstart, t0 - s.window + 1);
    if (um.use_linear) kstart = min(kstart, t0 - um.state_lag);
    kstart = max(kstart, 0);
    const int kend = min(N, t0 + kTileRows);
    for (int k0 = kstart; k0 < kend; k0 += kTileRows) {
      __syncthreads();
      if (um.use_window) load_tile(Ks, D, kb, D, k0, N);
      load_tile(Vs, D, vb, D, k0, N);
      if (um.use_linear) load_tile(PKs, FP, pkb, F, k0, N);
      __syncthreads();
      const int jn = min(kTileRows, kend - k0);
      for (int jj = 0; jj < jn; ++jj) {
        const int j = k0 + jj;
        const bool in_win = um.use_window && valid && j <= i && j > i - s.window;
        const bool in_lin = um.use_linear && valid && j >= t0 - um.state_lag && j <= i - um.lin_lag;
        const bool any_win = __any_sync(kFullMask, in_win);
        const bool any_lin = __any_sync(kFullMask, in_lin);
        if (!any_win && !any_lin) continue;
        const float dyv = row_sum(slice_dot<DC>(dyr, Vs + jj * D, DC, lr));
        const float du = (dyv - delta) * inv_d;
        float sc = 0.f, pl = 0.f;
        if (any_win) sc = row_sum(slice_dot<DC>(qv, Ks + jj * D, DC, lr));
        if (any_lin) pl = row_sum(slice_dot<FCM>(pq, PKs + jj * FP, FC, lr));
        if (in_win) {
          const float e = expf(sc - m_i);
          win_e += e;
          win_edy = fmaf(e, dyv, win_edy);
          slice_axpy<DC>(dq, g * e * du, Ks + jj * D, DC, lr);
        }
        if (in_lin) {
          lin_p += pl;
          lin_pdy = fmaf(pl, dyv, lin_pdy);
          slice_axpy<FCM>(tot, du, PKs + jj * FP, FC, lr);
        }
      }
    }

    // Delta from the fp32 branch sums; gw = sum_W e du and gl = sum_L p du with that Delta.
    const float delta_exact =
        valid ? ((um.use_window ? g * win_edy : 0.f) + (um.use_linear ? l * lin_pdy : 0.f)) * inv_d
              : 0.f;
    const float gw = (win_edy - delta_exact * win_e) * inv_d;
    const float gl = (lin_pdy - delta_exact * lin_p) * inv_d;
    const float G = g * gw;
    if (um.use_window && valid && amax >= 0) {
      // The max m_i moves with s_i,argmax: its share of the gradient is -G_i.
      load_slice<DC>(tmp, kb + static_cast<size_t>(amax) * D, DC, lr);
#pragma unroll
      for (int e = 0; e < DC * 4; ++e)
        dq[e] = fmaf(-G, tmp[e], dq[e]);
    }
    if (valid) {
      store_slice<DC>(static_cast<T*>(p.dq) + static_cast<size_t>(ri) * D, dq, DC, lr, s.scale);
      if (p.dphi_q != nullptr) {  // zeros for units without a linear branch
        store_slice<FCM>(static_cast<T*>(p.dphi_q) + static_cast<size_t>(ri) * F, tot, FC, lr, l);
      }
      if (lr == 0) {
        p.row_delta[ri] = delta_exact;
        p.row_gate_grad[ri] = G;
        p.row_grad_window[ri] = um.use_window ? gw : 0.f;
        p.row_grad_linear[ri] = um.use_linear ? gl : 0.f;
      }
    }

    if (um.use_linear && t0 + kTileRows < r_end) {
      __syncthreads();
      const int f0 = t0 - um.state_lag;
      load_tile(PKs, FP, pkb, F, f0, N);
      load_tile(Vs, D, vb, D, f0, N);
      __syncthreads();
      fold_df(St, F, z, F, D, PKs, FP, Vs, D, nullptr);
    }
  }
}

template <int D, int FMAX, typename T>
__global__ void __launch_bounds__(kThreads, 1) backward_key_kernel(BackwardParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const Shape& s = p.s;
  constexpr int DC = D / 32;
  constexpr int FCM = FMAX / 32;
  constexpr int DP = D + 4;
  constexpr int DS = D / kLanesPerRow;  // strided slice e = lr + 8 t
  const int F = s.features;
  const int FC = F / 32;
  const int FP = F + 4;
  const int N = s.seq_len;

  float* Ut = smem;  // U transposed: [D][F + 4]
  float* u = Ut + D * FP;
  float* Qs = u + F;
  float* DYs = Qs + kTileRows * D;
  float* PQs = DYs + kTileRows * DP;
  float* r_delta = PQs + kTileRows * FP;
  float* r_inv = r_delta + kTileRows;
  float* r_max = r_inv + kTileRows;
  float* r_gate = r_max + kTileRows;
  float* r_cz = r_gate + kTileRows;
  int* r_amax = reinterpret_cast<int*>(r_cz + kTileRows);

  const int kv_unit = blockIdx.x / p.key_segments;
  const int seg = blockIdx.x - kv_unit * p.key_segments;
  const int b = kv_unit / s.kv_heads;
  const int hk = kv_unit - b * s.kv_heads;
  const int group = s.q_heads / s.kv_heads;
  const int row = threadIdx.x / kLanesPerRow;
  const int lr = threadIdx.x % kLanesPerRow;

  const T* kb = static_cast<const T*>(p.k) + static_cast<size_t>(kv_unit) * N * D;
  const T* vb = static_cast<const T*>(p.v) + static_cast<size_t>(kv_unit) * N * D;
  const int s_begin = seg * p.key_len;
  const int s_end = min(N, s_begin + p.key_len);
  if (s_begin >= s_end) return;
  const int k0_top = s_begin + ((s_end - 1 - s_begin) / kTileRows) * kTileRows;

  for (int gi = 0; gi < group; ++gi) {
    const int h = hk * group + gi;
    const int unit = b * s.q_heads + h;
    const UnitMode um = unit_mode(s, p.window_drop, unit);
    const float g = p.coef_window[unit];
    const float l = p.coef_linear[unit];
    const size_t qo = static_cast<size_t>(unit) * N;
    const T* qb = static_cast<const T*>(p.q) + qo * D;
    const T* pqb = static_cast<const T*>(p.phi_q) + qo * F;
    const T* pkb = static_cast<const T*>(p.phi_k) + qo * F;
    const T* dyb = static_cast<const T*>(p.dy) + qo * D;
    const float* denom = p.row_denom + qo;
    const float* deltas = p.row_delta + qo;

    __syncthreads();  // the previous head is done with Ut
    if (um.use_linear) {
      const float* init =
          p.key_segments > 1
              ? p.rev_states + (static_cast<size_t>(unit) * p.key_segments + seg) * (F * D + F)
              : nullptr;
      for (int idx = threadIdx.x; idx < F * D; idx += kThreads) {
        const int f = idx / D;
        const int e = idx - f * D;
        Ut[e * FP + f] = init != nullptr ? init[idx] : 0.f;
      }
      for (int f = threadIdx.x; f < F; f += kThreads)
        u[f] = init != nullptr ? init[F * D + f] : 0.f;
    }

    for (int k0 = k0_top; k0 >= s_begin; k0 -= kTileRows) {
      const int j = k0 + row;
      const bool valid = j < s_end;
      float kr[DC * 4], vr[DC * 4], pkr[FCM * 4];
      load_slice<DC>(kr, valid ? kb + static_cast<size_t>(j) * D : nullptr, DC, lr, s.scale);
      load_slice<DC>(vr, valid ? vb + static_cast<size_t>(j) * D : nullptr, DC, lr);
      load_slice<FCM>(pkr, valid && p.phi_k != nullptr ? pkb + static_cast<size_t>(j) * F : nullptr,
                      FC, lr);
      float dk[DC * 4], dv[DC * 4], dpk[FCM * 4];
#pragma unroll
      for (int e = 0; e < DC * 4; ++e)
        dk[e] = dv[e] = 0.f;
#pragma unroll
      for (int e = 0; e < FCM * 4; ++e)
        dpk[e] = 0.f;

      if (um.use_linear) {
        __syncthreads();                        // Ut is folded and the tiles are free
        load_tile(PQs, FP, pkb, F, k0, s_end);  // phi_k of this key tile
        load_tile(DYs, DP, vb, D, k0, s_end);   // v of this key tile
        __syncthreads();
        for (int e = 0; e < D; e += 4) {
          const float4 v4 = load4(DYs + row * DP + e);
          slice_axpy<FCM>(dpk, v4.x, Ut + (e + 0) * FP, FC, lr);
          slice_axpy<FCM>(dpk, v4.y, Ut + (e + 1) * FP, FC, lr);
          slice_axpy<FCM>(dpk, v4.z, Ut + (e + 2) * FP, FC, lr);
          slice_axpy<FCM>(dpk, v4.w, Ut + (e + 3) * FP, FC, lr);
        }
#pragma unroll
        for (int c = 0; c < FCM; ++c) {
          if (c < FC) {
            const float4 u4 = load4(u + slice_index(c, lr));
            dpk[c * 4 + 0] -= u4.x;
            dpk[c * 4 + 1] -= u4.y;
            dpk[c * 4 + 2] -= u4.z;
            dpk[c * 4 + 3] -= u4.w;
          }
        }
        // dv_j += l U^T phi_k_j, on a strided slice so that rows of Ut hit distinct banks.
        float dvs[DS];
#pragma unroll
        for (int t = 0; t < DS; ++t)
          dvs[t] = 0.f;
        for (int f = 0; f < F; f += 4) {
          const float4 p4 = load4(PQs + row * FP + f);
#pragma unroll
          for (int t = 0; t < DS; ++t) {
            const float4 u4 = load4(Ut + (lr + kLanesPerRow * t) * FP + f);
            dvs[t] = fmaf(u4.x, p4.x, fmaf(u4.y, p4.y, fmaf(u4.z, p4.z, fmaf(u4.w, p4.w, dvs[t]))));
          }
        }
        // Qs is free until the row loop: use it to turn the strided slice into a blocked one.
#pragma unroll
        for (int t = 0; t < DS; ++t)
          Qs[row * D + lr + kLanesPerRow * t] = dvs[t] * l;
        __syncwarp();
        slice_axpy<DC>(dv, 1.f, Qs + row * D, DC, lr);
      }

      const int lin_end = k0 + kTileRows + um.state_lag;  // rows from here on are in U
      int rend = k0;
      if (um.use_window) rend = max(rend, k0 + kTileRows - 1 + s.window);
      if (um.use_linear) rend = max(rend, lin_end);
      rend = min(rend, N);
      for (int r0 = k0; r0 < rend; r0 += kTileRows) {
        __syncthreads();
        if (um.use_window) load_tile(Qs, D, qb, D, r0, N);
        load_tile(DYs, DP, dyb, D, r0, N);
        if (um.use_linear) load_tile(PQs, FP, pqb, F, r0, N);
        if (threadIdx.x < kTileRows) {
          const int r = r0 + threadIdx.x;
          const bool ok = r < N;
          r_delta[threadIdx.x] = ok ? deltas[r] : 0.f;
          r_inv[threadIdx.x] = ok ? 1.f / denom[r] : 0.f;
          r_max[threadIdx.x] = ok ? p.row_max[qo + r] : 0.f;
          r_gate[threadIdx.x] = ok ? p.row_gate_grad[qo + r] : 0.f;
          r_amax[threadIdx.x] = ok ? p.row_argmax[qo + r] : -1;
        }
        __syncthreads();
        const int in = min(kTileRows, rend - r0);
        for (int ii = 0; ii < in; ++ii) {
          const int i = r0 + ii;
          const bool in_win = um.use_window && valid && i >= j && i < j + s.window;
          const bool in_lin = um.use_linear && valid && i >= j + um.lin_lag && i < lin_end;
          const bool any_win = __any_sync(kFullMask, in_win);
          const bool any_lin = __any_sync(kFullMask, in_lin);
          if (!any_win && !any_lin) continue;
          const float inv = r_inv[ii];
          const float du = (row_sum(slice_dot<DC>(vr, DYs + ii * DP, DC, lr)) - r_delta[ii]) * inv;
          float sc = 0.f, pl = 0.f;
          if (any_win) sc = row_sum(slice_dot<DC>(kr, Qs + ii * D, DC, lr));
          if (any_lin) pl = row_sum(slice_dot<FCM>(pkr, PQs + ii * FP, FC, lr));
          if (in_win) {
            const float a = g * expf(sc - r_max[ii]);
            const float ds = a * du - (r_amax[ii] == j ? r_gate[ii] : 0.f);
            slice_axpy<DC>(dk, ds, Qs + ii * D, DC, lr);
            slice_axpy<DC>(dv, a * inv, DYs + ii * DP, DC, lr);
          }
          if (in_lin) {
            slice_axpy<FCM>(dpk, du, PQs + ii * FP, FC, lr);
            slice_axpy<DC>(dv, l * pl * inv, DYs + ii * DP, DC, lr);
          }
        }
      }

      if (valid) {
        if (p.dphi_k != nullptr) {
          store_slice<FCM>(static_cast<T*>(p.dphi_k) + (qo + j) * F, dpk, FC, lr, l);
        }
        const size_t ko = (static_cast<size_t>(kv_unit) * N + j) * D;
        if (group == 1) {
          store_slice<DC>(static_cast<T*>(p.dk) + ko, dk, DC, lr, s.scale);
          store_slice<DC>(static_cast<T*>(p.dv) + ko, dv, DC, lr);
        } else {
          float* acc_k = p.dkv_accum + ko;
          float* acc_v = p.dkv_accum + static_cast<size_t>(s.batch) * s.kv_heads * N * D + ko;
          if (gi > 0) {
            float ok_[DC * 4], ov_[DC * 4];
            load_slice<DC>(ok_, acc_k, DC, lr);
            load_slice<DC>(ov_, acc_v, DC, lr);
#pragma unroll
            for (int e = 0; e < DC * 4; ++e) {
              dk[e] = fmaf(dk[e], s.scale, ok_[e]);
              dv[e] += ov_[e];
            }
          } else {
#pragma unroll
            for (int e = 0; e < DC * 4; ++e)
              dk[e] *= s.scale;
          }
          if (gi == group - 1) {
            store_slice<DC>(static_cast<T*>(p.dk) + ko, dk, DC, lr);
            store_slice<DC>(static_cast<T*>(p.dv) + ko, dv, DC, lr);
          } else {
            store_slice<DC>(acc_k, dk, DC, lr);
            store_slice<DC>(acc_v, dv, DC, lr);
          }
        }
      }

      if (um.use_linear && k0 - kTileRows >= s_begin) {
        // Rows [k0 + lag, k0 + 32 + lag) join U before the next (earlier) key tile.
        __syncthreads();
        const int f0 = k0 + um.state_lag;
        load_tile(PQs, FP, pqb, F, f0, N);
        load_tile(DYs, DP, dyb, D, f0, N, denom);
        if (threadIdx.x < kTileRows) {
          const int r = f0 + threadIdx.x;
          r_cz[threadIdx.x] = r < N ? deltas[r] / denom[r] : 0.f;
        }
        __syncthreads();
        fold_df(Ut, FP, u, F, D, PQs, FP, DYs, DP, r_cz);
      }
    }
  }
}

template <int D, int FMAX, typename T>
cudaError_t launch_backward_t(const BackwardParams& bp, int pass, cudaStream_t stream) {
  const int F = bp.s.features;
  if (pass == 0) {
    const size_t smem = sizeof(float) * (static_cast<size_t>(D) * F + F + 2 * kTileRows * D +
                                         kTileRows * (F + 4) + kTileRows * (D + 4));
    auto kernel = backward_query_kernel<D, FMAX, T>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem));
    if (err != cudaSuccess) return err;
    kernel<<<bp.s.batch * bp.s.q_heads * bp.fwd_segments, kThreads, smem, stream>>>(bp);
    return cudaGetLastError();
  }
  const size_t smem = sizeof(float) * (static_cast<size_t>(D) * (F + 4) + F + kTileRows * D +
                                       kTileRows * (D + 4) + kTileRows * (F + 4) + 6 * kTileRows);
  auto kernel = backward_key_kernel<D, FMAX, T>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<bp.s.batch * bp.s.kv_heads * bp.key_segments, kThreads, smem, stream>>>(bp);
  return cudaGetLastError();
}

cudaError_t dispatch_backward(const BackwardParams& bp, KernelDType dtype, int pass,
                              cudaStream_t stream) {
  const bool bf16 = dtype == KernelDType::kBFloat16;
  const int F = bp.s.features;
#define HL_BWD(DD, FM)                                                     \
  return bf16 ? launch_backward_t<DD, FM, __nv_bfloat16>(bp, pass, stream) \
              : launch_backward_t<DD, FM, float>(bp, pass, stream)
  if (bp.s.head_dim == 64) {
    if (F <= 64) HL_BWD(64, 64);
    if (F <= 128) HL_BWD(64, 128);
    HL_BWD(64, 256);
  }
  if (F <= 64) HL_BWD(128, 64);
  if (F <= 128) HL_BWD(128, 128);
  HL_BWD(128, 256);
#undef HL_BWD
}

}  // namespace
}  // namespace detail

namespace {

// Whether launch_backward runs `shape` on the tensor-core backward (run_backward_tc); linear: the
// problem has feature maps.
bool tensor_core_backward(const ProblemShape& shape, bool linear) {
  return unsupported_reason(shape) == nullptr && shape.dtype == KernelDType::kBFloat16 &&
         detail::backward_tc_fits(detail::make_shape(shape), linear);
}

}  // namespace

bool backward_uses_hopper_key_kernel(const ProblemShape& shape, const SegmentPlan& key_plan) {
  const detail::Shape s = detail::make_shape(shape);
  return tensor_core_backward(shape, true) &&
         detail::linear_key_wg_takes(s, detail::backward_tc_key_plan(key_plan, s.seq_len));
}

size_t backward_accum_floats(const ProblemShape& shape, const SegmentPlan& key_plan, bool linear) {
  const detail::Shape s = detail::make_shape(shape);
  const size_t one = static_cast<size_t>(shape.batch) * shape.kv_heads * shape.seq_len *
                     static_cast<size_t>(shape.head_dim);
  if (shape.dtype != KernelDType::kBFloat16 || !detail::backward_tc_fits(s, linear))
    return shape.q_heads != shape.kv_heads ? 2 * one : 0;  // dk, dv summed over the group
  // The tensor cores' linear part of dv, unless the Hopper key kernel adds it into dv itself.
  return linear && !backward_uses_hopper_key_kernel(shape, key_plan) ? one : 0;
}

bool backward_uses_hopper_window_key_kernel(const ProblemShape& shape,
                                            const SegmentPlan& key_plan) {
  const detail::Shape s = detail::make_shape(shape);
  return tensor_core_backward(shape, shape.mode != KernelMode::kWindowOnly) &&
         detail::window_key_wg_takes(s, detail::backward_tc_key_plan(key_plan, s.seq_len));
}

bool backward_uses_hopper_fused_key_kernel(const ProblemShape& shape, const SegmentPlan& key_plan) {
  const detail::Shape s = detail::make_shape(shape);
  return tensor_core_backward(shape, true) &&
         detail::fused_key_wg_takes(s, detail::backward_tc_key_plan(key_plan, s.seq_len), nullptr);
}

bool backward_runs_pass_beside_query(const ProblemShape& shape, const SegmentPlan& forward_plan,
                                     const SegmentPlan& key_plan) {
  const detail::Shape s = detail::make_shape(shape);
  return tensor_core_backward(shape, true) &&
         detail::reverse_pass_beside_query(s, forward_plan,
                                           detail::backward_tc_key_plan(key_plan, s.seq_len), true);
}

bool backward_runs_key_dataflow(const ProblemShape& shape, const SegmentPlan& forward_plan,
                                const SegmentPlan& key_plan) {
  const detail::Shape s = detail::make_shape(shape);
  return tensor_core_backward(shape, true) &&
         detail::key_side_dataflow(
             s, forward_plan, detail::backward_tc_key_plan(key_plan, s.seq_len), nullptr, true);
}

namespace detail {
namespace {

// dc_w and dc_l (CoefSumParams): a cluster of kSumBlocks blocks splits each output's rows; block 0
// adds their partial sums in rank order, so that the result is the same in every run (atomics
// would add in the order the blocks finish).
constexpr int kSumBlocks = 8, kSumThreads = 256;

__global__ void __launch_bounds__(kSumThreads) coef_sum_kernel(const CoefSumParams p) {
  namespace cg = cooperative_groups;
  await_previous_kernel();
  __shared__ double partial;
  const cg::cluster_group cluster = cg::this_cluster();
  const int part = static_cast<int>(cluster.block_rank());
  const int o = blockIdx.x / kSumBlocks;
  const int begin = static_cast<int>(static_cast<int64_t>(p.n) * part / kSumBlocks);
  const int end = static_cast<int>(static_cast<int64_t>(p.n) * (part + 1) / kSumBlocks);
  const double t = coef_rows_sum(p, o, begin, end);
  if (threadIdx.x == 0) partial = t;
  cluster.sync();
  if (part == 0 && threadIdx.x == 0) {
    double t = 0.0;
    for (int b = 0; b < kSumBlocks; ++b)
      t += *cluster.map_shared_rank(&partial, b);
    p.out[o] = static_cast<float>(t);
  }
  cluster.sync();  // every partial stays until block 0 has read it
}

}  // namespace

cudaError_t run_coef_sum(const CoefSumParams& p, cudaStream_t stream) {
  return launch_chained(coef_sum_kernel, dim3(2 * p.units * kSumBlocks), dim3(kSumThreads), 0,
                        stream, p, kSumBlocks);
}

namespace {

// The backward's kernels, dc_w and dc_l (`coef`) among them where given.
cudaError_t backward_kernels(const ProblemShape& shape, const BackwardArgs& a, CoefSumParams* coef,
                             cudaStream_t stream) {
  const Shape s = make_shape(shape);
  SegmentPlan fplan = a.forward_plan;
  if (fplan.segments < 1 || fplan.length < 1) fplan = SegmentPlan{1, s.seq_len};
  SegmentPlan kplan = a.key_plan;
  if (kplan.segments < 1 || kplan.length < 1) kplan = SegmentPlan{1, s.seq_len};
  const bool linear = a.phi_q != nullptr;
  if ((fplan.segments > 1 && a.forward_states == nullptr) ||
      (kplan.segments > 1 && a.reverse_states == nullptr) ||
      (a.dkv_accum == nullptr && backward_accum_floats(shape, kplan, linear) > 0)) {
    return cudaErrorInvalidValue;
  }
  // bf16 runs on the tensor cores where the tiles fit; fp32 (the 1e-5 path) stays here.
  if (shape.dtype == KernelDType::kBFloat16 && backward_tc_fits(s, linear)) {
    bool summed = false;
    const cudaError_t err =
        run_backward_tc(s, a, backward_tc_key_plan(kplan, s.seq_len), coef, &summed, stream);
    return err == cudaSuccess && coef != nullptr && !summed ? run_coef_sum(*coef, stream) : err;
  }
  BackwardParams bp{s,
                    a.q,
                    a.k,
                    a.v,
                    a.phi_q,
                    a.phi_k,
                    a.coef_window,
                    a.coef_linear,
                    a.window_drop,
                    a.y,
                    a.dy,
                    a.row_max,
                    a.row_denom,
                    a.row_argmax,
                    a.forward_states,
                    fplan.segments,
                    fplan.length,
                    a.dq,
                    a.dk,
                    a.dv,
                    a.dphi_q,
                    a.dphi_k,
                    a.row_grad_window,
                    a.row_grad_linear,
                    a.row_delta,
                    a.row_gate_grad,
                    a.reverse_states,
                    kplan.segments,
                    kplan.length,
                    a.dkv_accum};
  // The forward's states from its segment sums again: a Hopper forward may have skipped the scan.
  cudaError_t err = cudaSuccess;
  if (fplan.segments > 1) {
    err = run_scan(
        s, a.window_drop, segment_sums(a.forward_states, s, s.batch * s.q_heads, fplan.segments),
        a.forward_states, s.batch * s.q_heads, fplan.segments, 0, nullptr, nullptr, false, stream);
  }
  if (err == cudaSuccess) err = dispatch_backward(bp, shape.dtype, 0, stream);
  if (err != cudaSuccess) return err;
  if (kplan.segments > 1) {
    // U at the start of each key segment = rows after it: segment sums, then a suffix scan.
    err = run_state_pass(s, shape.dtype, a.phi_q, a.dy, false, a.row_denom, a.row_delta,
                         a.window_drop, a.reverse_states, kplan, -1, +1, s.seq_len, false, stream);
    if (err != cudaSuccess) return err;
    err = run_scan(s, a.window_drop, a.reverse_states, a.reverse_states, s.batch * s.q_heads,
                   kplan.segments, 1, nullptr, nullptr, false, stream);
    if (err != cudaSuccess) return err;
  }
  err = dispatch_backward(bp, shape.dtype, 1, stream);
  return err == cudaSuccess && coef != nullptr ? run_coef_sum(*coef, stream) : err;
}

}  // namespace
}  // namespace detail

int launch_backward(const ProblemShape& shape, const BackwardArgs& a, void* stream_ptr) {
  using namespace detail;
  if (unsupported_reason(shape) != nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  CoefSumParams coef{a.row_grad_window, a.row_grad_linear, a.coef_grads,
                     shape.batch * shape.q_heads, shape.seq_len};
  return static_cast<int>(
      backward_kernels(shape, a, a.coef_grads != nullptr ? &coef : nullptr, stream));
}

}  // namespace hl::kernels::cuda
