// The daemon's LoadBalancer status writing (daemon/daemon.h setLoadBalancerStatus): only the
// Lease holder writes; it plans from the API server's current Services, not from its watch
// cache, so two Services never get the same address, also right after a Lease handover; a
// Service without a free address is reported; an address just written is not read again.
#include <gtest/gtest.h>

#include <thread>

#include "daemon/daemon.h"
#include "fakes/fake_kernel.h"
#include "fakes/snapshot_source.h"

namespace kst {
namespace {

class Leader : public DecisionPublisher {
 public:
  bool leader = true;
  bool isLeader() override { return leader; }
  Status publish(const ObjectKey&, const std::string&) override { return {}; }
};

/** The API server's Services: what currentServices() reads and write() changes. */
class FakeStatusApi : public LoadBalancerStatusSink {
 public:
  std::map<ObjectKey, ServiceObject> services;
  std::atomic<int> lists{0};
  std::vector<LoadBalancerStatusChange> writes;
  Result<std::map<ObjectKey, ServiceObject>> currentServices() override {
    ++lists;
    return services;
  }
  Status write(const LoadBalancerStatusChange& c) override {
    writes.push_back(c);
    auto& s = services.at(c.service);
    s.ingressIps.clear();
    for (auto& ip : c.ingress) s.ingressIps.push_back(ip.str());
    s.ingressProxyMode = !c.ingress.empty();
    return {};
  }
};

class Problems : public ProblemSink {
 public:
  std::vector<Problem> reported;
  void report(const Problem& p) override { reported.push_back(p); }
};

ServiceObject lb(const std::string& name, const std::string& created,
                 const std::string& cls = kLoadBalancerClass) {
  ServiceObject s;
  s.key = {"team", name};
  s.uid = name;
  s.creationTimestamp = created;
  s.type = "LoadBalancer";
  s.loadBalancerClass = cls;
  return s;
}

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

class LbDaemon : public ::testing::Test {
 protected:
  /** One pass (--once) over the cache `cached` against the API `api`. */
  int once(const std::map<ObjectKey, ServiceObject>& cached, const std::string& pools) {
    ClusterObjects objs;
    objs.services = cached;
    fake::SnapshotSource src(objs);
    DaemonOptions o;
    o.once = true;
    o.agent = false;
    o.model.policy = VipPolicy{*parseVipPools(pools), {}};
    RouterReconciler router(cfg, k, nft);
    Daemon d(o, src, &router, nullptr, &problems, &leader);
    d.setLoadBalancerStatus(&api);
    return d.run();
  }
  DataplaneConfig cfg;
  fake::FakeKernel k;
  fake::FakeNft nft{cfg.nftTable};
  Leader leader;
  FakeStatusApi api;
  Problems problems;
};

TEST_F(LbDaemon, OnlyTheLeaseHolderWritesDistinctAddressesWithProxyModeOthersLeftAlone) {
  for (auto s : {lb("a", "1"), lb("b", "2"), lb("metal", "0", "example.com/other")})
    api.services[s.key] = s;
  leader.leader = false;
  EXPECT_EQ(once(api.services, "203.0.113.0/24"), 0);
  EXPECT_EQ(api.lists, 0);
  EXPECT_TRUE(api.writes.empty());

  leader.leader = true;
  EXPECT_EQ(once(api.services, "203.0.113.0/24"), 0);
  ASSERT_EQ(api.writes.size(), 2u);
  EXPECT_EQ(api.writes[0].service, (ObjectKey{"team", "a"}));
  EXPECT_EQ(api.writes[0].ingress, (std::vector<IpAddress>{ip("203.0.113.1")}));
  EXPECT_EQ(api.writes[1].ingress, (std::vector<IpAddress>{ip("203.0.113.2")}));
  EXPECT_TRUE(api.services.at({"team", "metal"}).ingressIps.empty()) << "another class's Service";
  EXPECT_EQ(api.lists, 1);
  // Converged: the next holder's pass (cache showing the writes) writes and reads nothing.
  api.writes.clear();
  EXPECT_EQ(once(api.services, "203.0.113.0/24"), 0);
  EXPECT_TRUE(api.writes.empty());
  EXPECT_EQ(api.lists, 1);
}

TEST_F(LbDaemon, ANewHolderTakesAddressesFromTheApiNotFromItsLaggingCache) {
  auto a = lb("a", "1"), b = lb("b", "2");
  api.services[a.key] = a;
  api.services[b.key] = b;
  auto cached = api.services;  // the watch has not shown the previous holder's write yet:
  auto& written = api.services.at(a.key);
  written.ingressIps = {"203.0.113.1"};
  written.ingressProxyMode = true;
  EXPECT_EQ(once(cached, "203.0.113.0/24"), 0);
  ASSERT_EQ(api.writes.size(), 1u) << "a keeps the address the API holds";
  EXPECT_EQ(api.writes[0].service, b.key);
  EXPECT_EQ(api.writes[0].ingress, (std::vector<IpAddress>{ip("203.0.113.2")}));
  EXPECT_EQ(api.services.at(a.key).ingressIps, (std::vector<std::string>{"203.0.113.1"}));
}

TEST_F(LbDaemon, LeavingTheClassClearsAndAServiceWithoutAFreeAddressIsReported) {
  auto gone = lb("gone", "0");
  gone.type = "ClusterIP";
  gone.ingressIps = {"203.0.113.7"};
  gone.ingressProxyMode = true;
  for (auto s : {gone, lb("a", "1"), lb("b", "2")}) api.services[s.key] = s;
  EXPECT_EQ(once(api.services, "203.0.113.7/32"), 0);
  // gone's address is cleared and goes to the oldest Service waiting; b finds none.
  ASSERT_EQ(api.writes.size(), 2u);
  EXPECT_EQ(api.writes[0].service, (ObjectKey{"team", "a"}));
  EXPECT_EQ(api.writes[0].ingress, (std::vector<IpAddress>{ip("203.0.113.7")}));
  EXPECT_EQ(api.writes[1].service, gone.key);
  EXPECT_TRUE(api.writes[1].ingress.empty());
  ASSERT_EQ(problems.reported.size(), 1u);
  EXPECT_EQ(problems.reported[0].kind, Problem::Kind::VipRefused);
  EXPECT_EQ(problems.reported[0].object, (ObjectKey{"team", "b"}));
  EXPECT_NE(problems.reported[0].message.find("no free IPv4 address"), std::string::npos)
      << problems.reported[0].message;
}

TEST_F(LbDaemon, AnAddressJustWrittenIsNotReadAgainWhileTheCacheCatchesUp) {
  auto a = lb("a", "1");
  api.services[a.key] = a;
  ClusterObjects objs;
  objs.services = api.services;  // the cache never shows the write in this test
  fake::SnapshotSource src(objs);
  DaemonOptions o;
  o.agent = false;
  o.model.policy = VipPolicy{*parseVipPools("203.0.113.0/24"), {}};
  RouterReconciler router(cfg, k, nft);
  Daemon d(o, src, &router, nullptr, &problems, &leader);
  d.setLoadBalancerStatus(&api);
  std::thread t([&] { d.run(); });
  auto waitPasses = [&](int n) {
    for (int i = 0; i < 500 && d.passes() < n; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return d.passes() >= n;
  };
  EXPECT_TRUE(waitPasses(1));
  d.poke();
  EXPECT_TRUE(waitPasses(2));
  d.stop();
  t.join();
  EXPECT_EQ(api.writes.size(), 1u);
  EXPECT_EQ(api.lists, 1) << "the second pass read the API again for its own write";
}

}  // namespace
}  // namespace kst
