// Kernel objects as value types. Desired and observed state are both expressed with these, so
// the diff is a set comparison, and the netlink layer only encodes/decodes them.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/ip.h"
#include "dataplane/bucket_map.h"

namespace kst::dp {

/** A network interface the daemon owns (name starts with the configured prefix). */
struct Link {
  enum class Kind : uint8_t { VxlanGpe, Ipip, Gre, Ip6tnl, Ip6gre, Other };
  std::string name;
  Kind kind = Kind::Other;
  bool external = false;         // collect_md (flow-based) device
  uint16_t port = 0;             // vxlan-gpe UDP port
  std::optional<IpAddress> local;   // per-endpoint GRE
  std::optional<IpAddress> remote;  // per-endpoint GRE
  uint32_t ifindex = 0;          // observed only; ignored by ==
  bool up = true;
  /** Desired: the MTU to set (0: whatever the kernel chose). Observed: the device's MTU. */
  uint32_t mtu = 0;

  /** Equal in everything that takes recreating the link to change. */
  bool sameConfig(const Link& o) const {
    return std::tie(name, kind, external, port, local, remote) ==
           std::tie(o.name, o.kind, o.external, o.port, o.local, o.remote);
  }
  /** The MTU, which changes in place (dp::LinkMtu); 0 on either side matches any. */
  bool sameMtu(const Link& o) const { return mtu == 0 || o.mtu == 0 || mtu == o.mtu; }
};
const char* kindName(Link::Kind k);

/** A nexthop object (ip nexthop). Encapsulation: none (dev only), IP (flow tunnels) or MPLS. */
struct Nexthop {
  enum class Encap : uint8_t { None, Ip, Mpls };
  uint32_t id = 0;
  Family family = Family::V4;  // family of the routes that use it
  Encap encap = Encap::None;
  std::optional<IpAddress> encapDst;  // Ip: outer destination (the pod)
  uint8_t ttl = 64;
  uint32_t mplsLabel = 0;
  std::optional<IpAddress> gateway;  // Mpls: via
  std::string dev;                   // output device name
  /** Ip over IPv6: leave TUNNEL_CSUM unset. vxlan needs the outer UDP checksum
   *  (docs/dataplane-notes.md "IPv6 outer UDP checksum"); a collect-md ip6gre receiver drops GRE-checksummed packets (RX errors, seen in the
   *  VM with kernel 6.1), so gre-flow asks for none. */
  bool noCsum = false;
  auto key() const { return std::tie(family, encap, encapDst, ttl, mplsLabel, gateway, dev); }
  bool sameConfig(const Nexthop& o) const {
    return id == o.id && key() == o.key() && noCsum == o.noCsum;
  }
};

struct RouteKey {
  Family family;
  uint32_t table;
  IpAddress dst;
  uint8_t prefixLen;
  auto operator<=>(const RouteKey&) const = default;
};

/** A unicast route in an owned table. Either via a nexthop object or directly out of a dev. */
struct Route {
  RouteKey key;
  uint32_t nhid = 0;
  std::string dev;           // when nhid == 0
  bool unreachable = false;  // catch-all in slot tables: marked traffic never leaks to main
  bool sameConfig(const Route& o) const {
    return key == o.key && nhid == o.nhid && dev == o.dev && unreachable == o.unreachable;
  }
};

/** ip rule: fwmark → table, at an owned priority. */
struct Rule {
  Family family = Family::V4;
  uint32_t priority = 0;
  uint32_t fwmark = 0;
  uint32_t table = 0;
  auto operator<=>(const Rule&) const = default;
};

struct Address {
  std::string dev;
  IpAddress ip;
  uint8_t prefixLen = 32;
  auto operator<=>(const Address&) const = default;
};

/** A (VIP, slot mark) pair: an element of the live-slot sets live4/live6 (desired/nft_render.cpp)
 *  and the unit in which slots are released. */
struct SlotMark {
  IpAddress vip;
  uint32_t mark;  // tableOffset + slot
  auto operator<=>(const SlotMark&) const = default;
};

/** The router's nftables state. The skeleton (chains, rules) is identified by a hash kept in
 *  the table's comment; the set/map contents are diffed element by element. */
/** One allowed source interval [first, last] of a VIP with loadBalancerSourceRanges (an
 *  element `VIP . first-last` of src4/src6, desired/nft_render.h). */
struct SourceInterval {
  IpAddress first, last;
  auto operator<=>(const SourceInterval&) const = default;
};

struct NftState {
  bool present = false;
  std::string skeleton;  // full text of table, chains, rules and empty sets (see nft_render)
  std::string skeletonId;  // short hash of skeleton, stored as the table comment
  std::set<IpAddress> vips;
  /** VIP → its bucket count (the bcount4/bcount6 maps, which select the VIP's `jhash … mod B`
   *  rule); a VIP without buckets has none. kForeignCount: an element not written by the daemon. */
  std::map<IpAddress, uint32_t> vipBuckets;
  static constexpr uint32_t kForeignCount = 0xffffffffu;
  /** (vip, bucket) → fwmark, one dense vector per VIP (bucket_map.h: 640k elements at 10k VIPs) */
  BucketMap buckets;
  /** Per-endpoint counter elements (ep4/ep6): VIP → slot mark → the endpoint in that slot (the
   *  element's comment, so that a slot given to another endpoint is a new element, its counter
   *  starting at zero). */
  std::map<IpAddress, std::map<uint32_t, IpAddress>> endpoints;
  /** VIPs whose sources are filtered (ranged4/ranged6) → their allowed source intervals of the
   *  VIP's family (src4/src6), disjoint and sorted; an empty list refuses every source. */
  std::map<IpAddress, std::vector<SourceInterval>> sourceRanges;
  /** (VIP, slot mark) of every slot holding an endpoint, draining ones included: the flow
   *  table's pins that are still valid (docs/load-balancing.md "Released slots"). */
  std::set<SlotMark> live;
  bool operator==(const NftState&) const = default;
};

/** Everything the router role owns in its network namespace. */
struct RouterState {
  std::vector<Link> links;
  std::vector<Nexthop> nexthops;  // sorted by id
  std::vector<Route> routes;      // sorted by key
  std::vector<Rule> rules;        // sorted
  NftState nft;
};

/** What the agent owns inside one pod's network namespace. */
struct PodState {
  std::vector<Link> links;
  std::vector<Address> addresses;  // on owned links (or lo, for MPLS)
  bool mplsLabelRoute = false;     // MPLS mode: label popped to lo
  bool operator==(const PodState& o) const = default;
};
bool operator==(const Link& a, const Link& b);

}  // namespace kst::dp
