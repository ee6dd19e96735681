#include "core/train/pretrain.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/data/packing.hpp"
#include "core/eval/answers.hpp"
#include "core/io/tokenizer.hpp"
#include "core/model/decoder.hpp"
#include "core/model/model_io.hpp"
#include "core/train/adamw.hpp"
#include "core/train/lr_schedule.hpp"

namespace hl::train {

namespace {

io::ModelConfig llama_shape(int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads,
                            int64_t intermediate, int64_t max_positions) {
  io::ModelConfig config;
  config.model_type = "llama";
  config.architectures = {"LlamaForCausalLM"};
  config.hidden_size = hidden;
  config.num_hidden_layers = layers;
  config.num_attention_heads = heads;
  config.num_key_value_heads = kv_heads;
  config.head_dim = hidden / heads;
  config.intermediate_size = intermediate;
  config.max_position_embeddings = max_positions;
  config.rms_norm_eps = 1e-5;
  config.rope_theta = 10000.0;
  config.tie_word_embeddings = true;
  return config;
}

// GPT-style initialisation: N(0, 0.02) for projections and embeddings, with the residual
// output projections scaled down by depth so that deep stacks start stable.
void initialise(model::CausalLM& model) {
  torch::NoGradGuard no_grad;
  const double residual_std = 0.02 / std::sqrt(2.0 * double(model->num_layers()));
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    if (name.find("norm") != std::string::npos) continue;
    const bool residual =
        name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos;
    item.value().normal_(0.0, residual ? residual_std : 0.02);
  }
}

Result<std::unique_ptr<data::ChunkStream>> text_stream(const std::vector<std::string>& corpus,
                                                       const io::Tokenizer& tokenizer,
                                                       int64_t seq_len, data::SplitSide side,
                                                       uint64_t seed) {
  std::vector<data::WeightedStream> parts;
  for (const auto& spec : corpus) {
    auto source = data::open_text_source(spec);
    if (!source.ok()) return source.error();
    auto split = data::make_split_source(std::move(*source), side, 0.05, seed);
    data::PackerOptions packing;
    packing.seq_len = seq_len;
    packing.loop = side == data::SplitSide::kTrain;
    parts.push_back({data::make_token_packer(std::move(split), tokenizer, packing), 1.0});
  }
  if (parts.size() == 1) return std::move(parts.front().stream);
  return data::make_mixed_stream(std::move(parts), seed);
}

Result<std::vector<data::Batch>> take_batches(data::ChunkStream& stream, int64_t batch_size,
                                              int64_t count) {
  std::vector<data::Batch> batches;
  for (int64_t i = 0; i < count; ++i) {
    auto batch = data::next_batch(stream, batch_size);
    if (!batch.ok()) return batch.error();
    if (!batch->has_value()) break;
    batches.push_back(std::move(**batch));
  }
  return batches;
}

}  // namespace

Result<PretrainPreset> pretrain_preset(const std::string& name) {
  PretrainPreset preset;
  preset.name = name;
  if (name == "tiny") {
    preset.config = llama_shape(128, 4, 4, 2, 384, 1024);
    preset.seq_len = 192;
    preset.batch_size = 16;
    preset.steps = 700;
    preset.lr = 3e-3;
    preset.distances = {24, 48, 80, 112, 144};
    preset.mqar_distances = {24, 48, 80, 112};
    return preset;
  }
  if (name == "small") {
    preset.config = llama_shape(512, 8, 8, 4, 1536, 4096);
    preset.seq_len = 1024;
    preset.batch_size = 32;
    preset.steps = 3000;
    preset.lr = 1e-3;
    preset.warmup_steps = 200;
    preset.distances = {64, 128, 256, 512, 896};
    preset.mqar_distances = {64, 128, 256, 512, 896};
    return preset;
  }
  return make_error("unknown preset '" + name + "' (known: tiny, small)");
}

