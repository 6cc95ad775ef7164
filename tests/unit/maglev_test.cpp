// hashing/maglev.h: table size, even spread, order independence, disruption on removal and
// addition, non-prime table sizes, more endpoints than buckets, pinned hash values — for
// maglevTable, and the same contract (with strictly minimal disruption but statistical spread)
// for rendezvousTable.
#include "hashing/maglev.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace kst {
namespace {

std::vector<std::string> endpointIds(int n, int net = 0) {
  std::vector<std::string> v;
  for (int i = 0; i < n; ++i)
    v.push_back("10." + std::to_string(net) + "." + std::to_string(i / 250) + "." +
                std::to_string(i % 250 + 1));
  return v;
}

using TableFn = std::vector<uint32_t> (*)(const std::vector<std::string>&, uint32_t);

/** bucket → endpoint identity (the table holds indexes into ids). */
std::vector<std::string> owners(const std::vector<std::string>& ids, uint32_t buckets,
                                TableFn fn = maglevTable) {
  auto t = fn(ids, buckets);
  std::vector<std::string> out;
  out.reserve(t.size());
  for (auto i : t) out.push_back(ids.at(i));
  return out;
}

std::map<std::string, uint32_t> shares(const std::vector<std::string>& own) {
  std::map<std::string, uint32_t> m;
  for (auto& o : own) ++m[o];
  return m;
}

size_t movedBuckets(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  EXPECT_EQ(a.size(), b.size());
  size_t moved = 0;
  for (size_t i = 0; i < a.size(); ++i) moved += a[i] != b[i];
  return moved;
}

TEST(Maglev, TableHasBEntriesAllValidIndexes) {
  for (uint32_t b : {1u, 2u, 7u, 64u, 65u, 1021u, 65536u}) {
    auto ids = endpointIds(5);
    auto t = maglevTable(ids, b);
    ASSERT_EQ(t.size(), b) << "B=" << b;
    for (auto e : t) ASSERT_LT(e, ids.size()) << "B=" << b;
  }
}

TEST(Maglev, EveryEndpointGetsFloorOrCeilOfBOverN) {
  for (uint32_t b : {7u, 64u, 65u, 1021u, 4096u}) {
    for (int n : {1, 2, 3, 7, 10, 33, 64}) {
      if (static_cast<uint32_t>(n) > b) continue;
      auto ids = endpointIds(n);
      auto s = shares(owners(ids, b));
      ASSERT_EQ(s.size(), static_cast<size_t>(n)) << "B=" << b << " n=" << n;
      const uint32_t lo = b / n, hi = (b + n - 1) / n;
      for (auto& [id, count] : s) {
        EXPECT_GE(count, lo) << id << " B=" << b << " n=" << n;
        EXPECT_LE(count, hi) << id << " B=" << b << " n=" << n;
      }
    }
  }
}

TEST(Maglev, SingleEndpointOwnsEverything) {
  auto t = maglevTable({"198.51.100.7"}, 64);
  ASSERT_EQ(t.size(), 64u);
  EXPECT_EQ(std::count(t.begin(), t.end(), 0u), 64);
}

TEST(Maglev, NoEndpointsGivesEmptyTable) {
  EXPECT_TRUE(maglevTable({}, 64).empty());
  EXPECT_TRUE(maglevTable({}, 1).empty());
}

// Issue "Must show": assignment identical across 1000 random event orders of the same endpoint
// set. Here at the pure level (input order); router_plan_test repeats it through planRouter
// with sticky history.
TEST(Maglev, IdenticalAssignmentAcross1000RandomOrders) {
  for (uint32_t b : {64u, 1021u}) {
    auto ids = endpointIds(20);
    ids.push_back("2001:db8::10");
    ids.push_back("2001:db8::9");
    const auto reference = owners(ids, b);
    std::mt19937 rng(20240601);
    for (int round = 0; round < 1000; ++round) {
      auto shuffled = ids;
      std::shuffle(shuffled.begin(), shuffled.end(), rng);
      ASSERT_EQ(owners(shuffled, b), reference) << "B=" << b << " round " << round;
    }
  }
}

TEST(Maglev, OrderIndependentWhenMoreEndpointsThanBuckets) {
  auto ids = endpointIds(40);
  const auto reference = owners(ids, 16);
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    auto shuffled = ids;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    ASSERT_EQ(owners(shuffled, 16), reference) << round;
  }
}

TEST(Maglev, MoreEndpointsThanBucketsFillsEveryBucketWithDistinctEndpoints) {
  auto ids = endpointIds(20);
  auto t = maglevTable(ids, 8);
  ASSERT_EQ(t.size(), 8u);
  std::set<uint32_t> distinct(t.begin(), t.end());
  EXPECT_EQ(distinct.size(), 8u);  // one bucket each; 12 endpoints get none
  for (auto e : t) EXPECT_LT(e, ids.size());
}

