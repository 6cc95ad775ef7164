// BpfClassifier and the tc-BPF program against the kernel (root), in private network and mount
// namespaces of the test process (unshare: a bpffs of its own, nothing outlives the test).
// Packets go through the loaded program with BPF_PROG_TEST_RUN, no interface involved:
//   - the bucket the program picks is the one hashing/jhash.h computes for nft's
//     `jhash … mod B seed S`, for random IPv4/IPv6 TCP/UDP/SCTP tuples, ICMP and non-first
//     fragments (addresses only), at several bucket counts;
//   - counters are exact (packets and the bytes nft counts), refusals by reason and per VIP;
//   - flow pins: valid while their slot is live, hashed again once it is released;
//   - the maps read back (observe) as exactly the state written: zero element changes, also
//     after incremental changes; another program build reads as a different skeleton id;
//     Delete removes every pin.
#include <gtest/gtest.h>

#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "desired/nft_render.h"
#include "hashing/jhash.h"
#include "linux/bpf_classifier.h"

namespace kst {
namespace {

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

constexpr uint32_t kSeed = 0x2a;

struct Packet {
  IpAddress src, dst;
  uint8_t proto = 6;  // TCP
  uint16_t sport = 0, dport = 0;
  bool laterFragment = false;  // a non-first fragment (no transport header)
  size_t payload = 20;
};

std::vector<uint8_t> frame(const Packet& p) {
  std::vector<uint8_t> f(14, 0);
  const bool v4 = p.src.isV4();
  f[12] = v4 ? 0x08 : 0x86;
  f[13] = v4 ? 0x00 : 0xdd;
  std::vector<uint8_t> l4(8 + p.payload, 0);
  l4[0] = uint8_t(p.sport >> 8);
  l4[1] = uint8_t(p.sport);
  l4[2] = uint8_t(p.dport >> 8);
  l4[3] = uint8_t(p.dport);
  if (v4) {
    std::vector<uint8_t> h(20, 0);
    h[0] = 0x45;
    const size_t total = 20 + l4.size();
    h[2] = uint8_t(total >> 8);
    h[3] = uint8_t(total);
    if (p.laterFragment) h[7] = 0x10;  // offset 16 (× 8 bytes)
    h[8] = 64;
    h[9] = p.proto;
    std::memcpy(&h[12], p.src.data(), 4);
    std::memcpy(&h[16], p.dst.data(), 4);
    f.insert(f.end(), h.begin(), h.end());
  } else {
    std::vector<uint8_t> h(40, 0);
    h[0] = 0x60;
    size_t plen = l4.size() + (p.laterFragment ? 8 : 0);
    h[4] = uint8_t(plen >> 8);
    h[5] = uint8_t(plen);
    h[6] = p.laterFragment ? 44 : p.proto;
    h[7] = 64;
    std::memcpy(&h[8], p.src.data(), 16);
    std::memcpy(&h[24], p.dst.data(), 16);
    f.insert(f.end(), h.begin(), h.end());
    if (p.laterFragment) {
      uint8_t fh[8] = {p.proto, 0, 0, 0x10, 0, 0, 0, 1};  // offset 2 (× 8 bytes)
      f.insert(f.end(), fh, fh + 8);
    }
  }
  f.insert(f.end(), l4.begin(), l4.end());
  return f;
}

/** The bytes nft's counters see: the IP packet. */
uint64_t ipBytes(const Packet& p) { return frame(p).size() - 14; }

bool ported(const Packet& p) {
  return !p.laterFragment && (p.proto == 6 || p.proto == 17 || p.proto == 132);
}

/** The bucket nft picks (hashing/jhash.h, bit-exact with the kernel's nft_jhash_eval). */
uint32_t nftBucket(const Packet& p, uint32_t buckets) {
  NftJhash h{buckets, kSeed, kBucketMarkBase};
  return h.eval(flowHashInput(p.src, p.dst, ported(p), p.sport, p.dport).bytes()) - kBucketMarkBase;
}

class BpfClassifierTest : public ::testing::Test {
 protected:
  std::string pinRoot, pinDir;

