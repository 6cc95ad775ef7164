// reconcile/agent_reconciler.h against fake pod namespaces (tests/fakes/fake_kernel.h), and
// the pure routing decision of dataplane/pod_identity.h.
#include "reconcile/agent_reconciler.h"

#include "dataplane/pod_identity.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>

#include "fakes/fake_kernel.h"

namespace kst {
namespace {

using fake::FakeKernel;

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

class FakeNetns : public NetnsProvider {
 public:
  explicit FakeNetns(const DataplaneConfig& cfg) : cfg_(cfg) {}
  /** A pod namespace whose eth0 holds podIp (an address the daemon does not own); the node's
   *  routing delivers podIp to it unless routed is false (a namespace that merely holds it). */
  FakeKernel& addPod(const std::string& id, const std::string& podIp, bool routed = true) {
    if (routed) routes_[ip(podIp)] = id;
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
  void removePod(const std::string& id) {
    ns_.erase(id);
    std::erase_if(routes_, [&](auto& r) { return r.second == id; });
  }
  /** The node's routing now delivers podIp to namespace id. */
  void route(const std::string& podIp, const std::string& id) { routes_[ip(podIp)] = id; }
  /** Resolving podIp fails with this error code (0: no failure). */
  void routeError(const std::string& podIp, int code) { errors_[ip(podIp)] = code; }

  std::vector<Ns> list() override {
    ++lists;
    std::vector<Ns> out;
    for (auto& [id, k] : ns_) {
      out.push_back({id, "/run/netns/" + id});
      held.insert(id);
    }
    return out;
  }
  std::map<IpAddress, Result<Ns>> routed(const std::vector<IpAddress>& ips) override {
    std::map<IpAddress, Result<Ns>> out;
    for (auto& a : ips) {
      if (auto e = errors_.find(a); e != errors_.end() && e->second) {
        out.emplace(a, fail(e->second, a.str() + ": failed"));
        continue;
      }
      auto r = routes_.find(a);
      if (r == routes_.end() || !ns_.contains(r->second)) {
        out.emplace(a, fail(a.str() + ": no route"));
        continue;
      }
      held.insert(r->second);
      out.emplace(a, Ns{r->second, "/run/netns/" + r->second});
    }
    return out;
  }
  Result<dp::NetlinkClient*> client(const Ns& ns) override {
    auto it = ns_.find(ns.id);
    if (it == ns_.end()) return fail(ENOENT, "namespace " + ns.id + " is gone");
    if (!held.contains(ns.id)) return fail(ENOENT, "namespace " + ns.id + " is not held");
    return it->second.get();
  }
  void retainOnly(const std::set<std::string>& keep) override {
    std::erase_if(held, [&](const std::string& id) { return !keep.contains(id); });
  }
  Status prepare(const Ns& ns, const dp::PodSysctls& sysctls) override {
    prepared[ns.id] = sysctls.decapDevice;
    if (sysctls.mpls) mplsLabels[ns.id] = sysctls.mplsLabel;
    return {};
  }
  void forget(const Ns& ns) override {
    forgotten.push_back(ns.id);
    held.erase(ns.id);
  }

  FakeKernel& kernel(const std::string& id) { return *ns_.at(id); }
  int lists = 0;
  std::map<std::string, std::string> prepared;
  std::map<std::string, uint32_t> mplsLabels;  // namespaces prepared for MPLS input
  std::vector<std::string> forgotten;
  std::set<std::string> held;  // what a real provider keeps a handle (and socket) of

 private:
  std::map<IpAddress, std::string> routes_;  // the node's routing: pod IP → namespace
  std::map<IpAddress, int> errors_;
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

// ---- pod identity: the node's routing decides, never the first namespace holding the IP ----

TEST(AgentReconciler, NamespaceHoldingAnotherPodsAddressIsRefusedAndReported) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  // The attacker sorts first: the old "first namespace holding the address" chose it.
  auto& evil = ns.addPod("a-evil", "10.0.0.9");
  dp::Link spare;
  spare.name = "spare0";
  evil.seedLink(spare);
  evil.seedAddress({"spare0", ip("10.0.0.1"), 32}, 2);  // the victim's address
  evil.seedAddress({"spare0", ip("10.0.0.3"), 32}, 2);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  auto& p3 = ns.addPod("p3", "10.0.0.3");
  AgentReconciler agent(cfg, "n1", ns);
  auto res = agent.reconcile(model());
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->ok()) << (res->failures.empty() ? "" : res->failures[0]);
  EXPECT_EQ(evil.link("kst-vxg"), nullptr);
  EXPECT_TRUE(owned(evil).empty());
  ASSERT_NE(p1.link("kst-vxg"), nullptr);
  EXPECT_EQ(owned(p1).size(), 2u);
  EXPECT_EQ(owned(p3).size(), 1u);
  EXPECT_EQ(agent.podNamespaces().at(ip("10.0.0.1")).id, "p1");
  EXPECT_EQ(agent.duplicates().at(ip("10.0.0.1")), std::vector<std::string>{"/run/netns/a-evil"});
  // One problem per Service of each spoofed pod: 10.0.0.1 serves web/a and web/b, 10.0.0.3 web/a.
  ASSERT_EQ(res->problems.size(), 3u);
  for (auto& p : res->problems) {
    EXPECT_EQ(p.kind, Problem::Kind::DuplicatePodAddress);
    EXPECT_NE(p.message.find("/run/netns/a-evil"), std::string::npos) << p.message;
  }
  // The report persists while the duplicate does (the daemon resolves problems that vanish),
  // and nothing moves on later passes or a restart.
  auto again = agent.reconcile(model());
  ASSERT_TRUE(again);
  EXPECT_EQ(again->changes, 0u);
  EXPECT_EQ(again->problems.size(), 3u);
  AgentReconciler restarted(cfg, "n1", ns);
  auto after = restarted.reconcile(model());
  ASSERT_TRUE(after);
  EXPECT_EQ(after->changes, 0u);
  EXPECT_EQ(evil.link("kst-vxg"), nullptr);
  EXPECT_EQ(owned(p1).size(), 2u);
}

TEST(AgentReconciler, RoutedNamespaceMustHoldTheAddress) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  auto& other = ns.addPod("other", "10.0.0.7");
  ns.route("10.0.0.1", "other");  // the routing points at a namespace without the address
  AgentReconciler agent(cfg, "n1", ns);
  Model m;
  m.services.push_back({{"web", "a"}, ip("203.0.113.10"), {{ip("10.0.0.1"), "n1", true, false, ""}}});
  auto res = agent.reconcile(m);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->failures.size(), 1u);
  EXPECT_NE(res->failures[0].find("does not hold it"), std::string::npos) << res->failures[0];
  EXPECT_TRUE(owned(other).empty());
  EXPECT_TRUE(owned(p1).empty());  // a holder the routing does not name is never used
  // The routing is fixed (e.g. the CNI finished): the pod is served.
  ns.route("10.0.0.1", "p1");
  auto res2 = agent.reconcile(m);
  ASSERT_TRUE(res2);
  EXPECT_TRUE(res2->ok());
  EXPECT_EQ(owned(p1).size(), 1u);
}

