#include "core/store/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <set>

namespace hl::store {
namespace {

bool looks_numeric(const std::string& cell) {
  if (cell.empty()) return false;
  char* end = nullptr;
  std::strtod(cell.c_str(), &end);
  return end == cell.c_str() + cell.size();
}

bool needs_quotes(const std::string& cell) {
  return cell.find_first_of(",\"\r\n") != std::string::npos ||
         (!cell.empty() && (cell.front() == ' ' || cell.back() == ' '));
}

std::string csv_cell(const std::string& cell) {
  if (!needs_quotes(cell)) return cell;
  std::string quoted = "\"";
  for (char c : cell) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

std::string missing(ReportFormat format) {
  return format == ReportFormat::csv ? "" : "-";
}

std::string run_label(const RunInfo& info) {
  return std::to_string(info.id) + " " + info.name;
}

std::string duration_of(const RunInfo& info, ReportFormat format) {
  if (!info.started_ms || !info.finished_ms) return missing(format);
  return format_duration(*info.finished_ms - *info.started_ms, format);
}

std::string status_text(const RunInfo& info) {
  std::string text(to_string(info.status));
  if (!info.status_message.empty()) text += " (" + info.status_message + ")";
  return text;
}

std::string uuid_text(const std::string& uuid, ReportFormat format) {
  return format == ReportFormat::csv ? uuid : uuid.substr(0, 8);
}

// A titled section of `runs show` / `runs compare` in table form.
void append_section(std::string& out, const std::string& title, const TextTable& table) {
  if (table.rows.empty()) return;
  out += "\n" + title + "\n" + render_aligned(table);
}

}  // namespace

std::string render_aligned(const TextTable& table) {
  const size_t columns = table.header.size();
  std::vector<size_t> widths(columns, 0);
  std::vector<bool> numeric = table.right_aligned;
  const bool guess = numeric.empty();
  numeric.resize(columns, guess);
  for (size_t c = 0; c < columns; ++c)
    widths[c] = table.header[c].size();
  for (const auto& row : table.rows) {
    for (size_t c = 0; c < columns && c < row.size(); ++c) {
      widths[c] = std::max(widths[c], row[c].size());
      if (guess && row[c] != "-" && !row[c].empty() && !looks_numeric(row[c])) numeric[c] = false;
    }
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string text;
    for (size_t c = 0; c < columns; ++c) {
      const std::string cell = c < cells.size() ? cells[c] : "";
      const std::string pad(widths[c] - std::min(widths[c], cell.size()), ' ');
      if (c) text += "  ";
      text += numeric[c] ? pad + cell : cell + pad;
    }
    while (!text.empty() && text.back() == ' ')
      text.pop_back();
    return text + "\n";
  };
  std::string out = line(table.header);
  std::string rule;
  for (size_t c = 0; c < columns; ++c)
    rule += (c ? "  " : "") + std::string(widths[c], '-');
  out += rule + "\n";
  for (const auto& row : table.rows)
    out += line(row);
  return out;
}

std::string render_csv(const TextTable& table) {
  auto line = [](const std::vector<std::string>& cells) {
    std::string text;
    for (size_t c = 0; c < cells.size(); ++c)
      text += (c ? "," : "") + csv_cell(cells[c]);
    return text + "\n";
  };
  std::string out = line(table.header);
  for (const auto& row : table.rows)
    out += line(row);
  return out;
}

std::string render(const TextTable& table, ReportFormat format) {
  return format == ReportFormat::csv ? render_csv(table) : render_aligned(table);
}

std::string format_number(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char text[32];
  std::snprintf(text, sizeof text, "%.6g", value);
  return text;
}

std::string format_time(int64_t unix_ms, ReportFormat format) {
  const std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
  std::tm parts{};
  char text[32];
  if (format == ReportFormat::csv) {
    gmtime_r(&seconds, &parts);
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &parts);
  } else {
    localtime_r(&seconds, &parts);
    std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S", &parts);
  }
  return text;
}

std::string format_duration(int64_t milliseconds, ReportFormat format) {
  char text[32];
  if (format == ReportFormat::csv) {
    std::snprintf(text, sizeof text, "%.3f", static_cast<double>(milliseconds) / 1000.0);
    return text;
  }
  const int64_t seconds = milliseconds / 1000;
  if (seconds >= 3600)
    std::snprintf(text, sizeof text, "%lldh%02lldm", static_cast<long long>(seconds / 3600),
                  static_cast<long long>(seconds % 3600 / 60));
  else if (seconds >= 60)
    std::snprintf(text, sizeof text, "%lldm%02llds", static_cast<long long>(seconds / 60),
                  static_cast<long long>(seconds % 60));
  else
    std::snprintf(text, sizeof text, "%.1fs", static_cast<double>(milliseconds) / 1000.0);
  return text;
}

TextTable runs_table(const std::vector<RunListEntry>& runs, ReportFormat format) {
  std::set<std::string> summary_keys;
  for (const auto& run : runs)
    for (const auto& [key, value] : run.summary)
      summary_keys.insert(key);
  TextTable table;
  table.header = {"id", "uuid", "name", "status", "method", "steps", "created", "duration"};
  table.header.insert(table.header.end(), summary_keys.begin(), summary_keys.end());
  table.right_aligned = {true, false, false, false, false, true, false, false};
  table.right_aligned.resize(table.header.size(), true);
  for (const auto& run : runs) {
    const RunInfo& info = run.info;
    std::vector<std::string> row = {
        std::to_string(info.id),
        uuid_text(info.uuid, format),
        info.name,
        std::string(to_string(info.status)),
        info.method.empty() ? missing(format) : info.method,
        info.last_step ? std::to_string(*info.last_step) : missing(format),
        format_time(info.created_ms, format),
        duration_of(info, format)};
    for (const std::string& key : summary_keys) {
      auto it = run.summary.find(key);
      row.push_back(it == run.summary.end() ? missing(format) : format_number(it->second));
    }
    table.rows.push_back(std::move(row));
  }
  return table;
}

std::string format_run_details(const RunDetails& details, ReportFormat format) {
  const RunInfo& info = details.info;
  const std::vector<std::pair<std::string, std::string>> fields = {
      {"id", std::to_string(info.id)},
      {"uuid", info.uuid},
      {"name", info.name},
      {"status", status_text(info)},
      {"method", info.method},
      {"base model", info.base_model},
      {"device", info.device},
      {"host", info.host},
      {"parent run", info.parent_run ? std::to_string(*info.parent_run) : ""},
      {"created", format_time(info.created_ms, format)},
      {"started", info.started_ms ? format_time(*info.started_ms, format) : ""},
      {"finished", info.finished_ms ? format_time(*info.finished_ms, format) : ""},
      {"duration", info.started_ms && info.finished_ms ? duration_of(info, format) : ""},
      {"steps", info.last_step ? std::to_string(*info.last_step) : ""},
  };

  if (format == ReportFormat::csv) {
    TextTable table;
    table.header = {"section", "key", "value", "step", "n"};
    for (const auto& [key, value] : fields)
      table.rows.push_back({"run", key, value, "", ""});
    for (const auto& [key, value] : details.params)
      table.rows.push_back({"param", key, value, "", ""});
    for (const auto& [key, value] : details.summary)
      table.rows.push_back({"summary", key, format_number(value), "", ""});
    for (const auto& last : details.last_scalars)
      table.rows.push_back(
          {"metric", last.key, format_number(last.value), std::to_string(last.step), ""});
    for (const auto& eval : details.evals)
      table.rows.push_back({"eval", eval.task + "/" + eval.mode + "/" + eval.metric,
                            format_number(eval.value), "", std::to_string(eval.n)});
    for (const auto& artifact : details.artifacts)
      table.rows.push_back({"artifact", artifact.kind, artifact.path, "", ""});
    return render_csv(table);
  }

  std::string out = "run " + run_label(info) + "\n";
  size_t width = 0;
  for (const auto& field : fields)
    width = std::max(width, field.first.size());
  for (const auto& [key, value] : fields)
    if (!value.empty() && key != "id" && key != "name")
      out += "  " + key + std::string(width - key.size() + 2, ' ') + value + "\n";

  TextTable params{{"param", "value"}, {}};
  for (const auto& [key, value] : details.params)
    params.rows.push_back({key, value});
  append_section(out, "params", params);
  TextTable summary{{"summary", "value"}, {}};
  for (const auto& [key, value] : details.summary)
    summary.rows.push_back({key, format_number(value)});
  append_section(out, "summary", summary);
  TextTable metrics{{"metric", "step", "last value"}, {}};
  for (const auto& last : details.last_scalars)
    metrics.rows.push_back({last.key, std::to_string(last.step), format_number(last.value)});
  append_section(out, "last metrics", metrics);
  TextTable evals{{"task", "mode", "metric", "value", "n"}, {}};
  for (const auto& eval : details.evals)
    evals.rows.push_back(
        {eval.task, eval.mode, eval.metric, format_number(eval.value), std::to_string(eval.n)});
  append_section(out, "evals", evals);
  TextTable artifacts{{"artifact", "path"}, {}};
  for (const auto& artifact : details.artifacts)
    artifacts.rows.push_back({artifact.kind, artifact.path});
  append_section(out, "artifacts", artifacts);
  return out;
}

std::string format_comparison(const std::vector<RunDetails>& runs, ReportFormat format) {
  std::vector<std::map<std::string, std::string>> all_params;
  for (const auto& run : runs)
    all_params.push_back(run.params);
  const ParamComparison params = compare_params(all_params);

  // Final metrics: summary values, then the last value of every scalar series.
  std::set<std::string> summary_keys, metric_keys;
  for (const auto& run : runs) {
    for (const auto& [key, value] : run.summary)
      summary_keys.insert(key);
    for (const auto& last : run.last_scalars)
      metric_keys.insert(last.key);
  }
  auto summary_of = [&](const RunDetails& run, const std::string& key) {
    auto it = run.summary.find(key);
    return it == run.summary.end() ? missing(format) : format_number(it->second);
  };
  auto last_of = [&](const RunDetails& run, const std::string& key) {
    for (const auto& last : run.last_scalars)
      if (last.key == key) return format_number(last.value);
    return missing(format);
  };

  if (format == ReportFormat::csv) {
    TextTable table;
    table.header = {"section", "key", "differs"};
    for (const auto& run : runs)
      table.header.push_back(run_label(run.info));
    for (const auto& row : params.rows) {
      std::vector<std::string> cells = {"param", row.key, row.differs ? "yes" : "no"};
      for (const auto& value : row.values)
        cells.push_back(value.value_or(""));
      table.rows.push_back(std::move(cells));
    }
    for (const std::string& key : summary_keys) {
      std::vector<std::string> cells = {"summary", key, ""};
      for (const auto& run : runs)
        cells.push_back(summary_of(run, key));
      table.rows.push_back(std::move(cells));
    }
    for (const std::string& key : metric_keys) {
      std::vector<std::string> cells = {"metric", key, ""};
      for (const auto& run : runs)
        cells.push_back(last_of(run, key));
      table.rows.push_back(std::move(cells));
    }
    return render_csv(table);
  }

  std::string out = "comparing runs";
  for (const auto& run : runs)
    out += "  [" + run_label(run.info) + "]";
  out += "\n";
  TextTable param_table;
  param_table.header = {"", "param"};
  for (const auto& run : runs)
    param_table.header.push_back(run_label(run.info));
  for (const auto& row : params.rows) {
    std::vector<std::string> cells = {row.differs ? "*" : "", row.key};
    for (const auto& value : row.values)
      cells.push_back(value.value_or("-"));
    param_table.rows.push_back(std::move(cells));
  }
  append_section(out,
                 "params (* = differs; " + std::to_string(params.differing_keys().size()) + " of " +
                     std::to_string(params.rows.size()) + " differ)",
                 param_table);
  TextTable metric_table;
  metric_table.header = {"final metric"};
  for (const auto& run : runs)
    metric_table.header.push_back(run_label(run.info));
  for (const std::string& key : summary_keys) {
    std::vector<std::string> cells = {key};
    for (const auto& run : runs)
      cells.push_back(summary_of(run, key));
    metric_table.rows.push_back(std::move(cells));
  }
  for (const std::string& key : metric_keys) {
    std::vector<std::string> cells = {"last " + key};
    for (const auto& run : runs)
      cells.push_back(last_of(run, key));
    metric_table.rows.push_back(std::move(cells));
  }
  append_section(out, "final metrics", metric_table);
  return out;
}

}  // namespace hl::store
