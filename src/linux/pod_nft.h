// The pod-side nft table (dp::PodTable, rendered by desired/agent.h renderPodTable): UDP
// replies leave from the VIP, and TCP SYNs from a VIP carry an MSS that fits the tunnel.
#pragma once

#include <map>
#include <string>

#include "common/error.h"
#include "dataplane/pod_namespaces.h"

namespace kst {

/** Writes the pod table into namespaces through libnftables, remembering what each holds so
 *  that an unchanged table costs nothing. */
class PodNftTables {
 public:
  /** Makes the table in the namespace of handle nsFd (id nsId) equal to `want` (nullptr: no
   *  table); reads the namespace's table first unless the cache already says it matches. */
  Status apply(const std::string& nsId, int nsFd, const dp::PodTable* want);
  /** Forgets the cached table of a namespace (it vanished, or its state is unknown). */
  void forget(const std::string& nsId) { installed_.erase(nsId); }

 private:
  std::map<std::string, dp::PodTable> installed_;  // ns id → table installed (or found) there
};

}  // namespace kst
