#include "core/model/decode_graph.hpp"

#include <stdexcept>
#include <vector>

#include "core/model/step_graph.hpp"

namespace hl::model {

std::string decode_graph_unsupported(CausalLM& model, const DecodeCache& cache) {
#ifndef HL_WITH_CUDA_KERNELS
  (void)model, (void)cache;
  return "built without the CUDA kernels";
#else
  // Also the reason where the model is not on a CUDA device.
  const torch::Device device = model->model->embed_tokens->weight.device();
  if (std::string why = StepGraph::unsupported(device); !why.empty()) return why;
  if (static_cast<int64_t>(cache.layers.size()) != model->num_layers())
    return "the cache is not prefilled";
  for (size_t i = 0; i < cache.layers.size(); ++i) {
    const kernels::RecurrentState& st = cache.layers[i].recurrent;
    const std::string layer = "layer " + std::to_string(i);
    if (!st.key_ring.defined())
      return layer + " keeps a key/value cache (softmax attention), which grows every token";
    if (st.has_linear() && st.S.scalar_type() != torch::kFloat)
      return layer + "'s state was not made by the fused CUDA prefill";
    if (st.position < st.sinks) return layer + "'s attention sinks are not filled yet";
  }
  return {};
#endif
}

struct DecodeGraph::Captured {
  CausalLM model;
  DecodeCache& cache;
  StepGraph graph;
  torch::Tensor ids, position, cos_table, sin_table, logits;
  int64_t max_positions = 0;
};

DecodeGraph::DecodeGraph(CausalLM& model, DecodeCache& cache, const ForwardOptions& options,
                         int64_t max_positions) {
  if (const std::string why = decode_graph_unsupported(model, cache); !why.empty())
    throw std::invalid_argument("decode graph: " + why);
  if (options.transfer || options.usage)
    throw std::invalid_argument("decode graph: transfer and usage records are not captured");
  if (max_positions <= cache.position)
    throw std::invalid_argument("decode graph: max_positions (" + std::to_string(max_positions) +
                                ") must exceed the cache's position (" +
                                std::to_string(cache.position) + ")");
  torch::NoGradGuard no_grad;
  const torch::Device device = model->model->embed_tokens->weight.device();
  const c10::DeviceGuard device_guard(device);
  captured_.reset(new Captured{model, cache, StepGraph(device)});
  Captured& c = *captured_;
  c.max_positions = max_positions;
  const int64_t batch = cache.layers.front().recurrent.key_ring.size(0);
  c.ids = torch::zeros({batch, 1}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  c.position =
      torch::full({1}, cache.position, torch::TensorOptions().dtype(torch::kInt32).device(device));
  // The rows of every position the graph may decode, as CausalLMImpl::rotary computes them.
  std::tie(c.cos_table, c.sin_table) = model->rotary(0, max_positions, device);

  // The capture runs each layer's host code once (advancing the host positions, which the
  // replays then advance themselves) and records its kernels, which read t from c.position.
  std::vector<int64_t> positions;
  for (LayerCache& layer : cache.layers) {
    positions.push_back(layer.recurrent.position);
    layer.recurrent.position_on_device = c.position;
  }
  torch::cuda::synchronize();  // the prefill's kernels are done before the capture starts
  std::string failure;
  try {
    c.graph.capture([&] {
      const torch::Tensor cos = c.cos_table.index_select(0, c.position);
      const torch::Tensor sin = c.sin_table.index_select(0, c.position);
      c.logits = model->decode_layers(c.ids, cos, sin, cache, options);
    });
  } catch (const std::runtime_error& e) {
    failure = e.what();
  }
  for (size_t i = 0; i < cache.layers.size(); ++i) {
    cache.layers[i].recurrent.position = positions[i];
    // The captured kernels hold the address; eager steps go back to the host position.
    cache.layers[i].recurrent.position_on_device = torch::Tensor();
  }
  if (!failure.empty()) {
    captured_.reset();
    throw std::invalid_argument("decode graph: " + failure);
  }
}

DecodeGraph::~DecodeGraph() = default;

torch::Tensor DecodeGraph::step(const torch::Tensor& ids) {
  Captured& c = *captured_;
  if (ids.dim() != 2 || ids.size(0) != c.ids.size(0) || ids.size(1) != 1)
    throw std::invalid_argument("decode graph: ids must be [" + std::to_string(c.ids.size(0)) +
                                ", 1]");
  if (c.cache.position >= c.max_positions)
    throw std::invalid_argument("decode graph: position " + std::to_string(c.cache.position) +
                                " is past the " + std::to_string(c.max_positions) +
                                " positions it was captured for");
  const c10::DeviceGuard device_guard(c.ids.device());
  c.ids.copy_(ids);
  c.position.fill_(c.cache.position);  // a kernel argument: no host buffer to keep alive
  c.graph.replay();
  ++c.cache.position;
  for (LayerCache& layer : c.cache.layers)
    ++layer.recurrent.position;
  return c.logits;
}

}  // namespace hl::model
