#include "core/data/packing.hpp"

#include <algorithm>
#include <deque>

namespace hl::data {

namespace {

// Platform-independent draws (std distributions differ between standard libraries).
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  uint64_t below(uint64_t n) { return engine_() % n; }
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

 private:
  std::mt19937_64 engine_;
};

class TokenPacker final : public ChunkStream {
 public:
  TokenPacker(std::unique_ptr<TextSource> source, const io::Tokenizer& tokenizer,
              PackerOptions options)
      : source_(std::move(source)), tokenizer_(tokenizer), options_(options) {}

  int64_t chunk_tokens() const override { return options_.seq_len + 1; }

  Result<std::optional<TokenChunk>> next() override {
    const auto want = static_cast<std::size_t>(chunk_tokens());
    while (pending_.size() < want) {
      auto doc = source_->next();
      if (!doc) return doc.error();
      if (!doc->has_value()) {
        if (!options_.loop || !produced_any_document_) return std::optional<TokenChunk>();
        if (auto s = source_->rewind(); !s) return s.error();
        produced_any_document_ = false;
        continue;
      }
      produced_any_document_ = true;
      const Document& d = **doc;
      if (at_document_start_ && options_.bos_per_document && tokenizer_.bos_id()) {
        pending_.push_back(*tokenizer_.bos_id());
      }
      const auto ids = tokenizer_.encode(d.text, /*add_special=*/false);
      pending_.insert(pending_.end(), ids.begin(), ids.end());
      at_document_start_ = d.ends_document;
      if (d.ends_document && tokenizer_.eos_id()) pending_.push_back(*tokenizer_.eos_id());
    }
    TokenChunk chunk;
    chunk.tokens.assign(pending_.begin(), pending_.begin() + want);
    pending_.erase(pending_.begin(), pending_.begin() + want);
    return std::optional<TokenChunk>(std::move(chunk));
  }

 private:
  std::unique_ptr<TextSource> source_;
  const io::Tokenizer& tokenizer_;
  PackerOptions options_;
  std::deque<int32_t> pending_;
  bool at_document_start_ = true;
  bool produced_any_document_ = false;
};

// Sentences between the facts; their content carries nothing the question needs.
constexpr const char* kFiller =
    " Clouds drift slowly over the quiet hills. A small river winds toward the distant sea."
    " Birds call to each other in the early light. The old road bends past a stone wall.";

class LongRangeStream final : public ChunkStream {
 public:
  LongRangeStream(const io::Tokenizer& tokenizer, LongRangeOptions options)
      : tokenizer_(tokenizer), options_(std::move(options)), rng_(options_.seed) {
    filler_ = tokenizer_.encode(kFiller, false);
  }

  int64_t chunk_tokens() const override { return options_.seq_len + 1; }

  Result<std::optional<TokenChunk>> next() override {
    const int64_t distance = options_.distances[rng_.below(options_.distances.size())];
    auto chunk = options_.task == LongRangeTask::kPasskey ? passkey(distance) : mqar(distance);
    if (!chunk) return chunk.error();
    return std::optional<TokenChunk>(std::move(chunk).value());
  }

  // Checks that the longest distance fits, by building one sample of each distance.
  Status validate() {
    for (int64_t d : options_.distances) {
      auto sample = options_.task == LongRangeTask::kPasskey ? passkey(d) : mqar(d);
      if (!sample) return sample.error();
    }
    rng_ = Rng(options_.seed);
    return Status::Ok();
  }

 private:
  std::vector<int32_t> encode(const std::string& text) const {
    return tokenizer_.encode(text, false);
  }

  void append_filler(std::vector<int32_t>& out, int64_t count) {
    for (int64_t i = 0; i < count; ++i)
      out.push_back(filler_[(filler_offset_ + i) % filler_.size()]);
    filler_offset_ = (filler_offset_ + count) % filler_.size();
  }

  std::string digits(int count) {
    std::string s;
    s += static_cast<char>('1' + rng_.below(9));  // no leading zero
    for (int i = 1; i < count; ++i)
      s += static_cast<char>('0' + rng_.below(10));
    return s;
  }

  // A pass key of distinct digits (at most 10), no leading zero: each digit then has one
  // successor in the key, so reading it back is an unambiguous lookup.
  std::string distinct_digits(int count) {
    std::string pool = "0123456789";
    std::string key;
    for (int i = 0; i < std::min(count, 10); ++i) {
      std::size_t pick;
      do {
        pick = rng_.below(pool.size());
      } while (i == 0 && pool[pick] == '0');
      key += pool[pick];
      pool.erase(pick, 1);
    }
    return key;
  }

