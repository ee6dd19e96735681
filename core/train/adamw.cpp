#include "core/train/adamw.hpp"

#include <torch/version.h>

#include <map>
#include <sstream>
#include <string>
#include <type_traits>

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

void AdamW::fused_step() {
#if TORCH_VERSION_MAJOR >= 2
  torch::NoGradGuard no_grad;
  auto& states = state();
  using States = std::remove_reference_t<decltype(states)>;
  for (auto& group : param_groups()) {
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
      if (found == states.end()) {  // as torch's AdamW initialises it
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        found = states.emplace(key, std::move(fresh)).first;
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*found->second);
      DeviceStep& device_step = device_steps_[p.unsafeGetTensorImpl()];
      Lists& lists = batches[{p.get_device(), static_cast<int>(p.scalar_type())}];
      if (device_step.mirrors != s.step() || !device_step.count.defined()) {
        // The fused kernel reads the count after this step's increment (below).
        device_step.count = torch::full({}, double(s.step()), p.options().dtype(torch::kFloat32));
      }
      s.step(s.step() + 1);
      device_step.mirrors = s.step();
      lists.params.push_back(p);
      lists.grads.push_back(p.grad());
      lists.exp_avgs.push_back(s.exp_avg());
      lists.exp_avg_sqs.push_back(s.exp_avg_sq());
      lists.steps.push_back(device_step.count);
    }
    const auto [beta1, beta2] = options.betas();
    for (auto& [where, lists] : batches) {
      at::_foreach_add_(lists.steps, 1.0);
      at::_fused_adamw_(lists.params, lists.grads, lists.exp_avgs, lists.exp_avg_sqs,
                        /*max_exp_avg_sqs=*/{}, lists.steps, options.lr(), beta1, beta2,
                        options.weight_decay(), options.eps(), /*amsgrad=*/false,
                        /*maximize=*/false, /*grad_scale=*/std::nullopt,
                        /*found_inf=*/std::nullopt);
    }
  }
  ++fused_steps_;
#endif
}

}  // namespace hl::train