TEST(AgentReconciler, PodMovedToANewNamespaceFollowsTheRouting) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& old = ns.addPod("p1", "10.0.0.1");
  AgentReconciler agent(cfg, "n1", ns);
  Model m;
  m.services.push_back({{"web", "a"}, ip("203.0.113.10"), {{ip("10.0.0.1"), "n1", true, false, ""}}});
  ASSERT_TRUE(agent.reconcile(m));
  EXPECT_EQ(owned(old).size(), 1u);
  auto& fresh = ns.addPod("p1-new", "10.0.0.1");  // same IP, new sandbox; routing moves
  auto res = agent.reconcile(m);
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->ok()) << (res->failures.empty() ? "" : res->failures[0]);
  EXPECT_EQ(owned(fresh).size(), 1u);
  EXPECT_TRUE(owned(old).empty());  // the old one is cleaned, reported as a duplicate
  EXPECT_EQ(agent.podNamespaces().at(ip("10.0.0.1")).id, "p1-new");
}

TEST(AgentReconciler, AgedBridgeEntryKeepsTheServedPodOtherFailuresDoNot) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  AgentReconciler agent(cfg, "n1", ns);
  Model m;
  m.services.push_back({{"web", "a"}, ip("203.0.113.10"), {{ip("10.0.0.1"), "n1", true, false, ""}}});
  ASSERT_TRUE(agent.reconcile(m));
  ns.routeError("10.0.0.1", dp::kNeedsNeighbour);  // resolution provoked, answer pending
  auto res = agent.reconcile(m);
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->ok());
  EXPECT_EQ(res->changes, 0u);
  EXPECT_EQ(owned(p1).size(), 1u);
  ns.routeError("10.0.0.1", 0);
  ns.route("10.0.0.1", "nowhere");  // the route is gone (the pod was deleted): cleaned
  auto gone = agent.reconcile(m);
  ASSERT_TRUE(gone);
  EXPECT_FALSE(gone->ok());
  EXPECT_TRUE(owned(p1).empty());
}

