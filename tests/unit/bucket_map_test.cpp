// dataplane/bucket_map.h: the compact (VIP, bucket) → mark container of NftState, and
// nftElementChanges over it (same ordered changes as the std::map merge it replaced).
#include "dataplane/bucket_map.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <stdexcept>
#include <vector>

#include "dataplane/types.h"
#include "desired/nft_render.h"

namespace kst {
namespace {

using dp::BucketMap;
using Key = BucketMap::Key;

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

std::map<Key, uint32_t> asMap(const BucketMap& m) {
  std::map<Key, uint32_t> out;
  for (const auto& [k, mark] : m) out.emplace(k, mark);
  return out;
}

TEST(BucketMap, SetFindAtErase) {
  BucketMap m;
  EXPECT_TRUE(m.empty());
  m.set(ip("10.0.0.1"), 3, 1001);
  m.set(ip("10.0.0.1"), 0, 1000);
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(m.find({ip("10.0.0.1"), 3}), 1001u);
  EXPECT_EQ(m.find({ip("10.0.0.1"), 1}), std::nullopt);  // inside the vector, no element
  EXPECT_EQ(m.find({ip("10.0.0.1"), 64}), std::nullopt);  // beyond it
  EXPECT_EQ(m.find({ip("10.0.0.2"), 0}), std::nullopt);
  EXPECT_EQ(m.at({ip("10.0.0.1"), 0}), 1000u);
  EXPECT_THROW(m.at({ip("10.0.0.1"), 1}), std::out_of_range);
  m.set(ip("10.0.0.1"), 3, 1002);  // replace: the count does not change
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(m.at({ip("10.0.0.1"), 3}), 1002u);
  EXPECT_FALSE(m.insert(ip("10.0.0.1"), 3, 1005));  // emplace semantics
  EXPECT_EQ(m.at({ip("10.0.0.1"), 3}), 1002u);
  EXPECT_TRUE(m.insert(ip("10.0.0.1"), 2, 1005));
  EXPECT_EQ(m.size(), 3u);
  EXPECT_TRUE(m.erase(ip("10.0.0.1"), 2));
  EXPECT_FALSE(m.erase(ip("10.0.0.1"), 2));
  EXPECT_FALSE(m.erase({ip("10.0.0.9"), 0}));
  EXPECT_EQ(m.size(), 2u);
  EXPECT_THROW(m.set(ip("10.0.0.1"), 1, 0), std::invalid_argument);
  EXPECT_THROW(m.set(ip("10.0.0.1"), BucketMap::kMaxBuckets, 1000), std::out_of_range);
  EXPECT_EQ(m.size(), 2u);
}

TEST(BucketMap, EraseOfTheLastElementRemovesTheVip) {
  BucketMap m;
  m.set(ip("10.0.0.1"), 5, 1000);
  m.set(ip("10.0.0.2"), 1, 1000);
  EXPECT_TRUE(m.erase({ip("10.0.0.1"), 5}));
  EXPECT_EQ(m.marksOf(ip("10.0.0.1")), nullptr);
  EXPECT_EQ(m.perVip().size(), 1u);
  EXPECT_EQ(m.size(), 1u);
  EXPECT_TRUE(m.erase({ip("10.0.0.2"), 1}));
  EXPECT_TRUE(m.empty());
  EXPECT_TRUE(m.perVip().empty());
  EXPECT_EQ(m.begin(), m.end());
  EXPECT_EQ(m, BucketMap{});
}

TEST(BucketMap, SetVipEraseVipMarksOf) {
  BucketMap m;
  m.setVip(ip("10.0.0.1"), {0, 1000, 0, 1001});
  EXPECT_EQ(m.size(), 2u);
  ASSERT_NE(m.marksOf(ip("10.0.0.1")), nullptr);
  EXPECT_EQ(*m.marksOf(ip("10.0.0.1")), (std::vector<uint32_t>{0, 1000, 0, 1001}));
  m.setVip(ip("10.0.0.1"), {1002});  // replaces every element of the VIP
  EXPECT_EQ(m.size(), 1u);
  EXPECT_FALSE(m.contains({ip("10.0.0.1"), 3}));
  m.setVip(ip("10.0.0.1"), {0, 0, 0});  // no element: the VIP is gone
  EXPECT_EQ(m.marksOf(ip("10.0.0.1")), nullptr);
  EXPECT_TRUE(m.empty());
  m.setVip(ip("10.0.0.2"), {7, 8});
  m.setVip(ip("10.0.0.3"), {9});
  EXPECT_TRUE(m.eraseVip(ip("10.0.0.2")));
  EXPECT_FALSE(m.eraseVip(ip("10.0.0.2")));
  EXPECT_EQ(m.size(), 1u);
  m.clear();
  EXPECT_TRUE(m.empty());
  EXPECT_TRUE(m.perVip().empty());
}

TEST(BucketMap, EqualityIgnoresVectorLengths) {
  BucketMap a, b, c;
  a.setVip(ip("10.0.0.1"), {1000, 0, 1001});
  b.setVip(ip("10.0.0.1"), {1000, 0, 1001, 0, 0, 0, 0, 0});  // trailing zeros
  c.set(ip("10.0.0.1"), 2, 1001);                            // grown element by element
  c.set(ip("10.0.0.1"), 0, 1000);
  EXPECT_EQ(a, b);
  EXPECT_EQ(b, a);
  EXPECT_EQ(a, c);
  b.set(ip("10.0.0.1"), 7, 1000);  // an element in b's tail
  EXPECT_NE(a, b);
  EXPECT_NE(b, a);
  BucketMap d;
  d.setVip(ip("10.0.0.2"), {1000, 0, 1001});  // same marks, another VIP
  EXPECT_NE(a, d);
  BucketMap e;
  e.setVip(ip("10.0.0.1"), {1000, 0, 1002});
  EXPECT_NE(a, e);
  dp::NftState s1, s2;
  s1.buckets = a;
  s2.buckets = c;
  EXPECT_EQ(s1, s2);
}

TEST(BucketMap, IterationInVipThenBucketOrder) {
  BucketMap m;
  m.set(ip("2001:db8::1"), 0, 1003);
  m.set(ip("10.0.0.2"), 1, 1002);
  m.setVip(ip("10.0.0.1"), {0, 1000, 0, 0, 1001, 0});
  m.set(ip("10.0.0.2"), 0, 1001);
  std::vector<std::pair<Key, uint32_t>> got;
  for (const auto& [k, mark] : m) got.push_back({k, mark});
  std::vector<std::pair<Key, uint32_t>> want{{{ip("10.0.0.1"), 1}, 1000},
                                             {{ip("10.0.0.1"), 4}, 1001},
                                             {{ip("10.0.0.2"), 0}, 1001},
                                             {{ip("10.0.0.2"), 1}, 1002},
                                             {{ip("2001:db8::1"), 0}, 1003}};
  EXPECT_EQ(got, want);
  EXPECT_EQ(static_cast<size_t>(std::distance(m.begin(), m.end())), m.size());
  // `auto&` bindings (as in older loops) work too: the iterator yields a const value.
  size_t n = 0;
  for (auto& [k, mark] : m) n += mark > 0 && k.second < 8;
  EXPECT_EQ(n, 5u);
  static_assert(std::forward_iterator<BucketMap::const_iterator>);
}

TEST(BucketMap, MergeKeepsExistingElements) {
  BucketMap a, b;
  a.setVip(ip("10.0.0.1"), {1000, 0});
  a.set(ip("10.0.0.3"), 0, 1000);
  b.setVip(ip("10.0.0.1"), {1005, 1006, 0, 1007});  // bucket 0 exists in a: a's is kept
  b.setVip(ip("10.0.0.2"), {0, 1001});
  a.merge(std::move(b));
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(a.size(), 5u);
  EXPECT_EQ(asMap(a), (std::map<Key, uint32_t>{{{ip("10.0.0.1"), 0}, 1000},
                                               {{ip("10.0.0.1"), 1}, 1006},
                                               {{ip("10.0.0.1"), 3}, 1007},
                                               {{ip("10.0.0.2"), 1}, 1001},
                                               {{ip("10.0.0.3"), 0}, 1000}}));
  BucketMap empty, c;
  c.set(ip("10.0.0.9"), 2, 1000);
  empty.merge(std::move(c));
  EXPECT_EQ(empty.size(), 1u);
  EXPECT_EQ(empty.at({ip("10.0.0.9"), 2}), 1000u);
}

// Randomized: BucketMap behaves as the std::map it replaced, and nftElementChanges produces
// the same ordered changes as the former merge over (VIP, bucket)-sorted maps.
TEST(BucketMap, MatchesStdMapAndElementChangesAreUnchanged) {
  std::mt19937 rng(7);
  std::vector<IpAddress> vips{ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"), ip("2001:db8::1"),
                              ip("2001:db8::2")};
  for (int round = 0; round < 200; ++round) {
    BucketMap m[2];
    std::map<Key, uint32_t> ref[2];
    for (int side = 0; side < 2; ++side) {
      int ops = static_cast<int>(rng() % 60);
      for (int i = 0; i < ops; ++i) {
        IpAddress v = vips[rng() % vips.size()];
        uint32_t b = rng() % 12, mark = 1000 + rng() % 3;
        switch (rng() % 4) {
          case 0:
          case 1:
            m[side].set(v, b, mark);
            ref[side][{v, b}] = mark;
            break;
          case 2:
            EXPECT_EQ(m[side].erase(v, b), ref[side].erase({v, b}) == 1);
            break;
          default: {
            std::vector<uint32_t> marks(rng() % 14, 0);
            for (auto& x : marks) x = rng() % 2 ? 0 : 1000 + rng() % 3;
            for (auto it = ref[side].begin(); it != ref[side].end();)
              it = it->first.first == v ? ref[side].erase(it) : std::next(it);
            for (uint32_t j = 0; j < marks.size(); ++j)
              if (marks[j]) ref[side][{v, j}] = marks[j];
            m[side].setVip(v, std::move(marks));
          }
        }
      }
      ASSERT_EQ(asMap(m[side]), ref[side]);
      ASSERT_EQ(m[side].size(), ref[side].size());
    }
    EXPECT_EQ(m[0] == m[1], ref[0] == ref[1]);
    // The former merge, verbatim over std::maps.
    dp::NftElementChanges want;
    auto d = ref[0].begin(), o = ref[1].begin();
    while (d != ref[0].end() || o != ref[1].end()) {
      if (o == ref[1].end() || (d != ref[0].end() && d->first < o->first)) {
        want.bucketAdds.push_back({d->first.first, d->first.second, d->second});
        ++d;
      } else if (d == ref[0].end() || o->first < d->first) {
        want.bucketDeletes.push_back({o->first.first, o->first.second, o->second});
        ++o;
      } else {
        if (d->second != o->second) {
          want.bucketDeletes.push_back({o->first.first, o->first.second, o->second});
          want.bucketAdds.push_back({d->first.first, d->first.second, d->second});
        }
        ++d;
        ++o;
      }
    }
    dp::NftState desired, base;
    desired.buckets = m[0];
    base.buckets = m[1];
    auto got = nftElementChanges(desired, base);
    auto same = [](const std::vector<dp::NftElementChanges::Bucket>& x,
                   const std::vector<dp::NftElementChanges::Bucket>& y) {
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (x[i].vip != y[i].vip || x[i].bucket != y[i].bucket || x[i].mark != y[i].mark)
          return false;
      return true;
    };
    EXPECT_TRUE(same(got.bucketAdds, want.bucketAdds)) << round;
    EXPECT_TRUE(same(got.bucketDeletes, want.bucketDeletes)) << round;
    // merge == std::map::merge
    BucketMap merged = m[0];
    auto refMerged = ref[0];
    auto refOther = ref[1];
    refMerged.merge(refOther);
    merged.merge(BucketMap(m[1]));
    EXPECT_EQ(asMap(merged), refMerged);
    EXPECT_EQ(merged.size(), refMerged.size());
  }
}

}  // namespace
}  // namespace kst
