// reconcile/router_reconciler.h against the in-memory kernel (tests/fakes/fake_kernel.h):
// convergence, idempotence, restart adoption, minimal changes, cleanup that spares unowned
// objects, failure handling. Plus a daemon-level pass (daemon/daemon.h).
#include "reconcile/router_reconciler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include "daemon/daemon.h"
#include "dataplane/diff.h"
#include "desired/agent.h"
#include "desired/nft_render.h"
#include "fakes/fake_kernel.h"
#include "fakes/snapshot_source.h"
#include "source/manifest_source.h"

namespace kst {
namespace {

using fake::FakeKernel;
using fake::FakeNft;
using A = dp::Change::Action;

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

Endpoint ep(const std::string& a, bool draining = false) {
  return Endpoint{ip(a), "n1", true, draining, ""};
}

Model model(std::vector<TunnelService> s) {
  for (auto& t : s)
    std::sort(t.endpoints.begin(), t.endpoints.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
  std::sort(s.begin(), s.end(), [](auto& a, auto& b) { return a.vip < b.vip; });
  Model m;
  m.services = std::move(s);
  return m;
}

const std::string kA = "203.0.113.10", kB = "203.0.113.11", kC = "2001:db8::10";

Model sample() {
  return model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")}},
                {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4")}},
                {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}});
}

DataplaneConfig config(Mode mode = Mode::VxlanGpe) {
  DataplaneConfig cfg;
  cfg.mode = mode;
  cfg.buckets = 16;
  return cfg;
}

struct World {
  explicit World(DataplaneConfig c, bool wire = false)
      : cfg(c), nl(FakeKernel::optionsFor(c, wire)), nft(c.nftTable) {}
  DataplaneConfig cfg;
  FakeKernel nl;
  FakeNft nft;
};

PassResult pass(RouterReconciler& r, const Model& m) {
  auto res = r.reconcile(m);
  EXPECT_TRUE(res.has_value()) << (res ? "" : res.error().message);
  if (!res) return {};
  for (auto& f : res->failures) ADD_FAILURE() << "unexpected failure: " << f;
  return *res;
}

/** The fake's owned state must be exactly the desired state of a fresh plan. */
void expectConverged(World& w, const Model& m) {
  RouterReconciler probe(w.cfg, w.nl, w.nft);
  auto observed = probe.observe();
  ASSERT_TRUE(observed);
  auto prior = allocationsFrom(*observed, w.cfg);
  auto plan = planRouter(m, w.cfg, prior);
  auto desired = routerState(plan, w.cfg, prior);
  for (auto& c : dp::diffRouter(desired, *observed))
    ADD_FAILURE() << "not converged: " << dp::describe(c);
  auto nftObserved = w.nft.state();
  EXPECT_EQ(renderNftChanges(w.cfg, desired.nft, nftObserved), "");
  EXPECT_EQ(nftObserved.present, desired.nft.present);
  EXPECT_EQ(nftObserved.vips, desired.nft.vips);
  EXPECT_EQ(nftObserved.buckets, desired.nft.buckets);
}

/** Owned routes that deliver dst (via a nexthop or device): the slot tables may also hold
 *  routes that only reject traffic. */
size_t ownedRoutesTo(const FakeKernel& k, const std::string& dst, uint32_t table = 0) {
  return std::count_if(k.allRoutes().begin(), k.allRoutes().end(), [&](auto& e) {
    return e.protocol == 211 && e.r.key.dst == ip(dst) && (!table || e.r.key.table == table) &&
           (e.r.nhid != 0 || !e.r.dev.empty());
  });
}

/** A change of the route (dst, table): deleted, or replaced by one that does not deliver. */
void expectRouteWithdrawn(const dp::Change& c, const std::string& dst, uint32_t table) {
  auto* r = std::get_if<dp::Route>(&c.object);
  ASSERT_NE(r, nullptr) << dp::describe(c);
  EXPECT_EQ(r->key.dst, ip(dst)) << dp::describe(c);
  EXPECT_EQ(r->key.table, table) << dp::describe(c);
  if (c.action != A::Delete) {
    EXPECT_EQ(c.action, A::Replace) << dp::describe(c);
    EXPECT_EQ(r->nhid, 0u) << dp::describe(c);
    EXPECT_TRUE(r->dev.empty()) << dp::describe(c);
  }
}

TEST(RouterReconciler, FirstPassCreatesEverything) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  auto res = pass(r, sample());
  EXPECT_TRUE(res.ok());
  EXPECT_TRUE(res.nftRebuilt);
  EXPECT_GT(res.changes, 0u);
  EXPECT_TRUE(res.problems.empty());
  ASSERT_NE(w.nl.link("kst-vxg"), nullptr);
  EXPECT_EQ(w.nl.link("kst-vxg")->kind, dp::Link::Kind::VxlanGpe);
  // Nexthops: 10.0.0.1-4 for IPv4 routes, fd00::1-2 for IPv6 routes.
  EXPECT_EQ(w.nl.allNexthops().size(), 6u);
  EXPECT_EQ(ownedRoutesTo(w.nl, kA), 3u);
  EXPECT_EQ(ownedRoutesTo(w.nl, kB), 2u);
  EXPECT_EQ(ownedRoutesTo(w.nl, kC), 2u);  // the draining endpoint keeps its route
  EXPECT_EQ(w.nl.allRules().size(), 3u + 3u);  // slots 0-2, both families
  EXPECT_TRUE(w.nft.state().present);
  EXPECT_EQ(w.nft.state().vips, (std::set<IpAddress>{ip(kA), ip(kB), ip(kC)}));
  EXPECT_EQ(w.nft.state().buckets.size(), 3u * 16u);
  // The table is created empty through text, its elements follow as one nfnetlink batch.
  EXPECT_EQ(w.nft.applied, 2u);
  ASSERT_EQ(w.nft.scripts.size(), 1u);
  EXPECT_EQ(w.nft.scripts[0].find("element"), std::string::npos) << w.nft.scripts[0];
  ASSERT_EQ(w.nft.batches.size(), 1u);
  // Buckets, VIPs (each with its refused counter), one endpoint counter per slot in use (7),
  // bucket counts (3), and (flowtable) one live-slot element per slot in use (7).
  EXPECT_EQ(res.nftElementChanges, 3u * 16u + 3u + 7u + 3u + 7u);
  expectConverged(w, sample());
  // Buckets of the draining IPv6 endpoint: none.
  for (auto& [k, mark] : w.nft.state().buckets) {
    if (k.first == ip(kC)) EXPECT_EQ(mark, 1000u);
  }
}

TEST(RouterReconciler, SecondPassMakesZeroChanges) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  auto before = w.nl.counts();
  auto nftWrites = w.nft.applied;
  w.nl.clearLog();
  auto res = pass(r, sample());
  for (auto& c : w.nl.log()) ADD_FAILURE() << "unexpected change: " << dp::describe(c);
  EXPECT_EQ(res.changes, 0u);
  EXPECT_EQ(res.nftElementChanges, 0u);
  EXPECT_FALSE(res.nftRebuilt);
  EXPECT_EQ(w.nl.counts().changeRequests, before.changeRequests);
  EXPECT_EQ(w.nl.counts().applyCalls, before.applyCalls);
  EXPECT_EQ(w.nft.applied, nftWrites);  // neither a script nor an element batch
  EXPECT_GT(w.nl.counts().dumps, before.dumps);  // it did look
}

