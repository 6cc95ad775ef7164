// `explain` and `status` against a running router and agents: for many 5-tuples (IPv4 and
// IPv6; TCP, UDP, ICMP), the endpoint `explain -o json` predicts before the packet is sent is
// the pod that receives it, and the flow map then pins each flow to the mark it predicted (the
// user-space jhash is bit-exact with the kernel's). `status -o json` lists the VIPs with the
// per-endpoint bucket counts the router programmed, read independently with `nft -j`.
#include <nlohmann/json.hpp>

#include "privileged/harness.h"

namespace kst::e2e {
namespace {

using json = nlohmann::json;

const std::string kVip4 = "203.0.113.10", kVip6 = "2001:db8:ffff::10";
const std::string kClient4 = "198.18.0.10", kClient6 = "2001:db8:f::10";
const std::vector<std::string> kPods{"p1a", "p1b", "p2a", "p2b"};

std::string podIp(const std::string& pod, bool v6) {
  const char node = pod[1];
  const int host = pod[2] - 'a' + 2;
  return v6 ? std::string("2001:db8:") + node + "::" + std::to_string(host)
            : std::string("198.19.") + node + "." + std::to_string(host);
}

class Explain : public E2E {
 protected:
  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    usePrefix("kex");
    topology(2, 1);  // pods p1a p1b (node1), p2a p2b (node2)
    for (auto& p : kPods) serve(p);
    for (bool v6 : {false, true}) {
      std::vector<Ep> eps;
      for (auto& p : kPods) eps.push_back({podIp(p, v6), std::string("node") + p[1]});
      writeManifest(v6 ? "svc6.yaml" : "svc4.yaml",
                    serviceYaml(v6 ? "web6" : "web4", v6 ? kVip6 : kVip4) + "---\n" +
                        sliceYaml(v6 ? "web6" : "web4", v6 ? "IPv6" : "IPv4", eps));
    }
    startRouter();
    startAgent(1);
    startAgent(2);
    ASSERT_TRUE(reachable(kVip4, 20));
    ASSERT_TRUE(reachable(kVip6, 20));
  }

  json explain(const std::string& vip, const std::string& src, int sport, int dport,
               const std::string& proto) {
    auto o = out("rt", kBin + " explain -o json " + vip + " " + src + " " + std::to_string(sport) +
                           " " + std::to_string(dport) + " " + proto);
    return json::parse(o, nullptr, false);
  }

  /** The pod a "NAME clientip" answer names, as its address. */
  static std::string answeredBy(const std::string& line, bool v6) {
    auto name = line.substr(0, line.find(' '));
    for (auto& p : kPods)
      if (p == name) return podIp(p, v6);
    return "?" + line;
  }

  /** Flow4 elements: "saddr . sport . daddr . dport" → mark. */
  std::map<std::string, uint32_t> flow4() {
    auto doc = json::parse(out("rt", "nft -j list map inet kube_service_tunnel flow4"), nullptr, false);
    std::map<std::string, uint32_t> m;
    if (doc.is_discarded() || !doc.contains("nftables")) return m;
    for (auto& item : doc["nftables"]) {
      if (!item.contains("map") || !item["map"].contains("elem")) continue;
      for (auto& e : item["map"]["elem"]) {
        if (!e.is_array() || e.size() != 2) continue;
        const json* key = &e[0];
        if (key->contains("elem")) key = &(*key)["elem"]["val"];  // with "expires"
        if (!key->contains("concat")) continue;
        std::string k;
        for (auto& part : (*key)["concat"])
          k += (k.empty() ? "" : " . ") + (part.is_string() ? part.get<std::string>() : part.dump());
        m[k] = e[1].get<uint32_t>();
      }
    }
    return m;
  }

