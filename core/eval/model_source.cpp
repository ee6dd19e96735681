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

Result<OpenedModel> open_model(const std::filesystem::path& dir, const std::string& device,
                               const std::string& dtype) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    return make_error("--model: '" + dir.string() + "' is not a directory");
  auto resolved_device = model::resolve_device(device);
  if (!resolved_device.ok()) return make_error("--device: " + resolved_device.error().message);
  auto resolved_dtype = model::parse_dtype_name(dtype);
  if (!resolved_dtype.ok()) return make_error("--dtype: " + resolved_dtype.error().message);
  OpenedModel opened;
  opened.placement = {*resolved_dtype, *resolved_device};
  auto tokenizer = io::load_tokenizer(dir);
  if (!tokenizer.ok()) return make_error(tokenizer.error().to_string());
  opened.tokenizer = std::move(*tokenizer);
  auto loaded = model::load_model(dir, opened.placement);
  if (!loaded.ok()) return make_error(loaded.error().to_string());
  opened.model = std::move(*loaded);
  return opened;
}

}  // namespace hl::eval
