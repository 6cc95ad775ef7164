// desired/announce.h (which VIPs are fit to announce) and reconcile/announce_reconciler.h
// against the in-memory kernel: convergence, restart adoption, withdrawals only after a failed
// router pass, the drained state file, unowned routes left alone, cleanup; daemon/drain.h.
#include "desired/announce.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "daemon/daemon.h"
#include "daemon/drain.h"
#include "fakes/fake_kernel.h"
#include "fakes/snapshot_source.h"
#include "reconcile/announce_reconciler.h"
#include "source/manifest_source.h"

namespace kst {
namespace {

using fake::FakeKernel;
constexpr uint32_t kTable = 4242;

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

TunnelService svc(const std::string& name, const std::string& vip,
                  std::vector<std::pair<std::string, bool>> eps) {  // (ip, draining)
  TunnelService t{{"default", name}, ip(vip), {}};
  for (auto& [a, d] : eps) t.endpoints.push_back(Endpoint{ip(a), "n1", true, d, ""});
  std::sort(t.endpoints.begin(), t.endpoints.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
  return t;
}

RouterPlan plan(std::vector<TunnelService> s) {
  std::sort(s.begin(), s.end(), [](auto& a, auto& b) { return a.vip < b.vip; });
  Model m;
  m.services = std::move(s);
  return planRouter(m, DataplaneConfig{}, Allocations{});
}

std::vector<std::string> vips(const std::vector<dp::Route>& routes) {
  std::vector<std::string> out;
  for (auto& r : routes) {
    EXPECT_TRUE(r.unreachable);
    EXPECT_EQ(r.key.table, kTable);
    EXPECT_EQ(r.key.prefixLen, r.key.dst.hostPrefixLen());
    out.push_back(r.key.dst.str());
  }
  return out;
}

const RouterPlan kMixed = plan({
    svc("a", "203.0.113.1", {{"10.0.0.1", false}, {"10.0.0.2", true}}),
    svc("b", "203.0.113.2", {{"10.0.0.3", true}}),  // draining only: no new flows
    svc("c", "203.0.113.3", {}),                    // no endpoints
    svc("d", "2001:db8:ffff::1", {{"2001:db8::5", false}}),
});

TEST(AnnouncePlan, OnlyVipsWithAnEndpointTakingNewFlows) {
  EXPECT_EQ(vips(announceRoutes(kMixed, kTable, false)),
            (std::vector<std::string>{"203.0.113.1", "2001:db8:ffff::1"}));
}

TEST(AnnouncePlan, DrainedOrOffAnnouncesNothing) {
  EXPECT_TRUE(announceRoutes(kMixed, kTable, true).empty());
  EXPECT_TRUE(announceRoutes(kMixed, 0, false).empty());
}

class AnnounceRec : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = std::filesystem::temp_directory_path() /
          ("kst-announce-" + std::to_string(getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir);
    drainFile = (dir / "drained").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir); }
  std::vector<std::string> table() {
    auto r = k.routes(kTable, kTable + 1);
    return r ? vips(*r) : std::vector<std::string>{"dump failed"};
  }
  std::filesystem::path dir;
  std::string drainFile;
  FakeKernel k;
};

TEST_F(AnnounceRec, ConvergesIsIdempotentAndARestartAdoptsWithoutChanges) {
  AnnounceReconciler a(kTable, k, drainFile);
  auto r = a.reconcile(kMixed, true);
  ASSERT_TRUE(r && r->ok());
  EXPECT_EQ(r->changes, 2u);
  EXPECT_EQ(table(), (std::vector<std::string>{"203.0.113.1", "2001:db8:ffff::1"}));
  EXPECT_EQ(a.reconcile(kMixed, true)->changes, 0u);
  AnnounceReconciler fresh(kTable, k, drainFile);  // a restarted daemon
  auto before = k.counts().dumps;
  EXPECT_EQ(fresh.reconcile(kMixed, true)->changes, 0u);
  EXPECT_EQ(k.counts().dumps - before, 2u);  // a route dump per family, no change
}

TEST_F(AnnounceRec, EndpointsGoneWithdrawsAndComingBackAnnounces) {
  AnnounceReconciler a(kTable, k, drainFile);
  ASSERT_TRUE(a.reconcile(kMixed, true));
  ASSERT_TRUE(a.reconcile(plan({svc("a", "203.0.113.1", {})}), true));
  EXPECT_TRUE(table().empty());
  ASSERT_TRUE(a.reconcile(plan({svc("a", "203.0.113.1", {{"10.0.0.9", false}})}), true));
  EXPECT_EQ(table(), (std::vector<std::string>{"203.0.113.1"}));
}

TEST_F(AnnounceRec, AfterAFailedRouterPassOnlyWithdraws) {
  AnnounceReconciler a(kTable, k, drainFile);
  ASSERT_TRUE(a.reconcile(plan({svc("a", "203.0.113.1", {{"10.0.0.1", false}})}), true));
  // The failed pass planned a new VIP (maybe not programmed) and dropped the old one.
  auto r = a.reconcile(plan({svc("b", "203.0.113.2", {{"10.0.0.1", false}})}), false);
  ASSERT_TRUE(r && r->ok());
  EXPECT_TRUE(table().empty());
  ASSERT_TRUE(a.reconcile(plan({svc("b", "203.0.113.2", {{"10.0.0.1", false}})}), true));
  EXPECT_EQ(table(), (std::vector<std::string>{"203.0.113.2"}));
}

TEST_F(AnnounceRec, DrainFileWithdrawsEverythingUntilRemoved) {
  AnnounceReconciler a(kTable, k, drainFile);
  ASSERT_TRUE(a.reconcile(kMixed, true));
  ASSERT_TRUE(writeDrainFile(drainFile));
  EXPECT_TRUE(a.drained());
  auto r = a.reconcile(kMixed, true);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->drained);
  EXPECT_TRUE(table().empty());
  AnnounceReconciler restarted(kTable, k, drainFile);  // the state survives a restart
  EXPECT_EQ(restarted.reconcile(kMixed, true)->changes, 0u);
  EXPECT_TRUE(table().empty());
  ASSERT_TRUE(removeDrainFile(drainFile));
  EXPECT_EQ(restarted.reconcile(kMixed, true)->changes, 2u);
}