  /** Sends one flow per source port (TCP connections or UDP datagrams) and checks, for each,
   *  that the answering pod is the endpoint explain predicted and that the flow is then pinned
   *  to the predicted mark. */
  void checkPorts(bool v6, const std::string& proto, int sportBase, int n) {
    const std::string vip = v6 ? kVip6 : kVip4, src = v6 ? kClient6 : kClient4;
    std::vector<json> before;
    std::map<std::string, int> spread;
    for (int i = 0; i < n; ++i) {
      auto e = explain(vip, src, sportBase + i, 8080, proto);
      ASSERT_FALSE(e.is_discarded()) << in("rt", kBin + " explain " + vip + " " + src + " " +
                                                   std::to_string(sportBase + i) + " 8080 " + proto).out;
      ASSERT_TRUE(e["endpoint"].is_string()) << e.dump();
      EXPECT_FALSE(e["pinned"].get<bool>()) << e.dump();
      EXPECT_EQ(e["buckets"], 64) << e.dump();
      before.push_back(e);
      ++spread[e["endpoint"].get<std::string>()];
    }
    EXPECT_GE(spread.size(), 3u) << "64 flows over 4 endpoints should reach at least 3";
    auto answers = proto == "tcp" ? tcp(vip, n, sportBase)
                                  : lines(in("cl", kTool + " udp " + vip + " 8080 " +
                                                       std::to_string(n) + " 0 " +
                                                       std::to_string(sportBase)).out);
    ASSERT_EQ(answers.size(), size_t(n));
    auto pinned4 = v6 ? std::map<std::string, uint32_t>() : flow4();
    for (int i = 0; i < n; ++i) {
      const int sport = sportBase + i;
      EXPECT_EQ(answeredBy(answers[i], v6), before[i]["endpoint"].get<std::string>())
          << proto << " sport " << sport << ": " << before[i].dump();
      const uint32_t mark = before[i]["mark"].get<uint32_t>();
      EXPECT_EQ(before[i]["bucketMark"].get<uint32_t>(), mark);
      if (!v6) {  // the kernel's own key, read with nft
        auto k = src + " . " + std::to_string(sport) + " . " + vip + " . 8080";
        ASSERT_TRUE(pinned4.contains(k)) << k;
        EXPECT_EQ(pinned4[k], mark) << k;
      }
      // Now pinned (IPv6: the key is the two jhashes explain computes in user space).
      auto after = explain(vip, src, sport, 8080, proto);
      EXPECT_TRUE(after["pinned"].get<bool>()) << after.dump();
      EXPECT_EQ(after["pinnedMark"], mark) << after.dump();
      EXPECT_EQ(after["endpoint"], before[i]["endpoint"]);
    }
  }

  /** rx packets of each pod's decap device. */
  std::map<std::string, long> decapRx() {
    std::map<std::string, long> m;
    for (auto& p : kPods) {
      auto dev = out(p, "sh -c \"ip -o link show | grep -o 'kst[a-z0-9-]*' | head -1\"");
      while (!dev.empty() && dev.back() == '\n') dev.pop_back();
      m[p] = std::atol(out(p, "cat /sys/class/net/" + dev + "/statistics/rx_packets").c_str());
    }
    return m;
  }

