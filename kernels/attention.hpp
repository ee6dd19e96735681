// Hybrid attention (sliding-window softmax + linear attention, DESIGN §1) behind one
// dispatch API, used by the model for training, prefill and decode. All tensors are
// LibTorch tensors and every path is differentiable by autograd (except decode_step).
//
// Shapes: q [B, Hq, N, d]; k [B, Hkv, N, d]; v [B, Hkv, N, dv] with Hq % Hkv == 0 (query head
// h reads kv head h / (Hq / Hkv); the caller does not repeat k/v); phi_q, phi_k [B, Hq, N, F]
// (feature maps run after GQA repetition, one weight per query head).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string_view>

#include "kernels/feature_map.hpp"

namespace hl::kernels {

/// What an attention layer computes (DESIGN §1 inference modes, plus the softmax teacher).
enum class AttentionMode {
  softmax,      ///< full causal softmax (the teacher; base models' attention)
  hybrid,       ///< window softmax + linear attention
  linear_only,  ///< linear attention over all j <= i, eps = 1e-12 in the denominator
  window_only,  ///< sliding-window softmax (the linear terms zeroed)
  sinks_only,   ///< causal softmax over the first `sinks` tokens only
  none,         ///< output 0
};

/// Which implementation runs.
enum class Backend {
  automatic,  ///< cuda for GPU tensors when built, else reference for small N, else chunked
  reference,  ///< quadratic, explicit N x N masks; any dtype (float64 for checks)
  chunked,    ///< O(N (w + F dv)) time and O(N (F + w)) extra memory; training on the CPU
  cuda,       ///< fused CUDA kernels (only when built with HL_WITH_CUDA_KERNELS); for the
              ///< softmax mode, PyTorch's fused attention
};

/// "softmax", "hybrid", "linear_only", "window_only", "sinks_only", "none".
std::string_view to_string(AttentionMode mode);
/// Inverse of to_string; nullopt for an unknown name (the caller reports where it came from).
std::optional<AttentionMode> parse_attention_mode(std::string_view name);
/// "automatic", "reference", "chunked", "cuda".
std::string_view to_string(Backend backend);
/// Inverse of to_string; nullopt for an unknown name.
std::optional<Backend> parse_backend(std::string_view name);

/// Default logit of the window factor: sigmoid(-2.197) = 0.1 (DESIGN §1).
inline constexpr double kDefaultWindowFactorLogit = -2.1972245773362196;
/// The denominator epsilon of linear-only attention (DESIGN §1).
inline constexpr double kLinearOnlyEps = 1e-12;

/// How to compute attention; defaults follow DESIGN §1 / LoLCATs.
struct AttentionOptions {
  AttentionMode mode = AttentionMode::hybrid;
  int64_t window = 64;          ///< w >= 1: keys i-w < j <= i are in the window
  bool overlap = false;         ///< linear terms also over the window keys (j <= i)
  bool affine_factors = false;  ///< l_h = 1 - g_h instead of 1
  int64_t sinks = 8;            ///< sink tokens of sinks_only
  bool want_stats = false;      ///< fill linear_mass and linear_output_share
  bool want_weights = false;    ///< fill weights (N x N; runs the reference backend)
  Backend backend = Backend::automatic;
  int64_t chunk = 64;           ///< query block of the chunked backend
  std::optional<double> scale;  ///< score scale; default 1 / sqrt(d)
};

/// The tensors of one attention call. Which ones a mode needs:
/// q, k, v always; phi_q, phi_k for hybrid and linear_only (and window_only with a
/// window_drop); window_factor_logits for hybrid.
struct AttentionInputs {
  torch::Tensor q;      ///< [B, Hq, N, d]
  torch::Tensor k;      ///< [B, Hkv, N, d]
  torch::Tensor v;      ///< [B, Hkv, N, dv]
  torch::Tensor phi_q;  ///< [B, Hq, N, F]
  torch::Tensor phi_k;  ///< [B, Hq, N, F]
  /// omega [Hq]; g_h = sigmoid(omega_h) multiplies the window terms.
  torch::Tensor window_factor_logits;
  /// Optional SSD mask [B, Hq] (bool or 0/1): 1 = this (sequence, head) computes
  /// linear_only in this forward. The SSD granularities (step, layer, head, sequence) all
  /// map onto it; the caller builds it. Allowed in hybrid, window_only and linear_only.
  torch::Tensor window_drop;
};

/// Result of an attention call.
struct AttentionOutput {
  torch::Tensor y;  ///< [B, Hq, N, dv]; in mode none plain zeros without a graph
  /// [B, Hq, N] when want_stats: sum_L b / (sum_W a + sum_L b) per position (DESIGN §2);
  /// 0 where both sums are 0. Detached (for logging).
  torch::Tensor linear_mass;
  /// [B, Hq, N] when want_stats: |sum_L b v| / (|sum_W a v| + |sum_L b v|), norms over dv;
  /// 0 where both norms are 0. Detached.
  torch::Tensor linear_output_share;
  /// [B, Hq, N, N] when want_weights: normalised weights as the model applies them
  /// (window and linear parts together), differentiable (Hedgehog cross-entropy).
  torch::Tensor weights;
  Backend backend = Backend::automatic;  ///< the backend that ran
};

/// Parallel attention over a whole sequence (training, prefill, evaluation).
/// Throws std::invalid_argument naming the argument when shapes, dtypes or options are bad.
/// want_weights needs the reference backend: automatic picks it, chunked/cuda throw.
AttentionOutput attention(const AttentionInputs& inputs, const AttentionOptions& options);

/// `inputs` with phi_q = map_q(q) and phi_k = map_k(k repeated to the query heads): the maps act
/// after GQA repetition with one weight per query head (DESIGN §1), each in its weight's dtype,
/// and phi comes back in q's dtype.
AttentionInputs with_feature_maps(AttentionInputs inputs, FeatureMapImpl& map_q,
                                  FeatureMapImpl& map_k);

/// attention(with_feature_maps(inputs, map_q, map_k), options), except that on CUDA without a
/// graph to build (no grad mode, or nothing requires grad) hedgehog maps without bias and with
/// p = 64 are computed inside the fused forward where its kernels take the shape, so that phi
/// never goes through memory. inputs.phi_q and phi_k must be undefined.
AttentionOutput attention_with_feature_maps(const AttentionInputs& inputs, FeatureMapImpl& map_q,
                                            FeatureMapImpl& map_k, const AttentionOptions& options);

/// Decode state of one layer; its size does not grow with the context.
/// A default-constructed state is empty (position 0): decode_step allocates on first use.
struct RecurrentState {
  torch::Tensor S;             ///< [B, Hq, F, dv]: sum over keys j <= t-w of phi_k(k_j) v_j^T
  torch::Tensor z;             ///< [B, Hq, F]: sum over keys j <= t-w of phi_k(k_j)
  torch::Tensor key_ring;      ///< [B, Hkv, w, d]: last w keys, key j in slot j % w
  torch::Tensor value_ring;    ///< [B, Hkv, w, dv]
  torch::Tensor phi_key_ring;  ///< [B, Hq, w, F]: phi_k of the ring's keys
  torch::Tensor sink_keys;     ///< [B, Hkv, sinks, d]: the first `sinks` keys
  torch::Tensor sink_values;   ///< [B, Hkv, sinks, dv]
  int64_t position = 0;        ///< tokens seen so far (t of the next token)
  /// Where defined (int32 [1] on the state's CUDA device), the CUDA decode_step reads t from it
  /// when its kernel runs, so that a CUDA graph of the step replays at every position; the
  /// caller then keeps it and `position` equal.
  torch::Tensor position_on_device;
  int64_t window = 0;  ///< w the rings were sized for
  int64_t sinks = 0;   ///< sink capacity

  /// True when the state tracks the linear part (phi_k was given); S, z, phi_key_ring.
  bool has_linear() const { return S.defined(); }
  /// Bytes held by the state's tensors (constant once the rings are allocated).
  int64_t bytes() const;
};

/// Result of prefill: the parallel output and the state after the last token.
struct PrefillResult {
  AttentionOutput output;
  RecurrentState state;
};

/// Parallel attention over the prompt plus the recurrent state that continues it. Any mode
/// but softmax (softmax layers decode with a KV cache in the model). The state is detached.
PrefillResult prefill(const AttentionInputs& inputs, const AttentionOptions& options);

/// One token: inputs hold [B, H, 1, .] tensors. Updates `state` (folds the key that leaves
/// the window into S, z, pushes the new one) and returns y_t [B, Hq, 1, dv]. Runs without
/// autograd. Same result as the parallel form at this position, to rounding.
torch::Tensor decode_step(const AttentionInputs& step, RecurrentState& state,
                          const AttentionOptions& options);

}  // namespace hl::kernels
