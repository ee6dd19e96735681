// LibTorch glue of the fused CUDA kernels: argument checks, buffers, streams and the autograd
// function whose backward runs the fused backward kernels.
#include "kernels/cuda/cuda_attention.hpp"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

namespace hl::kernels::cuda {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_launch(int code, const char* what) {
  if (code != 0) {
    throw std::runtime_error(std::string("CUDA hybrid attention: ") + what +
                             " failed: " + error_string(code));
  }
}

// Runs `launch` (a CUDA error code back) as an event `event` of a profiler's trace, so that the
// launch's host time (tensor maps, attributes, launches) shows beside LibTorch's ops
// (bench/cuda_attention_bench.cpp, HL_TRACE_DIR); on failure throws with what()'s text, built only
// then (its strings would cost host time on every call).
template <typename Launch, typename What>
void run_launch(const char* event, Launch&& launch, What&& what) {
  int code = 0;
  {
    RECORD_FUNCTION(event, std::vector<c10::IValue>());
    code = launch();
  }
  if (code != 0) check_launch(code, what().c_str());
}

void* stream_of(const Tensor& t) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(t.device().index()).stream());
}

int sm_count() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

KernelDType dtype_of(const Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 ? KernelDType::kBFloat16 : KernelDType::kFloat32;
}

// Kernels index rows with plain pointer arithmetic: dense and 16-byte aligned.
Tensor dense(const Tensor& t) {
  if (!t.defined()) return t;
  Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

// An output the caller hands in (tests poison theirs) is written in place, so it must already be
// what `dense` would make of it; otherwise a new tensor like `like`.
Tensor output_like(const Tensor* given, const Tensor& like, const char* name) {
  if (given == nullptr || !given->defined()) return torch::empty_like(like);
  if (given->sizes() != like.sizes() || given->scalar_type() != like.scalar_type() ||
      given->device() != like.device()) {
    throw std::invalid_argument(c10::str("cuda attention: ", name, " must be ", like.sizes(), " ",
                                         like.scalar_type(), " on ", like.device(), ", got ",
                                         given->sizes(), " ", given->scalar_type(), " on ",
                                         given->device()));
  }
  if (!given->is_contiguous() || reinterpret_cast<uintptr_t>(given->data_ptr()) % 16 != 0) {
    throw std::invalid_argument(c10::str("cuda attention: ", name,
                                         " must be contiguous and 16-byte aligned (the kernels "
                                         "write it in place)"));
  }
  return *given;
}

const void* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr() : nullptr;
}

