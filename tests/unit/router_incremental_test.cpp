// RouterReconciler with setCaching(true) (the daemon's steady state): after random sequences
// of model changes the kernel (fake) must hold exactly what a fresh reconciler would program,
// cached passes must not dump anything, and the work must follow the change, not the model.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <thread>

#include "dataplane/diff.h"
#include "desired/nft_render.h"
#include "desired/published.h"
#include "fakes/fake_kernel.h"
#include "daemon/daemon.h"
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
  // A first replacement takes slot 4 (the leaver's slot is held, docs/load-balancing.md
  // "Released slots"): a slot table more (its rule, and routes of that VIP only).
  m.services[3].endpoints[2].ip = v4(0x0a00fffe);
  normalize(m);
  ASSERT_TRUE(r.reconcile(m)->ok());
  w.nl.clearLog();
  m.services[17].endpoints[2].ip = v4(0x0a00ffff);
  normalize(m);
  auto res = r.reconcile(m);
  ASSERT_TRUE(res && res->ok());
  // New nexthop, the routes of its slot (4) and of the released one replaced, the old nexthop
  // deleted.
  EXPECT_EQ(w.nl.log().size(), 4u);
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

// Element changes are one nfnetlink transaction (the fake decodes the batch the production
// client sends): when a bucket the cache believes in was removed behind the daemon's back, the
// deletion in the next change finds nothing (ENOENT) and the kernel refuses the whole batch,
// additions included. The failure drops the cache; the next pass observes and repairs.
TEST(RouterIncremental, ElementBatchIsAllOrNothing) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  r.setCaching(true);
  Model m;
  m.services.push_back(service(1, {1, 2}));
  ASSERT_TRUE(r.reconcile(m)->ok());
  const IpAddress vip = m.services[0].vip;
  // 10.0.0.2 leaves: every bucket it held is deleted and re-added with 10.0.0.1's slot.
  const uint32_t leaverMark = w.cfg.tableOffset + r.lastPlan().vips.at(0).slots.back();
  std::optional<uint32_t> gone;
  for (const auto& [k, mark] : w.nft.state().buckets)
    if (mark == leaverMark && !gone) gone = k.second;
  ASSERT_TRUE(gone);
  ASSERT_TRUE(w.nft.mutableState().buckets.erase({vip, *gone}));  // drift: not in the cache
  const dp::NftState before = w.nft.state();
  const size_t batches = w.nft.batches.size();
  m.services[0].endpoints.pop_back();
  auto failed = r.reconcile(m);
  ASSERT_TRUE(failed);
  EXPECT_FALSE(failed->ok());
  EXPECT_EQ(w.nft.batches.size(), batches);
  EXPECT_EQ(w.nft.state().buckets, before.buckets);  // no addition of the batch was applied
  EXPECT_EQ(w.nft.state().vips, before.vips);
  auto retry = r.reconcile(m);
  ASSERT_TRUE(retry && retry->ok()) << (retry ? retry->failures.front() : retry.error().message);
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

// ------------------------------------------------ hinted passes (the changed-VIP set)

/** The VIPs whose service differs between two models, the slow way. */
std::set<IpAddress> changedVips(const Model& before, const Model& after) {
  std::map<IpAddress, const TunnelService*> a, z;
  for (auto& s : before.services) a[s.vip] = &s;
  for (auto& s : after.services) z[s.vip] = &s;
  std::set<IpAddress> out;
  for (auto& [v, s] : a)
    if (!z.contains(v) || !(*z[v] == *s)) out.insert(v);
  for (auto& [v, s] : z)
    if (!a.contains(v)) out.insert(v);
  return out;
}

