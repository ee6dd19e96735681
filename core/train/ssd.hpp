// Scheduled sliding-window dropout (SSD): in a training step the window branch of a unit
// is dropped with probability p, so that unit computes linear-only attention.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace hl::train {

/// What one dropout decision covers: the whole model, a layer, a (layer, head), or a
/// (layer, sequence of the batch).
enum class SsdGranularity { step, layer, head, sequence };

/// Parses "step", "layer", "head" or "sequence"; returns false for anything else.
bool parse_ssd_granularity(const std::string& text, SsdGranularity* granularity);

/// Drop masks for one forward pass.
struct SsdDraw {
  std::vector<torch::Tensor> masks;  ///< per converted layer, [B, H] bool; true = dropped
  int64_t dropped_units = 0;
  int64_t units = 0;
};

/// Draws SSD masks from its own seeded generator, whose state checkpoints carry.
class SsdSampler {
 public:
  SsdSampler(SsdGranularity granularity, uint64_t seed);

  /// Masks for `layers` converted layers of a [batch, heads] attention, each unit dropped
  /// with probability `p`.
  SsdDraw draw(double p, int64_t layers, int64_t batch, int64_t heads);

  /// The generator's state as text (for checkpoints) and back.
  std::string save_state() const;
  bool restore_state(const std::string& state);

 private:
  SsdGranularity granularity_;
  std::mt19937_64 rng_;
};

}  // namespace hl::train
