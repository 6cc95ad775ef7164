#include "linux/netlink_codec.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/fib_rules.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/if_tunnel.h>
#include <linux/lwtunnel.h>
#include <linux/mpls.h>
#include <linux/mpls_iptunnel.h>
#include <linux/nexthop.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

#include <array>
#include <cstring>

#include <fmt/format.h>

#include "dataplane/modes.h"

namespace kst::nl {
namespace {

constexpr size_t kMaxMessage = 1024;

class Builder {
 public:
  Builder(uint16_t type, uint16_t flags) {
    h_ = mnl_nlmsg_put_header(buf_.data());
    h_->nlmsg_type = type;
    h_->nlmsg_flags = NLM_F_REQUEST | flags;
  }
  template <typename T>
  T* extra() {
    return static_cast<T*>(mnl_nlmsg_put_extra_header(h_, sizeof(T)));
  }
  nlmsghdr* h() { return h_; }
  void addr(uint16_t type, const IpAddress& a) { mnl_attr_put(h_, type, a.size(), a.data()); }
  /** An exact-size copy: a cold start holds 80k encoded requests at once (V = 10k), and a
   *  1 KiB buffer each was 80 MB of the daemon's peak RSS. */
  Message done() const { return Message(buf_.begin(), buf_.begin() + h_->nlmsg_len); }