  void SetUp() override {
    if (getuid() != 0) GTEST_SKIP() << "needs root (CTest label privileged)";
    ASSERT_EQ(unshare(CLONE_NEWNET | CLONE_NEWNS), 0);
    ASSERT_EQ(mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0);
    pinRoot = "/tmp/kbc" + std::to_string(getpid()) + "-bpffs";
    std::filesystem::create_directories(pinRoot);
    ASSERT_EQ(mount("bpf", pinRoot.c_str(), "bpf", 0, nullptr), 0);
    pinDir = pinRoot + "/kst";
    cfg.mode = Mode::Gre;  // no collect-md redirect: the program marks the packet
    cfg.hashSeed = kSeed;
  }
  void TearDown() override {
    if (!pinRoot.empty()) {
      umount2(pinRoot.c_str(), MNT_DETACH);
      std::filesystem::remove_all(pinRoot);
    }
  }
  BpfOptions opts() const { return {pinDir, {"kbc-none"}}; }

  /** Runs one packet: the program's verdict and the mark it left. */
  std::pair<int, uint32_t> run(const Packet& p) {
    int fd = bpf_obj_get((pinDir + "/prog").c_str());
    EXPECT_GE(fd, 0);
    auto data = frame(p);
    __sk_buff ctx{};
    __sk_buff out{};
    DECLARE_LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = data.data(),
                        .data_size_in = uint32_t(data.size()), .ctx_in = &ctx, .ctx_out = &out,
                        .ctx_size_in = sizeof(ctx), .ctx_size_out = sizeof(out));
    int r = bpf_prog_test_run_opts(fd, &o);
    close(fd);
    EXPECT_EQ(r, 0) << std::strerror(errno);
    return {int(o.retval), out.mark};
  }

