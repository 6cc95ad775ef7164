// desired/inspect.h, reconcile/inspect.h and linux/nft_inspect.h's parser against the fake
// kernel (tests/fakes): the router reconciler programs a model into the fakes, and explain and
// status must read back what it planned. The classifier chains are `nft -j list chain` of a
// real router (tests/data/nft/classify{4,6}.json, nft 1.0.6, --buckets 64, seed 0x2a). The bpf
// datapath's hashes (bpf::classifierHashes, what BpfInspector reads from the pinned maps) must
// explain every packet as these do.
#include "reconcile/inspect.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "desired/announce.h"
#include "fakes/fake_inspector.h"
#include "fakes/fake_kernel.h"
#include "hashing/jhash.h"
#include "linux/bpf/router_maps.h"
#include "linux/bpf_classifier.h"
#include "linux/nft_inspect.h"

namespace kst {
namespace {

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

std::string readData(const std::string& name) {
  std::ifstream f(std::string(KST_TEST_DATA_DIR) + "/nft/" + name);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

dp::ClassifierHashes chain(Family f) {
  auto h = parseClassifierJson(readData(f == Family::V4 ? "classify4.json" : "classify6.json"));
  EXPECT_TRUE(h) << (h ? "" : h.error().message);
  return h ? *h : dp::ClassifierHashes{};
}

const std::string kV4 = "203.0.113.10", kV6 = "2001:db8:ffff::10";

Endpoint ep(const std::string& a, bool draining = false) { return Endpoint{ip(a), "n1", true, draining, ""}; }

Model model(bool drainSecond = false) {
  Model m;
  m.services = {{{"web", "a"}, ip(kV4), {ep("10.0.0.1"), ep("10.0.0.2", drainSecond), ep("10.0.0.3")}},
                {{"web", "b"}, ip(kV6), {ep("fd00::1"), ep("fd00::2")}}};
  return m;
}

struct Router {
  explicit Router(bool drainSecond = false)
      : nl(fake::FakeKernel::optionsFor(cfg)), nft(cfg.nftTable), rec(cfg, nl, nft) {
    auto r = rec.reconcile(model(drainSecond));
    EXPECT_TRUE(r && r->ok());
    insp.chains[Family::V4] = chain(Family::V4);
    insp.chains[Family::V6] = chain(Family::V6);
  }
  /** The endpoint the reconciler's own plan gives a bucket of a VIP. */
  IpAddress planned(const IpAddress& vip, uint32_t bucket) const {
    for (const auto& v : rec.lastPlan().vips)
      if (v.vip == vip) return v.endpoints.at(size_t(v.buckets.at(bucket))).ip;
    ADD_FAILURE() << "no plan for " << vip.str();
    return {};
  }
  DataplaneConfig cfg = [] {
    DataplaneConfig c;
    c.buckets = 64;
    return c;
  }();
  fake::FakeKernel nl;
  fake::FakeNft nft;
  RouterReconciler rec;
  fake::FakeInspector insp;
};

FlowQuery query(const std::string& vip, const std::string& src, uint16_t sport, uint16_t dport,
                uint8_t proto) {
  return FlowQuery{ip(vip), ip(src), sport, dport, proto};
}

TEST(NftInspectParse, ReadsTheRoutersBucketRulesAndFlowKeys) {
  auto c4 = chain(Family::V4);
  // Captured from the merged skeleton (nft 1.0.6, default flags): one rule pair per bucket
  // count class 64 … 4096 (spread); the established-flow rule's live-slot match
  // (`ip daddr . meta mark @live4`, flowtable) sits between the flow map lookup and the update.
  ASSERT_EQ(c4.buckets.size(), 14u);
  using P = dp::BucketHashRule::Protocols;
  EXPECT_EQ(c4.buckets[0].protocols, P::WithPorts);
  EXPECT_EQ(c4.buckets[0].hash, (dp::JhashExpr{{"ip saddr", "ip daddr", "th sport", "th dport"},
                                               64, 0x2a, 0x40000000}));
  // (spread: the address-only rule of a class matches the class mark, not `l4proto !=`; a
  // packet with ports was marked by the rule before it, so it no longer matches)
  EXPECT_EQ(c4.buckets[1].protocols, P::Any);
  EXPECT_EQ(c4.buckets[1].hash, (dp::JhashExpr{{"ip saddr", "ip daddr"}, 64, 0x2a, 0x40000000}));
  ASSERT_EQ(c4.flowKey.size(), 4u);
  EXPECT_EQ(c4.flowKey[0].field, "ip saddr");
  EXPECT_EQ(c4.flowKey[1].field, "th sport");
  EXPECT_EQ(c4.flowKey[2].field, "ip daddr");
  EXPECT_EQ(c4.flowKey[3].field, "th dport");
  auto c6 = chain(Family::V6);
  ASSERT_EQ(c6.buckets.size(), 14u);
  EXPECT_EQ(c6.buckets[0].hash.fields,
            (std::vector<std::string>{"ip6 saddr", "ip6 daddr", "th sport", "th dport"}));
  ASSERT_EQ(c6.flowKey.size(), 2u);  // two hashes of the 4-tuple, `mod 4294967295` (JSON: -1)
  ASSERT_TRUE(c6.flowKey[0].hash && c6.flowKey[1].hash);
  EXPECT_EQ(c6.flowKey[0].hash->mod, 0xffffffffu);
  EXPECT_EQ(c6.flowKey[0].hash->seed, 0x6b737431u);
  EXPECT_EQ(c6.flowKey[1].hash->seed, 0x6b737432u);
}

TEST(NftInspectParse, HostileListingsAreErrorsOrSkippedNeverThrown) {
  EXPECT_FALSE(parseClassifierJson("not json"));
  EXPECT_FALSE(parseClassifierJson("{\"nftables\": 3}"));
  EXPECT_FALSE(parseClassifierJson("[]"));
  // Wrong types inside a rule: the rule is skipped.
  auto h = parseClassifierJson(
      R"({"nftables":[{"rule":{"expr":[{"mangle":{"value":{"jhash":{"mod":"64","expr":1}}}},
         {"match":{"op":7}}, 5, {"mangle":{"value":{"map":{"key":{"concat":[{"x":1}]}}}}},
         {"mangle":{"value":{"jhash":{"mod":99999999999,"expr":{}}}}}]}}, {"rule": 1}]})");
  ASSERT_TRUE(h);
  EXPECT_TRUE(h->buckets.empty());
  EXPECT_TRUE(h->flowKey.empty());
}

