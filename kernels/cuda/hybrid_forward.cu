// Forward pass of hybrid attention (DESIGN §1) and the chunk-state passes it shares with
// backward and prefill.
//
// One block owns one segment of one (batch, head) unit and walks its 32-row tiles in order,
// carrying the linear state S = sum phi_k v^T, z = sum phi_k (fp32, in shared memory). Each
// tile queries the state, then visits the keys that are in its window or are linear but not
// yet folded, with an online softmax for the window branch (max over the window only) and a
// plain sum for the linear branch. When a unit is split into several segments, a first pass
// computes each segment's key sum and a scan turns them into the state each segment starts with.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/hybrid_common.cuh"
#include "kernels/cuda/hybrid_forward_tc.cuh"
#include "kernels/cuda/hybrid_internal.cuh"

namespace hl::kernels::cuda {
namespace detail {
namespace {

struct ForwardParams {
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
  float* row_max;
  float* row_denom;
  int32_t* row_argmax;
  float* branch_stats;
  const float* states;
  int segments, segment_len;
};

template <int D, int FMAX, typename T>
__global__ void __launch_bounds__(kThreads, 1) forward_kernel(ForwardParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const Shape& s = p.s;
  constexpr int DC = D / 32;
  constexpr int FCM = FMAX / 32;
  const int F = s.features;
  const int FC = F / 32;
  const int FP = F + 4;  // padded stride: rows of one warp land in different banks
  const int N = s.seq_len;

  float* S = smem;
  float* z = S + F * D;
  float* Ks = z + F;
  float* Vs = Ks + kTileRows * D;
  float* PKs = Vs + kTileRows * D;

  const int unit = blockIdx.x / p.segments;
  const int seg = blockIdx.x - unit * p.segments;
  const int kv_unit = kv_unit_of(s, unit);
  const int row = threadIdx.x / kLanesPerRow;
  const int lr = threadIdx.x % kLanesPerRow;

  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const float g = p.coef_window[unit];
  const float l = p.coef_linear[unit];

  const T* qb = static_cast<const T*>(p.q) + static_cast<size_t>(unit) * N * D;
  const T* kb = static_cast<const T*>(p.k) + static_cast<size_t>(kv_unit) * N * D;
  const T* vb = static_cast<const T*>(p.v) + static_cast<size_t>(kv_unit) * N * D;
  const T* pqb = static_cast<const T*>(p.phi_q) + static_cast<size_t>(unit) * N * F;
  const T* pkb = static_cast<const T*>(p.phi_k) + static_cast<size_t>(unit) * N * F;
  T* yb = static_cast<T*>(p.y) + static_cast<size_t>(unit) * N * D;

  const int r_begin = seg * p.segment_len;
  const int r_end = min(N, r_begin + p.segment_len);

  if (um.use_linear) {
    const float* init =
        p.segments > 1 ? p.states + static_cast<size_t>(blockIdx.x) * (F * D + F) : nullptr;
    for (int idx = threadIdx.x; idx < F * D + F; idx += kThreads) {
      S[idx] = init != nullptr ? init[idx] : 0.f;  // z follows S contiguously
    }
  }
  __syncthreads();

  for (int t0 = r_begin; t0 < r_end; t0 += kTileRows) {
    const int i = t0 + row;
    const bool valid = i < r_end;
    float qv[DC * 4];
    load_slice<DC>(qv, valid ? qb + static_cast<size_t>(i) * D : nullptr, DC, lr, s.scale);
    float accw[DC * 4];
    float accl[DC * 4];
#pragma unroll
    for (int e = 0; e < DC * 4; ++e)
      accw[e] = accl[e] = 0.f;
    float pq[FCM * 4];
#pragma unroll
    for (int e = 0; e < FCM * 4; ++e)
      pq[e] = 0.f;
    float m = -INFINITY, wsum = 0.f, lsum = 0.f;
    int amax = -1;

    if (um.use_linear) {
      __syncthreads();  // the previous fold has finished reading PKs
      load_tile(PKs, FP, pqb, F, t0, N);
      __syncthreads();
#pragma unroll
      for (int c = 0; c < FCM; ++c) {
        if (c < FC) {
          const float4 v4 = load4(PKs + row * FP + slice_index(c, lr));
          pq[c * 4] = v4.x;
          pq[c * 4 + 1] = v4.y;
          pq[c * 4 + 2] = v4.z;
          pq[c * 4 + 3] = v4.w;
        }
      }
      // Keys already folded into the state: phi_q S and phi_q . z.
      for (int f = 0; f < F; f += 4) {
        const float4 p4 = load4(PKs + row * FP + f);
        const float4 z4 = load4(z + f);
        lsum = fmaf(p4.x, z4.x, lsum);
        lsum = fmaf(p4.y, z4.y, lsum);
        lsum = fmaf(p4.z, z4.z, lsum);
        lsum = fmaf(p4.w, z4.w, lsum);
        slice_axpy<DC>(accl, p4.x, S + (f + 0) * D, DC, lr);
        slice_axpy<DC>(accl, p4.y, S + (f + 1) * D, DC, lr);
        slice_axpy<DC>(accl, p4.z, S + (f + 2) * D, DC, lr);
        slice_axpy<DC>(accl, p4.w, S + (f + 3) * D, DC, lr);
      }
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
        float sc = 0.f, pl = 0.f;
        if (any_win) sc = row_sum(slice_dot<DC>(qv, Ks + jj * D, DC, lr));
        if (any_lin) pl = row_sum(slice_dot<FCM>(pq, PKs + jj * FP, FC, lr));
        if (in_win) {
          if (sc > m) {
            const float c = expf(m - sc);
#pragma unroll
            for (int e = 0; e < DC * 4; ++e)
              accw[e] *= c;
            wsum *= c;
            m = sc;
            amax = j;
          }
          const float pa = expf(sc - m);
          wsum += pa;
          slice_axpy<DC>(accw, pa, Vs + jj * D, DC, lr);
        }
        if (in_lin) {
          lsum += pl;
          slice_axpy<DC>(accl, pl, Vs + jj * D, DC, lr);
        }
      }
    }

    float denom, cw, cl;
    if (!um.use_window) {
      denom = l * lsum + s.eps;
      cw = 0.f;
      cl = l / denom;
    } else if (!um.use_linear) {
      denom = g * wsum;
      cw = g / denom;
      cl = 0.f;
    } else {
      denom = g * wsum + l * lsum;
      cw = g / denom;
      cl = l / denom;
    }
    float out[DC * 4];
#pragma unroll
    for (int e = 0; e < DC * 4; ++e)
      out[e] = cw * accw[e] + cl * accl[e];
    if (valid) {
      store_slice<DC>(yb + static_cast<size_t>(i) * D, out, DC, lr);
      if (lr == 0) {
        const size_t ri = static_cast<size_t>(unit) * N + i;
        p.row_max[ri] = um.use_window ? m : 0.f;
        p.row_denom[ri] = denom;
        p.row_argmax[ri] = um.use_window ? amax : -1;
      }
    }
    if (p.branch_stats != nullptr) {
      float nw = 0.f, nl = 0.f;
#pragma unroll
      for (int e = 0; e < DC * 4; ++e) {
        nw = fmaf(accw[e], accw[e], nw);
        nl = fmaf(accl[e], accl[e], nl);
      }
      nw = um.use_window ? g * sqrtf(row_sum(nw)) : 0.f;
      nl = um.use_linear ? l * sqrtf(row_sum(nl)) : 0.f;
      if (valid && lr == 0) {
        const size_t ri = static_cast<size_t>(unit) * N + i;
        p.branch_stats[ri * 2] =
            um.use_linear ? l * lsum / (l * lsum + (um.use_window ? g * wsum : 0.f)) : 0.f;
        p.branch_stats[ri * 2 + 1] = nw + nl > 0.f ? nl / (nw + nl) : 0.f;
      }
    }

    if (um.use_linear && t0 + kTileRows < r_end) {
      __syncthreads();  // all reads of PKs, Vs and S for this tile are done
      const int f0 = t0 - um.state_lag;
      load_tile(PKs, FP, pkb, F, f0, N);
      load_tile(Vs, D, vb, D, f0, N);
      __syncthreads();
      fold_fd(S, z, F, D, PKs, FP, Vs, D, nullptr);
    }
  }
}

struct StatePassParams {
  Shape s;
  const void* a;   // rows of F features, per q head
  const void* bm;  // rows of D values, per kv head (v) or per q head (dy)
  bool bm_per_kv;
  const float* row_denom;  // optional: bm rows are divided by it
  const float* row_delta;  // optional: z weight delta / denom instead of 1
  const uint8_t* window_drop;
  float* out;  // [units, segments, F * D + F]
  int segments, segment_len;
  int fixed_lag;   // >= 0: lag for every unit (prefill); -1: each unit's state lag
  int lag_sign;    // -1: key ranges of the forward state; +1: row ranges of the reverse state
  int range_end;   // keys/rows beyond are ignored
  bool all_units;  // ignore whether a unit has a linear branch
};

// Sum of one segment's rows [seg * L + sign * lag, (seg + 1) * L + sign * lag) (the last
// to range_end).
template <int D, typename T>
__global__ void __launch_bounds__(kThreads, 1) state_pass_kernel(StatePassParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const Shape& s = p.s;
  const int F = s.features;
  const int FP = F + 4;
  const int N = s.seq_len;
  float* S = smem;
  float* z = S + F * D;
  float* As = z + F;
  float* Bs = As + kTileRows * FP;
  float* cz = Bs + kTileRows * D;

  const int unit = blockIdx.x / p.segments;
  const int seg = blockIdx.x - unit * p.segments;
  const int kv_unit = kv_unit_of(s, unit);
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  if (!p.all_units && !um.use_linear) return;
  const int lag = p.fixed_lag >= 0 ? p.fixed_lag : um.state_lag;
  const int shift = p.lag_sign * lag;
  const int begin = max(0, seg * p.segment_len + shift);
  const int end =
      seg == p.segments - 1 ? p.range_end : min(p.range_end, (seg + 1) * p.segment_len + shift);

  const T* ab = static_cast<const T*>(p.a) + static_cast<size_t>(unit) * N * F;
  const T* bb =
      static_cast<const T*>(p.bm) + static_cast<size_t>(p.bm_per_kv ? kv_unit : unit) * N * D;
  const float* denom =
      p.row_denom != nullptr ? p.row_denom + static_cast<size_t>(unit) * N : nullptr;
  const float* delta =
      p.row_delta != nullptr ? p.row_delta + static_cast<size_t>(unit) * N : nullptr;

  for (int idx = threadIdx.x; idx < F * D + F; idx += kThreads)
    S[idx] = 0.f;
  for (int r0 = begin; r0 < end; r0 += kTileRows) {
    __syncthreads();
    load_tile(As, FP, ab, F, r0, end);
    load_tile(Bs, D, bb, D, r0, end, denom);
    if (delta != nullptr && threadIdx.x < kTileRows) {
      const int r = r0 + threadIdx.x;
      cz[threadIdx.x] = r < end ? delta[r] / denom[r] : 0.f;
    }
    __syncthreads();
    fold_fd(S, z, F, D, As, FP, Bs, D, delta != nullptr ? cz : nullptr);
  }
  __syncthreads();
  float* out = p.out + static_cast<size_t>(blockIdx.x) * (F * D + F);
  for (int idx = threadIdx.x; idx < F * D + F; idx += kThreads)
    out[idx] = S[idx];
}

struct ScanParams {
  Shape s;
  const uint8_t* window_drop;
  const float* sums;  // [units, segments, size]
  float* states;      // [units, segments, size]; may be sums
  int segments;
  int size;
  int direction;   // 0: exclusive prefix, 1: exclusive suffix, 2: total
  float* total_S;  // direction 2: [units, F * D]
  float* total_z;  // direction 2: [units, F]
  bool all_units;
};

__device__ inline void add_to(float& acc, float x) {
  acc += x;
}
__device__ inline void add_to(float4& acc, float4 x) {
  acc.x += x.x;
  acc.y += x.y;
  acc.z += x.z;
  acc.w += x.w;
}

// T: float, or float4 where the state size is a multiple of 4 (idx then counts float4s), so that
// the scan is one wave of blocks.
template <typename T>
__global__ void scan_kernel(ScanParams p) {
  await_previous_kernel();
  constexpr int kWidth = sizeof(T) / sizeof(float);
  const int unit = blockIdx.y;
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  const int size = p.size / kWidth;
  if (idx >= size) return;
  if (!p.all_units && !unit_mode(p.s, p.window_drop, unit).use_linear) return;
  const size_t unit_at = static_cast<size_t>(unit) * p.segments * p.size;
  const T* in = reinterpret_cast<const T*>(p.sums + unit_at) + idx;
  T* base = reinterpret_cast<T*>(p.states + unit_at) + idx;
  if constexpr (kWidth == 1) {
    if (p.direction == 2) {
      float acc = 0.f;
      for (int sg = 0; sg < p.segments; ++sg)
        acc += in[static_cast<size_t>(sg) * size];
      const int FD = p.s.features * p.s.head_dim;
      if (idx < FD) {
        p.total_S[static_cast<size_t>(unit) * FD + idx] = acc;
      } else {
        p.total_z[static_cast<size_t>(unit) * p.s.features + idx - FD] = acc;
      }
      return;
    }
  }
  // Eight segments' loads are issued before their stores: one memory round trip per group.
  constexpr int kGroup = 8;
  T acc{};
  for (int step0 = 0; step0 < p.segments; step0 += kGroup) {
    T mine[kGroup];
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int step = step0 + u;
      const int sg = p.direction == 0 ? step : p.segments - 1 - step;
      mine[u] = step < p.segments ? in[static_cast<size_t>(sg) * size] : T{};
    }
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int step = step0 + u;
      if (step < p.segments) {
        const int sg = p.direction == 0 ? step : p.segments - 1 - step;
        base[static_cast<size_t>(sg) * size] = acc;
        add_to(acc, mine[u]);
      }
    }
  }
}

