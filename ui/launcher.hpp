// Launches runs as child processes of hybridlab-cli and reads their JSON-lines progress
// protocol (core/run/progress.hpp). Jobs run one at a time from a queue; a crash of a run
// never takes the workbench down.
#pragma once

#include <QByteArray>
#include <QJsonObject>
#include <QObject>
#include <QProcess>
#include <QString>
#include <QStringList>
#include <deque>
#include <map>
#include <optional>

namespace hl::ui {

/// One line of `hybridlab-cli ... --progress json`, decoded.
struct ProgressMessage {
  enum class Type { run, progress, event, status };
  Type type = Type::progress;
  // "run"
  qint64 run_id = 0;
  QString uuid;
  QString db;
  // "progress"
  QString phase;
  int phase_index = 0;
  int phases = 1;
  qint64 step = 0;
  qint64 total = 0;
  double elapsed_s = 0;
  double eta_s = 0;
  double tokens_per_s = 0;
  std::map<QString, double> metrics;
  // "event"
  QString level;
  QString kind;
  // "event" and "status"
  QString message;
  // "status"
  QString status;
};

/// Decodes one protocol line; an error names what is wrong (not JSON, unknown type, a
/// missing or mistyped field).
std::optional<ProgressMessage> parse_progress_line(const QByteArray& line, QString* error);

/// hybridlab-cli next to the running executable, else on PATH; empty if neither.
QString find_cli();

/// A queue of hybridlab-cli commands, executed one after another.
class Launcher : public QObject {
  Q_OBJECT
 public:
  enum class JobState { queued, running, finished, failed, cancelled };
  Q_ENUM(JobState)
  struct Job {
    int id = 0;
    QString label;
    QStringList arguments;  ///< after the program name
    QString experiment;     ///< for run jobs: the experiment file (enables resume)
    QString db;
    JobState state = JobState::queued;
    qint64 run_id = 0;  ///< from the "run" line, 0 until known
    QString status_message;
    int exit_code = -1;
    ProgressMessage last_progress;
  };

  explicit Launcher(QObject* parent = nullptr);
  ~Launcher() override;

  /// The program started for every job (default: find_cli()); tests point it at a double.
  void set_program(const QString& program) { program_ = program; }
  const QString& program() const { return program_; }
  /// Working directory of the child processes (default: the current one).
  void set_working_directory(const QString& directory) { working_directory_ = directory; }

  /// Queues `run EXP --db DB --progress json`; returns the job id.
  int enqueue_run(const QString& experiment_file, const QString& db);
  /// Queues `run EXP --db DB --progress json --resume RUN`.
  int enqueue_resume(const QString& experiment_file, const QString& db, qint64 run_id);
  /// Queues any other subcommand (e.g. pretrain for the demo's base model).
  int enqueue_command(const QStringList& arguments, const QString& label);

  /// Asks a running job to stop (SIGINT: the run checkpoints and exits 130), or drops a
  /// queued one. A job that has not exited after `kill_after_ms` is killed.
  void cancel(int job_id, int kill_after_ms = 30000);
  /// Queues a resume of a cancelled or failed run job; returns the new job id or -1.
  int resume(int job_id);

  const Job* job(int job_id) const;
  const std::deque<Job>& jobs() const { return jobs_; }
  /// The running job's id, or -1.
  int running_job() const { return running_ ? running_id_ : -1; }
  bool busy() const { return running_ != nullptr || has_queued(); }

 signals:
  void jobQueued(int job_id);
  void jobStarted(int job_id);
  void runAnnounced(int job_id, qint64 run_id, const QString& uuid);
  void progress(int job_id, const hl::ui::ProgressMessage& message);
  void event(int job_id, const QString& level, const QString& kind, const QString& message);
  /// Any line the child printed (stdout or stderr), for the log view.
  void logLine(int job_id, const QString& line);
  void jobFinished(int job_id, hl::ui::Launcher::JobState state, int exit_code);
  void queueEmpty();

 private:
  int add(Job job);
  bool has_queued() const;
  Job* find(int job_id);
  void start_next();
  void read_stdout();
  void read_stderr();
  void handle_line(const QByteArray& line);
  void on_finished(int exit_code, QProcess::ExitStatus exit_status);
  void on_error(QProcess::ProcessError error);

  QString program_;
  QString working_directory_;
  std::deque<Job> jobs_;
  int next_id_ = 1;
  int running_id_ = -1;
  QProcess* running_ = nullptr;
  QByteArray stdout_buffer_;
  QByteArray stderr_buffer_;
  bool cancel_requested_ = false;
  QString final_status_;
};

/// "queued", "running", ...
QString to_string(Launcher::JobState state);

}  // namespace hl::ui
