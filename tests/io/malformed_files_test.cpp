// Every file of the malformed corpus (tests/data/io/bad, made by gen_bad_files.py) must be
// rejected with its own, expected error, and nothing may crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/io/checkpoint.hpp"
#include "core/io/hf_config.hpp"
#include "core/io/safetensors.hpp"
#include "core/io/tokenizer.hpp"
#include "core/util/paths.hpp"
#include "test_paths.hpp"

namespace fs = std::filesystem;

namespace {

std::string read_all(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The loader's error for one corpus entry, chosen by its name prefix.
std::optional<hl::Error> load_error(const fs::path& path) {
  const std::string name = path.filename().string();
  auto error_of = [](const auto& result) -> std::optional<hl::Error> {
    if (result.ok()) return std::nullopt;
    return result.error();
  };
  if (name.rfind("st_", 0) == 0) return error_of(hl::io::SafetensorsFile::open(path));
  if (name.rfind("config_", 0) == 0) return error_of(hl::io::load_model_config(path));
  if (name.rfind("tokenizer_", 0) == 0 || name.rfind("spm_", 0) == 0) {
    return error_of(hl::io::load_tokenizer(path));
  }
  if (name.rfind("index_", 0) == 0) return error_of(hl::io::CheckpointReader::open(path));
  ADD_FAILURE() << "corpus entry with unknown prefix: " << name;
  return std::nullopt;
}

}  // namespace

TEST(MalformedFiles, EachFileGivesItsExpectedError) {
  const fs::path dir = fs::path(hl::test::kDataDir) / "io" / "bad";
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  int cases = 0;
  std::set<std::string> messages;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".expected") continue;
    const fs::path sidecar = entry.path().string() + ".expected";
    ASSERT_TRUE(fs::exists(sidecar)) << "no .expected sidecar for " << entry.path();
    const std::string expected = read_all(sidecar);
    auto error = load_error(entry.path());
    ASSERT_TRUE(error.has_value()) << entry.path() << " was accepted";
    const std::string message = error->to_string();
    EXPECT_NE(message.find(expected), std::string::npos)
        << entry.path().filename() << "\n  got:      " << message << "\n  expected: " << expected;
    // The error names the file (or the directory holding it).
    EXPECT_NE(message.find(entry.path().filename().string()), std::string::npos) << message;
    messages.insert(error->message);
    ++cases;
  }
  EXPECT_GE(cases, 15);
  EXPECT_EQ(messages.size(), static_cast<std::size_t>(cases)) << "two files gave the same error";
}

// Cutting a valid file anywhere must give an error, never a crash or a bogus tensor.
TEST(MalformedFiles, EveryTruncationOfAValidFileIsRejected) {
  const fs::path dir = fs::temp_directory_path() / ("hl_io_trunc_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  torch::manual_seed(3);
  ASSERT_TRUE(hl::io::write_safetensors(dir / "full.safetensors",
                                        {{"a", torch::randn({3, 5})}, {"b", torch::randn({7})}})
                  .ok());
  std::string bytes = read_all(dir / "full.safetensors");
  for (std::size_t cut = 0; cut < bytes.size(); cut += 3) {
    {
      std::ofstream out(dir / "cut.safetensors", std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(cut));
    }
    auto file = hl::io::SafetensorsFile::open(dir / "cut.safetensors");
    EXPECT_FALSE(file.ok()) << "accepted a file cut at " << cut << " of " << bytes.size();
  }
  hl::remove_tree(dir);
}
