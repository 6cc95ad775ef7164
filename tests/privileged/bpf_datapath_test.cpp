// The tc-BPF router datapath end to end: two routers fed the same manifests, rt with the nft
// classifier, rt2 with --datapath bpf (the program on its eth0 ingress, maps pinned in a bpffs
// the test mounts for it). Real daemons, agents and pods (scripts/lib/topo.sh); what is shown:
//   - the same 5-tuples (UDP and TCP, fixed source ports) land on the same endpoint through
//     either router, IPv4 and IPv6, and the pod sees the client's address;
//   - connections survive switching between the two routers (failover during a rollout);
//   - a restart of the bpf router changes nothing (no kernel object, the same program stays
//     attached, "no changes") and breaks no connection;
//   - counters are exact: N datagrams raise the VIP counter by N, each endpoint's by what its
//     pod answered;
//   - a draining endpoint keeps its established flows and gets no new one; a removed
//     endpoint's pinned flows move to the others;
//   - `cleanup --datapath bpf` detaches the program and removes every pin;
//   - the three ways out: the outer headers written by the program and sent with
//     bpf_redirect_neigh (BpfDatapath, --bpf-encap headers: never seen by the forward hook, the
//     collect-md device sends nothing; IPv6 pods behind vxlan-gpe take the mark path there),
//     redirected to the collect-md device (BpfDevicePath) and marked and forwarded by the stack
//     through the policy rules (BpfMarkPath: every datagram passes the forward hook);
//   - the header path keeps forwarding semantics: a packet whose TTL / hop limit expires at the
//     router gets "time exceeded", a DF packet over the tunnel MTU "fragmentation needed" /
//     "packet too big" (the program hands both to the stack).
#include <sys/mount.h>

#include <set>

#include "linux/bpf_classifier.h"
#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kVip4 = "203.0.113.10", kVip6 = "2001:db8:ffff::10";

