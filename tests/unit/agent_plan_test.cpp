// desired/agent.h: which pod namespaces get which decap link and VIPs.
#include "desired/agent.h"

#include <gtest/gtest.h>

namespace kst {
namespace {

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

Endpoint ep(const char* a, const char* node, bool draining = false) {
  return Endpoint{ip(a), node, true, draining, ""};
}

Model sampleModel() {
  Model m;
  m.services.push_back({{"web", "a"}, ip("203.0.113.10"),
                        {ep("10.0.0.1", "n1"), ep("10.0.0.2", "n2"), ep("10.0.0.3", "n1", true)}});
  m.services.push_back({{"web", "b"}, ip("203.0.113.11"), {ep("10.0.0.1", "n1")}});
  m.services.push_back({{"web", "c"}, ip("2001:db8::10"), {ep("fd00::1", "n1"), ep("fd00::2", "n2")}});
  return m;
}

const PodPlan* planFor(const std::vector<PodPlan>& plans, const char* pod) {
  for (auto& p : plans)
    if (p.podIp == ip(pod)) return &p;
  return nullptr;
}

TEST(AgentPlan, OnlyEndpointsOfThisNode) {
  DataplaneConfig cfg;
  auto plans = planAgent(sampleModel(), cfg, "n1");
  ASSERT_EQ(plans.size(), 3u);
  EXPECT_EQ(plans[0].podIp, ip("10.0.0.1"));
  EXPECT_EQ(plans[1].podIp, ip("10.0.0.3"));  // draining endpoints keep their VIPs
  EXPECT_EQ(plans[2].podIp, ip("fd00::1"));
  EXPECT_EQ(planFor(plans, "10.0.0.2"), nullptr);
  auto other = planAgent(sampleModel(), cfg, "n2");
  ASSERT_EQ(other.size(), 2u);
  EXPECT_EQ(other[0].podIp, ip("10.0.0.2"));
  EXPECT_EQ(other[1].podIp, ip("fd00::2"));
  EXPECT_TRUE(planAgent(sampleModel(), cfg, "n3").empty());
}

TEST(AgentPlan, EndpointsWithoutNodeNameMatchNoNamedNode) {
  Model m;
  m.services.push_back({{"web", "a"}, ip("203.0.113.10"), {ep("10.0.0.1", "")}});
  DataplaneConfig cfg;
  EXPECT_TRUE(planAgent(m, cfg, "n1").empty());
}

TEST(AgentPlan, TwoVipsInOnePodShareOneLink) {
  DataplaneConfig cfg;
  auto plans = planAgent(sampleModel(), cfg, "n1");
  const auto* p = planFor(plans, "10.0.0.1");
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(p->state.links.size(), 1u);
  const auto& l = p->state.links[0];
  EXPECT_EQ(l.name, "kst-vxg");
  EXPECT_EQ(l.kind, dp::Link::Kind::VxlanGpe);
  EXPECT_TRUE(l.external);
  EXPECT_EQ(l.port, 4790);
  EXPECT_EQ(p->state.addresses,
            (std::vector<dp::Address>{{"kst-vxg", ip("203.0.113.10"), 32},
                                      {"kst-vxg", ip("203.0.113.11"), 32}}));
  EXPECT_EQ(p->services, (std::vector<ObjectKey>{{"web", "a"}, {"web", "b"}}));
  EXPECT_FALSE(p->state.mplsLabelRoute);
}

TEST(AgentPlan, Ipv6VipHasPrefix128) {
  DataplaneConfig cfg;
  auto plans = planAgent(sampleModel(), cfg, "n1");
  const auto* p = planFor(plans, "fd00::1");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->state.addresses, (std::vector<dp::Address>{{"kst-vxg", ip("2001:db8::10"), 128}}));
}

TEST(AgentPlan, MplsModeUsesLoAndLabelRoute) {
  DataplaneConfig cfg;
  cfg.mode = Mode::Mpls;
  auto plans = planAgent(sampleModel(), cfg, "n1");
  const auto* p = planFor(plans, "10.0.0.1");
  ASSERT_NE(p, nullptr);
  EXPECT_TRUE(p->state.links.empty());
  EXPECT_TRUE(p->state.mplsLabelRoute);
  EXPECT_EQ(p->state.addresses, (std::vector<dp::Address>{{"lo", ip("203.0.113.10"), 32},
                                                          {"lo", ip("203.0.113.11"), 32}}));
}

TEST(AgentPlan, GrePerEndpointPodLinkHasLocalPodIp) {
  DataplaneConfig cfg;
  cfg.mode = Mode::Gre;
  auto plans = planAgent(sampleModel(), cfg, "n1");
  const auto* p = planFor(plans, "10.0.0.1");
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(p->state.links.size(), 1u);
  const auto& l = p->state.links[0];
  EXPECT_EQ(l.name, "kst-gre");
  EXPECT_EQ(l.kind, dp::Link::Kind::Gre);
  EXPECT_FALSE(l.external);
  EXPECT_EQ(l.local, ip("10.0.0.1"));
  EXPECT_FALSE(l.remote.has_value());  // any router may send
  EXPECT_EQ(p->state.addresses[0].dev, "kst-gre");
  const auto* p6 = planFor(plans, "fd00::1");
  ASSERT_NE(p6, nullptr);
  EXPECT_EQ(p6->state.links[0].kind, dp::Link::Kind::Ip6gre);
  EXPECT_EQ(p6->state.links[0].local, ip("fd00::1"));
}

TEST(AgentPlan, FlowModePodLinks) {
  struct Case {
    Mode mode;
    const char* pod;
    const char* name;
    dp::Link::Kind kind;
  };
  for (auto c : {Case{Mode::Ipip, "10.0.0.1", "kst-ipip", dp::Link::Kind::Ipip},
                 Case{Mode::Ipip, "fd00::1", "kst-ipip", dp::Link::Kind::Ip6tnl},
                 Case{Mode::GreFlow, "10.0.0.1", "kst-gre", dp::Link::Kind::Gre},
                 Case{Mode::GreFlow, "fd00::1", "kst-gre", dp::Link::Kind::Ip6gre}}) {
    DataplaneConfig cfg;
    cfg.mode = c.mode;
    auto l = podLink(cfg, ip(c.pod));
    EXPECT_EQ(l.name, c.name) << modeName(c.mode) << " " << c.pod;
    EXPECT_EQ(l.kind, c.kind) << modeName(c.mode) << " " << c.pod;
    EXPECT_TRUE(l.external) << modeName(c.mode) << " " << c.pod;
    EXPECT_FALSE(l.local.has_value());
  }
}

TEST(AgentPlan, LinkPrefixIsConfigurable) {
  DataplaneConfig cfg;
  cfg.linkPrefix = "tun";
  auto plans = planAgent(sampleModel(), cfg, "n1");
  EXPECT_EQ(plans[0].state.links[0].name, "tun-vxg");
  EXPECT_EQ(plans[0].state.addresses[0].dev, "tun-vxg");
}

TEST(AgentPlan, SameVipTwiceForOnePodIsDeduplicated) {
  Model m;
  // Two services (different VIP families would differ; same VIP can only come from one
  // winner, but an endpoint listed twice must not duplicate the address).
  m.services.push_back({{"web", "a"}, ip("203.0.113.10"), {ep("10.0.0.1", "n1"), ep("10.0.0.1", "n1")}});
  DataplaneConfig cfg;
  auto plans = planAgent(m, cfg, "n1");
  ASSERT_EQ(plans.size(), 1u);
  EXPECT_EQ(plans[0].state.addresses.size(), 1u);
}

TEST(ConfigNames, ModeParsingAndLinkNames) {
  Mode m;
  EXPECT_TRUE(parseMode("VXLAN-GPE", m));
  EXPECT_EQ(m, Mode::VxlanGpe);
  EXPECT_TRUE(parseMode("gre-flow", m));
  EXPECT_EQ(m, Mode::GreFlow);
  EXPECT_FALSE(parseMode("geneve", m));
  EXPECT_EQ(m, Mode::GreFlow);  // untouched on failure
  DataplaneConfig cfg;
  cfg.mode = Mode::Mpls;
  EXPECT_EQ(cfg.tunnelLinkName(), "lo");
  EXPECT_EQ(cfg.nexthopIdEnd(), cfg.nexthopIdBase + 0x100000);
}

}  // namespace
}  // namespace kst
