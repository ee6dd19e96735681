// Export: the CSV holds exactly the logged rows of the chosen runs; plots save as images.
#include "ui/export.hpp"

#include <qcustomplot.h>

#include <QFile>
#include <QFileInfo>
#include <cmath>

#include "ui_test_util.hpp"

namespace hl::ui {
namespace {

using test::TempStore;

QStringList read_lines(const QString& path) {
  QFile file(path);
  EXPECT_TRUE(file.open(QIODevice::ReadOnly));
  QStringList lines = QString::fromUtf8(file.readAll()).split('\n');
  if (!lines.isEmpty() && lines.back().isEmpty()) lines.removeLast();
  return lines;
}

TEST(ExportTest, WritesTheSelectedRunsMetricsAsCsv) {
  TempStore temp;
  store::RunWriter a = temp.create("plain");
  store::RunWriter b = temp.create("needs, \"quotes\"");
  store::RunWriter c = temp.create("not exported");
  HL_ASSERT_OK(a.log_scalar("loss", 0, 2.5));
  HL_ASSERT_OK(a.log_scalar("loss", 1, 0.1));
  HL_ASSERT_OK(a.log_scalar("lr", 0, 1e-4));
  HL_ASSERT_OK(b.log_scalar("loss", 3, std::nan("")));
  HL_ASSERT_OK(c.log_scalar("loss", 0, 9.0));
  for (store::RunWriter* writer : {&a, &b, &c})
    HL_ASSERT_OK(writer->close());

  const QString out = temp.file("metrics.csv");
  Result<int64_t> rows = write_metrics_csv(temp.path(), {a.run_id(), b.run_id()}, out);
  ASSERT_TRUE(rows.ok()) << rows.error().to_string();
  EXPECT_EQ(*rows, 4);
  const QStringList lines = read_lines(out);
  ASSERT_EQ(lines.size(), 5);
  EXPECT_EQ(lines[0], "run_id,run_uuid,run_name,metric,step,wall_ms,value");
  auto fields = [&](int line) { return lines[line].split(','); };
  const QString uuid_a = QString::fromStdString(a.uuid());
  // Keys come sorted (loss, lr); 0.1 keeps its shortest round-trip form.
  EXPECT_EQ(fields(1)[0], QString::number(a.run_id()));
  EXPECT_EQ(fields(1)[1], uuid_a);
  EXPECT_EQ(fields(1)[2], "plain");
  EXPECT_EQ(fields(1)[3], "loss");
  EXPECT_EQ(fields(1)[4], "0");
  EXPECT_EQ(fields(1)[6], "2.5");
  EXPECT_EQ(fields(2)[6], "0.1");
  EXPECT_EQ(fields(3)[3], "lr");
  EXPECT_EQ(fields(3)[6].toDouble(), 1e-4);  // shortest form that reads back exactly
  bool wall_ok = false;
  EXPECT_GT(fields(1)[5].toLongLong(&wall_ok), 1600000000000LL);
  EXPECT_TRUE(wall_ok);
  EXPECT_TRUE(lines[4].startsWith(QStringLiteral("%1,%2,\"needs, \"\"quotes\"\"\",loss,3,")
                                      .arg(b.run_id())
                                      .arg(QString::fromStdString(b.uuid()))))
      << lines[4].toStdString();
  EXPECT_TRUE(lines[4].endsWith(",nan"));

  // Only the chosen keys.
  ASSERT_TRUE(write_metrics_csv(temp.path(), {a.run_id()}, out, {"lr"}).ok());
  EXPECT_EQ(read_lines(out).size(), 2);
  // A run that does not exist is an error, not an empty file.
  EXPECT_FALSE(write_metrics_csv(temp.path(), {999}, temp.file("x.csv")).ok());
}

TEST(ExportTest, SavesPlotsAsPngAndPdf) {
  TempStore temp;
  QCustomPlot plot;
  plot.resize(400, 300);
  plot.addGraph()->setData({0, 1, 2}, {1, 3, 2});
  plot.rescaleAxes();
  HL_ASSERT_OK(save_plot(&plot, temp.file("plot.png")));
  QImage image(temp.file("plot.png"));
  EXPECT_EQ(image.width(), 800);  // 2x scale for crisp figures
  HL_ASSERT_OK(save_plot(&plot, temp.file("plot.pdf")));
  QFile pdf(temp.file("plot.pdf"));
  ASSERT_TRUE(pdf.open(QIODevice::ReadOnly));
  EXPECT_TRUE(pdf.read(5).startsWith("%PDF"));
  Status bad = save_plot(&plot, temp.file("plot.bmpx"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find(".bmpx"), std::string::npos);
}

}  // namespace
}  // namespace hl::ui
