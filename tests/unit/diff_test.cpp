// dataplane/diff.h: desired vs observed → ordered changes.
#include "dataplane/diff.h"

#include <gtest/gtest.h>

namespace kst::dp {
namespace {

using A = Change::Action;

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

Link vxlan(const std::string& name = "kst-vxg") {
  Link l;
  l.name = name;
  l.kind = Link::Kind::VxlanGpe;
  l.external = true;
  l.port = 4790;
  return l;
}

Nexthop nh(uint32_t id, const char* dst) {
  Nexthop n;
  n.id = id;
  n.encap = Nexthop::Encap::Ip;
  n.encapDst = ip(dst);
  n.dev = "kst-vxg";
  return n;
}

Route route(uint32_t table, const char* dst, uint32_t nhid) {
  Route r;
  r.key = {ip(dst).family(), table, ip(dst), ip(dst).hostPrefixLen()};
  r.nhid = nhid;
  return r;
}

RouterState sample() {
  RouterState s;
  s.links = {vxlan()};
  s.nexthops = {nh(10, "10.0.0.1"), nh(11, "10.0.0.2")};
  s.routes = {route(1000, "203.0.113.10", 10), route(1001, "203.0.113.10", 11)};
  s.rules = {{Family::V4, 1000, 1000, 1000}, {Family::V4, 1001, 1001, 1001}};
  return s;
}

/** "add link", "delete route", ... for compact order assertions. */
std::vector<std::string> shape(const std::vector<Change>& cs) {
  std::vector<std::string> out;
  for (auto& c : cs) {
    std::string act = c.action == A::Add ? "add" : c.action == A::Replace ? "replace" : "delete";
    const char* kinds[] = {"link", "nexthop", "route", "rule", "address", "mpls", "link mtu"};
    out.push_back(act + " " + kinds[c.object.index()]);
  }
  return out;
}

TEST(DiffRouter, IdenticalStatesNoChanges) {
  EXPECT_TRUE(diffRouter(sample(), sample()).empty());
  EXPECT_TRUE(diffRouter(RouterState{}, RouterState{}).empty());
}

TEST(DiffRouter, ObservedOnlyFieldsIgnored) {
  auto observed = sample();
  observed.links[0].ifindex = 42;
  observed.links[0].up = false;
  EXPECT_TRUE(diffRouter(sample(), observed).empty());
}

TEST(DiffRouter, EverythingNewFromEmpty) {
  auto cs = diffRouter(sample(), RouterState{});
  EXPECT_EQ(shape(cs), (std::vector<std::string>{"add link", "add nexthop", "add nexthop",
                                                 "add route", "add route", "add rule",
                                                 "add rule"}));
}

TEST(DiffRouter, EverythingRemovedInReverseDependencyOrder) {
  auto cs = diffRouter(RouterState{}, sample());
  EXPECT_EQ(shape(cs), (std::vector<std::string>{"delete rule", "delete rule", "delete route",
                                                 "delete route", "delete nexthop",
                                                 "delete nexthop", "delete link"}));
}

TEST(DiffRouter, AddsBeforeDeletesInDependencyOrder) {
  RouterState desired, observed;
  desired.links = {vxlan("kst-new")};
  desired.nexthops = {nh(20, "10.0.0.9")};
  desired.routes = {route(1002, "203.0.113.20", 20)};
  desired.rules = {{Family::V4, 1002, 1002, 1002}};
  observed.links = {vxlan("kst-old")};
  observed.nexthops = {nh(10, "10.0.0.1")};
  observed.routes = {route(1000, "203.0.113.10", 10)};
  observed.rules = {{Family::V4, 1000, 1000, 1000}};
  auto cs = diffRouter(desired, observed);
  EXPECT_EQ(shape(cs), (std::vector<std::string>{"add link", "add nexthop", "add route",
                                                 "add rule", "delete rule", "delete route",
                                                 "delete nexthop", "delete link"}));
  EXPECT_EQ(std::get<Link>(cs[0].object).name, "kst-new");
  EXPECT_EQ(std::get<Nexthop>(cs[1].object).id, 20u);
  EXPECT_EQ(std::get<Route>(cs[2].object).key.table, 1002u);
  EXPECT_EQ(std::get<Rule>(cs[3].object).priority, 1002u);
  EXPECT_EQ(std::get<Rule>(cs[4].object).priority, 1000u);
  EXPECT_EQ(std::get<Route>(cs[5].object).key.table, 1000u);
  EXPECT_EQ(std::get<Nexthop>(cs[6].object).id, 10u);
  EXPECT_EQ(std::get<Link>(cs[7].object).name, "kst-old");
}

TEST(DiffRouter, RouteReplacedWhenNexthopDiffers) {
  auto desired = sample();
  auto observed = sample();
  observed.routes[1].nhid = 10;
  auto cs = diffRouter(desired, observed);
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].action, A::Replace);
  const auto& r = std::get<Route>(cs[0].object);
  EXPECT_EQ(r.key.table, 1001u);
  EXPECT_EQ(r.nhid, 11u);  // the desired one
}

