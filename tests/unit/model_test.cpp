// model/model.h: buildModel — annotation parsing, VIP conflicts, slice merging, endpoint
// condition semantics, families; ModelBuilder (incremental) against a fresh build, and
// model/objects.h ObjectChanges (merge, apply).
#include "model/model.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

namespace kst {
namespace {

constexpr const char* kAnn = "cmd.nu/tunnel";

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

void addService(ClusterObjects& o, const std::string& ns, const std::string& name,
                const std::string& vip, const std::string& created = "2024-01-01T00:00:00Z") {
  ServiceObject s;
  s.key = {ns, name};
  s.uid = ns + "-" + name;
  s.creationTimestamp = created;
  s.annotations[kAnn] = vip;
  o.services[s.key] = s;
}

SliceEndpoint ep(const std::string& addr, bool ready = true, bool serving = true,
                 bool terminating = false, const std::string& node = "n1") {
  SliceEndpoint e;
  e.address = addr;
  e.ready = ready;
  e.serving = serving;
  e.terminating = terminating;
  e.nodeName = node;
  return e;
}

void addSlice(ClusterObjects& o, const std::string& ns, const std::string& name,
              const std::string& svc, std::vector<SliceEndpoint> eps,
              const std::string& type = "IPv4") {
  EndpointSliceObject s;
  s.key = {ns, name};
  s.serviceName = svc;
  s.addressType = type;
  s.endpoints = std::move(eps);
  o.slices[s.key] = s;
}

std::vector<std::string> ips(const TunnelService& s) {
  std::vector<std::string> v;
  for (auto& e : s.endpoints) v.push_back(e.ip.str());
  return v;
}

const TunnelService* find(const Model& m, const std::string& ns, const std::string& name) {
  for (auto& s : m.services)
    if (s.key == ObjectKey{ns, name}) return &s;
  return nullptr;
}

ModelOptions opts() { return {}; }

TEST(Model, ValidAnnotationMakesTunnelService) {
  ClusterObjects o;
  addService(o, "web", "front", "203.0.113.10");
  addSlice(o, "web", "front-abc", "front", {ep("10.0.0.2"), ep("10.0.0.1")});
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 1u);
  EXPECT_TRUE(m.problems.empty());
  EXPECT_EQ(m.services[0].key, (ObjectKey{"web", "front"}));
  EXPECT_EQ(m.services[0].vip, ip("203.0.113.10"));
  EXPECT_EQ(ips(m.services[0]), (std::vector<std::string>{"10.0.0.1", "10.0.0.2"}));
  EXPECT_FALSE(m.services[0].endpoints[0].draining);
  EXPECT_EQ(m.services[0].endpoints[0].nodeName, "n1");
}

// The published table comes from the daemon's own ConfigMap, for this very Service (uid); the
// tenant-writable annotation on the Service is not read at all.
TEST(Model, PublishedTableOnlyFromTheTablesOfThisServiceNeverFromItsAnnotation) {
  ClusterObjects o;
  addService(o, "web", "front", "203.0.113.10");
  o.services.at({"web", "front"}).uid = "u-1";
  o.services.at({"web", "front"}).annotations["kube-service-tunnel.cmd.nu/buckets"] =
      R"({"v":1,"buckets":64,"endpoints":[]})";
  addSlice(o, "web", "front-abc", "front", {ep("10.0.0.1")});
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 1u);
  EXPECT_EQ(m.services[0].published, "") << "a tenant's annotation changes nothing";
  o.tables[{"web", "front"}] = PublishedTableObject{{"web", "front"}, "u-0", "old"};
  EXPECT_EQ(buildModel(o, opts()).services[0].published, "")
      << "a table written for an earlier Service of the same name is not inherited";
  o.tables[{"web", "front"}] = PublishedTableObject{{"web", "front"}, "u-1", "mine"};
  EXPECT_EQ(buildModel(o, opts()).services[0].published, "mine");
  // Incrementally: the table arriving, changing and going changes that VIP.
  ModelBuilder b(opts());
  ClusterObjects noTable = o;
  noTable.tables.clear();
  b.apply(ObjectChanges::all(noTable));
  ObjectChanges add;
  add.tables[{"web", "front"}] = PublishedTableObject{{"web", "front"}, "u-1", "mine"};
  EXPECT_EQ(b.apply(add), std::set<IpAddress>{ip("203.0.113.10")});
  EXPECT_EQ(b.model().services[0].published, "mine");
  ObjectChanges del;
  del.tables[{"web", "front"}] = std::nullopt;
  EXPECT_EQ(b.apply(del), std::set<IpAddress>{ip("203.0.113.10")});
  EXPECT_EQ(b.model().services[0].published, "");
}

