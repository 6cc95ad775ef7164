// TCP MSS clamping by the agent (--underlay-mtu) on the host kernel (vxlan-gpe): a bulk
// transfer client → VIP through the router must not be fragmented on the way to the pod.
//   clamped (default --underlay-mtu 1500): the SYN-ACK from the VIP carries MSS 1500 − 36 − 40
//   = 1424 (IPv4 VIP, IPv4 pod) / 1500 − 56 − 60 = 1384 (IPv6 VIP, IPv6 pod), the pod
//   reassembles nothing (nstat IpReasmReqds / Ip6ReasmReqds in the pod), the pod's ordinary
//   traffic keeps MSS 1460, and a restarted agent leaves the pod's nft table alone;
//   one byte more (--underlay-mtu 1501, MSS 1425): fragmented again, so 36 is the exact overhead;
//   negative control (--underlay-mtu 0): MSS 1460 from the VIP and every segment reassembled.
// The router's tunnel device MTU (--underlay-mtu − 36 for vxlan-gpe) on a jumbo-frame underlay:
//   --underlay-mtu 9000: kst-vxg MTU 8964, a 4000-byte DF datagram reaches the pod unfragmented
//   and TCP from the VIP is clamped to 8924; a restart with the same flag changes no link; a
//   changed flag sets the MTU in place (same ifindex, nexthops kept) and the datagram no longer
//   passes; --underlay-mtu 0 gives the kernel default (1500) back.
#include <filesystem>
#include <regex>

#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kBulk = KST_BINARY_DIR "/tests/kst-tcpbulk";
const std::string kVip = "203.0.113.10";
const std::string kVip6 = "2001:db8:ffff::10";
const long kBytes = 8 << 20;

// Counts the SYN-ACKs the client receives, per source and MSS option value.
const char* kObserver = R"(table inet kmsobs {
  counter vip4_all {}
  counter vip4_1424 {}
  counter vip4_1460 {}
  counter vip6_all {}
  counter vip6_1384 {}
  counter pod4_all {}
  counter pod4_1460 {}
  chain in {
    type filter hook input priority -300; policy accept;
    tcp flags & (syn | ack) == syn | ack ip saddr 203.0.113.10 counter name vip4_all
    tcp flags & (syn | ack) == syn | ack ip saddr 203.0.113.10 tcp option maxseg size 1424 counter name vip4_1424
    tcp flags & (syn | ack) == syn | ack ip saddr 203.0.113.10 tcp option maxseg size 1460 counter name vip4_1460
    tcp flags & (syn | ack) == syn | ack ip6 saddr 2001:db8:ffff::10 counter name vip6_all
    tcp flags & (syn | ack) == syn | ack ip6 saddr 2001:db8:ffff::10 tcp option maxseg size 1384 counter name vip6_1384
    tcp flags & (syn | ack) == syn | ack ip saddr 198.19.1.2 counter name pod4_all
    tcp flags & (syn | ack) == syn | ack ip saddr 198.19.1.2 tcp option maxseg size 1460 counter name pod4_1460
  }
}
)";

struct Sent {
  int mss = -1;
  int ts = 0;
  long sent = 0;
  std::string raw;
  /** The MSS the peer announced: the sender's MSS plus the timestamp option it subtracts. */
  int announced() const { return mss + (ts ? 12 : 0); }
};

