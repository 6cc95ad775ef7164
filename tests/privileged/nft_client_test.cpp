// NftClientImpl against the kernel (root), in a private network namespace of its own
// (unshare(CLONE_NEWNET) in the test process: nothing outlives it, nothing collides with other
// tests). What only the kernel can show: the generation-conditioned batches (NFNL_BATCH_GENID)
// and the observation they make cheap, and the fallback to a full observation after a commit
// by someone else, before a write or before an observation.
#include <gtest/gtest.h>

#include <sched.h>

#include <cstdlib>

#include <fmt/format.h>

#include "desired/nft_render.h"
#include "linux/nft_client.h"

namespace kst {
namespace {

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

TEST(NftClient, GenerationKeepsObservationExactAndCheap) {
  ASSERT_EQ(unshare(CLONE_NEWNET), 0) << "needs root";
  DataplaneConfig cfg;
  cfg.buckets = 4;
  NftClientImpl nft(cfg);
  dp::NftState want;
  want.present = true;
  want.skeleton = renderSkeleton(cfg);
  want.skeletonId = skeletonId(want.skeleton);
  ASSERT_TRUE(nft.run(renderNftChanges(cfg, want, dp::NftState{})));  // the table, empty
  for (const char* v : {"203.0.113.1", "203.0.113.2", "2001:db8::1"}) {
    want.vips.insert(ip(v));
    for (uint32_t b = 0; b < cfg.buckets; ++b) want.buckets.set(ip(v), b, 1000 + b % 2);
  }
  dp::NftState empty = want;
  empty.vips.clear();
  empty.buckets.clear();
  ASSERT_TRUE(nft.applyElements(nftElementChanges(want, empty)));  // unconditioned: unknown yet

  auto expectObserved = [&](bool full, const char* what) {
    SCOPED_TRACE(what);
    uint64_t before = nft.messagesSent();
    auto got = nft.observe();
    ASSERT_TRUE(got) << got.error().message;
    EXPECT_EQ(got->vips, want.vips);
    EXPECT_TRUE(got->buckets == want.buckets);
    EXPECT_EQ(got->skeletonId, want.skeletonId);
    // Known: one GETGEN. Full: GETGEN, GETTABLE, two dumps, lookups, GETGEN.
    if (full) EXPECT_GT(nft.messagesSent() - before, 5u);
    else EXPECT_EQ(nft.messagesSent() - before, 1u);
    NftClientImpl fresh(cfg);  // what a restarted daemon reads: the same
    auto kernel = fresh.observe();
    ASSERT_TRUE(kernel);
    EXPECT_TRUE(kernel->buckets == want.buckets);
    EXPECT_EQ(kernel->vips, want.vips);
  };
  expectObserved(true, "first observation");
  expectObserved(false, "nothing committed since");

  // One bucket moved: a batch of BEGIN, DELSETELEM, NEWSETELEM, END (4 messages) per send.
  auto move = [&](const IpAddress& vip, uint32_t b, uint64_t sends) {
    uint32_t was = want.buckets.at({vip, b}), now = was + 7;
    dp::NftElementChanges ch;
    ch.bucketDeletes = {{vip, b, was}};
    ch.bucketAdds = {{vip, b, now}};
    uint64_t before = nft.messagesSent();
    auto applied = nft.applyElements(ch);
    ASSERT_TRUE(applied) << applied.error().message;
    EXPECT_EQ(nft.messagesSent() - before, 4 * sends);
    want.buckets.set(vip, b, now);
  };
  move(ip("203.0.113.1"), 2, 1);  // conditioned on the known generation: still known after
  expectObserved(false, "after the client's own batch");

  ASSERT_EQ(std::system("nft add table inet kst_test_other"), 0);  // someone else's commit
  move(ip("2001:db8::1"), 0, 2);  // refused (ERESTART), sent again unconditioned
  expectObserved(true, "after a foreign commit before a write");
  expectObserved(false, "known again");

  // Drift by someone else in the daemon's own table: seen.
  ASSERT_EQ(std::system("nft delete element inet kube_service_tunnel b2s4 "
                        "'{ 203.0.113.2 . 0x40000001 }'"),
            0);
  want.buckets.erase(ip("203.0.113.2"), 1);
  expectObserved(true, "after a foreign change of the table");

  // A text transaction (a skeleton change) forgets the state.
  ASSERT_TRUE(nft.run("add table inet kube_service_tunnel\n"));
  expectObserved(true, "after a text transaction");
}

// A cold load of more than one chunk (applyElements: 40k-element transactions, the VIPs in the
// last) carries every element kind: live slots, buckets, bucket counts, endpoint counters,
// filtered VIPs and their source intervals, VIPs (with their refused elements). A restarted
// reader sees exactly what was meant.
TEST(NftClient, ChunkedColdLoadCarriesEveryElementKind) {
  ASSERT_EQ(unshare(CLONE_NEWNET), 0) << "needs root";
  DataplaneConfig cfg;
  cfg.buckets = 64;
  NftClientImpl nft(cfg);
  dp::NftState want;
  want.present = true;
  want.skeleton = renderSkeleton(cfg);
  want.skeletonId = skeletonId(want.skeleton);
  ASSERT_TRUE(nft.run(renderNftChanges(cfg, want, dp::NftState{})));  // the table, empty
  const dp::NftState empty = want;
  for (uint32_t k = 0; k < 800; ++k) {  // 800 VIPs × 64 buckets: two transactions
    IpAddress vip = *IpAddress::parse(k < 700 ? fmt::format("10.200.{}.{}", k >> 8, k & 0xff)
                                              : fmt::format("2001:db8::{:x}", k));
    want.vips.insert(vip);
    want.vipBuckets[vip] = cfg.buckets;
    for (uint32_t b = 0; b < cfg.buckets; ++b) want.buckets.set(vip, b, 1000 + b % 2);
    const bool v4 = vip.isV4();
    want.endpoints[vip] = {{1000, ip(v4 ? "10.0.0.1" : "fd00::1")},
                           {1001, ip(v4 ? "10.0.0.2" : "fd00::2")}};
    want.live.insert({vip, 1000});
    want.live.insert({vip, 1001});
    if (k % 100 == 0)
      want.sourceRanges[vip] = {v4 ? dp::SourceInterval{ip("198.18.0.0"), ip("198.18.255.255")}
                                   : dp::SourceInterval{ip("2001:db8:f::"), ip("2001:db8:f::ff")}};
  }
  auto ch = nftElementChanges(want, empty);
  ASSERT_GT(ch.size(), 40000u);  // more than one transaction
  ASSERT_TRUE(nft.applyElements(ch));
  NftClientImpl fresh(cfg);
  auto got = fresh.observe();
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got->vips, want.vips);
  EXPECT_TRUE(got->buckets == want.buckets);
  EXPECT_EQ(got->vipBuckets, want.vipBuckets);
  EXPECT_EQ(got->endpoints, want.endpoints);
  EXPECT_EQ(got->live, want.live);
  EXPECT_EQ(got->sourceRanges, want.sourceRanges);
  EXPECT_EQ(nftElementChanges(want, *got).size(), 0u);
}

}  // namespace
}  // namespace kst
