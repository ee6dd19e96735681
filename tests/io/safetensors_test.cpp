#include "core/io/safetensors.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/io/checkpoint.hpp"
#include "test_util.hpp"

namespace {

using hl::io::DType;
using hl::io::SafetensorsFile;

// Random values of the dtype, never all zeros.
torch::Tensor random_tensor(torch::ScalarType type, std::vector<int64_t> shape) {
  if (type == torch::kBool) return torch::rand(shape) > 0.5;
  if (c10::isFloatingType(type)) return torch::randn(shape, torch::kFloat64).to(type);
  const int64_t low = type == torch::kUInt8 ? 0 : -100;
  return torch::randint(low, 100, shape, torch::kInt64).to(type);
}

TEST(Safetensors, RoundTripsEveryDtypeBitExactly) {
  hl::test::TempDir dir("st_roundtrip");
  torch::manual_seed(11);
  const std::vector<torch::ScalarType> types = {
      torch::kFloat64, torch::kFloat32, torch::kFloat16, torch::kBFloat16, torch::kInt64,
      torch::kInt32,   torch::kInt16,   torch::kInt8,    torch::kUInt8,    torch::kBool};
  std::vector<hl::io::NamedTensor> tensors;
  for (std::size_t i = 0; i < types.size(); ++i) {
    // Odd sizes, so a careless writer would misalign what follows.
    tensors.emplace_back("t" + std::to_string(i), random_tensor(types[i], {3, 5 + (int64_t)i}));
  }
  tensors.emplace_back("scalar", torch::tensor(2.5));
  tensors.emplace_back("empty", torch::zeros({0, 4}));
  tensors.emplace_back("strided", torch::randn({6, 4}).t());  // non-contiguous input
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "é ✓"}};
  ASSERT_TRUE(hl::io::write_safetensors(dir / "all.safetensors", tensors, metadata).ok());

  auto file = SafetensorsFile::open(dir / "all.safetensors");
  ASSERT_TRUE(file.ok()) << file.error().to_string();
  EXPECT_EQ(file->metadata(), metadata);
  EXPECT_EQ(file->tensors().size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    auto loaded = file->get(name);
    ASSERT_TRUE(loaded.ok()) << name;
    EXPECT_EQ(loaded->scalar_type(), expected.scalar_type()) << name;
    EXPECT_EQ(loaded->sizes(), expected.sizes()) << name;
    EXPECT_TRUE(torch::equal(*loaded, expected)) << name;
    if (loaded->numel() > 0) {
      const auto address = reinterpret_cast<uintptr_t>(loaded->data_ptr());
      EXPECT_EQ(address % loaded->element_size(), 0u) << name << " is misaligned";
    }
  }
}

TEST(Safetensors, HeaderFollowsTheFormat) {
  hl::test::TempDir dir("st_header");
  ASSERT_TRUE(
      hl::io::write_safetensors(dir / "h.safetensors", {{"b", torch::ones({2}, torch::kFloat16)},
                                                        {"a", torch::ones({3}, torch::kFloat32)}})
          .ok());
  std::ifstream in(dir / "h.safetensors", std::ios::binary);
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u);
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  auto json = nlohmann::json::parse(header);
  // Larger elements first: the F32 tensor starts the data, the F16 one follows it.
  EXPECT_EQ(json["a"]["data_offsets"], nlohmann::json({0, 12}));
  EXPECT_EQ(json["b"]["data_offsets"], nlohmann::json({12, 16}));
  EXPECT_EQ(json["a"]["dtype"], "F32");
  EXPECT_EQ(json["b"]["shape"], nlohmann::json({2}));
}

TEST(Safetensors, TensorsAreZeroCopyAndOutliveTheFile) {
  hl::test::TempDir dir("st_zero_copy");
  torch::manual_seed(5);
  const auto original = torch::randn({64, 32});
  ASSERT_TRUE(hl::io::write_safetensors(dir / "z.safetensors", {{"w", original}}).ok());
  torch::Tensor view;
  {
    auto file = SafetensorsFile::open(dir / "z.safetensors");
    ASSERT_TRUE(file.ok());
    view = file->tensor("w");
    auto again = file->tensor("w");
    EXPECT_EQ(view.data_ptr(), again.data_ptr()) << "expected views of one mapping";
  }
  EXPECT_TRUE(torch::equal(view, original));  // the mapping is still alive
  view.mul_(2);                               // copy-on-write: the file is untouched
  auto reopened = SafetensorsFile::open(dir / "z.safetensors");
  ASSERT_TRUE(reopened.ok());
  EXPECT_TRUE(torch::equal(reopened->tensor("w"), original));
}

TEST(Safetensors, MissingTensorIsNamed) {
  hl::test::TempDir dir("st_missing");
  ASSERT_TRUE(hl::io::write_safetensors(dir / "m.safetensors", {{"w", torch::ones({1})}}).ok());
  auto file = SafetensorsFile::open(dir / "m.safetensors");
  ASSERT_TRUE(file.ok());
  auto missing = file->get("model.norm.weight");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().to_string().find("no tensor named 'model.norm.weight'"),
            std::string::npos);
  EXPECT_THROW(file->tensor("nope"), std::invalid_argument);
}

TEST(Safetensors, WriterRejectsBadInput) {
  hl::test::TempDir dir("st_writer");
  auto duplicate = hl::io::write_safetensors(dir / "d.safetensors",
                                             {{"w", torch::ones({1})}, {"w", torch::ones({1})}});
  ASSERT_FALSE(duplicate.ok());
  EXPECT_NE(duplicate.error().to_string().find("duplicate tensor name"), std::string::npos);
  auto complex = hl::io::write_safetensors(dir / "c.safetensors",
                                           {{"z", torch::ones({1}, torch::kComplexFloat)}});
  ASSERT_FALSE(complex.ok());
  EXPECT_NE(complex.error().to_string().find("cannot be stored"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir / "c.safetensors"));
}

}  // namespace
