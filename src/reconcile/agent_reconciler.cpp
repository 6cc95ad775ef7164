#include "reconcile/agent_reconciler.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "dataplane/diff.h"

namespace kst {

AgentReconciler::AgentReconciler(const DataplaneConfig& cfg, std::string nodeName,
                                 NetnsProvider& ns)
    : cfg_(cfg), node_(std::move(nodeName)), ns_(ns) {}

Status AgentReconciler::refreshIndex() {
  podNs_.clear();
  for (const auto& ns : ns_.list()) {
    auto c = ns_.client(ns);
    if (!c) continue;  // vanished or not accessible: not a candidate
    auto addrs = (*c)->addresses(false);
    if (!addrs) {
      ns_.forget(ns);
      continue;
    }
    auto links = (*c)->links();
    bool owned = false;
    if (links)
      for (auto& l : *links)
        if (l.name.starts_with(cfg_.linkPrefix)) owned = true;
    auto ownedAddrs = (*c)->addresses(true);
    std::set<IpAddress> skip;
    if (ownedAddrs) {
      for (auto& a : *ownedAddrs) skip.insert(a.ip);
      if (!ownedAddrs->empty()) owned = true;
    }
    if (owned) managed_.emplace(ns.id, ns);
    for (auto& a : *addrs) {
      if (a.dev == "lo" || skip.contains(a.ip)) continue;
      if (a.ip.isV6() && a.ip.data()[0] == 0xfe && (a.ip.data()[1] & 0xc0) == 0x80) continue;
      podNs_.emplace(a.ip, ns);  // first wins; duplicates across namespaces are ambiguous
    }
  }
  scannedOnce_ = true;
  return {};
}

namespace {

/** What of `had` (applied before) that is still wanted is missing from `observed`. */
std::string lostState(const dp::PodState& had, const dp::PodState& want,
                      const dp::PodState& observed) {
  std::string lost;
  auto note = [&](const std::string& what) { lost += (lost.empty() ? "" : ", ") + what; };
  for (const auto& l : had.links) {
    auto named = [&](const dp::Link& x) { return x.name == l.name; };
    if (std::none_of(want.links.begin(), want.links.end(), named)) continue;
    if (std::none_of(observed.links.begin(), observed.links.end(), named))
      note("device " + l.name);
  }
  for (const auto& a : had.addresses) {
    if (!std::binary_search(want.addresses.begin(), want.addresses.end(), a)) continue;
    if (std::find(observed.addresses.begin(), observed.addresses.end(), a) ==
        observed.addresses.end())
      note("VIP " + a.ip.str());
  }
  if (had.mplsLabelRoute && want.mplsLabelRoute && !observed.mplsLabelRoute)
    note("MPLS label route");
  return lost;
}

}  // namespace

PassResult AgentReconciler::apply(const std::vector<PodPlan>& plans, bool cleanAll) {
  PassResult res;
  // Pod → (ready, message); a pod is ready when all its addresses are.
  std::map<std::pair<std::string, std::string>, PodGate> gates;
  auto gate = [&](const PodPlan& plan, bool ready, const std::string& message) {
    if (plan.pod.empty()) return;
    auto [it, inserted] = gates.try_emplace({plan.pod, plan.podUid},
                                            PodGate{plan.pod, plan.podUid, {}, ready, message});
    auto& g = it->second;
    if (std::find(g.addresses.begin(), g.addresses.end(), plan.podIp) == g.addresses.end())
      g.addresses.push_back(plan.podIp);
    if (!inserted && g.ready && !ready) {
      g.ready = false;
      g.message = message;
    }
  };
  std::set<std::string> wanted;
  // A pod may own several endpoint addresses (dual stack): one merged state per namespace.
  struct Group {
    NetnsProvider::Ns ns;
    std::string pods;  // for log lines
    dp::PodState state;
    std::vector<const PodPlan*> plans;
  };
  std::map<std::string, Group> groups;
  for (const auto& plan : plans) {
    auto it = podNs_.find(plan.podIp);
    if (it == podNs_.end()) {
      res.failures.push_back(fmt::format(
          "pod {} (service {}): no network namespace owns this address yet", plan.podIp.str(),
          plan.services.front().str()));
      gate(plan, false, fmt::format("no network namespace on this node owns {}", plan.podIp.str()));
      continue;
    }
    auto& g = groups[it->second.id];
    g.ns = it->second;
    g.pods += (g.pods.empty() ? "" : ",") + plan.podIp.str();
    g.plans.push_back(&plan);
    for (auto& l : plan.state.links)
      if (std::none_of(g.state.links.begin(), g.state.links.end(),
                       [&](const dp::Link& x) { return x.name == l.name; }))
        g.state.links.push_back(l);
    g.state.addresses.insert(g.state.addresses.end(), plan.state.addresses.begin(),
                             plan.state.addresses.end());
    g.state.mplsLabelRoute = g.state.mplsLabelRoute || plan.state.mplsLabelRoute;
  }
  for (auto& [id, g] : groups) {
    std::sort(g.state.addresses.begin(), g.state.addresses.end());
    g.state.addresses.erase(std::unique(g.state.addresses.begin(), g.state.addresses.end()),
                            g.state.addresses.end());
    const auto& ns = g.ns;
    wanted.insert(ns.id);
    size_t failuresBefore = res.failures.size();
    std::string lost;
    bool changed = false;
    // Reports the group's readiness on every exit of this iteration.
    auto report = [&] {
      bool ok = res.failures.size() == failuresBefore;
      if (!lost.empty()) held_.insert(ns.id);
      else if (ok && !changed) held_.erase(ns.id);  // found complete: confirmed
      bool ready = ok && !held_.contains(ns.id);
      std::string message =
          !ok ? res.failures.back()
          : !lost.empty() ? fmt::format("{} missing in the pod's namespace; repaired, waiting for "
                                        "the next verification", lost)
          : held_.contains(ns.id) ? "repaired; waiting for the next verification"
                                  : fmt::format("VIPs and decap state in place in {}", ns.path);
      for (const auto* p : g.plans) gate(*p, ready, message);
    };
    auto c = ns_.client(ns);
    if (!c) {
      res.failures.push_back(fmt::format("pod {}: {}", g.pods, c.error().message));
      ns_.forget(ns);
      report();
      continue;
    }
    dp::PodState observed;
    auto links = (*c)->links();
    auto addrs = (*c)->addresses(true);
    if (!links || !addrs) {
      res.failures.push_back(
          fmt::format("pod {}: namespace {} vanished or unreadable", g.pods, ns.path));
      ns_.forget(ns);
      inPlace_.erase(ns.id);
      report();
      continue;
    }
    for (auto& l : *links)
      if (l.name.starts_with(cfg_.linkPrefix)) observed.links.push_back(l);
    observed.addresses = *addrs;
    if (modeTraits(cfg_.mode).pod == dp::PodShape::LoopbackLabel) {
      auto pops = (*c)->mplsPops();
      observed.mplsLabelRoute = pops && !pops->empty();
    }
    if (auto had = inPlace_.find(ns.id); had != inPlace_.end())
      lost = lostState(had->second, g.state, observed);
    if (!lost.empty())
      spdlog::warn("pod {}: {} missing in namespace {}: repairing; its VIP readiness is False "
                   "until a later pass finds it complete",
                   g.pods, lost, ns.path);
    auto changes = dp::diffPod(g.state, observed, cfg_.mplsLabel);
    changed = !changes.empty();
    if (!changes.empty()) {
      auto r = (*c)->apply(changes);
      if (!r) {
        res.failures.push_back(fmt::format("pod {}: {}", g.pods, r.error().message));
        inPlace_.erase(ns.id);
        report();
        continue;
      }
      res.changes += changes.size() - r->size();
      for (auto& f : *r) res.failures.push_back(fmt::format("pod {}: {}", g.pods, f));
      for (auto& ch : changes) spdlog::debug("pod {}: {}", g.pods, dp::describe(ch));
    }
    dp::PodSysctls sysctls{cfg_.tunnelLinkName(),
                           modeTraits(cfg_.mode).pod == dp::PodShape::LoopbackLabel,
                           cfg_.mplsLabel};
    if (auto s = ns_.prepare(ns, sysctls); !s)
      res.failures.push_back(fmt::format("pod {}: {}", g.pods, s.error().message));
    PodTable table = podTable(cfg_, g.plans);
    if (auto s = ns_.podTable(ns, &table); !s)
      res.failures.push_back(fmt::format("pod {}: nft table {} (UDP reply source, TCP MSS): {}",
                                         g.pods, kPodTableName, s.error().message));
    managed_.emplace(ns.id, ns);
    if (res.failures.size() == failuresBefore) inPlace_[ns.id] = g.state;
    else inPlace_.erase(ns.id);
    report();
  }
  // Namespaces that hold owned objects but serve nothing any more.
  for (auto it = managed_.begin(); it != managed_.end();) {
    if (!cleanAll && wanted.contains(it->first)) {
      ++it;
      continue;
    }
    auto c = ns_.client(it->second);
    bool gone = !c;
    if (c) {
      dp::PodState observed;
      auto links = (*c)->links();
      auto addrs = (*c)->addresses(true);
      if (!links || !addrs) {
        gone = true;
      } else {
        for (auto& l : *links)
          if (l.name.starts_with(cfg_.linkPrefix)) observed.links.push_back(l);
        observed.addresses = *addrs;
        auto pops = (*c)->mplsPops();
        observed.mplsLabelRoute = pops && !pops->empty();
        auto changes = dp::diffPod({}, observed, cfg_.mplsLabel);
        if (!changes.empty()) {
          auto r = (*c)->apply(changes);
          if (r) {
            res.changes += changes.size() - r->size();
            for (auto& f : *r) res.failures.push_back(f);
          } else {
            gone = true;
          }
        }
      }
    }
    if (!gone) (void)ns_.podTable(it->second, nullptr);
    if (gone) ns_.forget(it->second);
    inPlace_.erase(it->first);
    held_.erase(it->first);
    it = managed_.erase(it);
  }
  // Namespaces no plan names any more (vanished ones included) are forgotten.
  std::erase_if(inPlace_, [&](const auto& e) { return !wanted.contains(e.first); });
  std::erase_if(held_, [&](const std::string& id) { return !wanted.contains(id); });
  gates_.clear();
  for (auto& [key, g] : gates) gates_.push_back(std::move(g));
  return res;
}

Result<PassResult> AgentReconciler::reconcile(const Model& model) {
  auto plans = planAgent(model, cfg_, node_);
  bool missing = !scannedOnce_;
  for (auto& p : plans)
    if (!podNs_.contains(p.podIp)) missing = true;
  if (missing) refreshIndex();
  return apply(plans, false);
}

Result<PassResult> AgentReconciler::cleanup() {
  refreshIndex();
  return apply({}, true);
}

}  // namespace kst