TEST(RouterReconciler, TheClassifierIsToldOfLinkChangesInTheSamePass) {
  World w(config());
  {
    RouterReconciler r(w.cfg, w.nl, w.nft);
    pass(r, sample());
    EXPECT_EQ(w.nft.linkRefreshes, 1u) << "the tunnel device was created";
    pass(r, sample());
    EXPECT_EQ(w.nft.linkRefreshes, 1u) << "nothing changed";
  }
  w.cfg.underlayMtu = 9000;  // a resize (LinkMtu)
  RouterReconciler r2(w.cfg, w.nl, w.nft);
  pass(r2, sample());
  EXPECT_EQ(w.nft.linkRefreshes, 2u);
}

TEST(RouterReconciler, RestartAdoptsKernelStateWithZeroChanges) {
  for (bool wire : {false, true}) {
    SCOPED_TRACE(wire ? "codec round trip" : "plain");
    World w(config(), wire);
    std::vector<int32_t> bucketsBefore;
    {
      RouterReconciler first(w.cfg, w.nl, w.nft);
      pass(first, sample());
      bucketsBefore = first.lastPlan().vips.at(0).buckets;
    }
    auto before = w.nl.counts();
    RouterReconciler restarted(w.cfg, w.nl, w.nft);  // fresh process, same kernel
    auto res = pass(restarted, sample());
    EXPECT_EQ(res.changes, 0u);
    EXPECT_EQ(w.nl.counts().changeRequests, before.changeRequests);
    EXPECT_EQ(w.nft.applied, 2u);  // the first process's skeleton and element batch only
    EXPECT_EQ(restarted.lastPlan().vips.at(0).buckets, bucketsBefore);
  }
}

/** sample() with source ranges on VIP a (IPv4) and c (IPv6; only an IPv4 range: refuse all). */
Model sampleRanged(const char* range4 = "192.0.2.0/24") {
  Model m = sample();
  for (auto& t : m.services) {
    if (t.vip == ip(kA)) t.sourceRanges = {*IpPrefix::parse(range4), *IpPrefix::parse("2001:db8:c::/48")};
    if (t.vip == ip(kC)) t.sourceRanges = {*IpPrefix::parse("198.51.100.0/24")};
  }
  return m;
}

TEST(RouterReconciler, SourceRangesAppliedAdoptedAndChangedMinimally) {
  for (bool wire : {false, true}) {
    SCOPED_TRACE(wire ? "codec round trip" : "plain");
    World w(config(), wire);
    {
      RouterReconciler first(w.cfg, w.nl, w.nft);
      pass(first, sampleRanged());
    }
    const auto& st = w.nft.state();
    EXPECT_EQ(st.sourceRanges,
              (std::map<IpAddress, std::vector<dp::SourceInterval>>{
                  {ip(kA), {{ip("192.0.2.0"), ip("192.0.2.255")}}}, {ip(kC), {}}}));
    expectConverged(w, sampleRanged());
    // A restart adopts the ranges and the counters: nothing to change.
    auto writes = w.nft.applied;
    RouterReconciler restarted(w.cfg, w.nl, w.nft);
    auto res = pass(restarted, sampleRanged());
    EXPECT_EQ(res.changes, 0u);
    EXPECT_EQ(w.nft.applied, writes);
    // One range changed: one interval deleted, one added.
    res = pass(restarted, sampleRanged("192.0.3.0/24"));
    EXPECT_EQ(res.nftElementChanges, 2u);
    EXPECT_EQ(w.nft.state().sourceRanges.at(ip(kA)),
              (std::vector<dp::SourceInterval>{{ip("192.0.3.0"), ip("192.0.3.255")}}));
    // Ranges removed: the VIPs are no longer filtered.
    res = pass(restarted, sample());
    EXPECT_EQ(res.nftElementChanges, 1u + 1u + 1u);  // an interval, two ranged elements
    EXPECT_TRUE(w.nft.state().sourceRanges.empty());
    expectConverged(w, sample());
    // The fake's counters: one series per VIP and per (VIP, endpoint).
    auto snap = restarted.readCounters();
    ASSERT_TRUE(snap);
    EXPECT_EQ(snap->vip.size(), 3u);
    EXPECT_EQ(snap->endpoint.size(), 7u);
    EXPECT_TRUE(snap->endpoint.contains({ip(kC), ip("fd00::2")}));
  }
}

