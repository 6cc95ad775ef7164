// Every encapsulation mode end to end, on a kernel that has GRE, IPIP and MPLS: Debian's,
// booted by tools/vm (this binary carries the CTest label "vm" and runs only there; vxlan-gpe
// also runs on the host and is the reference the other modes are held to).
//
// Per mode, in one topology (a dozen `ip -batch` execs, see vm_harness.h):
//   1. ping, TCP and UDP from the client reach the pods, which see the client's own address;
//      two IPv4 VIPs share a pod (p1a) without colliding: one decap link holds both VIPs; an
//      IPv6 VIP reaches IPv6 pods over an IPv6 underlay (gre: refused with a Problem);
//   2. the packets travel encapsulated: tunnel device counters rise on both sides;
//   3. a daemon restart changes no kernel object (ip monitor, nft monitor);
//   4. removing one endpoint moves only the flows that were on it;
//   5. negative control: with the agent stopped, break the pod's decapsulation while the VIP
//      stays local in the pod (decap device deleted and VIP put on lo; MPLS: label route
//      deleted): exactly the flows of that pod stop, so they were arriving encapsulated.
//      The restarted agent repairs the pod;
//   6. removing the VIPs one after the other leaves nothing owned behind, router or pod.
//
// Topologies:
//   nodes (vxlan-gpe, ipip, gre-flow, gre): scripts/lib/topo.sh's layout: client ─ fabric ─
//     router, node1 (pods p1a .1.2, p1b .1.3, p1c .1.4 / 2001:db8:1::4), node2 (p2a, p2b,
//     p2c); agents on node1/node2; pods answer through their node straight to the client (DSR).
//   mpls: client ─ router+node (role both) ─ the same pods on veths: the pods are on-link
//     neighbours of the router, which `encap mpls L via POD` requires (docs/modes.md: the
//     router role runs on the node that hosts the endpoints).
#include <algorithm>
#include <set>

#include "vm/vm_harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10";   // web: p1a, p1b, p2a
const std::string kVip2 = "203.0.113.11";  // web2: p1a, p2b (shares p1a with web)
const std::string kVip3 = "203.0.113.12";  // mpls only: an endpoint that is not on-link
const std::string kVip6 = "2001:db8:ffff::10";  // web6: p1c, p2c (IPv6 pods, IPv6 underlay)
const std::string kClient = "198.18.0.10";
const std::string kClient6 = "2001:db8:f::10";

struct ModeSpec {
  std::string mode;
  std::string routerDev;  // flow device on the router; "" = per endpoint (gre) or none (mpls)
  std::string podDev;     // the pod's decap device ("lo" for mpls)
};

void PrintTo(const ModeSpec& m, std::ostream* os) { *os << m.mode; }

