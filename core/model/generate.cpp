#include "core/model/generate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <string>

#include "core/model/decode_graph.hpp"

namespace hl::model {

Status check_sampling(const SamplingOptions& options) {
  if (!(options.temperature >= 0.0) || !std::isfinite(options.temperature))
    return make_error("temperature must be a finite number >= 0, got " +
                      std::to_string(options.temperature));
  if (options.top_k < 0)
    return make_error("top_k must be >= 0, got " + std::to_string(options.top_k));
  if (!(options.top_p > 0.0 && options.top_p <= 1.0))
    return make_error("top_p must be in (0, 1], got " + std::to_string(options.top_p));
  return Status::Ok();
}

int32_t sample_token(const torch::Tensor& logits, const SamplingOptions& options,
                     std::mt19937_64& rng) {
  assert(logits.dim() == 1);
  if (options.temperature == 0.0) return static_cast<int32_t>(logits.argmax().item<int64_t>());
  torch::Tensor scaled = logits.detach().to(torch::kCPU, torch::kFloat64) / options.temperature;
  const auto values = scaled.contiguous();
  const double* raw = values.data_ptr<double>();
  const int64_t vocab = values.numel();
  std::vector<int64_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), int64_t{0});
  // Descending by logit, ties by id, so the kept set does not depend on the sort.
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return raw[a] > raw[b]; });
  int64_t keep = options.top_k > 0 ? std::min(options.top_k, vocab) : vocab;
  std::vector<double> probs(static_cast<size_t>(keep));
  const double top = raw[order[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i)
    sum += probs[i] = std::exp(raw[order[i]] - top);
  if (options.top_p < 1.0) {
    // The smallest prefix whose probability (within the kept set) reaches p.
    double running = 0;
    int64_t cut = keep;
    for (int64_t i = 0; i < keep; ++i) {
      running += probs[i] / sum;
      if (running >= options.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    sum = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  }
  const double u = std::uniform_real_distribution<double>(0.0, sum)(rng);
  double running = 0;
  for (int64_t i = 0; i < keep; ++i) {
    running += probs[i];
    if (u < running) return static_cast<int32_t>(order[i]);
  }
  return static_cast<int32_t>(order[keep - 1]);
}

Result<GenerateResult> generate(CausalLM& model, const std::vector<int32_t>& prompt,
                                const GenerateOptions& options) {
  if (prompt.empty()) return make_error("the prompt is empty (it must hold at least one token)");
  if (auto ok = check_sampling(options.sampling); !ok.ok()) return ok.error();
  if (options.max_new_tokens < 0)
    return make_error("max_new_tokens must be >= 0, got " + std::to_string(options.max_new_tokens));
  const int64_t limit =
      options.max_context > 0 ? options.max_context : model->config().max_position_embeddings;
  const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());
  if (limit > 0 && prompt_tokens > limit)
    return make_error("the prompt has " + std::to_string(prompt_tokens) +
                      " tokens, more than the model's context of " + std::to_string(limit) +
                      " tokens");
  if (limit > 0 && prompt_tokens + options.max_new_tokens > limit)
    return make_error("the prompt (" + std::to_string(prompt_tokens) + " tokens) plus " +
                      std::to_string(options.max_new_tokens) +
                      " new tokens exceed the model's context of " + std::to_string(limit) +
                      " tokens");

  torch::NoGradGuard no_grad;
  const auto device = model->model->embed_tokens->weight.device();
  GenerateResult result;
  result.prompt_tokens = prompt_tokens;
  std::mt19937_64 rng(options.sampling.seed);
  DecodeCache cache;
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  const auto start = std::chrono::steady_clock::now();
  torch::Tensor logits = model->decode(torch::tensor(ids, torch::kInt64).view({1, -1}).to(device),
                                       cache, options.forward);
  auto decode_start = std::chrono::steady_clock::now();
  result.prefill_seconds = std::chrono::duration<double>(decode_start - start).count();
  std::unique_ptr<DecodeGraph> graph;
  bool try_graph = options.cuda_graph;
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    const int32_t token = sample_token(logits[0][-1], options.sampling, rng);
    result.tokens.push_back(token);
    const bool keep_going = !options.on_token || options.on_token(token);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) !=
        options.stop_tokens.end()) {
      result.stopped_at_stop_token = true;
      break;
    }
    if (!keep_going || i + 1 == options.max_new_tokens) break;
    const torch::Tensor next = torch::full(
        {1, 1}, int64_t{token}, torch::TensorOptions().dtype(torch::kInt64).device(device));
    if (try_graph && decode_graph_unsupported(model, cache).empty()) {
      try_graph = false;
      try {
        graph = std::make_unique<DecodeGraph>(model, cache, options.forward,
                                              prompt_tokens + options.max_new_tokens);
        result.cuda_graph = true;
      } catch (const std::invalid_argument&) {
        // A capture that failed ran nothing and left the cache as it was: decode eagerly.
      }
    }
    logits = graph ? graph->step(next) : model->decode(next, cache, options.forward);
  }
  result.decode_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - decode_start).count();
  result.cache_bytes = cache.bytes();
  result.recurrent_bytes = cache.recurrent_bytes();
  return result;
}

}  // namespace hl::model
