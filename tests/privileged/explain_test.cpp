// `explain` and `status` against a running router and agents: for many 5-tuples (IPv4 and
// IPv6; TCP, UDP, ICMP), the endpoint `explain -o json` predicts before the packet is sent is
// the pod that receives it, and the flow map then pins each flow to the mark it predicted (the
// user-space jhash is bit-exact with the kernel's). `status -o json` lists the VIPs with the
// per-endpoint bucket counts the router programmed, read independently with `nft -j` (the
// ".bpf" variants: the program's pinned maps with `bpftool -j`).
// Accounting (prefix kob): the router's /metrics counts per endpoint exactly the packets whose
// 5-tuples explain assigns to it, and counts each new flow once.
#include <nlohmann/json.hpp>

#include <sstream>

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
  /** The prefix stem of the suite, and what the router is started with besides the defaults. */
  virtual std::string stem() const { return "kex"; }
  virtual std::vector<std::string> routerFlags() const { return {}; }

  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    usePrefix(stem());
    topology(2, 1);  // pods p1a p1b (node1), p2a p2b (node2)
    for (auto& p : kPods) serve(p);
    for (bool v6 : {false, true}) {
      std::vector<Ep> eps;
      for (auto& p : kPods) eps.push_back({podIp(p, v6), std::string("node") + p[1]});
      writeManifest(v6 ? "svc6.yaml" : "svc4.yaml",
                    serviceYaml(v6 ? "web6" : "web4", v6 ? kVip6 : kVip4) + "---\n" +
                        sliceYaml(v6 ? "web6" : "web4", v6 ? "IPv6" : "IPv4", eps));
    }
    startRouter("rt", routerFlags());
    startAgent(1);
    startAgent(2);
    ASSERT_TRUE(reachable(kVip4, 20));
    ASSERT_TRUE(reachable(kVip6, 20));
  }

  json explain(const std::string& vip, const std::string& src, int sport, int dport,
               const std::string& proto) {
    auto o = out("rt", kBin + " explain -o json" + datapathArgs("rt") + " " + vip + " " + src + " " + std::to_string(sport) +
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

  /** IPv4 flow pins: "saddr . sport . daddr . dport" → mark (flow4 elements, or the program's
   *  flow map entries). */
  std::map<std::string, uint32_t> flow4() {
    if (bpfDatapath()) {
      std::map<std::string, uint32_t> m;
      for (auto& e : bpfDump("rt", "flows")) {
        auto& k = e["key"];
        if (k["v4"] != 1) continue;
        auto port = [](const json& p) { return std::to_string(ntohs(p.get<uint16_t>())); };
        m[bpfAddress(k["saddr"]) + " . " + port(k["sport"]) + " . " + bpfAddress(k["daddr"]) +
          " . " + port(k["dport"])] = e["value"]["mark"].get<uint32_t>();
      }
      return m;
    }
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
      ASSERT_FALSE(e.is_discarded()) << in("rt", kBin + " explain" + datapathArgs("rt") + " " + vip + " " + src + " " +
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
    for (auto& [vip, buckets] : bucketMarks("rt", v6))
      for (auto& [bucket, mark] : buckets) ++perMark[mark];
    return perMark;
  };
  auto s = json::parse(out("rt", kBin + " status -o json --role router" + datapathArgs("rt")), nullptr, false);
  ASSERT_FALSE(s.is_discarded());
  ASSERT_TRUE(s["router"]["table"].get<bool>()) << s.dump(2);
  EXPECT_EQ(s["router"]["datapath"], bpfDatapath() ? "bpf" : "nft");
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
    d = json::parse(out("rt", kBin + " status -o json --role router" + datapathArgs("rt")), nullptr, false);
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
  auto text = in("rt", kBin + " status --role router" + datapathArgs("rt"));
  EXPECT_EQ(text.rc, 0) << text.out;
  EXPECT_NE(text.out.find("draining"), std::string::npos) << text.out;
}

// ---- Accounting: the router's /metrics against explain and the client's own counts ----

const std::string kMetricsPort = "9465";

class Accounting : public Explain {
 protected:
  std::string stem() const override { return "kob"; }
  std::vector<std::string> routerFlags() const override {
    return {"--health-port", kMetricsPort, "--health-address", "127.0.0.1"};
  }

  /** Every series of the router's /metrics: "name{labels}" → value (nullopt: no answer). */
  std::optional<std::map<std::string, double>> scrape() {
    auto r = in("rt", "curl -sS --fail --max-time 10 http://127.0.0.1:" + kMetricsPort + "/metrics");
    if (r.rc != 0) return std::nullopt;
    std::map<std::string, double> m;
    std::istringstream s(r.out);
    for (std::string l; std::getline(s, l);) {
      if (l.empty() || l[0] == '#') continue;
      auto sp = l.rfind(' ');
      if (sp == std::string::npos) continue;
      m[l.substr(0, sp)] = std::stod(l.substr(sp + 1));
    }
    return m;
  }
  static double value(const std::map<std::string, double>& m, const std::string& series) {
    auto it = m.find(series);
    return it == m.end() ? 0 : it->second;
  }
  static std::string vipSel(bool v6) {
    return std::string("namespace=\"default\",service=\"") + (v6 ? "web6" : "web4") +
           "\",vip=\"" + (v6 ? kVip6 : kVip4) + "\"";
  }

  /** The client counts, in its own output hook, the packets it sends to either VIP per 5-tuple
   *  (dynamic sets with a counter per element), and sends nothing else to them: an ICMP error
   *  about an answer that came after its socket closed would be counted by the router too. */
  void countClientTuples() {
    ASSERT_EQ(nftLoad("cl", "table inet kob_client {\n"
                            "  set sent4 { typeof meta l4proto . ip saddr . th sport . ip daddr . "
                            "th dport; flags dynamic; counter; }\n"
                            "  set sent6 { typeof meta l4proto . ip6 saddr . th sport . ip6 daddr "
                            ". th dport; flags dynamic; counter; }\n"
                            "  chain out {\n    type filter hook output priority 0;\n"
                            "    ip daddr " + kVip4 + " meta l4proto { tcp, udp } update @sent4 "
                            "{ meta l4proto . ip saddr . th sport . ip daddr . th dport }\n"
                            "    ip6 daddr " + kVip6 + " meta l4proto { tcp, udp } update @sent6 "
                            "{ meta l4proto . ip6 saddr . th sport . ip6 daddr . th dport }\n"
                            "    ip daddr " + kVip4 + " meta l4proto != { tcp, udp } drop\n"
                            "    ip6 daddr " + kVip6 + " meta l4proto != { tcp, udp } drop\n"
                            "  }\n}\n"),
              0);
  }
  struct Tuple {
    std::string proto, src;
    int sport = 0, dport = 0;
    bool v6 = false;
    auto operator<=>(const Tuple&) const = default;
  };
  /** Packets the client sent per 5-tuple (its dynamic sets). */
  std::map<Tuple, uint64_t> clientTuples() {
    std::map<Tuple, uint64_t> m;
    for (bool v6 : {false, true}) {
      auto j = json::parse(out("cl", std::string("nft -j list set inet kob_client ") +
                                         (v6 ? "sent6" : "sent4")),
                           nullptr, false);
      if (j.is_discarded()) continue;
      for (auto& o : j["nftables"]) {
        if (!o.contains("set") || !o["set"].contains("elem")) continue;
        for (auto& e : o["set"]["elem"]) {
          if (!e.contains("elem")) continue;
          auto& c = e["elem"]["val"]["concat"];
          Tuple t{c[0].get<std::string>(), c[1].get<std::string>(), c[2].get<int>(),
                  c[4].get<int>(), v6};
          m[t] += e["elem"]["counter"]["packets"].get<uint64_t>();
        }
      }
    }
    return m;
  }
};

// For K distinct 5-tuples (TCP and UDP, IPv4 and IPv6, one or several packets each) over four
// endpoints: each endpoint's packet counter rises by exactly the packets of the tuples explain
// assigns to it, and each VIP's by all of its tuples' packets. Explain with another seed (or
// another bucket table) would give other endpoints for most tuples, and the per-endpoint sums,
// whose tuples carry different packet counts, would differ: checked below by moving every tuple
// to the next endpoint, which must not match.
TEST_F(Accounting, EndpointCountersAreWhatExplainPredictsPerTuple) {
  countClientTuples();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // SetUp's probes have ended
  auto before = scrape();
  ASSERT_TRUE(before) << procs["rt"].log();
  for (bool v6 : {false, true}) {
    const std::string vip = v6 ? kVip6 : kVip4;
    const int base = v6 ? 52000 : 50000;
    // UDP: 24 flows of one datagram, 4 flows of several (a datagram every 40–70 ms for 1 s, in
    // parallel), TCP: 24 connections (a handshake, a line each way, the close).
    auto one = lines(in("cl", kTool + " udp " + vip + " 8080 24 0 " + std::to_string(base)).out);
    ASSERT_EQ(one.size(), 24u);
    std::string streams;
    for (int i = 0; i < 4; ++i)
      streams += kTool + " udpstream " + vip + " 8080 " + std::to_string(base + 100 + i) + " 1 " +
                 std::to_string(40 + 10 * i) + " >/dev/null & ";
    in("cl", "sh -c '" + streams + "wait'");
    auto conns = tcp(vip, 24, base + 200);
    ASSERT_EQ(conns.size(), 24u);
    for (auto& c : conns) EXPECT_NE(c, "FAIL");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // last TCP segments
  auto sent = clientTuples();
  auto after = scrape();
  ASSERT_TRUE(after);

  // explain for every tuple the client sent: its endpoint gets the tuple's packets.
  std::map<std::pair<bool, std::string>, uint64_t> want;  // (v6, endpoint) → packets
  std::map<bool, uint64_t> total;
  std::map<bool, std::vector<std::string>> endpoints;
  for (bool v6 : {false, true})
    for (auto& p : kPods) endpoints[v6].push_back(podIp(p, v6));
  std::vector<std::pair<Tuple, std::string>> assigned;
  for (auto& [t, n] : sent) {
    auto e = explain(t.v6 ? kVip6 : kVip4, t.src, t.sport, t.dport, t.proto);
    ASSERT_TRUE(!e.is_discarded() && e["endpoint"].is_string()) << t.proto << " " << t.sport;
    want[{t.v6, e["endpoint"].get<std::string>()}] += n;
    total[t.v6] += n;
    assigned.emplace_back(t, e["endpoint"].get<std::string>());
  }
  ASSERT_EQ(sent.size(), 2u * (24 + 4 + 24)) << "tuples the client counted";
  for (bool v6 : {false, true}) {
    const std::string sel = vipSel(v6);
    int reached = 0;
    for (auto& ep : endpoints[v6]) {
      const std::string series =
          "kube_service_tunnel_endpoint_packets_total{" + sel + ",endpoint=\"" + ep + "\"}";
      const double got = value(*after, series) - value(*before, series);
      EXPECT_EQ(got, double(want[{v6, ep}])) << series;
      reached += want[{v6, ep}] > 0;
    }
    EXPECT_GE(reached, 3) << "the tuples should reach at least 3 of the 4 endpoints";
    const std::string vipSeries = "kube_service_tunnel_vip_packets_total{" + sel + "}";
    EXPECT_EQ(value(*after, vipSeries) - value(*before, vipSeries), double(total[v6]));
  }
  // The check discriminates: every tuple moved to the next endpoint gives other sums.
  std::map<std::pair<bool, std::string>, uint64_t> moved;
  for (auto& [t, ep] : assigned) {
    auto& eps = endpoints[t.v6];
    auto it = std::find(eps.begin(), eps.end(), ep);
    ASSERT_NE(it, eps.end()) << ep;
    moved[{t.v6, eps[size_t(it - eps.begin() + 1) % eps.size()]}] += sent[t];
  }
  EXPECT_NE(moved, want);
}

// New flows: N UDP flows (distinct source ports) raise new_flows_total by exactly N, in either
// family; one flow of many datagrams raises it by one; the occupancy gauge is the element count
// `nft list map` shows.
TEST_F(Accounting, NewFlowsAreCountedOncePerFlow) {
  const std::string newFlows = "kube_service_tunnel_new_flows_total";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (bool v6 : {false, true}) {
    const std::string vip = v6 ? kVip6 : kVip4;
    const int base = v6 ? 56000 : 54000;
    auto b = scrape();
    ASSERT_TRUE(b);
    constexpr int kN = 30;
    auto answers = lines(in("cl", kTool + " udp " + vip + " 8080 " + std::to_string(kN) + " 0 " +
                                      std::to_string(base)).out);
    ASSERT_EQ(answers.size(), size_t(kN));
    auto a = scrape();
    ASSERT_TRUE(a);
    EXPECT_EQ(value(*a, newFlows) - value(*b, newFlows), kN) << vip;
    // One flow, a datagram every 50 ms for 2 s: one new flow, every datagram counted.
    const std::string vipSeries = "kube_service_tunnel_vip_packets_total{" + vipSel(v6) + "}";
    auto stream = lines(in("cl", kTool + " udpstream " + vip + " 8080 " + std::to_string(base + 500) +
                                     " 2 50").out);
    auto c = scrape();
    ASSERT_TRUE(c);
    EXPECT_GE(stream.size(), 30u);
    EXPECT_EQ(value(*c, newFlows) - value(*a, newFlows), 1) << vip;
    EXPECT_GE(value(*c, vipSeries) - value(*a, vipSeries), double(stream.size()));
    // The same N flows again (still pinned): not new.
    in("cl", kTool + " udp " + vip + " 8080 " + std::to_string(kN) + " 0 " + std::to_string(base));
    auto d = scrape();
    ASSERT_TRUE(d);
    EXPECT_EQ(value(*d, newFlows), value(*c, newFlows)) << vip;
  }
  // Occupancy: as `nft list map` (bpf: `bpftool map dump`) shows it (nothing is sent in
  // between; entries expire only after --flow-timeout).
  auto m = scrape();
  ASSERT_TRUE(m);
  for (bool v6 : {false, true}) {
    size_t listed = 0;
    for (auto& [mark, n] : flowPins("rt", v6)) listed += n;
    EXPECT_EQ(value(*m, std::string("kube_service_tunnel_flows{family=\"") +
                            (v6 ? "ipv6" : "ipv4") + "\"}"),
              double(listed));
    EXPECT_GE(listed, 31u);
  }
}

// A flow pinned to a released slot is hashed per packet until its element expires, through
// the rule that pins flows: none of those packets counts as a new flow (the rule first asks
// whether the key is absent), while released_slots_total counts the release.
TEST_F(Accounting, FlowsOfAReleasedSlotAreNotCountedAgain) {
  constexpr int kN = 24, kBase = 58000;
  const std::string released = "kube_service_tunnel_released_slots_total";
  const std::string newFlows = "kube_service_tunnel_new_flows_total";
  const std::string vipSeries = "kube_service_tunnel_vip_packets_total{" + vipSel(false) + "}";
  auto send = [&] {
    return lines(in("cl", kTool + " udp " + kVip4 + " 8080 " + std::to_string(kN) + " 0 " +
                              std::to_string(kBase)).out);
  };
  ASSERT_EQ(send().size(), size_t(kN));
  int onP1a = 0;  // flows pinned to the endpoint that goes
  for (int i = 0; i < kN; ++i) {
    auto e = explain(kVip4, kClient4, kBase + i, 8080, "udp");
    ASSERT_TRUE(!e.is_discarded() && e["pinned"].get<bool>()) << e.dump();
    onP1a += e["endpoint"] == podIp("p1a", false);
  }
  ASSERT_GE(onP1a, 1) << "no flow of " << kN << " pinned to p1a: nothing would be tested";
  auto before = scrape();
  ASSERT_TRUE(before);
  std::vector<Ep> eps;
  for (auto& p : kPods)
    if (p != "p1a") eps.push_back({podIp(p, false), std::string("node") + p[1]});
  writeManifest("svc4.yaml", serviceYaml("web4", kVip4) + "---\n" + sliceYaml("web4", "IPv4", eps));
  std::optional<std::map<std::string, double>> rel;
  ASSERT_TRUE(waitUntil([&] {
    rel = scrape();
    return rel && value(*rel, released) > value(*before, released);
  }, 20)) << procs["rt"].log();
  auto answers = send();  // the same flows again: p1a's are stale pins, hashed per packet
  ASSERT_EQ(answers.size(), size_t(kN));
  for (auto& a : answers) EXPECT_EQ(a.rfind("p1a ", 0), std::string::npos) << a;
  auto after = scrape();
  ASSERT_TRUE(after);
  EXPECT_EQ(value(*after, vipSeries) - value(*rel, vipSeries), kN);
  EXPECT_EQ(value(*after, newFlows), value(*rel, newFlows)) << onP1a << " stale pins";
}

}  // namespace
}  // namespace kst::e2e
