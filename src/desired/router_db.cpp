#include "desired/router_db.h"

#include <algorithm>
#include <chrono>
#include <unordered_map>

#include "common/clock.h"
#include "dataplane/diff.h"
#include "desired/published.h"
#include "hashing/balance.h"

namespace kst {

// ------------------------------------------------------------------------- NexthopIdPool

NexthopIdPool::NexthopIdPool(const DataplaneConfig& cfg)
    : base_(cfg.nexthopIdBase), end_(cfg.nexthopIdEnd()), high_(cfg.nexthopIdBase) {}

void NexthopIdPool::hold(const NexthopKey& key, uint32_t id) {
  byKey_.emplace(key, id);
  if (id < base_ || id >= end_) return;  // not ours to hand out
  if (id >= high_) {
    for (uint32_t h = high_; h < id; ++h) free_.insert(free_.end(), h);
    high_ = id + 1;
  } else {
    free_.erase(id);
  }
}

void NexthopIdPool::release(const NexthopKey& key, uint32_t id) {
  if (auto it = byKey_.find(key); it != byKey_.end() && it->second == id) byKey_.erase(it);
  if (id >= base_ && id < high_) free_.insert(id);
}

NexthopIdPool::Draw::Draw(const NexthopIdPool& p)
    : pool_(&p), free_(p.free_.begin()), next_(p.high_) {}

std::optional<uint32_t> NexthopIdPool::Draw::operator()(const dp::Nexthop& nh) {
  auto it = pool_->byKey_.find(NexthopKey(nh.key()));
  if (it != pool_->byKey_.end() && taken_.insert(it->second).second) return it->second;
  for (;;) {
    uint32_t id;
    if (free_ != pool_->free_.end()) id = *free_++;
    else if (next_ < pool_->end_) id = next_++;
    else return std::nullopt;
    if (taken_.insert(id).second) return id;
  }
}

// ------------------------------------------------------------------------------ helpers

namespace {

bool sortedUniqueVips(const Model& m) {
  for (size_t i = 1; i < m.services.size(); ++i)
    if (!(m.services[i - 1].vip < m.services[i].vip)) return false;
  return true;
}

/** A VIP's bucket marks as the index keeps them: buckets below the largest bucket count a VIP
 *  can have (a plan has exactly its VIP's count). */
std::vector<uint32_t> indexedMarks(const std::vector<uint32_t>& marks, uint32_t nb) {
  return {marks.begin(), marks.begin() + std::min<size_t>(marks.size(), nb)};
}


/**
 * The hinted VIPs whose service differs from the committed inputs, in VIP order, and the model's
 * services among them. O(hint · log V): the model is looked up by binary search (ModelBuilder
 * keeps it sorted by VIP; the neighbours of each hinted VIP are checked).
 * @return false when the hint cannot be right: the number of services changed by something
 * other than the hinted VIPs that were added or removed (a hint relative to another model).
 */
bool hintedChanges(const Model& model, const std::set<IpAddress>& hint,
                   const std::map<IpAddress, TunnelService>& inputs,
                   std::vector<IpAddress>& changed, Model& sub) {
  const auto& svcs = model.services;
  size_t added = 0, removed = 0;
  for (const auto& vip : hint) {
    auto pos = std::lower_bound(svcs.begin(), svcs.end(), vip,
                                [](const TunnelService& s, const IpAddress& v) { return s.vip < v; });
    if (pos != svcs.begin() && !(std::prev(pos)->vip < vip)) return false;
    const TunnelService* now = nullptr;
    if (pos != svcs.end() && pos->vip == vip) {
      now = &*pos;
      if (std::next(pos) != svcs.end() && !(vip < std::next(pos)->vip)) return false;
    }
    auto in = inputs.find(vip);
    const TunnelService* before = in == inputs.end() ? nullptr : &in->second;
    if (!now && !before) continue;
    if (now && before && *now == *before) continue;
    changed.push_back(vip);
    if (now) sub.services.push_back(*now);
    added += now && !before;
    removed += before && !now;
  }
  return svcs.size() + removed == inputs.size() + added;
}

/** Every VIP whose service differs from the committed inputs (a sorted merge, O(V)). */
void comparedChanges(const Model& model, const std::map<IpAddress, TunnelService>& inputs,
                     std::vector<IpAddress>& changed, Model& sub) {
  auto it = inputs.begin();
  for (const auto& svc : model.services) {
    while (it != inputs.end() && it->first < svc.vip) changed.push_back((it++)->first);
    if (it != inputs.end() && it->first == svc.vip) {
      if (!(it->second == svc)) {
        changed.push_back(svc.vip);
        sub.services.push_back(svc);
      }
      ++it;
    } else {
      changed.push_back(svc.vip);
      sub.services.push_back(svc);
    }
  }
  for (; it != inputs.end(); ++it) changed.push_back(it->first);
  std::sort(changed.begin(), changed.end());
}

}  // namespace

// ---------------------------------------------------------------------------- RouterDb

/** The base indexed per VIP: partial updates read and replace one VIP's objects. */
struct RouterDb::Index {
  explicit Index(const DataplaneConfig& cfg) : ids(cfg) {}
  std::vector<dp::Link> links;
  std::vector<dp::Rule> rules;
  std::map<uint32_t, dp::Nexthop> nexthops;
  std::unordered_map<uint32_t, uint32_t> nhRefs;       // nexthop id → routes using it
  std::unordered_map<IpAddress, std::vector<dp::Route>> routes;  // by destination (the VIP)
  bool nftPresent = false;
  std::string skeletonId;
  std::set<IpAddress> nftVips;
  std::map<IpAddress, uint32_t> nftCounts;             // VIP → its bucket count element
  dp::BucketMap buckets;                               // VIP → mark of each bucket
  std::map<IpAddress, std::map<uint32_t, IpAddress>> nftEndpoints;    // counter elements
  std::map<IpAddress, std::vector<dp::SourceInterval>> nftRanges;     // filtered VIPs
  std::set<dp::SlotMark> live;                         // live-slot set elements
  NexthopIdPool ids;
  std::map<IpAddress, uint32_t> vipSlots;              // VIP → its slot tables (VipPlan::tables)
  std::map<uint32_t, size_t> slotHist;                 // slot tables → number of VIPs
  uint32_t slotCount = 0;                              // the plan's (the largest of slotHist)
  size_t v4 = 0, v6 = 0;                               // VIPs per family

