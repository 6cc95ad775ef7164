// model/loadbalancer.h: which Services are ours, source ranges, and the status plan (allocation
// without conflicts, kept addresses, annotation precedence, leaving the class).
#include "model/loadbalancer.h"

#include <gtest/gtest.h>

#include "model/model.h"

namespace kst {
namespace {

constexpr const char* kAnn = "cmd.nu/tunnel";
IpAddress ip(const char* s) { return *IpAddress::parse(s); }

ServiceObject& lb(ClusterObjects& o, const std::string& ns, const std::string& name,
                  const std::string& created, const std::string& cls = kLoadBalancerClass) {
  ServiceObject s;
  s.key = {ns, name};
  s.uid = ns + "-" + name;
  s.creationTimestamp = created;
  s.type = "LoadBalancer";
  s.loadBalancerClass = cls;
  return o.services[s.key] = s;
}

VipPolicy policy(const std::string& pools) {
  VipPolicy p;
  p.pools = *parseVipPools(pools);
  return p;
}

TEST(LoadBalancer, OursOnlyWithOurClassAndType) {
  ClusterObjects o;
  auto& a = lb(o, "x", "a", "1");
  EXPECT_TRUE(isOurLoadBalancer(a, kLoadBalancerClass));
  auto& b = lb(o, "x", "b", "1", "example.com/other");
  EXPECT_FALSE(isOurLoadBalancer(b, kLoadBalancerClass));
  b.loadBalancerClass.clear();  // the cloud provider's default class is not ours
  EXPECT_FALSE(isOurLoadBalancer(b, kLoadBalancerClass));
  a.type = "ClusterIP";
  EXPECT_FALSE(isOurLoadBalancer(a, kLoadBalancerClass));
}

TEST(LoadBalancer, SourceRangesParsedSortedBoundedFailClosed) {
  ServiceObject s;
  s.loadBalancerSourceRanges = {"10.1.2.3/8", " 192.0.2.0/24", "2001:db8::/32", "192.0.2.0/24",
                                "198.51.100.7"};
  auto r = sourceRangesOf(s);
  ASSERT_TRUE(r) << r.error().message;
  std::vector<std::string> got;
  for (auto& p : *r) got.push_back(p.str());
  EXPECT_EQ(got, (std::vector<std::string>{"10.0.0.0/8", "192.0.2.0/24", "198.51.100.7/32",
                                           "2001:db8::/32"}));
  for (const char* bad : {"10.0.0.0/33", "10.0.0.0/", "x/8", "10.0.0.0/8/8", "::/129", "10.0.0.0/1a"}) {
    s.loadBalancerSourceRanges = {"192.0.2.0/24", bad};
    EXPECT_FALSE(sourceRangesOf(s)) << bad;
  }
  s.loadBalancerSourceRanges.assign(kMaxSourceRanges + 1, "192.0.2.0/24");
  EXPECT_FALSE(sourceRangesOf(s));
}

TEST(LoadBalancer, AllocatesLowestFreeInAgeOrderAvoidingAnnotatedVips) {
  ClusterObjects o;
  lb(o, "team", "aa-new", "2024-02-01T00:00:00Z");  // key order and age order differ
  lb(o, "team", "zz-old", "2024-01-01T00:00:00Z");
  auto& annotatedOther = o.services[{"web", "static"}];
  annotatedOther.key = {"web", "static"};
  annotatedOther.annotations[kAnn] = "203.0.113.1";
  auto plan = planLoadBalancerStatus(o, policy("203.0.113.0/29"), kAnn, kLoadBalancerClass);
  ASSERT_EQ(plan.changes.size(), 2u);
  // Sorted by service key in the plan; the older Service got the lower address.
  EXPECT_EQ(plan.changes[0].service, (ObjectKey{"team", "aa-new"}));
  EXPECT_EQ(plan.changes[0].ingress, (std::vector<IpAddress>{ip("203.0.113.3")}));
  EXPECT_EQ(plan.changes[1].service, (ObjectKey{"team", "zz-old"}));
  EXPECT_EQ(plan.changes[1].ingress, (std::vector<IpAddress>{ip("203.0.113.2")}));
  EXPECT_EQ(plan.changes[0].reason, "allocated");
  EXPECT_TRUE(plan.unallocated.empty());
}

TEST(LoadBalancer, KeepsAValidAddressWritesNothingAndResolvesDuplicatesByAge) {
  ClusterObjects o;
  auto& a = lb(o, "team", "a", "2024-01-01T00:00:00Z");
  a.ingressIps = {"203.0.113.5"};
  a.ingressProxyMode = true;
  auto& b = lb(o, "team", "b", "2024-02-01T00:00:00Z");
  b.ingressIps = {"203.0.113.5"};  // e.g. written by hand: a duplicate
  b.ingressProxyMode = true;
  auto plan = planLoadBalancerStatus(o, policy("203.0.113.0/29"), kAnn, kLoadBalancerClass);
  ASSERT_EQ(plan.changes.size(), 1u);
  EXPECT_EQ(plan.changes[0].service, (ObjectKey{"team", "b"}));
  EXPECT_EQ(plan.changes[0].ingress, (std::vector<IpAddress>{ip("203.0.113.1")}));
  // Applying the plan converges: nothing more to write.
  b.ingressIps = {"203.0.113.1"};
  EXPECT_TRUE(planLoadBalancerStatus(o, policy("203.0.113.0/29"), kAnn, kLoadBalancerClass)
                  .changes.empty());
  // An address written without ipMode Proxy is rewritten (kube-proxy would intercept it).
  a.ingressProxyMode = false;
  auto again = planLoadBalancerStatus(o, policy("203.0.113.0/29"), kAnn, kLoadBalancerClass);
  ASSERT_EQ(again.changes.size(), 1u);
  EXPECT_EQ(again.changes[0].ingress, (std::vector<IpAddress>{ip("203.0.113.5")}));
}

TEST(LoadBalancer, AnnotationWinsOutOfPoolAddressIsReplacedExhaustionReported) {
  ClusterObjects o;
  auto& a = lb(o, "team", "a", "1");
  a.annotations[kAnn] = "203.0.113.6";
  auto& b = lb(o, "team", "b", "2");
  b.ingressIps = {"192.0.2.1"};  // outside every pool now
  b.ingressProxyMode = true;
  auto& c = lb(o, "team", "c", "3");
  c.ipFamily = "IPv6";
  auto plan = planLoadBalancerStatus(o, policy("203.0.113.4/30"), kAnn, kLoadBalancerClass);
  // /30: .5 and .6 usable; .6 is the annotation's, so b gets .5; c (IPv6) has no pool.
  ASSERT_EQ(plan.changes.size(), 2u);
  EXPECT_EQ(plan.changes[0].ingress, (std::vector<IpAddress>{ip("203.0.113.6")}));
  EXPECT_EQ(plan.changes[0].reason, "annotation");
  EXPECT_EQ(plan.changes[1].ingress, (std::vector<IpAddress>{ip("203.0.113.5")}));
  ASSERT_EQ(plan.unallocated.size(), 1u);
  EXPECT_EQ(plan.unallocated[0].first, (ObjectKey{"team", "c"}));
}

TEST(LoadBalancer, LeavingTheClassClearsOnlyWhatWeWrote) {
  ClusterObjects o;
  auto& a = lb(o, "team", "a", "1");
  a.ingressIps = {"203.0.113.1"};
  a.ingressProxyMode = true;
  a.type = "ClusterIP";  // left
  auto& other = lb(o, "team", "other", "1", "example.com/other");
  other.ingressIps = {"203.0.113.2"};  // another implementation's, not Proxy mode
  auto plan = planLoadBalancerStatus(o, policy("203.0.113.0/24"), kAnn, kLoadBalancerClass);
  ASSERT_EQ(plan.changes.size(), 1u);
  EXPECT_EQ(plan.changes[0].service, (ObjectKey{"team", "a"}));
  EXPECT_TRUE(plan.changes[0].ingress.empty());
  EXPECT_EQ(plan.changes[0].reason, "left class");
}

TEST(LoadBalancer, AnAddressAnotherServiceShowsIsNeverAllocatedButKeptWhereItWasFirst) {
  ClusterObjects o;
  auto& other = lb(o, "team", "metal", "1", "example.com/other");
  other.ingressIps = {"203.0.113.1"};  // another implementation's LoadBalancer
  auto& plain = lb(o, "team", "plain", "1");
  plain.type = "ClusterIP";
  plain.loadBalancerClass.clear();
  plain.ingressIps = {"203.0.113.2"};  // any Service's status counts as in use
  lb(o, "team", "new", "2");
  auto& kept = lb(o, "team", "kept", "0");
  kept.ingressIps = {"203.0.113.5"};
  kept.ingressProxyMode = true;
  auto& later = lb(o, "team", "later", "3", "example.com/other");
  later.ingressIps = {"203.0.113.5"};  // shows ours: ours keeps it
  auto plan = planLoadBalancerStatus(o, policy("203.0.113.0/24"), kAnn, kLoadBalancerClass);
  ASSERT_EQ(plan.changes.size(), 1u);
  EXPECT_EQ(plan.changes[0].service, (ObjectKey{"team", "new"}));
  EXPECT_EQ(plan.changes[0].ingress, (std::vector<IpAddress>{ip("203.0.113.3")}));
  EXPECT_TRUE(plan.unallocated.empty());
}

TEST(LoadBalancer, ModelTunnelsOurLoadBalancerByItsStatusAddressWithItsSourceRanges) {
  ClusterObjects o;
  auto& a = lb(o, "team", "a", "1");
  a.ingressIps = {"203.0.113.9"};
  auto& ranged = lb(o, "team", "ranged", "1");
  ranged.ingressIps = {"203.0.113.12"};
  ranged.loadBalancerSourceRanges = {"2001:db8::/32", "192.0.2.0/24"};  // valid: carried
  auto& waiting = lb(o, "team", "waiting", "1");  // no address yet: not tunnelled, no problem
  (void)waiting;
  auto& foreign = lb(o, "team", "foreign", "1", "example.com/other");
  foreign.ingressIps = {"203.0.113.10"};
  auto& bad = lb(o, "team", "bad", "1");
  bad.ingressIps = {"203.0.113.11"};
  bad.loadBalancerSourceRanges = {"192.0.2.0/33"};
  ModelOptions mo;
  mo.policy = policy("203.0.113.0/24");
  auto m = buildModel(o, mo);
  ASSERT_EQ(m.services.size(), 2u);
  EXPECT_EQ(m.services[0].key, (ObjectKey{"team", "a"}));
  EXPECT_EQ(m.services[0].vip, ip("203.0.113.9"));
  EXPECT_TRUE(m.services[0].sourceRanges.empty());
  // Source ranges are enforced by the routers: the Service is tunnelled with them (sorted).
  EXPECT_EQ(m.services[1].key, (ObjectKey{"team", "ranged"}));
  EXPECT_EQ(m.services[1].sourceRanges,
            (std::vector<IpPrefix>{*IpPrefix::parse("192.0.2.0/24"),
                                   *IpPrefix::parse("2001:db8::/32")}));
  ASSERT_EQ(m.problems.size(), 1u);
  EXPECT_EQ(m.problems[0].object, (ObjectKey{"team", "bad"}));
  EXPECT_NE(m.problems[0].message.find("192.0.2.0/33"), std::string::npos);
}

}  // namespace
}  // namespace kst
