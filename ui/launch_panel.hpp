// The launch view: the job queue, a progress bar with ETA, the log, cancel and resume.
#pragma once

#include <QWidget>

#include "ui/launcher.hpp"

class QListWidget;
class QPlainTextEdit;
class QProgressBar;
class QLabel;
class QPushButton;

namespace hl::ui {

/// Shows what a Launcher does; never blocks (all updates come from its signals). Jobs that
/// run side by side get a status line each and share the progress bar.
class LaunchPanel : public QWidget {
  Q_OBJECT
 public:
  explicit LaunchPanel(Launcher* launcher, QWidget* parent = nullptr);

  QProgressBar* progress_bar() const { return progress_; }
  QLabel* status_label() const { return status_; }
  QPlainTextEdit* log_view() const { return log_; }

  /// "1:02:03" / "4:05" for an ETA in seconds.
  static QString format_eta(double seconds);

 public slots:
  /// Cancels the selected queued or running job, else every running one.
  void cancel_selected();
  /// Resumes the selected cancelled or failed run.
  void resume_selected();

 private:
  void refresh_queue();
  // The status line of each running job, and their progress on the bar.
  void show_running();
  static QString describe(const Launcher::Job& job);
  int selected_job() const;

  Launcher* launcher_;
  QListWidget* queue_;
  QProgressBar* progress_;
  QLabel* status_;
  QPlainTextEdit* log_;
  QPushButton* cancel_;
  QPushButton* resume_;
};

}  // namespace hl::ui
