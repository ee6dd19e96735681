// Checkpoint and tokenizer speed: opening a 1 GiB safetensors file through mmap against a
// plain read() of the same file, and tokenizer throughput on the fortunes text.
// Results: bench/RESULTS.md, "Checkpoints and tokenizers".
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "core/io/pretokenizer.hpp"
#include "core/io/safetensors.hpp"
#include "core/io/tokenizer.hpp"
#include "core/util/paths.hpp"

namespace {

namespace fs = std::filesystem;

const fs::path& big_file() {
  static const fs::path path =
      fs::temp_directory_path() / ("hl_io_bench_" + std::to_string(::getpid()) + ".safetensors");
  return path;
}

constexpr int kTensors = 16;  // 16 x 64 MiB float32 = 1 GiB

void write_big_file() {
  std::vector<hl::io::NamedTensor> tensors;
  for (int i = 0; i < kTensors; ++i) {
    tensors.emplace_back("layer." + std::to_string(i) + ".weight", torch::randn({4096, 4096}));
  }
  auto status = hl::io::write_safetensors(big_file(), tensors);
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", status.error().to_string().c_str());
    std::exit(1);
  }
}

// mmap + header parse + a view per tensor: what loading costs before the data is touched.
void BM_SafetensorsOpenMmap(benchmark::State& state) {
  for (auto _ : state) {
    auto file = hl::io::SafetensorsFile::open(big_file());
    for (const auto& info : file->tensors())
      benchmark::DoNotOptimize(file->tensor(info.name));
  }
  state.SetBytesProcessed(state.iterations() * fs::file_size(big_file()));
}

// mmap, then read every byte through the tensors (page cache warm).
void BM_SafetensorsMmapAndTouch(benchmark::State& state) {
  for (auto _ : state) {
    auto file = hl::io::SafetensorsFile::open(big_file());
    double total = 0;
    for (const auto& info : file->tensors())
      total += file->tensor(info.name).sum().item<double>();
    benchmark::DoNotOptimize(total);
  }
  state.SetBytesProcessed(state.iterations() * fs::file_size(big_file()));
}

// The baseline: read() the whole file into one buffer (page cache warm).
void BM_PlainReadWholeFile(benchmark::State& state) {
  const auto size = fs::file_size(big_file());
  for (auto _ : state) {
    std::unique_ptr<char[]> buffer(new char[size]);
    int fd = ::open(big_file().c_str(), O_RDONLY);
    std::size_t done = 0;
    while (done < size) {
      const auto n = ::read(fd, buffer.get() + done, size - done);
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    ::close(fd);
    benchmark::DoNotOptimize(buffer.get());
  }
  state.SetBytesProcessed(state.iterations() * size);
}

std::string fortunes_text() {
  static const std::string text = [] {
    std::string all;
    for (const auto& entry : fs::directory_iterator("/usr/share/games/fortunes")) {
      if (entry.path().has_extension()) continue;
      std::ifstream in(entry.path(), std::ios::binary);
      std::stringstream s;
      s << in.rdbuf();
      all += s.str();
    }
    return all;
  }();
  return text;
}

const hl::io::Tokenizer& trained_bpe() {
  static const std::unique_ptr<hl::io::Tokenizer> tok = [] {
    hl::io::BpeTrainOptions options;
    options.vocab_size = 4096;
    auto json = hl::io::train_bpe(fortunes_text(), options);
    return std::move(hl::io::parse_bpe_tokenizer(*json, "bench")).value();
  }();
  return *tok;
}

void BM_PreTokenizeLlama3(benchmark::State& state) {
  const std::string text = fortunes_text();
  for (auto _ : state) {
    benchmark::DoNotOptimize(hl::io::split_pretokens(text, hl::io::SplitPattern::kLlama3));
  }
  state.SetBytesProcessed(state.iterations() * text.size());
}

void BM_EncodeByteTokenizer(benchmark::State& state) {
  const std::string text = fortunes_text();
  auto tok = hl::io::make_byte_tokenizer();
  for (auto _ : state)
    benchmark::DoNotOptimize(tok->encode(text));
  state.SetBytesProcessed(state.iterations() * text.size());
}

void BM_EncodeBpe4096(benchmark::State& state) {
  const std::string text = fortunes_text();
  const auto& tok = trained_bpe();
  std::size_t tokens = 0;
  for (auto _ : state)
    tokens = tok.encode(text).size();
  state.SetBytesProcessed(state.iterations() * text.size());
  state.counters["bytes_per_token"] = static_cast<double>(text.size()) / tokens;
}

void BM_DecodeBpe4096(benchmark::State& state) {
  const std::string text = fortunes_text();
  const auto& tok = trained_bpe();
  const auto ids = tok.encode(text);
  for (auto _ : state)
    benchmark::DoNotOptimize(tok.decode(ids));
  state.SetBytesProcessed(state.iterations() * text.size());
}

void BM_TrainBpe4096(benchmark::State& state) {
  const std::string text = fortunes_text();
  hl::io::BpeTrainOptions options;
  options.vocab_size = 4096;
  for (auto _ : state)
    benchmark::DoNotOptimize(hl::io::train_bpe(text, options));
  state.SetBytesProcessed(state.iterations() * text.size());
}

// SentencePiece (unigram, 4000 pieces) trained by Debian's spm_train when it is installed.
void BM_EncodeSentencePiece(benchmark::State& state) {
  const fs::path dir =
      fs::temp_directory_path() / ("hl_io_bench_spm_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    std::ofstream out(dir / "corpus.txt", std::ios::binary);
    out << fortunes_text();
  }
  const std::string train = "spm_train --input=" + (dir / "corpus.txt").string() +
                            " --model_prefix=" + (dir / "m").string() +
                            " --vocab_size=4000 --minloglevel=2 > /dev/null 2>&1";
  if (std::system(train.c_str()) != 0) {
    state.SkipWithError("spm_train not available");
    hl::remove_tree(dir);
    return;
  }
  auto tok = hl::io::load_tokenizer(dir / "m.model");
  hl::remove_tree(dir);
  if (!tok.ok()) {
    state.SkipWithError(tok.error().to_string().c_str());
    return;
  }
  const std::string text = fortunes_text();
  for (auto _ : state)
    benchmark::DoNotOptimize((*tok)->encode(text));
  state.SetBytesProcessed(state.iterations() * text.size());
}

BENCHMARK(BM_SafetensorsOpenMmap)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SafetensorsMmapAndTouch)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlainReadWholeFile)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PreTokenizeLlama3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeByteTokenizer)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeBpe4096)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecodeBpe4096)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeSentencePiece)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TrainBpe4096)->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(1);
  write_big_file();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::error_code ec;
  fs::remove(big_file(), ec);
  return 0;
}
