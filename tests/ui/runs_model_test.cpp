// The runs table model over a real store: Qt's model tester, sorting, filtering,
// visibility, and rows arriving while a writer adds runs.
#include "ui/runs_model.hpp"

#include <QAbstractItemModelTester>
#include <cmath>

#include "ui/run_store.hpp"
#include "ui/theme.hpp"
#include "ui_test_util.hpp"

namespace hl::ui {
namespace {

using test::TempStore;
using test::wait_until;

void write_run(TempStore& store, const std::string& name, const std::string& method,
               const std::string& window, std::optional<double> final_loss, double pct, bool ssd) {
  store::RunWriter writer = store.create(name, method);
  std::map<std::string, std::string> params{{"attention.window", window},
                                            {"attention.feature_map", "hedgehog"},
                                            {"data.batch_size", "4"},
                                            {"data.seq_len", "128"}};
  if (ssd) params["stage.0.ssd.swa_dropout"] = "[0.9, 0.75, 0.5]";
  HL_ASSERT_OK(writer.set_params(params));
  for (int step = 0; step < 5; ++step)
    HL_ASSERT_OK(writer.log_scalar("loss", step, 3.0 - step));
  if (final_loss) HL_ASSERT_OK(writer.set_summary("final_loss", *final_loss));
  HL_ASSERT_OK(writer.set_summary("pct_of_base", pct));
  HL_ASSERT_OK(writer.set_status(store::RunStatus::completed));
  HL_ASSERT_OK(writer.close());
}

class RunsModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_run(temp, "lolcats", "lolcats", "64", 2.5, 81.0, false);
    write_run(temp, "lolcats+ssd", "lolcats+ssd", "64", 1.5, 92.5, true);
    write_run(temp, "hedgecats w16", "hedgecats", "16", std::nullopt, 70.0, false);
    runs.open(temp.qpath());
    ASSERT_TRUE(wait_until([&] { return runs.runs().size() == 3; }));
    model.set_runs(runs.runs());
  }

  TempStore temp;
  RunStore runs;
  RunsModel model;
};

TEST_F(RunsModelTest, PassesTheModelTesterThroughLiveUpdates) {
  RunsFilterModel proxy;
  proxy.setSourceModel(&model);
  QAbstractItemModelTester tester(&model, QAbstractItemModelTester::FailureReportingMode::Fatal);
  QAbstractItemModelTester proxy_tester(&proxy,
                                        QAbstractItemModelTester::FailureReportingMode::Fatal);
  proxy.sort(RunsModel::kFinalLoss, Qt::DescendingOrder);
  proxy.setFilterRegularExpression(QStringLiteral("lol"));

  // A writer adds a run and moves another; the model must insert and update in place.
  {
    store::RunWriter writer = temp.create("running", "lolcats");
    HL_ASSERT_OK(writer.set_status(store::RunStatus::running));
    HL_ASSERT_OK(writer.log_scalar("loss", 0, 4.0));
    HL_ASSERT_OK(writer.close());
  }
  runs.poll_now();
  ASSERT_TRUE(wait_until([&] { return runs.runs().size() == 4; }));
  model.set_runs(runs.runs());
  EXPECT_EQ(model.rowCount(), 4);
  EXPECT_EQ(proxy.rowCount(), 3);  // "hedgecats w16" is filtered out
  // Replacing everything (another database) removes rows; the testers check the signals.
  model.set_runs({});
  EXPECT_EQ(model.rowCount(), 0);
  model.set_runs(runs.runs());
  EXPECT_EQ(model.rowCount(), 4);
}

TEST_F(RunsModelTest, ShowsColumnsFromParamsAndSummary) {
  const int row = model.row_of(runs.runs()[1].id());
  ASSERT_GE(row, 0);
  auto text = [&](int column) { return model.index(row, column).data().toString(); };
  EXPECT_EQ(text(RunsModel::kName), "lolcats+ssd");
  EXPECT_EQ(text(RunsModel::kStatus), "completed");
  EXPECT_EQ(text(RunsModel::kMethod), "lolcats+ssd");
  EXPECT_EQ(text(RunsModel::kWindow), "64");
  EXPECT_EQ(text(RunsModel::kFeatureMap), "hedgehog");
  EXPECT_EQ(text(RunsModel::kSsd), QString::fromUtf8("0.9 → 0.75 → 0.5"));
  EXPECT_EQ(text(RunsModel::kSteps), "4");
  EXPECT_EQ(text(RunsModel::kFinalLoss), "1.5");
  EXPECT_EQ(text(RunsModel::kPctOfBase), "92.5 %");
  EXPECT_DOUBLE_EQ(runs.runs()[1].tokens_per_step(), 512.0);
  // The colour swatch is the run's shared colour.
  const QIcon icon = model.index(row, RunsModel::kName).data(Qt::DecorationRole).value<QIcon>();
  const QImage swatch = icon.pixmap(12, 12).toImage();
  EXPECT_EQ(swatch.pixelColor(6, 6).rgb(), run_colour(runs.runs()[1].id()).rgb());
}