TEST(RouterReconciler, RestartAdoptionInEveryFlowModeThroughTheCodec) {
  for (Mode mode : {Mode::VxlanGpe, Mode::Ipip, Mode::GreFlow, Mode::Gre}) {
    SCOPED_TRACE(modeName(mode));
    World w(config(mode), /*wire=*/true);
    {
      RouterReconciler first(w.cfg, w.nl, w.nft);
      pass(first, sample());
    }
    w.nl.clearLog();
    RouterReconciler restarted(w.cfg, w.nl, w.nft);
    auto res = pass(restarted, sample());
    EXPECT_EQ(res.changes, 0u);
    for (auto& c : w.nl.log()) ADD_FAILURE() << "unexpected change after restart: " << dp::describe(c);
    auto res2 = pass(restarted, sample());
    EXPECT_EQ(res2.changes, 0u);
  }
}

TEST(RouterReconciler, UnderlayMtuChangeSetsTheDeviceMtuInPlace) {
  for (Mode mode : {Mode::VxlanGpe, Mode::Ipip, Mode::GreFlow, Mode::Gre}) {
    SCOPED_TRACE(modeName(mode));
    World w(config(mode), /*wire=*/true);
    w.cfg.underlayMtu = 9000;
    {
      RouterReconciler first(w.cfg, w.nl, w.nft);
      pass(first, sample());
    }
    std::map<std::string, std::pair<uint32_t, uint32_t>> before;  // name → (ifindex, mtu)
    for (auto& l : w.nl.allLinks())
      if (l.name.starts_with("kst")) before[l.name] = {l.ifindex, l.mtu};
    ASSERT_FALSE(before.empty());
    for (auto& [name, im] : before) EXPECT_GT(im.second, 8900u) << name;
    const auto nexthops = w.nl.allNexthops().size();
    const auto routes = w.nl.allRoutes().size();
    // Restarted with another --underlay-mtu: one MTU change per device, nothing recreated.
    w.cfg.underlayMtu = 1500;
    w.nl.clearLog();
    RouterReconciler restarted(w.cfg, w.nl, w.nft);
    auto res = pass(restarted, sample());
    EXPECT_EQ(res.changes, before.size());
    for (auto& c : w.nl.log()) {
      auto* m = std::get_if<dp::LinkMtu>(&c.object);
      ASSERT_NE(m, nullptr) << "unexpected change: " << dp::describe(c);
      EXPECT_EQ(m->mtu, routerLinkMtu(w.cfg, m->name.starts_with("kst-ip6") ? Family::V6 : Family::V4));
    }
    for (auto& l : w.nl.allLinks())
      if (before.contains(l.name)) {
        EXPECT_EQ(l.ifindex, before[l.name].first) << l.name;
        EXPECT_LT(l.mtu, 1500u) << l.name;
      }
    EXPECT_EQ(w.nl.allNexthops().size(), nexthops);
    EXPECT_EQ(w.nl.allRoutes().size(), routes);
    expectConverged(w, sample());
    // And once there, nothing more.
    w.nl.clearLog();
    EXPECT_EQ(pass(restarted, sample()).changes, 0u);
  }
}

TEST(RouterReconciler, DeviceMtuChangedBehindOurBackIsRepaired) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  r.setCaching(true);
  pass(r, sample());
  ASSERT_EQ(w.nl.link("kst-vxg")->mtu, 1464u);
  // `ip link set kst-vxg mtu 1500`, then a resync (a fresh look at the kernel).
  auto res = w.nl.apply({{A::Replace, dp::LinkMtu{"kst-vxg", 1500}}});
  ASSERT_TRUE(res && res->empty());
  r.resyncNextPass();
  w.nl.clearLog();
  pass(r, sample());
  ASSERT_EQ(w.nl.log().size(), 1u);
  EXPECT_EQ(dp::describe(w.nl.log()[0]), "replace link kst-vxg mtu 1464");
  EXPECT_EQ(w.nl.link("kst-vxg")->mtu, 1464u);
}

