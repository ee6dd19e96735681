// The evaluation that `run` (its [eval] section) and `hybridlab-cli eval` share: perplexity
// overall and by position, multiple-choice tasks, passkey / MQAR by distance, each under
// the diagnostic modes (DESIGN §1), per-layer ablation, and "% of base" against the base
// model's scores, which are cached in the store as an eval-only run of the base.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/data/packing.hpp"
#include "core/eval/tasks.hpp"
#include "core/io/tokenizer.hpp"
#include "core/model/decoder.hpp"
#include "core/model/model_io.hpp"
#include "core/run/progress.hpp"
#include "core/store/run_writer.hpp"
#include "core/util/error.hpp"

namespace hl::eval {

/// What to evaluate: an experiment's [eval] section or `eval`'s flags.
struct EvalPlan {
  /// "ppl", "ppl:FILE", "passkey", "mqar", "mc:FILE" or "mc:FORMAT:FILE".
  std::vector<std::string> tasks{"ppl"};
  /// Modes of converted layers; a model without converted layers runs "softmax" only.
  std::vector<std::string> modes{"hybrid"};
  int64_t seq_len = 256;     ///< chunk length of ppl and of the probes (longer where needed)
  int64_t batch_size = 8;    ///< ppl chunks per forward
  int64_t max_batches = 16;  ///< ppl batches at most
  std::vector<int64_t> distances{16, 32, 64, 128, 256};  ///< passkey / MQAR
  int64_t probe_samples = 32;                            ///< samples per distance
  bool layer_ablation = false;
  uint64_t seed = 0;
  int64_t window = 0;  ///< split of the ppl positions; 0 = the model's window (else 64)
  McLoadOptions mc;    ///< skip_malformed, limit, MMLU shots
};

/// One result (a row of the store's evals table).
struct EvalResult {
  std::string task, mode, metric;
  double value = 0;
  int64_t n = 0;
};

/// A task of a plan, with its files read and checked.
struct PreparedTask {
  std::string spec;  ///< as written in the plan
  std::string name;  ///< the task column: "ppl", "ppl:<stem>", "passkey", "mqar", "<stem>"
  enum class Kind { ppl, passkey, mqar, mc } kind = Kind::ppl;
  std::filesystem::path file;  ///< ppl:FILE / mc:FILE
  McTask mc;
};

/// A plan whose tasks are loaded: everything that can be wrong with the input is found here.
struct PreparedEval {
  EvalPlan plan;
  std::vector<PreparedTask> tasks;
  std::vector<kernels::AttentionMode> modes;
};

/// Checks the plan and loads its task files. Errors (exit 2 material): an unknown task or
/// mode, an unreadable or empty file, a malformed task line (unless plan.mc.skip_malformed).
Result<PreparedEval> prepare_evaluation(const EvalPlan& plan);

/// Where results and notes go; every pointer may be null.
struct EvalContext {
  store::RunWriter* writer = nullptr;  ///< evals rows, ablation layer scalars, summaries
  ProgressReporter* progress = nullptr;
  /// Held-out chunks for "ppl" (a run's validation batches); null = the validation split
  /// of the built-in fortunes corpus.
  const std::vector<data::Batch>* text_batches = nullptr;
  const std::atomic<bool>* cancel = nullptr;
  /// Receives the warnings (skipped distances, skipped malformed lines) as plain lines.
  std::vector<std::string>* warnings = nullptr;
};

/// Runs every task under every mode (and the ablation) and records the results.
Result<std::vector<EvalResult>> evaluate(model::CausalLM& model, const io::Tokenizer& tokenizer,
                                         const PreparedEval& prepared, EvalContext& context);

/// A fingerprint of a model directory: a hash of config.json and of the weight files
/// (whole files up to 64 MiB, beyond that their sizes, headers and 64 KiB samples).
Result<std::string> model_fingerprint(const std::filesystem::path& dir);

/// The base model's scores for `prepared`, under its own (softmax) attention: read from the
/// eval-only run that caches them for this fingerprint and these settings, else evaluated
/// now and recorded as such a run (tasks missing from the cache are added to it).
Result<std::vector<EvalResult>> base_scores(const std::string& db_path,
                                            const std::filesystem::path& base_dir,
                                            const PreparedEval& prepared,
                                            const model::Placement& placement,
                                            const EvalContext& context);

/// "% of base" rows: 100 * score / base score for accuracies (acc_norm where present,
/// else acc), 100 * base ppl / ppl for perplexity, so that higher is better for both.
std::vector<EvalResult> percent_of_base(const std::vector<EvalResult>& scores,
                                        const std::vector<EvalResult>& base);

/// Records the run's summary values: ppl and <task>_acc of the headline mode (hybrid when
/// evaluated, else the first), and pct_of_base (their mean "% of base") when given.
Status record_summary(store::RunWriter& writer, const std::vector<EvalResult>& scores,
                      const std::vector<EvalResult>& percent);

}  // namespace hl::eval