TEST_F(RunsModelTest, SortsNumericallyWithMissingValuesLast) {
  RunsFilterModel proxy;
  proxy.setSourceModel(&model);
  proxy.sort(RunsModel::kFinalLoss, Qt::AscendingOrder);
  EXPECT_EQ(proxy.index(0, RunsModel::kName).data().toString(), "lolcats+ssd");    // 1.5
  EXPECT_EQ(proxy.index(1, RunsModel::kName).data().toString(), "lolcats");        // 2.5
  EXPECT_EQ(proxy.index(2, RunsModel::kName).data().toString(), "hedgecats w16");  // none
  proxy.sort(RunsModel::kWindow, Qt::AscendingOrder);
  EXPECT_EQ(proxy.index(0, RunsModel::kName).data().toString(), "hedgecats w16");  // 16 < 64
}

TEST_F(RunsModelTest, FiltersOnNameMethodAndStatus) {
  RunsFilterModel proxy;
  proxy.setSourceModel(&model);
  proxy.setFilterRegularExpression(
      QRegularExpression("SSD", QRegularExpression::CaseInsensitiveOption));
  ASSERT_EQ(proxy.rowCount(), 1);
  EXPECT_EQ(proxy.index(0, RunsModel::kName).data().toString(), "lolcats+ssd");
  proxy.setFilterRegularExpression(QRegularExpression("hedgecats"));
  EXPECT_EQ(proxy.rowCount(), 1);
  proxy.setFilterRegularExpression(QRegularExpression("completed"));
  EXPECT_EQ(proxy.rowCount(), 3);
}

TEST_F(RunsModelTest, VisibilityToggleEmitsAndPersistsAcrossUpdates) {
  const qint64 id = runs.runs()[0].id();
  QList<QPair<qint64, bool>> seen;
  QObject::connect(&model, &RunsModel::visibilityChanged, [&](qint64 run, bool visible) {
    seen.append({run, visible});
  });
  const QModelIndex name = model.index(model.row_of(id), RunsModel::kName);
  EXPECT_EQ(name.data(Qt::CheckStateRole).value<Qt::CheckState>(), Qt::Checked);
  ASSERT_TRUE(model.setData(name, Qt::Unchecked, Qt::CheckStateRole));
  EXPECT_FALSE(model.is_visible(id));
  ASSERT_EQ(seen.size(), 1);
  EXPECT_EQ(seen[0].first, id);
  EXPECT_FALSE(seen[0].second);
  model.set_runs(runs.runs());
  EXPECT_EQ(model.index(model.row_of(id), RunsModel::kName)
                .data(Qt::CheckStateRole)
                .value<Qt::CheckState>(),
            Qt::Unchecked);
  EXPECT_FALSE(model.setData(model.index(0, RunsModel::kPpl), Qt::Checked, Qt::CheckStateRole));
}

TEST(RunColourTest, DistinctForNeighbouringRunsAndStable) {
  for (int64_t id = 1; id < 40; ++id) {
    EXPECT_EQ(run_colour(id), run_colour(id));
    EXPECT_NE(run_colour(id).rgb(), run_colour(id + 1).rgb()) << id;
  }
}

TEST(RunStoreTest, ReportsAMissingDatabase) {
  TempStore temp;
  RunStore runs;
  QString message;
  QObject::connect(&runs, &RunStore::failed, [&](const QString& text) { message = text; });
  runs.open(temp.file("missing.sqlite"));
  ASSERT_TRUE(wait_until([&] { return !message.isEmpty(); }));
  EXPECT_TRUE(message.contains("missing.sqlite")) << message.toStdString();
  EXPECT_FALSE(runs.is_open());
}

}  // namespace
}  // namespace hl::ui