ProblemShape shape_of(const RawInputs& in, const RawOptions& o) {
  ProblemShape s;
  s.batch = static_cast<int>(in.q.size(0));
  s.q_heads = static_cast<int>(in.q.size(1));
  s.kv_heads = static_cast<int>(in.k.size(1));
  s.seq_len = static_cast<int>(in.q.size(2));
  s.head_dim = static_cast<int>(in.q.size(3));
  s.features = in.phi_q.defined()   ? static_cast<int>(in.phi_q.size(3))
               : in.map_q.defined() ? static_cast<int>(2 * in.map_q.size(2))
                                    : 32;
  s.window = static_cast<int>(o.window);
  s.mode = o.mode;
  s.overlap = o.overlap;
  s.scale =
      static_cast<float>(o.scale > 0 ? o.scale : 1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  s.eps = static_cast<float>(kLinearOnlyEps);
  s.dtype = dtype_of(in.q);
  return s;
}

SegmentPlan pick_plan(int requested, int units, int seq_len) {
  if (requested > 0) return make_segment_plan(seq_len, requested);
  return plan_segments(units, seq_len, sm_count());
}

RawInputs densify(const RawInputs& in) {
  RawInputs d;
  d.q = dense(in.q);
  d.k = dense(in.k);
  d.v = dense(in.v);
  d.phi_q = dense(in.phi_q);
  d.phi_k = dense(in.phi_k);
  d.coef_window = dense(in.coef_window.to(torch::kFloat));
  d.coef_linear = dense(in.coef_linear.to(torch::kFloat));
  if (in.window_drop.defined()) d.window_drop = dense(in.window_drop.to(torch::kUInt8));
  d.map_q = dense(in.map_q);
  d.map_k = dense(in.map_k);
  return d;
}

// ---- autograd ------------------------------------------------------------------------------

RawOptions options_from(AutogradContext* ctx) {
  RawOptions o;
  o.mode = static_cast<KernelMode>(ctx->saved_data["mode"].toInt());
  o.window = ctx->saved_data["window"].toInt();
  o.overlap = ctx->saved_data["overlap"].toBool();
  o.scale = ctx->saved_data["scale"].toDouble();
  return o;
}

class HybridAttentionFunction : public torch::autograd::Function<HybridAttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, Tensor q, Tensor k, Tensor v, Tensor phi_q,
                               Tensor phi_k, Tensor coef_window, Tensor coef_linear,
                               Tensor window_drop, int64_t mode, int64_t window, bool overlap,
                               double scale, bool want_stats) {
    // The stats output has no gradient: autograd need not make a zero one for it each step.
    ctx->set_materialize_grads(false);
    RawOptions o;
    o.mode = static_cast<KernelMode>(mode);
    o.window = window;
    o.overlap = overlap;
    o.scale = scale;
    o.want_stats = want_stats;
    // Absent tensors travel as empty ones: autograd::Function rejects undefined inputs.
    auto present = [](const Tensor& t) { return t.numel() > 0 ? t : Tensor(); };
    const RawInputs in = densify(
        {q, k, v, present(phi_q), present(phi_k), coef_window, coef_linear, present(window_drop)});
    RawForward f = forward_raw(in, o);
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["window"] = window;
    ctx->saved_data["overlap"] = overlap;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["row_max"] = f.row_max;
    ctx->saved_data["row_denom"] = f.row_denom;
    ctx->saved_data["row_argmax"] = f.row_argmax;
    ctx->saved_data["states"] = f.states;
    ctx->saved_data["segments"] = static_cast<int64_t>(f.plan.segments);
    ctx->saved_data["segment_len"] = static_cast<int64_t>(f.plan.length);
    ctx->saved_data["window_drop"] = in.window_drop.defined() ? in.window_drop : window_drop;
    ctx->save_for_backward({in.q, in.k, in.v, phi_q, phi_k, in.coef_window, in.coef_linear, f.y});
    Tensor stats =
        f.stats.defined() ? f.stats : torch::empty({0}, q.options().dtype(torch::kFloat));
    ctx->mark_non_differentiable({stats});
    return {f.y, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto present = [](const Tensor& t) { return t.defined() && t.numel() > 0 ? t : Tensor(); };
    RawInputs in{
        saved[0],          saved[1], saved[2], present(saved[3]),
        present(saved[4]), saved[5], saved[6], present(ctx->saved_data["window_drop"].toTensor())};
    RawForward f;
    f.y = saved[7];
    f.row_max = ctx->saved_data["row_max"].toTensor();
    f.row_denom = ctx->saved_data["row_denom"].toTensor();
    f.row_argmax = ctx->saved_data["row_argmax"].toTensor();
    f.states = ctx->saved_data["states"].toTensor();
    f.plan.segments = static_cast<int>(ctx->saved_data["segments"].toInt());
    f.plan.length = static_cast<int>(ctx->saved_data["segment_len"].toInt());
    Tensor dy = grad_outputs[0];
    if (!dy.defined()) dy = torch::zeros_like(f.y);
    RawOptions o = options_from(ctx);
    // Attention transfer trains the feature maps on detached q, k, v: no dq, dk, dv to make.
    o.query_grads = ctx->needs_input_grad(0);
    o.key_grads = ctx->needs_input_grad(1) || ctx->needs_input_grad(2);
    const RawGrads g = backward_raw(in, o, f, dense(dy.to(f.y.scalar_type())));
    const Tensor dq = o.query_grads ? g.dq : Tensor();
    const Tensor dk = o.key_grads ? g.dk : Tensor(), dv = o.key_grads ? g.dv : Tensor();
    return {dq,       dk,       dv,       g.dphi_q, g.dphi_k, g.dcoef_window, g.dcoef_linear,
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

KernelMode kernel_mode(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::linear_only:
      return KernelMode::kLinearOnly;
    case AttentionMode::window_only:
      return KernelMode::kWindowOnly;
    default:
      return KernelMode::kHybrid;
  }
}

// Shared checks of both supports() overloads.
const char* unsupported(AttentionMode mode, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& phi_q, int64_t window, bool want_weights) {
  if (mode != AttentionMode::hybrid && mode != AttentionMode::linear_only &&
      mode != AttentionMode::window_only) {
    return "the CUDA kernels implement hybrid, linear_only and window_only only";
  }
  if (want_weights) return "want_weights needs the reference backend";
  if (!q.is_cuda()) return "tensors are not on a CUDA device";
  if (q.scalar_type() != torch::kFloat && q.scalar_type() != torch::kBFloat16) {
    return "the CUDA kernels take float32 or bfloat16";
  }
  if (v.size(3) != q.size(3)) return "the CUDA kernels need value dim == head dim";
  ProblemShape s;
  s.batch = static_cast<int>(q.size(0));
  s.q_heads = static_cast<int>(q.size(1));
  s.kv_heads = static_cast<int>(k.size(1));
  s.seq_len = static_cast<int>(q.size(2));
  s.head_dim = static_cast<int>(q.size(3));
  s.features = phi_q.defined() ? static_cast<int>(phi_q.size(3)) : 32;
  s.window = static_cast<int>(std::min<int64_t>(window, 1 << 20));
  return unsupported_reason(s);
}

AttentionOutput run(const RawInputs& raw, const RawOptions& o, int64_t batch, int64_t heads,
                    int64_t length) {
  const c10::cuda::CUDAGuard guard(raw.q.device());
  auto or_empty = [&](const Tensor& t) {
    return t.defined() ? t : torch::empty({0}, raw.q.options());
  };
  auto outs = HybridAttentionFunction::apply(
      raw.q, raw.k, raw.v, or_empty(raw.phi_q), or_empty(raw.phi_k), raw.coef_window,
      raw.coef_linear, or_empty(raw.window_drop), static_cast<int64_t>(o.mode), o.window, o.overlap,
      o.scale, o.want_stats);
  AttentionOutput out;
  out.y = outs[0];
  if (o.want_stats) {
    const Tensor stats = outs[1].detach().view({batch, heads, length, 2});
    out.linear_mass = stats.select(3, 0).to(raw.q.scalar_type());
    out.linear_output_share = stats.select(3, 1).to(raw.q.scalar_type());
  }
  out.backend = Backend::cuda;
  return out;
}

Tensor coefficient_matrix(const Tensor& coef, int64_t batch, int64_t heads) {
  return coef.reshape({batch, heads}).to(torch::kFloat);
}

// A hybrid call's c_w, c_l [B, Hq] fp32 from omega [Hq] as one op each way, where
// branch_coefficients' LibTorch ops cost a layer step ~10 ops and their autograd nodes of host
// time (bench/KERNEL_NOTES.md session 29 item 5).
class BranchCoefficientsFunction : public torch::autograd::Function<BranchCoefficientsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& omega_in,
                               const Tensor& window_drop, int64_t batch, bool affine) {
    const Tensor omega = omega_in.contiguous();
    const int heads = static_cast<int>(omega.numel());
    const auto f32 = omega.options().dtype(torch::kFloat);
    Tensor cw = torch::empty({batch, heads}, f32), cl = torch::empty({batch, heads}, f32);
    const uint8_t* drop = window_drop.numel() > 0 ? window_drop.data_ptr<uint8_t>() : nullptr;
    run_launch(
        "hl::launch_branch_coefficients",
        [&] {
          return launch_branch_coefficients(
              omega.data_ptr(), omega.scalar_type() == torch::kBFloat16, drop, cw.data_ptr<float>(),
              cl.data_ptr<float>(), static_cast<int>(batch), heads, affine, stream_of(omega));
        },
        [] { return std::string("branch coefficients"); });
    ctx->save_for_backward({omega, window_drop});
    ctx->saved_data["affine"] = affine;
    ctx->set_materialize_grads(false);
    return {cw, cl};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &omega = saved[0], &window_drop = saved[1];
    if (!grads[0].defined() && !grads[1].defined()) return {Tensor(), Tensor(), Tensor(), Tensor()};
    const int64_t batch = grads[0].defined() ? grads[0].size(0) : grads[1].size(0);
    const int heads = static_cast<int>(omega.numel());
    auto dense_grad = [&](const Tensor& g) {
      return g.defined() ? dense(g.to(torch::kFloat))
                         : torch::zeros({batch, heads}, omega.options().dtype(torch::kFloat));
    };
    const Tensor dcw = dense_grad(grads[0]), dcl = dense_grad(grads[1]);
    Tensor domega = torch::empty_like(omega);
    const uint8_t* drop = window_drop.numel() > 0 ? window_drop.data_ptr<uint8_t>() : nullptr;
    run_launch(
        "hl::launch_branch_coefficients_backward",
        [&] {
          return launch_branch_coefficients_backward(
              omega.data_ptr(), omega.scalar_type() == torch::kBFloat16, drop,
              dcw.data_ptr<float>(), dcl.data_ptr<float>(), domega.data_ptr(),
              static_cast<int>(batch), heads, ctx->saved_data["affine"].toBool(), stream_of(omega));
        },
        [] { return std::string("branch coefficients backward"); });
    return {domega, Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

// ---- raw entry points ----------------------------------------------------------------------

RawForward forward_raw(const RawInputs& raw, const RawOptions& o, Tensor y_out) {
  const RawInputs in = densify(raw);
  const c10::cuda::CUDAGuard guard(in.q.device());
  const ProblemShape s = shape_of(in, o);
  if (const char* why = unsupported_reason(s))
    throw std::invalid_argument(std::string("cuda attention: ") + why);
  const auto f32 = in.q.options().dtype(torch::kFloat);
  const int64_t rows = static_cast<int64_t>(s.batch) * s.q_heads * s.seq_len;
  RawForward f;
  f.y = output_like(&y_out, in.q, "y_out");
  f.row_max = torch::empty({rows}, f32);
  f.row_denom = torch::empty({rows}, f32);
  f.row_argmax = torch::empty({rows}, f32.dtype(torch::kInt));
  if (o.want_stats) f.stats = torch::empty({rows * 2}, f32);
  f.plan = pick_plan(o.forward_segments, s.batch * s.q_heads, s.seq_len);
  const size_t ws = state_workspace_floats(s, s.batch * s.q_heads, f.plan);
  f.states = torch::empty({static_cast<int64_t>(std::max<size_t>(ws, 1))}, f32);
  ForwardArgs a;
  a.q = ptr(in.q);
  a.k = ptr(in.k);
  a.v = ptr(in.v);
  a.phi_q = ptr(in.phi_q);
  a.phi_k = ptr(in.phi_k);
  a.coef_window = in.coef_window.data_ptr<float>();
  a.coef_linear = in.coef_linear.data_ptr<float>();
  a.window_drop = in.window_drop.defined() ? in.window_drop.data_ptr<uint8_t>() : nullptr;
  a.y = f.y.data_ptr();
  a.row_max = f.row_max.data_ptr<float>();
  a.row_denom = f.row_denom.data_ptr<float>();
  a.row_argmax = f.row_argmax.data_ptr<int32_t>();
  a.branch_stats = f.stats.defined() ? f.stats.data_ptr<float>() : nullptr;
  a.segment_states = ws > 0 ? f.states.data_ptr<float>() : nullptr;
  a.plan = f.plan;
  if (in.map_q.defined()) {
    if (!forward_computes_maps(s, f.plan) || o.want_stats)
      throw std::invalid_argument(
          "cuda attention: these inputs cannot compute the maps in the kernels");
    a.map_q_weight = ptr(in.map_q);
    a.map_k_weight = ptr(in.map_k);
  }
  run_launch(
      "hl::launch_forward", [&] { return launch_forward(s, a, stream_of(in.q)); },
      [] { return std::string("forward"); });
  return f;
}

RawGrads backward_raw(const RawInputs& raw, const RawOptions& o, const RawForward& f,
                      const Tensor& dy_in, const RawGrads* out) {
  const RawInputs in = densify(raw);
  const c10::cuda::CUDAGuard guard(in.q.device());
  const ProblemShape s = shape_of(in, o);
  if (const char* why = unsupported_reason(s))
    throw std::invalid_argument(std::string("cuda attention: ") + why);
  const Tensor dy = dense(dy_in);
  const auto f32 = in.q.options().dtype(torch::kFloat);
  const int64_t rows = static_cast<int64_t>(s.batch) * s.q_heads * s.seq_len;
  RawGrads g;
  g.dq = output_like(out ? &out->dq : nullptr, in.q, "dq");
  g.dk = output_like(out ? &out->dk : nullptr, in.k, "dk");
  g.dv = output_like(out ? &out->dv : nullptr, in.v, "dv");
  if (in.phi_q.defined()) {
    g.dphi_q = output_like(out ? &out->dphi_q : nullptr, in.phi_q, "dphi_q");
    g.dphi_k = output_like(out ? &out->dphi_k : nullptr, in.phi_k, "dphi_k");
  }
  const Tensor row_grads = torch::empty({2, rows}, f32);  // the terms that dc_w, dc_l sum
  const Tensor coef_grads = torch::empty({2, s.batch, s.q_heads}, f32);
  const Tensor row_delta = torch::empty({rows}, f32);
  const Tensor row_gate = torch::empty({rows}, f32);
  const Tensor row_share = torch::empty({rows}, f32);
  const SegmentPlan key_plan = pick_plan(o.key_segments, s.batch * s.kv_heads, s.seq_len);
  const size_t rws = state_workspace_floats(s, s.batch * s.q_heads, key_plan);
  const Tensor reverse = torch::empty({static_cast<int64_t>(std::max<size_t>(rws, 1))}, f32);
  const size_t accum_floats = backward_accum_floats(s, key_plan, in.phi_q.defined());
  const Tensor accum =
      accum_floats > 0 ? torch::empty({static_cast<int64_t>(accum_floats)}, f32) : Tensor();
  BackwardArgs a;
  a.q = ptr(in.q);
  a.k = ptr(in.k);
  a.v = ptr(in.v);
  a.phi_q = ptr(in.phi_q);
  a.phi_k = ptr(in.phi_k);
  a.coef_window = in.coef_window.data_ptr<float>();
  a.coef_linear = in.coef_linear.data_ptr<float>();
  a.window_drop = in.window_drop.defined() ? in.window_drop.data_ptr<uint8_t>() : nullptr;
  a.y = f.y.data_ptr();
  a.dy = dy.data_ptr();
  a.row_max = f.row_max.data_ptr<float>();
  a.row_denom = f.row_denom.data_ptr<float>();
  a.row_argmax = f.row_argmax.data_ptr<int32_t>();
  a.forward_states = f.plan.segments > 1 ? f.states.data_ptr<float>() : nullptr;
  a.forward_plan = f.plan;
  a.dq = g.dq.data_ptr();
  a.dk = g.dk.data_ptr();
  a.dv = g.dv.data_ptr();
  a.dphi_q = g.dphi_q.defined() ? g.dphi_q.data_ptr() : nullptr;
  a.dphi_k = g.dphi_k.defined() ? g.dphi_k.data_ptr() : nullptr;
  a.row_grad_window = row_grads[0].data_ptr<float>();
  a.row_grad_linear = row_grads[1].data_ptr<float>();
  a.coef_grads = coef_grads.data_ptr<float>();
  a.row_delta = row_delta.data_ptr<float>();
  a.row_gate_grad = row_gate.data_ptr<float>();
  a.row_window_share = row_share.data_ptr<float>();
  a.reverse_states = rws > 0 ? reverse.data_ptr<float>() : nullptr;
  a.dkv_accum = accum.defined() ? accum.data_ptr<float>() : nullptr;
  a.key_plan = key_plan;
  a.key_grads = o.key_grads;
  a.query_grads = o.query_grads;
  run_launch(
      "hl::launch_backward", [&] { return launch_backward(s, a, stream_of(in.q)); },
      [] { return std::string("backward"); });
  g.dcoef_window = coef_grads[0];
  g.dcoef_linear = coef_grads[1];
  return g;
}

// ---- dispatch hooks --------------------------------------------------------------------------

bool supports(const detail::Problem& p) {
  return unsupported(p.mode, p.q, p.k, p.v, p.phi_q, p.window, p.want_weights) == nullptr;
}

AttentionOutput attention(const detail::Problem& p) {
  if (const char* why = unsupported(p.mode, p.q, p.k, p.v, p.phi_q, p.window, p.want_weights)) {
    throw std::invalid_argument(std::string("cuda attention: ") + why);
  }
  RawInputs raw;
  raw.q = p.q;
  raw.k = p.k;  // already repeated to the query heads by prepare()
  raw.v = p.v;
  raw.phi_q = p.phi_q;
  raw.phi_k = p.phi_k;
  raw.coef_window = coefficient_matrix(p.coef.window, p.batch, p.heads);
  raw.coef_linear = coefficient_matrix(p.coef.linear, p.batch, p.heads);
  if (p.mode != AttentionMode::linear_only) {
    // Rows with eps are the dropped (linear-only) ones.
    raw.window_drop = (p.coef.eps.reshape({p.batch, p.heads}) > 0).to(torch::kUInt8);
  }
  RawOptions o;
  o.mode = kernel_mode(p.mode);
  o.window = p.window;
  o.overlap = p.mode == AttentionMode::hybrid && p.all_window_keys_linear;
  o.scale = p.scale;
  o.want_stats = p.want_stats;
  return run(raw, o, p.batch, p.heads, p.length);
}

bool supports(const AttentionInputs& in, const AttentionOptions& options, std::string* why) {
  const char* reason =
      unsupported(options.mode, in.q, in.k, in.v, in.phi_q, options.window, options.want_weights);
  if (reason != nullptr && why != nullptr) *why = reason;
  return reason == nullptr;
}

namespace {

// The raw kernels' options of a call.
RawOptions raw_options(const AttentionInputs& in, const AttentionOptions& options) {
  RawOptions o;
  o.mode = kernel_mode(options.mode);
  o.window = options.window;
  o.overlap = options.overlap;
  o.scale = options.scale.value_or(1.0 / std::sqrt(static_cast<double>(in.q.size(3))));
  return o;
}

// c_w, c_l [B, Hq] fp32 of a call whose window_drop is `drop` (dense uint8, or undefined): a
// hybrid call's from omega by one kernel each way, the other modes' by branch_coefficients.
std::pair<Tensor, Tensor> coefficients(const AttentionInputs& in, const AttentionOptions& options,
                                       const Tensor& drop) {
  const int64_t B = in.q.size(0), H = in.q.size(1);
  const Tensor& omega = in.window_factor_logits;
  if (options.mode == AttentionMode::hybrid && omega.defined() &&
      (omega.scalar_type() == torch::kBFloat16 || omega.scalar_type() == torch::kFloat)) {
    // g_h in fp32 from omega of either dtype, as branch_coefficients computes it.
    const auto c = BranchCoefficientsFunction::apply(
        omega, drop.defined() ? drop : torch::empty({0}, omega.options().dtype(torch::kUInt8)), B,
        options.affine_factors);
    return {c[0], c[1]};
  }
  // In fp32, so that bf16 inputs do not round g_h.
  const auto coef = detail::branch_coefficients(
      options.mode, options, omega.defined() ? omega.to(torch::kFloat) : Tensor(), in.window_drop,
      B, H, in.q.options().dtype(torch::kFloat));
  return {dense(coefficient_matrix(coef.window, B, H)),
          dense(coefficient_matrix(coef.linear, B, H))};
}

// The raw kernels' q, k, v, drops and factors c_w, c_l of a call (no phi), and its options.
std::pair<RawInputs, RawOptions> raw_call(const AttentionInputs& in,
                                          const AttentionOptions& options) {
  RawInputs raw;
  raw.q = in.q;
  raw.k = in.k;
  raw.v = in.v;
  if (in.window_drop.defined()) raw.window_drop = dense(in.window_drop.to(torch::kUInt8));
  std::tie(raw.coef_window, raw.coef_linear) = coefficients(in, options, raw.window_drop);
  return {raw, raw_options(in, options)};
}

}  // namespace

AttentionOutput attention(const AttentionInputs& in, const AttentionOptions& options) {
  detail::validate(in, options, "attention");
  std::string why;
  if (!supports(in, options, &why)) throw std::invalid_argument("cuda attention: " + why);
  auto [raw, o] = raw_call(in, options);
  if (options.mode != AttentionMode::window_only || in.window_drop.defined()) {
    raw.phi_q = in.phi_q;
    raw.phi_k = in.phi_k;
  }
  o.want_stats = options.want_stats;
  return run(raw, o, in.q.size(0), in.q.size(1), in.q.size(2));
}

namespace {

const char* hedgehog_maps_unsupported(const AttentionInputs& in, const Tensor& w_q,
                                      const Tensor& w_k, const AttentionOptions& options) {
  if (options.want_stats) return "branch statistics need phi from memory";
  if (const char* why = unsupported(options.mode, in.q, in.k, in.v, Tensor(), options.window,
                                    options.want_weights)) {
    return why;
  }
  if (in.q.scalar_type() != torch::kBFloat16) return "the maps are computed in bf16 kernels only";
  for (const Tensor* w : {&w_q, &w_k}) {
    if (!w->defined() || w->dim() != 3 || w->size(0) != in.q.size(1) ||
        w->size(1) != in.q.size(3) || w->size(2) != 64) {
      return "each map's weight must be [Hq, D, 64]";
    }
    if (w->device() != in.q.device()) return "the maps' weights are not on q's device";
  }
  RawInputs sizes;  // what shape_of reads: q, k and the map that sets F
  sizes.q = in.q;
  sizes.k = in.k;
  sizes.map_q = w_q;
  const ProblemShape s = shape_of(sizes, raw_options(in, options));
  if (!forward_computes_maps(s, pick_plan(0, s.batch * s.q_heads, s.seq_len))) {
    return "the maps are computed only by the Hopper forward (D 64 or 128, w = 64, or w <= 64 "
           "with overlap, linear_only or window_only, an sm_90 GPU)";
  }
  return nullptr;
}

}  // namespace

bool supports_hedgehog_maps(const AttentionInputs& in, const Tensor& w_q, const Tensor& w_k,
                            const AttentionOptions& options, std::string* why) {
  const char* reason = hedgehog_maps_unsupported(in, w_q, w_k, options);
  if (reason != nullptr && why != nullptr) *why = reason;
  return reason == nullptr;
}

AttentionOutput attention_with_hedgehog_maps(const AttentionInputs& in, const Tensor& w_q,
                                             const Tensor& w_k, const AttentionOptions& options) {
  std::string why;
  if (!supports_hedgehog_maps(in, w_q, w_k, options, &why))
    throw std::invalid_argument("cuda attention with hedgehog maps: " + why);
  const torch::NoGradGuard no_grad;
  const c10::cuda::CUDAGuard guard(in.q.device());
  auto [raw, o] = raw_call(in, options);
  raw.map_q = w_q.to(torch::kBFloat16);
  raw.map_k = w_k.to(torch::kBFloat16);
  AttentionOutput out;
  out.y = forward_raw(raw, o).y;
  out.backend = Backend::cuda;
  return out;
}

// ---- feature map activation ----------------------------------------------------------------

namespace {

class PairedActivationFunction : public torch::autograd::Function<PairedActivationFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& r_in, int64_t f) {
    const c10::cuda::CUDAGuard guard(r_in.device());
    const Tensor r = r_in.contiguous();
    const int64_t p = r.size(-1);
    std::vector<int64_t> sizes = r.sizes().vec();
    sizes.back() = 2 * p;
    Tensor phi = torch::empty(sizes, r.options());
    check_launch(launch_paired_activation_forward(
                     r.data_ptr(), phi.data_ptr(), r.numel() / p, static_cast<int>(p),
                     static_cast<PairedActivation>(f), dtype_of(r), stream_of(r)),
                 "feature map activation");
    ctx->save_for_backward({r});
    ctx->saved_data["f"] = f;
    return phi;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor r = ctx->get_saved_variables()[0];
    if (!grads[0].defined()) return {Tensor(), Tensor()};
    const c10::cuda::CUDAGuard guard(r.device());
    const Tensor dphi = grads[0].to(r.scalar_type()).contiguous();
    Tensor dr = torch::empty_like(r);
    const int64_t p = r.size(-1);
    const auto f = static_cast<PairedActivation>(ctx->saved_data["f"].toInt());
    check_launch(launch_paired_activation_backward(r.data_ptr(), dphi.data_ptr(), dr.data_ptr(),
                                                   r.numel() / p, static_cast<int>(p), f,
                                                   dtype_of(r), stream_of(r)),
                 "feature map activation backward");
    return {dr, Tensor()};
  }
};

}  // namespace

bool paired_activation_fusable(const Tensor& r) {
  return r.defined() && r.is_cuda() && r.dim() >= 1 && r.size(-1) >= 1 &&
         r.size(-1) <= kPairedActivationMaxProjection &&
         (r.scalar_type() == torch::kBFloat16 || r.scalar_type() == torch::kFloat);
}

Tensor paired_activation(const Tensor& r, PairedActivation f) {
  if (!paired_activation_fusable(r)) {
    throw std::invalid_argument(
        "cuda paired_activation: needs a bf16 or float32 CUDA tensor with a last axis of 1.." +
        std::to_string(kPairedActivationMaxProjection));
  }
  return PairedActivationFunction::apply(r, static_cast<int64_t>(f));
}

// ---- the decoder's RMSNorm and rotary embedding (inference) --------------------------------

namespace {
bool same_kind(const Tensor& a, const Tensor& b) {
  return a.defined() && b.defined() && a.is_cuda() && a.device() == b.device() &&
         a.scalar_type() == b.scalar_type() &&
         (a.scalar_type() == torch::kBFloat16 || a.scalar_type() == torch::kFloat);
}
}  // namespace

bool rms_norm_fusable(const Tensor& x, const Tensor& weight) {
  return same_kind(x, weight) && x.dim() >= 1 && weight.dim() == 1 &&
         x.size(-1) == weight.size(0) && x.size(-1) >= 1 && x.size(-1) <= kRmsNormMaxCols;
}

Tensor rms_norm(const Tensor& x_in, const Tensor& weight, double eps) {
  if (!rms_norm_fusable(x_in, weight))
    throw std::invalid_argument("cuda rms_norm: needs bf16 or float32 CUDA x [..., C], weight [C]");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous(), w = weight.contiguous();
  Tensor y = torch::empty_like(x);
  const int cols = static_cast<int>(x.size(-1));
  check_launch(launch_rms_norm(x.data_ptr(), w.data_ptr(), y.data_ptr(), x.numel() / cols, cols,
                               static_cast<float>(eps), dtype_of(x), stream_of(x)),
               "rms_norm");
  return y;
}

bool rotary_embedding_fusable(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  return same_kind(x, cos) && same_kind(x, sin) && x.dim() == 4 && x.stride(3) == 1 &&
         x.size(3) % 2 == 0 && x.size(3) <= kRotaryMaxHeadDim && cos.sizes() == sin.sizes() &&
         cos.dim() == 2 && cos.size(0) == x.size(2) && cos.size(1) == x.size(3);
}

Tensor rotary_embedding(const Tensor& x, const Tensor& cos_in, const Tensor& sin_in) {
  if (!rotary_embedding_fusable(x, cos_in, sin_in)) {
    throw std::invalid_argument(
        "cuda rotary_embedding: needs bf16 or float32 CUDA x [B, H, N, d] (d even, last axis "
        "dense) and cos, sin [N, d] of its dtype");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  Tensor y = torch::empty(x.sizes(), x.options());
  check_launch(
      launch_rotary_embedding(x.data_ptr(), x.stride(0), x.stride(1), x.stride(2), cos.data_ptr(),
                              sin.data_ptr(), y.data_ptr(), static_cast<int>(x.size(0)),
                              static_cast<int>(x.size(1)), x.size(2), static_cast<int>(x.size(3)),
                              dtype_of(x), stream_of(x)),
      "rotary_embedding");
  return y;
}

// ---- hedgehog map with its projection ------------------------------------------------------

namespace {

class HedgehogMapFunction : public torch::autograd::Function<HedgehogMapFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x_in, const Tensor& w_in) {
    const c10::cuda::CUDAGuard guard(x_in.device());
    const Tensor x = dense(x_in), w = dense(w_in);  // TMA: 16-byte aligned bases
    const int heads = static_cast<int>(w.size(0)), units = static_cast<int>(x.size(0)) * heads;
    Tensor phi =
        torch::empty({x.size(0), heads, x.size(2), 2 * kHedgehogMapProjection}, x.options());
    run_launch(
        "hl::launch_hedgehog_map_forward",
        [&] {
          return launch_hedgehog_map_forward(ptr(x), ptr(w), phi.data_ptr(), units, heads,
                                             static_cast<int>(x.size(1)), x.size(2),
                                             static_cast<int>(x.size(3)), stream_of(x));
        },
        [&] {
          return "hedgehog map (x " + kernels::detail::shape_of(x) + ", w " +
                 kernels::detail::shape_of(w) + ")";
        });
    ctx->save_for_backward({x, w});
    return phi;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {Tensor(), Tensor()};
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1];
    const c10::cuda::CUDAGuard guard(x.device());
    const Tensor dphi = dense(grads[0].to(x.scalar_type()));
    const int heads = static_cast<int>(w.size(0)), x_heads = static_cast<int>(x.size(1));
    const int units = static_cast<int>(x.size(0)) * heads, d = static_cast<int>(x.size(3));
    // One gradient per map head; a grouped-query x sums its group's below.
    const Tensor dx = ctx->needs_input_grad(0)
                          ? torch::empty({x.size(0), heads, x.size(2), d}, x.options())
                          : Tensor();
    Tensor dw = torch::empty_like(w);
    const Tensor workspace = torch::empty({hedgehog_map_workspace_floats(units, x.size(2), d)},
                                          x.options().dtype(torch::kFloat));
    run_launch(
        "hl::launch_hedgehog_map_backward",
        [&] {
          return launch_hedgehog_map_backward(
              ptr(x), ptr(w), ptr(dphi), dx.defined() ? dx.data_ptr() : nullptr, dw.data_ptr(),
              workspace.data_ptr<float>(), units, heads, x_heads, x.size(2), d, stream_of(x));
        },
        [&] {
          return "hedgehog map backward (x " + kernels::detail::shape_of(x) + ", w " +
                 kernels::detail::shape_of(w) + ", dphi " + kernels::detail::shape_of(dphi) + ")";
        });
    const Tensor dx_in = !dx.defined() || x_heads == heads
                             ? dx
                             : dx.view({x.size(0), x_heads, heads / x_heads, x.size(2), d}).sum(2);
    return {dx_in, ctx->needs_input_grad(1) ? dw : Tensor()};
  }
};

}  // namespace

