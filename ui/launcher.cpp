#include "ui/launcher.hpp"

#include <QCoreApplication>
#include <QDir>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QPointer>
#include <QProcessEnvironment>
#include <QStandardPaths>
#include <QTimer>
#include <csignal>

namespace hl::ui {
namespace {

bool read_number(const QJsonObject& object, const char* key, double* out, QString* error,
                 bool required = true) {
  const QJsonValue value = object.value(QLatin1String(key));
  if (value.isUndefined()) {
    if (required && error) *error = QStringLiteral("field '%1' is missing").arg(key);
    return !required;
  }
  if (!value.isDouble()) {
    if (error) *error = QStringLiteral("field '%1' must be a number").arg(key);
    return false;
  }
  *out = value.toDouble();
  return true;
}

bool read_string(const QJsonObject& object, const char* key, QString* out, QString* error) {
  const QJsonValue value = object.value(QLatin1String(key));
  if (!value.isString()) {
    if (error)
      *error = value.isUndefined() ? QStringLiteral("field '%1' is missing").arg(key)
                                   : QStringLiteral("field '%1' must be a string").arg(key);
    return false;
  }
  *out = value.toString();
  return true;
}

}  // namespace

std::optional<ProgressMessage> parse_progress_line(const QByteArray& line, QString* error) {
  QJsonParseError parse_error;
  const QJsonDocument document = QJsonDocument::fromJson(line, &parse_error);
  if (parse_error.error != QJsonParseError::NoError || !document.isObject()) {
    if (error)
      *error = QStringLiteral("not a JSON object (%1 at offset %2)")
                   .arg(parse_error.errorString())
                   .arg(parse_error.offset);
    return std::nullopt;
  }
  const QJsonObject object = document.object();
  QString type;
  if (!read_string(object, "type", &type, error)) return std::nullopt;
  ProgressMessage message;
  double number = 0;
  if (type == QLatin1String("run")) {
    message.type = ProgressMessage::Type::run;
    if (!read_number(object, "run_id", &number, error)) return std::nullopt;
    message.run_id = static_cast<qint64>(number);
    if (!read_string(object, "uuid", &message.uuid, error)) return std::nullopt;
    if (!read_string(object, "db", &message.db, error)) return std::nullopt;
    return message;
  }
  if (type == QLatin1String("progress")) {
    message.type = ProgressMessage::Type::progress;
    if (!read_string(object, "phase", &message.phase, error)) return std::nullopt;
    if (!read_number(object, "step", &number, error)) return std::nullopt;
    message.step = static_cast<qint64>(number);
    if (!read_number(object, "total", &number, error)) return std::nullopt;
    message.total = static_cast<qint64>(number);
    number = 0;
    if (!read_number(object, "phase_index", &number, error, false)) return std::nullopt;
    message.phase_index = static_cast<int>(number);
    number = 1;
    if (!read_number(object, "phases", &number, error, false)) return std::nullopt;
    message.phases = static_cast<int>(number);
    if (!read_number(object, "elapsed_s", &message.elapsed_s, error, false)) return std::nullopt;
    if (!read_number(object, "eta_s", &message.eta_s, error, false)) return std::nullopt;
    if (!read_number(object, "tokens_per_s", &message.tokens_per_s, error, false))
      return std::nullopt;
    const QJsonValue metrics = object.value(QLatin1String("metrics"));
    if (!metrics.isUndefined() && !metrics.isObject()) {
      if (error) *error = QStringLiteral("field 'metrics' must be an object");
      return std::nullopt;
    }
    const QJsonObject values = metrics.toObject();
    for (auto it = values.begin(); it != values.end(); ++it)
      if (it->isDouble()) message.metrics[it.key()] = it->toDouble();
    return message;
  }
  if (type == QLatin1String("event")) {
    message.type = ProgressMessage::Type::event;
    if (!read_string(object, "level", &message.level, error)) return std::nullopt;
    if (!read_string(object, "kind", &message.kind, error)) return std::nullopt;
    if (!read_string(object, "message", &message.message, error)) return std::nullopt;
    return message;
  }
  if (type == QLatin1String("status")) {
    message.type = ProgressMessage::Type::status;
    if (!read_string(object, "status", &message.status, error)) return std::nullopt;
    if (!read_string(object, "message", &message.message, error)) return std::nullopt;
    return message;
  }
  if (error) *error = QStringLiteral("unknown message type '%1'").arg(type);
  return std::nullopt;
}

QString find_cli() {
  const QString beside =
      QDir(QCoreApplication::applicationDirPath()).filePath(QStringLiteral("hybridlab-cli"));
  if (QFileInfo(beside).isExecutable()) return beside;
  // In a build tree the GUI is in app/ next to the CLI, tests are in tests/.
  const QString build_tree =
      QDir(QCoreApplication::applicationDirPath()).filePath(QStringLiteral("../app/hybridlab-cli"));
  if (QFileInfo(build_tree).isExecutable()) return QFileInfo(build_tree).canonicalFilePath();
  return QStandardPaths::findExecutable(QStringLiteral("hybridlab-cli"));
}

QString to_string(Launcher::JobState state) {
  switch (state) {
    case Launcher::JobState::queued:
      return QStringLiteral("queued");
    case Launcher::JobState::running:
      return QStringLiteral("running");
    case Launcher::JobState::finished:
      return QStringLiteral("finished");
    case Launcher::JobState::failed:
      return QStringLiteral("failed");
    case Launcher::JobState::cancelled:
      return QStringLiteral("cancelled");
  }
  return {};
}

Launcher::Launcher(QObject* parent) : QObject(parent), program_(find_cli()) {}

Launcher::~Launcher() {
  // The workbench is closing: let the runs checkpoint, but do not hang the exit on them.
  for (auto& [id, running] : running_) {
    running.process->disconnect(this);
    ::kill(static_cast<pid_t>(running.process->processId()), SIGINT);
  }
  for (auto& [id, running] : running_) {
    if (!running.process->waitForFinished(5000)) running.process->kill();
    running.process->waitForFinished(1000);
  }
}

int Launcher::enqueue_run(const QString& experiment_file, const QString& db,
                          const Schedule& schedule) {
  Job job;
  job.label = QFileInfo(experiment_file).fileName();
  job.experiment = experiment_file;
  job.db = db;
  job.arguments = {QStringLiteral("run"),        experiment_file,       QStringLiteral("--db"), db,
                   QStringLiteral("--progress"), QStringLiteral("json")};
  return add(std::move(job), schedule);
}

int Launcher::enqueue_resume(const QString& experiment_file, const QString& db, qint64 run_id) {
  Job job;
  job.label = tr("resume run %1").arg(run_id);
  job.experiment = experiment_file;
  job.db = db;
  job.run_id = run_id;
  job.arguments = {QStringLiteral("run"),        experiment_file,
                   QStringLiteral("--db"),       db,
                   QStringLiteral("--progress"), QStringLiteral("json"),
                   QStringLiteral("--resume"),   QString::number(run_id)};
  return add(std::move(job), {});
}

int Launcher::enqueue_command(const QStringList& arguments, const QString& label,
                              const Schedule& schedule) {
  Job job;
  job.label = label;
  job.arguments = arguments;
  return add(std::move(job), schedule);
}

int Launcher::add(Job job, const Schedule& schedule) {
  job.id = next_id_++;
  job.parallel = schedule.parallel;
  job.threads = schedule.threads;
  job.after = schedule.after;
  const int id = job.id;
  jobs_.push_back(std::move(job));
  emit jobQueued(id);
  // Start from the event loop so that callers can connect to the job's signals first.
  QTimer::singleShot(0, this, &Launcher::start_next);
  return id;
}

bool Launcher::has_queued() const {
  return std::any_of(jobs_.begin(), jobs_.end(),
                     [](const Job& job) { return job.state == JobState::queued; });
}

QList<int> Launcher::running_jobs() const {
  QList<int> ids;
  for (const auto& [id, running] : running_)
    ids << id;
  return ids;
}

Launcher::Job* Launcher::find(int job_id) {
  for (Job& job : jobs_)
    if (job.id == job_id) return &job;
  return nullptr;
}

const Launcher::Job* Launcher::job(int job_id) const {
  return const_cast<Launcher*>(this)->find(job_id);
}

Launcher::Job* Launcher::next_startable() {
  // In queue order: a job that cannot start yet holds back the ones behind it.
  for (Job& job : jobs_) {
    if (job.state != JobState::queued) continue;
    if (job.after > 0) {
      const Job* before = find(job.after);
      if (before && (before->state == JobState::queued || before->state == JobState::running))
        return nullptr;
    }
    if (running_.empty()) return &job;
    const bool all_parallel = std::all_of(running_.begin(), running_.end(), [&](const auto& r) {
      const Job* other = find(r.first);
      return other && other->parallel;
    });
    const bool room = static_cast<int>(running_.size()) < max_parallel_;
    return job.parallel && all_parallel && room ? &job : nullptr;
  }
  return nullptr;
}

void Launcher::start_next() {
  // Looked up afresh each time: starting a job emits signals whose slots may queue more.
  while (Job* job = next_startable())
    start(*job);
  if (running_.empty() && !has_queued()) emit queueEmpty();
}

void Launcher::start(Job& job) {
  const int id = job.id;
  job.state = JobState::running;
  Process& running = running_[id];
  running.process = new QProcess(this);
  QProcess* process = running.process;
  if (!working_directory_.isEmpty()) process->setWorkingDirectory(working_directory_);
  if (job.threads > 0) {
    // LibTorch's CPU kernels take their thread count from these at start-up.
    QProcessEnvironment environment = QProcessEnvironment::systemEnvironment();
    environment.insert(QStringLiteral("OMP_NUM_THREADS"), QString::number(job.threads));
    environment.insert(QStringLiteral("MKL_NUM_THREADS"), QString::number(job.threads));
    process->setProcessEnvironment(environment);
  }
  connect(process, &QProcess::readyReadStandardOutput, this, [this, id] { read_stdout(id); });
  connect(process, &QProcess::readyReadStandardError, this, [this, id] { read_stderr(id); });
  connect(process, &QProcess::finished, this,
          [this, id](int code, QProcess::ExitStatus status) { on_finished(id, code, status); });
  connect(process, &QProcess::errorOccurred, this,
          [this, id](QProcess::ProcessError error) { on_error(id, error); });
  emit jobStarted(id);
  emit logLine(id, QStringLiteral("$ %1 %2").arg(program_, job.arguments.join(' ')));
  if (program_.isEmpty()) {
    emit logLine(id, tr("hybridlab-cli was found neither next to hybridlab nor on PATH"));
    on_error(id, QProcess::FailedToStart);
    return;
  }
  process->start(program_, job.arguments);
}

void Launcher::read_stdout(int job_id) {
  auto found = running_.find(job_id);
  if (found == running_.end()) return;
  Process& running = found->second;
  running.stdout_buffer += running.process->readAllStandardOutput();
  qsizetype newline;
  while ((newline = running.stdout_buffer.indexOf('\n')) >= 0) {
    const QByteArray line = running.stdout_buffer.left(newline).trimmed();
    running.stdout_buffer.remove(0, newline + 1);
    if (!line.isEmpty()) handle_line(job_id, line);
  }
}

void Launcher::read_stderr(int job_id) {
  auto found = running_.find(job_id);
  if (found == running_.end()) return;
  Process& running = found->second;
  running.stderr_buffer += running.process->readAllStandardError();
  qsizetype newline;
  while ((newline = running.stderr_buffer.indexOf('\n')) >= 0) {
    const QString line = QString::fromUtf8(running.stderr_buffer.left(newline)).trimmed();
    running.stderr_buffer.remove(0, newline + 1);
    if (!line.isEmpty()) emit logLine(job_id, line);
  }
}

void Launcher::handle_line(int job_id, const QByteArray& line) {
  Job* job = find(job_id);
  QString error;
  std::optional<ProgressMessage> message = parse_progress_line(line, &error);
  if (!message) {
    // Not protocol: plain output (or a protocol error) goes to the log as it is.
    emit logLine(job_id, QString::fromUtf8(line));
    return;
  }
  switch (message->type) {
    case ProgressMessage::Type::run:
      if (job) job->run_id = message->run_id;
      emit logLine(job_id,
                   tr("run %1 (%2) in %3").arg(message->run_id).arg(message->uuid, message->db));
      emit runAnnounced(job_id, message->run_id, message->uuid);
      break;
    case ProgressMessage::Type::progress:
      if (job) job->last_progress = *message;
      emit progress(job_id, *message);
      break;
    case ProgressMessage::Type::event:
      emit logLine(
          job_id,
          QStringLiteral("[%1] %2: %3").arg(message->level, message->kind, message->message));
      emit event(job_id, message->level, message->kind, message->message);
      break;
    case ProgressMessage::Type::status: {
      auto running = running_.find(job_id);
      if (running != running_.end()) running->second.final_status = message->status;
      if (job) job->status_message = message->message;
      emit logLine(job_id, message->message.isEmpty()
                               ? message->status
                               : message->status + QStringLiteral(": ") + message->message);
      break;
    }
  }
}

void Launcher::on_finished(int job_id, int exit_code, QProcess::ExitStatus exit_status) {
  auto found = running_.find(job_id);
  if (found == running_.end()) return;
  read_stdout(job_id);
  const QByteArray rest = found->second.stdout_buffer.trimmed();
  if (!rest.isEmpty()) handle_line(job_id, rest);
  read_stderr(job_id);
  Job* job = find(job_id);
  JobState state = JobState::failed;
  // Exit 130 (or a SIGINT death after our request) is the CLI's "cancelled, checkpointed".
  if (exit_status == QProcess::NormalExit && exit_code == 0)
    state = JobState::finished;
  else if (exit_code == 130 || found->second.final_status == QLatin1String("cancelled") ||
           found->second.cancel_requested)
    state = JobState::cancelled;
  if (job) {
    job->state = state;
    job->exit_code = exit_status == QProcess::NormalExit ? exit_code : -1;
  }
  emit logLine(job_id, tr("exit %1 (%2)").arg(exit_code).arg(to_string(state)));
  found->second.process->deleteLater();
  running_.erase(found);
  emit jobFinished(job_id, state, job ? job->exit_code : exit_code);
  if (state != JobState::finished) drop_dependents(job_id);
  start_next();
}

void Launcher::on_error(int job_id, QProcess::ProcessError error) {
  auto found = running_.find(job_id);
  if (error != QProcess::FailedToStart || found == running_.end()) return;
  Job* job = find(job_id);
  if (job) {
    job->state = JobState::failed;
    job->status_message =
        tr("could not start %1: %2").arg(program_, found->second.process->errorString());
    emit logLine(job_id, job->status_message);
  }
  found->second.process->deleteLater();
  running_.erase(found);
  emit jobFinished(job_id, JobState::failed, -1);
  drop_dependents(job_id);
  QTimer::singleShot(0, this, &Launcher::start_next);
}

void Launcher::drop_dependents(int job_id) {
  for (Job& job : jobs_) {
    if (job.after != job_id || job.state != JobState::queued) continue;
    job.state = JobState::cancelled;
    job.status_message = tr("job %1 did not finish").arg(job_id);
    emit logLine(job.id, tr("%1: not started, job %2 did not finish").arg(job.label).arg(job_id));
    emit jobFinished(job.id, JobState::cancelled, -1);
    drop_dependents(job.id);
  }
}

void Launcher::cancel(int job_id, int kill_after_ms) {
  Job* job = find(job_id);
  if (!job) return;
  if (job->state == JobState::queued) {
    job->state = JobState::cancelled;
    emit jobFinished(job_id, JobState::cancelled, -1);
    drop_dependents(job_id);
    QTimer::singleShot(0, this, &Launcher::start_next);
    return;
  }
  auto found = running_.find(job_id);
  if (job->state != JobState::running || found == running_.end()) return;
  found->second.cancel_requested = true;
  emit logLine(job_id, tr("cancelling: the run writes a checkpoint and stops"));
  ::kill(static_cast<pid_t>(found->second.process->processId()), SIGINT);
  QPointer<QProcess> process = found->second.process;
  QTimer::singleShot(kill_after_ms, this, [process] {
    if (process && process->state() != QProcess::NotRunning) process->kill();
  });
}

int Launcher::resume(int job_id) {
  const Job* job = this->job(job_id);
  if (!job || job->experiment.isEmpty() || job->run_id <= 0) return -1;
  if (job->state != JobState::cancelled && job->state != JobState::failed) return -1;
  return enqueue_resume(job->experiment, job->db, job->run_id);
}

}  // namespace hl::ui