TEST(RouterReconciler, RemovingAnEndpointChangesOnlyItsRouteAndBuckets) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  const auto nftBefore = w.nft.state();
  auto slotsBefore = r.lastPlan().vips;
  w.nl.clearLog();
  // 10.0.0.2 leaves VIP A (slot 1 there) but still serves VIP B: its nexthop stays.
  auto m = model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.3")}},
                  {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4")}},
                  {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}});
  auto res = pass(r, m);
  ASSERT_EQ(w.nl.log().size(), 1u);
  expectRouteWithdrawn(w.nl.log()[0], kA, 1001);
  EXPECT_EQ(ownedRoutesTo(w.nl, kA, 1001), 0u);
  EXPECT_EQ(ownedRoutesTo(w.nl, kA), 2u);
  // nft: only b2s4 elements of VIP A changed; those 10.0.0.2 owned all moved.
  ASSERT_EQ(w.nft.scripts.size(), 1u);  // the skeleton of the first pass only
  ASSERT_EQ(w.nft.batches.size(), 2u);
  const auto& script = w.nft.batches.back();
  EXPECT_EQ(script.find("table inet"), std::string::npos) << "no table rebuild expected:\n" << script;
  EXPECT_EQ(script.find(kB), std::string::npos) << script;
  EXPECT_EQ(script.find("vip4"), std::string::npos) << script;
  EXPECT_EQ(script.find("b2s6"), std::string::npos) << script;
  const auto& after = w.nft.state();
  size_t changedA = 0;
  for (auto& [k, mark] : nftBefore.buckets) {
    if (k.first != ip(kA)) {
      EXPECT_EQ(after.buckets.at(k), mark);
      continue;
    }
    if (mark == 1001u) {
      EXPECT_NE(after.buckets.at(k), 1001u);  // the leaver's buckets moved
    }
    changedA += after.buckets.at(k) != mark;
  }
  // A delete and an add per changed bucket, the leaver's endpoint counter element and (both
  // features) the released slot's live element.
  EXPECT_EQ(res.nftElementChanges, 2 * changedA + 2);
  EXPECT_FALSE(w.nft.state().endpoints.at(ip(kA)).contains(1001u));
  // Survivors keep their slots (tables 1000 and 1002).
  EXPECT_EQ(r.lastPlan().vips[0].slots, (std::vector<uint32_t>{0, 2}));
  expectConverged(w, m);
}

TEST(RouterReconciler, RemovingAnEndpointOfNoOtherVipDeletesItsNexthop) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  w.nl.clearLog();
  auto m = model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")}},
                  {{"web", "b"}, ip(kB), {ep("10.0.0.2")}},
                  {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}});
  pass(r, m);
  ASSERT_EQ(w.nl.log().size(), 2u);
  expectRouteWithdrawn(w.nl.log()[0], kB, 1001);
  EXPECT_EQ(w.nl.log()[1].action, A::Delete);
  EXPECT_EQ(std::get<dp::Nexthop>(w.nl.log()[1].object).encapDst, ip("10.0.0.4"));
  expectConverged(w, m);
}

TEST(RouterReconciler, AddingAnEndpointAddsOneNexthopAndRoute) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  w.nl.clearLog();
  auto m = model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")}},
                  {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4"), ep("10.0.0.9")}},
                  {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}});
  pass(r, m);
  ASSERT_EQ(w.nl.log().size(), 2u);
  EXPECT_EQ(w.nl.log()[0].action, A::Add);
  EXPECT_EQ(std::get<dp::Nexthop>(w.nl.log()[0].object).encapDst, ip("10.0.0.9"));
  EXPECT_EQ(std::get<dp::Nexthop>(w.nl.log()[0].object).id, w.cfg.nexthopIdBase + 6);
  // B's slot 2 had no endpoint: the route there is created or takes over its key.
  EXPECT_NE(w.nl.log()[1].action, A::Delete);
  const auto& added = std::get<dp::Route>(w.nl.log()[1].object);
  EXPECT_EQ(added.key.dst, ip(kB));
  EXPECT_EQ(added.key.table, 1002u);
  EXPECT_EQ(added.nhid, w.cfg.nexthopIdBase + 6);
  expectConverged(w, m);
}

// Hitless order: new nexthops/routes exist before nft points buckets at them; nft moves
// buckets (and VIPs) away before their routes/nexthops are withdrawn.
TEST(RouterReconciler, NftStepSitsBetweenNetlinkAddsAndWithdrawals) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  std::vector<std::string> journal;
  w.nl.journal = &journal;
  w.nft.journal = &journal;
  // One pass: 10.0.0.9 joins B, 10.0.0.4 leaves B, VIP C goes away entirely.
  auto m = model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")}},
                  {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.9")}}});
  pass(r, m);
  auto at = [&](const std::string& needle) -> long {
    for (size_t i = 0; i < journal.size(); ++i)
      if (journal[i].find(needle) != std::string::npos) return static_cast<long>(i);
    ADD_FAILURE() << "not in journal: " << needle;
    return -1;
  };
  const long nft = at("nft: ");
  ASSERT_EQ(std::count_if(journal.begin(), journal.end(),
                          [](auto& j) { return j.starts_with("nft: "); }),
            1);
  EXPECT_LT(at("add nexthop " + std::to_string(w.cfg.nexthopIdBase + 6)), nft);
  // (10.0.0.9 takes slot 2: slot 1, which 10.0.0.4 leaves, is held.)
  EXPECT_LT(at("203.0.113.11/32 table 1002 nhid " + std::to_string(w.cfg.nexthopIdBase + 6)), nft);
  EXPECT_GT(at("delete nexthop " + std::to_string(w.cfg.nexthopIdBase + 3)), nft);  // 10.0.0.4
  EXPECT_GT(at("2001:db8::10/128 table 1000"), nft);
  EXPECT_GT(at("delete nexthop " + std::to_string(w.cfg.nexthopIdBase + 4)), nft);  // fd00::1
  EXPECT_NE(journal[nft].find("delete element inet kube_service_tunnel vip6 { 2001:db8::10 }"),
            std::string::npos)
      << journal[nft];
  expectConverged(w, m);
}

