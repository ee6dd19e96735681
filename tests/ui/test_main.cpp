// hl_test_ui's main: a QApplication on the offscreen platform around GoogleTest, so that
// widgets, timers and queued signals work inside tests.
#include <gtest/gtest.h>

#include <QApplication>
#include <QStandardPaths>

int main(int argc, char** argv) {
  if (qEnvironmentVariableIsEmpty("QT_QPA_PLATFORM")) qputenv("QT_QPA_PLATFORM", "offscreen");
  // Settings and default paths go to test locations, never the user's.
  QStandardPaths::setTestModeEnabled(true);
  QApplication app(argc, argv);
  QApplication::setOrganizationName(QStringLiteral("HybridLabTest"));
  QApplication::setApplicationName(QStringLiteral("hl_test_ui"));
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
