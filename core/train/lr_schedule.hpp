// Learning-rate schedules of a training stage: constant, cosine with linear warm-up, and
// reduce-on-plateau (driven by validation losses).
#pragma once

#include <cstdint>
#include <limits>
#include <string>

namespace hl::train {

enum class LrScheduleKind { constant, cosine, plateau };

/// Parses "constant", "cosine" or "plateau"; returns false for anything else.
bool parse_lr_schedule(const std::string& text, LrScheduleKind* kind);

/// The learning rate of every step of one stage. Its state is plain data, so checkpoints
/// can store it and a resumed stage continues with the same rates.
class LrSchedule {
 public:
  struct State {
    double plateau_lr = 0;  // current rate of the plateau schedule
    double best = std::numeric_limits<double>::infinity();
    int64_t bad_evals = 0;
    int64_t reductions = 0;
  };

  LrSchedule(LrScheduleKind kind, double base_lr, int64_t total_steps, int64_t warmup_steps,
             double plateau_factor, int64_t plateau_patience);

  /// Rate for `step` (0-based). Warm-up applies to every kind.
  double lr_at(int64_t step) const;
  /// Feeds a validation loss to the plateau schedule; returns true when the rate dropped.
  bool report_validation(double loss);

  const State& state() const { return state_; }
  void restore(const State& state) { state_ = state; }

 private:
  LrScheduleKind kind_;
  double base_lr_;
  int64_t total_steps_, warmup_steps_;
  double plateau_factor_;
  int64_t plateau_patience_;
  State state_;
};

}  // namespace hl::train
