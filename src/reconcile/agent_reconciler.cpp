#include "reconcile/agent_reconciler.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "dataplane/diff.h"
#include "dataplane/pod_identity.h"

namespace kst {

AgentReconciler::AgentReconciler(const DataplaneConfig& cfg, std::string nodeName,
                                 NetnsProvider& ns)
    : cfg_(cfg), node_(std::move(nodeName)), ns_(ns) {}

namespace {

bool podAddress(const dp::Address& a) {
  if (a.dev == "lo") return false;
  return !(a.ip.isV6() && a.ip.data()[0] == 0xfe && (a.ip.data()[1] & 0xc0) == 0x80);
}

}  // namespace

Result<dp::PodState> AgentReconciler::observeOwned(dp::NetlinkClient& c, bool mplsPops) {
  dp::PodState observed;
  auto links = c.links();
  if (!links) return std::unexpected(links.error());
  auto addrs = c.addresses(true);
  if (!addrs) return std::unexpected(addrs.error());
  for (auto& l : *links)
    if (ownedPodLink(l, cfg_.linkPrefix)) observed.links.push_back(l);
  observed.addresses = *addrs;
  if (mplsPops) {
    auto pops = c.mplsPops();
    observed.mplsLabelRoute = pops && !pops->empty();
  }
  return observed;
}

void AgentReconciler::resolve(const std::vector<PodPlan>& plans, PassResult& res,
                              bool& changed) {
  std::vector<IpAddress> ips;
  for (auto& p : plans) ips.push_back(p.podIp);
  auto routed = ns_.routed(ips);
  std::map<IpAddress, NetnsProvider::Ns> now;
  for (const auto& plan : plans) {
    auto it = routed.find(plan.podIp);
    auto old = podNs_.find(plan.podIp);
    if (it != routed.end() && !it->second && it->second.error().code == dp::kNeedsNeighbour &&
        old != podNs_.end()) {
      // A bridge's neighbour or forwarding entry aged out (a quiet pod): resolution has been
      // provoked; the pod keeps its namespace meanwhile instead of losing its VIPs.
      spdlog::debug("pod {}: {} (namespace {} kept)", plan.podIp.str(),
                    it->second.error().message, old->second.path);
      now.emplace(plan.podIp, old->second);
      continue;
    }
    if (it == routed.end() || !it->second) {
      res.failures.push_back(fmt::format(
          "pod {} (service {}): no network namespace found by the node's routing: {}",
          plan.podIp.str(), plan.services.front().str(),
          it == routed.end() ? "no answer" : it->second.error().message));
      continue;
    }
    const auto& ns = *it->second;
    if (old != podNs_.end() && old->second.id == ns.id) {
      now.emplace(plan.podIp, ns);  // verified when it was first found
      continue;
    }
    changed = true;
    // New answer: the namespace must hold the address itself (not as one of ours).
    auto c = ns_.client(ns);
    auto addrs = c ? (*c)->addresses(false) : Result<std::vector<dp::Address>>(
                                                  std::unexpected(c.error()));
    auto owned = c ? (*c)->addresses(true) : Result<std::vector<dp::Address>>(
                                                 std::unexpected(c.error()));
    if (!addrs || !owned) {
      res.failures.push_back(fmt::format("pod {}: namespace {} unreadable: {}",
                                         plan.podIp.str(), ns.path,
                                         (!addrs ? addrs.error() : owned.error()).message));
      continue;
    }
    bool holds = false;
    for (auto& a : *addrs)
      if (a.ip == plan.podIp && podAddress(a) &&
          std::find(owned->begin(), owned->end(), a) == owned->end())
        holds = true;
    if (!holds) {
      res.failures.push_back(fmt::format(
          "pod {} (service {}): the node routes it to namespace {}, which does not hold it: "
          "refused", plan.podIp.str(), plan.services.front().str(), ns.path));
      continue;
    }
    if (old != podNs_.end())
      spdlog::info("pod {}: namespace {} (was {})", plan.podIp.str(), ns.path, old->second.path);
    now.emplace(plan.podIp, ns);
  }
  podNs_ = std::move(now);
}

void AgentReconciler::scan(const std::vector<PodPlan>& plans) {
  std::set<IpAddress> podIps;
  for (auto& p : plans) podIps.insert(p.podIp);
  dups_.clear();
  for (const auto& ns : ns_.list()) {
    auto c = ns_.client(ns);
    if (!c) continue;  // vanished or not accessible: not a candidate
    auto addrs = (*c)->addresses(false);
    auto observed = addrs ? observeOwned(**c, false)
                          : Result<dp::PodState>(std::unexpected(addrs.error()));
    if (!addrs || !observed) {
      ns_.forget(ns);
      continue;
    }
    if (!observed->links.empty() || !observed->addresses.empty()) managed_.emplace(ns.id, ns);
    for (auto& a : *addrs) {
      if (!podIps.contains(a.ip)) continue;  // on any device, lo included
      if (std::find(observed->addresses.begin(), observed->addresses.end(), a) !=
          observed->addresses.end())
        continue;  // one of our VIPs, not a pod address
      auto routed = podNs_.find(a.ip);
      if (routed != podNs_.end() && routed->second.id == ns.id) continue;
      auto& d = dups_[a.ip];
      if (std::find(d.begin(), d.end(), ns.path) == d.end()) d.push_back(ns.path);
    }
  }
  for (auto& [ip, paths] : dups_)
    spdlog::warn("pod {}: also held by namespace(s) {} that the node's routing does not deliver "
                 "it to: refused", ip.str(), fmt::join(paths, ", "));
  scannedOnce_ = true;
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
    if (it == podNs_.end()) {  // resolve() reported why
      gate(plan, false,
           fmt::format("no network namespace on this node that its routing leads to holds {}",
                       plan.podIp.str()));
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
    auto seen = observeOwned(**c, modeTraits(cfg_.mode).pod == dp::PodShape::LoopbackLabel);
    if (!seen) {
      res.failures.push_back(
          fmt::format("pod {}: namespace {} vanished or unreadable", g.pods, ns.path));
      ns_.forget(ns);
      inPlace_.erase(ns.id);
      report();
      continue;
    }
    const dp::PodState& observed = *seen;
    if (auto had = inPlace_.find(ns.id); had != inPlace_.end())
      lost = lostState(had->second, g.state, observed);
    if (!lost.empty())
      spdlog::warn("pod {}: {} missing in namespace {}: repairing; its VIP readiness is False "
                   "until a later pass finds it complete",
                   g.pods, lost, ns.path);
    auto changes = dp::diffPod(g.state, observed, cfg_.mplsLabel);
    changed = !changes.empty();
    auto decap = podDecap(cfg_, g.plans);
    if (decap && !changes.empty()) {
      // The program decapsulates only VIPs the pod holds: a VIP about to leave leaves its map
      // first (a new one enters it after the address is in place, below).
      dp::PodDecap now = *decap;
      std::erase_if(now.vips, [&](const IpAddress& v) {
        return std::none_of(observed.addresses.begin(), observed.addresses.end(),
                            [&](const dp::Address& a) { return a.ip == v; });
      });
      auto r = ns_.podDecap(ns, now.vips.empty() ? nullptr : &now);
      if (r) res.changes += *r;
      else spdlog::warn("pod {}: decapsulation program: {}", g.pods, r.error().message);
    }
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
    // The program is an accelerator: the decap device carries the traffic without it, so a
    // failure (an old kernel, missing CAP_BPF) is a warning, not a pod held out of service.
    if (auto r = ns_.podDecap(ns, decap ? &*decap : nullptr); r) {
      res.changes += *r;
      if (*r) changed = true;
    } else {
      spdlog::warn("pod {}: decapsulation program (--pod-decap bpf): {}; the decap device "
                   "carries its traffic", g.pods, r.error().message);
    }
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
      auto observed = observeOwned(**c, true);
      if (!observed) {
        gone = true;
      } else {
        auto changes = dp::diffPod({}, *observed, cfg_.mplsLabel);
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
    if (!gone) {
      (void)ns_.podTable(it->second, nullptr);
      if (auto r = ns_.podDecap(it->second, nullptr); r) res.changes += *r;
      else spdlog::warn("namespace {}: decapsulation program: {}", it->second.path,
                        r.error().message);
    }
    if (gone) ns_.forget(it->second);
    inPlace_.erase(it->first);
    held_.erase(it->first);
    it = managed_.erase(it);
  }
  // Everything else the provider holds (candidates of a scan, namespaces that stopped serving
  // or vanished) is released: handles, sockets and caches stay bounded by the pods served.
  std::set<std::string> keep = wanted;
  for (auto& [id, ns] : managed_) keep.insert(id);
  ns_.retainOnly(keep);
  // Namespaces no plan names any more (vanished ones included) are forgotten.
  std::erase_if(inPlace_, [&](const auto& e) { return !wanted.contains(e.first); });
  std::erase_if(held_, [&](const std::string& id) { return !wanted.contains(id); });
  gates_.clear();
  for (auto& [key, g] : gates) gates_.push_back(std::move(g));
  return res;
}

Result<PassResult> AgentReconciler::reconcile(const Model& model) {
  auto plans = planAgent(model, cfg_, node_);
  PassResult pre;
  bool changed = !scannedOnce_;
  resolve(plans, pre, changed);
  // A new or moved pod (and the first pass, e.g. after a restart) rescans every candidate:
  // duplicates of the pod addresses are reported, namespaces holding owned objects adopted.
  if (changed) scan(plans);
  auto res = apply(plans, false);
  res.failures.insert(res.failures.begin(), pre.failures.begin(), pre.failures.end());
  for (const auto& plan : plans) {
    auto d = dups_.find(plan.podIp);
    if (d == dups_.end()) continue;
    for (const auto& svc : plan.services)
      res.problems.push_back({Problem::Kind::DuplicatePodAddress, svc,
                              fmt::format("pod address {} is also held by network namespace(s) "
                                          "{}, which the node's routing does not deliver it "
                                          "to: refused (the routed pod is served)",
                                          plan.podIp.str(), fmt::join(d->second, ", "))});
  }
  return res;
}

Result<PassResult> AgentReconciler::cleanup() {
  podNs_.clear();
  scan({});
  return apply({}, true);
}

}  // namespace kst
