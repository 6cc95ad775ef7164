// desired/router.h (slots, nexthop ids, routes, rules, buckets, sticky allocations) and
// desired/nft_render.h (incremental nft scripts).
#include "desired/router.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include <fmt/format.h>

#include "desired/nft_render.h"
#include "hashing/balance.h"
#include "hashing/maglev.h"

namespace kst {
namespace {

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

Endpoint ep(const std::string& a, bool draining = false) {
  return Endpoint{ip(a), "n1", true, draining, ""};
}

TunnelService svc(const std::string& name, const std::string& vip, std::vector<Endpoint> eps) {
  std::sort(eps.begin(), eps.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
  return TunnelService{{"default", name}, ip(vip), std::move(eps)};
}

Model model(std::vector<TunnelService> s) {
  Model m;
  m.services = std::move(s);
  std::sort(m.services.begin(), m.services.end(), [](auto& a, auto& b) { return a.vip < b.vip; });
  return m;
}

struct Step {
  RouterPlan plan;
  dp::RouterState st;
};

Step compute(const Model& m, const DataplaneConfig& cfg, const dp::RouterState* prev = nullptr) {
  Allocations prior = prev ? allocationsFrom(*prev, cfg) : Allocations{};
  Step s;
  s.plan = planRouter(m, cfg, prior);
  s.st = routerState(s.plan, cfg, prior);
  return s;
}

/** endpoint IP → slot for one VIP of a plan. */
std::map<std::string, uint32_t> slotsOf(const RouterPlan& p, const std::string& vip) {
  std::map<std::string, uint32_t> m;
  for (auto& vp : p.vips)
    if (vp.vip == ip(vip))
      for (size_t i = 0; i < vp.endpoints.size(); ++i) m[vp.endpoints[i].ip.str()] = vp.slots[i];
  return m;
}

/** bucket → endpoint IP ("" for none) of one VIP. */
std::vector<std::string> bucketOwners(const RouterPlan& p, const std::string& vip) {
  for (auto& vp : p.vips) {
    if (vp.vip != ip(vip)) continue;
    std::vector<std::string> out;
    for (auto b : vp.buckets) out.push_back(b < 0 ? "" : vp.endpoints[b].ip.str());
    return out;
  }
  return {};
}

/** Routes that deliver a VIP to an endpoint (via a nexthop or a device). The slot tables may
 *  hold other routes too (e.g. ones that reject traffic for a slot without an endpoint). */
std::vector<dp::Route> vipRoutes(const dp::RouterState& st, const std::string& vip) {
  std::vector<dp::Route> out;
  for (auto& r : st.routes)
    if (r.key.dst == ip(vip) && r.key.prefixLen == ip(vip).hostPrefixLen() &&
        (r.nhid != 0 || !r.dev.empty()))
      out.push_back(r);
  return out;
}

const dp::Nexthop* nexthopTo(const dp::RouterState& st, const std::string& endpoint,
                             Family routeFamily = Family::V4) {
  for (auto& nh : st.nexthops)
    if (nh.family == routeFamily &&
        ((nh.encapDst && *nh.encapDst == ip(endpoint)) || (nh.gateway && *nh.gateway == ip(endpoint))))
      return &nh;
  return nullptr;
}

void expectSameState(const dp::RouterState& a, const dp::RouterState& b) {
  ASSERT_EQ(a.links.size(), b.links.size());
  for (size_t i = 0; i < a.links.size(); ++i) EXPECT_TRUE(a.links[i].sameConfig(b.links[i])) << i;
  ASSERT_EQ(a.nexthops.size(), b.nexthops.size());
  for (size_t i = 0; i < a.nexthops.size(); ++i)
    EXPECT_TRUE(a.nexthops[i].sameConfig(b.nexthops[i])) << "nexthop " << a.nexthops[i].id;
  ASSERT_EQ(a.routes.size(), b.routes.size());
  for (size_t i = 0; i < a.routes.size(); ++i)
    EXPECT_TRUE(a.routes[i].sameConfig(b.routes[i])) << "route " << i;
  EXPECT_EQ(a.rules, b.rules);
  EXPECT_EQ(a.nft, b.nft);
}

const std::string kVip = "203.0.113.10";

TEST(RouterPlan, SlotsAreAddressOrderWithoutPrior) {
  DataplaneConfig cfg;
  auto s = compute(model({svc("a", kVip, {ep("10.0.0.3"), ep("10.0.0.1"), ep("10.0.0.2")})}), cfg);
  EXPECT_EQ(slotsOf(s.plan, kVip),
            (std::map<std::string, uint32_t>{{"10.0.0.1", 0}, {"10.0.0.2", 1}, {"10.0.0.3", 2}}));
  EXPECT_EQ(s.plan.slotCount, 3u);
  EXPECT_TRUE(s.plan.problems.empty());
}

TEST(RouterPlan, SlotsAreStickyWhenAnotherEndpointIsRemoved) {
  DataplaneConfig cfg;
  auto s1 = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")})}), cfg);
  auto s2 = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.3")})}), cfg, &s1.st);
  EXPECT_EQ(slotsOf(s2.plan, kVip),
            (std::map<std::string, uint32_t>{{"10.0.0.1", 0}, {"10.0.0.3", 2}}));
  EXPECT_EQ(s2.plan.slotCount, 3u);  // slot 2 still in use
  // A new endpoint, lower in address order than 10.0.0.3, takes the lowest free slot (1)
  // without moving anyone.
  auto s3 = compute(model({svc("a", kVip, {ep("10.0.0.0"), ep("10.0.0.1"), ep("10.0.0.3")})}),
                    cfg, &s2.st);
  EXPECT_EQ(slotsOf(s3.plan, kVip),
            (std::map<std::string, uint32_t>{{"10.0.0.0", 1}, {"10.0.0.1", 0}, {"10.0.0.3", 2}}));
  // Another new endpoint goes to slot 3.
  auto s4 = compute(
      model({svc("a", kVip, {ep("10.0.0.0"), ep("10.0.0.1"), ep("10.0.0.3"), ep("9.0.0.1")})}), cfg,
      &s3.st);
  EXPECT_EQ(slotsOf(s4.plan, kVip), (std::map<std::string, uint32_t>{
                                        {"10.0.0.0", 1}, {"10.0.0.1", 0}, {"10.0.0.3", 2}, {"9.0.0.1", 3}}));
}

TEST(RouterPlan, SlotsArePerVip) {
  DataplaneConfig cfg;
  auto s = compute(model({svc("a", "203.0.113.1", {ep("10.0.0.1"), ep("10.0.0.2")}),
                          svc("b", "203.0.113.2", {ep("10.0.0.2"), ep("10.0.0.3")})}),
                   cfg);
  EXPECT_EQ(slotsOf(s.plan, "203.0.113.1"),
            (std::map<std::string, uint32_t>{{"10.0.0.1", 0}, {"10.0.0.2", 1}}));
  EXPECT_EQ(slotsOf(s.plan, "203.0.113.2"),
            (std::map<std::string, uint32_t>{{"10.0.0.2", 0}, {"10.0.0.3", 1}}));
  // One nexthop per endpoint (shared by both VIPs), ids from the base in first-use order.
  ASSERT_EQ(s.st.nexthops.size(), 3u);
  EXPECT_EQ(nexthopTo(s.st, "10.0.0.1")->id, cfg.nexthopIdBase);
  EXPECT_EQ(nexthopTo(s.st, "10.0.0.2")->id, cfg.nexthopIdBase + 1);
  EXPECT_EQ(nexthopTo(s.st, "10.0.0.3")->id, cfg.nexthopIdBase + 2);
}

TEST(RouterPlan, NexthopShapeInVxlanGpeMode) {
  DataplaneConfig cfg;
  auto s = compute(model({svc("a", kVip, {ep("10.0.0.1")})}), cfg);
  ASSERT_EQ(s.st.nexthops.size(), 1u);
  const auto& nh = s.st.nexthops[0];
  EXPECT_EQ(nh.id, 0x4b530000u);
  EXPECT_EQ(nh.family, Family::V4);
  EXPECT_EQ(nh.encap, dp::Nexthop::Encap::Ip);
  EXPECT_EQ(nh.encapDst, ip("10.0.0.1"));
  EXPECT_EQ(nh.ttl, 64);
  EXPECT_EQ(nh.dev, "kst-vxg");
  ASSERT_EQ(s.st.links.size(), 1u);
  EXPECT_EQ(s.st.links[0].name, "kst-vxg");
  EXPECT_EQ(s.st.links[0].kind, dp::Link::Kind::VxlanGpe);
  EXPECT_TRUE(s.st.links[0].external);
  EXPECT_EQ(s.st.links[0].port, 4790);
}

TEST(RouterPlan, TunnelDeviceMtuIsTheUnderlayMtuMinusTheModesOverhead) {
  auto dual = model({svc("a", kVip, {ep("10.0.0.1"), ep("fd00::1")})});
  struct Row {
    Mode mode;
    uint32_t underlay;
    std::map<std::string, uint32_t> mtus;
  };
  const Row rows[] = {
      {Mode::VxlanGpe, 9000, {{"kst-vxg", 9000 - 36}}},  // one device, sized for outer IPv4
      {Mode::VxlanGpe, 1500, {{"kst-vxg", 1464}}},
      {Mode::Ipip, 9000, {{"kst-ipip", 9000 - 20}, {"kst-ip6tnl", 9000 - 40}}},
      {Mode::GreFlow, 9000, {{"kst-gre", 9000 - 24}, {"kst-ip6gre", 9000 - 44}}},
      // 0: the kernel's defaults (set back in place when the flag is turned off).
      {Mode::VxlanGpe, 0, {{"kst-vxg", 1500}}},
      {Mode::Ipip, 0, {{"kst-ipip", 1480}, {"kst-ip6tnl", 1452}}},
      {Mode::GreFlow, 0, {{"kst-gre", 1476}, {"kst-ip6gre", 1448}}},
      {Mode::Mpls, 9000, {}},  // no device: the underlay link's own MTU applies
  };
  for (const auto& r : rows) {
    DataplaneConfig cfg;
    cfg.mode = r.mode;
    cfg.underlayMtu = r.underlay;
    SCOPED_TRACE(fmt::format("{} {}", modeName(r.mode), r.underlay));
    Allocations prior;
    if (r.mode == Mode::Mpls) {
      prior.mplsDevice[ip("10.0.0.1")] = "eth0";
      prior.mplsDevice[ip("fd00::1")] = "eth0";
    }
    auto plan = planRouter(dual, cfg, prior);
    auto st = routerState(plan, cfg, prior);
    std::map<std::string, uint32_t> got;
    for (auto& l : st.links) got[l.name] = l.mtu;
    EXPECT_EQ(got, r.mtus);
  }
}

TEST(RouterPlan, NexthopIdsStickyAndAllocatedFromBase) {
  DataplaneConfig cfg;
  cfg.nexthopIdBase = 0x10000;
  auto s1 = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")})}), cfg);
  EXPECT_EQ(nexthopTo(s1.st, "10.0.0.1")->id, 0x10000u);
  EXPECT_EQ(nexthopTo(s1.st, "10.0.0.2")->id, 0x10001u);
  EXPECT_EQ(nexthopTo(s1.st, "10.0.0.3")->id, 0x10002u);
  // Remove .1 and add .0 in the same pass: .2/.3 keep their ids; .0 must not take .1's id,
  // which is still in the kernel until the end of this pass.
  auto s2 = compute(model({svc("a", kVip, {ep("10.0.0.0"), ep("10.0.0.2"), ep("10.0.0.3")})}),
                    cfg, &s1.st);
  EXPECT_EQ(nexthopTo(s2.st, "10.0.0.2")->id, 0x10001u);
  EXPECT_EQ(nexthopTo(s2.st, "10.0.0.3")->id, 0x10002u);
  EXPECT_EQ(nexthopTo(s2.st, "10.0.0.0")->id, 0x10003u);
  EXPECT_EQ(nexthopTo(s2.st, "10.0.0.1"), nullptr);
  // Next pass: 0x10000 is free again and is the lowest free id.
  auto s3 = compute(model({svc("a", kVip, {ep("10.0.0.0"), ep("10.0.0.2"), ep("10.0.0.3"),
                                           ep("10.0.0.9")})}),
                    cfg, &s2.st);
  EXPECT_EQ(nexthopTo(s3.st, "10.0.0.9")->id, 0x10000u);
  EXPECT_EQ(nexthopTo(s3.st, "10.0.0.0")->id, 0x10003u);
  // Nexthops are sorted by id.
  for (size_t i = 1; i < s3.st.nexthops.size(); ++i)
    EXPECT_LT(s3.st.nexthops[i - 1].id, s3.st.nexthops[i].id);
}

TEST(RouterPlan, OneRoutePerVipAndEndpointInSlotTable) {
  DataplaneConfig cfg;
  cfg.tableOffset = 2000;
  auto s = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2")}),
                          svc("b", "2001:db8::10", {ep("fd00::1")})}),
                   cfg);
  auto r4 = vipRoutes(s.st, kVip);
  ASSERT_EQ(r4.size(), 2u);
  EXPECT_EQ(r4[0].key.table, 2000u);
  EXPECT_EQ(r4[0].key.family, Family::V4);
  EXPECT_EQ(r4[0].key.prefixLen, 32);
  EXPECT_EQ(r4[0].nhid, nexthopTo(s.st, "10.0.0.1")->id);
  EXPECT_EQ(r4[1].key.table, 2001u);
  EXPECT_EQ(r4[1].nhid, nexthopTo(s.st, "10.0.0.2")->id);
  auto r6 = vipRoutes(s.st, "2001:db8::10");
  ASSERT_EQ(r6.size(), 1u);
  EXPECT_EQ(r6[0].key.table, 2000u);
  EXPECT_EQ(r6[0].key.family, Family::V6);
  EXPECT_EQ(r6[0].key.prefixLen, 128);
  EXPECT_EQ(r6[0].nhid, nexthopTo(s.st, "fd00::1", Family::V6)->id);
  // Every route of the state lives in an owned slot table.
  for (auto& r : s.st.routes) {
    EXPECT_GE(r.key.table, 2000u);
    EXPECT_LT(r.key.table, 2000u + s.plan.slotCount);
  }
}

