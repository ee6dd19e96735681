#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "core/data/packing.hpp"
#include "core/data/text_source.hpp"
#include "core/io/tokenizer.hpp"
#include "core/io/unicode.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using hl::data::Document;

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<Document> drain(hl::data::TextSource& source) {
  std::vector<Document> docs;
  while (true) {
    auto next = source.next();
    EXPECT_TRUE(next.ok()) << next.error().to_string();
    if (!next.ok() || !next->has_value()) return docs;
    docs.push_back(**next);
  }
}

// Random multilingual text with long lines, so pieces must be cut mid-line.
std::string random_text(std::size_t bytes, uint32_t seed) {
  const std::vector<std::string> atoms = {"alpha ", "βeta ", "日本 ", "🙂",
                                          "\n",     "word",  "  ",    "\n\n"};
  std::mt19937 rng(seed);
  std::string text;
  while (text.size() < bytes)
    text += atoms[rng() % atoms.size()];
  return text;
}

TEST(TextSource, PlainTextStreamsInPiecesThatRebuildTheFile) {
  hl::test::TempDir dir("plain");
  const std::string a = random_text(50000, 1), b = random_text(3000, 2);
  write_file(dir / "a.txt", a);
  write_file(dir / "b.txt", b);
  hl::data::PlainTextOptions options;
  options.max_piece_bytes = 1000;
  auto source = hl::data::make_plain_text_source({dir / "a.txt", dir / "b.txt"}, options);
  auto docs = drain(*source);
  std::string rebuilt_a, rebuilt_b;
  for (const auto& d : docs) {
    EXPECT_LE(d.text.size(), 1000u);
    EXPECT_EQ(d.text, hl::io::utf8_lossy(d.text)) << "piece cut inside a UTF-8 character";
    (d.index == 0 ? rebuilt_a : rebuilt_b) += d.text;
  }
  EXPECT_EQ(rebuilt_a, a);
  EXPECT_EQ(rebuilt_b, b);
  ASSERT_GE(docs.size(), 53u);
  EXPECT_FALSE(docs.front().ends_document);
  EXPECT_TRUE(docs.back().ends_document);
  EXPECT_EQ(std::count_if(docs.begin(), docs.end(), [](auto& d) { return d.ends_document; }), 2);

  ASSERT_TRUE(source->rewind().ok());
  EXPECT_EQ(drain(*source).size(), docs.size());
}

TEST(TextSource, BlankLinesSeparateDocumentsWhenAsked) {
  hl::test::TempDir dir("paragraphs");
  write_file(dir / "p.txt", "first para\nline two\n\n\n  \nsecond\n\nthird");
  hl::data::PlainTextOptions options;
  options.blank_line_separates_documents = true;
  auto docs = drain(*hl::data::make_plain_text_source({dir / "p.txt"}, options));
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].text, "first para\nline two\n");
  EXPECT_EQ(docs[1].text, "second\n");
  EXPECT_EQ(docs[2].text, "third");
  EXPECT_EQ(docs[2].index, 2u);
}

TEST(TextSource, JsonlAndJsonArrayRecords) {
  hl::test::TempDir dir("json");
  write_file(dir / "a.jsonl",
             "{\"text\": \"one\", \"id\": 1}\n\n{\"text\": \"two \\\"q\\\" }\"}\n");
  write_file(dir / "b.json", "[\n {\"text\": \"three [x] {y}\"},\n {\"text\": \"four\"}\n]\n");
  auto docs = drain(*hl::data::make_json_text_source({dir / "a.jsonl", dir / "b.json"}));
  ASSERT_EQ(docs.size(), 4u);
  EXPECT_EQ(docs[1].text, "two \"q\" }");
  EXPECT_EQ(docs[2].text, "three [x] {y}");
  EXPECT_EQ(docs[3].index, 3u);

  write_file(dir / "bad.jsonl", "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n");
  auto bad = hl::data::make_json_text_source({dir / "bad.jsonl"});
  ASSERT_TRUE(bad->next().ok());
  auto error = bad->next();
  ASSERT_FALSE(error.ok());
  EXPECT_NE(error.error().to_string().find("bad.jsonl:2: text: record has no 'text' field"),
            std::string::npos)
      << error.error().to_string();

  write_file(dir / "broken.jsonl", "{\"text\": \"ok\"}\n{\"text\": \n");
  auto broken = hl::data::make_json_text_source({dir / "broken.jsonl"});
  ASSERT_TRUE(broken->next().ok());
  auto broken_error = broken->next();
  ASSERT_FALSE(broken_error.ok());
  EXPECT_NE(broken_error.error().to_string().find("broken.jsonl:2: record is not valid JSON"),
            std::string::npos);

  write_file(dir / "cut.json", "[{\"text\": \"a\"}, {\"text\": \"b");
  auto cut = hl::data::make_json_text_source({dir / "cut.json"});
  ASSERT_TRUE(cut->next().ok());
  auto cut_error = cut->next();
  ASSERT_FALSE(cut_error.ok());
  EXPECT_NE(cut_error.error().message.find("not closed"), std::string::npos);
}

