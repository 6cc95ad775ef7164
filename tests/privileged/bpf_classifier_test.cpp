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
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <net/if.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <set>

#include "dataplane/modes.h"
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


// ---- The header path (--bpf-encap headers): the outer headers the mode's collect-md device
// would write, checked byte by byte on BPF_PROG_TEST_RUN's output packet; what the program
// cannot forward with the stack's semantics keeps the slot mark instead.

uint16_t csum16(const uint8_t* p, size_t n, uint32_t sum = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(p[i] << 8 | p[i + 1]);
  if (n % 2) sum += uint32_t(p[n - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(~sum);
}

class BpfHeaderPathTest : public BpfClassifierTest {
 protected:
  void SetUp() override {
    BpfClassifierTest::SetUp();
    if (IsSkipped()) return;
    // The underlay: a veth pair (its own namespace), the router's address, a permanent
    // neighbour for each pod; forwarding on. The "tunnel devices" are veths here: the
    // classifier reads only their MTU (the inner limit the mark path's device would apply).
    const std::string pre = "krh" + std::to_string(getpid() % 100000);
    ul = pre + "u";
    cfg.linkPrefix = "krh";
    const std::string cmds[] = {
        "ip link add " + ul + " type veth peer name " + pre + "p",
        "ip link set " + ul + " up", "ip link set " + pre + "p up",
        "ip addr add 198.19.0.1/24 dev " + ul,
        "ip addr add 2001:db8:19::1/64 dev " + ul + " nodad",
        "ip neigh add 198.19.0.2 lladdr 02:00:00:00:00:02 dev " + ul + " nud permanent",
        "ip neigh add 2001:db8:19::2 lladdr 02:00:00:00:00:02 dev " + ul + " nud permanent",
        "sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv6.conf.all.forwarding=1",
        "sysctl -qw net.ipv4.ip_local_port_range='40000 50000'",
    };
    for (auto& c : cmds) ASSERT_EQ(std::system(c.c_str()), 0) << c;
    ulIndex = int(if_nametoindex(ul.c_str()));
    ASSERT_GT(ulIndex, 0);
  }
  void tunnelDevice(const std::string& name, int mtu) {
    std::string c = "ip link add " + name + " mtu " + std::to_string(mtu) + " type veth peer name " +
                    name + "p";
    ASSERT_EQ(std::system(c.c_str()), 0) << c;
  }
  /** A VIP whose every bucket is slot 1000 + b % 2, endpoint pod. */
  void serve(BpfClassifier& c, const IpAddress& vip, const IpAddress& pod) {
    dp::NftState want = present(cfg);
    addVip(want, vip, 64);
    for (uint32_t b = 0; b < 64; ++b) {
      want.endpoints[vip][1000 + b] = pod;
      want.live.insert({vip, 1000 + b});
    }
    ASSERT_TRUE(c.applyStep(dp::TableStep::Create, want.skeletonId, want.skeleton,
                            nftElementChanges(want, dp::NftState{})));
  }
  struct Out {
    int verdict;
    uint32_t mark;
    std::vector<uint8_t> data;
  };
  /** Runs one frame received on the underlay interface (ctx ifindex). */
  Out runFrame(std::vector<uint8_t> in, uint32_t gsoSize = 0, uint32_t gsoSegs = 0) {
    int fd = bpf_obj_get((pinDir + "/prog").c_str());
    EXPECT_GE(fd, 0);
    std::vector<uint8_t> buf(in.size() + 256);
    __sk_buff ctx{};
    ctx.ifindex = uint32_t(ulIndex);
    ctx.gso_size = gsoSize;
    ctx.gso_segs = gsoSegs;
    __sk_buff out{};
    DECLARE_LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = in.data(),
                        .data_out = buf.data(), .data_size_in = uint32_t(in.size()),
                        .data_size_out = uint32_t(buf.size()), .ctx_in = &ctx, .ctx_out = &out,
                        .ctx_size_in = sizeof(ctx), .ctx_size_out = sizeof(out));
    int r = bpf_prog_test_run_opts(fd, &o);
    close(fd);
    EXPECT_EQ(r, 0) << std::strerror(errno);
    buf.resize(o.data_size_out);
    return {int(o.retval), out.mark, buf};
  }
  /** frame() with a valid IPv4 header checksum, the given TTL / hop limit and TOS. */
  std::vector<uint8_t> innerFrame(const Packet& p, uint8_t ttl, uint8_t tos = 0) {
    auto f = frame(p);
    if (p.src.isV4()) {
      f[14 + 1] = tos;
      f[14 + 8] = ttl;
      f[14 + 10] = f[14 + 11] = 0;
      uint16_t c = csum16(&f[14], 20);
      f[14 + 10] = uint8_t(c >> 8);
      f[14 + 11] = uint8_t(c);
    } else {
      f[14 + 7] = ttl;
    }
    return f;
  }
  std::string ul;
  int ulIndex = 0;
};

TEST_F(BpfHeaderPathTest, VxlanGpeOverIpv4IsTheDevicesBytes) {
  cfg.mode = Mode::VxlanGpe;
  tunnelDevice(cfg.tunnelLinkName(), 1464);
  BpfClassifier c(cfg, opts());
  const IpAddress vip = ip("203.0.113.10"), pod = ip("198.19.0.2");
  serve(c, vip, pod);
  Packet p{ip("198.18.0.10"), vip, 17, 33333, 8080, false, 100};
  auto in = innerFrame(p, 20, 0x03 /* ECN CE */);
  Out o = runFrame(in);
  ASSERT_EQ(o.verdict, TC_ACT_REDIRECT);
  EXPECT_EQ(o.mark, 0u);
  ASSERT_EQ(o.data.size(), in.size() + 36);
  const uint8_t* ip4 = &o.data[14];
  EXPECT_EQ(o.data[12], 0x08);
  EXPECT_EQ(o.data[13], 0x00);
  EXPECT_EQ(ip4[0], 0x45);
  EXPECT_EQ(ip4[1], 0x02) << "CE inside: ECT(0) outside";
  EXPECT_EQ(size_t(ip4[2] << 8 | ip4[3]), in.size() - 14 + 36);
  EXPECT_EQ(ip4[6] & 0x40, 0) << "DF clear, as the collect-md device sends";
  EXPECT_EQ(ip4[8], cfg.ttl);
  EXPECT_EQ(ip4[9], 17);
  EXPECT_EQ(csum16(ip4, 20), 0) << "outer header checksum";
  EXPECT_EQ(IpAddress::fromBytes(Family::V4, ip4 + 12), ip("198.19.0.1")) << "route's source";
  EXPECT_EQ(IpAddress::fromBytes(Family::V4, ip4 + 16), pod);
  const uint8_t* udp = ip4 + 20;
  const uint16_t sport = uint16_t(udp[0] << 8 | udp[1]);
  EXPECT_GE(sport, 40000);
  EXPECT_LT(sport, 50000);
  EXPECT_EQ(udp[2] << 8 | udp[3], cfg.vxlanPort);
  EXPECT_EQ(size_t(udp[4] << 8 | udp[5]), in.size() - 14 + 16);
  EXPECT_EQ(udp[6] | udp[7], 0) << "no UDP checksum over IPv4";
  const uint8_t gpe[8] = {0x0c, 0, 0, 1, 0, 0, 0, 0};
  EXPECT_EQ(std::memcmp(udp + 8, gpe, 8), 0);
  const uint8_t* inner = udp + 16;
  EXPECT_EQ(inner[8], 19) << "inner TTL decremented";
  EXPECT_EQ(csum16(inner, 20), 0) << "inner checksum fixed";
  EXPECT_EQ(std::memcmp(inner + 20, &in[14 + 20], in.size() - 34), 0) << "payload intact";
  // Source-port entropy: the same flow keeps its port, other flows spread over the range.
  Out again = runFrame(in);
  ASSERT_EQ(again.data.size(), o.data.size());
  EXPECT_EQ(std::memcmp(&again.data[34], &o.data[34], o.data.size() - 34), 0);
  EXPECT_NE(again.data[18] << 8 | again.data[19], o.data[18] << 8 | o.data[19])
      << "the outer IPv4 id varies (DF is clear)";
  std::set<uint16_t> ports;
  for (uint16_t i = 0; i < 32; ++i) {
    Packet q = p;
    q.sport = uint16_t(20000 + i);
    Out r = runFrame(innerFrame(q, 20));
    ASSERT_EQ(r.verdict, TC_ACT_REDIRECT);
    ports.insert(uint16_t(r.data[34] << 8 | r.data[35]));
  }
  EXPECT_GE(ports.size(), 24u);

  // The stack's way (slot mark, packet untouched): TTL 1, over the device MTU, no route.
  for (uint8_t ttl : {1, 0}) {
    Out t = runFrame(innerFrame(p, ttl));
    EXPECT_EQ(t.verdict, TC_ACT_OK);
    EXPECT_GE(t.mark, 1000u);
    EXPECT_EQ(t.data, innerFrame(p, ttl));
  }
  Packet fits = p, big = p;
  fits.payload = 1464 - 28;
  big.payload = 1464 - 28 + 1;
  EXPECT_EQ(runFrame(innerFrame(fits, 20)).verdict, TC_ACT_REDIRECT);
  Out b = runFrame(innerFrame(big, 20));
  EXPECT_EQ(b.verdict, TC_ACT_OK);
  EXPECT_GE(b.mark, 1000u);
  EXPECT_EQ(b.data.size(), innerFrame(big, 20).size());
  // A GSO packet is judged by one segment: TCP, 20 + 20 header bytes + gso_size.
  Packet bulk{ip("198.18.0.10"), vip, 6, 33334, 8080, false, 3000};
  auto tcpFrame = innerFrame(bulk, 20);
  tcpFrame[14 + 20 + 12] = 0x50;  // data offset 5 words
  Out over = runFrame(tcpFrame, 1464 - 40 + 1, 3);
  EXPECT_EQ(over.verdict, TC_ACT_OK) << "a segment over the tunnel MTU: the stack's way";
  EXPECT_GE(over.mark, 1000u);
  // (Segments that fit go on to bpf_skb_adjust_room, which refuses test_run's GSO skb — it
  // has no GSO type — leaving it unchanged for the stack; real TSO/GRO packets are carried by
  // bench/dataplane.sh's TCP runs.)
  Out seg = runFrame(tcpFrame, 1464 - 40, 3);
  EXPECT_TRUE(seg.verdict == TC_ACT_REDIRECT || (seg.verdict == TC_ACT_OK && seg.data == tcpFrame))
      << "a refused adjust_room must leave the packet unchanged";
  Packet udpBulk = bulk;
  udpBulk.proto = 17;
  Out ugso = runFrame(innerFrame(udpBulk, 20), 1000, 3);
  EXPECT_EQ(ugso.verdict, TC_ACT_OK) << "UDP GSO: the stack's way";
  ASSERT_EQ(std::system(("ip neigh del 198.19.0.2 dev " + ul).c_str()), 0);
  ASSERT_EQ(std::system(("ip addr flush dev " + ul).c_str()), 0);
  Out nr = runFrame(innerFrame(p, 20));
  EXPECT_EQ(nr.verdict, TC_ACT_OK) << "no route to the pod";
  EXPECT_GE(nr.mark, 1000u);
}

TEST_F(BpfHeaderPathTest, IpipAndGreFlowHeaders) {
  for (Mode mode : {Mode::Ipip, Mode::GreFlow}) {
    SCOPED_TRACE(modeTraits(mode).name);
    cfg.mode = mode;
    const ModeTraits& t = modeTraits(mode);
    tunnelDevice(cfg.tunnelLinkName(), mode == Mode::Ipip ? 1480 : 1476);
    tunnelDevice(cfg.linkPrefix + t.suffix6, mode == Mode::Ipip ? 1460 : 1456);
    BpfClassifier c(cfg, opts());
    const IpAddress vip = ip("203.0.113.10"), pod = ip("198.19.0.2");
    const IpAddress vip6 = ip("2001:db8:ffff::10"), pod6 = ip("2001:db8:19::2");
    serve(c, vip, pod);
    // IPv4 outer, IPv4 inner.
    Packet p{ip("198.18.0.10"), vip, 6, 40000, 80, false, 60};
    auto in = innerFrame(p, 64);
    Out o = runFrame(in);
    ASSERT_EQ(o.verdict, TC_ACT_REDIRECT);
    const size_t l4 = mode == Mode::Ipip ? 0 : 4;
    ASSERT_EQ(o.data.size(), in.size() + 20 + l4);
    const uint8_t* ip4 = &o.data[14];
    EXPECT_EQ(ip4[9], mode == Mode::Ipip ? 4 : 47);
    EXPECT_EQ(ip4[8], cfg.ttl);
    EXPECT_EQ(csum16(ip4, 20), 0);
    EXPECT_EQ(IpAddress::fromBytes(Family::V4, ip4 + 12), ip("198.19.0.1"));
    EXPECT_EQ(IpAddress::fromBytes(Family::V4, ip4 + 16), pod);
    if (mode == Mode::GreFlow) {
      const uint8_t gre[4] = {0, 0, 0x08, 0x00};
      EXPECT_EQ(std::memcmp(ip4 + 20, gre, 4), 0) << "no key, no checksum";
    }
    EXPECT_EQ(ip4[20 + l4 + 8], 63);
    EXPECT_EQ(csum16(ip4 + 20 + l4, 20), 0);
    // IPv6 outer, IPv6 inner (ip6tnl / ip6gre): hop limits, addresses, next header.
    ASSERT_TRUE(c.applyStep(dp::TableStep::Delete, "", "", {}));
    serve(c, vip6, pod6);
    Packet q{ip("2001:db8:18::10"), vip6, 17, 40000, 53, false, 30};
    auto in6 = innerFrame(q, 9);
    Out o6 = runFrame(in6);
    ASSERT_EQ(o6.verdict, TC_ACT_REDIRECT);
    ASSERT_EQ(o6.data.size(), in6.size() + 40 + l4);
    const uint8_t* ip6 = &o6.data[14];
    EXPECT_EQ(o6.data[12], 0x86);
    EXPECT_EQ(ip6[0] >> 4, 6);
    EXPECT_EQ(size_t(ip6[4] << 8 | ip6[5]), in6.size() - 14 + l4);
    EXPECT_EQ(ip6[6], mode == Mode::Ipip ? 41 : 47);
    EXPECT_EQ(ip6[7], cfg.ttl);
    EXPECT_EQ(IpAddress::fromBytes(Family::V6, ip6 + 8), ip("2001:db8:19::1"));
    EXPECT_EQ(IpAddress::fromBytes(Family::V6, ip6 + 24), pod6);
    if (mode == Mode::GreFlow) {
      const uint8_t gre[4] = {0, 0, 0x86, 0xdd};
      EXPECT_EQ(std::memcmp(ip6 + 40, gre, 4), 0);
    }
    EXPECT_EQ(ip6[40 + l4 + 7], 8) << "inner hop limit decremented";
    Out expired = runFrame(innerFrame(q, 1));
    EXPECT_EQ(expired.verdict, TC_ACT_OK);
    EXPECT_GE(expired.mark, 1000u);
    ASSERT_TRUE(c.applyStep(dp::TableStep::Delete, "", "", {}));
    for (auto n : {cfg.tunnelLinkName(), cfg.linkPrefix + t.suffix6})
      ASSERT_EQ(std::system(("ip link del " + n).c_str()), 0);
  }
}

TEST_F(BpfHeaderPathTest, MarkAndDeviceAreSelectable) {
  cfg.mode = Mode::GreFlow;
  tunnelDevice(cfg.tunnelLinkName(), 1476);
  BpfOptions o = opts();
  o.encap = BpfEncap::Mark;
  BpfClassifier c(cfg, o);
  const IpAddress vip = ip("203.0.113.10");
  serve(c, vip, ip("198.19.0.2"));
  Packet p{ip("198.18.0.10"), vip, 6, 40000, 80, false, 60};
  Out r = runFrame(innerFrame(p, 64));
  EXPECT_EQ(r.verdict, TC_ACT_OK);
  EXPECT_GE(r.mark, 1000u);
  EXPECT_EQ(r.data, innerFrame(p, 64));
}

}  // namespace
}  // namespace kst

