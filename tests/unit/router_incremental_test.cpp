// RouterReconciler with setCaching(true) (the daemon's steady state): after random sequences
// of model changes the kernel (fake) must hold exactly what a fresh reconciler would program,
// cached passes must not dump anything, and the work must follow the change, not the model.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "dataplane/diff.h"
#include "desired/nft_render.h"
#include "desired/published.h"
#include "fakes/fake_kernel.h"
#include "reconcile/router_reconciler.h"

namespace kst {
namespace {

using fake::FakeKernel;
using fake::FakeNft;

IpAddress v4(uint32_t host) { return IpAddress::fromV4(htonl(host)); }

TunnelService service(uint32_t i, std::vector<uint32_t> eps, bool v6 = false) {
  TunnelService s;
  s.key = {"t", "svc" + std::to_string(i)};
  s.vip = v6 ? *IpAddress::parse("2001:db8::" + std::to_string(i + 1)) : v4(0xcb007100 + i);
  for (auto e : eps) s.endpoints.push_back({v4(0x0a000000 + e), "n1", true, false, ""});
  std::sort(s.endpoints.begin(), s.endpoints.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
  return s;
}

void normalize(Model& m) {
  std::sort(m.services.begin(), m.services.end(), [](auto& a, auto& b) { return a.vip < b.vip; });
}

struct World {
  explicit World(DataplaneConfig c) : cfg(c), nl(FakeKernel::optionsFor(c)), nft(c.nftTable) {}
  DataplaneConfig cfg;
  FakeKernel nl;
  FakeNft nft;
};

void expectConverged(World& w, const Model& m) {
  RouterReconciler probe(w.cfg, w.nl, w.nft);
  auto observed = probe.observe();
  ASSERT_TRUE(observed);
  auto prior = allocationsFrom(*observed, w.cfg);
  auto plan = planRouter(m, w.cfg, prior);
  auto desired = routerState(plan, w.cfg, prior);
  for (auto& c : dp::diffRouter(desired, *observed)) ADD_FAILURE() << "not converged: " << dp::describe(c);
  EXPECT_EQ(w.nft.state().vips, desired.nft.vips);
  EXPECT_EQ(w.nft.state().buckets, desired.nft.buckets);
}

DataplaneConfig config() {
  DataplaneConfig cfg;
  cfg.buckets = 16;
  return cfg;
}

TEST(RouterIncremental, RandomChangesMatchAFreshPlanWithoutDumps) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  r.setCaching(true);
  Model m;
  for (uint32_t i = 0; i < 40; ++i) m.services.push_back(service(i, {4 * i + 1, 4 * i + 2, 4 * i + 3}, i % 7 == 0));
  normalize(m);
  auto first = r.reconcile(m);
  ASSERT_TRUE(first && first->ok());
  EXPECT_TRUE(first->fullObserve);
  std::mt19937 rng(1);
  uint32_t fresh = 1000;
  for (int step = 0; step < 300; ++step) {
    auto& s = m.services[rng() % m.services.size()];
    switch (rng() % 6) {
      case 0:  // replace an endpoint
        if (!s.endpoints.empty()) s.endpoints[rng() % s.endpoints.size()].ip = v4(0x0a000000 + ++fresh);
        break;
      case 1:  // add one (sometimes one another VIP already uses: shared nexthop)
        s.endpoints.push_back({v4(0x0a000000 + (rng() % 2 ? ++fresh : 1 + rng() % 160)), "n1", true, false, ""});
        break;
      case 2:  // remove one
        if (s.endpoints.size() > 1) s.endpoints.erase(s.endpoints.begin() + static_cast<long>(rng() % s.endpoints.size()));
        break;
      case 3:  // drain one
        if (!s.endpoints.empty()) s.endpoints[rng() % s.endpoints.size()].draining ^= true;
        break;
      case 4:  // remove a service / add a new one
        if (m.services.size() > 2 && rng() % 2) m.services.erase(m.services.begin() + static_cast<long>(rng() % m.services.size()));
        else m.services.push_back(service(100 + step, {++fresh, ++fresh}));
        break;
      case 5:  // nothing
        break;
    }
    for (auto& t : m.services) {
      std::sort(t.endpoints.begin(), t.endpoints.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
      t.endpoints.erase(std::unique(t.endpoints.begin(), t.endpoints.end(),
                                    [](auto& a, auto& b) { return a.ip == b.ip; }),
                        t.endpoints.end());
    }
    normalize(m);
    uint64_t dumps = w.nl.counts().dumps, applies = w.nl.counts().applyCalls,
             observes = w.nft.observes;
    auto res = r.reconcile(m);
    ASSERT_TRUE(res) << res.error().message;
    ASSERT_TRUE(res->ok()) << res->failures.front();
    EXPECT_FALSE(res->fullObserve);
    // No observation: the only dumps are the fake's stand-in for apply()'s ifindex lookup.
    EXPECT_EQ(w.nl.counts().dumps - dumps, w.nl.counts().applyCalls - applies) << "step " << step;
    EXPECT_EQ(w.nft.observes, observes) << "step " << step;
    if (step % 5 == 0 || step == 299) {
      expectConverged(w, m);
      // The plan kept by the reconciler is the whole model's.
      ASSERT_EQ(r.lastPlan().vips.size(), m.services.size());
      for (size_t i = 0; i < m.services.size(); ++i) EXPECT_EQ(r.lastPlan().vips[i].vip, m.services[i].vip);
    }
  }
  // A restarted reconciler adopts the result with zero changes.
  RouterReconciler restarted(w.cfg, w.nl, w.nft);
  auto again = restarted.reconcile(m);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->changes, 0u);
}

TEST(RouterIncremental, OneEndpointChangeSendsWorkForThatVipOnly) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  r.setCaching(true);
  Model m;
  for (uint32_t i = 0; i < 200; ++i) m.services.push_back(service(i, {4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4}));
  normalize(m);
  ASSERT_TRUE(r.reconcile(m)->ok());
  w.nl.clearLog();
  m.services[17].endpoints[2].ip = v4(0x0a00ffff);
  normalize(m);
  auto res = r.reconcile(m);
  ASSERT_TRUE(res && res->ok());
  // New nexthop, the route of its slot replaced, the old nexthop deleted.
  EXPECT_EQ(w.nl.log().size(), 3u);
  EXPECT_LE(res->nftElementChanges, 2u * w.cfg.buckets);
  expectConverged(w, m);
}

TEST(RouterIncremental, FailureDropsTheCacheAndTheNextPassObserves) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  r.setCaching(true);
  Model m;
  m.services.push_back(service(1, {1, 2}));
  ASSERT_TRUE(r.reconcile(m)->ok());
  w.nl.failWhen([](const dp::Change& c) { return std::holds_alternative<dp::Nexthop>(c.object); });
  m.services[0].endpoints.push_back({v4(0x0a000009), "n1", true, false, ""});
  auto failed = r.reconcile(m);
  ASSERT_TRUE(failed);
  EXPECT_FALSE(failed->ok());
  w.nl.clearFailures();
  auto retry = r.reconcile(m);
  ASSERT_TRUE(retry && retry->ok());
  EXPECT_TRUE(retry->fullObserve);
  expectConverged(w, m);
}