template <int D, int FMAX, typename T>
cudaError_t launch_forward_t(const ForwardParams& fp, cudaStream_t stream) {
  const int F = fp.s.features;
  const size_t smem =
      sizeof(float) * (static_cast<size_t>(F) * D + F + 2 * kTileRows * D + kTileRows * (F + 4));
  auto kernel = forward_kernel<D, FMAX, T>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int units = fp.s.batch * fp.s.q_heads;
  kernel<<<units * fp.segments, kThreads, smem, stream>>>(fp);
  return cudaGetLastError();
}

template <int D, typename T>
cudaError_t launch_state_pass_t(const StatePassParams& sp, int units, cudaStream_t stream) {
  const int F = sp.s.features;
  const size_t smem = sizeof(float) * (static_cast<size_t>(F) * D + F + kTileRows * (F + 4) +
                                       kTileRows * D + kTileRows);
  auto kernel = state_pass_kernel<D, T>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<units * sp.segments, kThreads, smem, stream>>>(sp);
  return cudaGetLastError();
}

}  // namespace

cudaError_t run_state_pass(const Shape& s, KernelDType dtype, const void* a, const void* bm,
                           bool bm_per_kv, const float* row_denom, const float* row_delta,
                           const uint8_t* window_drop, float* out, const SegmentPlan& plan,
                           int fixed_lag, int lag_sign, int range_end, bool all_units,
                           cudaStream_t stream) {
  StatePassParams sp{s,         a,           bm,        bm_per_kv,     row_denom,
                     row_delta, window_drop, out,       plan.segments, plan.length,
                     fixed_lag, lag_sign,    range_end, all_units};
  const int units = s.batch * s.q_heads;
  const bool bf16 = dtype == KernelDType::kBFloat16;
  if (s.head_dim == 64) {
    return bf16 ? launch_state_pass_t<64, __nv_bfloat16>(sp, units, stream)
                : launch_state_pass_t<64, float>(sp, units, stream);
  }
  return bf16 ? launch_state_pass_t<128, __nv_bfloat16>(sp, units, stream)
              : launch_state_pass_t<128, float>(sp, units, stream);
}

