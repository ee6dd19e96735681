#include "core/train/adamw.hpp"

#include <torch/version.h>

#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

#ifdef HL_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAGraphsC10Utils.h>
#endif

namespace hl::train {
namespace {

// The optimizer's state key for `p`, as torch::optim keys it (a string of the TensorImpl's
// address in LibTorch 1.x, the address itself in later versions).
template <typename Map>
typename Map::key_type state_key(const torch::Tensor& p) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;
    text << p.unsafeGetTensorImpl();
    return text.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

torch::optim::AdamWParamState& adamw_state(torch::optim::OptimizerParamState& state) {
  return static_cast<torch::optim::AdamWParamState&>(state);
}

#if TORCH_VERSION_MAJOR >= 2
// Whether the current CUDA stream is being captured into a graph.
bool capturing() {
#ifdef HL_WITH_CUDA_KERNELS
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
#else
  return false;
#endif
}
#endif

}  // namespace

bool AdamW::fused_available() {
  return TORCH_VERSION_MAJOR >= 2;
}

torch::Tensor AdamW::step(LossClosure closure) {
  if (!fused_available() || !fused_applies()) return torch::optim::AdamW::step(closure);
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  fused_step();
  return loss;
}

bool AdamW::fused_applies() const {
  bool any = false;
  for (const auto& group : param_groups()) {
    if (static_cast<const torch::optim::AdamWOptions&>(group.options()).amsgrad()) return false;
    for (const auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      if (!p.is_cuda() || p.grad().is_sparse() || p.grad().device() != p.device()) return false;
      any = true;
    }
  }
  return any;
}

bool AdamW::capturable() const {
  if (!fused_available() || !fused_applies()) return false;
  const auto& states = state();
  using States = std::remove_reference_t<decltype(states)>;
  for (const auto& group : param_groups()) {
    for (const auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const auto found = states.find(state_key<States>(p));
      const auto device_step = device_steps_.find(p.unsafeGetTensorImpl());
      if (found == states.end() || device_step == device_steps_.end() ||
          device_step->second.mirrors != adamw_state(*found->second).step()) {
        return false;
      }
    }
  }
  return true;
}

torch::Tensor& AdamW::lr_tensor(size_t group, const torch::Device& device) {
  torch::Tensor& lr = lr_tensors_[{group, device.index()}];
  if (!lr.defined()) lr = torch::empty({}, torch::TensorOptions(device).dtype(torch::kFloat32));
  return lr;
}

void AdamW::before_replay() {
  auto& states = state();
  using States = std::remove_reference_t<decltype(states)>;
  for (const auto& group : param_groups()) {
    for (const auto& p : group.params()) {
      auto device_step = device_steps_.find(p.unsafeGetTensorImpl());
      auto found = states.find(state_key<States>(p));
      if (device_step == device_steps_.end() || found == states.end()) continue;  // no gradient
      auto& s = adamw_state(*found->second);
      s.step(s.step() + 1);
      device_step->second.mirrors = s.step();
    }
  }
  for (auto& [where, lr] : lr_tensors_)
    lr.fill_(
        static_cast<const torch::optim::AdamWOptions&>(param_groups()[where.first].options()).lr());
}

void AdamW::fused_step() {
#if TORCH_VERSION_MAJOR >= 2
  torch::NoGradGuard no_grad;
  // Captured, the update is recorded, not run: the host counts advance in before_replay(), and
  // nothing may be made here whose making the replays would repeat.
  const bool recording = capturing();
  auto& states = state();
  using States = std::remove_reference_t<decltype(states)>;
  for (size_t g = 0; g < param_groups().size(); ++g) {
    auto& group = param_groups()[g];
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    // One update per (device, dtype): the fused kernel takes lists of one of each.
    struct Lists {
      std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
    };
    std::map<std::pair<int, int>, Lists> batches;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const auto key = state_key<States>(p);
      auto found = states.find(key);
      DeviceStep& device_step = device_steps_[p.unsafeGetTensorImpl()];
      if (recording &&
          (found == states.end() || device_step.mirrors != adamw_state(*found->second).step())) {
        throw std::logic_error("AdamW: a captured step needs an eager step before it");
      }
      if (found == states.end()) {  // as torch's AdamW initialises it
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        found = states.emplace(key, std::move(fresh)).first;
      }
      auto& s = adamw_state(*found->second);
      Lists& lists = batches[{p.get_device(), static_cast<int>(p.scalar_type())}];
      if (device_step.mirrors != s.step() || !device_step.count.defined()) {
        // The fused kernel reads the count after this step's increment (below).
        device_step.count = torch::full({}, double(s.step()), p.options().dtype(torch::kFloat32));
      }
      if (!recording) {
        s.step(s.step() + 1);
        device_step.mirrors = s.step();
      }
      lists.params.push_back(p);
      lists.grads.push_back(p.grad());
      lists.exp_avgs.push_back(s.exp_avg());
      lists.exp_avg_sqs.push_back(s.exp_avg_sq());
      lists.steps.push_back(device_step.count);
    }
    const auto [beta1, beta2] = options.betas();
    for (auto& [where, lists] : batches) {
      torch::Tensor& lr = lr_tensor(g, lists.params.front().device());
      if (!recording) lr.fill_(options.lr());
      const std::optional<torch::Tensor> skip =
          skip_flag_.defined() ? std::optional<torch::Tensor>(skip_flag_) : std::nullopt;
      at::_foreach_add_(lists.steps, 1.0);
      at::_fused_adamw_(lists.params, lists.grads, lists.exp_avgs, lists.exp_avg_sqs,
                        /*max_exp_avg_sqs=*/{}, lists.steps, lr, beta1, beta2,
                        options.weight_decay(), options.eps(), /*amsgrad=*/false,
                        /*maximize=*/false, /*grad_scale=*/std::nullopt, /*found_inf=*/skip);
      // A skipped update leaves the counts too.
      if (skip)
        at::_foreach_sub_(lists.steps, std::vector<torch::Tensor>(lists.steps.size(), *skip));
    }
  }
  if (!recording) ++fused_steps_;
#endif
}

void clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return;
#if TORCH_VERSION_MAJOR >= 2
  std::vector<torch::Tensor> norms = at::_foreach_norm(grads, 2);
#else
  std::vector<torch::Tensor> norms;
  for (const auto& g : grads)
    norms.push_back(g.norm());
#endif
  for (auto& n : norms)
    n = n.to(torch::kFloat32);
  // As torch's clip_grad_norm_: the factor max_norm / (norm + 1e-6), at most 1.
  const torch::Tensor factor = (max_norm / (torch::stack(norms).norm() + 1e-6)).clamp_max(1.0);
  std::map<torch::ScalarType, std::vector<torch::Tensor>> by_dtype;
  for (const auto& g : grads)
    by_dtype[g.scalar_type()].push_back(g);
  for (auto& [dtype, group] : by_dtype) {
    const torch::Tensor f = factor.to(dtype);
#if TORCH_VERSION_MAJOR >= 2
    at::_foreach_mul_(group, f);
#else
    for (auto& g : group)
      g.mul_(f);
#endif
  }
}

}  // namespace hl::train
