// desired/agent.h: the TCP MSS clamp (encapsulation overhead per mode and family, the clamped
// MSS) and the pod nft table (plan, render, the script that turns the observed table into the
// wanted one); reconcile/agent_reconciler.h hands each pod namespace its table.
#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "desired/agent.h"
#include "fakes/fake_kernel.h"
#include "reconcile/agent_reconciler.h"

namespace kst {
namespace {

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

DataplaneConfig config(Mode m, uint32_t mtu = 1500) {
  DataplaneConfig cfg;
  cfg.mode = m;
  cfg.underlayMtu = mtu;
  return cfg;
}

TEST(PodTableMss, EncapOverheadPerModeAndOuterFamily) {
  EXPECT_EQ(encapOverhead(Mode::VxlanGpe, Family::V4), 36u);  // 20 IP + 8 UDP + 8 GPE
  EXPECT_EQ(encapOverhead(Mode::VxlanGpe, Family::V6), 56u);  // 40 IP + 8 UDP + 8 GPE
  EXPECT_EQ(encapOverhead(Mode::Ipip, Family::V4), 20u);      // ipip
  EXPECT_EQ(encapOverhead(Mode::Ipip, Family::V6), 40u);      // collect-md ip6tnl: no encap limit
  EXPECT_EQ(encapOverhead(Mode::GreFlow, Family::V4), 24u);   // 20 IP + 4 GRE, no key/csum
  EXPECT_EQ(encapOverhead(Mode::GreFlow, Family::V6), 44u);   // 40 IP + 4 GRE, no csum
  EXPECT_EQ(encapOverhead(Mode::Gre, Family::V4), 24u);
  EXPECT_EQ(encapOverhead(Mode::Mpls, Family::V4), 4u);       // one label, no outer IP
  EXPECT_EQ(encapOverhead(Mode::Mpls, Family::V6), 4u);
}

TEST(PodTableMss, ClampedMssPerModeAndFamilyAtMtu1500) {
  struct Row {
    Mode mode;
    Family outer, inner;
    uint16_t mss;
  };
  const Row rows[] = {
      {Mode::VxlanGpe, Family::V4, Family::V4, 1424}, {Mode::VxlanGpe, Family::V4, Family::V6, 1404},
      {Mode::VxlanGpe, Family::V6, Family::V4, 1404}, {Mode::VxlanGpe, Family::V6, Family::V6, 1384},
      // ip6tnl / ip6gre: the router sets their MTU to 1500 − 40 / − 44 (the kernel's default
      // would reserve 8 more bytes for an encapsulation limit option they never send).
      {Mode::Ipip, Family::V4, Family::V4, 1440},     {Mode::Ipip, Family::V6, Family::V4, 1420},
      {Mode::Ipip, Family::V6, Family::V6, 1400},     {Mode::GreFlow, Family::V4, Family::V4, 1436},
      {Mode::GreFlow, Family::V4, Family::V6, 1416},  {Mode::GreFlow, Family::V6, Family::V4, 1416},
      {Mode::GreFlow, Family::V6, Family::V6, 1396},  {Mode::Gre, Family::V4, Family::V4, 1436},
      {Mode::Gre, Family::V4, Family::V6, 1416},
      {Mode::Mpls, Family::V4, Family::V4, 1456},     {Mode::Mpls, Family::V6, Family::V6, 1436},
  };
  for (const auto& r : rows)
    EXPECT_EQ(clampedMss(config(r.mode), r.outer, r.inner), r.mss)
        << modeName(r.mode) << " outer v" << int(r.outer) << " inner v" << int(r.inner);
}

TEST(PodTableMss, RouterDeviceMtuIsTheUnderlayMinusTheOverhead) {
  EXPECT_EQ(routerLinkMtu(config(Mode::VxlanGpe, 9000), Family::V4), 8964u);
  // One vxlan device for both outer families, sized for IPv4 (TCP toward IPv6 pods is clamped
  // to 9000 − 56 − headers).
  EXPECT_EQ(routerLinkMtu(config(Mode::VxlanGpe, 9000), Family::V6), 8964u);
  EXPECT_EQ(routerLinkMtu(config(Mode::Ipip, 9000), Family::V4), 8980u);
  EXPECT_EQ(routerLinkMtu(config(Mode::Ipip, 9000), Family::V6), 8960u);     // ip6tnl
  EXPECT_EQ(routerLinkMtu(config(Mode::GreFlow, 9000), Family::V4), 8976u);
  EXPECT_EQ(routerLinkMtu(config(Mode::GreFlow, 9000), Family::V6), 8956u);  // ip6gre
  EXPECT_EQ(routerLinkMtu(config(Mode::Gre, 9000), Family::V4), 8976u);      // per endpoint
  EXPECT_EQ(routerLinkMtu(config(Mode::Mpls, 9000), Family::V4), 0u);        // no device
  EXPECT_EQ(routerLinkMtu(config(Mode::VxlanGpe, 1500), Family::V4), 1464u);
  // Devices carrying IPv6 keep the IPv6 minimum on a small underlay; ipip (IPv4 only) need not.
  EXPECT_EQ(routerLinkMtu(config(Mode::VxlanGpe, 1000), Family::V4), 1280u);
  EXPECT_EQ(routerLinkMtu(config(Mode::Ipip, 1000), Family::V6), 1280u);
  EXPECT_EQ(routerLinkMtu(config(Mode::Ipip, 1000), Family::V4), 980u);
}

TEST(PodTableMss, RouterDeviceMtuIsTheKernelDefaultWhenOff) {
  EXPECT_EQ(routerLinkMtu(config(Mode::VxlanGpe, 0), Family::V4), 1500u);
  EXPECT_EQ(routerLinkMtu(config(Mode::VxlanGpe, 0), Family::V6), 1500u);
  EXPECT_EQ(routerLinkMtu(config(Mode::Ipip, 0), Family::V4), 1480u);
  EXPECT_EQ(routerLinkMtu(config(Mode::Ipip, 0), Family::V6), 1452u);  // 8 bytes for the encap limit
  EXPECT_EQ(routerLinkMtu(config(Mode::GreFlow, 0), Family::V4), 1476u);
  EXPECT_EQ(routerLinkMtu(config(Mode::GreFlow, 0), Family::V6), 1448u);
  EXPECT_EQ(routerLinkMtu(config(Mode::Gre, 0), Family::V4), 0u);      // follows the route to the pod
  EXPECT_EQ(routerLinkMtu(config(Mode::Mpls, 0), Family::V4), 0u);
}

TEST(PodTableMss, FollowsTheUnderlayMtuAndZeroDisables) {
  // The router's device follows the underlay, so a jumbo-frame underlay gives jumbo segments.
  EXPECT_EQ(clampedMss(config(Mode::VxlanGpe, 9000), Family::V4, Family::V4), 8924);
  EXPECT_EQ(clampedMss(config(Mode::VxlanGpe, 9000), Family::V4, Family::V6), 8904);
  EXPECT_EQ(clampedMss(config(Mode::VxlanGpe, 9000), Family::V6, Family::V6), 8884);
  EXPECT_EQ(clampedMss(config(Mode::VxlanGpe, 1536), Family::V4, Family::V4), 1460);
  EXPECT_EQ(clampedMss(config(Mode::VxlanGpe, 1400), Family::V4, Family::V4), 1324);
  EXPECT_EQ(clampedMss(config(Mode::Ipip, 9000), Family::V4, Family::V4), 8940);
  EXPECT_EQ(clampedMss(config(Mode::Ipip, 9000), Family::V6, Family::V6), 8900);
  EXPECT_EQ(clampedMss(config(Mode::GreFlow, 9000), Family::V6, Family::V4), 8916);
  EXPECT_EQ(clampedMss(config(Mode::Gre, 9000), Family::V4, Family::V4), 8936);
  // Small underlay: the vxlan device stays at 1280, the segments still fit the underlay.
  EXPECT_EQ(clampedMss(config(Mode::VxlanGpe, 1000), Family::V4, Family::V4), 924);
  EXPECT_EQ(clampedMss(config(Mode::Mpls, 9000), Family::V6, Family::V6), 8936);
  EXPECT_EQ(clampedMss(config(Mode::VxlanGpe, 0), Family::V4, Family::V4), 0);
  EXPECT_EQ(clampedMss(config(Mode::VxlanGpe, 90), Family::V6, Family::V6), 0);  // no room
}

PodPlan plan(const std::string& pod, std::vector<std::string> vips, const DataplaneConfig& cfg) {
  PodPlan p;
  p.podIp = ip(pod);
  for (auto& v : vips)
    p.state.addresses.push_back({cfg.mode == Mode::Mpls ? "lo" : cfg.tunnelLinkName(), ip(v),
                                 ip(v).hostPrefixLen()});
  return p;
}

TEST(PodTablePlan, SingleStackPodsGetTheirOuterFamilysMss) {
  auto cfg = config(Mode::VxlanGpe);
  auto p4 = plan("10.0.0.1", {"203.0.113.10", "2001:db8:ffff::10"}, cfg);
  auto t = podTable(cfg, {&p4});
  EXPECT_EQ(t.decapLink, "kst-vxg");
  EXPECT_EQ(t.mss4, 1424);
  EXPECT_EQ(t.mss6, 1404);
  EXPECT_EQ(t.vips, (std::set<IpAddress>{ip("203.0.113.10"), ip("2001:db8:ffff::10")}));
  auto p6 = plan("fd00::1", {"2001:db8:ffff::10"}, cfg);
  auto t6 = podTable(cfg, {&p6});
  EXPECT_EQ(t6.mss4, 1404);
  EXPECT_EQ(t6.mss6, 1384);
}

TEST(PodTablePlan, DualStackNamespaceTakesTheSmallerMss) {
  auto cfg = config(Mode::GreFlow);
  auto p4 = plan("10.0.0.1", {"203.0.113.10"}, cfg);
  auto p6 = plan("fd00::1", {"2001:db8:ffff::10"}, cfg);
  auto t = podTable(cfg, {&p4, &p6});
  EXPECT_EQ(t.mss4, 1416);  // outer IPv6: 1500 − 44 − 40
  EXPECT_EQ(t.mss6, 1396);
  EXPECT_EQ(t.vips.size(), 2u);
}

TEST(PodTablePlan, MplsUsesLoAndDisabledClampKeepsTheUdpOnlyTable) {
  auto mpls = config(Mode::Mpls);
  auto p = plan("10.0.0.1", {"203.0.113.10"}, mpls);
  auto t = podTable(mpls, {&p});
  EXPECT_EQ(t.decapLink, "lo");
  EXPECT_EQ(t.mss4, 1456);
  EXPECT_EQ(t.mss6, 1436);
  auto off = config(Mode::VxlanGpe, 0);
  auto q = plan("10.0.0.1", {"203.0.113.10"}, off);
  auto u = podTable(off, {&q});
  EXPECT_FALSE(u.clamps());
  EXPECT_TRUE(u.vips.empty());
  EXPECT_EQ(podTableComment(u), "kst-pod:kst-vxg");  // the comment of the UDP-only table
  auto r = renderPodTable(u);
  EXPECT_EQ(r.find("clamp"), std::string::npos) << r;
  EXPECT_EQ(r.find("vips4"), std::string::npos) << r;
  EXPECT_NE(r.find("snat ip to ip daddr . udp dport map @peers4"), std::string::npos) << r;
}

PodTable sample() {
  PodTable t;
  t.decapLink = "kst-vxg";
  t.mss4 = 1424;
  t.mss6 = 1404;
  t.vips = {ip("203.0.113.10"), ip("203.0.113.11"), ip("2001:db8:ffff::10")};
  return t;
}

TEST(PodTableRender, ClampRulesMatchSynsFromTheVipSetsOnly) {
  auto r = renderPodTable(sample());
  EXPECT_NE(r.find("comment \"kst-pod:kst-vxg mss 1424/1404\""), std::string::npos) << r;
  EXPECT_NE(r.find("type filter hook postrouting priority mangle"), std::string::npos) << r;
  EXPECT_NE(r.find("ip saddr @vips4 tcp flags & (syn | rst) == syn tcp option maxseg size > 1424 "
                   "tcp option maxseg size set 1424"),
            std::string::npos)
      << r;
  EXPECT_NE(r.find("ip6 saddr @vips6 tcp flags & (syn | rst) == syn tcp option maxseg size > 1404 "
                   "tcp option maxseg size set 1404"),
            std::string::npos)
      << r;
  EXPECT_NE(r.find("add element inet kube_service_tunnel_pod vips4 { 203.0.113.10, 203.0.113.11 }"),
            std::string::npos)
      << r;
  EXPECT_NE(r.find("add element inet kube_service_tunnel_pod vips6 { 2001:db8:ffff::10 }"),
            std::string::npos)
      << r;
  // The UDP part is unchanged.
  EXPECT_NE(r.find("iifname \"kst-vxg\" meta l4proto udp notrack"), std::string::npos) << r;
}

TEST(PodTableScript, IdenticalTableIsLeftAlone) {
  auto want = sample();
  ObservedPodTable have{true, podTableComment(want), want.vips};
  EXPECT_EQ(podTableScript(&want, have), "");
}

TEST(PodTableScript, AbsentTableIsCreatedWithItsElements) {
  auto want = sample();
  auto s = podTableScript(&want, {});
  EXPECT_EQ(s.find("delete"), std::string::npos) << s;
  EXPECT_EQ(s, renderPodTable(want));
}

TEST(PodTableScript, VipChangesTouchOnlyTheSetElements) {
  auto want = sample();
  ObservedPodTable have{true, podTableComment(want), {ip("203.0.113.10"), ip("203.0.113.99")}};
  EXPECT_EQ(podTableScript(&want, have),
            "delete element inet kube_service_tunnel_pod vips4 { 203.0.113.99 }\n"
            "add element inet kube_service_tunnel_pod vips4 { 203.0.113.11 }\n"
            "add element inet kube_service_tunnel_pod vips6 { 2001:db8:ffff::10 }\n");
}

TEST(PodTableScript, OtherSkeletonIsReplacedInOneTransaction) {
  auto want = sample();
  // The UDP-only table of an earlier version, or other MSS values (--underlay-mtu changed).
  for (std::string comment : {"kst-pod:kst-vxg", "kst-pod:kst-vxg mss 8924/8904"}) {
    ObservedPodTable have{true, comment, {}};
    auto s = podTableScript(&want, have);
    EXPECT_TRUE(s.starts_with("delete table inet kube_service_tunnel_pod\ntable inet "
                              "kube_service_tunnel_pod {"))
        << s;
    EXPECT_NE(s.find("add element"), std::string::npos) << s;
  }
}

TEST(PodTableScript, RemovalDeletesOnlyAnExistingTable) {
  EXPECT_EQ(podTableScript(nullptr, {true, "kst-pod:kst-vxg", {}}),
            "delete table inet kube_service_tunnel_pod\n");
  EXPECT_EQ(podTableScript(nullptr, {}), "");
}

// ---- the reconciler hands each pod namespace its table ----

using fake::FakeKernel;

class TableNetns : public NetnsProvider {
 public:
  explicit TableNetns(const DataplaneConfig& cfg) : cfg_(cfg) {}
  void addPod(const std::string& id, std::vector<std::string> podIps) {
    auto k = std::make_unique<FakeKernel>(FakeKernel::optionsFor(cfg_));
    dp::Link eth0;
    eth0.name = "eth0";
    k->seedLink(eth0);
    for (auto& a : podIps) {
      k->seedAddress({"eth0", ip(a), ip(a).hostPrefixLen()}, 2);
      routes_[ip(a)] = id;
    }
    ns_[id] = std::move(k);
  }
  std::map<IpAddress, Result<Ns>> routed(const std::vector<IpAddress>& ips) override {
    std::map<IpAddress, Result<Ns>> out;
    for (auto& a : ips) {
      if (auto r = routes_.find(a); r != routes_.end())
        out.emplace(a, Ns{r->second, "/run/netns/" + r->second});
      else
        out.emplace(a, fail("no route"));
    }
    return out;
  }
  void retainOnly(const std::set<std::string>&) override {}
  std::vector<Ns> list() override {
    std::vector<Ns> out;
    for (auto& [id, k] : ns_) out.push_back({id, "/run/netns/" + id});
    return out;
  }
  Result<dp::NetlinkClient*> client(const Ns& ns) override {
    auto it = ns_.find(ns.id);
    if (it == ns_.end()) return fail(ENOENT, "gone");
    return it->second.get();
  }
  Status prepare(const Ns&, const dp::PodSysctls&) override { return {}; }
  void forget(const Ns&) override {}
  Status podTable(const Ns& ns, const PodTable* want) override {
    if (want) tables[ns.id] = *want;
    else tables.erase(ns.id);
    return {};
  }
  std::map<std::string, PodTable> tables;

