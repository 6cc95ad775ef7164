// `kube-service-tunnel drain` / `undrain`, run on a tunnel node next to the daemon
// (docs/announce.md): drain writes the drained state file, waits until the running daemon has
// emptied the announce table (bird2 then withdraws every VIP from the DC routers), holds for
// the time the withdrawal takes to reach the DC routers' forwarding, and reports that the node
// may be stopped. The file survives daemon restarts; undrain removes it.
#pragma once

#include <chrono>
#include <iosfwd>

#include "reconcile/announce_reconciler.h"

namespace kst {

struct DrainOptions {
  std::chrono::milliseconds hold{std::chrono::seconds(2)};
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  std::chrono::milliseconds poll{std::chrono::milliseconds(100)};
};

/** @return process exit code: 0 drained, 1 the table did not empty in time or I/O failed. */
int drainNode(AnnounceReconciler& announce, const std::string& drainFile, const DrainOptions& o,
              std::ostream& out);
/** @return process exit code. */
int undrainNode(const std::string& drainFile, std::ostream& out);

}  // namespace kst