TEST(Maglev, NonPrimeSizesWork) {
  for (uint32_t b : {64u, 65536u}) {
    auto ids = endpointIds(10);
    auto t = maglevTable(ids, b);
    ASSERT_EQ(t.size(), b);
    auto s = shares(owners(ids, b));
    ASSERT_EQ(s.size(), 10u) << "B=" << b;
    for (auto& [id, c] : s) {
      EXPECT_GE(c, b / 10) << id;
      EXPECT_LE(c, (b + 9) / 10) << id;
    }
  }
}

// Disruption when one of n endpoints leaves. All of its buckets must move (to survivors, each
// still at floor/ceil of B/(n-1)); Maglev additionally reshuffles some other buckets.
// Measured with this implementation (n=10, removal of each endpoint in turn):
//   B=65536: worst 10.35% moved (ideal 10%)
//   B=1021 : worst 12.6% for the set below; average over 50 sets 12.6%
//   B=64   : worst 23.4% for the set below; average over 50 sets 21.5% — twice the ideal,
//            because B/n ≈ 6 is far below the M ≥ 100·N the Maglev paper asks for. New flows
//            only: established flows are pinned by the classifier's flow table.
struct Disruption {
  double worst = 0, average = 0;
};

Disruption removalDisruption(const std::vector<std::string>& ids, uint32_t b) {
  const auto before = owners(ids, b);
  Disruption d;
  for (size_t r = 0; r < ids.size(); ++r) {
    auto rest = ids;
    rest.erase(rest.begin() + static_cast<long>(r));
    const auto after = owners(rest, b);
    size_t ownMoved = 0, own = 0;
    for (uint32_t i = 0; i < b; ++i) {
      if (before[i] == ids[r]) {
        ++own;
        ownMoved += after[i] != ids[r];
      }
    }
    EXPECT_EQ(ownMoved, own) << "every bucket of the removed endpoint must move";
    auto s = shares(after);
    EXPECT_EQ(s.size(), rest.size());
    for (auto& [id, c] : s) {
      EXPECT_GE(c, b / rest.size()) << id;
      EXPECT_LE(c, (b + rest.size() - 1) / rest.size()) << id;
    }
    double frac = static_cast<double>(movedBuckets(before, after)) / b;
    d.worst = std::max(d.worst, frac);
    d.average += frac / static_cast<double>(ids.size());
  }
  return d;
}

TEST(Maglev, RemovingOneOfTenMovesLittleMoreThanItsOwnBucketsB1021) {
  auto d = removalDisruption(endpointIds(10), 1021);
  EXPECT_LE(d.worst, 1.0 / 10 + 0.05);
  EXPECT_GE(d.worst, 1.0 / 10);  // its own ~102 buckets at least
}

TEST(Maglev, RemovingOneOfTenB65536IsNearlyIdeal) {
  auto d = removalDisruption(endpointIds(10), 65536);
  EXPECT_LE(d.worst, 1.0 / 10 + 0.01);
}

TEST(Maglev, RemovingOneOfTenAveragedOverManySets) {
  double avg1021 = 0, avg64 = 0;
  const int sets = 50;
  for (int net = 0; net < sets; ++net) {
    auto ids = endpointIds(10, net);
    avg1021 += removalDisruption(ids, 1021).average / sets;
    avg64 += removalDisruption(ids, 64).average / sets;
  }
  EXPECT_LE(avg1021, 1.0 / 10 + 0.05) << "B=1021";
  // B=64 does NOT meet 1/n + 5% (measured 21.5%): pinned at its measured level so that a
  // regression shows, see the comment above.
  EXPECT_LE(avg64, 0.23) << "B=64";
  EXPECT_GT(avg64, avg1021) << "smaller tables disrupt more";
}

TEST(Maglev, RemovingOneOfTenB64FixedSet) {
  auto d = removalDisruption(endpointIds(10), 64);
  EXPECT_LE(d.worst, 0.25);  // measured 0.234; 1/n + 5% would be 0.15 (see above)
}

TEST(Maglev, AddingOneMovesAboutOneOverNPlusOne) {
  for (uint32_t b : {1021u, 65536u}) {
    auto ids = endpointIds(10);
    const auto before = owners(ids, b);
    for (int a = 0; a < 10; ++a) {
      auto more = ids;
      std::string added = "10.200.0." + std::to_string(a + 1);
      more.push_back(added);
      const auto after = owners(more, b);
      auto s = shares(after);
      EXPECT_GE(s[added], b / 11);
      size_t moved = movedBuckets(before, after);
      // Every bucket the new endpoint took moved; little else should.
      EXPECT_GE(moved, s[added]);
      EXPECT_LE(static_cast<double>(moved) / b, 1.0 / 11 + 0.05) << "B=" << b << " +" << added;
    }
  }
}

TEST(Maglev, StableHashGoldenValues) {
  // Pinned once: routers of different releases must agree on bucket ownership.
  EXPECT_EQ(stableHash("", 0), 0xd725c98e9509182eULL);
  EXPECT_EQ(stableHash("198.51.100.10", 0x6b7374), 0x49cedb2518a23549ULL);
  EXPECT_EQ(stableHash("2001:db8::10", 0x736b6970), 0x3788f27ecfa5267fULL);
  EXPECT_EQ(stableHash("a", 1), 0x609ea5fd194279d1ULL);
  EXPECT_NE(stableHash("a", 1), stableHash("a", 2));
}

