// Launches runs as child processes of hybridlab-cli and reads their JSON-lines progress
// protocol (core/run/progress.hpp). Jobs run from a queue, one at a time unless they are
// marked parallel (the demo's two runs); a crash of a run never takes the workbench down.
#pragma once

#include <QByteArray>
#include <QJsonObject>
#include <QObject>
#include <QProcess>
#include <QString>
#include <QStringList>
#include <algorithm>
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

/// How a job is scheduled (see Launcher::Job).
struct LaunchSchedule {
  bool parallel = false;  ///< may run beside other parallel jobs
  int threads = 0;        ///< CPU threads of the process; 0 = its default
  int after = 0;          ///< the id of a job that must finish first
};

/// A queue of hybridlab-cli commands, started in order. A job runs alone unless it is
/// parallel: parallel jobs run side by side, up to max_parallel() at once.
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
    bool parallel = false;  ///< may run beside other parallel jobs
    int threads = 0;        ///< CPU threads of the process (OMP/MKL); 0 = its default
    int after = 0;          ///< a job that must finish first; if it fails, this one is dropped
  };
  using Schedule = LaunchSchedule;

  explicit Launcher(QObject* parent = nullptr);
  ~Launcher() override;

  /// The program started for every job (default: find_cli()); tests point it at a double.
  void set_program(const QString& program) { program_ = program; }
  const QString& program() const { return program_; }
  /// Working directory of the child processes (default: the current one).
  void set_working_directory(const QString& directory) { working_directory_ = directory; }

  /// Queues `run EXP --db DB --progress json`; returns the job id.
  int enqueue_run(const QString& experiment_file, const QString& db, const Schedule& schedule = {});
  /// Queues `run EXP --db DB --progress json --resume RUN`.
  int enqueue_resume(const QString& experiment_file, const QString& db, qint64 run_id);
  /// Queues any other subcommand (e.g. pretrain for the demo's base model).
  int enqueue_command(const QStringList& arguments, const QString& label,
                      const Schedule& schedule = {});
  /// How many parallel jobs may run at once (default 2).
  void set_max_parallel(int jobs) { max_parallel_ = std::max(1, jobs); }
  int max_parallel() const { return max_parallel_; }

  /// Asks a running job to stop (SIGINT: the run checkpoints and exits 130), or drops a
  /// queued one (and the queued jobs that wait for it). A job that has not exited after
  /// `kill_after_ms` is killed.
  void cancel(int job_id, int kill_after_ms = 30000);
  /// Queues a resume of a cancelled or failed run job; returns the new job id or -1.
  int resume(int job_id);

  const Job* job(int job_id) const;
  const std::deque<Job>& jobs() const { return jobs_; }
  /// The first running job's id, or -1.
  int running_job() const { return running_.empty() ? -1 : running_.begin()->first; }
  /// The ids of all running jobs, ascending.
  QList<int> running_jobs() const;
  bool busy() const { return !running_.empty() || has_queued(); }

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
  // A started process and what it printed but did not end with a newline yet.
  struct Process {
    QProcess* process = nullptr;
    QByteArray stdout_buffer;
    QByteArray stderr_buffer;
    bool cancel_requested = false;
    QString final_status;
  };
  int add(Job job, const Schedule& schedule);
  bool has_queued() const;
  Job* find(int job_id);
  Job* next_startable();
  void start_next();
  void start(Job& job);
  void read_stdout(int job_id);
  void read_stderr(int job_id);
  void handle_line(int job_id, const QByteArray& line);
  void on_finished(int job_id, int exit_code, QProcess::ExitStatus exit_status);
  void on_error(int job_id, QProcess::ProcessError error);
  void drop_dependents(int job_id);

  QString program_;
  QString working_directory_;
  std::deque<Job> jobs_;
  int next_id_ = 1;
  int max_parallel_ = 2;
  std::map<int, Process> running_;
};

/// "queued", "running", ...
QString to_string(Launcher::JobState state);

}  // namespace hl::ui
