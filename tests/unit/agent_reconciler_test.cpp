// reconcile/agent_reconciler.h against fake pod namespaces (tests/fakes/fake_kernel.h).
#include "reconcile/agent_reconciler.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "fakes/fake_kernel.h"

namespace kst {
namespace {

using fake::FakeKernel;

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

class FakeNetns : public NetnsProvider {
 public:
  explicit FakeNetns(const DataplaneConfig& cfg) : cfg_(cfg) {}
  /** A pod namespace whose eth0 holds podIp (an address the daemon does not own). */
  FakeKernel& addPod(const std::string& id, const std::string& podIp) {
    auto k = std::make_unique<FakeKernel>(FakeKernel::optionsFor(cfg_));
    dp::Link eth0;
    eth0.name = "eth0";
    k->seedLink(eth0);
    k->seedAddress({"eth0", ip(podIp), ip(podIp).hostPrefixLen()}, /*kernel*/ 2);
    k->seedAddress({"lo", ip("127.0.0.1"), 8}, 2);
    auto& ref = *k;
    ns_[id] = std::move(k);
    return ref;
  }
  void removePod(const std::string& id) { ns_.erase(id); }

  std::vector<Ns> list() override {
    ++lists;
    std::vector<Ns> out;
    for (auto& [id, k] : ns_) out.push_back({id, "/run/netns/" + id});
    return out;
  }
  Result<dp::NetlinkClient*> client(const Ns& ns) override {
    auto it = ns_.find(ns.id);
    if (it == ns_.end()) return fail(ENOENT, "namespace " + ns.id + " is gone");
    return it->second.get();
  }
  Status prepare(const Ns& ns, const dp::PodSysctls& sysctls) override {
    prepared[ns.id] = sysctls.decapDevice;
    if (sysctls.mpls) mplsLabels[ns.id] = sysctls.mplsLabel;
    return {};
  }
  void forget(const Ns& ns) override { forgotten.push_back(ns.id); }

  FakeKernel& kernel(const std::string& id) { return *ns_.at(id); }
  int lists = 0;
  std::map<std::string, std::string> prepared;
  std::map<std::string, uint32_t> mplsLabels;  // namespaces prepared for MPLS input
  std::vector<std::string> forgotten;

 private:
  DataplaneConfig cfg_;
  std::map<std::string, std::unique_ptr<FakeKernel>> ns_;
};

Model model() {
  Model m;
  m.services.push_back({{"web", "a"}, ip("203.0.113.10"),
                        {{ip("10.0.0.1"), "n1", true, false, ""},
                         {ip("10.0.0.2"), "n2", true, false, ""},
                         {ip("10.0.0.3"), "n1", true, true, ""}}});
  m.services.push_back({{"web", "b"}, ip("203.0.113.11"), {{ip("10.0.0.1"), "n1", true, false, ""}}});
  return m;
}

std::vector<dp::Address> owned(FakeKernel& k) { return *k.addresses(true); }

TEST(AgentReconciler, ProgramsLocalPodsOnly) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  auto& p2 = ns.addPod("p2", "10.0.0.2");  // a pod of node n2 that happens to be visible
  auto& p3 = ns.addPod("p3", "10.0.0.3");
  AgentReconciler agent(cfg, "n1", ns);
  auto res = agent.reconcile(model());
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->ok()) << (res->failures.empty() ? "" : res->failures[0]);
  ASSERT_NE(p1.link("kst-vxg"), nullptr);
  EXPECT_EQ(p1.link("kst-vxg")->kind, dp::Link::Kind::VxlanGpe);
  EXPECT_EQ(owned(p1), (std::vector<dp::Address>{{"kst-vxg", ip("203.0.113.10"), 32},
                                                 {"kst-vxg", ip("203.0.113.11"), 32}}));
  EXPECT_EQ(owned(p3), (std::vector<dp::Address>{{"kst-vxg", ip("203.0.113.10"), 32}}));
  EXPECT_EQ(p2.link("kst-vxg"), nullptr);
  EXPECT_TRUE(owned(p2).empty());
  EXPECT_EQ(res->changes, 2u + 1u + 2u);
  EXPECT_EQ(ns.prepared, (std::map<std::string, std::string>{{"p1", "kst-vxg"}, {"p3", "kst-vxg"}}));
  EXPECT_TRUE(ns.mplsLabels.empty());
  EXPECT_EQ(agent.podNamespaces().at(ip("10.0.0.1")).id, "p1");
}

