#include "core/run/cancellation.hpp"

#include <csignal>
#include <unistd.h>

namespace hl {

namespace {

std::atomic<bool> g_cancel{false};

extern "C" void on_signal(int signal) {
  if (g_cancel.exchange(true)) _exit(128 + signal);  // asked twice: stop now
}

}  // namespace

void install_cancel_handlers() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

const std::atomic<bool>& cancel_requested() { return g_cancel; }

void request_cancel() { g_cancel = true; }

}  // namespace hl
