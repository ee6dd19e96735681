// A small command-line parser: declared options and positionals, generated help, and
// errors that name the offending word.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/util/error.hpp"

namespace hl::cli {

/// Declares the options of one subcommand and parses its arguments.
class ArgParser {
 public:
  ArgParser(std::string command, std::string summary);

  /// An option that takes a value (`--db PATH`); `repeated` collects every occurrence and
  /// also the words that follow it up to the next option (`--seq 512 2048`).
  ArgParser& option(std::string name, std::string value_name, std::string help,
                    std::optional<std::string> default_value = std::nullopt, bool repeated = false);
  /// A switch without a value (`--csv`).
  ArgParser& flag(std::string name, std::string help);
  /// A positional argument; `rest` takes every remaining positional word.
  ArgParser& positional(std::string name, std::string help, bool required = true,
                        bool rest = false);
  /// Extra paragraphs printed after the option list.
  ArgParser& epilog(std::string text);

  /// Parses `args`; on failure the error names the word and the command.
  Status parse(const std::vector<std::string>& args);

  bool help_requested() const { return help_requested_; }
  std::string help() const;

  bool has(const std::string& name) const;
  std::string get(const std::string& name) const;
  std::vector<std::string> get_all(const std::string& name) const;
  bool flag_set(const std::string& name) const;

 private:
  struct Spec {
    std::string name, value_name, help;
    std::optional<std::string> default_value;
    bool takes_value = true;
    bool repeated = false;
  };
  struct Positional {
    std::string name, help;
    bool required = true;
    bool rest = false;
  };
  const Spec* find(const std::string& name) const;

  std::string command_, summary_, epilog_;
  std::vector<Spec> specs_;
  std::vector<Positional> positionals_;
  std::map<std::string, std::vector<std::string>> values_;
  bool help_requested_ = false;
};

/// Parses a non-negative integer option value; the error names the option.
Result<long long> parse_int_arg(const std::string& option, const std::string& text,
                                long long min_value = 0);

/// Prints "error: COMMAND: MESSAGE" to stderr; returns kExitBadInput (2).
int report_bad_input(const std::string& command, const std::string& message);

/// Prints the parser's help (for --help) or the error with a hint; returns the exit code.
int finish_parse(const ArgParser& parser, const Status& status);

}  // namespace hl::cli
