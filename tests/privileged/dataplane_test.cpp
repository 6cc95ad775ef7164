// The tunnel dataplane end to end on the host kernel (vxlan-gpe): client → router → pods on
// two nodes, real daemons, real traffic, true DSR return path.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10";
const std::string kVip6 = "2001:db8:ffff::10";

class Dataplane : public E2E {
 protected:
  // p1a 198.19.1.2, p1b 198.19.1.3 on node1; p2a 198.19.2.2, p2b 198.19.2.3 on node2.
  void threeEndpoints(bool start = true) {
    topology(2);
    for (auto p : {"p1a", "p1b", "p2a", "p2b"}) serve(p);
    writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" +
                                  sliceYaml("web", "IPv4",
                                            {{"198.19.1.2", "node1"},
                                             {"198.19.1.3", "node1"},
                                             {"198.19.2.2", "node2"}}));
    if (!start) return;
    startRouter("rt", {"--flow-timeout", "1"});
    startAgent(1);
    startAgent(2);
    ASSERT_TRUE(reachable(kVip)) << owned("rt");
  }

  /** Bucket share per pod IP, read back from the kernel: bucket map → slot table → nexthop. */
  std::map<std::string, double> kernelShares(const std::string& vip) {
    std::map<uint32_t, int> perMark;
    int total = 0;
    auto all = bucketMarks("rt");  // (a named map: the loop must not outlive it)
    for (auto& [bucket, mark] : all[vip]) {
      perMark[mark]++;
      ++total;
    }
    std::map<std::string, double> shares;
    for (auto& [mark, n] : perMark) {
      auto routes = nlohmann::json::parse(
          out("rt", "ip -j route show table " + std::to_string(mark)), nullptr, false);
      uint32_t nhid = 0;
      // One VIP per test, so the table's only nexthop route is the VIP's (iproute2's JSON
      // repeats "dst" for the encap destination, so the route's own dst is not readable).
      for (auto& r : routes)
        if (r.contains("nhid")) nhid = r["nhid"].get<uint32_t>();
      if (!nhid) return {};  // caught between two reconcile steps: caller retries
      auto nh = nlohmann::json::parse(out("rt", "ip -j nexthop show id " + std::to_string(nhid)),
                                      nullptr, false);
      // iproute2 flattens the encap attributes: {"encap":"ip","id":0,"dst":...}
      std::string dst = nh.at(0)["dst"].get<std::string>();
      shares[dst] += double(n) / total;
    }
    return shares;
  }
};

TEST_F(Dataplane, TcpUdpPingReachPodsWithClientSourceAndDirectReturn) {
  threeEndpoints();
  // Observe the router: it must see requests to the VIP but never a reply from it (DSR). The
  // bpf datapath takes requests before netfilter: they are read from the program's per-VIP
  // counter (its per-CPU values summed, as bpftool shows them).
  ASSERT_EQ(nftLoad("rt", "table ip kstobs { chain c { type filter hook prerouting priority -300;\n"
                          "  ip daddr 203.0.113.10 counter\n  ip saddr 203.0.113.10 counter\n}\n}\n"),
            0);
  auto bpfVipPackets = [&] {
    uint64_t n = 0;
    for (auto& e : bpfDump("rt", "vipstats"))
      if (bpfAddress(e["key"]["addr"]) == kVip && e.contains("values"))
        for (auto& c : e["values"]) n += c["value"]["packets"].get<uint64_t>();
    return n;
  };
  const uint64_t bpfBefore = bpfDatapath() ? bpfVipPackets() : 0;
  auto answers = tcp(kVip, 30);
  ASSERT_EQ(answers.size(), 30u);
  std::set<std::string> pods;
  for (auto& a : answers) {
    ASSERT_NE(a, "FAIL");
    auto sp = a.find(' ');
    pods.insert(a.substr(0, sp));
    EXPECT_EQ(a.substr(sp + 1), "198.18.0.10") << "pod must see the client's own address";
  }
  for (auto& p : pods) EXPECT_TRUE(p == "p1a" || p == "p1b" || p == "p2a") << p;
  EXPECT_GE(pods.size(), 2u);
  auto u = udp(kVip, 10);
  ASSERT_EQ(u.size(), 10u);
  for (auto& a : u) EXPECT_TRUE(a.ends_with(" 198.18.0.10")) << a;
  EXPECT_EQ(in("cl", "ping -c 3 -i 0.2 -W 2 " + kVip).rc, 0);
  auto counters = in("rt", "nft list chain ip kstobs c").out;
  auto packetsOf = [&](const std::string& what) {
    auto pos = counters.find(what);
    auto c = counters.find("packets ", pos);
    return std::stol(counters.substr(c + 8));
  };
  if (bpfDatapath()) {
    EXPECT_GT(bpfVipPackets() - bpfBefore, 60u) << bpfDump("rt", "vipstats").dump();
  } else {
    EXPECT_GT(packetsOf("ip daddr 203.0.113.10"), 60);
  }
  EXPECT_EQ(packetsOf("ip saddr 203.0.113.10"), 0) << "replies must bypass the router";
  // The pods received encapsulated traffic on the decap device.
  EXPECT_NE(in("p1a", "ip -s link show kst-vxg").out.find("RX:"), std::string::npos);
}

