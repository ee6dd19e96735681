// Device helpers shared by the hybrid-attention kernels (nvcc only, no torch headers).
//
// Work layout of the CUDA-core kernels (fp32, and bf16 shapes the tensor-core kernels of
// hybrid_tc_common.cuh do not take): a block of 256 threads owns 32 rows (queries or keys);
// 8 consecutive lanes of a warp own one row. A lane owns a "blocked" slice of each
// row vector: for chunk c and u in [0, 4) the element (c * 8 + lane_in_row) * 4 + u, so the
// 8 lanes of a row read 128 contiguous bytes per chunk and whole rows are reduced with three
// shuffles.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/hybrid_attention_launch.hpp"

namespace hl::kernels::cuda::detail {

constexpr int kThreads = 256;
constexpr int kTileRows = 32;
constexpr int kLanesPerRow = 8;
constexpr unsigned kFullMask = 0xffffffffu;

/// Everything a kernel needs about the problem, by value.
struct Shape {
  int batch, q_heads, kv_heads, seq_len, head_dim, features, window;
  int mode;  // KernelMode
  bool overlap;
  float scale, eps;
};

inline Shape make_shape(const ProblemShape& p) {
  return Shape{p.batch,    p.q_heads,  p.kv_heads, p.seq_len,
               p.head_dim, p.features, p.window,   static_cast<int>(p.mode),
               p.overlap,  p.scale,    p.eps};
}

/// How one (batch, head) unit attends, after the SSD drop mask is applied.
struct UnitMode {
  bool use_window;   // softmax branch present
  bool use_linear;   // linear branch present
  int lin_lag;       // delta: key j is linear for query i when j <= i - delta
  int state_lag;     // the running state before row tile t0 holds keys j < t0 - state_lag
  bool linear_only;  // eps in the denominator
};

// The (batch, kv head) unit that q unit `unit` reads k and v from (GQA).
__device__ inline int kv_unit_of(const Shape& s, int unit) {
  const int h = unit % s.q_heads;
  return (unit / s.q_heads) * s.kv_heads + h / (s.q_heads / s.kv_heads);
}

__device__ inline UnitMode unit_mode(const Shape& s, const uint8_t* window_drop, int unit) {
  const bool dropped = window_drop != nullptr && window_drop[unit] != 0;
  UnitMode m;
  m.linear_only = dropped || s.mode == static_cast<int>(KernelMode::kLinearOnly);
  m.use_window = !m.linear_only;
  m.use_linear = m.linear_only || s.mode != static_cast<int>(KernelMode::kWindowOnly);
  m.lin_lag = (m.linear_only || s.overlap) ? 0 : s.window;
  m.state_lag = m.lin_lag > 0 ? m.lin_lag - 1 : 0;
  return m;
}

// Programmatic dependent launch (sm_90): a kernel started by launch_chained may become resident
// while the kernel before it in the stream is still finishing, which hides the launch gap. It
// calls await_previous_kernel() before its first global access, read or write, so it sees
// everything earlier kernels wrote and none of them sees its writes early; the call also lets
// the next chained kernel launch.
__device__ inline void await_previous_kernel() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
}

/// The end of segment `seg`'s rows [seg * plan.length, end): the last runs to the sequence's end,
/// so that a plan may give it more rows than the others (run_backward_tc's dataflow key plan).
__host__ __device__ inline int segment_end(const SegmentPlan& plan, int seg, int seq_len) {
  return seg == plan.segments - 1 ? seq_len : min(seq_len, (seg + 1) * plan.length);
}

/// await_previous_kernel where `wait`, else only lets the next chained kernel launch: for a
/// kernel that needs nothing from the one before it, or waits for its blocks' counters
/// (await_written) instead of for the whole grid.
__device__ inline void start_kernel(bool wait) {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  if (wait) asm volatile("griddepcontrol.wait;\n" ::: "memory");
}

// Dataflow between kernels of one stream (run_backward_tc): each warp that writes what a later
// kernel's block reads adds one to a counter once its writes are done, and that block waits for
// the count of writers instead of for the whole grid before it, so that it starts as soon as its
// own inputs are there. The counters start at zero (a memset before the first writer).

/// Every lane of the warp, after its global writes (bulk stores waited for): adds one to *counter.
__device__ inline void signal_written(unsigned* counter) {
  __threadfence();
  __syncwarp();
  if (threadIdx.x % 32 == 0)
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(counter) : "memory");
}

/// One thread: waits until *counter reaches `writers`; a barrier after it passes the writes on
/// to the block. Traps after seconds rather than hang the stream where a writer never came.
__device__ inline void await_written(const unsigned* counter, unsigned writers) {
  for (long spins = 0;; ++spins) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(counter) : "memory");
    if (v >= writers) return;
    if (spins > (1L << 26)) __trap();
    __nanosleep(100);
  }
}

