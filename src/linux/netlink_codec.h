// rtnetlink message encoding and decoding for the kernel objects in dataplane/types.h.
//
// Pure functions over byte buffers (no sockets), so the exact bytes are unit-tested against
// what iproute2 sends for the same command (tests/data/netlink/*.hex). libmnl builds and walks
// the attributes; the rtnetlink layouts follow rtnetlink(7), <linux/nexthop.h>,
// <linux/lwtunnel.h>, <linux/fib_rules.h> and iproute2's ip/iplink_vxlan.c, link_gre.c,
// link_iptnl.c, ipnexthop.c, iproute_lwtunnel.c.
//
//   nlmsghdr | rtmsg/nhmsg/fib_rule_hdr/ifinfomsg/ifaddrmsg | attributes (TLV, 4-aligned)
//   nexthop with IP encap:
//     NHA_ID u32 | NHA_OIF u32 | NHA_ENCAP_TYPE u16 = LWTUNNEL_ENCAP_IP(6)
//     NHA_ENCAP { LWTUNNEL_IP(6)_ID be64 | _DST | _TTL/HOPLIMIT u8 | _FLAGS be16 }
#pragma once

#include <linux/netlink.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dataplane/types.h"

namespace kst::nl {

using Message = std::vector<uint8_t>;

enum class Op : uint8_t { Add, Replace, Delete };

struct Tags {
  uint8_t protocol = 211;  // rtm_protocol / nh_protocol / FRA_PROTOCOL / IFA_PROTO
};

// ---- requests (seq is filled in by the socket) ----
Message encodeLink(const dp::Link& link, Op op);
Message encodeNexthop(const dp::Nexthop& nh, uint32_t oif, Op op, const Tags& tags);
Message encodeRoute(const dp::Route& r, uint32_t oif, Op op, const Tags& tags);
Message encodeRule(const dp::Rule& r, Op op, const Tags& tags);
Message encodeAddress(const dp::Address& a, uint32_t ifindex, Op op, const Tags& tags);
/** MPLS label route: `ip -f mpls route add LABEL dev OIF` (pop and deliver locally). */
Message encodeMplsPop(uint32_t label, uint32_t oif, Op op, const Tags& tags);
/** Sets the MTU of an existing link, found by name. */
Message encodeLinkMtu(const std::string& name, uint32_t mtu);

Message dumpLinksRequest();
Message dumpAddressesRequest();
Message dumpNexthopsRequest();
Message dumpRoutesRequest(int af);
Message dumpRulesRequest(int af);

// ---- responses ----
std::optional<dp::Link> parseLink(const nlmsghdr* h);
struct ParsedAddress {
  uint32_t ifindex;
  dp::Address addr;  // dev left empty
  uint8_t protocol;
};
std::optional<ParsedAddress> parseAddress(const nlmsghdr* h);
struct ParsedNexthop {
  dp::Nexthop nh;  // dev left empty
  uint32_t oif;
  uint8_t protocol;
};
std::optional<ParsedNexthop> parseNexthop(const nlmsghdr* h);
struct ParsedRoute {
  dp::Route route;  // dev left empty
  uint32_t oif;
  uint8_t protocol;
  uint8_t type;
};
std::optional<ParsedRoute> parseRoute(const nlmsghdr* h);
struct ParsedRule {
  dp::Rule rule;
  uint8_t protocol;
};
std::optional<ParsedRule> parseRule(const nlmsghdr* h);

/** "RTM_NEWROUTE" etc., for error messages. */
std::string describe(const Message& m);

}  // namespace kst::nl