class BpfDatapath : public E2E, public ::testing::WithParamInterface<bool> {
 protected:
  std::string bpffs;

  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    usePrefix("kbc");
    bpffs = dir + "/bpffs";
    std::filesystem::create_directories(bpffs);
    ASSERT_EQ(mount("bpf", bpffs.c_str(), "bpf", 0, nullptr), 0) << std::strerror(errno);
    topology(2, 2);  // routers rt (198.18.0.1) and rt2 (198.18.0.2)
    for (auto p : {"p1a", "p1b", "p2a", "p2b"}) serve(p);
    writeEndpoints();
    startRouter("rt");
    startBpfRouter();
    startAgent(1);
    startAgent(2);
  }
  /** --bpf-encap: headers (the program forwards), device (the collect-md device), mark (the
   *  stack routes through the slot's policy rule). */
  virtual std::string encap() const { return "headers"; }
  /** The program sends this family's packets itself (headers or device path). */
  bool programSends() const { return encap() == "device" || (encap() == "headers" && !v6()); }
  uint64_t vxgTxPackets() {
    auto o = out("rt2", "cat /sys/class/net/kst-vxg/statistics/tx_packets");
    return o.empty() ? UINT64_MAX : std::stoull(o);
  }
  void TearDown() override {
    // Lazily: the pins go once the bpf router has stopped; the attached program goes with the
    // router's namespace.
    if (!bpffs.empty()) umount2(bpffs.c_str(), MNT_DETACH);
    E2E::TearDown();
  }
  std::string pinDir() const { return bpffs + "/rt2"; }
  std::vector<std::string> bpfFlags() const {
    return {"--datapath", "bpf", "--bpf-pin-dir", pinDir(), "--bpf-ingress", "eth0",
            "--bpf-encap", encap()};
  }
  void startBpfRouter() { startRouter("rt2", bpfFlags()); }

  bool v6() const { return GetParam(); }
  std::string vip() const { return v6() ? kVip6 : kVip4; }
  std::string client() const { return v6() ? "2001:db8:f::10" : "198.18.0.10"; }
  std::string podIp(const std::string& pod) const {
    const char node = pod[1];
    const int host = pod[2] == 'a' ? 2 : 3;
    return v6() ? fmt::format("2001:db8:{}::{}", node, host)
                : fmt::format("198.19.{}.{}", node, host);
  }
  /** p1a: draining (serving, terminating), or gone. */
  void writeEndpoints(bool drainP1a = false, bool dropP1a = false) {
    std::vector<Ep> eps;
    for (auto p : {"p1a", "p1b", "p2a", "p2b"}) {
      const bool isP1a = std::string(p) == "p1a";
      if (isP1a && dropP1a) continue;
      eps.push_back({podIp(p), std::string("node") + p[1], !(isP1a && drainP1a), true,
                     isP1a && drainP1a});
    }
    writeManifest("web.yaml", serviceYaml("web", vip()) + "---\n" +
                                  sliceYaml("web", v6() ? "IPv6" : "IPv4", eps));
  }
  void via(const std::string& router) {
    const bool two = router == "rt2";
    auto r = v6() ? in("cl", std::string("ip -6 route replace 2001:db8:ffff::/64 via 2001:db8:f::") +
                                 (two ? "2" : "1"))
                  : in("cl", std::string("ip route replace 203.0.113.0/24 via 198.18.0.") +
                                 (two ? "2" : "1"));
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  bool allFrom(const std::vector<std::string>& answers, size_t n) {
    if (answers.size() != n) return false;
    for (auto& a : answers)
      if (a == "FAIL" || !a.ends_with(" " + client())) return false;
    return true;
  }
  std::vector<std::string> udpFrom(int count, int sport) {
    return lines(in("cl", kTool + " udp " + vip() + " 8080 " + std::to_string(count) + " 0 " +
                              std::to_string(sport)).out);
  }
  dp::NftCounterSnapshot counters() {
    BpfClassifier reader(DataplaneConfig{}, {pinDir(), {}});
    auto s = reader.readCounters();
    EXPECT_TRUE(s) << s.error().message;
    return s ? *s : dp::NftCounterSnapshot{};
  }
  std::string filters() { return out("rt2", "tc filter show dev eth0 ingress"); }
  /** Restarts the bpf router: no kernel object changes, the first pass has nothing to do, the
   *  same program stays attached. */
  void restartBpfRouterChangesNothing() {
    const std::string attached = filters();
    Process mon({"ip", "netns", "exec", ns("rt2"), "ip", "-o", "monitor", "link", "address",
                 "route", "rule", "nexthop"}, dir + "/mon-rt2.log");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_EQ(procs["rt2"].stop(), 0);
    startBpfRouter();
    ASSERT_TRUE(waitUntil([&] { return procs["rt2"].log().find("reconciled") != std::string::npos; }))
        << procs["rt2"].log();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    mon.stop();
    EXPECT_EQ(mon.log(), "") << "router kernel objects changed on restart";
    EXPECT_NE(procs["rt2"].log().find("no changes"), std::string::npos) << procs["rt2"].log();
    EXPECT_EQ(filters(), attached) << "the program was replaced";
  }
  /** A counter in rt2's forward hook of the packets carrying a slot mark: the mark path goes
   *  through the stack's forwarding, the redirect path never does. */
  void probeForward() {
    ASSERT_EQ(nftLoad("rt2", "table inet kbc_probe {\n counter marked { }\n chain probe {\n"
                             "  type filter hook forward priority -300;\n"
                             "  meta mark >= 1000 meta mark < 1256 counter name \"marked\"\n"
                             " }\n}\n"),
              0);
  }
  uint64_t forwardedMarked() {
    auto o = out("rt2", "nft list counter inet kbc_probe marked");
    auto p = o.find("packets ");
    return p == std::string::npos ? UINT64_MAX : std::stoull(o.substr(p + 8));
  }
};

INSTANTIATE_TEST_SUITE_P(Family, BpfDatapath, ::testing::Values(false, true),
                         [](const auto& i) { return i.param ? "IPv6" : "IPv4"; });

