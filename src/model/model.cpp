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
    case Problem::Kind::UnusableEndpoint: return "TunnelEndpointUnusable";
    case Problem::Kind::VipRefused: return "TunnelVIPRefused";
    case Problem::Kind::DuplicatePodAddress: return "TunnelPodAddressDuplicated";
  }
  return "Unknown";
}

ModelBuilder::ModelBuilder(ModelOptions options) : opts_(std::move(options)) {}

void ModelBuilder::putService(const ObjectKey& k, ServiceObject* v) {
  auto it = objects_.services.find(k);
  if (it == objects_.services.end() ? !v : v && it->second == *v) return;
  if (v) objects_.services.insert_or_assign(k, std::move(*v));
  else objects_.services.erase(it);
  dirtyServices_.insert(k);
}

void ModelBuilder::putSlice(const ObjectKey& k, EndpointSliceObject* v) {
  auto it = objects_.slices.find(k);
  if (it == objects_.slices.end() ? !v : v && it->second == *v) return;
  if (it != objects_.slices.end()) {
    ObjectKey svc{k.ns, it->second.serviceName};
    dirtyServices_.insert(svc);
    if (auto s = slicesOf_.find(svc); s != slicesOf_.end() && s->second.erase(k) && s->second.empty())
      slicesOf_.erase(s);
  }
  if (v) {
    ObjectKey svc{k.ns, v->serviceName};
    dirtyServices_.insert(svc);
    slicesOf_[svc].insert(k);
    objects_.slices.insert_or_assign(k, std::move(*v));
  } else {
    objects_.slices.erase(k);
  }
  dirtySlices_.insert(k);
}

void ModelBuilder::putTable(const ObjectKey& k, PublishedTableObject* v) {
  auto it = objects_.tables.find(k);
  if (it == objects_.tables.end() ? !v : v && it->second == *v) return;
  if (v) objects_.tables.insert_or_assign(k, std::move(*v));
  else objects_.tables.erase(it);
  dirtyServices_.insert(k);
}

TunnelService ModelBuilder::serviceFor(const ObjectKey& key, const IpAddress& vip) const {
  TunnelService ts{key, vip, {}, {}};  // endpoints, published
  // Only a table written for this very Service (same uid): a Service deleted and created
  // again under the same name does not inherit the old one's table.
  const auto& svc = objects_.services.at(key);
  // Valid here (a Service with an invalid entry claims no VIP, see apply()); enforced by the
  // routers (desired/nft_render.h, "Source ranges").
  if (auto ranges = sourceRangesOf(svc)) ts.sourceRanges = std::move(*ranges);
  if (auto t = objects_.tables.find(key);
      t != objects_.tables.end() && (t->second.uid.empty() || t->second.uid == svc.uid))
    ts.published = t->second.table;
  auto sl = slicesOf_.find(key);
  if (sl == slicesOf_.end()) return ts;
  std::map<IpAddress, Endpoint> eps, starting;
  for (const auto& sk : sl->second) {
    const auto& slice = objects_.slices.at(sk);
    if (slice.addressType != "IPv4" && slice.addressType != "IPv6") continue;
    for (const auto& se : slice.endpoints) {
      if (!se.serving) {
        if (!opts_.startingEndpoints || se.terminating) continue;
        if (auto ip = IpAddress::parse(se.address))
          starting.emplace(*ip, Endpoint{*ip, se.nodeName.value_or(""), false, false,
                                         se.targetRef, se.targetUid});
        continue;
      }
      auto ip = IpAddress::parse(se.address);
      if (!ip) continue;
      // A terminating endpoint that is still serving drains; one that is serving but not ready
      // and not terminating (e.g. a failing readiness probe with publishNotReadyAddresses) is
      // also kept out of new flows.
      Endpoint e{*ip, se.nodeName.value_or(""), true, se.terminating || !se.ready, se.targetRef,
                 se.targetUid};
      auto [pos, inserted] = eps.emplace(*ip, e);
      // The same address in two slices (during slice migration): prefer the more useful view.
      if (!inserted) pos->second.draining = pos->second.draining && e.draining;
    }
  }
  // Same-family endpoints if any; otherwise the other family (cross-family encapsulation).
  bool haveSame = std::any_of(eps.begin(), eps.end(),
                              [&](auto& p) { return p.first.family() == vip.family(); });
  for (auto& [ip, e] : eps)
    if (!haveSame || ip.family() == vip.family()) ts.endpoints.push_back(e);
  bool haveSameStarting = haveSame || std::any_of(starting.begin(), starting.end(), [&](auto& p) {
                            return p.first.family() == vip.family();
                          });
  for (auto& [ip, e] : starting)
    if (!eps.contains(ip) && (!haveSameStarting || ip.family() == vip.family()))
      ts.starting.push_back(e);
  return ts;
}