TEST(Model, ServiceWithoutAnnotationIgnoredSilently) {
  ClusterObjects o;
  ServiceObject s;
  s.key = {"default", "plain"};
  s.annotations["other"] = "203.0.113.1";
  o.services[s.key] = s;
  addSlice(o, "default", "plain-1", "plain", {ep("10.0.0.1")});
  auto m = buildModel(o, opts());
  EXPECT_TRUE(m.services.empty());
  EXPECT_TRUE(m.problems.empty());  // not an orphan: its service exists
}

TEST(Model, CustomAnnotationName) {
  ClusterObjects o;
  ServiceObject s;
  s.key = {"default", "a"};
  s.annotations["example.com/vip"] = "203.0.113.1";
  s.annotations[kAnn] = "203.0.113.2";
  o.services[s.key] = s;
  ModelOptions mo;
  mo.annotation = "example.com/vip";
  auto m = buildModel(o, mo);
  ASSERT_EQ(m.services.size(), 1u);
  EXPECT_EQ(m.services[0].vip, ip("203.0.113.1"));
}

TEST(Model, InvalidAnnotationIsProblemAndServiceAbsent) {
  ClusterObjects o;
  addService(o, "web", "bad", "203.0.113.300");
  addService(o, "web", "host", "example.com");
  addService(o, "web", "cidr", "203.0.113.0/24");
  addService(o, "web", "good", "203.0.113.10");
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 1u);
  EXPECT_EQ(m.services[0].key.name, "good");
  ASSERT_EQ(m.problems.size(), 3u);
  for (auto& p : m.problems) {
    EXPECT_EQ(p.kind, Problem::Kind::InvalidAnnotation);
    EXPECT_STREQ(problemReason(p.kind), "InvalidTunnelAnnotation");
  }
  std::vector<std::string> names;
  for (auto& p : m.problems) names.push_back(p.object.str());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"web/bad", "web/cidr", "web/host"}));
  // The message quotes the offending value.
  auto it = std::find_if(m.problems.begin(), m.problems.end(),
                         [](auto& p) { return p.object.name == "bad"; });
  EXPECT_NE(it->message.find("\"203.0.113.300\""), std::string::npos) << it->message;
}

TEST(Model, EmptyAnnotationIsInvalid) {
  ClusterObjects o;
  addService(o, "web", "empty", "   ");
  auto m = buildModel(o, opts());
  EXPECT_TRUE(m.services.empty());
  ASSERT_EQ(m.problems.size(), 1u);
  EXPECT_EQ(m.problems[0].kind, Problem::Kind::InvalidAnnotation);
}

TEST(Model, AnnotationWhitespaceTrimmed) {
  ClusterObjects o;
  addService(o, "web", "a", "  203.0.113.10\n");
  addService(o, "web", "b", "\t2001:db8::10 ");
  auto m = buildModel(o, opts());
  EXPECT_TRUE(m.problems.empty());
  ASSERT_EQ(m.services.size(), 2u);
  EXPECT_EQ(find(m, "web", "a")->vip, ip("203.0.113.10"));
  EXPECT_EQ(find(m, "web", "b")->vip, ip("2001:db8::10"));
}

TEST(Model, VipConflictOlderServiceWins) {
  ClusterObjects o;
  addService(o, "a", "young", "203.0.113.10", "2024-05-01T00:00:00Z");
  addService(o, "z", "old", "203.0.113.10", "2023-01-01T00:00:00Z");
  addSlice(o, "a", "young-1", "young", {ep("10.0.0.1")});
  addSlice(o, "z", "old-1", "old", {ep("10.0.0.9")});
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 1u);
  EXPECT_EQ(m.services[0].key, (ObjectKey{"z", "old"}));
  EXPECT_EQ(ips(m.services[0]), (std::vector<std::string>{"10.0.0.9"}));
  ASSERT_EQ(m.problems.size(), 1u);
  EXPECT_EQ(m.problems[0].kind, Problem::Kind::VipConflict);
  EXPECT_EQ(m.problems[0].object, (ObjectKey{"a", "young"}));
  EXPECT_STREQ(problemReason(m.problems[0].kind), "TunnelVIPConflict");
  EXPECT_NE(m.problems[0].message.find("z/old"), std::string::npos) << m.problems[0].message;
}