TEST(DiffRouter, RouteReplacedWhenDevDiffers) {
  RouterState desired, observed;
  Route r = route(1000, "203.0.113.10", 0);
  r.dev = "kstc6130102";
  desired.routes = {r};
  r.dev = "kstc6130103";
  observed.routes = {r};
  auto cs = diffRouter(desired, observed);
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].action, A::Replace);
  EXPECT_EQ(std::get<Route>(cs[0].object).dev, "kstc6130102");
}

TEST(DiffRouter, NexthopReplacedWhenConfigDiffersUnderSameId) {
  auto desired = sample();
  auto observed = sample();
  observed.nexthops[0].ttl = 32;
  auto cs = diffRouter(desired, observed);
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].action, A::Replace);
  EXPECT_EQ(std::get<Nexthop>(cs[0].object).ttl, 64);
}

TEST(DiffRouter, LinkReplacedWhenConfigDiffers) {
  auto desired = sample();
  auto observed = sample();
  observed.links[0].port = 4789;
  auto cs = diffRouter(desired, observed);
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].action, A::Replace);
  EXPECT_EQ(std::get<Link>(cs[0].object).port, 4790);
}

TEST(DiffRouter, LinkMtuIsSetInPlace) {
  auto desired = sample();
  desired.links[0].mtu = 8964;
  auto observed = sample();
  observed.links[0].mtu = 1500;
  observed.links[0].ifindex = 7;
  auto cs = diffRouter(desired, observed);
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(shape(cs), std::vector<std::string>{"replace link mtu"});
  EXPECT_EQ(std::get<LinkMtu>(cs[0].object), (LinkMtu{"kst-vxg", 8964}));
  EXPECT_EQ(describe(cs[0]), "replace link kst-vxg mtu 8964");
  // The same MTU, or none wanted (0): nothing to do.
  observed.links[0].mtu = 8964;
  EXPECT_TRUE(diffRouter(desired, observed).empty());
  desired.links[0].mtu = 0;
  observed.links[0].mtu = 1400;
  EXPECT_TRUE(diffRouter(desired, observed).empty());
  // Another attribute as well: the link is recreated, with the MTU it is created with.
  desired.links[0].mtu = 8964;
  observed.links[0].port = 4789;
  cs = diffRouter(desired, observed);
  EXPECT_EQ(shape(cs), std::vector<std::string>{"replace link"});
  EXPECT_EQ(std::get<Link>(cs[0].object).mtu, 8964u);
}

TEST(DiffPod, PodLinksWithoutAnMtuKeepTheirs) {
  PodState desired;
  desired.links = {vxlan()};
  PodState observed = desired;
  observed.links[0].mtu = 1500;
  EXPECT_TRUE(diffPod(desired, observed, 100).empty());
}

TEST(DiffRouter, ReplacesComeBeforeDeletes) {
  auto desired = sample();
  desired.routes.pop_back();
  desired.rules.pop_back();
  desired.nexthops.pop_back();
  auto observed = sample();
  observed.routes[0].nhid = 11;  // must move back to 10 before nexthop 11 goes
  auto cs = diffRouter(desired, observed);
  EXPECT_EQ(shape(cs), (std::vector<std::string>{"replace route", "delete rule", "delete route",
                                                 "delete nexthop"}));
  EXPECT_EQ(std::get<Nexthop>(cs[3].object).id, 11u);
}