TEST_F(Dataplane, FlowsFollowBucketSharesAndOnlyRemovedEndpointsFlowsMove) {
  threeEndpoints();
  std::map<std::string, double> shares;
  ASSERT_TRUE(waitUntil([&] { return (shares = kernelShares(kVip)).size() == 3; }));
  const std::map<std::string, std::string> ipOf{{"p1a", "198.19.1.2"}, {"p1b", "198.19.1.3"},
                                                {"p2a", "198.19.2.2"}};
  auto before = tcp(kVip, 300, 21000);
  ASSERT_EQ(before.size(), 300u);
  std::map<std::string, int> count;
  for (auto& a : before) {
    ASSERT_NE(a, "FAIL");
    count[a.substr(0, a.find(' '))]++;
  }
  for (auto& [pod, ip] : ipOf) {
    double got = count[pod] / 300.0;
    EXPECT_NEAR(got, shares[ip], 0.10) << pod << " got " << got << " bucket share " << shares[ip];
  }
  // Remove p2a; wait for the router to drop it and for pinned flows to expire (timeout 1 s).
  writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" +
                                sliceYaml("web", "IPv4",
                                          {{"198.19.1.2", "node1"}, {"198.19.1.3", "node1"}}));
  ASSERT_TRUE(waitUntil([&] { return kernelShares(kVip).size() == 2; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  auto after = tcp(kVip, 300, 21000);
  ASSERT_EQ(after.size(), 300u);
  int moved = 0;
  for (size_t i = 0; i < 300; ++i) {
    ASSERT_NE(after[i], "FAIL") << "flow " << i;
    if (before[i].starts_with("p2a ")) {
      EXPECT_FALSE(after[i].starts_with("p2a ")) << "flow " << i;
      ++moved;
    } else {
      EXPECT_EQ(after[i], before[i]) << "flow " << i << " moved although its pod stayed";
    }
  }
  EXPECT_EQ(moved, count["p2a"]);
}

TEST_F(Dataplane, Ipv6VipEndToEnd) {
  topology(1);
  serve("p1a");
  serve("p2a");
  writeManifest("web6.yaml", serviceYaml("web6", kVip6) + "---\n" +
                                 sliceYaml("web6", "IPv6",
                                           {{"2001:db8:1::2", "node1"}, {"2001:db8:2::2", "node2"}}));
  startRouter();
  startAgent(1);
  startAgent(2);
  ASSERT_TRUE(reachable(kVip6)) << owned("rt") << owned("p1a");
  std::set<std::string> pods;
  for (auto& a : tcp(kVip6, 20)) {
    ASSERT_NE(a, "FAIL");
    pods.insert(a.substr(0, a.find(' ')));
    EXPECT_TRUE(a.ends_with(" 2001:db8:f::10")) << a;
  }
  EXPECT_EQ(pods.size(), 2u);
  for (auto& a : udp(kVip6, 6)) EXPECT_TRUE(a.ends_with(" 2001:db8:f::10")) << a;
  EXPECT_EQ(in("cl", "ping -6 -c 3 -i 0.2 -W 2 " + kVip6).rc, 0);
}

TEST_F(Dataplane, RemovingTheAnnotationAndCleanupLeaveNothingBehind) {
  threeEndpoints();
  ASSERT_NE(owned("rt"), "");
  ASSERT_NE(owned("p1a"), "");
  // Remove the annotation: every object goes, on the router and in every pod.
  writeManifest("web.yaml",
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n---\n" +
                    sliceYaml("web", "IPv4", {{"198.19.1.2", "node1"}, {"198.19.2.2", "node2"}}));
  EXPECT_TRUE(waitUntil([&] {
    return owned("rt").empty() && owned("p1a").empty() && owned("p1b").empty() &&
           owned("p2a").empty();
  })) << owned("rt") << owned("p1a");
  // Back again, then stop the daemons and run `cleanup` on every node.
  writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" +
                                sliceYaml("web", "IPv4", {{"198.19.1.2", "node1"}, {"198.19.2.2", "node2"}}));
  ASSERT_TRUE(reachable(kVip));
  for (auto n : {"rt", "n1", "n2"}) procs[n].stop();
  EXPECT_TRUE(reachable(kVip, 1)) << "stopping the daemon must not remove the dataplane";
  EXPECT_EQ(in("rt", kBin + " cleanup --role router" + datapathArgs("rt")).rc, 0);
  for (int i : {1, 2})
    EXPECT_EQ(in("n" + std::to_string(i), kBin + " cleanup --role agent --scan-proc=false --netns-dir /run/kst-netns/" + prefix + "/n" + std::to_string(i)).rc, 0);
  for (auto n : {"rt", "n1", "n2", "p1a", "p1b", "p2a", "p2b"}) EXPECT_EQ(owned(n), "") << n;
}

TEST_F(Dataplane, DeletingTheServiceRemovesEverything) {
  threeEndpoints();
  removeManifest("web.yaml");
  EXPECT_TRUE(waitUntil([&] { return owned("rt").empty() && owned("p1a").empty() && owned("p2a").empty(); }))
      << owned("rt") << owned("p1a");
}

TEST_F(Dataplane, RestartKeepsConnectionsAndChangesNoKernelObject) {
  threeEndpoints();
  Process hold({"ip", "netns", "exec", ns("cl"), kTool, "hold", kVip, "8080", "6", "8"},
               dir + "/hold.log");
  ASSERT_TRUE(waitUntil([&] { return hold.log().find("established") != std::string::npos; }));
  // Watch every netlink object type and nftables in the router and in two pods.
  Process monRt({"ip", "netns", "exec", ns("rt"), "ip", "-o", "monitor", "link", "address",
                 "route", "rule", "nexthop"}, dir + "/mon-rt.log");
  Process nftRt({"ip", "netns", "exec", ns("rt"), "nft", "monitor"}, dir + "/nft-rt.log");
  Process monP({"ip", "netns", "exec", ns("p1a"), "ip", "-o", "monitor", "link", "address",
                "route"}, dir + "/mon-p1a.log");
  const std::string programmed = bpfProgrammed("rt");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (auto n : {"rt", "n1", "n2"}) EXPECT_EQ(procs[n].stop(), 0) << n;
  startRouter("rt", {"--flow-timeout", "1"});
  startAgent(1);
  startAgent(2);
  for (auto n : {"rt", "n1", "n2"})
    ASSERT_TRUE(waitUntil([&] { return procs[n].log().find("reconciled") != std::string::npos; }))
        << procs[n].log();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  monRt.stop();
  nftRt.stop();
  monP.stop();
  EXPECT_EQ(monRt.log(), "") << "router kernel objects changed on restart";
  EXPECT_EQ(nftRt.log(), "") << "nftables changed on restart";
  EXPECT_EQ(bpfProgrammed("rt"), programmed) << "the bpf program or its maps changed on restart";
  EXPECT_EQ(monP.log(), "") << "pod kernel objects changed on restart";
  EXPECT_NE(procs["rt"].log().find("no changes"), std::string::npos) << procs["rt"].log();
  EXPECT_EQ(hold.wait(15), 0) << hold.log();
  EXPECT_NE(hold.log().find("ok 8"), std::string::npos) << hold.log();
}

TEST_F(Dataplane, BadInputIsReportedAndDisturbsNothing) {
  threeEndpoints();
  auto baseline = tcp(kVip, 40, 23000);
  Process monRt({"ip", "netns", "exec", ns("rt"), "ip", "-o", "monitor", "link", "address",
                 "route", "rule", "nexthop"}, dir + "/mon-rt.log");
  Process nftRt({"ip", "netns", "exec", ns("rt"), "nft", "monitor"}, dir + "/nft-rt.log");
  const std::string programmed = bpfProgrammed("rt");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  writeManifest("bad-annotation.yaml", serviceYaml("notanip", "not-an-ip"));
  writeManifest("conflict.yaml", serviceYaml("thief", kVip, "2026-06-01T00:00:00Z") + "---\n" +
                                     sliceYaml("thief", "IPv4", {{"198.19.2.3", "node2"}}));
  writeManifest("orphan.yaml", sliceYaml("ghost", "IPv4", {{"198.19.2.3", "node2"}}));
  writeManifest("broken.yaml", "apiVersion: v1\nkind: Service\nmetadata: [unclosed\n");
  auto& rt = procs["rt"];
  EXPECT_TRUE(waitUntil([&] {
    auto l = rt.log();
    return l.find("default/notanip") != std::string::npos &&
           l.find("default/thief") != std::string::npos &&
           l.find("default/ghost-a") != std::string::npos && l.find("broken.yaml") != std::string::npos;
  })) << rt.log();
  auto l = rt.log();
  EXPECT_NE(l.find("InvalidTunnelAnnotation default/notanip"), std::string::npos);
  EXPECT_NE(l.find("TunnelVIPConflict default/thief"), std::string::npos);
  EXPECT_NE(l.find("OrphanEndpointSlice default/ghost-a"), std::string::npos);
  EXPECT_NE(l.find("broken.yaml: YAML error at line"), std::string::npos);
  EXPECT_TRUE(rt.running());
  EXPECT_EQ(tcp(kVip, 40, 23000), baseline) << "the working service must not change";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  monRt.stop();
  nftRt.stop();
  EXPECT_EQ(monRt.log(), "");
  EXPECT_EQ(nftRt.log(), "");
  EXPECT_EQ(bpfProgrammed("rt"), programmed);
  EXPECT_EQ(in("p2b", "ip -o link show kst-vxg").rc, 1) << "the loser of a VIP conflict gets nothing";
}

TEST_F(Dataplane, UdpServerBoundToAnyAddressAnswersFromTheVip) {
  topology(1);
  // Servers that do not use IP_PKTINFO: their replies would leave from the pod address.
  for (auto p : {"p1a", "p2a"})
    procs[p] = Process({"ip", "netns", "exec", ns(p), kTool, "serve", p, "8080", "plain"},
                       dir + "/" + p + ".log");
  writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" +
                                sliceYaml("web", "IPv4", {{"198.19.1.2", "node1"}, {"198.19.2.2", "node2"}}) +
                                "---\n" + serviceYaml("web6", kVip6) + "---\n" +
                                sliceYaml("web6", "IPv6", {{"2001:db8:1::2", "node1"}, {"2001:db8:2::2", "node2"}}));
  startRouter();
  startAgent(1);
  startAgent(2);
  ASSERT_TRUE(reachable(kVip));
  ASSERT_TRUE(reachable(kVip6));
  // The client's UDP socket is connected to the VIP: only a reply from the VIP is received.
  auto u4 = udp(kVip, 10);
  ASSERT_EQ(u4.size(), 10u);
  for (auto& a : u4) EXPECT_TRUE(a.ends_with(" 198.18.0.10")) << a;
  auto u6 = udp(kVip6, 10);
  ASSERT_EQ(u6.size(), 10u);
  for (auto& a : u6) EXPECT_TRUE(a.ends_with(" 2001:db8:f::10")) << a;
}