  // Puts filler in front so the sample is exactly seq_len + 1 tokens.
  Result<TokenChunk> finish(std::vector<int32_t> body, std::vector<AnswerSpan> answers,
                            int64_t distance) {
    const int64_t total = chunk_tokens();
    const int64_t prefix = total - static_cast<int64_t>(body.size());
    if (prefix < 0) {
      return make_error("a " +
                        std::string(options_.task == LongRangeTask::kPasskey ? "passkey" : "mqar") +
                        " sample at distance " + std::to_string(distance) + " needs " +
                        std::to_string(body.size()) +
                        " tokens, more than seq_len + 1 = " + std::to_string(total));
    }
    TokenChunk chunk;
    chunk.tokens.reserve(total);
    append_filler(chunk.tokens, prefix);
    chunk.tokens.insert(chunk.tokens.end(), body.begin(), body.end());
    for (auto& a : answers) {
      a.begin += prefix;
      a.end += prefix;
    }
    chunk.answers = std::move(answers);
    return chunk;
  }

  Result<TokenChunk> passkey(int64_t distance) {
    const std::string key = distinct_digits(options_.passkey_digits);
    // The '#' before the key appears nowhere else in the sample, so one matching token
    // finds the fact: retrieval is what is tested, not matching a long phrase (which a
    // byte-level model learns much later).
    std::vector<int32_t> body = encode(" The pass key is #" + key + ".");
    const int64_t fact_end = static_cast<int64_t>(body.size());
    const auto question = encode(" What is the pass key? The pass key is #");
    const int64_t gap = std::max<int64_t>(0, distance - static_cast<int64_t>(question.size()));
    append_filler(body, gap);
    body.insert(body.end(), question.begin(), question.end());
    const auto answer = encode(key);
    AnswerSpan span{static_cast<int64_t>(body.size()), 0, 0};
    body.insert(body.end(), answer.begin(), answer.end());
    span.end = static_cast<int64_t>(body.size());
    span.distance = span.begin - fact_end;
    return finish(std::move(body), {span}, distance);
  }

  Result<TokenChunk> mqar(int64_t distance) {
    const int pairs = std::max(1, options_.mqar_pairs);
    std::vector<std::string> keys, values;
    while (static_cast<int>(keys.size()) < pairs) {
      std::string key;
      for (int i = 0; i < 3; ++i)
        key += static_cast<char>('a' + rng_.below(26));
      if (std::find(keys.begin(), keys.end(), key) != keys.end()) continue;
      keys.push_back(key);
      values.push_back(digits(2));
    }
    std::vector<int32_t> body;
    std::vector<int64_t> value_end(pairs);
    auto append = [&](const std::string& text) {
      const auto ids = encode(text);
      body.insert(body.end(), ids.begin(), ids.end());
    };
    for (int i = 0; i < pairs; ++i) {
      append(" " + keys[i] + ":");
      append(" " + values[i]);
      value_end[i] = static_cast<int64_t>(body.size());
      append(".");
    }
    // Queries in a shuffled order; the filler before them makes the nearest query exactly
    // `distance` tokens from the pair it asks for (the others are further).
    std::vector<int> order(pairs);
    for (int i = 0; i < pairs; ++i)
      order[i] = i;
    for (int i = pairs - 1; i > 0; --i)
      std::swap(order[i], order[rng_.below(i + 1)]);
    std::vector<int32_t> queries;
    std::vector<AnswerSpan> answers;
    std::vector<int> asked;
    for (int q : order) {
      const auto key = encode(" " + keys[q] + ":");
      queries.insert(queries.end(), key.begin(), key.end());
      AnswerSpan span{static_cast<int64_t>(queries.size()), 0, 0};
      const auto value = encode(" " + values[q]);
      queries.insert(queries.end(), value.begin(), value.end());
      span.end = static_cast<int64_t>(queries.size());
      answers.push_back(span);
      asked.push_back(q);
      const auto dot = encode(".");
      queries.insert(queries.end(), dot.begin(), dot.end());
    }
    const int64_t pairs_length = static_cast<int64_t>(body.size());
    int64_t nearest = INT64_MAX;
    for (std::size_t k = 0; k < answers.size(); ++k) {
      nearest = std::min(nearest, pairs_length + answers[k].begin - value_end[asked[k]]);
    }
    const int64_t filler = std::max<int64_t>(0, distance - nearest);
    append_filler(body, filler);
    for (std::size_t k = 0; k < answers.size(); ++k) {
      answers[k].begin += pairs_length + filler;
      answers[k].end += pairs_length + filler;
      answers[k].distance = answers[k].begin - value_end[asked[k]];
    }
    body.insert(body.end(), queries.begin(), queries.end());
    return finish(std::move(body), std::move(answers), distance);
  }