TEST(ExplainFlow, TheEndpointIsThePlansEndpointOfTheHashedBucket) {
  Router r;
  std::set<IpAddress> reached;
  for (uint16_t sport = 1000; sport < 1200; ++sport) {
    auto e = explainOnNode(r.rec, r.insp, query(kV4, "198.18.0.10", sport, 443, 6));
    ASSERT_TRUE(e) << e.error().message;
    ASSERT_TRUE(e->bucket && e->endpoint) << e->verdict;
    EXPECT_EQ(e->buckets, 64u);
    // The bucket is the kernel hash of the 5-tuple (hashing/jhash.h) …
    NftJhash h{64, 0x2a, 0x40000000};
    EXPECT_EQ(*e->bucket,
              h.eval(flowHashInput(ip("198.18.0.10"), ip(kV4), true, sport, 443).bytes()) - 0x40000000);
    // … and the rule, the table and the route lead where the plan put that bucket.
    EXPECT_EQ(*e->endpoint, r.planned(ip(kV4), *e->bucket));
    EXPECT_EQ(e->table, e->mark);  // slot s: mark and table offset + s
    EXPECT_FALSE(e->pinnedMark);
    reached.insert(*e->endpoint);
  }
  EXPECT_EQ(reached.size(), 3u);
  EXPECT_EQ(r.insp.lookups, 200);  // every TCP query looked the flow up
}

