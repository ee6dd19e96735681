#include "core/train/ssd.hpp"

#include <sstream>

namespace hl::train {

bool parse_ssd_granularity(const std::string& text, SsdGranularity* granularity) {
  if (text == "step") *granularity = SsdGranularity::step;
  else if (text == "layer") *granularity = SsdGranularity::layer;
  else if (text == "head") *granularity = SsdGranularity::head;
  else if (text == "sequence") *granularity = SsdGranularity::sequence;
  else return false;
  return true;
}

SsdSampler::SsdSampler(SsdGranularity granularity, uint64_t seed)
    : granularity_(granularity), rng_(seed) {}

SsdDraw SsdSampler::draw(double p, int64_t layers, int64_t batch, int64_t heads) {
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "SSD drop probability must be in [0, 1], got ", p);
  std::bernoulli_distribution coin(p);
  SsdDraw draw;
  const bool whole_model_dropped = granularity_ == SsdGranularity::step && coin(rng_);
  if (granularity_ == SsdGranularity::step) {
    draw.units = 1;
    draw.dropped_units = whole_model_dropped ? 1 : 0;
  }
  for (int64_t layer = 0; layer < layers; ++layer) {
    torch::Tensor mask = torch::zeros({batch, heads}, torch::kBool);
    auto cells = mask.accessor<bool, 2>();
    auto set_rows = [&](int64_t b, bool value) {
      for (int64_t h = 0; h < heads; ++h) cells[b][h] = value;
    };
    switch (granularity_) {
      case SsdGranularity::step:
        for (int64_t b = 0; b < batch; ++b) set_rows(b, whole_model_dropped);
        break;
      case SsdGranularity::layer: {
        bool dropped = coin(rng_);
        for (int64_t b = 0; b < batch; ++b) set_rows(b, dropped);
        draw.units += 1;
        draw.dropped_units += dropped;
        break;
      }
      case SsdGranularity::head:
        for (int64_t h = 0; h < heads; ++h) {
          bool dropped = coin(rng_);
          for (int64_t b = 0; b < batch; ++b) cells[b][h] = dropped;
          draw.units += 1;
          draw.dropped_units += dropped;
        }
        break;
      case SsdGranularity::sequence:
        for (int64_t b = 0; b < batch; ++b) {
          bool dropped = coin(rng_);
          set_rows(b, dropped);
          draw.units += 1;
          draw.dropped_units += dropped;
        }
        break;
    }
    draw.masks.push_back(mask);
  }
  return draw;
}

std::string SsdSampler::save_state() const {
  std::ostringstream out;
  out << rng_;
  return out.str();
}

bool SsdSampler::restore_state(const std::string& state) {
  std::istringstream in(state);
  in >> rng_;
  return !in.fail();
}

}  // namespace hl::train
