#include "desired/agent.h"

#include <algorithm>
#include <iterator>

#include <fmt/format.h>

namespace kst {

bool ownedPodLink(const dp::Link& link, const std::string& prefix) {
  return link.name.starts_with(prefix) && link.kind != dp::Link::Kind::Other;
}

dp::Link podLink(const DataplaneConfig& cfg, const IpAddress& podIp) {
  const ModeTraits& t = modeTraits(cfg.mode);
  dp::Link l;
  l.name = cfg.tunnelLinkName();
  l.kind = podIp.isV4() ? t.kind4 : t.kind6;
  if (l.kind == dp::Link::Kind::VxlanGpe) l.port = cfg.vxlanPort;
  switch (t.router) {
    case dp::RouterShape::FlowDevice: l.external = true; break;
    // The original: a GRE interface bound to the pod address, any remote (every router).
    case dp::RouterShape::LinkPerEndpoint: l.local = podIp; break;
    case dp::RouterShape::MplsGateway: break;  // no link (PodShape::LoopbackLabel)
  }
  return l;
}

// Encapsulation overhead, from what the kernel actually puts on the wire for the objects the
// router programs (src/desired/router.cpp nexthopFor, src/linux/netlink_codec.cpp putIpEncap;
// kernel 6.1 and 6.18 source):
//
//   mode       outer IPv4                        outer IPv6
//   vxlan-gpe  20 IP + 8 UDP + 8 GPE = 36        40 IP + 8 UDP + 8 GPE = 56
//              (GPE carries the IP packet itself, no inner Ethernet; the IPv6 UDP checksum
//              flag only fills the checksum field)
//   ipip       20 (ipip)                          40 (ip6tnl): collect-md ip6tnl sends no
//                                                 tunnel encapsulation limit destination
//                                                 option (ipxip6_tnl_xmit leaves encap_limit
//                                                 at -1 for collect_md; a configured ip6tnl
//                                                 would add 8 bytes)
//   gre-flow   20 IP + 4 GRE = 24                 40 IP + 4 GRE = 44
//              GRE options come only from LWTUNNEL_IP(6)_FLAGS (ip_tun_build_state: the ID
//              attribute sets tun_id, not TUNNEL_KEY); the IPv4 nexthop sends no flags, the
//              IPv6 one no TUNNEL_CSUM (noCsum): no key, checksum or sequence word (+4 each);
//              collect-md ip6gre adds no encapsulation limit option either
//   gre        20 IP + 4 GRE = 24                 (refused: IPv4 endpoints only) 40 + 4 + 8:
//              `type gre remote POD ttl 64`        a configured ip6gre would add the 8-byte
//              without key/csum/seq                encapsulation limit option
//   mpls       4: one label stack entry (bottom of stack) between the Ethernet and IP headers,
//              no outer IP header, whatever the family
//
// The router checks the inner packet against the MTU of its tunnel device before it
// encapsulates (forwarding: "fragmentation needed" / "packet too big" back to the client when
// DF is set or for IPv6). Left to the kernel, the flow devices (no lower device) get a default
// derived from ETH_DATA_LEN (1500), whatever the underlay:
//   vxlan-gpe 1500; ipip 1500 − 20 = 1480 (ip_tunnel_bind_dev); gre 1500 − 24 = 1476;
//   ip6tnl 1500 − 40 − 8 = 1452 and ip6gre 1500 − 44 − 8 = 1448 (ip6_tnl_dev_init_gen,
//   ip6gre_tunnel_init_common: 8 bytes are reserved for the encapsulation limit option unless
//   the device is created with IGN_ENCAP_LIMIT, which the router does not ask for, although a
//   collect-md device never sends the option),
// too small for a jumbo-frame underlay and, for vxlan-gpe, larger than a 1500-byte underlay
// carries. So the router sets each device's MTU to underlay − overhead (routerLinkMtu): the
// device then accepts exactly what fits the underlay once encapsulated. vxlan-gpe has one
// device for both outer families; it is sized for IPv4 (− 36): sized for IPv6 (− 56) it would
// cost IPv4 pods 20 bytes, and toward IPv6 pods TCP is clamped to − 56 anyway. The per-endpoint
// gre link (a remote, IPv4 only) gets underlay − 24 as well; mpls has no device (route MTU =
// egress MTU − 4: the underlay link's own MTU applies). With --underlay-mtu 0 the flow devices
// get the kernel defaults above back and a gre link keeps what the kernel chose. The inner
// packet may be at most min(underlay − overhead, router device MTU).
//
// Clamped MSS with the default underlay MTU 1500 (that limit − 40 / − 60):
//
//   mode       inner IPv4 (outer v4 / v6)   inner IPv6 (outer v4 / v6)
//   vxlan-gpe  1424 / 1404                  1404 / 1384
//   ipip       1440 / 1420                  – (refused) / 1400
//   gre-flow   1436 / 1416                  1416 / 1396
//   gre        1436 / –                     1416 / –
//   mpls       1456                         1436
//
// Checked in the VM (Debian 6.1 kernel, 4 MB transfers; pod IpReasmReqds/Ip6ReasmReqds, client
// ICMP counters): IPv4 VIP on an IPv4 pod, every mode: clean at these values; with
// --underlay-mtu 1501 (MSS + 1) vxlan-gpe fragments, ipip, gre-flow, gre and mpls answer
// "fragmentation needed" (the client then depends on PMTU discovery). IPv6 VIP on an IPv6
// pod: vxlan-gpe clean at 1384 and stalled at 1385 (no fragment, no ICMP: a black hole), mpls
// clean at 1436 and "packet too big" at 1437; ipip and gre-flow drew "packet too big" at
// 1400 / 1396 (wire overhead only), hence the device cap: with it, IPv4 and IPv6 VIPs on IPv6
// pods are clean in ipip, gre-flow and vxlan-gpe.
//
// The MSS excludes TCP options: a sender subtracts its options (timestamps: 12 bytes) from the
// announced MSS, so the inner packet is at most MSS + 40 (+ 60) bytes.
uint32_t encapOverhead(Mode mode, Family outer) {
  const ModeTraits& t = modeTraits(mode);
  return outer == Family::V4 ? t.overhead4 : t.overhead6;
}

uint32_t routerLinkMtu(const DataplaneConfig& cfg, Family outer) {
  const ModeTraits& t = modeTraits(cfg.mode);
  bool v4 = outer == Family::V4;
  if (t.router == dp::RouterShape::MplsGateway) return 0;  // no device
  if (cfg.underlayMtu == 0) return v4 ? t.kernelMtu4 : t.kernelMtu6;
  // A flow device that carries both outer families is sized for IPv4 (see above).
  bool oneDevice = t.router == dp::RouterShape::FlowDevice && !*t.suffix6;
  uint32_t overhead = encapOverhead(cfg.mode, oneDevice ? Family::V4 : outer);
  uint32_t mtu = cfg.underlayMtu > overhead ? cfg.underlayMtu - overhead : 0;
  // Devices that carry IPv6 need 1280 (ip6tnl/ip6gre refuse less; below it the kernel removes
  // IPv6 from any device, and the IPv6 routes through it): on a smaller underlay the outer
  // packets are then fragmented (IPv4 underlay) instead. ipip carries IPv4 only.
  return std::max(mtu, v4 ? t.minMtu4 : t.minMtu6);
}

uint16_t clampedMss(const DataplaneConfig& cfg, Family outer, Family inner) {
  if (cfg.underlayMtu == 0) return 0;
  uint32_t overhead = encapOverhead(cfg.mode, outer);
  if (cfg.underlayMtu <= overhead) return 0;
  uint32_t innerMax = cfg.underlayMtu - overhead;
  if (uint32_t dev = routerLinkMtu(cfg, outer)) innerMax = std::min(innerMax, dev);
  uint32_t headers = inner == Family::V4 ? 40 : 60;
  if (innerMax <= headers) return 0;  // main.cpp accepts only 0 or 576 and above
  return static_cast<uint16_t>(std::min<uint32_t>(innerMax - headers, 65535));
}

PodTable podTable(const DataplaneConfig& cfg, const std::vector<const PodPlan*>& plans) {
  PodTable t;
  t.decapLink = cfg.tunnelLinkName();
  t.learnByVip = cfg.podDecapBpf && modeTraits(cfg.mode).pod == dp::PodShape::DecapLink;
  if (t.learnByVip)
    for (const auto* p : plans)
      for (const auto& a : p->state.addresses) t.vips.insert(a.ip);
  if (cfg.underlayMtu == 0) return t;
  for (const auto* p : plans) {
    Family outer = p->podIp.family();
    for (Family inner : {Family::V4, Family::V6}) {
      uint16_t mss = clampedMss(cfg, outer, inner);
      uint16_t& cur = inner == Family::V4 ? t.mss4 : t.mss6;
      if (mss && (cur == 0 || mss < cur)) cur = mss;
    }
    for (const auto& a : p->state.addresses) t.vips.insert(a.ip);
  }
  if (!t.hasVipSets()) t.vips.clear();
  return t;
}

std::string podTableComment(const PodTable& t) {
  // Without clamping the comment is the one of the UDP-only table of earlier versions, so
  // `--underlay-mtu 0` adopts such a table unchanged.
  std::string learn = t.learnByVip ? " learn vips" : "";
  if (!t.clamps()) return "kst-pod:" + t.decapLink + learn;
  return fmt::format("kst-pod:{} mss {}/{}{}", t.decapLink, t.mss4, t.mss6, learn);
}

namespace {

std::string elementList(const std::set<IpAddress>& vips, Family f) {
  std::string out;
  for (const auto& v : vips)
    if (v.family() == f) out += (out.empty() ? "" : ", ") + v.str();
  return out;
}

std::string elementStatement(const char* verb, const std::set<IpAddress>& vips, Family f) {
  std::string list = elementList(vips, f);
  if (list.empty()) return {};
  return fmt::format("{} element inet {} {} {{ {} }}\n", verb, kPodTableName,
                     f == Family::V4 ? "vips4" : "vips6", list);
}

}  // namespace

// nft 1.0.6 cannot update dynamic maps with keys or data wider than 16 bytes (see
// nft_render.h), so the IPv6 peer key is the client address alone (a client talking UDP to two
// IPv6 VIPs of the same pod gets its replies from the VIP it wrote to last) and the source port
// is kept explicitly (": udp sport"); without a port, nf_nat may pick a random one.
//
// The clamp matches every SYN (with or without ACK, never RST) whose source is one of the
// pod's VIPs: the peer of such a connection sends toward the VIP, i.e. through a router and the
// tunnel. Traffic from the pod's own address is left alone. `maxseg size > N` makes the rule
// lower the option only (the kernel's exthdr set refuses to raise an MSS as well) and does
// nothing to a SYN without the option.
//
// With learnByVip (--pod-decap bpf) the program hands decapsulated datagrams to the stack on
// the pod's own interface: a datagram is learned when its destination is one of the pod's VIPs
// (arriving on any interface but lo; the decap device's datagrams included).
std::string renderPodTable(const PodTable& t) {
  std::string clamp;
  if (t.hasVipSets()) clamp = "  set vips4 { type ipv4_addr; }\n  set vips6 { type ipv6_addr; }\n";
  if (t.clamps()) {
    clamp += "  chain clamp {\n    type filter hook postrouting priority mangle; policy accept;\n";
    if (t.mss4)
      clamp += fmt::format(
          "    ip saddr @vips4 tcp flags & (syn | rst) == syn tcp option maxseg size > {0} "
          "tcp option maxseg size set {0}\n",
          t.mss4);
    if (t.mss6)
      clamp += fmt::format(
          "    ip6 saddr @vips6 tcp flags & (syn | rst) == syn tcp option maxseg size > {0} "
          "tcp option maxseg size set {0}\n",
          t.mss6);
    clamp += "  }\n";
  }
  std::string learn = fmt::format(
      "    iifname \"{0}\" meta nfproto ipv4 meta l4proto udp update @peers4 {{ ip saddr . udp "
      "sport : ip daddr . udp dport }}\n"
      "    iifname \"{0}\" meta nfproto ipv6 meta l4proto udp update @peers6 {{ ip6 saddr : ip6 "
      "daddr }}\n"
      "    iifname \"{0}\" meta l4proto udp notrack\n",
      t.decapLink);
  if (t.learnByVip)
    learn =
        "    iifname != \"lo\" ip daddr @vips4 meta l4proto udp update @peers4 { ip saddr . udp "
        "sport : ip daddr . udp dport }\n"
        "    iifname != \"lo\" ip6 daddr @vips6 meta l4proto udp update @peers6 { ip6 saddr : "
        "ip6 daddr }\n"
        "    iifname != \"lo\" ip daddr @vips4 meta l4proto udp notrack\n"
        "    iifname != \"lo\" ip6 daddr @vips6 meta l4proto udp notrack\n";
  std::string out = fmt::format(R"(table inet {0} {{
  comment "{1}"
  map peers4 {{ typeof ip saddr . udp sport : ip daddr . udp dport; flags dynamic,timeout; timeout 120s; size 65536; }}
  map peers6 {{ typeof ip6 saddr : ip6 daddr; flags dynamic,timeout; timeout 120s; size 65536; }}
  chain learn {{
    type filter hook prerouting priority raw; policy accept;
{4}  }}
  chain answer {{
    type nat hook postrouting priority srcnat; policy accept;
    meta nfproto ipv4 meta l4proto udp snat ip to ip daddr . udp dport map @peers4
    meta nfproto ipv6 meta l4proto udp snat ip6 to ip6 daddr map @peers6 : udp sport
  }}
{3}}}
)",
                                kPodTableName, podTableComment(t), t.decapLink, clamp, learn);
  if (t.hasVipSets())
    out += elementStatement("add", t.vips, Family::V4) + elementStatement("add", t.vips, Family::V6);
  return out;
}