TEST(TextSource, InstructionRecordsUseTheTemplate) {
  hl::test::TempDir dir("alpaca");
  write_file(dir / "alpaca.json", R"([
    {"instruction": "Add {the} numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi.", "input": "", "output": "hi {input}"}
  ])");
  hl::data::PromptTemplate prompt;
  prompt.with_input = "Q: {instruction} | {input}\nA: {output}";
  prompt.without_input = "Q: {instruction}\nA: {output}";
  auto docs = drain(*hl::data::make_instruction_source({dir / "alpaca.json"}, prompt));
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].text, "Q: Add {the} numbers. | 2 and 3\nA: 5");
  EXPECT_EQ(docs[1].text, "Q: Say hi.\nA: hi {input}");

  auto detected = hl::data::open_text_source((dir / "alpaca.json").string());
  ASSERT_TRUE(detected.ok()) << detected.error().to_string();
  auto first = (*detected)->next();
  ASSERT_TRUE(first.ok() && first->has_value());
  EXPECT_NE((*first)->text.find("### Instruction:\nAdd {the} numbers."), std::string::npos);

  write_file(dir / "no_output.jsonl", "{\"instruction\": \"x\"}\n");
  auto missing = hl::data::make_instruction_source({dir / "no_output.jsonl"})->next();
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().where.key, "output");
  EXPECT_EQ(missing.error().where.line, 1);
}

TEST(TextSource, FortunesAreSplitAtPercentLines) {
  auto source = hl::data::open_text_source("builtin:fortunes");
  ASSERT_TRUE(source.ok()) << source.error().to_string();
  auto docs = drain(**source);
  EXPECT_GT(docs.size(), 1000u);
  for (const auto& d : docs) {
    EXPECT_FALSE(d.text.empty());
    EXPECT_EQ(d.text.find("\n%\n"), std::string::npos);
    EXPECT_NE(d.text.rfind("%\n", 0), 0u);
  }
  hl::test::TempDir empty("nofortunes");
  auto missing = hl::data::make_fortunes_source(empty.path());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("apt-get install fortunes-min"), std::string::npos);
  EXPECT_FALSE(hl::data::open_text_source("builtin:nothing").ok());

  // HL_FORTUNES_DIR points builtin:fortunes elsewhere (packages unpacked into a prefix).
  hl::test::TempDir elsewhere("fortunes_elsewhere");
  write_file(elsewhere.path() / "mine", "First fortune.\n%\nSecond fortune.\n%\n");
  setenv("HL_FORTUNES_DIR", elsewhere.path().c_str(), 1);
  auto mine = hl::data::open_text_source("builtin:fortunes");
  unsetenv("HL_FORTUNES_DIR");
  ASSERT_TRUE(mine.ok()) << mine.error().to_string();
  auto mine_docs = drain(**mine);
  ASSERT_EQ(mine_docs.size(), 2u);
  EXPECT_EQ(mine_docs[1].text.rfind("Second fortune.", 0), 0u) << mine_docs[1].text;
}