TEST(RouterPlan, SlotTablesArePerVipStickyAndRoutesInKeyOrder) {
  DataplaneConfig cfg;
  auto m = model({svc("a", kVip, {ep("10.0.0.1")}),
                  svc("b", "192.0.2.20", {ep("10.0.0.2"), ep("10.0.0.3"), ep("10.0.0.4")}),
                  svc("c", "2001:db8::10", {ep("fd00::1"), ep("fd00::2")})});
  auto s = compute(m, cfg);
  EXPECT_EQ(s.plan.slotCount, 3u);
  // (vipRoutes leaves out the unreachable ones.)
  auto allRoutes = [](const dp::RouterState& st, const std::string& vip) {
    std::vector<dp::Route> out;
    for (auto& r : st.routes)
      if (r.key.dst == ip(vip)) out.push_back(r);
    return out;
  };
  // No guard for a VIP in a table it never reached.
  EXPECT_EQ(allRoutes(s.st, kVip).size(), 1u);
  EXPECT_EQ(allRoutes(s.st, "2001:db8::10").size(), 2u);
  EXPECT_EQ(s.st.rules.size(), 6u);  // 3 tables × 2 families
  auto inKeyOrder = [](const dp::RouterState& st) {
    return std::adjacent_find(st.routes.begin(), st.routes.end(), [](auto& a, auto& b) {
             return !(a.key < b.key);
           }) == st.routes.end();
  };
  EXPECT_TRUE(inKeyOrder(s.st));
  // The plan's VIPs out of order: the same routes, still in key order.
  Model reversed = m;
  std::reverse(reversed.services.begin(), reversed.services.end());
  auto r = compute(reversed, cfg);
  EXPECT_TRUE(inKeyOrder(r.st));
  ASSERT_EQ(r.st.routes.size(), s.st.routes.size());
  for (size_t i = 0; i < s.st.routes.size(); ++i) EXPECT_EQ(r.st.routes[i].key, s.st.routes[i].key);
  // b keeps one endpoint: its other two tables hold unreachable guards (sticky, read back from
  // the routes), so the slot count and the rules stay.
  auto m2 = model({svc("a", kVip, {ep("10.0.0.1")}), svc("b", "192.0.2.20", {ep("10.0.0.2")}),
                   svc("c", "2001:db8::10", {ep("fd00::1"), ep("fd00::2")})});
  auto s2 = compute(m2, cfg, &s.st);
  EXPECT_EQ(s2.plan.slotCount, 3u);
  auto rb = allRoutes(s2.st, "192.0.2.20");
  ASSERT_EQ(rb.size(), 3u);
  EXPECT_FALSE(rb[0].unreachable);
  EXPECT_TRUE(rb[1].unreachable);
  EXPECT_TRUE(rb[2].unreachable);
  EXPECT_EQ(s2.st.rules.size(), 6u);
  // Without b the largest VIP has two tables: the third table's rules go.
  auto s3 = compute(model({svc("a", kVip, {ep("10.0.0.1")}),
                           svc("c", "2001:db8::10", {ep("fd00::1"), ep("fd00::2")})}),
                    cfg, &s2.st);
  EXPECT_EQ(s3.plan.slotCount, 2u);
  EXPECT_EQ(s3.st.rules.size(), 4u);
}

