// Tunnel nodes announce their VIPs to a DC router (docs/announce.md), for real: FRR (bgpd,
// bfdd, zebra) as the DC router with BGP multipath over two tunnel nodes, each running the
// daemon as router + bird2 exporting its announce table with BFD at 100 ms x 3. The client is
// behind the DC router; pods answer through their node and the DC router, never through a
// tunnel node (scripts/lib/announce-topo.sh).
#include <nlohmann/json.hpp>

#include <set>

#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10";
const std::string kVip6 = "2001:db8:ffff::10";
const std::string kAnnounceTopo = KST_SOURCE_DIR "/scripts/lib/announce-topo.sh";
const std::string kTable = "4242";

class Announce : public E2E {
 protected:
  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    if (sh("command -v bird && test -x /usr/lib/frr/bgpd").rc != 0)
      GTEST_SKIP() << "needs bird2 and frr (scripts/lib/deps.sh)";
    usePrefix("an");
    auto r = sh(kAnnounceTopo + " up " + prefix + " 100");
    ASSERT_EQ(r.rc, 0) << r.out;
    for (auto p : {"p1a", "p1b", "p2a", "p2b"}) serve(p);
    writeEndpoints(4);
    startNode("rt");
    startNode("rt2");
    startAgent(1);
    startAgent(2);
  }
  void TearDown() override {
    if (!prefix.empty()) {
      if (HasFailure())
        std::cerr << sh("tail -n 30 " + dir + "/rd/dc/bgpd.log " + dir + "/rd/dc/bfdd.log " +
                        dir + "/rd/rt/bird.log " + dir + "/rd/rt2/bird.log").out;
      sh(kAnnounceTopo + " down " + prefix);
    }
    E2E::TearDown();
  }
  std::vector<std::string> nodeFlags(const std::string& n) const {
    return {"--announce-table", kTable, "--state-dir", dir + "/state-" + n};
  }
  void startNode(const std::string& n, std::vector<std::string> extra = {}) {
    auto f = nodeFlags(n);
    f.insert(f.end(), extra.begin(), extra.end());
    startRouter(n, f);
  }
  /** The first `count` of the four pods serve both VIPs. */
  void writeEndpoints(int count) {
    std::vector<Ep> v4, v6;
    const char* hosts[] = {"1.2", "1.3", "2.2", "2.3"};
    for (int i = 0; i < count; ++i) {
      std::string h = hosts[i];
      std::string node = "node" + h.substr(0, 1);
      v4.push_back({"198.19." + h, node});
      v6.push_back({"2001:db8:" + h.substr(0, 1) + "::" + h.substr(2), node});
    }
    writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" + sliceYaml("web", "IPv4", v4) +
                                  "---\n" + serviceYaml("web6", kVip6) + "---\n" +
                                  sliceYaml("web6", "IPv6", v6));
  }
  /** Next hops of the DC router's route to a VIP ({} when it has none). */
  std::set<std::string> paths(const std::string& vip) {
    std::set<std::string> out;
    auto text =
        this->out("dc", std::string(vip.find(':') != std::string::npos ? "ip -6" : "ip -4") +
                            " route show " + vip);
    for (size_t p = text.find("via "); p != std::string::npos; p = text.find("via ", p + 4)) {
      auto e = text.find(' ', p + 4);
      out.insert(text.substr(p + 4, e - p - 4));
    }
    return out;
  }
  bool pathsBecome(const std::string& vip, size_t n, double seconds = 20) {
    return waitUntil([&] { return paths(vip).size() == n; }, seconds);
  }
  /** Packets a tunnel node sent toward endpoints so far: into its tunnel devices (nft), or
   *  counted per endpoint by its program (bpf: the header path bypasses the devices). */
  uint64_t tunnelled(const std::string& n) {
    if (bpfDatapath()) {
      uint64_t sum = 0;
      for (auto& e : bpfDump(n, "epstats"))
        for (auto& cpu : e.value("values", nlohmann::json::array()))
          if (cpu.contains("value") && cpu["value"].contains("packets"))
            sum += cpu["value"]["packets"].get<uint64_t>();
      return sum;
    }
    auto j = nlohmann::json::parse(out(n, "ip -s -j link show"), nullptr, false);
    uint64_t sum = 0;
    if (j.is_discarded()) return 0;
    for (auto& l : j)
      if (l.value("ifname", "").starts_with("kst")) sum += l["stats64"]["tx"]["packets"].get<uint64_t>();
    return sum;
  }
  std::vector<std::string> tcpFrom(const std::string& vip, int count) {
    return lines(in("dcl", kTool + " tcp " + vip + " 8080 " + std::to_string(count)).out);
  }
  bool reachableFromClient(const std::string& vip = kVip) {
    return waitUntil([&] {
      auto a = tcpFrom(vip, 4);
      return a.size() == 4 && failures(a) == 0;
    }, 10);
  }
  /** Restarts the daemon of a tunnel node and waits for the new process's first pass. */
  void restartNode(const std::string& n) {
    procs[n].stop();
    size_t from = procs[n].log().size();
    startNode(n);
    ASSERT_TRUE(waitUntil([&] {
      return procs[n].log().find("reconciled", from) != std::string::npos;
    })) << procs[n].log();
  }
  int failures(const std::vector<std::string>& answers) {
    int f = 0;
    for (auto& a : answers) f += a == "FAIL";
    return f;
  }
  Process hold(int seconds, int n = 100, const std::string& vip = kVip) {
    Process p({"ip", "netns", "exec", ns("dcl"), kTool, "hold", vip, "8080",
               std::to_string(seconds), std::to_string(n)},
              dir + "/hold.log");
    EXPECT_TRUE(waitUntil([&] { return p.log().find("established " + std::to_string(n)) !=
                                       std::string::npos; }, 20)) << p.log();
    return p;
  }
  Cmd drain(const std::string& n, const std::string& verb = "drain") {
    return in(n, kBin + " " + verb + " --announce-table " + kTable + " --state-dir " + dir +
                     "/state-" + n + (verb == "drain" ? " --hold 1 --timeout 20" : ""));
  }
  /** The DC router's four BFD sessions (two nodes, IPv4 and IPv6) are up: only then does a
   *  node's death take its BGP sessions down at once (before, the 9 s hold timer would). */
  bool bfdUp(double seconds = 20) {
    return waitUntil([&] {
      auto t = sh(kAnnounceTopo + " vtysh " + prefix + " -c 'show bfd peers brief'").out;
      size_t up = 0;
      for (auto& l : lines(t)) up += l.ends_with(" up") || l.find(" up ") != std::string::npos;
      return up == 4;
    }, seconds);
  }
  /** Kills a tunnel node hard: link down, daemon and bird2 SIGKILLed. */
  void killNode(const std::string& n) {
    in(n, "ip link set eth0 down");
    procs[n].stop(SIGKILL);
    sh(kAnnounceTopo + " kill " + prefix + " " + n);
  }
};

