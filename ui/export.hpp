// Export: the selected runs' metrics as CSV, and any plot as PNG, PDF or SVG.
#pragma once

#include <QString>
#include <QStringList>
#include <cstdint>
#include <string>
#include <vector>

#include "core/util/error.hpp"

class QCustomPlot;

namespace hl::ui {

/// Writes every scalar row of the given runs (or only `keys`, if not empty) as CSV with the
/// header run_id,run_uuid,run_name,metric,step,wall_ms,value; values in shortest
/// round-trip form, NaN as "nan". Returns the number of data rows written.
Result<int64_t> write_metrics_csv(const std::string& db_path, const std::vector<int64_t>& run_ids,
                                  const QString& out_path, const QStringList& keys = {});

/// Saves a plot by the file's extension: .png, .pdf or .svg (SVG needs Qt SVG at build time).
/// width/height 0 = the plot's current size.
Status save_plot(QCustomPlot* plot, const QString& path, int width = 0, int height = 0);

/// The file dialog filter for save_plot.
QString plot_file_filter();

}  // namespace hl::ui
