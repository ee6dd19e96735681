// Report formatting for `hybridlab-cli runs`: exact table and CSV output.
#include "core/store/report.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <ctime>

namespace hl::store {
namespace {

class Report : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tz = std::getenv("TZ");
    saved_tz_ = tz ? std::optional<std::string>(tz) : std::nullopt;
    setenv("TZ", "UTC", 1);  // local times in tables become predictable
    tzset();
  }
  void TearDown() override {
    if (saved_tz_)
      setenv("TZ", saved_tz_->c_str(), 1);
    else
      unsetenv("TZ");
    tzset();
  }
  std::optional<std::string> saved_tz_;
};

constexpr int64_t kJan2_2025 = 1735776000000;  // 2025-01-02T00:00:00Z

RunListEntry entry(int64_t id, std::string name, RunStatus status,
                   std::map<std::string, double> summary) {
  RunListEntry run;
  run.info.id = id;
  run.info.uuid = "0123456" + std::to_string(id) + "-aaaa-4bbb-8ccc-dddddddddddd";
  run.info.name = std::move(name);
  run.info.status = status;
  run.info.method = "lolcats";
  run.info.created_ms = kJan2_2025 + id * 60'000;
  run.info.started_ms = run.info.created_ms;
  if (status == RunStatus::completed) run.info.finished_ms = run.info.created_ms + 3'725'000;
  run.info.last_step = id * 100;
  run.summary = std::move(summary);
  return run;
}

TEST_F(Report, AlignedTableRightAlignsNumbers) {
  TextTable table{{"name", "value"}, {{"loss", "1.5"}, {"perplexity", "12.25"}, {"x", "-"}}};
  EXPECT_EQ(render_aligned(table),
            "name        value\n"
            "----------  -----\n"
            "loss          1.5\n"
            "perplexity  12.25\n"
            "x               -\n");
}

TEST_F(Report, CsvQuotesOnlyWhatNeedsIt) {
  TextTable table{{"a", "b"},
                  {{"plain", "with,comma"}, {"say \"hi\"", "two\nlines"}, {" pad", ""}}};
  EXPECT_EQ(render_csv(table),
            "a,b\n"
            "plain,\"with,comma\"\n"
            "\"say \"\"hi\"\"\",\"two\nlines\"\n"
            "\" pad\",\n");
}