TEST_P(BpfDatapath, SameTuplesLandOnTheSameEndpointAsNft) {
  via("rt");
  ASSERT_TRUE(reachable(vip(), 20));
  via("rt2");
  ASSERT_TRUE(reachable(vip(), 20)) << procs["rt2"].log();
  EXPECT_NE(filters().find("kst_router"), std::string::npos) << filters();
  // UDP: the same 128 source ports through each router.
  via("rt");
  auto udpNft = udpFrom(128, 31000);
  via("rt2");
  auto udpBpf = udpFrom(128, 31000);
  ASSERT_TRUE(allFrom(udpNft, 128)) << fmt::format("{}", fmt::join(udpNft, "\n"));
  ASSERT_TRUE(allFrom(udpBpf, 128)) << fmt::format("{}", fmt::join(udpBpf, "\n"));
  EXPECT_EQ(udpNft, udpBpf);
  std::set<std::string> pods(udpBpf.begin(), udpBpf.end());
  EXPECT_EQ(pods.size(), 4u) << "every endpoint takes some of 128 flows";
  // TCP: the same 64 source ports through each router (new connections on each).
  via("rt");
  auto tcpNft = tcp(vip(), 64, 33000);
  via("rt2");
  auto tcpBpf = tcp(vip(), 64, 33000);
  ASSERT_TRUE(allFrom(tcpNft, 64)) << fmt::format("{}", fmt::join(tcpNft, "\n"));
  ASSERT_TRUE(allFrom(tcpBpf, 64)) << fmt::format("{}", fmt::join(tcpBpf, "\n"));
  EXPECT_EQ(tcpNft, tcpBpf);
}

TEST_P(BpfDatapath, FailoverBetweenNftAndBpfRoutersBreaksNoConnection) {
  via("rt");
  ASSERT_TRUE(reachable(vip(), 20));
  via("rt2");
  ASSERT_TRUE(reachable(vip(), 20)) << procs["rt2"].log();
  via("rt");
  Process hold({"ip", "netns", "exec", ns("cl"), kTool, "hold", vip(), "8080", "8", "60"},
               dir + "/hold.log");
  ASSERT_TRUE(waitUntil([&] { return hold.log().find("established 60") != std::string::npos; }, 20))
      << hold.log();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  via("rt2");  // the bpf router has no flow state: its hash decides, as the nft one's did
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  via("rt");
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  via("rt2");
  EXPECT_EQ(hold.wait(20), 0) << hold.log();
  EXPECT_NE(hold.log().find("ok 60"), std::string::npos) << hold.log();
}

TEST_P(BpfDatapath, CountersAreExact) {
  via("rt2");
  ASSERT_TRUE(reachable(vip(), 20)) << procs["rt2"].log();
  probeForward();
  auto before = counters();
  const uint64_t vxgBefore = vxgTxPackets();
  const IpAddress v = *IpAddress::parse(vip());
  auto answers = udpFrom(50, 34000);
  ASSERT_TRUE(allFrom(answers, 50));
  auto after = counters();
  if (programSends()) {
    EXPECT_EQ(forwardedMarked(), 0u) << "redirected packets do not pass the forward hook";
  } else {
    EXPECT_EQ(forwardedMarked(), 50u) << "IPv6 pods behind vxlan-gpe: the mark path";
  }
  if (encap() == "headers" && !v6()) {
    EXPECT_EQ(vxgTxPackets(), vxgBefore) << "the program wrote the headers, not the device";
  } else if (encap() == "device") {
    EXPECT_GE(vxgTxPackets() - vxgBefore, 50u);
  }
  EXPECT_EQ(after.vip[v].packets - before.vip[v].packets, 50u);
  EXPECT_EQ(after.refusedByVip[v].packets, before.refusedByVip[v].packets);
  std::map<std::string, uint64_t> perPod;
  for (auto& a : answers) ++perPod[a.substr(0, a.find(' '))];
  uint64_t total = 0;
  for (auto p : {"p1a", "p1b", "p2a", "p2b"}) {
    const std::pair<IpAddress, IpAddress> k{v, *IpAddress::parse(podIp(p))};
    const uint64_t d = after.endpoint[k].packets - before.endpoint[k].packets;
    EXPECT_EQ(d, perPod[p]) << p;
    total += d;
  }
  EXPECT_EQ(total, 50u);
}

