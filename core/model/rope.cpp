#include "core/model/rope.hpp"

#include <cmath>

#include "kernels/model_ops.hpp"

namespace hl::model {

torch::Tensor rope_inverse_frequencies(int64_t head_dim, double theta,
                                       const std::optional<io::RopeScalingConfig>& scaling) {
  TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be even, got ", head_dim);
  auto exponents = torch::arange(0, head_dim, 2, torch::kInt64).to(torch::kFloat32) /
                   static_cast<double>(head_dim);
  torch::Tensor inv_freq = 1.0 / torch::pow(torch::tensor(theta, torch::kFloat32), exponents);
  if (!scaling || scaling->type != "llama3") return inv_freq;

  // Llama 3: long wavelengths are slowed by `factor`, short ones kept, and the band in
  // between interpolated, so that the model's short-range behaviour is unchanged.
  const double old_len = static_cast<double>(scaling->original_max_position_embeddings);
  const double low_wavelen = old_len / scaling->low_freq_factor;
  const double high_wavelen = old_len / scaling->high_freq_factor;
  torch::Tensor wavelen = 2.0 * M_PI / inv_freq;
  torch::Tensor scaled = torch::where(wavelen > low_wavelen, inv_freq / scaling->factor, inv_freq);
  torch::Tensor smooth = (old_len / wavelen - scaling->low_freq_factor) /
                         (scaling->high_freq_factor - scaling->low_freq_factor);
  torch::Tensor smoothed = (1.0 - smooth) * scaled / scaling->factor + smooth * scaled;
  torch::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return torch::where(medium, smoothed, scaled);
}

std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor& inverse_frequencies,
                                                     const torch::Tensor& positions) {
  torch::Tensor freqs =
      torch::outer(positions.to(torch::kFloat32), inverse_frequencies.to(positions.device()));
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos(), emb.sin()};
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos,
                         const torch::Tensor& sin) {
  if (torch::Tensor fused = kernels::fused_rotary_embedding(x, cos, sin); fused.defined())
    return fused;
  const int64_t half = x.size(-1) / 2;
  torch::Tensor x1 = x.narrow(-1, 0, half);
  torch::Tensor x2 = x.narrow(-1, half, half);
  torch::Tensor rotated = torch::cat({-x2, x1}, -1);
  return x * cos.to(x.dtype()) + rotated * sin.to(x.dtype());
}

}  // namespace hl::model
