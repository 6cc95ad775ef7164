// Hitless tunnel-node failover and endpoint draining, with a true DSR return path: replies go
// from the nodes to the client without passing through any router namespace.
#include <nlohmann/json.hpp>

#include <set>

#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10";

class Failover : public E2E {
 protected:
  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    topology(2, 2);  // routers rt (198.18.0.1) and rt2 (198.18.0.2)
    for (auto p : {"p1a", "p1b", "p2a", "p2b"}) serve(p);
    writeEndpoints(false);
    startRouter("rt");
    startRouter("rt2");
    startAgent(1);
    startAgent(2);
  }
  void writeEndpoints(bool drainP1a, bool dropP1a = false) {
    std::vector<Ep> eps;
    if (!dropP1a) eps.push_back({"198.19.1.2", "node1", !drainP1a, true, drainP1a});
    eps.push_back({"198.19.1.3", "node1"});
    eps.push_back({"198.19.2.2", "node2"});
    eps.push_back({"198.19.2.3", "node2"});
    writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" + sliceYaml("web", "IPv4", eps));
  }
  void via(const std::string& routerIp) {
    ASSERT_EQ(in("cl", "ip route replace 203.0.113.0/24 via " + routerIp).rc, 0);
  }
  /** Owned routing state of a router with its slot numbering abstracted away: for each bucket,
   *  the endpoint its packets are encapsulated to ("" when it cannot be read consistently). */
  std::string decisions(const std::string& r) {
    std::map<uint32_t, std::string> endpointOfMark;
    std::string result;
    auto all = bucketMarks(r);  // (a named map: the loop must not outlive it)
    for (auto& [bucket, mark] : all[kVip]) {
      if (!endpointOfMark.contains(mark)) {
        // table <mark>: "203.0.113.10 nhid N ..." → nexthop N: "... dst POD ..."
        auto rt = out(r, "ip route show table " + std::to_string(mark) + " " + kVip);
        auto nh = rt.find("nhid ");
        if (nh == std::string::npos) return "";
        auto n = out(r, "ip nexthop show id " + rt.substr(nh + 5, rt.find(' ', nh + 5) - nh - 5));
        auto d = n.find("dst ");
        if (d == std::string::npos) return "";
        endpointOfMark[mark] = n.substr(d + 4, n.find(' ', d + 4) - d - 4);
      }
      result += std::to_string(bucket) + "->" + endpointOfMark[mark] + "\n";
    }
    return result;
  }
};

TEST_F(Failover, HundredConnectionsSurviveSwitchingRoutersBackAndRestartingA) {
  ASSERT_TRUE(reachable(kVip));
  via("198.18.0.2");
  ASSERT_TRUE(reachable(kVip));
  via("198.18.0.1");
  // Both routers decide identically, bucket by bucket.
  ASSERT_FALSE(decisions("rt").empty());
  EXPECT_EQ(decisions("rt"), decisions("rt2"));
  Process hold({"ip", "netns", "exec", ns("cl"), kTool, "hold", kVip, "8080", "9", "100"},
               dir + "/hold.log");
  ASSERT_TRUE(waitUntil([&] { return hold.log().find("established 100") != std::string::npos; }, 20))
      << hold.log();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  via("198.18.0.2");  // all traffic to B (B has no flow state: its hash decides)
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  via("198.18.0.1");  // and back to A
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  procs["rt"].stop();  // restart A while it carries the traffic
  startRouter("rt");
  EXPECT_EQ(hold.wait(20), 0) << hold.log();
  EXPECT_NE(hold.log().find("ok 100"), std::string::npos) << hold.log();
}

TEST_F(Failover, FreshRouterBuildsTheSameTablesAsTheServingOne) {
  ASSERT_TRUE(reachable(kVip));
  // Churn on A first so that its history differs from a fresh router's.
  writeEndpoints(false, true);
  ASSERT_TRUE(waitUntil([&] { return decisions("rt").find("198.19.1.2") == std::string::npos; }));
  writeEndpoints(false);
  ASSERT_TRUE(waitUntil([&] { return decisions("rt").find("198.19.1.2") != std::string::npos; }));
  procs["rt2"].stop();
  ASSERT_EQ(in("rt2", kBin + " cleanup --role router" + datapathArgs("rt2")).rc, 0);
  startRouter("rt2");
  ASSERT_TRUE(waitUntil([&] { return !decisions("rt2").empty(); }));
  EXPECT_EQ(decisions("rt"), decisions("rt2"));
}

