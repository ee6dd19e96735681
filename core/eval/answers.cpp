#include "core/eval/answers.hpp"

namespace hl::eval {

void AnswerScore::add(const AnswerScore& other) {
  answers += other.answers;
  exact += other.exact;
  tokens += other.tokens;
  tokens_correct += other.tokens_correct;
  loss_sum += other.loss_sum;
}

AnswerScore score_answers(model::CausalLM& model, const torch::Tensor& tokens,
                          const torch::Tensor& answer_mask, const model::ForwardOptions& options) {
  torch::NoGradGuard no_grad;
  const auto device = model->model->embed_tokens->weight.device();
  const int64_t n = tokens.size(1) - 1;
  torch::Tensor inputs = tokens.narrow(1, 0, n).to(device);
  torch::Tensor targets = tokens.narrow(1, 1, n).to(device);
  torch::Tensor mask = answer_mask.narrow(1, 1, n).to(device);
  torch::Tensor logits = model->forward(inputs, options).to(torch::kFloat32);
  torch::Tensor correct = logits.argmax(-1).eq(targets).logical_or(mask.logical_not());
  torch::Tensor has_answer = mask.any(1);
  torch::Tensor losses = torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  AnswerScore score;
  score.answers = has_answer.sum().item<int64_t>();
  score.exact = correct.all(1).logical_and(has_answer).sum().item<int64_t>();
  score.tokens = mask.sum().item<int64_t>();
  score.tokens_correct = logits.argmax(-1).eq(targets).logical_and(mask).sum().item<int64_t>();
  score.loss_sum = (losses * mask.reshape({-1}).to(losses.dtype())).sum().item<double>();
  return score;
}

double mean_token_loss(model::CausalLM& model, const torch::Tensor& tokens,
                       const model::ForwardOptions& options) {
  torch::NoGradGuard no_grad;
  const auto device = model->model->embed_tokens->weight.device();
  const int64_t n = tokens.size(1) - 1;
  torch::Tensor logits =
      model->forward(tokens.narrow(1, 0, n).to(device), options).to(torch::kFloat32);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              tokens.narrow(1, 1, n).to(device).reshape({-1}))
      .item<double>();
}

}  // namespace hl::eval