/** Both kernels hold the same owned objects (same ids, tables, marks). */
void expectSameKernel(World& a, World& b, const std::string& where) {
  RouterReconciler pa(a.cfg, a.nl, a.nft), pb(b.cfg, b.nl, b.nft);
  auto x = pa.observe(), y = pb.observe();
  ASSERT_TRUE(x && y);
  auto strs = [](const dp::RouterState& st) {
    std::vector<std::string> out;
    for (auto& l : st.links) out.push_back(fmt::format("link {} {}", l.name, dp::kindName(l.kind)));
    for (auto& n : st.nexthops)
      out.push_back(fmt::format("nh {} {} {} {}", n.id, n.encapDst ? n.encapDst->str() : "-", n.dev,
                                static_cast<int>(n.family)));
    for (auto& r : st.routes)
      out.push_back(fmt::format("route {}/{} table {} nhid {} dev {} unreachable {}", r.key.dst.str(),
                                r.key.prefixLen, r.key.table, r.nhid, r.dev, r.unreachable));
    for (auto& r : st.rules)
      out.push_back(fmt::format("rule {} fwmark {} table {}", r.priority, r.fwmark, r.table));
    return out;
  };
  EXPECT_EQ(strs(*x), strs(*y)) << where;
  EXPECT_EQ(a.nft.state().vips, b.nft.state().vips) << where;
  EXPECT_EQ(a.nft.state().buckets, b.nft.state().buckets) << where;
}

/** Random cluster deliveries over 30 Services and 40 slices: endpoints come, go, drain and
 *  are shared between Services; VIPs move, conflict (the oldest claim wins), switch family,
 *  get published tables; Services and slices are deleted and come back. */
struct RandomCluster {
  explicit RandomCluster(unsigned seed) : rng(seed) {}
  std::mt19937 rng;
  int pick(int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); }

  ServiceObject svc(int i, std::string vip) {
    ServiceObject s;
    s.key = {"t", fmt::format("s{}", i)};
    s.uid = s.key.str();
    s.creationTimestamp = fmt::format("2024-01-0{}T00:00:00Z", 1 + pick(3));
    if (!vip.empty()) s.annotations["cmd.nu/tunnel"] = vip;
    return s;
  }
  EndpointSliceObject slice(int i, int service, bool v6) {
    EndpointSliceObject e;
    e.key = {"t", fmt::format("e{}", i)};
    e.serviceName = fmt::format("s{}", service);
    e.addressType = v6 ? "IPv6" : "IPv4";
    for (int j = 1 + pick(4); j > 0; --j) {
      SliceEndpoint se;
      // A small pool: endpoints are often shared between Services (shared nexthops).
      se.address = v6 ? fmt::format("fd00::{}", 1 + pick(8)) : fmt::format("10.0.0.{}", 1 + pick(60));
      se.nodeName = "n1";
      se.ready = pick(6) != 0;
      se.terminating = !se.ready && pick(2);
      se.serving = pick(8) != 0;
      e.endpoints.push_back(se);
    }
    return e;
  }
  ObjectChanges initial() {
    ObjectChanges c;
    c.replaceAll = true;
    for (int i = 0; i < 30; ++i) {
      auto s = svc(i, fmt::format("203.0.113.{}", i));
      c.services[s.key] = s;
      auto e = slice(i, i, false);
      c.slices[e.key] = e;
    }
    return c;
  }
  ObjectChanges next() {
    ObjectChanges c;
    for (int n = 1 + pick(3); n > 0; --n) {
      if (pick(3) == 0) {
        int i = pick(30);
        ObjectKey k{"t", fmt::format("s{}", i)};
        if (pick(8) == 0) {
          c.services[k] = std::nullopt;
          continue;
        }
        int a = pick(12);
        std::string vip = a < 9  ? fmt::format("203.0.113.{}", pick(36))  // may conflict
                          : a < 11 ? fmt::format("2001:db8::{}", pick(4))
                                   : "";
        auto s = svc(i, vip);
        if (pick(4) == 0) c.tables[k] = PublishedTableObject{k, s.uid, fmt::format("t{}", pick(3))};
        c.services[k] = s;
      } else {
        int i = pick(40);
        if (pick(10) == 0) {
          c.slices[{"t", fmt::format("e{}", i)}] = std::nullopt;
          continue;
        }
        auto e = slice(i, i < 30 && pick(4) ? i : pick(30), pick(10) == 0);
        c.slices[e.key] = e;
      }
    }
    return c;
  }
};

/** Hinted passes (the daemon: ModelBuilder's changed VIPs, accumulated over deliveries) end in
 *  exactly the kernel state of passes that compare every service, and that state is what a
 *  full recompute (fresh plan against the kernel) finds nothing to change in. Failures, drift
 *  and resyncs happen to both alike. */
