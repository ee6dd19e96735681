// The building blocks of a fused key kernel on 32-key halves (bench/KERNEL_NOTES.md, "Next"),
// checked against a float64 reference and timed. Each key half's products, with D = F = 128:
//   scores      S = q k_h^T            m64n32, A and B K-major from shared memory
//   key side    dk^T = q^T ds_h        m64n32, A M-major (q as loaded), B = ds^T written by
//                                       stmatrix .trans from ds's C fragment ([key][row] rows)
//   linear dv   dv^T = U^T phi_k_h^T   m64n32, A M-major (U's bf16 copy, [D / 64][F][64])
//   linear dphi_k^T = U v_h^T          m64n32, A = U's fp32 C fragment packed to bf16 registers
// Inputs are random bf16 values (never zero); the check fails (exit 1) when a product's relative
// error ||out - ref|| / ||ref|| is over 1e-4: every input is exact in bf16, so what is left is
// fp32 accumulation, and a wrong operand layout gives errors of order one. Then each product
// kind's tensor rate, two warpgroups an SM issuing it from shared memory on every SM. Built as
// hl_bench_key_tile_n32 wherever nvcc is; run on the GPU machine, no arguments.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "bench/cuda_bench.cuh"
#include "kernels/cuda/hybrid_hopper.cuh"  // swizzled_offset, and hopper.cuh

