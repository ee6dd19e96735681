#include "ui/theme.hpp"

#include <qcustomplot.h>

#include <array>

namespace hl::ui {

QColor run_colour(int64_t run_id) {
  // A qualitative palette that stays distinguishable on light and dark backgrounds;
  // runs beyond it get hues spread by the golden ratio so neighbours still differ.
  static const std::array<QColor, 10> kPalette = {
      QColor(0x1f, 0x77, 0xb4), QColor(0xff, 0x7f, 0x0e), QColor(0x2c, 0xa0, 0x2c),
      QColor(0xd6, 0x27, 0x28), QColor(0x94, 0x67, 0xbd), QColor(0x8c, 0x56, 0x4b),
      QColor(0xe3, 0x77, 0xc2), QColor(0x17, 0xbe, 0xcf), QColor(0xbc, 0xbd, 0x22),
      QColor(0x7f, 0x7f, 0x7f)};
  const int64_t index = run_id > 0 ? run_id - 1 : -run_id;
  if (index < static_cast<int64_t>(kPalette.size())) return kPalette[static_cast<size_t>(index)];
  const double hue = std::fmod(0.618033988749895 * static_cast<double>(index), 1.0);
  return QColor::fromHsvF(static_cast<float>(hue), 0.65f, 0.85f);
}

bool is_dark(const QPalette& palette) {
  return palette.color(QPalette::Window).lightness() <
         palette.color(QPalette::WindowText).lightness();
}

QColor faded(QColor colour, double opacity) {
  colour.setAlphaF(static_cast<float>(opacity));
  return colour;
}

void style_plot(QCustomPlot* plot, const QPalette& palette) {
  const QColor background = palette.color(QPalette::Base);
  const QColor text = palette.color(QPalette::Text);
  QColor grid = text;
  grid.setAlpha(40);
  QColor sub_grid = text;
  sub_grid.setAlpha(18);
  plot->setBackground(background);
  for (QCPAxisRect* rect : plot->axisRects()) {
    rect->setBackground(background);
    for (QCPAxis* axis : rect->axes()) {
      axis->setBasePen(QPen(text));
      axis->setTickPen(QPen(text));
      axis->setSubTickPen(QPen(text));
      axis->setTickLabelColor(text);
      axis->setLabelColor(text);
      axis->grid()->setPen(QPen(grid, 0, Qt::DotLine));
      axis->grid()->setSubGridPen(QPen(sub_grid, 0, Qt::DotLine));
      axis->grid()->setZeroLinePen(QPen(grid));
    }
  }
  if (plot->legend) {
    plot->legend->setBrush(QBrush(faded(background, 0.85)));
    plot->legend->setTextColor(text);
    plot->legend->setBorderPen(QPen(grid));
  }
  for (int i = 0; i < plot->plotLayout()->elementCount(); ++i) {
    if (auto* title = qobject_cast<QCPTextElement*>(plot->plotLayout()->elementAt(i)))
      title->setTextColor(text);
  }
}

}  // namespace hl::ui