void hintedMatchesFull(Mode mode, unsigned seed) {
  auto cfg = config();
  cfg.mode = mode;
  World hw(cfg), fw(cfg);
  RouterReconciler hinted(hw.cfg, hw.nl, hw.nft), full(fw.cfg, fw.nl, fw.nft);
  hinted.setCaching(true);
  full.setCaching(true);
  RandomCluster gen(seed);
  ModelBuilder builder;
  std::set<IpAddress> hint = builder.apply(gen.initial());
  int proportional = 0;
  for (int step = 0; step < 150; ++step) {
    std::string where = fmt::format("mode {} seed {} step {}", modeName(mode), seed, step);
    const Model& m = builder.model();
    bool fail = gen.pick(25) == 0;
    if (fail)  // one pass in which nexthop changes fail, in both
      for (auto* w : {&hw, &fw})
        w->nl.failWhen([](const dp::Change& c) { return std::holds_alternative<dp::Nexthop>(c.object); });
    if (gen.pick(30) == 0) {  // drift, repaired by the resync
      for (auto* w : {&hw, &fw}) w->nl.eraseRouteIf([](const dp::Route& r) { return r.key.table % 3 == 0; });
      hinted.resyncNextPass();
      full.resyncNextPass();
    }
    auto h = hinted.reconcile(m, &hint);
    auto f = full.reconcile(m);
    ASSERT_TRUE(h && f) << where;
    EXPECT_EQ(h->ok(), f->ok()) << where;
    EXPECT_EQ(h->changes, f->changes) << where;
    EXPECT_EQ(h->fullObserve, f->fullObserve) << where;
    EXPECT_EQ(h->vipsPlanned, f->vipsPlanned) << where;
    EXPECT_LE(h->vipsCompared, hint.size()) << where;
    auto sorted = [](std::vector<Problem> v) {
      std::sort(v.begin(), v.end(), [](auto& a, auto& b) {
        return std::tie(a.object, a.message) < std::tie(b.object, b.message);
      });
      return v;
    };
    EXPECT_EQ(sorted(h->problems), sorted(f->problems)) << where;
    if (!h->fullObserve && h->vipsPlanned < m.services.size()) ++proportional;
    hint.clear();
    if (fail) {
      hw.nl.clearFailures();
      fw.nl.clearFailures();
    } else {
      expectSameKernel(hw, fw, where);
      expectConverged(hw, m);
      ASSERT_EQ(hinted.lastPlan().vips.size(), m.services.size()) << where;
    }
    if (::testing::Test::HasFailure()) return;
    // One to three deliveries before the next pass: their changed VIPs accumulate.
    for (int d = 1 + gen.pick(3); d > 0; --d) hint.merge(builder.apply(gen.next()));
  }
  // Most passes followed the change (the rest: slot count, family or first/last VIP changes,
  // failures, resyncs, more than a quarter of the VIPs).
  EXPECT_GT(proportional, 60) << modeName(mode) << " seed " << seed;
}

TEST(RouterIncremental, HintedPassesEndInTheStateOfFullPassesForRandomDeliveries) {
  for (Mode mode : {Mode::VxlanGpe, Mode::Ipip})
    for (unsigned seed = 1; seed <= 4; ++seed) {
      hintedMatchesFull(mode, seed);
      if (HasFailure()) return;
    }
}

/** 20 VIPs × 2 endpoints, programmed by a first pass (cached). */
struct Programmed {
  Programmed() : w(config()), r(w.cfg, w.nl, w.nft) {
    r.setCaching(true);
    for (uint32_t i = 0; i < 20; ++i) m.services.push_back(service(i, {2 * i + 1, 2 * i + 2}));
    normalize(m);
  }
  /** Changes the model and returns the hint for it. */
  std::set<IpAddress> change(const std::function<void(Model&)>& f) {
    Model before = m;
    f(m);
    normalize(m);
    return changedVips(before, m);
  }
  World w;
  RouterReconciler r;
  Model m;
};