namespace kst {
namespace {

std::string sh(const std::string& cmd) {
  std::string out;
  if (FILE* f = popen(cmd.c_str(), "r")) {
    char buf[512];
    while (fgets(buf, sizeof(buf), f)) out += buf;
    pclose(f);
  }
  return out;
}

TEST_F(BpfHeaderPathTest, CleanupRemovesOnlyTheClsactItCreatedAndNobodyElseUses) {
  cfg.mode = Mode::GreFlow;
  const std::string pre = "krh" + std::to_string(getpid() % 100000);
  const std::string ours = ul, theirs = pre + "p", shared = pre + "s";
  ASSERT_EQ(std::system(("ip link add " + shared + " type veth peer name " + shared + "q").c_str()),
            0);
  ASSERT_EQ(std::system(("tc qdisc add dev " + theirs + " clsact").c_str()), 0);
  BpfOptions o = opts();
  o.ingress = {ours, theirs, shared};
  BpfClassifier c(cfg, o);
  serve(c, ip("203.0.113.10"), ip("198.19.0.2"));
  for (auto& d : {ours, theirs, shared})
    EXPECT_NE(sh("tc filter show dev " + d + " ingress").find("kst_router"), std::string::npos)
        << d;
  // Someone else's filter (another handle and priority, on egress) on the clsact we created
  // on `shared`.
  {
    int fd = bpf_obj_get((pinDir + "/prog").c_str());
    ASSERT_GE(fd, 0);
    DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = int(if_nametoindex(shared.c_str())),
                        .attach_point = BPF_TC_EGRESS);
    DECLARE_LIBBPF_OPTS(bpf_tc_opts, to, .prog_fd = fd, .handle = 1, .priority = 1);
    ASSERT_EQ(bpf_tc_attach(&hook, &to), 0);
    close(fd);
  }
  ASSERT_TRUE(c.applyStep(dp::TableStep::Delete, "", "", {}));
  EXPECT_EQ(sh("tc qdisc show dev " + ours).find("clsact"), std::string::npos)
      << "created by us, nothing else on it: removed";
  EXPECT_NE(sh("tc qdisc show dev " + theirs).find("clsact"), std::string::npos)
      << "there before us: stays";
  EXPECT_NE(sh("tc qdisc show dev " + shared).find("clsact"), std::string::npos)
      << "another filter on it: stays";
  for (auto& d : {ours, theirs, shared})
    EXPECT_EQ(sh("tc filter show dev " + d + " ingress").find("kst_router"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(pinDir));
}

TEST_F(BpfHeaderPathTest, TheClsactRecordSurvivesARebuild) {
  cfg.mode = Mode::GreFlow;
  BpfOptions o = opts();
  o.ingress = {ul};
  {
    BpfClassifier c(cfg, o);
    serve(c, ip("203.0.113.10"), ip("198.19.0.2"));
  }
  DataplaneConfig other = cfg;
  other.hashSeed = kSeed + 1;  // another skeleton: Rebuild (fresh maps, the filter replaced)
  BpfClassifier c2(other, o);
  serve(c2, ip("203.0.113.10"), ip("198.19.0.2"));
  EXPECT_NE(sh("tc filter show dev " + ul + " ingress").find("kst_router"), std::string::npos);
  ASSERT_TRUE(c2.applyStep(dp::TableStep::Delete, "", "", {}));
  EXPECT_EQ(sh("tc qdisc show dev " + ul).find("clsact"), std::string::npos);
}

}  // namespace
}  // namespace kst