TEST_F(Failover, DrainingKeepsEstablishedFlowsAndSendsNewOnesElsewhere) {
  ASSERT_TRUE(reachable(kVip));
  Process hold({"ip", "netns", "exec", ns("cl"), kTool, "hold", kVip, "8080", "8", "20", "p1a"},
               dir + "/hold.log");
  ASSERT_TRUE(waitUntil([&] { return hold.log().find("established 20") != std::string::npos; }, 20))
      << hold.log();
  writeEndpoints(true);  // p1a: serving + terminating
  ASSERT_TRUE(waitUntil([&] {
    return decisions("rt").find("198.19.1.2") == std::string::npos && !decisions("rt").empty();
  }));
  // Its slot, route and nexthop stay while it drains.
  EXPECT_NE(out("rt", "ip nexthop show proto 211").find("198.19.1.2"), std::string::npos);
  auto fresh = tcp(kVip, 200);
  ASSERT_EQ(fresh.size(), 200u);
  for (auto& a : fresh) {
    EXPECT_NE(a, "FAIL");
    EXPECT_FALSE(a.starts_with("p1a ")) << "a new flow reached the draining pod";
  }
  EXPECT_EQ(hold.wait(20), 0) << hold.log();
  EXPECT_NE(hold.log().find("ok 20"), std::string::npos) << hold.log();
  // Gone for good: its state is removed from the router and from the pod.
  writeEndpoints(false, true);
  EXPECT_TRUE(waitUntil([&] {
    return out("rt", "ip nexthop show proto 211").find("198.19.1.2") == std::string::npos &&
           owned("p1a").empty();
  })) << owned("rt") << owned("p1a");
}

}  // namespace
}  // namespace kst::e2e

namespace kst::e2e {
namespace {

// Negative control: the same switch with a router B whose hash seed differs breaks
// connections, so the test above really depends on identical decisions.
TEST_F(Failover, NegativeControlDifferentSeedOnBBreaksConnections) {
  procs["rt2"].stop();
  ASSERT_EQ(in("rt2", kBin + " cleanup --role router" + datapathArgs("rt2")).rc, 0);
  startRouter("rt2", {"--hash-seed", "7"});
  ASSERT_TRUE(reachable(kVip));
  via("198.18.0.2");
  ASSERT_TRUE(reachable(kVip));
  via("198.18.0.1");
  Process hold({"ip", "netns", "exec", ns("cl"), kTool, "hold", kVip, "8080", "5", "100"},
               dir + "/hold.log");
  ASSERT_TRUE(waitUntil([&] { return hold.log().find("established 100") != std::string::npos; }, 20))
      << hold.log();
  via("198.18.0.2");
  EXPECT_NE(hold.wait(20), 0) << hold.log();
  EXPECT_NE(hold.log().find("failed"), std::string::npos) << hold.log();
}

}  // namespace
}  // namespace kst::e2e

namespace kst::e2e {
namespace {

// The table published for the Service (by the elected router, see k8s/publisher.h) is followed
// by every router, and a fresh router also takes its slots, so its kernel tables equal it.
TEST_F(Failover, PublishedTableIsFollowedAndAFreshRouterTakesItsSlots) {
  ASSERT_TRUE(reachable(kVip));
  // Deliberately not what the hash would compute: ranges of 16 buckets, reversed slots.
  const std::string table =
      R"({"v":1,"buckets":64,"seed":42,"endpoints":[)"
      R"({"ip":"198.19.1.2","slot":3,"buckets":"0-15"},{"ip":"198.19.1.3","slot":2,"buckets":"16-31"},)"
      R"({"ip":"198.19.2.2","slot":1,"buckets":"32-47"},{"ip":"198.19.2.3","slot":0,"buckets":"48-63"}]})";
  // The table as the elected router writes it: a ConfigMap labelled as the daemon's, naming
  // the Service (a manifest directory holds it like any other object).
  std::string svc = serviceYaml("web", kVip) + "---\n" +
                    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kst-buckets-web\n"
                    "  labels: {app.kubernetes.io/managed-by: kube-service-tunnel}\n"
                    "data:\n  namespace: default\n  name: web\n  table: '" + table + "'\n";
  writeManifest("web.yaml", svc + "---\n" +
                                sliceYaml("web", "IPv4",
                                          {{"198.19.1.2", "node1"}, {"198.19.1.3", "node1"},
                                           {"198.19.2.2", "node2"}, {"198.19.2.3", "node2"}}));
  std::string expected;
  for (int b = 0; b < 64; ++b)
    expected += std::to_string(b) + "->" +
                std::vector<std::string>{"198.19.1.2", "198.19.1.3", "198.19.2.2", "198.19.2.3"}[b / 16] + "\n";
  EXPECT_TRUE(waitUntil([&] { return decisions("rt") == expected; })) << decisions("rt");
  // Router A keeps its own slot numbers (pinned flows refer to them) ...
  EXPECT_NE(out("rt", "ip route show table 1000 " + kVip).find("nhid"), std::string::npos);
  // ... a fresh router B takes the published ones: slot 3 (table 1003) is 198.19.1.2.
  procs["rt2"].stop();
  ASSERT_EQ(in("rt2", kBin + " cleanup --role router" + datapathArgs("rt2")).rc, 0);
  startRouter("rt2");
  ASSERT_TRUE(waitUntil([&] { return decisions("rt2") == expected; })) << decisions("rt2");
  auto rt = out("rt2", "ip route show table 1003 " + kVip);
  auto nh = rt.find("nhid ");
  ASSERT_NE(nh, std::string::npos) << rt;
  auto n = out("rt2", "ip nexthop show id " + rt.substr(nh + 5, rt.find(' ', nh + 5) - nh - 5));
  EXPECT_NE(n.find("dst 198.19.1.2 "), std::string::npos) << n;
  // Traffic follows it: a flow hashed into bucket 0..15 lands on p1a, etc. — all succeed.
  via("198.18.0.2");
  for (auto& a : tcp(kVip, 20)) EXPECT_NE(a, "FAIL");
}

}  // namespace
}  // namespace kst::e2e
