// Forward + backward of hybrid attention, chunked vs reference backend, on the CPU
// (B1 H4 d64 dv64 W64 F128, float32, 2 threads). Results: bench/RESULTS.md.
//
// Peak memory: main() makes glibc serve every allocation of 1 MiB or more with its own mmap
// (a fixed M_MMAP_THRESHOLD), so large tensor buffers go back to the OS when freed and the
// resident set follows the live tensors. Each benchmark resets the kernel's high-water mark
// (/proc/self/clear_refs "5") after a warm-up iteration and reports
// peak_MiB = VmHWM - VmRSS at that point, i.e. the extra memory of one iteration.
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "kernels/attention.hpp"

namespace {

using hl::kernels::AttentionInputs;
using hl::kernels::AttentionOptions;
using hl::kernels::Backend;

constexpr int64_t kHeads = 4, kHeadDim = 64, kFeatures = 128, kWindow = 64;

// A field of /proc/self/status in KiB ("VmRSS", "VmHWM"); -1 when unavailable.
int64_t status_kib(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream values(line.substr(field.size() + 1));
      int64_t kib = -1;
      values >> kib;
      return kib;
    }
  }
  return -1;
}

bool reset_peak_rss() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";
  return static_cast<bool>(clear_refs.flush());
}

struct Problem {
  torch::Tensor q, k, v, phi_q, phi_k, omega, output_grad;
  AttentionInputs inputs() const { return {q, k, v, phi_q, phi_k, omega, {}}; }
  void clear_grads() {
    for (auto* t : {&q, &k, &v, &phi_q, &phi_k, &omega})
      t->mutable_grad() = torch::Tensor();
  }
};

Problem make_problem(int64_t length) {
  torch::manual_seed(0);
  Problem p;
  const auto shape = [&](int64_t last) { return std::vector<int64_t>{1, kHeads, length, last}; };
  p.q = torch::randn(shape(kHeadDim)).requires_grad_(true);
  p.k = torch::randn(shape(kHeadDim)).requires_grad_(true);
  p.v = torch::randn(shape(kHeadDim)).requires_grad_(true);
  // Positive features like a hedgehog map's output (softmax over the feature axis).
  p.phi_q = torch::softmax(torch::randn(shape(kFeatures)), -1).requires_grad_(true);
  p.phi_k = torch::softmax(torch::randn(shape(kFeatures)), -1).requires_grad_(true);
  p.omega = torch::full({kHeads}, hl::kernels::kDefaultWindowFactorLogit).requires_grad_(true);
  p.output_grad = torch::randn(shape(kHeadDim));
  return p;
}

void run_iteration(Problem& p, const AttentionOptions& options, bool backward) {
  if (!backward) {
    torch::NoGradGuard no_grad;
    benchmark::DoNotOptimize(hl::kernels::attention(p.inputs(), options).y.data_ptr());
    return;
  }
  auto out = hl::kernels::attention(p.inputs(), options);
  out.y.backward(p.output_grad);
  benchmark::DoNotOptimize(p.q.grad().data_ptr());
  p.clear_grads();
}

void attention_benchmark(benchmark::State& state, Backend backend, bool backward) {
  const int64_t length = state.range(0);
  Problem problem = make_problem(length);
  AttentionOptions options;
  options.window = kWindow;
  options.backend = backend;
  run_iteration(problem, options, backward);  // warm-up: thread pool, allocator

  const int64_t rss_before = status_kib("VmRSS");
  const bool peak_reset = reset_peak_rss();
  for (auto _ : state)
    run_iteration(problem, options, backward);
  const int64_t peak = status_kib("VmHWM");
  if (peak_reset && peak >= 0 && rss_before >= 0) {
    state.counters["peak_MiB"] = static_cast<double>(peak - rss_before) / 1024.0;
  }
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(length) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}

// The reference at N = 8192 would hold about a dozen [4, 8192, 8192] float32 tensors
// (~1 GiB each) for the backward pass, more than the dev VM can spare: it stops at 4096.
BENCHMARK_CAPTURE(attention_benchmark, reference_fwd_bwd, Backend::reference, true)
    ->Arg(512)
    ->Arg(2048)
    ->Arg(4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(attention_benchmark, chunked_fwd_bwd, Backend::chunked, true)
    ->Arg(512)
    ->Arg(2048)
    ->Arg(4096)
    ->Arg(8192)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(attention_benchmark, reference_fwd, Backend::reference, false)
    ->Arg(128)
    ->Arg(512)
    ->Arg(2048)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(attention_benchmark, chunked_fwd, Backend::chunked, false)
    ->Arg(128)
    ->Arg(512)
    ->Arg(2048)
    ->Arg(8192)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  // Fixed threshold (this also turns off glibc's dynamic threshold): see the file comment.
  // HL_BENCH_DEFAULT_MALLOC=1 keeps glibc's defaults, to see what the threshold costs in time
  // (peak_MiB is then unreliable: freed buffers stay resident and get reused).
  const char* default_malloc = std::getenv("HL_BENCH_DEFAULT_MALLOC");
  if (default_malloc == nullptr || std::string(default_malloc) != "1") {
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
  }
  torch::set_num_threads(2);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