  /** ICMP echo from several source addresses: the pod whose decap device counts the request is
   *  the endpoint explain predicted (the hash covers saddr . daddr only; nothing is pinned). */
  void checkIcmp(bool v6) {
    const std::string vip = v6 ? kVip6 : kVip4;
    std::map<std::string, int> spread;
    for (int i = 0; i < 12; ++i) {
      std::string src = v6 ? "2001:db8:f::1" + std::to_string(i + 10) : "198.18.0." + std::to_string(100 + i);
      ASSERT_EQ(in("cl", "ip addr add " + src + (v6 ? "/128" : "/32") + " dev eth0" + (v6 ? " nodad" : "")).rc, 0);
      auto e = explain(vip, src, 0, 0, v6 ? "icmpv6" : "icmp");
      ASSERT_TRUE(e.contains("endpoint") && e["endpoint"].is_string()) << e.dump();
      EXPECT_FALSE(e["pinned"].get<bool>());
      const std::string want = e["endpoint"].get<std::string>();
      ++spread[want];
      auto rx0 = decapRx();
      in("cl", std::string(v6 ? "ping -6" : "ping") + " -c 3 -i 0.05 -W 1 -I " + src + " " + vip);
      auto rx1 = decapRx();
      std::string got;
      for (auto& p : kPods)
        if (rx1[p] - rx0[p] >= 3) got += (got.empty() ? "" : ",") + podIp(p, v6);
      EXPECT_EQ(got, want) << "icmp from " << src << ": " << e.dump();
    }
    EXPECT_GE(spread.size(), 2u);
  }
};

TEST_F(Explain, Ipv4UdpEndpointsAreWhatExplainPredicts) { checkPorts(false, "udp", 42000, 64); }
TEST_F(Explain, Ipv4TcpEndpointsAreWhatExplainPredicts) { checkPorts(false, "tcp", 43000, 64); }
TEST_F(Explain, Ipv6UdpEndpointsAreWhatExplainPredicts) { checkPorts(true, "udp", 44000, 64); }
TEST_F(Explain, Ipv6TcpEndpointsAreWhatExplainPredicts) { checkPorts(true, "tcp", 45000, 64); }
TEST_F(Explain, IcmpEndpointsAreWhatExplainPredicts) {
  checkIcmp(false);
  checkIcmp(true);
}

TEST_F(Explain, StatusListsTheVipsAndTheBucketsTheRouterProgrammed) {
  // Independent reading: the b2s maps' data per VIP, and each slot table's route.
  auto programmed = [&](bool v6) {
    std::map<uint32_t, int> perMark;
    auto doc = json::parse(out("rt", std::string("nft -j list map inet kube_service_tunnel ") +
                                         (v6 ? "b2s6" : "b2s4")), nullptr, false);
    for (auto& item : doc["nftables"])
      if (item.contains("map") && item["map"].contains("elem"))
        for (auto& e : item["map"]["elem"]) ++perMark[e[1].get<uint32_t>()];
    return perMark;
  };
  auto s = json::parse(out("rt", kBin + " status -o json --role router"), nullptr, false);
  ASSERT_FALSE(s.is_discarded());
  ASSERT_TRUE(s["router"]["table"].get<bool>()) << s.dump(2);
  ASSERT_EQ(s["router"]["vips"].size(), 2u) << s.dump(2);
  for (auto& v : s["router"]["vips"]) {
    bool v6 = v["vip"] == kVip6;
    EXPECT_TRUE(v["vip"] == kVip4 || v6) << v.dump();
    EXPECT_EQ(v["buckets"], 64);
    EXPECT_EQ(v["unassigned"], 0);
    auto want = programmed(v6);
    ASSERT_EQ(v["endpoints"].size(), 4u) << v.dump(2);
    std::set<std::string> eps;
    for (auto& e : v["endpoints"]) {
      EXPECT_EQ(e["buckets"], want[e["mark"].get<uint32_t>()]) << e.dump();
      EXPECT_EQ(e["state"], "serving");
      eps.insert(e["endpoint"].get<std::string>());
      // The slot table routes the VIP to this endpoint (ip route / ip nexthop).
      auto rt = out("rt", std::string(v6 ? "ip -6" : "ip") + " route show table " +
                              std::to_string(e["table"].get<uint32_t>()) + " " + v["vip"].get<std::string>());
      auto nh = rt.find("nhid ");
      ASSERT_NE(nh, std::string::npos) << rt;
      auto n = out("rt", "ip nexthop show id " + rt.substr(nh + 5, rt.find(' ', nh + 5) - nh - 5));
      EXPECT_NE(n.find("dst " + e["endpoint"].get<std::string>() + " "), std::string::npos) << n;
    }
    std::set<std::string> all;
    for (auto& p : kPods) all.insert(podIp(p, v6));
    EXPECT_EQ(eps, all);
  }
  // Agent side: node1's pods hold both VIPs on their decap device.
  auto a = json::parse(out("n1", kBin + " status -o json --role agent --scan-proc=false --netns-dir /run/kst-netns/" +
                                     prefix + "/n1"), nullptr, false);
  ASSERT_FALSE(a.is_discarded());
  ASSERT_EQ(a["agent"]["pods"].size(), 2u) << a.dump(2);
  for (auto& p : a["agent"]["pods"]) {
    EXPECT_TRUE(p["decapPresent"].get<bool>()) << p.dump();
    EXPECT_EQ(p["vips"], json::array({kVip4, kVip6})) << p.dump();
  }
  // A draining endpoint: slot kept, no bucket.
  std::vector<Ep> eps;
  for (auto& p : kPods) {
    Ep e{podIp(p, false), std::string("node") + p[1]};
    if (p == "p1a") {
      e.ready = false;
      e.terminating = true;
    }
    eps.push_back(e);
  }
  writeManifest("svc4.yaml", serviceYaml("web4", kVip4) + "---\n" + sliceYaml("web4", "IPv4", eps));
  json d;
  ASSERT_TRUE(waitUntil([&] {
    d = json::parse(out("rt", kBin + " status -o json --role router"), nullptr, false);
    if (d.is_discarded()) return false;
    for (auto& v : d["router"]["vips"])
      for (auto& e : v["endpoints"])
        if (e["endpoint"] == podIp("p1a", false)) return e["state"] == "draining";
    return false;
  })) << d.dump(2);
  for (auto& v : d["router"]["vips"]) {
    for (auto& e : v["endpoints"]) {
      if (e["endpoint"] == podIp("p1a", false)) {
        EXPECT_EQ(e["buckets"], 0);
      }
    }
  }
  auto text = in("rt", kBin + " status --role router");
  EXPECT_EQ(text.rc, 0) << text.out;
  EXPECT_NE(text.out.find("draining"), std::string::npos) << text.out;
}

}  // namespace
}  // namespace kst::e2e