  const io::Tokenizer& tokenizer_;
  LongRangeOptions options_;
  Rng rng_;
  std::vector<int32_t> filler_;
  std::size_t filler_offset_ = 0;
};

class MixedStream final : public ChunkStream {
 public:
  MixedStream(std::vector<WeightedStream> streams, uint64_t seed)
      : streams_(std::move(streams)), rng_(seed) {
    double total = 0;
    for (const auto& s : streams_)
      total += s.weight;
    double running = 0;
    for (const auto& s : streams_) {
      running += s.weight / total;
      cumulative_.push_back(running);
    }
  }

  int64_t chunk_tokens() const override { return streams_.front().stream->chunk_tokens(); }

  Result<std::optional<TokenChunk>> next() override {
    const double u = rng_.uniform();
    std::size_t pick = 0;
    while (pick + 1 < cumulative_.size() && u >= cumulative_[pick])
      ++pick;
    return streams_[pick].stream->next();
  }

 private:
  std::vector<WeightedStream> streams_;
  std::vector<double> cumulative_;
  Rng rng_;
};

}  // namespace

std::unique_ptr<ChunkStream> make_token_packer(std::unique_ptr<TextSource> source,
                                               const io::Tokenizer& tokenizer,
                                               PackerOptions options) {
  assert(options.seq_len > 0);
  return std::make_unique<TokenPacker>(std::move(source), tokenizer, options);
}

Result<std::unique_ptr<ChunkStream>> make_long_range_stream(const io::Tokenizer& tokenizer,
                                                            LongRangeOptions options) {
  if (options.seq_len < 8) return make_error("seq_len must be at least 8 for long-range tasks");
  if (options.distances.empty()) return make_error("no distances given for the long-range task");
  for (int64_t d : options.distances) {
    if (d < 1) return make_error("distances must be positive, got " + std::to_string(d));
  }
  if (options.passkey_digits < 1 || options.passkey_digits > 18) {
    return make_error("passkey_digits must be 1..18");
  }
  auto stream = std::make_unique<LongRangeStream>(tokenizer, std::move(options));
  if (auto s = stream->validate(); !s) return s.error();
  return std::unique_ptr<ChunkStream>(std::move(stream));
}

Result<std::unique_ptr<ChunkStream>> make_mixed_stream(std::vector<WeightedStream> streams,
                                                       uint64_t seed) {
  if (streams.empty()) return make_error("nothing to mix");
  double total = 0;
  for (const auto& s : streams) {
    if (!s.stream) return make_error("a mixed stream is null");
    if (!(s.weight >= 0)) return make_error("mixing weights must be non-negative");
    if (s.stream->chunk_tokens() != streams.front().stream->chunk_tokens()) {
      return make_error("mixed streams have different chunk lengths (" +
                        std::to_string(s.stream->chunk_tokens()) + " vs " +
                        std::to_string(streams.front().stream->chunk_tokens()) + ")");
    }
    total += s.weight;
  }
  if (total <= 0) return make_error("mixing weights sum to zero");
  return std::unique_ptr<ChunkStream>(std::make_unique<MixedStream>(std::move(streams), seed));
}

Result<std::optional<Batch>> next_batch(ChunkStream& stream, int64_t batch_size) {
  const int64_t length = stream.chunk_tokens();
  Batch batch{torch::empty({batch_size, length}, torch::kInt64),
              torch::zeros({batch_size, length}, torch::kBool)};
  auto tokens = batch.tokens.accessor<int64_t, 2>();
  auto mask = batch.answer_mask.accessor<bool, 2>();
  for (int64_t b = 0; b < batch_size; ++b) {
    auto chunk = stream.next();
    if (!chunk) return chunk.error();
    if (!chunk->has_value()) return std::optional<Batch>();
    const TokenChunk& c = **chunk;
    assert(static_cast<int64_t>(c.tokens.size()) == length);
    for (int64_t t = 0; t < length; ++t)
      tokens[b][t] = c.tokens[t];
    for (const auto& span : c.answers) {
      for (int64_t t = span.begin; t < span.end; ++t)
        mask[b][t] = true;
    }
  }
  return std::optional<Batch>(std::move(batch));
}

}  // namespace hl::data