TEST(AgentReconciler, RenamedPodLinkIsNeverTheAgents) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  auto& p1 = ns.addPod("p1", "10.0.0.1");
  auto& p9 = ns.addPod("p9", "10.0.0.9");
  dp::Link renamed;  // a veth (kind Other to the agent) renamed into the agent's prefix
  renamed.name = "kst-eth0";
  p9.seedLink(renamed);
  p1.seedLink(renamed);
  AgentReconciler agent(cfg, "n1", ns);
  auto res = agent.reconcile(model());
  ASSERT_TRUE(res);
  EXPECT_NE(p1.link("kst-vxg"), nullptr);
  EXPECT_NE(p1.link("kst-eth0"), nullptr);  // a serving pod: not deleted as "not desired"
  EXPECT_NE(p9.link("kst-eth0"), nullptr);  // a pod that serves nothing: not "managed"
  AgentReconciler fresh(cfg, "n1", ns);
  ASSERT_TRUE(fresh.cleanup());
  EXPECT_EQ(p1.link("kst-vxg"), nullptr);
  EXPECT_NE(p1.link("kst-eth0"), nullptr);
  EXPECT_NE(p9.link("kst-eth0"), nullptr);
  EXPECT_FALSE(ownedPodLink(renamed, "kst"));
  EXPECT_TRUE(ownedPodLink(podLink(cfg, ip("10.0.0.1")), "kst"));
}

TEST(AgentReconciler, NamespacesOfPodsThatComeAndGoAreReleased) {
  DataplaneConfig cfg;
  FakeNetns ns(cfg);
  ns.addPod("p1", "10.0.0.1");
  AgentReconciler agent(cfg, "n1", ns);
  Model m;
  m.services.push_back({{"web", "a"}, ip("203.0.113.10"), {{ip("10.0.0.1"), "n1", true, false, ""}}});
  ASSERT_TRUE(agent.reconcile(m));
  size_t most = 0;
  for (int i = 0; i < 40; ++i) {
    std::string id = "tmp" + std::to_string(i), addr = "10.0.1." + std::to_string(i + 1);
    ns.addPod(id, addr);
    auto with = m;
    with.services[0].endpoints.push_back({ip(addr), "n1", true, false, ""});
    ASSERT_TRUE(agent.reconcile(with));
    most = std::max(most, ns.held.size());
    ASSERT_TRUE(agent.reconcile(m));  // the endpoint leaves
    ns.removePod(id);
    ASSERT_TRUE(agent.reconcile(m));
    most = std::max(most, ns.held.size());
  }
  EXPECT_EQ(ns.held, (std::set<std::string>{"p1"}));
  EXPECT_LE(most, 2u);
}

// ---- dataplane/pod_identity.h: route → veth → peer namespace id ----