TEST(AgentReconciler, SecondPassAndRestartMakeZeroChanges) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  ns.addPod("p3", "10.0.0.3");
  {
    AgentReconciler agent(cfg, "n1", ns);
    ASSERT_TRUE(agent.reconcile(model()));
    auto before = p1.counts().changeRequests;
    auto again = agent.reconcile(model());
    ASSERT_TRUE(again);
    EXPECT_EQ(again->changes, 0u);
    EXPECT_EQ(p1.counts().changeRequests, before);
  }
  AgentReconciler restarted(cfg, "n1", ns);
  auto before = p1.counts().changeRequests;
  auto res = restarted.reconcile(model());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->changes, 0u);
  EXPECT_TRUE(res->ok());
  EXPECT_EQ(p1.counts().changeRequests, before);
}

TEST(AgentReconciler, EndpointLeavingCleansItsNamespaceOnly) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  auto& p3 = ns.addPod("p3", "10.0.0.3");
  AgentReconciler agent(cfg, "n1", ns);
  ASSERT_TRUE(agent.reconcile(model()));
  auto m = model();
  m.services[0].endpoints.pop_back();  // 10.0.0.3 leaves
  auto before = p1.counts().changeRequests;
  auto res = agent.reconcile(m);
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->ok());
  EXPECT_EQ(p3.link("kst-vxg"), nullptr);
  EXPECT_TRUE(owned(p3).empty());
  EXPECT_EQ(p3.allAddresses().size(), 2u);  // eth0 and lo addresses untouched
  EXPECT_NE(p3.link("eth0"), nullptr);
  EXPECT_EQ(p1.counts().changeRequests, before);
  EXPECT_EQ(owned(p1).size(), 2u);
}

TEST(AgentReconciler, MissingNamespaceFailsOnlyThatPod) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  AgentReconciler agent(cfg, "n1", ns);
  auto res = agent.reconcile(model());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->failures.size(), 1u);
  EXPECT_NE(res->failures[0].find("pod 10.0.0.3"), std::string::npos) << res->failures[0];
  EXPECT_EQ(owned(p1).size(), 2u);
  // The pod shows up later: the next pass finds it.
  auto& p3 = ns.addPod("p3", "10.0.0.3");
  auto res2 = agent.reconcile(model());
  ASSERT_TRUE(res2);
  EXPECT_TRUE(res2->ok());
  EXPECT_EQ(owned(p3).size(), 1u);
}

TEST(AgentReconciler, MplsModeUsesLoAndLabelRoute) {
  DataplaneConfig cfg;
  cfg.mode = Mode::Mpls;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  AgentReconciler agent(cfg, "n1", ns);
  Model m;
  m.services.push_back({{"web", "a"}, ip("203.0.113.10"), {{ip("10.0.0.1"), "n1", true, false, ""}}});
  auto res = agent.reconcile(m);
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->ok());
  EXPECT_EQ(owned(p1), (std::vector<dp::Address>{{"lo", ip("203.0.113.10"), 32}}));
  EXPECT_EQ(p1.allMplsPops(), (std::vector<dp::MplsPop>{{100, "lo"}}));
  EXPECT_EQ(ns.prepared.at("p1"), "lo");
  EXPECT_EQ(ns.mplsLabels, (std::map<std::string, uint32_t>{{"p1", 100}}));
  auto again = agent.reconcile(m);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->changes, 0u);
}

