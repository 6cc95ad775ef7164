// Every endpoint served: a VIP with 300 endpoints and `--buckets 64` (its bucket count grows to
// 1024, hashing/balance.h) sends new flows to every one of them, and growing from 20 endpoints
// to 300 while TCP connections are held resets none of them (the flow table pins them across
// the change of the VIP's bucket count and table).
//
// 300 endpoints in 8 pod namespaces: each pod owns about 38 endpoint addresses (/32 on its
// eth0, routed to it by its node). Which addresses received flows is counted in each pod by an
// nft set of the outer (vxlan-gpe) destination addresses, a table of this test's own.
#include <fstream>
#include <set>

#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10";
constexpr int kEndpoints = 300;
const char kLetters[] = "abcd";

class Spread : public E2E {
 protected:
  struct Endpoint {
    std::string ip, pod, node;
  };
  std::vector<Endpoint> eps;  // the order of growth: the first 20 spread over all 8 pods
  std::string seenTable;

  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    usePrefix("ksp");
    seenTable = prefix + "_seen";
    topology(4, 1);  // pods p1a … p1d, p2a … p2d
    // 38 addresses per pod (304 ≥ 300): 198.19.N.(10 + 40·k + j), routed by node N to pod k.
    std::vector<std::vector<Endpoint>> perPod;
    for (int node = 1; node <= 2; ++node) {
      std::string nodeBatch;
      for (int k = 0; k < 4; ++k) {
        std::string pod = std::string("p") + char('0' + node) + kLetters[k];
        std::string podBatch;
        perPod.emplace_back();
        for (int j = 0; j < 38; ++j) {
          std::string ip = "198.19." + std::to_string(node) + "." + std::to_string(10 + 40 * k + j);
          podBatch += "addr add " + ip + "/32 dev eth0\n";
          nodeBatch += "route add " + ip + "/32 dev v" + kLetters[k] + "\n";
          perPod.back().push_back({ip, pod, "node" + std::to_string(node)});
        }
        ASSERT_EQ(batch(pod, podBatch), 0);
        ASSERT_EQ(nftLoad(pod, "table ip " + seenTable + " {\n"
                               "  set seen { type ipv4_addr; size 4096; flags dynamic; }\n"
                               "  chain pre {\n"
                               "    type filter hook prerouting priority -300; policy accept;\n"
                               "    udp dport 4790 add @seen { ip daddr }\n"
                               "  }\n"
                               "}\n"),
                  0);
        serve(pod);
      }
      ASSERT_EQ(batch("n" + std::to_string(node), nodeBatch), 0);
    }
    // Round robin over the pods, so that the first endpoints are in every pod.
    for (size_t j = 0; eps.size() < kEndpoints; ++j)
      for (auto& p : perPod)
        if (eps.size() < kEndpoints && j < p.size()) eps.push_back(p[j]);
  }

  int batch(const std::string& n, const std::string& cmds) {
    std::string f = dir + "/" + n + ".batch";
    std::ofstream(f) << cmds;
    return in(n, "ip -batch " + f).rc;
  }

  void endpoints(size_t n) {
    std::vector<Ep> v;
    for (size_t i = 0; i < n; ++i) v.push_back({eps[i].ip, eps[i].node});
    writeManifest("web-slice.yaml", sliceYaml("web", "IPv4", v));
  }

  /** The VIP's bucket count on the router (its count element), 0 without one. */
  uint32_t bucketCount() {
    auto counts = bucketCounts("rt");
    auto it = counts.find(kVip);
    return it == counts.end() ? 0 : it->second;
  }

  /** Endpoint addresses that received an encapsulated packet, over all pods. */
  std::set<std::string> seen() {
    std::set<std::string> out;
    for (int node = 1; node <= 2; ++node)
      for (int k = 0; k < 4; ++k) {
        std::string pod = std::string("p") + char('0' + node) + kLetters[k];
        auto r = in(pod, "nft list set ip " + seenTable + " seen");
        auto open = r.out.find("elements = {");
        if (open == std::string::npos) continue;
        std::string s = r.out.substr(open + 12, r.out.find('}', open) - open - 12);
        for (char& c : s)
          if (c == ',' || c == '\n' || c == '\t') c = ' ';
        std::istringstream is(s);
        for (std::string ip; is >> ip;) out.insert(ip);
      }
    return out;
  }
};

TEST_F(Spread, ThreeHundredEndpointsAllServedAndGrowthResetsNoConnection) {
  writeManifest("web.yaml", serviceYaml("web", kVip));
  endpoints(20);
  startRouter("rt", {"--buckets", "64", "--max-slots", "512"});
  startAgent(1);
  startAgent(2);
  ASSERT_TRUE(reachable(kVip, 30)) << procs["rt"].log();
  EXPECT_EQ(bucketCount(), 64u);

  // Connections held across the growth: an answer from another pod or a reset fails one.
  Process hold({"ip", "netns", "exec", ns("cl"), kTool, "hold", kVip, "8080", "25", "100"},
               dir + "/hold.log");
  ASSERT_TRUE(waitUntil([&] { return hold.log().find("established 100") != std::string::npos; },
                        20))
      << hold.log();
  endpoints(kEndpoints);
  ASSERT_TRUE(waitUntil([&] { return bucketCount() == 1024; }, 20)) << procs["rt"].log();
  EXPECT_EQ(hold.wait(40), 0) << hold.log();
  EXPECT_NE(hold.log().find("ok 100"), std::string::npos) << hold.log();

  // New flows reach every endpoint (1024 buckets, 3 or 4 each: 6000 connections miss one with
  // a probability below 10^-5).
  auto answers = tcp(kVip, 6000, 20000);
  EXPECT_EQ(std::count(answers.begin(), answers.end(), "FAIL"), 0);
  auto got = seen();
  std::vector<std::string> missing;
  for (auto& e : eps)
    if (!got.contains(e.ip)) missing.push_back(e.ip);
  EXPECT_TRUE(missing.empty()) << missing.size() << " endpoints got no flow, e.g. "
                               << missing.front();
  EXPECT_EQ(procs["rt"].log().find("TooManyEndpoints"), std::string::npos);
}

}  // namespace
}  // namespace kst::e2e
