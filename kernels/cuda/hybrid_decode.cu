// One decode step of hybrid attention for a batch of sequences, and the host-side helpers of
// all launchers (shape checks, segment plans, workspace sizes).
//
// State convention (kernels/attention.hpp's RecurrentState): S, z hold the keys j <= t - w in
// every mode; the ring holds the last w keys. Step at position t: key t - w (ring slot t % w)
// is folded into S, z; the output combines c_l (phi_q S, phi_q . z) with the ring keys plus the
// new one (softmax terms c_w e_j, and c_l p_j when overlapping or linear-only); then the new
// key, value and phi_k replace slot t % w. One kernel, one block of 512 threads per (batch,
// q head): the block streams its S once (all of a thread's rows in flight before use), reduces
// in shared memory, and the last q-head block of a kv group to have read the folded value
// writes the kv ring slot.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/hybrid_attention_launch.hpp"
#include "kernels/cuda/hybrid_common.cuh"

namespace hl::kernels::cuda {
namespace detail {
namespace {

constexpr int kDecodeThreads = 512;
constexpr int kDecodeWarps = kDecodeThreads / 32;
// Hands the write of a kv ring slot to the last q-head block of its group to finish reading it
// (GQA). Each counter returns to zero after use, so the array needs no per-call reset; two
// decode launches must not run concurrently on one device.
constexpr int kRingTurns = 1 << 16;
__device__ unsigned int g_ring_turns[kRingTurns];

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
  for (int w = 1; w < kDecodeWarps; ++w)
    r = is_max ? fmaxf(r, red[w]) : r + red[w];
  return r;
}

// One block per (batch, q head): fold key t - w into S, z (every mode keeps them), query them,
// attend over the ring plus the new key, write y and the ring slot t % w.
template <typename T>
__global__ void __launch_bounds__(kDecodeThreads, 1) decode_kernel(DecodeParams p) {
  __shared__ float sq[128];         // q * scale
  __shared__ float spq[256];        // phi_q
  __shared__ float sa[256];         // phi_k of the folded key (0 when nothing is folded)
  __shared__ float sv[128];         // its value
  __shared__ float ssc[129];        // ring scores
  __shared__ float swt[129];        // ring weights c_w e + c_l p
  __shared__ float spart[16][128];  // per-group partial sums over D
  __shared__ float red[kDecodeWarps];
  __shared__ int last_reader;
  const Shape& s = p.s;
  const int D = s.head_dim, F = s.features, w = s.window;
  const int unit = blockIdx.x;
  const int b = unit / s.q_heads;
  const int h = unit - b * s.q_heads;
  const int group = s.q_heads / s.kv_heads;
  const int kv_unit = b * s.kv_heads + h / group;
  const UnitMode um = unit_mode(s, p.window_drop, unit);
  const bool has_state = p.st.S != nullptr;
  const int t = p.position;
  const int slot = t % w;
  const bool fold = has_state && t >= w;
  const int tid = threadIdx.x;
  const float g = p.coef_window[unit];
  const float l = p.coef_linear[unit];

  const T* q_new = static_cast<const T*>(p.q) + static_cast<size_t>(unit) * D;
  const T* k_new = static_cast<const T*>(p.k) + static_cast<size_t>(kv_unit) * D;
  const T* v_new = static_cast<const T*>(p.v) + static_cast<size_t>(kv_unit) * D;
  T* k_ring = static_cast<T*>(p.st.k_ring) + static_cast<size_t>(kv_unit) * w * D;
  T* v_ring = static_cast<T*>(p.st.v_ring) + static_cast<size_t>(kv_unit) * w * D;
  const T* pq_new =
      has_state ? static_cast<const T*>(p.phi_q) + static_cast<size_t>(unit) * F : nullptr;
  const T* pk_new =
      has_state ? static_cast<const T*>(p.phi_k) + static_cast<size_t>(unit) * F : nullptr;
  T* pk_ring =
      has_state ? static_cast<T*>(p.st.phik_ring) + static_cast<size_t>(unit) * w * F : nullptr;

  for (int e = tid; e < D; e += kDecodeThreads) {
    sq[e] = to_float(q_new[e]) * s.scale;
    sv[e] = fold ? to_float(v_ring[static_cast<size_t>(slot) * D + e]) : 0.f;
  }
  if (has_state) {
    for (int f = tid; f < F; f += kDecodeThreads) {
      spq[f] = to_float(pq_new[f]);
      sa[f] = fold ? to_float(pk_ring[static_cast<size_t>(slot) * F + f]) : 0.f;
    }
  }
  __syncthreads();
  // This block no longer reads kv ring slot `slot`: the last of the group may overwrite it.
  if (tid == 0) {
    bool last = true;
    if (group > 1) {
      __threadfence();
      unsigned int* turn = g_ring_turns + kv_unit % kRingTurns;
      last = atomicAdd(turn, 1u) == static_cast<unsigned int>(group - 1);
      if (last) atomicExch(turn, 0u);
    }
    last_reader = last ? 1 : 0;
  }

  // State: thread owns 4 columns (e4) of every 16th row (D = 128; every 32nd for D = 64);
  // all its rows are loaded before any use.
  const int cols4 = D / 4;
  const int groups = kDecodeThreads / cols4;  // 16 or 32
  const int e4 = (tid % cols4) * 4;
  const int fg = tid / cols4;
  float den_state = 0.f;
  if (has_state) {
    float* S = p.st.S + static_cast<size_t>(unit) * F * D;
    float4 num = make_float4(0.f, 0.f, 0.f, 0.f);
    constexpr int kInFlight = 8;
    for (int f0 = fg; f0 < F; f0 += kInFlight * groups) {
      float4 vals[kInFlight];
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const int f = f0 + u * groups;
        vals[u] = f < F ? *reinterpret_cast<const float4*>(S + static_cast<size_t>(f) * D + e4)
                        : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const int f = f0 + u * groups;
        if (f < F) {
          if (fold) {
            const float a = sa[f];
            vals[u].x = fmaf(a, sv[e4], vals[u].x);
            vals[u].y = fmaf(a, sv[e4 + 1], vals[u].y);
            vals[u].z = fmaf(a, sv[e4 + 2], vals[u].z);
            vals[u].w = fmaf(a, sv[e4 + 3], vals[u].w);
            *reinterpret_cast<float4*>(S + static_cast<size_t>(f) * D + e4) = vals[u];
          }
          const float pq = spq[f];
          num.x = fmaf(pq, vals[u].x, num.x);
          num.y = fmaf(pq, vals[u].y, num.y);
          num.z = fmaf(pq, vals[u].z, num.z);
          num.w = fmaf(pq, vals[u].w, num.w);
        }
      }
    }
    float dz = 0.f;
    float* z = p.st.z + static_cast<size_t>(unit) * F;
    for (int f = tid; f < F; f += kDecodeThreads) {
      float zf = z[f];
      if (fold) {
        zf += sa[f];
        z[f] = zf;
      }
      dz = fmaf(spq[f], zf, dz);
    }
    // Partial numerators per row group, summed over the groups below (D = 64 folds 32 groups
    // into 16 slots with a first add).
    __syncthreads();
    if (fg < 16) {
      spart[fg][e4] = num.x;
      spart[fg][e4 + 1] = num.y;
      spart[fg][e4 + 2] = num.z;
      spart[fg][e4 + 3] = num.w;
    }
    __syncthreads();
    if (fg >= 16) {
      spart[fg - 16][e4] += num.x;
      spart[fg - 16][e4 + 1] += num.y;
      spart[fg - 16][e4 + 2] += num.z;
      spart[fg - 16][e4 + 3] += num.w;
    }
    den_state = block_reduce(dz, red, false);  // its barriers also publish spart
  }
  float lin_num = 0.f;  // thread tid < D: c_l (phi_q S)[tid]
  if (has_state && tid < D) {
    float acc = 0.f;
    for (int r = 0; r < 16; ++r)
      acc += spart[r][tid];
    lin_num = um.use_linear ? l * acc : 0.f;
  }

