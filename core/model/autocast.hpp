// Mixed precision on CUDA: matrix products in a lower precision with fp32 weights kept as the
// master copy (LibTorch's autocast), wrapped so that callers need not follow its API changes
// between LibTorch versions.
#pragma once

#include <torch/torch.h>

#include <optional>

namespace hl::model {

/// The dtype autocast computes in on `device`, or nullopt when it is off there.
std::optional<torch::ScalarType> active_autocast_dtype(const torch::Device& device);

/// Turns autocast on for CUDA in `dtype` for its lifetime (nothing when `dtype` is nullopt),
/// restoring the previous setting after. Autograd's backward needs no scope: it replays the
/// forward's dtypes.
class AutocastScope {
 public:
  explicit AutocastScope(std::optional<torch::ScalarType> dtype);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  bool previous_enabled_ = false;
  torch::ScalarType previous_dtype_ = torch::kFloat;
};

}  // namespace hl::model
