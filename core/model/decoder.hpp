// The Llama-family decoder (Llama 2/3, Mistral, Qwen2) whose attention layers can be
// softmax, linear or hybrid. Module and parameter names follow Hugging Face
// (model.layers.0.self_attn.q_proj.weight, ...), so checkpoints map one to one.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <vector>

#include "core/io/hf_config.hpp"
#include "core/model/layers.hpp"
#include "kernels/attention.hpp"

namespace hl::model {

/// How converted layers compute attention (the experiment's [attention] section).
struct ConversionOptions {
  kernels::AttentionMode kind = kernels::AttentionMode::hybrid;  ///< hybrid or linear_only
  int64_t window = 64;
  bool overlap = false;
  kernels::FeatureMapKind feature_map = kernels::FeatureMapKind::hedgehog;
  int64_t feature_dim = 64;
  kernels::FeatureMapInit feature_init = kernels::FeatureMapInit::identity;
  double window_factor_init = 0.1;
  bool affine_factors = false;
  int64_t sinks = 8;
  std::vector<int64_t> softmax_layers;  ///< layers left as the original softmax attention
};

/// Per-(layer, head) branch usage of one forward (DESIGN §2), averaged over the batch and
/// over positions i >= w.
struct LayerUsage {
  int64_t layer = 0;
  torch::Tensor linear_mass;          ///< [Hq]
  torch::Tensor linear_output_share;  ///< [Hq]
};

/// One converted layer's student and teacher in an attention-transfer forward.
struct TransferPair {
  int64_t layer = 0;
  torch::Tensor student;          ///< [B, Hq, N, dv], per-head output before o_proj
  torch::Tensor teacher;          ///< same shape, no graph
  torch::Tensor student_weights;  ///< [B, Hq, N, N] when weights were asked for
  torch::Tensor teacher_weights;  ///< [B, Hq, N, N] when weights were asked for, no graph
};

/// Controls one forward pass.
struct ForwardOptions {
  /// Mode of every converted layer for this forward (diagnostics: window_only, linear_only,
  /// sinks_only, none); nullopt = each layer's own kind.
  std::optional<kernels::AttentionMode> mode;
  /// Converted layer whose linear branch is dropped (runs window_only): per-layer ablation.
  std::optional<int64_t> ablate_layer;
  /// SSD masks [B, Hq] indexed by layer (undefined or missing = no drop).
  std::vector<torch::Tensor> window_drop;
  /// Collect branch usage of converted layers into `usage`.
  bool want_usage = false;
  std::vector<LayerUsage>* usage = nullptr;
  /// Attention transfer: every converted layer also runs the original softmax attention,
  /// passes the teacher's output on, and records both into `transfer`.
  std::vector<TransferPair>* transfer = nullptr;
  /// Mode of the student in transfer (hybrid or linear_only).
  kernels::AttentionMode transfer_student_mode = kernels::AttentionMode::hybrid;
  /// Record attention weights in the transfer pairs (Hedgehog cross-entropy).
  bool transfer_weights = false;
  /// Stop after this many layers (transfer needs no logits); nullopt = whole model.
  std::optional<int64_t> stop_after_layer;
  kernels::Backend backend = kernels::Backend::automatic;
};

/// Incremental-decoding cache of one layer: the recurrent state of a converted layer (its
/// size does not depend on the context), or the key/value cache of a softmax layer.
struct LayerCache {
  kernels::RecurrentState recurrent;
  /// [B, Hkv, capacity, d|dv]; the first `length` positions are filled. The capacity grows
  /// by doubling so that appending a token copies nothing in the common case.
  torch::Tensor keys, values;
  int64_t length = 0;

  /// Bytes of the filled part (KV cache) or of the whole recurrent state.
  int64_t bytes() const;
};

/// Decode state of a whole model, filled by CausalLMImpl::decode.
struct DecodeCache {
  std::vector<LayerCache> layers;
  int64_t position = 0;  ///< tokens consumed so far (the position of the next token)

  /// Bytes held for all layers.
  int64_t bytes() const;
  /// Bytes of the converted layers' recurrent states only.
  int64_t recurrent_bytes() const;
  /// Bytes of the softmax layers' key/value caches only.
  int64_t kv_bytes() const;
};

/// A decoder layer's attention: projections, rotary embedding and, once converted, the
/// feature maps and window factors of hybrid / linear attention.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const io::ModelConfig& config, int64_t layer_index);

  /// Output [B, N, hidden] for x [B, N, hidden]; cos/sin [N, head_dim].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const ForwardOptions& options);

  /// Gives this layer hybrid or linear attention with fresh feature maps and factors.
  void convert(const ConversionOptions& options);
  bool converted() const { return converted_; }
  const ConversionOptions& conversion() const { return conversion_; }
  /// Changes the window of a converted layer (SSD window schedules).
  void set_window(int64_t window) { conversion_.window = window; }

