#include "reconcile/router_reconciler.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "dataplane/diff.h"
#include "desired/nft_render.h"

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

Result<PassResult> RouterReconciler::reconcile(const Model& model) {
  auto observed = observe();
  if (!observed) return std::unexpected(observed.error());
  Allocations prior = allocationsFrom(*observed, cfg_);
  if (cfg_.mode == Mode::Mpls && resolver_) {
    for (const auto& svc : model.services)
      for (const auto& ep : svc.endpoints)
        if (!prior.mplsDevice.contains(ep.ip))
          if (auto dev = resolver_(ep.ip)) prior.mplsDevice.emplace(ep.ip, *dev);
  }
  plan_ = planRouter(model, cfg_, prior);
  dp::RouterState desired = routerState(plan_, cfg_, prior);
  PassResult res;
  res.problems = plan_.problems;
  auto changes = dp::diffRouter(desired, *observed);
  // nft changes: adds of VIPs must follow route creation, removals precede route deletion.
  // Netlink adds/replaces first, then nft, then netlink deletions.
  auto firstDelete = std::find_if(changes.begin(), changes.end(), [](const dp::Change& c) {
    return c.action == dp::Change::Action::Delete;
  });
  std::vector<dp::Change> addPart(changes.begin(), firstDelete), delPart(firstDelete, changes.end());
  auto applyPart = [&](const std::vector<dp::Change>& part) -> Status {
    if (part.empty()) return {};
    auto r = nl_.apply(part);
    if (!r) return std::unexpected(r.error());
    res.changes += part.size() - r->size();
    for (auto& f : *r) res.failures.push_back(f);
    for (auto& c : part) spdlog::debug("router: {}", dp::describe(c));
    return {};
  };
  if (auto s = applyPart(addPart); !s) return std::unexpected(s.error());
  std::string script = renderNftChanges(cfg_, desired.nft, observed->nft, &res.nftElementChanges);
  if (!script.empty()) {
    res.nftRebuilt = !observed->nft.present || observed->nft.skeletonId != desired.nft.skeletonId;
    if (auto s = nft_.run(script); !s) {
      res.failures.push_back(s.error().message);
    } else {
      res.changes += res.nftElementChanges + (res.nftRebuilt ? 1 : 0);
    }
  }
  if (auto s = applyPart(delPart); !s) return std::unexpected(s.error());
  return res;
}

Result<PassResult> RouterReconciler::cleanup() {
  Model empty;
  return reconcile(empty);
}

}  // namespace kst
