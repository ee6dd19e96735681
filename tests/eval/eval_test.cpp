// Evaluation pieces on real components: task files parsed from disk, a real (random-weight)
// model scored through the same code path as `eval`, a real SQLite store for the base cache.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "core/eval/answers.hpp"
#include "core/eval/evaluate.hpp"
#include "core/eval/likelihood.hpp"
#include "core/store/run_reader.hpp"
#include "core/util/paths.hpp"
#include "test_paths.hpp"
#include "tiny_model.hpp"

namespace hl::eval {
namespace {

namespace fs = std::filesystem;

fs::path resource(const std::string& name) {
  return fs::path(test::kSourceDir) / "resources" / "tasks" / name;
}

fs::path temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("hl_eval_" + name + "_" + std::to_string(::getpid()));
  hl::remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

fs::path write_file(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

model::CausalLM random_model(int64_t max_positions = 512, uint64_t seed = 1) {
  io::ModelConfig config =
      testing::tiny_model_config(io::make_byte_tokenizer()->vocab_size(), max_positions);
  config.tie_word_embeddings = true;
  torch::manual_seed(seed);
  model::CausalLM model(config);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters())
    p.copy_(torch::randn_like(p) * 0.3);
  model->eval();
  return model;
}

void convert(model::CausalLM& model, int64_t window) {
  model::ConversionOptions conversion;
  conversion.window = window;
  conversion.feature_dim = 8;
  model->convert(conversion);
}

const EvalResult* row(const std::vector<EvalResult>& rows, const std::string& task,
                      const std::string& mode, const std::string& metric) {
  for (const auto& r : rows)
    if (r.task == task && r.mode == mode && r.metric == metric) return &r;
  return nullptr;
}

TEST(Choices, AccNormDividesByTheChoiceBytes) {
  McItem item;
  item.choices = {{"q", " ab", "ab"}, {"q", " abcdef", "abcdef"}, {"q", " x", "x"}};
  item.gold = 1;
  // acc: -6 is the largest; acc_norm: -6/2 = -3, -9/6 = -1.5, -7/1 = -7, so choice 1.
  McItemScore score = rank_choices(item, {-6.0, -9.0, -7.0});
  EXPECT_EQ(score.prediction, 0);
  EXPECT_EQ(score.prediction_norm, 1);
  McScore total;
  total.add(item, score);
  item.gold = 0;
  total.add(item, rank_choices(item, {-1.0, -5.0, -4.0}));  // -0.5, -0.83, -4: both pick 0
  EXPECT_EQ(total.items, 2);
  EXPECT_DOUBLE_EQ(total.acc(), 0.5);
  EXPECT_DOUBLE_EQ(total.acc_norm(), 1.0);
}

// The hand-made task file scored through evaluate() equals log-likelihoods computed here
// one choice at a time in float64, and acc / acc_norm equal the values picked by hand from
// those log-likelihoods and the choices' byte lengths.
TEST(Choices, HandMadeTaskFileMatchesAReferenceComputation) {
  auto tokenizer = io::make_byte_tokenizer();
  model::CausalLM model = random_model();
  model->to(torch::kFloat64);
  auto task = load_mc_task(resource("simple_choice.jsonl"));
  ASSERT_TRUE(task.ok()) << task.error().to_string();
  ASSERT_EQ(task->items.size(), 4u);
  int correct = 0, correct_norm = 0;
  torch::NoGradGuard no_grad;
  for (const auto& item : task->items) {
    std::vector<double> reference;
    for (const auto& choice : item.choices) {
      auto context = tokenizer->encode(choice.context);
      auto continuation = tokenizer->encode(choice.continuation);  // bytes: no merges
      std::vector<int64_t> ids(context.begin(), context.end());
      ids.insert(ids.end(), continuation.begin(), continuation.end());
      torch::Tensor logp = torch::log_softmax(
          model->forward(torch::tensor(ids).view({1, -1}).narrow(1, 0, int64_t(ids.size()) - 1)),
          -1);
      double sum = 0;
      for (size_t t = context.size(); t < ids.size(); ++t)
        sum += logp[0][int64_t(t) - 1][ids[t]].item<double>();
      reference.push_back(sum);
    }
    auto scored = score_mc_item(model, *tokenizer, item, 512);
    ASSERT_TRUE(scored.ok());
    for (size_t c = 0; c < reference.size(); ++c)
      EXPECT_NEAR(scored->logliks[c], reference[c], 1e-9);
    size_t best = 0, best_norm = 0;
    for (size_t c = 1; c < reference.size(); ++c) {
      if (reference[c] > reference[best]) best = c;
      if (reference[c] / double(item.choices[c].text.size()) >
          reference[best_norm] / double(item.choices[best_norm].text.size()))
        best_norm = c;
    }
    correct += int64_t(best) == item.gold;
    correct_norm += int64_t(best_norm) == item.gold;
  }
  EvalPlan plan;
  plan.tasks = {"mc:" + resource("simple_choice.jsonl").string()};
  auto prepared = prepare_evaluation(plan);
  ASSERT_TRUE(prepared.ok()) << prepared.error().to_string();
  EvalContext context;
  auto results = evaluate(model, *tokenizer, *prepared, context);
  ASSERT_TRUE(results.ok()) << results.error().to_string();
  ASSERT_NE(row(*results, "simple_choice", "softmax", "acc"), nullptr);
  EXPECT_DOUBLE_EQ(row(*results, "simple_choice", "softmax", "acc")->value, correct / 4.0);
  EXPECT_DOUBLE_EQ(row(*results, "simple_choice", "softmax", "acc_norm")->value,
                   correct_norm / 4.0);
}

TEST(Loaders, PublicFormatsMapToHarnessPrompts) {
  auto piqa = load_mc_task(resource("piqa_sample.jsonl"));
  ASSERT_TRUE(piqa.ok()) << piqa.error().to_string();
  EXPECT_EQ(piqa->format, McFormat::piqa);
  EXPECT_EQ(piqa->items[0].choices[0].context,
            "Question: Keep bread from going stale quickly.\nAnswer:");
  EXPECT_EQ(piqa->items[0].choices[1].continuation, " Leave it open on a sunny windowsill.");
  EXPECT_EQ(piqa->items[1].gold, 1);

  auto arc = load_mc_task(resource("arc_sample.jsonl"));
  ASSERT_TRUE(arc.ok()) << arc.error().to_string();
  EXPECT_EQ(arc->items[0].gold, 0);
  EXPECT_EQ(arc->items[1].gold, 1);  // answerKey "2" is the second label (original layout)
  EXPECT_EQ(arc->items[1].choices[1].continuation, " It freezes");

  auto hellaswag = load_mc_task(resource("hellaswag_sample.jsonl"));
  ASSERT_TRUE(hellaswag.ok()) << hellaswag.error().to_string();
  EXPECT_EQ(hellaswag->items[0].choices[0].context,
            "Making tea: A person fills a kettle with water and switches it on. They");
  EXPECT_EQ(hellaswag->items[0].choices[1].text, "throw the kettle out of the window. quickly.");
  EXPECT_EQ(hellaswag->items[1].gold, 1);
  EXPECT_EQ(hellaswag_preprocess("  a [header] b [title]c "), "a b. c");

  auto wino = load_mc_task(resource("winogrande_sample.jsonl"));
  ASSERT_TRUE(wino.ok()) << wino.error().to_string();
  const auto& item = wino->items[0];
  EXPECT_EQ(item.choices[0].context, "The trophy did not fit in the suitcase because the trophy");
  EXPECT_EQ(item.choices[1].context, "The trophy did not fit in the suitcase because the suitcase");
  EXPECT_EQ(item.choices[0].continuation, " was too big.");
  EXPECT_EQ(item.choices[1].continuation, item.choices[0].continuation);
  EXPECT_EQ(wino->items[1].gold, 1);

  auto mmlu = load_mc_task(resource("mmlu_sample.jsonl"));
  ASSERT_TRUE(mmlu.ok()) << mmlu.error().to_string();
  ASSERT_EQ(mmlu->items.size(), 3u);  // the two "dev" lines are shots only
  const std::string& prompt = mmlu->items[0].choices[0].context;
  EXPECT_EQ(prompt.rfind("The following are multiple choice questions (with answers) about "
                         "elementary mathematics.\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\n"
                         "Answer: B\n\nWhat is 10 / 2?",
                         0),
            0u)
      << prompt;
  EXPECT_NE(prompt.find("What is 3 x 3?\nA. 9\nB. 6\nC. 33\nD. 12\nAnswer:"), std::string::npos);
  EXPECT_EQ(mmlu->items[0].choices[2].continuation, " C");
  EXPECT_EQ(mmlu->items[1].gold, 3);  // "answer": "D"
  // A subject without dev lines takes no shots from the other subject.
  EXPECT_EQ(mmlu->items[2].choices[0].context.find("What is"), std::string::npos);
}

TEST(Loaders, MalformedLinesAreReportedWithTheirLineNumber) {
  const fs::path dir = temp_dir("malformed");
  const fs::path file =
      write_file(dir / "bad.jsonl",
                 "{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"gold\": 0}\n"
                 "{\"context\": \"a\", \"choices\": [\" b\"\n"
                 "{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"gold\": 5}\n"
                 "\n"
                 "{\"context\": \"d\", \"choices\": [\" e\", \" f\"], \"gold\": 1}\n");
  auto fatal = load_mc_task(file);
  ASSERT_FALSE(fatal.ok());
  EXPECT_EQ(fatal.error().where.line, 2);
  EXPECT_NE(fatal.error().to_string().find("bad.jsonl:2:"), std::string::npos)
      << fatal.error().to_string();
  McLoadOptions skip;
  skip.skip_malformed = true;
  auto skipped = load_mc_task(file, skip);
  ASSERT_TRUE(skipped.ok()) << skipped.error().to_string();
  EXPECT_EQ(skipped->items.size(), 2u);
  ASSERT_EQ(skipped->skipped.size(), 2u);
  EXPECT_EQ(skipped->skipped[0].where.line, 2);
  EXPECT_EQ(skipped->skipped[1].where.line, 3);
  EXPECT_NE(skipped->skipped[1].message.find("outside the 2 choices"), std::string::npos);
  EXPECT_EQ(skipped->items[1].line, 5);
  hl::remove_tree(dir);
}

TEST(Plan, EmptyFilesAndUnknownTasksAreBadInput) {
  const fs::path dir = temp_dir("plan");
  write_file(dir / "empty.jsonl", "");
  EvalPlan plan;
  plan.tasks = {"mc:" + (dir / "empty.jsonl").string()};
  auto empty = prepare_evaluation(plan);
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.error().to_string().find("empty"), std::string::npos);
  plan.tasks = {"lambada"};
  auto unknown = prepare_evaluation(plan);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().message.find("unknown task 'lambada'"), std::string::npos);
  plan.tasks = {"ppl"};
  plan.modes = {"hybrid", "sideways"};
  EXPECT_FALSE(prepare_evaluation(plan).ok());
  hl::remove_tree(dir);
}

