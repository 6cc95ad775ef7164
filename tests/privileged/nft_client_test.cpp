// NftClientImpl against the kernel (root), in a private network namespace of its own
// (unshare(CLONE_NEWNET) in the test process: nothing outlives it, nothing collides with other
// tests). What only the kernel can show: the generation-conditioned batches (NFNL_BATCH_GENID)
// and the observation they make cheap; foreign commits followed from their announcements
// (NFNLGRP_NFTABLES), before a write or before an observation; the fallback to a full
// observation for what cannot be followed.
#include <gtest/gtest.h>

#include <sched.h>

#include <cstdlib>

#include <fmt/format.h>

#include "desired/nft_render.h"
#include "linux/nft_client.h"

namespace kst {
namespace {

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

/** The daemon's table with no element. */
dp::NftState skeletonOnly(const DataplaneConfig& cfg) {
  dp::NftState st;
  st.present = true;
  st.skeleton = renderSkeleton(cfg);
  st.skeletonId = skeletonId(st.skeleton);
  return st;
}

/** The observed part of a state (the skeleton text is never read back). */
bool sameElements(const dp::NftState& a, const dp::NftState& b) {
  return a.present == b.present && a.skeletonId == b.skeletonId && a.vips == b.vips &&
         a.vipBuckets == b.vipBuckets && a.buckets == b.buckets && a.endpoints == b.endpoints &&
         a.sourceRanges == b.sourceRanges && a.live == b.live;
}

TEST(NftClient, GenerationKeepsObservationExactAndCheap) {
  ASSERT_EQ(unshare(CLONE_NEWNET), 0) << "needs root";
  DataplaneConfig cfg;
  cfg.buckets = 4;
  NftClientImpl nft(cfg);
  dp::NftState want = skeletonOnly(cfg);
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
  auto move = [&](const IpAddress& vip, uint32_t b, uint64_t messages) {
    uint32_t was = want.buckets.at({vip, b}), now = was + 7;
    dp::NftElementChanges ch;
    ch.bucketDeletes = {{vip, b, was}};
    ch.bucketAdds = {{vip, b, now}};
    uint64_t before = nft.messagesSent();
    auto applied = nft.applyElements(ch);
    ASSERT_TRUE(applied) << applied.error().message;
    EXPECT_EQ(nft.messagesSent() - before, messages);
    want.buckets.set(vip, b, now);
  };
  move(ip("203.0.113.1"), 2, 4);  // conditioned on the known generation: still known after
  expectObserved(false, "after the client's own batch");

  ASSERT_EQ(std::system("nft add table inet krs_other"), 0);  // someone else's commit
  // Refused (ERESTART): the foreign commit followed (GETGEN), sent again conditioned.
  move(ip("2001:db8::1"), 0, 4 + 1 + 4);
  expectObserved(false, "after a foreign commit before a write");

  // Drift by someone else in the daemon's own table: applied from its announcement.
  ASSERT_EQ(std::system("nft delete element inet kube_service_tunnel b2s4 "
                        "'{ 203.0.113.2 . 0x40000001 }'"),
            0);
  want.buckets.erase(ip("203.0.113.2"), 1);
  expectObserved(false, "after a foreign change of the table");
  // Something the follower does not apply (a chain in the table): everything read again.
  ASSERT_EQ(std::system("nft add chain inet kube_service_tunnel krs_chain"), 0);
  expectObserved(true, "after a foreign chain");

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
  dp::NftState want = skeletonOnly(cfg);
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

// Foreign commits between two observations of a long-lived client, as on a node where
// kube-proxy (nftables mode) and firewalls commit all the time: another table's commit costs
// one GETGEN; a foreign element deletion in the daemon's table is applied from its announcement
// (observe() returns the kernel's true state) and the next pass repairs exactly that element;
// foreign changes of the small sets (VIPs, refused, counts, endpoint counters, source ranges)
// are applied too, and only the buckets of VIPs that entered the sets or changed their bucket
// count are looked up.
TEST(NftClient, ForeignCommitsFollowedFromAnnouncements) {
  ASSERT_EQ(unshare(CLONE_NEWNET), 0) << "needs root";
  DataplaneConfig cfg;
  cfg.buckets = 8;
  NftClientImpl nft(cfg);
  dp::NftState want = skeletonOnly(cfg);
  ASSERT_TRUE(nft.run(renderNftChanges(cfg, want, dp::NftState{})));
  const dp::NftState empty = want;
  for (const char* v : {"203.0.113.1", "203.0.113.2", "2001:db8::1"}) {
    want.vips.insert(ip(v));
    want.vipBuckets[ip(v)] = cfg.buckets;
    for (uint32_t b = 0; b < cfg.buckets; ++b) want.buckets.set(ip(v), b, 1000 + b % 2);
    want.live.insert({ip(v), 1000});
    want.live.insert({ip(v), 1001});
  }
  ASSERT_TRUE(nft.applyElements(nftElementChanges(want, empty)));
  auto first = nft.observe();  // the full observation; following starts here
  ASSERT_TRUE(first) << first.error().message;
  ASSERT_TRUE(sameElements(*first, want));

  const std::string other = fmt::format("krs_other_{}", getpid());
  auto observeAfter = [&](const std::string& command, const char* what) {
    SCOPED_TRACE(what);
    if (!command.empty()) {
      EXPECT_EQ(std::system(command.c_str()), 0) << command;
    }
    uint64_t before = nft.messagesSent();
    auto got = nft.observe();
    EXPECT_TRUE(got) << got.error().message;
    NftClientImpl fresh(cfg);  // the kernel's true state
    auto kernel = fresh.observe();
    EXPECT_TRUE(kernel) << kernel.error().message;
    if (got && kernel) {
      EXPECT_EQ(got->vips, kernel->vips);
      EXPECT_TRUE(got->buckets == kernel->buckets);
      EXPECT_EQ(got->vipBuckets, kernel->vipBuckets);
      EXPECT_EQ(got->live, kernel->live);
      EXPECT_EQ(got->endpoints, kernel->endpoints);
      EXPECT_EQ(got->sourceRanges, kernel->sourceRanges);
    }
    return std::make_pair(got ? *got : dp::NftState{}, nft.messagesSent() - before);
  };
  const std::string T = "inet kube_service_tunnel";
  auto [a, na] = observeAfter("nft add table inet " + other + " && nft add set inet " + other +
                                  " s '{ type ipv4_addr; }' && nft add element inet " + other +
                                  " s '{ 192.0.2.1 }'",
                              "three commits to another table");
  EXPECT_EQ(na, 1u);  // GETGEN only
  EXPECT_TRUE(sameElements(a, want));

  auto [b, nb] = observeAfter("nft delete element " + T + " b2s4 '{ 203.0.113.2 . 0x40000003 }'"
                              " && nft delete element " + T + " live6 '{ 2001:db8::1 . 1001 }'",
                              "foreign element deletions in the daemon's table");
  EXPECT_EQ(nb, 1u);
  EXPECT_FALSE(b.buckets.contains({ip("203.0.113.2"), 3}));
  EXPECT_FALSE(b.live.contains({ip("2001:db8::1"), 1001}));
  // The next pass repairs exactly those elements, and the state stays known.
  auto repair = nftElementChanges(want, b);
  EXPECT_EQ(repair.size(), 2u);
  EXPECT_EQ(repair.bucketAdds.size(), 1u);
  EXPECT_EQ(repair.liveAdds.size(), 1u);
  ASSERT_TRUE(nft.applyElements(repair));
  auto [c, nc] = observeAfter("", "repaired");
  EXPECT_EQ(nc, 1u);
  EXPECT_TRUE(sameElements(c, want));
  // The client's own element announcements are dropped by its socket filter: of a batch of
  // 3 × 8 bucket changes only the NEWGEN arrives.
  const uint64_t heard = nft.announcementsReceived();
  dp::NftState moved = want;
  for (auto& [key, mark] : want.buckets) moved.buckets.set(key.first, key.second, mark + 2);
  ASSERT_TRUE(nft.applyElements(nftElementChanges(moved, want)));
  want = moved;
  auto [own, nown] = observeAfter("", "after an own batch");
  EXPECT_EQ(nown, 1u);
  EXPECT_TRUE(sameElements(own, want));
  EXPECT_EQ(nft.announcementsReceived() - heard, 1u);

  // A large own batch (a cold start's) is sent with the monitor socket out of the group (the
  // kernel would build an announcement per element): nothing of it is received, and after it
  // the follower goes on — the next observations cost one GETGEN, also after a foreign commit.
  dp::NftState large = want;
  for (int i = 0; i < 600; ++i) {
    IpAddress v = ip(fmt::format("10.77.{}.{}", i / 250, 1 + i % 250).c_str());
    large.vips.insert(v);
    large.vipBuckets[v] = cfg.buckets;
    for (uint32_t b = 0; b < cfg.buckets; ++b) large.buckets.set(v, b, 1000 + b % 2);
    large.live.insert({v, 1000});
    large.live.insert({v, 1001});
  }
  const auto bulk = nftElementChanges(large, want);
  ASSERT_GE(bulk.size(), NftClientImpl::kPauseMonitorAt);
  const uint64_t heardBulk = nft.announcementsReceived();
  ASSERT_TRUE(nft.applyElements(bulk));
  want = large;
  auto [big, nbig] = observeAfter("", "after a large own batch");
  EXPECT_EQ(nbig, 1u);
  EXPECT_TRUE(sameElements(big, want));
  EXPECT_EQ(nft.announcementsReceived() - heardBulk, 0u);
  auto [fa, nfa] = observeAfter("nft add element inet " + other + " s '{ 192.0.2.2 }'",
                                "a foreign commit after the large batch");
  EXPECT_EQ(nfa, 1u);
  EXPECT_TRUE(sameElements(fa, want));

  auto [d, nd] = observeAfter("nft delete element " + T + " vip4 '{ 203.0.113.1 }'",
                              "a VIP removed by someone else");
  EXPECT_EQ(nd, 1u);  // applied as announced
  EXPECT_FALSE(d.vips.contains(ip("203.0.113.1")));
  EXPECT_EQ(d.buckets.marksOf(ip("203.0.113.1")), nullptr);  // not looked up
  auto [e, ne] = observeAfter(
      "nft add element " + T + " b2s4 '{ 203.0.113.9 . 0x40000000 : 1000, 203.0.113.9 . "
      "0x40000005 : 1001 }' && nft add element " + T + " refused4 '{ 203.0.113.9 }' && "
      "nft add element " + T + " vip4 '{ 203.0.113.9, 203.0.113.1 }'",
      "VIPs added by someone else, one with buckets");
  EXPECT_TRUE(e.vips.contains(ip("203.0.113.9")));
  EXPECT_EQ(e.buckets.find({ip("203.0.113.9"), 5}), std::optional<uint32_t>(1001));
  dp::BucketMap withNew = want.buckets;
  withNew.set(ip("203.0.113.9"), 0, 1000);
  withNew.set(ip("203.0.113.9"), 5, 1001);
  EXPECT_TRUE(e.buckets == withNew);
  EXPECT_GT(ne, 1u);  // the buckets of the two VIPs that entered the sets looked up
  auto [g, ng] = observeAfter(
      "nft add element " + T + " ranged4 '{ 203.0.113.2 }' && nft add element " + T +
          " src4 '{ 203.0.113.2 . 10.0.0.0-10.0.0.255, 203.0.113.2 . 10.2.0.0-10.2.0.15 }' && "
          "nft add element " + T + " ep4 '{ 203.0.113.2 . 0x3e8 comment \"10.1.0.5\" }' && "
          "nft delete element " + T + " bcount4 '{ 203.0.113.2 }' && nft add element " + T +
          " bcount4 '{ 203.0.113.2 : 0x80000004 }'",
      "source ranges, an endpoint counter and a bucket count by someone else");
  EXPECT_EQ(g.sourceRanges.at(ip("203.0.113.2")).size(), 2u);
  EXPECT_EQ(g.endpoints.at(ip("203.0.113.2")).at(1000), ip("10.1.0.5"));
  EXPECT_EQ(g.vipBuckets.at(ip("203.0.113.2")), 4u);
  EXPECT_EQ(g.buckets.marksOf(ip("203.0.113.2"))->size(), 4u);  // looked up again: 4 of 8
  EXPECT_GT(ng, 1u);
  // A notification the follower cannot place: the table itself replaced.
  auto [f, nf] = observeAfter("nft delete table " + T, "the table deleted");
  EXPECT_FALSE(f.present);
  (void)nf;
  std::system(("nft delete table inet " + other).c_str());
}

}  // namespace
}  // namespace kst