  // Ring keys j0..t (the new key at j = t), one warp per key, lanes across the row.
  const bool ring_linear = um.use_linear && um.lin_lag == 0;
  const int j0 = max(0, t - w + 1);
  const int nk = t - j0 + 1;
  const int warp = tid / 32, lane = tid % 32;
  for (int jj = warp; jj < nk; jj += kDecodeWarps) {
    const int j = j0 + jj;
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
        pacc = fmaf(spq[f], p4.x,
                    fmaf(spq[f + 1], p4.y, fmaf(spq[f + 2], p4.z, fmaf(spq[f + 3], p4.w, pacc))));
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      acc += __shfl_xor_sync(kFullMask, acc, o);
      pacc += __shfl_xor_sync(kFullMask, pacc, o);
    }
    if (lane == 0) {
      ssc[jj] = acc;
      swt[jj] = ring_linear ? l * pacc : 0.f;
    }
  }
  __syncthreads();
  const bool mine = tid < nk;
  float m = 0.f, ew = 0.f;
  if (um.use_window) {
    m = block_reduce(mine ? ssc[tid] : -INFINITY, red, true);
    ew = mine ? expf(ssc[tid] - m) : 0.f;
  }
  const float lw = mine ? swt[tid] : 0.f;
  const float ew_sum = block_reduce(ew, red, false);
  const float lw_sum = block_reduce(lw, red, false);
  if (mine) swt[tid] = g * ew + lw;
  __syncthreads();

