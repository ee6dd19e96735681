// The main window wired to a real store: selecting runs drives every view; hiding a run
// removes it from the curves only.
#include "ui/main_window.hpp"

#include <qcustomplot.h>

#include <QFile>
#include <QTableView>
#include <QTableWidget>

#include "core/config/experiment_file.hpp"
#include "test_paths.hpp"
#include "ui/compare_view.hpp"
#include "ui/eval_view.hpp"
#include "ui/launcher.hpp"
#include "ui/metric_plot.hpp"
#include "ui/run_store.hpp"
#include "ui/run_table_view.hpp"
#include "ui/runs_model.hpp"
#include "ui/usage_heatmap.hpp"
#include "ui_test_util.hpp"

namespace hl::ui {
namespace {

using test::TempStore;
using test::wait_until;

TEST(MainWindowTest, SelectionDrivesTheViews) {
  TempStore temp;
  std::vector<int64_t> ids;
  for (const char* name : {"lolcats", "lolcats+ssd"}) {
    store::RunWriter writer = temp.create(name);
    HL_ASSERT_OK(writer.set_params(
        {{"attention.window", "16"},
         {"ssd", std::string(name).find("ssd") != std::string::npos ? "on" : "off"}}));
    for (int step = 0; step < 30; ++step)
      HL_ASSERT_OK(writer.log_scalar("loss", step, 5.0 / (step + 1)));
    HL_ASSERT_OK(writer.log_eval("ppl", "hybrid", "ppl", 12.5, 100));
    HL_ASSERT_OK(writer.log_eval("passkey", "hybrid", "acc", 0.75, 40));
    HL_ASSERT_OK(writer.log_eval("passkey", "hybrid", "acc@16", 1.0, 10));
    HL_ASSERT_OK(writer.log_eval("passkey", "hybrid", "acc@64", 0.5, 10));
    HL_ASSERT_OK(writer.log_eval("passkey", "window_only", "acc", 0.25, 40));
    for (int layer = 0; layer < 3; ++layer) {
      HL_ASSERT_OK(writer.log_eval("ablation", "layer" + std::to_string(layer), "loss_delta",
                                   0.1 * (layer + 1), 1));
      HL_ASSERT_OK(writer.log_layer_scalar("ablation/loss_delta", 0, layer, -1, 0.1 * (layer + 1)));
    }
    HL_ASSERT_OK(writer.set_status(store::RunStatus::completed));
    ids.push_back(writer.run_id());
    HL_ASSERT_OK(writer.close());
  }
  MainWindow::Options options;
  options.db_path = temp.qpath();
  options.restore_state = false;
  options.experiments_dir = QDir(QString::fromUtf8(hl::test::kSourceDir)).filePath("experiments");
  MainWindow window(options);
  window.show();
  ASSERT_TRUE(wait_until([&] { return window.runs_model()->rowCount() == 2; }));

  window.run_table()->select_runs({ids[0], ids[1]});
  EXPECT_EQ(window.curves()->plot()->runs(), (QList<qint64>{ids[0], ids[1]}));
  ASSERT_TRUE(wait_until([&] { return window.curves()->plot()->drawn_points(ids[1]) == 30; }));

  window.runs_model()->set_visible(ids[0], false);
  EXPECT_EQ(window.curves()->plot()->runs(), (QList<qint64>{ids[1]}));
  EXPECT_EQ(window.run_table()->selected_runs().size(), 2);

  // Table 1: rows run x mode, columns tasks.
  ASSERT_TRUE(wait_until([&] { return window.evals()->table()->rowCount() == 4; }));
  QTableWidget* table = window.evals()->table();
  EXPECT_EQ(table->horizontalHeaderItem(2)->text(), "ppl");
  EXPECT_EQ(table->horizontalHeaderItem(3)->text(), "passkey");
  EXPECT_EQ(table->item(0, 1)->text(), "hybrid");
  EXPECT_EQ(table->item(0, 2)->text(), "12.5");
  EXPECT_EQ(table->item(1, 1)->text(), "window_only");
  EXPECT_EQ(table->item(1, 3)->text(), "0.25");
  // Accuracy by distance: passkey, hybrid, one graph per run.
  EXPECT_EQ(window.evals()->distance_plot()->graphCount(), 2);
  // Ablation rows are bars per layer, not a Table 1 column.
  EXPECT_EQ(table->columnCount(), 5);  // run, mode, ppl, passkey, % of base
  ASSERT_EQ(window.evals()->ablation_plot()->plottableCount(), 2);
  auto* bars = qobject_cast<QCPBars*>(window.evals()->ablation_plot()->plottable(0));
  ASSERT_NE(bars, nullptr);
  ASSERT_EQ(bars->data()->size(), 3);
  EXPECT_DOUBLE_EQ(bars->data()->at(2)->value, 0.3);

  // Compare: only the differing parameter is listed.
  ASSERT_TRUE(wait_until([&] { return window.compare()->table()->rowCount() == 1; }));
  EXPECT_EQ(window.compare()->table()->item(0, 0)->text(), "ssd");
  window.compare()->set_differences_only(false);
  EXPECT_EQ(window.compare()->table()->rowCount(), 2);
}

TEST(MainWindowTest, ImportsRunsFromAnotherDatabase) {
  TempStore local, server;
  {
    store::RunWriter writer = local.create("local run");
    HL_ASSERT_OK(writer.close());
  }
  std::string imported_uuid;
  {
    store::RunWriter writer = server.create("from the GPU server");
    HL_ASSERT_OK(writer.log_scalar("loss", 0, 1.0));
    imported_uuid = writer.uuid();
    HL_ASSERT_OK(writer.close());
  }
  MainWindow::Options options;
  options.db_path = local.qpath();
  options.restore_state = false;
  MainWindow window(options);
  ASSERT_TRUE(wait_until([&] { return window.runs_model()->rowCount() == 1; }));
  window.import_database(server.qpath());
  ASSERT_TRUE(wait_until([&] { return window.runs_model()->rowCount() == 2; }));
  const RunRow& row = window.runs_model()->row_data(1);
  EXPECT_EQ(row.entry.info.name, "from the GPU server");
  EXPECT_EQ(row.entry.info.uuid, imported_uuid);
  EXPECT_EQ(row.entry.info.last_step, 0);
}

TEST(MainWindowTest, DemoRunsBothConversionsAtOnceAndShowsTheirUsage) {
  TempStore temp;
  // The runs the two demo jobs announce, already in the store as the real CLI would have
  // created them.
  std::vector<int64_t> ids;
  for (const char* name : {"demo", "demo-ssd"}) {
    store::RunWriter writer = temp.create(name);
    HL_ASSERT_OK(writer.log_layer_scalar("usage/linear_mass", 0, 0, -1, 0.5));
    ids.push_back(writer.run_id());
    HL_ASSERT_OK(writer.close());
  }
  // The demo presets, pointed at a base model that does not exist yet.
  const QString experiments = temp.file("experiments");
  ASSERT_TRUE(QDir().mkpath(experiments));
  for (const char* name : {"demo.toml", "demo-ssd.toml"}) {
    ExperimentParse parsed = load_experiment_file(QDir(QString::fromUtf8(hl::test::kSourceDir))
                                                      .filePath("experiments/" + QString(name))
                                                      .toStdString());
    ASSERT_TRUE(parsed.ok());
    parsed.spec->model.base = temp.file("tiny-base").toStdString();
    QFile file(QDir(experiments).filePath(name));
    ASSERT_TRUE(file.open(QIODevice::WriteOnly));
    file.write(QByteArray::fromStdString(to_toml(*parsed.spec)));
  }
  // hybridlab-cli at the process boundary: "pretrain" succeeds, each "run" announces its
  // run, reports its thread setting and stays up a while.
  const QString cli = temp.file("fake-cli");
  {
    QFile file(cli);
    ASSERT_TRUE(file.open(QIODevice::WriteOnly));
    file.write(QStringLiteral(R"sh(#!/bin/sh
dir="$(dirname "$0")"
echo "$1 $(basename "$2") ${OMP_NUM_THREADS:-unset}" >> "$dir/calls.txt"
case "$2" in
  */demo.toml) echo '{"type":"run","run_id":%1,"uuid":"a","db":"d"}' ;;
  */demo-ssd.toml) echo '{"type":"run","run_id":%2,"uuid":"b","db":"d"}' ;;
esac
sleep 0.5
exit 0
)sh")
                   .arg(ids[0])
                   .arg(ids[1])
                   .toUtf8());
    file.close();
    file.setPermissions(file.permissions() | QFileDevice::ExeOwner);
  }
  MainWindow::Options options;
  options.db_path = temp.qpath();
  options.restore_state = false;
  options.experiments_dir = experiments;
  MainWindow window(options);
  window.show();
  window.launcher()->set_program(cli);
  ASSERT_TRUE(wait_until([&] { return window.runs_model()->rowCount() == 2; }));
  ASSERT_EQ(window.start_demo(), 3);  // pretrain, then the two runs
  const auto& jobs = window.launcher()->jobs();
  ASSERT_EQ(jobs.size(), 3u);
  EXPECT_EQ(jobs[0].arguments.mid(0, 3), (QStringList{"pretrain", "--preset", "tiny"}));
  for (size_t i = 1; i < 3; ++i) {
    EXPECT_TRUE(jobs[i].parallel);
    EXPECT_GE(jobs[i].threads, 1);
    EXPECT_EQ(jobs[i].after, jobs[0].id);
  }
  ASSERT_TRUE(wait_until([&] { return window.launcher()->running_jobs().size() == 2; }, 10000));
  // As soon as both runs are listed the usage view shows them side by side.
  ASSERT_TRUE(wait_until([&] { return window.tabs()->currentWidget() == window.usage(); }, 10000));
  EXPECT_EQ(window.run_table()->selected_runs(), (QList<qint64>{ids[0], ids[1]}));
  ASSERT_TRUE(wait_until([&] {
    return window.usage()->matrix(0).has_value() && window.usage()->matrix(1).has_value();
  }));
  ASSERT_TRUE(wait_until([&] { return !window.launcher()->busy(); }, 10000));
  QFile calls(temp.file("calls.txt"));
  ASSERT_TRUE(calls.open(QIODevice::ReadOnly));
  const QStringList lines = QString::fromUtf8(calls.readAll()).trimmed().split('\n');
  ASSERT_EQ(lines.size(), 3);
  EXPECT_TRUE(lines[0].startsWith("pretrain"));
  const QString threads = QString::number(jobs[1].threads);
  EXPECT_TRUE(lines.contains("run demo.toml " + threads));
  EXPECT_TRUE(lines.contains("run demo-ssd.toml " + threads));
}

}  // namespace
}  // namespace hl::ui