TEST(RouterIncremental, HintedPassComparesAndPlansOnlyTheChangedVip) {
  Programmed p;
  ASSERT_TRUE(p.r.reconcile(p.m)->ok());
  // (A first replacement adds slot table 2: the leaver's slot is held.)
  auto first = p.change([](Model& m) { m.services[3].endpoints[1].ip = v4(0x0a00fffe); });
  ASSERT_TRUE(p.r.reconcile(p.m, &first)->ok());
  p.w.nl.clearLog();
  auto hint = p.change([](Model& m) { m.services[7].endpoints[1].ip = v4(0x0a00ffff); });
  ASSERT_EQ(hint.size(), 1u);
  auto res = p.r.reconcile(p.m, &hint);
  ASSERT_TRUE(res && res->ok());
  EXPECT_FALSE(res->fullObserve);
  EXPECT_EQ(res->vipsCompared, 1u);
  EXPECT_EQ(res->vipsPlanned, 1u);
  // New nexthop, the new and the released slot's routes replaced, old nexthop deleted.
  EXPECT_EQ(p.w.nl.log().size(), 4u);
  expectConverged(p.w, p.m);
  // Without the hint the same kind of pass compares every service.
  p.change([](Model& m) { m.services[3].endpoints[0].draining = true; });
  auto plain = p.r.reconcile(p.m);
  ASSERT_TRUE(plain && plain->ok());
  EXPECT_EQ(plain->vipsCompared, p.m.services.size());
  EXPECT_EQ(plain->vipsPlanned, 1u);
  expectConverged(p.w, p.m);
  // A hint naming unchanged VIPs too (a superset) plans only what differs.
  std::set<IpAddress> wide{p.m.services[0].vip, p.m.services[1].vip};
  auto same = p.r.reconcile(p.m, &wide);
  ASSERT_TRUE(same && same->ok());
  EXPECT_EQ(same->vipsCompared, 2u);
  EXPECT_EQ(same->changes, 0u);
}

TEST(RouterIncremental, HintedFirstPassObservesAndProgramsEverything) {
  Programmed p;
  std::set<IpAddress> one{p.m.services[0].vip};
  auto res = p.r.reconcile(p.m, &one);
  ASSERT_TRUE(res && res->ok());
  EXPECT_TRUE(res->fullObserve);
  EXPECT_EQ(res->vipsPlanned, p.m.services.size());
  expectConverged(p.w, p.m);
}

TEST(RouterIncremental, HintedPassAfterAFailureObservesAndRepairs) {
  Programmed p;
  ASSERT_TRUE(p.r.reconcile(p.m)->ok());
  p.w.nl.failWhen([](const dp::Change& c) { return std::holds_alternative<dp::Nexthop>(c.object); });
  auto hint = p.change([](Model& m) { m.services[4].endpoints.push_back({v4(0x0a00eeee), "n1", true, false, ""}); });
  auto failed = p.r.reconcile(p.m, &hint);
  ASSERT_TRUE(failed);
  EXPECT_FALSE(failed->ok());
  p.w.nl.clearFailures();
  // The retry: nothing changed since the failed pass (empty hint), yet the kernel is re-read.
  std::set<IpAddress> none;
  auto retry = p.r.reconcile(p.m, &none);
  ASSERT_TRUE(retry && retry->ok());
  EXPECT_TRUE(retry->fullObserve);
  EXPECT_GT(retry->changes, 0u);
  expectConverged(p.w, p.m);
}

TEST(RouterIncremental, HintedPassAfterResyncObservesAndRepairsDrift) {
  Programmed p;
  ASSERT_TRUE(p.r.reconcile(p.m)->ok());
  p.w.nl.eraseRouteIf([](const dp::Route&) { return true; });
  std::set<IpAddress> none;
  auto cached = p.r.reconcile(p.m, &none);  // the cache is trusted until the resync
  ASSERT_TRUE(cached && cached->ok());
  EXPECT_EQ(cached->changes, 0u);
  EXPECT_EQ(cached->vipsCompared, 0u);
  p.r.resyncNextPass();
  auto res = p.r.reconcile(p.m, &none);
  ASSERT_TRUE(res && res->ok());
  EXPECT_TRUE(res->fullObserve);
  EXPECT_GT(res->changes, 0u);
  expectConverged(p.w, p.m);
}

