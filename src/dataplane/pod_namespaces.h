// The agent's kernel boundary: pod network namespaces, the rtnetlink client inside each, the
// sysctls and the nft table the agent keeps there. The real implementation is
// linux/netns_provider.h (+ linux/pod_nft.h); tests implement it over fake kernels.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/ip.h"
#include "dataplane/kernel.h"
#include "dataplane/modes.h"

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
  /** --pod-decap bpf: decapsulated datagrams arrive on the pod's interface, not decapLink, so
   *  peers are learned from UDP to one of `vips` (kept even without clamping) arriving on
   *  any interface but lo. A VIP is reachable only through a tunnel (device or program). */
  bool learnByVip = false;
  bool clamps() const { return mss4 != 0 || mss6 != 0; }
  /** The table has the vips4/vips6 sets. */
  bool hasVipSets() const { return clamps() || learnByVip; }
  bool operator==(const PodTable&) const = default;
};

/**
 * The pod-side decapsulation program (--pod-decap bpf; desired/agent.h podDecap, the kernel
 * side linux/pod_decap.h): in one pod namespace, on the interfaces holding `podIps`, strip the
 * outer headers of `mode`'s tunnel packets to one of `podIps` whose inner destination is one of
 * `vips` (the VIPs the agent has put on the pod's decap device).
 */
struct PodDecap {
  Mode mode = Mode::VxlanGpe;
  uint16_t port = 0;  // vxlan-gpe UDP port
  std::set<IpAddress> podIps;
  std::set<IpAddress> vips;
  bool operator==(const PodDecap&) const = default;
};

/** The program's address map: address → flags. */
inline constexpr uint32_t kPodDecapVip = 1;  // an inner destination (a VIP of this pod)
inline constexpr uint32_t kPodDecapPod = 2;  // an outer destination (the pod's address)

/** The program as found in a pod namespace. */
struct ObservedPodDecap {
  /** The program id kept in its config map ("" : no program of ours attached). */
  std::string program;
  /** Every interface runs the same program instance (false: several, rebuilt as one). */
  bool consistent = true;
  /** Interfaces whose ingress runs our filter. */
  std::set<std::string> attached;
  /** Its address map. */
  std::map<IpAddress, uint32_t> addrs;
};

/** What turns an observed program into the wanted one (desired/agent.h podDecapDiff). */
struct PodDecapChanges {
  /** Load a fresh program with fresh maps (all of `put`), then attach it to every interface
   *  of `attach`, replacing ours in place (no gap). */
  bool load = false;
  std::vector<std::string> attach;
  std::vector<std::string> detach;
  /** Map writes, in order: entries to remove, then entries to write. */
  std::vector<IpAddress> erase;
  std::vector<std::pair<IpAddress, uint32_t>> put;
  size_t size() const {
    return (load ? 1 : 0) + attach.size() + detach.size() + erase.size() + put.size();
  }
  bool empty() const { return size() == 0; }
};

/** Sysctls a pod namespace needs to receive tunnelled traffic. */
struct PodSysctls {
  /** Device the decapsulated packets arrive on (rp_filter off there and on `all`). */
  std::string decapDevice;
  /** MPLS mode: platform_labels above this label and MPLS input on every device. */
  bool mpls = false;
  uint32_t mplsLabel = 0;
};

/**
 * How the agent reaches pod namespaces; the real one (linux/netns_provider.h) scans /run/netns
 * and /proc. A namespace is *held* from the moment list() or routed() returns it until
 * forget()/retainOnly() releases it: every later operation on it (client, prepare, podTable)
 * goes to exactly that namespace (the real provider keeps an open handle; a path that now
 * names another namespace, e.g. a reused /proc/PID, changes nothing). The node's own namespace
 * (and the host's) is never a candidate.
 */
class NetnsProvider {
 public:
  struct Ns {
    std::string id;    // stable identity while held (device:inode of the namespace)
    std::string path;  // the path it was found at (for logs only)
  };
  virtual ~NetnsProvider() = default;
  /** All candidate namespaces except the daemon's own (and the host's); each is held. */
  virtual std::vector<Ns> list() = 0;
  /**
   * For each pod address, the namespace the node's own routing delivers it to
   * (dataplane/pod_identity.h: route → host-side veth, or bridge → neighbour → forwarding
   * entry → veth; the veth's peer namespace, matched to a candidate by the nsid the node's
   * namespace gives it), held; or why there is none (no route, not a veth, peer not found).
   * Addresses are not checked here: the caller verifies that the namespace holds the address.
   */
  virtual std::map<IpAddress, Result<Ns>> routed(const std::vector<IpAddress>& ips) = 0;
  /** A client bound to namespace ns (cached while ns is held). */
  virtual Result<NetlinkClient*> client(const Ns& ns) = 0;
  /** Applies the pod-side sysctls inside ns (once per namespace). */
  virtual Status prepare(const Ns& ns, const PodSysctls& sysctls) = 0;
  /** Releases ns: its handle, client socket and caches (it vanished or is no longer served). */
  virtual void forget(const Ns& ns) = 0;
  /** Releases every held namespace whose id is not in keep (end of a pass). */
  virtual void retainOnly(const std::set<std::string>& keep) = 0;
  /**
   * Makes the pod's nft table equal to `want` (PodTable above); want == nullptr removes it.
   * A UDP server bound to 0.0.0.0 answers from the pod's own address, which the client drops;
   * the table remembers the peers whose datagrams arrived through the decap link and
   * source-NATs replies to them to the VIP they wrote to. TCP: SYNs from the pod's VIPs get
   * their MSS lowered so the client's segments fit the tunnel (--underlay-mtu). Idempotent:
   * an identical table is not written.
   */
  virtual Status podTable(const Ns& /*ns*/, const PodTable* /*want*/) { return {}; }
  /**
   * Makes the pod-side decapsulation program in ns equal to `want` (PodDecap above; nullptr:
   * none of ours attached, its maps gone with it). Returns the number of changes made (0 when
   * the namespace already holds exactly `want`: a restarted agent adopts it).
   */
  virtual Result<size_t> podDecap(const Ns& /*ns*/, const PodDecap* /*want*/) { return 0; }
};

}  // namespace kst::dp