TEST(ExplainFlow, IcmpHashesTheAddressesOnlyAndIsNeverPinned) {
  Router r;
  auto e = explainOnNode(r.rec, r.insp, query(kV6, "2001:db8:f::10", 0, 0, 58));
  ASSERT_TRUE(e) << e.error().message;
  EXPECT_EQ(e->hash.fields, (std::vector<std::string>{"ip6 saddr", "ip6 daddr"}));
  ASSERT_TRUE(e->endpoint);
  EXPECT_EQ(*e->endpoint, r.planned(ip(kV6), *e->bucket));
  EXPECT_EQ(r.insp.lookups, 0);
}

TEST(ExplainFlow, APinnedFlowWinsOverItsBucket) {
  Router r;
  auto q = query(kV4, "198.18.0.10", 40000, 8080, 17);
  auto key = flowKey(q, r.insp.chains[Family::V4]);
  ASSERT_TRUE(key && *key);
  // flow4's key: saddr . sport . daddr . dport, the ports zero-padded to a register each.
  const std::vector<uint8_t> want{198, 18, 0, 10, 0x9c, 0x40, 0, 0, 203, 0, 113, 10, 0x1f, 0x90, 0, 0};
  EXPECT_EQ(**key, want);
  auto hashed = explainOnNode(r.rec, r.insp, q);
  ASSERT_TRUE(hashed && hashed->mark);
  // Pin it to another slot (as after an endpoint change that kept the old one draining).
  uint32_t other = *hashed->mark == 1000 ? 1001 : 1000;
  r.insp.flows[{Family::V4, **key}] = other;
  auto pinned = explainOnNode(r.rec, r.insp, q);
  ASSERT_TRUE(pinned);
  EXPECT_EQ(pinned->pinnedMark, other);
  EXPECT_EQ(pinned->mark, other);
  EXPECT_EQ(pinned->bucketMark, hashed->bucketMark);
  EXPECT_NE(pinned->endpoint, hashed->endpoint);
  EXPECT_EQ(toJson(*pinned)["pinned"], true);
  EXPECT_EQ(toJson(*pinned)["endpoint"], pinned->endpoint->str());
  // A pin to a slot that is not in the live-slot set (released) is stale: the kernel's rule
  // does not follow it, the packet is hashed (docs/load-balancing.md "Released slots").
  r.insp.flows[{Family::V4, **key}] = 1007;
  auto stale = explainOnNode(r.rec, r.insp, q);
  ASSERT_TRUE(stale);
  EXPECT_FALSE(stale->pinnedMark);
  EXPECT_EQ(stale->stalePinMark, 1007u);
  EXPECT_EQ(stale->mark, hashed->mark);
  EXPECT_EQ(stale->endpoint, hashed->endpoint);
  EXPECT_EQ(toJson(*stale)["pinned"], false);
}

TEST(ExplainFlow, Ipv6FlowKeyIsTwoKernelHashesOfTheFourTuple) {
  Router r;
  auto q = query(kV6, "2001:db8:f::10", 40000, 53, 17);
  auto key = flowKey(q, r.insp.chains[Family::V6]);
  ASSERT_TRUE(key && *key);
  ASSERT_EQ((*key)->size(), 8u);
  auto in = flowHashInput(q.src, q.vip, true, 40000, 53);
  NftRegisters want;
  want.word(NftJhash{0xffffffffu, 0x6b737431, 0}.eval(in.bytes()))
      .word(NftJhash{0xffffffffu, 0x6b737432, 0}.eval(in.bytes()));
  EXPECT_EQ(**key, std::vector<uint8_t>(want.bytes().begin(), want.bytes().end()));
}

TEST(ExplainFlow, TheRuleWhoseModIsTheVipsBucketCountIsTaken) {
  Router r;
  auto& c = r.insp.chains[Family::V4];
  auto decoy = c.buckets[0];
  decoy.hash.mod = 16;
  c.buckets.insert(c.buckets.begin(), decoy);
  auto e = explainOnNode(r.rec, r.insp, query(kV4, "198.18.0.10", 1234, 80, 6));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->hash.mod, 64u);
}

