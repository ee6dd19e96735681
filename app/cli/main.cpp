// hybridlab-cli: the headless front end. Every subcommand lives in its own cmd_*.cpp.
#include <csignal>
#include <cstring>
#include <exception>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "app/cli/commands.hpp"

namespace {

struct Subcommand {
  const char* name;
  const char* summary;
  std::function<int(const hl::cli::Args&)> run;
};

const std::vector<Subcommand>& subcommands() {
  using namespace hl::cli;
  static const std::vector<Subcommand> table = {
      {"validate", "check an experiment file and print it resolved", cmd_validate},
      {"run", "run an experiment (conversion training, then evaluation)", cmd_run},
      {"pretrain", "train a small softmax base model from scratch", cmd_pretrain},
      {"eval", "evaluate a model or a run (perplexity, probes, diagnostics)", cmd_eval},
      {"generate", "generate text from a model or a run", cmd_generate},
      {"export", "write a run's converted model as a Hugging Face directory", cmd_export},
      {"runs", "list, show and compare recorded runs", cmd_runs},
      {"bench", "benchmark the attention backends", cmd_bench},
      {"demo", "the built-in demo: LoLCATs vs LoLCATs+SSD on the tiny model", cmd_demo},
  };
  return table;
}

void print_usage(std::ostream& out) {
  out << "usage: hybridlab-cli <command> [arguments] [--help]\n\n"
         "Convert transformers to hybrid linear / sliding-window attention, train the\n"
         "conversion, and record whether the linear branch is used.\n\ncommands:\n";
  for (const auto& sub : subcommands()) {
    std::string name = sub.name;
    out << "  " << name << std::string(12 - name.size(), ' ') << sub.summary << "\n";
  }
  out << "\nexit status: 0 ok, 1 internal error, 2 bad input, 130 cancelled\n"
         "default database: $XDG_DATA_HOME/hybridlab/runs.sqlite\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> words(argv + 1, argv + argc);
  if (words.empty()) {
    print_usage(std::cerr);
    return hl::cli::kExitBadInput;
  }
  const std::string command = words.front();
  if (command == "--help" || command == "-h" || command == "help") {
    print_usage(std::cout);
    return hl::cli::kExitOk;
  }
  if (command == "--version") {
    std::cout << "hybridlab-cli " << HL_VERSION << "\n";
    return hl::cli::kExitOk;
  }
  for (const auto& sub : subcommands()) {
    if (command != sub.name) continue;
    try {
      return sub.run(hl::cli::Args(words.begin() + 1, words.end()));
    } catch (const std::exception& error) {
      std::cerr << "internal error in '" << command << "': " << error.what() << "\n";
      return hl::cli::kExitInternal;
    }
  }
  std::cerr << "error: unknown command '" << command << "'\n\n";
  print_usage(std::cerr);
  return hl::cli::kExitBadInput;
}