TEST(RouterPlan, RulesPerSlotPerFamily) {
  DataplaneConfig cfg;
  cfg.rulePriority = 500;
  auto s = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2")})}), cfg);
  EXPECT_EQ(s.st.rules, (std::vector<dp::Rule>{{Family::V4, 500, 1000, 1000},
                                                {Family::V4, 501, 1001, 1001}}));
  auto s2 = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2")}),
                           svc("b", "2001:db8::10", {ep("fd00::1")})}),
                    cfg);
  EXPECT_EQ(s2.st.rules, (std::vector<dp::Rule>{{Family::V4, 500, 1000, 1000},
                                                 {Family::V4, 501, 1001, 1001},
                                                 {Family::V6, 500, 1000, 1000},
                                                 {Family::V6, 501, 1001, 1001}}));
}

TEST(RouterPlan, DrainingEndpointKeepsSlotAndRouteButNoBucket) {
  DataplaneConfig cfg;
  auto s1 = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")})}), cfg);
  auto s2 = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2", true), ep("10.0.0.3")})}),
                    cfg, &s1.st);
  EXPECT_EQ(slotsOf(s2.plan, kVip), slotsOf(s1.plan, kVip));
  auto routes = vipRoutes(s2.st, kVip);
  ASSERT_EQ(routes.size(), 3u);
  EXPECT_EQ(routes[1].key.table, 1001u);
  EXPECT_EQ(routes[1].nhid, nexthopTo(s1.st, "10.0.0.2")->id);
  auto owners = bucketOwners(s2.plan, kVip);
  ASSERT_EQ(owners.size(), 64u);
  EXPECT_EQ(std::count(owners.begin(), owners.end(), "10.0.0.2"), 0);
  EXPECT_EQ(std::count(owners.begin(), owners.end(), ""), 0);
  // nft: no bucket maps to the draining endpoint's mark 1001.
  for (auto& [k, mark] : s2.st.nft.buckets) EXPECT_NE(mark, 1001u);
  EXPECT_EQ(s2.st.nft.buckets.size(), 64u);
}

TEST(RouterPlan, AllEndpointsDrainingLeavesBucketsUnmapped) {
  DataplaneConfig cfg;
  auto s = compute(model({svc("a", kVip, {ep("10.0.0.1", true)})}), cfg);
  EXPECT_EQ(vipRoutes(s.st, kVip).size(), 1u);
  auto owners = bucketOwners(s.plan, kVip);
  EXPECT_EQ(std::count(owners.begin(), owners.end(), ""), 64);
  EXPECT_TRUE(s.st.nft.buckets.empty());
  EXPECT_TRUE(s.st.nft.vips.contains(ip(kVip)));  // still classified (flow table), then dropped
}

