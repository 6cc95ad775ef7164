// The agent's pod-side decapsulation program, pure side (desired/agent.h podDecap,
// podDecapDiff; the pod table's learn-by-VIP variant) and how the agent reconciler drives it
// (reconcile/agent_reconciler.h): a VIP is in the program's map only while the pod holds it.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>

#include "desired/agent.h"
#include "fakes/fake_kernel.h"
#include "reconcile/agent_reconciler.h"

namespace kst {
namespace {

using fake::FakeKernel;

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

DataplaneConfig config(Mode m, bool bpf = true, uint32_t mtu = 1500) {
  DataplaneConfig cfg;
  cfg.mode = m;
  cfg.podDecapBpf = bpf;
  cfg.underlayMtu = mtu;
  return cfg;
}

PodPlan plan(const std::string& pod, std::vector<std::string> vips, const DataplaneConfig& cfg) {
  PodPlan p;
  p.podIp = ip(pod);
  for (auto& v : vips) p.state.addresses.push_back({cfg.tunnelLinkName(), ip(v), ip(v).hostPrefixLen()});
  return p;
}

TEST(PodDecapPlan, OnlyWithBpfInTunnelModesAndWithVips) {
  auto cfg = config(Mode::VxlanGpe);
  auto p4 = plan("10.0.0.1", {"203.0.113.10"}, cfg);
  auto p6 = plan("fd00::1", {"2001:db8:ffff::10", "203.0.113.10"}, cfg);
  auto d = podDecap(cfg, {&p4, &p6});
  ASSERT_TRUE(d);
  EXPECT_EQ(d->mode, Mode::VxlanGpe);
  EXPECT_EQ(d->port, 4790);
  EXPECT_EQ(d->podIps, (std::set<IpAddress>{ip("10.0.0.1"), ip("fd00::1")}));
  EXPECT_EQ(d->vips, (std::set<IpAddress>{ip("203.0.113.10"), ip("2001:db8:ffff::10")}));
  EXPECT_EQ(podDecapAddrs(*d),
            (std::map<IpAddress, uint32_t>{{ip("10.0.0.1"), dp::kPodDecapPod},
                                           {ip("fd00::1"), dp::kPodDecapPod},
                                           {ip("203.0.113.10"), dp::kPodDecapVip},
                                           {ip("2001:db8:ffff::10"), dp::kPodDecapVip}}));
  auto gre = config(Mode::GreFlow);
  EXPECT_EQ(podDecap(gre, {&p4})->port, 0);  // the port only matters for vxlan-gpe
  EXPECT_FALSE(podDecap(config(Mode::VxlanGpe, false), {&p4}));  // --pod-decap device
  EXPECT_FALSE(podDecap(config(Mode::Mpls), {&p4}));             // no tunnel: nothing to strip
  auto none = plan("10.0.0.2", {}, cfg);
  EXPECT_FALSE(podDecap(cfg, {&none}));
}

dp::PodDecap want() {
  dp::PodDecap d;
  d.podIps = {ip("10.0.0.1")};
  d.vips = {ip("203.0.113.10"), ip("203.0.113.11")};
  d.port = 4790;
  return d;
}

dp::ObservedPodDecap adopted(const dp::PodDecap& w, const std::string& program) {
  dp::ObservedPodDecap h;
  h.program = program;
  h.attached = {"eth0"};
  h.addrs = podDecapAddrs(w);
  return h;
}

TEST(PodDecapDiff, FreshLoadThenNothing) {
  auto w = want();
  auto ch = podDecapDiff(&w, "pdX", {}, {"eth0"});
  EXPECT_TRUE(ch.load);
  EXPECT_EQ(ch.attach, std::vector<std::string>{"eth0"});
  EXPECT_EQ(ch.put.size(), 3u);
  EXPECT_TRUE(ch.erase.empty() && ch.detach.empty());
  EXPECT_EQ(ch.size(), 1u + 1u + 3u);
  EXPECT_TRUE(podDecapDiff(&w, "pdX", adopted(w, "pdX"), {"eth0"}).empty());
}

TEST(PodDecapDiff, AnotherBuildOrAnInconsistentAttachmentIsReloaded) {
  auto w = want();
  auto other = podDecapDiff(&w, "pdY", adopted(w, "pdX"), {"eth0"});
  EXPECT_TRUE(other.load);
  EXPECT_EQ(other.attach, std::vector<std::string>{"eth0"});  // replaced in place
  auto h = adopted(w, "pdX");
  h.consistent = false;
  EXPECT_TRUE(podDecapDiff(&w, "pdX", h, {"eth0"}).load);
}

TEST(PodDecapDiff, MinimalChanges) {
  auto w = want();
  auto h = adopted(w, "pdX");
  auto fewer = w;
  fewer.vips.erase(ip("203.0.113.11"));
  auto rm = podDecapDiff(&fewer, "pdX", h, {"eth0"});
  EXPECT_FALSE(rm.load);
  EXPECT_EQ(rm.erase, std::vector<IpAddress>{ip("203.0.113.11")});
  EXPECT_EQ(rm.size(), 1u);
  auto more = w;
  more.vips.insert(ip("203.0.113.12"));
  auto add = podDecapDiff(&more, "pdX", h, {"eth0"});
  ASSERT_EQ(add.put.size(), 1u);
  EXPECT_EQ(add.put[0], (std::pair<IpAddress, uint32_t>{ip("203.0.113.12"), dp::kPodDecapVip}));
  EXPECT_EQ(add.size(), 1u);
  h.addrs[ip("203.0.113.10")] = dp::kPodDecapPod;  // wrong flags: rewritten
  EXPECT_EQ(podDecapDiff(&w, "pdX", h, {"eth0"}).put.size(), 1u);
  auto moved = podDecapDiff(&w, "pdX", adopted(w, "pdX"), {"eth1"});
  EXPECT_EQ(moved.attach, std::vector<std::string>{"eth1"});
  EXPECT_EQ(moved.detach, std::vector<std::string>{"eth0"});
  EXPECT_FALSE(moved.load);
}

TEST(PodDecapDiff, NothingWantedDetachesEverywhere) {
  auto w = want();
  auto h = adopted(w, "pdX");
  h.attached.insert("eth1");
  auto ch = podDecapDiff(nullptr, "pdX", h, {});
  EXPECT_EQ(ch.detach, (std::vector<std::string>{"eth0", "eth1"}));
  EXPECT_FALSE(ch.load);
  EXPECT_TRUE(ch.put.empty() && ch.erase.empty() && ch.attach.empty());
  EXPECT_TRUE(podDecapDiff(nullptr, "pdX", {}, {}).empty());
  // Wanted, but no interface holds the pod's address: nothing may stay attached.
  EXPECT_EQ(podDecapDiff(&w, "pdX", h, {}).detach.size(), 2u);
}

TEST(PodDecapTable, LearnsUdpPeersByVipWithoutClamping) {
  auto cfg = config(Mode::VxlanGpe, true, 0);
  auto p = plan("10.0.0.1", {"203.0.113.10", "2001:db8:ffff::10"}, cfg);
  auto t = podTable(cfg, {&p});
  EXPECT_TRUE(t.learnByVip);
  EXPECT_FALSE(t.clamps());
  EXPECT_TRUE(t.hasVipSets());
  EXPECT_EQ(t.vips.size(), 2u);
  EXPECT_EQ(podTableComment(t), "kst-pod:kst-vxg learn vips");
  auto r = renderPodTable(t);
  EXPECT_NE(r.find("iifname != \"lo\" ip daddr @vips4 meta l4proto udp update @peers4"),
            std::string::npos) << r;
  EXPECT_NE(r.find("ip6 daddr @vips6 meta l4proto udp notrack"), std::string::npos) << r;
  EXPECT_EQ(r.find("iifname \"kst-vxg\""), std::string::npos) << r;
  EXPECT_EQ(r.find("chain clamp"), std::string::npos) << r;
  EXPECT_NE(r.find("add element inet kube_service_tunnel_pod vips4 { 203.0.113.10 }"),
            std::string::npos) << r;
  // A VIP change is an element change, not a new table.
  ObservedPodTable have{true, podTableComment(t), t.vips};
  auto less = t;
  less.vips.erase(ip("203.0.113.10"));
  EXPECT_EQ(podTableScript(&less, have),
            "delete element inet kube_service_tunnel_pod vips4 { 203.0.113.10 }\n");
  // Switching --pod-decap recreates the table (another comment).
  auto dev = podTable(config(Mode::VxlanGpe, false, 0), {&p});
  EXPECT_FALSE(dev.learnByVip);
  EXPECT_TRUE(dev.vips.empty());
  EXPECT_NE(podTableScript(&dev, have).find("delete table"), std::string::npos);
  // With clamping the comment carries both.
  auto c = podTable(config(Mode::VxlanGpe, true, 1500), {&p});
  EXPECT_EQ(podTableComment(c), "kst-pod:kst-vxg mss 1424/1404 learn vips");
  EXPECT_FALSE(podTable(config(Mode::Mpls, true, 0), {&p}).learnByVip);
}

/** Pod namespaces over fake kernels; records every podDecap call with the VIPs the pod held
 *  at that moment. */
class DecapNetns : public NetnsProvider {
 public:
  explicit DecapNetns(const DataplaneConfig& cfg) : cfg_(cfg) {}
  FakeKernel& addPod(const std::string& id, const std::string& podIp) {
    routes_[ip(podIp)] = id;
    auto k = std::make_unique<FakeKernel>(FakeKernel::optionsFor(cfg_));
    dp::Link eth0;
    eth0.name = "eth0";
    k->seedLink(eth0);
    k->seedAddress({"eth0", ip(podIp), ip(podIp).hostPrefixLen()}, 2);
    auto& ref = *k;
    ns_[id] = std::move(k);
    return ref;
  }
  std::vector<Ns> list() override {
    std::vector<Ns> out;
    for (auto& [id, k] : ns_) out.push_back({id, id});
    return out;
  }
  std::map<IpAddress, Result<Ns>> routed(const std::vector<IpAddress>& ips) override {
    std::map<IpAddress, Result<Ns>> out;
    for (auto& a : ips) {
      auto r = routes_.find(a);
      if (r == routes_.end()) out.emplace(a, fail(a.str() + ": no route"));
      else out.emplace(a, Ns{r->second, r->second});
    }
    return out;
  }
  Result<dp::NetlinkClient*> client(const Ns& ns) override { return ns_.at(ns.id).get(); }
  Status prepare(const Ns&, const dp::PodSysctls&) override { return {}; }
  void forget(const Ns&) override {}
  void retainOnly(const std::set<std::string>&) override {}
  Result<size_t> podDecap(const Ns& ns, const dp::PodDecap* want) override {
    Call c{ns.id, want != nullptr, want ? want->vips : std::set<IpAddress>{}, {}};
    for (auto& a : *ns_.at(ns.id)->addresses(true)) c.held.insert(a.ip);
    calls.push_back(c);
    auto& cur = programs[ns.id];
    size_t n = 0;
    if (!want) {
      n = cur ? 1 : 0;
      cur.reset();
    } else {
      n = cur == *want ? 0 : 1;
      cur = *want;
    }
    return n;
  }
  struct Call {
    std::string ns;
    bool want;
    std::set<IpAddress> vips, held;
  };
  std::vector<Call> calls;
  std::map<std::string, std::optional<dp::PodDecap>> programs;

