#include "core/run/progress.hpp"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

namespace hl {

Result<ProgressMode> parse_progress_mode(const std::string& text) {
  if (text == "json") return ProgressMode::json;
  if (text == "bar") return ProgressMode::bar;
  if (text == "none") return ProgressMode::none;
  return make_error("--progress must be json, bar or none, got '" + text + "'");
}

ProgressReporter::ProgressReporter(ProgressMode mode, std::ostream& out)
    : mode_(mode), out_(out), phase_start_(std::chrono::steady_clock::now()) {}

double ProgressReporter::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - phase_start_).count();
}

void ProgressReporter::run_started(int64_t run_id, const std::string& uuid,
                                   const std::string& db_path) {
  if (mode_ == ProgressMode::json) {
    out_ << nlohmann::json{{"type", "run"}, {"run_id", run_id}, {"uuid", uuid}, {"db", db_path}}
                .dump()
         << std::endl;
  } else if (mode_ == ProgressMode::bar) {
    out_ << "run " << run_id << " (" << uuid << ") -> " << db_path << "\n";
  }
}

void ProgressReporter::begin_phase(const std::string& name, int index, int count,
                                   int64_t total_steps) {
  phase_ = name;
  phase_index_ = index;
  phase_count_ = count;
  total_ = total_steps;
  phase_start_ = std::chrono::steady_clock::now();
  if (mode_ == ProgressMode::bar) {
    if (bar_open_) out_ << "\n";
    bar_open_ = false;
    out_ << "[" << index + 1 << "/" << count << "] " << name << " (" << total_steps
         << " steps)\n";
  }
}

void ProgressReporter::step(int64_t step, const std::map<std::string, double>& metrics,
                            double tokens_per_s) {
  double elapsed = elapsed_s();
  double eta = step > 0 && total_ > step ? elapsed / double(step) * double(total_ - step) : 0.0;
  if (mode_ == ProgressMode::json) {
    nlohmann::json line{{"type", "progress"}, {"phase", phase_},     {"phase_index", phase_index_},
                        {"phases", phase_count_}, {"step", step},    {"total", total_},
                        {"elapsed_s", elapsed},   {"eta_s", eta},    {"tokens_per_s", tokens_per_s}};
    nlohmann::json values = nlohmann::json::object();
    for (const auto& [key, value] : metrics)
      if (std::isfinite(value)) values[key] = value;
    line["metrics"] = values;
    out_ << line.dump() << std::endl;
  } else if (mode_ == ProgressMode::bar) {
    constexpr int kWidth = 28;
    int filled = total_ > 0 ? int(kWidth * std::min<int64_t>(step, total_) / total_) : 0;
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    char text[256];
    std::snprintf(text, sizeof text, "\r  [%s] %lld/%lld  %.0f tok/s  ETA %02d:%02d", bar.c_str(),
                  static_cast<long long>(step), static_cast<long long>(total_), tokens_per_s,
                  int(eta) / 60, int(eta) % 60);
    out_ << text;
    auto loss = metrics.find("loss");
    if (loss != metrics.end()) {
      std::snprintf(text, sizeof text, "  loss %.4g", loss->second);
      out_ << text;
    }
    out_ << "   " << std::flush;
    bar_open_ = true;
  }
}

void ProgressReporter::event(const std::string& level, const std::string& kind,
                             const std::string& message) {
  if (mode_ == ProgressMode::json) {
    out_ << nlohmann::json{{"type", "event"}, {"level", level}, {"kind", kind}, {"message", message}}
                .dump()
         << std::endl;
  } else if (mode_ == ProgressMode::bar) {
    if (bar_open_) out_ << "\n";
    bar_open_ = false;
    out_ << "  " << kind << ": " << message << "\n";
  }
}

void ProgressReporter::finished(const std::string& status, const std::string& message) {
  if (mode_ == ProgressMode::json) {
    out_ << nlohmann::json{{"type", "status"}, {"status", status}, {"message", message}}.dump()
         << std::endl;
  } else if (mode_ == ProgressMode::bar) {
    if (bar_open_) out_ << "\n";
    bar_open_ = false;
    out_ << status << (message.empty() ? "" : ": " + message) << "\n";
  }
}

}  // namespace hl
