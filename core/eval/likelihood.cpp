#include "core/eval/likelihood.hpp"

#include <algorithm>

namespace hl::eval {

void PositionLoss::add(const PositionLoss& other) {
  sum += other.sum;
  within_sum += other.within_sum;
  beyond_sum += other.beyond_sum;
  count += other.count;
  within += other.within;
  beyond += other.beyond;
}

PositionLoss position_loss(model::CausalLM& model, const torch::Tensor& tokens, int64_t window,
                           const model::ForwardOptions& options) {
  torch::NoGradGuard no_grad;
  const auto device = model->model->embed_tokens->weight.device();
  const int64_t n = tokens.size(1) - 1;
  torch::Tensor logits = model->forward(tokens.narrow(1, 0, n).to(device), options);
  torch::Tensor losses =
      torch::nn::functional::cross_entropy(
          logits.to(torch::kFloat32).reshape({-1, logits.size(-1)}),
          tokens.narrow(1, 1, n).to(device).reshape({-1}),
          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone))
          .view({tokens.size(0), n})
          .to(torch::kCPU, torch::kFloat64);
  // Input position i predicts token i + 1 from a context of i + 1 tokens.
  const int64_t split = std::clamp<int64_t>(window, 0, n);
  PositionLoss out;
  out.count = losses.numel();
  out.sum = losses.sum().item<double>();
  out.within = tokens.size(0) * split;
  out.within_sum = split > 0 ? losses.narrow(1, 0, split).sum().item<double>() : 0.0;
  out.beyond = out.count - out.within;
  out.beyond_sum = out.sum - out.within_sum;
  return out;
}

void McScore::add(const McItem& item, const McItemScore& score) {
  ++items;
  correct += score.prediction == item.gold;
  correct_norm += score.prediction_norm == item.gold;
}

Result<McItemScore> score_mc_item(model::CausalLM& model, const io::Tokenizer& tokenizer,
                                  const McItem& item, int64_t max_length,
                                  const model::ForwardOptions& options) {
  torch::NoGradGuard no_grad;
  const int64_t choices = static_cast<int64_t>(item.choices.size());
  std::vector<std::vector<int32_t>> sequences(choices);
  std::vector<int64_t> continuation_tokens(choices);
  for (int64_t c = 0; c < choices; ++c) {
    std::string context = item.choices[c].context, continuation = item.choices[c].continuation;
    while (!context.empty() && context.back() == ' ') {
      continuation.insert(continuation.begin(), ' ');
      context.pop_back();
    }
    std::vector<int32_t> context_ids = tokenizer.encode(context);
    std::vector<int32_t> whole = tokenizer.encode(context + continuation);
    std::vector<int32_t> tail;
    if (whole.size() > context_ids.size() &&
        std::equal(context_ids.begin(), context_ids.end(), whole.begin()))
      tail.assign(whole.begin() + static_cast<int64_t>(context_ids.size()), whole.end());
    else
      tail = tokenizer.encode(continuation);  // the merge crossed the boundary
    if (tail.empty()) return make_error("choice " + std::to_string(c) + " has no tokens");
    if (context_ids.empty()) {
      // Something to condition the first continuation token on.
      auto start = tokenizer.bos_id() ? tokenizer.bos_id() : tokenizer.eos_id();
      context_ids.push_back(start.value_or(0));
    }
    const int64_t room = max_length + 1 - static_cast<int64_t>(tail.size());
    if (room < 1)
      return make_error("choice " + std::to_string(c) + " has " + std::to_string(tail.size()) +
                        " tokens, more than the context of " + std::to_string(max_length));
    if (static_cast<int64_t>(context_ids.size()) > room)
      context_ids.erase(context_ids.begin(), context_ids.end() - room);
    sequences[c] = context_ids;
    sequences[c].insert(sequences[c].end(), tail.begin(), tail.end());
    continuation_tokens[c] = static_cast<int64_t>(tail.size());
  }
  int64_t longest = 0;
  for (const auto& s : sequences)
    longest = std::max<int64_t>(longest, s.size());
  // Right padding: causal attention keeps it out of the positions that are scored.
  torch::Tensor ids = torch::zeros({choices, longest}, torch::kInt64);
  auto access = ids.accessor<int64_t, 2>();
  for (int64_t c = 0; c < choices; ++c)
    for (size_t t = 0; t < sequences[c].size(); ++t)
      access[c][int64_t(t)] = sequences[c][t];
  const auto device = model->model->embed_tokens->weight.device();
  torch::Tensor log_probs =
      torch::log_softmax(
          model->forward(ids.narrow(1, 0, longest - 1).to(device), options).to(torch::kFloat64), -1)
          .cpu();
  std::vector<double> logliks;
  for (int64_t c = 0; c < choices; ++c) {
    const int64_t length = static_cast<int64_t>(sequences[c].size());
    double sum = 0;
    for (int64_t t = length - continuation_tokens[c]; t < length; ++t)
      sum += log_probs[c][t - 1][access[c][t]].item<double>();
    logliks.push_back(sum);
  }
  return rank_choices(item, std::move(logliks));
}

McItemScore rank_choices(const McItem& item, std::vector<double> logliks) {
  assert(logliks.size() == item.choices.size());
  McItemScore score;
  double best = -INFINITY, best_norm = -INFINITY;
  for (size_t c = 0; c < logliks.size(); ++c) {
    const double bytes = std::max<double>(1.0, double(item.choices[c].text.size()));
    if (logliks[c] > best) best = logliks[c], score.prediction = int64_t(c);
    if (logliks[c] / bytes > best_norm)
      best_norm = logliks[c] / bytes, score.prediction_norm = int64_t(c);
  }
  score.logliks = std::move(logliks);
  return score;
}

}  // namespace hl::eval
