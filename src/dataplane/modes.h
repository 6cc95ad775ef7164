// Encapsulation modes and link kinds as one table each: every per-mode and per-kind fact the
// planners (desired/), the netlink codec (linux/) and the command line (main.cpp) need is a
// column here, so adding a mode is a new row plus whatever is genuinely new about it
// (docs/architecture.md "Add an encapsulation mode"; per-mode comparison in docs/modes.md).
//
// A new Mode or Link::Kind enumerator does not compile until it has a row: isMode/isLinkKind
// switch over the enum without a default (-Werror=switch), and the static_asserts below check
// that the rows are complete and in enumerator order.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/ip.h"
#include "dataplane/types.h"

namespace kst {

enum class Mode : uint8_t {
  VxlanGpe,  // flow-based: one `vxlan external gpe` device, encap ip per endpoint
  Ipip,      // flow-based: one `ipip external` device (ip6tnl for IPv6 pods)
  GreFlow,   // flow-based: one `gre external` device (ip6gre for IPv6 pods)
  Gre,       // the original: one GRE interface per endpoint
  Mpls,      // the original: encap mpls <label> via <pod>
};

namespace dp {

/** What the router creates to reach an endpoint. */
enum class RouterShape : uint8_t {
  /** One collect-metadata device per outer family (or one for both); the nexthop carries
   *  `encap ip(6) dst POD` out of it. */
  FlowDevice,
  /** One configured tunnel link per endpoint (remote = the pod); the nexthop is `dev LINK`. */
  LinkPerEndpoint,
  /** No device: the nexthop is `encap mpls LABEL via POD dev <on-link device>`. */
  MplsGateway,
};

/** What the agent puts into a pod's namespace. */
enum class PodShape : uint8_t {
  /** A decapsulation link (kind by the pod's address family) holding the VIPs. */
  DecapLink,
  /** The VIPs on lo and an MPLS label route popping the label to lo. */
  LoopbackLabel,
};

}  // namespace dp

struct ModeTraits {
  Mode mode;
  const char* name;     // --mode value, logs
  const char* alias;    // also accepted by --mode ("" : none)
  const char* summary;  // --mode help text
  dp::RouterShape router;
  dp::PodShape pod;
  /** Link kind toward (router) or in (pod) an endpoint whose address is IPv4 / IPv6. */
  dp::Link::Kind kind4, kind6;
  /** Name of the mode's device after --link-prefix, on both sides ("" : no device, lo). */
  const char* suffix;
  /** Name suffix of the router's flow device for IPv6 endpoints ("" : the `suffix` device
   *  carries both outer families; it is then sized for IPv4). */
  const char* suffix6;
  /** Bytes the encapsulation puts in front of the inner packet, outer IPv4 / IPv6
   *  (derivation in desired/agent.cpp). */
  uint32_t overhead4, overhead6;
  /** MTU the kernel gives the router's device when the daemon sets none (--underlay-mtu 0);
   *  0: no device, or the kernel derives it from the route to the pod. */
  uint32_t kernelMtu4, kernelMtu6;
  /** Lowest MTU the router sets on its device for each outer family (devices that carry IPv6
   *  need 1280; ipip carries IPv4 only). */
  uint32_t minMtu4, minMtu6;
  /** Over IPv6 the nexthop leaves TUNNEL_CSUM unset (dp::Nexthop::noCsum). */
  bool noCsum6;
};

// clang-format off
inline constexpr std::array kModeTraits{
  //          mode           name         alias        summary
  ModeTraits{Mode::VxlanGpe, "vxlan-gpe", "vxlan",     "flow-based, one collect-metadata device",
             dp::RouterShape::FlowDevice, dp::PodShape::DecapLink,
             dp::Link::Kind::VxlanGpe, dp::Link::Kind::VxlanGpe, "-vxg", "",
             20 + 8 + 8, 40 + 8 + 8, 1500, 1500, 1280, 1280, false},
  ModeTraits{Mode::Ipip,     "ipip",      "ipip-flow", "flow-based, one collect-metadata device",
             dp::RouterShape::FlowDevice, dp::PodShape::DecapLink,
             dp::Link::Kind::Ipip, dp::Link::Kind::Ip6tnl, "-ipip", "-ip6tnl",
             20, 40, 1500 - 20, 1500 - 40 - 8, 68, 1280, false},
  ModeTraits{Mode::GreFlow,  "gre-flow",  "",          "flow-based, one collect-metadata device",
             dp::RouterShape::FlowDevice, dp::PodShape::DecapLink,
             dp::Link::Kind::Gre, dp::Link::Kind::Ip6gre, "-gre", "-ip6gre",
             20 + 4, 40 + 4, 1500 - 24, 1500 - 44 - 8, 1280, 1280, true},
  ModeTraits{Mode::Gre,      "gre",       "",          "one GRE interface per endpoint",
             dp::RouterShape::LinkPerEndpoint, dp::PodShape::DecapLink,
             dp::Link::Kind::Gre, dp::Link::Kind::Ip6gre, "-gre", "",
             20 + 4, 40 + 4 + 8, 0, 0, 1280, 1280, false},
  ModeTraits{Mode::Mpls,     "mpls",      "",          "encap mpls LABEL via POD, no device",
             dp::RouterShape::MplsGateway, dp::PodShape::LoopbackLabel,
             dp::Link::Kind::Other, dp::Link::Kind::Other, "", "",
             4, 4, 0, 0, 0, 0, false},
};
// clang-format on

/** Every enumerator of Mode. No default: a new mode fails to compile here until listed. */
constexpr bool isMode(Mode m) {
  switch (m) {
    case Mode::VxlanGpe:
    case Mode::Ipip:
    case Mode::GreFlow:
    case Mode::Gre:
    case Mode::Mpls: return true;
  }
  return false;
}

namespace detail {
constexpr bool modeRowsComplete() {
  size_t n = 0;
  for (unsigned v = 0; v < 256; ++v) n += isMode(static_cast<Mode>(v)) ? 1 : 0;
  if (n != kModeTraits.size()) return false;
  for (size_t i = 0; i < kModeTraits.size(); ++i)
    if (kModeTraits[i].mode != static_cast<Mode>(i)) return false;
  return true;
}
}  // namespace detail
static_assert(detail::modeRowsComplete(), "kModeTraits: one row per Mode, in enumerator order");

constexpr const ModeTraits& modeTraits(Mode m) {
  auto i = static_cast<size_t>(m);
  return kModeTraits[i < kModeTraits.size() ? i : 0];
}

const char* modeName(Mode m);
/** Accepts every mode's name and alias (case-insensitive). */
bool parseMode(const std::string& s, Mode& out);
/** "vxlan-gpe (...) | ipip (...) | ...": the --mode help text. */
std::string modeHelp();
inline bool isFlowMode(Mode m) { return modeTraits(m).router == dp::RouterShape::FlowDevice; }

namespace dp {

struct LinkKindTraits {
  Link::Kind kind;
  const char* name;        // logs, diff descriptions
  const char* kernelKind;  // IFLA_INFO_KIND ("" : not one the daemon creates)
};

// clang-format off
inline constexpr std::array kLinkKindTraits{
  LinkKindTraits{Link::Kind::VxlanGpe, "vxlan-gpe", "vxlan"},
  LinkKindTraits{Link::Kind::Ipip,     "ipip",      "ipip"},
  LinkKindTraits{Link::Kind::Gre,      "gre",       "gre"},
  LinkKindTraits{Link::Kind::Ip6tnl,   "ip6tnl",    "ip6tnl"},
  LinkKindTraits{Link::Kind::Ip6gre,   "ip6gre",    "ip6gre"},
  LinkKindTraits{Link::Kind::Other,    "other",     ""},
};
// clang-format on

/** Every enumerator of Link::Kind. No default: a new kind fails to compile here until listed. */
constexpr bool isLinkKind(Link::Kind k) {
  switch (k) {
    case Link::Kind::VxlanGpe:
    case Link::Kind::Ipip:
    case Link::Kind::Gre:
    case Link::Kind::Ip6tnl:
    case Link::Kind::Ip6gre:
    case Link::Kind::Other: return true;
  }
  return false;
}

namespace detail {
constexpr bool kindRowsComplete() {
  size_t n = 0;
  for (unsigned v = 0; v < 256; ++v) n += isLinkKind(static_cast<Link::Kind>(v)) ? 1 : 0;
  if (n != kLinkKindTraits.size()) return false;
  for (size_t i = 0; i < kLinkKindTraits.size(); ++i)
    if (kLinkKindTraits[i].kind != static_cast<Link::Kind>(i)) return false;
  return true;
}
}  // namespace detail
static_assert(detail::kindRowsComplete(), "kLinkKindTraits: one row per Link::Kind, in order");

constexpr const LinkKindTraits& linkKindTraits(Link::Kind k) {
  auto i = static_cast<size_t>(k);
  return kLinkKindTraits[i < kLinkKindTraits.size() ? i : kLinkKindTraits.size() - 1];
}

}  // namespace dp
}  // namespace kst