TEST_F(Report, NumbersTimesAndDurations) {
  EXPECT_EQ(format_number(0.1234567), "0.123457");
  EXPECT_EQ(format_number(1e-9), "1e-09");
  EXPECT_EQ(format_number(NAN), "nan");
  EXPECT_EQ(format_number(-INFINITY), "-inf");
  EXPECT_EQ(format_time(kJan2_2025 + 3'723'000, ReportFormat::table), "2025-01-02 01:02:03");
  EXPECT_EQ(format_time(kJan2_2025 + 3'723'000, ReportFormat::csv), "2025-01-02T01:02:03Z");
  EXPECT_EQ(format_duration(12'345, ReportFormat::table), "12.3s");
  EXPECT_EQ(format_duration(185'000, ReportFormat::table), "3m05s");
  EXPECT_EQ(format_duration(3'725'000, ReportFormat::table), "1h02m");
  EXPECT_EQ(format_duration(3'725'000, ReportFormat::csv), "3725.000");
}

TEST_F(Report, RunsListAsTableAndCsv) {
  std::vector<RunListEntry> runs = {
      entry(1, "lolcats", RunStatus::completed, {{"final_loss", 2.5}, {"ppl", 12.25}}),
      entry(2, "lolcats+ssd", RunStatus::running, {{"final_loss", 2.25}})};
  EXPECT_EQ(render(runs_table(runs, ReportFormat::table), ReportFormat::table),
            "id  uuid      name         status     method   steps  created              "
            "duration  final_loss    ppl\n"
            "--  --------  -----------  ---------  -------  -----  -------------------  "
            "--------  ----------  -----\n"
            " 1  01234561  lolcats      completed  lolcats    100  2025-01-02 00:01:00  "
            "1h02m            2.5  12.25\n"
            " 2  01234562  lolcats+ssd  running    lolcats    200  2025-01-02 00:02:00  "
            "-               2.25      -\n");
  EXPECT_EQ(render(runs_table(runs, ReportFormat::csv), ReportFormat::csv),
            "id,uuid,name,status,method,steps,created,duration,final_loss,ppl\n"
            "1,01234561-aaaa-4bbb-8ccc-dddddddddddd,lolcats,completed,lolcats,100,"
            "2025-01-02T00:01:00Z,3725.000,2.5,12.25\n"
            "2,01234562-aaaa-4bbb-8ccc-dddddddddddd,lolcats+ssd,running,lolcats,200,"
            "2025-01-02T00:02:00Z,,2.25,\n");
}

RunDetails details_of(int64_t id, std::string name, std::map<std::string, std::string> params) {
  RunDetails details;
  details.info = entry(id, std::move(name), RunStatus::completed, {}).info;
  details.info.device = "cpu";
  details.params = std::move(params);
  details.summary = {{"final_loss", 2.0 + id}};
  details.last_scalars = {{"train/loss", 400, 1.5 * id}};
  details.evals = {{id, "ppl", "hybrid", "ppl", 10.0 * id, 128, 0}};
  details.artifacts = {{id, "checkpoint", "ckpt/" + std::to_string(id), "{}", 0}};
  return details;
}

TEST_F(Report, RunDetails) {
  RunDetails details = details_of(1, "lolcats", {{"attention.window", "64"}});
  EXPECT_EQ(format_run_details(details, ReportFormat::table),
            "run 1 lolcats\n"
            "  uuid        01234561-aaaa-4bbb-8ccc-dddddddddddd\n"
            "  status      completed\n"
            "  method      lolcats\n"
            "  device      cpu\n"
            "  created     2025-01-02 00:01:00\n"
            "  started     2025-01-02 00:01:00\n"
            "  finished    2025-01-02 01:03:05\n"
            "  duration    1h02m\n"
            "  steps       100\n"
            "\nparams\n"
            "param             value\n"
            "----------------  -----\n"
            "attention.window     64\n"
            "\nsummary\n"
            "summary     value\n"
            "----------  -----\n"
            "final_loss      3\n"
            "\nlast metrics\n"
            "metric      step  last value\n"
            "----------  ----  ----------\n"
            "train/loss   400         1.5\n"
            "\nevals\n"
            "task  mode    metric  value    n\n"
            "----  ------  ------  -----  ---\n"
            "ppl   hybrid  ppl        10  128\n"
            "\nartifacts\n"
            "artifact    path\n"
            "----------  ------\n"
            "checkpoint  ckpt/1\n");
  const std::string csv = format_run_details(details, ReportFormat::csv);
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "section,key,value,step,n");
  EXPECT_NE(csv.find("\nparam,attention.window,64,,\n"), std::string::npos);
  EXPECT_NE(csv.find("\nmetric,train/loss,1.5,400,\n"), std::string::npos);
  EXPECT_NE(csv.find("\neval,ppl/hybrid/ppl,10,,128\n"), std::string::npos);
  EXPECT_NE(csv.find("\nrun,created,2025-01-02T00:01:00Z,,\n"), std::string::npos);
}

TEST_F(Report, ComparisonMarksDifferences) {
  std::vector<RunDetails> runs = {
      details_of(1, "a", {{"attention.window", "64"}, {"seed", "0"}}),
      details_of(2, "b", {{"attention.window", "64"}, {"seed", "1"}, {"ssd", "on"}})};
  EXPECT_EQ(format_comparison(runs, ReportFormat::table),
            "comparing runs  [1 a]  [2 b]\n"
            "\nparams (* = differs; 2 of 3 differ)\n"
            "   param             1 a  2 b\n"
            "-  ----------------  ---  ---\n"
            "   attention.window   64  64\n"
            "*  seed                0  1\n"
            "*  ssd                 -  on\n"
            "\nfinal metrics\n"
            "final metric     1 a  2 b\n"
            "---------------  ---  ---\n"
            "final_loss         3    4\n"
            "last train/loss  1.5    3\n");
  EXPECT_EQ(format_comparison(runs, ReportFormat::csv),
            "section,key,differs,1 a,2 b\n"
            "param,attention.window,no,64,64\n"
            "param,seed,yes,0,1\n"
            "param,ssd,yes,,on\n"
            "summary,final_loss,,3,4\n"
            "metric,train/loss,,1.5,3\n");
}

}  // namespace
}  // namespace hl::store