  // Weighted values: thread owns 4 columns of every `groups`-th ring key.
  {
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int jj = fg; jj < nk; jj += groups) {
      const int j = j0 + jj;
      const float4 v4 = load4((j == t ? v_new : v_ring + static_cast<size_t>(j % w) * D) + e4);
      const float c = swt[jj];
      acc.x = fmaf(c, v4.x, acc.x);
      acc.y = fmaf(c, v4.y, acc.y);
      acc.z = fmaf(c, v4.z, acc.z);
      acc.w = fmaf(c, v4.w, acc.w);
    }
    if (fg < 16) {
      spart[fg][e4] = acc.x;
      spart[fg][e4 + 1] = acc.y;
      spart[fg][e4 + 2] = acc.z;
      spart[fg][e4 + 3] = acc.w;
    }
    __syncthreads();
    if (fg >= 16) {
      spart[fg - 16][e4] += acc.x;
      spart[fg - 16][e4 + 1] += acc.y;
      spart[fg - 16][e4 + 2] += acc.z;
      spart[fg - 16][e4 + 3] += acc.w;
    }
    __syncthreads();
  }
  if (tid < D) {
    float num = lin_num;
    for (int r = 0; r < 16; ++r)
      num += spart[r][tid];
    float den = (um.use_window ? g * ew_sum : 0.f) + lw_sum +
                (has_state && um.use_linear ? l * den_state : 0.f);
    if (um.linear_only) den += s.eps;
    static_cast<T*>(p.y)[static_cast<size_t>(unit) * D + tid] = static_cast<T>(num / den);
  }

  // The new key enters slot t % w (read above only as the folded key, t - w).
  if (has_state) {
    for (int f = tid; f < F; f += kDecodeThreads)
      pk_ring[static_cast<size_t>(slot) * F + f] = pk_new[f];
  }
  if (last_reader) {
    for (int e = tid; e < D; e += kDecodeThreads) {
      k_ring[static_cast<size_t>(slot) * D + e] = k_new[e];
      v_ring[static_cast<size_t>(slot) * D + e] = v_new[e];
    }
  }
}

template <typename T>
cudaError_t launch_decode_t(const DecodeParams& dp, cudaStream_t stream) {
  const int units = dp.s.batch * dp.s.q_heads;
  decode_kernel<T><<<units, kDecodeThreads, 0, stream>>>(dp);
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
  (void)shape;
  return 1;  // the one-kernel decode keeps its partial sums in shared memory
}

int launch_decode(const ProblemShape& shape, const DecodeArgs& a, const DecodeState& state,
                  void* stream_ptr) {
  using namespace detail;
  if (unsupported_reason(shape) != nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const Shape s = make_shape(shape);
  DecodeParams dp{s,          a.q,           a.k,           a.v,           a.phi_q,
                  a.phi_k,    a.coef_window, a.coef_linear, a.window_drop, a.y,
                  a.position, state};
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
