// Recurrent form: prefill builds the decode state from a prompt, decode_step advances it by
// one token. The state holds S, z over the keys that left the window, a ring of the last w
// keys/values (and their phi_k) and the sink tokens; nothing grows with the context.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cpu/attention_internal.hpp"
#ifdef HL_WITH_CUDA_KERNELS
#include "kernels/cuda/cuda_attention.hpp"
#endif

namespace hl::kernels {
namespace {

// The fused CUDA kernels take CUDA tensors of the modes and shapes they cover; their state
// keeps S, z in fp32 whatever the inputs' dtype, so a state continues on the path that made it
// (a generic bf16 state has bf16 S and stays generic).
bool use_cuda_kernels(const AttentionInputs& in, const AttentionOptions& options,
                      const RecurrentState* state) {
#ifdef HL_WITH_CUDA_KERNELS
  if (!in.q.is_cuda() || options.backend == Backend::reference ||
      options.backend == Backend::chunked || !cuda::supports(in, options)) {
    return false;
  }
  return state == nullptr || !state->key_ring.defined() || !state->has_linear() ||
         state->S.scalar_type() == torch::kFloat;
#else
  (void)in, (void)options, (void)state;
  return false;
#endif
}

void require(bool condition, const std::string& api, const AttentionOptions& options,
             const std::string& message) {
  if (!condition) {
    throw std::invalid_argument(api + " (" + std::string(to_string(options.mode)) +
                                "): " + message);
  }
}

// Allocates an empty state sized for these step/prompt tensors.
RecurrentState empty_state(const AttentionInputs& in, const AttentionOptions& options) {
  const int64_t B = in.k.size(0), Hkv = in.k.size(1), d = in.k.size(3), dv = in.v.size(3);
  const auto tensor_options = in.k.options();
  RecurrentState state;
  state.window = options.window;
  state.sinks = options.sinks;
  state.key_ring = torch::zeros({B, Hkv, options.window, d}, tensor_options);
  state.value_ring = torch::zeros({B, Hkv, options.window, dv}, tensor_options);
  state.sink_keys = torch::zeros({B, Hkv, options.sinks, d}, tensor_options);
  state.sink_values = torch::zeros({B, Hkv, options.sinks, dv}, tensor_options);
  if (in.phi_k.defined()) {
    const int64_t Hq = in.q.size(1), F = in.phi_k.size(3);
    state.S = torch::zeros({B, Hq, F, dv}, tensor_options);
    state.z = torch::zeros({B, Hq, F}, tensor_options);
    state.phi_key_ring = torch::zeros({B, Hq, options.window, F}, tensor_options);
  }
  return state;
}

void check_state(const AttentionInputs& in, const RecurrentState& state,
                 const AttentionOptions& options) {
  const std::string api = "decode_step";
  require(state.window == options.window, api, options,
          "the state was built for window " + std::to_string(state.window) +
              " but options.window is " + std::to_string(options.window));
  require(options.mode != AttentionMode::sinks_only || state.sinks == options.sinks, api, options,
          "the state keeps " + std::to_string(state.sinks) + " sinks but options.sinks is " +
              std::to_string(options.sinks));
  const auto& ring = state.key_ring;
  require(ring.size(0) == in.k.size(0) && ring.size(1) == in.k.size(1) &&
              ring.size(3) == in.k.size(3) && state.value_ring.size(3) == in.v.size(3),
          api, options, "k/v of this step do not match the state's batch, heads or dims");
  require(ring.scalar_type() == in.q.scalar_type() && ring.device() == in.q.device(), api, options,
          "the step's dtype/device differ from the state's");
  if (state.has_linear()) {
    require(in.phi_k.defined() && in.phi_q.defined(), api, options,
            "the state tracks the linear part, so phi_q and phi_k are needed at every step");
    require(state.S.size(1) == in.q.size(1) && state.S.size(2) == in.phi_k.size(3), api, options,
            "phi_k of this step does not match the state's heads or features");
  } else {
    require(!in.phi_k.defined(), api, options,
            "the state has no linear part (it was started without phi_k)");
  }
}

}  // namespace

int64_t RecurrentState::bytes() const {
  int64_t total = 0;
  for (const auto* t : {&S, &z, &key_ring, &value_ring, &phi_key_ring, &sink_keys, &sink_values}) {
    if (t->defined()) total += t->numel() * static_cast<int64_t>(t->element_size());
  }
  return total;
}

PrefillResult prefill(const AttentionInputs& in, const AttentionOptions& options) {
  detail::validate(in, options, "prefill");
  require(options.mode != AttentionMode::softmax, "prefill", options,
          "softmax layers decode with a KV cache in the model, not with a recurrent state");
#ifdef HL_WITH_CUDA_KERNELS
  if (use_cuda_kernels(in, options, nullptr)) return cuda::prefill(in, options);
#endif
  PrefillResult result;
  result.output = attention(in, options);

  torch::NoGradGuard no_grad;
  RecurrentState& state = result.state;
  state = empty_state(in, options);
  const int64_t N = in.q.size(2), w = options.window;
  const int64_t ring_start = std::max<int64_t>(0, N - w);
  const auto index_options = torch::TensorOptions().dtype(torch::kLong).device(in.k.device());
  const auto slots = torch::arange(ring_start, N, index_options).remainder(w);
  state.key_ring.index_copy_(2, slots, in.k.detach().narrow(2, ring_start, N - ring_start));
  state.value_ring.index_copy_(2, slots, in.v.detach().narrow(2, ring_start, N - ring_start));
  const int64_t sink_count = std::min(N, options.sinks);
  state.sink_keys.narrow(2, 0, sink_count).copy_(in.k.detach().narrow(2, 0, sink_count));
  state.sink_values.narrow(2, 0, sink_count).copy_(in.v.detach().narrow(2, 0, sink_count));
  if (state.has_linear()) {
    const auto phi_k = in.phi_k.detach();
    state.phi_key_ring.index_copy_(2, slots, phi_k.narrow(2, ring_start, N - ring_start));
    if (ring_start > 0) {  // keys j <= N-1-w have left the window
      const auto values = detail::repeat_kv(in.v.detach(), in.q.size(1) / in.k.size(1));
      const auto old_keys = phi_k.narrow(2, 0, ring_start);
      state.S.copy_(torch::matmul(old_keys.transpose(-1, -2), values.narrow(2, 0, ring_start)));
      state.z.copy_(old_keys.sum(2));
    }
  }
  state.position = N;
  return result;
}

torch::Tensor decode_step(const AttentionInputs& in, RecurrentState& state,
                          const AttentionOptions& options) {
  detail::validate(in, options, "decode_step", /*single_token=*/true);
  require(options.mode != AttentionMode::softmax, "decode_step", options,
          "softmax layers decode with a KV cache in the model, not with a recurrent state");
#ifdef HL_WITH_CUDA_KERNELS
  if (use_cuda_kernels(in, options, &state)) return cuda::decode_step(in, state, options);
#endif
  torch::NoGradGuard no_grad;
  require(!state.position_on_device.defined(), "decode_step", options,
          "position_on_device needs the fused CUDA kernels, which do not take these inputs");
  if (!state.key_ring.defined()) state = empty_state(in, options);
  check_state(in, state, options);

  const int64_t t = state.position, w = state.window;
  const int64_t B = in.q.size(0), Hq = in.q.size(1), groups = Hq / in.k.size(1);
  const int64_t slot = t % w;
  const auto k_t = in.k.detach().select(2, 0), v_t = in.v.detach().select(2, 0);
  if (state.has_linear()) {
    if (t >= w) {  // key t - w leaves the window: fold it into the linear state
      const auto leaving_key = state.phi_key_ring.select(2, slot);  // [B,Hq,F]
      const auto leaving_value =
          detail::repeat_kv(state.value_ring.narrow(2, slot, 1), groups).select(2, 0);
      state.S.add_(leaving_key.unsqueeze(-1) * leaving_value.unsqueeze(-2));
      state.z.add_(leaving_key);
    }
    state.phi_key_ring.select(2, slot).copy_(in.phi_k.detach().select(2, 0));
  }
  state.key_ring.select(2, slot).copy_(k_t);
  state.value_ring.select(2, slot).copy_(v_t);
  if (t < state.sinks) {
    state.sink_keys.select(2, t).copy_(k_t);
    state.sink_values.select(2, t).copy_(v_t);
  }
  state.position = t + 1;

  const auto q = in.q.detach();
  const double scale = options.scale.value_or(1.0 / std::sqrt(static_cast<double>(in.q.size(3))));
  const int64_t dv = in.v.size(3);
  switch (options.mode) {
    case AttentionMode::none:
      return torch::zeros({B, Hq, 1, dv}, in.v.options());
    case AttentionMode::sinks_only: {
      const int64_t count = std::min(t + 1, state.sinks);
      const auto keys = detail::repeat_kv(state.sink_keys.narrow(2, 0, count), groups);
      const auto values = detail::repeat_kv(state.sink_values.narrow(2, 0, count), groups);
      const auto weights = torch::softmax(torch::matmul(q, keys.transpose(-1, -2)).mul(scale), -1);
      return torch::matmul(weights, values);
    }
    default:
      break;
  }

  // Hybrid family over the valid ring slots (slot order does not matter for the sums).
  const int64_t count = std::min(t + 1, w);
  const auto coef = detail::branch_coefficients(options.mode, options,
                                                in.window_factor_logits.defined()
                                                    ? in.window_factor_logits.detach()
                                                    : in.window_factor_logits,
                                                in.window_drop, B, Hq, in.q.options());
  const auto values = detail::repeat_kv(state.value_ring.narrow(2, 0, count), groups);
  torch::Tensor terms;
  if (options.mode != AttentionMode::linear_only) {
    const auto keys = detail::repeat_kv(state.key_ring.narrow(2, 0, count), groups);
    const auto scores = torch::matmul(q, keys.transpose(-1, -2)).mul(scale);  // [B,Hq,1,count]
    const auto window_max = scores.amax(-1, /*keepdim=*/true);
    terms = coef.window * torch::exp(scores - window_max);
  }
  torch::Tensor state_out, state_sum;
  const bool linear = options.mode != AttentionMode::window_only || in.window_drop.defined();
  if (linear) {
    require(state.has_linear(), "decode_step", options,
            "this mode needs the linear state, but the state was started without phi_k");
    const auto phi_q = in.phi_q.detach();
    const auto window_products =
        torch::matmul(phi_q, state.phi_key_ring.narrow(2, 0, count).transpose(-1, -2));
    const auto linear_terms = coef.linear * coef.window_keys_linear * window_products;
    terms = terms.defined() ? terms + linear_terms : linear_terms;
    state_out = coef.linear * torch::matmul(phi_q, state.S);
    state_sum = coef.linear * torch::matmul(phi_q, state.z.unsqueeze(-1));
  }
  auto numerator = torch::matmul(terms, values);
  auto denominator = terms.sum(-1, /*keepdim=*/true);
  if (state_out.defined()) {
    numerator = numerator + state_out;
    denominator = denominator + state_sum;
  }
  return numerator / (denominator + coef.eps);
}

}  // namespace hl::kernels
