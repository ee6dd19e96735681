#include "core/store/run_types.hpp"

#include <set>

namespace hl::store {

std::string_view to_string(RunStatus status) {
  switch (status) {
    case RunStatus::pending:
      return "pending";
    case RunStatus::running:
      return "running";
    case RunStatus::completed:
      return "completed";
    case RunStatus::failed:
      return "failed";
    case RunStatus::cancelled:
      return "cancelled";
  }
  return "unknown";
}

std::optional<RunStatus> parse_run_status(std::string_view text) {
  for (RunStatus status : {RunStatus::pending, RunStatus::running, RunStatus::completed,
                           RunStatus::failed, RunStatus::cancelled})
    if (to_string(status) == text) return status;
  return std::nullopt;
}

bool is_terminal(RunStatus status) {
  return status == RunStatus::completed || status == RunStatus::failed ||
         status == RunStatus::cancelled;
}

std::vector<std::string> ParamComparison::differing_keys() const {
  std::vector<std::string> keys;
  for (const Row& row : rows)
    if (row.differs) keys.push_back(row.key);
  return keys;
}

ParamComparison compare_params(const std::vector<std::map<std::string, std::string>>& runs) {
  std::set<std::string> keys;
  for (const auto& params : runs)
    for (const auto& [key, value] : params)
      keys.insert(key);
  ParamComparison comparison;
  for (const std::string& key : keys) {
    ParamComparison::Row row{key, {}, false};
    for (const auto& params : runs) {
      auto it = params.find(key);
      row.values.push_back(it == params.end() ? std::nullopt
                                              : std::optional<std::string>(it->second));
    }
    for (const auto& value : row.values)
      if (value != row.values.front()) row.differs = true;
    comparison.rows.push_back(std::move(row));
  }
  return comparison;
}

}  // namespace hl::store