class TcpMss : public E2E {
 protected:
  long nstat(const std::string& pod, const std::string& name) {
    auto o = out(pod, "nstat -asz " + name);
    std::smatch m;
    if (!std::regex_search(o, m, std::regex(name + R"(\s+(\d+))"))) return -1;
    return std::stol(m[1]);
  }
  long counter(const std::string& name) {
    auto o = out("cl", "nft list counter inet kmsobs " + name);
    std::smatch m;
    if (!std::regex_search(o, m, std::regex(R"(packets (\d+))"))) return -1;
    return std::stol(m[1]);
  }
  Sent send(const std::string& host, long bytes) {
    Sent s;
    s.raw = in("cl", kBulk + " send " + host + " 5201 " + std::to_string(bytes)).out;
    std::smatch m;
    if (std::regex_search(s.raw, m, std::regex(R"(mss=(\d+) ts=(\d) sent=(\d+))"))) {
      s.mss = std::stoi(m[1]);
      s.ts = std::stoi(m[2]);
      s.sent = std::stol(m[3]);
    }
    return s;
  }
  std::string podTable(const std::string& pod) {
    return in(pod, "nft list table inet kube_service_tunnel_pod").out;
  }
  void restartAgent(std::vector<std::string> extra) {
    EXPECT_EQ(procs["n1"].stop(), 0);
    startAgent(1, std::move(extra));
    ASSERT_TRUE(waitUntil([&] { return procs["n1"].log().find("reconciled") != std::string::npos; }))
        << procs["n1"].log();
  }
  void restartRouter(std::vector<std::string> extra) {
    EXPECT_EQ(procs["rt"].stop(), 0);
    startRouter("rt", std::move(extra));
    ASSERT_TRUE(waitUntil([&] { return procs["rt"].log().find("reconciled") != std::string::npos; }))
        << procs["rt"].log();
  }
  /** (ifindex, mtu) of a link in a namespace; (-1, -1) when there is none. */
  std::pair<long, long> linkMtu(const std::string& n, const std::string& link) {
    auto o = out(n, "ip -o link show dev " + link);
    std::smatch m;
    if (!std::regex_search(o, m, std::regex(R"(^(\d+): .* mtu (\d+))"))) return {-1, -1};
    return {std::stol(m[1]), std::stol(m[2])};
  }
};