TEST(RouterPlan, BucketsMoreThanEndpoints) {
  DataplaneConfig cfg;
  cfg.buckets = 64;
  auto s = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")})}), cfg);
  auto owners = bucketOwners(s.plan, kVip);
  ASSERT_EQ(owners.size(), 64u);
  std::map<std::string, int> count;
  for (auto& o : owners) ++count[o];
  EXPECT_EQ(count.size(), 3u);  // every endpoint has buckets, no bucket is unassigned
  EXPECT_FALSE(count.contains(""));
  for (auto& [e, c] : count) {
    // Exact shares are the hashing unit's business (maglev_test); here: roughly even.
    EXPECT_GE(c, 10) << e;
    EXPECT_LE(c, 33) << e;
  }
  // nft elements: (VIP, bucket) → tableOffset + slot of the owner.
  ASSERT_EQ(s.st.nft.buckets.size(), 64u);
  auto slots = slotsOf(s.plan, kVip);
  for (uint32_t b = 0; b < 64; ++b)
    EXPECT_EQ(s.st.nft.buckets.at({ip(kVip), b}), 1000 + slots[owners[b]]) << b;
  EXPECT_EQ(s.st.nft.vips, (std::set<IpAddress>{ip(kVip)}));
  EXPECT_TRUE(s.st.nft.present);
}

// The planner's buckets are exactly the hashing unit's table over the active endpoints (by
// identity), for either --bucket-algorithm (rendezvous: balanced, from rendezvous without a
// published table); every endpoint gets floor/ceil(B/n).
TEST(RouterPlan, BucketsFollowTheConfiguredAlgorithm) {
  for (auto alg : {BucketAlgorithm::Maglev, BucketAlgorithm::Rendezvous}) {
    SCOPED_TRACE(alg == BucketAlgorithm::Maglev ? "maglev" : "rendezvous");
    DataplaneConfig cfg;
    cfg.algorithm = alg;
    cfg.buckets = 61;
    auto s = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2", true), ep("10.0.0.3"),
                                            ep("10.0.0.4"), ep("10.0.0.10")})}),
                     cfg);
    std::vector<std::string> active = {"10.0.0.1", "10.0.0.10", "10.0.0.3", "10.0.0.4"};
    auto t = alg == BucketAlgorithm::Maglev ? maglevTable(active, 61) : balancedTable(active, 61);
    std::vector<std::string> expected;
    for (auto i : t) expected.push_back(active[i]);
    EXPECT_EQ(bucketOwners(s.plan, kVip), expected);
    std::map<std::string, int> count;
    for (auto& o : expected) ++count[o];
    EXPECT_EQ(count.size(), 4u);
    for (auto& [e, c] : count) {
      EXPECT_GE(c, 15) << e;
      EXPECT_LE(c, 16) << e;
    }
  }
}

// The bucket count grows with the endpoints (--buckets the minimum): 6 endpoints with
// --buckets 4 get 16 buckets, 2 or 3 each, and no problem.
TEST(RouterPlan, BucketCountGrowsWithTheEndpoints) {
  DataplaneConfig cfg;
  cfg.buckets = 4;
  std::vector<Endpoint> eps;
  for (int i = 1; i <= 6; ++i) eps.push_back(ep("10.0.0." + std::to_string(i)));
  auto s = compute(model({svc("a", kVip, eps)}), cfg);
  EXPECT_TRUE(s.plan.problems.empty());
  auto owners = bucketOwners(s.plan, kVip);
  ASSERT_EQ(owners.size(), 16u);
  std::map<std::string, int> count;
  for (auto& o : owners) ++count[o];
  ASSERT_EQ(count.size(), 6u);
  for (auto& [e, c] : count) {
    EXPECT_GE(c, 2) << e;
    EXPECT_LE(c, 3) << e;
  }
  EXPECT_EQ(s.st.nft.vipBuckets, (std::map<IpAddress, uint32_t>{{ip(kVip), 16}}));
  EXPECT_EQ(s.st.nft.buckets.marksOf(ip(kVip))->size(), 16u);
}

// Only beyond the cap of a VIP's bucket count (max(--buckets, 4096)) do endpoints go without.
TEST(RouterPlan, MoreEndpointsThanTheBucketCapIsAProblem) {
  DataplaneConfig cfg;
  cfg.buckets = 4;
  cfg.maxSlots = 4200;
  std::vector<Endpoint> eps;
  for (int i = 0; i < 4100; ++i)
    eps.push_back(ep(fmt::format("10.1.{}.{}", i / 250, i % 250 + 1)));
  auto s = compute(model({svc("a", kVip, eps)}), cfg);
  ASSERT_EQ(s.plan.problems.size(), 1u);
  EXPECT_EQ(s.plan.problems[0].kind, Problem::Kind::TooManyEndpoints);
  EXPECT_EQ(s.plan.problems[0].object, (ObjectKey{"default", "a"}));
  EXPECT_NE(s.plan.problems[0].message.find("4100 ready endpoints but at most 4096 buckets"),
            std::string::npos)
      << s.plan.problems[0].message;
  auto owners = bucketOwners(s.plan, kVip);
  ASSERT_EQ(owners.size(), 4096u);
  std::set<std::string> distinct(owners.begin(), owners.end());
  EXPECT_EQ(distinct.size(), 4096u);  // one bucket each for 4096 of them
  EXPECT_FALSE(distinct.contains(""));
  EXPECT_FALSE(distinct.contains(""));
}

TEST(RouterPlan, MoreEndpointsThanSlotsIsAProblem) {
  DataplaneConfig cfg;
  cfg.maxSlots = 2;
  auto s = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")})}), cfg);
  ASSERT_EQ(s.plan.problems.size(), 1u);
  EXPECT_EQ(s.plan.problems[0].kind, Problem::Kind::TooManyEndpoints);
  EXPECT_NE(s.plan.problems[0].message.find("10.0.0.3"), std::string::npos);
  EXPECT_EQ(slotsOf(s.plan, kVip),
            (std::map<std::string, uint32_t>{{"10.0.0.1", 0}, {"10.0.0.2", 1}}));
  auto owners = bucketOwners(s.plan, kVip);
  EXPECT_EQ(std::count(owners.begin(), owners.end(), "10.0.0.3"), 0);
  EXPECT_EQ(vipRoutes(s.st, kVip).size(), 2u);
}

TEST(RouterPlan, EmptyModelGivesEmptyState) {
  DataplaneConfig cfg;
  auto s = compute(Model{}, cfg);
  EXPECT_TRUE(s.st.links.empty());
  EXPECT_TRUE(s.st.nexthops.empty());
  EXPECT_TRUE(s.st.routes.empty());
  EXPECT_TRUE(s.st.rules.empty());
  EXPECT_FALSE(s.st.nft.present);
  EXPECT_EQ(s.plan.slotCount, 0u);
}

