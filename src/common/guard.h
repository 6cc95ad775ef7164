// Thread tops. Objects come from every tenant and decoders are written by people: an exception
// that escapes a thread's loop would end the whole daemon (std::terminate), dropping every
// tenant's service updates for one bad object. keepRunning() logs it and runs the loop again
// after a pause instead (the loops are level-triggered: starting over re-reads what they need).
// Header-only: used by the libraries that log (spdlog), not by kst_core.
#pragma once

#include <chrono>
#include <exception>
#include <thread>

#include <spdlog/spdlog.h>

namespace kst {

/** Runs body() until it returns; after an exception, logs it and runs body() again once `pause`
 *  has passed, unless stopping() says the thread is to end. */
template <typename Body, typename Stopping>
void keepRunning(const char* what, Body&& body, Stopping&& stopping,
                 std::chrono::milliseconds pause = std::chrono::seconds(1)) {
  while (true) {
    try {
      body();
      return;
    } catch (const std::exception& e) {
      spdlog::error("{}: unexpected error: {}; starting the loop again", what, e.what());
    } catch (...) {
      spdlog::error("{}: unexpected error; starting the loop again", what);
    }
    for (auto waited = std::chrono::milliseconds(0); waited < pause;
         waited += std::chrono::milliseconds(50)) {
      if (stopping()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (stopping()) return;
  }
}

}  // namespace kst