  DataplaneConfig cfg;
};

dp::NftState present(const DataplaneConfig& cfg) {
  dp::NftState s;
  s.present = true;
  s.skeleton = renderSkeleton(cfg);
  s.skeletonId = skeletonId(s.skeleton);
  return s;
}

/** One VIP with B buckets, bucket b → mark 1000 + b (no slot live). */
void addVip(dp::NftState& s, const IpAddress& vip, uint32_t b) {
  s.vips.insert(vip);
  s.vipBuckets[vip] = b;
  std::vector<uint32_t> marks(b);
  for (uint32_t i = 0; i < b; ++i) marks[i] = 1000 + i;
  s.buckets.setVip(vip, std::move(marks));
}

TEST_F(BpfClassifierTest, BucketIsNftsJhashBitForBit) {
  BpfClassifier c(cfg, opts());
  dp::NftState want = present(cfg);
  const IpAddress v4a = ip("203.0.113.10"), v4b = ip("203.0.113.11"), v6 = ip("2001:db8:ffff::10");
  addVip(want, v4a, 64);
  addVip(want, v4b, 1024);
  addVip(want, v6, 256);
  ASSERT_TRUE(c.applyStep(dp::TableStep::Create, want.skeletonId, want.skeleton,
                          nftElementChanges(want, dp::NftState{})));
  std::mt19937 rng(17);
  auto rnd = [&](uint32_t n) { return uint32_t(rng() % n); };
  const uint8_t protos[] = {6, 17, 132, 1, 58, 47};
  int checked = 0;
  for (int i = 0; i < 3000; ++i) {
    Packet p;
    const int which = i % 3;
    p.dst = which == 0 ? v4a : which == 1 ? v4b : v6;
    if (p.dst.isV4()) {
      uint8_t a[4] = {uint8_t(rnd(224)), uint8_t(rnd(256)), uint8_t(rnd(256)), uint8_t(rnd(256))};
      p.src = IpAddress::fromBytes(Family::V4, a);
    } else {
      uint8_t a[16];
      for (auto& b : a) b = uint8_t(rnd(256));
      a[0] = 0x20;
      p.src = IpAddress::fromBytes(Family::V6, a);
    }
    p.proto = protos[rnd(6)];
    if (p.dst.isV6() && p.proto == 1) p.proto = 58;
    p.sport = uint16_t(rnd(65536));
    p.dport = uint16_t(rnd(65536));
    p.laterFragment = rnd(8) == 0;
    const uint32_t b = want.vipBuckets[p.dst];
    auto [verdict, mark] = run(p);
    ASSERT_EQ(verdict, TC_ACT_OK) << i;
    ASSERT_EQ(mark, 1000 + nftBucket(p, b))
        << "packet " << i << " " << p.src.str() << " → " << p.dst.str() << " proto "
        << int(p.proto) << " ports " << p.sport << "," << p.dport << " fragment "
        << p.laterFragment << " B " << b;
    ++checked;
  }
  EXPECT_EQ(checked, 3000);
  // Not a VIP: untouched.
  Packet other{ip("198.18.0.10"), ip("203.0.113.99"), 6, 1, 2};
  EXPECT_EQ(run(other), std::make_pair(int(TC_ACT_OK), 0u));
}

TEST_F(BpfClassifierTest, CountersAreExactAndRefusalsCountedByReason) {
  BpfClassifier c(cfg, opts());
  dp::NftState want = present(cfg);
  const IpAddress vip = ip("203.0.113.10"), ranged = ip("203.0.113.12"), bare = ip("203.0.113.13");
  addVip(want, vip, 64);
  addVip(want, ranged, 64);
  want.vips.insert(bare);  // in the VIP set, no bucket count: refused (no_bucket)
  for (uint32_t b = 0; b < 64; ++b) {
    want.endpoints[vip][1000 + b] = ip(b % 2 ? "198.19.1.2" : "198.19.2.2");
    want.endpoints[ranged][1000 + b] = ip("198.19.1.3");
  }
  want.sourceRanges[ranged] = {{ip("198.18.0.10"), ip("198.18.0.20")}};
  ASSERT_TRUE(c.applyStep(dp::TableStep::Create, want.skeletonId, want.skeleton,
                          nftElementChanges(want, dp::NftState{})));
  uint64_t bytes = 0, ep1 = 0, ep2 = 0;
  for (int i = 0; i < 37; ++i) {
    Packet p{ip("198.18.0.10"), vip, 17, uint16_t(30000 + i), 8080, false, size_t(i * 3)};
    auto [verdict, mark] = run(p);
    ASSERT_EQ(verdict, TC_ACT_OK);
    bytes += ipBytes(p);
    ((mark - 1000) % 2 ? ep1 : ep2) += 1;
  }
  Packet ok{ip("198.18.0.15"), ranged, 6, 1234, 80};
  Packet bad{ip("198.18.0.21"), ranged, 6, 1234, 80};
  Packet icmp{ip("198.18.0.99"), ranged, 1};
  Packet none{ip("198.18.0.10"), bare, 6, 1, 2};
  EXPECT_EQ(run(ok).first, TC_ACT_OK);
  EXPECT_EQ(run(bad).first, TC_ACT_SHOT);
  EXPECT_EQ(run(icmp).first, TC_ACT_SHOT);  // every protocol is filtered
  EXPECT_EQ(run(none).first, TC_ACT_SHOT);
  auto snap = c.readCounters();
  ASSERT_TRUE(snap) << snap.error().message;
  EXPECT_EQ(snap->vip[vip], (dp::CounterValue{37, bytes}));
  using EpKey = std::pair<IpAddress, IpAddress>;
  EXPECT_EQ(snap->endpoint[EpKey(vip, ip("198.19.1.2"))].packets, ep1);
  EXPECT_EQ(snap->endpoint[EpKey(vip, ip("198.19.2.2"))].packets, ep2);
  EXPECT_EQ(ep1 + ep2, 37u);
  EXPECT_EQ(snap->vip[ranged].packets, 3u);
  EXPECT_EQ(snap->endpoint[EpKey(ranged, ip("198.19.1.3"))], (dp::CounterValue{1, ipBytes(ok)}));
  EXPECT_EQ(snap->refusedByVip[ranged], (dp::CounterValue{2, ipBytes(bad) + ipBytes(icmp)}));
  EXPECT_EQ(snap->refused["source_range"].packets, 2u);
  EXPECT_EQ(snap->refused["no_bucket"], (dp::CounterValue{1, ipBytes(none)}));
  EXPECT_EQ(snap->refusedByVip[bare].packets, 1u);
  EXPECT_EQ(snap->refusedByVip[vip].packets, 0u);
  EXPECT_EQ(snap->flows4, 37u + 1u);  // the UDP flows and the allowed TCP one are pinned
  EXPECT_EQ(snap->newFlows, 37u + 1u);
  EXPECT_EQ(snap->flowLimit, cfg.flowTableSize);
  // Packets of flows already pinned are no new flows.
  for (int i = 0; i < 5; ++i)
    run(Packet{ip("198.18.0.10"), vip, 17, uint16_t(30000 + i), 8080});
  run(ok);
  auto again = c.readCounters();
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(again->newFlows, 37u + 1u);
  EXPECT_EQ(again->vip[vip].packets, 37u + 5u);
}

TEST_F(BpfClassifierTest, PinsHoldWhileTheSlotIsLiveAndMoveWhenReleased) {
  BpfClassifier c(cfg, opts());
  dp::NftState want = present(cfg);
  const IpAddress vip = ip("2001:db8:ffff::10");
  want.vips.insert(vip);
  want.vipBuckets[vip] = 64;
  want.buckets.setVip(vip, std::vector<uint32_t>(64, 1000));
  want.live = {{vip, 1000}, {vip, 1001}};
  want.endpoints[vip] = {{1000, ip("2001:db8:1::2")}, {1001, ip("2001:db8:2::2")}};
  ASSERT_TRUE(c.applyStep(dp::TableStep::Create, want.skeletonId, want.skeleton,
                          nftElementChanges(want, dp::NftState{})));
  Packet p{ip("2001:db8:f::10"), vip, 6, 40000, 8080};
  ASSERT_EQ(run(p).second, 1000u);  // pinned to 1000
  // Every bucket now points at 1001: the pin holds while 1000 is live (draining).
  dp::NftState next = want;
  next.buckets.setVip(vip, std::vector<uint32_t>(64, 1001));
  ASSERT_TRUE(c.applyElements(nftElementChanges(next, want)));
  EXPECT_EQ(run(p).second, 1000u);
  Packet fresh{ip("2001:db8:f::10"), vip, 6, 40001, 8080};
  EXPECT_EQ(run(fresh).second, 1001u);
  // Released: the pin is no longer valid, the flow is hashed again (and pinned anew).
  dp::NftState released = next;
  released.live.erase({vip, 1000});
  released.endpoints[vip].erase(1000);
  ASSERT_TRUE(c.applyElements(nftElementChanges(released, next)));
  EXPECT_EQ(run(p).second, 1001u);
  EXPECT_EQ(run(p).second, 1001u);
}

TEST_F(BpfClassifierTest, MapsReadBackExactlyAndOtherBuildsRebuild) {
  BpfClassifier c(cfg, opts());
  auto empty = c.observe();
  ASSERT_TRUE(empty);
  EXPECT_FALSE(empty->present);
  dp::NftState want = present(cfg);
  const IpAddress a = ip("203.0.113.10"), b = ip("2001:db8:ffff::10"), d = ip("203.0.113.30");
  addVip(want, a, 64);
  addVip(want, b, 128);
  want.vips.insert(d);
  want.live = {{a, 1000}, {a, 1003}, {b, 1001}};
  want.endpoints[a] = {{1000, ip("198.19.1.2")}, {1003, ip("2001:db8:2::2")}};
  want.endpoints[b] = {{1001, ip("2001:db8:1::2")}};
  want.sourceRanges[a] = {{ip("10.0.0.0"), ip("10.0.0.255")}, {ip("10.0.1.7"), ip("10.0.3.200")}};
  want.sourceRanges[b] = {{ip("2001:db8:f::1"), ip("2001:db8:f::ffff:1234")}};
  want.sourceRanges[d] = {};  // filtered, nothing allowed
  ASSERT_TRUE(c.applyStep(dp::TableStep::Create, want.skeletonId, want.skeleton,
                          nftElementChanges(want, dp::NftState{})));
  auto check = [&](const dp::NftState& expect) {
    auto got = c.observe();
    ASSERT_TRUE(got) << got.error().message;
    EXPECT_TRUE(got->present);
    EXPECT_EQ(got->skeletonId, expect.skeletonId);
    EXPECT_EQ(got->vips, expect.vips);
    EXPECT_EQ(got->vipBuckets, expect.vipBuckets);
    EXPECT_TRUE(got->buckets == expect.buckets);
    EXPECT_EQ(got->endpoints, expect.endpoints);
    EXPECT_EQ(got->live, expect.live);
    EXPECT_EQ(got->sourceRanges, expect.sourceRanges);
    EXPECT_EQ(nftElementChanges(expect, *got).size(), 0u);
    EXPECT_EQ(nftTableStep(expect, *got), dp::TableStep::Keep);
  };
  check(want);
  // Incremental: an endpoint leaves, a count changes, a range goes, a VIP goes.
  dp::NftState next = want;
  next.endpoints[a].erase(1003);
  next.live.erase({a, 1003});
  next.vipBuckets[b] = 256;
  std::vector<uint32_t> marks(256, 1001);
  next.buckets.setVip(b, marks);
  next.sourceRanges[a].pop_back();
  next.sourceRanges.erase(d);
  next.vips.erase(d);
  ASSERT_TRUE(c.applyElements(nftElementChanges(next, want)));
  check(next);
  // Another program build or mode: not adopted (the reconciler rebuilds).
  DataplaneConfig other = cfg;
  other.mode = Mode::VxlanGpe;
  BpfClassifier c2(other, opts());
  auto seen = c2.observe();
  ASSERT_TRUE(seen);
  EXPECT_NE(seen->skeletonId, next.skeletonId);
  EXPECT_EQ(nftTableStep(next, *seen), dp::TableStep::Rebuild);
  // Delete: nothing left.
  ASSERT_TRUE(c.applyStep(dp::TableStep::Delete, {}, {}, {}));
  EXPECT_FALSE(std::filesystem::exists(pinDir));
  auto gone = c.observe();
  ASSERT_TRUE(gone);
  EXPECT_FALSE(gone->present);
}

TEST_F(BpfClassifierTest, ManyBucketsGoInAndComeBackInBatches) {
  BpfClassifier c(cfg, opts());
  dp::NftState want = present(cfg);
  for (uint32_t v = 0; v < 2000; ++v) {
    uint8_t a[4] = {10, uint8_t(v >> 8), uint8_t(v), 1};
    const IpAddress vip = IpAddress::fromBytes(Family::V4, a);
    want.vips.insert(vip);
    want.vipBuckets[vip] = 64;
    std::vector<uint32_t> marks(64);
    for (uint32_t b = 0; b < 64; ++b) marks[b] = 1000 + (v + b) % 7;
    want.buckets.setVip(vip, std::move(marks));
  }
  ASSERT_TRUE(c.applyStep(dp::TableStep::Create, want.skeletonId, want.skeleton,
                          nftElementChanges(want, dp::NftState{})));
  auto got = c.observe();
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got->buckets.size(), 128000u);
  EXPECT_EQ(nftElementChanges(want, *got).size(), 0u);
}