TEST(RouterIncremental, HintThatMissesAnAddedOrRemovedVipIsIgnored) {
  Programmed p;
  ASSERT_TRUE(p.r.reconcile(p.m)->ok());
  std::set<IpAddress> none;
  p.change([](Model& m) { m.services.push_back(service(50, {7, 8})); });
  auto added = p.r.reconcile(p.m, &none);
  ASSERT_TRUE(added && added->ok());
  EXPECT_EQ(added->vipsCompared, p.m.services.size());  // fell back to comparing every service
  EXPECT_EQ(added->vipsPlanned, 1u);
  expectConverged(p.w, p.m);
  p.change([](Model& m) { m.services.erase(m.services.begin() + 3); });
  auto removed = p.r.reconcile(p.m, &none);
  ASSERT_TRUE(removed && removed->ok());
  EXPECT_EQ(removed->vipsCompared, p.m.services.size());
  expectConverged(p.w, p.m);
}

TEST(RouterIncremental, HintedSlotCountChangeIsPartial) {
  Programmed p;
  ASSERT_TRUE(p.r.reconcile(p.m)->ok());
  size_t rules = p.w.nl.rules(0, ~0u)->size();
  size_t routes = p.w.nl.routes(0, ~0u)->size();
  ASSERT_EQ(rules, 2u);
  const IpAddress vip = p.m.services[5].vip;
  // Five endpoints for one VIP: five slots, more than any other VIP uses. Only that VIP is
  // planned: three rules more (the new slot tables), its three new routes and nexthops; the
  // other VIPs get no route in the new tables (VipPlan::tables).
  p.w.nl.clearLog();
  auto hint = p.change([](Model& m) {
    for (uint32_t e : {90, 91, 92}) m.services[5].endpoints.push_back({v4(0x0a000000 + e), "n1", true, false, ""});
  });
  auto res = p.r.reconcile(p.m, &hint);
  ASSERT_TRUE(res && res->ok());
  EXPECT_FALSE(res->fullObserve);
  EXPECT_EQ(res->vipsPlanned, 1u);
  EXPECT_EQ(p.r.lastPlan().slotCount, 5u);
  EXPECT_EQ(p.w.nl.rules(0, ~0u)->size(), 5u);
  EXPECT_EQ(p.w.nl.routes(0, ~0u)->size(), routes + 3);
  EXPECT_EQ(p.w.nl.log().size(), 3u + 3u + 3u);
  expectConverged(p.w, p.m);
  // Back to two endpoints: the VIP keeps its slot tables (unreachable guards: a packet
  // classified before the release may still carry those marks), still partial.
  p.w.nl.clearLog();
  hint = p.change([](Model& m) { m.services[5].endpoints.resize(2); });
  res = p.r.reconcile(p.m, &hint);
  ASSERT_TRUE(res && res->ok());
  EXPECT_EQ(res->vipsPlanned, 1u);
  EXPECT_EQ(p.w.nl.rules(0, ~0u)->size(), 5u);
  EXPECT_EQ(p.w.nl.routes(0, ~0u)->size(), routes + 3);
  size_t guards = 0;
  const auto all = p.w.nl.routes(0, ~0u);  // held: a range-for over *temporary would dangle
  ASSERT_TRUE(all.has_value());
  for (auto& r : *all) guards += r.unreachable && r.key.dst == vip;
  EXPECT_EQ(guards, 3u);
  expectConverged(p.w, p.m);
  // The VIP goes: its tables above the others' go with it (rules deleted), still partial.
  p.w.nl.clearLog();
  hint = p.change([&](Model& m) {
    std::erase_if(m.services, [&](const TunnelService& s) { return s.vip == vip; });
  });
  res = p.r.reconcile(p.m, &hint);
  ASSERT_TRUE(res && res->ok());
  EXPECT_EQ(res->vipsPlanned, 1u);
  EXPECT_EQ(p.r.lastPlan().slotCount, 2u);
  EXPECT_EQ(p.w.nl.rules(0, ~0u)->size(), rules);
  EXPECT_EQ(p.w.nl.routes(0, ~0u)->size(), routes - 2);
  expectConverged(p.w, p.m);
  // A restarted reconciler adopts it with zero changes.
  RouterReconciler restarted(p.w.cfg, p.w.nl, p.w.nft);
  auto again = restarted.reconcile(p.m);
  ASSERT_TRUE(again && again->ok());
  EXPECT_EQ(again->changes, 0u);
}