TEST_F(AnnounceRec, UnownedRoutesInTheTableAreLeftAloneAndCleanupRemovesOwnedOnes) {
  dp::Route foreign = announceRoute(ip("198.51.100.7"), kTable);
  k.seedRoute(foreign, 12);  // another protocol's route in the same table
  AnnounceReconciler a(kTable, k, drainFile);
  ASSERT_TRUE(a.reconcile(kMixed, true));
  auto c = a.cleanup();
  ASSERT_TRUE(c && c->ok());
  EXPECT_EQ(c->changes, 2u);
  EXPECT_TRUE(table().empty());
  size_t foreignLeft = 0;
  for (auto& e : k.allRoutes()) foreignLeft += e.r.key == foreign.key && e.protocol == 12;
  EXPECT_EQ(foreignLeft, 1u);
}

TEST_F(AnnounceRec, FailuresAreReportedAndRetried) {
  AnnounceReconciler a(kTable, k, drainFile);
  k.failDumps = true;
  EXPECT_FALSE(a.reconcile(kMixed, true));
  k.failDumps = false;
  k.failWhen([](const dp::Change& c) {
    auto* r = std::get_if<dp::Route>(&c.object);
    return r && r->key.dst.isV6();
  });
  auto r = a.reconcile(kMixed, true);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->failures.size(), 1u);
  k.clearFailures();
  r = a.reconcile(kMixed, true);  // re-reads the table, adds what is missing
  ASSERT_TRUE(r && r->ok());
  EXPECT_EQ(r->changes, 1u);
  EXPECT_EQ(table(), (std::vector<std::string>{"203.0.113.1", "2001:db8:ffff::1"}));
}

