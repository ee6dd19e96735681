// Colours and plot styling shared by every view: one colour per run, light/dark aware.
#pragma once

#include <QColor>
#include <QPalette>
#include <cstdint>

class QCustomPlot;

namespace hl::ui {

/// The colour of a run in every chart and in the runs table; stable across sessions.
QColor run_colour(int64_t run_id);

/// True when the application palette is dark (window background darker than its text).
bool is_dark(const QPalette& palette);

/// Applies the palette's background, text and grid colours to a plot's axes and legend.
void style_plot(QCustomPlot* plot, const QPalette& palette);

/// `colour` with the given opacity (0..1), for faint raw curves behind smoothed ones.
QColor faded(QColor colour, double opacity);

}  // namespace hl::ui