TEST(ExplainFlow, UnknownVipsFieldsAndFamiliesAreAnsweredNotCrashed) {
  Router r;
  auto e = explainOnNode(r.rec, r.insp, query("203.0.113.99", "198.18.0.10", 1, 2, 6));
  ASSERT_TRUE(e);
  EXPECT_FALSE(e->vipKnown);
  EXPECT_FALSE(e->endpoint);
  EXPECT_TRUE(toJson(*e)["endpoint"].is_null());
  EXPECT_FALSE(explainOnNode(r.rec, r.insp, query(kV4, "2001:db8::1", 1, 2, 6)));
  r.insp.chains[Family::V4].buckets[0].hash.fields = {"ip saddr", "meta iif"};
  auto bad = explainOnNode(r.rec, r.insp, query(kV4, "198.18.0.10", 1, 2, 6));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("meta iif"), std::string::npos);
  r.insp.chains.erase(Family::V6);
  EXPECT_FALSE(explainOnNode(r.rec, r.insp, query(kV6, "2001:db8:f::10", 1, 2, 6)));
}

TEST(ExplainFlow, ProtocolNames) {
  EXPECT_EQ(parseProtocol("udp"), 17);
  EXPECT_EQ(parseProtocol("icmpv6"), 58);
  EXPECT_EQ(parseProtocol("47"), 47);
  EXPECT_FALSE(parseProtocol("256"));
  EXPECT_FALSE(parseProtocol("-1"));
  EXPECT_FALSE(parseProtocol("tcpx"));
  EXPECT_FALSE(parseProtocol(""));
}

TEST(NodeStatusView, BucketsPerEndpointAreWhatTheRouterPlanned) {
  Router r(/*drainSecond=*/true);
  auto st = r.rec.observe();
  ASSERT_TRUE(st);
  std::vector<dp::Route> announced{announceRoute(ip(kV4), 500)};
  auto vips = routerStatus(*st, announced);
  ASSERT_EQ(vips.size(), 2u);
  for (const auto& v : vips) {
    EXPECT_TRUE(v.inVipSet);
    EXPECT_EQ(v.buckets, 64u);
    EXPECT_EQ(v.unassigned, 0u);
    EXPECT_EQ(v.announced, v.vip == ip(kV4));
    std::map<IpAddress, uint32_t> want;
    for (const auto& p : r.rec.lastPlan().vips)
      if (p.vip == v.vip)
        for (int32_t i : p.buckets) ++want[p.endpoints.at(size_t(i)).ip];
    uint32_t total = 0;
    for (const auto& e : v.endpoints) {
      EXPECT_EQ(e.buckets, want[e.endpoint]) << e.endpoint.str();
      EXPECT_EQ(e.draining(), e.endpoint == ip("10.0.0.2")) << e.endpoint.str();
      total += e.buckets;
    }
    EXPECT_EQ(total, 64u);
    EXPECT_EQ(v.endpoints.size(), v.vip == ip(kV4) ? 3u : 2u);
  }
  NodeStatus s;
  s.router = true;
  s.nftTable = true;
  s.vips = vips;
  auto j = toJson(s);
  EXPECT_EQ(j["router"]["vips"][0]["vip"], kV4);
  EXPECT_EQ(j["router"]["vips"][0]["endpoints"][1]["state"], "draining");
  EXPECT_NE(toText(s).find("draining"), std::string::npos);
  EXPECT_TRUE(j["router"]["drained"].is_null());  // no announce table
  s.drained = true;
  EXPECT_EQ(toJson(s)["router"]["drained"], true);
  EXPECT_NE(toText(s).find("drained"), std::string::npos);
}

TEST(NodeStatusView, NodeStatusReadsTheRouterThroughItsReconciler) {
  Router r;
  StatusSources src;
  src.router = &r.rec;
  auto s = nodeStatus(src);
  EXPECT_TRUE(s.errors.empty());
  EXPECT_TRUE(s.nftTable);
  EXPECT_EQ(s.vips.size(), 2u);
  EXPECT_FALSE(s.vips[0].announced);  // no announce table: unknown, not "no"
}