TEST_F(Announce, DcRouterLearnsEachVipFromBothNodesAndSpreadsConnections) {
  ASSERT_TRUE(pathsBecome(kVip, 2)) << out("dc", "ip route");
  EXPECT_EQ(paths(kVip), (std::set<std::string>{"198.18.0.1", "198.18.0.2"}));
  ASSERT_TRUE(pathsBecome(kVip6, 2)) << out("dc", "ip -6 route");
  // The announce table holds exactly the two VIPs, as unreachable routes of the daemon.
  auto table = out("rt", "ip route show table all proto 211 type unreachable");
  EXPECT_NE(out("rt", "ip route show table " + kTable).find("unreachable 203.0.113.10"),
            std::string::npos) << table;
  EXPECT_NE(out("rt", "ip -6 route show table " + kTable).find("unreachable 2001:db8:ffff::10"),
            std::string::npos);
  uint64_t a0 = tunnelled("rt"), b0 = tunnelled("rt2");
  auto answers = tcpFrom(kVip, 100);
  ASSERT_EQ(answers.size(), 100u);
  EXPECT_EQ(failures(answers), 0);
  uint64_t a = tunnelled("rt") - a0, b = tunnelled("rt2") - b0;
  EXPECT_GT(a, (a + b) / 6) << a << " vs " << b;  // both carry a real share (~50 %)
  EXPECT_GT(b, (a + b) / 6) << a << " vs " << b;
  auto answers6 = tcpFrom(kVip6, 100);
  ASSERT_EQ(answers6.size(), 100u);
  EXPECT_EQ(failures(answers6), 0);
  // cleanup with the table removes the announcements too: the DC router drops the node.
  procs["rt"].stop();
  ASSERT_EQ(in("rt", kBin + " cleanup --role router --announce-table " + kTable + datapathArgs("rt")).rc, 0);
  EXPECT_EQ(out("rt", "ip route show table " + kTable) + out("rt", "ip -6 route show table " + kTable), "");
  EXPECT_EQ(owned("rt"), "");
  EXPECT_TRUE(pathsBecome(kVip, 1, 10)) << out("dc", "ip route");
  EXPECT_TRUE(pathsBecome(kVip6, 1, 10)) << out("dc", "ip -6 route");
}

TEST_F(Announce, KillingANodeBfdRemovesItWithinOneSecondAndHeldConnectionsSurvive) {
  ASSERT_TRUE(pathsBecome(kVip, 2));
  ASSERT_TRUE(bfdUp()) << sh(kAnnounceTopo + " vtysh " + prefix + " -c 'show bfd peers'").out;
  ASSERT_TRUE(reachableFromClient());
  auto h = hold(10);
  uint64_t a0 = tunnelled("rt");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_GT(tunnelled("rt"), a0) << "node rt carries none of the held connections";
  auto t0 = std::chrono::steady_clock::now();
  killNode("rt");
  ASSERT_TRUE(waitUntil([&] { return paths(kVip) == std::set<std::string>{"198.18.0.2"}; }, 5));
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 1.0) << "BFD took " << s << " s";
  EXPECT_EQ(h.wait(30), 0) << h.log();
  EXPECT_NE(h.log().find("ok 100"), std::string::npos) << h.log();
}

