// Which network namespace is a pod's: the one the node's own routing delivers the pod's
// address to (docs/pod-identity.md). Pure: the facts read from the node's
// namespace (the route to the pod IP, links, neighbours, bridge forwarding entries) in, the
// peer namespace's id (IFLA_LINK_NETNSID of the host-side veth) out. The kernel reads are
// linux/host_view.h; the reconciler matches the nsid to a held namespace handle.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/ip.h"

namespace kst::dp {

using MacAddress = std::array<uint8_t, 6>;

/** A link of the node's namespace as far as identification needs it. */
struct HostLink {
  uint32_t ifindex = 0;
  std::string name;
  std::string kind;                 // IFLA_INFO_KIND ("veth", "bridge", …; "" for none)
  uint32_t master = 0;              // IFLA_MASTER (a bridge port's bridge)
  std::optional<int32_t> linkNetnsid;  // IFLA_LINK_NETNSID: the peer's namespace (veth)
  std::optional<MacAddress> mac;    // IFLA_ADDRESS
};

/** The node's route to the pod address (RTM_GETROUTE, as `ip route get POD`). */
struct RouteToPod {
  uint32_t oif = 0;
  bool gateway = false;  // RTA_GATEWAY / RTA_VIA / RTA_MULTIPATH
  uint8_t type = 0;      // RTN_UNICAST = 1, RTN_LOCAL = 2, …
  std::optional<IpAddress> prefsrc;  // RTA_PREFSRC: the source address the kernel would use
};

/** A neighbour entry (IP → MAC on a device). */
struct Neighbour {
  IpAddress ip;
  uint32_t ifindex = 0;
  std::optional<MacAddress> mac;
  uint16_t state = 0;  // NUD_*
};

/** A bridge forwarding entry (MAC → port), AF_BRIDGE neighbour dump. */
struct FdbEntry {
  MacAddress mac{};
  uint32_t port = 0;    // ndm_ifindex: the bridge port
  uint32_t master = 0;  // NDA_MASTER: the bridge
  bool local = false;   // NUD_PERMANENT: the bridge's own or a port's own address
};

struct HostFacts {
  std::map<uint32_t, HostLink> links;  // by ifindex
  std::vector<Neighbour> neighbours;
  std::vector<FdbEntry> fdb;
};

/** Where the node's routing delivers a pod address. */
struct PodPeer {
  int32_t nsid = -1;       // the host-side veth's IFLA_LINK_NETNSID
  std::string hostDevice;  // the host-side veth
  std::string via;         // the bridge in between, or ""
};

/** Error code of podPeer when the answer needs a neighbour entry (or a forwarding entry) the
 *  node has not learned yet: the caller may provoke resolution and retry. */
inline constexpr int kNeedsNeighbour = 11;  // EAGAIN

/**
 * The veth the node's routing delivers `ip` to and its peer namespace:
 *  - a unicast route without a gateway whose device is a veth (routed, Calico-style /32
 *    routes): that veth;
 *  - one whose device is a bridge (the CNI bridge plugin): the neighbour entry for `ip` on the
 *    bridge (a usable state: not INCOMPLETE/FAILED) gives the MAC, the bridge's forwarding
 *    entry for that MAC (not a local one) the port, which must be a veth.
 * Refused (an Error naming the reason): no route, a local/blackhole/… route, a gateway, any
 * other device kind, a veth without IFLA_LINK_NETNSID (its peer is in the node's own
 * namespace), a MAC on more than one port.
 */
Result<PodPeer> podPeer(const IpAddress& ip, const RouteToPod& route, const HostFacts& facts);

/** True when some route device is a bridge (then neighbours and forwarding entries are needed). */
bool needsBridgeFacts(const std::vector<RouteToPod>& routes, const HostFacts& facts);

}  // namespace kst::dp