TEST_F(TcpMss, SynAckFromVipIsClampedAndBulkTransferIsNotFragmented) {
  topology(2);
  // p1a 198.19.1.2 serves the IPv4 VIP, p1b 2001:db8:1::3 the IPv6 VIP (single stack each).
  for (auto p : {"p1a", "p1b"})
    procs[p] = Process({"ip", "netns", "exec", ns(p), kBulk, "sink", "5201"}, dir + "/" + p + ".log");
  // The client also reaches the pods' own addresses (ordinary, untunnelled traffic).
  ASSERT_EQ(in("cl", "ip route add 198.19.0.0/16 via 198.18.0.1").rc, 0);
  writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" +
                                sliceYaml("web", "IPv4", {{"198.19.1.2", "node1"}}) + "---\n" +
                                serviceYaml("web6", kVip6) + "---\n" +
                                sliceYaml("web6", "IPv6", {{"2001:db8:1::3", "node1"}}));
  startRouter();
  startAgent(1);
  ASSERT_TRUE(waitUntil([&] {
    auto a = podTable("p1a"), b = podTable("p1b");
    return a.find("kst-pod:kst-vxg mss 1424/1404") != std::string::npos &&
           a.find(kVip) != std::string::npos &&
           b.find("kst-pod:kst-vxg mss 1404/1384") != std::string::npos &&
           b.find(kVip6) != std::string::npos;
  }, 15)) << podTable("p1a") << podTable("p1b") << procs["n1"].log();
  ASSERT_TRUE(waitUntil([&] { return send(kVip, 1000).sent == 1000; }, 15)) << owned("rt");
  ASSERT_TRUE(waitUntil([&] { return send(kVip6, 1000).sent == 1000; }, 15)) << owned("rt");
  ASSERT_EQ(nftLoad("cl", kObserver), 0);

  // IPv4 VIP: announced MSS 1424, no fragment reaches the pod.
  long r0 = nstat("p1a", "IpReasmReqds");
  ASSERT_GE(r0, 0);
  auto s4 = send(kVip, kBytes);
  ASSERT_EQ(s4.sent, kBytes) << s4.raw;
  EXPECT_EQ(s4.announced(), 1424) << s4.raw;
  EXPECT_EQ(nstat("p1a", "IpReasmReqds"), r0) << "clamped TCP was fragmented";
  EXPECT_GE(counter("vip4_all"), 1);
  EXPECT_EQ(counter("vip4_1424"), counter("vip4_all")) << "the SYN-ACK must carry MSS 1424";

  // IPv6 VIP over an IPv6 pod address: 1500 − 56 − 60 = 1384.
  long r6 = nstat("p1b", "Ip6ReasmReqds");
  ASSERT_GE(r6, 0);
  auto s6 = send(kVip6, kBytes);
  ASSERT_EQ(s6.sent, kBytes) << s6.raw;
  EXPECT_EQ(s6.announced(), 1384) << s6.raw;
  EXPECT_EQ(nstat("p1b", "Ip6ReasmReqds"), r6) << "clamped IPv6 TCP was fragmented";
  EXPECT_GE(counter("vip6_all"), 1);
  EXPECT_EQ(counter("vip6_1384"), counter("vip6_all"));

  // The pod's ordinary traffic (its own address, no tunnel) is not clamped.
  auto plain = send("198.19.1.2", 1 << 20);
  ASSERT_EQ(plain.sent, 1 << 20) << plain.raw;
  EXPECT_EQ(plain.announced(), 1460) << plain.raw;
  EXPECT_GE(counter("pod4_all"), 1);
  EXPECT_EQ(counter("pod4_1460"), counter("pod4_all"));

  // A restarted agent with the same flags finds the table as it wants it: no nft event.
  {
    Process mon({"ip", "netns", "exec", ns("p1a"), "nft", "monitor"}, dir + "/nft-p1a.log");
    Process mon6({"ip", "netns", "exec", ns("p1b"), "nft", "monitor"}, dir + "/nft-p1b.log");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    restartAgent({});
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    mon.stop();
    mon6.stop();
    EXPECT_EQ(mon.log(), "") << "the pod's nft table changed on restart";
    EXPECT_EQ(mon6.log(), "") << "the pod's nft table changed on restart";
  }

  // The overhead is exact, not merely conservative: one byte more MTU (MSS 1425) and every
  // full segment no longer fits. (Both sides: the router's device MTU follows the flag too.)
  restartRouter({"--underlay-mtu", "1501"});
  restartAgent({"--underlay-mtu", "1501"});
  ASSERT_TRUE(waitUntil([&] {
    return podTable("p1a").find("kst-pod:kst-vxg mss 1425/1405") != std::string::npos;
  })) << podTable("p1a") << procs["n1"].log();
  long t0 = nstat("p1a", "IpReasmReqds");
  auto t = send(kVip, kBytes);
  ASSERT_EQ(t.sent, kBytes) << t.raw;
  EXPECT_EQ(t.announced(), 1425) << t.raw;
  EXPECT_GT(nstat("p1a", "IpReasmReqds") - t0, 2000) << "MSS 1425 should not fit the tunnel";

  // Negative control: no clamping → MSS 1460 from the VIP, every full segment is two
  // fragments that the pod reassembles.
  restartRouter({"--underlay-mtu", "0"});
  restartAgent({"--underlay-mtu", "0"});
  ASSERT_TRUE(waitUntil([&] {
    auto t = podTable("p1a");
    return t.find("\"kst-pod:kst-vxg\"") != std::string::npos && t.find("maxseg") == std::string::npos;
  })) << podTable("p1a") << procs["n1"].log();
  long u0 = nstat("p1a", "IpReasmReqds");
  auto u = send(kVip, kBytes);
  ASSERT_EQ(u.sent, kBytes) << u.raw;
  EXPECT_EQ(u.announced(), 1460) << u.raw;
  EXPECT_GE(counter("vip4_1460"), 1);
  long grown = nstat("p1a", "IpReasmReqds") - u0;
  // ≈ 8 MiB / 1448 B ≈ 5800 segments, two fragments each (GRO may merge a few).
  EXPECT_GT(grown, 2000) << "without clamping the segments should have been fragmented";
  std::cerr << "reassembly requests without clamping: " << grown << "\n";
  // UDP replies still leave from the VIP with the UDP-only table: covered by dataplane_test.
}

class TunnelMtu : public TcpMss {
 protected:
  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    // This test's namespaces, links and tables are named kmt*.
    usePrefix("kmt");
  }
  /** Every link but lo in the namespaces of the topology gets MTU 9000 (jumbo frames). */
  void jumbo() {
    std::string script = dir + "/jumbo.sh";
    // Twice: a bridge refuses an MTU above its ports' until they have it.
    std::ofstream(script) << "for pass in 1 2; do for l in $(ip -o link show | awk -F': ' "
                             "'$2 != \"lo\" { split($2, a, \"@\"); print a[1] }'); do "
                             "ip link set dev \"$l\" mtu 9000 2>/dev/null; done; done\n";
    for (auto n : {"fab", "cl", "rt", "n1", "n2", "p1a", "p2a"}) in(n, "sh " + script);
    ASSERT_EQ(linkMtu("fab", "br0").second, 9000);
    ASSERT_EQ(linkMtu("p1a", "eth0").second, 9000);
  }
};