TEST(Split, DeterministicDisjointAndNearTheFraction) {
  int validation = 0;
  for (uint64_t i = 0; i < 20000; ++i) {
    const bool v = hl::data::is_validation_document(i, 0.1, 42);
    EXPECT_EQ(v, hl::data::is_validation_document(i, 0.1, 42));
    validation += v;
  }
  EXPECT_NEAR(validation / 20000.0, 0.1, 0.01);
  int differ = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    differ +=
        hl::data::is_validation_document(i, 0.5, 1) != hl::data::is_validation_document(i, 0.5, 2);
  }
  EXPECT_GT(differ, 400);  // the seed matters

  hl::test::TempDir dir("split");
  std::string lines;
  for (int i = 0; i < 200; ++i)
    lines += "{\"text\": \"doc " + std::to_string(i) + "\"}\n";
  write_file(dir / "d.jsonl", lines);
  auto train = drain(*hl::data::make_split_source(
      hl::data::make_json_text_source({dir / "d.jsonl"}), hl::data::SplitSide::kTrain, 0.25, 7));
  auto val = drain(*hl::data::make_split_source(hl::data::make_json_text_source({dir / "d.jsonl"}),
                                                hl::data::SplitSide::kValidation, 0.25, 7));
  EXPECT_EQ(train.size() + val.size(), 200u);
  std::set<uint64_t> seen;
  for (const auto& d : train)
    seen.insert(d.index);
  for (const auto& d : val)
    EXPECT_FALSE(seen.count(d.index)) << d.index;
  EXPECT_GT(val.size(), 25u);
  EXPECT_LT(val.size(), 80u);
}

TEST(Packer, ChunksAreTheTokenStreamWithEosBetweenDocuments) {
  hl::test::TempDir dir("pack");
  std::string lines;
  std::vector<std::string> texts;
  for (int i = 0; i < 50; ++i) {
    texts.push_back("document number " + std::to_string(i) + " says " + std::string(i % 7, 'x'));
    lines += "{\"text\": \"" + texts.back() + "\"}\n";
  }
  write_file(dir / "d.jsonl", lines);
  auto tok = hl::io::make_byte_tokenizer();
  std::vector<int32_t> expected;
  for (const auto& t : texts) {
    auto ids = tok->encode(t);
    expected.insert(expected.end(), ids.begin(), ids.end());
    expected.push_back(*tok->eos_id());
  }
  hl::data::PackerOptions options;
  options.seq_len = 31;
  auto packer = hl::data::make_token_packer(hl::data::make_json_text_source({dir / "d.jsonl"}),
                                            *tok, options);
  std::vector<int32_t> got;
  int chunks = 0;
  while (true) {
    auto chunk = packer->next();
    ASSERT_TRUE(chunk.ok());
    if (!chunk->has_value()) break;
    ASSERT_EQ((*chunk)->tokens.size(), 32u);
    got.insert(got.end(), (*chunk)->tokens.begin(), (*chunk)->tokens.end());
    ++chunks;
  }
  EXPECT_EQ(chunks, static_cast<int>(expected.size() / 32));
  expected.resize(got.size());  // the partial last chunk is dropped
  EXPECT_EQ(got, expected);

  // Batches are int64 [B, seq_len + 1] and loop over epochs.
  options.loop = true;
  auto looping = hl::data::make_token_packer(hl::data::make_json_text_source({dir / "d.jsonl"}),
                                             *tok, options);
  for (int step = 0; step < 20; ++step) {
    auto batch = hl::data::next_batch(*looping, 4);
    ASSERT_TRUE(batch.ok() && batch->has_value());
    EXPECT_EQ((*batch)->tokens.sizes(), (std::vector<int64_t>{4, 32}));
    EXPECT_EQ((*batch)->tokens.scalar_type(), torch::kInt64);
    EXPECT_FALSE((*batch)->answer_mask.any().item<bool>());
  }
}

TEST(LongRange, PasskeyAnswerIsMarkedAtTheRequestedDistance) {
  auto tok = hl::io::make_byte_tokenizer();
  hl::data::LongRangeOptions options;
  options.seq_len = 512;
  options.distances = {100, 300};
  options.seed = 9;
  auto stream = hl::data::make_long_range_stream(*tok, options);
  ASSERT_TRUE(stream.ok()) << stream.error().to_string();
  std::set<int64_t> distances;
  for (int i = 0; i < 20; ++i) {
    auto chunk = (*stream)->next();
    ASSERT_TRUE(chunk.ok() && chunk->has_value());
    const auto& c = **chunk;
    ASSERT_EQ(c.tokens.size(), 513u);
    ASSERT_EQ(c.answers.size(), 1u);
    const auto& a = c.answers[0];
    EXPECT_EQ(a.end, 513);  // the answer closes the sample
    const std::string answer =
        tok->decode(std::vector<int32_t>(c.tokens.begin() + a.begin, c.tokens.begin() + a.end));
    ASSERT_EQ(answer.size(), 10u);  // 10 distinct digits
    EXPECT_EQ(std::set<char>(answer.begin(), answer.end()).size(), 10u) << answer;
    const std::string text = tok->decode(c.tokens);
    EXPECT_NE(text.find("The pass key is #" + answer + "."), std::string::npos) << text;
    EXPECT_EQ(text.find('#'), text.find("The pass key is #") + 16) << text;  // marker only here
    distances.insert(a.distance);
  }
  EXPECT_EQ(distances, (std::set<int64_t>{100, 300}));

  options.distances = {600};
  auto too_far = hl::data::make_long_range_stream(*tok, options);
  ASSERT_FALSE(too_far.ok());
  EXPECT_NE(too_far.error().message.find("more than seq_len + 1 = 513"), std::string::npos);
}