TEST(RouterIncremental, ResyncObservesAndRepairsDrift) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  r.setCaching(true);
  Model m;
  m.services.push_back(service(1, {1, 2}));
  ASSERT_TRUE(r.reconcile(m)->ok());
  w.nl.eraseRouteIf([](const dp::Route&) { return true; });
  auto cached = r.reconcile(m);  // no resync: the cache is trusted
  ASSERT_TRUE(cached && cached->ok());
  EXPECT_EQ(cached->changes, 0u);
  r.resyncNextPass();
  auto res = r.reconcile(m);
  ASSERT_TRUE(res && res->ok());
  EXPECT_TRUE(res->fullObserve);
  EXPECT_EQ(res->changes, 2u);
  expectConverged(w, m);
}

TEST(RouterIncremental, IpipFirstAndLastIpv6EndpointCreateAndRemoveTheIpv6Device) {
  auto cfg = config();
  cfg.mode = Mode::Ipip;
  World w(cfg);
  RouterReconciler r(w.cfg, w.nl, w.nft);
  r.setCaching(true);
  Model m;
  for (uint32_t i = 0; i < 8; ++i) m.services.push_back(service(i, {2 * i + 1, 2 * i + 2}, true));
  normalize(m);
  ASSERT_TRUE(r.reconcile(m)->ok());
  size_t links = w.nl.allLinks().size();
  m.services[3].endpoints.push_back({*IpAddress::parse("fd00::7"), "n1", true, false, ""});
  auto add = r.reconcile(m);
  ASSERT_TRUE(add && add->ok()) << (add ? add->failures.front() : add.error().message);
  EXPECT_EQ(w.nl.allLinks().size(), links + 1);
  expectConverged(w, m);
  m.services[3].endpoints.pop_back();
  auto del = r.reconcile(m);
  ASSERT_TRUE(del && del->ok());
  EXPECT_EQ(w.nl.allLinks().size(), links);
  expectConverged(w, m);
}

/** What an elected writer must publish, computed the slow way: every VIP of the last plan. */
std::map<ObjectKey, std::string> allUnpublished(const RouterReconciler& r, const DataplaneConfig& cfg) {
  std::map<ObjectKey, std::string> out;
  for (auto& vp : r.lastPlan().vips) {
    auto json = encodePublished(vp, cfg);
    if (json != vp.publishedSeen) out[vp.service] = json;
  }
  return out;
}

TEST(RouterIncremental, PendingPublicationsFollowTheChangesWithoutReencodingEveryVip) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  r.setCaching(true);
  Model m;
  for (uint32_t i = 0; i < 30; ++i) m.services.push_back(service(i, {3 * i + 1, 3 * i + 2}));
  normalize(m);
  std::mt19937 rng(3);
  uint32_t fresh = 500;
  for (int step = 0; step < 200; ++step) {
    auto res = r.reconcile(m);
    ASSERT_TRUE(res && res->ok());
    // Called on some passes only (a router that is not the writer never calls it).
    if (step % 3 != 1) {
      auto got = r.pendingPublications();
      std::map<ObjectKey, std::string> gotMap(got.begin(), got.end());
      ASSERT_EQ(gotMap.size(), got.size());
      ASSERT_EQ(gotMap, allUnpublished(r, w.cfg)) << "step " << step;
    }
    auto& s = m.services[rng() % m.services.size()];
    switch (rng() % 4) {
      case 0: {  // the writer's publish lands: the Service now carries its table
        auto all = allUnpublished(r, w.cfg);
        if (auto it = all.find(s.key); it != all.end()) s.published = it->second;
        break;
      }
      case 1:  // an endpoint changes: its table changes
        s.endpoints[rng() % s.endpoints.size()].ip = v4(0x0a000000 + ++fresh);
        std::sort(s.endpoints.begin(), s.endpoints.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
        break;
      case 2:  // someone else writes a stale table
        s.published = "{}";
        break;
      case 3:  // a Service goes, another comes
        if (m.services.size() > 5) m.services.erase(m.services.begin() + static_cast<long>(rng() % m.services.size()));
        m.services.push_back(service(100 + static_cast<uint32_t>(step), {++fresh, ++fresh}));
        normalize(m);
        break;
    }
  }
}

}  // namespace
}  // namespace kst
