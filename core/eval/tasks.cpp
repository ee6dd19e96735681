#include "core/eval/tasks.hpp"

#include <array>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

namespace hl::eval {

namespace {

using nlohmann::json;

constexpr std::array<std::pair<McFormat, std::string_view>, 7> kFormatNames{{
    {McFormat::automatic, "auto"},
    {McFormat::generic, "generic"},
    {McFormat::piqa, "piqa"},
    {McFormat::arc, "arc"},
    {McFormat::hellaswag, "hellaswag"},
    {McFormat::winogrande, "winogrande"},
    {McFormat::mmlu, "mmlu"},
}};

// A malformed line; caught at the line's boundary and turned into an Error there.
struct BadLine {
  std::string message;
};

const json& field(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end()) throw BadLine{"missing field \"" + std::string(key) + "\""};
  return *it;
}

std::string text_field(const json& object, const char* key) {
  const json& value = field(object, key);
  if (!value.is_string()) throw BadLine{"field \"" + std::string(key) + "\" must be a string"};
  return value.get<std::string>();
}

std::vector<std::string> text_list(const json& value, const std::string& key) {
  if (!value.is_array() || value.empty())
    throw BadLine{"field \"" + key + "\" must be a non-empty list of strings"};
  std::vector<std::string> out;
  for (const auto& item : value) {
    if (!item.is_string()) throw BadLine{"field \"" + key + "\" must hold only strings"};
    out.push_back(item.get<std::string>());
  }
  return out;
}

// An integer label that may be written as a number or as a string of digits.
int64_t integer_field(const json& object, const char* key) {
  const json& value = field(object, key);
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_string()) {
    const std::string text = value.get<std::string>();
    if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos)
      return std::stoll(text);
  }
  throw BadLine{"field \"" + std::string(key) + "\" must be an integer"};
}

int64_t checked_gold(int64_t gold, size_t choices, const char* key) {
  if (gold < 0 || gold >= static_cast<int64_t>(choices))
    throw BadLine{"field \"" + std::string(key) + "\" is " + std::to_string(gold) +
                  ", outside the " + std::to_string(choices) + " choices"};
  return gold;
}

std::string strip(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

// Python's str.capitalize for ASCII: first letter upper, the rest lower.
std::string capitalize(std::string text) {
  for (size_t i = 0; i < text.size(); ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) text[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return text;
}

// Choices that share one context: the harness's "target_delimiter" (a space) goes in front.
McItem shared_context(const std::string& context, const std::vector<std::string>& choices,
                      int64_t gold) {
  McItem item;
  for (const auto& choice : choices)
    item.choices.push_back({context, " " + choice, choice});
  item.gold = gold;
  return item;
}

McItem generic_item(const json& j) {
  const std::string context = text_field(j, "context");
  const auto choices = text_list(field(j, "choices"), "choices");
  McItem item;
  // Our own format is literal: the continuation is the choice exactly as written.
  for (const auto& choice : choices)
    item.choices.push_back({context, choice, choice});
  item.gold = checked_gold(integer_field(j, "gold"), choices.size(), "gold");
  return item;
}

McItem piqa_item(const json& j) {
  const std::vector<std::string> choices{text_field(j, "sol1"), text_field(j, "sol2")};
  return shared_context("Question: " + text_field(j, "goal") + "\nAnswer:", choices,
                        checked_gold(integer_field(j, "label"), 2, "label"));
}

// ARC: the Hugging Face export ({"question": str, "choices": {"text": [], "label": []}})
// and AI2's original JSONL ({"question": {"stem": str, "choices": [{"text", "label"}]}}).
McItem arc_item(const json& j) {
  const json& question = field(j, "question");
  std::string stem;
  std::vector<std::string> texts, labels;
  if (question.is_object()) {
    stem = text_field(question, "stem");
    const json& choices = field(question, "choices");
    if (!choices.is_array() || choices.empty())
      throw BadLine{"field \"question.choices\" must be a non-empty list"};
    for (const auto& choice : choices) {
      if (!choice.is_object()) throw BadLine{"each of \"question.choices\" must be an object"};
      texts.push_back(text_field(choice, "text"));
      labels.push_back(text_field(choice, "label"));
    }
  } else if (question.is_string()) {
    stem = question.get<std::string>();
    const json& choices = field(j, "choices");
    if (!choices.is_object()) throw BadLine{"field \"choices\" must be an object {text, label}"};
    texts = text_list(field(choices, "text"), "choices.text");
    labels = text_list(field(choices, "label"), "choices.label");
    if (labels.size() != texts.size())
      throw BadLine{"\"choices.text\" and \"choices.label\" differ in length"};
  } else {
    throw BadLine{"field \"question\" must be a string or an object"};
  }
  const std::string key = text_field(j, "answerKey");
  int64_t gold = -1;
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] == key) gold = static_cast<int64_t>(i);
  if (gold < 0) throw BadLine{"answerKey \"" + key + "\" is not one of the choice labels"};
  return shared_context("Question: " + stem + "\nAnswer:", texts, gold);
}