TEST(RouterReconciler, RemovingAllServicesSparesUnownedObjects) {
  World w(config());
  // Someone else's objects: a link without our prefix, a static route in one of "our" tables,
  // a rule and a nexthop of another protocol, an address without our tag.
  dp::Link eth0;
  eth0.name = "eth0";
  w.nl.seedLink(eth0);
  dp::Route foreign;
  foreign.key = {Family::V4, 1000, ip("192.0.2.1"), 32};
  foreign.dev = "eth0";
  w.nl.seedRoute(foreign, /*RTPROT_STATIC*/ 4);
  w.nl.seedRule({Family::V4, 1000, 7, 1000}, /*RTPROT_BOOT*/ 3);
  dp::Nexthop otherNh;
  otherNh.id = 7;  // outside the owned id range (ids are global: inside it would clash)
  otherNh.dev = "eth0";
  w.nl.seedNexthop(otherNh, 3);
  w.nl.seedAddress({"eth0", ip("192.0.2.10"), 24}, 0);

  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  EXPECT_GT(w.nl.allRoutes().size(), 1u);
  auto res = pass(r, Model{});
  EXPECT_TRUE(res.ok());
  EXPECT_FALSE(w.nft.state().present);
  ASSERT_EQ(w.nl.allLinks().size(), 2u);  // lo and eth0
  EXPECT_NE(w.nl.link("eth0"), nullptr);
  ASSERT_EQ(w.nl.allRoutes().size(), 1u);
  EXPECT_TRUE(w.nl.allRoutes()[0].r.sameConfig(foreign));
  EXPECT_EQ(w.nl.allRoutes()[0].protocol, 4);
  ASSERT_EQ(w.nl.allRules().size(), 1u);
  EXPECT_EQ(w.nl.allRules()[0].r, (dp::Rule{Family::V4, 1000, 7, 1000}));
  ASSERT_EQ(w.nl.allNexthops().size(), 1u);
  EXPECT_EQ(w.nl.allNexthops()[0].protocol, 3);
  ASSERT_EQ(w.nl.allAddresses().size(), 1u);
  EXPECT_EQ(w.nl.allAddresses()[0].a.ip, ip("192.0.2.10"));
  // And again: nothing left to do.
  auto again = pass(r, Model{});
  EXPECT_EQ(again.changes, 0u);
}

TEST(RouterReconciler, CleanupRemovesEverythingOwned) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  RouterReconciler other(w.cfg, w.nl, w.nft);  // `kube-service-tunnel cleanup` is a new process
  auto res = other.cleanup();
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->ok());
  EXPECT_EQ(w.nl.allLinks().size(), 1u);  // lo
  EXPECT_TRUE(w.nl.allNexthops().empty());
  EXPECT_TRUE(w.nl.allRoutes().empty());
  EXPECT_TRUE(w.nl.allRules().empty());
  EXPECT_FALSE(w.nft.state().present);
}

TEST(RouterReconciler, DriftIsRepaired) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  // Someone deletes a route and an nft element behind our back.
  w.nl.eraseRouteIf([](const dp::Route& x) { return x.key.dst == ip(kB) && x.key.table == 1001; });
  w.nft.mutableState().buckets.erase({ip(kA), 3});
  w.nl.clearLog();
  auto res = pass(r, sample());
  ASSERT_EQ(w.nl.log().size(), 1u);
  EXPECT_EQ(w.nl.log()[0].action, A::Add);
  EXPECT_EQ(std::get<dp::Route>(w.nl.log()[0].object).key.dst, ip(kB));
  EXPECT_EQ(res.nftElementChanges, 1u);
  expectConverged(w, sample());
}

TEST(RouterReconciler, FailedChangeIsReportedAndRetriedNextPass) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  w.nl.failWhen([](const dp::Change& c) {
    auto* nh = std::get_if<dp::Nexthop>(&c.object);
    return nh && nh->encapDst == ip("10.0.0.3");
  });
  auto res = r.reconcile(sample());
  ASSERT_TRUE(res);
  EXPECT_FALSE(res->ok());
  // The nexthop fails, so does the route that needs it; everything else is in place.
  ASSERT_EQ(res->failures.size(), 2u);
  EXPECT_NE(res->failures[0].find("nexthop"), std::string::npos) << res->failures[0];
  EXPECT_NE(res->failures[1].find("route"), std::string::npos) << res->failures[1];
  EXPECT_EQ(ownedRoutesTo(w.nl, kA), 2u);
  EXPECT_EQ(ownedRoutesTo(w.nl, kB), 2u);
  w.nl.clearFailures();
  w.nl.clearLog();
  auto retry = pass(r, sample());
  EXPECT_TRUE(retry.ok());
  ASSERT_EQ(w.nl.log().size(), 2u);
  EXPECT_EQ(std::get<dp::Nexthop>(w.nl.log()[0].object).encapDst, ip("10.0.0.3"));
  EXPECT_EQ(std::get<dp::Route>(w.nl.log()[1].object).key.table, 1002u);
  expectConverged(w, sample());
  EXPECT_EQ(pass(r, sample()).changes, 0u);
}

TEST(RouterReconciler, NftFailureIsReportedAndRetried) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  w.nft.failRuns = true;
  auto res = r.reconcile(sample());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->failures.size(), 1u);
  EXPECT_NE(res->failures[0].find("injected"), std::string::npos);
  EXPECT_FALSE(w.nft.state().present);
  EXPECT_EQ(ownedRoutesTo(w.nl, kA), 3u);  // netlink side went ahead
  w.nft.failRuns = false;
  auto retry = pass(r, sample());
  EXPECT_TRUE(retry.nftRebuilt);
  expectConverged(w, sample());
}