TEST_P(BpfDatapath, RestartChangesNothingAndBreaksNoConnection) {
  via("rt2");
  ASSERT_TRUE(reachable(vip(), 20)) << procs["rt2"].log();
  Process hold({"ip", "netns", "exec", ns("cl"), kTool, "hold", vip(), "8080", "6", "20"},
               dir + "/hold.log");
  ASSERT_TRUE(waitUntil([&] { return hold.log().find("established") != std::string::npos; }));
  restartBpfRouterChangesNothing();
  EXPECT_EQ(hold.wait(15), 0) << hold.log();
  EXPECT_NE(hold.log().find("ok 20"), std::string::npos) << hold.log();
}

TEST_P(BpfDatapath, DrainingKeepsFlowsAndRemovalMovesThem) {
  via("rt2");
  ASSERT_TRUE(reachable(vip(), 20)) << procs["rt2"].log();
  Process hold({"ip", "netns", "exec", ns("cl"), kTool, "hold", vip(), "8080", "8", "10", "p1a"},
               dir + "/hold.log");
  ASSERT_TRUE(waitUntil([&] { return hold.log().find("established 10") != std::string::npos; }, 20))
      << hold.log();
  writeEndpoints(true);
  // New flows avoid p1a once the router has its new buckets.
  ASSERT_TRUE(waitUntil([&] {
    auto a = tcp(vip(), 40);
    for (auto& l : a)
      if (l.starts_with("p1a ") || l == "FAIL") return false;
    return a.size() == 40;
  }, 15));
  EXPECT_EQ(hold.wait(20), 0) << hold.log();
  EXPECT_NE(hold.log().find("ok 10"), std::string::npos) << hold.log();
  // Back in service; a UDP flow that p1a answers, then p1a goes: the flow moves.
  writeEndpoints();
  int sport = 0;
  ASSERT_TRUE(waitUntil([&] {
    auto a = udpFrom(64, 35000);
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].starts_with("p1a ")) sport = 35000 + int(i);
    return sport != 0;
  }, 15));
  ASSERT_TRUE(udpFrom(1, sport)[0].starts_with("p1a "));  // pinned there
  writeEndpoints(false, true);
  EXPECT_TRUE(waitUntil([&] {
    auto a = udpFrom(1, sport);
    return a.size() == 1 && a[0] != "FAIL" && !a[0].starts_with("p1a ");
  }, 15)) << procs["rt2"].log();
}

TEST_P(BpfDatapath, CleanupDetachesAndUnpins) {
  via("rt2");
  ASSERT_TRUE(reachable(vip(), 20)) << procs["rt2"].log();
  procs["rt2"].stop();
  EXPECT_TRUE(reachable(vip(), 2)) << "stopping the daemon must not remove the datapath";
  auto flags = bpfFlags();
  std::string cmd = kBin + " cleanup --role router";
  for (auto& f : flags) cmd += " " + f;
  EXPECT_EQ(in("rt2", cmd).rc, 0);
  EXPECT_EQ(filters().find("kst_router"), std::string::npos) << filters();
  EXPECT_FALSE(std::filesystem::exists(pinDir()));
  EXPECT_EQ(owned("rt2"), "");
}