cudaError_t run_scan(const Shape& s, const uint8_t* window_drop, const float* sums, float* states,
                     int units, int segments, int direction, float* total_S, float* total_z,
                     bool all_units, cudaStream_t stream) {
  const int size = segment_state_floats(s);
  ScanParams sp{s,    window_drop, sums,    states,  segments,
                size, direction,   total_S, total_z, all_units};
  if (direction != 2 && size % 4 == 0 && reinterpret_cast<uintptr_t>(states) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(sums) % 16 == 0) {
    return launch_chained(scan_kernel<float4>, dim3((size / 4 + 255) / 256, units), dim3(256), 0,
                          stream, sp);
  }
  return launch_chained(scan_kernel<float>, dim3((size + 255) / 256, units), dim3(256), 0, stream,
                        sp);
}

}  // namespace detail

bool forward_uses_hopper_kernel(const ProblemShape& shape, const SegmentPlan& plan) {
  const detail::Shape s = detail::make_shape(shape);
  return unsupported_reason(shape) == nullptr && shape.dtype == KernelDType::kBFloat16 &&
         detail::forward_tc_fits(s) && detail::forward_wg_takes(s, plan);
}

bool forward_computes_maps(const ProblemShape& shape, const SegmentPlan& plan) {
  return shape.features == 128 && forward_uses_hopper_kernel(shape, plan) &&
         detail::state_pass_wg_takes(detail::make_shape(shape));
}