std::set<IpAddress> ModelBuilder::apply(ObjectChanges changes) {
  dirtyServices_.clear();
  dirtySlices_.clear();
  // 1. Objects (and the slice index); what really changed becomes dirty.
  if (changes.replaceAll) {
    std::vector<ObjectKey> gone;
    for (auto& [k, s] : objects_.services)
      if (auto c = changes.services.find(k); c == changes.services.end() || !c->second)
        gone.push_back(k);
    for (auto& k : gone) putService(k, nullptr);
    gone.clear();
    for (auto& [k, s] : objects_.slices)
      if (auto c = changes.slices.find(k); c == changes.slices.end() || !c->second)
        gone.push_back(k);
    for (auto& k : gone) putSlice(k, nullptr);
    gone.clear();
    for (auto& [k, t] : objects_.tables)
      if (auto c = changes.tables.find(k); c == changes.tables.end() || !c->second)
        gone.push_back(k);
    for (auto& k : gone) putTable(k, nullptr);
  }
  // The objects are moved in (a cold start holds them once, not twice).
  for (auto& [k, v] : changes.services) putService(k, v ? &*v : nullptr);
  for (auto& [k, v] : changes.slices) putSlice(k, v ? &*v : nullptr);
  for (auto& [k, v] : changes.tables) putTable(k, v ? &*v : nullptr);

  // 2. Claims of the dirty Services; every VIP they held or now claim is recomputed.
  std::set<IpAddress> affected;
  for (const auto& key : dirtyServices_) {
    if (auto sl = slicesOf_.find(key); sl != slicesOf_.end())  // their orphan status may change
      dirtySlices_.insert(sl->second.begin(), sl->second.end());
    if (auto c = claimOf_.find(key); c != claimOf_.end()) {
      auto& [vip, claim] = c->second;
      affected.insert(vip);
      if (auto cl = claimants_.find(vip); cl != claimants_.end() && cl->second.erase(claim) &&
                                          cl->second.empty())
        claimants_.erase(cl);
      claimOf_.erase(c);
    }
    invalid_.erase(key);
    auto svc = objects_.services.find(key);
    if (svc == objects_.services.end()) continue;
    auto wanted = requestedVip(svc->second, opts_.annotation, opts_.loadBalancerClass);
    if (!wanted) continue;  // not ours, or a LoadBalancer still waiting for its address
    auto vip = IpAddress::parse(*wanted);
    if (!vip) {
      invalid_.emplace(key, Problem{Problem::Kind::InvalidAnnotation, key,
                                    fmt::format("annotation {}={:?} is not an IPv4 or IPv6 "
                                                "address; service ignored",
                                                opts_.annotation, wanted->substr(0, 256))});
      continue;
    }
    if (auto ranges = sourceRangesOf(svc->second); !ranges) {
      invalid_.emplace(key, Problem{Problem::Kind::InvalidAnnotation, key,
                                    ranges.error().message + "; service not tunnelled"});
      continue;
    }
    if (opts_.policy) {
      if (auto why = vipRefusal(*opts_.policy, key.ns, *vip)) {
        invalid_.emplace(key, Problem{Problem::Kind::VipRefused, key,
                                      *why + "; service not tunnelled (VIP pools: --vip-pool)"});
        continue;
      }
    }
    Claim claim{svc->second.creationTimestamp, key};
    claimOf_.insert_or_assign(key, std::make_pair(*vip, claim));
    claimants_[*vip].insert(claim);
    affected.insert(*vip);
  }

  // 3. Affected VIPs: winner (oldest claim), conflicts, the winner's TunnelService.
  std::set<IpAddress> changed;
  auto& svcs = model_.services;
  for (const auto& vip : affected) {
    auto pos = std::lower_bound(svcs.begin(), svcs.end(), vip,
                                [](const TunnelService& s, const IpAddress& v) { return s.vip < v; });
    bool had = pos != svcs.end() && pos->vip == vip;
    conflicts_.erase(vip);
    auto cl = claimants_.find(vip);
    if (cl == claimants_.end()) {
      if (had) {
        svcs.erase(pos);
        changed.insert(vip);
      }
      continue;
    }
    const ObjectKey& winner = cl->second.begin()->key;
    for (auto it = std::next(cl->second.begin()); it != cl->second.end(); ++it)
      conflicts_[vip].push_back(
          {Problem::Kind::VipConflict, it->key,
           fmt::format("VIP {} is already claimed by the older service {}; this service is not "
                       "tunnelled",
                       vip.str(), winner.str())});
    TunnelService ts = serviceFor(winner, vip);
    if (!had) {
      svcs.insert(pos, std::move(ts));
      changed.insert(vip);
    } else if (!(*pos == ts)) {
      *pos = std::move(ts);
      changed.insert(vip);
    }
  }

  // 4. Slices without a Service.
  for (const auto& key : dirtySlices_) {
    orphans_.erase(key);
    auto it = objects_.slices.find(key);
    if (it == objects_.slices.end()) continue;
    const auto& slice = it->second;
    if (!slice.serviceName.empty() && objects_.services.contains({key.ns, slice.serviceName}))
      continue;
    orphans_.emplace(key, Problem{Problem::Kind::OrphanSlice, key,
                                  fmt::format("EndpointSlice belongs to unknown service {:?}; "
                                              "ignored",
                                              slice.serviceName)});
  }

  // 5. Problems, in buildModel's order: annotations, conflicts by VIP, orphan slices.
  model_.problems.clear();
  for (auto& [k, p] : invalid_) model_.problems.push_back(p);
  for (auto& [v, ps] : conflicts_) model_.problems.insert(model_.problems.end(), ps.begin(), ps.end());
  for (auto& [k, p] : orphans_) model_.problems.push_back(p);
  dirtyServices_.clear();
  dirtySlices_.clear();
  return changed;
}

Model buildModel(const ClusterObjects& objects, const ModelOptions& options) {
  ModelBuilder b(options);
  b.apply(ObjectChanges::all(objects));
  return b.model();
}

}  // namespace kst