/// Launches `kernel` so that it may overlap the end of the previous kernel in `stream`; the
/// kernel calls await_previous_kernel (or its two instructions) before its first global access.
/// `cluster` > 1 groups that many consecutive blocks into a thread block cluster.
template <typename Params>
cudaError_t launch_chained(void (*kernel)(Params), dim3 grid, dim3 block, size_t smem,
                           cudaStream_t stream, const Params& p, int cluster = 1) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attrs[2];
  attrs[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[0].val.programmaticStreamSerializationAllowed = 1;
  attrs[1].id = cudaLaunchAttributeClusterDimension;
  attrs[1].val.clusterDim.x = static_cast<unsigned>(cluster);
  attrs[1].val.clusterDim.y = 1;
  attrs[1].val.clusterDim.z = 1;
  cfg.attrs = attrs;
  cfg.numAttrs = cluster > 1 ? 2 : 1;
  return cudaLaunchKernelEx(&cfg, kernel, p);
}

__device__ inline float4 load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}

__device__ inline float4 load4(const __nv_bfloat16* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

__device__ inline void store4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}

__device__ inline void store4(__nv_bfloat16* p, float4 v) {
  __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y);
  __nv_bfloat162 b = __floats2bfloat162_rn(v.z, v.w);
  uint2 raw;
  raw.x = *reinterpret_cast<uint32_t*>(&a);
  raw.y = *reinterpret_cast<uint32_t*>(&b);
  *reinterpret_cast<uint2*>(p) = raw;
}

