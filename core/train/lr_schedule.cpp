#include "core/train/lr_schedule.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>

namespace hl::train {

bool parse_lr_schedule(const std::string& text, LrScheduleKind* kind) {
  if (text == "constant") *kind = LrScheduleKind::constant;
  else if (text == "cosine") *kind = LrScheduleKind::cosine;
  else if (text == "plateau") *kind = LrScheduleKind::plateau;
  else return false;
  return true;
}

LrSchedule::LrSchedule(LrScheduleKind kind, double base_lr, int64_t total_steps,
                       int64_t warmup_steps, double plateau_factor, int64_t plateau_patience)
    : kind_(kind),
      base_lr_(base_lr),
      total_steps_(total_steps),
      warmup_steps_(warmup_steps),
      plateau_factor_(plateau_factor),
      plateau_patience_(plateau_patience) {
  assert(base_lr > 0 && total_steps > 0 && warmup_steps >= 0);
  state_.plateau_lr = base_lr;
}

double LrSchedule::lr_at(int64_t step) const {
  double rate = kind_ == LrScheduleKind::plateau ? state_.plateau_lr : base_lr_;
  if (step < warmup_steps_) return rate * double(step + 1) / double(warmup_steps_ + 1);
  if (kind_ != LrScheduleKind::cosine) return rate;
  const double span = double(std::max<int64_t>(1, total_steps_ - warmup_steps_));
  const double progress = std::clamp(double(step - warmup_steps_) / span, 0.0, 1.0);
  return 0.5 * (1.0 + std::cos(M_PI * progress)) * base_lr_;
}

bool LrSchedule::report_validation(double loss) {
  if (kind_ != LrScheduleKind::plateau || !std::isfinite(loss)) return false;
  // PyTorch's ReduceLROnPlateau defaults: relative threshold 1e-4, no cooldown.
  if (loss < state_.best * (1.0 - 1e-4)) {
    state_.best = loss;
    state_.bad_evals = 0;
    return false;
  }
  if (++state_.bad_evals <= plateau_patience_) return false;
  state_.plateau_lr *= plateau_factor_;
  state_.bad_evals = 0;
  ++state_.reductions;
  return true;
}

}  // namespace hl::train
