// Where `eval` and `generate` find a model: a Hugging Face directory given directly, or
// the final model a recorded run left (its "model" artifact).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "core/io/tokenizer.hpp"
#include "core/model/model_io.hpp"
#include "core/util/error.hpp"

namespace hl::eval {

/// A run's final model and the run it belongs to.
struct RunModel {
  int64_t run_id = 0;
  std::filesystem::path dir;
  std::string base_model;  ///< the run's base model path (for "% of base")
};

/// Resolves `reference` (id, uuid prefix or name) in the database at `db_path` and returns
/// its final model directory; errors when the run is unknown or left no model.
Result<RunModel> find_run_model(const std::string& db_path, const std::string& reference);

/// A model directory loaded for evaluation or generation, with its tokenizer and placement.
struct OpenedModel {
  model::CausalLM model{nullptr};
  std::unique_ptr<io::Tokenizer> tokenizer;
  model::Placement placement;
};

/// Loads `dir` on `device` ("cpu", "cuda", "auto") in `dtype` ("float32", ...); errors
/// name the flag (--model, --device, --dtype) or the file at fault.
Result<OpenedModel> open_model(const std::filesystem::path& dir, const std::string& device,
                               const std::string& dtype);

}  // namespace hl::eval
