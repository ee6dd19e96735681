// The launcher against the JSON-lines protocol. A small shell script stands in for
// hybridlab-cli at the process boundary only (write_fake_cli below); the real CLI is
// exercised by RealCliTest.
#include "ui/launcher.hpp"

#include <QDir>
#include <QFile>
#include <QLabel>
#include <QMap>
#include <QProcess>
#include <QProgressBar>

#include "core/config/experiment_file.hpp"
#include "test_paths.hpp"
#include "ui/launch_panel.hpp"
#include "ui/metric_plot.hpp"
#include "ui/run_store.hpp"
#include "ui_test_util.hpp"

namespace hl::ui {
namespace {

using test::TempStore;
using test::wait_until;

// Writes an executable script that plays hybridlab-cli: it records its arguments and
// prints the given body's output.
QString write_fake_cli(const TempStore& temp, const QString& body) {
  const QString path = temp.file("fake-hybridlab-cli");
  QFile file(path);
  EXPECT_TRUE(file.open(QIODevice::WriteOnly));
  file.write(("#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/args.txt\"\n" + body).toUtf8());
  file.close();
  file.setPermissions(file.permissions() | QFileDevice::ExeOwner);
  return path;
}

TEST(ProgressLineTest, DecodesEveryMessageType) {
  QString error;
  auto run =
      parse_progress_line(R"({"type":"run","run_id":7,"uuid":"ab-cd","db":"/x.sqlite"})", &error);
  ASSERT_TRUE(run) << error.toStdString();
  EXPECT_EQ(run->type, ProgressMessage::Type::run);
  EXPECT_EQ(run->run_id, 7);
  EXPECT_EQ(run->uuid, "ab-cd");
  auto progress = parse_progress_line(
      R"({"type":"progress","phase":"attention_transfer","phase_index":1,"phases":2,"step":40,)"
      R"("total":60,"elapsed_s":4.5,"eta_s":2.25,"tokens_per_s":900.5,"metrics":{"loss":0.5}})",
      &error);
  ASSERT_TRUE(progress) << error.toStdString();
  EXPECT_EQ(progress->phase_index, 1);
  EXPECT_EQ(progress->step, 40);
  EXPECT_EQ(progress->total, 60);
  EXPECT_DOUBLE_EQ(progress->eta_s, 2.25);
  EXPECT_DOUBLE_EQ(progress->metrics.at("loss"), 0.5);
  auto event = parse_progress_line(
      R"({"type":"event","level":"info","kind":"checkpoint","message":"saved"})", &error);
  ASSERT_TRUE(event);
  EXPECT_EQ(event->kind, "checkpoint");
  auto status = parse_progress_line(
      R"({"type":"status","status":"cancelled","message":"at step 3"})", &error);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->status, "cancelled");
}

TEST(ProgressLineTest, NamesWhatIsWrong) {
  QString error;
  EXPECT_FALSE(parse_progress_line("loss 0.5", &error));
  EXPECT_TRUE(error.contains("not a JSON object")) << error.toStdString();
  EXPECT_FALSE(parse_progress_line(R"({"type":"progress","phase":"x","total":3})", &error));
  EXPECT_EQ(error, "field 'step' is missing");
  EXPECT_FALSE(parse_progress_line(R"({"type":"run","run_id":"7","uuid":"u","db":"d"})", &error));
  EXPECT_EQ(error, "field 'run_id' must be a number");
  EXPECT_FALSE(parse_progress_line(R"({"type":"metrics"})", &error));
  EXPECT_EQ(error, "unknown message type 'metrics'");
}

TEST(LauncherTest, RunsAQueueAndReportsTheProtocol) {
  TempStore temp;
  Launcher launcher;
  launcher.set_program(write_fake_cli(temp, R"(
echo '{"type":"run","run_id":42,"uuid":"0000-1111","db":"runs.sqlite"}'
echo 'plain text is logged as it is'
echo '{"type":"progress","phase":"attention_transfer","phase_index":0,"phases":2,"step":5,"total":10,"elapsed_s":1,"eta_s":1,"tokens_per_s":100,"metrics":{"loss":1.25}}'
echo 'a warning on stderr' >&2
echo '{"type":"event","level":"info","kind":"checkpoint","message":"step 5"}'
echo '{"type":"status","status":"completed","message":""}'
exit 0
)"));
  LaunchPanel panel(&launcher);
  QList<int> finished;
  QList<qint64> announced;
  QStringList log;
  int progress_steps = 0;
  QObject::connect(&launcher, &Launcher::jobFinished,
                   [&](int id, Launcher::JobState, int) { finished << id; });
  QObject::connect(&launcher, &Launcher::runAnnounced,
                   [&](int, qint64 run, const QString&) { announced << run; });
  QObject::connect(&launcher, &Launcher::logLine, [&](int, const QString& line) { log << line; });
  QObject::connect(&launcher, &Launcher::progress, [&](int, const ProgressMessage& message) {
    progress_steps += int(message.step);
  });

  const int first = launcher.enqueue_run("a.toml", temp.qpath());
  const int second = launcher.enqueue_run("b.toml", temp.qpath());
  ASSERT_TRUE(wait_until([&] { return finished.size() == 2; }, 10000));
  EXPECT_EQ(finished, (QList<int>{first, second}));  // one after the other, in order
  EXPECT_EQ(launcher.job(first)->state, Launcher::JobState::finished);
  EXPECT_EQ(launcher.job(first)->run_id, 42);
  EXPECT_EQ(announced, (QList<qint64>{42, 42}));
  EXPECT_EQ(progress_steps, 10);
  EXPECT_TRUE(log.contains("plain text is logged as it is"));
  EXPECT_TRUE(log.contains("a warning on stderr"));
  EXPECT_TRUE(log.contains("[info] checkpoint: step 5"));
  EXPECT_EQ(panel.progress_bar()->maximum(), 1);  // finished
  QFile args(temp.file("args.txt"));
  ASSERT_TRUE(args.open(QIODevice::ReadOnly));
  const QStringList calls = QString::fromUtf8(args.readAll()).trimmed().split('\n');
  ASSERT_EQ(calls.size(), 2);
  EXPECT_EQ(calls[0], QStringLiteral("run a.toml --db %1 --progress json").arg(temp.qpath()));
}

TEST(LauncherTest, CancelSendsSigintAndResumeContinuesTheRun) {
  TempStore temp;
  Launcher launcher;
  // Like the real CLI: on SIGINT it reports "cancelled" and exits 130.
  launcher.set_program(write_fake_cli(temp, R"(
trap 'echo "{\"type\":\"status\",\"status\":\"cancelled\",\"message\":\"checkpoint at step 3\"}"; exit 130' INT
echo '{"type":"run","run_id":9,"uuid":"u","db":"d"}'
echo '{"type":"progress","phase":"lora_finetune","step":3,"total":100,"eta_s":3725}'
i=0
while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
exit 0
)"));
  LaunchPanel panel(&launcher);
  QList<Launcher::JobState> states;
  QObject::connect(&launcher, &Launcher::jobFinished,
                   [&](int, Launcher::JobState state, int) { states << state; });
  const int job = launcher.enqueue_run("exp.toml", temp.qpath());
  ASSERT_TRUE(wait_until([&] { return launcher.job(job)->last_progress.step == 3; }));
  EXPECT_TRUE(panel.status_label()->text().contains("ETA 1:02:05"))
      << panel.status_label()->text().toStdString();
  EXPECT_EQ(panel.progress_bar()->value(), 3);
  launcher.cancel(job);
  ASSERT_TRUE(wait_until([&] { return states.size() == 1; }));
  EXPECT_EQ(states[0], Launcher::JobState::cancelled);
  EXPECT_EQ(launcher.job(job)->exit_code, 130);
  EXPECT_EQ(launcher.job(job)->status_message, "checkpoint at step 3");

  const int resumed = launcher.resume(job);
  ASSERT_GT(resumed, 0);
  EXPECT_EQ(launcher.job(resumed)->arguments, (QStringList{"run", "exp.toml", "--db", temp.qpath(),
                                                           "--progress", "json", "--resume", "9"}));
  ASSERT_TRUE(wait_until([&] { return launcher.running_job() == resumed; }));
  launcher.cancel(resumed);
  ASSERT_TRUE(wait_until([&] { return states.size() == 2; }));
  EXPECT_GT(launcher.resume(resumed), 0);  // a cancelled resume can be resumed again
}

TEST(LauncherTest, AMissingProgramFailsTheJobNotTheWorkbench) {
  TempStore temp;
  Launcher launcher;
  launcher.set_program(temp.file("does-not-exist"));
  QList<Launcher::JobState> states;
  QObject::connect(&launcher, &Launcher::jobFinished,
                   [&](int, Launcher::JobState state, int) { states << state; });
  const int job = launcher.enqueue_run("x.toml", temp.qpath());
  ASSERT_TRUE(wait_until([&] { return states.size() == 1; }));
  EXPECT_EQ(states[0], Launcher::JobState::failed);
  EXPECT_TRUE(launcher.job(job)->status_message.contains("does-not-exist"));
}

TEST(LaunchPanelTest, ShowsParallelJobsSideBySide) {
  TempStore temp;
  Launcher launcher;
  // Each job reports half its steps, then waits until told to finish.
  launcher.set_program(write_fake_cli(temp, R"sh(
echo "{\"type\":\"progress\",\"phase\":\"attention_transfer\",\"step\":30,\"total\":60,\"eta_s\":12}"
while [ ! -f "$(dirname "$0")/done" ]; do sleep 0.05; done
exit 0
)sh"));
  LaunchPanel panel(&launcher);
  const int a = launcher.enqueue_run("a.toml", temp.qpath(), {.parallel = true});
  const int b = launcher.enqueue_run("b.toml", temp.qpath(), {.parallel = true});
  ASSERT_TRUE(wait_until([&] {
    return launcher.job(a)->last_progress.step == 30 && launcher.job(b)->last_progress.step == 30;
  }));
  const QString status = panel.status_label()->text();
  EXPECT_TRUE(status.contains("a.toml: attention_transfer")) << status.toStdString();
  EXPECT_TRUE(status.contains("b.toml: attention_transfer")) << status.toStdString();
  EXPECT_EQ(panel.progress_bar()->maximum(), 1000);  // the mean of both, in per mille
  EXPECT_EQ(panel.progress_bar()->value(), 500);
  QFile done(temp.file("done"));
  ASSERT_TRUE(done.open(QIODevice::WriteOnly));
  done.close();
  ASSERT_TRUE(wait_until([&] { return !launcher.busy(); }));
  EXPECT_EQ(panel.progress_bar()->value(), panel.progress_bar()->maximum());
}

TEST(LaunchPanelTest, FormatsEta) {
  EXPECT_EQ(LaunchPanel::format_eta(0), "0:00");
  EXPECT_EQ(LaunchPanel::format_eta(65.4), "1:05");
  EXPECT_EQ(LaunchPanel::format_eta(3725), "1:02:05");
  EXPECT_EQ(LaunchPanel::format_eta(-1), QString::fromUtf8("–"));
}

// Runs `program arguments` to completion; the exit code, or -1 if it did not finish in time.
int run_to_end(const QString& program, const QStringList& arguments, int timeout_ms,
               QByteArray* errors) {
  QProcess process;
  process.start(program, arguments);
  if (!process.waitForFinished(timeout_ms)) {
    process.kill();
    process.waitForFinished();
    return -1;
  }
  *errors = process.readAllStandardError();
  return process.exitStatus() == QProcess::NormalExit ? process.exitCode() : -1;
}

// The acceptance test with the real engine: a tiny run launched through the real CLI (found
// as the workbench finds it: beside the program, in the build tree, or on PATH), its points
// arriving in the plot. It builds its own base model with a few pretraining steps.
TEST(RealCliTest, LaunchedTinyRunArrivesInThePlot) {
  const QString cli = find_cli();
  if (cli.isEmpty()) GTEST_SKIP() << "hybridlab-cli is neither built nor on PATH";
  TempStore temp;
  const QString model = temp.file("tiny-base");
  QByteArray errors;
  const int pretrained = run_to_end(
      cli, {"pretrain", "--preset", "tiny", "--steps", "3", "--out", model, "--progress", "none"},
      120000, &errors);
  if (errors.contains("not available yet")) GTEST_SKIP() << "hybridlab-cli pretrain is not there";
  ASSERT_EQ(pretrained, 0) << errors.toStdString();
  ASSERT_TRUE(QFileInfo::exists(model + "/config.json"));

  // The demo experiment, cut down to a few steps on that model.
  ExperimentParse demo = load_experiment_file(QDir(QString::fromUtf8(hl::test::kSourceDir))
                                                  .filePath("experiments/demo.toml")
                                                  .toStdString());
  ASSERT_TRUE(demo.ok());
  ExperimentSpec spec = *demo.spec;
  spec.name = "real-cli-test";
  spec.model.base = model.toStdString();
  for (StageSpec& stage : spec.stages) {
    stage.steps = 4;
    stage.log_every = 1;
    stage.usage_every = 2;
    stage.eval_every = 4;
    stage.eval_batches = 1;
    stage.checkpoint_every = 4;
  }
  spec.eval.tasks = {"ppl"};
  spec.eval.modes = {"hybrid"};
  spec.eval.max_batches = 1;
  const QString experiment = temp.file("tiny.toml");
  {
    QFile file(experiment);
    ASSERT_TRUE(file.open(QIODevice::WriteOnly));
    file.write(QByteArray::fromStdString(to_toml(spec)));
  }

  Launcher launcher;
  ASSERT_EQ(launcher.program(), cli);
  qint64 run_id = 0;
  QList<Launcher::JobState> states;
  QObject::connect(&launcher, &Launcher::runAnnounced,
                   [&](int, qint64 run, const QString&) { run_id = run; });
  QObject::connect(&launcher, &Launcher::jobFinished,
                   [&](int, Launcher::JobState state, int) { states << state; });
  QStringList log;
  QObject::connect(&launcher, &Launcher::logLine, [&](int, const QString& line) { log << line; });
  const int job = launcher.enqueue_run(experiment, temp.qpath(), {.threads = 1});
  ASSERT_TRUE(wait_until([&] { return run_id > 0 || !states.isEmpty(); }, 60000))
      << log.join('\n').toStdString();
  ASSERT_GT(run_id, 0) << log.join('\n').toStdString();
  RunStore runs;
  runs.set_poll_interval(50);
  runs.open(temp.qpath());
  MetricPlot plot(&runs);
  plot.set_redraw_interval(10);
  plot.set_runs({run_id});
  ASSERT_TRUE(wait_until([&] { return plot.drawn_points(run_id) >= 2; }, 120000))
      << log.join('\n').toStdString();
  ASSERT_TRUE(wait_until([&] { return !states.isEmpty(); }, 120000));
  EXPECT_EQ(states.front(), Launcher::JobState::finished) << log.join('\n').toStdString();
  EXPECT_EQ(launcher.job(job)->exit_code, 0);
  // Both stages logged their loss every step: 4 + 4 points, all of them in the plot.
  ASSERT_TRUE(wait_until([&] { return plot.drawn_points(run_id) == 8; }, 5000))
      << plot.drawn_points(run_id);
}

TEST(LauncherTest, ParallelJobsRunSideBySideAfterTheirPredecessor) {
  TempStore temp;
  Launcher launcher;
  // Each job records its start, its thread setting, waits a little and records its end.
  launcher.set_program(write_fake_cli(temp, R"sh(
dir="$(dirname "$0")"
echo "start $1 ${OMP_NUM_THREADS:-unset}" >> "$dir/order.txt"
sleep 0.3
echo "end $1" >> "$dir/order.txt"
exit 0
)sh"));
  QList<int> finished;
  QObject::connect(&launcher, &Launcher::jobFinished,
                   [&](int id, Launcher::JobState, int) { finished << id; });
  const int base = launcher.enqueue_command({"pretrain"}, "base");
  const int a =
      launcher.enqueue_run("a.toml", temp.qpath(), {.parallel = true, .threads = 1, .after = base});
  const int b =
      launcher.enqueue_run("b.toml", temp.qpath(), {.parallel = true, .threads = 1, .after = base});
  const int last = launcher.enqueue_command({"runs"}, "alone");
  ASSERT_TRUE(wait_until([&] { return launcher.running_jobs().size() == 2; }, 10000));
  EXPECT_EQ(launcher.running_jobs(), (QList<int>{a, b}));
  ASSERT_TRUE(wait_until([&] { return finished.size() == 4; }, 10000));
  EXPECT_EQ(finished.front(), base);
  EXPECT_EQ(finished.back(), last);
  QFile order(temp.file("order.txt"));
  ASSERT_TRUE(order.open(QIODevice::ReadOnly));
  const QStringList lines = QString::fromUtf8(order.readAll()).trimmed().split('\n');
  ASSERT_EQ(lines.size(), 8);
  EXPECT_TRUE(lines[0].startsWith("start pretrain"));
  EXPECT_EQ(lines[1], "end pretrain");
  // a and b both start before either ends, with one thread each; "runs" waits for both.
  EXPECT_EQ(lines[2], "start run 1");
  EXPECT_EQ(lines[3], "start run 1");
  EXPECT_TRUE(lines[4].startsWith("end run") && lines[5].startsWith("end run"));
  EXPECT_TRUE(lines[6].startsWith("start runs"));
  EXPECT_EQ(lines[7], "end runs");
}

TEST(LauncherTest, AFailedPredecessorDropsItsDependents) {
  TempStore temp;
  Launcher launcher;
  launcher.set_program(write_fake_cli(temp, "exit 1\n"));
  QMap<int, Launcher::JobState> states;
  QObject::connect(&launcher, &Launcher::jobFinished,
                   [&](int id, Launcher::JobState state, int) { states[id] = state; });
  const int base = launcher.enqueue_command({"pretrain"}, "base");
  const int a = launcher.enqueue_run("a.toml", temp.qpath(), {.parallel = true, .after = base});
  ASSERT_TRUE(wait_until([&] { return states.size() == 2; }));
  EXPECT_EQ(states[base], Launcher::JobState::failed);
  EXPECT_EQ(states[a], Launcher::JobState::cancelled);
  EXPECT_TRUE(launcher.job(a)->status_message.contains("did not finish"));
}

}  // namespace
}  // namespace hl::ui
