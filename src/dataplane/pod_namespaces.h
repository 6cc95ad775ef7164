// The agent's kernel boundary: pod network namespaces, the rtnetlink client inside each, the
// sysctls and the nft table the agent keeps there. The real implementation is
// linux/netns_provider.h (+ linux/pod_nft.h); tests implement it over fake kernels.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/ip.h"
#include "dataplane/kernel.h"

namespace kst::dp {

/**
 * What the agent's nft table in a pod namespace (`inet kube_service_tunnel_pod`) must hold
 * (computed by desired/agent.h podTable, rendered by renderPodTable):
 *  - UDP replies from the VIP: peers learned from datagrams that came through decapLink get
 *    their replies source-NATed back to the VIP they wrote to (docs/dataplane-notes.md "Pods");
 *  - TCP MSS clamp: SYNs (and SYN-ACKs) whose source is one of `vips` get their MSS option
 *    lowered to mss4 / mss6 (never raised). The sets `vips4`/`vips6` are kept equal to `vips`
 *    element by element; mss4 = mss6 = 0 means no clamping (no sets, no clamp chain).
 */
struct PodTable {
  std::string decapLink;
  uint16_t mss4 = 0;
  uint16_t mss6 = 0;
  std::set<IpAddress> vips;
  bool clamps() const { return mss4 != 0 || mss6 != 0; }
  bool operator==(const PodTable&) const = default;
};

/** Sysctls a pod namespace needs to receive tunnelled traffic. */
struct PodSysctls {
  /** Device the decapsulated packets arrive on (rp_filter off there and on `all`). */
  std::string decapDevice;
  /** MPLS mode: platform_labels above this label and MPLS input on every device. */
  bool mpls = false;
  uint32_t mplsLabel = 0;
};

/** How the agent reaches pod namespaces; the real one scans /run/netns and /proc. */
class NetnsProvider {
 public:
  struct Ns {
    std::string id;    // stable identity (inode)
    std::string path;  // for logs
  };
  virtual ~NetnsProvider() = default;
  /** All candidate namespaces except the daemon's own. */
  virtual std::vector<Ns> list() = 0;
  /** A client bound to namespace ns (cached by the provider). */
  virtual Result<NetlinkClient*> client(const Ns& ns) = 0;
  /** Applies the pod-side sysctls inside ns (once per namespace). */
  virtual Status prepare(const Ns& ns, const PodSysctls& sysctls) = 0;
  /** Drops whatever is cached for ns (it vanished or is no longer served). */
  virtual void forget(const Ns& ns) = 0;
  /**
   * Makes the pod's nft table equal to `want` (PodTable above); want == nullptr removes it.
   * A UDP server bound to 0.0.0.0 answers from the pod's own address, which the client drops;
   * the table remembers the peers whose datagrams arrived through the decap link and
   * source-NATs replies to them to the VIP they wrote to. TCP: SYNs from the pod's VIPs get
   * their MSS lowered so the client's segments fit the tunnel (--underlay-mtu). Idempotent:
   * an identical table is not written.
   */
  virtual Status podTable(const Ns& /*ns*/, const PodTable* /*want*/) { return {}; }
};

}  // namespace kst::dp
