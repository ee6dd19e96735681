#include "core/util/paths.hpp"

#include <ftw.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <system_error>

namespace hl {
namespace fs = std::filesystem;

namespace {

bool path_exists(const fs::path& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

fs::path absolute_clean(const fs::path& path) {
  std::error_code ec;
  fs::path absolute = fs::absolute(path, ec);
  return (ec ? path : absolute).lexically_normal();
}

}  // namespace

fs::path default_data_dir() {
  const char* xdg = std::getenv("XDG_DATA_HOME");
  if (xdg && *xdg) return fs::path(xdg) / "hybridlab";
  const char* home = std::getenv("HOME");
  return fs::path(home && *home ? home : ".") / ".local" / "share" / "hybridlab";
}

fs::path default_pretrain_dir(const std::string& preset) {
  return default_data_dir() / "models" / (preset + "-base");
}

std::optional<fs::path> find_experiment_path(const std::string& path,
                                             const fs::path& experiment_dir) {
  const fs::path given(path);
  if (given.is_absolute()) return path_exists(given) ? std::optional(given) : std::nullopt;
  for (const fs::path& root : {fs::path("."), experiment_dir, default_data_dir()}) {
    if (root.empty()) continue;
    if (path_exists(root / given)) return absolute_clean(root / given);
  }
  return std::nullopt;
}

std::optional<fs::path> find_experiments_dir(const fs::path& program_dir) {
  if (const char* env = std::getenv("HL_EXPERIMENTS_DIR"); env && *env && path_exists(env))
    return absolute_clean(env);
  for (const char* relative :
       {"../share/hybridlab/experiments", "../../experiments", "../experiments"}) {
    if (path_exists(program_dir / relative / "demo.toml"))
      return absolute_clean(program_dir / relative);
  }
  if (path_exists("experiments/demo.toml")) return absolute_clean("experiments");
  return std::nullopt;
}

bool remove_tree(const fs::path& path) {
  // Children before their directory (FTW_DEPTH), links not followed (FTW_PHYS).
  const auto remove_entry = [](const char* entry, const struct stat*, int, struct FTW*) {
    return std::remove(entry) == 0 || errno == ENOENT ? 0 : -1;
  };
  const int result = nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  return result == 0 || (result == -1 && errno == ENOENT);
}

}  // namespace hl
