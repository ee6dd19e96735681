// Helpers shared by the io tests.
#pragma once

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>

#include "core/util/paths.hpp"

namespace hl::test {

/// A fresh directory under the system temp dir, removed when the object goes.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("hl_io_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    hl::remove_tree(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { hl::remove_tree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

}  // namespace hl::test
