#include "app/cli/arg_parser.hpp"

#include <cstdio>
#include <iostream>

#include "app/cli/commands.hpp"

namespace hl::cli {

ArgParser::ArgParser(std::string command, std::string summary)
    : command_(std::move(command)), summary_(std::move(summary)) {}

ArgParser& ArgParser::option(std::string name, std::string value_name, std::string help,
                             std::optional<std::string> default_value, bool repeated) {
  specs_.push_back({std::move(name), std::move(value_name), std::move(help),
                    std::move(default_value), true, repeated});
  return *this;
}

ArgParser& ArgParser::flag(std::string name, std::string help) {
  specs_.push_back({std::move(name), "", std::move(help), std::nullopt, false, false});
  return *this;
}

ArgParser& ArgParser::positional(std::string name, std::string help, bool required, bool rest) {
  positionals_.push_back({std::move(name), std::move(help), required, rest});
  return *this;
}

ArgParser& ArgParser::epilog(std::string text) {
  epilog_ = std::move(text);
  return *this;
}

const ArgParser::Spec* ArgParser::find(const std::string& name) const {
  for (const auto& spec : specs_)
    if (spec.name == name) return &spec;
  return nullptr;
}

Status ArgParser::parse(const std::vector<std::string>& args) {
  values_.clear();
  size_t next_positional = 0;
  auto where = [&](const std::string& what) { return command_ + ": " + what; };
  for (size_t i = 0; i < args.size(); ++i) {
    std::string word = args[i];
    if (word == "--help" || word == "-h") {
      help_requested_ = true;
      return Status::Ok();
    }
    if (word.size() > 2 && word.rfind("--", 0) == 0) {
      std::string value;
      bool inline_value = false;
      if (auto eq = word.find('='); eq != std::string::npos) {
        value = word.substr(eq + 1);
        word = word.substr(0, eq);
        inline_value = true;
      }
      const Spec* spec = find(word);
      if (!spec) return make_error(where("unknown option '" + word + "' (see --help)"));
      if (!spec->takes_value) {
        if (inline_value) return make_error(where("option '" + word + "' takes no value"));
        values_[word].push_back("1");
        continue;
      }
      if (!inline_value) {
        if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0)
          return make_error(
              where("option '" + word + "' needs a value (" + spec->value_name + ")"));
        value = args[++i];
      }
      if (!spec->repeated && values_.count(word))
        return make_error(where("option '" + word + "' given twice"));
      values_[word].push_back(value);
      while (spec->repeated && i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0)
        values_[word].push_back(args[++i]);
      continue;
    }
    if (next_positional >= positionals_.size())
      return make_error(where("unexpected argument '" + word + "' (see --help)"));
    const Positional& pos = positionals_[next_positional];
    values_[pos.name].push_back(word);
    if (!pos.rest) ++next_positional;
  }
  for (const auto& pos : positionals_)
    if (pos.required && !values_.count(pos.name))
      return make_error(where("missing argument " + pos.name + " (see --help)"));
  for (const auto& spec : specs_)
    if (spec.default_value && !values_.count(spec.name))
      values_[spec.name].push_back(*spec.default_value);
  return Status::Ok();
}

std::string ArgParser::help() const {
  std::string out = "usage: hybridlab-cli " + command_;
  for (const auto& pos : positionals_) {
    std::string shown = pos.name + (pos.rest ? "..." : "");
    out += " " + (pos.required ? shown : "[" + shown + "]");
  }
  if (!specs_.empty()) out += " [options]";
  out += "\n\n" + summary_ + "\n";
  if (!positionals_.empty()) {
    out += "\narguments:\n";
    for (const auto& pos : positionals_) {
      char line[512];
      std::snprintf(line, sizeof line, "  %-24s %s\n", pos.name.c_str(), pos.help.c_str());
      out += line;
    }
  }
  out += "\noptions:\n";
  for (const auto& spec : specs_) {
    std::string left = spec.name + (spec.takes_value ? " " + spec.value_name : "");
    std::string right = spec.help;
    if (spec.default_value) right += " (default: " + *spec.default_value + ")";
    char line[1024];
    std::snprintf(line, sizeof line, "  %-24s %s\n", left.c_str(), right.c_str());
    out += line;
  }
  out += "  --help                   show this help\n";
  if (!epilog_.empty()) out += "\n" + epilog_ + "\n";
  return out;
}

bool ArgParser::has(const std::string& name) const {
  return values_.count(name) > 0;
}

std::string ArgParser::get(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() || it->second.empty() ? std::string() : it->second.back();
}

std::vector<std::string> ArgParser::get_all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

bool ArgParser::flag_set(const std::string& name) const {
  return has(name);
}

Result<long long> parse_int_arg(const std::string& option, const std::string& text,
                                long long min_value) {
  try {
    size_t used = 0;
    long long value = std::stoll(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    if (value < min_value)
      return make_error(option + " must be >= " + std::to_string(min_value) + ", got " + text);
    return value;
  } catch (const std::exception&) {
    return make_error(option + " expects an integer, got '" + text + "'");
  }
}

int report_bad_input(const std::string& command, const std::string& message) {
  std::cerr << "error: " << command << ": " << message << "\n";
  return kExitBadInput;
}

int finish_parse(const ArgParser& parser, const Status& status) {
  if (!status.ok()) {
    std::cerr << "error: " << status.error().to_string() << "\n";
    return kExitBadInput;
  }
  std::cout << parser.help();
  return kExitOk;
}

}  // namespace hl::cli