TEST(Perplexity, SplitAtTheWindowAddsUpToTheWhole) {
  model::CausalLM model = random_model();
  torch::manual_seed(3);
  torch::Tensor tokens = torch::randint(0, 259, {3, 41}, torch::kInt64);
  PositionLoss loss = position_loss(model, tokens, 16);
  EXPECT_EQ(loss.count, 3 * 40);
  EXPECT_EQ(loss.within, 3 * 16);
  EXPECT_EQ(loss.beyond, 3 * 24);
  EXPECT_NEAR(loss.within_sum + loss.beyond_sum, loss.sum, 1e-9);
  EXPECT_NEAR(loss.sum / double(loss.count), mean_token_loss(model, tokens), 1e-5);
  // Tokens within the window see the same context in hybrid and window_only mode.
  convert(model, 16);
  model::ForwardOptions window_only;
  window_only.mode = kernels::AttentionMode::window_only;
  model::ForwardOptions hybrid;
  hybrid.mode = kernels::AttentionMode::hybrid;
  PositionLoss a = position_loss(model, tokens, 16, window_only);
  PositionLoss b = position_loss(model, tokens, 16, hybrid);
  EXPECT_GT(std::abs(a.beyond_sum - b.beyond_sum), 1e-4);
}

TEST(Probes, DistancesBeyondTheContextAreSkippedWithAMessage) {
  auto tokenizer = io::make_byte_tokenizer();
  model::CausalLM model = random_model(/*max_positions=*/128);
  convert(model, 8);
  EvalPlan plan;
  plan.tasks = {"passkey"};
  plan.modes = {"hybrid", "window_only"};
  plan.seq_len = 64;
  plan.distances = {16, 512};
  plan.probe_samples = 4;
  auto prepared = prepare_evaluation(plan);
  ASSERT_TRUE(prepared.ok());
  std::vector<std::string> warnings;
  EvalContext context;
  context.warnings = &warnings;
  auto results = evaluate(model, *tokenizer, *prepared, context);
  ASSERT_TRUE(results.ok()) << results.error().to_string();
  EXPECT_NE(row(*results, "passkey", "hybrid", "acc@16"), nullptr);
  EXPECT_NE(row(*results, "passkey", "window_only", "acc@16"), nullptr);
  EXPECT_EQ(row(*results, "passkey", "hybrid", "acc@512"), nullptr);
  EXPECT_EQ(row(*results, "passkey", "hybrid", "acc@16")->n, 4);
  ASSERT_FALSE(warnings.empty());
  EXPECT_NE(warnings.front().find("distance 512 skipped"), std::string::npos) << warnings.front();
  EXPECT_NE(warnings.front().find("context of 128"), std::string::npos);
}

