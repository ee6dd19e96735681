#include "ui/runs_model.hpp"

#include <QBrush>
#include <QPainter>
#include <QPixmap>
#include <cmath>

#include "ui/theme.hpp"

namespace hl::ui {
namespace {

std::optional<double> summary_value(const RunRow& run, const char* key) {
  auto found = run.entry.summary.find(key);
  if (found == run.entry.summary.end()) return std::nullopt;
  return found->second;
}

QString number_text(std::optional<double> value, int precision = 4) {
  if (!value) return {};
  if (std::isnan(*value)) return QStringLiteral("nan");
  return QString::number(*value, 'g', precision);
}

QIcon colour_swatch(const QColor& colour) {
  QPixmap pixmap(12, 12);
  pixmap.fill(Qt::transparent);
  QPainter painter(&pixmap);
  painter.setRenderHint(QPainter::Antialiasing);
  painter.setBrush(colour);
  painter.setPen(Qt::NoPen);
  painter.drawRoundedRect(QRectF(1, 1, 10, 10), 2, 2);
  return QIcon(pixmap);
}

}  // namespace

RunsModel::RunsModel(QObject* parent) : QAbstractTableModel(parent) {}

QString RunsModel::ssd_text(const RunRow& run) {
  // The engine flattens stage tables as stage.<i>.ssd.swa_dropout; older writers used
  // stage[<i>]; either way the first stage with a schedule is shown.
  for (const auto& [key, value] : run.params) {
    if (key.starts_with("stage") && key.ends_with("ssd.swa_dropout")) {
      QString text = QString::fromStdString(value);
      text.remove('[').remove(']');
      return text.split(',', Qt::SkipEmptyParts)
          .replaceInStrings(" ", "")
          .join(QStringLiteral(" → "));
    }
  }
  return {};
}

void RunsModel::set_runs(const std::vector<RunRow>& runs) {
  // Runs are only ever added (or all replaced when another database opens), so update the
  // common prefix in place and insert or remove the tail; this keeps selections and
  // sort state of views intact during live polling.
  size_t common = 0;
  while (common < rows_.size() && common < runs.size() && rows_[common].id() == runs[common].id())
    ++common;
  if (common < rows_.size()) {
    beginRemoveRows({}, static_cast<int>(common), static_cast<int>(rows_.size()) - 1);
    rows_.erase(rows_.begin() + static_cast<std::ptrdiff_t>(common), rows_.end());
    endRemoveRows();
  }
  for (size_t i = 0; i < common; ++i) {
    const RunRow& before = rows_[i];
    const RunRow& after = runs[i];
    const bool same = before.entry.info.uuid == after.entry.info.uuid &&
                      before.entry.info.status == after.entry.info.status &&
                      before.entry.info.last_step == after.entry.info.last_step &&
                      before.entry.info.name == after.entry.info.name &&
                      before.entry.summary == after.entry.summary && before.params == after.params;
    if (same) continue;
    rows_[i] = after;
    emit dataChanged(index(static_cast<int>(i), 0), index(static_cast<int>(i), kColumnCount - 1));
  }
  if (runs.size() > common) {
    beginInsertRows({}, static_cast<int>(common), static_cast<int>(runs.size()) - 1);
    rows_.insert(rows_.end(), runs.begin() + static_cast<std::ptrdiff_t>(common), runs.end());
    endInsertRows();
  }
}

int RunsModel::row_of(int64_t run_id) const {
  for (size_t i = 0; i < rows_.size(); ++i)
    if (rows_[i].id() == run_id) return static_cast<int>(i);
  return -1;
}

void RunsModel::set_visible(int64_t run_id, bool visible) {
  if (visible == is_visible(run_id)) return;
  if (visible)
    hidden_.remove(run_id);
  else
    hidden_.insert(run_id);
  const int row = row_of(run_id);
  if (row >= 0) emit dataChanged(index(row, kName), index(row, kName), {Qt::CheckStateRole});
  emit visibilityChanged(run_id, visible);
}

int RunsModel::rowCount(const QModelIndex& parent) const {
  return parent.isValid() ? 0 : static_cast<int>(rows_.size());
}

int RunsModel::columnCount(const QModelIndex& parent) const {
  return parent.isValid() ? 0 : kColumnCount;
}

QVariant RunsModel::display(const RunRow& run, int column) const {
  const store::RunInfo& info = run.entry.info;
  switch (column) {
    case kName:
      return QString::fromStdString(info.name);
    case kStatus:
      return QString::fromUtf8(store::to_string(info.status).data(),
                               static_cast<qsizetype>(store::to_string(info.status).size()));
    case kMethod:
      return QString::fromStdString(info.method);
    case kWindow:
      return QString::fromStdString(run.param("attention.window"));
    case kFeatureMap:
      return QString::fromStdString(run.param("attention.feature_map"));
    case kSsd:
      return ssd_text(run);
    case kSteps:
      return info.last_step ? QString::number(*info.last_step) : QString();
    case kFinalLoss:
      return number_text(summary_value(run, "final_loss"));
    case kPpl:
      return number_text(summary_value(run, "ppl"));
    case kPctOfBase: {
      auto pct = summary_value(run, "pct_of_base");
      return pct ? QString::number(*pct, 'f', 1) + QStringLiteral(" %") : QString();
    }
    case kPasskey:
      return number_text(summary_value(run, "passkey_acc"), 3);
  }
  return {};
}

QVariant RunsModel::sort_key(const RunRow& run, int column) const {
  auto numeric = [](std::optional<double> value) -> QVariant {
    // Missing values sort after every number in ascending order.
    return value && !std::isnan(*value) ? *value : std::numeric_limits<double>::infinity();
  };
  switch (column) {
    case kWindow: {
      bool ok = false;
      double window = QString::fromStdString(run.param("attention.window")).toDouble(&ok);
      return ok ? QVariant(window) : QVariant(std::numeric_limits<double>::infinity());
    }
    case kSteps:
      return numeric(run.entry.info.last_step ? std::optional<double>(*run.entry.info.last_step)
                                              : std::nullopt);
    case kFinalLoss:
      return numeric(summary_value(run, "final_loss"));
    case kPpl:
      return numeric(summary_value(run, "ppl"));
    case kPctOfBase:
      return numeric(summary_value(run, "pct_of_base"));
    case kPasskey:
      return numeric(summary_value(run, "passkey_acc"));
    default:
      return display(run, column);
  }
}

QVariant RunsModel::data(const QModelIndex& index, int role) const {
  if (!checkIndex(index, CheckIndexOption::IndexIsValid | CheckIndexOption::ParentIsInvalid))
    return {};
  const RunRow& run = rows_[static_cast<size_t>(index.row())];
  switch (role) {
    case Qt::DisplayRole:
      return display(run, index.column());
    case SortRole:
      return sort_key(run, index.column());
    case RunIdRole:
      return QVariant::fromValue<qint64>(run.id());
    case Qt::CheckStateRole:
      if (index.column() == kName) return is_visible(run.id()) ? Qt::Checked : Qt::Unchecked;
      return {};
    case Qt::DecorationRole:
      if (index.column() == kName) return colour_swatch(run_colour(run.id()));
      return {};
    case Qt::ToolTipRole:
      if (index.column() == kName)
        return QStringLiteral("run %1 (%2)\n%3")
            .arg(run.id())
            .arg(QString::fromStdString(run.entry.info.uuid))
            .arg(QString::fromStdString(run.entry.info.base_model));
      if (index.column() == kStatus && !run.entry.info.status_message.empty())
        return QString::fromStdString(run.entry.info.status_message);
      return {};
    case Qt::TextAlignmentRole:
      if (index.column() >= kSteps || index.column() == kWindow)
        return QVariant::fromValue(Qt::AlignRight | Qt::AlignVCenter);
      return {};
  }
  return {};
}

bool RunsModel::setData(const QModelIndex& index, const QVariant& value, int role) {
  if (role != Qt::CheckStateRole || index.column() != kName ||
      !checkIndex(index, CheckIndexOption::IndexIsValid | CheckIndexOption::ParentIsInvalid))
    return false;
  set_visible(rows_[static_cast<size_t>(index.row())].id(),
              value.value<Qt::CheckState>() == Qt::Checked);
  return true;
}

QVariant RunsModel::headerData(int section, Qt::Orientation orientation, int role) const {
  if (orientation != Qt::Horizontal || role != Qt::DisplayRole) return {};
  static const char* const kTitles[kColumnCount] = {
      "Name",  "Status",     "Method", "Window",    "Feature map", "SSD schedule",
      "Steps", "Final loss", "PPL",    "% of base", "Passkey"};
  if (section < 0 || section >= kColumnCount) return {};
  return tr(kTitles[section]);
}

Qt::ItemFlags RunsModel::flags(const QModelIndex& index) const {
  if (!index.isValid()) return Qt::NoItemFlags;
  Qt::ItemFlags flags = Qt::ItemIsEnabled | Qt::ItemIsSelectable | Qt::ItemNeverHasChildren;
  if (index.column() == kName) flags |= Qt::ItemIsUserCheckable;
  return flags;
}

RunsFilterModel::RunsFilterModel(QObject* parent) : QSortFilterProxyModel(parent) {
  setSortRole(RunsModel::SortRole);
  setFilterCaseSensitivity(Qt::CaseInsensitive);
  setSortCaseSensitivity(Qt::CaseInsensitive);
  // Live updates change values; keep the order and the filter up to date.
  setDynamicSortFilter(true);
}

bool RunsFilterModel::filterAcceptsRow(int source_row, const QModelIndex& source_parent) const {
  const QRegularExpression pattern = filterRegularExpression();
  if (pattern.pattern().isEmpty()) return true;
  for (int column : {RunsModel::kName, RunsModel::kStatus, RunsModel::kMethod,
                     RunsModel::kFeatureMap, RunsModel::kSsd}) {
    const QModelIndex index = sourceModel()->index(source_row, column, source_parent);
    if (index.data(Qt::DisplayRole).toString().contains(pattern)) return true;
  }
  return false;
}

}  // namespace hl::ui