TEST(RouterPlan, ServiceWithoutEndpointsStillClassifiedButNoRoutes) {
  DataplaneConfig cfg;
  auto s = compute(model({svc("a", kVip, {})}), cfg);
  EXPECT_TRUE(s.st.nft.present);
  EXPECT_TRUE(s.st.nft.vips.contains(ip(kVip)));
  EXPECT_TRUE(s.st.nft.buckets.empty());
  EXPECT_TRUE(vipRoutes(s.st, kVip).empty());
  EXPECT_TRUE(s.st.nexthops.empty());
}

// "A restart changes nothing": the allocations recovered from the state reproduce it exactly.
void expectRoundTrip(const DataplaneConfig& cfg, const Model& m) {
  auto s1 = compute(m, cfg);
  auto s2 = compute(m, cfg, &s1.st);
  expectSameState(s1.st, s2.st);
  // And a third time, from the recomputed state.
  auto s3 = compute(m, cfg, &s2.st);
  expectSameState(s2.st, s3.st);
}

Model mixedModel() {
  return model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2", true), ep("10.0.0.3")}),
                svc("b", "203.0.113.11", {ep("10.0.0.3"), ep("10.0.0.4")}),
                svc("c", "2001:db8::10", {ep("fd00::1"), ep("fd00::2")}),
                svc("d", "2001:db8::11", {ep("10.0.0.5")})});  // cross-family
}

TEST(RouterPlan, AllocationsRoundTripVxlanGpe) { expectRoundTrip(DataplaneConfig{}, mixedModel()); }

TEST(RouterPlan, AllocationsRoundTripFlowModes) {
  for (Mode mode : {Mode::Ipip, Mode::GreFlow}) {
    DataplaneConfig cfg;
    cfg.mode = mode;
    SCOPED_TRACE(modeName(mode));
    expectRoundTrip(cfg, mixedModel());
  }
}

TEST(RouterPlan, AllocationsRoundTripGrePerEndpoint) {
  DataplaneConfig cfg;
  cfg.mode = Mode::Gre;
  expectRoundTrip(cfg, mixedModel());
}

TEST(RouterPlan, AllocationsRoundTripAfterChurn) {
  // Sticky slots that are no longer in address order must survive a restart as they are. The
  // slots released in the same plan (0 and 1) do not go to the new endpoint: flows may still
  // be pinned to them (docs/load-balancing.md "Released slots").
  DataplaneConfig cfg;
  auto s1 = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")})}), cfg);
  auto m2 = model({svc("a", kVip, {ep("10.0.0.0"), ep("10.0.0.3")})});
  auto s2 = compute(m2, cfg, &s1.st);
  EXPECT_EQ(slotsOf(s2.plan, kVip), (std::map<std::string, uint32_t>{{"10.0.0.0", 3}, {"10.0.0.3", 2}}));
  auto s3 = compute(m2, cfg, &s2.st);
  expectSameState(s2.st, s3.st);
}

TEST(RouterPlan, GrePerEndpointLinks) {
  DataplaneConfig cfg;
  cfg.mode = Mode::Gre;
  auto s = compute(model({svc("a", kVip, {ep("198.19.1.2"), ep("10.0.0.1")})}), cfg);
  ASSERT_EQ(s.st.links.size(), 2u);
  std::map<std::string, dp::Link> byName;
  for (auto& l : s.st.links) byName[l.name] = l;
  ASSERT_TRUE(byName.contains("kstc6130102"));
  EXPECT_EQ(byName["kstc6130102"].remote, ip("198.19.1.2"));
  EXPECT_EQ(byName["kstc6130102"].kind, dp::Link::Kind::Gre);
  EXPECT_FALSE(byName["kstc6130102"].external);
  EXPECT_FALSE(byName["kstc6130102"].local.has_value());
  ASSERT_TRUE(byName.contains("kst0a000001"));
  for (auto& nh : s.st.nexthops) {
    EXPECT_EQ(nh.encap, dp::Nexthop::Encap::None);
    EXPECT_TRUE(byName.contains(nh.dev)) << nh.dev;
  }
  // --underlay-mtu 1500 (default) − 24; the link is shared by every VIP of the endpoint.
  EXPECT_EQ(byName["kstc6130102"].mtu, 1476u);
  cfg.underlayMtu = 0;  // off: the kernel derives it from the route to the pod
  EXPECT_EQ(compute(model({svc("a", kVip, {ep("198.19.1.2")})}), cfg).st.links.at(0).mtu, 0u);
  cfg.underlayMtu = 1500;
  EXPECT_EQ(greLinkName(cfg, ip("198.19.1.2")), "kstc6130102");
  auto v6 = greLinkName(cfg, ip("fd00::1"));
  EXPECT_EQ(v6.size(), 15u);  // IFNAMSIZ - 1
  EXPECT_TRUE(v6.starts_with("kst"));
}

TEST(RouterPlan, MplsNeedsADirectlyConnectedDevice) {
  DataplaneConfig cfg;
  cfg.mode = Mode::Mpls;
  Allocations prior;
  prior.mplsDevice[ip("10.0.0.1")] = "eth0";
  auto m = model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2")})});
  auto plan = planRouter(m, cfg, prior);
  auto st = routerState(plan, cfg, prior);
  ASSERT_EQ(st.nexthops.size(), 1u);
  EXPECT_EQ(st.nexthops[0].encap, dp::Nexthop::Encap::Mpls);
  EXPECT_EQ(st.nexthops[0].mplsLabel, 100u);
  EXPECT_EQ(st.nexthops[0].gateway, ip("10.0.0.1"));
  EXPECT_EQ(st.nexthops[0].dev, "eth0");
  EXPECT_TRUE(st.links.empty());
  ASSERT_EQ(plan.problems.size(), 1u);  // 10.0.0.2 has no known device
  EXPECT_EQ(plan.problems[0].kind, Problem::Kind::UnusableEndpoint);
  EXPECT_NE(plan.problems[0].message.find("10.0.0.2"), std::string::npos);
  // No slot, route or bucket for the unreachable endpoint: every bucket goes to the one that
  // works (none is left without an element, which would drop its flows).
  EXPECT_EQ(slotsOf(plan, kVip), (std::map<std::string, uint32_t>{{"10.0.0.1", 0}}));
  EXPECT_EQ(vipRoutes(st, kVip).size(), 1u);
  EXPECT_EQ(st.nft.buckets.size(), cfg.buckets);
  for (const auto& [k, mark] : st.nft.buckets) EXPECT_EQ(mark, 1000u);
}

