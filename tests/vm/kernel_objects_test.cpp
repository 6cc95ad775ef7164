// Every kernel object every mode creates, IPv4 and IPv6, sent by the daemon's own code
// (desired state → diff → NetlinkClientImpl over libmnl) to a kernel that has GRE, IPIP and
// MPLS, then read back through the same client: the kernel must accept each request, and the
// observed state must equal the desired state (an empty diff), which is what makes a restart
// change nothing. This covers the kinds the end-to-end test (modes_test.cpp) does not route
// traffic through: ip6gre per endpoint, ip6tnl/ip6gre external, IPv6 encap nexthops, IPv6 VIPs
// on lo with an MPLS label route. No traffic, almost no execs: seconds under TCG.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "dataplane/diff.h"
#include "desired/agent.h"
#include "desired/router.h"
#include "linux/netlink_client.h"
#include "linux/netns.h"
#include "linux/route_lookup.h"
#include "vm/vm_harness.h"

namespace kst::e2e {
namespace {

IpAddress ip(const char* s) { return *IpAddress::parse(s); }
}  // namespace
}  // namespace kst::e2e
namespace kst {
void PrintTo(Mode m, std::ostream* os) { *os << modeName(m); }
}  // namespace kst
namespace kst::e2e {
namespace {

/** web (IPv4 VIP, IPv4 pod) and web6 (IPv6 VIP, IPv6 pod), both on node1. */
Model dualModel() {
  Model m;
  for (auto [name, vip, pod] : {std::tuple{"web", "203.0.113.10", "198.19.1.2"},
                                std::tuple{"web6", "2001:db8:ffff::10", "2001:db8:1::2"}}) {
    TunnelService s;
    s.key = {"default", name};
    s.vip = ip(vip);
    Endpoint e;
    e.ip = ip(pod);
    e.nodeName = "node1";
    s.endpoints.push_back(e);
    m.services.push_back(s);
  }
  return m;
}

std::string describeAll(const std::vector<dp::Change>& cs) {
  std::string s;
  for (auto& c : cs) s += "  " + dp::describe(c) + "\n";
  return s;
}

class KernelObjects : public VmE2E, public ::testing::WithParamInterface<Mode> {
 protected:
  void SetUp() override {
    VmE2E::SetUp();
    if (IsSkipped()) return;
    if (GetParam() != Mode::VxlanGpe && !inVm())
      GTEST_SKIP() << "needs GRE/IPIP/MPLS: runs in the VM (tools/vm/run-ctest.sh BUILD -L vm)";
  }
  /** A NetlinkClientImpl bound to namespace n (the socket stays in n). */
  std::unique_ptr<NetlinkClientImpl> client(const std::string& n, const DataplaneConfig& cfg,
                                            nl::Socket** raw = nullptr) {
    std::unique_ptr<nl::Socket> sock;
    auto st = runInNetns("/run/netns/" + ns(n), [&]() -> Status {
      auto s = nl::Socket::open();
      if (!s) return std::unexpected(s.error());
      sock = std::move(*s);
      return {};
    });
    EXPECT_TRUE(st) << st.error().message;
    if (!sock) return nullptr;
    if (raw) *raw = sock.get();
    return std::make_unique<NetlinkClientImpl>(std::move(sock), cfg);
  }
};

TEST_P(KernelObjects, AcceptedAndReadBackUnchanged) {
  DataplaneConfig cfg;
  cfg.mode = GetParam();
  // rt: the router, with eth0 on 198.19.1.0/24 and 2001:db8:1::/64, the pods on-link (MPLS).
  // p4 / p6: one pod namespace per pod address.
  for (auto n : {"rt", "p4", "p6"}) addNs(n);
  addVeth("rt", "eth0", "p4", "eth0");
  batch("rt", "addr add 198.19.1.1/24 dev eth0");
  batch("rt", "addr add 2001:db8:1::1/64 dev eth0 nodad");
  batch("p4", "addr add 198.19.1.2/24 dev eth0");
  ASSERT_NO_FATAL_FAILURE(build());

  // ---- router ----
  nl::Socket* rtSock = nullptr;
  auto rt = client("rt", cfg, &rtSock);
  ASSERT_TRUE(rt);
  Model model = dualModel();
  Allocations prior;
  if (cfg.mode == Mode::Mpls) {
    // What main.cpp's resolver answers, asked of this kernel's FIB.
    for (auto& s : model.services)
      for (auto& e : s.endpoints) {
        auto dev = directDevice(*rtSock, e.ip);
        ASSERT_EQ(dev, std::optional<std::string>("eth0")) << e.ip.str();
        prior.mplsDevice.emplace(e.ip, *dev);
      }
    EXPECT_EQ(directDevice(*rtSock, ip("198.51.100.1")), std::nullopt) << "no route at all";
  }
  auto plan = planRouter(model, cfg, prior);
  // gre mode refuses IPv6 endpoints (desired/router.cpp): web6 gets a problem, no objects.
  const size_t endpoints = cfg.mode == Mode::Gre ? 1 : 2;
  dp::RouterState desired = routerState(plan, cfg, prior);
  EXPECT_EQ(plan.problems.size(), 2 - endpoints)
      << (plan.problems.empty() ? "" : plan.problems.back().message);
  auto changes = dp::diffRouter(desired, {});
  auto failed = rt->apply(changes);
  ASSERT_TRUE(failed) << failed.error().message;
  EXPECT_TRUE(failed->empty()) << ::testing::PrintToString(*failed) << "\nwhile applying\n"
                               << describeAll(changes);
  dp::RouterState observed;
  auto links = rt->links();
  ASSERT_TRUE(links);
  for (auto& l : *links)
    if (l.name.starts_with(cfg.linkPrefix)) observed.links.push_back(l);
  observed.nexthops = *rt->nexthops();
  observed.routes = *rt->routes(cfg.tableOffset, cfg.tableOffset + cfg.maxSlots);
  observed.rules = *rt->rules(cfg.rulePriority, cfg.rulePriority + cfg.maxSlots);
  auto again = dp::diffRouter(desired, observed);
  EXPECT_TRUE(again.empty()) << "router state read back differs:\n" << describeAll(again)
                             << joined(ownedAll({"rt"}));
  EXPECT_EQ(observed.nexthops.size(), endpoints);
  const size_t nLinks = cfg.mode == Mode::Mpls       ? 0
                       : cfg.mode == Mode::VxlanGpe ? 1
                       : cfg.mode == Mode::Gre      ? 1   // one per (IPv4) endpoint
                                                    : 2;  // ipip + ip6tnl, gre + ip6gre
  EXPECT_EQ(observed.links.size(), nLinks) << joined(ownedAll({"rt"}));
  // The devices were created with --underlay-mtu (default 1500) − the mode's overhead.
  for (auto& l : observed.links)
    EXPECT_EQ(l.mtu, routerLinkMtu(cfg, l.kind == dp::Link::Kind::Ip6tnl ||
                                                l.kind == dp::Link::Kind::Ip6gre
                                            ? Family::V6 : Family::V4)) << l.name;

  // Another --underlay-mtu: each device's MTU is set in place (same ifindex, nexthops kept)
  // and read back as asked.
  {
    DataplaneConfig jumbo = cfg;
    jumbo.underlayMtu = 9000;
    dp::RouterState want = routerState(plan, jumbo, prior);
    auto mtuChanges = dp::diffRouter(want, observed);
    EXPECT_EQ(mtuChanges.size(), nLinks) << describeAll(mtuChanges);
    for (auto& c : mtuChanges)
      EXPECT_TRUE(std::holds_alternative<dp::LinkMtu>(c.object)) << dp::describe(c);
    auto mf = rt->apply(mtuChanges);
    ASSERT_TRUE(mf) << mf.error().message;
    EXPECT_TRUE(mf->empty()) << ::testing::PrintToString(*mf);
    dp::RouterState after = observed;
    after.links.clear();
    auto relinks = rt->links();
    ASSERT_TRUE(relinks);
    for (auto& l : *relinks)
      if (l.name.starts_with(cfg.linkPrefix)) after.links.push_back(l);
    for (auto& l : after.links) {
      auto old = std::find_if(observed.links.begin(), observed.links.end(),
                              [&](auto& o) { return o.name == l.name; });
      ASSERT_NE(old, observed.links.end()) << l.name;
      EXPECT_EQ(l.ifindex, old->ifindex) << l.name << " was recreated";
      EXPECT_GT(l.mtu, 8900u) << l.name;
    }
    after.nexthops = *rt->nexthops();
    EXPECT_EQ(after.nexthops.size(), endpoints);
    auto left = dp::diffRouter(want, after);
    EXPECT_TRUE(left.empty()) << describeAll(left);
  }

  // ---- pods ----
  for (auto [n, podIp] : {std::pair{"p4", "198.19.1.2"}, std::pair{"p6", "2001:db8:1::2"}}) {
    SCOPED_TRACE(n);
    if (cfg.mode == Mode::Mpls) {
      auto st = runInNetns("/run/netns/" + ns(n),
                           [] { return writeSysctl("net/mpls/platform_labels", "101"); });
      ASSERT_TRUE(st) << st.error().message;
    }
    auto pc = client(n, cfg);
    ASSERT_TRUE(pc);
    Model one = model;
    std::erase_if(one.services, [&](const TunnelService& s) {
      return s.endpoints.front().ip != ip(podIp);
    });
    auto plans = planAgent(one, cfg, "node1");
    ASSERT_EQ(plans.size(), 1u);
    auto pch = dp::diffPod(plans[0].state, {}, cfg.mplsLabel);
    auto pf = pc->apply(pch);
    ASSERT_TRUE(pf) << pf.error().message;
    EXPECT_TRUE(pf->empty()) << ::testing::PrintToString(*pf) << "\nwhile applying\n"
                             << describeAll(pch);
    dp::PodState obs;
    auto podLinks = pc->links();
    ASSERT_TRUE(podLinks);
    for (auto& l : *podLinks)
      if (l.name.starts_with(cfg.linkPrefix)) obs.links.push_back(l);
    obs.addresses = *pc->addresses(true);
    auto pops = pc->mplsPops();
    obs.mplsLabelRoute = pops && !pops->empty();
    auto podAgain = dp::diffPod(plans[0].state, obs, cfg.mplsLabel);
    EXPECT_TRUE(podAgain.empty()) << "pod state read back differs:\n" << describeAll(podAgain)
                                  << joined(ownedAll({n}));
    // Removal leaves nothing owned.
    auto del = dp::diffPod({}, obs, cfg.mplsLabel);
    auto df = pc->apply(del);
    ASSERT_TRUE(df);
    EXPECT_TRUE(df->empty()) << ::testing::PrintToString(*df);
    EXPECT_EQ(joined(ownedAll({n})), "");
  }
  auto del = dp::diffRouter({}, observed);
  auto df = rt->apply(del);
  ASSERT_TRUE(df);
  EXPECT_TRUE(df->empty()) << ::testing::PrintToString(*df);
  EXPECT_EQ(joined(ownedAll({"rt"})), "");
}

INSTANTIATE_TEST_SUITE_P(Vm, KernelObjects,
                         ::testing::Values(Mode::VxlanGpe, Mode::Ipip, Mode::GreFlow, Mode::Gre,
                                           Mode::Mpls),
                         [](const ::testing::TestParamInfo<Mode>& i) {
                           std::string n = modeName(i.param);
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace kst::e2e