// The base model's scores are evaluated once per (fingerprint, settings) and cached as an
// eval-only run; a second request reads them back, and a new task is added to that run.
TEST(BaseCache, BaseScoresAreCachedPerBaseModel) {
  const fs::path dir = temp_dir("base");
  model::CausalLM base = random_model(512, 5);
  ASSERT_TRUE(model::save_model(base, dir / "base").ok());
  ASSERT_TRUE(io::save_tokenizer(dir / "base", io::byte_tokenizer_json()).ok());
  const std::string db = (dir / "runs.sqlite").string();
  auto tokenizer = io::make_byte_tokenizer();
  EvalPlan plan;
  plan.tasks = {"mc:" + resource("simple_choice.jsonl").string()};
  plan.modes = {"hybrid", "window_only"};
  auto prepared = prepare_evaluation(plan);
  ASSERT_TRUE(prepared.ok());
  EvalContext context;
  auto first = base_scores(db, dir / "base", *prepared, {}, context);
  ASSERT_TRUE(first.ok()) << first.error().to_string();
  auto second = base_scores(db, dir / "base", *prepared, {}, context);
  ASSERT_TRUE(second.ok()) << second.error().to_string();
  ASSERT_NE(row(*second, "simple_choice", "softmax", "acc_norm"), nullptr);
  EXPECT_EQ(row(*second, "simple_choice", "softmax", "acc_norm")->value,
            row(*first, "simple_choice", "softmax", "acc_norm")->value);
  plan.tasks.push_back("mc:" + resource("piqa_sample.jsonl").string());
  auto more = prepare_evaluation(plan);
  ASSERT_TRUE(more.ok());
  auto third = base_scores(db, dir / "base", *more, {}, context);
  ASSERT_TRUE(third.ok()) << third.error().to_string();
  EXPECT_NE(row(*third, "piqa_sample", "softmax", "acc"), nullptr);
  auto reader = store::RunReader::open(db);
  ASSERT_TRUE(reader.ok());
  store::RunFilter filter;
  filter.method = "base-eval";
  auto runs = reader->list_runs(filter);
  ASSERT_TRUE(runs.ok());
  EXPECT_EQ(runs->size(), 1u);

  // A converted copy of the same weights in window_only mode with a window longer than
  // every sequence computes full softmax attention: 100 % of base.
  model::CausalLM converted = random_model(512, 5);
  convert(converted, 512);
  auto scores = evaluate(converted, *tokenizer, *more, context);
  ASSERT_TRUE(scores.ok());
  auto percent = percent_of_base(*scores, *third);
  const EvalResult* same = row(percent, "simple_choice", "window_only", "pct_of_base");
  ASSERT_NE(same, nullptr);
  EXPECT_NEAR(same->value, 100.0, 1e-9);
  hl::remove_tree(dir);
}

TEST(BaseCache, FingerprintFollowsTheWeights) {
  const fs::path dir = temp_dir("fingerprint");
  model::CausalLM a = random_model(512, 1), b = random_model(512, 2);
  ASSERT_TRUE(model::save_model(a, dir / "a").ok());
  ASSERT_TRUE(model::save_model(a, dir / "a2").ok());
  ASSERT_TRUE(model::save_model(b, dir / "b").ok());
  auto fa = model_fingerprint(dir / "a"), fa2 = model_fingerprint(dir / "a2"),
       fb = model_fingerprint(dir / "b");
  ASSERT_TRUE(fa.ok() && fa2.ok() && fb.ok());
  EXPECT_EQ(*fa, *fa2);
  EXPECT_NE(*fa, *fb);
  hl::remove_tree(dir);
}

}  // namespace
}  // namespace hl::eval
