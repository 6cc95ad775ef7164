#include "reconcile/router_reconciler.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <unordered_map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "dataplane/diff.h"
#include "desired/nft_render.h"
#include "desired/published.h"

namespace kst {

RouterReconciler::RouterReconciler(const DataplaneConfig& cfg, dp::NetlinkClient& nl,
                                   dp::NftClient& nft, DeviceResolver resolver)
    : cfg_(cfg), nl_(nl), nft_(nft), resolver_(std::move(resolver)) {}

Result<dp::RouterState> RouterReconciler::observe() {
  dp::RouterState st;
  auto links = nl_.links();
  if (!links) return std::unexpected(links.error().wrap("dump links"));
  for (auto& l : *links)
    if (l.name.starts_with(cfg_.linkPrefix)) st.links.push_back(l);
  auto nhs = nl_.nexthops();
  if (!nhs) return std::unexpected(nhs.error().wrap("dump nexthops"));
  st.nexthops = std::move(*nhs);
  auto routes = nl_.routes(cfg_.tableOffset, cfg_.tableOffset + cfg_.maxSlots);
  if (!routes) return std::unexpected(routes.error().wrap("dump routes"));
  st.routes = std::move(*routes);
  auto rules = nl_.rules(cfg_.rulePriority, cfg_.rulePriority + cfg_.maxSlots);
  if (!rules) return std::unexpected(rules.error().wrap("dump rules"));
  st.rules = std::move(*rules);
  auto nft = nft_.observe();
  if (!nft) return std::unexpected(nft.error().wrap("list nftables"));
  st.nft = std::move(*nft);
  return st;
}

namespace {

double since(std::chrono::steady_clock::time_point& t) {
  auto now = std::chrono::steady_clock::now();
  double d = std::chrono::duration<double>(now - t).count();
  t = now;
  return d;
}

bool sortedUniqueVips(const Model& m) {
  for (size_t i = 1; i < m.services.size(); ++i)
    if (!(m.services[i - 1].vip < m.services[i].vip)) return false;
  return true;
}

/** A VIP's bucket marks as the cache keeps them: buckets 0 … B-1 (the plan's are exactly B). */
std::vector<uint32_t> cachedMarks(const std::vector<uint32_t>& marks, uint32_t nb) {
  return {marks.begin(), marks.begin() + std::min<size_t>(marks.size(), nb)};
}

/** The slot of every endpoint the kernel routes for a VIP (prior) that the plan does not give
 *  to that same endpoint: the endpoint left the VIP or the VIP is gone. A draining endpoint
 *  keeps its slot, so it is not released. */
std::vector<dp::ReleasedSlot> releasedSlots(const Allocations& prior,
                                            const std::vector<VipPlan>& planned,
                                            const DataplaneConfig& cfg) {
  std::vector<dp::ReleasedSlot> out;
  auto byVip = [](const VipPlan& a, const IpAddress& v) { return a.vip < v; };
  for (const auto& [vip, slots] : prior.slots) {
    auto pos = std::lower_bound(planned.begin(), planned.end(), vip, byVip);
    const VipPlan* vp = pos != planned.end() && pos->vip == vip ? &*pos : nullptr;
    for (const auto& [ep, slot] : slots) {
      bool kept = false;
      for (size_t i = 0; vp && i < vp->endpoints.size() && !kept; ++i)
        kept = vp->endpoints[i].ip == ep && vp->slots[i] == slot;
      if (!kept) out.push_back({vip, cfg.tableOffset + slot});
    }
  }
  return out;
}

/**
 * The hinted VIPs whose service differs from the cached inputs, in VIP order, and the model's
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

uint32_t slotCountOf(const VipPlan& vp) {
  uint32_t n = 0;
  for (uint32_t s : vp.slots) n = std::max(n, s + 1);
  return n;
}

}  // namespace

/** The kernel's owned state after the last pass in which every change succeeded (then it is
 *  exactly the desired state of that pass), indexed for per-VIP access, plus the inputs that
 *  produced it. */
struct RouterReconciler::Cache {
  std::vector<dp::Link> links;
  std::vector<dp::Rule> rules;
  std::map<uint32_t, dp::Nexthop> nexthops;
  std::unordered_map<uint32_t, uint32_t> nhRefs;       // nexthop id → routes using it
  std::map<IpAddress, std::vector<dp::Route>> routes;  // by destination (the VIP)
  bool nftPresent = false;
  std::string skeletonId;
  std::set<IpAddress> nftVips;
  dp::BucketMap buckets;                               // VIP → mark of each bucket
  std::map<IpAddress, TunnelService> inputs;           // the model's services, by VIP
  Allocations alloc;                                   // nexthopIds only (all of them)
  std::set<uint32_t> freeIds;                          // unused nexthop ids below highId
  uint32_t highId = 0;                                 // 1 + the highest nexthop id in use
  std::map<IpAddress, uint32_t> vipSlots;              // VIP → slots it uses (max + 1)
  std::map<uint32_t, size_t> slotHist;                 // slot count → number of VIPs
  uint32_t slotCount = 0;                              // the plan's
  size_t v4 = 0, v6 = 0;                               // VIPs per family
  std::map<ObjectKey, std::vector<Problem>> problems;  // by service

