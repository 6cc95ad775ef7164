// A pod that takes another pod's address (issue: pod identity), end to end with the real
// daemon binary: router + node1's agent on scripts/lib/topo.sh's topology (routed veths).
// The victim p1a serves an IPv4 and an IPv6 VIP; the attacker p1b (same node) adds the
// victim's addresses to a spare device of its own, and a rescan is triggered (an endpoint the
// agent cannot find yet, then an agent restart). The attacker must get neither the decap link
// nor a VIP, the victim keeps both and keeps answering every connection, and the agent reports
// the duplicate.
#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10";
const std::string kVip6 = "2001:db8:ffff::10";

class PodSpoof : public E2E {
 protected:
  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    usePrefix("kpi");
  }
  /** The agent's decap link and VIPs in pod n. */
  std::string agentObjects(const std::string& n) {
    return in(n, "sh -c \"ip -o link show type vxlan; ip -o addr show | "
                 "grep -E '203\\.0\\.113\\.|2001:db8:ffff:' || true\"").out;
  }
  bool allFrom(const std::vector<std::string>& answers, const std::string& pod) {
    if (answers.empty()) return false;
    for (auto& a : answers)
      if (a.rfind(pod + " ", 0) != 0) return false;
    return true;
  }
};

TEST_F(PodSpoof, AttackerOnTheSameNodeGetsNothing_v4_v6) {
  topology(2);
  serve("p1a");
  serve("p1b");
  auto manifest = [&](bool withMissing) {
    std::string y = serviceYaml("web4", kVip) + "---\n" +
                    sliceYaml("web4", "IPv4", {{"198.19.1.2", "node1"}}) + "---\n" +
                    serviceYaml("web6", kVip6) + "---\n" +
                    sliceYaml("web6", "IPv6", {{"2001:db8:1::2", "node1"}});
    if (withMissing)  // an endpoint whose pod does not exist yet: the old agent rescanned
      y += "---\n" + serviceYaml("late", "203.0.113.20") + "---\n" +
           sliceYaml("late", "IPv4", {{"198.19.1.9", "node1"}});
    return y;
  };
  writeManifest("web.yaml", manifest(false));
  startRouter();
  startAgent(1);
  ASSERT_TRUE(reachable(kVip)) << owned("p1a");
  ASSERT_TRUE(reachable(kVip6)) << owned("p1a");
  ASSERT_TRUE(allFrom(tcp(kVip, 8), "p1a"));
  ASSERT_TRUE(allFrom(tcp(kVip6, 8), "p1a"));

  // The attacker holds the victim's addresses on a spare device (a veth pair inside the pod).
  ASSERT_EQ(in("p1b", "ip link add spare type veth peer name spare-peer").rc, 0);
  ASSERT_EQ(in("p1b", "ip link set spare up").rc, 0);
  ASSERT_EQ(in("p1b", "ip addr add 198.19.1.2/32 dev spare").rc, 0);
  ASSERT_EQ(in("p1b", "ip addr add 2001:db8:1::2/128 dev spare nodad").rc, 0);
  writeManifest("web.yaml", manifest(true));  // rescan 1: a pod not found yet
  std::this_thread::sleep_for(std::chrono::seconds(2));
  procs.erase("n1");  // rescan 2: a restarted agent scans every namespace
  startAgent(1);
  EXPECT_TRUE(waitUntil([&] { return procs["n1"].log().find("also held by") != std::string::npos; },
                        15))
      << procs["n1"].log();
  std::this_thread::sleep_for(std::chrono::seconds(1));

  EXPECT_EQ(agentObjects("p1b"), "") << "the attacker got the agent's objects";
  auto victim = agentObjects("p1a");
  EXPECT_NE(victim.find("kst-vxg"), std::string::npos) << victim;
  EXPECT_NE(victim.find(kVip + "/32"), std::string::npos) << victim;
  EXPECT_NE(victim.find(kVip6 + "/128"), std::string::npos) << victim;
  auto a4 = tcp(kVip, 16), a6 = tcp(kVip6, 16);
  EXPECT_TRUE(allFrom(a4, "p1a")) << (a4.empty() ? "no answer" : a4[0]);
  EXPECT_TRUE(allFrom(a6, "p1a")) << (a6.empty() ? "no answer" : a6[0]);
  auto log = procs["n1"].log();
  EXPECT_NE(log.find("198.19.1.2"), std::string::npos);
  EXPECT_NE(log.find("TunnelPodAddressDuplicated"), std::string::npos) << log;
}

}  // namespace
}  // namespace kst::e2e