std::string podTableScript(const PodTable* want, const ObservedPodTable& have) {
  if (!want) return have.present ? fmt::format("delete table inet {}\n", kPodTableName) : "";
  if (!have.present || have.comment != podTableComment(*want)) {
    std::string out;
    if (have.present) out += fmt::format("delete table inet {}\n", kPodTableName);
    return out + renderPodTable(*want);
  }
  if (!want->hasVipSets()) return {};
  std::set<IpAddress> add, del;
  std::set_difference(want->vips.begin(), want->vips.end(), have.vips.begin(), have.vips.end(),
                      std::inserter(add, add.end()));
  std::set_difference(have.vips.begin(), have.vips.end(), want->vips.begin(), want->vips.end(),
                      std::inserter(del, del.end()));
  std::string out;
  for (Family f : {Family::V4, Family::V6})
    out += elementStatement("delete", del, f) + elementStatement("add", add, f);
  return out;
}

std::optional<dp::PodDecap> podDecap(const DataplaneConfig& cfg,
                                     const std::vector<const PodPlan*>& plans) {
  if (!cfg.podDecapBpf || modeTraits(cfg.mode).pod != dp::PodShape::DecapLink) return std::nullopt;
  dp::PodDecap d;
  d.mode = cfg.mode;
  d.port = cfg.mode == Mode::VxlanGpe ? cfg.vxlanPort : 0;
  for (const auto* p : plans) {
    d.podIps.insert(p->podIp);
    for (const auto& a : p->state.addresses) d.vips.insert(a.ip);
  }
  if (d.vips.empty() || d.podIps.empty()) return std::nullopt;
  return d;
}

