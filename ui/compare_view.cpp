#include "ui/compare_view.hpp"

#include <QCheckBox>
#include <QHeaderView>
#include <QLocale>
#include <QRegularExpression>
#include <QSplitter>
#include <QTableWidget>
#include <QVBoxLayout>

#include "ui/async_read.hpp"
#include "ui/metric_plot.hpp"
#include "ui/run_store.hpp"
#include "ui/theme.hpp"

namespace hl::ui {
namespace {

// Parameters hold doubles written with every digit (0.90000000000000002); they read better
// as the shortest text that gives the same double (0.9).
QString tidy_numbers(const std::string& text) {
  static const QRegularExpression long_number(
      QStringLiteral(R"((?<![\w.])-?\d+\.\d{10,}(?:[eE][+-]?\d+)?(?![\w.]))"));
  QString result = QString::fromStdString(text);
  QRegularExpressionMatchIterator matches = long_number.globalMatch(result);
  QList<QRegularExpressionMatch> found;
  while (matches.hasNext())
    found << matches.next();
  for (auto it = found.rbegin(); it != found.rend(); ++it) {
    bool ok = false;
    const double value = it->captured().toDouble(&ok);
    if (ok)
      result.replace(it->capturedStart(), it->capturedLength(),
                     QString::number(value, 'g', QLocale::FloatingPointShortest));
  }
  return result;
}

}  // namespace

CompareView::CompareView(RunStore* store, QWidget* parent)
    : QWidget(parent), store_(store), plot_(new MetricPlotPanel(store, this)) {
  differences_only_ = new QCheckBox(tr("Differences only"), this);
  differences_only_->setChecked(true);
  connect(differences_only_, &QCheckBox::toggled, this, [this] { show_comparison(); });
  table_ = new QTableWidget(this);
  table_->setObjectName("compareTable");
  table_->setAccessibleName(tr("Configuration comparison"));
  table_->setEditTriggers(QAbstractItemView::NoEditTriggers);
  table_->verticalHeader()->hide();
  table_->horizontalHeader()->setStretchLastSection(true);
  table_->setWordWrap(true);
  auto* top = new QWidget(this);
  auto* top_layout = new QVBoxLayout(top);
  top_layout->setContentsMargins(0, 0, 0, 0);
  top_layout->addWidget(differences_only_);
  top_layout->addWidget(table_);
  auto* splitter = new QSplitter(Qt::Vertical, this);
  splitter->addWidget(top);
  splitter->addWidget(plot_);
  // The differences are a few rows; the overlaid metrics get most of the height.
  splitter->setStretchFactor(0, 1);
  splitter->setStretchFactor(1, 2);
  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(4, 4, 4, 4);
  layout->addWidget(splitter);
}

void CompareView::set_differences_only(bool only) {
  differences_only_->setChecked(only);
}

void CompareView::set_runs(const QList<qint64>& run_ids) {
  if (run_ids == runs_) return;
  runs_ = run_ids;
  plot_->plot()->set_runs(run_ids);
  reload();
}

void CompareView::reload() {
  const uint64_t generation = ++generation_;
  if (runs_.isEmpty() || store_->path().isEmpty()) {
    comparison_ = {};
    show_comparison();
    return;
  }
  std::vector<int64_t> ids(runs_.begin(), runs_.end());
  read_async<store::ParamComparison>(
      store_->path(), this, [ids](store::RunReader& reader) { return reader.compare_params(ids); },
      [this, generation](Result<store::ParamComparison> result) {
        if (generation != generation_) return;
        comparison_ = result.ok() ? *result : store::ParamComparison{};
        show_comparison();
      });
}

void CompareView::show_comparison() {
  const bool only = differences_only_->isChecked();
  QStringList header{tr("Parameter")};
  for (qint64 run : runs_) {
    const RunRow* info = store_->run(run);
    header << (info ? QString::fromStdString(info->entry.info.name) : tr("run %1").arg(run));
  }
  table_->clear();
  table_->setColumnCount(header.size());
  table_->setHorizontalHeaderLabels(header);
  for (int c = 1; c < header.size(); ++c)
    table_->horizontalHeaderItem(c)->setForeground(run_colour(runs_[c - 1]));
  int rows = 0;
  for (const auto& row : comparison_.rows)
    if (!only || row.differs) ++rows;
  table_->setRowCount(rows);
  int r = 0;
  QFont bold = table_->font();
  bold.setBold(true);
  for (const auto& row : comparison_.rows) {
    if (only && !row.differs) continue;
    auto* key = new QTableWidgetItem(QString::fromStdString(row.key));
    if (row.differs) key->setFont(bold);
    table_->setItem(r, 0, key);
    for (size_t c = 0; c < row.values.size(); ++c) {
      auto* cell =
          new QTableWidgetItem(row.values[c] ? tidy_numbers(*row.values[c]) : tr("(not set)"));
      if (!row.values[c]) cell->setForeground(palette().brush(QPalette::PlaceholderText));
      table_->setItem(r, static_cast<int>(c) + 1, cell);
    }
    ++r;
  }
  // The parameter names keep their width; the runs share the rest, long values wrap.
  table_->resizeColumnToContents(0);
  for (int c = 1; c < table_->columnCount(); ++c)
    table_->horizontalHeader()->setSectionResizeMode(c, QHeaderView::Stretch);
  table_->resizeRowsToContents();
  emit loaded();
}

}  // namespace hl::ui
