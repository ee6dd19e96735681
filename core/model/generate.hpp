// Text generation: greedy and sampled (temperature, top-k, top-p) decoding. Converted
// layers carry a recurrent state of fixed size (kernels' prefill / decode_step), softmax
// layers a key/value cache, so hybrid and linear models decode in constant memory.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "core/model/decoder.hpp"
#include "core/util/error.hpp"

namespace hl::model {

/// How the next token is chosen from the logits.
struct SamplingOptions {
  double temperature = 0.0;  ///< 0 = greedy (argmax); otherwise logits / temperature
  int64_t top_k = 0;         ///< keep only the k most likely tokens; 0 = all
  double top_p = 1.0;        ///< keep the smallest set of tokens whose mass reaches p; 1 = all
  uint64_t seed = 0;         ///< the same seed gives the same tokens
};

/// What to generate.
struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  std::vector<int32_t> stop_tokens;  ///< generation ends after emitting one of these
  ForwardOptions forward;            ///< mode / layer ablation (diagnostics) and backend
  /// Longest prompt + generation allowed; 0 = the model's max_position_embeddings (when set).
  int64_t max_context = 0;
  /// Called with each new token as it is produced; returning false stops generation.
  std::function<bool(int32_t)> on_token;
  /// Decode through a CUDA graph (DecodeGraph) once the model and cache allow it.
  bool cuda_graph = true;
};

/// The generated tokens and what decoding held.
struct GenerateResult {
  std::vector<int32_t> tokens;  ///< new tokens only
  int64_t prompt_tokens = 0;
  bool stopped_at_stop_token = false;
  int64_t cache_bytes = 0;      ///< decode state after the last token
  int64_t recurrent_bytes = 0;  ///< of which converted layers' recurrent states
  double prefill_seconds = 0, decode_seconds = 0;
  /// Tokens were decoded through a CUDA graph (not if its capture failed).
  bool cuda_graph = false;
};

/// Checks the sampling options (temperature >= 0, top_k >= 0, 0 < top_p <= 1).
Status check_sampling(const SamplingOptions& options);

/// Picks a token from logits [vocab] (any device and dtype). Greedy is torch's argmax (the
/// first of equal maxima); sampling runs in float64 on the CPU with `rng`.
int32_t sample_token(const torch::Tensor& logits, const SamplingOptions& options,
                     std::mt19937_64& rng);

/// Continues `prompt` (token ids, not empty) by up to options.max_new_tokens tokens.
/// Errors: empty prompt, bad sampling options, a prompt or prompt + generation longer
/// than the allowed context.
Result<GenerateResult> generate(CausalLM& model, const std::vector<int32_t>& prompt,
                                const GenerateOptions& options);

}  // namespace hl::model