 private:
  alignas(nlmsghdr) std::array<uint8_t, kMaxMessage> buf_{};
  nlmsghdr* h_;
};

uint16_t flagsFor(Op op) {
  switch (op) {
    case Op::Add: return NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    case Op::Replace: return NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    case Op::Delete: return NLM_F_ACK;
  }
  return NLM_F_ACK;
}

int afOf(Family f) { return f == Family::V4 ? AF_INET : AF_INET6; }

void putIpEncap(nlmsghdr* h, uint16_t typeAttr, uint16_t encapAttr, const IpAddress& dst,
                uint8_t ttl, bool csum6 = true) {
  if (dst.isV4()) {
    mnl_attr_put_u16(h, typeAttr, LWTUNNEL_ENCAP_IP);
    auto* nest = mnl_attr_nest_start(h, encapAttr);
    mnl_attr_put_u64(h, LWTUNNEL_IP_ID, 0);
    mnl_attr_put(h, LWTUNNEL_IP_DST, 4, dst.data());
    mnl_attr_put_u8(h, LWTUNNEL_IP_TTL, ttl);
    mnl_attr_nest_end(h, nest);
  } else {
    mnl_attr_put_u16(h, typeAttr, LWTUNNEL_ENCAP_IP6);
    auto* nest = mnl_attr_nest_start(h, encapAttr);
    mnl_attr_put_u64(h, LWTUNNEL_IP6_ID, 0);
    mnl_attr_put(h, LWTUNNEL_IP6_DST, 16, dst.data());
    mnl_attr_put_u8(h, LWTUNNEL_IP6_HOPLIMIT, ttl);
    // Over IPv6 the outer UDP checksum is mandatory for receivers without udp6zerocsumrx
    // (docs/dataplane-notes.md "IPv6 outer UDP checksum"): ask for it unless the nexthop says otherwise (gre-flow, see noCsum).
    if (csum6) mnl_attr_put_u16(h, LWTUNNEL_IP6_FLAGS, TUNNEL_CSUM);
    mnl_attr_nest_end(h, nest);
  }
}

void putMplsEncap(nlmsghdr* h, uint16_t typeAttr, uint16_t encapAttr, uint32_t label) {
  mnl_attr_put_u16(h, typeAttr, LWTUNNEL_ENCAP_MPLS);
  auto* nest = mnl_attr_nest_start(h, encapAttr);
  uint32_t lse = htonl((label << MPLS_LS_LABEL_SHIFT) | (1u << MPLS_LS_S_SHIFT));
  mnl_attr_put(h, MPLS_IPTUNNEL_DST, sizeof lse, &lse);
  mnl_attr_nest_end(h, nest);
}

// Walks attributes into an index table (libmnl's recommended parse pattern).
struct AttrTable {
  static constexpr int kMax = 64;
  const nlattr* tb[kMax] = {};
  static int cb(const nlattr* a, void* data) {
    auto* self = static_cast<AttrTable*>(data);
    int type = mnl_attr_get_type(a);
    if (type >= 0 && type < kMax) self->tb[type] = a;
    return MNL_CB_OK;
  }
  void parse(const nlmsghdr* h, size_t offset) { mnl_attr_parse(h, offset, cb, this); }
  void parseNested(const nlattr* nest) { mnl_attr_parse_nested(nest, cb, this); }
  const nlattr* operator[](int i) const { return tb[i]; }
};

std::optional<IpAddress> addrAttr(const nlattr* a) {
  if (!a) return std::nullopt;
  auto len = mnl_attr_get_payload_len(a);
  if (len == 4) return IpAddress::fromBytes(Family::V4, mnl_attr_get_payload(a));
  if (len == 16) return IpAddress::fromBytes(Family::V6, mnl_attr_get_payload(a));
  return std::nullopt;
}

void parseEncap(const nlattr* typeAttr, const nlattr* encapAttr, dp::Nexthop& nh) {
  if (!typeAttr || !encapAttr) return;
  uint16_t type = mnl_attr_get_u16(typeAttr);
  AttrTable e;
  e.parseNested(encapAttr);
  if (type == LWTUNNEL_ENCAP_IP || type == LWTUNNEL_ENCAP_IP6) {
    nh.encap = dp::Nexthop::Encap::Ip;
    const bool v4 = type == LWTUNNEL_ENCAP_IP;
    nh.encapDst = addrAttr(e[v4 ? int{LWTUNNEL_IP_DST} : int{LWTUNNEL_IP6_DST}]);
    int ttlAttr = v4 ? int{LWTUNNEL_IP_TTL} : int{LWTUNNEL_IP6_HOPLIMIT};
    nh.ttl = e[ttlAttr] ? mnl_attr_get_u8(e[ttlAttr]) : 0;
    if (type == LWTUNNEL_ENCAP_IP6)
      nh.noCsum = !(e[LWTUNNEL_IP6_FLAGS] &&
                    (mnl_attr_get_u16(e[LWTUNNEL_IP6_FLAGS]) & TUNNEL_CSUM));  // both be16
  } else if (type == LWTUNNEL_ENCAP_MPLS) {
    nh.encap = dp::Nexthop::Encap::Mpls;
    if (e[MPLS_IPTUNNEL_DST] && mnl_attr_get_payload_len(e[MPLS_IPTUNNEL_DST]) >= 4) {
      uint32_t lse;
      std::memcpy(&lse, mnl_attr_get_payload(e[MPLS_IPTUNNEL_DST]), 4);
      nh.mplsLabel = (ntohl(lse) & MPLS_LS_LABEL_MASK) >> MPLS_LS_LABEL_SHIFT;
    }
  }
}

}  // namespace

Message encodeLink(const dp::Link& link, Op op) {
  if (op == Op::Delete) {
    Builder b(RTM_DELLINK, flagsFor(op));
    b.extra<ifinfomsg>()->ifi_family = AF_UNSPEC;
    mnl_attr_put_strz(b.h(), IFLA_IFNAME, link.name.c_str());
    return b.done();
  }
  Builder b(RTM_NEWLINK, flagsFor(op));
  auto* ifi = b.extra<ifinfomsg>();
  ifi->ifi_family = AF_UNSPEC;
  if (link.up) {
    ifi->ifi_flags = IFF_UP;
    ifi->ifi_change = IFF_UP;
  }
  auto* h = b.h();
  mnl_attr_put_strz(h, IFLA_IFNAME, link.name.c_str());
  // Every kind the router creates applies it at creation (ip_tunnel_newlink, vxlan_nl2conf;
  // ip6_tnl_newlink and ip6gre_newlink_common after registering the device).
  if (link.mtu) mnl_attr_put_u32(h, IFLA_MTU, link.mtu);
  auto* info = mnl_attr_nest_start(h, IFLA_LINKINFO);
  mnl_attr_put_strz(h, IFLA_INFO_KIND, dp::linkKindTraits(link.kind).kernelKind);
  auto* data = mnl_attr_nest_start(h, IFLA_INFO_DATA);
  switch (link.kind) {
    case dp::Link::Kind::VxlanGpe:
      // iproute2: "external" => COLLECT_METADATA=1 and LEARNING=0; "gpe" => GPE flag.
      mnl_attr_put_u8(h, IFLA_VXLAN_LEARNING, 0);
      mnl_attr_put_u16(h, IFLA_VXLAN_PORT, htons(link.port));
      mnl_attr_put_u8(h, IFLA_VXLAN_COLLECT_METADATA, 1);
      mnl_attr_put(h, IFLA_VXLAN_GPE, 0, nullptr);
      break;
    case dp::Link::Kind::Ipip:
    case dp::Link::Kind::Ip6tnl:
      if (link.external) mnl_attr_put(h, IFLA_IPTUN_COLLECT_METADATA, 0, nullptr);
      if (link.kind == dp::Link::Kind::Ip6tnl) mnl_attr_put_u8(h, IFLA_IPTUN_PROTO, 0);
      break;
    case dp::Link::Kind::Gre:
    case dp::Link::Kind::Ip6gre:
      if (link.external) {
        mnl_attr_put(h, IFLA_GRE_COLLECT_METADATA, 0, nullptr);
      } else {
        if (link.local) b.addr(IFLA_GRE_LOCAL, *link.local);
        if (link.remote) b.addr(IFLA_GRE_REMOTE, *link.remote);
        mnl_attr_put_u8(h, IFLA_GRE_TTL, 64);
        mnl_attr_put_u8(h, IFLA_GRE_PMTUDISC, 1);
        // ip6gre: the kernel's default for an absent ENCAP_LIMIT is 0 (a tunnel-encapsulation-
        // limit option of 0 on every packet); iproute2 sends 4 (RFC 2473's default).
        if (link.kind == dp::Link::Kind::Ip6gre) mnl_attr_put_u8(h, IFLA_GRE_ENCAP_LIMIT, 4);
      }
      break;
    case dp::Link::Kind::Other: break;
  }
  mnl_attr_nest_end(h, data);
  mnl_attr_nest_end(h, info);
  return b.done();
}

Message encodeLinkMtu(const std::string& name, uint32_t mtu) {
  // `ip link set dev NAME mtu MTU`: RTM_NEWLINK without NLM_F_CREATE changes an existing link.
  Builder b(RTM_NEWLINK, NLM_F_ACK);
  b.extra<ifinfomsg>()->ifi_family = AF_UNSPEC;
  mnl_attr_put_strz(b.h(), IFLA_IFNAME, name.c_str());
  mnl_attr_put_u32(b.h(), IFLA_MTU, mtu);
  return b.done();
}

Message encodeNexthop(const dp::Nexthop& nh, uint32_t oif, Op op, const Tags& tags) {
  Builder b(op == Op::Delete ? RTM_DELNEXTHOP : RTM_NEWNEXTHOP, flagsFor(op));
  auto* m = b.extra<nhmsg>();
  m->nh_family = static_cast<unsigned char>(afOf(nh.family));
  m->nh_protocol = op == Op::Delete ? 0 : tags.protocol;
  auto* h = b.h();
  mnl_attr_put_u32(h, NHA_ID, nh.id);
  if (op == Op::Delete) return b.done();
  mnl_attr_put_u32(h, NHA_OIF, oif);
  if (nh.gateway) b.addr(NHA_GATEWAY, *nh.gateway);
  if (nh.encap == dp::Nexthop::Encap::Ip && nh.encapDst)
    putIpEncap(h, NHA_ENCAP_TYPE, NHA_ENCAP, *nh.encapDst, nh.ttl, !nh.noCsum);
  else if (nh.encap == dp::Nexthop::Encap::Mpls)
    putMplsEncap(h, NHA_ENCAP_TYPE, NHA_ENCAP, nh.mplsLabel);
  return b.done();
}

Message encodeRoute(const dp::Route& r, uint32_t oif, Op op, const Tags& tags) {
  Builder b(op == Op::Delete ? RTM_DELROUTE : RTM_NEWROUTE, flagsFor(op));
  auto* rt = b.extra<rtmsg>();
  rt->rtm_family = static_cast<unsigned char>(afOf(r.key.family));
  rt->rtm_dst_len = r.key.prefixLen;
  rt->rtm_table = r.key.table < 256 ? r.key.table : RT_TABLE_UNSPEC;
  rt->rtm_protocol = tags.protocol;
  rt->rtm_scope = RT_SCOPE_UNIVERSE;
  rt->rtm_type = r.unreachable ? RTN_UNREACHABLE : RTN_UNICAST;
  auto* h = b.h();
  mnl_attr_put_u32(h, RTA_TABLE, r.key.table);
  if (r.key.prefixLen) b.addr(RTA_DST, r.key.dst);
  if (op != Op::Delete && !r.unreachable) {
    if (r.nhid)
      mnl_attr_put_u32(h, RTA_NH_ID, r.nhid);
    else
      mnl_attr_put_u32(h, RTA_OIF, oif);
  }
  return b.done();
}

Message encodeRule(const dp::Rule& r, Op op, const Tags& tags) {
  Builder b(op == Op::Delete ? RTM_DELRULE : RTM_NEWRULE,
            op == Op::Delete ? NLM_F_ACK : NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
  auto* f = b.extra<fib_rule_hdr>();
  f->family = static_cast<uint8_t>(afOf(r.family));
  f->action = FR_ACT_TO_TBL;
  f->table = r.table < 256 ? r.table : RT_TABLE_UNSPEC;
  auto* h = b.h();
  mnl_attr_put_u32(h, FRA_PRIORITY, r.priority);
  mnl_attr_put_u32(h, FRA_FWMARK, r.fwmark);
  mnl_attr_put_u32(h, FRA_FWMASK, 0xffffffff);
  mnl_attr_put_u32(h, FRA_TABLE, r.table);
  mnl_attr_put_u8(h, FRA_PROTOCOL, tags.protocol);
  return b.done();
}

Message encodeAddress(const dp::Address& a, uint32_t ifindex, Op op, const Tags& tags) {
  Builder b(op == Op::Delete ? RTM_DELADDR : RTM_NEWADDR, flagsFor(op));
  auto* ifa = b.extra<ifaddrmsg>();
  ifa->ifa_family = static_cast<uint8_t>(a.ip.af());
  ifa->ifa_prefixlen = a.prefixLen;
  ifa->ifa_scope = RT_SCOPE_UNIVERSE;
  ifa->ifa_index = ifindex;
  // VIPs are shared by design (DSR): no duplicate address detection for IPv6.
  if (a.ip.isV6()) ifa->ifa_flags = IFA_F_NODAD;
  auto* h = b.h();
  b.addr(IFA_LOCAL, a.ip);
  b.addr(IFA_ADDRESS, a.ip);
  if (op != Op::Delete) {
    if (a.ip.isV6()) mnl_attr_put_u32(h, IFA_FLAGS, IFA_F_NODAD);
    mnl_attr_put_u8(h, IFA_PROTO, tags.protocol);
  }
  return b.done();
}

Message encodeMplsPop(uint32_t label, uint32_t oif, Op op, const Tags& tags) {
  Builder b(op == Op::Delete ? RTM_DELROUTE : RTM_NEWROUTE, flagsFor(op));
  auto* rt = b.extra<rtmsg>();
  rt->rtm_family = AF_MPLS;
  rt->rtm_dst_len = 20;
  rt->rtm_table = RT_TABLE_MAIN;
  rt->rtm_protocol = tags.protocol;
  rt->rtm_scope = RT_SCOPE_UNIVERSE;
  rt->rtm_type = RTN_UNICAST;
  auto* h = b.h();
  uint32_t lse = htonl((label << MPLS_LS_LABEL_SHIFT) | (1u << MPLS_LS_S_SHIFT));
  mnl_attr_put(h, RTA_DST, sizeof lse, &lse);
  if (op != Op::Delete) mnl_attr_put_u32(h, RTA_OIF, oif);
  return b.done();
}

namespace {
template <typename T>
Message dumpRequest(uint16_t type, uint8_t family) {
  Builder b(type, NLM_F_DUMP);
  auto* m = b.extra<T>();
  std::memset(m, 0, sizeof(T));
  reinterpret_cast<uint8_t*>(m)[0] = family;  // every *msg starts with its family byte
  return b.done();
}
}  // namespace

Message dumpLinksRequest() { return dumpRequest<ifinfomsg>(RTM_GETLINK, AF_UNSPEC); }
Message dumpAddressesRequest() { return dumpRequest<ifaddrmsg>(RTM_GETADDR, AF_UNSPEC); }
Message dumpNexthopsRequest() { return dumpRequest<nhmsg>(RTM_GETNEXTHOP, AF_UNSPEC); }
Message dumpRoutesRequest(int af) {
  return dumpRequest<rtmsg>(RTM_GETROUTE, static_cast<uint8_t>(af));
}
Message dumpRulesRequest(int af) {
  return dumpRequest<fib_rule_hdr>(RTM_GETRULE, static_cast<uint8_t>(af));
}

std::optional<dp::Link> parseLink(const nlmsghdr* h) {
  if (h->nlmsg_type != RTM_NEWLINK) return std::nullopt;
  auto* ifi = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(h));
  AttrTable tb;
  tb.parse(h, sizeof(ifinfomsg));
  if (!tb[IFLA_IFNAME]) return std::nullopt;
  dp::Link l;
  l.name = mnl_attr_get_str(tb[IFLA_IFNAME]);
  l.ifindex = static_cast<uint32_t>(ifi->ifi_index);
  l.up = (ifi->ifi_flags & IFF_UP) != 0;
  if (tb[IFLA_MTU]) l.mtu = mnl_attr_get_u32(tb[IFLA_MTU]);
  if (!tb[IFLA_LINKINFO]) return l;
  AttrTable info;
  info.parseNested(tb[IFLA_LINKINFO]);
  if (!info[IFLA_INFO_KIND]) return l;
  std::string kind = mnl_attr_get_str(info[IFLA_INFO_KIND]);
  AttrTable data;
  if (info[IFLA_INFO_DATA]) data.parseNested(info[IFLA_INFO_DATA]);
  for (const auto& t : dp::kLinkKindTraits)
    if (*t.kernelKind && kind == t.kernelKind) l.kind = t.kind;
  switch (l.kind) {
    case dp::Link::Kind::VxlanGpe:
      if (!data[IFLA_VXLAN_GPE]) l.kind = dp::Link::Kind::Other;  // plain (Ethernet) vxlan
      l.external = data[IFLA_VXLAN_COLLECT_METADATA] &&
                   mnl_attr_get_u8(data[IFLA_VXLAN_COLLECT_METADATA]) != 0;
      if (data[IFLA_VXLAN_PORT]) l.port = ntohs(mnl_attr_get_u16(data[IFLA_VXLAN_PORT]));
      break;
    case dp::Link::Kind::Ipip:
    case dp::Link::Kind::Ip6tnl:
      l.external = data[IFLA_IPTUN_COLLECT_METADATA] != nullptr;
      break;
    case dp::Link::Kind::Gre:
    case dp::Link::Kind::Ip6gre:
      l.external = data[IFLA_GRE_COLLECT_METADATA] != nullptr;
      if (!l.external) {
        auto loc = addrAttr(data[IFLA_GRE_LOCAL]);
        auto rem = addrAttr(data[IFLA_GRE_REMOTE]);
        auto isAny = [](const std::optional<IpAddress>& a) {
          return !a || *a == IpAddress::fromBytes(a->family(), "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        };
        if (!isAny(loc)) l.local = loc;
        if (!isAny(rem)) l.remote = rem;
      }
      break;
    case dp::Link::Kind::Other: break;
  }
  return l;
}

std::optional<ParsedAddress> parseAddress(const nlmsghdr* h) {
  if (h->nlmsg_type != RTM_NEWADDR) return std::nullopt;
  auto* ifa = static_cast<const ifaddrmsg*>(mnl_nlmsg_get_payload(h));
  AttrTable tb;
  tb.parse(h, sizeof(ifaddrmsg));
  auto ip = addrAttr(tb[IFA_LOCAL] ? tb[IFA_LOCAL] : tb[IFA_ADDRESS]);
  if (!ip) return std::nullopt;
  ParsedAddress p{ifa->ifa_index, dp::Address{"", *ip, ifa->ifa_prefixlen},
                  static_cast<uint8_t>(tb[IFA_PROTO] ? mnl_attr_get_u8(tb[IFA_PROTO]) : 0)};
  return p;
}

std::optional<ParsedNexthop> parseNexthop(const nlmsghdr* h) {
  if (h->nlmsg_type != RTM_NEWNEXTHOP) return std::nullopt;
  auto* m = static_cast<const nhmsg*>(mnl_nlmsg_get_payload(h));
  AttrTable tb;
  tb.parse(h, sizeof(nhmsg));
  if (!tb[NHA_ID]) return std::nullopt;
  ParsedNexthop p{};
  p.nh.id = mnl_attr_get_u32(tb[NHA_ID]);
  p.nh.family = m->nh_family == AF_INET6 ? Family::V6 : Family::V4;
  p.protocol = m->nh_protocol;
  p.oif = tb[NHA_OIF] ? mnl_attr_get_u32(tb[NHA_OIF]) : 0;
  p.nh.gateway = addrAttr(tb[NHA_GATEWAY]);
  p.nh.ttl = 0;  // only IP encapsulation has one (parseEncap); desired state uses 0 otherwise
  parseEncap(tb[NHA_ENCAP_TYPE], tb[NHA_ENCAP], p.nh);
  return p;
}

std::optional<ParsedRoute> parseRoute(const nlmsghdr* h) {
  if (h->nlmsg_type != RTM_NEWROUTE) return std::nullopt;
  auto* rt = static_cast<const rtmsg*>(mnl_nlmsg_get_payload(h));
  if (rt->rtm_family != AF_INET && rt->rtm_family != AF_INET6) return std::nullopt;
  AttrTable tb;
  tb.parse(h, sizeof(rtmsg));
  ParsedRoute p{};
  Family fam = rt->rtm_family == AF_INET ? Family::V4 : Family::V6;
  auto dst = addrAttr(tb[RTA_DST]);
  p.route.key = {fam, tb[RTA_TABLE] ? mnl_attr_get_u32(tb[RTA_TABLE]) : rt->rtm_table,
                 dst.value_or(IpAddress::fromBytes(fam, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0")),
                 rt->rtm_dst_len};
  p.route.nhid = tb[RTA_NH_ID] ? mnl_attr_get_u32(tb[RTA_NH_ID]) : 0;
  p.route.unreachable = rt->rtm_type == RTN_UNREACHABLE;
  // IPv6 reports its reject routes with RTA_OIF = lo; they have no device (as in IPv4), else
  // every restart would "replace" the slot tables' unreachable IPv6 routes.
  p.oif = tb[RTA_OIF] && !p.route.unreachable ? mnl_attr_get_u32(tb[RTA_OIF]) : 0;
  p.protocol = rt->rtm_protocol;
  p.type = rt->rtm_type;
  return p;
}

std::optional<ParsedRule> parseRule(const nlmsghdr* h) {
  if (h->nlmsg_type != RTM_NEWRULE) return std::nullopt;
  auto* f = static_cast<const fib_rule_hdr*>(mnl_nlmsg_get_payload(h));
  AttrTable tb;
  tb.parse(h, sizeof(fib_rule_hdr));
  ParsedRule p{};
  p.rule.family = f->family == AF_INET6 ? Family::V6 : Family::V4;
  p.rule.priority = tb[FRA_PRIORITY] ? mnl_attr_get_u32(tb[FRA_PRIORITY]) : 0;
  p.rule.fwmark = tb[FRA_FWMARK] ? mnl_attr_get_u32(tb[FRA_FWMARK]) : 0;
  p.rule.table = tb[FRA_TABLE] ? mnl_attr_get_u32(tb[FRA_TABLE]) : f->table;
  p.protocol = tb[FRA_PROTOCOL] ? mnl_attr_get_u8(tb[FRA_PROTOCOL]) : 0;
  return p;
}

std::string describe(const Message& m) {
  if (m.size() < sizeof(nlmsghdr)) return "short message";
  auto* h = reinterpret_cast<const nlmsghdr*>(m.data());
  switch (h->nlmsg_type) {
    case RTM_NEWLINK: return "RTM_NEWLINK";
    case RTM_DELLINK: return "RTM_DELLINK";
    case RTM_NEWADDR: return "RTM_NEWADDR";
    case RTM_DELADDR: return "RTM_DELADDR";
    case RTM_NEWROUTE: return "RTM_NEWROUTE";
    case RTM_DELROUTE: return "RTM_DELROUTE";
    case RTM_NEWRULE: return "RTM_NEWRULE";
    case RTM_DELRULE: return "RTM_DELRULE";
    case RTM_NEWNEXTHOP: return "RTM_NEWNEXTHOP";
    case RTM_DELNEXTHOP: return "RTM_DELNEXTHOP";
  }
  return fmt::format("nlmsg type {}", h->nlmsg_type);
}

}  // namespace kst::nl
