// Decode speed and memory against context length: one greedy token per iteration after a
// context of 1K ... 64K tokens, for a hybrid model (recurrent state) and a softmax model
// (KV cache) of the same shape. Results: bench/RESULTS.md ("Decode").
//
// CPU: the tiny preset's shape (hidden 128, 4 layers, 4 heads / 2 KV heads, float32).
// CUDA (`--device cuda` or HL_BENCH_DEVICE=cuda): a Llama-3.2-1B shape with random weights
// in bfloat16; the CUDA cases skip without a GPU.
// On CUDA, hybrid_graph times the hybrid step replayed as a CUDA graph (DecodeGraph).
//
// The decode state of a context of L tokens is set up directly rather than by prefilling L
// tokens (a softmax prefill of 64K tokens is quadratic): the KV cache holds L random
// keys/values, the recurrent state is prefilled with w tokens and then placed at position L.
// A decode step's cost depends only on the state's size and the position, so this measures
// the same work; each iteration rewinds the state to L so every step sees the same context.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "core/model/decode_graph.hpp"
#include "core/model/decoder.hpp"

namespace {

using hl::model::CausalLM;
using hl::model::DecodeCache;

struct Setup {
  std::string device = "cpu";
};
Setup g_setup;

hl::io::ModelConfig shape(bool gpu) {
  hl::io::ModelConfig config;
  config.model_type = "llama";
  config.rms_norm_eps = 1e-5;
  config.max_position_embeddings = 1 << 17;
  config.tie_word_embeddings = true;
  if (gpu) {  // Llama-3.2-1B
    config.vocab_size = 128256;
    config.hidden_size = 2048;
    config.intermediate_size = 8192;
    config.num_hidden_layers = 16;
    config.num_attention_heads = 32;
    config.num_key_value_heads = 8;
    config.head_dim = 64;
    config.rope_theta = 500000.0;
  } else {  // the tiny preset
    config.vocab_size = 259;
    config.hidden_size = 128;
    config.intermediate_size = 384;
    config.num_hidden_layers = 4;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.head_dim = 32;
    config.rope_theta = 10000.0;
  }
  return config;
}

CausalLM& model_for(const std::string& kind, bool gpu) {
  static std::map<std::string, std::unique_ptr<CausalLM>> models;
  const std::string key = kind + (gpu ? "/cuda" : "/cpu");
  auto& slot = models[key];
  if (!slot) {
    torch::manual_seed(0);
    slot = std::make_unique<CausalLM>(shape(gpu));
    if (kind == "hybrid") {
      hl::model::ConversionOptions conversion;
      conversion.window = 64;
      conversion.feature_dim = 64;
      (*slot)->convert(conversion);
    }
    if (gpu) (*slot)->to(torch::kCUDA, torch::kBFloat16);
    (*slot)->eval();
  }
  return *slot;
}

// The decode state after `context` tokens (see the file comment).
DecodeCache state_at(CausalLM& model, int64_t context, int64_t window) {
  torch::NoGradGuard no_grad;
  const auto options = model->model->embed_tokens->weight.options();
  DecodeCache cache;
  torch::Tensor prompt =
      torch::randint(0, model->config().vocab_size, {1, window},
                     torch::TensorOptions().dtype(torch::kInt64).device(options.device()));
  (void)model->decode(prompt, cache);
  const auto& c = model->config();
  for (auto& layer : cache.layers) {
    if (layer.recurrent.key_ring.defined()) {
      layer.recurrent.position = context;
    } else {
      // Room for the context plus the steps of a run, so appends never reallocate.
      layer.keys = torch::randn({1, c.num_key_value_heads, context + 64, c.head_dim}, options);
      layer.values = torch::randn({1, c.num_key_value_heads, context + 64, c.head_dim}, options);
      layer.length = context;
    }
  }
  cache.position = context;
  return cache;
}

void rewind(DecodeCache& cache, int64_t context) {
  for (auto& layer : cache.layers) {
    if (layer.recurrent.key_ring.defined())
      layer.recurrent.position = context;
    else
      layer.length = context;
  }
  cache.position = context;
}

// graph: the hybrid step through a DecodeGraph (CUDA) instead of eager decode.
void BM_Decode(benchmark::State& state, std::string kind, bool gpu, bool graph) {
  if (gpu && !torch::cuda::is_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t context = state.range(0);
  CausalLM& model = model_for(kind, gpu);
  DecodeCache cache = state_at(model, context, 64);
  torch::NoGradGuard no_grad;
  torch::Tensor token =
      torch::zeros({1, 1}, torch::TensorOptions()
                               .dtype(torch::kInt64)
                               .device(model->model->embed_tokens->weight.device()));
  std::unique_ptr<hl::model::DecodeGraph> step_graph;
  if (graph)
    step_graph = std::make_unique<hl::model::DecodeGraph>(model, cache, hl::model::ForwardOptions{},
                                                          context + 1);
  for (auto _ : state) {
    torch::Tensor logits = step_graph ? step_graph->step(token) : model->decode(token, cache);
    // Greedy choice on the host, as generation does; it also waits for the GPU.
    benchmark::DoNotOptimize(logits[0][-1].argmax().item<int64_t>());
    rewind(cache, context);
  }
  state.counters["tokens_per_s"] =
      benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["state_MiB"] = double(cache.bytes()) / (1024.0 * 1024.0);
  state.counters["kv_MiB"] = double(cache.kv_bytes()) / (1024.0 * 1024.0);
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* env = std::getenv("HL_BENCH_DEVICE")) g_setup.device = env;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string word = argv[i];
    if (word == "--device" && i + 1 < argc) {
      g_setup.device = argv[++i];
    } else if (word.rfind("--device=", 0) == 0) {
      g_setup.device = word.substr(9);
    } else {
      rest.push_back(argv[i]);
    }
  }
  int rest_count = static_cast<int>(rest.size());
  const bool gpu = g_setup.device == "cuda";
  // One token is too little work to split across threads (and spinning threads only
  // compete with each other on a loaded machine).
  if (!gpu) torch::set_num_threads(1);
  for (const std::string kind : {"softmax", "hybrid", "hybrid_graph"}) {
    if (kind == "hybrid_graph" && !gpu) continue;
    const bool graph = kind == "hybrid_graph";
    auto* bench = benchmark::RegisterBenchmark(
        ("decode/" + kind + (gpu ? "/llama1b_cuda" : "/tiny_cpu")).c_str(), BM_Decode,
        graph ? "hybrid" : kind, gpu, graph);
    bench->Unit(benchmark::kMillisecond)->ArgName("context");
    for (int64_t context : {1024, 4096, 16384, 65536})
      bench->Arg(context);
  }
  benchmark::Initialize(&rest_count, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
