#include "core/model/autocast.hpp"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace hl::model {
namespace {

// LibTorch 2.4 replaced the CUDA-only calls by per-device-type ones.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool cuda_enabled() {
  return at::autocast::is_autocast_enabled(at::kCUDA);
}
void set_cuda_enabled(bool on) {
  at::autocast::set_autocast_enabled(at::kCUDA, on);
}
torch::ScalarType cuda_dtype() {
  return at::autocast::get_autocast_dtype(at::kCUDA);
}
void set_cuda_dtype(torch::ScalarType t) {
  at::autocast::set_autocast_dtype(at::kCUDA, t);
}
#else
bool cuda_enabled() {
  return at::autocast::is_enabled();
}
void set_cuda_enabled(bool on) {
  at::autocast::set_enabled(on);
}
torch::ScalarType cuda_dtype() {
  return at::autocast::get_autocast_gpu_dtype();
}
void set_cuda_dtype(torch::ScalarType t) {
  at::autocast::set_autocast_gpu_dtype(t);
}
#endif

}  // namespace

std::optional<torch::ScalarType> active_autocast_dtype(const torch::Device& device) {
  if (!device.is_cuda() || !cuda_enabled()) return std::nullopt;
  return cuda_dtype();
}

AutocastScope::AutocastScope(std::optional<torch::ScalarType> dtype) {
  if (!dtype) return;
  active_ = true;
  previous_enabled_ = cuda_enabled();
  previous_dtype_ = cuda_dtype();
  set_cuda_enabled(true);
  set_cuda_dtype(*dtype);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  // Leaving the outermost scope drops the casted copies of the weights autocast cached.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_cuda_enabled(previous_enabled_);
  set_cuda_dtype(previous_dtype_);
}

}  // namespace hl::model