TEST(RouterReconciler, ObservationFailureIsAnError) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  w.nl.failDumps = true;
  auto res = r.reconcile(sample());
  ASSERT_FALSE(res);
  EXPECT_NE(res.error().message.find("dump links"), std::string::npos) << res.error().message;
  w.nl.failDumps = false;
  w.nft.failObserve = true;
  auto res2 = r.reconcile(sample());
  ASSERT_FALSE(res2);
  EXPECT_NE(res2.error().message.find("list nftables"), std::string::npos);
  EXPECT_EQ(w.nl.counts().changeRequests, 0u);
}

TEST(RouterReconciler, SkeletonChangeRebuildsTableOnce) {
  World w(config());
  {
    RouterReconciler r(w.cfg, w.nl, w.nft);
    pass(r, sample());
  }
  auto cfg2 = w.cfg;
  cfg2.hashSeed = 0x1234;  // an upgrade that changes the classifier rules
  RouterReconciler r2(cfg2, w.nl, w.nft);
  w.nl.clearLog();
  auto res = pass(r2, sample());
  EXPECT_TRUE(res.nftRebuilt);
  EXPECT_TRUE(w.nl.log().empty());  // routes untouched
  EXPECT_TRUE(w.nft.scripts.back().starts_with("delete table inet kube_service_tunnel\n"));
  auto again = pass(r2, sample());
  EXPECT_EQ(again.changes, 0u);
}

// ---- Flows pinned to released slots (docs/load-balancing.md "Released slots") ----

std::set<uint32_t> liveMarks(const World& w, const std::string& vip) {
  std::set<uint32_t> out;
  for (const auto& l : w.nft.state().live)
    if (l.vip == ip(vip)) out.insert(l.mark);
  return out;
}

uint32_t slotOf(const RouterReconciler& r, const std::string& vip, const std::string& endpoint) {
  for (const auto& vp : r.lastPlan().vips)
    if (vp.vip == ip(vip))
      for (size_t i = 0; i < vp.endpoints.size(); ++i)
        if (vp.endpoints[i].ip == ip(endpoint)) return vp.slots[i];
  return UINT32_MAX;
}

TEST(RouterReconciler, LiveSlotsAreEveryRoutedEndpointDrainingIncluded) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  EXPECT_EQ(liveMarks(w, kA), (std::set<uint32_t>{1000, 1001, 1002}));
  EXPECT_EQ(liveMarks(w, kB), (std::set<uint32_t>{1000, 1001}));
  EXPECT_EQ(liveMarks(w, kC), (std::set<uint32_t>{1000, 1001}));  // fd00::2 drains
  EXPECT_EQ(w.nft.state().live.size(), 7u);
}

TEST(RouterReconciler, RemovedEndpointsSlotLeavesTheLiveSetWithItsBucketsInOneBatch) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  // 10.0.0.2 leaves VIP A (slot 1 there, mark 1001); it still serves B, whose pins stay valid.
  auto m = model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.3")}},
                  {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4")}},
                  {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}});
  auto res = pass(r, m);
  EXPECT_EQ(res.releasedSlots, 1u);
  EXPECT_EQ(liveMarks(w, kA), (std::set<uint32_t>{1000, 1002}));
  EXPECT_EQ(liveMarks(w, kB), (std::set<uint32_t>{1000, 1001}));
  // One transaction: the live element goes with the bucket changes (no flow-table walk).
  ASSERT_FALSE(w.nft.batches.empty());
  const std::string& b = w.nft.batches.back();
  EXPECT_NE(b.find("delete element inet kube_service_tunnel live4 { 203.0.113.10 . 0x3e9 }"),
            std::string::npos) << b;
  EXPECT_NE(b.find("b2s4"), std::string::npos) << b;
  EXPECT_EQ(pass(r, m).releasedSlots, 0u);  // released once
}

TEST(RouterReconciler, RemovedVipReleasesEverySlotOfIt) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  // B goes, and so does C with its draining endpoint (its slot is released with the VIP).
  auto res = pass(r, model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")}}}));
  EXPECT_EQ(res.releasedSlots, 4u);
  EXPECT_TRUE(liveMarks(w, kB).empty());
  EXPECT_TRUE(liveMarks(w, kC).empty());
  EXPECT_EQ(liveMarks(w, kA).size(), 3u);
}

TEST(RouterReconciler, DrainingEndpointKeepsItsPinnedFlowsUntilItIsGone) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  auto draining = model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.2", true), ep("10.0.0.3")}},
                         {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4")}},
                         {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}});
  auto res = pass(r, draining);
  EXPECT_GT(res.nftElementChanges, 0u);  // its buckets moved
  EXPECT_EQ(res.releasedSlots, 0u);      // its slot (and the flows pinned to it) did not
  EXPECT_EQ(liveMarks(w, kA), (std::set<uint32_t>{1000, 1001, 1002}));
  auto gone = model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.3")}},
                     {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4")}},
                     {{"web", "c"}, ip(kC), {ep("fd00::1")}}});
  res = pass(r, gone);
  EXPECT_EQ(res.releasedSlots, 2u);  // A's slot 1 and the IPv6 VIP's, exactly (daddr . mark)
  EXPECT_EQ(liveMarks(w, kA), (std::set<uint32_t>{1000, 1002}));
  EXPECT_EQ(liveMarks(w, kC), (std::set<uint32_t>{1000}));
  EXPECT_EQ(liveMarks(w, kB), (std::set<uint32_t>{1000, 1001}));
}

