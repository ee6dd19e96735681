// The runs table as a Qt item model: one row per run, a colour and a visibility check per
// run, numeric sort keys; plus a proxy that sorts and filters it.
#pragma once

#include <QAbstractTableModel>
#include <QSet>
#include <QSortFilterProxyModel>
#include <vector>

#include "ui/run_store.hpp"

namespace hl::ui {

/// Rows are runs (in store order); the first column carries the colour and a visibility check.
class RunsModel : public QAbstractTableModel {
  Q_OBJECT
 public:
  enum Column {
    kName,
    kStatus,
    kMethod,
    kWindow,
    kFeatureMap,
    kSsd,
    kSteps,
    kFinalLoss,
    kPpl,
    kPctOfBase,
    kPasskey,
    kColumnCount
  };
  enum Role {
    RunIdRole = Qt::UserRole + 1,  ///< qint64 run id
    SortRole,                      ///< numbers as doubles, text as text
  };

  explicit RunsModel(QObject* parent = nullptr);

  /// Replaces the rows, keeping visibility; emits fine-grained insert/remove/change signals.
  void set_runs(const std::vector<RunRow>& runs);
  const RunRow& row_data(int row) const { return rows_[static_cast<size_t>(row)]; }
  /// Row of a run, or -1.
  int row_of(int64_t run_id) const;

  bool is_visible(int64_t run_id) const { return !hidden_.contains(run_id); }
  void set_visible(int64_t run_id, bool visible);

  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override;
  QVariant data(const QModelIndex& index, int role) const override;
  bool setData(const QModelIndex& index, const QVariant& value, int role) override;
  QVariant headerData(int section, Qt::Orientation orientation, int role) const override;
  Qt::ItemFlags flags(const QModelIndex& index) const override;

  /// The SSD schedule of a run as "0.9 → 0.75 → 0.5", or empty without SSD.
  static QString ssd_text(const RunRow& run);

 signals:
  void visibilityChanged(qint64 run_id, bool visible);

 private:
  QVariant display(const RunRow& run, int column) const;
  QVariant sort_key(const RunRow& run, int column) const;

  std::vector<RunRow> rows_;
  QSet<int64_t> hidden_;
};

/// Sorts by the numeric sort role and filters on name, method, status and feature map.
class RunsFilterModel : public QSortFilterProxyModel {
  Q_OBJECT
 public:
  explicit RunsFilterModel(QObject* parent = nullptr);

 protected:
  bool filterAcceptsRow(int source_row, const QModelIndex& source_parent) const override;
};

}  // namespace hl::ui