TEST(Model, VipConflictTieBrokenByNamespaceThenName) {
  ClusterObjects o;
  const std::string t = "2024-01-01T00:00:00Z";
  addService(o, "b", "a", "203.0.113.10", t);
  addService(o, "a", "z", "203.0.113.10", t);
  addService(o, "a", "y", " 203.0.113.10", t);  // same VIP after trimming
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 1u);
  EXPECT_EQ(m.services[0].key, (ObjectKey{"a", "y"}));
  ASSERT_EQ(m.problems.size(), 2u);
  EXPECT_EQ(m.problems[0].kind, Problem::Kind::VipConflict);
  EXPECT_EQ(m.problems[1].kind, Problem::Kind::VipConflict);
  EXPECT_EQ(m.problems[0].object, (ObjectKey{"a", "z"}));
  EXPECT_EQ(m.problems[1].object, (ObjectKey{"b", "a"}));
}

TEST(Model, OrphanSlice) {
  ClusterObjects o;
  addService(o, "web", "front", "203.0.113.10");
  addSlice(o, "web", "ghost-1", "ghost", {ep("10.0.0.1")});
  addSlice(o, "other", "front-1", "front", {ep("10.0.0.2")});  // wrong namespace
  addSlice(o, "web", "nolabel", "", {ep("10.0.0.3")});
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 1u);
  EXPECT_TRUE(m.services[0].endpoints.empty());
  ASSERT_EQ(m.problems.size(), 3u);
  std::vector<std::string> objs;
  for (auto& p : m.problems) {
    EXPECT_EQ(p.kind, Problem::Kind::OrphanSlice);
    objs.push_back(p.object.str());
  }
  std::sort(objs.begin(), objs.end());
  EXPECT_EQ(objs, (std::vector<std::string>{"other/front-1", "web/ghost-1", "web/nolabel"}));
  EXPECT_STREQ(problemReason(Problem::Kind::OrphanSlice), "OrphanEndpointSlice");
}

TEST(Model, SlicesMergedAcrossSeveralSlices) {
  ClusterObjects o;
  addService(o, "web", "front", "203.0.113.10");
  addSlice(o, "web", "front-a", "front", {ep("10.0.0.3"), ep("10.0.0.1")});
  addSlice(o, "web", "front-b", "front", {ep("10.0.0.2")});
  addSlice(o, "web", "front-c", "front", {ep("10.0.0.1")});  // duplicate across slices
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 1u);
  EXPECT_EQ(ips(m.services[0]), (std::vector<std::string>{"10.0.0.1", "10.0.0.2", "10.0.0.3"}));
}

TEST(Model, DuplicateAddressAcrossSlicesPrefersActiveView) {
  ClusterObjects o;
  addService(o, "web", "front", "203.0.113.10");
  addSlice(o, "web", "front-old", "front", {ep("10.0.0.1", false, true, true)});  // draining
  addSlice(o, "web", "front-new", "front", {ep("10.0.0.1")});                     // ready
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services[0].endpoints.size(), 1u);
  EXPECT_FALSE(m.services[0].endpoints[0].draining);
}

TEST(Model, EndpointConditionSemantics) {
  ClusterObjects o;
  addService(o, "web", "front", "203.0.113.10");
  addSlice(o, "web", "front-a", "front",
           {ep("10.0.0.1", true, true, false),    // ready → active
            ep("10.0.0.2", false, true, true),    // serving + terminating → draining
            ep("10.0.0.3", false, false, true),   // terminating, not serving → dropped
            ep("10.0.0.4", false, false, false),  // not ready, not serving → dropped
            ep("10.0.0.5", true, false, false),   // serving=false wins over ready → dropped
            ep("10.0.0.6", false, true, false)}); // serving, not ready, not terminating → draining
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 1u);
  const auto& e = m.services[0].endpoints;
  ASSERT_EQ(ips(m.services[0]), (std::vector<std::string>{"10.0.0.1", "10.0.0.2", "10.0.0.6"}));
  EXPECT_FALSE(e[0].draining);
  EXPECT_TRUE(e[1].draining);
  EXPECT_TRUE(e[2].draining);
  for (auto& x : e) EXPECT_TRUE(x.serving);
}