namespace {

using namespace hl::kernels::cuda::detail;
using namespace hl::bench;

constexpr int kBlk = kColumnBlockBytes;  // 64 rows of 128 bytes
constexpr int kUBlock = 128 * 128;       // U's copy: 128 feature rows of one 64-column block
// Shared memory of the check (from a 1024-aligned base): q (64 rows x 128), k, v (64 keys x
// 128), phi_k (64 keys x 128 features), U's copy (two 64-column blocks of 128 rows), ds^T of
// both halves (32 keys x 64 rows each).
constexpr int kQ = 0, kK = 2 * kBlk, kV = 4 * kBlk, kPk = 6 * kBlk, kU = 8 * kBlk;
constexpr int kDsT = kU + 2 * kUBlock, kDsTBytes = 32 * 128;
constexpr int kCheckSmem = kDsT + 2 * kDsTBytes + 1024;

struct CheckParams {
  const bf16 *q, *k, *v, *phi_k;  // [64][128] each
  const float* u;                 // [128 f][128 d], values exact in bf16
  const float* ds;                // [64 rows][64 keys], exact in bf16
  float* s;                       // [2 halves][64 rows][32 keys]
  float* dk_t;                    // [2][128 d][32 keys]
  float* dv_t;                    // [2][128 d][32 keys]
  float* dphi_k_t;                // [2][64 f][32 keys] (U's rows 0-63)
};

// Element i of an m64nN accumulator of thread ct: its row and column.
__device__ inline int c_row(int ct, int i) {
  return (ct / 32) * 16 + (ct % 32) / 4 + 8 * ((i / 2) & 1);
}
__device__ inline int c_col(int ct, int i) {
  return (i / 4) * 8 + 2 * (ct % 4) + (i & 1);
}

template <int N>
__device__ void write_c(float* out, int ld, const float (&acc)[N / 2], int ct) {
#pragma unroll
  for (int i = 0; i < N / 2; ++i)
    out[c_row(ct, i) * ld + c_col(ct, i)] = acc[i];
}

// A [rows][128] bf16 matrix into shared memory as two swizzled 64-column blocks `block` apart.
__device__ void put_tile(uint8_t* smem, int off, const bf16* src, int rows, int block) {
  for (int c = threadIdx.x; c < rows * 16; c += blockDim.x) {
    const int row = c / 16, col = 8 * (c % 16);
    *reinterpret_cast<uint4*>(smem + off + swizzled_offset(row, col, block)) =
        *reinterpret_cast<const uint4*>(src + row * 128 + col);
  }
}

__global__ void __launch_bounds__(128, 1) check_kernel(const CheckParams p) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);
  const int ct = threadIdx.x;
  put_tile(smem, kQ, p.q, 64, kBlk);
  put_tile(smem, kK, p.k, 64, kBlk);
  put_tile(smem, kV, p.v, 64, kBlk);
  put_tile(smem, kPk, p.phi_k, 64, kBlk);
  for (int e = ct; e < 128 * 128; e += blockDim.x) {
    const int f = e / 128, d = e % 128;
    *reinterpret_cast<bf16*>(smem + kU + swizzled_offset(f, d, kUBlock)) =
        __float2bfloat16_rn(p.u[e]);
  }
  // ds^T of each half from ds's C fragment (rows x 32 keys), as a scores warpgroup would stage
  // it.
  const int warp = ct / 32, lane = ct % 32;
  for (int h = 0; h < 2; ++h) {
    float d[16];
#pragma unroll
    for (int i = 0; i < 16; ++i)
      d[i] = p.ds[c_row(ct, i) * 64 + 32 * h + c_col(ct, i)];
    stage_trans_n32(shared_address(smem + kDsT + h * kDsTBytes), d, 1.f, 0, warp, lane, kBlk);
  }
  fence_async_shared();  // the generic writes before the tensor cores read them
  __syncthreads();

  const uint32_t sbase = shared_address(smem);
  for (int h = 0; h < 2; ++h) {
    const uint32_t half = 32 * h * 128;  // the half's first key row (1024-aligned)
    float acc[16];
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 8; ++ks)
      wgmma_ss_n32<0, 0>(acc, k_major(sbase + kQ, ks), k_major(sbase + kK + half, ks), ks > 0);
    wgmma_commit();
    wgmma_wait<0>();
    write_c<32>(p.s + h * 64 * 32, 32, acc, ct);

    for (int mb = 0; mb < 2; ++mb) {  // 64 rows of d each
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {  // K = the chunk's 64 rows
        wgmma_ss_n32<1, 0>(acc, n_major(sbase + kQ + mb * kBlk, ks, kBlk),
                           k_major(sbase + kDsT + h * kDsTBytes, ks), ks > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      write_c<32>(p.dk_t + (h * 128 + 64 * mb) * 32, 32, acc, ct);

      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 8; ++ks) {  // K = F
        wgmma_ss_n32<1, 0>(acc, n_major(sbase + kU + mb * kUBlock, ks, kUBlock),
                           k_major(sbase + kPk + half, ks), ks > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      write_c<32>(p.dv_t + (h * 128 + 64 * mb) * 32, 32, acc, ct);
    }

    // U's rows 0-63 as a state warpgroup holds them (m64n128 C fragment), packed k-step by
    // k-step into A fragments: k-step kk takes the fragment's column blocks 2 kk and 2 kk + 1.
    float u[64];
#pragma unroll
    for (int i = 0; i < 64; ++i)
      u[i] = p.u[c_row(ct, i) * 128 + c_col(ct, i)];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      const uint32_t a[4] = {
          pack_bf16(u[8 * kk], u[8 * kk + 1]), pack_bf16(u[8 * kk + 2], u[8 * kk + 3]),
          pack_bf16(u[8 * kk + 4], u[8 * kk + 5]), pack_bf16(u[8 * kk + 6], u[8 * kk + 7])};
      wgmma_rs_n32<0>(acc, a, k_major(sbase + kV + half, kk), kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    write_c<32>(p.dphi_k_t + h * 64 * 32, 32, acc, ct);
  }
}

// ---- the check's host side ----------------------------------------------------------------

bool run_check() {
  std::mt19937 gen(20261129);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  auto random_values = [&](int n) {
    std::vector<float> x(n);
    for (float& e : x) {
      do
        e = bf16_round(dist(gen));
      while (e == 0.f);
    }
    return x;
  };
  const std::vector<float> q = random_values(64 * 128), k = random_values(64 * 128),
                           v = random_values(64 * 128), pk = random_values(64 * 128),
                           u = random_values(128 * 128), ds = random_values(64 * 64);
  std::vector<bf16*> inputs = {to_device_bf16(q), to_device_bf16(k), to_device_bf16(v),
                               to_device_bf16(pk)};
  float* u_dev = to_device(u);
  float* ds_dev = to_device(ds);
  std::vector<float> s(2 * 64 * 32), dk_t(2 * 128 * 32), dv_t(2 * 128 * 32), dpk_t(2 * 64 * 32);
  std::vector<float*> outs(4);
  for (int i = 0; i < 4; ++i) {
    const size_t n = (i == 0 ? s : i == 1 ? dk_t : i == 2 ? dv_t : dpk_t).size();
    cudaMalloc(&outs[i], n * sizeof(float));
    cudaMemset(outs[i], 0xFF, n * sizeof(float));  // NaN: an entry left unwritten shows
  }
  const CheckParams p{inputs[0], inputs[1], inputs[2], inputs[3], u_dev,
                      ds_dev,    outs[0],   outs[1],   outs[2],   outs[3]};
  cudaFuncSetAttribute(check_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kCheckSmem);
  check_kernel<<<1, 128, kCheckSmem>>>(p);
  if (cudaDeviceSynchronize() != cudaSuccess) {
    std::printf("check: CUDA error %s\n", cudaGetErrorString(cudaGetLastError()));
    return false;
  }
  std::vector<float>* hosts[4] = {&s, &dk_t, &dv_t, &dpk_t};
  for (int i = 0; i < 4; ++i) {
    cudaMemcpy(hosts[i]->data(), outs[i], hosts[i]->size() * sizeof(float), cudaMemcpyDeviceToHost);
  }
  // References in float64 from the same bf16 values.
  std::vector<double> s_ref(s.size()), dk_ref(dk_t.size()), dv_ref(dv_t.size()),
      dpk_ref(dpk_t.size());
  for (int h = 0; h < 2; ++h) {
    for (int j = 0; j < 32; ++j) {
      const int key = 32 * h + j;
      for (int i = 0; i < 64; ++i) {
        double acc = 0;
        for (int d = 0; d < 128; ++d)
          acc += double(q[i * 128 + d]) * k[key * 128 + d];
        s_ref[(h * 64 + i) * 32 + j] = acc;
      }
      for (int d = 0; d < 128; ++d) {
        double dk = 0, dv = 0;
        for (int i = 0; i < 64; ++i)
          dk += double(q[i * 128 + d]) * ds[i * 64 + key];
        for (int f = 0; f < 128; ++f)
          dv += double(u[f * 128 + d]) * pk[key * 128 + f];
        dk_ref[(h * 128 + d) * 32 + j] = dk;
        dv_ref[(h * 128 + d) * 32 + j] = dv;
      }
      for (int f = 0; f < 64; ++f) {
        double acc = 0;
        for (int d = 0; d < 128; ++d)
          acc += double(u[f * 128 + d]) * v[key * 128 + d];
        dpk_ref[(h * 64 + f) * 32 + j] = acc;
      }
    }
  }
  const char* names[4] = {"S = q k_h^T (K-major A and B)",
                          "dk^T = q^T ds_h (A M-major, ds^T by stmatrix.trans)",
                          "dv^T = U^T phi_k_h^T (A M-major from U's copy)",
                          "dphi_k^T = U v_h^T (A from U's C fragment)"};
  const std::vector<double>* refs[4] = {&s_ref, &dk_ref, &dv_ref, &dpk_ref};
  bool ok = true;
  for (int i = 0; i < 4; ++i) {
    const double err = rel_error(*hosts[i], *refs[i]);
    const bool pass = err < 1e-4;  // NaN fails too
    ok = ok && pass;
    std::printf("check %-55s rel. error %.2e  %s\n", names[i], err, pass ? "ok" : "FAILED");
  }
  for (bf16* x : inputs)
    cudaFree(x);
  for (float* x : outs)
    cudaFree(x);
  cudaFree(u_dev);
  cudaFree(ds_dev);
  return ok;
}

// ---- tensor rates -------------------------------------------------------------------------

enum class Kind { kSsN64, kSsN32, kSsN32MMajorA, kRsN32, kSsN128 };
constexpr int kRateSmem = 64 * 1024 + 1024;
constexpr int kRounds = 4000;

// Each warpgroup: rounds of eight dependent k-steps of one product kind from shared memory.
template <Kind kKind>
__global__ void __launch_bounds__(256, 1) rate_kernel(float* out, int rounds) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);
  auto* words = reinterpret_cast<uint32_t*>(smem);
  for (int i = threadIdx.x; i < 64 * 1024 / 4; i += blockDim.x)
    words[i] = pack_bf16(0.01f * (i % 7) - 0.03f, 0.01f * (i % 5) - 0.02f);
  fence_async_shared();
  __syncthreads();
  const uint32_t a = shared_address(smem), b = a + 4 * kBlk;
  constexpr int kN = kKind == Kind::kSsN64 ? 64 : kKind == Kind::kSsN128 ? 128 : 32;
  float acc[kN / 2] = {};
  uint32_t ra[4];
  for (int r = 0; r < 4; ++r)
    ra[r] = words[(threadIdx.x * 4 + r) % 1024];
  for (int round = 0; round < rounds; ++round) {
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 8; ++ks) {
      if constexpr (kKind == Kind::kSsN32MMajorA)
        wgmma_ss_n32<1, 0>(acc, n_major(a, ks, 2 * kBlk), k_major(b, ks), true);
      else if constexpr (kKind == Kind::kRsN32)
        wgmma_rs_n32<0>(acc, ra, k_major(b, ks), true);
      else
        wgmma_ss<kN, 0, 0>(acc, k_major(a, ks), k_major(b, ks), true);
    }
    wgmma_commit();
    wgmma_wait<0>();
  }
  float sum = 0.f;
  for (float x : acc)
    sum += x;
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

