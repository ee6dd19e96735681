// remove_tree on real directories: nested trees go, a symbolic link goes without what it points
// to, and a missing path is not an error.
#include "core/util/paths.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

namespace hl {
namespace {

namespace fs = std::filesystem;

TEST(RemoveTree, RemovesNestedTreesButNotWhatLinksPointTo) {
  const fs::path root =
      fs::temp_directory_path() / ("hl_remove_tree_" + std::to_string(::getpid()));
  const fs::path outside = root.string() + "_outside";
  fs::create_directories(root / "a" / "b" / "c");
  fs::create_directories(outside);
  std::ofstream(root / "a" / "file.txt") << "x";
  std::ofstream(root / "a" / "b" / "c" / "deep.bin") << "y";
  std::ofstream(outside / "keep.txt") << "z";
  fs::create_directory_symlink(outside, root / "a" / "link");

  EXPECT_TRUE(remove_tree(root));
  EXPECT_FALSE(fs::exists(root));
  EXPECT_TRUE(fs::exists(outside / "keep.txt")) << "the link's target was followed";
  EXPECT_TRUE(remove_tree(root)) << "a missing path is not an error";
  std::ofstream(outside / "single") << "w";
  EXPECT_TRUE(remove_tree(outside / "single"));
  EXPECT_FALSE(fs::exists(outside / "single"));
  EXPECT_TRUE(remove_tree(outside));
  EXPECT_FALSE(fs::exists(outside));
}

}  // namespace
}  // namespace hl