/** The filter still attached while its pins are gone (they lived in a bpffs that went away:
 *  `ip netns exec` mounts its own /sys, a container without the hostPath): observe() must
 *  report it, so that a pass rebuilds it and cleanup (or the other datapath) removes it,
 *  instead of leaving a program with stale maps on the interface. */
TEST_F(BpfClassifierTest, FilterWithoutPinsIsReportedRebuiltAndRemoved) {
  ASSERT_EQ(std::system("ip link add kbc-in type veth peer name kbc-in2 && ip link set kbc-in up"), 0);
  auto attached = [] {
    return std::system("tc filter show dev kbc-in ingress 2>/dev/null | grep -q kst_router") == 0;
  };
  BpfClassifier c(cfg, BpfOptions{pinDir, {"kbc-in"}});
  dp::NftState want = present(cfg);
  addVip(want, ip("203.0.113.10"), 64);
  ASSERT_TRUE(c.applyStep(dp::TableStep::Create, want.skeletonId, want.skeleton,
                          nftElementChanges(want, dp::NftState{})));
  ASSERT_TRUE(attached());
  std::filesystem::remove_all(pinDir);  // the pins vanish, the filter stays
  ASSERT_TRUE(attached());
  auto seen = c.observe();
  ASSERT_TRUE(seen) << seen.error().message;
  EXPECT_TRUE(seen->present);
  EXPECT_NE(seen->skeletonId, want.skeletonId);
  EXPECT_EQ(nftTableStep(want, *seen), NftTableStep::Rebuild);
  // A pass rebuilds it: fresh pinned maps with the elements, the filter replaced in place.
  ASSERT_TRUE(c.applyStep(dp::TableStep::Rebuild, want.skeletonId, want.skeleton,
                          nftElementChanges(want, dp::NftState{})));
  auto back = c.observe();
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->skeletonId, want.skeletonId);
  EXPECT_EQ(back->vips, want.vips);
  EXPECT_TRUE(attached());
  // Orphaned again, then deleted (cleanup): nothing attached, nothing present.
  std::filesystem::remove_all(pinDir);
  auto orphan = c.observe();
  ASSERT_TRUE(orphan && orphan->present);
  EXPECT_EQ(nftTableStep(dp::NftState{}, *orphan), NftTableStep::Delete);
  ASSERT_TRUE(c.applyStep(dp::TableStep::Delete, {}, {}, {}));
  EXPECT_FALSE(attached());
  auto gone = c.observe();
  ASSERT_TRUE(gone) << gone.error().message;
  EXPECT_FALSE(gone->present);
}

}  // namespace
}  // namespace kst
