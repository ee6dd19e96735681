#include "ui/experiment_editor.hpp"

#include <QCheckBox>
#include <QComboBox>
#include <QDir>
#include <QFile>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QMenu>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QSaveFile>
#include <QScrollArea>
#include <QSplitter>
#include <QStyle>
#include <QTabWidget>
#include <QTimer>
#include <QToolButton>
#include <QVBoxLayout>
#include <optional>

#include "core/config/experiment_file.hpp"
#include "core/config/toml_text.hpp"
#include "ui/schedule_editor.hpp"

namespace hl::ui {
namespace {

template <size_t N>
QStringList to_list(const std::array<std::string_view, N>& names) {
  QStringList list;
  for (std::string_view name : names)
    list << QString::fromUtf8(name.data(), static_cast<qsizetype>(name.size()));
  return list;
}

QString real_text(double value) {
  return QString::fromStdString(toml_float(value));
}

std::optional<double> parse_real(const QString& text) {
  bool ok = false;
  const double value = text.trimmed().toDouble(&ok);
  if (!ok) {
    const QString word = text.trimmed().toLower();
    if (word == QLatin1String("inf")) return std::numeric_limits<double>::infinity();
    if (word == QLatin1String("-inf")) return -std::numeric_limits<double>::infinity();
    if (word == QLatin1String("nan")) return std::numeric_limits<double>::quiet_NaN();
    return std::nullopt;
  }
  return value;
}

std::optional<int64_t> parse_int(const QString& text) {
  bool ok = false;
  const qlonglong value = text.trimmed().toLongLong(&ok);
  return ok ? std::optional<int64_t>(value) : std::nullopt;
}

QStringList split_list(const QString& text) {
  QStringList items = text.split(',', Qt::SkipEmptyParts);
  for (QString& item : items)
    item = item.trimmed();
  items.removeAll(QString());
  return items;
}

// Longest key in `keys` that is `key` itself or a prefix of it ending at '.' or '['.
QString best_prefix(const QString& key, const QList<QString>& keys) {
  QString best;
  for (const QString& candidate : keys) {
    if (!key.startsWith(candidate)) continue;
    if (key.size() > candidate.size() && key[candidate.size()] != '.' &&
        key[candidate.size()] != '[')
      continue;
    if (candidate.size() > best.size()) best = candidate;
  }
  return best;
}

}  // namespace

struct ExperimentEditor::Target {
  ExperimentSpec& spec;
  StageSpec& stage;
};

struct ExperimentEditor::Field {
  QString key;  // dotted path; stage fields are relative to "stage[i]."
  bool per_stage = false;
  QWidget* widget = nullptr;
  std::function<void(Target&)> load;
  std::function<std::optional<QString>(Target&)> store;  // a form error, if any
};

ExperimentEditor::ExperimentEditor(QWidget* parent) : QWidget(parent) {
  validation_timer_ = new QTimer(this);
  validation_timer_->setSingleShot(true);
  validation_timer_->setInterval(250);
  connect(validation_timer_, &QTimer::timeout, this, [this] { validate_now(); });

  presets_ = new QComboBox(this);
  presets_->setAccessibleName(tr("Start from a preset"));
  presets_->setToolTip(tr("Start from a preset in experiments/"));
  connect(presets_, &QComboBox::activated, this, &ExperimentEditor::load_preset);
  auto* open = new QPushButton(tr("Open…"), this);
  auto* save = new QPushButton(tr("Save"), this);
  auto* save_as = new QPushButton(tr("Save as…"), this);
  auto* launch = new QPushButton(tr("Launch"), this);
  launch->setToolTip(tr("Save and queue this experiment (Ctrl+R)"));
  launch->setShortcut(QKeySequence(Qt::CTRL | Qt::Key_R));
  file_label_ = new QLabel(tr("(unsaved)"), this);
  file_label_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  connect(open, &QPushButton::clicked, this, [this] {
    const QString path = QFileDialog::getOpenFileName(this, tr("Open experiment"), file_,
                                                      tr("Experiment files (*.toml)"));
    if (!path.isEmpty()) load_file(path);
  });
  auto save_to = [this](bool ask) {
    QString path = file_;
    if (ask || path.isEmpty())
      path = QFileDialog::getSaveFileName(this, tr("Save experiment"), file_,
                                          tr("Experiment files (*.toml)"));
    if (path.isEmpty()) return false;
    Status status = save_file(path);
    if (!status.ok()) {
      errors_list_->clear();
      errors_list_->addItem(QString::fromStdString(status.error().to_string()));
      return false;
    }
    return true;
  };
  connect(save, &QPushButton::clicked, this, [save_to] { save_to(false); });
  connect(save_as, &QPushButton::clicked, this, [save_to] { save_to(true); });
  connect(launch, &QPushButton::clicked, this, [this, save_to] {
    if (!validate_now().empty()) return;
    if (save_to(false)) emit launchRequested(file_);
  });

  auto* bar = new QHBoxLayout;
  bar->addWidget(new QLabel(tr("Preset"), this));
  bar->addWidget(presets_, 1);
  bar->addWidget(open);
  bar->addWidget(save);
  bar->addWidget(save_as);
  bar->addWidget(launch);

  auto* tabs = new QTabWidget(this);
  auto scrolled = [this](QWidget* inner) {
    auto* area = new QScrollArea(this);
    area->setWidget(inner);
    area->setWidgetResizable(true);
    area->setFrameShape(QFrame::NoFrame);
    return area;
  };
  tabs->addTab(scrolled(build_general()), tr("Model, data, attention"));
  tabs->addTab(build_stage_form(), tr("Stages"));
  tabs->addTab(scrolled(build_eval()), tr("Evaluation"));

  errors_list_ = new QListWidget(this);
  errors_list_->setAccessibleName(tr("Validation errors"));
  errors_list_->setMaximumHeight(110);
  connect(errors_list_, &QListWidget::itemActivated, this, [this, tabs](QListWidgetItem* item) {
    const QString key = item->data(Qt::UserRole).toString();
    static const QRegularExpression stage_key(QStringLiteral("^stage\\[(\\d+)\\]"));
    const QRegularExpressionMatch match = stage_key.match(key);
    if (match.hasMatch()) {
      tabs->setCurrentIndex(1);
      stages_list_->setCurrentRow(match.captured(1).toInt());
    }
  });

  auto* layout = new QVBoxLayout(this);
  layout->addLayout(bar);
  layout->addWidget(file_label_);
  layout->addWidget(tabs, 1);
  layout->addWidget(errors_list_);

  // A new editor starts as the lolcats recipe without a model, so validation says what to fill.
  ExperimentSpec initial;
  initial.stages = {default_stage(kAttentionTransfer), default_stage(kLoraFinetune)};
  set_spec(initial);
}

ExperimentEditor::~ExperimentEditor() = default;

QLabel* ExperimentEditor::add_row(QFormLayout* form, const QString& label, QWidget* editor,
                                  const QString& key, bool per_stage) {
  auto* cell = new QWidget(form->parentWidget());
  auto* column = new QVBoxLayout(cell);
  column->setContentsMargins(0, 0, 0, 0);
  column->setSpacing(1);
  column->addWidget(editor);
  auto* error = new QLabel(cell);
  error->setWordWrap(true);
  error->setStyleSheet(QStringLiteral("color: #d62728;"));
  error->setVisible(false);
  column->addWidget(error);
  editor->setAccessibleName(label);
  editor->setToolTip(per_stage ? QStringLiteral("[[stage]] %1").arg(key) : key);
  form->addRow(label, cell);
  error_labels_.insert(per_stage ? QStringLiteral("stage.") + key : key, error);
  return error;
}

void ExperimentEditor::bind_text(QFormLayout* form, const QString& label, const QString& key,
                                 bool per_stage, std::function<std::string&(Target&)> access) {
  auto* edit = new QLineEdit(form->parentWidget());
  add_row(form, label, edit, key, per_stage);
  connect(edit, &QLineEdit::textEdited, this, [this] { schedule_validation(); });
  fields_.push_back(std::make_unique<Field>(Field{
      key, per_stage, edit,
      [edit, access](Target& target) { edit->setText(QString::fromStdString(access(target))); },
      [edit, access](Target& target) -> std::optional<QString> {
        access(target) = edit->text().toStdString();
        return std::nullopt;
      }}));
}

void ExperimentEditor::bind_choice(QFormLayout* form, const QString& label, const QString& key,
                                   bool per_stage, const QStringList& options,
                                   std::function<std::string&(Target&)> access) {
  auto* box = new QComboBox(form->parentWidget());
  box->addItems(options);
  add_row(form, label, box, key, per_stage);
  connect(box, &QComboBox::currentIndexChanged, this, [this] { schedule_validation(); });
  fields_.push_back(
      std::make_unique<Field>(Field{key,
                                    per_stage,
                                    box,
                                    [box](Target& target) {},  // replaced below: needs access
                                    {}}));
  Field& field = *fields_.back();
  field.load = [box, access](Target& target) {
    const QString value = QString::fromStdString(access(target));
    // A value the form does not offer (from a hand-written file) is kept and shown, so
    // validation can name it.
    if (box->findText(value) < 0) box->addItem(value);
    box->setCurrentText(value);
  };
  field.store = [box, access](Target& target) -> std::optional<QString> {
    access(target) = box->currentText().toStdString();
    return std::nullopt;
  };
}

void ExperimentEditor::bind_int(QFormLayout* form, const QString& label, const QString& key,
                                bool per_stage, std::function<int64_t&(Target&)> access) {
  auto* edit = new QLineEdit(form->parentWidget());
  edit->setInputMethodHints(Qt::ImhFormattedNumbersOnly);
  add_row(form, label, edit, key, per_stage);
  connect(edit, &QLineEdit::textEdited, this, [this] { schedule_validation(); });
  fields_.push_back(std::make_unique<Field>(
      Field{key, per_stage, edit,
            [edit, access](Target& target) { edit->setText(QString::number(access(target))); },
            [edit, access](Target& target) -> std::optional<QString> {
              std::optional<int64_t> value = parse_int(edit->text());
              if (!value) return tr("must be a whole number (got '%1')").arg(edit->text());
              access(target) = *value;
              return std::nullopt;
            }}));
}

void ExperimentEditor::bind_real(QFormLayout* form, const QString& label, const QString& key,
                                 bool per_stage, std::function<double&(Target&)> access) {
  auto* edit = new QLineEdit(form->parentWidget());
  edit->setInputMethodHints(Qt::ImhFormattedNumbersOnly);
  add_row(form, label, edit, key, per_stage);
  connect(edit, &QLineEdit::textEdited, this, [this] { schedule_validation(); });
  fields_.push_back(std::make_unique<Field>(
      Field{key, per_stage, edit,
            [edit, access](Target& target) { edit->setText(real_text(access(target))); },
            [edit, access](Target& target) -> std::optional<QString> {
              std::optional<double> value = parse_real(edit->text());
              if (!value) return tr("must be a number (got '%1')").arg(edit->text());
              access(target) = *value;
              return std::nullopt;
            }}));
}

void ExperimentEditor::bind_flag(QFormLayout* form, const QString& label, const QString& key,
                                 bool per_stage, std::function<bool&(Target&)> access) {
  auto* check = new QCheckBox(form->parentWidget());
  add_row(form, label, check, key, per_stage);
  connect(check, &QCheckBox::toggled, this, [this] { schedule_validation(); });
  fields_.push_back(std::make_unique<Field>(Field{
      key, per_stage, check, [check, access](Target& target) { check->setChecked(access(target)); },
      [check, access](Target& target) -> std::optional<QString> {
        access(target) = check->isChecked();
        return std::nullopt;
      }}));
}

void ExperimentEditor::bind_int_list(QFormLayout* form, const QString& label, const QString& key,
                                     bool per_stage,
                                     std::function<std::vector<int64_t>&(Target&)> access) {
  auto* edit = new QLineEdit(form->parentWidget());
  edit->setPlaceholderText(tr("comma-separated, e.g. 0, 5, 11"));
  add_row(form, label, edit, key, per_stage);
  connect(edit, &QLineEdit::textEdited, this, [this] { schedule_validation(); });
  fields_.push_back(
      std::make_unique<Field>(Field{key, per_stage, edit,
                                    [edit, access](Target& target) {
                                      QStringList items;
                                      for (int64_t value : access(target))
                                        items << QString::number(value);
                                      edit->setText(items.join(QStringLiteral(", ")));
                                    },
                                    [edit, access](Target& target) -> std::optional<QString> {
                                      std::vector<int64_t> values;
                                      for (const QString& item : split_list(edit->text())) {
                                        std::optional<int64_t> value = parse_int(item);
                                        if (!value)
                                          return tr("'%1' is not a whole number").arg(item);
                                        values.push_back(*value);
                                      }
                                      access(target) = std::move(values);
                                      return std::nullopt;
                                    }}));
}

void ExperimentEditor::bind_string_list(QFormLayout* form, const QString& label, const QString& key,
                                        bool per_stage,
                                        std::function<std::vector<std::string>&(Target&)> access) {
  auto* edit = new QLineEdit(form->parentWidget());
  edit->setPlaceholderText(tr("comma-separated"));
  add_row(form, label, edit, key, per_stage);
  connect(edit, &QLineEdit::textEdited, this, [this] { schedule_validation(); });
  fields_.push_back(
      std::make_unique<Field>(Field{key, per_stage, edit,
                                    [edit, access](Target& target) {
                                      QStringList items;
                                      for (const std::string& value : access(target))
                                        items << QString::fromStdString(value);
                                      edit->setText(items.join(QStringLiteral(", ")));
                                    },
                                    [edit, access](Target& target) -> std::optional<QString> {
                                      std::vector<std::string> values;
                                      for (const QString& item : split_list(edit->text()))
                                        values.push_back(item.toStdString());
                                      access(target) = std::move(values);
                                      return std::nullopt;
                                    }}));
}

void ExperimentEditor::bind_checks(QFormLayout* form, const QString& label, const QString& key,
                                   bool per_stage, const QStringList& options,
                                   std::function<std::vector<std::string>&(Target&)> access) {
  auto* box = new QWidget(form->parentWidget());
  auto* row = new QHBoxLayout(box);
  row->setContentsMargins(0, 0, 0, 0);
  QList<QCheckBox*> checks;
  for (const QString& option : options) {
    auto* check = new QCheckBox(option, box);
    check->setObjectName(key + QLatin1Char(':') + option);
    row->addWidget(check);
    checks << check;
    connect(check, &QCheckBox::toggled, this, [this] { schedule_validation(); });
  }
  row->addStretch(1);
  add_row(form, label, box, key, per_stage);
  fields_.push_back(std::make_unique<Field>(Field{
      key, per_stage, box,
      [checks, access](Target& target) {
        const std::vector<std::string>& values = access(target);
        for (QCheckBox* check : checks)
          check->setChecked(std::find(values.begin(), values.end(), check->text().toStdString()) !=
                            values.end());
      },
      [checks, access](Target& target) -> std::optional<QString> {
        // Keeps the user's order for known entries and the canonical order for new ones.
        std::vector<std::string> values;
        for (QCheckBox* check : checks)
          if (check->isChecked()) values.push_back(check->text().toStdString());
        std::vector<std::string> ordered;
        for (const std::string& old : access(target))
          if (std::find(values.begin(), values.end(), old) != values.end()) ordered.push_back(old);
        for (const std::string& value : values)
          if (std::find(ordered.begin(), ordered.end(), value) == ordered.end())
            ordered.push_back(value);
        access(target) = std::move(ordered);
        return std::nullopt;
      }}));
}

void ExperimentEditor::bind_lines(QFormLayout* form, const QString& label, const QString& key,
                                  bool per_stage,
                                  std::function<std::vector<std::string>&(Target&)> access,
                                  bool files) {
  auto* box = new QWidget(form->parentWidget());
  auto* column = new QHBoxLayout(box);
  column->setContentsMargins(0, 0, 0, 0);
  auto* edit = new QPlainTextEdit(box);
  edit->setPlaceholderText(tr("one per line"));
  edit->setTabChangesFocus(true);
  edit->setFixedHeight(edit->fontMetrics().lineSpacing() * 4 + 10);
  column->addWidget(edit, 1);
  if (files) {
    auto* add = new QToolButton(box);
    add->setText(QStringLiteral("…"));
    add->setAccessibleName(tr("Add %1 files").arg(label));
    add->setToolTip(tr("Add files"));
    connect(add, &QToolButton::clicked, this, [this, edit] {
      const QStringList paths = QFileDialog::getOpenFileNames(this, tr("Add data files"));
      for (const QString& path : paths)
        edit->appendPlainText(path);
    });
    column->addWidget(add, 0, Qt::AlignTop);
  }
  add_row(form, label, box, key, per_stage);
  edit->setAccessibleName(label);
  connect(edit, &QPlainTextEdit::textChanged, this, [this] { schedule_validation(); });
  fields_.push_back(
      std::make_unique<Field>(Field{key, per_stage, edit,
                                    [edit, access](Target& target) {
                                      QStringList lines;
                                      for (const std::string& value : access(target))
                                        lines << QString::fromStdString(value);
                                      edit->setPlainText(lines.join('\n'));
                                    },
                                    [edit, access](Target& target) -> std::optional<QString> {
                                      std::vector<std::string> values;
                                      for (const QString& line : edit->toPlainText().split('\n')) {
                                        const QString trimmed = line.trimmed();
                                        if (!trimmed.isEmpty())
                                          values.push_back(trimmed.toStdString());
                                      }
                                      access(target) = std::move(values);
                                      return std::nullopt;
                                    }}));
}

QWidget* ExperimentEditor::build_general() {
  auto* page = new QWidget(this);
  auto* layout = new QVBoxLayout(page);
  auto section = [&](const QString& title) {
    auto* group = new QGroupBox(title, page);
    auto* form = new QFormLayout(group);
    form->setFieldGrowthPolicy(QFormLayout::AllNonFixedFieldsGrow);
    layout->addWidget(group);
    return form;
  };
  using T = Target;
  QFormLayout* form = section(tr("Experiment"));
  bind_text(form, tr("Name"), "name", false, [](T& t) -> std::string& { return t.spec.name; });
  bind_int(form, tr("Seed"), "seed", false, [](T& t) -> int64_t& { return t.spec.seed; });
  bind_text(form, tr("Description"), "description", false,
            [](T& t) -> std::string& { return t.spec.description; });

  form = section(tr("Model"));
  {
    bind_text(form, tr("Base model directory"), "model.base", false,
              [](T& t) -> std::string& { return t.spec.model.base; });
    auto* edit = static_cast<QLineEdit*>(fields_.back()->widget);
    // An icon-only action inside the field; its text is what screen readers announce.
    auto* action = edit->addAction(QIcon::fromTheme(QStringLiteral("folder-open"),
                                                    style()->standardIcon(QStyle::SP_DirOpenIcon)),
                                   QLineEdit::TrailingPosition);
    action->setText(tr("Choose the base model directory"));
    action->setToolTip(tr("Choose a Hugging Face model directory"));
    connect(action, &QAction::triggered, this, [this, edit] {
      const QString directory =
          QFileDialog::getExistingDirectory(this, tr("Base model directory"), edit->text());
      if (directory.isEmpty()) return;
      edit->setText(directory);
      schedule_validation();
    });
  }
  bind_choice(form, tr("Dtype"), "model.dtype", false, to_list(choices::kDtypes),
              [](T& t) -> std::string& { return t.spec.model.dtype; });
  bind_choice(form, tr("Device"), "model.device", false, to_list(choices::kDevices),
              [](T& t) -> std::string& { return t.spec.model.device; });
  bind_choice(form, tr("Autocast (CUDA)"), "model.autocast", false, to_list(choices::kAutocast),
              [](T& t) -> std::string& { return t.spec.model.autocast; });

  form = section(tr("Data"));
  bind_lines(
      form, tr("Training data"), "data.train", false,
      [](T& t) -> std::vector<std::string>& { return t.spec.data.train; }, true);
  bind_lines(
      form, tr("Validation data"), "data.val", false,
      [](T& t) -> std::vector<std::string>& { return t.spec.data.val; }, true);
  bind_choice(form, tr("Format"), "data.format", false, to_list(choices::kDataFormats),
              [](T& t) -> std::string& { return t.spec.data.format; });
  bind_text(form, tr("Text field"), "data.text_field", false,
            [](T& t) -> std::string& { return t.spec.data.text_field; });
  {
    auto* edit = new QPlainTextEdit(page);
    edit->setFixedHeight(edit->fontMetrics().lineSpacing() * 5 + 10);
    edit->setTabChangesFocus(true);
    add_row(form, tr("Prompt template"), edit, "data.prompt_template", false);
    connect(edit, &QPlainTextEdit::textChanged, this, [this] { schedule_validation(); });
    fields_.push_back(std::make_unique<Field>(Field{
        "data.prompt_template", false, edit,
        [edit](T& t) { edit->setPlainText(QString::fromStdString(t.spec.data.prompt_template)); },
        [edit](T& t) -> std::optional<QString> {
          t.spec.data.prompt_template = edit->toPlainText().toStdString();
          return std::nullopt;
        }}));
  }
  bind_int(form, tr("Sequence length"), "data.seq_len", false,
           [](T& t) -> int64_t& { return t.spec.data.seq_len; });
  bind_int(form, tr("Batch size"), "data.batch_size", false,
           [](T& t) -> int64_t& { return t.spec.data.batch_size; });
  bind_real(form, tr("Validation fraction"), "data.val_fraction", false,
            [](T& t) -> double& { return t.spec.data.val_fraction; });
  bind_real(form, tr("Passkey weight"), "data.passkey_weight", false,
            [](T& t) -> double& { return t.spec.data.passkey_weight; });
  bind_real(form, tr("MQAR weight"), "data.mqar_weight", false,
            [](T& t) -> double& { return t.spec.data.mqar_weight; });
  bind_int(form, tr("Max training tokens"), "data.max_train_tokens", false,
           [](T& t) -> int64_t& { return t.spec.data.max_train_tokens; });

  form = section(tr("Attention"));
  bind_choice(form, tr("Kind"), "attention.kind", false, to_list(choices::kAttentionKinds),
              [](T& t) -> std::string& { return t.spec.attention.kind; });
  bind_int(form, tr("Window"), "attention.window", false,
           [](T& t) -> int64_t& { return t.spec.attention.window; });
  connect(static_cast<QLineEdit*>(fields_.back()->widget), &QLineEdit::textChanged, this,
          [this](const QString& text) {
            if (std::optional<int64_t> window = parse_int(text))
              ssd_editor_->set_default_window(*window);
          });
  bind_flag(form, tr("Overlap"), "attention.overlap", false,
            [](T& t) -> bool& { return t.spec.attention.overlap; });
  bind_choice(form, tr("Feature map"), "attention.feature_map", false,
              to_list(choices::kFeatureMaps),
              [](T& t) -> std::string& { return t.spec.attention.feature_map; });
  bind_int(form, tr("Feature dim"), "attention.feature_dim", false,
           [](T& t) -> int64_t& { return t.spec.attention.feature_dim; });
  bind_choice(form, tr("Feature init"), "attention.feature_init", false,
              to_list(choices::kFeatureInits),
              [](T& t) -> std::string& { return t.spec.attention.feature_init; });
  bind_real(form, tr("Window factor init"), "attention.window_factor_init", false,
            [](T& t) -> double& { return t.spec.attention.window_factor_init; });
  bind_flag(form, tr("Affine factors"), "attention.affine_factors", false,
            [](T& t) -> bool& { return t.spec.attention.affine_factors; });
  bind_int_list(form, tr("Softmax layers"), "attention.softmax_layers", false,
                [](T& t) -> std::vector<int64_t>& { return t.spec.attention.softmax_layers; });
  bind_int(form, tr("Sinks"), "attention.sinks", false,
           [](T& t) -> int64_t& { return t.spec.attention.sinks; });
  layout->addStretch(1);
  return page;
}

QWidget* ExperimentEditor::build_stage_form() {
  auto* page = new QSplitter(Qt::Horizontal, this);
  auto* left = new QWidget(page);
  auto* left_layout = new QVBoxLayout(left);
  left_layout->setContentsMargins(0, 0, 0, 0);
  stages_list_ = new QListWidget(left);
  stages_list_->setAccessibleName(tr("Stages"));
  connect(stages_list_, &QListWidget::currentRowChanged, this, [this](int row) {
    if (!loading_ && row != current_stage_) show_stage(row);
  });
  auto button = [left](const QString& text, const QString& name, const QString& tip) {
    auto* tool = new QToolButton(left);
    tool->setText(text);
    tool->setAccessibleName(name);
    tool->setToolTip(tip);
    return tool;
  };
  auto* add = button(QStringLiteral("+"), tr("Add stage"), tr("Add a stage after this one"));
  auto* remove = button(QStringLiteral("−"), tr("Remove stage"), tr("Remove this stage"));
  auto* up = button(QStringLiteral("↑"), tr("Move stage up"), tr("Run this stage earlier"));
  auto* down = button(QStringLiteral("↓"), tr("Move stage down"), tr("Run this stage later"));
  auto* add_menu = new QMenu(add);
  for (const QString& kind : to_list(choices::kStageKinds))
    add_menu->addAction(kind, this, [this, kind] { add_stage(kind); });
  add->setMenu(add_menu);
  add->setPopupMode(QToolButton::InstantPopup);
  connect(remove, &QToolButton::clicked, this, &ExperimentEditor::remove_current_stage);
  connect(up, &QToolButton::clicked, this, [this] { move_current_stage(-1); });
  connect(down, &QToolButton::clicked, this, [this] { move_current_stage(+1); });
  auto* buttons = new QHBoxLayout;
  for (QToolButton* tool : {add, remove, up, down})
    buttons->addWidget(tool);
  buttons->addStretch(1);
  left_layout->addWidget(stages_list_, 1);
  left_layout->addLayout(buttons);

  stage_form_ = new QWidget(page);
  auto* layout = new QVBoxLayout(stage_form_);
  stage_kind_ = new QLabel(stage_form_);
  QFont bold = stage_kind_->font();
  bold.setBold(true);
  stage_kind_->setFont(bold);
  layout->addWidget(stage_kind_);

  using T = Target;
  auto* columns = new QHBoxLayout;
  auto* common = new QGroupBox(tr("Training"), stage_form_);
  auto* form = new QFormLayout(common);
  bind_text(form, tr("Name"), "name", true, [](T& t) -> std::string& { return t.stage.name; });
  bind_int(form, tr("Steps"), "steps", true, [](T& t) -> int64_t& { return t.stage.steps; });
  connect(static_cast<QLineEdit*>(fields_.back()->widget), &QLineEdit::textChanged, this,
          [this](const QString& text) {
            if (std::optional<int64_t> steps = parse_int(text))
              ssd_editor_->set_total_steps(*steps);
          });
  bind_real(form, tr("Learning rate"), "lr", true, [](T& t) -> double& { return t.stage.lr; });
  bind_real(form, tr("Weight decay"), "weight_decay", true,
            [](T& t) -> double& { return t.stage.weight_decay; });
  bind_choice(form, tr("LR schedule"), "lr_schedule", true, to_list(choices::kLrSchedules),
              [](T& t) -> std::string& { return t.stage.lr_schedule; });
  bind_int(form, tr("Warm-up steps"), "warmup_steps", true,
           [](T& t) -> int64_t& { return t.stage.warmup_steps; });
  bind_real(form, tr("Plateau factor"), "plateau_factor", true,
            [](T& t) -> double& { return t.stage.plateau_factor; });
  bind_int(form, tr("Plateau patience"), "plateau_patience", true,
           [](T& t) -> int64_t& { return t.stage.plateau_patience; });
  bind_int(form, tr("Gradient accumulation"), "grad_accum", true,
           [](T& t) -> int64_t& { return t.stage.grad_accum; });
  bind_real(form, tr("Max gradient norm"), "max_grad_norm", true,
            [](T& t) -> double& { return t.stage.max_grad_norm; });
  bind_choice(form, tr("Train mode"), "train_mode", true, to_list(choices::kTrainModes),
              [](T& t) -> std::string& { return t.stage.train_mode; });
  columns->addWidget(common);

  auto* cadence = new QGroupBox(tr("Logging and evaluation"), stage_form_);
  form = new QFormLayout(cadence);
  bind_int(form, tr("Log every"), "log_every", true,
           [](T& t) -> int64_t& { return t.stage.log_every; });
  bind_int(form, tr("Usage every"), "usage_every", true,
           [](T& t) -> int64_t& { return t.stage.usage_every; });
  bind_int(form, tr("Eval every"), "eval_every", true,
           [](T& t) -> int64_t& { return t.stage.eval_every; });
  bind_int(form, tr("Eval batches"), "eval_batches", true,
           [](T& t) -> int64_t& { return t.stage.eval_batches; });
  bind_int(form, tr("Early-stop patience"), "early_stop_patience", true,
           [](T& t) -> int64_t& { return t.stage.early_stop_patience; });
  bind_int(form, tr("Checkpoint every"), "checkpoint_every", true,
           [](T& t) -> int64_t& { return t.stage.checkpoint_every; });

  auto* kind_column = new QVBoxLayout;
  kind_column->addWidget(cadence);
  transfer_group_ = new QGroupBox(tr("Attention transfer"), stage_form_);
  form = new QFormLayout(transfer_group_);
  bind_choice(form, tr("Objective"), "objective", true, to_list(choices::kObjectives),
              [](T& t) -> std::string& { return t.stage.transfer.objective; });
  {
    // The objective decides which student trains; keep train_mode consistent with it.
    auto* objective = static_cast<QComboBox*>(fields_.back()->widget);
    connect(objective, &QComboBox::currentTextChanged, this, [this](const QString& text) {
      if (loading_) return;
      QWidget* mode = field(QStringLiteral("stage.train_mode"));
      if (auto* box = qobject_cast<QComboBox*>(mode))
        box->setCurrentText(QString::fromUtf8(train_mode_for_objective(text.toStdString()).data()));
    });
  }
  bind_real(form, tr("MSE factor"), "mse_factor", true,
            [](T& t) -> double& { return t.stage.transfer.mse_factor; });
  bind_real(form, tr("Cross-entropy factor"), "xent_factor", true,
            [](T& t) -> double& { return t.stage.transfer.xent_factor; });
  kind_column->addWidget(transfer_group_);
  lora_group_ = new QGroupBox(tr("LoRA"), stage_form_);
  form = new QFormLayout(lora_group_);
  bind_int(form, tr("Rank"), "rank", true, [](T& t) -> int64_t& { return t.stage.lora.rank; });
  bind_real(form, tr("Alpha"), "alpha", true, [](T& t) -> double& { return t.stage.lora.alpha; });
  bind_real(form, tr("Dropout"), "dropout", true,
            [](T& t) -> double& { return t.stage.lora.dropout; });
  bind_checks(form, tr("Targets"), "targets", true, to_list(choices::kLoraTargets),
              [](T& t) -> std::vector<std::string>& { return t.stage.lora.targets; });
  bind_int_list(form, tr("Layers"), "layers", true,
                [](T& t) -> std::vector<int64_t>& { return t.stage.lora.layers; });
  bind_flag(form, tr("Train feature maps"), "train_feature_maps", true,
            [](T& t) -> bool& { return t.stage.lora.train_feature_maps; });
  kind_column->addWidget(lora_group_);
  kind_column->addStretch(1);
  columns->addLayout(kind_column);
  layout->addLayout(columns);

  auto* ssd_group = new QGroupBox(tr("Scheduled sliding-window dropout (SSD)"), stage_form_);
  auto* ssd_layout = new QVBoxLayout(ssd_group);
  ssd_enabled_ =
      new QCheckBox(tr("Drop the window branch with a scheduled probability"), ssd_group);
  ssd_editor_ = new ScheduleEditor(ssd_group);
  ssd_error_ = new QLabel(ssd_group);
  ssd_error_->setWordWrap(true);
  ssd_error_->setStyleSheet(QStringLiteral("color: #d62728;"));
  ssd_error_->setVisible(false);
  error_labels_.insert(QStringLiteral("stage.ssd"), ssd_error_);
  ssd_layout->addWidget(ssd_enabled_);
  ssd_layout->addWidget(ssd_editor_);
  ssd_layout->addWidget(ssd_error_);
  connect(ssd_enabled_, &QCheckBox::toggled, this, [this](bool on) {
    ssd_editor_->setEnabled(on);
    schedule_validation();
  });
  connect(ssd_editor_, &ScheduleEditor::changed, this, [this] { schedule_validation(); });
  fields_.push_back(
      std::make_unique<Field>(Field{"ssd", true, ssd_group,
                                    [this](T& t) {
                                      ssd_enabled_->setChecked(t.stage.ssd.has_value());
                                      ssd_editor_->setEnabled(t.stage.ssd.has_value());
                                      ssd_editor_->set_total_steps(t.stage.steps);
                                      ssd_editor_->set_ssd(t.stage.ssd.value_or(SsdSpec{}));
                                    },
                                    [this](T& t) -> std::optional<QString> {
                                      if (!ssd_enabled_->isChecked()) {
                                        t.stage.ssd.reset();
                                        return std::nullopt;
                                      }
                                      QStringList errors;
                                      t.stage.ssd = ssd_editor_->ssd(&errors);
                                      if (!errors.isEmpty())
                                        return errors.join(QStringLiteral("; "));
                                      return std::nullopt;
                                    }}));
  layout->addWidget(ssd_group);
  layout->addStretch(1);

  auto* scroll = new QScrollArea(page);
  scroll->setWidget(stage_form_);
  scroll->setWidgetResizable(true);
  scroll->setFrameShape(QFrame::NoFrame);
  page->addWidget(left);
  page->addWidget(scroll);
  page->setStretchFactor(1, 3);
  return page;
}

QWidget* ExperimentEditor::build_eval() {
  auto* page = new QWidget(this);
  auto* layout = new QVBoxLayout(page);
  auto* group = new QGroupBox(tr("After training"), page);
  auto* form = new QFormLayout(group);
  using T = Target;
  bind_string_list(form, tr("Tasks"), "eval.tasks", false,
                   [](T& t) -> std::vector<std::string>& { return t.spec.eval.tasks; });
  static_cast<QLineEdit*>(fields_.back()->widget)
      ->setPlaceholderText(tr("ppl, passkey, mqar, ppl:FILE, mc:FILE"));
  bind_checks(form, tr("Modes"), "eval.modes", false, to_list(choices::kEvalModes),
              [](T& t) -> std::vector<std::string>& { return t.spec.eval.modes; });
  bind_int(form, tr("Sequence length (0 = data)"), "eval.seq_len", false,
           [](T& t) -> int64_t& { return t.spec.eval.seq_len; });
  bind_int(form, tr("Max batches"), "eval.max_batches", false,
           [](T& t) -> int64_t& { return t.spec.eval.max_batches; });
  bind_int_list(form, tr("Distances"), "eval.distances", false,
                [](T& t) -> std::vector<int64_t>& { return t.spec.eval.distances; });
  bind_flag(form, tr("Per-layer ablation"), "eval.layer_ablation", false,
            [](T& t) -> bool& { return t.spec.eval.layer_ablation; });
  layout->addWidget(group);
  layout->addStretch(1);
  return page;
}

QWidget* ExperimentEditor::field(const QString& key) const {
  const bool per_stage = key.startsWith(QLatin1String("stage."));
  const QString relative = per_stage ? key.mid(6) : key;
  for (const auto& field : fields_)
    if (field->per_stage == per_stage && field->key == relative) return field->widget;
  return nullptr;
}

QString ExperimentEditor::error_text(const QString& key) const {
  QLabel* label = error_labels_.value(key);
  return label && !label->isHidden() ? label->text() : QString();
}

void ExperimentEditor::load_fields(bool per_stage) {
  StageSpec none;
  StageSpec& stage =
      per_stage && current_stage_ >= 0 ? stages_[static_cast<size_t>(current_stage_)] : none;
  Target target{spec_, stage};
  for (const auto& field : fields_)
    if (field->per_stage == per_stage) field->load(target);
}

void ExperimentEditor::store_fields(bool per_stage, std::vector<Error>* errors) {
  StageSpec none;
  StageSpec& stage =
      per_stage && current_stage_ >= 0 ? stages_[static_cast<size_t>(current_stage_)] : none;
  if (per_stage && current_stage_ < 0) return;
  Target target{spec_, stage};
  const QString prefix = per_stage ? QStringLiteral("stage[%1].").arg(current_stage_) : QString();
  for (const auto& field : fields_) {
    if (field->per_stage != per_stage) continue;
    if (std::optional<QString> error = field->store(target); error && errors)
      errors->push_back(
          make_error(error->toStdString(), Location{"", 0, (prefix + field->key).toStdString()}));
  }
}

void ExperimentEditor::set_spec(const ExperimentSpec& spec) {
  loading_ = true;
  spec_ = spec;
  stages_ = spec.stages;
  current_stage_ = stages_.empty() ? -1 : 0;
  load_fields(false);
  refresh_stage_list();
  if (current_stage_ >= 0) load_fields(true);
  stage_form_->setEnabled(current_stage_ >= 0);
  update_stage_kind_groups();
  loading_ = false;
  schedule_validation();
}

ExperimentSpec ExperimentEditor::spec(std::vector<Error>* form_errors) {
  store_fields(false, form_errors);
  store_fields(true, form_errors);
  ExperimentSpec result = spec_;
  result.stages = stages_;
  return result;
}

void ExperimentEditor::commit_stage() {
  std::vector<Error> ignored;  // reported by the next validation
  store_fields(true, &ignored);
}

void ExperimentEditor::show_stage(int index) {
  if (index == current_stage_) return;
  commit_stage();
  loading_ = true;
  current_stage_ = index >= 0 && index < static_cast<int>(stages_.size()) ? index : -1;
  if (current_stage_ >= 0) load_fields(true);
  stage_form_->setEnabled(current_stage_ >= 0);
  update_stage_kind_groups();
  stages_list_->setCurrentRow(current_stage_);
  loading_ = false;
  schedule_validation();
}

void ExperimentEditor::refresh_stage_list() {
  const bool was_loading = loading_;
  loading_ = true;
  stages_list_->clear();
  for (size_t i = 0; i < stages_.size(); ++i) {
    const StageSpec& stage = stages_[i];
    auto* item = new QListWidgetItem(QStringLiteral("%1. %2 — %3 steps%4")
                                         .arg(i + 1)
                                         .arg(QString::fromStdString(stage.name))
                                         .arg(stage.steps)
                                         .arg(stage.ssd ? tr(", SSD") : QString()),
                                     stages_list_);
    item->setToolTip(QString::fromStdString(stage.kind));
  }
  stages_list_->setCurrentRow(current_stage_);
  loading_ = was_loading;
}

void ExperimentEditor::update_stage_kind_groups() {
  if (current_stage_ < 0) {
    stage_kind_->setText(tr("No stage: add one with +"));
    return;
  }
  const StageSpec& stage = stages_[static_cast<size_t>(current_stage_)];
  stage_kind_->setText(
      tr("Stage %1: %2").arg(current_stage_ + 1).arg(QString::fromStdString(stage.kind)));
  transfer_group_->setVisible(stage.kind == kAttentionTransfer);
  lora_group_->setVisible(stage.kind == kLoraFinetune);
}

void ExperimentEditor::add_stage(const QString& kind) {
  commit_stage();
  const size_t position =
      current_stage_ < 0 ? stages_.size() : static_cast<size_t>(current_stage_) + 1;
  stages_.insert(stages_.begin() + static_cast<std::ptrdiff_t>(position),
                 default_stage(kind.toStdString()));
  current_stage_ = -1;  // the old index no longer names the shown stage
  refresh_stage_list();
  show_stage(static_cast<int>(position));
  emit changed();
}

void ExperimentEditor::remove_current_stage() {
  if (current_stage_ < 0) return;
  const int removed = current_stage_;
  stages_.erase(stages_.begin() + removed);
  current_stage_ = -1;
  refresh_stage_list();
  show_stage(std::min(removed, static_cast<int>(stages_.size()) - 1));
  if (stages_.empty()) {
    stage_form_->setEnabled(false);
    update_stage_kind_groups();
  }
  schedule_validation();
  emit changed();
}

void ExperimentEditor::move_current_stage(int offset) {
  const int from = current_stage_;
  const int to = from + offset;
  if (from < 0 || to < 0 || to >= static_cast<int>(stages_.size())) return;
  commit_stage();
  std::swap(stages_[static_cast<size_t>(from)], stages_[static_cast<size_t>(to)]);
  current_stage_ = -1;
  refresh_stage_list();
  show_stage(to);
  emit changed();
}

void ExperimentEditor::schedule_validation() {
  if (loading_) return;
  validation_timer_->start();
  emit changed();
}

std::vector<Error> ExperimentEditor::validate_now() {
  validation_timer_->stop();
  std::vector<Error> errors;
  ExperimentSpec current = spec(&errors);
  for (Error& error : hl::validate(current))
    errors.push_back(std::move(error));
  // The list shows names and step counts, which may just have changed.
  const int row = current_stage_;
  refresh_stage_list();
  stages_list_->setCurrentRow(row);
  show_errors(errors);
  emit validated(static_cast<int>(errors.size()));
  return errors;
}

void ExperimentEditor::show_errors(const std::vector<Error>& errors) {
  for (QLabel* label : error_labels_) {
    label->clear();
    label->setVisible(false);
  }
  QList<QString> global_keys, stage_keys;
  for (auto it = error_labels_.cbegin(); it != error_labels_.cend(); ++it) {
    if (it.key().startsWith(QLatin1String("stage.")))
      stage_keys << it.key().mid(6);
    else
      global_keys << it.key();
  }
  static const QRegularExpression stage_key(QStringLiteral("^stage\\[(\\d+)\\]\\.(.*)$"));
  errors_list_->clear();
  std::vector<bool> stage_has_error(stages_.size(), false);
  for (const Error& error : errors) {
    const QString key = QString::fromStdString(error.where.key);
    auto* item = new QListWidgetItem(QString::fromStdString(error.to_string()), errors_list_);
    item->setData(Qt::UserRole, key);
    QString label_key;
    const QRegularExpressionMatch match = stage_key.match(key);
    if (match.hasMatch()) {
      const int index = match.captured(1).toInt();
      if (index >= 0 && static_cast<size_t>(index) < stage_has_error.size())
        stage_has_error[static_cast<size_t>(index)] = true;
      if (index == current_stage_) {
        const QString relative = best_prefix(match.captured(2), stage_keys);
        if (!relative.isEmpty()) label_key = QStringLiteral("stage.") + relative;
      }
    } else {
      label_key = best_prefix(key, global_keys);
    }
    if (label_key.isEmpty()) continue;
    QLabel* label = error_labels_.value(label_key);
    // The label sits under its field, so the key is implied; an item of a list field
    // (data.train[1]) keeps its index.
    const QString own_key = match.hasMatch() ? QStringLiteral("stage.") + match.captured(2) : key;
    QString text = QString::fromStdString(error.message);
    if (own_key != label_key) text = own_key.mid(label_key.size()) + QStringLiteral(": ") + text;
    label->setText(label->text().isEmpty() ? text : label->text() + '\n' + text);
    label->setVisible(true);
  }
  for (int i = 0; i < stages_list_->count() && static_cast<size_t>(i) < stage_has_error.size(); ++i)
    stages_list_->item(i)->setForeground(stage_has_error[static_cast<size_t>(i)]
                                             ? QBrush(QColor(0xd6, 0x27, 0x28))
                                             : palette().brush(QPalette::Text));
}

std::vector<Error> ExperimentEditor::load_file(const QString& path) {
  ExperimentParse parsed = load_experiment_file(path.toStdString());
  if (!parsed.ok()) {
    show_errors(parsed.errors);
    return parsed.errors;
  }
  set_spec(*parsed.spec);
  file_ = path;
  file_label_->setText(QDir::toNativeSeparators(path));
  validate_now();
  return {};
}

Status ExperimentEditor::save_file(const QString& path) {
  const std::string text = to_toml(spec());
  QSaveFile file(path);
  if (!file.open(QIODevice::WriteOnly | QIODevice::Text))
    return make_error("cannot write the experiment: " + file.errorString().toStdString(),
                      Location{path.toStdString(), 0, ""});
  file.write(text.data(), static_cast<qint64>(text.size()));
  if (!file.commit())
    return make_error("cannot write the experiment: " + file.errorString().toStdString(),
                      Location{path.toStdString(), 0, ""});
  file_ = path;
  file_label_->setText(QDir::toNativeSeparators(path));
  return Status::Ok();
}

void ExperimentEditor::set_presets_directory(const QString& directory) {
  presets_directory_ = directory;
  presets_->clear();
  presets_->addItem(tr("(choose a preset)"));
  const QDir dir(directory);
  for (const QString& name : dir.entryList({QStringLiteral("*.toml")}, QDir::Files, QDir::Name))
    presets_->addItem(QFileInfo(name).completeBaseName(), dir.filePath(name));
}

void ExperimentEditor::load_preset(int index) {
  const QString path = presets_->itemData(index).toString();
  if (path.isEmpty()) return;
  if (!load_file(path).empty()) return;
  // A preset is a starting point: saving must not overwrite the shipped file.
  file_.clear();
  file_label_->setText(tr("(unsaved, from preset %1)").arg(presets_->itemText(index)));
}

}  // namespace hl::ui
