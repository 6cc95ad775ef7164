// VIP ownership policy: which Service may claim which externally routable address.
//
// Default-deny. The cluster operator lists pools (`--vip-pool CIDR[@namespace,…]`); a VIP is
// allowed for a Service only when it lies inside a pool open to the Service's namespace and
// outside every denied range: the cluster's own pod, Service and node ranges (configured) and
// the reserved ranges no data centre routes to a cluster (unspecified, loopback, link-local —
// 169.254.169.254 is the metadata address of most clouds —, multicast, broadcast/class E,
// IPv4-mapped IPv6). Refused VIPs get no kernel object and are never announced; the model
// reports them as problems (Kubernetes Event + log line naming the Service).
//
// The pure part of LoadBalancer address allocation lives here too: the lowest free address of
// the first pool open to the namespace (IPv4 pools of /30 and wider skip their network and
// broadcast addresses), deterministic for a given set of taken addresses.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/ip.h"
#include "common/prefix.h"

namespace kst {

struct VipPool {
  IpPrefix prefix;
  /** Empty: every namespace. */
  std::set<std::string> namespaces;
  bool allows(const std::string& ns) const { return namespaces.empty() || namespaces.contains(ns); }
  bool operator==(const VipPool&) const = default;
};

/** "203.0.113.0/24", "2001:db8:1::/64@team-a,team-b". At most 64 namespaces of at most 63
 *  characters (DNS labels) each. */
Result<VipPool> parseVipPool(std::string_view text);

/** Splits TUNNEL_VIP_POOLS (pools separated by spaces, tabs or newlines). */
Result<std::vector<VipPool>> parseVipPools(std::string_view text);

struct VipPolicy {
  std::vector<VipPool> pools;
  /** The cluster's pod, Service and node ranges: never a VIP. */
  std::vector<IpPrefix> clusterRanges;
  /** Operators who truly want the old behaviour (any address but the reserved and cluster
   *  ranges) say so explicitly (`--vip-pool 0.0.0.0/0 --vip-pool ::/0`); there is no switch. */
  bool operator==(const VipPolicy&) const = default;
};

/** Why a VIP is refused, or nullopt when the Service's namespace may use it. The message names
 *  the range that refused it. */
std::optional<std::string> vipRefusal(const VipPolicy& policy, const std::string& ns,
                                      const IpAddress& vip);

/** The reserved ranges (always refused), for documentation and tests. */
const std::vector<IpPrefix>& reservedVipRanges();

/** The lowest free, allowed address for a Service of namespace ns, from the first pool (in
 *  configuration order) of the wanted family open to ns; nullopt when every such pool is full.
 *  Scans at most `limit` addresses per pool (IPv6 pools are huge). */
std::optional<IpAddress> allocateVip(const VipPolicy& policy, const std::string& ns, Family family,
                                     const std::set<IpAddress>& taken, uint64_t limit = 1u << 20);

}  // namespace kst
