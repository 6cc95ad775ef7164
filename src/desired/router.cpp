#include "desired/router.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>

#include "desired/agent.h"
#include "desired/nft_render.h"
#include "desired/published.h"
#include "desired/router_db.h"
#include "hashing/maglev.h"

namespace kst {

std::string greLinkName(const DataplaneConfig& cfg, const IpAddress& endpoint) {
  std::string suffix = endpoint.isV4()
                           ? endpoint.hex()
                           : fmt::format("{:012x}", stableHash(endpoint.str(), 6) >> 16);
  return cfg.linkPrefix + suffix;
}

Allocations allocationsFrom(const dp::RouterState& observed, const DataplaneConfig& cfg) {
  Allocations a;
  std::map<uint32_t, const dp::Nexthop*> byId;
  for (const auto& nh : observed.nexthops) {
    byId[nh.id] = &nh;
    a.nexthopIds.emplace(nh.key(), nh.id);
    if (nh.encap == dp::Nexthop::Encap::Mpls && nh.gateway && !nh.dev.empty())
      a.mplsDevice.emplace(*nh.gateway, nh.dev);
  }
  for (const auto& r : observed.routes) {
    if (r.key.table < cfg.tableOffset || r.key.table >= cfg.tableOffset + cfg.maxSlots) continue;
    if (r.unreachable) continue;
    uint32_t slot = r.key.table - cfg.tableOffset;
    std::optional<IpAddress> ep;
    if (r.nhid) {
      auto it = byId.find(r.nhid);
      if (it == byId.end()) continue;
      const auto& nh = *it->second;
      ep = nh.encap == dp::Nexthop::Encap::Ip ? nh.encapDst : nh.gateway;
      if (!ep) {
        // GRE per endpoint: the endpoint is the remote of the link.
        for (const auto& l : observed.links)
          if (l.name == nh.dev && l.remote) ep = l.remote;
      }
    }
    if (ep) a.slots[r.key.dst].emplace(*ep, slot);
  }
  return a;
}

namespace {
std::string refusal(const DataplaneConfig& cfg, const Allocations& prior, const IpAddress& vip,
                    const IpAddress& ep);
}  // namespace

RouterPlan planRouter(const Model& model, const DataplaneConfig& cfg, const Allocations& prior) {
  RouterPlan plan;
  for (const auto& svc : model.services) {
    VipPlan vp{svc.key, svc.vip, {}, {}, {}, svc.published, false};
    // Endpoints this router cannot encapsulate toward get no slot and no buckets: their share
    // of new flows goes to the others (rather than being dropped here).
    for (const auto& ep : svc.endpoints) {
      if (auto why = refusal(cfg, prior, svc.vip, ep.ip); !why.empty())
        plan.problems.push_back({Problem::Kind::UnusableEndpoint, svc.key, std::move(why)});
      else
        vp.endpoints.push_back(ep);
    }
    // A published table that matches this configuration and exactly this endpoint set.
    std::optional<PublishedTable> pub;
    if (!svc.published.empty()) pub = decodePublished(svc.published);
    if (pub && (pub->buckets != cfg.buckets || pub->seed != cfg.hashSeed ||
                pub->endpoints.size() != svc.endpoints.size()))
      pub.reset();
    std::map<IpAddress, uint32_t> pubSlot;
    if (pub) {
      std::set<uint32_t> slotsSeen;
      for (size_t i = 0; i < pub->endpoints.size() && pub; ++i) {
        const auto& pe = pub->endpoints[i];
        const auto& e = svc.endpoints[i];  // both sorted by address when published by us
        if (pe.ip != e.ip || pe.draining != e.draining || pe.slot >= cfg.maxSlots ||
            !slotsSeen.insert(pe.slot).second)
          pub.reset();
        else
          pubSlot[pe.ip] = pe.slot;
      }
      if (pub)
        for (int32_t idx : pub->table)
          if (idx >= 0 && pub->endpoints[idx].draining) pub.reset();
    }
    // Sticky slots first (the kernel's; a router without any for this VIP takes the published
    // ones, so a fresh router builds the same tables), then the lowest free ones in address
    // order. A router never renumbers slots it holds: pinned flows refer to slot marks.
    std::set<uint32_t> used;
    vp.slots.assign(vp.endpoints.size(), UINT32_MAX);
    auto pit = prior.slots.find(svc.vip);
    // (A published slot that is held here is not taken: this router computes its own.)
    auto heldHere = [&](uint32_t s) {
      auto h = prior.held.find(svc.vip);
      return s < prior.heldBelow || (h != prior.held.end() && h->second.contains(s));
    };
    if (pit == prior.slots.end() && pub &&
        std::none_of(vp.endpoints.begin(), vp.endpoints.end(),
                     [&](const Endpoint& e) { return heldHere(pubSlot[e.ip]); })) {
      for (size_t i = 0; i < vp.endpoints.size(); ++i) {
        vp.slots[i] = pubSlot[vp.endpoints[i].ip];
        used.insert(vp.slots[i]);
      }
    } else if (pit != prior.slots.end()) {
      for (size_t i = 0; i < vp.endpoints.size(); ++i) {
        auto s = pit->second.find(vp.endpoints[i].ip);
        if (s != pit->second.end() && s->second < cfg.maxSlots && used.insert(s->second).second)
          vp.slots[i] = s->second;
      }
    }
    // A slot the kernel routed to an endpoint that leaves now, or released less than
    // --flow-timeout ago (prior.held), is not given to another endpoint: flows still pinned to
    // (VIP, slot mark) in the flow table would follow the mark to the new endpoint. They are
    // gone (moved on their next packet, or timed out) once the timeout has passed.
    if (pit != prior.slots.end())
      for (const auto& [ip, s] : pit->second) used.insert(s);
    if (auto h = prior.held.find(svc.vip); h != prior.held.end()) used.insert(h->second.begin(), h->second.end());
    for (uint32_t s = 0; s < prior.heldBelow; ++s) used.insert(s);
    uint32_t nextFree = 0;
    std::vector<Endpoint> kept;
    std::vector<uint32_t> keptSlots;
    for (size_t i = 0; i < vp.endpoints.size(); ++i) {
      if (vp.slots[i] == UINT32_MAX) {
        while (used.contains(nextFree)) ++nextFree;
        if (nextFree >= cfg.maxSlots) {
          plan.problems.push_back(
              {Problem::Kind::TooManyEndpoints, svc.key,
               fmt::format("VIP {} has more than {} endpoints (--max-slots); endpoint {} gets no "
                           "traffic",
                           svc.vip.str(), cfg.maxSlots, vp.endpoints[i].ip.str())});
          continue;
        }
        vp.slots[i] = nextFree;
        used.insert(nextFree);
      }
      kept.push_back(vp.endpoints[i]);
      keptSlots.push_back(vp.slots[i]);
    }
    vp.endpoints = std::move(kept);
    vp.slots = std::move(keptSlots);
    for (uint32_t s : vp.slots) plan.slotCount = std::max(plan.slotCount, s + 1);

    // Buckets: rendezvous (or Maglev) over the endpoints that take new flows.
    std::vector<std::string> ids;
    std::vector<int32_t> idx;
    for (size_t i = 0; i < vp.endpoints.size(); ++i) {
      if (vp.endpoints[i].draining) continue;
      ids.push_back(vp.endpoints[i].ip.str());
      idx.push_back(static_cast<int32_t>(i));
    }
    if (ids.size() > cfg.buckets) {
      plan.problems.push_back(
          {Problem::Kind::TooManyEndpoints, svc.key,
           fmt::format("VIP {} has {} ready endpoints but only {} buckets (--buckets): {} "
                       "endpoints get no new flows; raise --buckets",
                       svc.vip.str(), ids.size(), cfg.buckets, ids.size() - cfg.buckets)});
    }
    vp.buckets.assign(cfg.buckets, -1);
    if (pub && vp.endpoints.size() == svc.endpoints.size()) {
      // Follow the published table (e.g. written by a router running another version).
      vp.fromPublished = true;
      for (size_t b = 0; b < pub->table.size(); ++b) vp.buckets[b] = pub->table[b];
    } else {
      auto table = cfg.algorithm == BucketAlgorithm::Maglev ? maglevTable(ids, cfg.buckets)
                                                            : rendezvousTable(ids, cfg.buckets);
      for (size_t b = 0; b < table.size(); ++b) vp.buckets[b] = idx[table[b]];
    }
    plan.vips.push_back(std::move(vp));
  }
  return plan;
}

namespace {

/** The router's flow-based device for an endpoint: vxlan carries both underlay families in
 *  one device; ipip and gre need an ip6tnl / ip6gre device for IPv6 endpoints. */
dp::Link flowLinkFor(const DataplaneConfig& cfg, Family underlay) {
  const ModeTraits& t = modeTraits(cfg.mode);
  const bool v4 = underlay == Family::V4;
  dp::Link l;
  l.name = v4 || !*t.suffix6 ? cfg.tunnelLinkName() : cfg.linkPrefix + t.suffix6;
  l.kind = v4 ? t.kind4 : t.kind6;
  l.external = true;
  if (l.kind == dp::Link::Kind::VxlanGpe) l.port = cfg.vxlanPort;
  l.mtu = routerLinkMtu(cfg, underlay);
  return l;
}

dp::Nexthop nexthopFor(const DataplaneConfig& cfg, const Allocations& prior, Family routeFamily,
                       const IpAddress& ep) {
  dp::Nexthop nh;
  nh.family = routeFamily;
  switch (modeTraits(cfg.mode).router) {
    case dp::RouterShape::FlowDevice:
      nh.encap = dp::Nexthop::Encap::Ip;
      nh.encapDst = ep;
      nh.ttl = cfg.ttl;
      nh.dev = flowLinkFor(cfg, ep.family()).name;
      nh.noCsum = modeTraits(cfg.mode).noCsum6 && ep.isV6();  // see dp::Nexthop::noCsum
      break;
    case dp::RouterShape::LinkPerEndpoint:
      nh.dev = greLinkName(cfg, ep);
      nh.ttl = 0;
      break;
    case dp::RouterShape::MplsGateway: {
      nh.encap = dp::Nexthop::Encap::Mpls;
      nh.mplsLabel = cfg.mplsLabel;
      nh.gateway = ep;
      nh.ttl = 0;
      auto it = prior.mplsDevice.find(ep);
      if (it != prior.mplsDevice.end()) nh.dev = it->second;
      break;
    }
  }
  return nh;
}

/** Why this router cannot carry traffic of `vip` to endpoint `ep` in its mode; empty: it can. */
std::string refusal(const DataplaneConfig& cfg, const Allocations& prior, const IpAddress& vip,
                    const IpAddress& ep) {
  if (cfg.mode == Mode::Gre && ep.isV6())
    // ip6gre transmits only with a local address (ip6_tnl_xmit_ctl: no CAP_XMIT for ::),
    // and the router's source toward each pod is not part of the desired state yet.
    return fmt::format("gre mode: endpoint {} of VIP {} is IPv6; per-endpoint GRE interfaces "
                       "carry IPv4 endpoints only (as the original). Use --mode gre-flow or "
                       "vxlan-gpe for IPv6 pods: this router sends it no flows",
                       ep.str(), vip.str());
  if (cfg.mode == Mode::Ipip && vip.isV6() && ep.isV4())
    return fmt::format("ipip mode: VIP {} is IPv6 but endpoint {} is IPv4, and IPv4 ipip "
                       "carries only IPv4 (IPv6 in IPv4 is sit); use --mode gre-flow or "
                       "vxlan-gpe: this router sends it no flows",
                       vip.str(), ep.str());
  if (cfg.mode != Mode::Gre && cfg.mode != Mode::Mpls) return {};
  dp::Nexthop nh = nexthopFor(cfg, prior, vip.family(), ep);
  if (cfg.mode == Mode::Gre && nh.dev.size() > 15)
    return fmt::format("gre mode: interface name {:?} for endpoint {} is longer than 15 "
                       "characters: shorten --link-prefix to at most 7 characters: this router "
                       "sends it no flows",
                       nh.dev, ep.str());
  if (cfg.mode == Mode::Mpls && nh.dev.empty())
    return fmt::format("MPLS mode: endpoint {} of VIP {} is not directly connected to this "
                       "router (its route here has a gateway, or there is none), and `encap "
                       "mpls {} via {}` needs the pod as an on-link neighbour: this router sends "
                       "it no flows. Run the router role on the node that hosts the pod (e.g. on "
                       "every node with endpoints), or use another --mode",
                       ep.str(), vip.str(), cfg.mplsLabel, ep.str());
  return {};
}

}  // namespace

dp::RouterState routerState(RouterPlan& plan, const DataplaneConfig& cfg, const Allocations& prior) {
  NexthopIdPool pool(cfg);
  for (const auto& [key, id] : prior.nexthopIds) pool.hold(key, id);
  auto draw = pool.draw();
  return routerState(plan, cfg, prior, std::ref(draw));
}

dp::RouterState routerState(RouterPlan& plan, const DataplaneConfig& cfg, const Allocations& prior,
                            const NexthopIdDraw& ids) {
  dp::RouterState st;
  // Links.
  if (isFlowMode(cfg.mode) && !plan.vips.empty()) {
    st.links.push_back(flowLinkFor(cfg, Family::V4));
    bool v6Endpoint = false;
    for (auto& vp : plan.vips)
      for (auto& ep : vp.endpoints) v6Endpoint |= ep.ip.isV6();
    if (v6Endpoint && *modeTraits(cfg.mode).suffix6)  // a separate device for IPv6 pods
      st.links.push_back(flowLinkFor(cfg, Family::V6));
  }
  // Nexthops: one per (route family, endpoint); ids sticky (NexthopIdPool).
  std::map<std::pair<Family, IpAddress>, uint32_t> nhOf;
  std::set<std::pair<Family, IpAddress>> noId;
  std::set<std::string> greLinks;
  for (auto& vp : plan.vips) {
    for (auto& ep : vp.endpoints) {
      auto key = std::make_pair(vp.vip.family(), ep.ip);
      if (nhOf.contains(key) || noId.contains(key)) continue;
      dp::Nexthop nh = nexthopFor(cfg, prior, vp.vip.family(), ep.ip);
      if (!refusal(cfg, prior, vp.vip, ep.ip).empty()) continue;  // planRouter dropped it
      auto id = ids(nh);
      if (!id) {  // the owned id range is full: no route, no buckets
        noId.insert(key);
        plan.problems.push_back(
            {Problem::Kind::TooManyEndpoints, vp.service,
             fmt::format("all {} owned nexthop ids are in use: endpoint {} of VIP {} gets no "
                         "traffic",
                         cfg.nexthopIdEnd() - cfg.nexthopIdBase, ep.ip.str(), vp.vip.str())});
        continue;
      }
      nh.id = *id;
      nhOf.emplace(key, nh.id);
      if (cfg.mode == Mode::Gre && greLinks.insert(nh.dev).second) {
        dp::Link l;
        l.name = nh.dev;
        l.kind = ep.ip.isV4() ? dp::Link::Kind::Gre : dp::Link::Kind::Ip6gre;
        l.remote = ep.ip;
        l.mtu = routerLinkMtu(cfg, ep.ip.family());
        st.links.push_back(l);
      }
      st.nexthops.push_back(nh);
    }
  }
  std::sort(st.nexthops.begin(), st.nexthops.end(),
            [](auto& a, auto& b) { return a.id < b.id; });

  // Routes: VIP in the table of each endpoint's slot.
  for (auto& vp : plan.vips) {
    for (size_t i = 0; i < vp.endpoints.size(); ++i) {
      auto it = nhOf.find({vp.vip.family(), vp.endpoints[i].ip});
      if (it == nhOf.end()) continue;
      dp::Route r;
      r.key = {vp.vip.family(), cfg.tableOffset + vp.slots[i], vp.vip, vp.vip.hostPrefixLen()};
      r.nhid = it->second;
      st.routes.push_back(r);
    }
  }
  // Rules: one per slot and family in use.
  bool any4 = false, any6 = false;
  for (auto& vp : plan.vips) (vp.vip.isV4() ? any4 : any6) = true;
  // A slot without an endpoint for a VIP holds an unreachable route for it: a packet marked for
  // a slot whose endpoint is gone (classified in the moment its live-slot element went, see
  // RouterReconciler) gets an ICMP unreachable instead of leaking into the main table
  // (and upstream). Not a default route: the encapsulated packet keeps the fwmark and its
  // outer lookup must fall through these tables to the main one.
  for (auto& vp : plan.vips) {
    std::set<uint32_t> usedSlots(vp.slots.begin(), vp.slots.end());
    for (uint32_t s = 0; s < plan.slotCount; ++s) {
      if (usedSlots.contains(s)) continue;
      dp::Route r;
      r.key = {vp.vip.family(), cfg.tableOffset + s, vp.vip, vp.vip.hostPrefixLen()};
      r.unreachable = true;
      st.routes.push_back(r);
    }
  }
  std::sort(st.routes.begin(), st.routes.end(), [](auto& a, auto& b) { return a.key < b.key; });

  for (uint32_t s = 0; s < plan.slotCount; ++s) {
    if (any4) st.rules.push_back({Family::V4, cfg.rulePriority + s, cfg.tableOffset + s, cfg.tableOffset + s});
    if (any6) st.rules.push_back({Family::V6, cfg.rulePriority + s, cfg.tableOffset + s, cfg.tableOffset + s});
  }
  std::sort(st.rules.begin(), st.rules.end());

  // nftables.
  st.nft.present = !plan.vips.empty();
  st.nft.skeleton = renderSkeleton(cfg);
  st.nft.skeletonId = skeletonId(st.nft.skeleton);
  for (auto& vp : plan.vips) {
    st.nft.vips.insert(vp.vip);
    // Live slots: every endpoint the slot tables route to, draining ones included (their
    // pinned flows continue); flows pinned to any other (VIP, mark) are hashed again.
    for (size_t i = 0; i < vp.endpoints.size(); ++i)
      if (nhOf.contains({vp.vip.family(), vp.endpoints[i].ip}))
        st.nft.live.insert({vp.vip, cfg.tableOffset + vp.slots[i]});
    // One dense vector per VIP, bucket → mark (0 = no element; marks are ≥ tableOffset ≥ 1).
    std::vector<uint32_t> marks(vp.buckets.size(), 0);
    bool any = false;
    for (uint32_t b = 0; b < vp.buckets.size(); ++b) {
      int32_t e = vp.buckets[b];
      if (e < 0) continue;
      if (!nhOf.contains({vp.vip.family(), vp.endpoints[e].ip})) continue;
      marks[b] = cfg.tableOffset + vp.slots[e];
      any = true;
    }
    if (!any) continue;
    if (!st.nft.buckets.marksOf(vp.vip)) {
      st.nft.buckets.setVip(vp.vip, std::move(marks));
    } else {  // a VIP planned twice: the first plan's elements win (as map emplace did)
      for (uint32_t b = 0; b < marks.size(); ++b)
        if (marks[b]) st.nft.buckets.insert(vp.vip, b, marks[b]);
    }
  }
  return st;
}

}  // namespace kst
