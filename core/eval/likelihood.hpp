// Likelihood-based scores: next-token loss split by position (within the first w tokens of
// the context vs beyond), and log-likelihood scoring of multiple-choice items.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/eval/tasks.hpp"
#include "core/io/tokenizer.hpp"
#include "core/model/decoder.hpp"
#include "core/util/error.hpp"

namespace hl::eval {

/// Summed next-token losses (nats), overall and split at the window: a target is "within"
/// when its whole context (itself excluded) has at most w tokens, i.e. the window sees all
/// of it; beyond w only the linear branch reaches the older tokens.
struct PositionLoss {
  double sum = 0, within_sum = 0, beyond_sum = 0;
  int64_t count = 0, within = 0, beyond = 0;

  void add(const PositionLoss& other);
  double ppl() const { return count ? std::exp(sum / double(count)) : NAN; }
  double ppl_within() const { return within ? std::exp(within_sum / double(within)) : NAN; }
  double ppl_beyond() const { return beyond ? std::exp(beyond_sum / double(beyond)) : NAN; }
};

/// Losses of tokens [B, N+1] (inputs [0, N), targets [1, N]) split at `window`.
PositionLoss position_loss(model::CausalLM& model, const torch::Tensor& tokens, int64_t window,
                           const model::ForwardOptions& options = {});

/// How one item was answered.
struct McItemScore {
  std::vector<double> logliks;  ///< summed log-probability of each continuation
  int64_t prediction = 0;       ///< argmax of logliks
  int64_t prediction_norm = 0;  ///< argmax of logliks / bytes of the choice text
};

/// Picks the answers from the choices' log-likelihoods: the argmax, and the argmax of
/// loglik / bytes of the choice text (at least 1 byte); ties go to the lower index.
McItemScore rank_choices(const McItem& item, std::vector<double> logliks);

/// Accuracy over items (lm-evaluation-harness: acc, and acc_norm which divides each
/// choice's log-likelihood by the byte length of the choice).
struct McScore {
  int64_t items = 0, correct = 0, correct_norm = 0;
  double acc() const { return items ? double(correct) / double(items) : 0.0; }
  double acc_norm() const { return items ? double(correct_norm) / double(items) : 0.0; }
  void add(const McItem& item, const McItemScore& score);
};

/// Scores every choice of `item`: context and context + continuation are tokenised whole
/// (the continuation's tokens are what the whole adds to the context, trailing spaces of
/// the context moving to the continuation), the context is cut from the left so that the
/// sequence fits `max_length` tokens, and the choices run as one batch. Errors when a
/// continuation alone does not fit.
Result<McItemScore> score_mc_item(model::CausalLM& model, const io::Tokenizer& tokenizer,
                                  const McItem& item, int64_t max_length,
                                  const model::ForwardOptions& options = {});

}  // namespace hl::eval
