#include "reconcile/router_reconciler.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "dataplane/diff.h"
#include "desired/nft_render.h"

namespace kst {

namespace {
/** How long a released (VIP, slot) is held: the flow timeout (a stale pin is not refreshed, so
 *  it is gone by then) and a second for packets that were being classified during the commit. */
std::chrono::steady_clock::duration holdTime(const DataplaneConfig& cfg) {
  return std::chrono::seconds(cfg.flowTimeoutSeconds) + std::chrono::seconds(1);
}
}  // namespace

RouterReconciler::RouterReconciler(const DataplaneConfig& cfg, dp::NetlinkClient& nl,
                                   dp::NftClient& nft, DeviceResolver resolver)
    : cfg_(cfg), nl_(nl), nft_(nft), db_(cfg, std::move(resolver)) {}

RouterReconciler::~RouterReconciler() = default;

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

void RouterReconciler::setCaching(bool on) {
  caching_ = on;
  if (!on) db_.forget();
}

void RouterReconciler::resyncNextPass() { db_.forget(); }

Result<PassResult> RouterReconciler::reconcile(const Model& model,
                                               const std::set<IpAddress>* changed) {
  PassResult res;
  auto t = std::chrono::steady_clock::now();
  // Observe only when the database does not know the kernel state (first pass, resync, after a
  // failure, or always without caching): the same update then plans every VIP against it.
  if (!caching_ || !db_.known()) {
    auto o = observe();
    if (!o) {
      db_.forget();
      return std::unexpected(o.error());
    }
    if (!observedOnce_) {
      // A fresh reconciler: releases before it started are unknown. With a table (and flow
      // maps) already there, every free slot below the kernel's slot count is held.
      observedOnce_ = true;
      uint32_t slots = 0;
      for (const auto& r : o->routes)
        if (r.key.table >= cfg_.tableOffset && r.key.table < cfg_.tableOffset + cfg_.maxSlots)
          slots = std::max(slots, r.key.table - cfg_.tableOffset + 1);
      if (o->nft.present && slots > 0) {
        heldBelow_ = slots;
        heldBelowUntil_ = std::chrono::steady_clock::now() + holdTime(cfg_);
      }
    }
    db_.seed(std::move(*o));
    res.fullObserve = true;
    res.timings.observe = lapSeconds(t);
  }
  passHeld();
  RouterDelta delta = db_.update(model, changed);
  if (delta.hintIgnored)
    spdlog::warn("router: the changed-VIP hint does not match the model; comparing every service");
  res.vipsCompared = delta.vipsCompared;
  res.vipsPlanned = delta.vipsPlanned;
  res.problems = delta.problems;
  res.timings.plan = delta.planSeconds;
  res.timings.diff = delta.diffSeconds;
  auto s = applyAll(delta, res);
  holdReleased(delta, res);
  if (!s) {
    db_.forget();
    return std::unexpected(s.error());
  }
  // Until the kernel is known to hold the update's target, the database forgets its state.
  if (caching_ && res.ok()) db_.commit(model);
  else db_.forget();
  if (delta.whole && db_.plan().vips.size() * cfg_.buckets > 50000) {
    // A whole pass at scale leaves hundreds of MiB of freed maps (observed and desired state,
    // element batches): give them back instead of keeping them as RSS.
    delta = {};
    malloc_trim(0);
  }
  return res;
}

Status RouterReconciler::applyAll(const RouterDelta& delta, PassResult& res) {
  auto t = std::chrono::steady_clock::now();
  const auto& changes = delta.changes;
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
  res.timings.netlink += lapSeconds(t);
  // A recreated tunnel device has a new index (a resized one a new MTU): the bpf classifier
  // learns it in this pass (before its element changes), not at the next resync.
  if (std::any_of(addPart.begin(), addPart.end(), [](const dp::Change& c) {
        return std::holds_alternative<dp::Link>(c.object) ||
               std::holds_alternative<dp::LinkMtu>(c.object);
      })) {
    if (auto s = nft_.linksChanged(); !s) res.failures.push_back(s.error().message);
  }

  using Step = NftTableStep;
  if (delta.tablePresent &&
      (delta.table == Step::Keep || delta.table == Step::Create)) {
    // Element changes straight to nfnetlink. A table that does not exist yet is created
    // first, empty (nothing can match a VIP before its elements arrive, and VIPs enter their
    // set in the same transaction as their buckets).
    Status st;
    if (delta.table == Step::Create) {
      st = nft_.applyStep(Step::Create, delta.skeletonId, delta.skeleton, {});
      res.nftRebuilt = true;
    }
    res.nftElementChanges = delta.elements.size();
    if (st && res.nftElementChanges) st = nft_.applyElements(delta.elements);
    if (!st)
      res.failures.push_back(st.error().message);
    else
      res.changes += res.nftElementChanges + (res.nftRebuilt ? 1 : 0);
  } else {
    // Removal of the table, or a skeleton change (the table is rebuilt with its elements in
    // one atomic transaction; nft: one text script).
    res.nftElementChanges = delta.table == Step::Delete ? 0 : delta.elements.size();
    if (delta.table != Step::Keep) {
      res.nftRebuilt = delta.table == Step::Create || delta.table == Step::Rebuild;
      if (auto s = nft_.applyStep(delta.table, delta.skeletonId, delta.skeleton, delta.elements);
          !s) {
        res.failures.push_back(s.error().message);
      } else {
        res.changes += res.nftElementChanges + (res.nftRebuilt ? 1 : 0);
      }
    }
  }
  res.timings.nft = lapSeconds(t);
  if (auto s = applyPart(delPart); !s) return std::unexpected(s.error());
  res.timings.netlink += lapSeconds(t);
  return {};
}

void RouterReconciler::holdReleased(const RouterDelta& delta, PassResult& res) {
  if (delta.table != NftTableStep::Keep || !delta.tablePresent) {
    // Created, rebuilt or removed: the flow maps are new or gone, nothing is pinned.
    if (delta.table != NftTableStep::Keep) {
      held_.clear();
      heldBelow_ = 0;
    }
    return;
  }
  const auto& rel = delta.elements.liveDeletes;
  if (rel.empty()) return;
  // Held whether or not the batch went through (a hold too many costs a slot number; one too
  // few could send stale pins to another endpoint). A deletion retried by a later pass
  // starts its hold again.
  const auto until = std::chrono::steady_clock::now() + holdTime(cfg_);
  for (const auto& l : rel) held_[l] = until;
  if (!res.ok()) return;
  res.releasedSlots = rel.size();
  std::string which;
  for (const auto& r : rel)
    which += fmt::format("{}{} slot {}", which.empty() ? "" : ", ", r.vip.str(),
                         r.mark - cfg_.tableOffset);
  spdlog::info("router: released {} slots ({}): their pinned flows are hashed again", rel.size(),
               which);
}

void RouterReconciler::passHeld() {
  const auto now = std::chrono::steady_clock::now();
  std::map<IpAddress, std::set<uint32_t>> held;
  for (auto it = held_.begin(); it != held_.end();) {
    if (it->second <= now) {
      it = held_.erase(it);
      continue;
    }
    if (it->first.mark >= cfg_.tableOffset) held[it->first.vip].insert(it->first.mark - cfg_.tableOffset);
    ++it;
  }
  if (heldBelow_ && heldBelowUntil_ <= now) heldBelow_ = 0;
  db_.setHeld(std::move(held), heldBelow_);
}

Result<PassResult> RouterReconciler::cleanup() {
  db_.forget();
  Model empty;
  return reconcile(empty);
}

}  // namespace kst