TEST(AgentReconciler, CleanupRemovesOwnedObjectsEverywhere) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  auto& p3 = ns.addPod("p3", "10.0.0.3");
  {
    AgentReconciler agent(cfg, "n1", ns);
    ASSERT_TRUE(agent.reconcile(model()));
  }
  AgentReconciler fresh(cfg, "n1", ns);
  auto res = fresh.cleanup();
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->ok());
  for (auto* k : {&p1, &p3}) {
    EXPECT_EQ(k->link("kst-vxg"), nullptr);
    EXPECT_TRUE(owned(*k).empty());
    EXPECT_EQ(k->allAddresses().size(), 2u);
  }
}

// ---- VIP readiness gate (the decision; k8s/pod_gate.h writes it) -----------------------------

/** One Service with VIP .10: pod web/a at 10.0.0.1 (serving) and web/b at 10.0.0.3 (starting:
 *  not ready yet, e.g. its readiness gate still False). */
Model gatedModel() {
  Model m;
  TunnelService s{{"web", "svc"}, ip("203.0.113.10"), {{ip("10.0.0.1"), "n1", true, false, "web/a", "ua"}}};
  s.starting = {{ip("10.0.0.3"), "n1", false, false, "web/b", "ub"}};
  m.services.push_back(s);
  return m;
}

std::map<std::string, bool> readiness(const AgentReconciler& a) {
  std::map<std::string, bool> out;
  for (auto& g : a.gates()) out[g.pod] = g.ready;
  return out;
}

/** Pods web/a (p1, 10.0.0.1) and web/b (p3, 10.0.0.3) after a first pass of gatedModel(). */
class AgentGateAfterFirstPass : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(agent.reconcile(gatedModel())); }
  DataplaneConfig cfg;
  FakeNetns ns{cfg};
  FakeKernel& p1 = ns.addPod("p1", "10.0.0.1");
  FakeKernel& p3 = ns.addPod("p3", "10.0.0.3");
  AgentReconciler agent{cfg, "n1", ns};
};

TEST_F(AgentGateAfterFirstPass, StartingPodsGetTheVipAndAreReadyOnceItIsInPlace) {
  EXPECT_EQ(owned(p3), (std::vector<dp::Address>{{"kst-vxg", ip("203.0.113.10"), 32}}));
  EXPECT_EQ(readiness(agent), (std::map<std::string, bool>{{"web/a", true}, {"web/b", true}}));
  ASSERT_EQ(agent.gates().size(), 2u);
  EXPECT_EQ(agent.gates()[1].uid, "ub");
  EXPECT_EQ(agent.gates()[1].addresses, std::vector<IpAddress>{ip("10.0.0.3")});
}

TEST(AgentGate, NotReadyWithoutANamespaceOrWhenTheKernelRefuses) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");  // web/b (10.0.0.3) has no namespace here
  p1.failWhen([](const dp::Change& c) { return std::holds_alternative<dp::Address>(c.object); });
  AgentReconciler agent(cfg, "n1", ns);
  auto r = agent.reconcile(gatedModel());
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->ok());
  EXPECT_EQ(readiness(agent), (std::map<std::string, bool>{{"web/a", false}, {"web/b", false}}));
  EXPECT_NE(agent.gates()[1].message.find("no network namespace"), std::string::npos);
  p1.clearFailures();
  ns.addPod("p3", "10.0.0.3");
  ASSERT_TRUE(agent.reconcile(gatedModel()));
  EXPECT_EQ(readiness(agent), (std::map<std::string, bool>{{"web/a", true}, {"web/b", true}}));
}