std::map<IpAddress, uint32_t> podDecapAddrs(const dp::PodDecap& want) {
  std::map<IpAddress, uint32_t> out;
  for (const auto& a : want.podIps) out[a] |= dp::kPodDecapPod;
  for (const auto& v : want.vips) out[v] |= dp::kPodDecapVip;
  return out;
}

dp::PodDecapChanges podDecapDiff(const dp::PodDecap* want, const std::string& program,
                                 const dp::ObservedPodDecap& have,
                                 const std::set<std::string>& targets) {
  dp::PodDecapChanges ch;
  if (!want || targets.empty()) {
    ch.detach.assign(have.attached.begin(), have.attached.end());
    return ch;
  }
  for (const auto& i : have.attached)
    if (!targets.contains(i)) ch.detach.push_back(i);
  auto addrs = podDecapAddrs(*want);
  if (have.program != program || !have.consistent || have.attached.empty()) {
    ch.load = true;
    ch.attach.assign(targets.begin(), targets.end());
    ch.put.assign(addrs.begin(), addrs.end());
    return ch;
  }
  for (const auto& i : targets)
    if (!have.attached.contains(i)) ch.attach.push_back(i);
  for (const auto& [a, f] : have.addrs)
    if (!addrs.contains(a)) ch.erase.push_back(a);
  for (const auto& [a, f] : addrs) {
    auto it = have.addrs.find(a);
    if (it == have.addrs.end() || it->second != f) ch.put.emplace_back(a, f);
  }
  return ch;
}

