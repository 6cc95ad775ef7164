#include "model/vip_policy.h"

#include <gtest/gtest.h>

namespace kst {
namespace {

IpAddress ip(const char* s) { return *IpAddress::parse(s); }
IpPrefix pfx(const char* s) { return *IpPrefix::parse(s); }

TEST(IpPrefix, ParsesAndRefusesHostBitsAndBadLengths) {
  EXPECT_EQ(pfx("203.0.113.0/24").str(), "203.0.113.0/24");
  EXPECT_EQ(pfx("2001:db8::/64").str(), "2001:db8::/64");
  EXPECT_EQ(pfx("198.51.100.7").str(), "198.51.100.7/32");
  EXPECT_EQ(pfx("0.0.0.0/0").size(), uint64_t(1) << 32);
  EXPECT_EQ(pfx("::/0").size(), UINT64_MAX);
  for (const char* bad : {"10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/8x",
                          "2001:db8::1/64", "::/129", "nope/8", "", "/8", "10.0.0.0/0008"})
    EXPECT_FALSE(IpPrefix::parse(bad).has_value()) << bad;
}

TEST(IpPrefix, ContainsOverlapsAndAddressArithmetic) {
  auto p = pfx("10.1.0.0/16");
  EXPECT_TRUE(p.contains(ip("10.1.255.255")));
  EXPECT_FALSE(p.contains(ip("10.2.0.0")));
  EXPECT_FALSE(p.contains(ip("::ffff:10.1.0.1")));  // other family
  EXPECT_TRUE(p.overlaps(pfx("10.0.0.0/8")));
  EXPECT_TRUE(p.overlaps(pfx("10.1.2.0/24")));
  EXPECT_FALSE(p.overlaps(pfx("10.2.0.0/16")));
  EXPECT_EQ(p.at(0), ip("10.1.0.0"));
  EXPECT_EQ(p.at(257), ip("10.1.1.1"));
  EXPECT_EQ(p.at(65535), ip("10.1.255.255"));
  EXPECT_EQ(pfx("2001:db8::/64").at(0x1ff), ip("2001:db8::1ff"));
  EXPECT_EQ(pfx("2001:db8::/32").at(uint64_t(1) << 40), ip("2001:db8::100:0:0"));
}

TEST(VipPool, ParsesNamespacesAndRefusesGarbage) {
  auto p = parseVipPool("203.0.113.0/24@team-a,team-b");
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->prefix, pfx("203.0.113.0/24"));
  EXPECT_EQ(p->namespaces, (std::set<std::string>{"team-a", "team-b"}));
  EXPECT_TRUE(p->allows("team-a"));
  EXPECT_FALSE(p->allows("team-c"));
  auto open = parseVipPool("2001:db8:1::/64");
  ASSERT_TRUE(open);
  EXPECT_TRUE(open->allows("anything"));
  for (const char* bad : {"203.0.113.0/24@", "203.0.113.0/24@Team", "203.0.113.0/24@a,,b",
                          "203.0.113.1/24", "x@y", "203.0.113.0/24@-a", "@a"})
    EXPECT_FALSE(parseVipPool(bad)) << bad;
  std::string many = "203.0.113.0/24@n0";
  for (int i = 1; i <= 64; ++i) many += ",n" + std::to_string(i);
  EXPECT_FALSE(parseVipPool(many));
  auto list = parseVipPools("  203.0.113.0/24@a\n\t2001:db8::/64  ");
  ASSERT_TRUE(list);
  EXPECT_EQ(list->size(), 2u);
  EXPECT_FALSE(parseVipPools("203.0.113.0/24 bogus"));
}

TEST(VipPolicy, DefaultDenyPoolsNamespacesClusterAndReservedRanges) {
  VipPolicy none;
  auto r = vipRefusal(none, "default", ip("203.0.113.10"));
  ASSERT_TRUE(r);
  EXPECT_NE(r->find("no VIP pool"), std::string::npos) << *r;

  VipPolicy p;
  p.pools = {*parseVipPool("203.0.113.0/24"), *parseVipPool("198.51.100.0/24@team-a"),
             *parseVipPool("2001:db8:5::/64"), *parseVipPool("0.0.0.0/0@wide")};
  p.clusterRanges = {pfx("10.244.0.0/16"), pfx("10.96.0.0/12"), pfx("fd00:10::/64")};
  EXPECT_FALSE(vipRefusal(p, "default", ip("203.0.113.10")));
  EXPECT_FALSE(vipRefusal(p, "default", ip("2001:db8:5::10")));
  EXPECT_FALSE(vipRefusal(p, "team-a", ip("198.51.100.9")));
  auto other = vipRefusal(p, "team-b", ip("198.51.100.9"));
  ASSERT_TRUE(other);
  EXPECT_NE(other->find("not open to namespace team-b"), std::string::npos) << *other;
  auto outside = vipRefusal(p, "default", ip("2001:db8:6::1"));
  ASSERT_TRUE(outside);
  EXPECT_NE(outside->find("outside every VIP pool"), std::string::npos) << *outside;
  EXPECT_TRUE(vipRefusal(p, "default", ip("192.0.2.1")));  // only the "wide" pool holds it
  // A pool as wide as 0.0.0.0/0 never opens the cluster's own or the reserved ranges.
  EXPECT_FALSE(vipRefusal(p, "wide", ip("192.0.2.1")));
  for (const char* s : {"10.96.0.1", "10.244.3.4"}) {
    auto c = vipRefusal(p, "wide", ip(s));
    ASSERT_TRUE(c) << s;
    EXPECT_NE(c->find("cluster's own range"), std::string::npos) << *c;
  }
  for (const char* s : {"127.0.0.1", "169.254.169.254", "224.0.0.5", "255.255.255.255",
                        "0.0.0.0", "240.1.2.3"}) {
    auto c = vipRefusal(p, "wide", ip(s));
    ASSERT_TRUE(c) << s;
    EXPECT_NE(c->find("reserved range"), std::string::npos) << *c;
  }
  VipPolicy v6wide;
  v6wide.pools = {*parseVipPool("::/0")};
  for (const char* s : {"::1", "::", "fe80::1", "ff02::1", "::ffff:127.0.0.1"})
    EXPECT_TRUE(vipRefusal(v6wide, "x", ip(s))) << s;
  EXPECT_FALSE(vipRefusal(v6wide, "x", ip("2001:db8::1")));
}

TEST(VipPolicy, AllocationIsLowestFreeDeterministicPerNamespaceAndFamily) {
  VipPolicy p;
  p.pools = {*parseVipPool("198.51.100.0/30@team-a"), *parseVipPool("203.0.113.0/29"),
             *parseVipPool("2001:db8:7::/126")};
  p.clusterRanges = {pfx("203.0.113.2/32")};
  std::set<IpAddress> taken;
  // team-a: its own pool first (network/broadcast skipped: .1, .2), then the open pool.
  auto a = allocateVip(p, "team-a", Family::V4, taken);
  ASSERT_TRUE(a);
  EXPECT_EQ(*a, ip("198.51.100.1"));
  taken.insert(*a);
  EXPECT_EQ(*allocateVip(p, "team-a", Family::V4, taken), ip("198.51.100.2"));
  taken.insert(ip("198.51.100.2"));
  // The next one comes from 203.0.113.0/29 (.1; .2 is a cluster range).
  EXPECT_EQ(*allocateVip(p, "team-a", Family::V4, taken), ip("203.0.113.1"));
  taken.insert(ip("203.0.113.1"));
  EXPECT_EQ(*allocateVip(p, "team-b", Family::V4, taken), ip("203.0.113.3"));
  for (const char* s : {"203.0.113.3", "203.0.113.4", "203.0.113.5", "203.0.113.6"})
    taken.insert(ip(s));
  EXPECT_FALSE(allocateVip(p, "team-b", Family::V4, taken));  // .7 is the broadcast address
  // IPv6 pools use every address.
  std::set<IpAddress> none;
  EXPECT_EQ(*allocateVip(p, "x", Family::V6, none), ip("2001:db8:7::"));
  // Same inputs, same answer (every router, every Lease holder).
  EXPECT_EQ(allocateVip(p, "team-b", Family::V6, {ip("2001:db8:7::")}),
            allocateVip(p, "team-b", Family::V6, {ip("2001:db8:7::")}));
  VipPolicy empty;
  EXPECT_FALSE(allocateVip(empty, "x", Family::V4, none));
}

}  // namespace
}  // namespace kst