TEST_F(TunnelMtu, JumboUnderlaySetsTheRouterDeviceMtuAndTheClampFollows) {
  topology(1);
  jumbo();
  procs["srv"] = Process({"ip", "netns", "exec", ns("p1a"), kTool, "serve", "p1a", "8080"},
                         dir + "/srv.log");
  procs["p1a"] = Process({"ip", "netns", "exec", ns("p1a"), kBulk, "sink", "5201"}, dir + "/p1a.log");
  writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" +
                                sliceYaml("web", "IPv4", {{"198.19.1.2", "node1"}}));
  const std::vector<std::string> jumboFlag{"--underlay-mtu", "9000"};
  startRouter("rt", jumboFlag);
  startAgent(1, jumboFlag);
  // 9000 − 36 (vxlan-gpe over IPv4); the clamp: 8964 − 40 / − 60.
  ASSERT_TRUE(waitUntil([&] { return linkMtu("rt", "kst-vxg").second == 8964; }, 15))
      << out("rt", "ip -d link show dev kst-vxg") << procs["rt"].log();
  ASSERT_TRUE(waitUntil([&] {
    return podTable("p1a").find("kst-pod:kst-vxg mss 8924/8904") != std::string::npos;
  }, 15)) << podTable("p1a") << procs["n1"].log();
  ASSERT_TRUE(reachable(kVip, 15)) << owned("rt");

  // A 4000-byte datagram with DF: through the router's device and the tunnel in one piece.
  long r0 = nstat("p1a", "IpReasmReqds");
  ASSERT_GE(r0, 0);
  EXPECT_EQ(udp(kVip, 1, 4000), (std::vector<std::string>{"p1a 198.18.0.10"}))
      << out("rt", "ip -s link show dev kst-vxg");
  // The clamp follows the device: MSS 8924, and no segment is fragmented either.
  auto s = send(kVip, kBytes);
  ASSERT_EQ(s.sent, kBytes) << s.raw;
  EXPECT_EQ(s.announced(), 8924) << s.raw;
  EXPECT_EQ(nstat("p1a", "IpReasmReqds"), r0) << "fragments reached the pod";

  // Restart with the same flag: the device is adopted as it is (no link event at all).
  const long ifindex = linkMtu("rt", "kst-vxg").first;
  auto nexthops = out("rt", "ip nexthop show proto 211");
  ASSERT_FALSE(nexthops.empty());
  {
    Process mon({"ip", "netns", "exec", ns("rt"), "ip", "monitor", "link"}, dir + "/mon.log");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    restartRouter(jumboFlag);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    mon.stop();
    EXPECT_EQ(mon.log(), "") << "links changed on restart";
  }

  // Another flag: the MTU changes in place (same device, nexthops untouched), and the
  // datagram no longer fits (the router answers "fragmentation needed").
  restartRouter({"--underlay-mtu", "1500"});
  ASSERT_TRUE(waitUntil([&] { return linkMtu("rt", "kst-vxg").second == 1464; }, 15))
      << out("rt", "ip link show dev kst-vxg") << procs["rt"].log();
  EXPECT_EQ(linkMtu("rt", "kst-vxg").first, ifindex) << "the device was recreated";
  EXPECT_EQ(out("rt", "ip nexthop show proto 211"), nexthops);
  EXPECT_EQ(udp(kVip, 1, 4000), (std::vector<std::string>{"FAIL"}));
  EXPECT_TRUE(reachable(kVip)) << "small packets still pass";

  // 0: the kernel's default MTU for the device.
  restartRouter({"--underlay-mtu", "0"});
  ASSERT_TRUE(waitUntil([&] { return linkMtu("rt", "kst-vxg").second == 1500; }, 15))
      << out("rt", "ip link show dev kst-vxg") << procs["rt"].log();
  EXPECT_EQ(linkMtu("rt", "kst-vxg").first, ifindex);
}

}  // namespace
}  // namespace kst::e2e
