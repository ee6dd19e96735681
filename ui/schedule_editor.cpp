#include "ui/schedule_editor.hpp"

#include <qcustomplot.h>

#include <QCheckBox>
#include <QComboBox>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QTableWidget>
#include <QToolButton>
#include <QVBoxLayout>

#include "core/config/schedule.hpp"
#include "ui/theme.hpp"

namespace hl::ui {
namespace {

QString format_value(double value) {
  return QString::number(value, 'g', QLocale::FloatingPointShortest);
}

}  // namespace

ScheduleTable::ScheduleTable(const QString& value_name, QWidget* parent) : QWidget(parent) {
  mode_ = new QComboBox(this);
  mode_->setAccessibleName(tr("%1 schedule form").arg(value_name));
  mode_->addItem(tr("Equal parts of the stage"));
  mode_->addItem(tr("Points (step, value)"));
  table_ = new QTableWidget(0, 2, this);
  table_->setAccessibleName(tr("%1 schedule").arg(value_name));
  table_->setHorizontalHeaderLabels({tr("step"), value_name});
  table_->horizontalHeader()->setStretchLastSection(true);
  table_->verticalHeader()->setDefaultSectionSize(table_->fontMetrics().height() + 6);
  table_->setMinimumHeight(90);
  auto* add = new QToolButton(this);
  add->setText(QStringLiteral("+"));
  add->setAccessibleName(tr("Add %1 point").arg(value_name));
  add->setToolTip(tr("Add a row"));
  auto* remove = new QToolButton(this);
  remove->setText(QStringLiteral("−"));
  remove->setAccessibleName(tr("Remove %1 point").arg(value_name));
  remove->setToolTip(tr("Remove the selected row"));
  connect(add, &QToolButton::clicked, this, [this] {
    const int row = table_->rowCount();
    table_->insertRow(row);
    // A new point continues the last one, so that the schedule stays valid while editing.
    auto last = [&](int column, const QString& fallback) {
      return row > 0 && table_->item(row - 1, column) ? table_->item(row - 1, column)->text()
                                                      : fallback;
    };
    bool ok = false;
    const qint64 step = last(0, QStringLiteral("0")).toLongLong(&ok);
    table_->setItem(row, 0, new QTableWidgetItem(QString::number(row > 0 && ok ? step + 100 : 0)));
    table_->setItem(row, 1, new QTableWidgetItem(last(1, QStringLiteral("0.5"))));
    emit changed();
  });
  connect(remove, &QToolButton::clicked, this, [this] {
    const int row = table_->currentRow() >= 0 ? table_->currentRow() : table_->rowCount() - 1;
    if (row < 0) return;
    table_->removeRow(row);
    emit changed();
  });
  connect(mode_, &QComboBox::currentIndexChanged, this, [this](int index) {
    set_points_mode(index == 1);
    emit changed();
  });
  connect(table_, &QTableWidget::itemChanged, this, [this] { emit changed(); });

  auto* row = new QHBoxLayout;
  row->addWidget(mode_, 1);
  row->addWidget(add);
  row->addWidget(remove);
  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(0, 0, 0, 0);
  layout->addLayout(row);
  layout->addWidget(table_);
  set_points_mode(false);
}

bool ScheduleTable::uses_points() const {
  return mode_->currentIndex() == 1;
}

void ScheduleTable::set_points_mode(bool points) {
  table_->setColumnHidden(0, !points);
}

void ScheduleTable::set_schedule(const Schedule& schedule) {
  QSignalBlocker block_table(table_);
  QSignalBlocker block_mode(mode_);
  const bool points = !schedule.points.empty();
  mode_->setCurrentIndex(points ? 1 : 0);
  set_points_mode(points);
  table_->setRowCount(0);
  if (points) {
    for (const SchedulePoint& point : schedule.points) {
      const int row = table_->rowCount();
      table_->insertRow(row);
      table_->setItem(row, 0, new QTableWidgetItem(QString::number(point.step)));
      table_->setItem(row, 1, new QTableWidgetItem(format_value(point.value)));
    }
  } else {
    for (double value : schedule.values) {
      const int row = table_->rowCount();
      table_->insertRow(row);
      table_->setItem(row, 0, new QTableWidgetItem(QString::number(row * 100)));
      table_->setItem(row, 1, new QTableWidgetItem(format_value(value)));
    }
  }
}

Schedule ScheduleTable::schedule(QStringList* errors) const {
  Schedule schedule;
  const bool points = uses_points();
  for (int row = 0; row < table_->rowCount(); ++row) {
    const QString value_text =
        table_->item(row, 1) ? table_->item(row, 1)->text().trimmed() : QString();
    bool ok = false;
    const double value = value_text.toDouble(&ok);
    if (!ok) {
      if (errors) errors->append(tr("row %1: '%2' is not a number").arg(row + 1).arg(value_text));
      continue;
    }
    if (!points) {
      schedule.values.push_back(value);
      continue;
    }
    const QString step_text =
        table_->item(row, 0) ? table_->item(row, 0)->text().trimmed() : QString();
    const qint64 step = step_text.toLongLong(&ok);
    if (!ok) {
      if (errors)
        errors->append(tr("row %1: step '%2' is not an integer").arg(row + 1).arg(step_text));
      continue;
    }
    schedule.points.push_back({step, value});
  }
  return schedule;
}

ScheduleEditor::ScheduleEditor(QWidget* parent) : QWidget(parent) {
  granularity_ = new QComboBox(this);
  granularity_->setAccessibleName(tr("SSD granularity"));
  for (std::string_view name : choices::kSsdGranularities)
    granularity_->addItem(QString::fromUtf8(name.data(), static_cast<qsizetype>(name.size())));
  dropout_ = new ScheduleTable(tr("p"), this);
  dropout_->setObjectName("ssdDropout");
  window_enabled_ = new QCheckBox(tr("Window schedule"), this);
  window_ = new ScheduleTable(tr("window"), this);
  window_->setObjectName("ssdWindow");
  window_->setEnabled(false);

  plot_ = new QCustomPlot(this);
  plot_->setAccessibleName(tr("SSD schedule plot"));
  plot_->setMinimumHeight(150);
  plot_->xAxis->setLabel(tr("stage step"));
  plot_->yAxis->setLabel(tr("drop probability p"));
  plot_->yAxis2->setVisible(true);
  plot_->yAxis2->setLabel(tr("window"));
  plot_->legend->setVisible(true);
  plot_->addGraph(plot_->xAxis, plot_->yAxis)->setName(tr("p"));
  plot_->addGraph(plot_->xAxis, plot_->yAxis2)->setName(tr("window"));
  plot_->graph(0)->setLineStyle(QCPGraph::lsStepLeft);
  plot_->graph(1)->setLineStyle(QCPGraph::lsStepLeft);
  plot_->graph(0)->setPen(QPen(run_colour(1), 2));
  plot_->graph(1)->setPen(QPen(run_colour(2), 2, Qt::DashLine));
  style_plot(plot_, palette());

  connect(granularity_, &QComboBox::currentIndexChanged, this, &ScheduleEditor::changed);
  connect(dropout_, &ScheduleTable::changed, this, [this] {
    update_plot();
    emit changed();
  });
  connect(window_, &ScheduleTable::changed, this, [this] {
    update_plot();
    emit changed();
  });
  connect(window_enabled_, &QCheckBox::toggled, this, [this](bool on) {
    window_->setEnabled(on);
    if (on && window_->table()->rowCount() == 0) {
      Schedule initial;
      initial.values = {static_cast<double>(default_window_)};
      window_->set_schedule(initial);
    }
    update_plot();
    emit changed();
  });

  auto* form = new QFormLayout;
  form->addRow(tr("Granularity"), granularity_);
  form->addRow(tr("Drop probability"), dropout_);
  form->addRow(window_enabled_, window_);
  auto* layout = new QHBoxLayout(this);
  layout->setContentsMargins(0, 0, 0, 0);
  layout->addLayout(form, 1);
  layout->addWidget(plot_, 1);
  update_plot();
}

void ScheduleEditor::set_ssd(const SsdSpec& ssd) {
  {
    QSignalBlocker block(granularity_);
    QSignalBlocker block_window(window_enabled_);
    granularity_->setCurrentText(QString::fromStdString(ssd.granularity));
    window_enabled_->setChecked(ssd.window.has_value());
    window_->setEnabled(ssd.window.has_value());
  }
  QSignalBlocker block_dropout(dropout_);
  QSignalBlocker block_window_table(window_);
  dropout_->set_schedule(ssd.swa_dropout);
  window_->set_schedule(ssd.window.value_or(Schedule{}));
  update_plot();
}

SsdSpec ScheduleEditor::ssd(QStringList* errors) const {
  SsdSpec ssd;
  ssd.granularity = granularity_->currentText().toStdString();
  QStringList cell_errors;
  ssd.swa_dropout = dropout_->schedule(&cell_errors);
  if (errors)
    for (const QString& error : cell_errors)
      errors->append(QStringLiteral("swa_dropout: ") + error);
  if (window_enabled_->isChecked()) {
    cell_errors.clear();
    ssd.window = window_->schedule(&cell_errors);
    if (errors)
      for (const QString& error : cell_errors)
        errors->append(QStringLiteral("window: ") + error);
  }
  return ssd;
}

void ScheduleEditor::set_total_steps(int64_t steps) {
  total_steps_ = std::max<int64_t>(steps, 1);
  update_plot();
}

void ScheduleEditor::set_default_window(int64_t window) {
  default_window_ = window;
  update_plot();
}

void ScheduleEditor::update_plot() {
  auto sample = [this](const Schedule& schedule, QCPGraph* graph) {
    QVector<double> keys, values;
    if (!schedule.values.empty() || !schedule.points.empty()) {
      // Step-wise curves change only at a handful of steps; sampling every step of long
      // stages would only cost time, so at most ~2000 samples are taken.
      const int64_t stride = std::max<int64_t>(1, total_steps_ / 2000);
      for (int64_t step = 0; step < total_steps_; step += stride) {
        keys << static_cast<double>(step);
        values << schedule_value(schedule, step, total_steps_);
      }
      keys << static_cast<double>(total_steps_);
      values << schedule_value(schedule, total_steps_ - 1, total_steps_);
    }
    graph->setData(keys, values, true);
  };
  sample(dropout_->schedule(), plot_->graph(0));
  Schedule window;
  if (window_enabled_->isChecked()) window = window_->schedule();
  if (window.values.empty() && window.points.empty())
    window.values = {static_cast<double>(default_window_)};
  sample(window, plot_->graph(1));
  plot_->xAxis->setRange(0, static_cast<double>(total_steps_));
  plot_->yAxis->setRange(0, 1.05);
  plot_->graph(1)->rescaleValueAxis(false, true);
  QCPRange window_range = plot_->yAxis2->range();
  plot_->yAxis2->setRange(0, std::max(1.0, window_range.upper * 1.1));
  plot_->replot(QCustomPlot::rpQueuedReplot);
}

}  // namespace hl::ui
