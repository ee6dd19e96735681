// `bench attention`: times forward and forward+backward of every attention backend that
// can run here, on random inputs, with phi given and with hedgehog maps computing it, and
// prints a table. The recorded benchmarks live in
// bench/; this is the quick check a user runs on their own machine.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>

#include "app/cli/arg_parser.hpp"
#include "app/cli/commands.hpp"
#include "kernels/attention.hpp"
#include "kernels/feature_map.hpp"

namespace hl::cli {

namespace {

struct Shape {
  int64_t batch, heads, head_dim, window, features;
};

double median_ms(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

}  // namespace

int cmd_bench(const Args& args) {
  ArgParser parser("bench", "Benchmark attention backends on random inputs.");
  parser.positional("WHAT", "what to benchmark: attention")
      .option("--device", "cpu|cuda", "device", "cpu")
      .option("--seq", "N", "sequence lengths", std::nullopt, true)
      .option("--repeats", "R", "timed repetitions per case (median reported)", "5");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  if (parser.get("WHAT") != "attention") {
    return report_bad_input(
        "bench", "unknown benchmark '" + parser.get("WHAT") + "' (available: attention)");
  }
  const std::string device_name = parser.get("--device");
  if (device_name != "cpu" && device_name != "cuda") {
    return report_bad_input("bench", "--device must be cpu or cuda, got '" + device_name + "'");
  }
  if (device_name == "cuda" && !torch::cuda::is_available()) {
    return report_bad_input("bench", "--device cuda asked for, but no CUDA GPU is available");
  }
  auto repeats = parse_int_arg("--repeats", parser.get("--repeats"), 1);
  if (!repeats.ok()) return report_bad_input("bench", repeats.error().to_string());
  std::vector<int64_t> lengths;
  for (const auto& word : parser.get_all("--seq")) {
    auto n = parse_int_arg("--seq", word, 1);
    if (!n.ok()) return report_bad_input("bench", n.error().to_string());
    lengths.push_back(*n);
  }
  const torch::Device device(device_name == "cuda" ? torch::kCUDA : torch::kCPU);
  const bool gpu = device.is_cuda();
  if (lengths.empty())
    lengths = gpu ? std::vector<int64_t>{4096, 16384} : std::vector<int64_t>{512, 2048};
  const Shape shape = gpu ? Shape{1, 32, 128, 64, 128} : Shape{1, 4, 64, 64, 128};
  const auto dtype = gpu ? torch::kBFloat16 : torch::kFloat32;
  std::vector<kernels::Backend> backends = {kernels::Backend::reference, kernels::Backend::chunked};
  if (gpu) backends.push_back(kernels::Backend::cuda);

  std::printf("hybrid attention, B%lld H%lld d%lld W%lld F%lld %s on %s (median of %lld)\n",
              (long long)shape.batch, (long long)shape.heads, (long long)shape.head_dim,
              (long long)shape.window, (long long)shape.features, gpu ? "bf16" : "fp32",
              device_name.c_str(), (long long)*repeats);
  std::printf(
      "phi: given (the attention alone), or hedgehog maps with p = %lld computed from q and\n"
      "k as a converted layer runs them (forward as evaluation, fwd+bwd as training)\n",
      (long long)(shape.features / 2));
  std::printf("%8s  %-10s %-9s %14s %14s\n", "N", "backend", "phi", "forward ms", "fwd+bwd ms");
  auto opts = torch::TensorOptions().dtype(dtype).device(device);
  kernels::FeatureMapOptions map_options;
  map_options.heads = shape.heads;
  map_options.head_dim = shape.head_dim;
  map_options.feature_dim = shape.features / 2;
  map_options.init = kernels::FeatureMapInit::kaiming_uniform;
  kernels::FeatureMap map_q(map_options), map_k(map_options);
  map_q->to(device, dtype);
  map_k->to(device, dtype);
  for (int64_t n : lengths) {
    auto make = [&](int64_t last) {
      return torch::randn({shape.batch, shape.heads, n, last}, opts).requires_grad_(true);
    };
    kernels::AttentionInputs raw{make(shape.head_dim), make(shape.head_dim), make(shape.head_dim)};
    raw.window_factor_logits =
        torch::full({shape.heads}, kernels::kDefaultWindowFactorLogit, opts.dtype(torch::kFloat32))
            .requires_grad_(true);
    kernels::AttentionInputs given = raw;
    given.phi_q =
        torch::rand({shape.batch, shape.heads, n, shape.features}, opts).requires_grad_(true);
    given.phi_k =
        torch::rand({shape.batch, shape.heads, n, shape.features}, opts).requires_grad_(true);
    for (auto backend : backends) {
      kernels::AttentionOptions options;
      options.window = shape.window;
      options.backend = backend;
      // The forward without a graph, then forward and backward; the first round warms up.
      auto time_case = [&](const char* phi, const std::function<torch::Tensor()>& forward_only,
                           const std::function<torch::Tensor()>& forward_for_training) {
        std::vector<double> forward, both;
        try {
          for (int64_t r = 0; r <= *repeats; ++r) {
            synchronize(device);
            auto t0 = std::chrono::steady_clock::now();
            {
              torch::NoGradGuard no_grad;
              forward_only();
            }
            synchronize(device);
            auto t1 = std::chrono::steady_clock::now();
            forward_for_training().sum().backward();
            synchronize(device);
            auto t2 = std::chrono::steady_clock::now();
            if (r == 0) continue;
            forward.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
            both.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
          }
          std::printf("%8lld  %-10s %-9s %14.3f %14.3f\n", (long long)n,
                      std::string(kernels::to_string(backend)).c_str(), phi, median_ms(forward),
                      median_ms(both));
        } catch (const std::exception&) {
          std::printf("%8lld  %-10s %-9s %29s\n", (long long)n,
                      std::string(kernels::to_string(backend)).c_str(), phi, "not available");
        }
        std::fflush(stdout);
      };
      auto attend_given = [&] { return kernels::attention(given, options).y; };
      time_case("given", attend_given, attend_given);
      time_case(
          "hedgehog",
          [&] { return kernels::attention_with_feature_maps(raw, *map_q, *map_k, options).y; },
          [&] {
            return kernels::attention(kernels::with_feature_maps(raw, *map_q, *map_k), options).y;
          });
    }
  }
  return kExitOk;
}

}  // namespace hl::cli