TEST(RouterPlan, RefusedEndpointsGetNoBucketsAndTheOthersKeepTheirs) {
  // Per-endpoint GRE cannot reach IPv6 pods: the IPv6 endpoint is refused with its own reason,
  // and (rendezvous) the IPv4 endpoints own exactly the buckets they own without it.
  DataplaneConfig cfg;
  cfg.mode = Mode::Gre;
  auto with = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2"), ep("fd00::9")})}), cfg);
  auto without = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2")})}), cfg);
  ASSERT_EQ(with.plan.problems.size(), 1u);
  EXPECT_EQ(with.plan.problems[0].kind, Problem::Kind::UnusableEndpoint);
  EXPECT_EQ(std::string(problemReason(with.plan.problems[0].kind)), "TunnelEndpointUnusable");
  EXPECT_NE(with.plan.problems[0].message.find("fd00::9"), std::string::npos);
  EXPECT_EQ(bucketOwners(with.plan, kVip), bucketOwners(without.plan, kVip));
  EXPECT_EQ(with.st.nft.buckets, without.st.nft.buckets);
  expectSameState(with.st, without.st);
}

TEST(RouterPlan, MplsAllocationsRoundTrip) {
  DataplaneConfig cfg;
  cfg.mode = Mode::Mpls;
  Allocations prior;
  prior.mplsDevice[ip("10.0.0.1")] = "eth0";
  prior.mplsDevice[ip("10.0.0.2")] = "eth1";
  auto m = model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2")})});
  auto plan = planRouter(m, cfg, prior);
  auto st = routerState(plan, cfg, prior);
  ASSERT_EQ(st.nexthops.size(), 2u);
  // A restart only has the kernel state: the device of each endpoint must be recovered.
  auto s2 = compute(m, cfg, &st);
  EXPECT_TRUE(s2.plan.problems.empty());
  expectSameState(st, s2.st);
}

// Issue "Must show", through the planner with history: whatever order the events that lead
// to the same endpoint set arrive in (each pass planning from the previous pass's state), the
// bucket → endpoint assignment is identical. (Slots may differ: they are sticky by design.)
TEST(RouterPlan, BucketAssignmentIdenticalAcross1000RandomEventOrders) {
  for (auto alg : {BucketAlgorithm::Rendezvous, BucketAlgorithm::Maglev}) {
    SCOPED_TRACE(alg == BucketAlgorithm::Maglev ? "maglev" : "rendezvous");
    DataplaneConfig cfg;
    cfg.algorithm = alg;
    std::vector<std::string> finalSet, extra;
    for (int i = 1; i <= 8; ++i) finalSet.push_back("10.0.0." + std::to_string(i * 3));
    for (int i = 1; i <= 3; ++i) extra.push_back("10.0.1." + std::to_string(i));
    auto mk = [&](const std::set<std::string>& s) {
      std::vector<Endpoint> eps;
      for (auto& a : s) eps.push_back(ep(a));
      return model({svc("a", kVip, eps)});
    };
    const auto reference =
        bucketOwners(compute(mk({finalSet.begin(), finalSet.end()}), cfg).plan, kVip);
    std::mt19937 rng(4242);
    std::set<std::vector<uint32_t>> slotLayouts;
    for (int round = 0; round < 1000; ++round) {
      // Start from a random part of the final set plus the extras, then apply the missing adds
      // and the removals of the extras in a random order.
      std::set<std::string> cur(extra.begin(), extra.end());
      std::vector<std::pair<bool, std::string>> events;
      for (auto& a : finalSet) {
        if (rng() % 3 == 0) cur.insert(a);
        else events.push_back({true, a});
      }
      for (auto& x : extra) events.push_back({false, x});
      std::shuffle(events.begin(), events.end(), rng);
      auto step = compute(mk(cur), cfg);
      for (auto& [add, a] : events) {
        if (add) cur.insert(a);
        else cur.erase(a);
        step = compute(mk(cur), cfg, &step.st);
      }
      ASSERT_EQ(bucketOwners(step.plan, kVip), reference) << "round " << round;
      auto slots = slotsOf(step.plan, kVip);
      std::vector<uint32_t> layout;
      for (auto& [e, s] : slots) layout.push_back(s);
      slotLayouts.insert(layout);
      ASSERT_EQ(std::set<uint32_t>(layout.begin(), layout.end()).size(), finalSet.size());
    }
    // Sanity: the event orders really produced different histories.
    EXPECT_GT(slotLayouts.size(), 10u);
  }
}

// ---- nft rendering ----

dp::NftState nftOf(const DataplaneConfig& cfg, const Model& m) { return compute(m, cfg).st.nft; }

TEST(NftRender, IdenticalStateRendersNothing) {
  DataplaneConfig cfg;
  auto desired = nftOf(cfg, mixedModel());
  auto observed = desired;
  observed.skeleton.clear();  // the real observation only knows the id
  size_t n = 99;
  EXPECT_EQ(renderNftChanges(cfg, desired, observed, &n), "");
  EXPECT_EQ(n, 0u);
}