McItem hellaswag_item(const json& j) {
  const std::string context = text_field(j, "ctx_a") + " " + capitalize(text_field(j, "ctx_b"));
  const std::string query = hellaswag_preprocess(text_field(j, "activity_label") + ": " + context);
  std::vector<std::string> endings = text_list(field(j, "endings"), "endings");
  for (auto& ending : endings)
    ending = hellaswag_preprocess(ending);
  return shared_context(query, endings,
                        checked_gold(integer_field(j, "label"), endings.size(), "label"));
}

// Partial scoring: each option fills the blank in the context, and the model is scored on
// the (shared) rest of the sentence.
McItem winogrande_item(const json& j) {
  const std::string sentence = text_field(j, "sentence");
  const auto blank = sentence.find('_');
  if (blank == std::string::npos) throw BadLine{"field \"sentence\" has no blank '_'"};
  const std::string rest = " " + strip(sentence.substr(blank + 1));
  McItem item;
  for (const char* key : {"option1", "option2"})
    item.choices.push_back({sentence.substr(0, blank) + text_field(j, key), rest, rest});
  item.gold = checked_gold(integer_field(j, "answer") - 1, 2, "answer (1 or 2)");
  return item;
}

struct MmluRecord {
  std::string subject, question, split;
  std::vector<std::string> choices;
  int64_t answer = 0;
  int line = 0;
};

MmluRecord mmlu_record(const json& j) {
  MmluRecord r;
  r.question = strip(text_field(j, "question"));
  r.choices = text_list(field(j, "choices"), "choices");
  if (r.choices.size() > 26) throw BadLine{"more than 26 choices"};
  const json& answer = field(j, "answer");
  if (answer.is_string() && answer.get<std::string>().size() == 1 &&
      std::isupper(static_cast<unsigned char>(answer.get<std::string>()[0])))
    r.answer = answer.get<std::string>()[0] - 'A';
  else
    r.answer = integer_field(j, "answer");
  r.answer = checked_gold(r.answer, r.choices.size(), "answer");
  if (j.contains("subject") && j["subject"].is_string())
    r.subject = j["subject"].get<std::string>();
  if (j.contains("split") && j["split"].is_string()) r.split = j["split"].get<std::string>();
  return r;
}

std::string mmlu_question(const MmluRecord& r) {
  std::string text = r.question + "\n";
  for (size_t i = 0; i < r.choices.size(); ++i)
    text += std::string(1, char('A' + i)) + ". " + r.choices[i] + "\n";
  return text + "Answer:";
}

// The harness's MMLU prompt: a description naming the subject, k solved examples of the
// same subject, then the question; the choices are the answer letters.
McItem mmlu_item(const MmluRecord& r, const std::vector<const MmluRecord*>& shots) {
  std::string subject = r.subject;
  std::replace(subject.begin(), subject.end(), '_', ' ');
  std::string prompt = "The following are multiple choice questions (with answers)" +
                       (subject.empty() ? std::string() : " about " + subject) + ".\n\n";
  for (const auto* shot : shots)
    prompt += mmlu_question(*shot) + " " + std::string(1, char('A' + shot->answer)) + "\n\n";
  prompt += mmlu_question(r);
  std::vector<std::string> letters;
  for (size_t i = 0; i < r.choices.size(); ++i)
    letters.emplace_back(1, char('A' + i));
  McItem item = shared_context(prompt, letters, r.answer);
  item.line = r.line;
  return item;
}

json parse_object(std::string_view line) {
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw BadLine{"not valid JSON"};
  if (!j.is_object()) throw BadLine{"not a JSON object"};
  return j;
}

std::optional<McFormat> detect(const json& j) {
  if (j.contains("context") && j.contains("choices") && j.contains("gold"))
    return McFormat::generic;
  if (j.contains("goal") && j.contains("sol1")) return McFormat::piqa;
  if (j.contains("answerKey")) return McFormat::arc;
  if (j.contains("endings") && j.contains("ctx_a")) return McFormat::hellaswag;
  if (j.contains("sentence") && j.contains("option1")) return McFormat::winogrande;
  if (j.contains("question") && j.contains("choices") && j.contains("answer"))
    return McFormat::mmlu;
  return std::nullopt;
}

bool blank(const std::string& line) {
  return line.find_first_not_of(" \t\r\n") == std::string::npos;
}

}  // namespace

