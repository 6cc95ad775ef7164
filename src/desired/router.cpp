#include "desired/router.h"

#include <cstring>

#include <algorithm>
#include <iterator>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "desired/agent.h"
#include "desired/nft_render.h"
#include "desired/published.h"
#include "desired/router_db.h"
#include "hashing/balance.h"
#include "hashing/maglev.h"

namespace kst {

std::vector<dp::SourceInterval> sourceIntervals(const IpAddress& vip,
                                                const std::vector<IpPrefix>& ranges) {
  std::vector<dp::SourceInterval> out;
  for (const auto& p : ranges) {
    if (p.family() != vip.family()) continue;
    const size_t n = p.address().size();
    uint8_t last[16];
    std::memcpy(last, p.address().data(), n);
    for (size_t bit = p.length(); bit < n * 8; ++bit) last[bit / 8] |= uint8_t(0x80u >> (bit % 8));
    out.push_back({p.address(), IpAddress::fromBytes(vip.family(), last)});
  }
  std::sort(out.begin(), out.end());
  std::vector<dp::SourceInterval> merged;
  for (auto& iv : out) {
    if (!merged.empty() && iv.first <= merged.back().last) {
      if (merged.back().last < iv.last) merged.back().last = iv.last;
    } else {
      merged.push_back(iv);
    }
  }
  return merged;
}

size_t NexthopKeyHash::operator()(const NexthopKey& k) const noexcept {
  const auto& [family, encap, dst, ttl, label, gateway, dev] = k;
  auto ip = [](const std::optional<IpAddress>& a) { return a ? std::hash<IpAddress>{}(*a) : 0; };
  size_t h = std::hash<std::string>{}(dev);
  for (size_t x : {static_cast<size_t>(family), static_cast<size_t>(encap), ip(dst),
                   static_cast<size_t>(ttl), static_cast<size_t>(label), ip(gateway)})
    h = h * 1000003u ^ x;
  return h;
}

std::string greLinkName(const DataplaneConfig& cfg, const IpAddress& endpoint) {
  std::string suffix = endpoint.isV4()
                           ? endpoint.hex()
                           : fmt::format("{:012x}", stableHash(endpoint.str(), 6) >> 16);
  return cfg.linkPrefix + suffix;
}

std::optional<IpAddress> routeEndpoint(const dp::Route& r,
                                       const std::map<uint32_t, const dp::Nexthop*>& nexthops,
                                       const std::vector<dp::Link>& links) {
  if (!r.nhid) return std::nullopt;
  auto it = nexthops.find(r.nhid);
  if (it == nexthops.end()) return std::nullopt;
  const auto& nh = *it->second;
  std::optional<IpAddress> ep = nh.encap == dp::Nexthop::Encap::Ip ? nh.encapDst : nh.gateway;
  if (!ep) {
    // GRE per endpoint: the endpoint is the remote of the link.
    for (const auto& l : links)
      if (l.name == nh.dev && l.remote) ep = l.remote;
  }
  return ep;
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
    uint32_t slot = r.key.table - cfg.tableOffset;
    auto [t, added] = a.tables.try_emplace(r.key.dst, slot + 1);
    if (!added) t->second = std::max(t->second, slot + 1);
    if (r.unreachable) continue;
    if (auto ep = routeEndpoint(r, byId, observed.links)) a.slots[r.key.dst].emplace(*ep, slot);
  }
  return a;
}

namespace {
std::string refusal(const DataplaneConfig& cfg, const Allocations& prior, const IpAddress& vip,
                    const IpAddress& ep);

/** Every bucket of the table is assigned and the endpoints holding buckets hold ⌊B/n⌋ or
 *  ⌈B/n⌉ of them (n: the non-draining endpoints): what balancedTable makes. */
bool balanced(const PublishedTable& t) {
  size_t n = 0;
  for (auto& e : t.endpoints) n += !e.draining;
  if (n == 0) return false;
  std::vector<uint32_t> count(t.endpoints.size(), 0);
  for (int32_t e : t.table) {
    if (e < 0) return false;
    ++count[e];
  }
  const uint32_t lo = t.buckets / n, hi = lo + (t.buckets % n != 0);
  for (size_t i = 0; i < t.endpoints.size(); ++i)
    if (!t.endpoints[i].draining && (count[i] < lo || count[i] > hi)) return false;
  return true;
}
}  // namespace