bool hedgehog_map_fusable(const Tensor& x, const Tensor& w) {
  return x.defined() && w.defined() && x.is_cuda() && w.device() == x.device() &&
         x.scalar_type() == torch::kBFloat16 && w.scalar_type() == torch::kBFloat16 &&
         x.dim() == 4 && w.dim() == 3 && x.size(1) >= 1 && w.size(0) % x.size(1) == 0 &&
         w.size(1) == x.size(3) && w.size(2) == kHedgehogMapProjection && x.size(2) >= 1 &&
         x.size(2) <= INT32_MAX && x.size(0) * w.size(0) <= INT32_MAX &&
         hedgehog_map_supported(static_cast<int>(x.size(3)));
}

Tensor hedgehog_map(const Tensor& x, const Tensor& w) {
  if (!hedgehog_map_fusable(x, w)) {
    throw std::invalid_argument(
        "cuda hedgehog_map: needs bf16 CUDA tensors x [B, Hx, N, d] and w [H, d, " +
        std::to_string(kHedgehogMapProjection) +
        "] with d 64 or 128 and Hx dividing H, on one sm_90 GPU");
  }
  return HedgehogMapFunction::apply(x, w);
}

// ---- recurrent form ----------------------------------------------------------------------

namespace {

ProblemShape step_shape(const AttentionInputs& in, const AttentionOptions& options,
                        int64_t length) {
  ProblemShape s;
  s.batch = static_cast<int>(in.q.size(0));
  s.q_heads = static_cast<int>(in.q.size(1));
  s.kv_heads = static_cast<int>(in.k.size(1));
  s.seq_len = static_cast<int>(length);
  s.head_dim = static_cast<int>(in.q.size(3));
  s.features = in.phi_k.defined() ? static_cast<int>(in.phi_k.size(3)) : 32;
  s.window = static_cast<int>(options.window);
  s.mode = kernel_mode(options.mode);
  s.overlap = options.overlap;
  s.scale = static_cast<float>(
      options.scale.value_or(1.0 / std::sqrt(static_cast<double>(in.q.size(3)))));
  s.eps = static_cast<float>(kLinearOnlyEps);
  s.dtype = dtype_of(in.q);
  return s;
}

DecodeState device_state(RecurrentState& st) {
  DecodeState d;
  if (st.has_linear()) {
    d.S = st.S.data_ptr<float>();
    d.z = st.z.data_ptr<float>();
    d.phik_ring = st.phi_key_ring.data_ptr();
  }
  d.k_ring = st.key_ring.data_ptr();
  d.v_ring = st.value_ring.data_ptr();
  return d;
}

RecurrentState empty_state(const AttentionInputs& in, const AttentionOptions& options) {
  const int64_t B = in.k.size(0), Hkv = in.k.size(1), D = in.k.size(3);
  const auto o = in.k.options();
  RecurrentState st;
  st.window = options.window;
  st.sinks = options.sinks;
  st.key_ring = torch::zeros({B, Hkv, options.window, D}, o);
  st.value_ring = torch::zeros({B, Hkv, options.window, D}, o);
  st.sink_keys = torch::zeros({B, Hkv, options.sinks, D}, o);
  st.sink_values = torch::zeros({B, Hkv, options.sinks, D}, o);
  if (in.phi_k.defined()) {
    const int64_t Hq = in.q.size(1), F = in.phi_k.size(3);
    st.S = torch::zeros({B, Hq, F, D}, o.dtype(torch::kFloat));
    st.z = torch::zeros({B, Hq, F}, o.dtype(torch::kFloat));
    st.phi_key_ring = torch::zeros({B, Hq, options.window, F}, o);
  }
  return st;
}

}  // namespace

