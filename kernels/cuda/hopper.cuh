// Hopper (sm_90a) building blocks (nvcc only): mbarriers, TMA tile loads and stores, warpgroup
// matrix multiply (wgmma) with shared-memory descriptors, register reallocation between
// warpgroups.
//
// Tiles in shared memory use the 128-byte swizzle that TMA writes and wgmma reads: a tile of
// rows of 64 bf16 (128 bytes) at a 1024-byte aligned base keeps the 16-byte chunk c of row r
// at chunk c ^ (r % 8). A wider matrix is stored as column blocks of 64 one after the other.
// wgmma reads such a tile either K-major (rows are M or N, 64 K values a row: Q, K, phi) or
// N-major (rows are K, 64 N values a row: V, S). The accumulator of m64nNk16 holds, per warp w
// of the warpgroup, rows 16 w + g8 and 16 w + g8 + 8 (g8 = lane / 4) as N / 8 m16n8 C tiles.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace hl::kernels::cuda::detail {

__device__ inline uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/// The first 1024-byte aligned address at or after `raw` in shared memory: 128-byte swizzled
/// tiles need that alignment, so layouts leave 1 KB of slack for it.
__device__ inline uint8_t* align_1024(uint8_t* raw) {
  return raw + ((1024 - (shared_address(raw) & 1023)) & 1023);
}

__device__ inline void st_shared_u32(uint32_t addr, uint32_t value) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(value) : "memory");
}

/// Stores four 8 x 8 bf16 matrices transposed (stmatrix .trans): register k holds matrix k's
/// element pair at row lane / 4, columns 2 (lane % 4) and + 1 (a C fragment's pair); lane l
/// gives the shared address of row l % 8 of matrix l / 8 as stored, which is its column l % 8.
__device__ inline void stsm_x4_trans(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2,
                                     uint32_t r3) {
  asm volatile(
      "stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr),
      "r"(r0), "r"(r1), "r"(r2), "r"(r3)
      : "memory");
}

// ---- mbarriers --------------------------------------------------------------------------

__device__ inline void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(bar)), "r"(count));
}

/// Makes initialised mbarriers visible to the async proxy (TMA) and the other threads.
__device__ inline void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ inline void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(shared_address(bar)) : "memory");
}

/// Arrives and announces `bytes` of TMA transactions that complete the phase.
__device__ inline void mbar_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile(
      "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(shared_address(bar)),
      "r"(bytes)
      : "memory");
}

/// Waits until the phase of parity `parity` has completed.
__device__ inline void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(shared_address(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

// ---- TMA --------------------------------------------------------------------------------

/// Box at (c0, c1, c2) of a 3-d tensor map into shared memory; completes on `bar`. Coordinates
/// outside the tensor (negative too) read as zeros.
__device__ inline void tma_load_3d(void* dst, const CUtensorMap* map, int c0, int c1, int c2,
                                   uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3, %4}], [%5];\n" ::"r"(shared_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(shared_address(bar))
      : "memory");
}