RouterPlan planRouter(const Model& model, const DataplaneConfig& cfg, const Allocations& prior) {
  RouterPlan plan;
  for (const auto& svc : model.services) {
    VipPlan vp{svc.key, svc.vip, {}, {}, {}, svc.published, false, svc.sourceRanges};
    vp.endpoints.reserve(svc.endpoints.size());
    // Endpoints this router cannot encapsulate toward get no slot and no buckets: their share
    // of new flows goes to the others (rather than being dropped here).
    for (const auto& ep : svc.endpoints) {
      if (auto why = refusal(cfg, prior, svc.vip, ep.ip); !why.empty())
        plan.problems.push_back({Problem::Kind::UnusableEndpoint, svc.key, std::move(why)});
      else
        vp.endpoints.push_back(ep);
    }
    // The published table of the VIP, when it was made with this hash seed.
    std::optional<PublishedTable> pub;
    if (!svc.published.empty()) pub = decodePublished(svc.published);
    if (pub && pub->seed != cfg.hashSeed) pub.reset();
    // `pub` stays the base of the bucket assignment (balancedTable) whatever the endpoints;
    // `exact` is set when it also matches the endpoint set and can be followed as it is.
    std::optional<PublishedTable> exact = pub;
    if (exact && exact->endpoints.size() != svc.endpoints.size()) exact.reset();
    std::map<IpAddress, uint32_t> pubSlot;
    if (exact) {
      std::set<uint32_t> slotsSeen;
      for (size_t i = 0; i < exact->endpoints.size() && exact; ++i) {
        const auto& pe = exact->endpoints[i];
        const auto& e = svc.endpoints[i];  // both sorted by address when published by us
        if (pe.ip != e.ip || pe.draining != e.draining || pe.slot >= cfg.maxSlots ||
            !slotsSeen.insert(pe.slot).second)
          exact.reset();
        else
          pubSlot[pe.ip] = pe.slot;
      }
      if (exact)
        for (int32_t idx : exact->table)
          if (idx >= 0 && exact->endpoints[idx].draining) exact.reset();
      if (!exact) pubSlot.clear();
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
    if (pit == prior.slots.end() && exact &&
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
    kept.reserve(vp.endpoints.size());
    keptSlots.reserve(vp.endpoints.size());
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
    for (uint32_t s : vp.slots) vp.tables = std::max(vp.tables, s + 1);
    if (auto t = prior.tables.find(svc.vip); t != prior.tables.end())
      vp.tables = std::max(vp.tables, std::min(t->second, cfg.maxSlots));
    plan.slotCount = std::max(plan.slotCount, vp.tables);

    // Buckets over the endpoints that take new flows: the VIP's bucket count grows with them
    // (hashing/balance.h), the assignment is balanced and derived from the published table
    // when there is one, so that every router reading it computes the same.
    std::vector<std::string> ids;
    std::vector<int32_t> idx;
    ids.reserve(vp.endpoints.size());
    idx.reserve(vp.endpoints.size());
    for (size_t i = 0; i < vp.endpoints.size(); ++i) {
      if (vp.endpoints[i].draining) continue;
      ids.push_back(vp.endpoints[i].ip.str());
      idx.push_back(static_cast<int32_t>(i));
    }
    const uint32_t count = vipBucketCount(cfg.buckets, ids.size(), pub ? pub->buckets : 0);
    if (ids.size() > count) {
      plan.problems.push_back(
          {Problem::Kind::TooManyEndpoints, svc.key,
           fmt::format("VIP {} has {} ready endpoints but at most {} buckets (the cap of a VIP's "
                       "bucket count, max(--buckets, {})): {} endpoints get no new flows",
                       svc.vip.str(), ids.size(), count, kVipBucketCap, ids.size() - count)});
    }
    vp.buckets.assign(count, -1);
    if (exact && vp.endpoints.size() == svc.endpoints.size() && exact->buckets == count &&
        cfg.algorithm == BucketAlgorithm::Rendezvous && balanced(*exact)) {
      // Follow the published table (the elected router's, or one written by another version).
      vp.fromPublished = true;
      for (size_t b = 0; b < exact->table.size(); ++b) vp.buckets[b] = exact->table[b];
    } else if (cfg.algorithm == BucketAlgorithm::Maglev) {
      auto table = maglevTable(ids, count);
      for (size_t b = 0; b < table.size(); ++b) vp.buckets[b] = idx[table[b]];
    } else {
      std::vector<std::string> base;
      if (pub) {
        base.resize(pub->table.size());
        for (size_t b = 0; b < pub->table.size(); ++b)
          if (int32_t e = pub->table[b]; e >= 0 && !pub->endpoints[e].draining)
            base[b] = pub->endpoints[e].ip.str();
      }
      auto table = balancedTable(ids, count, base);
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

std::vector<dp::Rule> slotRules(const DataplaneConfig& cfg, uint32_t slotCount, bool v4, bool v6) {
  std::vector<dp::Rule> rules;
  for (uint32_t s = 0; s < slotCount; ++s) {
    if (v4) rules.push_back({Family::V4, cfg.rulePriority + s, cfg.tableOffset + s, cfg.tableOffset + s});
    if (v6) rules.push_back({Family::V6, cfg.rulePriority + s, cfg.tableOffset + s, cfg.tableOffset + s});
  }
  std::sort(rules.begin(), rules.end());
  return rules;
}

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
  // epNh[v][i]: the nexthop id of endpoint i of plan.vips[v], 0 for none (no id was left or
  // refused; the kernel has no nexthop 0), looked up once per endpoint.
  struct FamilyIpHash {
    size_t operator()(const std::pair<Family, IpAddress>& k) const noexcept {
      return std::hash<IpAddress>{}(k.second) * 31 + static_cast<size_t>(k.first);
    }
  };
  std::unordered_map<std::pair<Family, IpAddress>, uint32_t, FamilyIpHash> nhOf;
  std::unordered_set<std::pair<Family, IpAddress>, FamilyIpHash> noId;
  size_t neps = 0;
  for (auto& vp : plan.vips) neps += vp.endpoints.size();
  nhOf.reserve(neps);
  std::set<std::string> greLinks;
  std::vector<std::vector<uint32_t>> epNh(plan.vips.size());
  for (size_t v = 0; v < plan.vips.size(); ++v) {
    auto& vp = plan.vips[v];
    epNh[v].assign(vp.endpoints.size(), 0);
    for (size_t i = 0; i < vp.endpoints.size(); ++i) {
      const auto& ep = vp.endpoints[i];
      auto key = std::make_pair(vp.vip.family(), ep.ip);
      if (auto it = nhOf.find(key); it != nhOf.end()) {
        epNh[v][i] = it->second;
        continue;
      }
      if (noId.contains(key)) continue;
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
      epNh[v][i] = nh.id;
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

  // Routes: VIP in the table of each endpoint's slot, and unreachable guards. Built in key
  // order (family, table, VIP) without sorting 10^5 of them: one list per family and slot
  // table, filled in VIP order and joined (sorted after all when the plan's VIPs are not
  // strictly ascending).
  uint32_t nt = 0;
  bool ascending = true;
  for (size_t v = 0; v < plan.vips.size(); ++v) {
    auto& vp = plan.vips[v];
    nt = std::max(nt, vp.tables);
    for (uint32_t s : vp.slots) nt = std::max(nt, s + 1);
    if (v > 0 && !(plan.vips[v - 1].vip < vp.vip)) ascending = false;
  }
  std::vector<std::vector<dp::Route>> byTable(2 * static_cast<size_t>(nt));  // V4 tables, V6 tables
  auto tableOf = [&](const IpAddress& vip, uint32_t s) -> std::vector<dp::Route>& {
    return byTable[(vip.isV4() ? 0 : nt) + s];
  };
  bool any4 = false, any6 = false;
  for (size_t v = 0; v < plan.vips.size(); ++v) {
    auto& vp = plan.vips[v];
    (vp.vip.isV4() ? any4 : any6) = true;
    for (size_t i = 0; i < vp.endpoints.size(); ++i) {
      if (!epNh[v][i]) continue;
      dp::Route r;
      r.key = {vp.vip.family(), cfg.tableOffset + vp.slots[i], vp.vip, vp.vip.hostPrefixLen()};
      r.nhid = epNh[v][i];
      tableOf(vp.vip, vp.slots[i]).push_back(std::move(r));
    }
    // A slot table of the VIP (VipPlan::tables) without an endpoint of it holds an unreachable
    // route for it: a packet marked for a slot whose endpoint is gone (classified in the moment
    // its live-slot element went, see RouterReconciler) gets an ICMP unreachable instead of
    // leaking into the main table (and upstream). Not a default route: the encapsulated packet
    // keeps the fwmark and its outer lookup must fall through these tables to the main one.
    for (uint32_t s = 0; s < vp.tables; ++s) {
      if (std::find(vp.slots.begin(), vp.slots.end(), s) != vp.slots.end()) continue;
      dp::Route r;
      r.key = {vp.vip.family(), cfg.tableOffset + s, vp.vip, vp.vip.hostPrefixLen()};
      r.unreachable = true;
      tableOf(vp.vip, s).push_back(std::move(r));
    }
  }
  size_t nroutes = 0;
  for (auto& t : byTable) nroutes += t.size();
  st.routes.reserve(nroutes);
  for (auto& t : byTable) std::move(t.begin(), t.end(), std::back_inserter(st.routes));
  byTable = {};
  if (!ascending)
    std::sort(st.routes.begin(), st.routes.end(), [](auto& a, auto& b) { return a.key < b.key; });

  // Rules: one per slot and family in use.
  st.rules = slotRules(cfg, plan.slotCount, any4, any6);

  // nftables.
  st.nft.present = !plan.vips.empty();
  st.nft.skeleton = renderSkeleton(cfg);
  st.nft.skeletonId = skeletonId(st.nft.skeleton);
  for (size_t v = 0; v < plan.vips.size(); ++v) {
    auto& vp = plan.vips[v];
    const auto& nhs = epNh[v];
    st.nft.vips.insert(st.nft.vips.end(), vp.vip);
    // Live slots: every endpoint the slot tables route to, draining ones included (their
    // pinned flows continue); flows pinned to any other (VIP, mark) are hashed again.
    for (size_t i = 0; i < vp.endpoints.size(); ++i)
      if (nhs[i]) st.nft.live.insert({vp.vip, cfg.tableOffset + vp.slots[i]});
    // One dense vector per VIP, bucket → mark (0 = no element; marks are ≥ tableOffset ≥ 1).
    std::vector<uint32_t> marks(vp.buckets.size(), 0);
    bool any = false;
    for (uint32_t b = 0; b < vp.buckets.size(); ++b) {
      int32_t e = vp.buckets[b];
      if (e < 0 || !nhs[e]) continue;
      marks[b] = cfg.tableOffset + vp.slots[e];
      any = true;
    }
    // Counters and source ranges (nft_render.h): one per-endpoint counter element per slot in
    // use (draining endpoints keep theirs), the VIP's allowed source intervals.
    if (!vp.sourceRanges.empty() && !st.nft.sourceRanges.contains(vp.vip))
      st.nft.sourceRanges.emplace(vp.vip, sourceIntervals(vp.vip, vp.sourceRanges));
    if (!st.nft.endpoints.contains(vp.vip)) {
      std::map<uint32_t, IpAddress> eps;
      for (size_t i = 0; i < vp.endpoints.size(); ++i)
        if (nhs[i]) eps.emplace(cfg.tableOffset + vp.slots[i], vp.endpoints[i].ip);
      if (!eps.empty()) st.nft.endpoints.emplace(vp.vip, std::move(eps));
    }
    if (!any) continue;
    if (!st.nft.buckets.marksOf(vp.vip)) {
      st.nft.vipBuckets.emplace(vp.vip, static_cast<uint32_t>(vp.buckets.size()));
      st.nft.buckets.setVip(vp.vip, std::move(marks));
    } else {  // a VIP planned twice: the first plan's elements win (as map emplace did)
      for (uint32_t b = 0; b < marks.size(); ++b)
        if (marks[b]) st.nft.buckets.insert(vp.vip, b, marks[b]);
    }
  }
  return st;
}

}  // namespace kst