TEST_P(BpfDatapath, ExpiredTtlAndTooBigPacketsGetTheStacksIcmp) {
  via("rt2");
  ASSERT_TRUE(reachable(vip(), 20)) << procs["rt2"].log();
  // TTL / hop limit 1 on arrival at the router: time exceeded, from the router.
  auto ttl = in("cl", std::string("ping -c 1 -W 2 -t 1 ") + (v6() ? "-6 " : "") + vip());
  EXPECT_NE(ttl.out.find(v6() ? "Time exceeded" : "Time to live exceeded"), std::string::npos)
      << ttl.out;
  // TTL 2: one more hop is allowed, the pod answers (the program decremented it to 1).
  auto two = in("cl", std::string("ping -c 1 -W 2 -t 2 ") + (v6() ? "-6 " : "") + vip());
  EXPECT_EQ(two.rc, 0) << two.out;
  // A 1500-byte DF packet into a tunnel whose inner limit is below it: the router says so.
  const int payload = 1500 - (v6() ? 48 : 28);
  auto big = in("cl", fmt::format("ping -c 2 -i 0.3 -W 2 -M do -s {} {}{}", payload,
                                  v6() ? "-6 " : "", vip()));
  EXPECT_NE(big.out.find(v6() ? "Packet too big" : "Frag needed"), std::string::npos) << big.out;
  EXPECT_NE(big.out.find(v6() ? "mtu=" : "mtu = "), std::string::npos) << big.out;
}

/** The collect-md device (--bpf-encap device; vxlan-gpe and ipip only): the tunnel key is set
 *  and the device builds the headers. */
class BpfDevicePath : public BpfDatapath {
 protected:
  std::string encap() const override { return "device"; }
};

INSTANTIATE_TEST_SUITE_P(Family, BpfDevicePath, ::testing::Values(false, true),
                         [](const auto& i) { return i.param ? "IPv6" : "IPv4"; });

TEST_P(BpfDevicePath, SameTuplesAndExactCountersThroughTheDevice) {
  via("rt");
  ASSERT_TRUE(reachable(vip(), 20));
  via("rt2");
  ASSERT_TRUE(reachable(vip(), 20)) << procs["rt2"].log();
  via("rt");
  auto udpNft = udpFrom(64, 37000);
  via("rt2");
  probeForward();
  const uint64_t vxgBefore = vxgTxPackets();
  auto udpBpf = udpFrom(64, 37000);
  ASSERT_TRUE(allFrom(udpBpf, 64)) << fmt::format("{}", fmt::join(udpBpf, "\n"));
  EXPECT_EQ(udpNft, udpBpf);
  EXPECT_EQ(forwardedMarked(), 0u);
  EXPECT_GE(vxgTxPackets() - vxgBefore, 64u);
}

/** The mark path (every mode but the flow modes; here --bpf-encap mark): the program sets the
 *  slot mark and the policy rules route. */
class BpfMarkPath : public BpfDatapath {
 protected:
  std::string encap() const override { return "mark"; }
};

INSTANTIATE_TEST_SUITE_P(Family, BpfMarkPath, ::testing::Values(false, true),
                         [](const auto& i) { return i.param ? "IPv6" : "IPv4"; });

TEST_P(BpfMarkPath, SameTuplesSameEndpointExactCountersAndCleanRestart) {
  via("rt");
  ASSERT_TRUE(reachable(vip(), 20));
  via("rt2");
  ASSERT_TRUE(reachable(vip(), 20)) << procs["rt2"].log();
  via("rt");
  auto udpNft = udpFrom(96, 36000);
  via("rt2");
  probeForward();
  auto before = counters();
  auto udpBpf = udpFrom(96, 36000);
  auto after = counters();
  EXPECT_EQ(forwardedMarked(), 96u) << "each marked datagram is forwarded by the stack";
  ASSERT_TRUE(allFrom(udpNft, 96)) << fmt::format("{}", fmt::join(udpNft, "\n"));
  ASSERT_TRUE(allFrom(udpBpf, 96)) << fmt::format("{}", fmt::join(udpBpf, "\n"));
  EXPECT_EQ(udpNft, udpBpf);
  const IpAddress v = *IpAddress::parse(vip());
  EXPECT_EQ(after.vip[v].packets - before.vip[v].packets, 96u);
  restartBpfRouterChangesNothing();
  EXPECT_EQ(udpFrom(96, 36000), udpBpf);
}

}  // namespace
}  // namespace kst::e2e