std::string_view to_string(McFormat format) {
  for (const auto& [value, name] : kFormatNames)
    if (value == format) return name;
  return "unknown";
}

std::optional<McFormat> parse_mc_format(std::string_view name) {
  for (const auto& [value, known] : kFormatNames)
    if (known == name) return value;
  return std::nullopt;
}

std::string hellaswag_preprocess(std::string text) {
  text = strip(text);
  for (size_t at; (at = text.find(" [title]")) != std::string::npos;)
    text.replace(at, 8, ". ");
  text = std::regex_replace(text, std::regex("\\[.*?\\]"), "");
  for (size_t at; (at = text.find("  ")) != std::string::npos;)
    text.replace(at, 2, " ");
  return text;
}

std::optional<McFormat> detect_mc_format(std::string_view json_line) {
  try {
    return detect(parse_object(json_line));
  } catch (const BadLine&) {
    return std::nullopt;
  }
}

Result<McItem> parse_mc_line(std::string_view json_line, McFormat format, const std::string& file,
                             int line) {
  try {
    const json j = parse_object(json_line);
    if (format == McFormat::automatic) {
      auto found = detect(j);
      if (!found) throw BadLine{"fields match no known task format"};
      format = *found;
    }
    McItem item;
    switch (format) {
      case McFormat::generic:
        item = generic_item(j);
        break;
      case McFormat::piqa:
        item = piqa_item(j);
        break;
      case McFormat::arc:
        item = arc_item(j);
        break;
      case McFormat::hellaswag:
        item = hellaswag_item(j);
        break;
      case McFormat::winogrande:
        item = winogrande_item(j);
        break;
      case McFormat::mmlu:
        item = mmlu_item(mmlu_record(j), {});
        break;
      case McFormat::automatic:
        break;
    }
    item.line = line;
    return item;
  } catch (const BadLine& bad) {
    return make_error(bad.message, {file, line, ""});
  } catch (const std::exception& error) {  // e.g. a number out of range
    return make_error(error.what(), {file, line, ""});
  }
}

Result<McTask> load_mc_task(const std::filesystem::path& path, const McLoadOptions& options) {
  const std::string file = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("cannot open the task file", {file, 0, ""});
  McTask task;
  task.name = path.stem().string();
  task.format = options.format;
  std::vector<MmluRecord> mmlu;
  std::string text;
  int line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (blank(text)) continue;
    if (task.format == McFormat::automatic) {
      auto found = detect_mc_format(text);
      if (!found) {
        Error error = make_error(
            "cannot tell the task format from this line (expected the "
            "fields of generic, piqa, arc, hellaswag, winogrande or mmlu)",
            {file, line, ""});
        if (!options.skip_malformed) return error;
        task.skipped.push_back(std::move(error));
        continue;
      }
      task.format = *found;
    }
    if (task.format == McFormat::mmlu) {
      try {
        MmluRecord record = mmlu_record(parse_object(text));
        record.line = line;
        mmlu.push_back(std::move(record));
      } catch (const BadLine& bad) {
        Error error = make_error(bad.message, {file, line, ""});
        if (!options.skip_malformed) return error;
        task.skipped.push_back(std::move(error));
      }
      continue;
    }
    auto item = parse_mc_line(text, task.format, file, line);
    if (!item.ok()) {
      if (!options.skip_malformed) return item.error();
      task.skipped.push_back(item.error());
      continue;
    }
    task.items.push_back(std::move(*item));
    if (options.limit > 0 && static_cast<int64_t>(task.items.size()) >= options.limit) break;
  }
  if (task.format == McFormat::mmlu) {
    // Shots: records marked "split": "dev" when the file has them, else the other
    // questions of the same subject, in file order.
    std::map<std::string, std::vector<const MmluRecord*>> dev, all;
    for (const auto& r : mmlu) {
      (r.split == "dev" ? dev : all)[r.subject].push_back(&r);
    }
    for (const auto& r : mmlu) {
      if (r.split == "dev") continue;
      const auto& pool = dev.count(r.subject) ? dev[r.subject] : all[r.subject];
      std::vector<const MmluRecord*> shots;
      for (const auto* candidate : pool) {
        if (static_cast<int64_t>(shots.size()) >= options.mmlu_shots) break;
        if (candidate != &r) shots.push_back(candidate);
      }
      task.items.push_back(mmlu_item(r, shots));
      if (options.limit > 0 && static_cast<int64_t>(task.items.size()) >= options.limit) break;
    }
  }
  if (task.items.empty())
    return make_error(line == 0 ? "the task file is empty"
                                : "the task file holds no usable item (" +
                                      std::to_string(task.skipped.size()) + " malformed lines)",
                      {file, 0, ""});
  return task;
}

}  // namespace hl::eval