std::string name(const ::testing::TestParamInfo<ModeSpec>& i) {
  std::string n = i.param.mode;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

// IPv4 endpoints; the IPv6 endpoints (web6) are other pods: a pod serving an IPv4 and an IPv6
// VIP through its two addresses is not supported yet (the agent plans per pod address).
const std::map<std::string, std::string> kPodIp{
    {"p1a", "198.19.1.2"}, {"p1b", "198.19.1.3"}, {"p2a", "198.19.2.2"}, {"p2b", "198.19.2.3"}};
const std::map<std::string, std::string> kPod6{{"p1c", "2001:db8:1::4"}, {"p2c", "2001:db8:2::4"}};

class Modes : public VmE2E, public ::testing::WithParamInterface<ModeSpec> {
 protected:
  bool mpls() const { return GetParam().mode == "mpls"; }
  std::string nodeOf(const std::string& pod) const {
    return mpls() ? "node1" : "node" + pod.substr(1, 1);
  }
  /** Namespace of the daemon that serves a pod as agent. */
  std::string agentNs(const std::string& pod) const { return mpls() ? "rt" : "n" + pod.substr(1, 1); }

  void SetUp() override {
    VmE2E::SetUp();
    if (IsSkipped()) return;
    if (GetParam().mode != "vxlan-gpe" && !inVm())
      GTEST_SKIP() << "needs GRE/IPIP/MPLS: runs in the VM (tools/vm/run-ctest.sh BUILD -L vm)";
  }

  /** The MPLS topology: cl ─ rt (router and node1) ─ p1a p1b p2a p2b on veths, on-link. */
  void mplsTopology() {
    for (auto n : {"cl", "rt", "p1a", "p1b", "p1c", "p2a", "p2b", "p2c"}) addNs(n);
    addVeth("cl", "eth0", "rt", "eth0");
    batch("cl", "addr add " + kClient + "/24 dev eth0");
    batch("cl", "addr add " + kClient6 + "/64 dev eth0 nodad");
    batch("cl", "route add 203.0.113.0/24 via 198.18.0.1");
    batch("cl", "route add 2001:db8:ffff::/64 via 2001:db8:f::1");
    batch("rt", "addr add 198.18.0.1/24 dev eth0");
    batch("rt", "addr add 2001:db8:f::1/64 dev eth0 nodad");
    batch("rt", "addr add 198.19.1.1/32 dev lo");
    batch("rt", "addr add 198.19.2.1/32 dev lo");
    // 198.19.9.0/24 is reachable only through a gateway: not usable for MPLS.
    batch("rt", "route add 198.19.9.0/24 via " + kClient);
    for (auto pod : {"p1a", "p1b", "p1c", "p2a", "p2b", "p2c"}) {
      std::string p = pod, i = p.substr(1, 1), v = "v" + p.substr(1);
      std::string host = p[2] == 'a' ? "2" : p[2] == 'b' ? "3" : "4";
      std::string ip = "198.19." + i + "." + host, ip6 = "2001:db8:" + i + "::" + host;
      addVeth(pod, "eth0", "rt", v);
      batch("rt", "addr add fe80::1/64 dev " + v + " nodad");
      batch("rt", "route add " + ip + "/32 dev " + v);
      batch("rt", "route add " + ip6 + "/128 dev " + v);
      podAddress(pod, ip, "198.19." + i + ".1", ip6);
      agentSees("rt", pod);
    }
    ASSERT_NO_FATAL_FAILURE(build());
    ASSERT_NO_FATAL_FAILURE(sysctl("rt", "net/ipv4/ip_forward", "1"));
    ASSERT_NO_FATAL_FAILURE(sysctl("rt", "net/ipv6/conf/all/forwarding", "1"));
  }

  std::string webYaml(bool withP2a = true) const {
    std::vector<Ep> eps{{kPodIp.at("p1a"), nodeOf("p1a")}, {kPodIp.at("p1b"), nodeOf("p1b")}};
    if (withP2a) eps.push_back({kPodIp.at("p2a"), nodeOf("p2a")});
    return serviceYaml("web", kVip) + "---\n" + sliceYaml("web", "IPv4", eps);
  }
  std::string web6Yaml() const {
    return serviceYaml("web6", kVip6) + "---\n" +
           sliceYaml("web6", "IPv6",
                     {{kPod6.at("p1c"), nodeOf("p1c")}, {kPod6.at("p2c"), nodeOf("p2c")}});
  }
  std::string web2Yaml() const {
    return serviceYaml("web2", kVip2) + "---\n" +
           sliceYaml("web2", "IPv4",
                     {{kPodIp.at("p1a"), nodeOf("p1a")}, {kPodIp.at("p2b"), nodeOf("p2b")}});
  }

  void startAll() {
    const auto& m = GetParam().mode;
    if (mpls()) {
      startDaemon("rt", "both", m, "node1", "rt");
    } else {
      startDaemon("rt", "router", m);
      startDaemon("n1", "agent", m, "node1", "n1");
      startDaemon("n2", "agent", m, "node2", "n2");
    }
  }
  std::vector<std::string> daemons() const {
    return mpls() ? std::vector<std::string>{"rt"} : std::vector<std::string>{"rt", "n1", "n2"};
  }
  std::vector<std::string> everyNs() const {
    std::vector<std::string> v = daemons();
    for (auto& [pod, ip] : kPodIp) v.push_back(pod);
    for (auto& [pod, ip] : kPod6) v.push_back(pod);
    return v;
  }
  /** Router-side devices whose tx counters carry the encapsulated packets. */
  std::vector<std::pair<std::string, std::string>> routerDevs() const {
    if (!GetParam().routerDev.empty()) return {{"rt", GetParam().routerDev}};
    std::vector<std::pair<std::string, std::string>> v;
    if (GetParam().mode == "gre")
      for (auto& [pod, ip] : kPodIp) v.emplace_back("rt", greLinkFor(ip));
    return v;
  }
  std::vector<std::pair<std::string, std::string>> podDevs() const {
    std::vector<std::pair<std::string, std::string>> v;
    if (mpls()) return v;
    for (auto& [pod, ip] : kPodIp) v.emplace_back(pod, GetParam().podDev);
    return v;
  }
  static std::string podOf(const std::string& answer) { return answer.substr(0, answer.find(' ')); }
  /** Waits until every daemon's current log says a pass finished. */
  void waitReconciled() {
    for (auto& n : daemons())
      ASSERT_TRUE(waitUntil([&] { return procs[n].log().find("reconciled") != std::string::npos; },
                            30))
          << n << ":\n" << procs[n].log();
  }
};

TEST_P(Modes, EndToEnd) {
  const ModeSpec& spec = GetParam();
  auto t0 = std::chrono::steady_clock::now();
  auto stamp = [&](const char* what) {
    std::cerr << "[" << spec.mode << "] " << what << " at "
              << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()
              << " s\n";
  };
  if (mpls())
    ASSERT_NO_FATAL_FAILURE(mplsTopology());
  else
    ASSERT_NO_FATAL_FAILURE(nodesTopology());
  for (auto& [pod, ip] : kPodIp) serve(pod);
  for (auto& [pod, ip] : kPod6) serve(pod);
  writeManifest("web.yaml", webYaml());
  writeManifest("web2.yaml", web2Yaml());
  writeManifest("web6.yaml", web6Yaml());
  if (mpls())
    writeManifest("web3.yaml", serviceYaml("web3", kVip3) + "---\n" +
                                   sliceYaml("web3", "IPv4", {{"198.19.9.9", "node9"}}));
  startAll();
  stamp("topology up, daemons started");
  ASSERT_TRUE(reachable(kVip, 30)) << joined(ownedAll(everyNs()));
  ASSERT_TRUE(reachable(kVip2, 10)) << joined(ownedAll(everyNs()));
  stamp("reachable");

  // ---- 1. ping, TCP, UDP with the client's source; two VIPs in one pod ------------------
  {
    SCOPED_TRACE("traffic");
    auto answers = tcp(kVip, 30);
    ASSERT_EQ(answers.size(), 30u);
    std::set<std::string> pods;
    for (auto& a : answers) {
      ASSERT_NE(a, "FAIL") << joined(ownedAll(everyNs()));
      pods.insert(podOf(a));
      EXPECT_EQ(a.substr(a.find(' ') + 1), kClient) << "the pod must see the client's address";
    }
    for (auto& p : pods) EXPECT_TRUE(p == "p1a" || p == "p1b" || p == "p2a") << p;
    EXPECT_GE(pods.size(), 2u);
    std::set<std::string> pods2;
    for (auto& a : tcp(kVip2, 12)) {
      ASSERT_NE(a, "FAIL");
      pods2.insert(podOf(a));
      EXPECT_EQ(a.substr(a.find(' ') + 1), kClient);
    }
    EXPECT_EQ(pods2, (std::set<std::string>{"p1a", "p2b"}));
    for (auto& a : udp(kVip, 4)) EXPECT_TRUE(a.ends_with(" " + kClient)) << a;
    // IPv6 VIP over an IPv6 underlay (the pods' IPv6 addresses).
    if (spec.mode == "gre") {
      // Per-endpoint ip6gre would need the router's source address per pod: refused, loudly.
      EXPECT_TRUE(waitUntil([&] {
        return procs["rt"].log().find("gre mode: endpoint 2001:db8:1::4 of VIP " + kVip6 +
                                      " is IPv6") != std::string::npos;
      }, 5)) << procs["rt"].log();
    } else {
      std::set<std::string> pods6;
      EXPECT_TRUE(reachable(kVip6, 10)) << joined(ownedAll({"rt", "p1c"}));
      for (auto& a : tcp(kVip6, 10)) {
        EXPECT_NE(a, "FAIL");
        pods6.insert(podOf(a));
        EXPECT_TRUE(a.ends_with(" " + kClient6)) << a;
      }
      EXPECT_EQ(pods6, (std::set<std::string>{"p1c", "p2c"}));
      EXPECT_EQ(in("cl", "ping -6 -c 2 -i 0.2 -W 2 " + kVip6).rc, 0);
    }
    EXPECT_EQ(in("cl", "ping -c 3 -i 0.2 -W 2 " + kVip).rc, 0);
    EXPECT_EQ(in("cl", "ping -c 2 -i 0.2 -W 2 " + kVip2).rc, 0);

    // p1a serves two VIPs: one decap link (or lo + one label route) holding both.
    auto own = ownedAll({"rt", "p1a"});
    const std::string& p1a = own["p1a"];
    EXPECT_NE(p1a.find(kVip + "/32"), std::string::npos) << p1a;
    EXPECT_NE(p1a.find(kVip2 + "/32"), std::string::npos) << p1a;
    auto linkLines = lines(ipn("p1a", "-o link show").out);
    int kstLinks = 0;
    for (auto& l : linkLines)
      if (l.find(": kst") != std::string::npos) ++kstLinks;
    EXPECT_EQ(kstLinks, mpls() ? 0 : 1) << p1a;
    if (mpls()) {
      EXPECT_EQ(lines(ipn("p1a", "-f mpls route show").out).size(), 1u) << p1a;
      EXPECT_NE(p1a.find("100 dev lo proto 211"), std::string::npos) << p1a;
    }
    if (spec.mode == "gre") {
      // One GRE link per endpoint on the router (4 endpoints over 2 VIPs), named by address.
      const std::string& rt = own["rt"];
      int greLinks = 0;
      for (auto& l : lines(rt))
        if (l.find(": kst") != std::string::npos && l.find("gre") != std::string::npos) ++greLinks;
      EXPECT_EQ(greLinks, 4) << rt;
      for (auto& [pod, ip] : kPodIp)
        EXPECT_NE(rt.find(": " + greLinkFor(ip) + "@"), std::string::npos) << pod << "\n" << rt;
    }
    if (mpls()) {
      // The endpoint that is not on-link is refused with a clear message, and gets nothing.
      EXPECT_TRUE(waitUntil([&] {
        return procs["rt"].log().find("198.19.9.9 of VIP " + kVip3 + " is not directly connected") !=
               std::string::npos;
      }, 5)) << procs["rt"].log();
      EXPECT_EQ(own["rt"].find("198.19.9.9"), std::string::npos) << own["rt"];
    }
  }
  stamp("traffic checked");

  // ---- 2. encapsulated: the tunnel devices count the packets -----------------------------
  if (!mpls()) {
    SCOPED_TRACE("counters");
    auto txBefore = counters(routerDevs(), "tx_packets");
    auto rxBefore = counters(podDevs(), "rx_packets");
    auto answers = tcp(kVip, 20);
    for (auto& a : answers) ASSERT_NE(a, "FAIL");
    auto txAfter = counters(routerDevs(), "tx_packets");
    auto rxAfter = counters(podDevs(), "rx_packets");
    // A TCP exchange sends >= 4 packets client → pod (SYN, ACK, data, RST).
    EXPECT_GE(sum(txAfter) - sum(txBefore), 80u);
    EXPECT_GE(sum(rxAfter) - sum(rxBefore), 80u);
    std::map<std::string, int> perPod;
    for (auto& a : answers) perPod[podOf(a)]++;
    for (auto& [pod, n] : perPod)
      EXPECT_GE(rxAfter[pod + "/" + spec.podDev] - rxBefore[pod + "/" + spec.podDev],
                uint64_t(4 * n))
          << pod;
  }

  // ---- 3. restart changes no kernel object -------------------------------------------------
  {
    SCOPED_TRACE("restart");
    auto mon = watch({"rt", "p1a", "p2b"}, {"rt"});
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    for (auto& n : daemons()) EXPECT_EQ(procs[n].stop(), 0) << n;
    startAll();
    ASSERT_NO_FATAL_FAILURE(waitReconciled());
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    EXPECT_EQ(stopAll(mon), "") << "kernel objects changed on restart";
    EXPECT_NE(procs["rt"].log().find("no changes"), std::string::npos) << procs["rt"].log();
  }
  stamp("restart checked");

  // ---- 4. removing one endpoint moves only its flows ----------------------------------------
  auto before = tcp(kVip, 60, 21000);
  {
    SCOPED_TRACE("remove p2a");
    ASSERT_EQ(before.size(), 60u);
    for (auto& a : before) ASSERT_NE(a, "FAIL");
    writeManifest("web.yaml", webYaml(false));
    // p2a is still an endpoint of nothing else: its nexthop (and GRE link) must go.
    ASSERT_TRUE(waitUntil([&] {
      auto o = sh("ip -n " + ns("rt") + " nexthop show; ip -n " + ns("rt") + " -o link show").out;
      return o.find("198.19.2.2 ") == std::string::npos &&
             o.find(greLinkFor("198.19.2.2")) == std::string::npos;
    }, 15)) << joined(ownedAll({"rt"}));
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // pinned flows expire (1 s)
    auto after = tcp(kVip, 60, 21000);
    ASSERT_EQ(after.size(), 60u);
    int moved = 0, onP2a = 0;
    for (size_t i = 0; i < 60; ++i) {
      ASSERT_NE(after[i], "FAIL") << "flow " << i;
      if (podOf(before[i]) == "p2a") {
        ++onP2a;
        EXPECT_NE(podOf(after[i]), "p2a") << "flow " << i;
        ++moved;
      } else {
        EXPECT_EQ(after[i], before[i]) << "flow " << i << " moved although its pod stayed";
      }
    }
    EXPECT_GT(onP2a, 0) << "no flow was on p2a: the check proves nothing";
    EXPECT_EQ(moved, onP2a);
    before = after;
  }
  stamp("endpoint removal checked");

  // ---- 5. negative control: break p1a's decapsulation, exactly its flows stop ---------------
  {
    SCOPED_TRACE("negative control");
    std::vector<int> onP1a, elsewhere;
    for (size_t i = 0; i < before.size(); ++i)
      (podOf(before[i]) == "p1a" ? onP1a : elsewhere).push_back(21000 + int(i));
    ASSERT_FALSE(onP1a.empty());
    ASSERT_FALSE(elsewhere.empty());
    std::string agent = agentNs("p1a");
    procs[agent].stop();  // nothing may repair the pod meanwhile
    Cmd broke = mpls() ? ipn("p1a", "-f mpls route del 100 dev lo")
                       : sh("ip -n " + ns("p1a") + " link del " + spec.podDev + " && ip -n " +
                            ns("p1a") + " addr add " + kVip + "/32 dev lo");
    ASSERT_EQ(broke.rc, 0) << broke.out;
    // The VIP is still local in p1a (on lo): plain IP packets would be answered.
    EXPECT_NE(ipn("p1a", "-o addr show dev lo").out.find(kVip + "/32"), std::string::npos);
    EXPECT_EQ(tcp(kVip, 1, onP1a[0]), std::vector<std::string>{"FAIL"})
        << "flow to p1a still answered without its decapsulation";
    EXPECT_EQ(tcp(kVip, 1, elsewhere[0]), std::vector<std::string>{before[elsewhere[0] - 21000]})
        << "other pods must be unaffected";
    // Repair: the restarted agent recreates what was removed.
    if (!mpls()) {
      ASSERT_EQ(ipn("p1a", "addr del " + kVip + "/32 dev lo").rc, 0);
    }
    if (mpls())
      startDaemon("rt", "both", spec.mode, "node1", "rt");
    else
      startDaemon(agent, "agent", spec.mode, nodeOf("p1a"), agent);
    EXPECT_TRUE(waitUntil([&] {
      return tcp(kVip, 1, onP1a[0]) == std::vector<std::string>{before[onP1a[0] - 21000]};
    }, 20)) << procs[agent].log();
  }
  stamp("negative control checked");

  // ---- 6. removing the VIPs leaves nothing behind --------------------------------------------
  {
    SCOPED_TRACE("remove VIPs");
    removeManifest("web.yaml");
    removeManifest("web6.yaml");
    if (mpls()) removeManifest("web3.yaml");
    // web2 (p1a, p2b) stays: p1a keeps one decap link with only VIP2; p1b has nothing.
    std::map<std::string, std::string> own;
    EXPECT_TRUE(waitUntil([&] {
      own = ownedAll({"rt", "p1a", "p1b", "p1c"});
      return own["p1b"].empty() && own["p1c"].empty() &&
             own["p1a"].find(kVip + "/") == std::string::npos &&
             own["rt"].find(kVip + " ") == std::string::npos &&
             own["rt"].find(kVip + "/") == std::string::npos;
    }, 15)) << joined(own);
    EXPECT_NE(own["p1a"].find(kVip2 + "/32"), std::string::npos) << own["p1a"];
    if (spec.mode == "gre") {
      EXPECT_EQ(own["rt"].find(greLinkFor(kPodIp.at("p1b"))), std::string::npos) << own["rt"];
      EXPECT_NE(own["rt"].find(greLinkFor(kPodIp.at("p1a"))), std::string::npos) << own["rt"];
    }
    EXPECT_TRUE(reachable(kVip2, 5));
    removeManifest("web2.yaml");
    EXPECT_TRUE(waitUntil([&] {
      own = ownedAll(everyNs());
      return joined(own).empty();
    }, 20)) << joined(own);
  }
  stamp("VIP removal checked");
  for (auto& n : daemons()) EXPECT_TRUE(procs[n].running()) << n << " died:\n" << procs[n].log();
}

INSTANTIATE_TEST_SUITE_P(
    Vm, Modes,
    ::testing::Values(ModeSpec{"vxlan-gpe", "kst-vxg", "kst-vxg"},
                      ModeSpec{"ipip", "kst-ipip", "kst-ipip"},
                      ModeSpec{"gre-flow", "kst-gre", "kst-gre"},
                      ModeSpec{"gre", "", "kst-gre"}, ModeSpec{"mpls", "", "lo"}),
    name);

}  // namespace
}  // namespace kst::e2e