Result<PretrainReport> pretrain(const PretrainRequest& request, ProgressReporter& progress,
                                const std::atomic<bool>* cancel) {
  const PretrainPreset& preset = request.preset;
  auto device = model::resolve_device(request.device);
  if (!device.ok()) return device.error();
  auto tokenizer = io::make_byte_tokenizer();
  io::ModelConfig config = preset.config;
  config.vocab_size = tokenizer->vocab_size();
  if (tokenizer->bos_id()) config.bos_token_ids = {*tokenizer->bos_id()};
  if (tokenizer->eos_id()) config.eos_token_ids = {*tokenizer->eos_id()};
  config.pad_token_id = tokenizer->pad_id();

  // Data: text and the two generated tasks, mixed by weight.
  auto text = text_stream(request.corpus, *tokenizer, preset.seq_len, data::SplitSide::kTrain,
                          request.seed);
  if (!text.ok()) return text.error();
  std::vector<data::WeightedStream> mix;
  mix.push_back({std::move(*text), 1.0 - preset.passkey_weight - preset.mqar_weight});
  for (auto [task, weight] : {std::pair{data::LongRangeTask::kPasskey, preset.passkey_weight},
                              std::pair{data::LongRangeTask::kMqar, preset.mqar_weight}}) {
    data::LongRangeOptions options;
    options.task = task;
    options.seq_len = preset.seq_len;
    // Training draws every distance between the shortest and the longest, so that no fixed
    // offset between question and fact can stand in for looking the fact up.
    const auto& listed =
        task == data::LongRangeTask::kPasskey ? preset.distances : preset.mqar_distances;
    const auto [shortest, longest] = std::minmax_element(listed.begin(), listed.end());
    options.distances.clear();
    for (int64_t d = *shortest; d <= *longest; ++d)
      options.distances.push_back(d);
    options.seed = request.seed + 17 + static_cast<uint64_t>(task);
    auto stream = data::make_long_range_stream(*tokenizer, options);
    if (!stream.ok()) return stream.error();
    mix.push_back({std::move(*stream), weight});
  }
  auto train_stream = data::make_mixed_stream(std::move(mix), request.seed);
  if (!train_stream.ok()) return train_stream.error();

  torch::manual_seed(request.seed);
  model::CausalLM model(config);
  initialise(model);
  model->to(*device);
  PretrainReport report;
  for (const auto& p : model->parameters())
    report.parameters += p.numel();

  AdamW optimizer(model->parameters(),
                  torch::optim::AdamWOptions(preset.lr).weight_decay(0.1).betas({0.9, 0.95}));
  LrSchedule schedule(LrScheduleKind::cosine, preset.lr, preset.steps, preset.warmup_steps, 0.1, 1);
  progress.begin_phase("pretrain " + preset.name, 0, 1, preset.steps);
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  int64_t tokens_since_report = 0;
  int64_t step = 0;
  for (; step < preset.steps; ++step) {
    if (cancel && cancel->load()) break;
    auto batch = data::next_batch(**train_stream, preset.batch_size);
    if (!batch.ok()) return batch.error();
    if (!batch->has_value()) return make_error("the training corpus ran out of text");
    torch::Tensor tokens = (*batch)->tokens.to(*device);
    const int64_t n = tokens.size(1) - 1;
    torch::Tensor logits = model->forward(tokens.narrow(1, 0, n)).reshape({-1, config.vocab_size});
    torch::Tensor targets = tokens.narrow(1, 1, n).reshape({-1});
    torch::Tensor token_losses = torch::nn::functional::cross_entropy(
        logits, targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    torch::Tensor answers =
        (*batch)->answer_mask.narrow(1, 1, n).reshape({-1}).to(*device, token_losses.dtype());
    const torch::Tensor answer_count = answers.sum().clamp_min(1.0);
    torch::Tensor loss = token_losses.mean();
    if (preset.answer_loss_weight > 0)
      loss = loss + preset.answer_loss_weight * (token_losses * answers).sum() / answer_count;
    optimizer.zero_grad();
    loss.backward();
    clip_grad_norm(model->parameters(), 1.0);
    for (auto& group : optimizer.param_groups())
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(schedule.lr_at(step));
    optimizer.step();
    tokens_since_report += preset.batch_size * n;
    if (step % 10 == 0 || step + 1 == preset.steps) {
      const auto now = std::chrono::steady_clock::now();
      const double seconds = std::chrono::duration<double>(now - last_report).count();
      const double rate = double(tokens_since_report) / std::max(seconds, 1e-9);
      last_report = now;
      tokens_since_report = 0;
      // Share of answer tokens of the generated tasks predicted right in this batch: shows
      // when retrieval forms.
      const double answer_accuracy =
          (logits.argmax(-1).eq(targets).to(answers.dtype()) * answers).sum().item<double>() /
          answer_count.item<double>();
      progress.step(step + 1,
                    {{"loss", loss.item<double>()},
                     {"answer_acc", answer_accuracy},
                     {"lr", schedule.lr_at(step)}},
                    rate);
    }
  }
  report.steps = step;
  model->eval();

  // Held-out text loss against the unigram baseline of the training text.
  auto val_stream = text_stream(request.corpus, *tokenizer, preset.seq_len,
                                data::SplitSide::kValidation, request.seed);
  if (!val_stream.ok()) return val_stream.error();
  auto val_batches = take_batches(**val_stream, preset.batch_size, 4);
  if (!val_batches.ok()) return val_batches.error();
  if (val_batches->empty()) return make_error("the corpus has too little held-out text");
  torch::Tensor counts = torch::ones({config.vocab_size}, torch::kFloat64);  // add-one
  {
    auto unigram_stream = text_stream(request.corpus, *tokenizer, preset.seq_len,
                                      data::SplitSide::kTrain, request.seed);
    if (!unigram_stream.ok()) return unigram_stream.error();
    auto sample = take_batches(**unigram_stream, preset.batch_size, 16);
    if (!sample.ok()) return sample.error();
    for (const auto& b : *sample)
      counts += torch::bincount(b.tokens.flatten(), {}, config.vocab_size).to(torch::kFloat64);
  }
  torch::Tensor log_prob = (counts / counts.sum()).log();
  double val_sum = 0, unigram_sum = 0;
  for (const auto& b : *val_batches) {
    val_sum += eval::mean_token_loss(model, b.tokens);
    unigram_sum += -log_prob.index_select(0, b.tokens.narrow(1, 1, b.tokens.size(1) - 1).flatten())
                        .mean()
                        .item<double>();
  }
  report.val_loss = val_sum / double(val_batches->size());
  report.unigram_loss = unigram_sum / double(val_batches->size());

  for (int64_t distance : preset.distances) {
    data::LongRangeOptions options;
    options.seq_len = preset.seq_len;
    options.distances = {distance};
    options.seed = request.seed + 1000 + static_cast<uint64_t>(distance);
    auto stream = data::make_long_range_stream(*tokenizer, options);
    if (!stream.ok()) return stream.error();
    auto batches = take_batches(**stream, 32, 2);
    if (!batches.ok()) return batches.error();
    eval::AnswerScore score;
    for (const auto& b : *batches)
      score.add(eval::score_answers(model, b.tokens, b.answer_mask));
    report.passkey_accuracy.emplace_back(distance, score.exact_accuracy());
    report.passkey_token_accuracy.emplace_back(distance, score.token_accuracy());
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  model->to(torch::kCPU);
  if (auto saved = model::save_model(model, request.out_dir); !saved.ok()) return saved.error();
  if (auto saved = io::save_tokenizer(request.out_dir, io::byte_tokenizer_json()); !saved.ok())
    return saved.error();
  nlohmann::json json_report{
      {"preset", preset.name},           {"steps", report.steps},
      {"parameters", report.parameters}, {"seconds", report.seconds},
      {"val_loss", report.val_loss},     {"unigram_loss", report.unigram_loss}};
  for (auto [distance, accuracy] : report.passkey_accuracy)
    json_report["passkey_accuracy"][std::to_string(distance)] = accuracy;
  for (auto [distance, accuracy] : report.passkey_token_accuracy)
    json_report["passkey_token_accuracy"][std::to_string(distance)] = accuracy;
  std::ofstream(request.out_dir / "pretrain_report.json") << json_report.dump(2) << "\n";
  return report;
}

}  // namespace hl::train
