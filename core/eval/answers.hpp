// Scoring of answer tokens (passkey, associative recall): greedy accuracy from one parallel
// forward, since with teacher forcing every answer token argmax-correct is exactly what
// greedy decoding would produce.
#pragma once

#include <torch/torch.h>

#include "core/model/decoder.hpp"

namespace hl::eval {

/// Accuracy over the answers of a batch.
struct AnswerScore {
  int64_t answers = 0;         ///< rows with at least one answer token
  int64_t exact = 0;           ///< rows whose every answer token is predicted
  int64_t tokens = 0;          ///< answer tokens
  int64_t tokens_correct = 0;  ///< answer tokens predicted
  double loss_sum = 0;         ///< summed cross-entropy over answer tokens

  double exact_accuracy() const { return answers ? double(exact) / double(answers) : 0.0; }
  double token_accuracy() const { return tokens ? double(tokens_correct) / double(tokens) : 0.0; }
  void add(const AnswerScore& other);
};

/// Scores tokens [B, N+1] whose answer_mask [B, N+1] marks answer tokens (as targets).
AnswerScore score_answers(model::CausalLM& model, const torch::Tensor& tokens,
                          const torch::Tensor& answer_mask,
                          const model::ForwardOptions& options = {});

/// Mean next-token cross-entropy of tokens [B, N+1] (all positions).
double mean_token_loss(model::CausalLM& model, const torch::Tensor& tokens,
                       const model::ForwardOptions& options = {});

}  // namespace hl::eval