/// Box at (c0, c1, c2) of a 3-d tensor map from shared memory to global memory (rows outside
/// the tensor are dropped); part of this thread's bulk group.
__device__ inline void tma_store_3d(const CUtensorMap* map, const void* src, int c0, int c1,
                                    int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(shared_address(src)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

__device__ inline void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

/// Waits until this thread's committed bulk stores have read their shared memory.
__device__ inline void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

/// Waits until this thread's committed bulk stores are complete.
__device__ inline void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

/// Barrier `id` (1-15) over `threads` threads, e.g. one warpgroup.
__device__ inline void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/// Orders this thread's generic shared-memory writes before later async-proxy reads (wgmma
/// operands, TMA stores).
__device__ inline void fence_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---- registers --------------------------------------------------------------------------

template <int kRegs>
__device__ inline void regs_grow() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

template <int kRegs>
__device__ inline void regs_shrink() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// ---- wgmma ------------------------------------------------------------------------------

/// Descriptor of a 128-byte swizzled operand at shared address `addr` (see the file comment).
/// K-major: `stride` = bytes between 8-row groups (1024 for dense 128-byte rows); N-major: `lead`
/// = bytes between 64-column blocks, `stride` = bytes between groups of 8 K rows.
__device__ inline uint64_t swizzled_desc(uint32_t addr, uint32_t lead, uint32_t stride) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((lead & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((stride & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

/// `desc` moved `bytes` further into shared memory. The address field (bits 0-13, 16-byte units)
/// never carries into the next field, shared addresses being below 256 KB, so this is one 32-bit
/// add: descriptors of a tile's k-steps share the base's fields instead of each being built
/// from its address (~3 uniform instructions each, a fifth of the forward consumer's issue).
__device__ inline uint64_t desc_plus(uint64_t desc, uint32_t bytes) {
  const uint32_t lo = static_cast<uint32_t>(desc) + (bytes >> 4);
  return (desc & 0xFFFFFFFF00000000ull) | lo;
}

/// Bytes of one 64 x 64 bf16 column block of a swizzled tile (64 rows of 128 bytes).
constexpr int kColumnBlockBytes = 64 * 128;

/// K-major operand at `base` whose 64-column blocks are `block` bytes apart (by default
/// adjacent: rows of 128 bf16 as two column blocks), k-step ks of 16 columns.
__device__ inline uint64_t k_major(uint32_t base, int ks, int block = kColumnBlockBytes) {
  return desc_plus(swizzled_desc(base, 16, 1024), (ks / 4) * block + (ks % 4) * 32);
}

/// N-major operand at `base` whose 64-column blocks are `lead` bytes apart, k-step ks of 16 rows.
__device__ inline uint64_t n_major(uint32_t base, int ks, uint32_t lead) {
  return desc_plus(swizzled_desc(base, lead, 1024), ks * 16 * 128);
}

/// Descriptor of an unswizzled K-major operand of 8 x 8 core matrices (128 contiguous bytes
/// each): `lead` = bytes between core matrices along K, `stride` = along M or N.
__device__ inline uint64_t interleaved_desc(uint32_t addr, uint32_t lead, uint32_t stride) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((lead & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((stride & 0x3FFFF) >> 4) << 32);
}

/// Before the first wgmma that reads registers written by ordinary instructions.
__device__ inline void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ inline void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

/// Waits until at most `kPending` committed wgmma groups are still running.
template <int kPending>
__device__ inline void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

/// D[64 x 8] = A[64 x 16] B[16 x 8] (+ D when accumulate) with A and B in shared memory; TA: A is
/// M-major, TB: B is N-major.
template <int TA, int TB>
__device__ inline void wgmma_ss_n8(float (&d)[4], uint64_t desc_a, uint64_t desc_b,
                                   bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0, %1, %2, %3}, %4, %5, p, 1, 1, "
      "%7, %8;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate ? 1 : 0), "n"(TA), "n"(TB));
}

/// D[64 x 32] = A[64 x 16] B[16 x 32] (+ D when accumulate) with A and B in shared memory; TA: A is
/// M-major, TB: B is N-major.
template <int TA, int TB>
__device__ inline void wgmma_ss_n32(float (&d)[16], uint64_t desc_a, uint64_t desc_b,
                                    bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %19, %20;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate ? 1 : 0), "n"(TA), "n"(TB));
}

/// D[64 x 64] = A[64 x 16] B[16 x 64] (+ D when accumulate) with A and B in shared memory; TA: A is
/// M-major, TB: B is N-major.
template <int TA, int TB>
__device__ inline void wgmma_ss_n64(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                    bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, "
      "%27, %28, %29, %30, %31}, %32, %33, p, 1, 1, "
      "%35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate ? 1 : 0), "n"(TA), "n"(TB));
}

/// D[64 x 128] = A[64 x 16] B[16 x 128] (+ D when accumulate) with A and B in shared memory; TA: A
/// is M-major, TB: B is N-major.
template <int TA, int TB>
__device__ inline void wgmma_ss_n128(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                     bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, "
      "%27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, "
      "%45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, "
      "%63}, %64, %65, p, 1, 1, "
      "%67, %68;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate ? 1 : 0), "n"(TA), "n"(TB));
}

/// D[64 x 128] = A[64 x 16] B[16 x 128] (+ D when accumulate) with A in registers (each warp's 16
/// rows as an m16n8k16 A fragment) and B in shared memory; TB: B is N-major.
template <int TB>
__device__ inline void wgmma_rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b,
                                     bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, "
      "%27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, "
      "%45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, "
      "%63}, {%64, %65, %66, "
      "%67}, %68, p, 1, 1, %70;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate ? 1 : 0), "n"(TB));
}

/// D[64 x 64] = A[64 x 16] B[16 x 64] (+ D when accumulate) with A in registers (each warp's 16
/// rows as an m16n8k16 A fragment) and B in shared memory; TB: B is N-major.
template <int TB>
__device__ inline void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b,
                                    bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, "
      "%27, %28, %29, %30, %31}, {%32, %33, %34, "
      "%35}, %36, p, 1, 1, %38;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate ? 1 : 0), "n"(TB));
}

/// D[64 x 32] = A[64 x 16] B[16 x 32] (+ D when accumulate) with A in registers (each warp's 16
/// rows as an m16n8k16 A fragment) and B in shared memory; TB: B is N-major.
template <int TB>
__device__ inline void wgmma_rs_n32(float (&d)[16], const uint32_t (&a)[4], uint64_t desc_b,
                                    bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate ? 1 : 0), "n"(TB));
}

/// wgmma_ss_n<N> with N = 8, 32, 64 or 128 (accumulator of N / 2 registers).
template <int N, int TA, int TB>
__device__ inline void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                bool accumulate) {
  if constexpr (N == 8) {
    wgmma_ss_n8<TA, TB>(d, desc_a, desc_b, accumulate);
  } else if constexpr (N == 32) {
    wgmma_ss_n32<TA, TB>(d, desc_a, desc_b, accumulate);
  } else if constexpr (N == 64) {
    wgmma_ss_n64<TA, TB>(d, desc_a, desc_b, accumulate);
  } else {
    static_assert(N == 128, "wgmma_ss: N is 8, 32, 64 or 128");
    wgmma_ss_n128<TA, TB>(d, desc_a, desc_b, accumulate);
  }
}

/// wgmma_rs_n<N> with N = 32, 64 or 128.
template <int N, int TB>
__device__ inline void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                bool accumulate) {
  if constexpr (N == 32) {
    wgmma_rs_n32<TB>(d, a, desc_b, accumulate);
  } else if constexpr (N == 64) {
    wgmma_rs_n64<TB>(d, a, desc_b, accumulate);
  } else {
    static_assert(N == 128, "wgmma_rs: N is 32, 64 or 128");
    wgmma_rs_n128<TB>(d, a, desc_b, accumulate);
  }
}

}  // namespace hl::kernels::cuda::detail
