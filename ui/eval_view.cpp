#include "ui/eval_view.hpp"

#include <qcustomplot.h>

#include <QComboBox>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QSplitter>
#include <QTableWidget>
#include <QVBoxLayout>
#include <map>
#include <set>

#include "ui/async_read.hpp"
#include "ui/run_store.hpp"
#include "ui/theme.hpp"

namespace hl::ui {

struct EvalView::Loaded {
  std::vector<store::EvalRow> evals;
  std::map<int64_t, std::map<int, double>> ablation;  // run -> layer -> loss delta (last step)
};

namespace {

// ppl first, then the probes, then multiple-choice tasks, each group alphabetical.
int task_rank(const std::string& task) {
  if (task.rfind("ppl", 0) == 0) return 0;
  if (task == "passkey") return 1;
  if (task == "mqar") return 2;
  return 3;
}

const char* const kModeOrder[] = {"hybrid", "window_only", "linear_only", "sinks_only", "none"};

int mode_rank(const std::string& mode) {
  for (int i = 0; i < 5; ++i)
    if (mode == kModeOrder[i]) return i;
  return 5;
}

}  // namespace

std::optional<double> EvalView::headline(const std::vector<store::EvalRow>& rows, qint64 run,
                                         const std::string& task, const std::string& mode) {
  // Rows come ordered by time within (run, task, mode, metric), so the last match wins.
  std::optional<double> ppl, acc, acc_norm;
  for (const store::EvalRow& row : rows) {
    if (row.run != run || row.task != task || row.mode != mode) continue;
    if (row.metric == "ppl") ppl = row.value;
    if (row.metric == "acc") acc = row.value;
    if (row.metric == "acc_norm") acc_norm = row.value;
  }
  if (task_rank(task) == 0) return ppl;
  return acc_norm ? acc_norm : acc;
}

EvalView::EvalView(RunStore* store, QWidget* parent) : QWidget(parent), store_(store) {
  table_ = new QTableWidget(this);
  table_->setObjectName("evalTable");
  table_->setAccessibleName(tr("Evaluation table"));
  table_->setEditTriggers(QAbstractItemView::NoEditTriggers);
  table_->verticalHeader()->hide();
  table_->horizontalHeader()->setStretchLastSection(true);

  distance_task_ = new QComboBox(this);
  distance_task_->setAccessibleName(tr("Long-range task"));
  distance_task_->addItems({"passkey", "mqar"});
  distance_mode_ = new QComboBox(this);
  distance_mode_->setAccessibleName(tr("Long-range mode"));
  for (const char* mode : kModeOrder)
    distance_mode_->addItem(QString::fromLatin1(mode));
  connect(distance_task_, &QComboBox::currentIndexChanged, this,
          [this] { update_distance_plot(); });
  connect(distance_mode_, &QComboBox::currentIndexChanged, this,
          [this] { update_distance_plot(); });

  distance_plot_ = new QCustomPlot(this);
  distance_plot_->setAccessibleName(tr("Accuracy by distance"));
  distance_plot_->xAxis->setLabel(tr("distance (tokens)"));
  distance_plot_->xAxis->setScaleType(QCPAxis::stLogarithmic);
  distance_plot_->xAxis->setTicker(QSharedPointer<QCPAxisTickerLog>(new QCPAxisTickerLog));
  distance_plot_->yAxis->setLabel(tr("accuracy"));
  distance_plot_->yAxis->setRange(0, 1.02);
  distance_plot_->legend->setVisible(true);
  distance_plot_->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
  ablation_plot_ = new QCustomPlot(this);
  ablation_plot_->setAccessibleName(tr("Per-layer ablation"));
  ablation_plot_->xAxis->setLabel(tr("layer without its linear branch"));
  ablation_plot_->yAxis->setLabel(tr("loss change"));
  ablation_plot_->legend->setVisible(true);
  style_plot(distance_plot_, palette());
  style_plot(ablation_plot_, palette());

  auto* distance_box = new QWidget(this);
  auto* distance_layout = new QVBoxLayout(distance_box);
  distance_layout->setContentsMargins(0, 0, 0, 0);
  auto* distance_controls = new QHBoxLayout;
  distance_controls->addWidget(new QLabel(tr("Long-range accuracy:"), distance_box));
  distance_controls->addWidget(distance_task_);
  distance_controls->addWidget(distance_mode_);
  distance_controls->addStretch(1);
  distance_layout->addLayout(distance_controls);
  distance_layout->addWidget(distance_plot_, 1);
  auto* plots = new QSplitter(Qt::Horizontal, this);
  plots->addWidget(distance_box);
  plots->addWidget(ablation_plot_);
  auto* splitter = new QSplitter(Qt::Vertical, this);
  splitter->addWidget(table_);
  splitter->addWidget(plots);
  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addWidget(splitter);
}

void EvalView::set_runs(const QList<qint64>& run_ids) {
  if (run_ids == runs_) return;
  runs_ = run_ids;
  reload();
}

void EvalView::reload() {
  const uint64_t generation = ++generation_;
  if (runs_.isEmpty() || store_->path().isEmpty()) {
    show(Loaded{});
    return;
  }
  loading_ = true;
  std::vector<int64_t> ids(runs_.begin(), runs_.end());
  read_async<Loaded>(
      store_->path(), this,
      [ids](store::RunReader& reader) -> Result<Loaded> {
        Loaded data;
        Result<std::vector<store::EvalRow>> evals = reader.evals(ids);
        if (!evals.ok()) return evals.error();
        data.evals = std::move(evals).value();
        for (int64_t run : ids) {
          Result<store::LayerMatrix> matrix = reader.layer_matrix(run, "ablation/loss_delta");
          if (!matrix.ok() || matrix->steps.empty()) continue;
          const size_t last = matrix->steps.size() - 1;
          for (size_t l = 0; l < matrix->layers.size(); ++l)
            if (!std::isnan(matrix->at(l, last)))
              data.ablation[run][matrix->layers[l]] = matrix->at(l, last);
        }
        return data;
      },
      [this, generation](Result<Loaded> result) {
        if (generation != generation_) return;
        loading_ = false;
        show(result.ok() ? *result : Loaded{});
      });
}

void EvalView::show(const Loaded& data) {
  evals_ = data.evals;
  std::set<std::pair<int, std::string>> tasks;
  std::set<std::pair<int64_t, std::pair<int, std::string>>> rows;  // run order, mode order
  std::map<int64_t, int> run_order;
  for (int i = 0; i < runs_.size(); ++i)
    run_order[runs_[i]] = i;
  for (const store::EvalRow& row : evals_) {
    // Per-layer ablation rows have their own plot (from layer_scalars), not a Table 1 column.
    if (row.task == "ablation") continue;
    tasks.insert({task_rank(row.task), row.task});
    rows.insert({run_order[row.run], {mode_rank(row.mode), row.mode}});
  }
  QStringList header{tr("Run"), tr("Mode")};
  for (const auto& task : tasks)
    header << QString::fromStdString(task.second);
  header << tr("% of base");
  table_->clear();
  table_->setColumnCount(header.size());
  table_->setHorizontalHeaderLabels(header);
  table_->setRowCount(static_cast<int>(rows.size()));
  int r = 0;
  for (const auto& [order, mode] : rows) {
    const qint64 run = runs_[order];
    const RunRow* info = store_->run(run);
    auto* name = new QTableWidgetItem(info ? QString::fromStdString(info->entry.info.name)
                                           : tr("run %1").arg(run));
    name->setForeground(run_colour(run));
    table_->setItem(r, 0, name);
    table_->setItem(r, 1, new QTableWidgetItem(QString::fromStdString(mode.second)));
    int c = 2;
    for (const auto& task : tasks) {
      std::optional<double> value = headline(evals_, run, task.second, mode.second);
      auto* cell = new QTableWidgetItem(value ? QString::number(*value, 'g', 4) : QString());
      cell->setTextAlignment(Qt::AlignRight | Qt::AlignVCenter);
      table_->setItem(r, c++, cell);
    }
    // The run's overall "% of base" belongs with its headline (hybrid) row.
    if (info && mode.second == "hybrid") {
      auto pct = info->entry.summary.find("pct_of_base");
      if (pct != info->entry.summary.end()) {
        auto* cell =
            new QTableWidgetItem(QString::number(pct->second, 'f', 1) + QStringLiteral(" %"));
        cell->setTextAlignment(Qt::AlignRight | Qt::AlignVCenter);
        table_->setItem(r, c, cell);
      }
    }
    ++r;
  }
  table_->resizeColumnsToContents();
  update_distance_plot();

  ablation_plot_->clearPlottables();
  auto* group = new QCPBarsGroup(ablation_plot_);
  double lowest = 0, highest = 0, first_layer = 0, last_layer = 0;
  bool any = false;
  for (qint64 run : runs_) {
    auto found = data.ablation.find(run);
    if (found == data.ablation.end()) continue;
    auto* bars = new QCPBars(ablation_plot_->xAxis, ablation_plot_->yAxis);
    const RunRow* info = store_->run(run);
    bars->setName(info ? QString::fromStdString(info->entry.info.name) : tr("run %1").arg(run));
    bars->setBarsGroup(group);
    bars->setWidth(0.8 / std::max<qsizetype>(1, runs_.size()));
    bars->setPen(QPen(run_colour(run)));
    bars->setBrush(faded(run_colour(run), 0.7));
    for (const auto& [layer, delta] : found->second) {
      bars->addData(layer, delta);
      lowest = std::min(lowest, delta);
      highest = std::max(highest, delta);
      first_layer = any ? std::min(first_layer, double(layer)) : layer;
      last_layer = any ? std::max(last_layer, double(layer)) : layer;
      any = true;
    }
  }
  // Only runs evaluated with layer_ablation have bars; without any the plot is left out.
  ablation_plot_->setVisible(any);
  ablation_plot_->xAxis->setRange(first_layer - 0.7, last_layer + 0.7);
  ablation_plot_->yAxis->setRange(lowest * 1.1, std::max(highest * 1.1, 1e-6));
  ablation_plot_->replot();
  emit loaded();
}

void EvalView::update_distance_plot() {
  distance_plot_->clearGraphs();
  const std::string task = distance_task_->currentText().toStdString();
  const std::string mode = distance_mode_->currentText().toStdString();
  double min_distance = 0, max_distance = 1;
  for (qint64 run : runs_) {
    std::map<double, double> by_distance;
    for (const store::EvalRow& row : evals_) {
      if (row.run != run || row.task != task || row.mode != mode) continue;
      if (row.metric.rfind("acc@", 0) != 0) continue;
      try {
        by_distance[std::stod(row.metric.substr(4))] = row.value;
      } catch (const std::exception&) {
        continue;  // a malformed metric name is not plotted
      }
    }
    if (by_distance.empty()) continue;
    QCPGraph* graph = distance_plot_->addGraph();
    const RunRow* info = store_->run(run);
    graph->setName(info ? QString::fromStdString(info->entry.info.name) : tr("run %1").arg(run));
    graph->setPen(QPen(run_colour(run), 2));
    graph->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, 6));
    for (const auto& [distance, value] : by_distance) {
      graph->addData(distance, value);
      min_distance = min_distance > 0 ? std::min(min_distance, distance) : distance;
      max_distance = std::max(max_distance, distance);
    }
  }
  // The distances measured, with some room on the log axis (from 1 when there are none).
  distance_plot_->xAxis->setRange(min_distance > 0 ? min_distance / 1.5 : 1, max_distance * 1.5);
  distance_plot_->replot();
}

}  // namespace hl::ui
