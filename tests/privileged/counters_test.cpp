// Source ranges and traffic counters on a real router (issue: loadBalancerSourceRanges and exact
// per-VIP / per-endpoint accounting). The Service allows one client address; the client
// namespace holds a second address outside the range and sends from either (the route's source
// hint). What is shown, for IPv4 and IPv6, TCP and UDP:
//   - the allowed client connects, the refused one gets nothing;
//   - the router's refused counters (per VIP and the source_range total) rose by exactly the
//     packets the refused client sent (counted independently by an nft counter in the client's
//     own output hook);
//   - N datagrams from the allowed client raise the VIP counter by exactly N, the per-endpoint
//     counters rise by N in total, each endpoint's by the datagrams its pod answered;
//   - the flow table occupancy the reader reports equals the element count `nft list map`
//     shows.
// The counters are read the way the daemon reads them (NftClientImpl::readCounters, raw
// nfnetlink) from a thread that entered the router's namespace; in the ".bpf" variant through
// BpfClassifier::readCounters from the router's pinned maps, and the flow table as
// `bpftool map dump` shows it.
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "linux/bpf_classifier.h"
#include "linux/nft_client.h"
#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kVip4 = "203.0.113.10", kVip6 = "2001:db8:ffff::10";
// The topology's client address is allowed; a second one (no other host's in scripts/lib/topo.sh)
// is not.
const std::string kAllowed4 = "198.18.0.10", kRefused4 = "198.18.0.99";
const std::string kAllowed6 = "2001:db8:f::10", kRefused6 = "2001:db8:f::99";

class Counters : public E2E, public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    usePrefix("knc");
    topology(1, 1);  // pods p1a (198.19.1.2, 2001:db8:1::2) and p2a (198.19.2.2, 2001:db8:2::2)
    serve("p1a");
    serve("p2a");
  }

  bool v6() const { return GetParam(); }
  std::string vip() const { return v6() ? kVip6 : kVip4; }
  std::string allowed() const { return v6() ? kAllowed6 : kAllowed4; }
  std::string refused() const { return v6() ? kRefused6 : kRefused4; }
  std::string podIp(const std::string& pod) const {
    const char node = pod[1];
    return v6() ? std::string("2001:db8:") + node + "::2" : std::string("198.19.") + node + ".2";
  }

  void writeService() {
    std::string y = serviceYaml("svc", vip());
    y += "spec:\n  loadBalancerSourceRanges: [\"" + kAllowed4 + "/32\", \"" + kAllowed6 +
         "/128\"]\n";
    std::vector<Ep> eps{{podIp("p1a"), "node1"}, {podIp("p2a"), "node2"}};
    writeManifest("svc.yaml", y + "---\n" + sliceYaml("svc", v6() ? "IPv6" : "IPv4", eps));
  }

  /** The client sends from `src` (the route's source hint). */
  void sendFrom(const std::string& src) {
    auto r = v6() ? in("cl", "ip -6 route replace 2001:db8:ffff::/64 via 2001:db8:f::1 src " + src)
                  : in("cl", "ip route replace 203.0.113.0/24 via 198.18.0.1 src " + src);
    ASSERT_EQ(r.rc, 0) << r.out;
  }

  /** Packets the client sent from addr to the VIP (its own output hook's named counter). */
  uint64_t clientPackets(const std::string& name) {
    auto j = nlohmann::json::parse(out("cl", "nft -j list counter inet knc_client " + name),
                                   nullptr, false);
    if (j.is_discarded()) return UINT64_MAX;
    for (auto& o : j["nftables"])
      if (o.contains("counter")) return o["counter"]["packets"].get<uint64_t>();
    return UINT64_MAX;
  }

  /** The router's counters, read by the daemon's reader inside the router's namespace. */
  dp::NftCounterSnapshot routerCounters() {
    dp::NftCounterSnapshot snap;
    std::string error;
    if (bpfDatapath()) {
      BpfOptions o;
      o.pinDir = bpfPinDir("rt");
      o.repair = false;
      auto r = BpfClassifier(DataplaneConfig{}, o).readCounters();
      if (r) snap = *r;
      EXPECT_TRUE(r) << r.error().message;
      return snap;
    }
    std::thread t([&] {
      int fd = open(("/run/netns/" + ns("rt")).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
        error = "cannot enter the router's namespace";
        if (fd >= 0) close(fd);
        return;
      }
      close(fd);
      DataplaneConfig cfg;
      NftClientImpl nft(cfg);
      auto r = nft.readCounters();
      if (r) snap = *r;
      else error = r.error().message;
    });
    t.join();
    EXPECT_EQ(error, "");
    return snap;
  }

  /** Elements of a flow map as `nft -j list map` (bpf: `bpftool map dump`) shows them. */
  uint64_t listedFlows(const std::string& map) {
    if (bpfDatapath()) {
      uint64_t n = 0;
      for (auto& [mark, count] : flowPins("rt", map == "flow6")) n += count;
      return n;
    }
    auto j = nlohmann::json::parse(
        out("rt", "nft -j list map inet kube_service_tunnel " + map), nullptr, false);
    if (j.is_discarded()) return UINT64_MAX;
    for (auto& o : j["nftables"])
      if (o.contains("map")) return o["map"].contains("elem") ? o["map"]["elem"].size() : 0;
    return UINT64_MAX;
  }
};