TEST(RouterIncremental, PendingPublicationsFollowHintedPasses) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  r.setCaching(true);
  Model m;
  for (uint32_t i = 0; i < 30; ++i) m.services.push_back(service(i, {3 * i + 1, 3 * i + 2}));
  normalize(m);
  Model before;
  std::mt19937 rng(5);
  uint32_t fresh = 700;
  for (int step = 0; step < 150; ++step) {
    auto hint = changedVips(before, m);
    auto res = r.reconcile(m, &hint);
    ASSERT_TRUE(res && res->ok());
    before = m;
    auto got = r.pendingPublications();
    std::map<ObjectKey, std::string> gotMap(got.begin(), got.end());
    ASSERT_EQ(gotMap, allUnpublished(r, w.cfg)) << "step " << step;
    auto& s = m.services[rng() % m.services.size()];
    if (rng() % 2) {  // the writer's publish lands
      auto all = allUnpublished(r, w.cfg);
      if (auto it = all.find(s.key); it != all.end()) s.published = it->second;
    } else {
      s.endpoints[rng() % s.endpoints.size()].ip = v4(0x0a000000 + ++fresh);
      std::sort(s.endpoints.begin(), s.endpoints.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
    }
  }
}

// ------------------------------------------------------------------------- daemon level

/** Delivers the complete set at start, then whatever the test pushes. */
class ScriptedSource : public Source {
 public:
  explicit ScriptedSource(ObjectChanges first) : first_(std::move(first)) {}
  Status start(Callback cb) override {
    cb_ = std::move(cb);
    cb_(std::move(first_));
    return {};
  }
  void push(ObjectChanges c) { cb_(std::move(c)); }
  void stop() override {}
  std::string name() const override { return "scripted"; }

 private:
  ObjectChanges first_;
  Callback cb_;
};

TEST(Daemon, PassAfterADeliveryComparesOnlyTheVipsItChanged) {
  World w(config());
  RouterReconciler router(w.cfg, w.nl, w.nft);
  RandomCluster gen(9);
  auto first = gen.initial();
  ModelBuilder truth;
  truth.apply(first);
  ScriptedSource src(std::move(first));
  DaemonOptions o;
  o.agent = false;
  o.resyncInterval = std::chrono::hours(1);
  Daemon d(o, src, &router, nullptr);
  std::thread t([&] { d.run(); });
  auto waitPasses = [&](int k) {
    for (int i = 0; i < 20000 && d.passes() < k; ++i) std::this_thread::sleep_for(std::chrono::microseconds(100));
    return d.passes() >= k;
  };
  bool started = waitPasses(1);
  EXPECT_TRUE(started && d.lastPassOk());
  EXPECT_TRUE(d.lastRouterPassForTest().fullObserve);
  // One endpoint of s7 replaced: one VIP compared, planned and changed.
  auto slice = truth.objects().slices.at({"t", "e7"});
  slice.endpoints[0].address = "10.0.1.1";
  slice.endpoints[0].ready = slice.endpoints[0].serving = true;
  ObjectChanges c;
  c.slices[slice.key] = slice;
  EXPECT_EQ(truth.apply(c).size(), 1u);
  if (started) src.push(std::move(c));
  bool passed = started && waitPasses(2);
  EXPECT_TRUE(passed && d.lastPassOk());
  if (passed) {
    EXPECT_FALSE(d.lastRouterPassForTest().fullObserve);
    EXPECT_EQ(d.lastRouterPassForTest().vipsCompared, 1u);
    EXPECT_EQ(d.lastRouterPassForTest().vipsPlanned, 1u);
  }
  // A delivery that changes no VIP (a slice of an unknown Service): nothing compared.
  EndpointSliceObject orphan = slice;
  orphan.key.name = "orphan";
  orphan.serviceName = "nope";
  ObjectChanges o2;
  o2.slices[orphan.key] = orphan;
  EXPECT_TRUE(truth.apply(o2).empty());
  if (passed) src.push(std::move(o2));
  passed = passed && waitPasses(3);
  EXPECT_TRUE(passed);
  if (passed) {
    EXPECT_EQ(d.lastRouterPassForTest().vipsCompared, 0u);
  }
  d.stop();
  t.join();
  expectConverged(w, truth.model());
}

}  // namespace
}  // namespace kst
