// Token chunks for training and evaluation: documents packed into fixed-length chunks,
// generated long-range tasks (passkey retrieval, multi-query associative recall), mixing
// of streams by weight, and batching into tensors.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/data/text_source.hpp"
#include "core/io/tokenizer.hpp"
#include "core/util/error.hpp"

namespace hl::data {

/// Tokens where a task's answer is: [begin, end) positions in TokenChunk::tokens, and how
/// many tokens back the fact it recalls was stated.
struct AnswerSpan {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t distance = 0;
};

/// seq_len + 1 tokens (inputs are [0, seq_len), targets [1, seq_len]).
struct TokenChunk {
  std::vector<int32_t> tokens;
  std::vector<AnswerSpan> answers;  // empty for plain text
};

/// A stream of chunks of one length; next() returns nullopt at the end.
class ChunkStream {
 public:
  virtual ~ChunkStream() = default;
  virtual Result<std::optional<TokenChunk>> next() = 0;
  /// The chunk length, seq_len + 1.
  virtual int64_t chunk_tokens() const = 0;
};

/// How documents are packed.
struct PackerOptions {
  int64_t seq_len = 256;
  /// BOS before each document (when the tokenizer has one); EOS always ends a document.
  bool bos_per_document = false;
  /// Rewind the source at its end instead of stopping (multi-epoch).
  bool loop = false;
};

/// Tokenizes documents (EOS between them) and cuts the token stream into chunks of
/// seq_len + 1; only the tokens of the current document are held. A final partial chunk
/// is dropped. The tokenizer must outlive the packer.
std::unique_ptr<ChunkStream> make_token_packer(std::unique_ptr<TextSource> source,
                                               const io::Tokenizer& tokenizer,
                                               PackerOptions options);

/// Which long-range task to generate.
enum class LongRangeTask { kPasskey, kMqar };

/// Settings of a generated long-range task.
struct LongRangeOptions {
  LongRangeTask task = LongRangeTask::kPasskey;
  int64_t seq_len = 256;
  /// Distances (tokens between the stated fact and its answer) to draw from, uniformly.
  std::vector<int64_t> distances = {64};
  /// Distinct digits, at most 10. Ten by default: the tiny base model learns retrieval of
  /// keys of one fixed length within its CPU budget (bench/RESULTS.md, Pretrain).
  int passkey_digits = 10;
  int mqar_pairs = 4;  // key-value pairs stated, each queried once
  uint64_t seed = 0;
};

/// Generated samples: filler text, the fact (a pass key, or key-value pairs), more filler,
/// then the question, with the answer tokens last and marked in TokenChunk::answers.
Result<std::unique_ptr<ChunkStream>> make_long_range_stream(const io::Tokenizer& tokenizer,
                                                            LongRangeOptions options);

/// A stream to mix and its weight.
struct WeightedStream {
  std::unique_ptr<ChunkStream> stream;
  double weight = 1.0;
};

/// Draws each chunk from one of the streams with probability proportional to its weight
/// (deterministic for a seed). Ends when a drawn stream ends. All streams must have the
/// same chunk length.
Result<std::unique_ptr<ChunkStream>> make_mixed_stream(std::vector<WeightedStream> streams,
                                                       uint64_t seed);

/// A batch: tokens [B, seq_len + 1] int64, answer_mask [B, seq_len + 1] bool (true on
/// answer tokens of generated tasks).
struct Batch {
  torch::Tensor tokens;
  torch::Tensor answer_mask;
};

/// The next batch of `batch_size` chunks; nullopt when the stream ends first.
Result<std::optional<Batch>> next_batch(ChunkStream& stream, int64_t batch_size);

}  // namespace hl::data