__device__ inline float to_float(float x) {
  return x;
}
__device__ inline float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
/// x rounded to T (to nearest, ties to even).
template <typename T>
__device__ inline T from_float(float x);
template <>
__device__ inline float from_float<float>(float x) {
  return x;
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/// Sum over the 32 lanes of a warp (float or double).
template <typename T>
__device__ inline T warp_sum(T x) {
  for (int o = 16; o > 0; o >>= 1)
    x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

/// dc_w and dc_l: output o of 2 x units sums its unit's n row terms (the window's for o < units,
/// then the linear's). With window_share set, the rows were computed with dl = dy . y in place of
/// the exact delta (the Hopper query kernel's hybrid units): each row's terms are then A = (W1 -
/// dl E) / D and B = (L1 - dl P) / D, and the sum takes the exact (W1 - delta E) / D = A - x e
/// and (L1 - delta P) / D = B - x p from them, with x = delta - dl = c_w A + c_l B, e = E / D
/// (window_share) and p = P / D = (1 - c_w e) / c_l. Rows whose terms are exact have x = 0 (c_w
/// A + c_l B = delta - delta), so the correction leaves them as they are.
struct CoefSumParams {
  const float* window_rows;
  const float* linear_rows;
  float* out;
  int units, n;
  const float* window_share = nullptr;  ///< [units, n] or null: the rows' terms are exact
  const float* coef_window = nullptr;   ///< [units], with window_share
  const float* coef_linear = nullptr;   ///< [units], with window_share
};

// Row terms (a, b) of dc_w and dc_l from the rows' window and linear terms, made exact with the
// window share e where p.window_share is set.
__device__ inline void coef_row_terms(const CoefSumParams& p, float cw, float cl, float a, float b,
                                      float e, double& tw, double& tl) {
  if (p.window_share == nullptr) {
    tw += a;
    tl += b;
    return;
  }
  const float x = cw * a + cl * b;
  tw += a - x * e;
  tl += b - x * (cl > 0.f ? (1.f - cw * e) / cl : 0.f);
}

// Thread 0 gets the sum of (x, y) over the block (blockDim.x a multiple of 32), in a fixed order.
__device__ inline void block_sum_pair(double& x, double& y) {
  __shared__ double warp_sums[2][32];
  x = warp_sum(x);
  y = warp_sum(y);
  if (threadIdx.x % 32 == 0) {
    warp_sums[0][threadIdx.x / 32] = x;
    warp_sums[1][threadIdx.x / 32] = y;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    x = y = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
      x += warp_sums[0][w];
      y += warp_sums[1][w];
    }
  }
}

/// Rows [begin, end) of output o's terms summed in double over the block (blockDim.x a multiple
/// of 32), in a fixed order; the result is thread 0's.
__device__ inline double coef_rows_sum(const CoefSumParams& p, int o, int begin, int end) {
  const bool window = o < p.units;
  const int unit = window ? o : o - p.units;
  const size_t base = static_cast<size_t>(unit) * p.n;
  const bool share = p.window_share != nullptr;
  const float cw = share ? p.coef_window[unit] : 0.f, cl = share ? p.coef_linear[unit] : 0.f;
  double tw = 0.0, tl = 0.0;
  for (int i = begin + static_cast<int>(threadIdx.x); i < end; i += blockDim.x) {
    // Without the share only o's own terms are read.
    const float a = share || window ? p.window_rows[base + i] : 0.f;
    const float b = share || !window ? p.linear_rows[base + i] : 0.f;
    coef_row_terms(p, cw, cl, a, b, share ? p.window_share[base + i] : 0.f, tw, tl);
  }
  block_sum_pair(tw, tl);
  return window ? tw : tl;
}

/// Both outputs of `unit` (dc_w and dc_l: o = unit and units + unit) over all its rows, by one
/// block, four rows a thread by 16-byte loads where n allows, so that enough bytes are in flight
/// for one block to finish soon; the results are thread 0's.
__device__ inline void coef_unit_sums(const CoefSumParams& p, int unit, double& dw, double& dl) {
  const size_t base = static_cast<size_t>(unit) * p.n;
  const bool share = p.window_share != nullptr, vec = p.n % 4 == 0;
  const float cw = share ? p.coef_window[unit] : 0.f, cl = share ? p.coef_linear[unit] : 0.f;
  dw = dl = 0.0;
  for (int i = 4 * static_cast<int>(threadIdx.x); i < p.n; i += 4 * blockDim.x) {
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    float4 a = zero, b = zero, e = zero;
    if (vec) {
      a = load4(p.window_rows + base + i);
      b = load4(p.linear_rows + base + i);
      if (share) e = load4(p.window_share + base + i);
    } else {
      auto at = [&](const float* x, int r) { return i + r < p.n ? x[base + i + r] : 0.f; };
      a = make_float4(at(p.window_rows, 0), at(p.window_rows, 1), at(p.window_rows, 2),
                      at(p.window_rows, 3));
      b = make_float4(at(p.linear_rows, 0), at(p.linear_rows, 1), at(p.linear_rows, 2),
                      at(p.linear_rows, 3));
      if (share) {
        e = make_float4(at(p.window_share, 0), at(p.window_share, 1), at(p.window_share, 2),
                        at(p.window_share, 3));
      }
    }
    coef_row_terms(p, cw, cl, a.x, b.x, e.x, dw, dl);
    coef_row_terms(p, cw, cl, a.y, b.y, e.y, dw, dl);
    coef_row_terms(p, cw, cl, a.z, b.z, e.z, dw, dl);
    coef_row_terms(p, cw, cl, a.w, b.w, e.w, dw, dl);
  }
  block_sum_pair(dw, dl);
}

/// Sum over the 8 lanes that own one row.
__device__ inline float row_sum(float x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  x += __shfl_xor_sync(kFullMask, x, 2);
  x += __shfl_xor_sync(kFullMask, x, 4);
  return x;
}

/// Index of element u of chunk c in a lane's blocked slice.
__device__ inline int slice_index(int c, int lane_in_row) {
  return (c * kLanesPerRow + lane_in_row) * 4;
}

/// Loads the lane's blocked slice of a global row (C chunks of 4, the first `chunks` valid).
template <int C, typename T>
__device__ inline void load_slice(float (&dst)[C * 4], const T* row, int chunks, int lane_in_row,
                                  float scale = 1.f) {
#pragma unroll
  for (int c = 0; c < C; ++c) {
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (c < chunks && row != nullptr) v = load4(row + slice_index(c, lane_in_row));
    dst[c * 4 + 0] = v.x * scale;
    dst[c * 4 + 1] = v.y * scale;
    dst[c * 4 + 2] = v.z * scale;
    dst[c * 4 + 3] = v.w * scale;
  }
}

template <int C, typename T>
__device__ inline void store_slice(T* row, const float (&src)[C * 4], int chunks, int lane_in_row,
                                   float scale = 1.f) {
#pragma unroll
  for (int c = 0; c < C; ++c) {
    if (c < chunks) {
      store4(row + slice_index(c, lane_in_row),
             make_float4(src[c * 4] * scale, src[c * 4 + 1] * scale, src[c * 4 + 2] * scale,
                         src[c * 4 + 3] * scale));
    }
  }
}

/// Partial dot product of the lane's slice with a shared-memory row (full row sum needs row_sum).
template <int C>
__device__ inline float slice_dot(const float (&a)[C * 4], const float* row, int chunks,
                                  int lane_in_row) {
  float acc = 0.f;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    if (c < chunks) {
      const float4 b = load4(row + slice_index(c, lane_in_row));
      acc = fmaf(a[c * 4 + 0], b.x, acc);
      acc = fmaf(a[c * 4 + 1], b.y, acc);
      acc = fmaf(a[c * 4 + 2], b.z, acc);
      acc = fmaf(a[c * 4 + 3], b.w, acc);
    }
  }
  return acc;
}