 private:
  DataplaneConfig cfg_;
  std::map<IpAddress, std::string> routes_;
  std::map<std::string, std::unique_ptr<FakeKernel>> ns_;
};

Model model(std::vector<std::string> vips) {
  Model m;
  for (size_t i = 0; i < vips.size(); ++i)
    m.services.push_back({{"web", "s" + std::to_string(i)}, ip(vips[i]),
                          {{ip("10.0.0.1"), "n1", true, false, ""}}});
  return m;
}

TEST(PodDecapAgent, AVipIsDecapsulatedOnlyWhileThePodHoldsIt) {
  auto cfg = config(Mode::VxlanGpe);
  DecapNetns ns(cfg);
  ns.addPod("p1", "10.0.0.1");
  AgentReconciler agent(cfg, "n1", ns);
  auto first = agent.reconcile(model({"203.0.113.10", "203.0.113.11"}));
  ASSERT_TRUE(first && first->ok()) << (first && !first->failures.empty() ? first->failures[0] : "");
  ASSERT_TRUE(ns.programs["p1"]);
  EXPECT_EQ(ns.programs["p1"]->vips.size(), 2u);
  auto again = agent.reconcile(model({"203.0.113.10", "203.0.113.11"}));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->changes, 0u);
  // One VIP leaves, another arrives in the same pass.
  ASSERT_TRUE(agent.reconcile(model({"203.0.113.10", "203.0.113.12"})));
  EXPECT_EQ(ns.programs["p1"]->vips,
            (std::set<IpAddress>{ip("203.0.113.10"), ip("203.0.113.12")}));
  // The last VIP: the program goes.
  ASSERT_TRUE(agent.reconcile(model({})));
  EXPECT_FALSE(ns.programs["p1"]);
  ASSERT_GE(ns.calls.size(), 4u);
  for (const auto& c : ns.calls)
    for (const auto& v : c.vips)
      EXPECT_TRUE(c.held.contains(v)) << v.str() << " in the map before the pod held it";
  // The removal went to the map before the address left the pod.
  bool removedFirst = false;
  for (const auto& c : ns.calls)
    if (c.want && !c.vips.contains(ip("203.0.113.11")) && c.held.contains(ip("203.0.113.11")))
      removedFirst = true;
  EXPECT_TRUE(removedFirst);
}

TEST(PodDecapAgent, DeviceModeAsksForNoProgram) {
  auto cfg = config(Mode::VxlanGpe, false);
  DecapNetns ns(cfg);
  ns.addPod("p1", "10.0.0.1");
  AgentReconciler agent(cfg, "n1", ns);
  ASSERT_TRUE(agent.reconcile(model({"203.0.113.10"})));
  ASSERT_FALSE(ns.calls.empty());
  for (const auto& c : ns.calls) EXPECT_FALSE(c.want);  // and removes a left-over one
}

}  // namespace
}  // namespace kst