TEST(Model, StartingEndpointsOnlyForTheAgentNeverRouted) {
  ClusterObjects o;
  addService(o, "web", "front", "203.0.113.10");
  auto starting = ep("10.0.0.4", false, false, false);
  starting.targetRef = "web/front-4";
  starting.targetUid = "u4";
  addSlice(o, "web", "front-a", "front",
           {ep("10.0.0.1"), ep("10.0.0.3", false, false, true), starting});
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 1u);
  EXPECT_TRUE(m.services[0].starting.empty());  // routers: not even kept
  auto agentOpts = opts();
  agentOpts.startingEndpoints = true;
  auto a = buildModel(o, agentOpts);
  ASSERT_EQ(a.services.size(), 1u);
  EXPECT_EQ(ips(a.services[0]), (std::vector<std::string>{"10.0.0.1"}));  // still not routed
  ASSERT_EQ(a.services[0].starting.size(), 1u);  // the terminating one is not starting
  EXPECT_EQ(a.services[0].starting[0].ip.str(), "10.0.0.4");
  EXPECT_EQ(a.services[0].starting[0].targetRef, "web/front-4");
  EXPECT_EQ(a.services[0].starting[0].targetUid, "u4");
  EXPECT_FALSE(a.services[0].starting[0].serving);
}

TEST(Model, Ipv6Vip) {
  ClusterObjects o;
  addService(o, "web", "six", "2001:db8::10");
  addSlice(o, "web", "six-v6", "six", {ep("fd00::2"), ep("fd00::1")}, "IPv6");
  addSlice(o, "web", "six-v4", "six", {ep("10.0.0.1")}, "IPv4");
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 1u);
  EXPECT_TRUE(m.services[0].vip.isV6());
  // Same-family endpoints exist: the IPv4 one is not used.
  EXPECT_EQ(ips(m.services[0]), (std::vector<std::string>{"fd00::1", "fd00::2"}));
}

TEST(Model, CrossFamilyFallback) {
  ClusterObjects o;
  addService(o, "web", "v6only-vip", "2001:db8::10");
  addSlice(o, "web", "s1", "v6only-vip", {ep("10.0.0.1"), ep("10.0.0.2")}, "IPv4");
  addService(o, "web", "v4-vip", "203.0.113.10");
  addSlice(o, "web", "s2", "v4-vip", {ep("fd00::1")}, "IPv6");
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 2u);
  EXPECT_EQ(ips(*find(m, "web", "v6only-vip")),
            (std::vector<std::string>{"10.0.0.1", "10.0.0.2"}));
  EXPECT_EQ(ips(*find(m, "web", "v4-vip")), (std::vector<std::string>{"fd00::1"}));
}

TEST(Model, FqdnSlicesAndUnparsableAddressesIgnored) {
  ClusterObjects o;
  addService(o, "web", "front", "203.0.113.10");
  addSlice(o, "web", "fq", "front", {ep("backend.example.com")}, "FQDN");
  addSlice(o, "web", "v4", "front", {ep("not-an-ip"), ep("10.0.0.1")}, "IPv4");
  auto m = buildModel(o, opts());
  EXPECT_EQ(ips(m.services[0]), (std::vector<std::string>{"10.0.0.1"}));
  EXPECT_TRUE(m.problems.empty());
}

TEST(Model, ServicesSortedByVip) {
  ClusterObjects o;
  addService(o, "a", "s3", "2001:db8::1");
  addService(o, "a", "s1", "203.0.113.20");
  addService(o, "a", "s2", "198.51.100.1");
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.services.size(), 3u);
  EXPECT_EQ(m.services[0].vip, ip("198.51.100.1"));
  EXPECT_EQ(m.services[1].vip, ip("203.0.113.20"));
  EXPECT_EQ(m.services[2].vip, ip("2001:db8::1"));
}

