// `hybridlab-cli runs list|show|compare`: reads the run store; all formatting lives in
// core/store/report.hpp.
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "app/cli/arg_parser.hpp"
#include "app/cli/commands.hpp"
#include "core/store/report.hpp"
#include "core/store/run_reader.hpp"
#include "core/store/schema.hpp"

namespace hl::cli {
namespace {

int bad_input(const std::string& message) {
  std::cerr << "error: runs: " << message << "\n";
  return kExitBadInput;
}

int internal_error(const Error& error) {
  std::cerr << "error: runs: " << error.to_string() << "\n";
  return kExitInternal;
}

}  // namespace

int cmd_runs(const Args& args) {
  ArgParser parser("runs", "List, show and compare recorded runs.");
  parser.positional("ACTION", "list | show RUN | compare RUN RUN...")
      .positional("RUN", "an id, a uuid prefix, or a name (its newest run)", false, true)
      .option("--db", "DB", "runs database", store::default_db_path())
      .flag("--csv", "print CSV instead of an aligned table");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);

  const std::string action = parser.get("ACTION");
  const std::vector<std::string> refs = parser.get_all("RUN");
  if (action == "list" && !refs.empty()) return bad_input("'list' takes no RUN");
  if (action == "show" && refs.size() != 1) return bad_input("'show' takes exactly one RUN");
  if (action == "compare" && refs.size() < 2) return bad_input("'compare' needs two or more RUNs");
  if (action != "list" && action != "show" && action != "compare")
    return bad_input("unknown action '" + action + "' (list, show or compare)");

  const std::string db_path = parser.get("--db");
  std::error_code ec;
  if (!std::filesystem::exists(db_path, ec))
    return bad_input("no run database at " + db_path + " (give --db, or record a run first)");
  // Open for writing only where allowed, so that an older schema gets migrated.
  const auto access =
      ::access(db_path.c_str(), W_OK) == 0 ? store::Access::read_write : store::Access::read_only;
  Result<store::RunReader> reader = store::RunReader::open(db_path, access);
  if (!reader.ok()) return bad_input(reader.error().to_string());
  const auto format =
      parser.flag_set("--csv") ? store::ReportFormat::csv : store::ReportFormat::table;

  if (action == "list") {
    Result<std::vector<store::RunListEntry>> runs = reader->list_runs();
    if (!runs.ok()) return internal_error(runs.error());
    if (runs->empty() && format == store::ReportFormat::table)
      std::cout << "no runs recorded in " << db_path << "\n";
    else
      std::cout << store::render(store::runs_table(*runs, format), format);
    return kExitOk;
  }

  std::vector<store::RunDetails> details;
  for (const std::string& ref : refs) {
    Result<int64_t> id = reader->find_run(ref);
    if (!id.ok()) return bad_input(id.error().to_string());
    Result<store::RunDetails> one = reader->details(*id);
    if (!one.ok()) return internal_error(one.error());
    details.push_back(std::move(one).value());
  }
  if (action == "show")
    std::cout << store::format_run_details(details.front(), format);
  else
    std::cout << store::format_comparison(details, format);
  return kExitOk;
}

}  // namespace hl::cli
