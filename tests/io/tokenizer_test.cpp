#include "core/io/tokenizer.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/io/unicode.hpp"
#include "test_paths.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The pre-tokenizer against the cases that Python's `regex` module produced for the same
// three patterns (tests/data/io/gen_pretokenizer_cases.py).
TEST(PreTokenizer, MatchesRegexEngineOnReferenceCases) {
  const json doc =
      json::parse(read_all(fs::path(hl::test::kDataDir) / "io" / "pretokenizer_cases.json"));
  int checked = 0;
  for (const auto& c : doc["cases"]) {
    const auto pattern = hl::io::split_pattern_from_name(c["pattern"].get<std::string>());
    ASSERT_TRUE(pattern.has_value());
    const std::string text = c["text"].get<std::string>();
    std::vector<std::string> pieces;
    for (auto [b, e] : hl::io::split_pretokens(text, *pattern))
      pieces.push_back(text.substr(b, e - b));
    EXPECT_EQ(pieces, c["pieces"].get<std::vector<std::string>>())
        << c["pattern"] << " on " << json(text).dump();
    ++checked;
  }
  EXPECT_GT(checked, 900);
}

TEST(Unicode, CategoriesAndLossyUtf8) {
  EXPECT_TRUE(hl::io::is_letter(U'é'));
  EXPECT_TRUE(hl::io::is_letter(U'日'));
  EXPECT_FALSE(hl::io::is_letter(U'\u0301'));  // combining mark (Mn)
  EXPECT_TRUE(hl::io::is_number(U'²'));
  EXPECT_TRUE(hl::io::is_number(U'Ⅻ'));
  EXPECT_TRUE(hl::io::is_whitespace(U'\u3000'));
  EXPECT_FALSE(hl::io::is_whitespace(U'\u200B'));  // zero-width space is not White_Space
  EXPECT_EQ(hl::io::utf8_lossy("ok"), "ok");
  EXPECT_EQ(hl::io::utf8_lossy("a\xE2\x82z"), "a\xEF\xBF\xBDz");  // one U+FFFD for a cut sequence
  EXPECT_EQ(hl::io::utf8_lossy("\xFF\xFE"), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

// GPT-2's byte-to-character table, written independently of the implementation.
std::string byte_char(unsigned char b) {
  int n = 0;
  for (int x = 0; x < 256; ++x) {
    const bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174);
    if (x == b) {
      std::string s;
      hl::io::append_utf8(s, printable ? static_cast<char32_t>(x) : 256 + n);
      return s;
    }
    if (!printable) ++n;
  }
  return {};
}

// A small byte-level tokenizer.json: the 256 byte characters, then merges.
json handmade_tokenizer(const std::vector<std::pair<std::string, std::string>>& merges,
                        bool string_merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b)
    vocab[byte_char(static_cast<unsigned char>(b))] = b;
  json merge_list = json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    if (string_merges) {
      merge_list.push_back(a + " " + b);
    } else {
      merge_list.push_back({a, b});
    }
  }
  const int bos = next++, eos = next++;
  return {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", bos}, {"content", "<s>"}, {"special", true}},
        {{"id", eos}, {"content", "</s>"}, {"special", true}, {"lstrip", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {bos}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
}

const std::string kG = byte_char(' ');  // "Ġ"

TEST(BpeTokenizer, MergesByRankInBothMergeFormats) {
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {kG, "t"}, {kG + "t", "he"}, {"b", "c"}, {"a", "b"}};
  for (bool string_merges : {true, false}) {
    auto tok =
        hl::io::parse_bpe_tokenizer(handmade_tokenizer(merges, string_merges).dump(), "t.json");
    ASSERT_TRUE(tok.ok()) << tok.error().to_string();
    const auto& t = **tok;
    const int he = 256, gt = 257, gthe = 258, bc = 259;
    EXPECT_EQ(t.encode(" the"), (std::vector<int32_t>{gthe}));
    EXPECT_EQ(t.encode("the"), (std::vector<int32_t>{'t', he}));
    // "b c" outranks "a b", so "abc" is a + bc although "a b" is leftmost.
    EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{'a', bc}));
    EXPECT_EQ(t.encode("the the"), (std::vector<int32_t>{'t', he, gthe}));
    (void)gt;
  }
}

TEST(BpeTokenizer, AddedTokensTemplateAndDecode) {
  auto tok = hl::io::parse_bpe_tokenizer(handmade_tokenizer({{"h", "i"}}, true).dump(), "t.json");
  ASSERT_TRUE(tok.ok()) << tok.error().to_string();
  const auto& t = **tok;
  const int hi = 256, bos = 257, eos = 258;
  EXPECT_EQ(t.bos_id(), bos);
  EXPECT_EQ(t.eos_id(), eos);
  EXPECT_EQ(t.encode("hi", true), (std::vector<int32_t>{bos, hi}));
  // "</s>" is cut out before the regex; lstrip swallows the spaces before it.
  EXPECT_EQ(t.encode("hi  </s>hi"), (std::vector<int32_t>{hi, eos, hi}));
  EXPECT_EQ(t.encode("<s><s>"), (std::vector<int32_t>{bos, bos}));
  const std::vector<int32_t> ids = {bos, hi, ' ', 0xC3, 0xA9, eos};
  EXPECT_EQ(t.decode(ids), "<s>hi é</s>");
  EXPECT_EQ(t.decode(ids, /*skip_special=*/true), "hi é");
  const std::vector<int32_t> cut = {'a', 0xC3};
  EXPECT_EQ(t.decode(cut), "a\xEF\xBF\xBD");
  EXPECT_EQ(t.token_to_id("</s>"), eos);
  EXPECT_EQ(t.id_to_token(hi), "hi");
  EXPECT_EQ(t.vocab_size(), 259);
}