TEST(RouterReconciler, ReleasedSlotGoesToNoOtherEndpointUntilTheFlowTimeoutPassed) {
  auto cfg = config();
  cfg.flowTimeoutSeconds = 0;  // held for the margin alone: one second
  World w(cfg);
  RouterReconciler r(w.cfg, w.nl, w.nft);
  pass(r, sample());
  ASSERT_EQ(slotOf(r, kA, "10.0.0.2"), 1u);
  // 10.0.0.2 leaves A and 10.0.0.9 joins in the same pass: slot 1 is not reused, or the flows
  // still pinned to (A, 1001) would reach 10.0.0.9.
  auto m = [](std::vector<Endpoint> a) {
    return model({{{"web", "a"}, ip(kA), std::move(a)},
                  {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4")}},
                  {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}});
  };
  auto res = pass(r, m({ep("10.0.0.1"), ep("10.0.0.3"), ep("10.0.0.9")}));
  EXPECT_EQ(res.releasedSlots, 1u);
  EXPECT_EQ(slotOf(r, kA, "10.0.0.9"), 3u);
  EXPECT_EQ(liveMarks(w, kA), (std::set<uint32_t>{1000, 1002, 1003}));
  // Still held in a later pass.
  pass(r, m({ep("10.0.0.1"), ep("10.0.0.3"), ep("10.0.0.8"), ep("10.0.0.9")}));
  EXPECT_EQ(slotOf(r, kA, "10.0.0.8"), 4u);
  // Other VIPs' slot 1 is not held.
  pass(r, model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.3"), ep("10.0.0.8"), ep("10.0.0.9")}},
                 {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4")}},
                 {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}},
                 {{"web", "d"}, ip("203.0.113.12"), {ep("10.0.0.5"), ep("10.0.0.6")}}}));
  EXPECT_EQ(slotOf(r, "203.0.113.12", "10.0.0.6"), 1u);
  // Once the hold has passed, the lowest free slot is 1 again.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  pass(r, m({ep("10.0.0.1"), ep("10.0.0.3"), ep("10.0.0.7"), ep("10.0.0.8"), ep("10.0.0.9")}));
  EXPECT_EQ(slotOf(r, kA, "10.0.0.7"), 1u);
  expectConverged(w, m({ep("10.0.0.1"), ep("10.0.0.3"), ep("10.0.0.7"), ep("10.0.0.8"), ep("10.0.0.9")}));
}

TEST(RouterReconciler, RestartHoldsFreeSlotsBelowTheKernelsSlotCount) {
  World w(config());
  {
    RouterReconciler first(w.cfg, w.nl, w.nft);
    pass(first, sample());
    pass(first, model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.3")}},
                       {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4")}},
                       {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}}));
  }
  // The next process does not know that A's slot 1 was released a moment ago: a new endpoint
  // of A takes slot 3 (the kernel has slot tables 0 … 2), not 1.
  RouterReconciler again(w.cfg, w.nl, w.nft);
  auto res = pass(again, model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.3"), ep("10.0.0.9")}},
                                {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4")}},
                                {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}}));
  EXPECT_EQ(slotOf(again, kA, "10.0.0.9"), 3u);
  EXPECT_EQ(res.releasedSlots, 0u);
  // A restart with unchanged endpoints changes nothing.
  RouterReconciler third(w.cfg, w.nl, w.nft);
  EXPECT_EQ(pass(third, model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.3"), ep("10.0.0.9")}},
                               {{"web", "b"}, ip(kB), {ep("10.0.0.2"), ep("10.0.0.4")}},
                               {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}}))
                .changes,
            0u);
}

