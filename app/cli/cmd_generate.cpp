#include <algorithm>
#include <cstdio>
#include <iostream>

#include "app/cli/arg_parser.hpp"
#include "app/cli/commands.hpp"
#include "core/eval/model_source.hpp"
#include "core/io/tokenizer.hpp"
#include "core/model/generate.hpp"
#include "core/model/model_io.hpp"
#include "core/store/schema.hpp"

namespace hl::cli {

namespace {

Result<double> parse_real_arg(const std::string& option, const std::string& text) {
  try {
    size_t used = 0;
    const double value = std::stod(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    return value;
  } catch (const std::exception&) {
    return make_error(option + " expects a number, got '" + text + "'");
  }
}

}  // namespace

int cmd_generate(const Args& args) {
  ArgParser parser("generate",
                   "Generate text; hybrid and linear layers decode in constant memory.");
  parser.option("--model", "DIR", "Hugging Face model directory")
      .option("--run", "RUN", "use this run's final model (id, uuid prefix or name)")
      .option("--db", "DB", "runs database (with --run)")
      .option("--prompt", "TEXT", "the prompt")
      .option("--max-new-tokens", "N", "tokens to generate", "64")
      .option("--max-new", "N", "the same as --max-new-tokens")
      .option("--temperature", "T", "0 = greedy", "0")
      .option("--top-k", "K", "sample from the K most likely tokens (0 = off)", "0")
      .option("--top-p", "P", "nucleus sampling threshold (1 = off)", "1")
      .option("--seed", "S", "sampling seed", "0")
      .option("--mode", "MODE",
              "attention of converted layers: hybrid, window_only, linear_only, sinks_only, "
              "none (default: as converted)")
      .option("--device", "cpu|cuda|auto", "device", "cpu")
      .option("--dtype", "float32|bfloat16|float16", "weights' precision", "float32")
      .flag("--no-special", "encode the prompt without the tokenizer's special tokens (BOS)")
      .flag("--stats", "print prefill/decode speed and the decode state's size to stderr")
      .epilog(
          "The tokenizer comes from the model directory. Generation stops at the model's "
          "end-of-sequence token.");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  auto fail = [](const std::string& message) { return report_bad_input("generate", message); };
  if (parser.has("--model") == parser.has("--run")) return fail("give --model DIR or --run RUN");
  if (!parser.has("--prompt")) return fail("--prompt TEXT is required");
  if (parser.has("--max-new") &&
      args.end() != std::find(args.begin(), args.end(), "--max-new-tokens"))
    return fail("give --max-new-tokens or --max-new, not both");
  const std::string max_new_text =
      parser.has("--max-new") ? parser.get("--max-new") : parser.get("--max-new-tokens");
  auto max_new = parse_int_arg("--max-new-tokens", max_new_text, 0);
  if (!max_new.ok()) return fail(max_new.error().message);
  auto top_k = parse_int_arg("--top-k", parser.get("--top-k"), 0);
  if (!top_k.ok()) return fail(top_k.error().message);
  auto seed = parse_int_arg("--seed", parser.get("--seed"), 0);
  if (!seed.ok()) return fail(seed.error().message);
  auto temperature = parse_real_arg("--temperature", parser.get("--temperature"));
  if (!temperature.ok()) return fail(temperature.error().message);
  auto top_p = parse_real_arg("--top-p", parser.get("--top-p"));
  if (!top_p.ok()) return fail(top_p.error().message);

  model::GenerateOptions options;
  options.max_new_tokens = *max_new;
  options.sampling = {*temperature, *top_k, *top_p, static_cast<uint64_t>(*seed)};
  if (auto ok = model::check_sampling(options.sampling); !ok.ok()) return fail(ok.error().message);
  if (parser.has("--mode")) {
    auto mode = kernels::parse_attention_mode(parser.get("--mode"));
    if (!mode || *mode == kernels::AttentionMode::softmax)
      return fail("--mode: unknown mode '" + parser.get("--mode") +
                  "' (hybrid, window_only, linear_only, sinks_only, none)");
    options.forward.mode = *mode;
  }

  std::filesystem::path dir = parser.get("--model");
  if (parser.has("--run")) {
    const std::string db = parser.has("--db") ? parser.get("--db") : store::default_db_path();
    auto found = eval::find_run_model(db, parser.get("--run"));
    if (!found.ok()) return fail(found.error().to_string());
    dir = found->dir;
  }
  auto opened = eval::open_model(dir, parser.get("--device"), parser.get("--dtype"));
  if (!opened.ok()) return fail(opened.error().message);
  auto* model = &opened->model;
  auto* tokenizer = &opened->tokenizer;
  (*model)->eval();
  if (options.forward.mode && (*model)->converted_layers().empty())
    return fail("--mode: the model has no converted layer (it is a softmax model)");

  const std::vector<int32_t> prompt =
      (*tokenizer)->encode(parser.get("--prompt"), !parser.flag_set("--no-special"));
  for (int64_t id : (*model)->config().eos_token_ids)
    options.stop_tokens.push_back(int32_t(id));
  if (auto eos = (*tokenizer)->eos_id()) options.stop_tokens.push_back(*eos);
  // Stream the text: decode the tokens so far and print what is new, so multi-byte
  // characters split over tokens come out whole.
  std::vector<int32_t> produced;
  std::string shown;
  options.on_token = [&](int32_t token) {
    produced.push_back(token);
    const std::string text = (*tokenizer)->decode(produced, /*skip_special=*/true);
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0 &&
        text.find("\xEF\xBF\xBD", shown.size()) == std::string::npos) {
      std::cout << text.substr(shown.size()) << std::flush;
      shown = text;
    }
    return true;
  };
  auto result = model::generate(*model, prompt, options);
  if (!result.ok()) return fail(result.error().to_string());
  const std::string text = (*tokenizer)->decode(produced, true);
  if (text.size() > shown.size()) std::cout << text.substr(shown.size());
  std::cout << "\n";
  if (parser.flag_set("--stats")) {
    const double decoded = double(std::max<size_t>(result->tokens.size(), 1) - 1);
    std::fprintf(stderr,
                 "prompt %lld tokens, prefill %.3f s; %zu new tokens, decode %.1f tokens/s; "
                 "decode state %.1f KiB (recurrent %.1f KiB)\n",
                 (long long)result->prompt_tokens, result->prefill_seconds, result->tokens.size(),
                 decoded / std::max(result->decode_seconds, 1e-9), result->cache_bytes / 1024.0,
                 result->recurrent_bytes / 1024.0);
  }
  return kExitOk;
}

}  // namespace hl::cli