TEST(BpeTokenizer, IgnoreMergesUsesWholeWordsFromTheVocab) {
  json doc = handmade_tokenizer({{"a", "b"}}, true);
  doc["model"]["vocab"]["xyz"] = 300;
  doc["model"]["ignore_merges"] = true;
  auto tok = hl::io::parse_bpe_tokenizer(doc.dump(), "t.json");
  ASSERT_TRUE(tok.ok()) << tok.error().to_string();
  EXPECT_EQ((*tok)->encode("xyz"), std::vector<int32_t>{300});
  EXPECT_EQ((*tok)->encode("xyzab"), (std::vector<int32_t>{'x', 'y', 'z', 256}));
}

TEST(ByteTokenizer, IdsAreBytesAndTextRoundTrips) {
  auto tok = hl::io::make_byte_tokenizer();
  EXPECT_EQ(tok->vocab_size(), 259);
  EXPECT_EQ(tok->bos_id(), 256);
  EXPECT_EQ(tok->eos_id(), 257);
  EXPECT_EQ(tok->pad_id(), 258);
  const std::string text = "Héllo, wörld! 日本 🙂\n\ttabs";
  auto ids = tok->encode(text, true);
  ASSERT_EQ(ids.size(), text.size() + 1);
  EXPECT_EQ(ids[0], 256);
  for (std::size_t i = 0; i < text.size(); ++i) {
    EXPECT_EQ(ids[i + 1], static_cast<unsigned char>(text[i]));
  }
  EXPECT_EQ(tok->decode(ids, true), text);
  // Random bytes that happen to be valid UTF-8 survive; every byte maps to one id.
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    std::string random;
    for (int i = 0; i < 64; ++i)
      random += static_cast<char>(rng() % 256);
    auto random_ids = tok->encode(random);
    ASSERT_EQ(random_ids.size(), random.size());
    EXPECT_EQ(tok->decode(random_ids), hl::io::utf8_lossy(random));
  }
}

std::string fortunes_text(std::size_t max_bytes) {
  std::string text = read_all("/usr/share/games/fortunes/fortunes");
  if (text.empty()) text = read_all("/usr/share/games/fortunes/literature");
  return text.substr(0, max_bytes);
}

TEST(BpeTrainer, TrainsDeterministicallyAndRoundTrips) {
  const std::string corpus = fortunes_text(60000);
  ASSERT_GT(corpus.size(), 10000u) << "fortunes package missing (apt-get install fortunes-min)";
  hl::io::BpeTrainOptions options;
  options.vocab_size = 600;
  auto json_text = hl::io::train_bpe(corpus, options);
  ASSERT_TRUE(json_text.ok()) << json_text.error().to_string();
  EXPECT_EQ(*json_text, *hl::io::train_bpe(corpus, options)) << "training is not deterministic";
  auto tok = hl::io::parse_bpe_tokenizer(*json_text, "trained");
  ASSERT_TRUE(tok.ok()) << tok.error().to_string();
  EXPECT_EQ((*tok)->vocab_size(), 600);

  const std::string held_out =
      "Don't panic!  The answer is 42.\nWhat's the question?\r\n  Ünïcode 🙂";
  auto ids = (*tok)->encode(held_out, true);
  EXPECT_EQ(ids.front(), 256);
  EXPECT_EQ((*tok)->decode(ids, true), held_out);
  // Merges compress: the trained tokenizer needs far fewer tokens than bytes.
  const auto corpus_ids = (*tok)->encode(corpus);
  EXPECT_LT(corpus_ids.size(), corpus.size() * 2 / 3);
  EXPECT_EQ((*tok)->decode(corpus_ids), corpus);

  for (auto pattern : {hl::io::SplitPattern::kGpt2, hl::io::SplitPattern::kQwen2}) {
    options.pattern = pattern;
    options.vocab_size = 300;
    auto other = hl::io::parse_bpe_tokenizer(*hl::io::train_bpe(corpus, options), "trained");
    ASSERT_TRUE(other.ok()) << other.error().to_string();
    EXPECT_EQ((*other)->decode((*other)->encode(held_out)), held_out);
  }
}

TEST(BpeTrainer, RejectsTooSmallVocab) {
  hl::io::BpeTrainOptions options;
  options.vocab_size = 100;
  auto result = hl::io::train_bpe("abc", options);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("smaller than the 256 bytes"), std::string::npos);
}

TEST(LoadTokenizer, ReadsDirectoryWithTokenizerConfig) {
  hl::test::TempDir dir("tok_dir");
  ASSERT_TRUE(hl::io::save_tokenizer(dir.path(), hl::io::byte_tokenizer_json(), "<|bos|>",
                                     "<|pad|>", "<|eos|>")
                  .ok());
  auto tok = hl::io::load_tokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.error().to_string();
  EXPECT_EQ((*tok)->kind(), "bpe");
  EXPECT_EQ((*tok)->eos_id(), 258);  // swapped on purpose: the config decides
  EXPECT_EQ((*tok)->pad_id(), 257);

  hl::test::TempDir empty("tok_empty");
  auto none = hl::io::load_tokenizer(empty.path());
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("no tokenizer.json or tokenizer.model"), std::string::npos);

  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": {"content": "<nope>"}})";
  auto bad = hl::io::load_tokenizer(dir.path());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().to_string().find("eos_token: token '<nope>' is not in the vocabulary"),
            std::string::npos);
}

}  // namespace