TEST(RouterReconciler, AReleaseWhileDownIsReleasedByTheFirstPass) {
  World w(config());
  {
    RouterReconciler first(w.cfg, w.nl, w.nft);
    pass(first, sample());
  }
  RouterReconciler again(w.cfg, w.nl, w.nft);
  auto res = pass(again, model({{{"web", "a"}, ip(kA), {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")}},
                                {{"web", "b"}, ip(kB), {ep("10.0.0.2")}},
                                {{"web", "c"}, ip(kC), {ep("fd00::1"), ep("fd00::2", true)}}}));
  EXPECT_EQ(res.releasedSlots, 1u);
  EXPECT_EQ(liveMarks(w, kB), (std::set<uint32_t>{1000}));
}

TEST(RouterReconciler, IncrementalPassesReleaseSlotsToo) {
  World w(config());
  RouterReconciler r(w.cfg, w.nl, w.nft);
  r.setCaching(true);
  // Enough VIPs that a change of one takes the per-VIP path (router_reconciler.h).
  auto m = [](std::vector<Endpoint> b) {
    std::vector<TunnelService> s{{{"web", "b"}, ip(kB), std::move(b)}};
    for (int i = 0; i < 6; ++i)
      s.push_back({{"web", "f" + std::to_string(i)}, ip("203.0.113." + std::to_string(20 + i)),
                   {ep("10.0.0.1"), ep("10.0.0.3")}});
    return model(s);
  };
  pass(r, m({ep("10.0.0.2"), ep("10.0.0.4")}));
  auto res = pass(r, m({ep("10.0.0.2"), ep("10.0.0.4", true)}));
  EXPECT_FALSE(res.fullObserve);
  EXPECT_GT(res.changes, 0u);
  EXPECT_EQ(res.releasedSlots, 0u);
  res = pass(r, m({ep("10.0.0.2")}));
  EXPECT_FALSE(res.fullObserve);
  EXPECT_EQ(res.releasedSlots, 1u);
  EXPECT_EQ(liveMarks(w, kB), (std::set<uint32_t>{1000}));
  // A new endpoint in the same cached path does not get the held slot 1.
  res = pass(r, m({ep("10.0.0.2"), ep("10.0.0.5")}));
  EXPECT_EQ(slotOf(r, kB, "10.0.0.5"), 2u);
  EXPECT_EQ(liveMarks(w, kB), (std::set<uint32_t>{1000, 1002}));
  expectConverged(w, m({ep("10.0.0.2"), ep("10.0.0.5")}));
}

// Buckets grow with the endpoints (hashing/balance.h); slots do not: more endpoints than
// --max-slots is the problem that is left.
TEST(RouterReconciler, TooManyEndpointsProblemIsReported) {
  auto cfg = config();
  cfg.maxSlots = 2;
  World w(cfg);
  RouterReconciler r(w.cfg, w.nl, w.nft);
  auto res = pass(r, sample());
  ASSERT_EQ(res.problems.size(), 1u);
  EXPECT_EQ(res.problems[0].kind, Problem::Kind::TooManyEndpoints);
  EXPECT_EQ(res.problems[0].object, (ObjectKey{"web", "a"}));
}

// ------------------------------------------------------------------------- daemon level

using fake::SnapshotSource;

class RecordingSink : public ProblemSink {
 public:
  void report(const Problem& p) override { problems.push_back(p); }
  void resolved(const Problem& p) override { gone.push_back(p); }
  std::vector<Problem> problems, gone;
};

const char* kManifests = R"(apiVersion: v1
kind: Service
metadata: {name: front, namespace: web, creationTimestamp: "2024-01-01T00:00:00Z",
           annotations: {cmd.nu/tunnel: 203.0.113.10}}
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: web, annotations: {cmd.nu/tunnel: not-an-ip}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: front-1, namespace: web, labels: {kubernetes.io/service-name: front}}
addressType: IPv4
endpoints:
- {addresses: ["10.0.0.1"], nodeName: n1}
- {addresses: ["10.0.0.2"], nodeName: n2, conditions: {ready: false, serving: true, terminating: true}}
)";

TEST(Daemon, OncePassProgramsKernelAndReportsProblems) {
  auto objs = parseManifestText(kManifests, "demo.yaml");
  ASSERT_TRUE(objs) << objs.error().message;
  World w(config());
  RouterReconciler router(w.cfg, w.nl, w.nft);
  SnapshotSource src(*objs);
  RecordingSink sink;
  DaemonOptions o;
  o.once = true;
  o.agent = false;
  Daemon d(o, src, &router, nullptr, &sink);
  EXPECT_EQ(d.run(), 0);
  EXPECT_EQ(src.starts, 1);
  EXPECT_EQ(src.stops, 1);
  EXPECT_EQ(ownedRoutesTo(w.nl, kA), 2u);
  ASSERT_EQ(sink.problems.size(), 1u);
  EXPECT_EQ(sink.problems[0].kind, Problem::Kind::InvalidAnnotation);
  EXPECT_EQ(sink.problems[0].object, (ObjectKey{"web", "broken"}));
  // Draining 10.0.0.2: route kept, no buckets.
  for (auto& [k, mark] : w.nft.state().buckets) EXPECT_EQ(mark, 1000u);

  // A restarted daemon over the same kernel changes nothing.
  auto changesBefore = w.nl.counts().changeRequests;
  auto nftWritesBefore = w.nft.applied;
  RouterReconciler router2(w.cfg, w.nl, w.nft);
  SnapshotSource src2(*objs);
  Daemon d2(o, src2, &router2, nullptr, nullptr);
  EXPECT_EQ(d2.run(), 0);
  EXPECT_EQ(w.nl.counts().changeRequests, changesBefore);
  EXPECT_EQ(w.nft.applied, nftWritesBefore);
}

TEST(Daemon, AProblemThatGoesAwayIsResolvedInTheSink) {
  auto objs = parseManifestText(kManifests, "demo.yaml");
  ASSERT_TRUE(objs) << objs.error().message;
  World w(config());
  RouterReconciler router(w.cfg, w.nl, w.nft);
  SnapshotSource src(*objs);
  RecordingSink sink;
  DaemonOptions o;
  o.agent = false;
  Daemon d(o, src, &router, nullptr, &sink);
  std::thread t([&] { d.run(); });
  auto waitPasses = [&](int n) {
    for (int i = 0; i < 500 && d.passes() < n; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return d.passes() >= n;
  };
  EXPECT_TRUE(waitPasses(1));
  ObjectChanges fixed;
  fixed.services[{"web", "broken"}] = std::nullopt;  // the Service with the bad annotation goes
  d.onChanges(fixed);
  EXPECT_TRUE(waitPasses(2));
  d.stop();
  t.join();
  ASSERT_EQ(sink.problems.size(), 1u);
  ASSERT_EQ(sink.gone.size(), 1u);
  EXPECT_EQ(sink.gone[0], sink.problems[0]);
}

TEST(Daemon, OncePassFailureGivesExitCode1) {
  auto objs = parseManifestText(kManifests, "demo.yaml");
  ASSERT_TRUE(objs);
  World w(config());
  w.nft.failRuns = true;
  RouterReconciler router(w.cfg, w.nl, w.nft);
  SnapshotSource src(*objs);
  DaemonOptions o;
  o.once = true;
  Daemon d(o, src, &router, nullptr);
  EXPECT_EQ(d.run(), 1);
}

}  // namespace
}  // namespace kst