TEST_F(AgentGateAfterFirstPass, ALostDecapDeviceHoldsThePodFalseUntilAPassFindsItRepaired) {
  {  // by hand: the VIP on it goes too
    dp::Link l;
    l.name = "kst-vxg";
    ASSERT_TRUE(p1.apply({{dp::Change::Action::Delete, l}}));
  }
  auto r = agent.reconcile(gatedModel());  // the verify: repairs, but holds web/a
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->ok());
  EXPECT_GT(r->changes, 0u);
  EXPECT_NE(p1.link("kst-vxg"), nullptr);
  EXPECT_EQ(readiness(agent), (std::map<std::string, bool>{{"web/a", false}, {"web/b", true}}));
  EXPECT_NE(agent.gates()[0].message.find("device kst-vxg"), std::string::npos)
      << agent.gates()[0].message;
  auto again = agent.reconcile(gatedModel());  // finds it complete: confirmed
  ASSERT_TRUE(again);
  EXPECT_EQ(again->changes, 0u);
  EXPECT_EQ(readiness(agent), (std::map<std::string, bool>{{"web/a", true}, {"web/b", true}}));
}

TEST_F(AgentGateAfterFirstPass, ALostVipHoldsThePodAndARepairThatFailsKeepsItFalse) {
  ASSERT_TRUE(p1.apply({{dp::Change::Action::Delete, dp::Address{"kst-vxg", ip("203.0.113.10"), 32}}}));
  p1.failWhen([](const dp::Change& c) { return std::holds_alternative<dp::Address>(c.object); });
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(agent.reconcile(gatedModel()));
    EXPECT_FALSE(readiness(agent).at("web/a"));
  }
  p1.clearFailures();
  ASSERT_TRUE(agent.reconcile(gatedModel()));  // repaired: still held
  EXPECT_FALSE(readiness(agent).at("web/a"));
  ASSERT_TRUE(agent.reconcile(gatedModel()));
  EXPECT_TRUE(readiness(agent).at("web/a"));
}

TEST_F(AgentGateAfterFirstPass, ANewVipForAReadyPodIsNoLoss) {
  auto m = gatedModel();
  m.services.push_back({{"web", "other"}, ip("203.0.113.11"), {{ip("10.0.0.1"), "n1", true, false, "web/a", "ua"}}});
  auto r = agent.reconcile(m);
  ASSERT_TRUE(r);
  EXPECT_GT(r->changes, 0u);
  EXPECT_TRUE(readiness(agent).at("web/a"));
  // A VIP that is no longer wanted and was removed is no loss either.
  ASSERT_TRUE(agent.reconcile(gatedModel()));
  EXPECT_TRUE(readiness(agent).at("web/a"));
}

TEST(AgentGate, PodsTheSlicesDoNotNameHaveNoGateAndADualStackPodIsOneGate) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  p1.seedAddress({"eth0", ip("fd00::1"), 128}, 2);
  ns.addPod("p2", "10.0.0.2");
  AgentReconciler agent(cfg, "n1", ns);
  Model m;
  m.services.push_back({{"web", "v4"}, ip("203.0.113.10"),
                        {{ip("10.0.0.1"), "n1", true, false, "web/a", "ua"},
                         {ip("10.0.0.2"), "n1", true, false, "", ""}}});
  m.services.push_back({{"web", "v6"}, ip("2001:db8::10"),
                        {{ip("fd00::1"), "n1", true, false, "web/a", "ua"}}});
  // A Service of another namespace whose slice names web/a (hand-written): never its gate.
  m.services.push_back({{"other", "x"}, ip("203.0.113.12"),
                        {{ip("10.0.0.2"), "n1", true, false, "web/a", "ua"}}});
  ASSERT_TRUE(agent.reconcile(m));
  EXPECT_EQ(readiness(agent), (std::map<std::string, bool>{{"web/a", true}}));
  EXPECT_EQ(agent.gates()[0].addresses, (std::vector<IpAddress>{ip("10.0.0.1"), ip("fd00::1")}));
  // One of its addresses loses its VIP: the pod is not ready.
  ASSERT_TRUE(p1.apply({{dp::Change::Action::Delete, dp::Address{"kst-vxg", ip("2001:db8::10"), 128}}}));
  ASSERT_TRUE(agent.reconcile(m));
  EXPECT_EQ(readiness(agent), (std::map<std::string, bool>{{"web/a", false}}));
}

}  // namespace
}  // namespace kst
