// One decode step of hybrid attention for a batch of sequences, and the host-side helpers of
// all launchers (shape checks, segment plans, workspace sizes).
//
// State convention (kernels/attention.hpp's RecurrentState): S, z hold the keys j <= t - w in
// every mode; the ring holds the last w keys. Step at position t: key t - w (ring slot t % w)
// is folded into S, z; the output combines c_l (phi_q S, phi_q . z) with the ring keys plus the
// new one (softmax terms c_w e_j, and c_l p_j when overlapping or linear-only); then the new
// key, value and phi_k replace slot t % w. Kernel 1 splits S by feature rows over many blocks
// (S is the bulk of the bytes) and its first split also does the ring part; kernel 2 combines
// the partial sums and writes the ring, so that no block overwrites a slot that another block
// of the same kv head still reads.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/hybrid_common.cuh"

namespace hl::kernels::cuda {
namespace detail {
namespace {

constexpr int kDecodeThreads = 128;

int decode_splits(const ProblemShape& shape) {
  const int units = shape.batch * shape.q_heads;
  const int wanted = (264 + units - 1) / units;
  return std::max(1, std::min(wanted, shape.features / 16));
}

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
  float* ws_lin;  // [units, splits, D + 1]
  float* ws_win;  // [units, splits, 2 D + 3]: m, sum e, sum l p, sum e v, sum l p v
  int splits;
  int position;
  DecodeState st;
};

__device__ inline float block_reduce(float x, float* red, bool is_max) {
  for (int o = 16; o > 0; o >>= 1) {
    const float y = __shfl_xor_sync(kFullMask, x, o);
    x = is_max ? fmaxf(x, y) : x + y;
  }
  const int warp = threadIdx.x / 32;
  __syncthreads();
  if (threadIdx.x % 32 == 0) red[warp] = x;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w)
    r = is_max ? fmaxf(r, red[w]) : r + red[w];
  return r;
}

template <typename T>
__global__ void __launch_bounds__(kDecodeThreads) decode_state_kernel(DecodeParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const Shape& s = p.s;
  const int D = s.head_dim, F = s.features, w = s.window;
  const int unit = blockIdx.x;
  const int fc = blockIdx.y;
  const int b = unit / s.q_heads;
  const int h = unit - b * s.q_heads;
  const int kv_unit = b * s.kv_heads + h / (s.q_heads / s.kv_heads);
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const bool has_state = p.st.S != nullptr;
  const int t = p.position;
  const int slot = t % w;
  float* sq = smem;       // 256: phi_q rows of this split, then q
  float* sa = sq + 256;   // 256: phi_k of the key being folded
  float* sv = sa + 256;   // 128: its value
  float* sp = sv + 128;   // 128: ring weights
  float* red = sp + 128;  // 8 + threads: partial sums, then 256 for ring scores
  const T* pq_src =
      has_state ? static_cast<const T*>(p.phi_q) + static_cast<size_t>(unit) * F : nullptr;

  if (has_state) {
    const int rows = (F + p.splits - 1) / p.splits;
    const int f0 = fc * rows;
    const int f1 = min(F, f0 + rows);
    const bool fold = t >= w;
    const T* a_src =
        static_cast<const T*>(p.st.phik_ring) + (static_cast<size_t>(unit) * w + slot) * F;
    const T* v_src =
        static_cast<const T*>(p.st.v_ring) + (static_cast<size_t>(kv_unit) * w + slot) * D;
    for (int f = f0 + threadIdx.x; f < f1; f += blockDim.x) {
      sq[f - f0] = to_float(pq_src[f]);
      sa[f - f0] = fold ? to_float(a_src[f]) : 0.f;
    }
    for (int e = threadIdx.x; e < D; e += blockDim.x)
      sv[e] = fold ? to_float(v_src[e]) : 0.f;
    __syncthreads();
    float* S = p.st.S + static_cast<size_t>(unit) * F * D;
    float* z = p.st.z + static_cast<size_t>(unit) * F;
    const int e = threadIdx.x % D;
    const int fl = threadIdx.x / D;
    const int fstep = blockDim.x / D;
    float num = 0.f;
    // Eight rows of S in flight per thread before any use: the loads are the whole cost.
    for (int f = f0 + fl; f < f1; f += 8 * fstep) {
      float vals[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int ff = f + u * fstep;
        vals[u] = ff < f1 ? S[static_cast<size_t>(ff) * D + e] : 0.f;
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int ff = f + u * fstep;
        if (ff < f1) {
          if (fold) {
            vals[u] = fmaf(sa[ff - f0], sv[e], vals[u]);
            S[static_cast<size_t>(ff) * D + e] = vals[u];
          }
          num = fmaf(sq[ff - f0], vals[u], num);
        }
      }
    }
    float den = 0.f;
    for (int f = f0 + threadIdx.x; f < f1; f += blockDim.x) {
      float zf = z[f];
      if (fold) {
        zf += sa[f - f0];
        z[f] = zf;
      }
      den = fmaf(sq[f - f0], zf, den);
    }
    den = block_reduce(den, red, false);
    red[8 + threadIdx.x] = num;
    __syncthreads();
    float* out = p.ws_lin + (static_cast<size_t>(unit) * p.splits + fc) * (D + 1);
    if (threadIdx.x < D) {
      float acc = 0.f;
      for (int r = 0; r < fstep; ++r)
        acc += red[8 + r * D + threadIdx.x];
      out[threadIdx.x] = acc;
    }
    if (threadIdx.x == 0) out[D] = den;
    __syncthreads();
  }

  // Ring part, split over the blocks of this unit (split-KV): block fc takes keys
  // [j0 + fc * per, ...) of the ring plus the new key, and leaves its window max, window sum,
  // linear sum and the two weighted value sums for kernel 2 to merge.
  const bool ring_linear = um.use_linear && um.lin_lag == 0;
  const T* qsrc = static_cast<const T*>(p.q) + static_cast<size_t>(unit) * D;
  for (int e = threadIdx.x; e < D; e += blockDim.x)
    sq[e] = to_float(qsrc[e]) * s.scale;
  if (ring_linear) {
    for (int f = threadIdx.x; f < F; f += blockDim.x)
      sa[f] = to_float(pq_src[f]);
  }
  __syncthreads();
  const int j0 = max(0, t - w + 1);
  const int nk = t - j0 + 1;
  const int per = (nk + p.splits - 1) / p.splits;
  const int kb = min(nk, fc * per);
  const int cnt = min(nk, kb + per) - kb;
  const T* k_new = static_cast<const T*>(p.k) + static_cast<size_t>(kv_unit) * D;
  const T* v_new = static_cast<const T*>(p.v) + static_cast<size_t>(kv_unit) * D;
  const T* pk_new =
      ring_linear ? static_cast<const T*>(p.phi_k) + static_cast<size_t>(unit) * F : nullptr;
  const T* k_ring = static_cast<const T*>(p.st.k_ring) + static_cast<size_t>(kv_unit) * w * D;
  const T* v_ring = static_cast<const T*>(p.st.v_ring) + static_cast<size_t>(kv_unit) * w * D;
  const T* pk_ring = ring_linear
                         ? static_cast<const T*>(p.st.phik_ring) + static_cast<size_t>(unit) * w * F
                         : nullptr;
  const float l = p.coef_linear[unit];
  // Scores and linear products: one warp per key, lanes across the row (coalesced loads).
  float* ring_sc = red + 8 + kDecodeThreads;
  float* ring_pl = ring_sc + 128;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int jj = warp; jj < cnt; jj += kDecodeThreads / 32) {
    const int j = j0 + kb + jj;
    float acc = 0.f, pacc = 0.f;
    if (um.use_window) {
      const T* kr = j == t ? k_new : k_ring + static_cast<size_t>(j % w) * D;
      for (int e = lane * 4; e < D; e += 128) {
        const float4 k4 = load4(kr + e);
        acc = fmaf(sq[e], k4.x,
                   fmaf(sq[e + 1], k4.y, fmaf(sq[e + 2], k4.z, fmaf(sq[e + 3], k4.w, acc))));
      }
    }
    if (ring_linear) {
      const T* pr = j == t ? pk_new : pk_ring + static_cast<size_t>(j % w) * F;
      for (int f = lane * 4; f < F; f += 128) {
        const float4 p4 = load4(pr + f);
        pacc = fmaf(sa[f], p4.x,
                    fmaf(sa[f + 1], p4.y, fmaf(sa[f + 2], p4.z, fmaf(sa[f + 3], p4.w, pacc))));
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      acc += __shfl_xor_sync(kFullMask, acc, o);
      pacc += __shfl_xor_sync(kFullMask, pacc, o);
    }
    if (lane == 0) {
      ring_sc[jj] = acc;
      ring_pl[jj] = pacc;
    }
  }
  __syncthreads();
  const bool mine = threadIdx.x < cnt;
  float m = 0.f, ew = 0.f;
  if (um.use_window) {
    m = block_reduce(mine ? ring_sc[threadIdx.x] : -INFINITY, red, true);
    ew = mine && m > -INFINITY ? expf(ring_sc[threadIdx.x] - m) : 0.f;
  }
  const float lw = mine && ring_linear ? l * ring_pl[threadIdx.x] : 0.f;
  const float ew_sum = block_reduce(ew, red, false);
  const float lw_sum = block_reduce(lw, red, false);
  sp[threadIdx.x] = ew;
  sv[threadIdx.x] = lw;  // sv is free once the fold is done
  __syncthreads();
  float* out = p.ws_win + (static_cast<size_t>(unit) * p.splits + fc) * (2 * D + 3);
  for (int e = threadIdx.x; e < D; e += blockDim.x) {
    float accw = 0.f, accl = 0.f;
#pragma unroll 4
    for (int jj = 0; jj < cnt; ++jj) {
      const int j = j0 + kb + jj;
      const float val = to_float((j == t ? v_new : v_ring + static_cast<size_t>(j % w) * D)[e]);
      accw = fmaf(sp[jj], val, accw);
      accl = fmaf(sv[jj], val, accl);
    }
    out[3 + e] = accw;
    out[3 + D + e] = accl;
  }
  if (threadIdx.x == 0) {
    out[0] = cnt > 0 && um.use_window ? m : -INFINITY;
    out[1] = ew_sum;
    out[2] = lw_sum;
  }
}

template <typename T>
__global__ void __launch_bounds__(kDecodeThreads) decode_combine_kernel(DecodeParams p) {
  const Shape& s = p.s;
  const int D = s.head_dim, F = s.features, w = s.window;
  const int unit = blockIdx.x;
  const int b = unit / s.q_heads;
  const int h = unit - b * s.q_heads;
  const int group = s.q_heads / s.kv_heads;
  const int kv_unit = b * s.kv_heads + h / group;
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const bool has_state = p.st.S != nullptr;
  const int slot = p.position % w;
  const float l = p.coef_linear[unit];
  const float g = p.coef_window[unit];
  const float* ring = p.ws_win + static_cast<size_t>(unit) * p.splits * (2 * D + 3);
  float mmax = -INFINITY;
  for (int c = 0; c < p.splits; ++c)
    mmax = fmaxf(mmax, ring[c * (2 * D + 3)]);
  for (int e = threadIdx.x; e < D; e += blockDim.x) {
    float num = 0.f, den = 0.f;
    for (int c = 0; c < p.splits; ++c) {
      const float* part = ring + c * (2 * D + 3);
      const float scale = part[0] > -INFINITY ? g * expf(part[0] - mmax) : 0.f;
      num += scale * part[3 + e] + part[3 + D + e];
      den += scale * part[1] + part[2];
    }
    if (has_state && um.use_linear) {
      const float* lin = p.ws_lin + static_cast<size_t>(unit) * p.splits * (D + 1);
      float sn = 0.f, sd = 0.f;
      for (int c = 0; c < p.splits; ++c) {
        sn += lin[c * (D + 1) + e];
        sd += lin[c * (D + 1) + D];
      }
      num = fmaf(l, sn, num);
      den = fmaf(l, sd, den);
    }
    if (um.linear_only) den += s.eps;
    static_cast<T*>(p.y)[static_cast<size_t>(unit) * D + e] = static_cast<T>(num / den);
  }
  if (has_state) {
    T* pk_ring = static_cast<T*>(p.st.phik_ring) + (static_cast<size_t>(unit) * w + slot) * F;
    const T* pk_new = static_cast<const T*>(p.phi_k) + static_cast<size_t>(unit) * F;
    for (int f = threadIdx.x; f < F; f += blockDim.x)
      pk_ring[f] = pk_new[f];
  }
  if (h % group == 0) {
    T* kr = static_cast<T*>(p.st.k_ring) + (static_cast<size_t>(kv_unit) * w + slot) * D;
    T* vr = static_cast<T*>(p.st.v_ring) + (static_cast<size_t>(kv_unit) * w + slot) * D;
    const T* kn = static_cast<const T*>(p.k) + static_cast<size_t>(kv_unit) * D;
    const T* vn = static_cast<const T*>(p.v) + static_cast<size_t>(kv_unit) * D;
    for (int e = threadIdx.x; e < D; e += blockDim.x) {
      kr[e] = kn[e];
      vr[e] = vn[e];
    }
  }
}

template <typename T>
cudaError_t launch_decode_t(const DecodeParams& dp, cudaStream_t stream) {
  const int units = dp.s.batch * dp.s.q_heads;
  const size_t smem = sizeof(float) * (256 + 256 + 128 + 128 + 8 + kDecodeThreads + 256);
  decode_state_kernel<T><<<dim3(units, dp.splits), kDecodeThreads, smem, stream>>>(dp);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  decode_combine_kernel<T><<<units, kDecodeThreads, 0, stream>>>(dp);
  return cudaGetLastError();
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
  length = (length + detail::kTileRows - 1) / detail::kTileRows * detail::kTileRows;
  return SegmentPlan{(seq_len + length - 1) / length, length};
}

size_t state_workspace_floats(const ProblemShape& shape, int units, const SegmentPlan& plan) {
  if (plan.segments <= 1) return 0;
  return static_cast<size_t>(units) * plan.segments *
         (static_cast<size_t>(shape.features) * shape.head_dim + shape.features);
}

size_t decode_workspace_floats(const ProblemShape& shape) {
  const size_t units = static_cast<size_t>(shape.batch) * shape.q_heads;
  return units * detail::decode_splits(shape) * (3 * shape.head_dim + 4);
}

int launch_decode(const ProblemShape& shape, const DecodeArgs& a, const DecodeState& state,
                  void* stream_ptr) {
  using namespace detail;
  if (unsupported_reason(shape) != nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const Shape s = make_shape(shape);
  const int units = s.batch * s.q_heads;
  const int splits = decode_splits(shape);
  float* ws_lin = a.workspace;
  float* ws_win = ws_lin + static_cast<size_t>(units) * splits * (s.head_dim + 1);
  DecodeParams dp{s,       a.q,           a.k,           a.v,           a.phi_q,
                  a.phi_k, a.coef_window, a.coef_linear, a.window_drop, a.y,
                  ws_lin,  ws_win,        splits,        a.position,    state};
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
