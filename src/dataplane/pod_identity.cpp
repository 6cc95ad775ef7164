#include "dataplane/pod_identity.h"

#include <cerrno>

#include <fmt/format.h>

namespace kst::dp {

namespace {

// <linux/neighbour.h> NUD_* values (this folder includes no kernel headers).
constexpr uint16_t kNudIncomplete = 0x01;
constexpr uint16_t kNudFailed = 0x20;
constexpr uint16_t kNudNoarp = 0x40;
constexpr uint8_t kRtnUnicast = 1;

std::string macStr(const MacAddress& m) {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4],
                     m[5]);
}

Result<PodPeer> fromVeth(const IpAddress& ip, const HostLink& l, std::string via) {
  if (l.kind != "veth")
    return fail(fmt::format("{}: the node delivers it to {} (kind {:?}), not to a veth", ip.str(),
                            l.name, l.kind));
  if (!l.linkNetnsid || *l.linkNetnsid < 0)
    return fail(fmt::format("{}: the peer of {} is in the node's own namespace", ip.str(), l.name));
  return PodPeer{*l.linkNetnsid, l.name, std::move(via)};
}

}  // namespace

Result<PodPeer> podPeer(const IpAddress& ip, const RouteToPod& route, const HostFacts& facts) {
  if (route.type != kRtnUnicast)
    return fail(fmt::format("{}: the node's route is not unicast (type {})", ip.str(), route.type));
  if (route.gateway)
    return fail(fmt::format("{}: the node routes it through a gateway (not a local pod)", ip.str()));
  auto dev = facts.links.find(route.oif);
  if (dev == facts.links.end())
    return fail(fmt::format("{}: the route's device {} is unknown", ip.str(), route.oif));
  const HostLink& out = dev->second;
  if (out.kind != "bridge") return fromVeth(ip, out, "");
  const Neighbour* nb = nullptr;
  for (const auto& n : facts.neighbours)
    if (n.ip == ip && n.ifindex == out.ifindex) nb = &n;
  if (!nb || !nb->mac || (nb->state & (kNudIncomplete | kNudFailed)) || nb->state == 0)
    return fail(kNeedsNeighbour,
                fmt::format("{}: no neighbour entry on {} yet", ip.str(), out.name));
  if (nb->state & kNudNoarp)
    return fail(fmt::format("{}: the neighbour entry on {} is not learned (NOARP)", ip.str(),
                            out.name));
  const FdbEntry* port = nullptr;
  for (const auto& f : facts.fdb) {
    if (f.mac != *nb->mac || f.master != out.ifindex || f.local || f.port == out.ifindex)
      continue;
    if (port && port->port != f.port)
      return fail(fmt::format("{}: MAC {} is on two ports of {}", ip.str(), macStr(*nb->mac),
                              out.name));
    port = &f;
  }
  if (!port)
    return fail(kNeedsNeighbour, fmt::format("{}: {} has no forwarding entry for MAC {} yet",
                                             ip.str(), out.name, macStr(*nb->mac)));
  auto veth = facts.links.find(port->port);
  if (veth == facts.links.end())
    return fail(fmt::format("{}: bridge port {} is unknown", ip.str(), port->port));
  if (veth->second.master != out.ifindex)
    return fail(fmt::format("{}: {} is not a port of {}", ip.str(), veth->second.name, out.name));
  return fromVeth(ip, veth->second, out.name);
}

bool needsBridgeFacts(const std::vector<RouteToPod>& routes, const HostFacts& facts) {
  for (const auto& r : routes) {
    auto it = facts.links.find(r.oif);
    if (it != facts.links.end() && it->second.kind == "bridge") return true;
  }
  return false;
}

}  // namespace kst::dp