TEST_P(Counters, SourceRangesRefuseAndCountExactly) {
  const IpAddress vipIp = *IpAddress::parse(vip());
  // The second client address, and the client's own count of what each address sent.
  ASSERT_EQ(in("cl", v6() ? "ip -6 addr add " + refused() + "/64 dev eth0 nodad"
                          : "ip addr add " + refused() + "/24 dev eth0").rc, 0);
  const char* ipk = v6() ? "ip6" : "ip";
  ASSERT_EQ(nftLoad("cl", "table inet knc_client {\n"
                          "  counter refused { }\n  counter allowed_udp { }\n"
                          "  chain out {\n    type filter hook output priority 0;\n"
                          "    " + std::string(ipk) + " saddr " + refused() + " " + ipk +
                          " daddr " + vip() + " counter name \"refused\"\n"
                          "    " + ipk + " saddr " + allowed() + " " + ipk + " daddr " + vip() +
                          " meta l4proto udp counter name \"allowed_udp\"\n  }\n}\n"),
            0);

  writeService();
  startRouter();
  startAgent(1);
  startAgent(2);
  sendFrom(allowed());
  ASSERT_TRUE(reachable(vip(), 20)) << in("rt", "nft list ruleset").out
                                    << in("cl", "ip route").out << in("cl", "ip -6 route").out
                                    << in("cl", kTool + " tcp " + vip() + " 8080 2").out;

  // The refused client: TCP and UDP, nothing answers.
  auto before = routerCounters();
  sendFrom(refused());
  for (auto& l : tcp(vip(), 2)) EXPECT_EQ(l, "FAIL");
  for (auto& l : udp(vip(), 2)) EXPECT_EQ(l, "FAIL");
  // A SYN the kernel sent as the connection was given up is still on its way: let it arrive.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const uint64_t sent = clientPackets("refused");
  ASSERT_GE(sent, 4u);  // at least a SYN per connection and a datagram per attempt
  auto after = routerCounters();
  EXPECT_EQ(after.refusedByVip[vipIp].packets - before.refusedByVip[vipIp].packets, sent);
  EXPECT_EQ(after.refused["source_range"].packets - before.refused["source_range"].packets, sent);
  EXPECT_EQ(after.refused["no_bucket"].packets, before.refused["no_bucket"].packets);
  EXPECT_EQ(after.vip[vipIp].packets - before.vip[vipIp].packets, sent);
  uint64_t epBefore = 0, epAfter = 0;
  for (auto& [k, v] : before.endpoint) epBefore += v.packets;
  for (auto& [k, v] : after.endpoint) epAfter += v.packets;
  EXPECT_EQ(epAfter, epBefore);  // nothing of it reached an endpoint

  // The allowed client: TCP connects; N datagrams (one flow each) are counted exactly, per VIP
  // and per endpoint where each was answered.
  sendFrom(allowed());
  for (auto& l : tcp(vip(), 2)) EXPECT_NE(l, "FAIL");
  constexpr int kN = 40;
  // The closed connections' last segments (an RST answering a late FIN) pass before counting.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  before = routerCounters();
  const uint64_t udpBefore = clientPackets("allowed_udp");
  auto answers = udp(vip(), kN);
  ASSERT_EQ(answers.size(), size_t(kN));
  std::map<IpAddress, uint64_t> perPod;
  for (auto& a : answers) {
    std::istringstream s(a);
    std::string pod, client;
    s >> pod >> client;
    ASSERT_TRUE(pod == "p1a" || pod == "p2a") << a;
    EXPECT_EQ(client, allowed());  // the pod saw the client's address
    ++perPod[*IpAddress::parse(podIp(pod))];
  }
  ASSERT_EQ(clientPackets("allowed_udp") - udpBefore, uint64_t(kN)) << "a datagram was resent";
  after = routerCounters();
  EXPECT_EQ(after.vip[vipIp].packets - before.vip[vipIp].packets, uint64_t(kN));
  uint64_t total = 0;
  for (auto& [ep, n] : perPod) {
    auto d = after.endpoint[{vipIp, ep}].packets - before.endpoint[{vipIp, ep}].packets;
    EXPECT_EQ(d, n) << ep.str();
    total += d;
  }
  EXPECT_EQ(total, uint64_t(kN));
  EXPECT_EQ(after.refusedByVip[vipIp], before.refusedByVip[vipIp]);
  // Bytes: each datagram's IP packet ("hi\n" + UDP + IP header).
  const uint64_t len = 3 + 8 + (v6() ? 40 : 20);
  EXPECT_EQ(after.vip[vipIp].bytes - before.vip[vipIp].bytes, kN * len);

  // Flow table occupancy: as `nft list map` shows it (nothing is sent in between).
  EXPECT_GE(v6() ? after.flows6 : after.flows4, uint64_t(kN));
  auto now = routerCounters();
  EXPECT_EQ(now.flows4, listedFlows("flow4"));
  EXPECT_EQ(now.flows6, listedFlows("flow6"));
  EXPECT_EQ(now.flowLimit, DataplaneConfig{}.flowTableSize);

  // Counters of a removed endpoint disappear with it; the VIP's stay.
  writeManifest("svc.yaml", serviceYaml("svc", vip()) + "spec:\n  loadBalancerSourceRanges: [\"" +
                                kAllowed4 + "/32\", \"" + kAllowed6 + "/128\"]\n---\n" +
                                sliceYaml("svc", v6() ? "IPv6" : "IPv4",
                                          {{podIp("p1a"), "node1"}}));
  const IpAddress gone = *IpAddress::parse(podIp("p2a"));
  EXPECT_TRUE(waitUntil([&] { return !routerCounters().endpoint.contains({vipIp, gone}); }, 15));
  EXPECT_TRUE(routerCounters().vip.contains(vipIp));
}

INSTANTIATE_TEST_SUITE_P(Family, Counters, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "IPv6" : "IPv4"; });

}  // namespace
}  // namespace kst::e2e