template <Kind kKind>
void report_rate(const char* name, int sms, float* out) {
  auto kernel = rate_kernel<kKind>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kRateSmem);
  constexpr int kN = kKind == Kind::kSsN64 ? 64 : kKind == Kind::kSsN128 ? 128 : 32;
  const double us = median_launch_us(
      [&] {
        kernel<<<sms, 256, kRateSmem>>>(out, kRounds);
        return true;
      },
      5);
  if (us < 0) {
    std::printf("rate %s: CUDA error %s\n", name, cudaGetErrorString(cudaGetLastError()));
    return;
  }
  const double flop = 2.0 * 64 * kN * 16 * 8 * kRounds * 2 * sms;  // two warpgroups an SM
  std::printf("rate %-40s %8.1f us  %6.1f TFLOP/s  %5.1f ns per k-step\n", name, us,
              flop / us * 1e-6, 1e3 * us / (8.0 * kRounds));
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess || prop.major < 9) {
    std::printf("key_tile_n32: needs an sm_90 GPU\n");
    return 0;
  }
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const bool ok = run_check();
  float* out = nullptr;
  cudaMalloc(&out, sizeof(float) * prop.multiProcessorCount * 256);
  const int sms = prop.multiProcessorCount;
  report_rate<Kind::kSsN128>("m64n128k16, A and B K-major", sms, out);
  report_rate<Kind::kSsN64>("m64n64k16, A and B K-major", sms, out);
  report_rate<Kind::kSsN32>("m64n32k16, A and B K-major", sms, out);
  report_rate<Kind::kSsN32MMajorA>("m64n32k16, A M-major", sms, out);
  report_rate<Kind::kRsN32>("m64n32k16, A in registers", sms, out);
  cudaFree(out);
  if (cudaGetLastError() != cudaSuccess) return 1;
  return ok ? 0 : 1;
}
