#include "daemon/drain.h"

#include <ostream>
#include <thread>

namespace kst {

int drainNode(AnnounceReconciler& announce, const std::string& drainFile, const DrainOptions& o,
              std::ostream& out) {
  if (auto s = writeDrainFile(drainFile); !s) {
    out << "drain: " << s.error().message << "\n";
    return 1;
  }
  out << "drain: " << drainFile << " written; waiting for the daemon to empty announce table "
      << announce.table() << "\n" << std::flush;
  auto start = std::chrono::steady_clock::now();
  size_t left = 0;
  while (true) {
    auto routes = announce.observe();
    if (!routes) {
      out << "drain: reading table " << announce.table() << ": " << routes.error().message << "\n";
      return 1;
    }
    left = routes->size();
    if (left == 0) break;
    if (std::chrono::steady_clock::now() - start >= o.timeout) {
      out << "drain: " << left << " VIPs still announced after "
          << std::chrono::duration_cast<std::chrono::seconds>(o.timeout).count()
          << " s: is the daemon running with --announce-table " << announce.table()
          << " and --state-dir of " << drainFile << "?\n";
      return 1;
    }
    std::this_thread::sleep_for(o.poll);
  }
  auto ms = [](auto d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  out << "drain: every VIP withdrawn after " << ms(std::chrono::steady_clock::now() - start)
      << " ms; holding " << ms(o.hold) << " ms for the DC routers to move the traffic away\n"
      << std::flush;
  std::this_thread::sleep_for(o.hold);
  out << "drained: this node receives no new VIP traffic; it may be stopped "
         "(`kube-service-tunnel undrain` reverts)\n";
  return 0;
}

int undrainNode(const std::string& drainFile, std::ostream& out) {
  if (auto s = removeDrainFile(drainFile); !s) {
    out << "undrain: " << s.error().message << "\n";
    return 1;
  }
  out << "undrained: the daemon announces this node's VIPs again on its next pass\n";
  return 0;
}

}  // namespace kst
