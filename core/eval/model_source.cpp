#include "core/eval/model_source.hpp"

#include "core/store/run_reader.hpp"

namespace hl::eval {

Result<RunModel> find_run_model(const std::string& db_path, const std::string& reference) {
  auto reader = store::RunReader::open(db_path);
  if (!reader.ok()) return reader.error();
  auto id = reader->find_run(reference);
  if (!id.ok()) return make_error("--run: " + id.error().message);
  auto info = reader->run(*id);
  if (!info.ok()) return info.error();
  auto artifacts = reader->artifacts(*id);
  if (!artifacts.ok()) return artifacts.error();
  RunModel found{*id, {}, info->base_model};
  for (const auto& artifact : *artifacts)
    if (artifact.kind == "model") found.dir = artifact.path;  // the latest one wins
  std::error_code ec;
  if (found.dir.empty())
    return make_error("run " + std::to_string(*id) + " (" + std::string(to_string(info->status)) +
                      ") has no final model; only completed runs leave one");
  if (!std::filesystem::is_directory(found.dir, ec))
    return make_error("run " + std::to_string(*id) + "'s final model '" + found.dir.string() +
                      "' is missing (moved or deleted?)");
  return found;
}

}  // namespace hl::eval
