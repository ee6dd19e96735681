#include "ui/run_table_view.hpp"

#include <QApplication>
#include <QClipboard>
#include <QHeaderView>
#include <QItemSelectionModel>
#include <QLineEdit>
#include <QMenu>
#include <QRegularExpression>
#include <QTableView>
#include <QVBoxLayout>
#include <algorithm>

#include "ui/runs_model.hpp"

namespace hl::ui {

RunTableView::RunTableView(RunsModel* model, QWidget* parent)
    : QWidget(parent), model_(model), proxy_(new RunsFilterModel(this)) {
  proxy_->setSourceModel(model_);

  filter_ = new QLineEdit(this);
  filter_->setPlaceholderText(tr("Filter runs (name, method, status, feature map)…"));
  filter_->setClearButtonEnabled(true);
  filter_->setAccessibleName(tr("Filter runs"));
  connect(filter_, &QLineEdit::textChanged, this, [this](const QString& text) {
    proxy_->setFilterRegularExpression(QRegularExpression(
        QRegularExpression::escape(text), QRegularExpression::CaseInsensitiveOption));
  });

  table_ = new QTableView(this);
  table_->setObjectName("runsTable");
  table_->setAccessibleName(tr("Runs"));
  table_->setModel(proxy_);
  table_->setSortingEnabled(true);
  table_->sortByColumn(-1, Qt::AscendingOrder);
  table_->setSelectionBehavior(QAbstractItemView::SelectRows);
  table_->setSelectionMode(QAbstractItemView::ExtendedSelection);
  table_->setAlternatingRowColors(true);
  table_->verticalHeader()->hide();
  table_->verticalHeader()->setDefaultSectionSize(table_->fontMetrics().height() + 6);
  table_->horizontalHeader()->setStretchLastSection(true);
  table_->horizontalHeader()->setSectionsMovable(true);
  table_->setContextMenuPolicy(Qt::CustomContextMenu);
  table_->setWordWrap(false);
  connect(table_, &QWidget::customContextMenuRequested, this, &RunTableView::show_context_menu);
  connect(table_->selectionModel(), &QItemSelectionModel::selectionChanged, this,
          [this] { emit selectionChanged(selected_runs()); });
  // The name column widens to the names it shows (up to a limit) as runs arrive; it never
  // narrows, so a width the user chose stays.
  auto fit_names = [this] {
    constexpr int kMaxNameWidth = 260;
    const int before = table_->columnWidth(RunsModel::kName);
    table_->resizeColumnToContents(RunsModel::kName);
    const int fitted = std::min(table_->columnWidth(RunsModel::kName), kMaxNameWidth);
    table_->setColumnWidth(RunsModel::kName, std::max(before, fitted));
  };
  connect(proxy_, &QAbstractItemModel::rowsInserted, this, fit_names);
  connect(proxy_, &QAbstractItemModel::modelReset, this, fit_names);

  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(0, 0, 0, 0);
  layout->addWidget(filter_);
  layout->addWidget(table_);
}

QList<qint64> RunTableView::selected_runs() const {
  QList<qint64> ids;
  QModelIndexList rows = table_->selectionModel()->selectedRows(RunsModel::kName);
  std::sort(rows.begin(), rows.end(),
            [](const QModelIndex& a, const QModelIndex& b) { return a.row() < b.row(); });
  for (const QModelIndex& index : rows)
    ids.append(index.data(RunsModel::RunIdRole).toLongLong());
  return ids;
}

void RunTableView::select_runs(const QList<qint64>& run_ids) {
  QItemSelection selection;
  for (qint64 id : run_ids) {
    const int source_row = model_->row_of(id);
    if (source_row < 0) continue;
    const QModelIndex index = proxy_->mapFromSource(model_->index(source_row, 0));
    if (index.isValid()) selection.select(index, index);
  }
  table_->selectionModel()->select(selection,
                                   QItemSelectionModel::ClearAndSelect | QItemSelectionModel::Rows);
}

void RunTableView::show_context_menu(const QPoint& position) {
  const QList<qint64> ids = selected_runs();
  if (ids.isEmpty()) return;
  QMenu menu(this);
  menu.addAction(tr("Show in charts"), this, [this, ids] {
    for (qint64 id : ids)
      model_->set_visible(id, true);
  });
  menu.addAction(tr("Hide from charts"), this, [this, ids] {
    for (qint64 id : ids)
      model_->set_visible(id, false);
  });
  menu.addSeparator();
  menu.addAction(tr("Copy run uuid"), this, [this, ids] {
    QStringList uuids;
    for (qint64 id : ids) {
      const int row = model_->row_of(id);
      if (row >= 0) uuids << QString::fromStdString(model_->row_data(row).entry.info.uuid);
    }
    QApplication::clipboard()->setText(uuids.join('\n'));
  });
  menu.exec(table_->viewport()->mapToGlobal(position));
}

}  // namespace hl::ui