int launch_forward(const ProblemShape& shape, const ForwardArgs& a, void* stream_ptr) {
  using namespace detail;
  if (unsupported_reason(shape) != nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const Shape s = make_shape(shape);
  const int units = s.batch * s.q_heads;
  SegmentPlan plan = a.plan;
  if (plan.segments < 1 || plan.length < 1) plan = SegmentPlan{1, s.seq_len};
  // With the maps' weights only the Hopper chunk-state pass and forward run: they compute phi
  // from k and q themselves (forward_computes_maps implies the tensor-core Hopper path below).
  const bool mapped = a.map_q_weight != nullptr || a.map_k_weight != nullptr;
  if (mapped && (a.map_q_weight == nullptr || a.map_k_weight == nullptr ||
                 a.branch_stats != nullptr || !forward_computes_maps(shape, plan))) {
    return static_cast<int>(cudaErrorNotSupported);
  }
  // bf16 without branch statistics runs on the tensor cores; fp32 (the 1e-5 path), the
  // statistics and shapes whose tiles do not fit in shared memory stay on the CUDA cores.
  const bool tensor_cores =
      shape.dtype == KernelDType::kBFloat16 && a.branch_stats == nullptr && forward_tc_fits(s);
  const bool hopper = a.branch_stats == nullptr && forward_uses_hopper_kernel(shape, plan);
  // The passes write each segment's sum into the workspace's second half; the scan turns them
  // into start states in its first half, which the Hopper forward skips where it adds the few
  // sums before its segment itself (the sums stay for the backward either way).
  float* sums = nullptr;
  const bool hopper_sums = hopper && sums_in_kernel(plan.segments);
  auto scan = [&] {
    return run_scan(s, a.window_drop, sums, a.segment_states, units, plan.segments, 0, nullptr,
                    nullptr, false, stream);
  };
  if (plan.segments > 1) {
    if (a.segment_states == nullptr) return static_cast<int>(cudaErrorInvalidValue);
    sums = segment_sums(a.segment_states, s, units, plan.segments);
    cudaError_t err =
        mapped ? run_state_pass_wg(s, a.k, a.v, nullptr, nullptr, true, a.window_drop, sums, plan,
                                   -1, -1, s.seq_len, false,
                                   /*skip=*/plan.segments - 1, stream, a.map_k_weight)
        : tensor_cores
            ? run_state_pass_tc(s, a.phi_k, a.v, nullptr, nullptr, true, a.window_drop, sums, plan,
                                -1, -1, s.seq_len, false,
                                /*skip=*/plan.segments - 1, stream)
            : run_state_pass(s, shape.dtype, a.phi_k, a.v, true, nullptr, nullptr, a.window_drop,
                             sums, plan, -1, -1, s.seq_len, false, stream);
    if (err == cudaSuccess && !hopper_sums) err = scan();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  if (tensor_cores) {
    TcForwardArgs ta{
        a.q,           a.k, a.v,       a.phi_q,     a.phi_k,      a.coef_window,    a.coef_linear,
        a.window_drop, a.y, a.row_max, a.row_denom, a.row_argmax, a.segment_states, plan.segments,
        plan.length};
    ta.w_q = a.map_q_weight;
    ta.w_k = a.map_k_weight;
    if (hopper) {
      TcForwardArgs wa = ta;
      if (hopper_sums) {
        wa.states = sums;
        wa.sum_states = true;
      }
      cudaError_t err = run_forward_wg(s, wa, stream);
      if (err != cudaErrorNotSupported || mapped) return static_cast<int>(err);
      if (hopper_sums) {
        err = scan();
        if (err != cudaSuccess) return static_cast<int>(err);
      }
    }
    return static_cast<int>(run_forward_tc(s, ta, stream));
  }
  ForwardParams fp{s,
                   a.q,
                   a.k,
                   a.v,
                   a.phi_q,
                   a.phi_k,
                   a.coef_window,
                   a.coef_linear,
                   a.window_drop,
                   a.y,
                   a.row_max,
                   a.row_denom,
                   a.row_argmax,
                   a.branch_stats,
                   a.segment_states,
                   plan.segments,
                   plan.length};
  const bool bf16 = shape.dtype == KernelDType::kBFloat16;
  const int F = s.features;
  cudaError_t err;
#define HL_FWD(DD, FM)                                             \
  err = bf16 ? launch_forward_t<DD, FM, __nv_bfloat16>(fp, stream) \
             : launch_forward_t<DD, FM, float>(fp, stream)
  if (s.head_dim == 64) {
    if (F <= 64)
      HL_FWD(64, 64);
    else if (F <= 128)
      HL_FWD(64, 128);
    else
      HL_FWD(64, 256);
  } else {
    if (F <= 64)
      HL_FWD(128, 64);
    else if (F <= 128)
      HL_FWD(128, 128);
    else
      HL_FWD(128, 256);
  }
#undef HL_FWD
  return static_cast<int>(err);
}

int launch_prefill_state(const ProblemShape& shape, const void* phi_k, const void* v,
                         const DecodeState& state, float* workspace, const SegmentPlan& plan_in,
                         void* stream_ptr) {
  using namespace detail;
  if (unsupported_reason(shape) != nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const Shape s = make_shape(shape);
  SegmentPlan plan = plan_in;
  if (plan.segments < 1 || plan.length < 1) plan = SegmentPlan{1, s.seq_len};
  const int range_end = max(0, s.seq_len - s.window);
  cudaError_t err = shape.dtype == KernelDType::kBFloat16
                        ? run_state_pass_tc(s, phi_k, v, nullptr, nullptr, true, nullptr, workspace,
                                            plan, 0, -1, range_end, true,
                                            /*skip=*/-1, stream)
                        : run_state_pass(s, shape.dtype, phi_k, v, true, nullptr, nullptr, nullptr,
                                         workspace, plan, 0, -1, range_end, true, stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  err = run_scan(s, nullptr, workspace, workspace, s.batch * s.q_heads, plan.segments, 2, state.S,
                 state.z, true, stream);
  return static_cast<int>(err);
}

}  // namespace hl::kernels::cuda