TEST(Model, ConflictLoserSlicesNotOrphans) {
  ClusterObjects o;
  addService(o, "a", "old", "203.0.113.10", "2020-01-01T00:00:00Z");
  addService(o, "a", "new", "203.0.113.10", "2021-01-01T00:00:00Z");
  addSlice(o, "a", "new-1", "new", {ep("10.0.0.5")});
  auto m = buildModel(o, opts());
  ASSERT_EQ(m.problems.size(), 1u);
  EXPECT_EQ(m.problems[0].kind, Problem::Kind::VipConflict);
  EXPECT_TRUE(m.services[0].endpoints.empty());
}

// ---- ModelBuilder: incremental == fresh ----

/** A random change to a small universe of Services and slices (names and VIPs collide on
 *  purpose: conflicts, moves between Services, orphans, invalid annotations, families). */
ObjectChanges randomChange(std::mt19937& rng, bool& replaceAll, ClusterObjects& truth) {
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
  ObjectChanges c;
  replaceAll = pick(20) == 0;
  int n = 1 + pick(4);
  for (int i = 0; i < n; ++i) {
    std::string ns = pick(3) == 0 ? "b" : "a";
    if (pick(2) == 0) {
      ObjectKey k{ns, fmt::format("s{}", pick(8))};
      if (pick(5) == 0) {
        c.services[k] = std::nullopt;
        continue;
      }
      ServiceObject s;
      s.key = k;
      s.uid = k.str();
      s.creationTimestamp = fmt::format("2024-01-0{}T00:00:00Z", 1 + pick(3));
      int a = pick(10);
      if (a < 6) s.annotations[kAnn] = fmt::format("203.0.113.{}", pick(4));
      else if (a == 6) s.annotations[kAnn] = fmt::format("2001:db8::{}", pick(2));
      else if (a == 7) s.annotations[kAnn] = "not-an-ip";
      if (pick(4) == 0)
        c.tables[k] = PublishedTableObject{k, pick(3) ? s.uid : "other", fmt::format("t{}", pick(3))};
      else if (pick(4) == 0)
        c.tables[k] = std::nullopt;
      c.services[k] = s;
    } else {
      ObjectKey k{ns, fmt::format("e{}", pick(12))};
      if (pick(5) == 0) {
        c.slices[k] = std::nullopt;
        continue;
      }
      EndpointSliceObject e;
      e.key = k;
      e.serviceName = pick(10) == 0 ? "" : fmt::format("s{}", pick(9));
      bool v6 = pick(4) == 0;
      e.addressType = pick(15) == 0 ? "FQDN" : v6 ? "IPv6" : "IPv4";
      for (int j = pick(4); j > 0; --j) {
        auto addr = v6 ? fmt::format("2001:db8:1::{}", pick(6)) : fmt::format("10.0.0.{}", pick(6));
        e.endpoints.push_back(ep(addr, pick(4) != 0, pick(5) != 0, pick(4) == 0,
                                 pick(2) ? "n1" : "n2"));
      }
      c.slices[k] = e;
    }
  }
  if (replaceAll) {
    // A complete set: the truth after this change, delivered whole (relist).
    ClusterObjects next = truth;
    applyChanges(next, c);
    c = ObjectChanges::all(next);
  }
  applyChanges(truth, c);
  return c;
}

std::vector<std::string> problemStrings(const Model& m) {
  std::vector<std::string> v;
  for (auto& p : m.problems)
    v.push_back(fmt::format("{} {} {}", static_cast<int>(p.kind), p.object.str(), p.message));
  return v;
}

TEST(ModelBuilder, RandomChangeSequencesEqualAFreshBuildAtEveryStep) {
  for (unsigned seed = 1; seed <= 40; ++seed) {
    std::mt19937 rng(seed);
    ModelBuilder b;
    ClusterObjects truth;
    for (int step = 0; step < 150; ++step) {
      bool all = false;
      Model before = b.model();
      auto c = randomChange(rng, all, truth);
      auto changed = b.apply(c);
      Model fresh = buildModel(truth, {});
      ASSERT_EQ(b.objects(), truth) << "seed " << seed << " step " << step;
      ASSERT_EQ(b.model().services, fresh.services) << "seed " << seed << " step " << step;
      ASSERT_EQ(problemStrings(b.model()), problemStrings(fresh)) << "seed " << seed << " step " << step;
      // The reported VIPs are exactly those whose TunnelService differs.
      std::set<IpAddress> diff;
      std::map<IpAddress, const TunnelService*> a, z;
      for (auto& s : before.services) a[s.vip] = &s;
      for (auto& s : fresh.services) z[s.vip] = &s;
      for (auto& [v, s] : a)
        if (!z.contains(v) || !(*z[v] == *s)) diff.insert(v);
      for (auto& [v, s] : z)
        if (!a.contains(v)) diff.insert(v);
      ASSERT_EQ(changed, diff) << "seed " << seed << " step " << step;
    }
  }
}