TEST(LongRange, MqarQueriesRecallTheirValues) {
  auto tok = hl::io::make_byte_tokenizer();
  hl::data::LongRangeOptions options;
  options.task = hl::data::LongRangeTask::kMqar;
  options.seq_len = 400;
  options.distances = {150};
  options.mqar_pairs = 5;
  auto stream = hl::data::make_long_range_stream(*tok, options);
  ASSERT_TRUE(stream.ok()) << stream.error().to_string();
  auto chunk = (*stream)->next();
  ASSERT_TRUE(chunk.ok() && chunk->has_value());
  const auto& c = **chunk;
  ASSERT_EQ(c.answers.size(), 5u);
  int64_t nearest = INT64_MAX;
  for (const auto& a : c.answers)
    nearest = std::min(nearest, a.distance);
  EXPECT_EQ(nearest, 150);
  const std::string text = tok->decode(c.tokens);
  for (const auto& a : c.answers) {
    const std::string value =
        tok->decode(std::vector<int32_t>(c.tokens.begin() + a.begin, c.tokens.begin() + a.end));
    const std::string key = tok->decode(
        std::vector<int32_t>(c.tokens.begin() + a.begin - 5, c.tokens.begin() + a.begin));
    // The pair "key: value." was stated earlier, `distance` tokens before the answer.
    const std::string stated = tok->decode(std::vector<int32_t>(
        c.tokens.begin() + a.begin - a.distance - 8, c.tokens.begin() + a.begin - a.distance));
    EXPECT_EQ(stated, key + value) << text;
    EXPECT_GE(a.distance, 150);
  }
}

TEST(Mixing, DrawsStreamsInProportionToWeights) {
  auto tok = hl::io::make_byte_tokenizer();
  hl::data::LongRangeOptions passkey;
  passkey.seq_len = 128;
  passkey.distances = {40};
  hl::data::LongRangeOptions mqar = passkey;
  mqar.task = hl::data::LongRangeTask::kMqar;
  mqar.mqar_pairs = 2;
  std::vector<hl::data::WeightedStream> streams;
  streams.push_back({std::move(hl::data::make_long_range_stream(*tok, passkey)).value(), 3.0});
  streams.push_back({std::move(hl::data::make_long_range_stream(*tok, mqar)).value(), 1.0});
  auto mixed = hl::data::make_mixed_stream(std::move(streams), 5);
  ASSERT_TRUE(mixed.ok());
  int passkeys = 0;
  for (int i = 0; i < 2000; ++i) {
    auto chunk = (*mixed)->next();
    ASSERT_TRUE(chunk.ok() && chunk->has_value());
    passkeys += (*chunk)->answers.size() == 1;
  }
  EXPECT_NEAR(passkeys / 2000.0, 0.75, 0.04);

  auto batch = hl::data::next_batch(**mixed, 8);
  ASSERT_TRUE(batch.ok() && batch->has_value());
  EXPECT_EQ((*batch)->answer_mask.sizes(), (std::vector<int64_t>{8, 129}));
  EXPECT_TRUE((*batch)->answer_mask.any(1).all().item<bool>());

  std::vector<hl::data::WeightedStream> mismatched;
  mismatched.push_back({std::move(hl::data::make_long_range_stream(*tok, passkey)).value(), 1.0});
  passkey.seq_len = 200;
  mismatched.push_back({std::move(hl::data::make_long_range_stream(*tok, passkey)).value(), 1.0});
  EXPECT_FALSE(hl::data::make_mixed_stream(std::move(mismatched), 1).ok());
}

}  // namespace