std::vector<PodPlan> planAgent(const Model& model, const DataplaneConfig& cfg,
                               const std::string& nodeName) {
  std::map<IpAddress, PodPlan> pods;
  for (const auto& svc : model.services) {
    for (const auto* list : {&svc.endpoints, &svc.starting}) {
      for (const auto& ep : *list) {
        if (ep.nodeName != nodeName) continue;
        auto& p = pods[ep.ip];
        p.podIp = ep.ip;
        p.services.push_back(svc.key);
        p.state.addresses.push_back({cfg.tunnelLinkName(), svc.vip, svc.vip.hostPrefixLen()});
        // Only a pod of the Service's own namespace (what the EndpointSlice controller
        // writes; a hand-written slice cannot point the agent at another namespace's pod).
        if (p.pod.empty() && ep.targetRef.starts_with(svc.key.ns + "/")) {
          p.pod = ep.targetRef;
          p.podUid = ep.targetUid;
        }
      }
    }
  }
  std::vector<PodPlan> out;
  for (auto& [ip, p] : pods) {
    switch (modeTraits(cfg.mode).pod) {
      case dp::PodShape::DecapLink: p.state.links.push_back(podLink(cfg, ip)); break;
      case dp::PodShape::LoopbackLabel: p.state.mplsLabelRoute = true; break;
    }
    std::sort(p.state.addresses.begin(), p.state.addresses.end());
    p.state.addresses.erase(std::unique(p.state.addresses.begin(), p.state.addresses.end()),
                            p.state.addresses.end());
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace kst