/// acc += w * (lane's slice of a shared-memory row).
template <int C>
__device__ inline void slice_axpy(float (&acc)[C * 4], float w, const float* row, int chunks,
                                  int lane_in_row) {
#pragma unroll
  for (int c = 0; c < C; ++c) {
    if (c < chunks) {
      const float4 b = load4(row + slice_index(c, lane_in_row));
      acc[c * 4 + 0] = fmaf(w, b.x, acc[c * 4 + 0]);
      acc[c * 4 + 1] = fmaf(w, b.y, acc[c * 4 + 1]);
      acc[c * 4 + 2] = fmaf(w, b.z, acc[c * 4 + 2]);
      acc[c * 4 + 3] = fmaf(w, b.w, acc[c * 4 + 3]);
    }
  }
}

/// Copies rows [row0, row0 + 32) of a row-major [*, width] matrix into shared memory as fp32
/// with row stride `dst_stride`; rows outside [0, row_limit) become zeros. With `divisor`,
/// row r is divided by divisor[r] (used for dy / D).
template <typename T>
__device__ inline void load_tile(float* dst, int dst_stride, const T* src, int width, int row0,
                                 int row_limit, const float* divisor = nullptr) {
  const int groups = width / 4;
  for (int idx = threadIdx.x; idx < kTileRows * groups; idx += kThreads) {
    const int rr = idx / groups;
    const int c = idx - rr * groups;
    const int row = row0 + rr;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (row >= 0 && row < row_limit) {
      v = load4(src + static_cast<size_t>(row) * width + c * 4);
      if (divisor != nullptr) {
        const float s = 1.f / divisor[row];
        v.x *= s;
        v.y *= s;
        v.z *= s;
        v.w *= s;
      }
    }
    store4(dst + rr * dst_stride + c * 4, v);
  }
}

/// S[f][e] (row stride D) += sum_r A[r][f] * Bm[r][e];  z[f] += sum_r A[r][f] * cz[r].
/// A has row stride a_stride, Bm row stride b_stride; cz == nullptr means 1.
__device__ inline void fold_fd(float* S, float* z, int F, int D, const float* A, int a_stride,
                               const float* Bm, int b_stride, const float* cz) {
  const int d4s = D / 4;
  const int d4 = threadIdx.x % d4s;
  const int f_step = kThreads / d4s;
  for (int f = threadIdx.x / d4s; f < F; f += f_step) {
    float4 acc = load4(S + f * D + d4 * 4);
    float zacc = 0.f;
#pragma unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      const float a = A[r * a_stride + f];
      const float4 b = load4(Bm + r * b_stride + d4 * 4);
      acc.x = fmaf(a, b.x, acc.x);
      acc.y = fmaf(a, b.y, acc.y);
      acc.z = fmaf(a, b.z, acc.z);
      acc.w = fmaf(a, b.w, acc.w);
      zacc = fmaf(a, cz != nullptr ? cz[r] : 1.f, zacc);
    }
    store4(S + f * D + d4 * 4, acc);
    if (d4 == 0) z[f] += zacc;
  }
}

/// St[e][f] (row stride st_stride) += sum_r Bm[r][e] * A[r][f];  z[f] += sum_r A[r][f] * cz[r].
__device__ inline void fold_df(float* St, int st_stride, float* z, int F, int D, const float* A,
                               int a_stride, const float* Bm, int b_stride, const float* cz) {
  const int f4s = F / 4;
  // A linear walk, because F / 4 need not divide the block size (F = 96, 160, ...).
  for (int idx = threadIdx.x; idx < D * f4s; idx += kThreads) {
    const int e = idx / f4s;
    const int f4 = idx - e * f4s;
    float4 acc = load4(St + e * st_stride + f4 * 4);
#pragma unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      const float b = Bm[r * b_stride + e];
      const float4 a = load4(A + r * a_stride + f4 * 4);
      acc.x = fmaf(b, a.x, acc.x);
      acc.y = fmaf(b, a.y, acc.y);
      acc.z = fmaf(b, a.z, acc.z);
      acc.w = fmaf(b, a.w, acc.w);
    }
    store4(St + e * st_stride + f4 * 4, acc);
  }
  for (int f = threadIdx.x; f < F; f += kThreads) {
    float zacc = 0.f;
    for (int r = 0; r < kTileRows; ++r)
      zacc = fmaf(A[r * a_stride + f], cz != nullptr ? cz[r] : 1.f, zacc);
    z[f] += zacc;
  }
}

}  // namespace hl::kernels::cuda::detail
