#include "ui/export.hpp"

#include <qcustomplot.h>

#include <QFileInfo>
#include <QSaveFile>
#include <charconv>
#include <cmath>

#include "core/store/run_reader.hpp"

#ifdef HL_HAVE_QT_SVG
#include <QSvgGenerator>
#endif

namespace hl::ui {
namespace {

std::string csv_cell(const std::string& text) {
  if (text.find_first_of(",\"\n\r") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

std::string number(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[32];
  auto [end, error] = std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::string(buffer, end);
}

}  // namespace

Result<int64_t> write_metrics_csv(const std::string& db_path, const std::vector<int64_t>& run_ids,
                                  const QString& out_path, const QStringList& keys) {
  Result<store::RunReader> reader = store::RunReader::open(db_path, store::Access::read_only);
  if (!reader.ok()) return reader.error();
  QSaveFile file(out_path);
  if (!file.open(QIODevice::WriteOnly))
    return make_error("cannot write CSV: " + file.errorString().toStdString(),
                      Location{out_path.toStdString(), 0, ""});
  std::string text = "run_id,run_uuid,run_name,metric,step,wall_ms,value\n";
  int64_t rows = 0;
  for (int64_t run_id : run_ids) {
    Result<store::RunInfo> run = reader->run(run_id);
    if (!run.ok()) return run.error();
    std::vector<std::string> run_keys;
    if (keys.isEmpty()) {
      Result<std::vector<std::string>> all = reader->scalar_keys(run_id);
      if (!all.ok()) return all.error();
      run_keys = std::move(all).value();
    } else {
      for (const QString& key : keys)
        run_keys.push_back(key.toStdString());
    }
    const std::string prefix =
        std::to_string(run_id) + "," + csv_cell(run->uuid) + "," + csv_cell(run->name) + ",";
    for (const std::string& key : run_keys) {
      Result<std::vector<store::ScalarPoint>> points = reader->scalars_after(run_id, key, -1);
      if (!points.ok()) return points.error();
      const std::string key_prefix = prefix + csv_cell(key) + ",";
      for (const store::ScalarPoint& point : *points) {
        text += key_prefix;
        text += std::to_string(point.step) + "," + std::to_string(point.wall_ms) + "," +
                number(point.value) + "\n";
        ++rows;
      }
      // Written in pieces so that exporting long runs does not hold everything in memory.
      if (text.size() > (1u << 20)) {
        file.write(text.data(), static_cast<qint64>(text.size()));
        text.clear();
      }
    }
  }
  file.write(text.data(), static_cast<qint64>(text.size()));
  if (!file.commit())
    return make_error("cannot write CSV: " + file.errorString().toStdString(),
                      Location{out_path.toStdString(), 0, ""});
  return rows;
}

Status save_plot(QCustomPlot* plot, const QString& path, int width, int height) {
  const QString suffix = QFileInfo(path).suffix().toLower();
  bool ok = false;
  if (suffix == QLatin1String("png")) {
    ok = plot->savePng(path, width, height, 2.0);
  } else if (suffix == QLatin1String("pdf")) {
    ok = plot->savePdf(path, width, height);
  } else if (suffix == QLatin1String("svg")) {
#ifdef HL_HAVE_QT_SVG
    QSvgGenerator generator;
    generator.setFileName(path);
    const int w = width > 0 ? width : plot->width();
    const int h = height > 0 ? height : plot->height();
    generator.setSize(QSize(w, h));
    generator.setViewBox(QRect(0, 0, w, h));
    QCPPainter painter;
    painter.begin(&generator);
    plot->toPainter(&painter, w, h);
    ok = painter.end();
#else
    return make_error("SVG export needs the Qt SVG module, which this build lacks; use PNG or PDF",
                      Location{path.toStdString(), 0, ""});
#endif
  } else {
    return make_error("unknown image type '." + suffix.toStdString() + "': use .png, .pdf or .svg",
                      Location{path.toStdString(), 0, ""});
  }
  if (!ok) return make_error("could not write the image", Location{path.toStdString(), 0, ""});
  return Status::Ok();
}

QString plot_file_filter() {
#ifdef HL_HAVE_QT_SVG
  return QStringLiteral("PNG image (*.png);;PDF document (*.pdf);;SVG image (*.svg)");
#else
  return QStringLiteral("PNG image (*.png);;PDF document (*.pdf)");
#endif
}

}  // namespace hl::ui
