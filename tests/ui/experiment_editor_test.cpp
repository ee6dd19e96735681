// The experiment editor: every preset round-trips through the form, validation shows the
// messages of hl::validate next to the fields, stages can be added, moved and removed.
#include "ui/experiment_editor.hpp"

#include <qcustomplot.h>

#include <QCheckBox>
#include <QComboBox>
#include <QDir>
#include <QFile>
#include <QLineEdit>
#include <QListWidget>
#include <QTableWidget>

#include "core/config/experiment_file.hpp"
#include "test_paths.hpp"
#include "ui/schedule_editor.hpp"
#include "ui_test_util.hpp"

namespace hl::ui {
namespace {

QString experiments_dir() {
  return QDir(QString::fromUtf8(hl::test::kSourceDir)).filePath("experiments");
}

ExperimentSpec load_preset(const QString& name) {
  ExperimentParse parsed =
      load_experiment_file(QDir(experiments_dir()).filePath(name).toStdString());
  EXPECT_TRUE(parsed.ok()) << (parsed.errors.empty() ? "" : parsed.errors[0].to_string());
  return parsed.spec.value_or(ExperimentSpec{});
}

void set_text(ExperimentEditor& editor, const QString& key, const QString& text) {
  auto* edit = qobject_cast<QLineEdit*>(editor.field(key));
  ASSERT_NE(edit, nullptr) << key.toStdString();
  edit->setText(text);
}

std::string message_for(const std::vector<Error>& errors, const std::string& key) {
  for (const Error& error : errors)
    if (error.where.key == key) return error.message;
  return {};
}

TEST(ExperimentEditorTest, EveryPresetRoundTripsThroughTheForm) {
  const QStringList presets = QDir(experiments_dir()).entryList({"*.toml"}, QDir::Files);
  ASSERT_GE(presets.size(), 2);
  for (const QString& name : presets) {
    SCOPED_TRACE(name.toStdString());
    const ExperimentSpec original = load_preset(name);
    ExperimentEditor editor;
    editor.set_spec(original);
    std::vector<Error> form_errors;
    const ExperimentSpec edited = editor.spec(&form_errors);
    EXPECT_TRUE(form_errors.empty()) << form_errors[0].to_string();
    EXPECT_TRUE(edited == original);
    EXPECT_EQ(to_toml(edited), to_toml(original));
    EXPECT_TRUE(editor.validate_now().empty());
  }
}

TEST(ExperimentEditorTest, SaveAndLoadGiveBackTheSameToml) {
  test::TempStore temp;
  ExperimentEditor editor;
  ASSERT_TRUE(editor.load_file(QDir(experiments_dir()).filePath("demo-ssd.toml")).empty());
  set_text(editor, "name", "edited");
  set_text(editor, "attention.window", "32");
  const QString path = temp.file("edited.toml");
  HL_ASSERT_OK(editor.save_file(path));
  ExperimentParse parsed = load_experiment_file(path.toStdString());
  ASSERT_TRUE(parsed.ok()) << parsed.errors[0].to_string();
  EXPECT_EQ(parsed.spec->name, "edited");
  EXPECT_EQ(parsed.spec->attention.window, 32);
  EXPECT_EQ(to_toml(*parsed.spec), to_toml(editor.spec()));

  ExperimentEditor reloaded;
  ASSERT_TRUE(reloaded.load_file(path).empty());
  EXPECT_EQ(reloaded.current_file(), path);
  EXPECT_TRUE(reloaded.spec() == *parsed.spec);
}

TEST(ExperimentEditorTest, ShowsValidateMessagesNextToTheirFields) {
  ExperimentEditor editor;
  editor.set_spec(load_preset("demo.toml"));
  set_text(editor, "attention.window", "0");
  set_text(editor, "stage.lr", "-1");  // stage 0 is shown
  const std::vector<Error> errors = editor.validate_now();

  ExperimentSpec expected = load_preset("demo.toml");
  expected.attention.window = 0;
  expected.stages[0].lr = -1;
  const std::vector<Error> reference = hl::validate(expected);
  ASSERT_EQ(errors.size(), reference.size());
  const std::string window_message = message_for(reference, "attention.window");
  const std::string lr_message = message_for(reference, "stage[0].lr");
  ASSERT_FALSE(window_message.empty());
  ASSERT_FALSE(lr_message.empty());
  EXPECT_EQ(message_for(errors, "attention.window"), window_message);
  EXPECT_EQ(editor.error_text("attention.window").toStdString(), window_message);
  EXPECT_EQ(editor.error_text("stage.lr").toStdString(), lr_message);
  EXPECT_TRUE(editor.error_text("attention.feature_dim").isEmpty());

  set_text(editor, "attention.window", "64");
  set_text(editor, "stage.lr", "0.01");
  EXPECT_TRUE(editor.validate_now().empty());
  EXPECT_TRUE(editor.error_text("attention.window").isEmpty());
}

TEST(ExperimentEditorTest, ReportsTextThatIsNotANumber) {
  ExperimentEditor editor;
  editor.set_spec(load_preset("demo.toml"));
  set_text(editor, "seed", "abc");
  set_text(editor, "attention.softmax_layers", "0, x");
  const std::vector<Error> errors = editor.validate_now();
  EXPECT_EQ(message_for(errors, "seed"), "must be a whole number (got 'abc')");
  EXPECT_EQ(message_for(errors, "attention.softmax_layers"), "'x' is not a whole number");
  EXPECT_EQ(editor.error_text("seed"), "must be a whole number (got 'abc')");
}

TEST(ExperimentEditorTest, ErrorsOfAnotherStageMarkThatStage) {
  ExperimentEditor editor;
  ExperimentSpec spec = load_preset("demo.toml");
  spec.stages[1].steps = 0;
  editor.set_spec(spec);
  const std::vector<Error> errors = editor.validate_now();
  EXPECT_FALSE(message_for(errors, "stage[1].steps").empty());
  EXPECT_TRUE(editor.error_text("stage.steps").isEmpty());  // stage 0 is shown
  EXPECT_NE(editor.stage_list()->item(1)->foreground().color(),
            editor.stage_list()->item(0)->foreground().color());
  editor.stage_list()->setCurrentRow(1);
  editor.validate_now();
  EXPECT_FALSE(editor.error_text("stage.steps").isEmpty());
}

TEST(ExperimentEditorTest, AddsMovesAndRemovesStages) {
  ExperimentEditor editor;
  editor.set_spec(load_preset("demo.toml"));
  set_text(editor, "stage.steps", "77");  // an edit of the shown stage survives switching
  editor.add_stage("lora_finetune");      // after stage 0
  ASSERT_EQ(editor.stage_list()->count(), 3);
  EXPECT_EQ(editor.stage_list()->currentRow(), 1);
  editor.move_current_stage(-1);
  ExperimentSpec spec = editor.spec();
  ASSERT_EQ(spec.stages.size(), 3u);
  EXPECT_EQ(spec.stages[0].kind, "lora_finetune");
  EXPECT_EQ(spec.stages[0].lr, default_stage("lora_finetune").lr);
  EXPECT_EQ(spec.stages[1].kind, "attention_transfer");
  EXPECT_EQ(spec.stages[1].steps, 77);
  EXPECT_EQ(spec.stages[2].kind, "lora_finetune");
  EXPECT_EQ(editor.stage_list()->currentRow(), 0);
  editor.remove_current_stage();
  spec = editor.spec();
  ASSERT_EQ(spec.stages.size(), 2u);
  EXPECT_EQ(spec.stages[0].kind, "attention_transfer");
  EXPECT_EQ(spec.stages[0].steps, 77);
  EXPECT_TRUE(editor.validate_now().empty());
}

TEST(ExperimentEditorTest, EditsTheSsdScheduleOfAStage) {
  ExperimentEditor editor;
  editor.set_spec(load_preset("demo.toml"));
  auto* enabled = editor.field("stage.ssd")->findChild<QCheckBox*>();
  ASSERT_NE(enabled, nullptr);
  enabled->setChecked(true);
  ScheduleEditor* ssd = editor.schedule_editor();
  auto* table = ssd->findChild<ScheduleTable*>("ssdDropout")->table();
  table->setRowCount(2);
  table->setItem(0, 1, new QTableWidgetItem("0.8"));
  table->setItem(1, 1, new QTableWidgetItem("0.4"));
  ExperimentSpec spec = editor.spec();
  ASSERT_TRUE(spec.stages[0].ssd.has_value());
  EXPECT_EQ(spec.stages[0].ssd->swa_dropout.values, (std::vector<double>{0.8, 0.4}));
  EXPECT_TRUE(editor.validate_now().empty());
  // The live plot follows the schedule over the stage's steps: 0.8 in the first half.
  QCPGraph* p = ssd->plot()->graph(0);
  ASSERT_GT(p->data()->size(), 2);
  EXPECT_DOUBLE_EQ(p->data()->at(0)->value, 0.8);
  EXPECT_DOUBLE_EQ((p->data()->constEnd() - 1)->value, 0.4);

  table->setItem(1, 1, new QTableWidgetItem("1.5"));
  const std::vector<Error> errors = editor.validate_now();
  EXPECT_TRUE(std::any_of(errors.begin(), errors.end(), [](const Error& error) {
    return error.where.key.rfind("stage[0].ssd.swa_dropout", 0) == 0;
  }));
  EXPECT_FALSE(editor.error_text("stage.ssd").isEmpty());
}

TEST(ExperimentEditorTest, ParseErrorsLeaveTheFormAlone) {
  test::TempStore temp;
  const QString path = temp.file("bad.toml");
  QFile file(path);
  ASSERT_TRUE(file.open(QIODevice::WriteOnly));
  file.write("name = \"x\"\n[model]\nbase = \"m\"\nwindw = 3\n");
  file.close();
  ExperimentEditor editor;
  editor.set_spec(load_preset("demo.toml"));
  const std::vector<Error> errors = editor.load_file(path);
  ASSERT_FALSE(errors.empty());
  EXPECT_TRUE(std::any_of(errors.begin(), errors.end(), [](const Error& error) {
    return error.where.line == 4 && error.where.key.find("windw") != std::string::npos;
  })) << errors[0].to_string();
  EXPECT_EQ(editor.spec().name, "demo");
  EXPECT_TRUE(editor.current_file().isEmpty());
}

}  // namespace
}  // namespace hl::ui
