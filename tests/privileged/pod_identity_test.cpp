// Pod identity on the real kernel (root): the agent's provider (linux/netns_provider.h) and
// reconciler in a private network namespace of the test process (unshare(CLONE_NEWNET): that
// namespace is the node; pods are named namespaces kpi<pid>-*, removed in TearDown, also when a
// test fails). What only the kernel shows: the route → veth → IFLA_LINK_NETNSID ↔ RTM_GETNSID
// chain (routed veths and a bridge), a held handle that outlives its path, the node's and the
// host's namespace never being candidates, handles and sockets released when pods go, and a
// renamed veth never taken for the agent's link.
#include <gtest/gtest.h>

#include <dirent.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "linux/netns.h"
#include "privileged/harness.h"
#include "linux/netns_provider.h"
#include "reconcile/agent_reconciler.h"

namespace kst {
namespace {

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

using e2e::sh;

size_t openFds() {
  size_t n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

class PodIdentity : public ::testing::Test {
 protected:
  std::string prefix, dir;
  std::vector<std::string> made;

  void SetUp() override {
    if (getuid() != 0) GTEST_SKIP() << "needs root (CTest label privileged)";
    prefix = "kpi" + std::to_string(getpid() % 100000);
    dir = "/tmp/" + prefix;
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    ASSERT_EQ(unshare(CLONE_NEWNET), 0);  // this process's namespace is the node
    ASSERT_EQ(sh("ip link set lo up").rc, 0);
    cfg.linkPrefix = "kst";
  }
  void TearDown() override {
    for (auto& n : made) sh("ip netns del " + n);
    if (!dir.empty()) std::filesystem::remove_all(dir);
  }
  std::string ns(const std::string& n) const { return prefix + "-" + n; }
  void run(const std::string& cmd) {
    auto r = sh(cmd);
    ASSERT_EQ(r.rc, 0) << cmd << ": " << r.out;
  }
  void newNs(const std::string& n) {
    run("ip netns add " + ns(n));
    made.push_back(ns(n));
    run("ip -n " + ns(n) + " link set lo up");
    run("ip netns exec " + ns(n) + " sysctl -qw net.ipv6.conf.all.accept_dad=0 "
        "net.ipv6.conf.default.accept_dad=0");
    std::filesystem::create_symlink("/run/netns/" + ns(n), dir + "/" + ns(n));
  }
  void delNs(const std::string& n) {
    run("ip netns del " + ns(n));
    std::erase(made, ns(n));
    std::filesystem::remove(dir + "/" + ns(n));
  }
  /** A pod on a routed veth (Calico style): eth0 holds v4/32 and v6/128, the node routes both
   *  to the host side `h<n>`. */
  void routedPod(const std::string& n, const std::string& v4, const std::string& v6) {
    newNs(n);
    run("ip link add h" + n + " type veth peer name eth0 netns " + ns(n));
    run("ip link set h" + n + " up");
    run("ip -n " + ns(n) + " link set eth0 up");
    run("ip -n " + ns(n) + " addr add " + v4 + "/32 dev eth0");
    run("ip -n " + ns(n) + " addr add " + v6 + "/128 dev eth0 nodad");
    run("ip route add " + v4 + "/32 dev h" + n);
    run("ip -6 route add " + v6 + "/128 dev h" + n);
  }
  /** The same (address) as another pod, on a spare dummy device of pod n. */
  void spoof(const std::string& n, const std::string& v4, const std::string& v6) {
    // A veth pair inside the pod (no dummy module needed): `spare` is a device of its own.
    run("ip -n " + ns(n) + " link add spare type veth peer name spare-peer");
    run("ip -n " + ns(n) + " link set spare up");
    run("ip -n " + ns(n) + " addr add " + v4 + "/32 dev spare");
    run("ip -n " + ns(n) + " addr add " + v6 + "/128 dev spare nodad");
  }
  std::string idOf(const std::string& n) {
    auto id = netnsIdentity("/run/netns/" + ns(n));
    return id ? std::to_string(id->first) + ":" + std::to_string(id->second) : "?";
  }
  std::string owned(const std::string& n) {
    // The agent's decap link and its VIPs (203.0.113.0/24, 2001:db8:ffff::/64).
    return sh("ip -n " + ns(n) + " -o link show type vxlan; ip -n " + ns(n) +
              " -o addr show | grep -E '203\\.0\\.113\\.|2001:db8:ffff:' || true").out;
  }
  Model model(const std::vector<std::pair<std::string, std::string>>& vipToPod) {
    Model m;
    int i = 0;
    for (auto& [vip, pod] : vipToPod)
      m.services.push_back(
          {{"default", "s" + std::to_string(i++)}, ip(vip), {{ip(pod), "n1", true, false, ""}}});
    return m;
  }
  DataplaneConfig cfg;
};

TEST_F(PodIdentity, RoutingDecidesNotTheFirstHolder_v4_v6) {
  // The attacker's namespace is made first and holds the victim's addresses on a spare device.
  routedPod("atk", "10.90.0.3", "fd90::3");
  routedPod("vic", "10.90.0.2", "fd90::2");
  spoof("atk", "10.90.0.2", "fd90::2");
  NetnsProviderImpl provider(cfg, {dir}, false);
  auto r = provider.routed({ip("10.90.0.2"), ip("fd90::2"), ip("10.90.0.3"), ip("10.90.0.9")});
  ASSERT_TRUE(r.at(ip("10.90.0.2"))) << r.at(ip("10.90.0.2")).error().message;
  EXPECT_EQ(r.at(ip("10.90.0.2"))->id, idOf("vic"));
  ASSERT_TRUE(r.at(ip("fd90::2"))) << r.at(ip("fd90::2")).error().message;
  EXPECT_EQ(r.at(ip("fd90::2"))->id, idOf("vic"));
  ASSERT_TRUE(r.at(ip("10.90.0.3")));
  EXPECT_EQ(r.at(ip("10.90.0.3"))->id, idOf("atk"));
  EXPECT_FALSE(r.at(ip("10.90.0.9")));  // no route: no namespace

  AgentReconciler agent(cfg, "n1", provider);
  auto m = model({{"203.0.113.10", "10.90.0.2"}, {"2001:db8:ffff::10", "fd90::2"}});
  auto res = agent.reconcile(m);
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->ok()) << (res->failures.empty() ? "" : res->failures[0]);
  auto vic = owned("vic");
  EXPECT_NE(vic.find("kst-vxg"), std::string::npos) << vic;
  EXPECT_NE(vic.find("203.0.113.10"), std::string::npos) << vic;
  EXPECT_NE(vic.find("2001:db8:ffff::10"), std::string::npos) << vic;
  EXPECT_EQ(owned("atk"), "");
  EXPECT_EQ(agent.duplicates().size(), 2u);
  ASSERT_EQ(res->problems.size(), 2u);
  EXPECT_EQ(res->problems[0].kind, Problem::Kind::DuplicatePodAddress);
  // A restarted agent (a fresh scan) keeps the victim, changes nothing.
  NetnsProviderImpl provider2(cfg, {dir}, false);
  AgentReconciler restarted(cfg, "n1", provider2);
  auto again = restarted.reconcile(m);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->changes, 0u);
  EXPECT_EQ(owned("atk"), "");
  // Only the served namespace stays held.
  EXPECT_EQ(provider2.heldCount(), 1u);
}

TEST_F(PodIdentity, BridgeThroughNeighbourAndForwardingEntry) {
  run("ip link add br0 type bridge");
  run("ip link set br0 up");
  run("ip addr add 10.91.0.1/24 dev br0");
  run("ip addr add fd91::1/64 dev br0 nodad");
  for (auto [n, host] : {std::pair{"c", "2"}, std::pair{"d", "3"}}) {
    newNs(n);
    run(std::string("ip link add h") + n + " type veth peer name eth0 netns " + ns(n));
    run(std::string("ip link set h") + n + " master br0 up");
    run("ip -n " + ns(n) + " link set eth0 up");
    run("ip -n " + ns(n) + " addr add 10.91.0." + host + "/24 dev eth0");
    run("ip -n " + ns(n) + " addr add fd91::" + host + "/64 dev eth0 nodad");
  }
  NetnsProviderImpl provider(cfg, {dir}, false);
  // No neighbour entry yet: the first answer provokes resolution, a later one finds the pod.
  std::map<IpAddress, Result<dp::NetnsProvider::Ns>> r;
  for (int i = 0; i < 50; ++i) {
    r = provider.routed({ip("10.91.0.2"), ip("fd91::3")});
    if (r.at(ip("10.91.0.2")) && r.at(ip("fd91::3"))) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(r.at(ip("10.91.0.2"))) << r.at(ip("10.91.0.2")).error().message;
  EXPECT_EQ(r.at(ip("10.91.0.2"))->id, idOf("c"));
  ASSERT_TRUE(r.at(ip("fd91::3"))) << r.at(ip("fd91::3")).error().message;
  EXPECT_EQ(r.at(ip("fd91::3"))->id, idOf("d"));
}

TEST_F(PodIdentity, HeldHandleOutlivesItsPath) {
  routedPod("a", "10.90.0.2", "fd90::2");
  routedPod("b", "10.90.0.3", "fd90::3");
  std::filesystem::remove(dir + "/" + ns("b"));
  std::filesystem::remove(dir + "/" + ns("a"));
  std::string path = dir + "/pod";  // a path that names a now and b later (a reused /proc/PID)
  std::filesystem::create_symlink("/run/netns/" + ns("a"), path);
  NetnsProviderImpl provider(cfg, {dir}, false);
  auto list = provider.list();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].id, idOf("a"));
  std::filesystem::remove(path);
  std::filesystem::create_symlink("/run/netns/" + ns("b"), path);
  dp::PodTable t;
  t.decapLink = "kst-vxg";
  ASSERT_TRUE(provider.podTable(list[0], &t));
  ASSERT_TRUE(provider.prepare(list[0], {"kst-vxg", false, 0}));
  auto c = provider.client(list[0]);
  ASSERT_TRUE(c);
  ASSERT_TRUE((*c)->apply({{dp::Change::Action::Add, podLink(cfg, ip("10.90.0.2"))}}));
  EXPECT_EQ(sh("ip netns exec " + ns("a") + " nft list tables").out,
            "table inet kube_service_tunnel_pod\n");
  EXPECT_EQ(sh("ip netns exec " + ns("b") + " nft list tables").out, "");
  EXPECT_NE(owned("a").find("kst-vxg"), std::string::npos);
  EXPECT_EQ(owned("b"), "");
  // The namespace outlives its name while held; released, it is gone from the provider.
  delNs("a");
  EXPECT_TRUE((*c)->links());
  provider.retainOnly({});
  EXPECT_EQ(provider.heldCount(), 0u);
  EXPECT_FALSE(provider.client(list[0]));
}