PrefillResult prefill(const AttentionInputs& in, const AttentionOptions& options) {
  PrefillResult result;
  result.output = cuda::attention(in, options);
  torch::NoGradGuard no_grad;
  const c10::cuda::CUDAGuard guard(in.q.device());
  RecurrentState& st = result.state;
  st = empty_state(in, options);
  const int64_t N = in.q.size(2), w = options.window;
  const int64_t ring_start = std::max<int64_t>(0, N - w);
  const auto slots = torch::arange(ring_start, N, in.k.options().dtype(torch::kLong)).remainder(w);
  st.key_ring.index_copy_(2, slots, in.k.detach().narrow(2, ring_start, N - ring_start));
  st.value_ring.index_copy_(2, slots, in.v.detach().narrow(2, ring_start, N - ring_start));
  const int64_t sinks = std::min(N, options.sinks);
  st.sink_keys.narrow(2, 0, sinks).copy_(in.k.detach().narrow(2, 0, sinks));
  st.sink_values.narrow(2, 0, sinks).copy_(in.v.detach().narrow(2, 0, sinks));
  if (st.has_linear()) {
    const Tensor phi_k = dense(in.phi_k.detach());
    const Tensor v = dense(in.v.detach());
    st.phi_key_ring.index_copy_(2, slots, phi_k.narrow(2, ring_start, N - ring_start));
    const ProblemShape s = step_shape(in, options, N);
    const SegmentPlan plan = plan_segments(s.batch * s.q_heads, s.seq_len, sm_count());
    const size_t ws =
        std::max<size_t>(state_workspace_floats(s, s.batch * s.q_heads, plan),
                         static_cast<size_t>(s.batch) * s.q_heads *
                             (static_cast<size_t>(s.features) * s.head_dim + s.features));
    const Tensor workspace =
        torch::empty({static_cast<int64_t>(ws)}, in.q.options().dtype(torch::kFloat));
    check_launch(launch_prefill_state(s, phi_k.data_ptr(), v.data_ptr(), device_state(st),
                                      workspace.data_ptr<float>(), plan, stream_of(in.q)),
                 "prefill state");
  }
  st.position = N;
  return result;
}