// Negative control: the survivor hashes with another seed, so the flows it takes over reach
// other pods and break: the test above depends on identical decisions.
TEST_F(Announce, NegativeControlSurvivorWithAnotherSeedBreaksConnections) {
  procs["rt2"].stop();
  ASSERT_EQ(in("rt2", kBin + " cleanup --role router" + datapathArgs("rt2")).rc, 0);  // its announce table stays
  startNode("rt2", {"--hash-seed", "7"});
  ASSERT_TRUE(pathsBecome(kVip, 2));
  ASSERT_TRUE(bfdUp());
  ASSERT_TRUE(reachableFromClient());
  auto h = hold(10);
  killNode("rt");
  ASSERT_TRUE(waitUntil([&] { return paths(kVip) == std::set<std::string>{"198.18.0.2"}; }, 5));
  EXPECT_NE(h.wait(30), 0) << h.log();
  EXPECT_NE(h.log().find("failed"), std::string::npos) << h.log();
}

TEST_F(Announce, DrainWithdrawsTheNodeWithoutResetsAndSurvivesARestart) {
  ASSERT_TRUE(pathsBecome(kVip, 2));
  ASSERT_TRUE(pathsBecome(kVip6, 2));
  ASSERT_TRUE(reachableFromClient());
  auto h = hold(8);
  auto d = drain("rt");
  ASSERT_EQ(d.rc, 0) << d.out;
  EXPECT_NE(d.out.find("drained"), std::string::npos) << d.out;
  // Reported drained only once the DC router no longer uses the node.
  EXPECT_EQ(paths(kVip), (std::set<std::string>{"198.18.0.2"}));
  EXPECT_EQ(paths(kVip6).size(), 1u);
  uint64_t a0 = tunnelled("rt");
  auto answers = tcpFrom(kVip, 100);
  EXPECT_EQ(failures(answers), 0);
  EXPECT_EQ(tunnelled("rt"), a0) << "new connections still reach the drained node";
  EXPECT_EQ(h.wait(30), 0) << h.log();
  EXPECT_NE(h.log().find("ok 100"), std::string::npos) << h.log();
  // The drained state survives a restart of the daemon.
  restartNode("rt");
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(paths(kVip), (std::set<std::string>{"198.18.0.2"}));
  EXPECT_EQ(out("rt", "ip route show table " + kTable), "");
  // undrain: announced again, without a restart.
  auto u = drain("rt", "undrain");
  ASSERT_EQ(u.rc, 0) << u.out;
  EXPECT_TRUE(pathsBecome(kVip, 2, 10)) << out("dc", "ip route");
  EXPECT_TRUE(pathsBecome(kVip6, 2, 10)) << out("dc", "ip -6 route");
}

TEST_F(Announce, VipWithoutEndpointsIsWithdrawnAndAnnouncedAgainWithOne) {
  ASSERT_TRUE(pathsBecome(kVip, 2));
  ASSERT_TRUE(pathsBecome(kVip6, 2));
  writeEndpoints(0);
  EXPECT_TRUE(pathsBecome(kVip, 0, 10)) << out("dc", "ip route");
  EXPECT_TRUE(pathsBecome(kVip6, 0, 10)) << out("dc", "ip -6 route");
  // No route toward a pod is left; the VIP keeps only its slot tables' unreachable guards
  // (sticky while the VIP exists, docs/load-balancing.md), and rt2 announces nothing.
  EXPECT_EQ(out("rt", "ip route show table all proto 211 | grep -v '^unreachable '") +
                out("rt", "ip -6 route show table all proto 211 | grep -v '^unreachable '") +
                out("rt2", "ip -6 route show table " + kTable),
            "");
  writeEndpoints(1);
  EXPECT_TRUE(pathsBecome(kVip, 2, 10)) << out("dc", "ip route");
  EXPECT_TRUE(pathsBecome(kVip6, 2, 10)) << out("dc", "ip -6 route");
  ASSERT_TRUE(reachableFromClient());
  for (auto& a : tcpFrom(kVip, 20)) EXPECT_TRUE(a.starts_with("p1a ")) << a;
}

TEST_F(Announce, RestartingTheDaemonWithdrawsNothing) {
  ASSERT_TRUE(pathsBecome(kVip, 2));
  ASSERT_TRUE(pathsBecome(kVip6, 2));
  Process mon({"ip", "netns", "exec", ns("dc"), "ip", "-o", "monitor", "route"},
              dir + "/monitor.log");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (auto n : {"rt", "rt2"}) restartNode(n);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // bird scans the table every second
  EXPECT_EQ(mon.log().find("203.0.113.10"), std::string::npos) << mon.log();
  EXPECT_EQ(mon.log().find("2001:db8:ffff::10"), std::string::npos) << mon.log();
  EXPECT_EQ(paths(kVip).size(), 2u);
  // The monitor sees a real withdrawal (the check above can fail).
  writeEndpoints(0);
  EXPECT_TRUE(waitUntil([&] { return mon.log().find("203.0.113.10") != std::string::npos; }))
      << mon.log();
}

}  // namespace
}  // namespace kst::e2e
