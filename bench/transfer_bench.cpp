// Attention-transfer training throughput (tokens/s): one optimiser step as `run` takes it in
// stage attention_transfer (teacher softmax and hybrid student in every converted layer,
// output MSE, backward into feature maps and window factors, AdamW), with the attention
// dispatch on its automatic backend next to the same step on the quadratic reference.
//
// Shapes: the tiny pretrain preset on the CPU (seq 128 as in demo.toml, and 1024), and a
// Llama-3.2-1B shape (random weights, bfloat16) at seq 1024 on CUDA when a GPU is present.
// HL_BENCH_DEVICE=cpu|cuda overrides the device. Results: bench/RESULTS.md.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/model/autocast.hpp"
#include "core/model/decoder.hpp"
#include "core/model/step_graph.hpp"
#include "core/train/adamw.hpp"
#include "core/train/objectives.hpp"

namespace {

using hl::kernels::Backend;

hl::io::ModelConfig shape(bool one_b) {
  hl::io::ModelConfig c;
  c.model_type = "llama";
  c.architectures = {"LlamaForCausalLM"};
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  if (one_b) {  // Llama-3.2-1B: 16 layers, 2048 wide, 32 q / 8 kv heads of 64
    c.vocab_size = 128256;
    c.hidden_size = 2048;
    c.intermediate_size = 8192;
    c.num_hidden_layers = 16;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 8;
    c.head_dim = 64;
    c.rope_theta = 500000.0;
    c.max_position_embeddings = 131072;
  } else {  // pretrain --preset tiny
    c.vocab_size = 259;
    c.hidden_size = 128;
    c.intermediate_size = 384;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 32;
    c.rope_theta = 10000.0;
    c.max_position_embeddings = 1024;
  }
  return c;
}

torch::Device bench_device() {
  const char* env = std::getenv("HL_BENCH_DEVICE");
  if (env && std::string(env) == "cpu") return torch::kCPU;
  if (env && std::string(env) == "cuda") return torch::kCUDA;
  return torch::cuda::is_available() ? torch::kCUDA : torch::kCPU;
}

// args: one_b (0/1), seq_len, batch, backend (0 automatic, 1 reference), autocast (0: bf16
// weights on CUDA; 1: fp32 weights with bf16 autocast, as `[model] autocast = "bfloat16"`),
// graph (1: the whole step captured once as a CUDA graph and replayed, which takes the host's
// time out of it: what is left is the GPU's, as `run` replays its steps on CUDA)
void BM_AttentionTransferStep(benchmark::State& state) {
  const bool one_b = state.range(0) != 0;
  const int64_t seq = state.range(1), batch = state.range(2);
  const Backend backend = state.range(3) == 0 ? Backend::automatic : Backend::reference;
  const bool autocast = state.range(4) != 0;
  const bool graph = state.range(5) != 0;
  const torch::Device device = one_b ? torch::Device(torch::kCUDA) : bench_device();
  if (device.is_cuda() && !torch::cuda::is_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const torch::Dtype dtype = device.is_cuda() && !autocast ? torch::kBFloat16 : torch::kFloat32;
  torch::manual_seed(0);
  hl::model::CausalLM model(shape(one_b));
  hl::model::ConversionOptions conversion;
  conversion.window = 64;
  conversion.feature_dim = 64;
  model->convert(conversion);
  model->to(device, dtype);
  std::vector<torch::Tensor> trainable;
  for (auto& item : model->named_parameters()) {
    const bool train = item.key().find("feature_map") != std::string::npos ||
                       item.key().find("window_factors") != std::string::npos;
    item.value().requires_grad_(train);
    if (train) trainable.push_back(item.value());
  }
  // For comparisons: HL_BENCH_UNFUSED_ADAMW=1 takes torch's AdamW instead of the fused
  // update; HL_BENCH_READ_LOSS_FIRST=1 reads the loss before the backward is queued.
  auto env_is_1 = [](const char* name) {
    const char* value = std::getenv(name);
    return value != nullptr && std::string(value) == "1";
  };
  const bool read_loss_first = env_is_1("HL_BENCH_READ_LOSS_FIRST");
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (env_is_1("HL_BENCH_UNFUSED_ADAMW"))
    optimizer = std::make_unique<torch::optim::AdamW>(trainable, torch::optim::AdamWOptions(1e-2));
  else
    optimizer = std::make_unique<hl::train::AdamW>(trainable, torch::optim::AdamWOptions(1e-2));
  const torch::Tensor tokens = torch::randint(0, shape(one_b).vocab_size, {batch, seq},
                                              torch::TensorOptions(device).dtype(torch::kLong));

  // The host's time for each part of a step (the part that reads the loss also waits for the
  // GPU to get there): where the host decides the step, this says which part to make cheaper.
  using Clock = std::chrono::steady_clock;
  double host_forward = 0, host_backward = 0, host_optimizer = 0;
  auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  // captured: no zero_grad (the captured backward writes the gradients it made at the capture)
  // and no read of the loss (a synchronisation, which a capture may not contain).
  auto step = [&](bool captured = false) {
    Clock::time_point t = Clock::now();
    std::vector<hl::model::TransferPair> pairs;
    hl::model::ForwardOptions options;
    options.transfer = &pairs;
    options.stop_after_layer = model->converted_layers().back();
    options.backend = backend;
    std::optional<hl::model::AutocastScope> scope;
    if (autocast) scope.emplace(torch::kBFloat16);
    model->hidden_states(tokens, options);
    hl::train::TransferLoss loss = hl::train::transfer_loss(pairs, 1.0, 0.0);
    scope.reset();
    if (read_loss_first && !captured) (void)hl::train::transfer_loss_values(loss.logged);
    host_forward += seconds_since(t);
    t = Clock::now();
    if (!captured) optimizer->zero_grad();
    loss.total.backward();
    if (!read_loss_first && !captured)
      (void)hl::train::transfer_loss_values(loss.logged);  // as `run` does
    host_backward += seconds_since(t);
    t = Clock::now();
    optimizer->step();
    host_optimizer += seconds_since(t);
  };
  step();  // warm-up: allocator, kernels
  if (device.is_cuda()) torch::cuda::synchronize();
  std::function<void()> iteration = [&] { step(); };
  std::unique_ptr<hl::model::StepGraph> captured;
  std::shared_ptr<void> graph_stream;
  if (graph) {
    auto* fused = dynamic_cast<hl::train::AdamW*>(optimizer.get());
    if (const std::string why = hl::model::StepGraph::unsupported(device); !why.empty() || !fused) {
      state.SkipWithError(("graph:1: " + (why.empty() ? "needs hl::train::AdamW" : why)).c_str());
      return;
    }
    // Warm-up steps on the graph's stream first, then the gradients set to none, so that the
    // captured backward makes them (as `run` does).
    captured = std::make_unique<hl::model::StepGraph>(device);
    graph_stream = captured->use_stream();
    for (int i = 0; i < 3; ++i)
      step();
    for (auto& p : trainable)
      p.mutable_grad() = torch::Tensor();
    try {
      captured->capture([&] { step(/*captured=*/true); });
    } catch (const std::exception& e) {
      state.SkipWithError(e.what());
      return;
    }
    iteration = [&] {
      fused->before_replay();
      captured->replay();
    };
  }
  host_forward = host_backward = host_optimizer = 0;
  for (auto _ : state) {
    iteration();
    if (device.is_cuda()) torch::cuda::synchronize();
  }
  if (!graph) {
    const double steps = double(state.iterations());
    state.counters["host_fwd_ms"] = 1e3 * host_forward / steps;
    state.counters["host_bwd_ms"] = 1e3 * host_backward / steps;
    state.counters["host_opt_ms"] = 1e3 * host_optimizer / steps;
  }
  state.counters["trainable"] = double(trainable.size());
  state.counters["tokens_per_s"] =
      benchmark::Counter(double(batch * seq), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(one_b ? "llama-3.2-1b-shape " : "tiny ") +
                 (autocast                    ? "fp32+autocast "
                  : dtype == torch::kBFloat16 ? "bf16 "
                                              : "fp32 ") +
                 (device.is_cuda() ? "cuda " : "cpu ") +
                 (backend == Backend::automatic ? "automatic" : "reference") +
                 (graph ? " graph" : ""));
}

BENCHMARK(BM_AttentionTransferStep)
    ->ArgNames({"1b", "seq", "batch", "reference", "autocast", "graph"})
    ->Args({0, 128, 8, 0, 0, 0})
    ->Args({0, 128, 8, 1, 0, 0})
    ->Args({0, 1024, 1, 0, 0, 0})
    ->Args({0, 1024, 1, 1, 0, 0})
    ->Args({1, 1024, 1, 0, 0, 0})
    ->Args({1, 1024, 1, 1, 0, 0})
    ->Args({1, 1024, 1, 0, 1, 0})
    ->Args({1, 1024, 1, 1, 1, 0})
    ->Args({1, 1024, 1, 0, 0, 1})
    ->Args({1, 1024, 1, 0, 1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