TEST(NftRender, ChangedBucketIsOneDeleteAndOneAdd) {
  DataplaneConfig cfg;
  auto desired = nftOf(cfg, model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2")})}));
  auto observed = desired;
  const uint32_t want = desired.buckets.at({ip(kVip), 5});
  ASSERT_TRUE(want == 1000 || want == 1001) << want;
  observed.buckets.set(ip(kVip), 5, want == 1000 ? 1001 : 1000);
  size_t n = 0;
  auto script = renderNftChanges(cfg, desired, observed, &n);
  EXPECT_EQ(script, fmt::format("delete element inet kube_service_tunnel b2s4 {{ 203.0.113.10 . "
                                "0x40000005 }}\nadd element inet kube_service_tunnel b2s4 {{ "
                                "203.0.113.10 . 0x40000005 : {} }}\n",
                                want));
  EXPECT_EQ(n, 2u);
}

TEST(NftRender, RemovedAndAddedVipOrdering) {
  DataplaneConfig cfg;
  cfg.buckets = 2;
  dp::NftState observed = nftOf(cfg, model({svc("a", "203.0.113.1", {ep("10.0.0.1")})}));
  dp::NftState desired = nftOf(cfg, model({svc("b", "2001:db8::1", {ep("fd00::1")})}));
  auto script = renderNftChanges(cfg, desired, observed);
  EXPECT_EQ(script,
            "delete element inet kube_service_tunnel vip4 { 203.0.113.1 }\n"
            "delete element inet kube_service_tunnel refused4 { 203.0.113.1 }\n"
            "delete element inet kube_service_tunnel ep4 { 203.0.113.1 . 0x3e8 }\n"
            "delete element inet kube_service_tunnel bcount4 { 203.0.113.1 }\n"
            "delete element inet kube_service_tunnel b2s4 { 203.0.113.1 . 0x40000000, 203.0.113.1 . 0x40000001 }\n"
            // (nftcount + flowtable: the live-slot elements go after the buckets' deletions
            // and before their additions)
            "delete element inet kube_service_tunnel live4 { 203.0.113.1 . 0x3e8 }\n"
            "add element inet kube_service_tunnel live6 { 2001:db8::1 . 0x3e8 }\n"
            "add element inet kube_service_tunnel b2s6 { 2001:db8::1 . 0x40000000 : 1000, 2001:db8::1 . 0x40000001 : 1000 }\n"
            "add element inet kube_service_tunnel bcount6 { 2001:db8::1 : 0x80000002 }\n"
            "add element inet kube_service_tunnel ep6 { 2001:db8::1 . 0x3e8 comment \"fd00::1\" }\n"
            "add element inet kube_service_tunnel refused6 { 2001:db8::1 }\n"
            "add element inet kube_service_tunnel vip6 { 2001:db8::1 }\n");
}

TEST(NftRender, SkeletonChangeRebuildsTable) {
  DataplaneConfig cfg;
  cfg.buckets = 2;
  auto observed = nftOf(cfg, model({svc("a", kVip, {ep("10.0.0.1")})}));
  DataplaneConfig cfg2 = cfg;
  cfg2.hashSeed = 0x99;  // part of the classifier rules
  auto desired = nftOf(cfg2, model({svc("a", kVip, {ep("10.0.0.1")})}));
  ASSERT_NE(desired.skeletonId, observed.skeletonId);
  EXPECT_EQ(desired.buckets, observed.buckets);
  size_t n = 0;
  auto script = renderNftChanges(cfg2, desired, observed, &n);
  EXPECT_EQ(script, "delete table inet kube_service_tunnel\n"
                    "table inet kube_service_tunnel {\n  comment \"kst:" +
                        desired.skeletonId + "\"\n" + desired.skeleton +
                        "}\n"
                        "add element inet kube_service_tunnel live4 { 203.0.113.10 . 0x3e8 }\n"
                        "add element inet kube_service_tunnel b2s4 { 203.0.113.10 . 0x40000000 : "
                        "1000, 203.0.113.10 . 0x40000001 : 1000 }\n"
                        "add element inet kube_service_tunnel bcount4 { 203.0.113.10 : "
                        "0x80000002 }\n"
                        "add element inet kube_service_tunnel ep4 { 203.0.113.10 . 0x3e8 comment "
                        "\"10.0.0.1\" }\n"
                        "add element inet kube_service_tunnel refused4 { 203.0.113.10 }\n"
                        "add element inet kube_service_tunnel vip4 { 203.0.113.10 }\n");
  // buckets, count, endpoint counter, live slot, VIP (its refused element goes with it):
  // nftcount's and flowtable's elements both
  EXPECT_EQ(n, 6u);
}

TEST(NftRender, AbsentTableIsCreatedWithoutDelete) {
  DataplaneConfig cfg;
  cfg.buckets = 1;
  auto desired = nftOf(cfg, model({svc("a", kVip, {ep("10.0.0.1")})}));
  auto script = renderNftChanges(cfg, desired, dp::NftState{});
  EXPECT_TRUE(script.starts_with("table inet kube_service_tunnel {\n  comment \"kst:")) << script;
  EXPECT_EQ(script.find("delete"), std::string::npos);
}

TEST(NftRender, DesiredAbsentDeletesTable) {
  DataplaneConfig cfg;
  auto observed = nftOf(cfg, mixedModel());
  dp::NftState desired;  // present = false
  size_t n = 7;
  EXPECT_EQ(renderNftChanges(cfg, desired, observed, &n), "delete table inet kube_service_tunnel\n");
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(renderNftChanges(cfg, desired, dp::NftState{}), "");
  EXPECT_EQ(renderNftDelete(cfg), "delete table inet kube_service_tunnel\n");
}

TEST(NftRender, LargeChangesAreChunked) {
  DataplaneConfig cfg;
  cfg.buckets = 5000;
  auto desired = nftOf(cfg, model({svc("a", kVip, {ep("10.0.0.1")})}));
  desired.skeleton.clear();
  auto observed = desired;
  observed.buckets.clear();
  size_t n = 0;
  auto script = renderNftChanges(cfg, desired, observed, &n);
  EXPECT_EQ(n, 5000u);
  size_t lines = std::count(script.begin(), script.end(), '\n');
  EXPECT_EQ(lines, 3u);  // 2048 + 2048 + 904
  EXPECT_EQ(std::count(script.begin(), script.end(), ':'), 5000);
}

// ---- source ranges and counters ----

TEST(NftRender, SourceIntervalsMergeNestedRangesOfTheVipsFamily) {
  auto p = [](const char* s) { return *IpPrefix::parse(s); };
  EXPECT_EQ(sourceIntervals(ip(kVip), {p("198.51.100.0/24"), p("198.51.100.128/25"),
                                       p("192.0.2.7/32"), p("2001:db8::/32"), p("10.0.0.0/8")}),
            (std::vector<dp::SourceInterval>{{ip("10.0.0.0"), ip("10.255.255.255")},
                                             {ip("192.0.2.7"), ip("192.0.2.7")},
                                             {ip("198.51.100.0"), ip("198.51.100.255")}}));
  EXPECT_EQ(sourceIntervals(ip("2001:db8::1"), {p("2001:db8:c::/48"), p("192.0.2.0/24")}),
            (std::vector<dp::SourceInterval>{{ip("2001:db8:c::"),
                                              ip("2001:db8:c:ffff:ffff:ffff:ffff:ffff")}}));
  // Only ranges of the other family: filtered, and no source is allowed.
  EXPECT_TRUE(sourceIntervals(ip(kVip), {p("2001:db8::/32")}).empty());
  EXPECT_EQ(sourceIntervals(ip(kVip), {p("0.0.0.0/0")}),
            (std::vector<dp::SourceInterval>{{ip("0.0.0.0"), ip("255.255.255.255")}}));
}

TunnelService ranged(std::vector<const char*> ranges, std::vector<Endpoint> eps) {
  auto t = svc("a", kVip, std::move(eps));
  for (auto* r : ranges) t.sourceRanges.push_back(*IpPrefix::parse(r));
  std::sort(t.sourceRanges.begin(), t.sourceRanges.end());
  return t;
}

TEST(NftRender, SourceRangesAreElementsChangedMinimally) {
  DataplaneConfig cfg;
  cfg.buckets = 1;
  auto plain = nftOf(cfg, model({svc("a", kVip, {ep("10.0.0.1")})}));
  EXPECT_TRUE(plain.sourceRanges.empty());
  auto a = nftOf(cfg, model({ranged({"192.0.2.0/24", "198.51.100.7/32"}, {ep("10.0.0.1")})}));
  ASSERT_EQ(a.sourceRanges.size(), 1u);
  // Filtering a VIP: its ranged element and one element per interval.
  EXPECT_EQ(renderNftChanges(cfg, a, plain),
            "add element inet kube_service_tunnel ranged4 { 203.0.113.10 }\n"
            "add element inet kube_service_tunnel src4 { 203.0.113.10 . 192.0.2.0-192.0.2.255, "
            "203.0.113.10 . 198.51.100.7-198.51.100.7 }\n");
  // One range replaced: one interval out, one in; the VIP stays filtered.
  auto b = nftOf(cfg, model({ranged({"192.0.2.0/24", "198.51.100.8/32"}, {ep("10.0.0.1")})}));
  size_t n = 0;
  EXPECT_EQ(renderNftChanges(cfg, b, a, &n),
            "delete element inet kube_service_tunnel src4 { 203.0.113.10 . "
            "198.51.100.7-198.51.100.7 }\n"
            "add element inet kube_service_tunnel src4 { 203.0.113.10 . "
            "198.51.100.8-198.51.100.8 }\n");
  EXPECT_EQ(n, 2u);
  // No range of the VIP's family: filtered with no interval (every source refused).
  auto c = nftOf(cfg, model({ranged({"2001:db8::/32"}, {ep("10.0.0.1")})}));
  EXPECT_TRUE(c.sourceRanges.at(ip(kVip)).empty());
  EXPECT_EQ(renderNftChanges(cfg, plain, a),
            "delete element inet kube_service_tunnel src4 { 203.0.113.10 . 192.0.2.0-192.0.2.255, "
            "203.0.113.10 . 198.51.100.7-198.51.100.7 }\n"
            "delete element inet kube_service_tunnel ranged4 { 203.0.113.10 }\n");
  EXPECT_EQ(renderNftChanges(cfg, a, a), "");
}

TEST(NftRender, EndpointCountersFollowTheSlotsEndpoint) {
  DataplaneConfig cfg;
  cfg.buckets = 4;
  auto a = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.2", true)})}), cfg);
  // One element per slot in use, draining endpoints included.
  EXPECT_EQ(a.st.nft.endpoints.at(ip(kVip)),
            (std::map<uint32_t, IpAddress>{{1000, ip("10.0.0.1")}, {1001, ip("10.0.0.2")}}));
  // 10.0.0.2 leaves and 10.0.0.3 arrives: (flowtable) the leaver's slot 1001 is not given to
  // another endpoint in the same pass (flows may still be pinned to it), 10.0.0.3 takes 1002.
  auto b = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.3")})}), cfg, &a.st);
  ASSERT_EQ(b.st.nft.endpoints.at(ip(kVip)).at(1002), ip("10.0.0.3"));
  EXPECT_FALSE(b.st.nft.endpoints.at(ip(kVip)).contains(1001));
  // Later (no hold left: planRouter alone keeps none) 10.0.0.4 takes slot 1001: against a
  // kernel that still had 10.0.0.2's element there, the counter element is deleted and added
  // again (the counter restarts with the endpoint it counts).
  auto c = compute(model({svc("a", kVip, {ep("10.0.0.1"), ep("10.0.0.3"), ep("10.0.0.4")})}), cfg,
                   &b.st);
  ASSERT_EQ(c.st.nft.endpoints.at(ip(kVip)).at(1001), ip("10.0.0.4"));
  auto d = nftElementChanges(c.st.nft, a.st.nft);
  ASSERT_EQ(d.endpointDeletes.size(), 1u);
  ASSERT_EQ(d.endpointAdds.size(), 2u);
  EXPECT_EQ(d.endpointDeletes[0].endpoint, ip("10.0.0.2"));
  EXPECT_EQ(d.endpointAdds[0].endpoint, ip("10.0.0.4"));
  EXPECT_EQ(d.endpointAdds[0].mark, 1001u);
  EXPECT_EQ(d.endpointAdds[1].mark, 1002u);
  EXPECT_TRUE(nftElementChanges(a.st.nft, a.st.nft).size() == 0);
}

TEST(NftRender, SkeletonCountsAndFilters) {
  DataplaneConfig cfg;
  std::string sk = renderSkeleton(cfg);
  for (const char* want :
       {"counter refused_no_bucket { }", "counter refused_source_range { }",
        "set vip4 { type ipv4_addr; counter; }", "set ep6 { typeof ip6 daddr . meta mark; counter; }",
        "set src6 { typeof ip6 daddr . ip6 saddr; flags interval; }",
        "ip daddr @ranged4 ip daddr . ip saddr != @src4 goto refuse_source",
        "ip6 daddr @ranged6 ip6 daddr . ip6 saddr != @src6 goto refuse_source",
        "ip daddr . meta mark @ep4 meta mark set 0 accept",
        "meta mark >= 0x3e8 meta mark < 0x4e8 meta mark set 0",
        "counter name \"refused_source_range\" drop", "counter name \"refused_no_bucket\" drop",
        "counter new_flows { }",
        "meta l4proto { tcp, udp, sctp } ip saddr . th sport . ip daddr . th dport != @flow4 add "
        "@flow4 { ip saddr . th sport . ip daddr . th dport : meta mark } counter name "
        "\"new_flows\"\n"})
    EXPECT_NE(sk.find(want), std::string::npos) << want << "\n" << sk;
  // Both families count their new flows in the one named counter, in the pinning rule only.
  auto c6 = sk.find("chain classify6 {");
  EXPECT_NE(sk.find("!= @flow6 add @flow6 {", c6), std::string::npos) << sk;
  EXPECT_NE(sk.find("counter name \"new_flows\"", c6), std::string::npos) << sk;
  // The source check comes first in the family chains (before a pinned flow is accepted).
  auto c4 = sk.find("chain classify4 {");
  EXPECT_LT(sk.find("@ranged4", c4), sk.find("@flow4", c4));
}

TEST(NftRender, SkeletonDependsOnConfig) {
  DataplaneConfig a, b;
  b.buckets = 128;
  EXPECT_NE(skeletonId(renderSkeleton(a)), skeletonId(renderSkeleton(b)));
  EXPECT_EQ(skeletonId(renderSkeleton(a)), skeletonId(renderSkeleton(DataplaneConfig{})));
  EXPECT_EQ(skeletonId(renderSkeleton(a)).size(), 16u);
  EXPECT_NE(renderSkeleton(b).find("mod 128 seed 0x2a offset 0x40000000"), std::string::npos);
}

}  // namespace
}  // namespace kst

namespace kst {
namespace {

// A kernel refusing `key != @map` (6.1) gets the new-flow rule without that check, under
// another skeleton id (so a restart reads which variant the table holds).
TEST(NftRender, NewFlowRuleWithoutMapLookupWhereTheKernelRefusesIt) {
  DataplaneConfig with, without;
  without.nftMapLookup = false;
  const std::string a = renderSkeleton(with), b = renderSkeleton(without);
  EXPECT_NE(a.find("!= @flow4 add @flow4"), std::string::npos);
  EXPECT_NE(a.find("!= @flow6 add @flow6"), std::string::npos);
  EXPECT_EQ(b.find("!= @flow"), std::string::npos);
  EXPECT_NE(b.find("add @flow4 { ip saddr . th sport . ip daddr . th dport : meta mark } counter "
                   "name \"new_flows\""),
            std::string::npos);
  EXPECT_NE(skeletonId(a), skeletonId(b));
}

}  // namespace
}  // namespace kst
