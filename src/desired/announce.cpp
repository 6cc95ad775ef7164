#include "desired/announce.h"

#include <algorithm>

namespace kst {

bool fitToAnnounce(const VipPlan& vip) {
  return std::any_of(vip.buckets.begin(), vip.buckets.end(), [&](int32_t e) {
    return e >= 0 && size_t(e) < vip.endpoints.size() && vip.endpoints[e].serving &&
           !vip.endpoints[e].draining;
  });
}

dp::Route announceRoute(const IpAddress& vip, uint32_t table) {
  dp::Route r;
  r.key = {vip.family(), table, vip, vip.hostPrefixLen()};
  r.unreachable = true;
  return r;
}

std::vector<dp::Route> announceRoutes(const RouterPlan& plan, uint32_t table, bool drained) {
  std::vector<dp::Route> out;
  if (drained || table == 0) return out;
  for (auto& v : plan.vips)
    if (fitToAnnounce(v)) out.push_back(announceRoute(v.vip, table));
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.key < b.key; });
  return out;
}

}  // namespace kst