Tensor decode_step(const AttentionInputs& step, RecurrentState& st,
                   const AttentionOptions& options) {
  detail::validate(step, options, "decode_step", /*single_token=*/true);
  std::string why;
  if (!supports(step, options, &why)) throw std::invalid_argument("cuda decode_step: " + why);
  torch::NoGradGuard no_grad;
  const c10::cuda::CUDAGuard guard(step.q.device());
  if (!st.key_ring.defined()) st = empty_state(step, options);
  if (st.window != options.window) {
    throw std::invalid_argument("cuda decode_step: the state was built for window " +
                                std::to_string(st.window) + " but options.window is " +
                                std::to_string(options.window));
  }
  const bool linear = options.mode != AttentionMode::window_only || step.window_drop.defined();
  if (linear && !st.has_linear()) {
    throw std::invalid_argument("cuda decode_step: this mode needs the linear state (phi_k)");
  }
  if (st.has_linear() && (!step.phi_q.defined() || !step.phi_k.defined())) {
    throw std::invalid_argument(
        "cuda decode_step: the state tracks the linear part, so phi_q and phi_k are needed");
  }
  if (st.has_linear() && st.S.scalar_type() != torch::kFloat) {
    throw std::invalid_argument(
        "cuda decode_step: the state's S must be float32 (made by cuda::prefill)");
  }
  const int64_t t = st.position;
  const ProblemShape s = step_shape(step, options, 1);
  Tensor drop;
  if (step.window_drop.defined()) drop = dense(step.window_drop.to(torch::kUInt8));
  const auto [cw, cl] = coefficients(step, options, drop);
  const Tensor q = dense(step.q.detach()), k = dense(step.k.detach()), v = dense(step.v.detach());
  const Tensor pq = st.has_linear() ? dense(step.phi_q.detach()) : Tensor();
  const Tensor pk = st.has_linear() ? dense(step.phi_k.detach()) : Tensor();
  Tensor y = torch::empty_like(q);
  DecodeArgs a;
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.phi_q = ptr(pq);
  a.phi_k = ptr(pk);
  a.coef_window = cw.data_ptr<float>();
  a.coef_linear = cl.data_ptr<float>();
  a.window_drop = drop.defined() ? drop.data_ptr<uint8_t>() : nullptr;
  a.y = y.data_ptr();
  a.position = static_cast<int>(t);
  if (st.position_on_device.defined()) {
    const Tensor& at = st.position_on_device;
    if (at.scalar_type() != torch::kInt || at.numel() != 1 || at.device() != q.device()) {
      throw std::invalid_argument(
          "cuda decode_step: position_on_device must be one int32 on the inputs' device");
    }
    a.position_device = at.data_ptr<int32_t>();
  }
  a.cluster = decode_cluster_size(s, sm_count());
  check_launch(launch_decode(s, a, device_state(st), stream_of(q)), "decode");
  if (t < st.sinks) {
    st.sink_keys.select(2, t).copy_(k.select(2, 0));
    st.sink_values.select(2, t).copy_(v.select(2, 0));
  }
  st.position = t + 1;
  return y;
}

}  // namespace hl::kernels::cuda