TEST(ModelBuilder, UnchangedDeliveryChangesNothing) {
  ClusterObjects o;
  addService(o, "a", "web", "203.0.113.1");
  addSlice(o, "a", "web-1", "web", {ep("10.0.0.1")});
  ModelBuilder b;
  EXPECT_EQ(b.apply(ObjectChanges::all(o)).size(), 1u);
  EXPECT_TRUE(b.apply(ObjectChanges::all(o)).empty()) << "relist with nothing new";
  ObjectChanges same;
  same.slices[{"a", "web-1"}] = o.slices.at({"a", "web-1"});
  EXPECT_TRUE(b.apply(same).empty());
}

TEST(ModelBuilder, SliceMovingBetweenServicesUpdatesBoth) {
  ClusterObjects o;
  addService(o, "a", "x", "203.0.113.1");
  addService(o, "a", "y", "203.0.113.2");
  addSlice(o, "a", "sl", "x", {ep("10.0.0.1")});
  ModelBuilder b;
  b.apply(ObjectChanges::all(o));
  ASSERT_EQ(b.model().services.size(), 2u);
  EXPECT_EQ(b.model().services[0].endpoints.size(), 1u);
  ObjectChanges c;
  auto moved = o.slices.at({"a", "sl"});
  moved.serviceName = "y";
  c.slices[moved.key] = moved;
  EXPECT_EQ(b.apply(c), (std::set<IpAddress>{ip("203.0.113.1"), ip("203.0.113.2")}));
  EXPECT_TRUE(b.model().services[0].endpoints.empty());
  EXPECT_EQ(ips(b.model().services[1]), std::vector<std::string>{"10.0.0.1"});
}

TEST(ModelBuilder, DeletingTheOlderClaimantHandsTheVipToTheNextAndClearsTheConflict) {
  ClusterObjects o;
  addService(o, "a", "old", "203.0.113.1", "2024-01-01T00:00:00Z");
  addService(o, "a", "new", "203.0.113.1", "2024-02-01T00:00:00Z");
  ModelBuilder b;
  b.apply(ObjectChanges::all(o));
  ASSERT_EQ(b.model().problems.size(), 1u);
  EXPECT_EQ(b.model().problems[0].kind, Problem::Kind::VipConflict);
  ObjectChanges c;
  c.services[{"a", "old"}] = std::nullopt;
  EXPECT_EQ(b.apply(c).size(), 1u);
  EXPECT_TRUE(b.model().problems.empty());
  ASSERT_EQ(b.model().services.size(), 1u);
  EXPECT_EQ(b.model().services[0].key, (ObjectKey{"a", "new"}));
}

TEST(ObjectChanges, MergeKeepsTheNewestVersionAndReplaceAllWins) {
  ServiceObject s1, s2;
  s1.key = s2.key = {"a", "x"};
  s2.uid = "2";
  ObjectChanges a, b, c;
  a.services[s1.key] = s1;
  b.services[s1.key] = std::nullopt;
  a.merge(std::move(b));
  EXPECT_FALSE(a.services.at(s1.key).has_value()) << "a deletion after an update is a deletion";
  c.services[s1.key] = s2;
  a.merge(std::move(c));
  EXPECT_EQ(a.services.at(s1.key)->uid, "2");

  ObjectChanges full;
  full.replaceAll = true;
  full.services[s1.key] = s1;
  ObjectChanges del;
  del.services[s1.key] = std::nullopt;
  full.merge(std::move(del));
  EXPECT_TRUE(full.replaceAll);
  EXPECT_TRUE(full.services.empty()) << "a complete set holds no deletions";
  ClusterObjects o;
  o.services[{"z", "gone"}] = s1;
  applyChanges(o, full);
  EXPECT_TRUE(o.services.empty()) << "replaceAll: exactly the delivered set";
}

}  // namespace
}  // namespace kst