TEST_F(PodIdentity, NodeAndHostNamespacesAreNeverCandidates) {
  routedPod("a", "10.90.0.2", "fd90::2");
  std::filesystem::create_symlink("/proc/self/ns/net", dir + "/self");
  std::filesystem::create_symlink("/proc/1/ns/net", dir + "/host");
  NetnsProviderImpl provider(cfg, {dir}, true);  // and every /proc/PID of the machine
  auto self = netnsIdentity("/proc/thread-self/ns/net");
  ASSERT_TRUE(self);
  // pid 1's namespace (the host's with hostPID; unreadable in some containers).
  auto host = netnsIdentity("/proc/1/ns/net");
  auto listed = provider.list();
  EXPECT_FALSE(listed.empty());
  bool sawPod = false;
  for (auto& n : listed) {
    EXPECT_NE(n.id, std::to_string(self->first) + ":" + std::to_string(self->second)) << n.path;
    if (host)
      EXPECT_NE(n.id, std::to_string(host->first) + ":" + std::to_string(host->second)) << n.path;
    if (n.id == idOf("a")) sawPod = true;
  }
  EXPECT_TRUE(sawPod);
  provider.retainOnly({});
}

TEST_F(PodIdentity, HandlesAndSocketsOfPodsThatComeAndGoAreReleased) {
  routedPod("keep", "10.90.0.2", "fd90::2");
  NetnsProviderImpl provider(cfg, {dir}, false);
  AgentReconciler agent(cfg, "n1", provider);
  auto base = model({{"203.0.113.10", "10.90.0.2"}});
  ASSERT_TRUE(agent.reconcile(base));
  size_t before = openFds();
  for (int i = 0; i < 40; ++i) {
    std::string n = "t" + std::to_string(i), v4 = "10.90.1." + std::to_string(i + 2);
    routedPod(n, v4, "fd90:1::" + std::to_string(i + 2));
    auto with = base;
    with.services.push_back({{"default", "tmp"}, ip("203.0.113.11"), {{ip(v4), "n1", true, false, ""}}});
    auto r = agent.reconcile(with);
    ASSERT_TRUE(r && r->ok()) << (r && !r->failures.empty() ? r->failures[0] : "");
    ASSERT_NE(owned(n).find("kst-vxg"), std::string::npos);
    ASSERT_TRUE(agent.reconcile(base));  // the endpoint leaves
    delNs(n);                            // and the pod
    ASSERT_TRUE(agent.reconcile(base));
  }
  EXPECT_EQ(provider.heldCount(), 1u);
  EXPECT_LE(provider.socketCount(), 2u);  // the node's socket and the served pod's
  EXPECT_LE(openFds(), before + 1) << "namespace handles or sockets leak";
}

TEST_F(PodIdentity, RenamedVethIsNeverTheAgentsLink) {
  routedPod("a", "10.90.0.2", "fd90::2");
  routedPod("b", "10.90.0.3", "fd90::3");
  run("ip -n " + ns("b") + " link set eth0 down");
  run("ip -n " + ns("b") + " link set eth0 name kst-eth0");
  run("ip -n " + ns("b") + " link set kst-eth0 up");
  NetnsProviderImpl provider(cfg, {dir}, false);
  {
    AgentReconciler agent(cfg, "n1", provider);
    ASSERT_TRUE(agent.reconcile(model({{"203.0.113.10", "10.90.0.2"}})));
  }
  AgentReconciler fresh(cfg, "n1", provider);
  auto res = fresh.cleanup();
  ASSERT_TRUE(res);
  EXPECT_EQ(owned("a"), "");  // the agent's link and VIP are gone
  EXPECT_EQ(sh("ip -n " + ns("b") + " -o link show kst-eth0").rc, 0) << "the pod's veth was deleted";
}

}  // namespace
}  // namespace kst
