#include "ui/launch_panel.hpp"

#include <QHBoxLayout>
#include <QLabel>
#include <QListWidget>
#include <QPlainTextEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QSplitter>
#include <QVBoxLayout>
#include <algorithm>
#include <cmath>

#include "ui/launcher.hpp"

namespace hl::ui {

QString LaunchPanel::format_eta(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return QStringLiteral("–");
  const qint64 total = static_cast<qint64>(std::llround(seconds));
  const qint64 hours = total / 3600, minutes = (total / 60) % 60, secs = total % 60;
  if (hours > 0)
    return QStringLiteral("%1:%2:%3")
        .arg(hours)
        .arg(minutes, 2, 10, QLatin1Char('0'))
        .arg(secs, 2, 10, QLatin1Char('0'));
  return QStringLiteral("%1:%2").arg(minutes).arg(secs, 2, 10, QLatin1Char('0'));
}

LaunchPanel::LaunchPanel(Launcher* launcher, QWidget* parent)
    : QWidget(parent), launcher_(launcher) {
  queue_ = new QListWidget(this);
  queue_->setAccessibleName(tr("Job queue"));
  progress_ = new QProgressBar(this);
  progress_->setAccessibleName(tr("Run progress"));
  progress_->setRange(0, 1);
  progress_->setValue(0);
  progress_->setFormat(QStringLiteral("%p%"));
  status_ = new QLabel(tr("Idle"), this);
  status_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  log_ = new QPlainTextEdit(this);
  log_->setReadOnly(true);
  log_->setAccessibleName(tr("Run log"));
  log_->setMaximumBlockCount(5000);  // a long run must not grow the view without bound
  log_->setFont(QFontDatabase::systemFont(QFontDatabase::FixedFont));
  cancel_ = new QPushButton(tr("Cancel"), this);
  cancel_->setToolTip(tr("Stop the run gracefully: it writes a checkpoint and exits (Ctrl+.)"));
  cancel_->setShortcut(QKeySequence(Qt::CTRL | Qt::Key_Period));
  resume_ = new QPushButton(tr("Resume"), this);
  resume_->setToolTip(tr("Continue the selected cancelled or failed run from its checkpoint"));
  connect(cancel_, &QPushButton::clicked, this, &LaunchPanel::cancel_selected);
  connect(resume_, &QPushButton::clicked, this, &LaunchPanel::resume_selected);
  connect(queue_, &QListWidget::currentRowChanged, this, [this] { refresh_queue(); });

  connect(launcher_, &Launcher::jobQueued, this, [this] { refresh_queue(); });
  connect(launcher_, &Launcher::jobStarted, this, [this](int id) {
    const Launcher::Job* job = launcher_->job(id);
    if (launcher_->running_jobs().size() <= 1) {
      progress_->setRange(0, 0);  // busy until the first progress line
      status_->setText(tr("Starting %1…").arg(job ? job->label : QString()));
    } else {
      show_running();
    }
    refresh_queue();
  });
  connect(launcher_, &Launcher::runAnnounced, this, [this] { refresh_queue(); });
  connect(launcher_, &Launcher::progress, this, [this] { show_running(); });
  connect(launcher_, &Launcher::logLine, this, [this](int id, const QString& line) {
    // Jobs side by side interleave their lines; the job id tells them apart.
    const Launcher::Job* job = launcher_->job(id);
    log_->appendPlainText(job && job->parallel ? QStringLiteral("#%1 %2").arg(id).arg(line) : line);
  });
  connect(launcher_, &Launcher::jobFinished, this,
          [this](int id, Launcher::JobState state, int exit_code) {
            const Launcher::Job* job = launcher_->job(id);
            const QString line = tr("%1: %2%3")
                                     .arg(job ? job->label : QString(), to_string(state),
                                          job && !job->status_message.isEmpty()
                                              ? QStringLiteral(" — ") + job->status_message
                                              : QString());
            if (launcher_->running_jobs().isEmpty()) {
              progress_->setRange(0, 1);
              progress_->setValue(state == Launcher::JobState::finished ? 1 : 0);
              status_->setText(line);
            } else {
              show_running();
            }
            refresh_queue();
          });

  auto* buttons = new QHBoxLayout;
  buttons->addWidget(progress_, 1);
  buttons->addWidget(cancel_);
  buttons->addWidget(resume_);
  auto* top = new QWidget(this);
  auto* top_layout = new QVBoxLayout(top);
  top_layout->setContentsMargins(0, 0, 0, 0);
  top_layout->addWidget(new QLabel(tr("Queue"), top));
  top_layout->addWidget(queue_);
  auto* splitter = new QSplitter(Qt::Vertical, this);
  splitter->addWidget(top);
  splitter->addWidget(log_);
  splitter->setStretchFactor(1, 2);
  auto* layout = new QVBoxLayout(this);
  layout->addLayout(buttons);
  layout->addWidget(status_);
  layout->addWidget(splitter, 1);
  refresh_queue();
}

int LaunchPanel::selected_job() const {
  QListWidgetItem* item = queue_->currentItem();
  return item ? item->data(Qt::UserRole).toInt() : -1;
}

void LaunchPanel::refresh_queue() {
  const int selected = selected_job();
  QSignalBlocker blocker(queue_);
  queue_->clear();
  for (const Launcher::Job& job : launcher_->jobs()) {
    QString text = QStringLiteral("#%1  %2  [%3]").arg(job.id).arg(job.label, to_string(job.state));
    if (job.run_id > 0) text += tr("  run %1").arg(job.run_id);
    auto* item = new QListWidgetItem(text, queue_);
    item->setData(Qt::UserRole, job.id);
    if (job.id == selected) queue_->setCurrentItem(item);
  }
  const Launcher::Job* job = launcher_->job(selected);
  cancel_->setEnabled(!launcher_->running_jobs().isEmpty() ||
                      (job && job->state == Launcher::JobState::queued));
  resume_->setEnabled(
      job && job->run_id > 0 && !job->experiment.isEmpty() &&
      (job->state == Launcher::JobState::cancelled || job->state == Launcher::JobState::failed));
}

QString LaunchPanel::describe(const Launcher::Job& job) {
  const ProgressMessage& message = job.last_progress;
  if (message.total <= 0) return tr("%1: starting…").arg(job.label);
  QString text = tr("%1: %2 %3/%4 — step %5/%6 — ETA %7")
                     .arg(job.label, message.phase)
                     .arg(message.phase_index + 1)
                     .arg(message.phases)
                     .arg(message.step)
                     .arg(message.total)
                     .arg(format_eta(message.eta_s));
  if (message.tokens_per_s > 0) text += tr(" — %1 tok/s").arg(message.tokens_per_s, 0, 'f', 0);
  auto loss = message.metrics.find(QStringLiteral("loss"));
  if (loss != message.metrics.end()) text += tr(" — loss %1").arg(loss->second, 0, 'g', 4);
  return text;
}

void LaunchPanel::show_running() {
  const QList<int> running = launcher_->running_jobs();
  if (running.isEmpty()) return;
  QStringList lines;
  double fraction = 0;
  bool any_total = false;
  for (int id : running) {
    const Launcher::Job* job = launcher_->job(id);
    if (!job) continue;
    lines << describe(*job);
    const ProgressMessage& message = job->last_progress;
    if (message.total > 0) {
      any_total = true;
      fraction += std::clamp(double(message.step) / double(message.total), 0.0, 1.0);
    }
  }
  status_->setText(lines.join('\n'));
  if (!any_total) {
    progress_->setRange(0, 0);
    return;
  }
  if (running.size() == 1) {
    const ProgressMessage& message = launcher_->job(running.front())->last_progress;
    progress_->setRange(0, static_cast<int>(std::min<qint64>(message.total, 1 << 30)));
    progress_->setValue(static_cast<int>(std::min(message.step, message.total)));
    return;
  }
  // Several jobs: the bar shows their mean progress.
  progress_->setRange(0, 1000);
  progress_->setValue(static_cast<int>(1000 * fraction / running.size()));
}

void LaunchPanel::cancel_selected() {
  const int selected = selected_job();
  const Launcher::Job* job = launcher_->job(selected);
  if (job &&
      (job->state == Launcher::JobState::queued || job->state == Launcher::JobState::running))
    launcher_->cancel(selected);
  else
    for (int running : launcher_->running_jobs())
      launcher_->cancel(running);
  refresh_queue();
}

void LaunchPanel::resume_selected() {
  launcher_->resume(selected_job());
  refresh_queue();
}

}  // namespace hl::ui