TEST(Maglev, GoldenTable) {
  // Pinned once (B=7, three endpoints): a change of the permutation or claim order shows here.
  EXPECT_EQ(maglevTable({"10.0.0.1", "10.0.0.2", "10.0.0.3"}, 7),
            (std::vector<uint32_t>{1, 2, 0, 0, 1, 2, 0}));
  // Same set, other input order: same owners by identity.
  EXPECT_EQ(maglevTable({"10.0.0.3", "10.0.0.1", "10.0.0.2"}, 7),
            (std::vector<uint32_t>{2, 0, 1, 1, 2, 0, 1}));
}

TEST(Maglev, ModuloTable) {
  EXPECT_EQ(moduloTable(3, 7), (std::vector<uint32_t>{0, 1, 2, 0, 1, 2, 0}));
  EXPECT_TRUE(moduloTable(0, 7).empty());
}

// ---- rendezvous (highest random weight), the default --bucket-algorithm ----

TEST(Rendezvous, TableHasBEntriesAllValidIndexes) {
  for (uint32_t b : {1u, 7u, 64u, 1021u, 65536u}) {
    auto ids = endpointIds(5);
    auto t = rendezvousTable(ids, b);
    ASSERT_EQ(t.size(), b);
    for (auto e : t) ASSERT_LT(e, ids.size());
  }
  EXPECT_TRUE(rendezvousTable({}, 64).empty());
}

TEST(Rendezvous, IdenticalAssignmentAcross1000RandomOrders) {
  auto ids = endpointIds(20);
  ids.push_back("2001:db8::10");
  const auto reference = owners(ids, 1021, rendezvousTable);
  std::mt19937 rng(99);
  for (int round = 0; round < 1000; ++round) {
    auto shuffled = ids;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    ASSERT_EQ(owners(shuffled, 1021, rendezvousTable), reference) << round;
  }
}

TEST(Rendezvous, RemovalMovesExactlyTheLeaversBuckets) {
  for (uint32_t b : {64u, 1021u}) {
    auto ids = endpointIds(10);
    const auto before = owners(ids, b, rendezvousTable);
    for (size_t r = 0; r < ids.size(); ++r) {
      auto rest = ids;
      rest.erase(rest.begin() + static_cast<long>(r));
      const auto after = owners(rest, b, rendezvousTable);
      for (uint32_t i = 0; i < b; ++i) {
        if (before[i] == ids[r]) EXPECT_NE(after[i], ids[r]);
        else EXPECT_EQ(after[i], before[i]) << "B=" << b << " bucket " << i << " moved needlessly";
      }
    }
  }
}

TEST(Rendezvous, AdditionMovesOnlyBucketsTheNewcomerWins) {
  auto ids = endpointIds(10);
  const auto before = owners(ids, 1021, rendezvousTable);
  for (int a = 0; a < 10; ++a) {
    auto more = ids;
    std::string added = "10.200.0." + std::to_string(a + 1);
    more.push_back(added);
    const auto after = owners(more, 1021, rendezvousTable);
    size_t won = 0;
    for (uint32_t i = 0; i < 1021; ++i) {
      if (after[i] != before[i]) EXPECT_EQ(after[i], added) << i;
      won += after[i] == added;
    }
    // About 1/(n+1) of the table (93 buckets); binomial spread.
    EXPECT_GE(won, 60u) << added;
    EXPECT_LE(won, 130u) << added;
  }
}

TEST(Rendezvous, SpreadIsStatistical) {
  // Measured for these identities: B=1021, n=10 → shares 86..117 (ideal 102.1);
  // B=65536, n=10 → 6305..6679 (ideal 6553.6). The header promises ±25% for B ≥ 16·n.
  for (uint32_t b : {1021u, 65536u}) {
    auto s = shares(owners(endpointIds(10), b, rendezvousTable));
    ASSERT_EQ(s.size(), 10u);
    for (auto& [id, c] : s) {
      EXPECT_GE(c, 0.75 * b / 10) << id << " B=" << b;
      EXPECT_LE(c, 1.25 * b / 10) << id << " B=" << b;
    }
  }
}

TEST(Rendezvous, MoreEndpointsThanBucketsFillsEveryBucket) {
  auto t = rendezvousTable(endpointIds(20), 8);
  ASSERT_EQ(t.size(), 8u);
  for (auto e : t) EXPECT_LT(e, 20u);
}

TEST(Rendezvous, GoldenTable) {
  EXPECT_EQ(rendezvousTable({"10.0.0.1", "10.0.0.2", "10.0.0.3"}, 7),
            (std::vector<uint32_t>{2, 2, 0, 2, 2, 2, 0}));
  EXPECT_EQ(rendezvousTable({"10.0.0.3", "10.0.0.1", "10.0.0.2"}, 7),
            (std::vector<uint32_t>{0, 0, 1, 0, 0, 0, 1}));
}

}  // namespace
}  // namespace kst
