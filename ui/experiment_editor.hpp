// The experiment editor: a form for every field of an experiment file, a stage list with
// add / remove / reorder, the SSD schedule editor, inline validation with the messages of
// `hybridlab-cli validate`, TOML load / save and presets from experiments/.
#pragma once

#include <QHash>
#include <QString>
#include <QWidget>
#include <functional>
#include <memory>
#include <vector>

#include "core/config/experiment_spec.hpp"
#include "core/util/error.hpp"

class QComboBox;
class QFormLayout;
class QLabel;
class QListWidget;
class QTimer;
class QGroupBox;
class QCheckBox;

namespace hl::ui {

class ScheduleEditor;

/// Edits one ExperimentSpec.
class ExperimentEditor : public QWidget {
  Q_OBJECT
 public:
  explicit ExperimentEditor(QWidget* parent = nullptr);
  ~ExperimentEditor() override;

  /// Fills the form (and the stage list) from a spec.
  void set_spec(const ExperimentSpec& spec);
  /// The form as a spec. Text that is not a number where one is needed is reported in
  /// `form_errors` (key = dotted path as `validate` uses it) and leaves that field as it was.
  ExperimentSpec spec(std::vector<Error>* form_errors = nullptr);
  /// Form errors plus hl::validate(spec()), shown next to their fields and in the list.
  std::vector<Error> validate_now();

  /// Reads a TOML experiment; parse errors are shown and returned (the form is unchanged).
  std::vector<Error> load_file(const QString& path);
  /// Writes the form as TOML (to_toml); an error names the file.
  Status save_file(const QString& path);
  const QString& current_file() const { return file_; }

  /// Directory whose *.toml files are offered as presets.
  void set_presets_directory(const QString& directory);
  /// The widget editing `key` ("attention.window", or "stage.<name>" for the stage shown).
  QWidget* field(const QString& key) const;
  /// The inline error shown for `key` (same key form as field()), empty if none.
  QString error_text(const QString& key) const;
  QListWidget* stage_list() const { return stages_list_; }
  ScheduleEditor* schedule_editor() const { return ssd_editor_; }

  /// Adds a stage of `kind` after the current one and shows it.
  void add_stage(const QString& kind);
  void remove_current_stage();
  /// Moves the current stage by -1 (up) or +1 (down).
  void move_current_stage(int offset);

 signals:
  void changed();
  /// After each validation: how many errors the form has now.
  void validated(int error_count);
  /// The user asks to launch this experiment (saved to current_file()).
  void launchRequested(const QString& experiment_file);

 private:
  struct Field;
  struct Target;
  using Access = std::function<void*(Target&)>;

  QWidget* build_general();
  QWidget* build_stage_form();
  QWidget* build_eval();
  QLabel* add_row(QFormLayout* form, const QString& label, QWidget* editor, const QString& key,
                  bool per_stage);
  void bind_text(QFormLayout* form, const QString& label, const QString& key, bool per_stage,
                 std::function<std::string&(Target&)> access);
  void bind_choice(QFormLayout* form, const QString& label, const QString& key, bool per_stage,
                   const QStringList& options, std::function<std::string&(Target&)> access);
  void bind_int(QFormLayout* form, const QString& label, const QString& key, bool per_stage,
                std::function<int64_t&(Target&)> access);
  void bind_real(QFormLayout* form, const QString& label, const QString& key, bool per_stage,
                 std::function<double&(Target&)> access);
  void bind_flag(QFormLayout* form, const QString& label, const QString& key, bool per_stage,
                 std::function<bool&(Target&)> access);
  void bind_int_list(QFormLayout* form, const QString& label, const QString& key, bool per_stage,
                     std::function<std::vector<int64_t>&(Target&)> access);
  void bind_string_list(QFormLayout* form, const QString& label, const QString& key, bool per_stage,
                        std::function<std::vector<std::string>&(Target&)> access);
  void bind_checks(QFormLayout* form, const QString& label, const QString& key, bool per_stage,
                   const QStringList& options,
                   std::function<std::vector<std::string>&(Target&)> access);
  void bind_lines(QFormLayout* form, const QString& label, const QString& key, bool per_stage,
                  std::function<std::vector<std::string>&(Target&)> access, bool files);

  void load_fields(bool per_stage);
  void store_fields(bool per_stage, std::vector<Error>* errors);
  void show_stage(int index);
  void commit_stage();
  void refresh_stage_list();
  void update_stage_kind_groups();
  void schedule_validation();
  void show_errors(const std::vector<Error>& errors);
  void load_preset(int index);

  std::vector<std::unique_ptr<Field>> fields_;
  ExperimentSpec spec_;            // fields not on the form pass through from here
  std::vector<StageSpec> stages_;  // the stage list; the shown one is stages_[current_]
  int current_stage_ = -1;
  bool loading_ = false;
  QString file_;
  QString presets_directory_;

  QListWidget* stages_list_ = nullptr;
  QWidget* stage_form_ = nullptr;
  QLabel* stage_kind_ = nullptr;
  QGroupBox* transfer_group_ = nullptr;
  QGroupBox* lora_group_ = nullptr;
  QCheckBox* ssd_enabled_ = nullptr;
  ScheduleEditor* ssd_editor_ = nullptr;
  QLabel* ssd_error_ = nullptr;
  QListWidget* errors_list_ = nullptr;
  QLabel* file_label_ = nullptr;
  QComboBox* presets_ = nullptr;
  QTimer* validation_timer_ = nullptr;
  QHash<QString, QLabel*> error_labels_;
};

}  // namespace hl::ui
