// One decode step of a converted model as a CUDA graph, captured once after the prefill and
// replayed for every token: the host then launches one graph per token instead of the ~40
// LibTorch ops and kernels of each layer, which bound the eager step (bench/RESULTS.md, Decode).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>

#include "core/model/decoder.hpp"

namespace hl::model {

/// Why a DecodeGraph cannot continue `cache` for `model`, or empty when it can: it needs the
/// CUDA kernels, the model on a CUDA device and every layer converted, with its recurrent state
/// made by the fused prefill and its attention sinks filled.
std::string decode_graph_unsupported(CausalLM& model, const DecodeCache& cache);

/// A captured decode step bound to one model and one prefilled cache (its state tensors are
/// captured by address: the cache must outlive the graph and keep its tensors).
class DecodeGraph {
 public:
  /// Captures the step for ids [batch, 1] at positions up to max_positions - 1 with `options`
  /// (mode, ablation, backend; no transfer or usage records). Throws std::invalid_argument
  /// naming what is wrong (decode_graph_unsupported's reason, or what failed in the capture).
  DecodeGraph(CausalLM& model, DecodeCache& cache, const ForwardOptions& options,
              int64_t max_positions);
  ~DecodeGraph();
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;

  /// Logits [batch, 1, vocab] of ids [batch, 1] (int64) at cache.position; advances the cache
  /// as CausalLMImpl::decode does. The tensor is the graph's and the next step overwrites it.
  torch::Tensor step(const torch::Tensor& ids);

 private:
  struct Captured;
  std::unique_ptr<Captured> captured_;
};

}  // namespace hl::model