 private:
  std::map<IpAddress, std::string> routes_;  // the node's routing: pod IP → namespace
  DataplaneConfig cfg_;
  std::map<std::string, std::unique_ptr<FakeKernel>> ns_;
};

TEST(PodTableReconciler, EachNamespaceGetsItsVipsAndMss) {
  auto cfg = config(Mode::VxlanGpe);
  TableNetns ns(cfg);
  ns.addPod("p1", {"10.0.0.1"});
  ns.addPod("p2", {"10.0.0.2", "fd00::2"});  // dual stack: two endpoint addresses
  Model m;
  m.services.push_back({{"web", "a"}, ip("203.0.113.10"),
                        {{ip("10.0.0.1"), "n1", true, false, ""}, {ip("10.0.0.2"), "n1", true, false, ""}}});
  m.services.push_back({{"web", "b"}, ip("203.0.113.11"), {{ip("10.0.0.1"), "n1", true, false, ""}}});
  m.services.push_back({{"web", "c"}, ip("2001:db8:ffff::10"), {{ip("fd00::2"), "n1", true, false, ""}}});
  AgentReconciler agent(cfg, "n1", ns);
  auto res = agent.reconcile(m);
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->ok()) << (res->failures.empty() ? "" : res->failures[0]);
  ASSERT_TRUE(ns.tables.contains("p1"));
  EXPECT_EQ(ns.tables["p1"].mss4, 1424);
  EXPECT_EQ(ns.tables["p1"].vips, (std::set<IpAddress>{ip("203.0.113.10"), ip("203.0.113.11")}));
  ASSERT_TRUE(ns.tables.contains("p2"));
  EXPECT_EQ(ns.tables["p2"].mss4, 1404);  // IPv6 outer possible in this namespace
  EXPECT_EQ(ns.tables["p2"].mss6, 1384);
  EXPECT_EQ(ns.tables["p2"].vips, (std::set<IpAddress>{ip("203.0.113.10"), ip("2001:db8:ffff::10")}));
  // p1 stops serving web/b: its set follows; then it stops serving at all: the table goes.
  m.services.pop_back();
  m.services.pop_back();
  ASSERT_TRUE(agent.reconcile(m));
  EXPECT_EQ(ns.tables["p1"].vips, (std::set<IpAddress>{ip("203.0.113.10")}));
  m.services[0].endpoints = {{ip("10.0.0.2"), "n1", true, false, ""}};
  ASSERT_TRUE(agent.reconcile(m));
  EXPECT_FALSE(ns.tables.contains("p1"));
  EXPECT_EQ(ns.tables["p2"].vips, (std::set<IpAddress>{ip("203.0.113.10")}));
}

}  // namespace
}  // namespace kst