TEST(NodeStatusView, PodStatusListsTheAgentsVipsAndThePodsOwnAddresses) {
  dp::Link decap;
  decap.name = "kst-vxg";
  std::vector<dp::Address> owned{{"kst-vxg", ip(kV4), 32}, {"kst-vxg", ip(kV6), 128}};
  std::vector<dp::Address> all = owned;
  all.push_back({"eth0", ip("10.0.0.1"), 24});
  all.push_back({"eth0", ip("fe80::1"), 64});
  all.push_back({"lo", ip("127.0.0.1"), 8});
  auto p = podStatus("/run/netns/p", "kst-vxg", {decap}, all, owned);
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->decapPresent);
  EXPECT_EQ(p->vips, (std::vector<IpAddress>{ip(kV4), ip(kV6)}));
  EXPECT_EQ(p->podIps, (std::vector<IpAddress>{ip("10.0.0.1")}));
  // A namespace with nothing of the agent's is not a served pod.
  EXPECT_FALSE(podStatus("/run/netns/q", "kst-vxg", {}, {{"eth0", ip("10.0.0.9"), 24}}, {}));
  // VIPs without the decap device: listed, device missing.
  auto half = podStatus("/run/netns/r", "kst-vxg", {}, owned, owned);
  ASSERT_TRUE(half);
  EXPECT_FALSE(half->decapPresent);
}

// ---- the bpf datapath: the same explanations from the program's maps ----

TEST(BpfExplain, TheProgramsHashesExplainEveryPacketAsTheNftRulesDo) {
  Router nftRouter, bpfRouter;
  for (Family f : {Family::V4, Family::V6})
    bpfRouter.insp.chains[f] = bpf::classifierHashes(f, 0x2a, {64});
  for (const auto& [vip, src] : {std::pair{kV4, std::string("198.18.0.10")},
                                 std::pair{kV6, std::string("2001:db8:f::10")}}) {
    for (uint8_t proto : {uint8_t(6), uint8_t(17), uint8_t(132), uint8_t(1), uint8_t(58)}) {
      for (uint16_t sport = 2000; sport < 2100; ++sport) {
        auto q = query(vip, src, proto == 1 || proto == 58 ? 0 : sport, 443, proto);
        auto a = explainOnNode(nftRouter.rec, nftRouter.insp, q);
        auto b = explainOnNode(bpfRouter.rec, bpfRouter.insp, q);
        ASSERT_TRUE(a && b) << (a ? b.error().message : a.error().message);
        EXPECT_EQ(toJson(*b), toJson(*a)) << vip << " " << int(proto) << " " << sport;
      }
    }
  }
}

TEST(BpfExplain, OneRulePairPerBucketCountAndThePlainFourTupleAsFlowKey) {
  auto h = bpf::classifierHashes(Family::V6, 7, {16, 64});
  ASSERT_EQ(h.buckets.size(), 4u);
  using P = dp::BucketHashRule::Protocols;
  EXPECT_EQ(h.buckets[0].protocols, P::WithPorts);
  EXPECT_EQ(h.buckets[0].hash.mod, 16u);
  EXPECT_EQ(h.buckets[0].hash.fields,
            (std::vector<std::string>{"ip6 saddr", "ip6 daddr", "th sport", "th dport"}));
  EXPECT_EQ(h.buckets[1].protocols, P::WithoutPorts);
  EXPECT_EQ(h.buckets[1].hash.fields, (std::vector<std::string>{"ip6 saddr", "ip6 daddr"}));
  EXPECT_EQ(h.buckets[3].hash.mod, 64u);
  for (const auto& r : h.buckets) {
    EXPECT_EQ(r.hash.seed, 7u);
    EXPECT_EQ(r.hash.offset, kBucketMarkBase);
  }
  ASSERT_EQ(h.flowKey.size(), 4u);
  EXPECT_FALSE(h.flowKey[0].hash);
  EXPECT_EQ(h.flowKey[3].field, "th dport");
  // No VIP with a count: no rule (explain then says the address is no VIP of this router).
  EXPECT_TRUE(bpf::classifierHashes(Family::V4, 7, {}).buckets.empty());
}

