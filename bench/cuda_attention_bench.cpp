// GPU benchmark of the fused hybrid-attention kernels next to the LibTorch path of the
// dispatch (Backend::chunked on CUDA tensors). Shapes of issue 5: B1 H32 d128 W64 F128 bf16 at
// N = 4K, 16K, 64K and B8 N4K. Each case: warm-up, then the median of CUDA-event timings of
// single calls (queued as do_bench queues them, see median_us); counters are microseconds,
// achieved GB/s (bytes model below) and TFLOP/s.
// Results go in bench/RESULTS.md ("Attention (CUDA)"); FlexAttention/SDPA come from
// bench/flex_baseline.py in the same device call (scripts/gpu-kernels.sh).
#include <ATen/cuda/CUDAContext.h>
#include <benchmark/benchmark.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "bench/graph_steps.hpp"
#include "kernels/attention.hpp"
#include "kernels/cuda/cuda_attention.hpp"
#include "kernels/feature_map.hpp"

namespace {

namespace hk = hl::kernels;
namespace hc = hl::kernels::cuda;
using torch::Tensor;

constexpr int64_t kHeads = 32, kDim = 128, kWindow = 64, kFeatures = 128;

struct Inputs {
  hc::RawInputs raw;
  Tensor omega;
  int64_t B, N;
};

// kv_heads below kHeads: grouped-query attention (Llama-3.2-1B has 32 q heads on 8 kv heads).
Inputs make_inputs(int64_t B, int64_t N, int64_t kv_heads = kHeads) {
  const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  Inputs in;
  in.B = B;
  in.N = N;
  in.raw.q = torch::randn({B, kHeads, N, kDim}, o);
  in.raw.k = torch::randn({B, kv_heads, N, kDim}, o);
  in.raw.v = torch::randn({B, kv_heads, N, kDim}, o);
  in.raw.phi_q = torch::softmax(torch::randn({B, kHeads, N, kFeatures}, o.dtype(torch::kFloat)), -1)
                     .to(torch::kBFloat16);
  in.raw.phi_k = torch::softmax(torch::randn({B, kHeads, N, kFeatures}, o.dtype(torch::kFloat)), -1)
                     .to(torch::kBFloat16);
  in.omega = torch::full({kHeads}, hk::kDefaultWindowFactorLogit, o.dtype(torch::kFloat));
  in.raw.coef_window = torch::sigmoid(in.omega).view({1, kHeads}).expand({B, kHeads}).contiguous();
  in.raw.coef_linear = torch::ones({B, kHeads}, o.dtype(torch::kFloat));
  return in;
}

// The median of `values` (the upper one of an even count).
double median(std::vector<double> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

// Median of `reps` event-timed calls after `warmup` calls, in microseconds, timed as
// triton.testing.do_bench times the FlexAttention baseline: the repetitions are queued back to
// back with no synchronisation between them (the host prepares call i + 1 while the GPU runs
// call i, so that the events time the GPU's work, not the host's), each after a 256 MB write
// that flushes L2.
double median_us(const std::function<void()>& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i)
    fn();
  static const Tensor flush =
      torch::empty({256 << 20}, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  std::vector<cudaEvent_t> start(reps), stop(reps);
  for (int i = 0; i < reps; ++i) {
    cudaEventCreate(&start[i]);
    cudaEventCreate(&stop[i]);
  }
  for (int i = 0; i < reps; ++i) {
    cudaMemsetAsync(flush.data_ptr(), 0, flush.numel(), stream);
    cudaEventRecord(start[i], stream);
    fn();
    cudaEventRecord(stop[i], stream);
  }
  cudaStreamSynchronize(stream);
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    float ms = 0;
    cudaEventElapsedTime(&ms, start[i], stop[i]);
    times.push_back(ms * 1e3);
    cudaEventDestroy(start[i]);
    cudaEventDestroy(stop[i]);
  }
  return median(std::move(times));
}

// Bytes that must move once: q, k, v, phi_q, phi_k in, y out (bf16), 12 B of row statistics;
// k and v once per kv head.
double forward_bytes(int64_t B, int64_t N, int64_t kv_heads = kHeads) {
  const double token_heads = static_cast<double>(B) * kHeads * N;
  const double token_kv_heads = static_cast<double>(B) * kv_heads * N;
  return token_heads * (2.0 * (2 * kDim + 2 * kFeatures) + 12.0) + token_kv_heads * 2.0 * 2 * kDim;
}
// Backward reads the forward's inputs, y and dy and writes five gradients.
double backward_bytes(int64_t B, int64_t N, int64_t kv_heads = kHeads) {
  const double token_heads = static_cast<double>(B) * kHeads * N;
  const double token_kv_heads = static_cast<double>(B) * kv_heads * N;
  return token_heads * (2.0 * (3 * kDim + 2 * kFeatures) + 2.0 * (kDim + 2 * kFeatures) + 24.0) +
         token_kv_heads * 2.0 * 4 * kDim;
}
// Useful FLOPs of the forward: window QK^T and AV (4 w d), state query and update (4 F d).
double forward_flops(int64_t B, int64_t N) {
  return static_cast<double>(B) * kHeads * N * (4.0 * kWindow * kDim + 4.0 * kFeatures * kDim);
}

void report(benchmark::State& state, double us, double bytes, double flops) {
  state.SetIterationTime(us * 1e-6);
  state.counters["us"] = us;
  state.counters["GB/s"] = bytes / (us * 1e-6) / 1e9;
  state.counters["TFLOP/s"] = flops / (us * 1e-6) / 1e12;
}

// HL_BENCH_KEY_SEGMENTS overrides the backward's key segments (0 or unset: fill the chip), to
// time the key kernels on fewer SMs.
hc::RawOptions kernel_options() {
  hc::RawOptions o;
  o.window = kWindow;
  if (const char* env = std::getenv("HL_BENCH_KEY_SEGMENTS")) o.key_segments = std::atoi(env);
  return o;
}

void BM_FusedForward(benchmark::State& state) {
  if (!torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  const Inputs in = make_inputs(state.range(0), state.range(1));
  const hc::RawOptions o = kernel_options();
  for (auto _ : state) {
    const double us = median_us([&] { hc::forward_raw(in.raw, o); }, 3, 20);
    report(state, us, forward_bytes(in.B, in.N), forward_flops(in.B, in.N));
  }
}

// The forward from q, k, v and two hedgehog maps' weights (p = 64, F = 128): second argument
// 1 computes the maps inside the kernels (phi never in memory), 0 applies them first (the fused
// map with its projection, as FeatureMap does) and runs BM_FusedForward's kernels.
// Bytes: BM_FusedForward's without phi.
void BM_ForwardWithMaps(benchmark::State& state) {
  if (!torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  Inputs in = make_inputs(state.range(0), state.range(1));
  const bool in_kernel = state.range(2) != 0;
  const auto o = in.raw.q.options();
  const Tensor w_q = torch::randn({kHeads, kDim, kFeatures / 2}, o) / std::sqrt(double(kDim));
  const Tensor w_k = torch::randn_like(w_q) / std::sqrt(double(kDim));
  hc::RawInputs raw = in.raw;
  raw.phi_q = raw.phi_k = Tensor();
  if (in_kernel) {
    raw.map_q = w_q;
    raw.map_k = w_k;
  }
  const hc::RawOptions opt = kernel_options();
  auto map = [](const Tensor& x, const Tensor& w) { return hc::hedgehog_map(x, w); };
  const torch::NoGradGuard no_grad;
  for (auto _ : state) {
    const double us = median_us(
        [&] {
          if (!in_kernel) {
            raw.phi_q = map(in.raw.q, w_q);
            raw.phi_k = map(in.raw.k, w_k);
          }
          hc::forward_raw(raw, opt);
        },
        3, 20);
    const double token_heads = static_cast<double>(in.B) * kHeads * in.N;
    report(state, us, forward_bytes(in.B, in.N) - token_heads * 2.0 * 2 * kFeatures,
           forward_flops(in.B, in.N));
  }
}

// qkv_grads false: attention transfer's backward (q, k, v frozen: no dq, dk, dv).
void fused_forward_backward(benchmark::State& state, bool qkv_grads, int64_t kv_heads = kHeads) {
  if (!torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  const Inputs in = make_inputs(state.range(0), state.range(1), kv_heads);
  hc::RawOptions o = kernel_options();
  o.query_grads = o.key_grads = qkv_grads;
  const Tensor dy = torch::randn_like(in.raw.q);
  auto step = [&] {
    const hc::RawForward f = hc::forward_raw(in.raw, o);
    hc::backward_raw(in.raw, o, f, dy);
  };
  for (auto _ : state) {
    const double us = median_us(step, 2, 10);
    report(state, us, forward_bytes(in.B, in.N, kv_heads) + backward_bytes(in.B, in.N, kv_heads),
           3.0 * forward_flops(in.B, in.N));
  }
  // What one step allocates at its peak beyond the inputs: the forward's outputs and
  // workspaces, the gradients and the backward's workspaces.
  namespace alloc = c10::cuda::CUDACachingAllocator;
  const c10::DeviceIndex device = in.raw.q.device().index();
  const int64_t before = alloc::getDeviceStats(device).allocated_bytes[0].current;
  alloc::resetPeakStats(device);
  step();
  const int64_t peak = alloc::getDeviceStats(device).allocated_bytes[0].peak;
  state.counters["step_peak_MB"] = static_cast<double>(peak - before) / 1e6;
#ifdef HL_BLOCK_TRACE
  // That last step's kernels, block by block (scripts/gpu-trace.sh).
  if (const char* dir = std::getenv("HL_TRACE_OUT")) {
    const std::string path = std::string(dir) + "/trace_B" + std::to_string(in.B) + "_N" +
                             std::to_string(in.N) + "_kv" + std::to_string(kv_heads) +
                             (qkv_grads ? "" : "_transfer") + ".txt";
    if (FILE* f = std::fopen(path.c_str(), "w")) {
      hc::write_block_trace(f);
      std::fclose(f);
    }
  }
#endif
}

void BM_FusedForwardBackward(benchmark::State& state) {
  fused_forward_backward(state, true);
}

// Grouped-query attention: the third argument is the number of kv heads; the backward sums dk
// and dv over each kv head's group of q heads.
void BM_FusedForwardBackwardGqa(benchmark::State& state) {
  fused_forward_backward(state, true, state.range(2));
}

// Its byte and FLOP rates use the full backward's model, an upper bound of this work.
void BM_FusedTransferForwardBackward(benchmark::State& state) {
  fused_forward_backward(state, false);
}

// The dispatch's LibTorch path on the GPU (chunked backend, autograd), for comparison.
void BM_LibTorchForward(benchmark::State& state) {
  if (!torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  const Inputs in = make_inputs(state.range(0), state.range(1));
  hk::AttentionOptions o;
  o.window = kWindow;
  o.backend = hk::Backend::chunked;
  const hk::AttentionInputs ai{in.raw.q,     in.raw.k,     in.raw.v,
                               in.raw.phi_q, in.raw.phi_k, in.omega.to(torch::kBFloat16),
                               Tensor()};
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    const double us = median_us([&] { hk::attention(ai, o); }, 1, 5);
    report(state, us, forward_bytes(in.B, in.N), forward_flops(in.B, in.N));
  }
}

void BM_LibTorchForwardBackward(benchmark::State& state) {
  if (!torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  const Inputs in = make_inputs(state.range(0), state.range(1));
  hk::AttentionOptions o;
  o.window = kWindow;
  o.backend = hk::Backend::chunked;
  auto leaf = [](const Tensor& t) { return t.detach().requires_grad_(true); };
  const hk::AttentionInputs ai{leaf(in.raw.q),
                               leaf(in.raw.k),
                               leaf(in.raw.v),
                               leaf(in.raw.phi_q),
                               leaf(in.raw.phi_k),
                               leaf(in.omega.to(torch::kBFloat16)),
                               Tensor()};
  const Tensor dy = torch::randn_like(in.raw.q);
  for (auto _ : state) {
    const double us = median_us([&] { hk::attention(ai, o).y.backward(dy); }, 1, 3);
    report(state, us, forward_bytes(in.B, in.N) + backward_bytes(in.B, in.N),
           3.0 * forward_flops(in.B, in.N));
  }
}

// The hedgehog feature map of one layer's queries (B1 H32, d = 128, p = 64, so F = 128 as in
// the shapes above), forward and backward through autograd as a training step runs it (the
// gradients start unset each time). Second argument: 0 the projection (LibTorch matmul) then the
// activation as LibTorch ops, 1 the same with the fused activation kernels, 2 the map with its
// projection inside one kernel each way (kernels/cuda/hedgehog_map.cu). Bytes: what 2 moves, x
// in, phi out, x and dphi in, dx out (bf16).
void BM_HedgehogFeatureMap(benchmark::State& state) {
  if (!torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  const int64_t N = state.range(0);
  const int64_t variant = state.range(1);
  constexpr int64_t kProjection = kFeatures / 2;
  const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  const Tensor x = torch::randn({1, kHeads, N, kDim}, o).requires_grad_(true);
  const Tensor w =
      (torch::randn({kHeads, kDim, kProjection}, o) / std::sqrt(double(kDim))).requires_grad_(true);
  const Tensor dphi = torch::randn({1, kHeads, N, kFeatures}, o);
  if (variant == 2 && !hc::hedgehog_map_fusable(x, w))
    return state.SkipWithError("the fused map needs an sm_90 GPU");
  for (auto _ : state) {
    const double us = median_us(
        [&] {
          x.mutable_grad() = Tensor();
          w.mutable_grad() = Tensor();
          const Tensor phi =
              variant == 2 ? hc::hedgehog_map(x, w)
                           : hk::paired_activation(torch::matmul(x, w),
                                                   hk::FeatureMapKind::hedgehog, variant == 1);
          phi.backward(dphi);
        },
        3, 20);
    const double rows = static_cast<double>(kHeads) * N;
    report(state, us, rows * 2.0 * (3 * kDim + 2 * kFeatures), 0.0);
  }
}

// One layer's hybrid attention as conversion training runs it: hedgehog maps on q and k (p = 64,
// F = 128), the attention's forward and backward through autograd from the dispatch's front door,
// gradients into both maps' weights and the window factors. Third argument: 1 q, k and v frozen
// (attention transfer), 0 trainable too. Fourth: 1 the maps as FeatureMap runs them (the fused
// map with its projection), 0 as before session 28 (LibTorch projection, fused activation, k
// repeated to the q heads). Fifth: kv heads (GQA below kHeads).
// Bytes and FLOPs: BM_FusedForwardBackward's model (the attention alone), for scale only.
void BM_LayerStepWithMaps(benchmark::State& state) {
  if (!torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  const Inputs in = make_inputs(state.range(0), state.range(1), state.range(4));
  const bool transfer = state.range(2) != 0, fused_maps = state.range(3) != 0;
  hk::FeatureMapOptions mo;
  mo.kind = hk::FeatureMapKind::hedgehog;
  mo.heads = kHeads;
  mo.head_dim = kDim;
  mo.feature_dim = kFeatures / 2;
  mo.init = hk::FeatureMapInit::kaiming_uniform;
  hk::FeatureMap map_q(mo), map_k(mo);
  map_q->to(torch::kCUDA, torch::kBFloat16);
  map_k->to(torch::kCUDA, torch::kBFloat16);
  auto input = [&](const Tensor& t) { return transfer ? t : t.detach().requires_grad_(true); };
  hk::AttentionInputs ai{input(in.raw.q), input(in.raw.k),
                         input(in.raw.v), Tensor(),
                         Tensor(),        in.omega.to(torch::kBFloat16).requires_grad_(true),
                         Tensor()};
  hk::AttentionOptions o;
  o.window = kWindow;
  o.backend = hk::Backend::cuda;
  const Tensor dy = torch::randn_like(in.raw.q);
  std::vector<Tensor> params = {map_q->weight, map_k->weight, ai.window_factor_logits};
  if (!transfer) params.insert(params.end(), {ai.q, ai.k, ai.v});
  auto unfused = [](hk::FeatureMapImpl& map, const Tensor& x) {
    const Tensor per_head = x.repeat_interleave(kHeads / x.size(1), 1);
    return hk::paired_activation(torch::matmul(per_head, map.weight), hk::FeatureMapKind::hedgehog);
  };
  auto forward = [&] {  // y of one step, the gradients unset as a training step has them
    for (Tensor& t : params)
      t.mutable_grad() = Tensor();
    if (fused_maps) return hk::attention_with_feature_maps(ai, *map_q, *map_k, o).y;
    hk::AttentionInputs with_phi = ai;
    with_phi.phi_q = unfused(*map_q, ai.q);
    with_phi.phi_k = unfused(*map_k, ai.k);
    return hk::attention(with_phi, o).y;
  };
  auto step = [&] { forward().backward(dy); };
  for (auto _ : state) {
    const double us = median_us(step, 3, 20);
    report(state, us, forward_bytes(in.B, in.N) + backward_bytes(in.B, in.N),
           3.0 * forward_flops(in.B, in.N));
  }
  // The host's share: the time to queue a step's forward, and then its backward, each with the
  // GPU idle beforehand (medians of 15 steps: this host's times vary by 2x from step to step);
  // with HL_TRACE_DIR set, a chrome trace of one step's LibTorch ops (autograd's legacy profiler).
  using Clock = std::chrono::steady_clock;
  auto us_since = [](Clock::time_point t) {
    return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
  };
  std::vector<double> fwd_us, bwd_us;
  for (int i = 0; i < 15; ++i) {
    torch::cuda::synchronize();
    auto begin = Clock::now();
    const Tensor y = forward();
    fwd_us.push_back(us_since(begin));
    torch::cuda::synchronize();
    begin = Clock::now();
    y.backward(dy);
    bwd_us.push_back(us_since(begin));
  }
  torch::cuda::synchronize();
  state.counters["host_fwd_us"] = median(fwd_us);
  state.counters["host_bwd_us"] = median(bwd_us);
  if (const char* dir = std::getenv("HL_TRACE_DIR")) {
    const std::string name = std::string(dir) + "/layer_step_" + std::to_string(in.N) + "_" +
                             std::to_string(state.range(2)) + "_" + std::to_string(state.range(3)) +
                             ".json";
    torch::autograd::profiler::RecordProfile trace(name);
    step();
    torch::cuda::synchronize();
  }
}

// One decode step per layer at position 4096 (past the window), replayed from a CUDA graph
// of 32 steps so that launch gaps do not count (bench/graph_steps.hpp). Second argument: blocks per
// head (0: the launcher's choice for this GPU).
void BM_FusedDecode(benchmark::State& state) {
  if (!torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  const int64_t B = state.range(0);
  const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  const auto f32 = o.dtype(torch::kFloat);
  hl::kernels::cuda::ProblemShape s;
  s.batch = static_cast<int>(B);
  s.q_heads = s.kv_heads = kHeads;
  s.seq_len = 1;
  s.head_dim = kDim;
  s.features = kFeatures;
  s.window = kWindow;
  s.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(kDim)));
  s.dtype = hl::kernels::cuda::KernelDType::kBFloat16;
  const Tensor q = torch::randn({B, kHeads, kDim}, o), k = torch::randn_like(q),
               v = torch::randn_like(q);
  const Tensor pq = torch::rand({B, kHeads, kFeatures}, o), pk = torch::rand_like(pq);
  const Tensor cw = torch::full({B, kHeads}, 0.1, f32), cl = torch::ones({B, kHeads}, f32);
  const Tensor S = torch::rand({B, kHeads, kFeatures, kDim}, f32),
               z = torch::rand({B, kHeads, kFeatures}, f32);
  const Tensor kr = torch::randn({B, kHeads, kWindow, kDim}, o), vr = torch::randn_like(kr);
  const Tensor pkr = torch::rand({B, kHeads, kWindow, kFeatures}, o);
  const Tensor y = torch::empty_like(q);
  hc::DecodeArgs a;
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.phi_q = pq.data_ptr();
  a.phi_k = pk.data_ptr();
  a.coef_window = cw.data_ptr<float>();
  a.coef_linear = cl.data_ptr<float>();
  a.y = y.data_ptr();
  a.position = 4096;
  // device_position 1: t read from device memory, as a model's decode graph (DecodeGraph) runs.
  const Tensor position = torch::full({1}, a.position, o.dtype(torch::kInt));
  if (state.range(2) != 0) a.position_device = position.data_ptr<int32_t>();
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  a.cluster =
      state.range(1) > 0 ? static_cast<int>(state.range(1)) : hc::decode_cluster_size(s, sms);
  state.counters["cluster"] = a.cluster;
  hc::DecodeState st;
  st.S = S.data_ptr<float>();
  st.z = z.data_ptr<float>();
  st.k_ring = kr.data_ptr();
  st.v_ring = vr.data_ptr();
  st.phik_ring = pkr.data_ptr();
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  const int rc = hc::launch_decode(s, a, st, stream);
  if (rc != 0 || cudaStreamSynchronize(stream) != cudaSuccess) {
    cudaStreamDestroy(stream);
    const std::string why = std::string("decode launch failed: ") + hc::error_string(rc);
    return state.SkipWithError(why.c_str());
  }
  for (auto _ : state) {
    const double us = hl::bench::graph_step_us(
        [&](cudaStream_t on) { hc::launch_decode(s, a, st, on); }, 32, stream);
    if (us < 0) {
      state.SkipWithError("decode graph capture failed");
      break;
    }
    const double heads = static_cast<double>(B) * kHeads;
    const double bytes = heads * (2.0 * kFeatures * kDim * 4 + 2.0 * kFeatures * 4 +
                                  kWindow * (2.0 * kDim + kFeatures) * 2);
    const double flops = heads * (4.0 * kFeatures * kDim + 4.0 * kWindow * kDim);
    report(state, us, bytes, flops);
  }
  cudaStreamDestroy(stream);
}

// Every case reports its own median time (median_us), once.
void timed(benchmark::internal::Benchmark* b) {
  b->UseManualTime()->Iterations(1)->Unit(benchmark::kMicrosecond);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->Args({1, 4096})->Args({1, 16384})->Args({1, 65536})->Args({8, 4096});
  b->ArgNames({"B", "N"})->Apply(timed);
}

}  // namespace

BENCHMARK(BM_FusedForward)->Apply(shapes);
BENCHMARK(BM_ForwardWithMaps)
    ->ArgsProduct({{1}, {4096, 16384, 65536}, {1, 0}})
    ->Args({8, 4096, 1})
    ->Args({8, 4096, 0})
    ->ArgNames({"B", "N", "in_kernel"})
    ->Apply(timed);
BENCHMARK(BM_FusedForwardBackward)->Apply(shapes);
BENCHMARK(BM_FusedTransferForwardBackward)->Apply(shapes);
BENCHMARK(BM_FusedForwardBackwardGqa)
    ->Args({1, 16384, 8})
    ->ArgNames({"B", "N", "Hkv"})
    ->Apply(timed);
BENCHMARK(BM_LibTorchForward)->Apply(shapes);
BENCHMARK(BM_LibTorchForwardBackward)
    ->Args({1, 4096})
    ->Args({1, 16384})
    ->ArgNames({"B", "N"})
    ->Apply(timed);
BENCHMARK(BM_HedgehogFeatureMap)
    ->Args({16384, 0})
    ->Args({16384, 1})
    ->Args({16384, 2})
    ->ArgNames({"N", "fused"})
    ->Apply(timed);
BENCHMARK(BM_LayerStepWithMaps)
    ->ArgsProduct({{1}, {4096, 16384}, {1, 0}, {1, 0}, {kHeads}})
    ->ArgsProduct({{1}, {16384}, {1, 0}, {1, 0}, {8}})
    ->ArgNames({"B", "N", "transfer", "fused_maps", "Hkv"})
    ->Apply(timed);
BENCHMARK(BM_FusedDecode)
    ->Args({1, 0, 0})
    ->Args({1, 0, 1})
    ->Args({1, 1, 0})
    ->Args({1, 2, 0})
    ->Args({1, 8, 0})
    ->Args({8, 0, 0})
    ->ArgNames({"B", "cluster", "device_position"})
    ->Apply(timed);

BENCHMARK_MAIN();
