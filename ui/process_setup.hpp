// Process-wide settings the workbench starts with (its benchmark starts with the same ones).
#pragma once

namespace hl::ui {

/// Keeps freed heap memory for reuse instead of handing it back to the system: a plot builds
/// and drops buffers of megabytes, and every fresh page costs a fault on first touch (about
/// 1,400 of them, most of the UI thread's time, in the first view of 20 long runs).
void keep_freed_memory();

}  // namespace hl::ui