/** The program's flow map key of a packet, built field by field as router.bpf.c parses it. */
std::vector<uint8_t> programKey(const IpAddress& src, const IpAddress& dst, uint16_t sport,
                                uint16_t dport) {
  kst_flow_key k{};
  auto s = bpf::mapKey(src), d = bpf::mapKey(dst);
  std::memcpy(k.saddr, s.data(), 16);
  std::memcpy(k.daddr, d.data(), 16);
  k.sport = htons(sport);
  k.dport = htons(dport);
  k.v4 = src.isV4();
  std::vector<uint8_t> out(sizeof k);
  std::memcpy(out.data(), &k, sizeof k);
  return out;
}

TEST(BpfExplain, TheFlowKeyExplainBuildsIsTheProgramsFlowMapKey) {
  for (const auto& [vip, src] : {std::pair{kV4, std::string("198.18.0.10")},
                                 std::pair{kV6, std::string("2001:db8:f::10")}}) {
    const Family f = ip(vip).family();
    auto q = query(vip, src, 40000, 8080, 17);
    auto regs = flowKey(q, bpf::classifierHashes(f, 0x2a, {64}));
    ASSERT_TRUE(regs && *regs);
    auto k = bpf::flowMapKey(f, **regs);
    ASSERT_TRUE(k);
    EXPECT_EQ(*k, programKey(ip(src), ip(vip), 40000, 8080)) << vip;
    // Another port, another key; the other family's length is no key.
    EXPECT_NE(*bpf::flowMapKey(f, **flowKey(query(vip, src, 40001, 8080, 17),
                                            bpf::classifierHashes(f, 0x2a, {64}))),
              *k);
    EXPECT_FALSE(bpf::flowMapKey(f == Family::V4 ? Family::V6 : Family::V4, **regs));
  }
  EXPECT_FALSE(bpf::flowMapKey(Family::V4, std::vector<uint8_t>(15)));
  EXPECT_FALSE(bpf::flowMapKey(Family::V6, {}));
}

TEST(BpfExplain, APinIsFollowedWithinTheFlowTimeoutOnly) {
  const uint64_t s = 1'000'000'000;
  EXPECT_TRUE(bpf::pinValid(5 * s, 5 * s, 30 * s));
  EXPECT_TRUE(bpf::pinValid(5 * s, 35 * s, 30 * s));
  EXPECT_FALSE(bpf::pinValid(5 * s, 35 * s + 1, 30 * s));
}

TEST(BpfExplain, StatusNamesTheDatapathAndAMissingProgram) {
  NodeStatus s;
  s.router = true;
  s.datapath = "bpf";
  EXPECT_EQ(toJson(s)["router"]["datapath"], "bpf");
  EXPECT_EQ(toJson(s)["router"]["table"], false);
  EXPECT_NE(toText(s).find("no program of the daemon pinned"), std::string::npos);
  s.datapath = "nft";
  EXPECT_NE(toText(s).find("no table of the daemon"), std::string::npos);
  // Through nodeStatus: the datapath the command was given.
  Router r;
  StatusSources src;
  src.router = &r.rec;
  src.datapath = "bpf";
  EXPECT_EQ(nodeStatus(src).datapath, "bpf");
}

TEST(BpfExplain, NoPinnedProgramIsAClearErrorNotACrash) {
  BpfInspector insp("/nonexistent/kst-pins");
  auto c = insp.classifier(Family::V4);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("no program of the daemon pinned under /nonexistent/kst-pins"),
            std::string::npos);
  std::vector<uint8_t> regs(16);
  EXPECT_FALSE(insp.flowMark(Family::V4, regs));
  EXPECT_FALSE(insp.flowMark(Family::V4, std::vector<uint8_t>(3)));  // not a key
}

}  // namespace
}  // namespace kst
