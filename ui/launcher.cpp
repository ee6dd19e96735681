#include "ui/launcher.hpp"

#include <QCoreApplication>
#include <QDir>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
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
  if (running_) {
    // The workbench is closing: let the run checkpoint, but do not hang the exit on it.
    running_->disconnect(this);
    ::kill(static_cast<pid_t>(running_->processId()), SIGINT);
    if (!running_->waitForFinished(5000)) running_->kill();
    running_->waitForFinished(1000);
  }
}

int Launcher::enqueue_run(const QString& experiment_file, const QString& db) {
  Job job;
  job.label = QFileInfo(experiment_file).fileName();
  job.experiment = experiment_file;
  job.db = db;
  job.arguments = {QStringLiteral("run"),        experiment_file,       QStringLiteral("--db"), db,
                   QStringLiteral("--progress"), QStringLiteral("json")};
  return add(std::move(job));
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
  return add(std::move(job));
}

int Launcher::enqueue_command(const QStringList& arguments, const QString& label) {
  Job job;
  job.label = label;
  job.arguments = arguments;
  return add(std::move(job));
}

int Launcher::add(Job job) {
  job.id = next_id_++;
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

Launcher::Job* Launcher::find(int job_id) {
  for (Job& job : jobs_)
    if (job.id == job_id) return &job;
  return nullptr;
}

const Launcher::Job* Launcher::job(int job_id) const {
  return const_cast<Launcher*>(this)->find(job_id);
}

void Launcher::start_next() {
  if (running_) return;
  auto next = std::find_if(jobs_.begin(), jobs_.end(),
                           [](const Job& job) { return job.state == JobState::queued; });
  if (next == jobs_.end()) {
    emit queueEmpty();
    return;
  }
  Job& job = *next;
  job.state = JobState::running;
  running_id_ = job.id;
  cancel_requested_ = false;
  final_status_.clear();
  stdout_buffer_.clear();
  stderr_buffer_.clear();
  running_ = new QProcess(this);
  if (!working_directory_.isEmpty()) running_->setWorkingDirectory(working_directory_);
  connect(running_, &QProcess::readyReadStandardOutput, this, &Launcher::read_stdout);
  connect(running_, &QProcess::readyReadStandardError, this, &Launcher::read_stderr);
  connect(running_, &QProcess::finished, this, &Launcher::on_finished);
  connect(running_, &QProcess::errorOccurred, this, &Launcher::on_error);
  emit jobStarted(job.id);
  emit logLine(job.id, QStringLiteral("$ %1 %2").arg(program_, job.arguments.join(' ')));
  if (program_.isEmpty()) {
    emit logLine(job.id, tr("hybridlab-cli was found neither next to hybridlab nor on PATH"));
    on_error(QProcess::FailedToStart);
    return;
  }
  running_->start(program_, job.arguments);
}

void Launcher::read_stdout() {
  stdout_buffer_ += running_->readAllStandardOutput();
  qsizetype newline;
  while ((newline = stdout_buffer_.indexOf('\n')) >= 0) {
    const QByteArray line = stdout_buffer_.left(newline).trimmed();
    stdout_buffer_.remove(0, newline + 1);
    if (!line.isEmpty()) handle_line(line);
  }
}

void Launcher::read_stderr() {
  stderr_buffer_ += running_->readAllStandardError();
  qsizetype newline;
  while ((newline = stderr_buffer_.indexOf('\n')) >= 0) {
    const QString line = QString::fromUtf8(stderr_buffer_.left(newline)).trimmed();
    stderr_buffer_.remove(0, newline + 1);
    if (!line.isEmpty()) emit logLine(running_id_, line);
  }
}

void Launcher::handle_line(const QByteArray& line) {
  Job* job = find(running_id_);
  QString error;
  std::optional<ProgressMessage> message = parse_progress_line(line, &error);
  if (!message) {
    // Not protocol: plain output (or a protocol error) goes to the log as it is.
    emit logLine(running_id_, QString::fromUtf8(line));
    return;
  }
  switch (message->type) {
    case ProgressMessage::Type::run:
      if (job) job->run_id = message->run_id;
      emit logLine(running_id_,
                   tr("run %1 (%2) in %3").arg(message->run_id).arg(message->uuid, message->db));
      emit runAnnounced(running_id_, message->run_id, message->uuid);
      break;
    case ProgressMessage::Type::progress:
      if (job) job->last_progress = *message;
      emit progress(running_id_, *message);
      break;
    case ProgressMessage::Type::event:
      emit logLine(
          running_id_,
          QStringLiteral("[%1] %2: %3").arg(message->level, message->kind, message->message));
      emit event(running_id_, message->level, message->kind, message->message);
      break;
    case ProgressMessage::Type::status:
      final_status_ = message->status;
      if (job) job->status_message = message->message;
      emit logLine(running_id_, message->message.isEmpty()
                                    ? message->status
                                    : message->status + QStringLiteral(": ") + message->message);
      break;
  }
}

void Launcher::on_finished(int exit_code, QProcess::ExitStatus exit_status) {
  if (!running_) return;
  read_stdout();
  if (!stdout_buffer_.trimmed().isEmpty()) handle_line(stdout_buffer_.trimmed());
  read_stderr();
  Job* job = find(running_id_);
  const int id = running_id_;
  JobState state = JobState::failed;
  // Exit 130 (or a SIGINT death after our request) is the CLI's "cancelled, checkpointed".
  if (exit_status == QProcess::NormalExit && exit_code == 0)
    state = JobState::finished;
  else if (exit_code == 130 || final_status_ == QLatin1String("cancelled") || cancel_requested_)
    state = JobState::cancelled;
  if (job) {
    job->state = state;
    job->exit_code = exit_status == QProcess::NormalExit ? exit_code : -1;
  }
  emit logLine(id, tr("exit %1 (%2)").arg(exit_code).arg(to_string(state)));
  running_->deleteLater();
  running_ = nullptr;
  running_id_ = -1;
  emit jobFinished(id, state, job ? job->exit_code : exit_code);
  start_next();
}

void Launcher::on_error(QProcess::ProcessError error) {
  if (error != QProcess::FailedToStart || !running_) return;
  Job* job = find(running_id_);
  const int id = running_id_;
  if (job) {
    job->state = JobState::failed;
    job->status_message = tr("could not start %1: %2").arg(program_, running_->errorString());
    emit logLine(id, job->status_message);
  }
  running_->deleteLater();
  running_ = nullptr;
  running_id_ = -1;
  emit jobFinished(id, JobState::failed, -1);
  QTimer::singleShot(0, this, &Launcher::start_next);
}

void Launcher::cancel(int job_id, int kill_after_ms) {
  Job* job = find(job_id);
  if (!job) return;
  if (job->state == JobState::queued) {
    job->state = JobState::cancelled;
    emit jobFinished(job_id, JobState::cancelled, -1);
    return;
  }
  if (job->state != JobState::running || job_id != running_id_ || !running_) return;
  cancel_requested_ = true;
  emit logLine(job_id, tr("cancelling: the run writes a checkpoint and stops"));
  ::kill(static_cast<pid_t>(running_->processId()), SIGINT);
  QPointer<QProcess> process = running_;
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