TEST_F(Dataplane, VanishedPodNamespaceOnlyFailsThatPod) {
  threeEndpoints();
  // The pod's namespace disappears (container runtime tore it down) while it is still listed.
  procs["p1a"].stop();
  ASSERT_EQ(sh("ip netns del " + ns("p1a")).rc, 0);
  sh("rm -f /run/kst-netns/" + prefix + "/n1/" + ns("p1a"));
  // A change for another pod on the same node must still be applied.
  writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" +
                                sliceYaml("web", "IPv4",
                                          {{"198.19.1.2", "node1"},
                                           {"198.19.1.3", "node1"},
                                           {"198.19.2.2", "node2"}}) +
                                "---\n" + serviceYaml("api", "203.0.113.11") + "---\n" +
                                sliceYaml("api", "IPv4", {{"198.19.1.3", "node1"}}));
  EXPECT_TRUE(waitUntil([&] {
    return in("p1b", "ip -o addr show dev kst-vxg").out.find("203.0.113.11") != std::string::npos;
  })) << procs["n1"].log();
  EXPECT_TRUE(procs["n1"].running());
  EXPECT_TRUE(waitUntil([&] { return procs["n1"].log().find("pod 198.19.1.2") != std::string::npos; }))
      << "the failure is logged, naming the pod";
  for (auto& a : tcp("203.0.113.11", 5)) EXPECT_EQ(a, "p1b 198.18.0.10");
}

}  // namespace
}  // namespace kst::e2e
