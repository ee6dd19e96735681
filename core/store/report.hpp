// Text reports of runs for `hybridlab-cli runs`: aligned tables for people, CSV for tools.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/store/run_types.hpp"

namespace hl::store {

/// How a report is written.
enum class ReportFormat {
  table,  ///< aligned columns, local times, short uuids
  csv,    ///< RFC 4180 CSV, UTC ISO-8601 times, full uuids, durations in seconds
};

/// Cells under a header; numeric columns are right-aligned in table form.
struct TextTable {
  std::vector<std::string> header = {};
  std::vector<std::vector<std::string>> rows = {};
  /// Per column: right-align it. Empty = right-align columns whose cells all look numeric.
  std::vector<bool> right_aligned = {};
};

/// Aligned columns separated by two spaces, a dashed rule under the header.
std::string render_aligned(const TextTable& table);
/// CSV: cells with commas, quotes, line breaks or edge spaces are quoted.
std::string render_csv(const TextTable& table);
std::string render(const TextTable& table, ReportFormat format);

/// %.6g; NaN as "nan", infinities as "inf"/"-inf".
std::string format_number(double value);
/// Local "YYYY-MM-DD HH:MM:SS" for tables, UTC "YYYY-MM-DDTHH:MM:SSZ" for CSV.
std::string format_time(int64_t unix_ms, ReportFormat format);
/// "1h02m", "3m05s", "12.3s" for tables; seconds for CSV.
std::string format_duration(int64_t milliseconds, ReportFormat format);

/// `runs list`: one row per run with its summary values as extra columns.
TextTable runs_table(const std::vector<RunListEntry>& runs, ReportFormat format);
/// `runs show`: run fields, params, summary, latest metrics, evals, artifacts.
std::string format_run_details(const RunDetails& details, ReportFormat format);
/// `runs compare`: params side by side (differences marked), then final metrics.
std::string format_comparison(const std::vector<RunDetails>& runs, ReportFormat format);

}  // namespace hl::store