TEST_F(AnnounceRec, WatcherSeesTheDrainFileComeAndGo) {
  std::atomic<int> events{0};
  DrainWatcher w(drainFile, [&] { ++events; });
  ASSERT_TRUE(w.start());
  ASSERT_TRUE(writeDrainFile(drainFile));
  auto until = [&](int n) {
    for (int i = 0; i < 200 && events < n; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return events >= n;
  };
  EXPECT_TRUE(until(1));
  int seen = events;
  std::ofstream(dir / "unrelated") << "x";  // other files in the directory do not count
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(events, seen);
  ASSERT_TRUE(removeDrainFile(drainFile));
  EXPECT_TRUE(until(seen + 1));
  w.stop();
}

TEST_F(AnnounceRec, DrainCommandWaitsForAnEmptyTableAndTimesOutOtherwise) {
  AnnounceReconciler daemonSide(kTable, k, drainFile);
  ASSERT_TRUE(daemonSide.reconcile(kMixed, true));
  AnnounceReconciler cli(kTable, k, drainFile);
  DrainOptions o;
  o.hold = std::chrono::milliseconds(10);
  o.timeout = std::chrono::milliseconds(200);
  o.poll = std::chrono::milliseconds(10);
  std::ostringstream out;
  EXPECT_EQ(drainNode(cli, drainFile, o, out), 1) << out.str();  // no daemon withdrew
  EXPECT_NE(out.str().find("still announced"), std::string::npos) << out.str();
  EXPECT_TRUE(std::filesystem::exists(drainFile));
  // With a daemon pass in between, it reports drained.
  o.timeout = std::chrono::seconds(5);
  std::thread daemon([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    (void)daemonSide.reconcile(kMixed, true);
  });
  std::ostringstream out2;
  EXPECT_EQ(drainNode(cli, drainFile, o, out2), 0) << out2.str();
  daemon.join();
  EXPECT_NE(out2.str().find("drained:"), std::string::npos) << out2.str();
  std::ostringstream out3;
  EXPECT_EQ(undrainNode(drainFile, out3), 0);
  EXPECT_FALSE(std::filesystem::exists(drainFile));
}

// The daemon runs the announcer after the router's pass: VIPs refused by policy, lost in a
// conflict or without an endpoint taking new flows are never announced.
using fake::SnapshotSource;

TEST_F(AnnounceRec, DaemonAnnouncesOnlyServableVipsAfterTheRouterPass) {
  auto objs = parseManifestText(R"(apiVersion: v1
kind: Service
metadata: {name: front, namespace: web, creationTimestamp: "2024-01-01T00:00:00Z",
           annotations: {cmd.nu/tunnel: 203.0.113.10}}
---
apiVersion: v1
kind: Service
metadata: {name: late, namespace: web, creationTimestamp: "2025-01-01T00:00:00Z",
           annotations: {cmd.nu/tunnel: 203.0.113.10}}
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: web, annotations: {cmd.nu/tunnel: not-an-ip}}
---
apiVersion: v1
kind: Service
metadata: {name: leaving, namespace: web, annotations: {cmd.nu/tunnel: 203.0.113.11}}
---
apiVersion: v1
kind: Service
metadata: {name: outside, namespace: web, annotations: {cmd.nu/tunnel: 198.51.100.7}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: outside-1, namespace: web, labels: {kubernetes.io/service-name: outside}}
addressType: IPv4
endpoints:
- {addresses: ["10.0.0.3"], nodeName: n1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: front-1, namespace: web, labels: {kubernetes.io/service-name: front}}
addressType: IPv4
endpoints:
- {addresses: ["10.0.0.1"], nodeName: n1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: leaving-1, namespace: web, labels: {kubernetes.io/service-name: leaving}}
addressType: IPv4
endpoints:
- {addresses: ["10.0.0.2"], nodeName: n1, conditions: {ready: false, serving: true, terminating: true}}
)", "x.yaml");
  ASSERT_TRUE(objs) << objs.error().message;
  DataplaneConfig cfg;
  fake::FakeNft nft(cfg.nftTable);
  RouterReconciler router(cfg, k, nft);  // k: the fixture's kernel (default tags = cfg's)
  AnnounceReconciler announce(kTable, k, drainFile);
  SnapshotSource src(*objs);
  DaemonOptions o;
  o.once = true;
  o.agent = false;
  o.model.policy = VipPolicy{{*parseVipPool("203.0.113.0/24")}, {}};  // outside's VIP is not in it
  Daemon d(o, src, &router, nullptr);
  d.setAnnouncer(&announce);
  EXPECT_EQ(d.run(), 0);
  EXPECT_EQ(table(), (std::vector<std::string>{"203.0.113.10"}));
  // The refused VIP has no kernel object at all (the router's plan is the model's).
  auto routes = k.routes(0, 0xffffffffu);
  ASSERT_TRUE(routes);
  for (auto& r : *routes) EXPECT_NE(r.key.dst.str(), "198.51.100.7");
  for (auto& vp : router.lastPlan().vips) EXPECT_NE(vp.vip.str(), "198.51.100.7");
}

}  // namespace
}  // namespace kst
