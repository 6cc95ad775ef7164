// Phase timing for pass results (benchmarks, debug log).
#pragma once

#include <chrono>

namespace kst {

/** Seconds from `t` to now; `t` becomes now (the start of the next phase). */
inline double lapSeconds(std::chrono::steady_clock::time_point& t) {
  auto now = std::chrono::steady_clock::now();
  double d = std::chrono::duration<double>(now - t).count();
  t = now;
  return d;
}

}  // namespace kst