  std::vector<Problem> allProblems() const {
    std::vector<Problem> out;
    for (auto& [k, v] : problems) out.insert(out.end(), v.begin(), v.end());
    return out;
  }
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
    st.nft.buckets = buckets;  // one vector per VIP
    return st;
  }
};

RouterReconciler::~RouterReconciler() = default;

void RouterReconciler::setCaching(bool on) {
  caching_ = on;
  if (!on) cache_.reset();
}

void RouterReconciler::resyncNextPass() { cache_.reset(); }

Result<PassResult> RouterReconciler::reconcile(const Model& model,
                                               const std::set<IpAddress>* changed) {
  PassResult res;
  if (caching_ && cache_) {
    if (auto r = incrementalPass(model, changed, res)) return std::move(*r);
    auto t = std::chrono::steady_clock::now();
    dp::RouterState cached = cache_->state(renderSkeleton(cfg_));
    res.timings.observe = since(t);
    return fullPass(model, &cached, std::move(res));
  }
  return fullPass(model, nullptr, std::move(res));
}

Result<PassResult> RouterReconciler::fullPass(const Model& model, const dp::RouterState* cached,
                                              PassResult res) {
  auto t = std::chrono::steady_clock::now();
  dp::RouterState observedStore;
  const dp::RouterState* observed = cached;
  if (!observed) {
    cache_.reset();
    auto o = observe();
    if (!o) return std::unexpected(o.error());
    observedStore = std::move(*o);
    observed = &observedStore;
    res.fullObserve = true;
    res.timings.observe = since(t);
  }
  Allocations prior = allocationsFrom(*observed, cfg_);
  if (cfg_.mode == Mode::Mpls && resolver_) {
    for (const auto& svc : model.services)
      for (const auto& ep : svc.endpoints)
        if (!prior.mplsDevice.contains(ep.ip))
          if (auto dev = resolver_(ep.ip)) prior.mplsDevice.emplace(ep.ip, *dev);
  }
  plan_ = planRouter(model, cfg_, prior);
  res.vipsPlanned = plan_.vips.size();
  pubCheckAll_ = true;
  for (auto& r : releasedSlots(prior, plan_.vips, cfg_)) purgePending_.insert(r);
  dp::RouterState desired = routerState(plan_, cfg_, prior);
  res.timings.plan = since(t);
  res.problems = plan_.problems;
  auto changes = dp::diffRouter(desired, *observed);
  res.timings.diff = since(t);
  cache_.reset();
  if (auto s = applyAll(changes, desired.nft, observed->nft, res); !s)
    return std::unexpected(s.error());
  purgeReleased(desired.nft.present && !res.nftRebuilt, res);
  if (caching_ && res.ok()) fillCache(model, desired);
  if (desired.nft.buckets.size() + observed->nft.buckets.size() > 100000) {
    // A whole-model pass at scale leaves hundreds of MiB of freed maps (desired and observed
    // state, element batches): give them back instead of keeping them as RSS.
    desired = {};
    observedStore = {};
    malloc_trim(0);
  }
  return res;
}

Status RouterReconciler::applyAll(const std::vector<dp::Change>& changes,
                                  const dp::NftState& desiredNft, const dp::NftState& observedNft,
                                  PassResult& res) {
  auto t = std::chrono::steady_clock::now();
  // nft changes: adds of VIPs must follow route creation, removals precede route deletion.
  // Netlink adds/replaces first, then nft, then netlink deletions.
  auto firstDelete = std::find_if(changes.begin(), changes.end(), [](const dp::Change& c) {
    return c.action == dp::Change::Action::Delete;
  });
  // Copies only when both parts exist (a cold start is all adds: 80k objects at V = 10k).
  std::vector<dp::Change> addCopy, delCopy;
  const bool both = firstDelete != changes.begin() && firstDelete != changes.end();
  if (both) {
    addCopy.assign(changes.begin(), firstDelete);
    delCopy.assign(firstDelete, changes.end());
  }
  const std::vector<dp::Change>& addPart =
      both ? addCopy : (firstDelete == changes.end() ? changes : addCopy);
  const std::vector<dp::Change>& delPart =
      both ? delCopy : (firstDelete == changes.end() ? delCopy : changes);
  auto applyPart = [&](const std::vector<dp::Change>& part) -> Status {
    if (part.empty()) return {};
    auto r = nl_.apply(part);
    if (!r) return std::unexpected(r.error());
    res.changes += part.size() - r->size();
    for (auto& f : *r) res.failures.push_back(f);
    if (spdlog::should_log(spdlog::level::debug))
      for (auto& c : part) spdlog::debug("router: {}", dp::describe(c));
    return {};
  };
  if (auto s = applyPart(addPart); !s) return std::unexpected(s.error());
  res.timings.netlink += since(t);

  const bool sameSkeleton = observedNft.present && observedNft.skeletonId == desiredNft.skeletonId;
  if (desiredNft.present && (sameSkeleton || !observedNft.present)) {
    // Element changes straight to nfnetlink. A table that does not exist yet is created
    // first, empty (nothing can match a VIP before its elements arrive, and VIPs enter their
    // set in the same transaction as their buckets).
    Status st;
    if (!observedNft.present) {
      dp::NftState skeletonOnly;
      skeletonOnly.present = true;
      skeletonOnly.skeleton = desiredNft.skeleton;
      skeletonOnly.skeletonId = desiredNft.skeletonId;
      st = nft_.run(renderNftChanges(cfg_, skeletonOnly, observedNft));
      res.nftRebuilt = true;
    }
    auto elems = nftElementChanges(desiredNft, sameSkeleton ? observedNft : dp::NftState{});
    res.nftElementChanges = elems.size();
    if (st && elems.size()) st = nft_.applyElements(elems);
    if (!st)
      res.failures.push_back(st.error().message);
    else
      res.changes += res.nftElementChanges + (res.nftRebuilt ? 1 : 0);
  } else {
    // Text: removal of the table, or a skeleton change (the table is rebuilt with its
    // elements in one atomic transaction).
    std::string script = renderNftChanges(cfg_, desiredNft, observedNft, &res.nftElementChanges);
    if (!script.empty()) {
      res.nftRebuilt = !observedNft.present || observedNft.skeletonId != desiredNft.skeletonId;
      if (auto s = nft_.run(script); !s) {
        res.failures.push_back(s.error().message);
      } else {
        res.changes += res.nftElementChanges + (res.nftRebuilt ? 1 : 0);
      }
    }
  }
  res.timings.nft = since(t);
  if (auto s = applyPart(delPart); !s) return std::unexpected(s.error());
  res.timings.netlink += since(t);
  return {};
}

void RouterReconciler::fillCache(const Model& model, const dp::RouterState& desired) {
  cache_.reset();
  if (!sortedUniqueVips(model) || plan_.vips.size() != model.services.size()) return;
  auto c = std::make_unique<Cache>();
  c->links = desired.links;
  c->rules = desired.rules;
  for (auto& nh : desired.nexthops) {
    c->nexthops.emplace_hint(c->nexthops.end(), nh.id, nh);
    c->alloc.nexthopIds.emplace(nh.key(), nh.id);
  }
  c->highId = cfg_.nexthopIdBase;
  for (auto& [id, nh] : c->nexthops) {
    if (id < c->highId) continue;  // outside the owned range: not ours to allocate around
    for (uint32_t h = c->highId; h < id; ++h) c->freeIds.insert(h);
    c->highId = id + 1;
  }
  for (auto& r : desired.routes) {
    c->routes[r.key.dst].push_back(r);
    if (r.nhid) ++c->nhRefs[r.nhid];
  }
  c->nftPresent = desired.nft.present;
  c->skeletonId = desired.nft.skeletonId;
  c->nftVips = desired.nft.vips;
  for (auto& [vip, marks] : desired.nft.buckets.perVip())
    c->buckets.setVip(vip, cachedMarks(marks, cfg_.buckets));
  for (auto& svc : model.services) c->inputs.emplace_hint(c->inputs.end(), svc.vip, svc);
  for (auto& vp : plan_.vips) {
    uint32_t n = slotCountOf(vp);
    c->vipSlots[vp.vip] = n;
    ++c->slotHist[n];
    (vp.vip.isV4() ? c->v4 : c->v6)++;
  }
  c->slotCount = plan_.slotCount;
  for (auto& p : plan_.problems) c->problems[p.object].push_back(p);
  cache_ = std::move(c);
}

std::optional<Result<PassResult>> RouterReconciler::incrementalPass(
    const Model& model, const std::set<IpAddress>* hint, PassResult res) {
  auto t = std::chrono::steady_clock::now();
  Cache& c = *cache_;
  if (!isFlowMode(cfg_.mode) || model.services.empty() || c.inputs.empty()) return std::nullopt;
  // VIPs whose inputs changed (sorted), and their services.
  std::vector<IpAddress> changed;
  Model sub;
  if (hint && !hintedChanges(model, *hint, c.inputs, changed, sub)) {
    spdlog::warn("router: the changed-VIP hint does not match the model; comparing every service");
    changed.clear();
    sub.services.clear();
    hint = nullptr;
  }
  if (hint) {
    res.vipsCompared = hint->size();
  } else {
    // Merge of two sequences sorted by VIP (which the model must be: checked first).
    if (!sortedUniqueVips(model)) return std::nullopt;
    res.vipsCompared = model.services.size();
    auto it = c.inputs.begin();
    for (const auto& svc : model.services) {
      while (it != c.inputs.end() && it->first < svc.vip) changed.push_back((it++)->first);
      if (it != c.inputs.end() && it->first == svc.vip) {
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
    for (; it != c.inputs.end(); ++it) changed.push_back(it->first);
    std::sort(changed.begin(), changed.end());
  }
  if (changed.empty()) {
    res.problems = c.allProblems();
    return res;
  }
  // Beyond a quarter of the VIPs the whole-model path (sorted merges) is as cheap.
  if (changed.size() * 4 > std::max(model.services.size(), c.inputs.size())) return std::nullopt;
  res.vipsPlanned = changed.size();

  // What the kernel holds for the changed VIPs.
  dp::RouterState obs;
  for (auto& vip : changed)
    if (auto it = c.routes.find(vip); it != c.routes.end())
      obs.routes.insert(obs.routes.end(), it->second.begin(), it->second.end());
  std::sort(obs.routes.begin(), obs.routes.end(), [](auto& a, auto& b) { return a.key < b.key; });
  std::map<uint32_t, int> refDelta;
  for (auto& r : obs.routes)
    if (r.nhid) --refDelta[r.nhid];
  for (auto& [id, d] : refDelta)
    if (auto it = c.nexthops.find(id); it != c.nexthops.end()) obs.nexthops.push_back(it->second);
  obs.links = c.links;  // (GRE endpoints: allocationsFrom reads the link's remote)
  // Sticky slots of the changed VIPs and the ids of the nexthops they use. Only those: ids of
  // other nexthops are looked up and fresh ones allocated below, so that the cost does not
  // grow with the number of nexthops.
  Allocations prior = allocationsFrom(obs, cfg_);
  obs.links.clear();
  RouterPlan plan = planRouter(sub, cfg_, prior);
  for (auto& r : releasedSlots(prior, plan.vips, cfg_)) purgePending_.insert(r);
  // Objects shared by all VIPs (rules, unreachable routes in every slot table, the tunnel
  // link) depend on the slot count and the families in use: a change there is whole-model.
  auto hist = c.slotHist;
  size_t v4 = c.v4, v6 = c.v6;
  for (auto& vip : changed) {
    if (auto it = c.vipSlots.find(vip); it != c.vipSlots.end()) {
      if (--hist[it->second] == 0) hist.erase(it->second);
      (vip.isV4() ? v4 : v6)--;
    }
  }
  for (auto& vp : plan.vips) {
    ++hist[slotCountOf(vp)];
    (vp.vip.isV4() ? v4 : v6)++;
  }
  uint32_t slotCount = hist.empty() ? 0 : hist.rbegin()->first;
  if (slotCount != c.slotCount || (v4 > 0) != (c.v4 > 0) || (v6 > 0) != (c.v6 > 0))
    return std::nullopt;
  plan.slotCount = slotCount;
  dp::RouterState des = routerState(plan, cfg_, prior);
  if (des.nft.skeletonId != c.skeletonId || !c.nftPresent) return std::nullopt;
  // Flow devices depend on the endpoint families across all VIPs (ipip/gre-flow add an IPv6
  // device for IPv6 endpoints): a device to create, or possibly one to remove, is whole-model.
  for (auto& l : des.links)
    if (std::none_of(c.links.begin(), c.links.end(),
                     [&](auto& o) { return o.sameConfig(l) && o.sameMtu(l); }))
      return std::nullopt;
  if (c.links.size() > 1)
    for (auto& vip : changed)
      if (auto it = c.inputs.find(vip); it != c.inputs.end())
        for (auto& ep : it->second.endpoints)
          if (ep.ip.isV6()) return std::nullopt;
  des.nft.present = true;  // the model is not empty (only the changed VIPs are in `plan`)
  // Nexthop ids: an existing nexthop (same key, possibly another VIP's) keeps its id; a new one
  // takes an unused id. Ids are sticky, so any unused id is as good as routerState()'s choice.
  {
    std::map<uint32_t, uint32_t> remap;  // id given by routerState → final id
    std::set<uint32_t> taken;
    std::vector<dp::Nexthop*> fresh;
    for (auto& nh : des.nexthops) {
      auto it = c.alloc.nexthopIds.find(nh.key());
      if (it != c.alloc.nexthopIds.end()) {
        remap[nh.id] = it->second;
        taken.insert(it->second);
      } else {
        fresh.push_back(&nh);
      }
    }
    auto freeIt = c.freeIds.begin();
    uint32_t high = c.highId;
    for (auto* nh : fresh) {
      uint32_t id;
      do {
        id = freeIt != c.freeIds.end() ? *freeIt++ : high++;
      } while (taken.contains(id));
      if (id >= cfg_.nexthopIdEnd()) return std::nullopt;  // full: let the full path report
      remap[nh->id] = id;
      taken.insert(id);
    }
    for (auto& nh : des.nexthops) nh.id = remap.at(nh.id);
    for (auto& r : des.routes)
      if (r.nhid) r.nhid = remap.at(r.nhid);
    std::sort(des.nexthops.begin(), des.nexthops.end(), [](auto& a, auto& b) { return a.id < b.id; });
  }
  // Nexthops: those of the changed VIPs, plus any they stop using that other VIPs still use.
  for (auto& r : des.routes)
    if (r.nhid) ++refDelta[r.nhid];
  {
    std::map<uint32_t, const dp::Nexthop*> fresh;
    for (auto& nh : des.nexthops) fresh.emplace(nh.id, &nh);
    std::vector<dp::Nexthop> keep;
    for (auto& [id, d] : refDelta) {
      if (fresh.contains(id)) continue;
      auto rit = c.nhRefs.find(id);
      int64_t after = (rit == c.nhRefs.end() ? 0 : rit->second) + d;
      auto it = c.nexthops.find(id);
      if (after > 0 && it != c.nexthops.end()) keep.push_back(it->second);
    }
    des.nexthops.insert(des.nexthops.end(), keep.begin(), keep.end());
    std::sort(des.nexthops.begin(), des.nexthops.end(), [](auto& a, auto& b) { return a.id < b.id; });
    // Observed: every nexthop involved, including existing ones the changed VIPs start using.
    obs.nexthops.clear();
    for (auto& [id, d] : refDelta)
      if (auto it = c.nexthops.find(id); it != c.nexthops.end()) obs.nexthops.push_back(it->second);
  }
  des.links.clear();
  des.rules.clear();
  // nft elements of the changed VIPs.
  dp::NftState obsNft;
  obsNft.present = true;
  obsNft.skeletonId = c.skeletonId;
  obsNft.skeleton = des.nft.skeleton;
  for (auto& vip : changed) {
    if (c.nftVips.contains(vip)) obsNft.vips.insert(vip);
    if (auto* marks = c.buckets.marksOf(vip)) obsNft.buckets.setVip(vip, *marks);
  }
  res.timings.plan = since(t);
  auto changes = dp::diffRouter(des, obs);
  res.timings.diff = since(t);
  res.problems = plan.problems;  // replaced by all problems below on success
  // Until the kernel is known to hold `des`, there is no cache (a failure drops it).
  std::unique_ptr<Cache> held = std::move(cache_);
  if (auto s = applyAll(changes, des.nft, obsNft, res); !s) return std::unexpected(s.error());
  if (!res.ok()) return res;

  // Success: the kernel now holds `des` for the changed VIPs.
  cache_ = std::move(held);
  for (auto& vip : changed) {
    c.routes.erase(vip);
    c.nftVips.erase(vip);
    c.buckets.eraseVip(vip);
    if (auto it = c.inputs.find(vip); it != c.inputs.end()) {
      c.problems.erase(it->second.key);
      c.inputs.erase(it);
    }
    c.vipSlots.erase(vip);
  }
  for (auto& r : des.routes) c.routes[r.key.dst].push_back(r);
  for (auto& [id, d] : refDelta) {
    auto& n = c.nhRefs[id];
    n = static_cast<uint32_t>(static_cast<int64_t>(n) + d);
    if (n == 0) {
      c.nhRefs.erase(id);
      if (auto it = c.nexthops.find(id); it != c.nexthops.end()) {
        auto a = c.alloc.nexthopIds.find(it->second.key());
        if (a != c.alloc.nexthopIds.end() && a->second == id) c.alloc.nexthopIds.erase(a);
        c.nexthops.erase(it);
        if (id >= cfg_.nexthopIdBase && id < c.highId) c.freeIds.insert(id);
      }
    }
  }
  for (auto& nh : des.nexthops) {
    c.nexthops[nh.id] = nh;
    c.alloc.nexthopIds[nh.key()] = nh.id;
    c.freeIds.erase(nh.id);
    while (c.highId <= nh.id) {
      if (c.highId != nh.id) c.freeIds.insert(c.highId);
      ++c.highId;
    }
  }
  for (auto& vip : des.nft.vips) c.nftVips.insert(vip);
  for (auto& [vip, marks] : des.nft.buckets.perVip())
    c.buckets.setVip(vip, cachedMarks(marks, cfg_.buckets));
  for (auto& svc : sub.services) {
    c.problems.erase(svc.key);
    c.inputs.emplace(svc.vip, svc);
  }
  for (auto& p : plan.problems) c.problems[p.object].push_back(p);
  for (auto& vp : plan.vips) c.vipSlots[vp.vip] = slotCountOf(vp);
  c.slotHist = std::move(hist);
  c.v4 = v4;
  c.v6 = v6;
  // The whole plan stays available (lastPlan(), publishing): the changed VIPs replace theirs
  // in place (binary search); only added or removed VIPs shift the vector.
  {
    auto byVip = [](const VipPlan& a, const IpAddress& v) { return a.vip < v; };
    for (auto& vip : changed) {
      auto pos = std::lower_bound(plan_.vips.begin(), plan_.vips.end(), vip, byVip);
      auto np = std::lower_bound(plan.vips.begin(), plan.vips.end(), vip, byVip);
      bool inNew = np != plan.vips.end() && np->vip == vip;
      bool inOld = pos != plan_.vips.end() && pos->vip == vip;
      if (inNew && inOld) *pos = std::move(*np);
      else if (inNew) plan_.vips.insert(pos, std::move(*np));
      else if (inOld) plan_.vips.erase(pos);
      if (!pubCheckAll_) pubCheck_.insert(vip);
    }
    plan_.slotCount = slotCount;
  }
  plan_.problems = c.allProblems();
  res.problems = plan_.problems;
  purgeReleased(true, res);
  if (!res.ok()) cache_.reset();  // (the purge failed: the next pass observes)
  return res;
}

void RouterReconciler::purgeReleased(bool tableKept, PassResult& res) {
  if (purgePending_.empty()) return;
  if (!tableKept) {
    purgePending_.clear();
    return;
  }
  // After a failed change the bucket maps may still send new flows to a released slot (they
  // would be pinned there again): purge after a pass that applied everything.
  if (!res.ok()) return;
  // flow6 elements carry no VIP, only the mark, and every IPv6 VIP's slot s has the same mark:
  // a purge re-hashes the IPv6 flows of every VIP pinned to slot s. An active endpoint's flow
  // hashes back to it (unless its bucket moved while it was pinned); a draining endpoint has no
  // buckets, so its established flows would be cut: those marks wait until no IPv6 VIP drains
  // an endpoint in that slot (docs/load-balancing.md).
  std::set<uint32_t> draining6;
  if (std::any_of(purgePending_.begin(), purgePending_.end(),
                  [](const dp::ReleasedSlot& r) { return r.vip.isV6(); }))
    for (const auto& vp : plan_.vips)
      if (vp.vip.isV6())
        for (size_t i = 0; i < vp.endpoints.size(); ++i)
          if (vp.endpoints[i].draining) draining6.insert(cfg_.tableOffset + vp.slots[i]);
  std::vector<dp::ReleasedSlot> now;
  for (const auto& r : purgePending_)
    if (r.vip.isV4() || !draining6.contains(r.mark)) now.push_back(r);
  if (now.empty()) return;
  auto purged = nft_.purgeFlows(now);
  if (!purged) {
    spdlog::warn("router: purging the flows pinned to {} released slots failed: {}", now.size(),
                 purged.error().message);
    res.failures.push_back("purge pinned flows: " + purged.error().message);
    return;
  }
  for (const auto& r : now) purgePending_.erase(r);
  res.purgedFlows = *purged;
  std::string which;
  for (const auto& r : now)
    which += fmt::format("{}{} slot {}", which.empty() ? "" : ", ", r.vip.str(),
                         r.mark - cfg_.tableOffset);
  spdlog::info("router: purged {} pinned flows of released slots ({})", *purged, which);
}

std::vector<std::pair<ObjectKey, std::string>> RouterReconciler::pendingPublications() {
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

Result<PassResult> RouterReconciler::cleanup() {
  cache_.reset();
  Model empty;
  return reconcile(empty);
}

}  // namespace kst