  dp::RouterState state(const std::string& skeleton) const {
    dp::RouterState st;
    st.links = links;
    st.rules = rules;
    st.nexthops.reserve(nexthops.size());
    for (auto& [id, nh] : nexthops) st.nexthops.push_back(nh);
    for (auto& [vip, rs] : routes) st.routes.insert(st.routes.end(), rs.begin(), rs.end());
    std::sort(st.routes.begin(), st.routes.end(), [](auto& a, auto& b) { return a.key < b.key; });
    st.nft.present = nftPresent;
    st.nft.skeletonId = skeletonId;
    st.nft.skeleton = skeleton;
    st.nft.vips = nftVips;
    st.nft.vipBuckets = nftCounts;
    st.nft.buckets = buckets;
    st.nft.endpoints = nftEndpoints;
    st.nft.sourceRanges = nftRanges;
    st.nft.live = live;
    return st;
  }
};

/** An update until commit(). */
struct RouterDb::Pending {
  bool whole = false;
  dp::RouterState desired;  // whole: everything; partial: the changed VIPs' objects
  // Partial only:
  std::vector<IpAddress> changed;
  std::vector<TunnelService> services;  // the model's services among `changed`
  std::map<IpAddress, uint32_t> vipSlots;
  std::map<uint32_t, int> refDelta;     // nexthop id → change in the routes using it
  std::map<uint32_t, size_t> slotHist;
  size_t v4 = 0, v6 = 0;
  bool rulesChanged = false;  // the slot count or the families in use: desired.rules are all
  uint32_t slotCount = 0;
};

RouterDb::RouterDb(const DataplaneConfig& cfg, DeviceResolver resolver)
    : cfg_(cfg), resolver_(std::move(resolver)) {}

RouterDb::~RouterDb() = default;

void RouterDb::seed(dp::RouterState observed) {
  forget();
  flat_ = std::move(observed);
  known_ = true;
}

void RouterDb::forget() {
  known_ = false;
  flat_ = {};
  idx_.reset();
  inputs_.clear();
  inputsKnown_ = false;
  pending_.reset();
}

const dp::RouterState& RouterDb::flatBase() {
  if (idx_) {
    flat_ = idx_->state(renderSkeleton(cfg_));
    idx_.reset();
  }
  return flat_;
}

bool RouterDb::ensureIndex() {
  if (idx_) return true;
  if (!inputsKnown_) return false;
  // flat_ is the target of the last whole update, plan_ its plan.
  auto x = std::make_unique<Index>(cfg_);
  x->links = std::move(flat_.links);
  x->rules = std::move(flat_.rules);
  for (auto& nh : flat_.nexthops) {
    x->ids.hold(NexthopKey(nh.key()), nh.id);
    x->nexthops.emplace_hint(x->nexthops.end(), nh.id, std::move(nh));
  }
  x->routes.reserve(plan_.vips.size());
  x->nhRefs.reserve(flat_.nexthops.size());
  for (auto& r : flat_.routes) {
    if (r.nhid) ++x->nhRefs[r.nhid];
    x->routes[r.key.dst].push_back(std::move(r));
  }
  x->nftPresent = flat_.nft.present;
  x->skeletonId = flat_.nft.skeletonId;
  x->nftVips = std::move(flat_.nft.vips);
  x->nftEndpoints = std::move(flat_.nft.endpoints);
  x->nftRanges = std::move(flat_.nft.sourceRanges);
  x->nftCounts = std::move(flat_.nft.vipBuckets);
  for (auto& [vip, marks] : flat_.nft.buckets.perVip())
    x->buckets.setVip(vip, indexedMarks(marks, vipBucketCap(cfg_.buckets)));
  x->live = std::move(flat_.nft.live);
  for (auto& vp : plan_.vips) {
    uint32_t n = vp.tables;
    x->vipSlots[vp.vip] = n;
    ++x->slotHist[n];
    (vp.vip.isV4() ? x->v4 : x->v6)++;
  }
  x->slotCount = plan_.slotCount;
  flat_ = {};
  idx_ = std::move(x);
  return true;
}

std::vector<Problem> RouterDb::allProblems() const {
  std::vector<Problem> out;
  for (auto& [k, v] : problems_) out.insert(out.end(), v.begin(), v.end());
  return out;
}

RouterDelta RouterDb::update(const Model& model, const std::set<IpAddress>* hint) {
  RouterDelta d;
  pending_.reset();
  // The change set: the VIPs whose inputs differ from the committed ones. Per-endpoint devices
  // (gre) and MPLS reachability (the resolver) are not per VIP: those modes plan every VIP.
  if (inputsKnown_ && isFlowMode(cfg_.mode) && !model.services.empty() && !inputs_.empty()) {
    std::vector<IpAddress> changed;
    Model sub;
    bool compared = true;
    if (hint && !hintedChanges(model, *hint, inputs_, changed, sub)) {
      d.hintIgnored = true;
      changed.clear();
      sub.services.clear();
      hint = nullptr;
    }
    if (hint) {
      d.vipsCompared = hint->size();
    } else if (sortedUniqueVips(model)) {
      d.vipsCompared = model.services.size();
      comparedChanges(model, inputs_, changed, sub);
    } else {
      compared = false;
    }
    if (compared && changed.empty()) {
      d.tablePresent = true;
      d.problems = plan_.problems;
      pending_ = std::make_unique<Pending>();
      return d;
    }
    // Beyond a quarter of the VIPs the whole update (sorted merges) is as cheap.
    if (compared && changed.size() * 4 <= std::max(model.services.size(), inputs_.size()) &&
        ensureIndex() && pass(model, &changed, &sub, d))
      return d;
  }
  pass(model, nullptr, nullptr, d);
  return d;
}

bool RouterDb::pass(const Model& model, const std::vector<IpAddress>* changed, const Model* sub,
                    RouterDelta& d) {
  auto t = std::chrono::steady_clock::now();
  const bool whole = changed == nullptr;
  const Model& planned = whole ? model : *sub;

  // 1. The base view of the change set: the whole base, or the changed VIPs' routes and the
  //    nexthops they use (with the links: GRE endpoints are read from the link's remote).
  dp::RouterState view;
  std::map<uint32_t, int> refDelta;  // partial: nexthop id → change in the routes using it
  if (!whole) {
    Index& x = *idx_;
    for (auto& vip : *changed)
      if (auto it = x.routes.find(vip); it != x.routes.end())
        view.routes.insert(view.routes.end(), it->second.begin(), it->second.end());
    std::sort(view.routes.begin(), view.routes.end(), [](auto& a, auto& b) { return a.key < b.key; });
    for (auto& r : view.routes)
      if (r.nhid) --refDelta[r.nhid];
    for (auto& [id, n] : refDelta)
      if (auto it = x.nexthops.find(id); it != x.nexthops.end()) view.nexthops.push_back(it->second);
    view.links = x.links;
  }
  const dp::RouterState& base = whole ? flatBase() : view;

  // 2. Slots: sticky per (VIP, endpoint) from the base's routes; then the plan.
  Allocations prior = allocationsFrom(base, cfg_);
  prior.held = held_;
  prior.heldBelow = heldBelow_;
  if (cfg_.mode == Mode::Mpls && resolver_) {
    for (const auto& svc : planned.services)
      for (const auto& ep : svc.endpoints)
        if (!prior.mplsDevice.contains(ep.ip))
          if (auto dev = resolver_(ep.ip)) prior.mplsDevice.emplace(ep.ip, *dev);
  }
  RouterPlan plan = planRouter(planned, cfg_, prior);

  // 3. Objects shared by all VIPs: the fwmark rules depend on the slot count (the largest
  //    VipPlan::tables) and the families in use; a partial update that changes them diffs the
  //    rules too (a slot table's unreachable guards are per VIP, VipPlan::tables). The tunnel
  //    devices and the nft table: a partial update that would change them is widened.
  Pending p;
  if (!whole) {
    Index& x = *idx_;
    p.slotHist = x.slotHist;
    p.v4 = x.v4;
    p.v6 = x.v6;
    for (auto& vip : *changed) {
      if (auto it = x.vipSlots.find(vip); it != x.vipSlots.end()) {
        if (--p.slotHist[it->second] == 0) p.slotHist.erase(it->second);
        (vip.isV4() ? p.v4 : p.v6)--;
      }
    }
    for (auto& vp : plan.vips) {
      uint32_t n = vp.tables;
      p.vipSlots[vp.vip] = n;
      ++p.slotHist[n];
      (vp.vip.isV4() ? p.v4 : p.v6)++;
    }
    p.slotCount = p.slotHist.empty() ? 0 : p.slotHist.rbegin()->first;
    p.rulesChanged = p.slotCount != x.slotCount || (p.v4 > 0) != (x.v4 > 0) ||
                     (p.v6 > 0) != (x.v6 > 0);
    plan.slotCount = p.slotCount;
  }

  // 4. Nexthop ids (sticky by key, new ones the lowest unused) and the desired objects.
  std::optional<NexthopIdPool> wholePool;
  if (whole) {
    wholePool.emplace(cfg_);
    for (const auto& nh : base.nexthops) wholePool->hold(NexthopKey(nh.key()), nh.id);
  }
  auto draw = (whole ? *wholePool : idx_->ids).draw();
  dp::RouterState des = routerState(plan, cfg_, prior, std::ref(draw));

  dp::NftState partialNft;
  const dp::NftState* baseNft = &base.nft;
  if (!whole) {
    Index& x = *idx_;
    if (des.nft.skeletonId != x.skeletonId || !x.nftPresent) return false;
    // Flow devices depend on the endpoint families across all VIPs (ipip/gre-flow add an IPv6
    // device for IPv6 endpoints): a device to create, or possibly one to remove, is whole.
    for (auto& l : des.links)
      if (std::none_of(x.links.begin(), x.links.end(),
                       [&](auto& o) { return o.sameConfig(l) && o.sameMtu(l); }))
        return false;
    if (x.links.size() > 1)
      for (auto& vip : *changed)
        if (auto it = inputs_.find(vip); it != inputs_.end())
          for (auto& ep : it->second.endpoints)
            if (ep.ip.isV6()) return false;
    des.nft.present = true;  // the model is not empty (only the changed VIPs are in `plan`)
    des.links.clear();
    des.rules.clear();
    if (p.rulesChanged) {
      des.rules = slotRules(cfg_, p.slotCount, p.v4 > 0, p.v6 > 0);
      view.rules = x.rules;
    }
    // Nexthops: those of the changed VIPs, plus any they stop using that other VIPs still use;
    // the view: every nexthop involved, including existing ones the changed VIPs start using.
    for (auto& r : des.routes)
      if (r.nhid) ++refDelta[r.nhid];
    std::set<uint32_t> fresh;
    for (auto& nh : des.nexthops) fresh.insert(nh.id);
    view.nexthops.clear();
    for (auto& [id, n] : refDelta) {
      auto it = x.nexthops.find(id);
      if (it == x.nexthops.end()) continue;
      view.nexthops.push_back(it->second);
      auto rit = x.nhRefs.find(id);
      int64_t after = (rit == x.nhRefs.end() ? 0 : rit->second) + n;
      if (!fresh.contains(id) && after > 0) des.nexthops.push_back(it->second);
    }
    std::sort(des.nexthops.begin(), des.nexthops.end(), [](auto& a, auto& b) { return a.id < b.id; });
    view.links.clear();
    // The nft elements of the changed VIPs.
    partialNft.present = true;
    partialNft.skeletonId = x.skeletonId;
    partialNft.skeleton = des.nft.skeleton;
    for (auto& vip : *changed) {
      if (x.nftVips.contains(vip)) partialNft.vips.insert(vip);
      if (auto c = x.nftCounts.find(vip); c != x.nftCounts.end())
        partialNft.vipBuckets.insert(*c);
      if (auto* marks = x.buckets.marksOf(vip)) partialNft.buckets.setVip(vip, *marks);
      if (auto it = x.nftEndpoints.find(vip); it != x.nftEndpoints.end())
        partialNft.endpoints.insert(*it);
      if (auto it = x.nftRanges.find(vip); it != x.nftRanges.end())
        partialNft.sourceRanges.insert(*it);
      for (auto it = x.live.lower_bound({vip, 0}); it != x.live.end() && it->vip == vip; ++it)
        partialNft.live.insert(partialNft.live.end(), *it);
    }
    baseNft = &partialNft;
  }
  d.planSeconds = lapSeconds(t);

  // 5. The one diff of router state.
  d.changes = dp::diffRouter(des, base);
  d.table = nftTableStep(des.nft, *baseNft);
  d.tablePresent = des.nft.present;
  d.skeleton = des.nft.skeleton;
  d.skeletonId = des.nft.skeletonId;
  if (d.table != NftTableStep::Delete)
    d.elements = nftElementChanges(des.nft, d.table == NftTableStep::Keep ? *baseNft : dp::NftState{});
  d.diffSeconds = lapSeconds(t);

  // 6. The plan of the whole model, problems and publications follow the update.
  d.whole = whole;
  if (whole) {
    plan_ = std::move(plan);
    problems_.clear();
    for (auto& pr : plan_.problems) problems_[pr.object].push_back(pr);
    pubCheckAll_ = true;
    pubCheck_.clear();
    d.vipsPlanned = plan_.vips.size();
    d.problems = plan_.problems;
  } else {
    for (auto& vip : *changed)
      if (auto it = inputs_.find(vip); it != inputs_.end()) problems_.erase(it->second.key);
    for (auto& svc : sub->services) problems_.erase(svc.key);
    for (auto& pr : plan.problems) problems_[pr.object].push_back(pr);
    // The changed VIPs replace theirs in place (binary search); only added or removed VIPs
    // shift the vector.
    auto byVip = [](const VipPlan& a, const IpAddress& v) { return a.vip < v; };
    for (auto& vip : *changed) {
      auto pos = std::lower_bound(plan_.vips.begin(), plan_.vips.end(), vip, byVip);
      auto np = std::lower_bound(plan.vips.begin(), plan.vips.end(), vip, byVip);
      bool inNew = np != plan.vips.end() && np->vip == vip;
      bool inOld = pos != plan_.vips.end() && pos->vip == vip;
      if (inNew && inOld) *pos = std::move(*np);
      else if (inNew) plan_.vips.insert(pos, std::move(*np));
      else if (inOld) plan_.vips.erase(pos);
      if (!pubCheckAll_) pubCheck_.insert(vip);
    }
    plan_.slotCount = plan.slotCount;
    plan_.problems = allProblems();
    d.vipsPlanned = changed->size();
    d.problems = plan_.problems;
    p.changed = *changed;
    p.services = sub->services;
    p.refDelta = std::move(refDelta);
  }
  p.whole = whole;
  p.desired = std::move(des);
  pending_ = std::make_unique<Pending>(std::move(p));
  return true;
}

void RouterDb::commit(const Model& model) {
  if (!pending_) return;
  auto p = std::move(pending_);
  if (p->whole) {
    flat_ = std::move(p->desired);
    idx_.reset();
    known_ = true;
    inputs_.clear();
    // The committed inputs, for comparing the next model (the daemon's is sorted by VIP).
    inputsKnown_ = sortedUniqueVips(model) && plan_.vips.size() == model.services.size();
    if (inputsKnown_) {
      for (auto& svc : model.services) inputs_.emplace_hint(inputs_.end(), svc.vip, svc);
      ensureIndex();  // now, while the whole update's plan is plan_ (the next may be partial)
    }
    return;
  }
  if (p->changed.empty() || !idx_) return;
  // The kernel now holds p->desired for the changed VIPs.
  Index& x = *idx_;
  const dp::RouterState& des = p->desired;
  for (auto& vip : p->changed) {
    x.routes.erase(vip);
    x.nftVips.erase(vip);
    x.nftCounts.erase(vip);
    x.buckets.eraseVip(vip);
    x.nftEndpoints.erase(vip);
    x.nftRanges.erase(vip);
    x.live.erase(x.live.lower_bound({vip, 0}), x.live.upper_bound({vip, UINT32_MAX}));
    inputs_.erase(vip);
    x.vipSlots.erase(vip);
  }
  for (auto& r : des.routes) x.routes[r.key.dst].push_back(r);
  for (auto& [id, n] : p->refDelta) {
    auto& refs = x.nhRefs[id];
    refs = static_cast<uint32_t>(static_cast<int64_t>(refs) + n);
    if (refs == 0) {
      x.nhRefs.erase(id);
      if (auto it = x.nexthops.find(id); it != x.nexthops.end()) {
        x.ids.release(NexthopKey(it->second.key()), id);
        x.nexthops.erase(it);
      }
    }
  }
  for (auto& nh : des.nexthops) {
    auto [it, added] = x.nexthops.try_emplace(nh.id, nh);
    if (added) x.ids.hold(NexthopKey(nh.key()), nh.id);
  }
  for (auto& vip : des.nft.vips) x.nftVips.insert(vip);
  for (auto& [vip, eps] : des.nft.endpoints) x.nftEndpoints[vip] = eps;
  for (auto& [vip, r] : des.nft.sourceRanges) x.nftRanges[vip] = r;
  for (auto& [vip, count] : des.nft.vipBuckets) x.nftCounts[vip] = count;
  x.live.insert(des.nft.live.begin(), des.nft.live.end());
  for (auto& [vip, marks] : des.nft.buckets.perVip())
    x.buckets.setVip(vip, indexedMarks(marks, vipBucketCap(cfg_.buckets)));
  for (auto& svc : p->services) inputs_.emplace(svc.vip, std::move(svc));
  for (auto& [vip, n] : p->vipSlots) x.vipSlots[vip] = n;
  x.slotHist = std::move(p->slotHist);
  if (p->rulesChanged) {
    x.rules = des.rules;
    x.slotCount = p->slotCount;
  }
  x.v4 = p->v4;
  x.v6 = p->v6;
}

std::vector<std::pair<ObjectKey, std::string>> RouterDb::pendingPublications() {
  auto check = [&](const VipPlan& vp) {
    std::string json = encodePublished(vp, cfg_);
    if (json != vp.publishedSeen)
      pubPending_.insert_or_assign(vp.vip, std::make_pair(vp.service, std::move(json)));
    else
      pubPending_.erase(vp.vip);
  };
  if (pubCheckAll_) {
    pubPending_.clear();
    for (const auto& vp : plan_.vips) check(vp);
  } else {
    // A pending table stays pending until a pass sees it in the Service (the publish's watch
    // event changes the model, so that VIP is planned, and checked, again).
    auto byVip = [](const VipPlan& a, const IpAddress& v) { return a.vip < v; };
    for (const auto& vip : pubCheck_) {
      auto pos = std::lower_bound(plan_.vips.begin(), plan_.vips.end(), vip, byVip);
      if (pos != plan_.vips.end() && pos->vip == vip) check(*pos);
      else pubPending_.erase(vip);
    }
  }
  pubCheck_.clear();
  pubCheckAll_ = false;
  std::vector<std::pair<ObjectKey, std::string>> out;
  out.reserve(pubPending_.size());
  for (auto& [vip, p] : pubPending_) out.push_back(p);
  return out;
}

}  // namespace kst
