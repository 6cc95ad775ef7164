#include "model/model.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>

namespace kst {

const char* problemReason(Problem::Kind kind) {
  switch (kind) {
    case Problem::Kind::InvalidAnnotation: return "InvalidTunnelAnnotation";
    case Problem::Kind::VipConflict: return "TunnelVIPConflict";
    case Problem::Kind::OrphanSlice: return "OrphanEndpointSlice";
    case Problem::Kind::TooManyEndpoints: return "TooManyEndpoints";
  }
  return "Unknown";
}

namespace {

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

}  // namespace

Model buildModel(const ClusterObjects& objects, const ModelOptions& options) {
  Model model;
  // 1. Services with a valid annotation; conflicts resolved by age.
  struct Claim {
    const ServiceObject* svc;
    IpAddress vip;
  };
  std::map<IpAddress, std::vector<Claim>> claims;
  for (const auto& [key, svc] : objects.services) {
    auto it = svc.annotations.find(options.annotation);
    if (it == svc.annotations.end()) continue;
    auto vip = IpAddress::parse(trim(it->second));
    if (!vip) {
      model.problems.push_back(
          {Problem::Kind::InvalidAnnotation, key,
           fmt::format("annotation {}={:?} is not an IPv4 or IPv6 address; service ignored",
                       options.annotation, it->second)});
      continue;
    }
    claims[*vip].push_back({&svc, *vip});
  }
  std::map<ObjectKey, IpAddress> winners;
  for (auto& [vip, list] : claims) {
    std::sort(list.begin(), list.end(), [](const Claim& a, const Claim& b) {
      if (a.svc->creationTimestamp != b.svc->creationTimestamp)
        return a.svc->creationTimestamp < b.svc->creationTimestamp;
      return a.svc->key < b.svc->key;
    });
    winners.emplace(list.front().svc->key, vip);
    for (size_t i = 1; i < list.size(); ++i) {
      model.problems.push_back(
          {Problem::Kind::VipConflict, list[i].svc->key,
           fmt::format("VIP {} is already claimed by the older service {}; this service is not "
                       "tunnelled",
                       vip.str(), list.front().svc->key.str())});
    }
  }

  // 2. Merge the slices of each winning service.
  std::map<ObjectKey, std::map<IpAddress, Endpoint>> eps;
  for (const auto& [key, slice] : objects.slices) {
    ObjectKey svcKey{key.ns, slice.serviceName};
    if (slice.serviceName.empty() || !objects.services.contains(svcKey)) {
      model.problems.push_back(
          {Problem::Kind::OrphanSlice, key,
           fmt::format("EndpointSlice belongs to unknown service {:?}; ignored",
                       slice.serviceName)});
      continue;
    }
    if (!winners.contains(svcKey)) continue;
    if (slice.addressType != "IPv4" && slice.addressType != "IPv6") continue;
    for (const auto& se : slice.endpoints) {
      if (!se.serving) continue;
      auto ip = IpAddress::parse(se.address);
      if (!ip) continue;
      Endpoint e{*ip, se.nodeName.value_or(""), true, se.terminating || !se.ready, se.targetRef};
      // A terminating endpoint that is still serving drains; one that is serving but not ready
      // and not terminating (e.g. a failing readiness probe with publishNotReadyAddresses) is
      // also kept out of new flows.
      auto [pos, inserted] = eps[svcKey].emplace(*ip, e);
      if (!inserted) {
        // The same address in two slices (during slice migration): prefer the more useful view.
        pos->second.draining = pos->second.draining && e.draining;
      }
    }
  }

  for (const auto& [key, vip] : winners) {
    TunnelService ts{key, vip, {}, {}};  // endpoints, published
    const auto& ann = objects.services.at(key).annotations;
    if (auto p = ann.find(options.publishedAnnotation); p != ann.end()) ts.published = p->second;
    auto it = eps.find(key);
    if (it != eps.end()) {
      // Same-family endpoints if any; otherwise the other family (cross-family encapsulation).
      bool haveSame = std::any_of(it->second.begin(), it->second.end(),
                                  [&](auto& p) { return p.first.family() == vip.family(); });
      for (auto& [ip, e] : it->second)
        if (!haveSame || ip.family() == vip.family()) ts.endpoints.push_back(e);
    }
    model.services.push_back(std::move(ts));
  }
  std::sort(model.services.begin(), model.services.end(),
            [](const TunnelService& a, const TunnelService& b) { return a.vip < b.vip; });
  return model;
}

}  // namespace kst
