// NftClientImpl against the kernel (root), in a private network namespace of its own
// (unshare(CLONE_NEWNET) in the test process: nothing outlives it, nothing collides with other
// tests). What only the kernel can show: the generation-conditioned batches (NFNL_BATCH_GENID)
// and the observation they make cheap, and the fallback to a full observation after a commit
// by someone else, before a write or before an observation.
#include <gtest/gtest.h>

#include <sched.h>

#include <cstdlib>

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

}  // namespace
}  // namespace kst