  /// q, k, v of x after projection and RoPE: [B, Hq, N, d], [B, Hkv, N, d], [B, Hkv, N, d].
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> project(const torch::Tensor& x,
                                                                  const torch::Tensor& cos,
                                                                  const torch::Tensor& sin);
  /// Attention inputs of a converted layer (feature maps applied after GQA repetition).
  kernels::AttentionInputs converted_inputs(const torch::Tensor& q, const torch::Tensor& k,
                                            const torch::Tensor& v);
  /// Options of the layer's own softmax attention (window_only for Mistral's sliding window).
  kernels::AttentionOptions base_options(int64_t sequence_length) const;
  /// Options of a converted layer in `mode`.
  kernels::AttentionOptions converted_options(kernels::AttentionMode mode) const;
  /// Merges [B, Hq, N, dv] heads and applies o_proj.
  torch::Tensor output(const torch::Tensor& heads);
  /// Incremental form of forward: x [B, n, hidden] holds the tokens after those already in
  /// `cache`, cos/sin their positions. A converted layer prefills its recurrent state on the
  /// first call and then advances it token by token (kernels' prefill / decode_step); a
  /// softmax layer appends to its key/value cache. Same output as forward over the whole
  /// sequence, to rounding. Runs without autograd.
  torch::Tensor decode(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                       const ForwardOptions& options, LayerCache& cache);

  AdaptedLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  kernels::FeatureMap feature_map_q{nullptr}, feature_map_k{nullptr};
  torch::Tensor window_factors;  ///< omega [Hq]; g = sigmoid(omega)

  int64_t heads() const { return heads_; }
  int64_t kv_heads() const { return kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t layer_index() const { return layer_index_; }

 private:
  int64_t layer_index_, heads_, kv_heads_, head_dim_;
  std::optional<int64_t> sliding_window_;
  bool converted_ = false;
  ConversionOptions conversion_;
};
TORCH_MODULE(Attention);

/// Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x)).
class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const io::ModelConfig& config, int64_t layer_index);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const ForwardOptions& options);
  /// Incremental form of forward (see AttentionImpl::decode).
  torch::Tensor decode(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                       const ForwardOptions& options, LayerCache& cache);

  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  SwiGLU mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

/// Embeddings, layers and final norm ("model." in Hugging Face names).
class DecoderStackImpl : public torch::nn::Module {
 public:
  explicit DecoderStackImpl(const io::ModelConfig& config);

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};

  DecoderLayer layer(int64_t index) { return layers->ptr<DecoderLayerImpl>(index); }
};
TORCH_MODULE(DecoderStack);

/// The causal language model: logits [B, N, vocab] for token ids [B, N].
class CausalLMImpl : public torch::nn::Module {
 public:
  explicit CausalLMImpl(const io::ModelConfig& config);

  /// Logits for ids [B, N] (int64); positions start at `position_offset`.
  torch::Tensor forward(const torch::Tensor& ids, const ForwardOptions& options = {},
                        int64_t position_offset = 0);
  /// Hidden states after the final norm (no lm_head).
  torch::Tensor hidden_states(const torch::Tensor& ids, const ForwardOptions& options,
                              int64_t position_offset = 0);
  /// Projects final hidden states to vocabulary logits.
  torch::Tensor logits(const torch::Tensor& hidden);
  /// Logits [B, n, vocab] of ids [B, n] that continue the tokens already in `cache`
  /// (positions cache.position ...), updating the cache. The first call on an empty cache
  /// is the prefill; later calls usually pass one token. Equal to forward over the whole
  /// sequence, to rounding; options.mode / ablate_layer must stay the same across calls.
  torch::Tensor decode(const torch::Tensor& ids, DecodeCache& cache,
                       const ForwardOptions& options = {});
  /// decode() with the rotary tables of the tokens' positions given (so that DecodeGraph can
  /// take them from device memory) and cache.position left as it was.
  torch::Tensor decode_layers(const torch::Tensor& ids, const torch::Tensor& cos,
                              const torch::Tensor& sin, DecodeCache& cache,
                              const ForwardOptions& options);

  /// Converts every layer not in options.softmax_layers.
  void convert(const ConversionOptions& options);
  /// Indices of converted layers, ascending.
  std::vector<int64_t> converted_layers() const;
  /// cos and sin [N, head_dim] for positions offset .. offset + N - 1 on `device`, in the
  /// embedding weight's dtype.
  std::pair<torch::Tensor, torch::Tensor> rotary(int64_t offset, int64_t length,
                                                 torch::Device device) const;

  const io::ModelConfig& config() const { return config_; }
  int64_t num_layers() const { return config_.num_hidden_layers; }
  Attention attention(int64_t layer) { return model->layer(layer)->self_attn; }

  DecoderStack model{nullptr};
  AdaptedLinear lm_head{nullptr};  ///< null when embeddings are tied

 private:
  io::ModelConfig config_;
  torch::Tensor inverse_frequencies_;
  /// cos and sin of positions 0 .. n - 1 where last asked for (device, dtype): each forward
  /// slices them instead of copying new tables from the host, a copy that waits for the
  /// stream and that a CUDA graph capture refuses.
  mutable torch::Tensor rotary_cos_, rotary_sin_;
};
TORCH_MODULE(CausalLM);

}  // namespace hl::model