TEST(DiffRouter, RulesCompareAllFields) {
  RouterState desired, observed;
  desired.rules = {{Family::V4, 1000, 1000, 1000}};
  observed.rules = {{Family::V6, 1000, 1000, 1000}};
  auto cs = diffRouter(desired, observed);
  EXPECT_EQ(shape(cs), (std::vector<std::string>{"add rule", "delete rule"}));
  EXPECT_EQ(std::get<Rule>(cs[0].object).family, Family::V4);
  EXPECT_EQ(std::get<Rule>(cs[1].object).family, Family::V6);
}

TEST(DiffPod, AddsLinkThenAddresses) {
  PodState desired;
  desired.links = {vxlan()};
  desired.addresses = {{"kst-vxg", ip("203.0.113.10"), 32}, {"kst-vxg", ip("2001:db8::10"), 128}};
  auto cs = diffPod(desired, PodState{}, 100);
  EXPECT_EQ(shape(cs), (std::vector<std::string>{"add link", "add address", "add address"}));
  EXPECT_EQ(std::get<Address>(cs[1].object).ip, ip("203.0.113.10"));
  EXPECT_EQ(std::get<Address>(cs[2].object).ip, ip("2001:db8::10"));
}

TEST(DiffPod, RemovesAddressesThenLinks) {
  PodState observed;
  observed.links = {vxlan()};
  observed.addresses = {{"kst-vxg", ip("203.0.113.10"), 32}};
  auto cs = diffPod(PodState{}, observed, 100);
  EXPECT_EQ(shape(cs), (std::vector<std::string>{"delete address", "delete link"}));
}

TEST(DiffPod, AddressSwap) {
  PodState desired, observed;
  desired.links = observed.links = {vxlan()};
  desired.addresses = {{"kst-vxg", ip("203.0.113.11"), 32}};
  observed.addresses = {{"kst-vxg", ip("203.0.113.10"), 32}};
  auto cs = diffPod(desired, observed, 100);
  EXPECT_EQ(shape(cs), (std::vector<std::string>{"add address", "delete address"}));
  EXPECT_EQ(std::get<Address>(cs[0].object).ip, ip("203.0.113.11"));
  EXPECT_EQ(std::get<Address>(cs[1].object).ip, ip("203.0.113.10"));
}

TEST(DiffPod, IdenticalNoChanges) {
  PodState s;
  s.links = {vxlan()};
  s.addresses = {{"kst-vxg", ip("203.0.113.10"), 32}};
  s.mplsLabelRoute = false;
  EXPECT_TRUE(diffPod(s, s, 100).empty());
}

TEST(DiffPod, MplsLabelRoute) {
  PodState desired;
  desired.addresses = {{"lo", ip("203.0.113.10"), 32}};
  desired.mplsLabelRoute = true;
  auto cs = diffPod(desired, PodState{}, 123);
  EXPECT_EQ(shape(cs), (std::vector<std::string>{"add address", "add mpls"}));
  EXPECT_EQ(std::get<MplsPop>(cs[1].object).label, 123u);
  EXPECT_EQ(std::get<MplsPop>(cs[1].object).dev, "lo");
  auto back = diffPod(PodState{}, desired, 123);
  EXPECT_EQ(shape(back), (std::vector<std::string>{"delete mpls", "delete address"}));
  EXPECT_TRUE(diffPod(desired, desired, 123).empty());
}

TEST(Describe, HumanReadable) {
  EXPECT_EQ(describe({A::Add, vxlan()}), "add link kst-vxg (vxlan-gpe)");
  EXPECT_EQ(describe({A::Delete, nh(7, "10.0.0.1")}), "delete nexthop 7 dev kst-vxg encap ip dst 10.0.0.1");
  EXPECT_EQ(describe({A::Add, Rule{Family::V4, 1000, 1001, 1002}}), "add rule pref 1000 fwmark 1001 table 1002");
  EXPECT_EQ(describe({A::Delete, Address{"lo", ip("203.0.113.10"), 32}}), "delete address 203.0.113.10/32 dev lo");
  EXPECT_EQ(describe({A::Add, MplsPop{100, "lo"}}), "add mpls label 100 dev lo");
  EXPECT_NE(describe({A::Replace, route(1000, "203.0.113.10", 5)}).find("replace route"), std::string::npos);
  EXPECT_NE(describe({A::Replace, route(1000, "203.0.113.10", 5)}).find("203.0.113.10/32 table 1000 nhid 5"),
            std::string::npos);
}

}  // namespace
}  // namespace kst::dp