dp::HostLink hostLink(uint32_t ifindex, std::string name, std::string kind, uint32_t master = 0,
                      std::optional<int32_t> nsid = std::nullopt) {
  return {ifindex, std::move(name), std::move(kind), master, nsid, std::nullopt};
}

constexpr uint8_t kUnicast = 1, kLocal = 2;
constexpr uint16_t kReachable = 0x02, kStale = 0x04, kIncomplete = 0x01;

TEST(PodIdentity, RoutedVethGivesItsPeerNamespace) {
  dp::HostFacts f;
  f.links[5] = hostLink(5, "cali1", "veth", 0, 7);
  auto p = dp::podPeer(ip("10.0.0.1"), {5, false, kUnicast}, f);
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->nsid, 7);
  EXPECT_EQ(p->hostDevice, "cali1");
  EXPECT_EQ(p->via, "");
}

TEST(PodIdentity, RefusesWhatIsNotALocalPod) {
  dp::HostFacts f;
  f.links[2] = hostLink(2, "eth0", "", 0);
  f.links[5] = hostLink(5, "vx", "veth");  // peer in the node's own namespace: no netnsid
  f.links[6] = hostLink(6, "pod", "veth", 0, 3);
  EXPECT_FALSE(dp::podPeer(ip("10.0.0.1"), {2, false, kUnicast}, f));   // not a veth
  EXPECT_FALSE(dp::podPeer(ip("10.0.0.1"), {5, false, kUnicast}, f));   // no peer namespace
  EXPECT_FALSE(dp::podPeer(ip("10.0.0.1"), {6, true, kUnicast}, f));    // via a gateway
  EXPECT_FALSE(dp::podPeer(ip("10.0.0.1"), {6, false, kLocal}, f));     // the node's own
  EXPECT_FALSE(dp::podPeer(ip("10.0.0.1"), {9, false, kUnicast}, f));   // unknown device
}

TEST(PodIdentity, BridgeGoesThroughNeighbourAndForwardingEntry) {
  dp::HostFacts f;
  f.links[3] = hostLink(3, "cni0", "bridge");
  f.links[10] = hostLink(10, "veth-a", "veth", 3, 1);
  f.links[11] = hostLink(11, "veth-b", "veth", 3, 2);
  dp::MacAddress macA{2, 0, 0, 0, 0, 0xa}, macB{2, 0, 0, 0, 0, 0xb};
  f.neighbours.push_back({ip("10.0.0.2"), 3, macB, kStale});
  f.neighbours.push_back({ip("fd00::2"), 3, macB, kReachable});
  f.fdb.push_back({macA, 10, 3, false});
  f.fdb.push_back({macB, 11, 3, false});
  f.fdb.push_back({macB, 3, 3, true});  // a local entry on the bridge itself: ignored
  for (auto a : {"10.0.0.2", "fd00::2"}) {
    auto p = dp::podPeer(ip(a), {3, false, kUnicast}, f);
    ASSERT_TRUE(p) << p.error().message;
    EXPECT_EQ(p->nsid, 2);
    EXPECT_EQ(p->hostDevice, "veth-b");
    EXPECT_EQ(p->via, "cni0");
  }
  // Not resolved yet: the caller provokes resolution and retries.
  auto none = dp::podPeer(ip("10.0.0.3"), {3, false, kUnicast}, f);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, dp::kNeedsNeighbour);
  f.neighbours.push_back({ip("10.0.0.4"), 3, std::nullopt, kIncomplete});
  EXPECT_EQ(dp::podPeer(ip("10.0.0.4"), {3, false, kUnicast}, f).error().code, dp::kNeedsNeighbour);
  // The same MAC on two ports: refused, not guessed.
  f.fdb.push_back({macB, 10, 3, false});
  auto two = dp::podPeer(ip("10.0.0.2"), {3, false, kUnicast}, f);
  ASSERT_FALSE(two);
  EXPECT_NE(two.error().message.find("two ports"), std::string::npos);
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
  ns.route("fd00::1", "p1");  // dual stack: the node routes both addresses to the pod
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
