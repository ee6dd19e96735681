// SIGINT / SIGTERM turn into a flag that long loops check at step boundaries, so a
// cancelled run can checkpoint and record its status before it exits.
#pragma once

#include <atomic>

namespace hl {

/// Installs SIGINT and SIGTERM handlers that set the flag; a second signal exits at once.
void install_cancel_handlers();
/// The flag the handlers set.
const std::atomic<bool>& cancel_requested();
/// Sets the flag (tests and in-process callers).
void request_cancel();

}  // namespace hl
