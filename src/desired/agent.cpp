#include "desired/agent.h"

#include <algorithm>

namespace kst {

dp::Link podLink(const DataplaneConfig& cfg, const IpAddress& podIp) {
  dp::Link l;
  l.name = cfg.tunnelLinkName();
  switch (cfg.mode) {
    case Mode::VxlanGpe:
      l.kind = dp::Link::Kind::VxlanGpe;
      l.external = true;
      l.port = cfg.vxlanPort;
      break;
    case Mode::Ipip:
      l.kind = podIp.isV4() ? dp::Link::Kind::Ipip : dp::Link::Kind::Ip6tnl;
      l.external = true;
      break;
    case Mode::GreFlow:
      l.kind = podIp.isV4() ? dp::Link::Kind::Gre : dp::Link::Kind::Ip6gre;
      l.external = true;
      break;
    case Mode::Gre:
      // The original: a GRE interface bound to the pod address, any remote (every router).
      l.kind = podIp.isV4() ? dp::Link::Kind::Gre : dp::Link::Kind::Ip6gre;
      l.local = podIp;
      break;
    case Mode::Mpls: break;
  }
  return l;
}

std::vector<PodPlan> planAgent(const Model& model, const DataplaneConfig& cfg,
                               const std::string& nodeName) {
  std::map<IpAddress, PodPlan> pods;
  for (const auto& svc : model.services) {
    for (const auto& ep : svc.endpoints) {
      if (ep.nodeName != nodeName) continue;
      auto& p = pods[ep.ip];
      p.podIp = ep.ip;
      p.services.push_back(svc.key);
      std::string dev = cfg.mode == Mode::Mpls ? "lo" : cfg.tunnelLinkName();
      p.state.addresses.push_back({dev, svc.vip, svc.vip.hostPrefixLen()});
    }
  }
  std::vector<PodPlan> out;
  for (auto& [ip, p] : pods) {
    if (cfg.mode == Mode::Mpls)
      p.state.mplsLabelRoute = true;
    else
      p.state.links.push_back(podLink(cfg, ip));
    std::sort(p.state.addresses.begin(), p.state.addresses.end());
    p.state.addresses.erase(std::unique(p.state.addresses.begin(), p.state.addresses.end()),
                            p.state.addresses.end());
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace kst