namespace kst {
namespace {

ModelOptions withPolicy(const std::string& pools) {
  ModelOptions mo;
  VipPolicy p;
  p.pools = *parseVipPools(pools);
  p.clusterRanges = {*IpPrefix::parse("10.96.0.0/12")};
  mo.policy = p;
  return mo;
}

TEST(ModelPolicy, RefusedVipsAreProblemsAndGetNoTunnelServiceTheRestWorks) {
  ClusterObjects o;
  addService(o, "web", "ok", "203.0.113.10");
  addService(o, "web", "outside", "192.0.2.10");
  addService(o, "web", "svc-range", "10.96.0.10");
  addService(o, "web", "metadata", "169.254.169.254");
  addService(o, "other", "wrong-ns", "198.51.100.7");
  addService(o, "team", "right-ns", "198.51.100.8");
  for (auto* n : {"ok", "outside", "svc-range", "metadata"})
    addSlice(o, "web", std::string(n) + "-1", n, {ep("10.0.0.1")});
  addSlice(o, "other", "wrong-ns-1", "wrong-ns", {ep("10.0.0.2")});
  addSlice(o, "team", "right-ns-1", "right-ns", {ep("10.0.0.3")});
  auto m = buildModel(o, withPolicy("203.0.113.0/24 198.51.100.0/24@team"));
  ASSERT_EQ(m.services.size(), 2u);
  EXPECT_TRUE(find(m, "web", "ok"));
  EXPECT_TRUE(find(m, "team", "right-ns"));
  std::map<std::string, std::string> refused;
  for (auto& p : m.problems) {
    EXPECT_EQ(p.kind, Problem::Kind::VipRefused) << p.message;
    EXPECT_STREQ(problemReason(p.kind), "TunnelVIPRefused");
    refused[p.object.str()] = p.message;
  }
  ASSERT_EQ(refused.size(), 4u);
  EXPECT_NE(refused["web/outside"].find("outside every VIP pool"), std::string::npos);
  EXPECT_NE(refused["web/svc-range"].find("cluster's own range 10.96.0.0/12"), std::string::npos);
  EXPECT_NE(refused["web/metadata"].find("reserved range 169.254.0.0/16"), std::string::npos);
  EXPECT_NE(refused["other/wrong-ns"].find("not open to namespace other"), std::string::npos);
  // Default-deny: a policy without pools refuses everything.
  auto none = buildModel(o, withPolicy(""));
  EXPECT_TRUE(none.services.empty());
  EXPECT_EQ(none.problems.size(), 6u);
}

TEST(ModelPolicy, ARefusedClaimDoesNotConflictWithTheAllowedOwner) {
  // An older Service in a namespace the pool is closed to cannot take the VIP from the
  // allowed one (a refused claim is no claim at all).
  ClusterObjects o;
  addService(o, "intruder", "old", "198.51.100.9", "2020-01-01T00:00:00Z");
  addService(o, "team", "owner", "198.51.100.9", "2024-01-01T00:00:00Z");
  addSlice(o, "team", "owner-1", "owner", {ep("10.0.0.3")});
  ModelBuilder b(withPolicy("198.51.100.0/24@team"));
  auto changed = b.apply(ObjectChanges::all(o));
  ASSERT_EQ(b.model().services.size(), 1u);
  EXPECT_EQ(b.model().services[0].key, (ObjectKey{"team", "owner"}));
  EXPECT_EQ(changed, (std::set<IpAddress>{ip("198.51.100.9")}));
  ASSERT_EQ(b.model().problems.size(), 1u);
  EXPECT_EQ(b.model().problems[0].kind, Problem::Kind::VipRefused);
  // The intruder moves its annotation into the pool of its own… none: still refused, and
  // removing the annotation clears the problem.
  ObjectChanges c;
  auto s = b.objects().services.at({"intruder", "old"});
  s.annotations.clear();
  c.services[s.key] = s;
  b.apply(std::move(c));
  EXPECT_TRUE(b.model().problems.empty());
  EXPECT_EQ(b.model().services.size(), 1u);
}

}  // namespace
}  // namespace kst
