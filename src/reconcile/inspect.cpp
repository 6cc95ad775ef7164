#include "reconcile/inspect.h"

#include <algorithm>

namespace kst {

Result<Explanation> explainOnNode(RouterReconciler& router, dp::NftInspector& nft,
                                  const FlowQuery& q) {
  auto st = router.observe();
  if (!st) return std::unexpected(st.error());
  if (!st->nft.present)
    return fail(ENOENT, "no classifier of the daemon on this node (not a router, or another "
                        "--datapath / --bpf-pin-dir?)");
  auto hashes = nft.classifier(q.vip.family());
  if (!hashes) return std::unexpected(hashes.error());
  auto key = flowKey(q, *hashes);
  if (!key) return std::unexpected(key.error());
  std::optional<uint32_t> pinned;
  if (*key) {
    auto m = nft.flowMark(q.vip.family(), **key);
    if (!m) return std::unexpected(m.error());
    pinned = *m;
  }
  return explainFlow(q, *st, *hashes, pinned);
}

NodeStatus nodeStatus(const StatusSources& src) {
  NodeStatus s;
  if (src.router) {
    s.router = true;
    s.datapath = src.datapath;
    auto st = src.router->observe();
    if (!st) {
      s.errors.push_back("router state: " + st.error().message);
    } else {
      s.nftTable = st->nft.present;
      std::optional<std::vector<dp::Route>> announced;
      if (src.announce) {
        s.drained = src.announce->drained();
        auto a = src.announce->observe();
        if (a) announced = std::move(*a);
        else s.errors.push_back("announce table: " + a.error().message);
      }
      s.vips = routerStatus(*st, announced);
    }
  }
  if (src.pods) {
    s.agent = true;
    for (const auto& ns : src.pods->list()) {
      auto nl = src.pods->client(ns);
      if (!nl) continue;  // vanished since the listing
      auto links = (*nl)->links();
      auto all = (*nl)->addresses(false);
      auto owned = (*nl)->addresses(true);
      if (!links || !all || !owned) {
        s.errors.push_back("pod namespace " + ns.path + ": " +
                           (!links ? links.error() : !all ? all.error() : owned.error()).message);
        continue;
      }
      if (auto p = podStatus(ns.path, src.decapDevice, *links, *all, *owned))
        s.pods.push_back(std::move(*p));
    }
    std::sort(s.pods.begin(), s.pods.end(),
              [](const PodStatus& a, const PodStatus& b) { return a.netns < b.netns; });
  }
  return s;
}

}  // namespace kst
